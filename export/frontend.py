"""Frontend: a trained float model (MK-SGN or Base-SGN*) → the export IR (:mod:`export.ir`).

The mapping follows the model's equations (paper eq. 3–14): every spiking neuron becomes a
:class:`~export.ir.NeuronGroup`, every linear op in front of it a :class:`~export.ir.Synapse`
from the spike *sum* it reads. Channel-split ops of the float model (the graph conv whose
``2·C`` outputs feed ``SN_2`` and the attention value ``SN_V``; the ``qk`` conv feeding
``SN_Q`` and ``SN_K``) become one synapse per target. BN stays attached (``bn``) until
:func:`export.passes.fold_bn`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mksgn.errors import MksgnError
from mksgn.evaluate import load_model
from mksgn.graph import get_layout
from mksgn.models.base_sgn import BaseSGN, BaseSGNLayer
from mksgn.models.mksgn import MKSGN, ChannelAffine, MKSGNLayer
from mksgn.models.smf import SMFMKSGN
from mksgn.preprocess import MODALITIES

from .errors import ExportError
from .ir import INPUT, LOGITS, Graph, NeuronGroup, Synapse

__all__ = ["from_model", "from_checkpoint"]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().copy()


def _torch64(t: torch.Tensor) -> torch.Tensor:
    """A float64 view of a parameter or buffer that keeps its autograd graph (differentiable IR)."""
    return t.double()


class _Builder:
    def __init__(self, model, differentiable: bool = False):
        self.arr = _torch64 if differentiable else _np
        self.differentiable = differentiable
        cfg = model.cfg
        self.cfg = cfg
        layout = get_layout(cfg.layout)
        self.V, self.M = layout.num_joints, layout.max_bodies
        self.modalities = list(MODALITIES) if isinstance(model, SMFMKSGN) else None
        c_in = cfg.in_channels * (len(self.modalities) if self.modalities else 1)
        self.graph = Graph({}, {}, (c_in, layout.window, self.V, self.M), cfg.time_steps,
                           {"arch": cfg.arch, "layout": cfg.layout, "model_config": cfg.to_dict()})

    def bn(self, bn: nn.Module, rows: slice = slice(None)) -> tuple:
        return (self.arr(bn.running_mean)[rows], self.arr(bn.running_var)[rows], self.arr(bn.weight)[rows],
                self.arr(bn.bias)[rows], float(bn.eps))

    def const(self, a) -> np.ndarray | torch.Tensor:
        """A float64 constant (fixed weights, zero biases) in the graph's array type."""
        a = np.asarray(a, dtype=np.float64)
        return torch.from_numpy(a) if self.differentiable else a

    def group(self, name, shape, layer, bias=None) -> str:
        c = shape[0]
        self.graph.groups[name] = NeuronGroup(name, tuple(int(s) for s in shape), self.cfg.beta,
                                              self.cfg.threshold, self.const(np.zeros(c)) if bias is None else bias,
                                              layer=layer)
        return name

    def synapse(self, name, kind, sources, target, weight, layer, **kw) -> Synapse:
        weight = weight if isinstance(weight, torch.Tensor) else self.const(weight)
        s = Synapse(name, kind, tuple(sources), target, weight, layer=layer, **kw)
        self.graph.synapses[name] = s
        return s

    def residual(self, name, module, sources, target, layer, stride=1):
        """ChannelAffine → ``affine``; 1×1 conv + BN → ``conv``."""
        if isinstance(module, ChannelAffine):
            self.synapse(name, "affine", sources, target, self.arr(module.weight), layer,
                         stride=module.stride, bias=self.arr(module.bias))
        else:
            conv, bn = module[0], module[1]
            self.synapse(name, "conv", sources, target, self.arr(conv.weight), layer,
                         stride=conv.stride[0], bn=self.bn(bn))

    def graph_conv(self, name, gcn, sources, target, layer, rows, bn):
        w = self.arr(gcn.conv.weight)[rows, :, 0, 0]
        self.synapse(name, "graph", sources, target, w, layer, adjacency=_np(gcn.A),
                     bn=self.bn(bn, rows))


def _tconv_out(t: int, k: int, stride: int) -> int:
    pad = (k - 1) // 2
    return (t + 2 * pad - k) // stride + 1


