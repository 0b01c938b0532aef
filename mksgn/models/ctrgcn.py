"""CTR-GCN, the float GCN teacher of the GCN→SGN distillation (paper "Knowledge Distillation
of GCN-to-SGN": "we select a CTR-GCN with a 4-stream structure as the teacher network").

Chen et al., "Channel-wise Topology Refinement Graph Convolution for Skeleton-Based Action
Recognition", ICCV 2021; structure, initialisation and defaults follow the official code
(``Uason-Chen/CTR-GCN``, ``model/ctrgcn.py``): written here again, not copied, so that it
takes its joint layout and adjacency from :mod:`mksgn.graph` and can be scaled down.

One stream (one modality) per model; the four streams (joint, bone, joint motion, bone
motion) are four models whose logits are combined by :func:`mksgn.distill.ensemble_logits`
(eq. 25). A plain float ANN (ReLU), not spiking.

Architecture (per layer a GC-TC unit, :class:`CTRGCNUnit`)::

    x (N, C, T, V, M) ─ data_bn over (M·V·C) ─ fold bodies ─▶ (N·M, C, T, V)
    l1..l10: y = ReLU(MSTCN(CTRGCBlock(x)) + res(x))      channels 64,64,64,64,128,128,128,256,256,256
                                                          (× width), temporal stride 2 at l5 and l8
    GAP over T, V and bodies ─ dropout ─ FC ─▶ logits (N, num_classes)

* :class:`CTRGC` — channel-wise topology refinement: ``A_c = α·ξ(tanh(φ(x̄)_u − ψ(x̄)_v)) + A_k``
  with ``x̄`` the frame mean, one refined adjacency per output channel, then
  ``z[n, c, t, u] = Σ_v A_c[n, c, u, v] · ρ(x)[n, c, t, v]`` (official ``einsum('ncuv,nctv->nctu')``);
  ``A_k`` is a learnable copy of the layout's spatial-partition adjacency (``PA``, official
  ``adaptive=True``), ``α`` a learnable scalar initialised to 0.
* :class:`CTRGCBlock` — sum over the K = 3 partitions, BN (γ initialised to 1e-6), residual
  (1×1 conv + BN when the width changes), ReLU (official ``unit_gcn``).
* :class:`MultiScaleTemporalConv` — four branches of ``C_out/4`` channels: 1×1 conv–BN–ReLU
  then a (5, 1) temporal conv with dilation 1 and 2; 1×1–BN–ReLU–max-pool(3, 1)–BN; 1×1 with
  the stride, BN; concatenated (official ``MultiScale_TemporalConv``, ``kernel_size=5``,
  ``dilations=[1, 2]``, ``residual=False`` inside the unit).

Differences from the official code (all deliberate, all listed here):

* ``width`` multiplies every layer width, rounded to a multiple of 4 (minimum 4), the rule of
  :attr:`mksgn.models.ModelConfig.stages`; ``width = 1`` is the official model.
* The relation width of a CTR-GC (``rel_channels``) is ``max(1, C_in // 8)`` for C_in ∉ {3, 9}
  (official: ``C_in // 8``, which is 0 — an invalid conv — below C_in = 8); identical for
  ``width ≥ 0.125``. The unused ``mid_channels`` is dropped.
* The 3-D input form ``(N, T, V·C)`` the official forward also accepts is not supported.
* Only the adaptive adjacency (``PA``) variant is implemented (the official default).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..graph import get_layout, layout_name

__all__ = ["CTRGCN", "CTRGCNUnit", "CTRGC", "CTRGCBlock", "MultiScaleTemporalConv", "FEATURE_LAYERS",
           "ctrgcn_stages"]

# Official CTR-GCN (and paper Table 7 "GC-TC"): (out_channels, temporal stride) per layer.
_STAGES = ((64, 1), (64, 1), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1), (256, 2), (256, 1), (256, 1))
FEATURE_LAYERS = (5, 8)
"""1-based layers whose outputs feed the FTM (paper: ``T_A·5 ∈ R^{2C×T/2×V}``, ``T_A·8 ∈ R^{4C×T/4×V}``)."""


def ctrgcn_stages(width: float) -> tuple:
    """``((out_channels, stride), …)`` of the 10 layers for a width multiplier.

    Each width is ``max(4, round(c·width/4)·4)``, the rounding of
    :attr:`mksgn.models.ModelConfig.stages` (so a teacher and a student of the same
    ``width`` have matching channel counts). Raises :class:`ConfigError` for ``width ≤ 0``.
    """
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ConfigError(f"CTR-GCN width={width!r} is invalid; expected a number > 0 (1.0 = official widths)")
    return tuple((max(4, int(round(c * width / 4)) * 4), s) for c, s in _STAGES)


def _conv_init(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)


def _bn_init(bn: nn.modules.batchnorm._BatchNorm, scale: float) -> None:
    nn.init.constant_(bn.weight, scale)
    nn.init.constant_(bn.bias, 0)


class TemporalConvBN(nn.Module):
    """Conv over frames, kernel ``(k, 1)``, dilation ``d``, stride ``s``, "same" padding, then BN.

    Shape ``(B, C_in, T, V) → (B, C_out, ⌈T/s⌉, V)`` (official ``TemporalConv`` / ``unit_tcn``).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        pad = (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(c_in, c_out, (kernel_size, 1), padding=(pad, 0), stride=(stride, 1),
                              dilation=(dilation, 1))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class MultiScaleTemporalConv(nn.Module):
    """Multi-scale temporal convolution of CTR-GCN (official ``MultiScale_TemporalConv``).

    Branches, each ``C_out / (len(dilations) + 2)`` channels, concatenated in this order:
    for each dilation ``d``: 1×1 conv → BN → ReLU → ``(kernel_size, 1)`` conv with dilation
    ``d`` and the stride → BN; then 1×1 → BN → ReLU → max-pool (3, 1) with the stride → BN;
    then a strided 1×1 conv → BN. No residual inside (the unit adds its own).

    Shape ``(B, C_in, T, V) → (B, C_out, ⌈T/stride⌉, V)``.

    Raises
    ------
    ConfigError
        If ``C_out`` is not a multiple of the number of branches.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 5, stride: int = 1, dilations=(1, 2)):
        super().__init__()
        n_branches = len(dilations) + 2
        if c_out % n_branches:
            raise ConfigError(f"CTR-GCN temporal conv: {c_out} output channels is not a multiple of its "
                              f"{n_branches} branches; use a width whose layer widths are multiples of 4")
        bc = c_out // n_branches
        branches = [nn.Sequential(nn.Conv2d(c_in, bc, 1), nn.BatchNorm2d(bc), nn.ReLU(inplace=True),
                                  TemporalConvBN(bc, bc, kernel_size, stride, d)) for d in dilations]
        branches.append(nn.Sequential(nn.Conv2d(c_in, bc, 1), nn.BatchNorm2d(bc), nn.ReLU(inplace=True),
                                      nn.MaxPool2d((3, 1), stride=(stride, 1), padding=(1, 0)),
                                      nn.BatchNorm2d(bc)))
        branches.append(nn.Sequential(nn.Conv2d(c_in, bc, 1, stride=(stride, 1)), nn.BatchNorm2d(bc)))
        self.branches = nn.ModuleList(branches)
        for m in self.modules():  # official weights_init
            if isinstance(m, nn.Conv2d):
                _conv_init(m)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.normal_(1.0, 0.02)
                m.bias.data.fill_(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class CTRGC(nn.Module):
    """Channel-wise topology refinement graph convolution (CTR-GC) for one partition ``A_k``.

    ``x̄1 = mean_T φ(x)``, ``x̄2 = mean_T ψ(x)`` (1×1 convs to ``R`` relation channels),
    ``M = ξ(tanh(x̄1[..., u] − x̄2[..., v]))`` (1×1 conv ``R → C_out``, shape ``(N, C_out, V, V)``),
    ``A_c = α·M + A_k``, ``out[n, c, t, u] = Σ_v A_c[n, c, u, v] · ρ(x)[n, c, t, v]`` with ``ρ``
    a 1×1 conv ``C_in → C_out``. Shape ``(B, C_in, T, V) → (B, C_out, T, V)``.
    """

    def __init__(self, c_in: int, c_out: int, rel_reduction: int = 8):
        super().__init__()
        rel = 8 if c_in in (3, 9) else max(1, c_in // rel_reduction)
        self.conv1 = nn.Conv2d(c_in, rel, 1)
        self.conv2 = nn.Conv2d(c_in, rel, 1)
        self.conv3 = nn.Conv2d(c_in, c_out, 1)
        self.conv4 = nn.Conv2d(rel, c_out, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _conv_init(m)

    def forward(self, x: torch.Tensor, A: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        x1, x2, x3 = self.conv1(x).mean(-2), self.conv2(x).mean(-2), self.conv3(x)
        rel = torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))  # (B, R, V, V)
        refined = self.conv4(rel) * alpha + A                 # (B, C_out, V, V)
        return torch.einsum("ncuv,nctv->nctu", refined, x3)


class CTRGCBlock(nn.Module):
    """Spatial part of a unit (official ``unit_gcn``): ``ReLU(BN(Σ_k CTRGC_k(x, PA_k)) + down(x))``.

    ``PA`` is a learnable copy of the layout adjacency ``(K, V, V)``; ``α`` one learnable
    scalar shared by the K partitions (initialised 0); BN γ initialised to 1e-6 so a fresh
    block starts as its residual. ``down`` is the identity when ``C_in == C_out``, else
    1×1 conv + BN. Shape ``(B, C_in, T, V) → (B, C_out, T, V)``.
    """

    def __init__(self, c_in: int, c_out: int, A: torch.Tensor):
        super().__init__()
        self.convs = nn.ModuleList(CTRGC(c_in, c_out) for _ in range(A.shape[0]))
        self.PA = nn.Parameter(A.clone())
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm2d(c_out)
        self.down = None if c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out))
        if self.down is not None:
            _conv_init(self.down[0])
            _bn_init(self.down[1], 1)
        _bn_init(self.bn, 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = None
        for k, conv in enumerate(self.convs):
            z = conv(x, self.PA[k], self.alpha)
            y = z if y is None else y + z
        y = self.bn(y)
        return torch.relu(y + (x if self.down is None else self.down(x)))


class CTRGCNUnit(nn.Module):
    """One GC-TC unit (official ``TCN_GCN_unit``): ``ReLU(MSTCN(CTRGCBlock(x)) + res(x))``.

    ``res``: none in layer 1, identity when shape is kept, else a strided 1×1 conv + BN.
    Shape ``(B, C_in, T, V) → (B, C_out, ⌈T/stride⌉, V)``, values ≥ 0.
    """

    def __init__(self, c_in: int, c_out: int, A: torch.Tensor, stride: int = 1, residual: bool = True):
        super().__init__()
        self.gcn = CTRGCBlock(c_in, c_out, A)
        self.tcn = MultiScaleTemporalConv(c_out, c_out, kernel_size=5, stride=stride, dilations=(1, 2))
        if not residual:
            self.residual = None
        elif c_in == c_out and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = TemporalConvBN(c_in, c_out, 1, stride)
            _conv_init(self.residual.conv)
            _bn_init(self.residual.bn, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tcn(self.gcn(x))
        if self.residual is not None:
            y = y + self.residual(x)
        return torch.relu(y)


class CTRGCN(nn.Module):
    """Single-stream CTR-GCN teacher (10 GC-TC units, strides at layers 5 and 8).

    Parameters
    ----------
    layout : {"ucla20", "ntu25"}
        Joint layout from :func:`mksgn.graph.get_layout`; fixes V and M and the adjacency.
    num_classes : int
        Action classes J.
    in_channels : int
        C of the input clip (3 coordinates, metres).
    width : float
        Channel multiplier (1.0 = official 64/128/256); see :func:`ctrgcn_stages`.
    dropout : float
        Dropout before the FC (official default 0).

    Forward
    -------
    ``forward(x, return_features=False)`` with ``x`` float ``(N, C, T, V, M)`` returns logits
    ``(N, num_classes)``; with ``return_features=True`` it returns
    ``(logits, (f5, f8))``: the outputs of layers 5 and 8 (:data:`FEATURE_LAYERS`), bodies
    folded into the batch as in the student (row ``n·M + m``):
    ``f5`` ``(N·M, C5, ⌈T/2⌉, V)`` and ``f8`` ``(N·M, C8, ⌈⌈T/2⌉/2⌉, V)``, with
    ``C5, C8 = 128·width, 256·width`` (rounded, see :func:`ctrgcn_stages`).

    Raises
    ------
    ConfigError
        Bad ``layout``/``width``/``num_classes``/``dropout``; at forward, an input that does
        not have 5 axes or whose C, V, M differ from ``in_channels`` and the layout.
    """

    #: A float ANN: every operation is a MAC on real values (``mksgn.analysis``).
    real_valued_input = True

    def __init__(self, layout: str, num_classes: int, in_channels: int = 3, width: float = 1.0,
                 dropout: float = 0.0):
        super().__init__()
        lay = get_layout(layout)
        for name, value, ok in (("num_classes", num_classes, isinstance(num_classes, int) and num_classes >= 1),
                                ("in_channels", in_channels, isinstance(in_channels, int) and in_channels >= 1),
                                ("dropout", dropout, isinstance(dropout, (int, float)) and 0 <= dropout < 1)):
            if not ok or isinstance(value, bool):
                raise ConfigError(f"CTR-GCN {name}={value!r} is invalid; expected "
                                  f"{'a number in [0, 1)' if name == 'dropout' else 'an integer >= 1'}")
        self.layout, self.num_classes, self.in_channels = layout, num_classes, in_channels
        self.num_joints, self.max_bodies = lay.num_joints, lay.max_bodies
        self.stages = ctrgcn_stages(width)
        A = torch.from_numpy(lay.adjacency())
        self.data_bn = nn.BatchNorm1d(lay.max_bodies * in_channels * lay.num_joints)
        _bn_init(self.data_bn, 1)
        layers, c_in = nn.ModuleList(), in_channels
        for i, (c_out, stride) in enumerate(self.stages):
            layers.append(CTRGCNUnit(c_in, c_out, A, stride, residual=i > 0))
            c_in = c_out
        self.layers = layers
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(c_in, num_classes)
        nn.init.normal_(self.fc.weight, 0, math.sqrt(2.0 / num_classes))

    @property
    def feature_channels(self) -> tuple:
        """Channels of the features returned for :data:`FEATURE_LAYERS` (layers 5 and 8)."""
        return tuple(self.stages[i - 1][0] for i in FEATURE_LAYERS)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[3] != self.num_joints \
                or x.shape[4] != self.max_bodies:
            raise ConfigError(
                f"CTR-GCN input has shape {tuple(x.shape)}; expected (N, {self.in_channels}, T, "
                f"{self.num_joints}, {self.max_bodies}) for layout {layout_name(self.layout)!r}")
        n, c, t, v, m = x.shape
        x = self.data_bn(x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t))
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        feats = []
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if i in FEATURE_LAYERS:
                feats.append(x)
        pooled = x.view(n, m, x.shape[1], -1).mean(3).mean(1)
        logits = self.fc(self.drop(pooled))
        return (logits, tuple(feats)) if return_features else logits
