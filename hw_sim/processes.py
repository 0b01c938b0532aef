"""The own Lava processes and process models of the replay — instrumentation and stand-ins
only; everything that computes the network is a stock lava-nc process (see
:mod:`hw_sim.network` for the table).

* :func:`multi_delay` — one process holding every spike delay line (``d`` steps in front of a
  synapse): with a ``Sparse`` behind it, a line is lava's ``DelaySparse`` with one delay for
  every synapse (``tests/test_lava_mapping.py`` compares the two step by step). lava-nc 0.10's
  ``PyDelaySparseModelBitAcc`` rebuilds its delay-stacked weight matrix every step (with a
  CSR fancy assignment over all non-zeros), which made a 3-clip replay of a width-0.125
  MK-SGN run for more than 10 minutes; the delay line costs a copy per step. Delays are free
  on the chip (dendritic delay buffers), so no events are counted for it.
* :class:`PyConvModelFixedFast` — a process model of lava's *stock* ``Conv`` process, a
  stand-in for ``PyConvModelFixed`` (``lava/proc/conv/models.py``) that computes the same
  integers faster. The stock model loops over every (output channel, input channel) pair
  calling ``scipy.signal.convolve2d`` (``lava/proc/conv/utils.py::conv_scipy``; lava
  disables its torch path): a folded graph conv as a 1×1 ``Conv`` over ``C·V = 320``
  channels is 102,400 calls per step. The stand-in does one float64 matrix product over
  strided windows (exact: every sum is an integer far below 2⁵³) and the stock
  ``signed_clamp`` 24-bit wrap; ``tests/test_lava_mapping.py`` checks it against the stock
  model bit for bit (binary and graded inputs, strides, padding, 1×1 and k×1 kernels, the
  wrap). It is selected with ``Loihi2SimCfg(exception_proc_model_map={Conv: ...})``.
* :func:`open_trace` and :data:`PROBE_FILES` — the memory-mapped trace files (spikes int8,
  u and v int32) that the one recording process (:func:`hw_sim.probes.multi_probe`) writes
  and the host reads.

This module imports numpy and lava only (every Lava process is its own OS process; heavy
imports here would be paid by each of them).
"""
from __future__ import annotations

import os

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv import utils as conv_utils
from lava.proc.conv.process import Conv

__all__ = ["multi_delay", "PyConvModelFixedFast", "open_trace", "PROBE_FILES"]


def multi_delay(lines: list):
    """ONE process holding every balancing delay line of the network (own stand-in).

    Line ``i`` delays the spike vector on port ``in{i}`` ``(n_i,)`` by ``d_i ≥ 1`` steps onto
    ``out{i}``: output at step τ = input at step τ − d_i (zeros before). With a ``Sparse``
    behind it, a line is lava's ``DelaySparse`` with delay ``d_i`` on every synapse
    (``tests/test_lava_mapping.py`` compares them step by step). One process for all lines
    instead of one per (source, delay) because every Lava process is an OS process (≈ 15 MB
    private memory and a share of every step's barrier each) and lava-nc 0.10 cannot
    concatenate ports; the lines are independent, so merging them is exact. The model sends
    every line's output before it receives any input, so no line waits on another.

    Parameters
    ----------
    lines : list of ``(n, d)`` — size and delay (steps) of each line

    Returns
    -------
    ``(process, model_class)`` — connect ``in{i}`` / ``out{i}``; run with
    ``exception_proc_model_map={process: model_class}``.

    Raises
    ------
    ValueError
        A delay below 1 or no lines.
    """
    layout = tuple((int(n), int(d)) for n, d in lines)
    if not layout or any(d < 1 for _, d in layout):
        raise ValueError(f"multi_delay needs at least one line and delays >= 1, got {layout}")

    def __init__(self, *, name=None):
        super(cls, self).__init__(layout=layout, name=name)
        for i, (n, d) in enumerate(layout):
            setattr(self, f"in{i}", InPort(shape=(n,)))
            setattr(self, f"out{i}", OutPort(shape=(n,)))
            setattr(self, f"line{i}", Var(shape=(d, n), init=0))

    cls = type("MultiDelay", (AbstractProcess,), {"__init__": __init__, "__module__": __name__})

    def run_spk(self):
        lines = [(getattr(self, f"line{i}"), (self.time_step - 1) % d)
                 for i, (_, d) in enumerate(self.proc_params["layout"])]
        for i, (line, row) in enumerate(lines):
            getattr(self, f"out{i}").send(line[row].copy())
        for i, (line, row) in enumerate(lines):
            line[row] = getattr(self, f"in{i}").recv()

    attrs = {"run_spk": run_spk, "__module__": __name__}
    for i in range(len(layout)):
        attrs[f"in{i}"] = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=1)
        attrs[f"out{i}"] = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
        attrs[f"line{i}"] = LavaPyType(np.ndarray, np.int32, precision=1)
    model = type("PyMultiDelayModelFixed", (PyLoihiProcessModel,), attrs)
    model = implements(proc=cls, protocol=LoihiProtocol)(requires(CPU)(tag("fixed_pt")(model)))
    return cls(name="delays"), model


