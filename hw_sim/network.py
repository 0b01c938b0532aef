"""Build a Lava process graph from an exported :class:`~export.ir.Graph` and stream clips
through it under ``Loihi2SimCfg(select_tag="fixed_pt")``.

Mapping (lava-nc 0.10 processes unless marked *own*):

==========================  ===========================================================
IR                          Lava
==========================  ===========================================================
neuron group                ``LIFReset`` (du, dv, vth, per-neuron bias_mant/bias_exp;
                            ``reset_interval = T_s``, ``reset_offset = latency``)
host-side first layer       *own* :class:`~hw_sim.processes.GradedInput` (integer currents)
conv / affine / graph /     ``Sparse``, one per (synapse, source), several into one
pool                        ``a_in`` sum; balancing delay: *own* ``SpikeDelay`` in front
                            (= ``DelaySparse``, see :mod:`hw_sim.processes` for why)
readout FC                  ``Dense`` → *own* :class:`~hw_sim.processes.Readout`
attention                   *own* :class:`~hw_sim.processes.SpikeAttention`
recording                   *own* :class:`~hw_sim.processes.GroupProbe` per group
==========================  ===========================================================

Streaming ("compile once, stream clips"): clip ``k`` enters at Lava steps
``k·T_s + 1 … k·T_s + T_s`` and group ``g`` (latency ``d_g`` from
:func:`export.passes.balance_delays`) works on clip ``k``, time step ``t`` at Lava step
``τ = k·T_s + t + d_g``. Its ``LIFReset`` zeroes u and v at ``τ ≡ d_g (mod T_s)``, i.e.
exactly before each clip's first step, so consecutive clips are independent and every layer
does useful work at every step (a pipeline ``readout_latency`` steps deep). Splitting a
multi-source synapse into one ``Sparse`` per source is exact because the shift then is a
left shift (``weight_exp ≥ 0``; checked).
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from export import fixed_point as fx
from export.ir import INPUT, LOGITS, Graph
from export.twin import quantise_input, synapse_op

from .connectivity import fan_out, per_clip_groups, population_shape, static_connections, synapse_matrix
from .errors import SimError
from .processes import PROBE_FILES, open_trace

__all__ = ["LavaNetwork", "build_network", "input_currents", "host_macs"]

# lava's compiler imports every module next to a process's module while it searches for
# process models and warns about each one that is not a process module: noise, not a fault.
warnings.filterwarnings("ignore", message="Cannot import module", category=UserWarning)


def input_currents(graph: Graph, x: torch.Tensor) -> dict:
    """Host-side first layer: integer currents of every input synapse per clip.

    Parameters
    ----------
    x : Tensor ``(N, C, T, V, M)`` preprocessed clips (metres).

    Returns
    -------
    dict target group → int64 array ``(N, n_target)`` (population order ``(M, C, T, V)``),
    computed with the twin's op and the shared shift (the same integers the twin uses).
    """
    C, _, V, M = graph.input_shape
    n = x.shape[0]
    xin = quantise_input(x.double().permute(0, 4, 1, 2, 3).reshape(n * M, C, x.shape[2], V),
                         graph.meta["input_frac_bits"])
    out = {}
    for s in graph.synapses.values():
        if s.sources != (INPUT,):
            continue
        y = fx.shift_exp(synapse_op(s, [xin], s.weight_mant, M), s.weight_exp)
        y = y.to(torch.int64).reshape(n, -1).numpy()
        out[s.target] = out.get(s.target, 0) + y
    return out


def host_macs(graph: Graph) -> int:
    """Multiply-accumulates of the host-side first layer per clip (non-zero weights, in-range
    taps; computed once per clip because direct coding repeats the same current)."""
    from export.resources import synapse_count
    M = int(graph.input_shape[3])
    return sum(synapse_count(graph, s) * M for s in graph.synapses.values() if s.sources == (INPUT,))


@dataclass
class LavaNetwork:
    """The built process graph plus what the runner needs to align and read it.

    Attributes
    ----------
    graph : Graph
    period : int — Lava steps per clip (= T_s).
    chunk : int — clips per run chunk (the host reads the probes between chunks).
    depth : int — ring depth of probes (steps) and readout (``depth // period`` clips).
    lif, probes : dict group → process
    sources : dict group → GradedInput
    trace_dir : str — temporary folder of the memory-mapped inputs and probe rings
    readout : Readout process
    fan_outs : dict (synapse, source) → non-zero fan-out per source neuron of the matrix
        given to Lava (for event counting; the matrices themselves live in the processes)
    shapes : dict group → ``(M, C, T, V)``
    """

    graph: Graph
    period: int
    chunk: int
    depth: int
    lif: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    synapses: dict = field(default_factory=dict)
    delays: dict = field(default_factory=dict)
    readout: object = None
    fan_outs: dict = field(default_factory=dict)
    shapes: dict = field(default_factory=dict)
    steps_run: int = 0
    started: bool = False
    trace_dir: str = ""
    probe_dirs: dict = field(default_factory=dict)

    @property
    def latency(self) -> dict:
        return {n: g.latency for n, g in self.graph.groups.items()}

    @property
    def readout_latency(self) -> int:
        return int(self.graph.meta["readout_latency"])

    @property
    def anchor(self):
        return next(iter(self.sources.values()))

    # ------------------------------------------------------------------ running
    def run_steps(self, steps: int, timeout_s: float) -> None:
        """Run ``steps`` Lava steps (compiling on the first call) in a watchdog thread.

        Raises
        ------
        SimError
            Lava raised, or the run did not finish within ``timeout_s`` seconds.
        """
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        box = {}

        def target():
            try:
                self.anchor.run(condition=RunSteps(num_steps=steps),
                                run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc

        self.started = True
        worker = threading.Thread(target=target, daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            raise SimError(f"the Lava run of {steps} steps (from step {self.steps_run}) did not finish "
                           f"within {timeout_s:.0f} s; the simulator looks stuck. Raise --timeout if "
                           "the network is just large")
        if "error" in box:
            raise SimError(f"Lava failed at steps {self.steps_run}..{self.steps_run + steps}: "
                           f"{type(box['error']).__name__}: {box['error']}") from box["error"]
        self.steps_run += steps

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the Lava runtime (idempotent); terminate its worker processes if stop hangs."""
        if not self.started:
            return
        self.started = False
        worker = threading.Thread(target=self.anchor.stop, daemon=True)
        worker.start()
        worker.join(timeout_s)
        # lava's stop (still running in ``worker`` if it hung) joins and *closes* its
        # SystemProcess objects concurrently with this loop; a closed process object raises
        # ValueError on every call, and closed means it was already joined, i.e. not alive.
        children = multiprocessing.active_children()
        for child in children:
            _signal(child, "terminate")
        deadline = time.monotonic() + 5.0
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in children:
            if _alive(child):
                _signal(child, "kill")
        multiprocessing.active_children()  # reap
        if self.trace_dir:
            shutil.rmtree(self.trace_dir, ignore_errors=True)

    def read_group(self, name: str, clips: range) -> dict:
        """Spikes, u, v of group ``name`` for finished stream clips: arrays
        ``(len(clips), T_s, n)``."""
        d = self.graph.groups[name].latency
        rows = np.array([(k * self.period + t + d - 1) % self.depth for k in clips for t in range(self.period)],
                        dtype=np.int64)
        out = {}
        n = int(np.prod(self.shapes[name]))
        for var in PROBE_FILES:
            buf = open_trace(self.probe_dirs[name], var, self.depth, n)
            out[var] = np.asarray(buf[rows]).reshape(len(clips), self.period, -1).astype(np.int64)
            del buf
        return out

    def read_logits(self, clips: range) -> np.ndarray:
        """Integer logits ``(len(clips), classes)`` of finished stream clips."""
        buf = self.readout.logits.get()
        slots = self.depth // self.period
        return np.stack([buf[k % slots] for k in clips]).astype(np.int64)

    def finished(self, latency: int) -> int:
        """Number of stream clips a stage of this latency has completed so far."""
        return max(0, (self.steps_run - latency + 1) // self.period)


def _alive(process) -> bool:
    """``process.is_alive()``, False for a process object that lava already closed (joined)."""
    try:
        return process.is_alive()
    except ValueError:
        return False


def _signal(process, how: str) -> None:
    """``process.terminate()`` / ``.kill()``, a no-op for a process lava already closed."""
    try:
        getattr(process, how)()
    except (ValueError, AttributeError):
        pass


def build_network(graph: Graph, currents: dict, chunk: int = 4) -> LavaNetwork:
    """Build the Lava processes and connections for a quantised, delay-balanced graph.

    Parameters
    ----------
    graph : Graph — from :func:`export.writers.lava_writer.read_lava`.
    currents : dict input group → int array ``(N, n)`` — :func:`input_currents` of the clips
        to stream (clip k enters at steps ``k·T_s + 1 … k·T_s + T_s``).
    chunk : int — clips per run chunk (the probe rings hold ``chunk`` clips plus the
        pipeline depth).

    Raises
    ------
    SimError
        Unquantised or unbalanced graph, a weight off Lava's 8-bit grid, a negative
        ``weight_exp`` on a multi-source synapse, a balancing delay above Loihi's 63.
    """
    from lava.proc.dense.process import Dense
    from lava.proc.lif.process import LIFReset
    from lava.proc.sparse.process import Sparse

    from .processes import GradedInput, GroupProbe, Readout, SpikeAttention, SpikeDelay

    if not graph.quantised:
        raise SimError("the graph is not quantised; replay an export directory written by mksgn-export")
    if "readout_latency" not in graph.meta:
        raise SimError("the graph is not delay-balanced (no readout_latency); re-export it")
    P = int(graph.time_steps)
    L = int(graph.meta["readout_latency"])
    slots = chunk + -(-L // P) + 2
    net = LavaNetwork(graph=graph, period=P, chunk=chunk, depth=slots * P,
                      trace_dir=tempfile.mkdtemp(prefix="mksgn-sim-"))
    per_clip = per_clip_groups(graph)
    for name, g in graph.groups.items():
        shape = population_shape(graph, name, per_clip)
        net.shapes[name] = shape
        n = int(np.prod(shape))
        chan = np.arange(shape[1])[None, :, None, None]
        bias_mant = np.broadcast_to(np.asarray(g.bias_mant)[chan], shape).ravel()
        bias_exp = np.broadcast_to(np.asarray(g.bias_exp)[chan], shape).ravel()
        net.lif[name] = LIFReset(shape=(n,), du=int(g.du), dv=int(g.dv), vth=int(g.vth_mant),
                                 bias_mant=bias_mant.astype(np.int32), bias_exp=bias_exp.astype(np.int32),
                                 reset_interval=P, reset_offset=int(g.latency) % P, name=name)
        pdir = os.path.join(net.trace_dir, f"g{len(net.probes)}")
        os.makedirs(pdir)
        for var in PROBE_FILES:
            open_trace(pdir, var, net.depth, n, "w+").flush()
        net.probe_dirs[name] = pdir
        probe = GroupProbe(n=n, depth=net.depth, path=pdir, name=f"probe:{name}")
        net.lif[name].s_out.connect(probe.s_in)
        probe.u_ref.connect_var(net.lif[name].u)
        probe.v_ref.connect_var(net.lif[name].v)
        net.probes[name] = probe
    for s in graph.synapses.values():
        if s.sources == (INPUT,):
            if graph.groups[s.target].latency != 1:
                raise SimError(f"{s.target}: input group at latency {graph.groups[s.target].latency}, expected 1")
            if s.target not in net.sources:
                cur = np.asarray(currents[s.target])
                if np.abs(cur).max(initial=0) >= 2 ** 31:
                    raise SimError(f"input currents of {s.target} do not fit int32")
                idir = os.path.join(net.trace_dir, f"in{len(net.sources)}")
                os.makedirs(idir)
                mm = open_trace(idir, "currents", cur.shape[0], cur.shape[1], "w+")
                mm[:] = cur
                mm.flush()
                src = GradedInput(n=cur.shape[1], clips=cur.shape[0], period=P, path=idir, name=f"input:{s.target}")
                src.s_out.connect(net.lif[s.target].a_in)
                net.sources[s.target] = src
    def spike_source(u: str, d: int):
        """OutPort carrying group u's spikes delayed by d steps (one shared line per (u, d))."""
        if d == 0:
            return net.lif[u].s_out
        if (u, d) not in net.delays:
            line = SpikeDelay(n=int(np.prod(net.shapes[u])), delay=d, name=f"delay{d}:{u}")
            net.lif[u].s_out.connect(line.s_in)
            net.delays[(u, d)] = line
        return net.delays[(u, d)].s_out

    for s, u in static_connections(graph):
        delays = s.meta.get("delays")
        if delays is None:
            raise SimError(f"synapse {s.name} has no balancing delays; re-export the checkpoint")
        d = int(delays[u])
        if not 0 <= d <= 63:
            raise SimError(f"synapse {s.name}: delay {d} from {u} is outside Loihi's 0..63")
        if len(s.sources) > 1 and s.weight_exp < 0:
            raise SimError(f"synapse {s.name}: weight_exp {s.weight_exp} < 0 on a multi-source synapse "
                           "cannot be split into per-source Lava synapses exactly")
        mat = synapse_matrix(graph, s, u, per_clip)
        if not np.array_equal(fx.truncate_weights(mat.data.astype(np.int64)), mat.data):
            raise SimError(f"synapse {s.name}: weights are not on Lava's 8-bit grid; re-export")
        net.fan_outs[(s.name, u)] = fan_out(mat)
        label = f"{s.name}<-{u}"
        if s.target == LOGITS:
            if d:
                raise SimError(f"readout {s.name} with a delay is not supported")
            conn = Dense(weights=mat.toarray(), weight_exp=int(s.weight_exp), num_weight_bits=8, name=label)
            if net.readout is None:
                net.readout = Readout(classes=mat.shape[0], bias=np.asarray(s.meta["bias_int"]), period=P,
                                      latency=L, depth=slots, name="readout")
            conn.a_out.connect(net.readout.a_in)
        else:
            conn = Sparse(weights=mat, weight_exp=int(s.weight_exp), num_weight_bits=8, name=label)
            conn.a_out.connect(net.lif[s.target].a_in)
        spike_source(u, d).connect(conn.s_in)
        net.synapses[label] = conn
    for s in graph.synapses.values():
        if s.kind != "attention":
            continue
        shape = net.shapes[s.target]
        att = SpikeAttention(shape=shape, weight_mant=int(np.asarray(s.weight_mant)), weight_exp=int(s.weight_exp),
                             delays=[int(s.meta["delays"][u]) for u in s.sources], name=s.name)
        for port, u in zip((att.q_in, att.k_in, att.v_in), s.sources):
            net.lif[u].s_out.connect(port)  # the attention process delays its own inputs
        att.a_out.connect(net.lif[s.target].a_in)
        net.synapses[s.name] = att
    if net.readout is None:
        raise SimError("the graph has no readout")
    if not net.sources:
        raise SimError("the graph has no host-side input layer")
    return net
