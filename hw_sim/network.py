"""Build a Lava process graph from an exported :class:`~export.ir.Graph` and stream clips
through it under ``Loihi2SimCfg(select_tag="fixed_pt")``.

Mapping (the rule, with the hops each costs, is :mod:`export.mapping`):

=========================  ====================================================  =============
IR                         Lava process(es)                                       stock / own
=========================  ====================================================  =============
neuron group               ``LIFReset`` (du, dv, vth, per-neuron bias;           stock
                           ``reset_interval = T_s``, ``reset_offset = latency``)
first layer                ``RingBuffer`` of quantised coordinates → ``Sparse``  stock
                           (graded messages, ``weight_exp``)
temporal / graph conv      ``Conv`` (weight stored once; transposing virtual     stock (fast
                           ports); ``weight_exp < 0``: ``Conv`` → ``GradedVec``  model: own
                           relay → flooring one-to-one ``Sparse``                stand-in)
affine / pool              ``Sparse``, one per (synapse, source)                 stock
attention (SG-SA)          ``Sparse`` → ``ProdNeuron`` → ``Sparse`` →            stock
                           ``GradedVec`` → ``Sparse`` → ``ProdNeuron`` →
                           ``Sparse`` (:mod:`hw_sim.attention`)
readout FC                 ``Dense`` → non-spiking ``LIFReset`` (du 4095, dv 0,  stock
                           bias ``64·b``, vth out of reach); logits = ``v >> 6``
                           at each clip's last step
balancing delay            one ``multi_delay`` process: a line per (source,      own (= ``DelaySparse``)
                           delay) in front of its synapses
recording                  one ``multi_probe`` process: every group's spikes,    own (instruments)
                           u, v; counts / values of relays and attention
=========================  ====================================================  =============

Streaming ("compile once, stream clips"): the ``RingBuffer`` sends clip ``k`` at Lava steps
``k·T_s + 1 … k·T_s + T_s`` and group ``g`` (latency ``d_g`` from
:func:`export.passes.balance_delays`) works on clip ``k``, time step ``t`` at Lava step
``τ = k·T_s + t + d_g + 1`` (:data:`LAVA_OFFSET`). Its ``LIFReset`` zeroes u and v at
``τ ≡ d_g + 1 (mod T_s)``, i.e.
exactly before each clip's first step, so consecutive clips are independent and every layer
does useful work at every step (a pipeline ``readout_latency`` steps deep). Splitting a
multi-source synapse into one process per source is exact because the shift then is a
left shift (``weight_exp ≥ 0``; checked).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
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
from scipy import sparse as sp

from export import fixed_point as fx
from export.ir import INPUT, LOGITS, Graph
from export.mapping import attention_hops, merged_sources, paired, synapse_mapping
from export.passes import balance_delays
from export.resources import synapse_count
from export.twin import quantise_input

from .connectivity import (
    conv_params,
    conv_views,
    fan_out,
    per_clip_groups,
    population_shape,
    shared_fan_out,
    static_connections,
    synapse_matrix,
)
from .errors import SimError
from .processes import PROBE_FILES, open_trace

#: Largest |sum| a stock ``Conv``'s fixed-point output holds (``fx.CONV_OUT_BITS``-bit signed);
#: a conv whose worst-case sum could exceed it is unrolled into ``Sparse`` instead.
CONV_SUM_MAX = 2 ** (fx.CONV_OUT_BITS - 1) - 1

__all__ = ["LavaNetwork", "build_network", "input_coordinates", "host_macs", "release_free_heap", "READOUT"]

#: Name of the readout integrator population in ``LavaNetwork.lif`` / ``probes``.
READOUT = "readout"
#: Messages each Lava channel buffers (shared memory per channel = this × message bytes).
#: lava-nc's default is 64 (``lava/magma/compiler/compiler.py``): 345 MB for one channel of
#: a 1.35 M-neuron attention product population, 8.3 GB of /dev/shm for the width-0.25
#: MK-SGN. Under the Loihi protocol every channel carries one message per step and the step
#: barrier drains it, so a small buffer suffices.
CHANNEL_SIZE = 2
#: Lava starts at step 1 and the ``RingBuffer`` input sends its first column then, so a
#: stage of latency ``d`` works on clip ``k``, time step ``t`` at Lava step
#: ``k·T_s + t + d + LAVA_OFFSET``.
LAVA_OFFSET = 1

# lava's compiler imports every module next to a process's module while it searches for
# process models and warns about each one that is not a process module: noise, not a fault.
warnings.filterwarnings("ignore", message="Cannot import module", category=UserWarning)


def input_coordinates(graph: Graph, x: torch.Tensor) -> np.ndarray:
    """The integer coordinates the chip receives: ``(N, M·C·T·V)`` int32 (``round(x ·
    2^input_frac_bits)``, the export's input encoding, population order ``(M, C, T, V)``).

    Parameters
    ----------
    x : Tensor ``(N, C, T, V, M)`` preprocessed clips (metres).

    Raises
    ------
    SimError
        A coordinate does not fit the 16-bit input encoding.
    """
    n = x.shape[0]
    try:
        q = quantise_input(x.double().permute(0, 4, 1, 2, 3), graph.meta["input_frac_bits"])
    except Exception as exc:  # ExportError: out of the 16-bit range
        raise SimError(str(exc)) from None
    return q.reshape(n, -1).numpy().astype(np.int32)


def host_macs(graph: Graph) -> int:
    """Multiply-accumulates of the host-side first layer per clip (non-zero weights, in-range
    taps; computed once per clip because direct coding repeats the same current)."""
    M = int(graph.input_shape[3])
    return sum(synapse_count(graph, s) * M for s in graph.synapses.values() if s.sources == (INPUT,))


def _libc_malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_free_heap() -> None:
    """Give the free pages of this process's heap back to the OS (glibc ``malloc_trim(0)``; a
    no-op without glibc). Called before Lava forks its processes (so they do not inherit
    free pages) and after every chunk of a replay: the host's twin and probe
    reads allocate many arrays below glibc's (self-raising, up to 32 MB) mmap threshold, so
    freed memory stayed in the heap — 2.2 GB of the parent's 2.4 GB PSS in a whole-split
    replay of the width-0.25 MK-SGN. Own code: no library exposes it; a call costs
    milliseconds."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass
