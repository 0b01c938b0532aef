"""Firing-rate, operation and energy analysis of a spiking model (paper eq. 33–37, Table 6).

The model is instrumented, not described: forward hooks go on every
:class:`~mksgn.neuron.LIF` (spike counts) and on every *synaptic op* — the outermost module
that is an ``nn.Conv2d``, an ``nn.Linear`` or defines ``synaptic_ops(inputs, output)``
(graph conv, attention, per-channel affine, global pooling; see :mod:`mksgn.models.mksgn`).

Definitions (per clip, averaged over all clips seen):

* firing rate of a neuron group = spikes / (neurons · T_s) (Table 6);
* FLOPs(op) = MACs of the op for one time step (the ANN FLOPs). Graph convs count only
  non-zero adjacency entries; attention counts ``QKᵀ`` and ``(QKᵀ)V`` as two ops;
* fr_in(op) = mean value of the op's input tensor = spikes per input position and step
  (equals the input neurons' firing rate; a sum of spike trains counts every spike);
* SOPs(op) = fr_in · T_s · FLOPs (eq. 33), only for ops with spike input;
* energy = E_MAC · Σ FLOPs(real-input ops) + E_AC · Σ SOPs (eq. 34–37), in mJ per clip.
  The real-input op is the spiking-coding conv, evaluated once per clip (direct coding
  repeats the same current at every step), so its FLOPs are per clip.

Four-modality MK-SGN (:class:`~mksgn.models.smf.SMFMKSGN`, batches are dicts modality →
clip): the four encoders' convs (``sc.encoders.<modality>.conv``) are all real-input ops
(host-side MACs, E_MAC each) and their LIFs are listed as neuron groups. Layer 1 reads the
fused tensor ``Σ_m w_m·s_m`` (eq. 24), which is not a spike train; deployment folds each
``w_m`` into its own copy of layer 1's synapses, so every spike of every encoder with
``w_m ≠ 0`` is one synaptic event. For the ops that read the fused tensor, ``fr_in`` is
therefore ``Σ_{m: w_m ≠ 0} spikes_m / positions`` (events per input position and step, up
to 4), not the mean of the fused values.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn

from .energy import DEFAULT_45NM, MJ_PER_PJ, EnergyModel, synaptic_ops
from .errors import MksgnError
from .models.smf import SMF
from .neuron import LIF

__all__ = ["NeuronStat", "OpStat", "AnalysisReport", "analyse"]



@dataclass
class NeuronStat:
    """One LIF group: ``name`` (module path), ``neurons`` per clip, ``firing_rate``
    (spikes per neuron per time step)."""

    name: str
    neurons: int
    firing_rate: float


@dataclass
class OpStat:
    """One synaptic op: ``flops`` (MACs per clip per step), ``fr_in`` (input spike rate),
    ``sops`` (per clip, eq. 33; 0 for the real-input op), ``real_input``, ``energy_mj``."""

    name: str
    kind: str
    flops: float
    fr_in: float | None
    sops: float
    real_input: bool
    energy_mj: float


@dataclass
class AnalysisReport:
    """Result of :func:`analyse`; all totals are per clip.

    Attributes
    ----------
    time_steps : int
        T_s.
    num_clips : int
        Clips analysed.
    params : int
        Trainable + frozen parameter count.
    neurons, ops : list
        :class:`NeuronStat` and :class:`OpStat` in module order.
    mac_flops : float
        FLOPs of the real-input (first) layer, charged E_MAC.
    total_flops, total_sops : float
        Σ FLOPs of all ops (the ANN equivalent, one step) and Σ SOPs.
    energy_mj : float
        E_MAC·mac_flops + E_AC·total_sops, mJ per clip (eq. 34).
    energy_model : EnergyModel
    """

    time_steps: int
    num_clips: int
    params: int
    neurons: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    mac_flops: float = 0.0
    total_flops: float = 0.0
    total_sops: float = 0.0
    energy_mj: float = 0.0
    energy_model: EnergyModel = DEFAULT_45NM

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    def format_table(self) -> str:
        """Aligned text tables: neurons (Table 6 style), then ops, then totals."""
        w = max([len(n.name) for n in self.neurons] + [len(o.name) for o in self.ops] + [10])
        lines = [f"{'neuron group':<{w}}  {'neurons':>9}  {'fire rate':>9}"]
        lines += [f"{n.name:<{w}}  {n.neurons:>9d}  {n.firing_rate:>9.4f}" for n in self.neurons]
        lines += ["", f"{'synaptic op':<{w}}  {'kind':<14} {'FLOPs':>11}  {'fr_in':>7}  {'SOPs':>11}  {'E (mJ)':>9}"]
        lines += [f"{o.name:<{w}}  {o.kind:<14} {o.flops:>11.4g}  "
                  f"{'real' if o.real_input else format(o.fr_in, '.4f'):>7}  {o.sops:>11.4g}  "
                  f"{o.energy_mj:>9.3g}" + ("  (MAC)" if o.real_input else "") for o in self.ops]
        lines += ["", f"clips {self.num_clips}, T_s {self.time_steps}, params {self.params}",
                  f"FLOPs {self.total_flops:.4g} (first layer {self.mac_flops:.4g}), SOPs {self.total_sops:.4g}",
                  f"energy {self.energy_mj:.4g} mJ/clip ({self.energy_model.name}: "
                  f"E_MAC {self.energy_model.e_mac_pj} pJ, E_AC {self.energy_model.e_ac_pj} pJ)"]
        return "\n".join(lines)


def _module_ops(module: nn.Module, inputs, output) -> list:
    """``[(suffix, MACs of the call, input tensor)]`` for a synaptic op."""
    if hasattr(module, "synaptic_ops"):
        return module.synaptic_ops(inputs, output)
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return [("", output.numel() * (module.in_channels // module.groups) * kh * kw, inputs[0])]
    return [("", output.numel() * module.in_features, inputs[0])]  # nn.Linear


def _is_op(module: nn.Module) -> bool:
    return hasattr(module, "synaptic_ops") or isinstance(module, (nn.Conv2d, nn.Linear))


def _clip_input(batch):
    """``(model input, number of clips)``: a clip tensor ``(N, C, T, V, M)`` or a dict
    modality → such tensors (the four-modality MK-SGN), possibly the first item of a tuple."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    first = next(iter(batch.values()), None) if isinstance(batch, dict) else batch
    if not isinstance(first, torch.Tensor) or first.dim() != 5:
        raise MksgnError("analyse: each batch must be a clip tensor (N, C, T, V, M), a dict modality → "
                         "such tensors (four-modality MK-SGN), or a (clips, labels, ...) tuple whose "
                         "first item is one")
    return batch, first.shape[0]


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` is ``b`` or a full view of it (same storage, offset, shape and strides)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


@torch.no_grad()
def analyse(model: nn.Module, batches: Iterable, time_steps: int,
            energy: EnergyModel = DEFAULT_45NM, max_batches: int | None = None) -> AnalysisReport:
    """Run ``model`` (in eval mode) on real clips and report firing rates, FLOPs, SOPs, energy.

    Parameters
    ----------
    model : nn.Module
        A model from :func:`mksgn.models.build_model` (any module whose neurons are
        :class:`~mksgn.neuron.LIF` and whose batch axis is ``T_s·N·M`` works).
    batches : iterable
        Float clips ``(N, C, T, V, M)`` (for a four-modality MK-SGN: dicts modality → clips),
        or tuples whose first item is one.
    time_steps : int
        T_s of the model (``cfg.time_steps``).
    energy : EnergyModel
        Energy per MAC / AC (default: paper's 45 nm constants).
    max_batches : int, optional
        Stop after this many batches.

    Returns
    -------
    AnalysisReport

    Raises
    ------
    MksgnError
        If ``batches`` is empty or a batch is not a 5-axis clip tensor.
    """
    modules = dict(model.named_modules())
    neuron_acc, op_acc, op_meta, handles, op_roots = {}, {}, {}, [], []

    def real(name):  # the op, or a module containing it (the whole model for an ANN), is real-valued
        parts = name.split(".")
        return getattr(model, "real_valued_input", False) or any(
            getattr(modules[".".join(parts[:i])], "real_valued_input", False) for i in range(1, len(parts) + 1))

    def neuron_hook(name):
        def hook(mod, inputs, output):
            acc = neuron_acc.setdefault(name, [0.0, 0])
            acc[0] += float(output.sum())
            acc[1] += output.numel()
        return hook

    fused = []  # [(fused tensor, its event count tensor)] of the current batch (SMF models)
    encoded = {}

    def events_of(x):
        for f, ev in fused:
            if _same_tensor(x, f):
                return ev
        return x

    def op_hook(name):
        def hook(mod, inputs, output):
            for suffix, macs, x in _module_ops(mod, inputs, output):
                acc = op_acc.setdefault(name + suffix, [0.0, 0.0, 0])
                acc[0] += macs
                acc[1] += float(events_of(x).sum(dtype=torch.float64))
                acc[2] += x.numel()
                op_meta[name + suffix] = type(mod).__name__
        return hook

    def encoder_hook(key):
        def hook(mod, inputs, output):
            encoded[key] = output
        return hook

    def fusion_hook(name):
        def hook(mod, inputs, output):
            w = mod.fusion_weight.tolist()
            ev = sum(encoded.pop((name, m)) for i, m in enumerate(mod.encoders) if w[i] != 0)
            fused.append((output, ev if isinstance(ev, torch.Tensor) else torch.zeros_like(output)))
        return hook

    for name, mod in modules.items():
        if isinstance(mod, SMF):
            handles.append(mod.register_forward_hook(fusion_hook(name)))
            for m, enc in mod.encoders.items():
                handles.append(enc.register_forward_hook(encoder_hook((name, m))))

    for name, mod in modules.items():
        if not name or any(name.startswith(r + ".") for r in op_roots):
            continue
        if isinstance(mod, LIF):
            handles.append(mod.register_forward_hook(neuron_hook(name)))
        elif _is_op(mod):
            op_roots.append(name)
            handles.append(mod.register_forward_hook(op_hook(name)))

    was_training, clips = model.training, 0
    model.eval()
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, n = _clip_input(batch)
            model(x)
            clips += n
            fused.clear()
            encoded.clear()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if clips == 0:
        raise MksgnError("analyse: no clips were given (the batch iterable was empty)")

    report = AnalysisReport(time_steps=time_steps, num_clips=clips, energy_model=energy,
                            params=sum(p.numel() for p in model.parameters()))
    order = {name: i for i, name in enumerate(modules)}

    def position(name):  # module order; attention sub-ops follow their module
        return order.get(name, order.get(name.rsplit(".", 1)[0], 0)), name

    neuron_acc = dict(sorted(neuron_acc.items(), key=lambda kv: position(kv[0])))
    op_acc = dict(sorted(op_acc.items(), key=lambda kv: position(kv[0])))
    for name, (spikes, count) in neuron_acc.items():
        report.neurons.append(NeuronStat(name, count // (time_steps * clips), spikes / count))
    for name, (macs, in_sum, in_count) in op_acc.items():
        is_real = real(name.rsplit(".", 1)[0] if name not in modules else name)
        flops = macs / (clips * (1 if is_real else time_steps))
        fr_in = None if is_real else in_sum / in_count  # real-valued input: no spike rate
        sops = 0.0 if is_real else synaptic_ops(fr_in, time_steps, flops)
        e_pj = energy.mac_pj(flops) if is_real else energy.ac_pj(sops)
        report.ops.append(OpStat(name, op_meta[name], flops, fr_in, sops, is_real, e_pj * MJ_PER_PJ))
    report.mac_flops = sum(o.flops for o in report.ops if o.real_input)
    report.total_flops = sum(o.flops for o in report.ops)
    report.total_sops = sum(o.sops for o in report.ops)
    report.energy_mj = energy.energy_pj(report.mac_flops, report.total_sops) * MJ_PER_PJ
    return report
