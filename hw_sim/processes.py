"""Lava processes that lava-nc 0.10 does not have, each a Process plus a ``fixed_pt``-tagged
ProcessModel (picked by ``Loihi2SimCfg(select_tag="fixed_pt")``).

Everything else in the replayed network is a lava-nc process: ``LIFReset`` (CUBA-LIF that
zeroes u and v every ``reset_interval`` steps — the clip boundary), ``Sparse`` /
``DelaySparse`` (all static synapses), ``Dense`` (readout FC) and ``RingBuffer`` (the
host-computed integer currents of the first layer).

* :class:`SpikeAttention` — SG-SA ``s·(Q Kᵀ) V`` multiplies two spike tensors, which no
  static synapse can do. Own process; the arithmetic is :func:`export.twin.synapse_op` and
  :func:`export.fixed_point.shift_exp`, the same code the twin runs. Like Lava's synapses it
  emits its result one step late, and it delays each input by its balancing delay.
* :class:`SpikeDelay` — a spike delay line of ``delay`` steps in front of a ``Sparse``:
  together they are lava's ``DelaySparse`` with one delay for every synapse. lava-nc 0.10's
  ``PyDelaySparseModelBitAcc`` rebuilds its delay-stacked weight matrix every step (with a
  CSR fancy assignment over all non-zeros), which made a 3-clip replay of a width-0.125
  MK-SGN run for more than 10 minutes; the delay line costs a copy per step. Delays are
  free on the chip (dendritic delay buffers), so no events are counted for it.
* :class:`Readout` — sums the readout FC currents and the integer bias over each clip's
  ``T_s`` steps into that clip's logits (the twin's integer logits).
* :class:`GroupProbe` — records a neuron group's spikes (InPort) and u, v (RefPorts read in
  the post-management phase, as lava's ``Monitor`` does) into a ring buffer of ``depth``
  steps, so clips can stream through one compiled run without a Monitor buffer that grows
  with the run length.
"""
from __future__ import annotations

import numpy as np
import torch

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from export import fixed_point as fx

__all__ = ["SpikeAttention", "Readout", "GroupProbe", "SpikeDelay", "GradedInput", "open_trace"]


class SpikeAttention(AbstractProcess):
    """Spatial Global Spiking Attention, ``out = (((Q Kᵀ) V) · w_mant) << weight_exp`` per
    frame over joints (paper eq. 8–10; own process — no lava-nc synapse multiplies spikes).

    Parameters
    ----------
    shape : tuple ``(M, C, T, V)``
        Population shape of Q, K, V and of the output.
    weight_mant, weight_exp : int
        The attention scale s = ``weight_mant · 2^weight_exp`` in integer units (s is a power
        of two, so this is exact).
    delays : tuple of 3 int
        Balancing delays (steps) of the Q, K and V inputs.

    Ports: ``q_in``, ``k_in``, ``v_in`` (spikes, ``(M·C·T·V,)``), ``a_out`` (int currents).
    """

    def __init__(self, *, shape, weight_mant: int, weight_exp: int, delays=(0, 0, 0), name=None):
        n = int(np.prod(shape))
        super().__init__(shape=tuple(shape), weight_mant=int(weight_mant), weight_exp=int(weight_exp),
                         delays=tuple(int(d) for d in delays), name=name)
        self.q_in = InPort(shape=(n,))
        self.k_in = InPort(shape=(n,))
        self.v_in = InPort(shape=(n,))
        self.a_out = OutPort(shape=(n,))
        self.a_buff = Var(shape=(n,), init=0)


@implements(proc=SpikeAttention, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeAttentionModelFixed(PyLoihiProcessModel):
    """Integer model of :class:`SpikeAttention` (calls the twin's op and the shared shift)."""

    q_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=1)
    k_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=1)
    v_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=1)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    a_buff: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.shape = proc_params["shape"]
        self.delays = proc_params["delays"]
        n = int(np.prod(self.shape))
        # delay lines: line[d] is what the port received d steps ago
        self.lines = [[np.zeros(n, dtype=np.int64) for _ in range(d)] for d in self.delays]
        from export.ir import Synapse
        self.syn = Synapse(name="attention", kind="attention", sources=("q", "k", "v"), target="out",
                           weight=np.array(proc_params["weight_mant"]))

    def run_spk(self):
        from export.twin import synapse_op
        self.a_out.send(self.a_buff)
        xs = []
        for port, line in zip((self.q_in, self.k_in, self.v_in), self.lines):
            line.insert(0, port.recv().astype(np.int64))
            xs.append(torch.as_tensor(line.pop(), dtype=torch.float64).view(self.shape))
        y = synapse_op(self.syn, xs, self.proc_params["weight_mant"], self.shape[0])
        y = fx.shift_exp(y, self.proc_params["weight_exp"])
        self.a_buff = fx.wrap_int32(y.to(torch.int64).numpy().ravel()).astype(np.int32)


class SpikeDelay(AbstractProcess):
    """Delay a spike vector by ``delay`` ≥ 1 steps (own process; see the module docstring).

    Ports: ``s_in``, ``s_out`` of ``(n,)``. Output at step τ = input at step τ − delay
    (zeros before).
    """

    def __init__(self, *, n: int, delay: int, name=None):
        if delay < 1:
            raise ValueError("SpikeDelay needs delay >= 1")
        super().__init__(delay=int(delay), name=name)
        self.s_in = InPort(shape=(n,))
        self.s_out = OutPort(shape=(n,))
        self.line = Var(shape=(delay, n), init=0)