def from_model(model: nn.Module, differentiable: bool = False) -> Graph:
    """Translate a float MK-SGN / Base-SGN* into the IR (eval-mode semantics, BN unfolded).

    Parameters
    ----------
    model : MKSGN or BaseSGN
    differentiable : bool
        Keep every weight, bias and BN parameter as a float64 torch tensor still attached to
        the model's parameters (constants become tensors too), so the float passes
        (:func:`export.passes.fold_bn`, :func:`~export.passes.fold_graph`) compute the folded
        weights with autograd: quantisation-aware training (:mod:`export.qat`) takes their
        gradient. Default: detached NumPy float64 copies. Not for the SMF model.

    Returns
    -------
    Graph
        Validated; group and synapse names are the model's module names (``sc.lif``,
        ``layers.0.sa_sgc.lif1``, ``head.fc``, ...).

    Raises
    ------
    ExportError
        A model that is not MK-SGN / Base-SGN*; ``differentiable`` for the SMF model.
    """
    if not isinstance(model, (MKSGN, BaseSGN, SMFMKSGN)):
        raise ExportError(f"cannot export a {type(model).__name__}: only MK-SGN (one modality or "
                          "SMF four-modality) and Base-SGN* checkpoints are supported")
    if differentiable and isinstance(model, SMFMKSGN):
        raise ExportError("a differentiable IR (quantisation-aware training) is not available for the "
                          "four-modality SMF MK-SGN; train a single-modality MK-SGN or Base-SGN*")
    b = _Builder(model, differentiable)
    g = b.graph
    T = g.input_shape[1]
    V = b.V
    if isinstance(model, SMFMKSGN):
        c = _smf_coding(b, model, T)
    else:
        sc = model.sc
        c = sc.conv.out_channels
        b.group("sc.lif", (c, T, V), "sc")
        b.synapse("sc.conv", "input_conv", (INPUT,), "sc.lif", b.arr(sc.conv.weight), "sc",
                  padding=sc.conv.padding[0], bn=b.bn(sc.bn))
    x = ("sc.lif",)
    first = set(g.synapses)
    for i, layer in enumerate(model.layers):
        p = f"layers.{i}"
        if isinstance(layer, MKSGNLayer):
            x, c, T = _mksgn_layer(b, p, layer, x, c, T)
        elif isinstance(layer, BaseSGNLayer):
            x, c, T = _base_layer(b, p, layer, x, c, T)
        else:
            raise ExportError(f"{p}: unsupported layer type {type(layer).__name__}")
    head = model.head
    b.group("head.lif", (c, 1, 1), "head")
    b.synapse("head.pool", "pool", x, "head.lif", b.const(np.full(c, 1.0 / (T * V * b.M))), "head",
              bn=b.bn(head.bn))
    b.synapse("head.fc", "readout", ("head.lif",), LOGITS, b.arr(head.fc.weight), "head",
              bias=b.arr(head.fc.bias))
    if b.modalities:
        # eq. 24: the synapses that read the fused spikes see Σ_m w_m·s_m; export.passes.fold_fusion
        # turns them into synapses over the concatenated encoder group
        for s in g.synapses.values():
            if s.name not in first and "sc.lif" in s.sources:
                s.meta["fused_input"] = True
    return g.validate()


def _smf_coding(b: _Builder, model: SMFMKSGN, T: int) -> int:
    """The SMF coding stage (eq. 3–4 per modality, eq. 24) as ONE host-side input conv over the
    modalities concatenated on the channel axis (``(4·C, T, V, M)``, :data:`MODALITIES` order)
    into ONE neuron group ``sc.lif`` of ``4·C'`` channels: the conv weight is block-diagonal
    (encoder m reads input channels ``m·C..(m+1)·C`` and writes ``m·C'..(m+1)·C'``; the zero
    blocks are absent synapses) and the encoders' BNs are stacked. The four encoders' LIFs
    share β and vth, so one group is exact. The frozen fusion weights go to ``meta`` for
    :func:`export.passes.fold_fusion`. Returns ``C'`` (the fused width layer 1 reads)."""
    encoders = [model.sc.encoders[m] for m in b.modalities]
    c_in = b.cfg.in_channels
    c = encoders[0].conv.out_channels
    kt = encoders[0].conv.kernel_size[0]
    n = len(encoders)
    w = np.zeros((n * c, n * c_in, kt, 1))
    bns = []
    for i, enc in enumerate(encoders):
        w[i * c:(i + 1) * c, i * c_in:(i + 1) * c_in] = _np(enc.conv.weight)
        bns.append(b.bn(enc.bn))
    bn = tuple(np.concatenate([z[j] for z in bns]) for j in range(4)) + (bns[0][4],)
    b.group("sc.lif", (n * c, T, b.V), "sc")
    b.synapse("sc.conv", "input_conv", (INPUT,), "sc.lif", w, "sc", padding=encoders[0].conv.padding[0], bn=bn)
    b.graph.meta["fusion_weights"] = [float(v) for v in model.fusion_weight]
    return c


