"""Quantisation-aware training (QAT) on the exact Loihi grid of the export (issue 14).

The forward pass of a QAT step IS the export's integer twin: the model being trained is
lowered as ``mksgn-export`` lowers it (:func:`export.frontend.from_model` →
:func:`export.pipeline.fold_all` → :func:`export.passes.quantise` with plain 8-bit weights),
and :func:`export.twin.run_graph` runs it in Loihi integer arithmetic
(:mod:`export.fixed_point`): 8-bit weight mantissas with each synapse group's
``weight_exp``, the floor of a negative exponent, quantised bias, ``vth`` and decay, the
24-bit state. Nothing of the grid is written a second time here; this module only adds
straight-through gradients (:class:`StraightThrough`, the ``hook`` of ``run_graph``):

* weights: the forward uses the mantissa ``m = round(W·S/2^e)`` (grid-clipped), the backward
  treats it as ``W·S/2^e`` (straight-through estimator, Bengio et al. 2013, arXiv:1308.3432;
  the fake-quantisation form of Jacob et al. 2018, CVPR, "Quantization and training of neural
  networks for efficient integer-arithmetic-only inference"); ``W`` are the folded float
  weights of the differentiable IR (``from_model(differentiable=True)``: BN with its running
  statistics and the adjacency folded by the same passes), so the gradient reaches the
  model's convolution, BN affine and head parameters;
* the floor of a shifted sum passes the gradient of the unshifted sum;
* neurons: the exact integer spikes in the forward, the float LIF's surrogate in the backward
  (rectangular window of width ``a`` on the exact pre-reset membrane ``v_pre/(2⁶·S)``, reset
  detached, BPTT through ``h[t+1] = β·(1 − s[t])·h[t] + I[t+1]``, as
  :class:`mksgn.neuron.LIF`).

In eval mode the logits are therefore the twin's integers, bit for bit
(``tests/test_qat.py``). The per-group current scales ``S`` are calibrated on real training
clips (the 64 clips ``mksgn-export`` calibrates on, by default) at the start of every
``calib_every``-th epoch and held in between; mantissas and ``weight_exp`` follow the weights
at every step, as the export derives them. BN runs on its running statistics (the folded
form the chip computes), and the head's dropout is not applied: the twin has none.

Own code: lava-dl's SLAYER quantises weights in its forward pass for its own blocks, but
nothing trains an arbitrary graph on Loihi's integer neuron (floors, 24-bit state, strict
threshold) with exact equality to a twin.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .errors import ExportError
from .frontend import from_model
from .grid import compare_grids, grid_record
from .ir import LOGITS, Graph
from .passes import balance_delays, quantise
from .pipeline import fold_all, graph_input
from .twin import run_graph

__all__ = ["QATForward", "StraightThrough", "grid_record", "compare_grids", "numpy_graph", "qat_graphs"]

#: Largest integer every partial sum of a float32 synaptic sum may reach for the sum to be exact.
_F32_EXACT = 2 ** 24


class _Exact(torch.autograd.Function):
    """Forward: ``value`` (exact integers / dyadic numbers, no gradient); backward: the gradient
    of ``grad_path`` (straight-through)."""

    @staticmethod
    def forward(ctx, grad_path, value):
        return value.to(grad_path.dtype, copy=True)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _Spike(torch.autograd.Function):
    """Forward: the twin's spikes; backward: the rectangular surrogate ``1/a·[|h − vth| < a/2]``
    of :class:`mksgn.neuron.LIF` at the exact pre-reset membrane ``h`` (threshold units)."""

    @staticmethod
    def forward(ctx, h, spikes, threshold, width):
        ctx.save_for_backward((h.detach() - threshold).abs() < width / 2)
        ctx.width = width
        return spikes.to(h.dtype)

    @staticmethod
    def backward(ctx, g):
        (window,) = ctx.saved_tensors
        return g * window / ctx.width, None, None, None


def numpy_graph(graph: Graph) -> Graph:
    """A copy of a differentiable IR with every torch tensor detached into a float64 NumPy array
    (the graph :func:`export.passes.quantise` reads)."""
    g = graph.copy()

    def conv(v):
        if isinstance(v, torch.Tensor):
            return v.detach().cpu().double().numpy().copy()
        if isinstance(v, tuple):
            return tuple(conv(t) for t in v)
        return v

    for obj in list(g.groups.values()) + list(g.synapses.values()):
        for k, v in vars(obj).items():
            setattr(obj, k, conv(v))
    return g


def qat_graphs(model: nn.Module, scales: dict, weight_split: Sequence[str] = ()) -> tuple[Graph | None, Graph]:
    """The model lowered as the export lowers it, at fixed scales.

    Returns ``(folded differentiable IR, quantised graph)``. With gradients enabled the first
    holds the folded float weights as torch tensors attached to ``model``'s parameters and the
    integers are derived from its detached copy (bit-equal to the NumPy IR on the shipped
    model); under ``torch.no_grad`` the first is None and the integers come from the export's
    own NumPy IR (:func:`export.frontend.from_model`), so evaluation is the export's twin.
    """
    if torch.is_grad_enabled():
        folded = fold_all(from_model(model, differentiable=True))
        plain = numpy_graph(folded)
    else:
        folded, plain = None, fold_all(from_model(model))
    return folded, balance_delays(quantise(plain, None, weight_split=weight_split, scales=scales))


class StraightThrough:
    """The ``hook`` of :func:`export.twin.run_graph` that gives the integer twin gradients.

    Parameters
    ----------
    folded : Graph
        The differentiable folded IR (float weights as torch tensors).
    q : Graph
        Its quantised graph (the integers the twin runs).
    surrogate_width : float
        Width ``a`` of the rectangular surrogate window (threshold units; model config).

    Spike-driven synapses run in float32 when every partial sum provably stays below 2²⁴
    (``Σ|mantissa| · number of summed sources``; exact, ~2× faster), else the whole graph in
    float64; the host-side input conv and the attention always in float64.
    """

    def __init__(self, folded: Graph, q: Graph, surrogate_width: float):
        self.folded, self.q, self.width = folded, q, float(surrogate_width)
        spike_driven = [s for s in q.synapses.values() if s.kind not in ("input_conv", "attention", "pool")]
        ok = all(float(np.abs(s.weight_mant).sum()) * len(s.sources) < _F32_EXACT for s in spike_driven)
        pool_ok = all(float(np.abs(s.weight_mant).max()) * np.prod(q.groups[s.sources[0]].shape) * len(s.sources)
                      * q.input_shape[3] < _F32_EXACT for s in q.synapses.values() if s.kind == "pool")
        self.dtype = torch.float32 if ok and pool_ok else torch.float64
        self.v = {}

    def start(self, graph: Graph) -> None:
        self.v = {}

    def _scale(self, s) -> float:
        return self.q.meta["readout_scale"] if s.target == LOGITS else self.q.groups[s.target].scale

    def weight(self, s) -> torch.Tensor:
        dtype = torch.float64 if s.kind in ("input_conv", "attention") else self.dtype
        mant = torch.from_numpy(np.asarray(s.weight_mant, dtype=np.float64)).to(dtype)
        if s.kind == "attention":  # the fixed power-of-two scale (paper eq. 10): nothing to train
            return mant
        w = self.folded.synapses[s.name].weight
        if s.kind == "input_conv":  # the host input is x·2^input_frac_bits
            w = w / 2.0 ** self.q.meta["input_frac_bits"]
        return _Exact.apply((w * (self._scale(s) / 2.0 ** s.weight_exp)).to(dtype), mant)

    def current(self, s, acc: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grad = acc * 2.0 ** s.weight_exp
        if s.target == LOGITS:
            grad = grad + self.folded.synapses[s.name].bias.to(grad.dtype) * self.q.meta["readout_scale"]
        return _Exact.apply(grad, y)

    def spike(self, name: str, g, a_in: torch.Tensor, v_pre: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
        bias = self.folded.groups[name].bias.to(a_in.dtype).view(1, -1, 1, 1)
        h = a_in / g.scale + bias  # the input current, threshold units
        if name in self.v:
            h = h + g.beta * self.v[name]
        h = _Exact.apply(h, v_pre.to(h.dtype) / (2.0 ** 6 * g.scale))
        s = _Spike.apply(h, spikes, g.vth_mant / g.scale, self.width)
        self.v[name] = h * (1 - spikes.to(h.dtype))  # the reset is detached
        return s.to(self.dtype)


class QATForward:
    """The forward of a quantisation-aware training run: pass it to :func:`mksgn.train.train`
    (``forward=``; ``mksgn-train --qat`` does).

    Parameters
    ----------
    calib_x : Tensor ``(N, C, T, V, M)``
        Real training clips for calibration (:func:`export.pipeline.calibration_clips`; the
        default 64 with seed 0 are those ``mksgn-export`` calibrates on).
    calib_every : int
        Recalibrate the scales at the start of every ``calib_every``-th epoch (epoch 0 always).
    weight_split : sequence of kinds
        Synapse kinds with a low-mantissa partner (default ``()``: plain 8-bit weights, what QAT
        is for).

    Raises
    ------
    ExportError
        ``calib_every < 1``, no calibration clips, or a model the export cannot lower.
    """

    def __init__(self, calib_x: torch.Tensor, calib_every: int = 1, weight_split: Sequence[str] = ()):
        if calib_every < 1:
            raise ExportError(f"train.qat_calib_every must be >= 1 (got {calib_every})")
        if calib_x is None or len(calib_x) == 0:
            raise ExportError("quantisation-aware training needs calibration clips")
        self.calib_x, self.calib_every, self.weight_split = calib_x, int(calib_every), tuple(weight_split)
        self.scales = None
        self.calibrations = []
        self.grid = None
        self.epoch = None

    def calibrate(self, model: nn.Module, epoch: int | None = None) -> dict:
        """Recalibrate the per-group scales on the calibration clips (the export's rule:
        :func:`export.passes.quantise`); returns the new scales."""
        q = quantise(fold_all(from_model(model)), self.calib_x, weight_split=self.weight_split)
        self.scales = {"input_frac_bits": int(q.meta["input_frac_bits"]),
                       "groups": {n: float(g.scale) for n, g in q.groups.items()}}
        self.grid = grid_record(balance_delays(q))
        self.calibrations.append(self.epoch if epoch is None else epoch)
        return self.scales

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        """Recalibrate at epoch 0 and every ``calib_every``-th epoch (and when resuming without scales)."""
        self.epoch = epoch
        if self.scales is None or epoch % self.calib_every == 0:
            self.calibrate(model, epoch)

    def graphs(self, model: nn.Module) -> tuple[Graph, Graph]:
        if self.scales is None:
            self.calibrate(model)
        try:
            return qat_graphs(model, self.scales, self.weight_split)
        except ExportError:  # the weights outgrew the held scales (weight_exp > 7): the export would
            self.calibrate(model)  # calibrate smaller ones, so recalibrate now (recorded as None)
            return qat_graphs(model, self.scales, self.weight_split)

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` in float units (the twin's integer logits / (readout scale · T_s))
        for clips ``x`` ``(N, C, T, V, M)``, differentiable with respect to ``model``'s parameters.
        Under ``torch.no_grad`` it is exactly the export's twin at the held scales."""
        folded, q = self.graphs(model)
        hook = None if folded is None else StraightThrough(folded, q, model.cfg.surrogate_width)
        logits = run_graph(q, x, mode="int", hook=hook).logits
        self.grid = grid_record(q)
        return logits / (q.meta["readout_scale"] * q.time_steps)

    def metrics(self) -> dict:
        """What a checkpoint keeps: ``{"qat": {grid, calib_every, calib_clips, calibrated_at_epochs,
        weight_split}}`` — ``grid`` (:func:`grid_record`) of the last forward; an epoch appears
        twice when the weights outgrew the held scales within it and forced a recalibration."""
        return {"qat": {"grid": self.grid, "calib_every": self.calib_every, "calib_clips": int(len(self.calib_x)),
                        "calibrated_at_epochs": [e for e in self.calibrations if e is not None],
                        "weight_split": list(self.weight_split)}}

    def state_dict(self) -> dict:
        """Resume state for ``last.pt``: the held scales."""
        return {"qat_scales": self.scales}

    def load_state_dict(self, ckpt: dict) -> None:
        self.scales = ckpt.get("qat_scales")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset, batch_size: int = 32) -> float:
        """Top-1 (%) of the integer twin at the held scales on ``dataset`` (a
        :class:`mksgn.data.SkeletonDataset`, single modality): what the plain 8-bit export
        scores when its calibration gives the same grid."""
        correct = total = 0
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            pred = self(model, graph_input(x, list(dataset.modalities))).argmax(1)
            correct += int((pred == y).sum())
            total += len(y)
        return 100.0 * correct / max(total, 1)
