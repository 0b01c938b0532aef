"""Replay clips through the Lava network, compare every layer with the twin bit for bit, and
measure events and energy.

The comparison is exact: spikes, u and v of every neuron group at every time step and the
integer logits must be equal; the first divergence (earliest Lava step, then graph order) is
reported with its group, time step, neuron ``(m, c, t, v)`` and both values.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from export.ir import INPUT, Graph
from export.twin import run_graph
from mksgn.energy import DEFAULT_45NM, MJ_PER_PJ, EnergyModel, synaptic_ops

from .errors import SimError
from .events import dense_flops, lava_events, twin_events
from .network import LAVA_OFFSET, LavaNetwork, build_network, host_macs, input_coordinates, release_free_heap
from .processes import PROBE_FILES

__all__ = ["Mismatch", "ReplayResult", "replay", "compare_clip"]

VARS = ("u", "v", "spikes")  # causal order within a step: current, then voltage, then spike

#: Clips per twin call inside a chunk. The twin's records of every group, step and variable
#: are held at full width until each clip is cut to the probes' dtypes: 8 clips of the
#: width-0.25 MK-SGN at once held the host at 2.2 GB during a whole-split replay.
TWIN_BATCH = 2


@dataclass
class Mismatch:
    """First difference between Lava and the twin in one clip."""

    clip: int
    group: str
    var: str
    step: int  # time step of the clip (0..T_s-1); -1 for logits
    lava_step: int  # Lava time step (1-based) at which it happened
    neuron: int
    index: tuple  # (m, c, t, v) or (class,)
    lava: int
    twin: int

    def describe(self) -> str:
        where = "logits" if self.var == "logits" else f"group {self.group}, {self.var}, time step {self.step}"
        return (f"clip {self.clip}: first divergence at {where} (Lava step {self.lava_step}), neuron "
                f"{self.neuron} {self.index}: lava {self.lava} vs twin {self.twin}")


def compare_clip(clip: int, graph: Graph, shapes: dict, lava: dict, twin: dict,
                 lava_logits: np.ndarray, twin_logits: np.ndarray, lava_mid: dict | None = None,
                 twin_mid: dict | None = None) -> Mismatch | None:
    """Exact comparison of one clip.

    Parameters
    ----------
    lava, twin : dict group → dict var → int array ``(T_s, n)`` (var in spikes, u, v)
    lava_logits, twin_logits : int arrays ``(classes,)``
    lava_mid, twin_mid : dict attention synapse → int array ``(T_s, n)`` — the attention's
        middle population (``Q Kᵀ`` or ``Kᵀ V``), compared at its own Lava step (the target's
        latency − 2), reported as group ``"<synapse>:mid"``, var ``values``

    Returns
    -------
    The first :class:`Mismatch` (earliest Lava step, then graph order), or None if equal.
    """
    best = None
    for order, (name, g) in enumerate(graph.groups.items()):
        for var in VARS:
            a, b = lava[name][var], twin[name][var]
            diff = np.argwhere(a != b)
            if len(diff) == 0:
                continue
            t, j = (int(z) for z in diff[0])  # argwhere is row-major: earliest step first
            key = (t + g.latency, order)
            if best is None or key < best[0]:
                idx = tuple(int(z) for z in np.unravel_index(j, shapes[name]))
                best = (key, Mismatch(clip, name, var, t, t + g.latency + LAVA_OFFSET, j, idx, int(a[t, j]),
                                      int(b[t, j])))
    for name, a in (lava_mid or {}).items():
        b = twin_mid[name]
        diff = np.argwhere(a != b)
        if len(diff) == 0:
            continue
        s = graph.synapses[name]
        t, j = (int(z) for z in diff[0])
        lat = graph.groups[s.target].latency - 2
        key = (t + lat, -1)
        if best is None or key < best[0]:
            best = (key, Mismatch(clip, f"{name}:mid", "values", t, t + lat + LAVA_OFFSET, j, (j,), int(a[t, j]),
                                  int(b[t, j])))
    if best is not None:
        return best[1]
    diff = np.flatnonzero(lava_logits != twin_logits)
    if len(diff):
        j = int(diff[0])
        return Mismatch(clip, "logits", "logits", -1, -1, j, (j,), int(lava_logits[j]), int(twin_logits[j]))
    return None


@dataclass
class ReplayResult:
    """Everything :func:`replay` measured.

    Attributes
    ----------
    clips : int
    bit_exact : bool — every compared value of every clip equal
    mismatches : list of Mismatch — the first one of every diverging clip
    lava_pred, twin_pred : int arrays ``(clips,)``
    labels : int array or None
    events_lava, events_twin : dict synapse → total events over all clips
    events_hops : dict ``"synapse/hop"`` → total events over all clips (Lava), one entry per
        Lava connection kind (``conv``, ``floor``, ``sparse``, attention hops, ...)
    mapping : dict synapse → Lava mapping; stored_weights : dict synapse → weights stored
    processes : int — Lava processes of the run
    process_labels : list of str — labels of the synapse, relay, delay and attention processes
        (``"<synapse><-<source>[+<source>…]"`` for a synapse process: one label per process)
    spikes : dict group → total spikes (Lava)
    neurons : dict group → neurons per clip
    host_macs : int — first-layer MACs per clip
    flops : dict synapse → dense MACs per step and clip
    seconds : float — wall time of the Lava part (build, compile, run, read); from the second
        chunk on the twin runs on the host while Lava runs, so this is the replay's wall time
        less the first chunk's twin
    twin_seconds : float — wall time of the twin (mostly overlapped with Lava)
    """

    graph: Graph
    clips: int
    bit_exact: bool
    mismatches: list
    lava_pred: np.ndarray
    twin_pred: np.ndarray
    labels: np.ndarray | None
    events_lava: dict
    events_twin: dict
    spikes: dict
    neurons: dict
    host_macs: int
    flops: dict
    seconds: float
    twin_seconds: float
    shapes: dict = field(default_factory=dict)
    events_hops: dict = field(default_factory=dict)
    mapping: dict = field(default_factory=dict)
    stored_weights: dict = field(default_factory=dict)
    processes: int = 0
    process_labels: list = field(default_factory=list)

    @property
    def events_equal(self) -> bool:
        return self.events_lava == self.events_twin

    def top1(self, pred) -> float | None:
        if self.labels is None or self.clips == 0:
            return None
        return float((np.asarray(pred) == self.labels).mean() * 100.0)

    def layers(self, energy: EnergyModel = DEFAULT_45NM) -> list:
        """Per-layer (paper Table 6 names: ``sc``, ``layers.i``, ``head``) per-clip means."""
        g = self.graph
        T = g.time_steps
        fr = {n: self.spikes[n] / (self.neurons[n] * T * self.clips) for n in g.groups}
        rows = {}

        def row(layer):
            return rows.setdefault(layer, {"name": layer, "neurons": 0, "spikes": 0.0, "neuron_updates": 0,
                                           "synaptic_events": 0.0, "twin_synaptic_events": 0.0, "host_macs": 0,
                                           "flops": 0.0, "analytic_sops": 0.0,
                                           "energy_pj_measured": 0.0, "energy_pj_analytic": 0.0})
        for n, grp in g.groups.items():
            r = row(grp.layer or n)
            r["neurons"] += self.neurons[n]
            r["spikes"] += self.spikes[n] / self.clips
            r["neuron_updates"] += self.neurons[n] * T
        for s in g.synapses.values():
            r = row(s.layer or s.name)
            r["flops"] += self.flops[s.name]
            if s.sources == (INPUT,):
                r["host_macs"] += self.host_macs
                r["energy_pj_measured"] += energy.mac_pj(self.host_macs)
                r["energy_pj_analytic"] += energy.mac_pj(self.flops[s.name])
                continue
            rate = float(np.mean([fr[u] for u in s.sources]))
            sops = synaptic_ops(rate, T, self.flops[s.name])
            ev = self.events_lava[s.name] / self.clips
            r["synaptic_events"] += ev
            r["twin_synaptic_events"] += self.events_twin[s.name] / self.clips
            r["analytic_sops"] += sops
            r["energy_pj_measured"] += energy.ac_pj(ev)
            r["energy_pj_analytic"] += energy.ac_pj(sops)
        out = list(rows.values())
        for r in out:
            r["firing_rate"] = r["spikes"] / (r["neurons"] * T) if r["neurons"] else 0.0
            r["ratio"] = r["energy_pj_measured"] / r["energy_pj_analytic"] if r["energy_pj_analytic"] else None
        return out

    def to_dict(self, energy: EnergyModel = DEFAULT_45NM) -> dict:
        layers = self.layers(energy)
        e_meas = sum(r["energy_pj_measured"] for r in layers) * MJ_PER_PJ
        e_ana = sum(r["energy_pj_analytic"] for r in layers) * MJ_PER_PJ
        return {
            "clips": self.clips,
            "bit_exact": bool(self.bit_exact),
            "mismatches": [asdict(m) | {"message": m.describe()} for m in self.mismatches],
            "lava_top1": self.top1(self.lava_pred),
            "twin_top1": self.top1(self.twin_pred),
            "prediction_agreement": float((self.lava_pred == self.twin_pred).mean()) if self.clips else None,
            "events_equal": bool(self.events_equal),
            "layers": layers,
            "host_macs_per_clip": self.host_macs,
            "synaptic_events_per_clip": sum(r["synaptic_events"] for r in layers),
            "analytic_sops_per_clip": sum(r["analytic_sops"] for r in layers),
            "energy_mj_measured_per_clip": e_meas,
            "energy_mj_analytic_per_clip": e_ana,
            "energy_ratio_measured_over_analytic": e_meas / e_ana if e_ana else None,
            "energy_model": {"e_mac_pj": energy.e_mac_pj, "e_ac_pj": energy.e_ac_pj, "source": energy.name},
            "time_steps": self.graph.time_steps,
            "readout_latency": int(self.graph.meta.get("readout_latency", 0)),
            "seconds_lava": self.seconds,
            "seconds_twin": self.twin_seconds,
            "seconds_per_clip_lava": self.seconds / max(self.clips, 1),
            "seconds_per_clip_twin": self.twin_seconds / max(self.clips, 1),
            "arch": self.graph.meta.get("arch"),
            "events_per_hop_per_clip": {k: v / max(self.clips, 1) for k, v in self.events_hops.items()},
            "mapping": dict(self.mapping),
            "stored_weights": dict(self.stored_weights),
            "lava_processes": self.processes,
        }


def _clip_slice(t: torch.Tensor, i: int, per_body: int, dtype) -> np.ndarray:
    """Twin tensor ``(T_s, B, C, T, V)`` → clip ``i`` as ``(T_s, n)`` of ``dtype`` — the dtype
    of the Lava probe it is compared with (spikes int8, u and v int32: the twin's u and v are
    24-bit by construction, :func:`export.fixed_point.lif_step_torch`). Wider copies of every
    clip's records held the parent of a whole-split replay at 4 GB."""
    return t[:, i * per_body:(i + 1) * per_body].reshape(t.shape[0], -1).numpy().astype(dtype)


