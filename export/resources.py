"""Resource estimate of a quantised graph on Loihi 2: neurons, non-zero synapses, fan-in /
fan-out, weight bits and neurocores per group.

Per-core limits used (Intel, "Taking Neuromorphic Computing with Loihi 2 to the Next Level",
technology brief, 2021: 128 neuromorphic cores, up to 1 M neurons and 120 M synapses per
chip): 8,192 neurons per core and 120 M / 128 = 937,500 synapses per core. Synapse counts are
static connections with a non-zero integer weight (padding positions of temporal convs
excluded). The spike-spike attention is mapped to stock neurons and synapses
(:mod:`export.mapping`): its product neurons, middle population and six synapse stages are
counted like every other layer. Per synapse the report gives its Lava mapping, the synapses
it has unrolled per clip and the weights the mapping stores (a shared ``Conv`` stores its
kernel once).
"""
from __future__ import annotations

import math

import numpy as np

from .ir import INPUT, LOGITS, Graph
from .mapping import attention_resources, merged_sources, paired, synapse_mapping

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


def stored_weights(graph: Graph, s) -> int:
    """Weights the Lava mapping of ``s`` stores (non-zero): the kernel once for a shared
    ``Conv`` (plus one flooring synapse per target neuron and clip for a negative exponent),
    the unrolled synapses otherwise, the six synapse stages for attention — once for a synapse
    whose sources share one process (:func:`export.mapping.merged_sources`), else per source."""
    m = synapse_mapping(s)
    w = s.weight_mant if s.weight_mant is not None else s.weight
    M = int(graph.input_shape[3])
    if m == "attention":
        return _attention(graph, s)["synapses"]
    copies = 1 if merged_sources(s) else len(s.sources)  # one process for all sources, or one each
    if m in ("conv", "conv+floor"):
        n = int(np.count_nonzero(w)) * copies
        floors = copies if m == "conv+floor" else sum(paired(s, u) for u in s.sources)
        return n + graph.groups[s.target].size * M * floors
    per_body = synapse_count(graph, s) * (1 if s.kind in ("readout", "pool") else M)
    return per_body * copies


def _source_copies(s) -> int:
    """Copies of a synapse's weights on the chip: one per non-input source (at least one)."""
    return max(1, len([u for u in s.sources if u != INPUT]))


def _attention(graph: Graph, s) -> dict:
    C, T, V = graph.groups[s.sources[0]].shape
    order = s.meta.get("attention_order") or "qk"
    return attention_resources(order, int(C), int(V), int(T), int(graph.input_shape[3]))


def resources(graph: Graph) -> dict:
    """Per-group and per-synapse resources and the chip estimate (see module docstring).

    ``attention`` splits the estimate: ``neurons`` of the SG-SA product and middle populations
    (one body), the ``cores`` they add to their groups (a block may fill its group's last core, so
    this can be up to one per block below ``min_cores``), ``min_cores`` = ⌈neurons / 8,192⌉ (the
    attention populations alone) and ``cores_without_attention``.
    """
    rows, total_cores, notes = [], 0, []
    base_cores, att_neurons = 0, 0
    fan_out = {n: 0 for n in graph.groups}
    syn_rows = []
    M = int(graph.input_shape[3])
    for s in graph.synapses.values():
        for u in s.sources:
            if u in fan_out:
                fan_out[u] += synapse_count(graph, s)
        unrolled = (_attention(graph, s)["synapses"] if s.kind == "attention"
                    else synapse_count(graph, s) * (1 if s.kind in ("readout", "pool") else M)
                    * _source_copies(s))
        syn_rows.append({"name": s.name, "kind": s.kind, "mapping": synapse_mapping(s),
                         "unrolled_synapses": int(unrolled), "stored_weights": int(stored_weights(graph, s))})
    for name, g in graph.groups.items():
        ins = graph.incoming(name)
        syn_plain = sum(synapse_count(graph, s) * _source_copies(s) for s in ins if s.kind != "attention")
        att = [_attention(graph, s) for s in ins if s.kind == "attention"]
        extra_n = sum(a["neurons"] for a in att) // M  # per body, like g.size
        syn = syn_plain + sum(a["synapses"] for a in att) // M
        cores = max(math.ceil((g.size + extra_n) / NEURONS_PER_CORE), math.ceil(syn / SYNAPSES_PER_CORE), 1)
        total_cores += cores
        # the same group without its SG-SA block: the difference is what the attention adds
        base_cores += max(math.ceil(g.size / NEURONS_PER_CORE), math.ceil(syn_plain / SYNAPSES_PER_CORE), 1)
        att_neurons += extra_n
        rows.append({"name": name, "neurons": g.size + extra_n, "synapses_in": syn,
                     "fan_in": syn / g.size, "fan_out": fan_out[name] / g.size,
                     "weight_bits": 8, "cores": cores, "latency": g.latency,
                     "mapping": "+".join(sorted({synapse_mapping(s) for s in ins}))})
        if att:
            notes.append(f"{name}: includes its SG-SA block ({att[0]['order']} order: "
                         f"{sum(a['neurons'] for a in att):,} product/middle neurons per clip)")
    readout = sum(synapse_count(graph, s) for s in graph.incoming(LOGITS))
    return {"limits": {"neurons_per_core": NEURONS_PER_CORE, "synapses_per_core": SYNAPSES_PER_CORE,
                       "cores_per_chip": CORES_PER_CHIP, "source": SOURCE},
            "groups": rows, "synapses": syn_rows, "readout_synapses": readout,
            "total_neurons": sum(r["neurons"] for r in rows),
            "total_synapses": sum(r["synapses_in"] for r in rows) + readout,
            "unrolled_synapses_per_clip": sum(r["unrolled_synapses"] for r in syn_rows),
            "stored_weights": sum(r["stored_weights"] for r in syn_rows),
            "total_cores": total_cores, "fits_one_chip": total_cores <= CORES_PER_CHIP,
            "attention": {"neurons": att_neurons, "cores": total_cores - base_cores,
                          "min_cores": math.ceil(att_neurons / NEURONS_PER_CORE),
                          "cores_without_attention": base_cores},
            "notes": notes}


def format_resources(res: dict) -> str:
    lines = [f"{'group':<28} {'neurons':>9} {'synapses':>10} {'fan-in':>7} {'fan-out':>7} {'bits':>4} {'cores':>5}"
             f"  mapping"]
    for r in res["groups"]:
        lines.append(f"{r['name']:<28} {r['neurons']:>9,} {r['synapses_in']:>10,} {r['fan_in']:>7.1f} "
                     f"{r['fan_out']:>7.1f} {r['weight_bits']:>4} {r['cores']:>5}  {r.get('mapping', '')}")
    lines.append(f"Lava mapping: {res['stored_weights']:,} stored weights for "
                 f"{res['unrolled_synapses_per_clip']:,} unrolled synapses per clip")
    lines.append(f"total: {res['total_neurons']:,} neurons, {res['total_synapses']:,} synapses, "
                 f"{res['total_cores']} cores — {'fits' if res['fits_one_chip'] else 'does NOT fit'} one "
                 f"Loihi 2 chip ({res['limits']['cores_per_chip']} cores)")
    att = res["attention"]
    if att["neurons"]:
        lines.append(f"of which SG-SA attention (stock product/middle populations): {att['neurons']:,} neurons, "
                     f"{att['cores']} cores ({att['min_cores']} on their own at {res['limits']['neurons_per_core']:,} "
                     f"neurons per core); without them {att['cores_without_attention']} cores")
    lines += [f"note: {n}" for n in res["notes"]]
    return "\n".join(lines)
