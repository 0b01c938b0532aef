"""Graph passes: each a plain function ``Graph -> Graph`` returning a new graph (input untouched).

Order used by :func:`export.pipeline.export_graph`::

    fold_bn → fold_graph → fold_fusion → balance_delays → quantise (calibrated)
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch

from mksgn.neuron import LIF

from . import fixed_point as fx
from .errors import ExportError
from .ir import INPUT, LOGITS, MANT_DTYPE, Graph
from .mapping import attention_order, hop_latency, mark_pairs
from .twin import run_graph

__all__ = ["fold_bn", "fold_graph", "fold_fusion", "balance_delays", "calibrate", "quantise", "split_residual",
           "spike_exact_rounding", "SPLIT_KINDS"]


def _finite(x) -> bool:
    """All entries finite, for NumPy arrays and (differentiable IR) torch tensors."""
    return bool(torch.isfinite(x.detach()).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())


def _out_axis_scale(weight: np.ndarray, kind: str, scale: np.ndarray) -> np.ndarray:
    """Multiply the output-channel axis of a synapse weight by ``scale`` (C_out,)."""
    if kind in ("input_conv", "conv"):
        return weight * scale[:, None, None, None]
    if kind in ("affine", "pool"):
        return weight * scale
    if kind == "graph":
        return weight * scale[:, None]
    raise ExportError(f"cannot fold BN into a {kind} synapse")


def fold_bn(graph: Graph) -> Graph:
    """Fold every synapse's BN (eval statistics) into its weights and its target's bias.

    ``BN(y) = γ·(y − μ)/√(σ² + ε) + β = a·y + b`` with ``a = γ/√(σ²+ε)``, ``b = β − a·μ``:
    the weight's output channels are scaled by ``a`` and ``b`` is added to the target
    neuron group's bias. A synapse's own bias (e.g. the per-channel affine's) moves to the
    target bias too, so afterwards only the readout carries a bias.

    Raises
    ------
    ExportError
        BN on a synapse kind that has no output-channel axis (attention, readout), or a
        non-finite folded value.
    """
    g = graph.copy()
    for s in g.synapses.values():
        if s.kind == "readout":
            continue
        tgt = g.groups[s.target]
        if s.bn is not None:
            mean, var, gamma, beta, eps = s.bn
            if isinstance(var, torch.Tensor):  # differentiable IR: running statistics carry no
                # gradient; NumPy's sqrt keeps it bit-equal to the NumPy IR (torch's vectorised
                # sqrt differed by an ulp on some elements)
                a = gamma / torch.from_numpy(np.sqrt(var.detach().cpu().numpy() + eps))
            else:
                a = gamma / np.sqrt(var + eps)
            s.weight = _out_axis_scale(s.weight, s.kind, a)
            tgt.bias = tgt.bias + beta - a * mean
            s.bn = None
        if s.bias is not None:
            tgt.bias = tgt.bias + s.bias
            s.bias = None
        if not _finite(s.weight) or not _finite(tgt.bias):
            raise ExportError(f"{s.name}: folding BN gave non-finite values (zero running variance?)")
    return g


def graph_dense(weight: np.ndarray, adjacency: np.ndarray) -> np.ndarray:
    """Per-frame joint-mixing matrix of a graph conv (DESIGN "Graph conv").

    ``out[c', w] = Σ_k Σ_c Σ_v W_k[c', c]·A_k[v, w]·x[c, v]`` with ``W_k[c', c] =
    weight[c', k·C + c]``; returns ``D`` of shape ``(C'·V, C·V)`` with
    ``D[c'·V + w, c·V + v] = Σ_k W_k[c', c]·A_k[v, w]`` — the Kronecker sum
    ``Σ_k W_k ⊗ A_kᵀ``. A torch ``weight`` (differentiable IR) gives a torch ``D`` with the
    same values (each entry is one product, summed over ``k`` in the same order).
    """
    K, V, _ = adjacency.shape
    c_out = weight.shape[0]
    c_in = weight.shape[1] // K
    if isinstance(weight, torch.Tensor):
        A = torch.as_tensor(np.asarray(adjacency), dtype=weight.dtype)
        Wk = weight.reshape(c_out, K, c_in).permute(1, 0, 2)  # (K, C', C)
        return sum(torch.kron(Wk[k].contiguous(), A[k].T.contiguous()) for k in range(K))
    Wk = weight.reshape(c_out, K, c_in).transpose(1, 0, 2)  # (K, C', C)
    return sum(np.kron(Wk[k], adjacency[k].T) for k in range(K))


def fold_graph(graph: Graph) -> Graph:
    """Fold the normalised adjacency into every graph-conv synapse (:func:`graph_dense`).

    Afterwards ``weight`` is the ``(C'·V, C·V)`` matrix and ``adjacency`` is None; entries
    that are exactly zero are absent synapses (``meta["nnz"]`` counts the others).
    """
    g = graph.copy()
    for s in g.synapses.values():
        if s.kind == "graph" and s.adjacency is not None:
            if s.bn is not None:
                raise ExportError(f"{s.name}: run fold_bn before fold_graph")
            s.weight = graph_dense(s.weight, s.adjacency)
            s.adjacency = None
            s.meta["nnz"] = int((s.weight != 0).sum())
    return g


def fold_fusion(graph: Graph) -> Graph:
    """Fold frozen SMF fusion weights (paper eq. 24) into the synapses that read the fused spikes.

    The frontend maps the four Spiking Coding encoders to one neuron group ``sc.lif`` of
    ``n·C'`` channels (encoder ``m`` = channels ``m·C'..(m+1)·C'``, ``n`` modalities) and
    records ``meta["fusion_weights"]`` ``(w_1..w_n)``. Layer 1 reads
    ``fused = Σ_m w_m · s_m`` (``C'`` channels); every synapse marked
    ``meta["fused_input"]`` is linear in it, so it becomes a synapse over all ``n·C'``
    encoder channels with its input-channel axis repeated ``n`` times, block ``m`` scaled
    by ``w_m``:

    * ``conv`` ``(C_out, C', k, 1)`` → ``(C_out, n·C', k, 1)``;
    * folded ``graph`` ``(C_out·V, C'·V)`` → ``(C_out·V, n·C'·V)`` (columns ``(m·C' + c)·V + v``);
    * ``affine`` ``(C',)`` (one-to-one) → 1×1 ``conv`` ``(C', n·C', 1, 1)`` with
      ``W[c, m·C' + c] = w_m·a_c`` (same temporal stride): one synapse from each encoder
      neuron of channel ``c`` instead of one from the fused value.

    Synaptic events then count encoder spikes × non-zero fan-out, as on a chip (there is no
    "fused" neuron). Single-modality graphs (no ``fusion_weights``) pass through unchanged.
    Run after :func:`fold_bn` and :func:`fold_graph`.

    Raises
    ------
    ExportError
        Fusion weights on a graph without fused-input synapses, non-finite weights, a
        marked synapse of another kind, or an unfolded BN / adjacency on one.
    """
    g = graph.copy()
    fw = g.meta.get("fusion_weights")
    if fw is None:
        return g
    fw = np.asarray(fw, dtype=np.float64)
    if fw.ndim != 1 or not np.isfinite(fw).all():
        raise ExportError(f"fusion_weights {fw.tolist()} must be a finite vector (one per modality)")
    n = len(fw)
    marked = [s for s in g.synapses.values() if s.meta.get("fused_input")]
    if not marked:
        raise ExportError("graph has fusion_weights but no synapse reads the fused spikes")
    for s in marked:
        if s.bn is not None or s.adjacency is not None or s.bias is not None:
            raise ExportError(f"{s.name}: run fold_bn and fold_graph before fold_fusion")
        w = s.weight
        if s.kind in ("conv", "graph"):  # both: input channels (× V for graph) on axis 1
            s.weight = np.concatenate([f * w for f in fw], axis=1)
            if s.kind == "graph":
                s.meta["nnz"] = int(np.count_nonzero(s.weight))
        elif s.kind == "affine":
            c = len(w)
            conv = np.zeros((c, n * c, 1, 1))
            for m, f in enumerate(fw):
                conv[np.arange(c), m * c + np.arange(c), 0, 0] = f * w
            s.kind, s.weight, s.padding = "conv", conv, 0
        else:
            raise ExportError(f"{s.name}: cannot fold fusion weights into a {s.kind} synapse")
        s.meta["fused_input"] = False
        s.meta["fusion_folded"] = fw.tolist()
    return g


def balance_delays(graph: Graph) -> Graph:
    """Delay-balance the graph for Lava, where every synapse hop costs one time step.

    The hops of each (synapse, source) connection come from the one mapping rule,
    :func:`export.mapping.hop_latency` (1 for most synapses, 2 for a shared conv with a
    negative ``weight_exp``, 4/4/2 for the attention's Q/K/V in the ``qk`` order). Then
    ``latency(G) = max over incoming synapses s, sources u of (latency(u) + hops(s, u))``
    with the host input at latency 0, and each connection gets
    ``delay = latency(target) − hops(s, u) − latency(source)`` extra steps, so every input of
    a neuron — the several spike trains summed by a residual connection and the Q, K, V of
    the attention — arrives in the same step. The readout's latency is recorded in
    ``meta["readout_latency"]``. Sets ``NeuronGroup.latency``, ``Synapse.meta["delays"]``
    (source → steps), the weight-split pairs that share one ``Conv``
    (:func:`export.mapping.mark_pairs`) and, for attention, ``Synapse.meta["attention_order"]``
    (:func:`export.mapping.attention_order` of the source's channels and joints).
    """
    g = graph.copy()
    if g.quantised:
        mark_pairs(g.synapses)
    for s in g.synapses.values():
        if s.kind == "attention" and not s.meta.get("attention_order"):
            C, _, V = g.groups[s.sources[0]].shape
            s.meta["attention_order"] = attention_order(int(C), int(V))
    lat = {INPUT: 0}

    def hops(s, u):
        return hop_latency(s, u)

    for name in g.groups:
        ins = g.incoming(name)
        lat[name] = max(lat[u] + hops(s, u) for s in ins for u in s.sources)
        g.groups[name].latency = lat[name]
    readout = max(lat[u] + hops(s, u) for s in g.incoming(LOGITS) for u in s.sources)
    for s in g.synapses.values():
        target_lat = lat[s.target] if s.target != LOGITS else readout
        s.meta["delays"] = {u: target_lat - hops(s, u) - lat[u] for u in s.sources}
    g.meta["readout_latency"] = readout
    g.meta["latency"] = {n: grp.latency for n, grp in g.groups.items()}
    return g


# Headroom of the 24-bit state: v ≈ a_in·2⁶/(1 − β) must stay below 2²³, so the largest
# calibrated |current|·scale is kept under 2¹⁶ (a factor 2 of margin for β = 0.25).
STATE_BUDGET = 2 ** 16
MAX_INPUT_FRAC_BITS = 12
# Below this threshold mantissa a neuron's resolution (1/vth of its threshold) is too coarse
# for the float model to survive; such weights count as not representable.
MIN_VTH_MANT = 16


def _pow2_floor(x: float) -> float:
    return 2.0 ** np.floor(np.log2(x))


def _calib_weight(s, input_frac_bits: int) -> np.ndarray:
    """Float weight per unit of the integer input (the host input is ``x·2^frac_bits``)."""
    return s.weight / 2.0 ** input_frac_bits if s.kind == "input_conv" else s.weight


def spike_exact_rounding(w_float: np.ndarray, mant: np.ndarray, weight_exp: int, grp, time_steps: int):
    """Rounding direction of a one-to-one (``affine``) synapse chosen so that its integer neuron
    spikes like the float one.

    A neuron whose only input is one spike train through one weight ``w_c`` sees exactly the
    currents ``w_c·s[t] + b_c`` with ``s[t] ∈ {0, 1}``. When ``w_c + b_c`` lies within one
    weight-grid step of the threshold, round-to-nearest can put the integer neuron on the
    other side of it: it never (or always) fires where the float neuron fires on a single
    spike, for every clip (found by ``mksgn-qcheck`` as a hot spot: one channel with 90 % of
    a group's spike flips). Here, per channel, the two grid weights around ``w_c`` are tried on
    all ``2^T_s`` binary input trains, in the integer arithmetic of
    :func:`export.fixed_point.lif_run` against the float LIF, and the one with fewer spike
    mismatches is kept (ties keep round-to-nearest). Own code: no quantisation library
    chooses roundings by spike equality of a LIF.

    Parameters
    ----------
    w_float : ``(C,)`` float weights (threshold units, BN folded)
    mant : ``(C,)`` int64 round-to-nearest mantissas (even grid), ``weight_exp`` their exponent
    grp : the quantised target :class:`~export.ir.NeuronGroup` (du, dv, vth_mant, bias)
    time_steps : T_s

    Returns
    -------
    (mantissas ``(C,)`` int64, number of channels whose rounding changed)
    """
    import torch

    step, lo, hi = fx.weight_grid(fx.WEIGHT_BITS, fx.MIXED)
    S = grp.scale
    exact = np.asarray(w_float, np.float64) * S / 2.0 ** weight_exp / step
    cand_lo = np.clip(np.floor(exact) * step, lo, hi).astype(np.int64)
    cand_hi = np.clip(np.ceil(exact) * step, lo, hi).astype(np.int64)
    patterns = ((np.arange(2 ** time_steps)[:, None] >> np.arange(time_steps)[None, :]) & 1).T  # (T, P)
    s = patterns[:, :, None].astype(np.float64)  # (T, P, 1)
    current = s * np.asarray(w_float)[None, None, :] + grp.bias[None, None, :]
    with torch.no_grad():  # the float neuron of the models (mksgn.neuron.LIF), (T, P, C)
        ref = LIF(grp.beta, grp.threshold)(torch.from_numpy(current)).numpy() > 0

    def mismatches(m):
        a_in = fx.shift_exp(patterns[:, :, None].astype(np.int64) * m[None, None, :], weight_exp)
        _, _, spk = fx.lif_run(a_in, grp.du, grp.dv, grp.vth_mant, grp.bias_mant, grp.bias_exp)
        return (spk != ref).sum(axis=(0, 1))

    base, e_lo, e_hi = mismatches(mant), mismatches(cand_lo), mismatches(cand_hi)
    best = np.where(e_lo < e_hi, cand_lo, cand_hi)
    out = np.where(np.minimum(e_lo, e_hi) < base, best, mant).astype(np.int64)
    return out, int((out != mant).sum())


#: Synapse kinds whose weights :func:`quantise` splits into a high and a low 8-bit mantissa by
#: default (every spike-driven linear kind; not the host-side input conv, whose currents the
#: host computes, nor attention, whose scale is an exact power of two, nor the readout).
SPLIT_KINDS = ("conv", "affine", "graph", "pool")


def split_residual(s, w_scaled: np.ndarray) -> list:
    """Low-mantissa partner synapses of ``s`` that carry what its 8-bit mantissa rounds away.

    Loihi weights are 8-bit mantissas with one ``weight_exp`` per synapse group, so a group's
    small weights keep only a few significant bits (relative error up to ``2^-7`` of its
    largest weight). The residual ``r = W·S − weight_mant·2^weight_exp`` (``a_in`` units) is
    quantised again, with the finer exponent that fits it (typically ``weight_exp − 8``), into
    a second synapse group from the same source(s) into the same neurons; Lava sums both into
    ``a_in``. The effective weight then has ~15 bits at twice the synaptic events and synapse
    memory of the group. Each partner has ONE source (``"<name>.lo"``, or ``"<name>.lo.<source>"``
    for a multi-source synapse): with a negative ``weight_exp`` Lava floors each synapse
    group's shifted sum, so per-source groups are what Lava computes exactly. Own code: no
    quantisation library targets Loihi's mantissa/exponent synapses.

    Parameters
    ----------
    s : :class:`~export.ir.Synapse`, already quantised (``weight_mant``, ``weight_exp``)
    w_scaled : float array, ``s.weight`` shape — the exact weights in ``a_in`` units (``W·S``)

    Returns
    -------
    list of new :class:`~export.ir.Synapse` (empty when the 8-bit weights are exact). Their
    float ``weight`` is zero (the float graph is unchanged) and ``meta["split_of"]`` names ``s``.
    """

    r = np.array(s.weight_mant, dtype=np.float64)  # in place below: one temporary
    r *= -(2.0 ** s.weight_exp)
    r += w_scaled
    top = max(float(w_scaled.max(initial=0.0)), -float(w_scaled.min(initial=0.0)), 1e-30)
    if not max(float(r.max(initial=0.0)), -float(r.min(initial=0.0))) > 1e-9 * top:
        return []
    mant, exp, _ = fx.quantise_weights(r, current_scale=1.0, out_dtype=MANT_DTYPE)
    del r
    if not np.any(mant):
        return []
    out = []
    zero = np.broadcast_to(np.float64(0.0), np.shape(s.weight))
    for u in s.sources:
        lo = copy.copy(s)  # every array attribute is replaced or shared read-only below
        lo.name = f"{s.name}.lo" if len(s.sources) == 1 else f"{s.name}.lo.{u}"
        lo.sources = (u,)
        lo.weight = zero  # one read-only zero view, no memory (~1 GB per copy at paper width)
        lo.bias, lo.bn = None, None
        lo.weight_mant, lo.weight_exp = mant, int(exp)
        lo.meta = {"split_of": s.name, **({"delays": {u: s.meta["delays"][u]}} if "delays" in s.meta else {})}
        out.append(lo)
    return out


def _quantise_incoming(g: Graph, name: str, grp, S: float, input_frac_bits: int, weight_split, report: dict,
                       residuals: dict) -> None:
    """Mantissas and ``weight_exp`` of every synapse into group ``name`` at its scale ``S``
    (in place), the split partners or spike-exact roundings, and their report entries."""
    for s in g.incoming(name):
        w = _calib_weight(s, input_frac_bits)
        mant, exp, _ = fx.quantise_weights(w, current_scale=S, out_dtype=MANT_DTYPE)
        if exp >= fx.WEIGHT_EXP_MAX and np.abs(w).max() * S / 2.0 ** exp > 2 ** fx.MAX_WEIGHT_BITS:
            raise ExportError(f"{s.name}: weights up to {np.abs(w).max():.3g} need weight_exp > "
                              f"{fx.WEIGHT_EXP_MAX} at scale {S:g}; they cannot be represented")
        s.weight_mant, s.weight_exp = np.asarray(mant, dtype=MANT_DTYPE), int(exp)
        moved, lows = 0, []
        ws = w * S
        if s.kind in weight_split:
            lows = split_residual(s, ws)
        elif s.kind == "affine" and len(s.sources) == 1 and len(g.incoming(name)) == 1:
            s.weight_mant, moved = spike_exact_rounding(w, s.weight_mant, s.weight_exp, grp, g.time_steps)
            s.weight_mant = s.weight_mant.astype(MANT_DTYPE)
        err = _max_rel_error(s.weight_mant, exp, lows[0] if lows else None, ws)
        del ws
        report["synapses"][s.name] = {"weight_exp": int(exp), "max_rel_weight_error": float(err),
                                      **({"spike_exact_channels_moved": moved} if moved else {}),
                                      **({"split": [lo.name for lo in lows],
                                          "low_weight_exp": lows[0].weight_exp} if lows else {})}
        residuals[s.name] = lows


def _absmax(a) -> float:
    """``max|a|`` without a full-size ``|a|`` temporary."""
    a = np.asarray(a)
    return max(float(a.max(initial=0.0)), -float(a.min(initial=0.0)))


def _max_rel_error(mant, exp: int, low, exact: np.ndarray) -> float:
    """``max|mant·2^exp (+ low partner) − exact| / max|exact|``, computed in place (at paper
    width every temporary of the direct expression is a 210 MB matrix)."""
    mant, exact = np.atleast_1d(np.asarray(mant)), np.atleast_1d(np.asarray(exact))
    lo = None if low is None else np.atleast_1d(np.asarray(low.weight_mant))
    err, top = 0.0, 1e-30
    for i in range(0, exact.shape[0], 512):  # row blocks of the first axis
        eff = mant[i:i + 512].astype(np.float64) * 2.0 ** exp
        if lo is not None:
            eff += lo[i:i + 512].astype(np.float64) * 2.0 ** low.weight_exp
        ex = exact[i:i + 512]
        eff -= ex
        err = max(err, float(np.abs(eff).max(initial=0.0)))
        top = max(top, float(np.abs(ex).max(initial=0.0)))
    return err / top


#: Calibration clips run at a time (bounds the float twin's memory at paper width).
CALIB_BATCH = 16

#: Clips (the first ones of the calibration set) and batch of the integer saturation check
#: that :func:`export.exporter.run_export` reports in ``quantisation.json``: the integer twin
#: holds u, v and currents in int64 (≈ 70 MB per clip at paper width) and took 47 s of a
#: 100 s paper-width export over all 64 calibration clips.
SATURATION_CLIPS = 16
SATURATION_BATCH = 4


def calibrate(graph: Graph, calib_x, input_frac_bits: int | None = None) -> dict:
    """Run the float graph on calibration clips: each neuron group's largest |input current|
    (threshold units, bias included) and the host input's resolution.

    The float graph runs in float32 (the PyTorch model's own precision, ~7x faster than
    float64: :func:`export.twin.run_graph`'s ``float_dtype``), :data:`CALIB_BATCH` clips at a
    time. A scale is a power of two below ``2¹⁶ / max|I|``, so only a maximum within float32
    rounding (~10⁻⁷ relative) of a power of two could give another scale than float64.

    Parameters
    ----------
    graph : Graph
        BN and adjacency folded.
    calib_x : Tensor ``(N, C, T, V, M)``
        Calibration clips (real training clips).
    input_frac_bits : int, optional
        Default: the most bits (≤ 12) with ``max|x|·2^bits < 2¹⁵`` on the calibration clips.

    Returns
    -------
    dict: ``input_frac_bits`` (int), ``max_current`` (group → float; 0 for a group silent on
    every clip).

    Raises
    ------
    ExportError
        Unfolded BN/adjacency or no calibration clips.
    """
    for s in graph.synapses.values():
        if s.bn is not None or s.adjacency is not None:
            raise ExportError(f"{s.name}: fold BN and adjacency before quantising")
    if calib_x is None or len(calib_x) == 0:
        raise ExportError("quantisation needs calibration clips (--calib-data)")
    ref = run_graph(graph, calib_x, mode="float", track_currents=True, batch_size=CALIB_BATCH, float_dtype=torch.float32)
    if input_frac_bits is None:
        xmax = float(calib_x.abs().max())
        input_frac_bits = int(min(MAX_INPUT_FRAC_BITS, np.floor(np.log2(fx.INPUT_MAX / max(2 * xmax, 1e-9)))))
    return {"input_frac_bits": int(input_frac_bits),
            "max_current": {name: ref.currents_absmax.get(name, 0.0) for name in graph.groups}}


def quantise(graph: Graph, calib_x, input_frac_bits: int | None = None,
             weight_split: Sequence[str] = SPLIT_KINDS, scales: dict | None = None) -> Graph:
    """Quantise to Loihi fixed point with per-layer scales calibrated on real clips.

    Per neuron group a power-of-two current scale ``S`` (integer ``a_in`` per unit of float
    current, :func:`export.fixed_point.quantise_weights`) is chosen as the largest with

    * ``max|I|·S ≤ 2¹⁶`` (``I`` = input current incl. bias, max over the calibration clips):
      keeps ``u = a_in·2⁶`` and ``v`` inside their 24 bits;
    * ``vth·S ≤ 2¹⁷ − 1`` (17-bit ``vth`` mantissa);
    * ``max|W|·S ≤ 254·2⁷`` for every incoming synapse (8-bit weights, ``weight_exp`` ≤ 7);
    * ``max|bias|·S·2⁶ ≤ 4095·2⁷`` (13-bit ``bias_mant``, 3-bit ``bias_exp``).

    Then ``du = 4095`` (current = instantaneous input), ``dv = round(4096·(1 − β))``,
    ``vth_mant = round(vth·S)``, ``(bias_mant, bias_exp)`` per channel, and for every
    incoming synapse an 8-bit mixed-sign weight mantissa (even values in [−256, 254], Lava's
    ``truncate_weights`` grid) with the smallest ``weight_exp`` in [−8, 7] that fits
    ``W·S``. The host-side input is quantised to ``2^-input_frac_bits`` m. The readout keeps
    ``weight_exp = 0`` with the largest power-of-two scale that fits its weights.

    Synapses of the kinds in ``weight_split`` get a low-mantissa partner
    (:func:`split_residual`): ~15-bit effective weights at twice their synaptic events. Why:
    on the shipped MK-SGN the 8-bit mantissa alone costs 3.45 points of top-1 (82.76 → 79.31 %),
    while the same integer network with exact weights scores 82.76 % (bias, threshold, decay,
    24-bit state and the ``a_in`` floor cost nothing measurable). The other affine synapses
    (sole one-to-one input of a group) get :func:`spike_exact_rounding` instead.

    Parameters
    ----------
    graph : Graph
        BN and adjacency folded.
    calib_x : Tensor ``(N, C, T, V, M)``
        Calibration clips (real training clips).
    input_frac_bits : int, optional
        Default: the most bits (≤ 12) with ``max|x|·2^bits < 2¹⁵`` on the calibration clips.
    weight_split : sequence of synapse kinds
        Kinds to split (default :data:`SPLIT_KINDS`; ``()`` = plain 8-bit weights).
    scales : dict, optional
        A grid fixed in advance instead of calibrating: ``{"input_frac_bits": int, "groups":
        {group: S}}`` (quantisation-aware training, :mod:`export.qat`, holds the calibrated
        scales between recalibrations and re-derives only the weights; ``calib_x`` is then
        not used). Mantissas, ``weight_exp``, ``vth_mant`` and biases follow from ``S`` by the
        same rules.

    Returns
    -------
    Graph with integer parameters and ``meta["quantisation"]`` (per group: scale,
    vth_mant, max current; per synapse: weight_exp, max relative weight error) and
    ``meta["input_frac_bits"]``, ``meta["readout_scale"]``.

    Raises
    ------
    ExportError
        Unfolded BN/adjacency, no calibration clips, or
        weights/currents so large that the threshold mantissa would drop below
        ``MIN_VTH_MANT`` (cannot be represented).
    """

    if scales is None:
        cal = calibrate(graph, calib_x, input_frac_bits)
        input_frac_bits = cal["input_frac_bits"]
    else:
        for s in graph.synapses.values():
            if s.bn is not None or s.adjacency is not None:
                raise ExportError(f"{s.name}: fold BN and adjacency before quantising")
        missing = sorted(set(graph.groups) - set(scales["groups"]))
        if missing:
            raise ExportError(f"the given scales name no scale for neuron group(s) {missing[:3]}")
        input_frac_bits = int(scales["input_frac_bits"])
    g = graph.copy()
    g.meta["input_frac_bits"] = int(input_frac_bits)
    report = {"groups": {}, "synapses": {}}
    residuals = {}
    for name, grp in g.groups.items():
        if scales is not None:
            S, imax, why = float(scales["groups"][name]), None, "given"
        else:
            imax = cal["max_current"][name]  # 0: silent on every clip
            bmax = float(np.abs(grp.bias).max()) if grp.bias.size else 0.0
            wmax = max(_absmax(_calib_weight(s, input_frac_bits)) for s in g.incoming(name))
            limits = [STATE_BUDGET / imax if imax > 0 else np.inf, fx.VTH_MAX / grp.threshold,
                      fx.weight_grid(fx.WEIGHT_BITS, fx.MIXED)[2] * 2.0 ** fx.WEIGHT_EXP_MAX / max(wmax, 1e-30),
                      np.inf if bmax == 0 else
                      fx.BIAS_MANT_MAX * 2 ** fx.BIAS_EXP_MAX / (bmax * 2 ** fx.ACT_SHIFT)]
            S = _pow2_floor(min(limits))
            why = ["state", "vth", "weights", "bias"][int(np.argmin(limits))]
            if grp.threshold * S < MIN_VTH_MANT:
                what = {"state": "currents", "vth": "the threshold", "weights": "weights", "bias": "biases"}[why]
                raise ExportError(f"neuron group {name}: {what} too large to represent (max current "
                                  f"{imax:.3g}, max weight {wmax:.3g}, max bias {bmax:.3g} thresholds); vth "
                                  f"mantissa would be {grp.threshold * S:.3g} < {MIN_VTH_MANT}")
        grp.scale = S
        grp.du = fx.DU_MAX
        grp.dv = int(fx.quantise_decay(grp.beta))
        grp.vth_mant = int(fx.quantise_threshold(grp.threshold, S))
        grp.bias_mant, grp.bias_exp = (np.asarray(a, dtype=np.int64) for a in fx.quantise_bias(grp.bias, S))
        report["groups"][name] = {"scale": S, "vth_mant": grp.vth_mant, "max_current": imax, "limited_by": why}
        _quantise_incoming(g, name, grp, S, input_frac_bits, weight_split, report, residuals)
    for s in g.incoming("logits"):
        mant, exp, scale = fx.quantise_weights(s.weight)
        s.weight_mant, s.weight_exp = np.asarray(mant, dtype=MANT_DTYPE), int(exp)
        s.meta["bias_int"] = np.round(s.bias * scale).astype(np.int64)
        s.meta["scale"] = scale
        g.meta["readout_scale"] = scale
        report["synapses"][s.name] = {"weight_exp": int(exp), "scale": scale}
    if residuals:  # each low-mantissa partner right after its synapse (order stays topological)
        g.synapses = {k: v for name, s in g.synapses.items()
                      for k, v in [(name, s)] + [(lo.name, lo) for lo in residuals.get(name, [])]}
    report["weight_split"] = sorted(weight_split)
    g.meta["quantisation"] = report
    return g