@implements(proc=SpikeDelay, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeDelayModelFixed(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=1)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    line: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=1)

    def run_spk(self):
        row = (self.time_step - 1) % self.proc_params["delay"]
        self.s_out.send(self.line[row].copy())
        self.line[row] = self.s_in.recv()


class Readout(AbstractProcess):
    """Readout accumulator (own process: a neuron-less integrator of the FC currents).

    At Lava step τ the input belongs to stream step ``r = τ − latency`` (clip ``r // period``,
    time step ``r % period``); for ``r ≥ 0`` it adds ``a_in + bias`` to that clip's logits,
    starting from 0 at the clip's first step. ``logits`` is a ring of ``depth`` clips.

    Parameters
    ----------
    classes : int
    bias : int array ``(classes,)`` — integer readout bias, added every step (as the twin).
    period : int — steps per clip (T_s).
    latency : int — Lava steps from the input to the readout (``meta["readout_latency"]``).
    depth : int — clips held in the ring.
    """

    def __init__(self, *, classes: int, bias, period: int, latency: int, depth: int, name=None):
        super().__init__(period=int(period), latency=int(latency), depth=int(depth), name=name)
        self.a_in = InPort(shape=(classes,))
        self.bias = Var(shape=(classes,), init=np.asarray(bias, dtype=np.int64))
        self.logits = Var(shape=(depth, classes), init=0)


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyReadoutModelFixed(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=32)
    logits: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=64)

    def run_spk(self):
        a = self.a_in.recv().astype(np.int64)
        r = self.time_step - self.proc_params["latency"]
        if r < 0:
            return
        period = self.proc_params["period"]
        slot = (r // period) % self.proc_params["depth"]
        if r % period == 0:
            self.logits[slot] = 0
        self.logits[slot] += a + self.bias


class GroupProbe(AbstractProcess):
    """Ring-buffer recorder of one neuron group: spikes via ``s_in``, u and v via RefPorts
    (read in the post-management phase, as lava's ``Monitor`` does).

    Step τ (1-based) is stored in row ``(τ − 1) % depth`` of three memory-mapped files in
    ``path`` (``spikes.i8``, ``u.i32``, ``v.i32``, each ``(depth, n)``), which the host
    reads between runs: lava's ``Var.get`` relays arrays element by element through the
    runtime service, which took minutes per read for a (56, 8320) buffer.
    """

    def __init__(self, *, n: int, depth: int, path: str, name=None):
        super().__init__(n=int(n), depth=int(depth), path=str(path), name=name)
        self.s_in = InPort(shape=(n,))
        self.u_ref = RefPort(shape=(n,))
        self.v_ref = RefPort(shape=(n,))


PROBE_FILES = {"spikes": np.int8, "u": np.int32, "v": np.int32}


def open_trace(path, name: str, depth: int, n: int, mode: str = "r"):
    """The memory map of one :class:`GroupProbe` / :class:`GradedInput` file."""
    import os
    return np.memmap(os.path.join(path, f"{name}.bin"), dtype=PROBE_FILES.get(name, np.int32), mode=mode,
                     shape=(depth, n))


@implements(proc=GroupProbe, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyGroupProbeModelFixed(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    u_ref: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int32, precision=24)
    v_ref: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int32, precision=24)

    def _maps(self):
        if not hasattr(self, "maps"):
            p = self.proc_params
            self.maps = {k: open_trace(p["path"], k, p["depth"], p["n"], "r+") for k in PROBE_FILES}
        return self.maps

    def run_spk(self):
        self._maps()["spikes"][(self.time_step - 1) % self.proc_params["depth"]] = self.s_in.recv() != 0

    def post_guard(self):
        return True

    def run_post_mgmt(self):
        row = (self.time_step - 1) % self.proc_params["depth"]
        self._maps()["u"][row] = self.u_ref.read()
        self._maps()["v"][row] = self.v_ref.read()


class GradedInput(AbstractProcess):
    """Host-side first layer: sends the precomputed integer currents of clip
    ``(τ − 1) // period`` at Lava step τ (zeros after the last clip) — own process, the
    graded-input source. The currents ``(clips, n)`` int32 are read from a memory-mapped
    file ``path/currents.bin`` (lava's ``RingBuffer`` would need a ``Var.set`` per chunk,
    which lava relays element by element).
    """

    def __init__(self, *, n: int, clips: int, period: int, path: str, name=None):
        super().__init__(n=int(n), clips=int(clips), period=int(period), path=str(path), name=name)
        self.s_out = OutPort(shape=(n,))


@implements(proc=GradedInput, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyGradedInputModelFixed(PyLoihiProcessModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self):
        p = self.proc_params
        if not hasattr(self, "data"):
            self.data = open_trace(p["path"], "currents", p["clips"], p["n"])
        k = (self.time_step - 1) // p["period"]
        self.s_out.send(np.array(self.data[k]) if k < p["clips"] else np.zeros(p["n"], dtype=np.int32))
