"""Run the IR in PyTorch: float semantics (to check the frontend and passes) or Loihi integer
semantics (the *fixed-point twin* that Lava must equal bit for bit).

Both modes use the model's zero-delay time semantics: at time step ``t`` every neuron group
sees the step-``t`` spikes of its sources (Lava adds one step per hop; ``hw_sim`` compares
after the latency recorded by :func:`export.passes.balance_delays`).

Integer mode does all synaptic arithmetic on float tensors that hold integers and all neuron
arithmetic through :mod:`export.fixed_point`, the one home of Loihi's rules. A spike-driven
synapse runs in float32 when :func:`float32_exact` proves every partial sum an integer below
2²⁴ (float32 represents every such integer, so any summation order gives the same exact
result; oneDNN's float32 convolution is ~7× faster than float64 on this CPU); the rest
(input conv, attention, pool, and any synapse over the bound) in float64, exact below 2⁵³.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import fixed_point as fx
from .errors import ExportError
from .ir import INPUT, LOGITS, Graph, Synapse

__all__ = ["run_graph", "RunResult", "synapse_op", "attention_op", "quantise_input", "float32_exact"]

#: Every integer of magnitude up to 2²⁴ is a float32 number.
F32_EXACT = 2 ** 24
#: Spike-driven synapse kinds whose inputs are 0/1 spikes summed over ``len(sources)`` groups.
_SPIKE_KINDS = ("conv", "graph", "affine", "readout")


@dataclass
class RunResult:
    """Output of :func:`run_graph`.

    Attributes
    ----------
    logits : Tensor ``(N, classes)``
        Float mode: mean over time steps of the readout. Integer mode: the integer sum over
        time steps (float64 holding integers); divide by ``readout scale · T_s`` for float units.
    spikes, u, v : dict name → Tensor ``(T_s, B, C, T, V)``
        Recorded groups only (``record``); ``u``/``v`` in integer mode only (float mode
        records ``v`` as the float membrane). The input current ``a_in`` is not recorded (no
        consumer; it was a quarter of the replay twin's time, in copies).
    spike_counts : dict name → int, total spikes of every group over the batch.
    attention_mid : dict attention synapse → Tensor ``(T_s, B, T, ·, ·)`` — integer mode,
        ``record=True``: the middle product of :func:`attention_op` at every step.
    saturation : dict name → dict of counts (``v`` clipped at ±(2²³−1), ``u`` wrapped at
        24 bits) — integer mode.
    """

    logits: torch.Tensor
    spikes: dict = field(default_factory=dict)
    u: dict = field(default_factory=dict)
    v: dict = field(default_factory=dict)
    spike_counts: dict = field(default_factory=dict)
    saturation: dict = field(default_factory=dict)
    currents_absmax: dict = field(default_factory=dict)
    attention_mid: dict = field(default_factory=dict)


def quantise_input(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Host-side input quantisation: ``round(x · 2^frac_bits)`` (float64 holding integers).

    Raises
    ------
    ExportError
        If a value does not fit 16 signed bits at this resolution.
    """
    q = torch.round(x.double() * (2.0 ** frac_bits))
    if q.abs().max() > fx.INPUT_MAX:
        raise ExportError(f"input coordinate {float(x.abs().max()):.3f} m does not fit {fx.INPUT_BITS} bits at "
                          f"2^-{frac_bits} m resolution")
    return q


def synapse_op(s: Synapse, xs: list, weight: np.ndarray | torch.Tensor, num_bodies: int) -> torch.Tensor:
    """The linear map of a synapse on its (summed) input, with the given weight.

    Parameters
    ----------
    s : Synapse
    xs : list of Tensor
        Source tensors ``(B, C, T, V)`` (summed, except for attention: ``[Q, K, V]``).
    weight : array or Tensor
        ``s.weight`` (float) or ``s.weight_mant`` (integer-valued); a tensor is used as it is
        (dtype and autograd graph kept: :mod:`export.qat`).
    num_bodies : int
        M, for the pool's sum over bodies.

    Returns
    -------
    Tensor ``(B, C', T', V)``; ``(N, C, 1, 1)`` for pool; ``(N, classes)`` for readout.
    """
    w = weight if isinstance(weight, torch.Tensor) else torch.as_tensor(np.asarray(weight), dtype=torch.float64)
    if s.kind == "attention":
        return attention_op(s, xs, w)[0]
    x = xs[0]
    for extra in xs[1:]:
        x = x + extra
    if s.kind in ("input_conv", "conv"):
        return F.conv2d(x, w, stride=(s.stride, 1), padding=(s.padding, 0))
    if s.kind == "affine":
        return x[:, :, :: s.stride] * w.view(1, -1, 1, 1)
    if s.kind == "graph":
        if s.adjacency is not None:
            A = torch.as_tensor(s.adjacency, dtype=x.dtype)
            z = torch.einsum("bctv,kvw->bkctw", x, A).flatten(1, 2)  # (B, K·C, T, V)
            return torch.einsum("oi,bitv->botv", w, z)
        b, c, t, v = x.shape
        y = x.permute(0, 2, 1, 3).reshape(b, t, c * v) @ w.T
        return y.view(b, t, -1, v).permute(0, 2, 1, 3)
    if s.kind == "pool":
        b, c = x.shape[:2]
        total = x.view(b // num_bodies, num_bodies, c, -1).sum(dim=(1, 3))
        return (total * w).view(-1, c, 1, 1)
    if s.kind == "readout":
        return x.flatten(1) @ w.T
    raise ExportError(f"{s.name}: unknown synapse kind {s.kind}")


def attention_op(s: Synapse, xs: list, w) -> tuple:
    """SG-SA ``(Q Kᵀ V) · w`` (paper eq. 8–10) in the product order of the Lava mapping
    (``s.meta["attention_order"]``, :func:`export.mapping.attention_order`; ``qk`` when unset).

    Parameters
    ----------
    xs : ``[Q, K, V]`` Tensors ``(B, C, T, V)``
    w : the scale (float) or its mantissa (integer mode)

    Returns
    -------
    ``(out (B, C, T, V), middle)`` — the middle product the mapping's graded population holds:
    ``A = Q Kᵀ`` ``(B, T, V, V)`` for ``qk``, ``B = Kᵀ V`` ``(B, T, C, C)`` for ``kv``.
    """
    q, k, v = (z.permute(0, 2, 3, 1) for z in xs)  # (B, T, V, C)
    if s.meta.get("attention_order", "qk") == "kv":
        mid = k.transpose(-1, -2) @ v  # (B, T, C, C)
        out = q @ mid
    else:
        mid = q @ k.transpose(-1, -2)  # (B, T, V, V)
        out = mid @ v
    return out.permute(0, 3, 1, 2) * w, mid


def float32_exact(s: Synapse) -> bool:
    """True when the integer-mode sum of spike-driven synapse ``s`` is exact in float32.

    Every input is a spike count in ``[0, len(s.sources)]`` (the sources' 0/1 spikes are summed
    first), so every partial sum of output ``o`` is an integer of magnitude at most
    ``len(s.sources) · Σ_i |mant[o, i]|``; below 2²⁴ (:data:`F32_EXACT`) each is a float32
    number and the float32 result equals the float64 one whatever the order of summation.
    False for the host input conv, attention and pool (float64 there).
    """
    if s.kind not in _SPIKE_KINDS or s.weight_mant is None:
        return False
    m = np.asarray(s.weight_mant)
    rows = m.reshape(-1, 1) if s.kind == "affine" else m.reshape(m.shape[0], -1)
    top = max((int(np.abs(rows[i:i + 4096].astype(np.int64)).sum(axis=1).max(initial=0))
               for i in range(0, rows.shape[0], 4096)), default=0)  # row blocks: no full-size temporary
    return top * len(s.sources) < F32_EXACT


def _merge(parts: list, integer: bool) -> RunResult:
    """One :class:`RunResult` from those of consecutive slices of a batch (``batch_size``)."""
    out = RunResult(logits=torch.cat([p.logits for p in parts]))
    for key in ("spikes", "u", "v", "attention_mid"):  # (T_s, B, ...): batch is axis 1
        for name in getattr(parts[0], key):
            getattr(out, key)[name] = torch.cat([getattr(p, key)[name] for p in parts], dim=1)
    for name in parts[0].spike_counts:
        out.spike_counts[name] = sum(p.spike_counts[name] for p in parts)
    if integer:
        for name, sat in parts[0].saturation.items():
            out.saturation[name] = {k: sum(p.saturation[name][k] for p in parts) for k in sat}
    for name in parts[0].currents_absmax:
        out.currents_absmax[name] = max(p.currents_absmax[name] for p in parts)
    return out


def _float_post(s: Synapse, y: torch.Tensor) -> torch.Tensor:
    if s.bn is not None:
        mean, var, gamma, beta, eps = (torch.as_tensor(p, dtype=torch.float64) for p in s.bn)
        shape = (1, -1) + (1,) * (y.dim() - 2)
        y = (y - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * gamma.view(shape) + beta.view(shape)
    if s.bias is not None:
        b = torch.as_tensor(s.bias, dtype=torch.float64)
        y = y + b.view((1, -1) + (1,) * (y.dim() - 2))
    return y


def _weight_tensor(s: Synapse, integer: bool, dtype) -> torch.Tensor:
    """A synapse's weights (mantissas in integer mode) as a tensor of ``dtype``."""
    return torch.as_tensor(np.asarray(s.weight_mant if integer else s.weight), dtype=dtype)


def run_graph(graph: Graph, x: torch.Tensor, mode: str = "int", record=(),
              track_currents: bool = False, hook=None, batch_size: int | None = None,
              float_dtype: torch.dtype = torch.float64, cache_weights: bool = True) -> RunResult:
    """Run the graph on a batch of clips.

    Parameters
    ----------
    graph : Graph
        Any stage for ``mode="float"``; quantised for ``mode="int"``.
    x : Tensor ``(N, C, T, V, M)``
        Preprocessed clips (metres).
    mode : {"float", "int"}
    record : iterable of group names, or True for all
        Groups whose per-step spikes (and u, v in integer mode) are returned.
    track_currents : bool
        Float mode: record each group's max |input current| (threshold units) for calibration.
    hook : object, optional
        Integer mode: straight-through gradients for quantisation-aware training
        (:class:`export.qat.StraightThrough`). The integers computed are unchanged; the
        hook supplies ``weight(s)`` (the synapse's mantissas as a tensor whose gradient
        reaches the float weights), ``current(s, acc, y)`` (the exact shifted input ``y``
        with the gradient of the unshifted sum ``acc``), ``spike(name, group, a_in, v_pre,
        spikes)`` (the exact spikes with a surrogate gradient) and ``start(graph)`` (once
        per call). The returned logits then carry an autograd graph.
    batch_size : int, optional
        Run at most this many clips at a time (the state of a width-1.0 MK-SGN is ~70 MB per
        clip) and merge the results: the same numbers as one call (clips are independent;
        counts are summed, maxima maxed). Not with ``hook``.
    float_dtype : torch.float64 or torch.float32
        Float mode's arithmetic. float32 is what the PyTorch model itself computes in and is
        ~7× faster; the export calibrates with it (:func:`export.passes.calibrate`).
    cache_weights : bool
        Convert every synapse's weights to a tensor once per call (default). False converts a
        synapse's weights each time it is used and drops them after: the same numbers, a
        little slower, without a second copy of all weights in memory (0.85 GB at paper
        width: the export's saturation check uses it).

    Returns
    -------
    RunResult

    Raises
    ------
    ExportError
        Integer mode on an unquantised graph, or an input of the wrong shape.
    """
    if mode not in ("float", "int"):
        raise ValueError("mode must be 'float' or 'int'")
    integer = mode == "int"
    if batch_size is not None and x.dim() == 5 and x.shape[0] > batch_size:
        if hook is not None:
            raise ValueError("batch_size cannot be combined with a straight-through hook")
        return _merge([run_graph(graph, x[i:i + batch_size], mode, record, track_currents,
                                 float_dtype=float_dtype, cache_weights=cache_weights)
                       for i in range(0, x.shape[0], batch_size)], integer)
    if float_dtype not in (torch.float64, torch.float32):
        raise ValueError("float_dtype must be torch.float64 or torch.float32")
    if integer and not graph.quantised:
        raise ExportError("integer mode needs a quantised graph (run export.passes.quantise)")
    C, _, V, M = graph.input_shape
    if x.dim() != 5 or x.shape[1] != C or x.shape[3] != V or x.shape[4] != M:
        raise ExportError(f"input has shape {tuple(x.shape)}; the graph expects (N, {C}, T, {V}, {M})")
    n = x.shape[0]
    rec = set(graph.groups) if record is True else set(record)
    xin = x.double().permute(0, 4, 1, 2, 3).reshape(n * M, C, x.shape[2], V)
    if integer:
        xin = quantise_input(xin, graph.meta["input_frac_bits"])
    result = RunResult(logits=None)
    state = {}
    const = {}  # synapses from the host input: the same current at every step
    steps = graph.time_steps
    for name, g in graph.groups.items():
        result.spike_counts[name] = 0
        if integer:
            result.saturation[name] = {"v_clip": 0, "u_wrap": 0}
    incoming = {name: graph.incoming(name) for name in list(graph.groups) + [LOGITS]}
    # spikes (0/1) are held in float32 unless straight-through gradients need float64
    spike_dtype = torch.float32 if hook is None and (integer or float_dtype == torch.float32) else torch.float64
    # the weights as tensors, once per call: float32 where it is exact (integer mode, no hook)
    # or asked for (float mode), else float64
    f32 = set()
    weights = {}
    for syns in incoming.values():
        for s in syns:
            if integer and hook is None and float32_exact(s):
                f32.add(s.name)
            elif not integer and float_dtype == torch.float32 and s.kind != "attention" and s.sources != (INPUT,):
                f32.add(s.name)
            if hook is None and cache_weights:
                weights[s.name] = _weight_tensor(s, integer, torch.float32 if s.name in f32 else torch.float64)

    def weight(s):  # cached, or made for this use only (cache_weights=False)
        if hook is not None:
            return hook.weight(s)
        if cache_weights:
            return weights[s.name]
        return _weight_tensor(s, integer, torch.float32 if s.name in f32 else torch.float64)
    logits = 0
    if hook is not None:
        if not integer:
            raise ValueError("a straight-through hook needs mode='int'")
        hook.start(graph)
    for t in range(steps):
        spikes = {}
        for name, g in graph.groups.items():
            cur = 0
            for s in incoming[name]:
                if s.sources == (INPUT,) and s.name in const:
                    y = const[s.name]
                else:
                    xs = [xin] if s.sources == (INPUT,) else [spikes[u] for u in s.sources]
                    if hook is None:  # the synapse's dtype (float32 where exact)
                        xs = [z.to(torch.float32 if s.name in f32 else torch.float64) for z in xs]
                    if integer and s.kind == "attention" and record is True:
                        y, mid = attention_op(s, xs, torch.as_tensor(np.asarray(s.weight_mant), dtype=torch.float64))
                        y = fx.shift_exp(y, s.weight_exp)
                        result.attention_mid.setdefault(s.name, []).append(mid)
                    elif integer:
                        acc = synapse_op(s, xs, weight(s), M)
                        y = fx.shift_exp(acc, s.weight_exp)
                        if hook is not None:
                            y = hook.current(s, acc, y)
                    else:
                        y = _float_post(s, synapse_op(s, xs, weight(s), M).to(torch.float64))
                    if s.sources == (INPUT,):
                        const[s.name] = y
                cur = cur + y
            if integer:
                a_in = cur.to(torch.int64)
                u0, v0 = state.get(name, (torch.zeros_like(a_in), torch.zeros_like(a_in)))
                sat = result.saturation[name]
                per_channel = (1, -1, 1, 1)
                u, v, s_out, flags = fx.lif_step_torch(
                    u0, v0, a_in, g.du, g.dv, g.vth_mant,
                    torch.as_tensor(g.bias_mant).view(per_channel),
                    torch.as_tensor(g.bias_exp).view(per_channel), with_pre=hook is not None)
                sat["v_clip"] += flags["v_clip"]
                sat["u_wrap"] += flags["u_wrap"]
                state[name] = (u, v)
                sp = s_out.to(spike_dtype)
                if hook is not None:
                    sp = hook.spike(name, g, cur, flags["v_pre"], sp)
            else:
                bias = torch.as_tensor(g.bias, dtype=torch.float64).view(1, -1, 1, 1)
                current = cur + bias
                if track_currents:
                    m = float(current.abs().max())
                    result.currents_absmax[name] = max(result.currents_absmax.get(name, 0.0), m)
                v0 = state.get(name, torch.zeros_like(current))
                h = g.beta * v0 + current
                fired = h > g.threshold
                v = torch.where(fired, 0.0, h)
                sp = fired.to(spike_dtype)
                state[name] = v
            spikes[name] = sp
            result.spike_counts[name] += int(torch.count_nonzero(sp))
            if name in rec:
                result.spikes.setdefault(name, []).append(sp.to(torch.int8))
                if integer:
                    result.u.setdefault(name, []).append(u)
                    result.v.setdefault(name, []).append(v)
                else:
                    result.v.setdefault(name, []).append(v)
        for s in incoming[LOGITS]:
            xs = [spikes[u] for u in s.sources]
            if hook is None:
                xs = [z.to(torch.float32 if s.name in f32 else torch.float64) for z in xs]
            if integer:
                acc = synapse_op(s, xs, weight(s), M)
                y = fx.shift_exp(acc, s.weight_exp) + torch.as_tensor(s.meta["bias_int"], dtype=torch.float64)
                if hook is not None:
                    y = hook.current(s, acc, y)
            else:
                y = _float_post(s, synapse_op(s, xs, weight(s), M).to(torch.float64))
            logits = logits + y
    result.logits = logits if integer else logits / steps
    for d in (result.spikes, result.u, result.v, result.attention_mid):
        for k in list(d):
            d[k] = torch.stack(d[k])
    return result
