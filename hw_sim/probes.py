"""Instrumentation processes for graded populations (own processes; they compute nothing of
the network): record what an ``OutPort`` sends, step by step, into memory-mapped ring files
that the host reads between runs.

* :class:`ValueProbe` — the graded values of every neuron: ``path/values.bin``, int32,
  ``(depth, n)``.
* :class:`CountProbe` — the number of non-zero messages (the messages a Loihi core would
  send: ``GradedVec``/``ProdNeuron`` send only where ``|v| > vth``, see
  ``lava/proc/graded/models.py`` and ``lava/proc/prodneuron/models.py``): ``path/count.bin``,
  int64, ``(depth,)``.

Step τ (1-based, Lava's ``time_step``) is stored in row ``(τ − 1) % depth``. The pattern is
that of the group recordings of :func:`multi_probe`: the files are written by the probe's own OS
process through a shared memory map (lava's ``Var.get`` relays arrays element by element and
is far too slow for traces). Both processes have one ``InPort`` ``s_in`` of shape ``(n,)``
that takes an ``OutPort`` of the same shape (the compiler sizes the channel from the
sender's dtype, so graded int32 payloads arrive intact).

The probe creates its file (zeros) when it is constructed and the file does not exist yet;
an existing file of the right size is kept (a caller may create and clear it first); one of
another size raises ``ValueError``.

This module imports numpy and lava only (every Lava process is its own OS process; heavy
imports here would be paid by each of them).
"""
from __future__ import annotations

import os

import numpy as np

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

__all__ = ["ValueProbe", "CountProbe", "open_values", "open_counts", "unroll",
           "VALUES_FILE", "COUNT_FILE"]

#: File names inside a probe's folder.
VALUES_FILE = "values.bin"
COUNT_FILE = "count.bin"


def open_values(path, depth: int, n: int, mode: str = "r") -> np.memmap:
    """The ``(depth, n)`` int32 memory map of ``path/values.bin`` (a :class:`ValueProbe`
    ring; row ``(τ − 1) % depth`` holds step τ). ``mode`` as for ``numpy.memmap``."""
    return np.memmap(os.path.join(str(path), VALUES_FILE), dtype=np.int32, mode=mode,
                     shape=(int(depth), int(n)))


def open_counts(path, depth: int, mode: str = "r") -> np.memmap:
    """The ``(depth,)`` int64 memory map of ``path/count.bin`` (a :class:`CountProbe` ring;
    entry ``(τ − 1) % depth`` holds step τ's number of non-zero messages)."""
    return np.memmap(os.path.join(str(path), COUNT_FILE), dtype=np.int64, mode=mode,
                     shape=(int(depth),))


def unroll(ring: np.ndarray, first: int, steps: int) -> np.ndarray:
    """Copy of the ring rows of Lava steps ``first … first + steps − 1`` (1-based), in step
    order; axis 0 of the result is the step.

    Raises
    ------
    ValueError
        ``steps`` exceeds the ring's depth (older rows were overwritten) or ``first < 1``.
    """
    depth = ring.shape[0]
    if steps > depth or first < 1:
        raise ValueError(f"cannot unroll {steps} steps from step {first} out of a ring of depth {depth}")
    rows = (np.arange(first, first + steps) - 1) % depth
    return np.array(ring[rows])


def _ensure(file: str, nbytes: int, create):
    if os.path.exists(file):
        size = os.path.getsize(file)
        if size != nbytes:
            raise ValueError(f"probe file {file} has {size} bytes, expected {nbytes}")
        return
    create().flush()


def _check(n, depth, path):
    n, depth = int(n), int(depth)
    if n < 1 or depth < 1:
        raise ValueError(f"probe needs n >= 1 and depth >= 1, got n={n}, depth={depth}")
    if not os.path.isdir(str(path)):
        raise ValueError(f"probe folder {path} does not exist")
    return n, depth, str(path)


class ValueProbe(AbstractProcess):
    """Records the graded values arriving at ``s_in`` ``(n,)`` every step into
    ``path/values.bin`` (int32 ring ``(depth, n)``, row ``(τ − 1) % depth``).

    Parameters
    ----------
    n : int — neurons (size of the probed ``OutPort``)
    depth : int — ring rows (steps kept)
    path : str — an existing folder
    name : str, optional — Lava process name

    Raises
    ------
    ValueError
        ``n < 1``, ``depth < 1``, ``path`` not a folder, or an existing ``values.bin`` of
        another size.
    """

    def __init__(self, *, n: int, depth: int, path, name=None):
        n, depth, path = _check(n, depth, path)
        _ensure(os.path.join(path, VALUES_FILE), 4 * n * depth, lambda: open_values(path, depth, n, "w+"))
        super().__init__(n=n, depth=depth, path=path, name=name)
        self.s_in = InPort(shape=(n,))


class CountProbe(AbstractProcess):
    """Records the number of non-zero entries arriving at ``s_in`` ``(n,)`` every step into
    ``path/count.bin`` (int64 ring ``(depth,)``, entry ``(τ − 1) % depth``).

    Parameters and errors as :class:`ValueProbe` (file ``count.bin``).
    """

    def __init__(self, *, n: int, depth: int, path, name=None):
        n, depth, path = _check(n, depth, path)
        _ensure(os.path.join(path, COUNT_FILE), 8 * depth, lambda: open_counts(path, depth, "w+"))
        super().__init__(n=n, depth=depth, path=path, name=name)
        self.s_in = InPort(shape=(n,))