class LavaNetwork:
    """The built process graph plus what the runner needs to align and read it.

    Attributes
    ----------
    graph : Graph
    period : int — Lava steps per clip (= T_s).
    chunk : int — clips per run chunk (the host reads the probes between chunks).
    depth : int — ring depth of probes (steps).
    lif : dict group → process (plus :data:`READOUT`, the readout integrator)
    probe : the one recording process (:func:`hw_sim.probes.multi_probe`): spikes, u, v of
        every group, and the instrument points in ``aux``
    source : the ``RingBuffer`` of quantised coordinates
    processes : dict label → process (every synapse, relay, delay line and attention part)
    aux : dict label → dict(kind ``count``/``values``, path, n, latency) — instrument probes
        on intermediate populations (relays, attention products and middle population)
    event_terms : list of dict(synapse, hop, trace, fan_out) — synaptic events are
        ``Σ_t (non-zero messages of each source neuron) · fan_out`` with ``trace`` either
        ``("spikes", group)`` or ``("aux", label)`` (a count probe: fan-out 1 per message)
    mapping : dict synapse → mapping name (:func:`export.mapping.synapse_mapping`, or
        ``sparse`` where a shared conv fell back because its sum could wrap)
    stored_weights : dict synapse → weights held by the Lava processes
    shapes : dict group → ``(M, C, T, V)``
    trace_dir : str — temporary folder of the memory-mapped probe rings
    """

    graph: Graph
    period: int
    chunk: int
    depth: int
    lif: dict = field(default_factory=dict)
    source: object = None
    processes: dict = field(default_factory=dict)
    aux: dict = field(default_factory=dict)
    event_terms: list = field(default_factory=list)
    mapping: dict = field(default_factory=dict)
    stored_weights: dict = field(default_factory=dict)
    shapes: dict = field(default_factory=dict)
    steps_run: int = 0
    started: bool = False
    trace_dir: str = ""
    probe_dirs: dict = field(default_factory=dict)
    probe: object = None
    model_map: dict = field(default_factory=dict)

    @property
    def readout_latency(self) -> int:
        return int(self.graph.meta["readout_latency"])

    @property
    def anchor(self):
        return self.source

    # ------------------------------------------------------------------ running
    def run_steps(self, steps: int, timeout_s: float) -> None:
        """Run ``steps`` Lava steps (compiling on the first call) in a watchdog thread.

        Raises
        ------
        SimError
            Lava raised, or the run did not finish within ``timeout_s`` seconds.
        """
        self.wait(self.start_steps(steps), timeout_s)

    def start_steps(self, steps: int) -> dict:
        """Start running ``steps`` Lava steps in a worker thread and return at once; the host
        may compute meanwhile (the replay runs the twin of the chunk). Finish with
        :meth:`wait`. The first call compiles and forks the Lava processes: callers should not
        run other threads then (forking a process whose other threads hold locks can
        deadlock the children), which is why :func:`hw_sim.replay.replay` overlaps only
        from the second chunk on.

        Returns
        -------
        dict — the handle for :meth:`wait`
        """
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.conv.process import Conv

        from .processes import PyConvModelFixedFast
        box = {"steps": steps, "t0": time.monotonic()}
        cfg = Loihi2SimCfg(select_tag="fixed_pt",
                           exception_proc_model_map={Conv: PyConvModelFixedFast, **self.model_map})

        def target():
            try:
                self.anchor.run(condition=RunSteps(num_steps=steps), run_cfg=cfg,
                                compile_config={"pypy_channel_size": CHANNEL_SIZE})
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc

        if not self.started:
            # Lava forks one OS process per Lava process at the first run. Freezing the
            # collector keeps the children's garbage collection from touching (and so
            # copying) every page of the parent's object heap they inherited.
            gc.collect()
            release_free_heap()
            gc.freeze()
        self.started = True
        box["worker"] = threading.Thread(target=target, daemon=True)
        box["worker"].start()
        return box

    def wait(self, box: dict, timeout_s: float) -> None:
        """Wait for a run started by :meth:`start_steps`; ``timeout_s`` counts from its start.

        Raises
        ------
        SimError
            Lava raised, or the run did not finish within ``timeout_s`` seconds.
        """
        steps, worker = box["steps"], box["worker"]
        worker.join(max(0.0, timeout_s - (time.monotonic() - box["t0"])))
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
            if self.trace_dir:
                shutil.rmtree(self.trace_dir, ignore_errors=True)
            return
        self.started = False
        gc.unfreeze()
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

    def _rows(self, latency: int, clips: range, steps=None) -> np.ndarray:
        steps = range(self.period) if steps is None else steps
        taus = np.array([k * self.period + t + latency + LAVA_OFFSET for k in clips for t in steps],
                        dtype=np.int64)
        if len(taus) and (taus.max() > self.steps_run or taus.min() <= self.steps_run - self.depth):
            raise SimError(f"probe rows of Lava steps {int(taus.min())}..{int(taus.max())} are not in the "
                           f"ring after step {self.steps_run} (depth {self.depth}): read every chunk, "
                           "and run at most chunk × T_s steps between reads")
        return (taus - 1) % self.depth

    def read_group(self, name: str, clips: range) -> dict:
        """Spikes, u, v of group ``name`` for finished stream clips: arrays
        ``(len(clips), T_s, n)`` of the probe's dtypes (:data:`hw_sim.processes.PROBE_FILES`:
        spikes int8, u and v int32)."""
        rows = self._rows(self.graph.groups[name].latency, clips)
        out = {}
        n = int(np.prod(self.shapes[name]))
        for var in PROBE_FILES:
            buf = open_trace(self.probe_dirs[name], var, self.depth, n)
            out[var] = np.asarray(buf[rows]).reshape(len(clips), self.period, -1)  # int8 / int32
            del buf
        return out

    def read_aux(self, label: str, clips: range) -> np.ndarray:
        """An instrument probe for finished clips: counts ``(clips, T_s)`` or values
        ``(clips, T_s, n)``."""
        a = self.aux[label]
        rows = self._rows(a["latency"], clips)
        if a["kind"] == "count":
            buf = np.memmap(os.path.join(a["path"], "count.bin"), dtype=np.int64, mode="r", shape=(self.depth,))
            return np.asarray(buf[rows]).reshape(len(clips), self.period)
        buf = np.memmap(os.path.join(a["path"], "values.bin"), dtype=np.int32, mode="r", shape=(self.depth, a["n"]))
        return np.asarray(buf[rows]).reshape(len(clips), self.period, -1).astype(np.int64)

    def read_logits(self, clips: range) -> np.ndarray:
        """Integer logits ``(len(clips), classes)`` of finished stream clips: the readout
        integrator's ``v`` at each clip's last step, ``>> 6`` (``v`` holds ``64 ×`` the
        logit sum, see :func:`build_network`); a ``v`` that is not a multiple of 64 cannot be
        a logit and is returned as the sentinel ``-2**62`` so the comparison reports it."""
        rows = self._rows(self.readout_latency, clips, steps=[self.period - 1])
        n = int(self.shapes[READOUT][1])
        buf = open_trace(self.probe_dirs[READOUT], "v", self.depth, n)
        v = np.asarray(buf[rows]).astype(np.int64).reshape(len(clips), n)
        unit = 1 << fx.ACT_SHIFT
        return np.where(v % unit == 0, v >> fx.ACT_SHIFT, -2 ** 62)

    def finished(self, latency: int) -> int:
        """Number of stream clips a stage of this latency has completed so far."""
        return max(0, (self.steps_run - latency - LAVA_OFFSET + 1) // self.period)

    @property
    def drain_steps(self) -> int:
        """Steps to run after the last clip entered until its logits are complete."""
        return self.readout_latency + LAVA_OFFSET - 1

    @property
    def process_count(self) -> int:
        """Lava processes (each one an OS process when running)."""
        return 1 + len(self.lif) + len(self.processes) + (self.probe is not None)


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


def _lif(g_du, g_dv, vth, bias_mant, bias_exp, n, P, latency, name):
    from lava.proc.lif.process import LIFReset
    return LIFReset(shape=(n,), du=int(g_du), dv=int(g_dv), vth=int(vth), bias_mant=bias_mant.astype(np.int32),
                    bias_exp=bias_exp.astype(np.int32), reset_interval=P, reset_offset=(int(latency) + LAVA_OFFSET) % P, name=name)


def _readout_bias(bias_int: np.ndarray, name: str) -> tuple:
    """``(bias_mant, bias_exp)`` with ``bias_mant · 2^bias_exp = 64 · bias_int`` exactly
    (LIF ``u`` holds ``a_in << 6``, so ``v`` accumulates 64 × the logits).

    Raises
    ------
    SimError
        A bias that no 13-bit mantissa and 3-bit exponent represent exactly.
    """
    b = np.asarray(bias_int, dtype=np.int64)
    mant, exp = np.zeros_like(b), np.zeros_like(b)
    for i, x in enumerate(b):
        for e in range(6, -1, -1):  # 64·x = (x·2^(6-e))·2^e; prefer the smallest mantissa
            m = int(x) << (6 - e)
            if fx.BIAS_MANT_MIN <= m <= fx.BIAS_MANT_MAX:
                mant[i], exp[i] = m, e
                break
        else:
            for e in range(7, fx.BIAS_EXP_MAX + 1):
                if (int(x) * 64) % (1 << e) == 0 and fx.BIAS_MANT_MIN <= (int(x) * 64) >> e <= fx.BIAS_MANT_MAX:
                    mant[i], exp[i] = (int(x) * 64) >> e, e
                    break
            else:
                raise SimError(f"{name}: integer readout bias {int(x)} cannot be held by a Loihi bias "
                               f"(13-bit mantissa, exponent ≤ {fx.BIAS_EXP_MAX}) exactly")
    return mant, exp


def build_network(graph: Graph, coords: np.ndarray, chunk: int = 4, shared: bool = True,
                  check_mapping: bool = True) -> LavaNetwork:
    """Build the Lava processes and connections for a quantised, delay-balanced graph (the
    mapping table is in the module docstring; the rule in :mod:`export.mapping`).

    Parameters
    ----------
    graph : Graph — from :func:`export.writers.lava_writer.read_lava`.
    coords : int array ``(N, M·C·T·V)`` — :func:`input_coordinates` of the clips to stream
        (clip k enters at steps ``k·T_s + 1 … k·T_s + T_s``).
    chunk : int — clips per run chunk (the probe rings hold ``chunk`` clips plus the
        pipeline depth).
    shared : bool — map temporal and graph convs to ``Conv`` (weights stored once); False
        unrolls them into ``Sparse`` matrices with the same hops (for the equivalence test
        and for comparison; needs memory proportional to frames × bodies).

    Raises
    ------
    SimError
        Unquantised graph, delays that do not follow the current mapping (an export written
        by an older version: re-export; ``check_mapping=False`` skips this for tests that
        plant wrong delays on purpose), a weight off Lava's 8-bit grid, a negative
        ``weight_exp`` on a multi-source unrolled synapse, a delay above Loihi's 63, a
        readout bias no Loihi bias holds exactly.
    """
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    from lava.proc.graded.process import GradedVec
    from lava.proc.io.source import RingBuffer
    from lava.proc.sparse.process import Sparse

    from .attention import build_attention
    from .probes import multi_probe
    from .processes import multi_delay

    if not graph.quantised:
        raise SimError("the graph is not quantised; replay an export directory written by mksgn-export")
    if "readout_latency" not in graph.meta:
        raise SimError("the graph is not delay-balanced (no readout_latency); re-export it")
    ref = balance_delays(graph)
    if check_mapping and (ref.meta["readout_latency"] != graph.meta["readout_latency"] or any(
            ref.synapses[k].meta["delays"] != s.meta.get("delays") for k, s in graph.synapses.items())):
        raise SimError("the export's delays do not follow this version's Lava mapping (export.mapping); "
                       "re-export the checkpoint with mksgn-export")
    P = int(graph.time_steps)
    L = int(graph.meta["readout_latency"])
    # A group's rows are read as soon as its clips finish (after every run of ≤ chunk·T_s
    # steps), so at most chunk·T_s + T_s − 1 rows are ever unread, whatever the group's
    # latency: the ring needs chunk + 1 clip slots (it had chunk + ⌈L / T_s⌉ + 2, 23 instead
    # of 9 slots for the width-0.25 MK-SGN at chunk 8: 0.5 GB more of probe files).
    net = LavaNetwork(graph=graph, period=P, chunk=chunk, depth=(chunk + 1) * P,
                      trace_dir=tempfile.mkdtemp(prefix="mksgn-sim-"))
    per_clip = per_clip_groups(graph)

    def probe_dir(tag: str) -> str:
        d = os.path.join(net.trace_dir, f"p{len(net.probe_dirs) + len(net.aux)}")
        os.makedirs(d)
        return d

    entries = []  # (kind, n, path, port, lif): all recorded points, one probe process at the end

    def group_probe(name: str, lif, n: int):
        pdir = probe_dir(name)
        for var in PROBE_FILES:
            open_trace(pdir, var, net.depth, n, "w+").flush()
        net.probe_dirs[name] = pdir
        entries.append(("group", n, pdir, lif.s_out, lif))

    def aux_probe(label: str, port, n: int, kind: str, latency: int, part=None):
        pdir = probe_dir(label)
        if kind == "count":
            np.memmap(os.path.join(pdir, "count.bin"), dtype=np.int64, mode="w+", shape=(net.depth,)).flush()
        else:
            np.memmap(os.path.join(pdir, "values.bin"), dtype=np.int32, mode="w+", shape=(net.depth, n)).flush()
        entries.append((kind if part is None else f"count:{part[0]}:{part[1]}", n, pdir, port, None))
        net.aux[label] = {"kind": kind, "path": pdir, "n": n, "latency": latency}

    # ---------------------------------------------------------------- neuron groups
    for name, g in graph.groups.items():
        shape = population_shape(graph, name, per_clip)
        net.shapes[name] = shape
        n = int(np.prod(shape))
        chan = np.arange(shape[1])[None, :, None, None]
        bias_mant = np.broadcast_to(np.asarray(g.bias_mant)[chan], shape).ravel()
        bias_exp = np.broadcast_to(np.asarray(g.bias_exp)[chan], shape).ravel()
        net.lif[name] = _lif(g.du, g.dv, g.vth_mant, bias_mant, bias_exp, n, P, g.latency, name)
        group_probe(name, net.lif[name], n)

    # ---------------------------------------------------------------- input
    coords = np.asarray(coords)
    N = coords.shape[0]
    data = np.zeros((coords.shape[1], N * P + L + P), dtype=np.int32)  # zeros after the last clip
    data[:, :N * P] = np.repeat(coords.T, P, axis=1)
    net.source = RingBuffer(data=data)

    def check_delay(s, u, d):
        if not 0 <= d <= fx.MAX_DELAY:
            raise SimError(f"synapse {s.name}: delay {d} from {u} is outside Loihi's 0..{fx.MAX_DELAY}")

    # ---------------------------------------------------------------- delay lines
    for s in graph.synapses.values():
        for u in s.sources:
            if u != INPUT:
                check_delay(s, u, int(s.meta["delays"][u]))
    # one line per (source group, delay) that some synapse needs, all in one process
    lines = sorted({(u, int(s.meta["delays"][u])) for s in graph.synapses.values() for u in s.sources
                    if u != INPUT and int(s.meta["delays"][u]) > 0},
                   key=lambda ud: (list(graph.groups).index(ud[0]), ud[1]))
    line_port = {}
    if lines:
        delays, model = multi_delay([(int(np.prod(net.shapes[u])), d) for u, d in lines])
        for i, (u, d) in enumerate(lines):
            net.lif[u].s_out.connect(getattr(delays, f"in{i}"))
            line_port[(u, d)] = getattr(delays, f"out{i}")
        net.processes["delays"] = delays
        net.model_map[delays] = model  # looked up by instance (lava compiler_graphs.py)

    def spike_source(u: str, d: int):
        """OutPort carrying group u's spikes delayed by d steps (one shared line per (u, d))."""
        if d == 0:
            return net.lif[u].s_out
        if (u, d) not in line_port:
            raise SimError(f"no delay line of {d} steps from {u}; the synapse delays changed during the build")
        return line_port[(u, d)]

    def sparse(s, u, mat, label, weight_exp, graded=False):
        if not np.array_equal(fx.truncate_weights(mat.data.astype(np.int64)), mat.data):
            raise SimError(f"synapse {s.name}: weights are not on Lava's 8-bit grid; re-export")
        conn = Sparse(weights=mat, weight_exp=int(weight_exp), num_weight_bits=8,
                      num_message_bits=24 if graded else 0, name=label)
        net.processes[label] = conn
        return conn

    # ---------------------------------------------------------------- static synapses
    readout_lif = None
    for s, u in static_connections(graph):
        mapping = synapse_mapping(s)
        label = f"{s.name}<-{u}"
        if u == INPUT:
            mat = synapse_matrix(graph, s, u, per_clip)
            conn = sparse(s, u, mat, label, s.weight_exp, graded=True)
            net.source.s_out.connect(conn.s_in)
            conn.a_out.connect(net.lif[s.target].a_in)
            net.mapping[s.name] = "input"
            net.stored_weights[s.name] = int(mat.nnz)
            continue
        delays = s.meta.get("delays")
        d = int(delays[u])
        check_delay(s, u, d)
        src = spike_source(u, d)
        if s.target == LOGITS:
            if d:
                raise SimError(f"readout {s.name} with a delay is not supported")
            mat = synapse_matrix(graph, s, u, per_clip)
            conn = Dense(weights=mat.toarray(), weight_exp=int(s.weight_exp), num_weight_bits=8, name=label)
            net.processes[label] = conn
            src.connect(conn.s_in)
            if readout_lif is None:
                classes = mat.shape[0]
                bm, be = _readout_bias(np.asarray(s.meta["bias_int"]), s.name)
                readout_lif = _lif(fx.DU_MAX, 0, fx.VTH_MAX, bm, be, classes, P, L, READOUT)
                net.lif[READOUT] = readout_lif
                net.shapes[READOUT] = (1, classes, 1, 1)
                group_probe(READOUT, readout_lif, classes)
            conn.a_out.connect(readout_lif.a_in)
            net.event_terms.append({"synapse": s.name, "hop": "dense", "trace": ("spikes", u), "fan_out": fan_out(mat)})
            net.mapping[s.name] = "dense"
            net.stored_weights[s.name] = int(mat.nnz)
            continue
        tgt_shape = net.shapes[s.target]
        if s.meta.get("paired_with"):
            continue  # built with its high group below
        if mapping == "conv" and paired(s, u):
            lo = next(x for x in graph.synapses.values()
                      if x.meta.get("paired_with") == s.name and x.sources == (u,))
            _build_pair(net, graph, s, lo, u, src, tgt_shape, per_clip, shared, sparse, aux_probe, Conv, GradedVec)
            continue
        if merged_sources(s):
            if u != s.sources[0]:
                continue  # every source was connected with the first one
            feeds = []
            for v in s.sources:
                dv = int(delays[v])
                check_delay(s, v, dv)
                if net.shapes[v] != net.shapes[u]:
                    raise SimError(f"synapse {s.name}: sources {u} and {v} differ in shape "
                                   f"({net.shapes[u]} vs {net.shapes[v]}); re-export")
                feeds.append((v, dv, spike_source(v, dv)))
        else:
            feeds = [(u, d, src)]
        _build_static(net, graph, s, feeds, mapping, tgt_shape, per_clip, shared, sparse, aux_probe,
                      Conv, GradedVec)

    # ---------------------------------------------------------------- attention
    for s in graph.synapses.values():
        if s.kind != "attention":
            continue
        order = s.meta["attention_order"]
        shape = net.shapes[s.target]
        blk = build_attention(s.name, shape, int(np.asarray(s.weight_mant)), int(s.weight_exp), order)
        hops = attention_hops(order)
        for key, u in zip("qkv", s.sources):
            d = int(s.meta["delays"][u])
            check_delay(s, u, d)
            port = spike_source(u, d)
            port.connect(getattr(blk, f"{key}_in"))
        blk.a_out.connect(net.lif[s.target].a_in)
        for label, proc in blk.processes.items():
            net.processes[f"{s.name}:{label}"] = proc
        # latencies of the intermediate populations: the first-stage inputs enter at
        # latency(target) - 4; P1 one hop later, the middle population two, P2 three
        t0 = graph.groups[s.target].latency - max(hops)
        n1 = int(np.prod(blk.prod1.s_out.shape))
        n2 = int(np.prod(blk.prod2.s_out.shape))
        nm = int(np.prod(blk.mid.s_out.shape))
        aux_probe(f"{s.name}:prod1", blk.prod1.s_out, n1, "count", t0 + 1)
        aux_probe(f"{s.name}:mid", blk.mid.s_out, nm, "values", t0 + 2)
        aux_probe(f"{s.name}:prod2", blk.prod2.s_out, n2, "count", t0 + 3)
        net.mapping[s.name] = "attention"
        net.stored_weights[s.name] = int(blk.synapses)
        src_of = dict(zip("qkv", s.sources))
        for h in blk.hops:
            src = h["source"]
            if src in "qkv":
                trace = ("spikes", src_of[src])
            elif src == "mid":
                trace = ("aux", f"{s.name}:mid")
            else:
                trace = ("aux", f"{s.name}:{src}")
            net.event_terms.append({"synapse": s.name, "hop": h["label"], "trace": trace,
                                    "fan_out": net_fan_out(blk, h)})
    probe, model = multi_probe([(k, n, p) for k, n, p, _, _ in entries], net.depth)
    for i, (kind, _, _, port, lif) in enumerate(entries):
        port.connect(getattr(probe, f"in{i}"))
        if kind == "group":
            getattr(probe, f"u{i}").connect_var(lif.u)
            getattr(probe, f"v{i}").connect_var(lif.v)
    net.probe = probe
    net.model_map[probe] = model  # lava looks a process up by instance here (compiler_graphs.py)
    if readout_lif is None:
        raise SimError("the graph has no readout")
    if not any(s.sources == (INPUT,) for s in graph.synapses.values()):
        raise SimError("the graph has no input layer")
    return net


def _build_static(net, graph, s, feeds, mapping, tgt_shape, per_clip, shared, sparse, aux_probe, Conv, GradedVec):
    """One static synapse ``s`` (conv, folded graph conv, affine, pool) from ``feeds``, a list of
    ``(source, delay, spike port)``: one source, or every source of a merged synapse
    (:func:`export.mapping.merged_sources`), whose connections all end on the same ``s_in``.
    Several feeds make the process take graded messages (lava adds the connections' messages:
    the spike count) and its ``weight_exp`` applies to the summed input once, as in the twin."""
    u, d, _ = feeds[0]
    graded = len(feeds) > 1
    label = f"{s.name}<-{'+'.join(f for f, _, _ in feeds)}"
    if mapping in ("conv", "conv+floor"):
        params = conv_params(graph, s, shift=max(int(s.weight_exp), 0))
        # the Conv's 24-bit output wrap: keep every possible sum inside it, else unroll
        w_abs = np.abs(params["weight"].astype(np.int64)).reshape(params["weight"].shape[0], -1)
        if int(w_abs.sum(axis=1).max()) * len(feeds) > CONV_SUM_MAX:
            if mapping == "conv+floor":
                raise SimError(f"synapse {s.name}: a Conv sum could exceed the 24-bit Conv output and "
                               "its negative weight_exp has no unrolled form; report this model")
            mapping = "sparse"
    if mapping in ("conv", "conv+floor"):
        if shared:
            conv = Conv(weight=params["weight"], input_shape=params["input_shape"], padding=params["padding"],
                        stride=params["stride"], num_message_bits=24 if graded else 0, name=label)
            for v, _, port in feeds:
                view, out = conv_views(s, port, net.shapes[v], tgt_shape)
                view.connect(conv.s_in)
            conv_out = out(conv.a_out)
            fos = [shared_fan_out(graph, s, u, per_clip)] * len(feeds)  # sources share the shape
            stored = int(np.count_nonzero(params["weight"]))
        else:  # the same hops with the weights unrolled
            mat = synapse_matrix(graph, s, u, per_clip)
            conv = sparse(s, u, mat, label, s.weight_exp if mapping == "conv" else 0, graded=graded)
            for _, _, port in feeds:
                port.connect(conv.s_in)
            conv_out = conv.a_out
            fos = [fan_out(mat)] * len(feeds)
            stored = int(mat.nnz)
        net.processes[label] = conv
        for (v, _, _), fo in zip(feeds, fos):
            net.event_terms.append({"synapse": s.name, "hop": "conv", "trace": ("spikes", v), "fan_out": fo})
        net.stored_weights[s.name] = net.stored_weights.get(s.name, 0) + stored
        if mapping == "conv":
            conv_out.connect(net.lif[s.target].a_in)
        else:
            n_t = int(np.prod(tgt_shape))
            relay = GradedVec(shape=(n_t,), vth=0)
            conv_out.connect(relay.a_in)
            net.processes[f"relay:{label}"] = relay
            floor = sparse(s, u, sparse_eye(n_t), f"floor:{label}", s.weight_exp, graded=True)
            relay.s_out.connect(floor.s_in)
            floor.a_out.connect(net.lif[s.target].a_in)
            lat = graph.groups[u].latency + d + 1  # the relay works one hop after the delayed spikes
            aux_probe(f"relay:{label}", relay.s_out, n_t, "count", lat)
            net.event_terms.append({"synapse": s.name, "hop": "floor", "trace": ("aux", f"relay:{label}"),
                                    "fan_out": 1})
            net.stored_weights[s.name] += n_t
        net.mapping[s.name] = mapping
        return
    if len(s.sources) > 1 and not graded and s.weight_exp < 0:
        raise SimError(f"synapse {s.name}: weight_exp {s.weight_exp} < 0 on a multi-source synapse "
                       "cannot be split into per-source Lava synapses exactly")
    mat = synapse_matrix(graph, s, u, per_clip)
    conn = sparse(s, u, mat, label, s.weight_exp, graded=graded)
    fo = fan_out(mat)
    for v, _, port in feeds:
        port.connect(conn.s_in)
        net.event_terms.append({"synapse": s.name, "hop": "sparse", "trace": ("spikes", v), "fan_out": fo})
    conn.a_out.connect(net.lif[s.target].a_in)
    net.mapping[s.name] = "sparse"
    net.stored_weights[s.name] = net.stored_weights.get(s.name, 0) + int(mat.nnz)


def _build_pair(net, graph, hi, lo, u, src, tgt_shape, per_clip, shared, sparse, aux_probe, Conv, GradedVec):
    """One weight-split pair from source ``u`` (:func:`export.mapping.mark_pairs`): ``Conv``
    with ``2·C'`` outputs (``hi·2^s`` then ``lo``) → ``GradedVec`` relay ``(2n,)`` → one
    ``Sparse`` ``(n, 2n)`` with weights ``2^w`` and 1 at ``weight_exp = −k`` (``e`` the high
    exponent, ``−k`` the low one, ``w = min(e + k, 7)``, ``s = e + k − w``), which gives
    ``hi_sum·2^e + ⌊lo_sum / 2^k⌋`` exactly. ``shared=False``: the same hops with two
    unrolled ``Sparse`` matrices into the two halves of the relay."""
    e, k = int(hi.weight_exp), -int(lo.weight_exp)
    w = min(e + k, 7)
    shift = e + k - w
    n = int(np.prod(tgt_shape))
    label = f"{hi.name}+lo<-{u}"
    relay = GradedVec(shape=(2 * n,), vth=0)
    if shared:
        p_hi = conv_params(graph, hi, shift=shift)
        p_lo = conv_params(graph, lo, shift=0)
        weight = np.concatenate([p_hi["weight"], p_lo["weight"]], axis=0)
        bound = np.abs(weight.astype(np.int64)).reshape(weight.shape[0], -1).sum(axis=1).max()
        if bound > CONV_SUM_MAX:
            raise SimError(f"synapse {hi.name}: a Conv sum could exceed the 24-bit Conv output; "
                           "re-export with --no-weight-split or report this model")
        conv = Conv(weight=weight, input_shape=p_hi["input_shape"], padding=p_hi["padding"],
                    stride=p_hi["stride"], name=label)
        view, out = conv_views(hi, src, net.shapes[u], tgt_shape, halves=2)
        view.connect(conv.s_in)
        out(conv.a_out).connect(relay.a_in)
        net.processes[label] = conv
        fo_hi, fo_lo = shared_fan_out(graph, hi, u, per_clip), shared_fan_out(graph, lo, u, per_clip)
        stored = (int(np.count_nonzero(p_hi["weight"])), int(np.count_nonzero(p_lo["weight"])))
    else:
        fos, stored = [], []
        for half, (syn, exp) in enumerate(((hi, shift), (lo, 0))):
            mat = synapse_matrix(graph, syn, u, per_clip).tocoo()
            big = sp.csr_matrix((mat.data, (mat.row + half * n, mat.col)), shape=(2 * n, mat.shape[1]))
            conn = sparse(syn, u, big, f"{syn.name}<-{u}", exp)
            src.connect(conn.s_in)
            conn.a_out.connect(relay.a_in)
            fos.append(fan_out(big))
            stored.append(int(big.nnz))
        fo_hi, fo_lo = fos
    net.processes[f"relay:{label}"] = relay
    mat = sp.hstack([sparse_eye(n) * (1 << w), sparse_eye(n)], format="csr").astype(np.int32)
    floor = sparse(hi, u, mat, f"floor:{label}", -k, graded=True)
    relay.s_out.connect(floor.s_in)
    floor.a_out.connect(net.lif[hi.target].a_in)
    lat = graph.groups[u].latency + int(hi.meta["delays"][u]) + 1
    aux_probe(f"relay:{label}:hi", relay.s_out, 2 * n, "count", lat, (0, n))
    aux_probe(f"relay:{label}:lo", relay.s_out, 2 * n, "count", lat, (n, 2 * n))
    for syn, fo, half, st in ((hi, fo_hi, "hi", stored[0]), (lo, fo_lo, "lo", stored[1])):
        net.event_terms.append({"synapse": syn.name, "hop": "conv", "trace": ("spikes", u), "fan_out": fo})
        net.event_terms.append({"synapse": syn.name, "hop": "floor", "trace": ("aux", f"relay:{label}:{half}"),
                                "fan_out": 1})
        net.stored_weights[syn.name] = net.stored_weights.get(syn.name, 0) + st + n
        net.mapping[syn.name] = "conv pair"


def net_fan_out(blk, hop):
    """Fan-out per source neuron of one attention hop (1 for count-probed product neurons)."""
    if hop["source"] in ("prod1", "prod2"):
        return 1
    return blk.fan_outs[hop["label"]]


def sparse_eye(n: int):
    """One-to-one weight-1 CSR ``(n, n)`` (the flooring synapses behind a ``Conv`` relay)."""
    return sp.identity(n, dtype=np.int32, format="csr")
