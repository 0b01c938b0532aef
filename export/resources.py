"""Resource estimate of a quantised graph on Loihi 2: neurons, non-zero synapses, fan-in /
fan-out, weight bits and neurocores per group.

Per-core limits used (Intel, "Taking Neuromorphic Computing with Loihi 2 to the Next Level",
technology brief, 2021: 128 neuromorphic cores, up to 1 M neurons and 120 M synapses per
chip): 8,192 neurons per core and 120 M / 128 = 937,500 synapses per core. Synapse counts are
static connections with a non-zero integer weight (padding positions of temporal convs
excluded). The spike-spike attention has no static synapses: on a real chip it needs
microcode or the embedded CPU, flagged in ``notes``.
"""
from __future__ import annotations

import math

import numpy as np

from .ir import INPUT, LOGITS, Graph

NEURONS_PER_CORE = 8192
SYNAPSES_PER_CORE = 120_000_000 // 128
CORES_PER_CHIP = 128
SOURCE = "Intel Loihi 2 technology brief (2021): 128 cores, 1M neurons, 120M synapses per chip"


def _conv_taps(t_in: int, k: int, stride: int, pad: int) -> np.ndarray:
    """Number of in-range input frames per kernel tap, summed over output frames: ``(k,)``."""
    t_out = (t_in + 2 * pad - k) // stride + 1
    taps = np.zeros(k, dtype=np.int64)
    for o in range(t_out):
        for j in range(k):
            i = o * stride - pad + j
            taps[j] += 0 <= i < t_in
    return taps


def synapse_count(graph: Graph, s) -> int:
    """Non-zero static synapses of one synapse group per sample (one body)."""
    w = s.weight_mant if s.weight_mant is not None else s.weight
    if s.kind == "attention":
        return 0
    if s.kind == "readout":
        return int(np.count_nonzero(w))
    tgt = graph.groups[s.target]
    C_out, T_out, V = tgt.shape
    if s.kind in ("input_conv", "conv"):
        t_in = graph.input_shape[1] if s.sources == (INPUT,) else graph.groups[s.sources[0]].shape[1]
        taps = _conv_taps(t_in, w.shape[2], s.stride, s.padding)
        nz = (w[:, :, :, 0] != 0).sum(axis=(0, 1))  # non-zero weights per tap
        return int((nz * taps).sum() * V)
    if s.kind == "affine":
        return int(np.count_nonzero(w) * T_out * V)
    if s.kind == "graph":
        return int(np.count_nonzero(w) * T_out)
    if s.kind == "pool":
        src = graph.groups[s.sources[0]]
        return int(np.count_nonzero(w) * src.shape[1] * src.shape[2] * graph.input_shape[3])
    raise ValueError(s.kind)


def resources(graph: Graph) -> dict:
    """Per-group resources and the chip estimate (see module docstring for the limits)."""
    rows, total_cores, notes = [], 0, []
    fan_out = {n: 0 for n in graph.groups}
    for s in graph.synapses.values():
        for u in s.sources:
            if u in fan_out:
                fan_out[u] += synapse_count(graph, s)
        if s.kind == "attention":
            notes.append(f"{s.name}: spike-spike attention (Q·Kᵀ·V) has no static synapses; on Loihi 2 "
                         "it needs microcode or the embedded CPU")
    for name, g in graph.groups.items():
        ins = graph.incoming(name)
        syn = sum(synapse_count(graph, s) * max(1, len([u for u in s.sources if u != INPUT])) for s in ins)
        cores = max(math.ceil(g.size / NEURONS_PER_CORE), math.ceil(syn / SYNAPSES_PER_CORE), 1)
        total_cores += cores
        rows.append({"name": name, "neurons": g.size, "synapses_in": syn,
                     "fan_in": syn / g.size, "fan_out": fan_out[name] / g.size,
                     "weight_bits": 8, "cores": cores, "latency": g.latency})
    readout = sum(synapse_count(graph, s) for s in graph.incoming(LOGITS))
    return {"limits": {"neurons_per_core": NEURONS_PER_CORE, "synapses_per_core": SYNAPSES_PER_CORE,
                       "cores_per_chip": CORES_PER_CHIP, "source": SOURCE},
            "groups": rows, "readout_synapses": readout,
            "total_neurons": sum(r["neurons"] for r in rows),
            "total_synapses": sum(r["synapses_in"] for r in rows) + readout,
            "total_cores": total_cores, "fits_one_chip": total_cores <= CORES_PER_CHIP, "notes": notes}


def format_resources(res: dict) -> str:
    lines = [f"{'group':<28} {'neurons':>8} {'synapses':>10} {'fan-in':>7} {'fan-out':>7} {'bits':>4} {'cores':>5}"]
    for r in res["groups"]:
        lines.append(f"{r['name']:<28} {r['neurons']:>8,} {r['synapses_in']:>10,} {r['fan_in']:>7.1f} "
                     f"{r['fan_out']:>7.1f} {r['weight_bits']:>4} {r['cores']:>5}")
    lines.append(f"total: {res['total_neurons']:,} neurons, {res['total_synapses']:,} synapses, "
                 f"{res['total_cores']} cores — {'fits' if res['fits_one_chip'] else 'does NOT fit'} one "
                 f"Loihi 2 chip ({res['limits']['cores_per_chip']} cores)")
    lines += [f"note: {n}" for n in res["notes"]]
    return "\n".join(lines)
