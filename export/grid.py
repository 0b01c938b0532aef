"""The quantisation grid of an exported graph as a record: what a quantisation-aware
training checkpoint stores (:mod:`export.qat`) and ``mksgn-export`` compares with the grid it
computes (issue 14). The grid itself is made by :func:`export.passes.quantise`; this module
only describes and compares it.
"""
from __future__ import annotations

import math

from .ir import Graph

__all__ = ["grid_record", "compare_grids", "scales_from_grid"]


def grid_record(q: Graph) -> dict:
    """The grid of a quantised graph, as a QAT checkpoint records it and ``mksgn-export`` checks it:
    ``input_frac_bits``, ``weight_split`` (kinds), per neuron group ``scale_exp`` (log2 of the
    current scale ``S``), ``vth_mant``, ``du``, ``dv``; per synapse its ``weight_exp``; the
    readout's ``scale_exp``. Only Python ints, lists and strings (a ``weights_only`` load reads it)."""
    rep = q.meta["quantisation"]
    return {"input_frac_bits": int(q.meta["input_frac_bits"]),
            "weight_split": list(rep.get("weight_split", [])),
            "groups": {n: {"scale_exp": int(round(math.log2(g.scale))), "vth_mant": int(g.vth_mant),
                           "du": int(g.du), "dv": int(g.dv)} for n, g in q.groups.items()},
            "synapses": {n: int(s.weight_exp) for n, s in q.synapses.items() if not s.meta.get("split_of")},
            "readout_scale_exp": int(round(math.log2(q.meta["readout_scale"])))}


def compare_grids(recorded: dict, computed: dict) -> list:
    """Where a checkpoint's recorded QAT grid and the export's differ: a list of lines such as
    ``"neuron group layers.0.stc.lif: scale_exp 9 (trained) vs 8 (export)"``; empty when equal."""
    out = []

    def diff(what, a, b):
        if a != b:
            out.append(f"{what}: {a!r} (trained) vs {b!r} (export)")

    diff("input_frac_bits", recorded.get("input_frac_bits"), computed["input_frac_bits"])
    diff("weight_split", sorted(recorded.get("weight_split", [])), sorted(computed["weight_split"]))
    diff("readout scale_exp", recorded.get("readout_scale_exp"), computed["readout_scale_exp"])
    rg, cg = recorded.get("groups", {}), computed["groups"]
    for n in sorted(set(rg) | set(cg)):
        if n not in rg or n not in cg:
            out.append(f"neuron group {n}: only in the {'export' if n in cg else 'trained'} grid")
            continue
        for k in ("scale_exp", "vth_mant", "du", "dv"):
            diff(f"neuron group {n} {k}", rg[n].get(k), cg[n][k])
    rs, cs = recorded.get("synapses", {}), computed["synapses"]
    for n in sorted(set(rs) | set(cs)):
        diff(f"synapse {n} weight_exp", rs.get(n), cs.get(n))
    return out


def scales_from_grid(recorded: dict) -> dict:
    """The ``scales`` argument of :func:`export.passes.quantise` that re-derives a recorded QAT
    grid: ``{"input_frac_bits": int, "groups": {group: 2^scale_exp}}``. Mantissas,
    ``weight_exp``, ``vth_mant`` and biases then follow from the checkpoint's weights by the
    export's own rules, so the export computes the integers QAT trained (and evaluated) on.

    Raises
    ------
    KeyError, TypeError, ValueError
        A record without ``input_frac_bits`` or per-group integer ``scale_exp`` (the caller
        turns these into an ExportError naming the checkpoint).
    """
    groups = recorded["groups"]
    return {"input_frac_bits": int(recorded["input_frac_bits"]),
            "groups": {str(n): 2.0 ** int(g["scale_exp"]) for n, g in groups.items()}}