def _mksgn_layer(b: _Builder, p: str, layer: MKSGNLayer, x, c_in, T):
    sa, sg, stc = layer.sa_sgc, layer.sg_sa, layer.stc
    c = sa.gcn.conv.out_channels // 2
    V = b.V
    L = p
    lif1 = b.group(f"{p}.sa_sgc.lif1", (c, T, V), L)
    b.residual(f"{p}.sa_sgc.res", sa.res, x, lif1, L)
    lif2 = b.group(f"{p}.sa_sgc.lif2", (c, T, V), L)
    b.graph_conv(f"{p}.sa_sgc.gcn", sa.gcn, x, lif2, L, slice(0, c), sa.bn)
    lifv = b.group(f"{p}.sg_sa.lifv", (c, T, V), L)
    b.graph_conv(f"{p}.sg_sa.v", sa.gcn, x, lifv, L, slice(c, 2 * c), sa.bn)
    h0 = (lif1, lif2)
    lifq = b.group(f"{p}.sg_sa.lifq", (c, T, V), L)
    lifk = b.group(f"{p}.sg_sa.lifk", (c, T, V), L)
    w = b.arr(sg.qk.weight)
    b.synapse(f"{p}.sg_sa.q", "conv", h0, lifq, w[:c], L, bn=b.bn(sg.qk_bn, slice(0, c)))
    b.synapse(f"{p}.sg_sa.k", "conv", h0, lifk, w[c:], L, bn=b.bn(sg.qk_bn, slice(c, 2 * c)))
    lifkv = b.group(f"{p}.sg_sa.lifkv", (c, T, V), L)
    b.synapse(f"{p}.sg_sa.attn", "attention", (lifq, lifk, lifv), lifkv, np.array(sg.attn.scale), L)
    h_sa = (lif1, lif2, lifkv)
    stride = stc.tconv.stride[0]
    k = stc.tconv.kernel_size[0]
    T2 = _tconv_out(T, k, stride)
    res_lif = b.group(f"{p}.stc.res_lif", (c, T2, V), L)
    b.residual(f"{p}.stc.res", stc.res, h_sa, res_lif, L)
    lif = b.group(f"{p}.stc.lif", (c, T2, V), L)
    b.synapse(f"{p}.stc.tconv", "conv", h_sa, lif, b.arr(stc.tconv.weight), L, stride=stride,
              padding=stc.tconv.padding[0], bn=b.bn(stc.bn))
    b.synapse(f"{p}.stc.res_sum", "affine", (res_lif,), lif, np.ones(c), L)
    return (lif,), c, T2


def _base_layer(b: _Builder, p: str, layer: BaseSGNLayer, x, c_in, T):
    c = layer.gcn.conv.out_channels
    V = b.V
    gl = b.group(f"{p}.gcn_lif", (c, T, V), p)
    b.graph_conv(f"{p}.gcn", layer.gcn, x, gl, p, slice(0, c), layer.gcn_bn)
    stride = layer.tconv.stride[0]
    T2 = _tconv_out(T, layer.tconv.kernel_size[0], stride)
    lif = b.group(f"{p}.lif", (c, T2, V), p)
    b.synapse(f"{p}.tconv", "conv", (gl,), lif, b.arr(layer.tconv.weight), p, stride=stride,
              padding=layer.tconv.padding[0], bn=b.bn(layer.tconv_bn))
    if layer.res is not None:
        b.residual(f"{p}.res", layer.res, x, lif, p)
    return (lif,), c, T2


def from_checkpoint(path: str | Path) -> tuple[Graph, dict]:
    """Load a checkpoint (``weights_only=True``) and translate it; returns ``(graph, ckpt)``.

    Raises
    ------
    ExportError
        Missing/corrupt/foreign checkpoint, non-finite weights, unsupported model.
    """
    try:
        model, ckpt = load_model(path)
    except MksgnError as exc:
        raise ExportError(str(exc)) from None
    if ckpt["config"]["model"].get("arch") == "ctrgcn":
        raise ExportError(f"{path}: a CTR-GCN checkpoint is the float (ReLU) distillation teacher, not a "
                          "spiking network; export the MK-SGN or Base-SGN* student instead")
    bad = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ExportError(f"{path}: non-finite (NaN/Inf) values in {', '.join(bad[:3])}; "
                          "the checkpoint cannot be quantised — retrain or pick another epoch")
    g = from_model(model)
    g.meta.update(class_names=list(ckpt["class_names"]), data=dict(ckpt["data"]),
                  checkpoint_metrics={k: v for k, v in ckpt.get("metrics", {}).items() if k != "history"})
    return g, ckpt