def replay(graph: Graph, x: torch.Tensor, labels=None, *, chunk: int = 4, timeout_s: float | None = None,
           progress=None, compare: bool = True, reference: Graph | None = None,
           shared: bool = True, check_mapping: bool = True) -> ReplayResult:
    """Stream clips through the Lava network (one compiled run) and compare with the twin.

    Parameters
    ----------
    graph : Graph — quantised, delay-balanced (``read_lava`` of an export directory).
    x : Tensor ``(N, C, T, V, M)`` — preprocessed clips (metres).
    labels : int array ``(N,)`` or None — for top-1.
    chunk : int — clips per run chunk (memory vs. fewer pauses).
    timeout_s : float or None — limit for one chunk's run; default ``300 + 30 s/step``.
    progress : callable(n) or None — called with the number of clips finished.
    compare : bool — run the twin and compare (always done by ``mksgn-sim``).
    reference : Graph or None — the graph the twin runs (default ``graph``); tests plant
        defects in ``graph`` only, to prove the comparison finds them.
    shared : bool — weight-shared ``Conv`` mapping (default) or the unrolled one
        (:func:`~hw_sim.network.build_network`).
    check_mapping : bool — refuse delays that do not follow :mod:`export.mapping` (default);
        tests that plant wrong delays turn it off to prove the comparison locates them.

    Returns
    -------
    ReplayResult

    Raises
    ------
    SimError
        Lava failed or got stuck (the runtime is stopped first), or the graph cannot be
        mapped (see :func:`build_network`).
    """
    N = int(x.shape[0])
    if N == 0:
        raise SimError("no clips to replay")
    t0 = time.perf_counter()
    coords = input_coordinates(graph, x)
    net: LavaNetwork = build_network(graph, coords, chunk=chunk, shared=shared, check_mapping=check_mapping)
    P = net.period
    M = int(graph.input_shape[3])
    per_body = {n: net.shapes[n][0] for n in graph.groups}
    groups = list(graph.groups)
    done = {n: 0 for n in groups}
    done_logits = 0
    pending: dict = {}
    twin_cache: dict = {}
    mismatches = []
    lava_pred = np.full(N, -1)
    twin_pred = np.full(N, -1)
    ev_lava: dict = {}
    ev_twin: dict = {}
    ev_hops: dict = {}
    aux_labels = list(net.aux)
    done_aux = {a: 0 for a in aux_labels}
    mids = [s.name for s in graph.synapses.values() if s.kind == "attention"]
    spikes_total = {n: 0 for n in groups}
    twin_seconds = 0.0
    twin_alone = 0.0
    finished = 0

    def limit(steps):
        return timeout_s if timeout_s is not None else 300.0 + 30.0 * steps

    def finalize(k):
        nonlocal finished
        rec = pending.pop(k)
        tw = twin_cache.pop(k, None)
        lava_pred[k] = int(np.argmax(rec["logits"]))
        for n in groups:
            spikes_total[n] += int(rec[n]["spikes"].sum())
        ev, hops = lava_events(net.event_terms, {n: rec[n]["spikes"] for n in groups}, rec["aux"])
        for key, val in ev.items():
            ev_lava[key] = ev_lava.get(key, 0) + val
        for key, val in hops.items():
            ev_hops[key] = ev_hops.get(key, 0) + val
        if tw is not None:
            twin_pred[k] = int(np.argmax(tw["logits"]))
            mm = compare_clip(k, graph, net.shapes, rec, tw["groups"], rec["logits"], tw["logits"],
                              {m: rec["aux"][f"{m}:mid"] for m in mids}, tw["mid"])
            if mm is not None:
                mismatches.append(mm)
            for key, val in tw["events"].items():
                ev_twin[key] = ev_twin.get(key, 0) + val
        finished += 1
        if progress is not None:
            progress(1)

    def collect():
        nonlocal done_logits
        for n in groups:
            f = min(net.finished(graph.groups[n].latency), N)
            if f > done[n]:
                data = net.read_group(n, range(done[n], f))
                for j, k in enumerate(range(done[n], f)):
                    pending.setdefault(k, {})[n] = {v: data[v][j] for v in VARS}
                done[n] = f
        for a in aux_labels:
            f = min(net.finished(net.aux[a]["latency"]), N)
            if f > done_aux[a]:
                data = net.read_aux(a, range(done_aux[a], f))
                for j, k in enumerate(range(done_aux[a], f)):
                    pending.setdefault(k, {}).setdefault("aux", {})[a] = data[j]
                done_aux[a] = f
        f = min(net.finished(net.readout_latency), N)
        if f > done_logits:
            logits = net.read_logits(range(done_logits, f))
            for j, k in enumerate(range(done_logits, f)):
                pending.setdefault(k, {})["logits"] = logits[j]
            done_logits = f
        for k in sorted(pending):
            if len(pending[k]) == len(groups) + 1 + bool(aux_labels) and \
                    len(pending[k].get("aux", {})) == len(aux_labels):
                finalize(k)

    def twin_chunk(ks):
        for b0 in range(ks.start, ks.stop, TWIN_BATCH):
            twin_batch(range(b0, min(ks.stop, b0 + TWIN_BATCH)))

    def twin_batch(ks):
        res = run_graph(reference or graph, x[ks.start:ks.stop], mode="int", record=True)
        for i, k in enumerate(ks):
            grp = {n: {var: _clip_slice(getattr(res, var)[n], i, per_body[n], PROBE_FILES[var]) for var in VARS}
                   for n in groups}
            clip_sp = {n: res.spikes[n][:, i * per_body[n]:(i + 1) * per_body[n]] for n in groups}
            mid = {m: res.attention_mid[m][:, i * per_body[graph.synapses[m].target]:
                                           (i + 1) * per_body[graph.synapses[m].target]]
                   .reshape(P, -1).numpy().astype(np.int64) for m in mids}
            twin_cache[k] = {"groups": grp, "logits": res.logits[i].numpy().astype(np.int64), "mid": mid,
                             "events": twin_events(reference or graph, clip_sp, M)}

    threads = torch.get_num_threads()
    # One thread per OS process: the Lava children (forked, so they inherit the limit) and the
    # twin beside them share the cores, and idle OpenBLAS / OpenMP workers spin, stealing the
    # cores from the Lava processes (24 NW-UCLA clips of the width-0.25 MK-SGN on 2 cores:
    # 84 s and 7 M involuntary context switches with the default pools, 60 s and 0.18 M with
    # one thread). threadpoolctl sets the native pools; torch's own pool is set directly.
    blas = threadpool_limits(limits=1)
    torch.set_num_threads(1)
    try:
        for c0 in range(0, N, chunk):
            ks = range(c0, min(N, c0 + chunk))
            # Lava runs this chunk in its worker thread while the host runs the twin on it;
            # the first chunk compiles and forks the Lava processes, so it runs alone
            if not net.started:
                # the first chunk compiles and forks the Lava processes: it runs before its
                # twin, so the children do not inherit (and copy on write) the twin's records
                net.run_steps(len(ks) * P, limit(len(ks) * P))
                run = False
            else:
                run = net.start_steps(len(ks) * P)
            if compare:
                ts = time.perf_counter()
                twin_chunk(ks)
                twin_seconds += time.perf_counter() - ts
                if run is False:  # Lava had finished: the host ran the twin alone
                    twin_alone += time.perf_counter() - ts
            if run is not False:
                net.wait(run, limit(len(ks) * P))
            collect()
            release_free_heap()
        drain = net.drain_steps
        while drain > 0:  # in pieces of at most one chunk: the probe ring holds no more
            piece = min(drain, chunk * P)
            net.run_steps(piece, limit(piece))
            collect()
            drain -= piece
    finally:
        net.stop()
        torch.set_num_threads(threads)
        blas.restore_original_limits()
    if finished != N:
        raise SimError(f"only {finished} of {N} clips came back from Lava; the pipeline alignment is broken")
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)
    neurons = {n: int(np.prod(net.shapes[n])) for n in groups}
    return ReplayResult(graph=graph, clips=N, bit_exact=compare and not mismatches,
                        mismatches=mismatches, lava_pred=lava_pred, twin_pred=twin_pred, labels=lab,
                        events_lava=ev_lava, events_twin=ev_twin, spikes=spikes_total, neurons=neurons,
                        host_macs=host_macs(graph), flops=dense_flops(graph, net.shapes),
                        seconds=time.perf_counter() - t0 - twin_alone, twin_seconds=twin_seconds,
                        shapes={n: net.shapes[n] for n in groups}, events_hops=ev_hops, mapping=dict(net.mapping),
                        stored_weights=dict(net.stored_weights), processes=net.process_count,
                        process_labels=list(net.processes))