PROBE_FILES = {"spikes": np.int8, "u": np.int32, "v": np.int32}


def open_trace(path, name: str, depth: int, n: int, mode: str = "r"):
    """The memory map ``(depth, n)`` of one recorded group's file ``path/<name>.bin`` (spikes
    int8, u and v int32; written by :func:`hw_sim.probes.multi_probe`)."""
    return np.memmap(os.path.join(path, f"{name}.bin"), dtype=PROBE_FILES.get(name, np.int32), mode=mode,
                     shape=(depth, n))


def conv_fast(x: np.ndarray, weight: np.ndarray, stride, padding) -> np.ndarray:
    """Lava's ``Conv`` arithmetic (a true convolution: the kernel is flipped, see
    ``lava/proc/conv/utils.py::conv_scipy``) on ``x (X, Y, C)`` with ``weight (C', kx, ky, C)``,
    dilation 1, one group, as one float64 matrix product. Returns ``(X', Y', C')`` float64
    holding integers (exact while sums stay below 2⁵³)."""
    kx, ky = int(weight.shape[1]), int(weight.shape[2])
    px, py = int(padding[0]), int(padding[1])
    sx, sy = int(stride[0]), int(stride[1])
    xp = np.pad(np.asarray(x, dtype=np.float64), ((px, px), (py, py), (0, 0)))
    win = sliding_window_view(xp, (kx, ky), axis=(0, 1))[::sx, ::sy]  # (X', Y', C, kx, ky)
    wf = np.asarray(weight, dtype=np.float64)[:, ::-1, ::-1, :]  # flip: convolution
    if kx == 1 and ky == 1:
        return win[..., 0, 0] @ wf[:, 0, 0, :].T
    return np.einsum("xycij,oijc->xyo", win, wf, optimize=True)


@implements(proc=Conv, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyConvModelFixedFast(PyLoihiProcessModel):
    """Stand-in for lava's ``PyConvModelFixed`` (same ports, Vars and integers; see the module
    docstring). Dilation ≠ 1 or groups ≠ 1 are refused at the first step (``ValueError``)."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    a_buf: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    weight: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    kernel_size: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    stride: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    padding: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    dilation: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    groups: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    num_message_bits: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=5)
    weight_exp: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    num_weight_bits: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=5)

    def run_spk(self) -> None:
        if np.any(self.dilation != 1) or int(self.groups[0]) != 1:
            raise ValueError("PyConvModelFixedFast supports dilation 1 and groups 1 only")
        self.a_out.send(self.a_buf)
        s_in = self.s_in.recv()
        if self.num_message_bits.item() == 0:
            s_in = s_in.astype(bool)
        out = conv_fast(s_in, self.weight, self.stride, self.padding)
        self.a_buf = conv_utils.signed_clamp(out, bits=24).astype(np.int32)