@implements(proc=ValueProbe, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyValueProbeModelFixed(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self):
        p = self.proc_params
        if not hasattr(self, "ring"):
            self.ring = open_values(p["path"], p["depth"], p["n"], "r+")
        self.ring[(self.time_step - 1) % p["depth"]] = self.s_in.recv()


@implements(proc=CountProbe, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyCountProbeModelFixed(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self):
        p = self.proc_params
        if not hasattr(self, "ring"):
            self.ring = open_counts(p["path"], p["depth"], "r+")
        self.ring[(self.time_step - 1) % p["depth"]] = np.count_nonzero(self.s_in.recv())


def multi_probe(entries: list, depth: int):
    """ONE probe process that records many points of the network (own instrumentation).

    Every Lava process is an OS process of its own (~7–20 MB each, see ``docs/design.md``), and
    lava-nc 0.10 cannot concatenate ports (``ConcatPort`` is "not yet supported"), so instead
    of one probe per neuron group this builds a process class with one ``InPort`` (and, for
    groups, two ``RefPort``) per recorded point, and its process model.

    Parameters
    ----------
    entries : list of ``(kind, n, path)`` — ``kind`` ``"group"`` (spikes int8, u, v int32:
        ``path/{spikes,u,v}.bin`` ``(depth, n)``, u and v read through RefPorts in the
        post-management phase, as lava's ``Monitor`` does), ``"values"``
        (``path/values.bin``), ``"count"`` (``path/count.bin``) or ``"count:a:b"`` (the
        non-zero messages among elements ``a..b−1`` only)
    depth : int — ring rows; step τ goes to row ``(τ − 1) % depth``

    Returns
    -------
    ``(process, model_class)`` — connect port ``in{i}`` (and ``u{i}``/``v{i}`` with
    ``connect_var``) for entry ``i``; run with
    ``exception_proc_model_map={type(process): model_class}``.
    """
    layout = tuple((str(k), int(n), str(p)) for k, n, p in entries)

    def __init__(self, *, name=None):
        super(cls, self).__init__(layout=layout, depth=int(depth), name=name)
        for i, (kind, n, _) in enumerate(layout):
            setattr(self, f"in{i}", InPort(shape=(n,)))
            if kind == "group":
                setattr(self, f"u{i}", RefPort(shape=(n,)))
                setattr(self, f"v{i}", RefPort(shape=(n,)))

    cls = type("MultiProbe", (AbstractProcess,), {"__init__": __init__, "__module__": __name__})

    def _maps(self):
        if not hasattr(self, "maps"):
            d = self.proc_params["depth"]
            self.maps = []
            for kind, n, path in self.proc_params["layout"]:
                if kind == "group":
                    self.maps.append({v: np.memmap(os.path.join(path, f"{v}.bin"), dtype=dt, mode="r+", shape=(d, n))
                                      for v, dt in (("spikes", np.int8), ("u", np.int32), ("v", np.int32))})
                elif kind == "values":
                    self.maps.append(open_values(path, d, n, "r+"))
                else:
                    self.maps.append(open_counts(path, d, "r+"))
        return self.maps

    def run_spk(self):
        row = (self.time_step - 1) % self.proc_params["depth"]
        for i, ((kind, _, _), m) in enumerate(zip(self.proc_params["layout"], _maps(self))):
            x = getattr(self, f"in{i}").recv()
            if kind == "group":
                m["spikes"][row] = x != 0
            elif kind == "values":
                m[row] = x
            elif kind == "count":
                m[row] = np.count_nonzero(x)
            else:  # "count:a:b" — non-zero messages of x[a:b]
                a, b = (int(z) for z in kind.split(":")[1:])
                m[row] = np.count_nonzero(x[a:b])

    def post_guard(self):
        return any(kind == "group" for kind, _, _ in self.proc_params["layout"])

    def run_post_mgmt(self):
        row = (self.time_step - 1) % self.proc_params["depth"]
        for i, ((kind, _, _), m) in enumerate(zip(self.proc_params["layout"], _maps(self))):
            if kind == "group":
                m["u"][row] = getattr(self, f"u{i}").read()
                m["v"][row] = getattr(self, f"v{i}").read()

    attrs = {"run_spk": run_spk, "post_guard": post_guard, "run_post_mgmt": run_post_mgmt, "__module__": __name__}
    for i, (kind, _, _) in enumerate(layout):
        attrs[f"in{i}"] = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
        if kind == "group":
            attrs[f"u{i}"] = LavaPyType(PyRefPort.VEC_DENSE, np.int32, precision=24)
            attrs[f"v{i}"] = LavaPyType(PyRefPort.VEC_DENSE, np.int32, precision=24)
    model = type("PyMultiProbeModelFixed", (PyLoihiProcessModel,), attrs)
    model = implements(proc=cls, protocol=LoihiProtocol)(requires(CPU)(tag("fixed_pt")(model)))
    return cls(name="probes"), model
