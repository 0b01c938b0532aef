"""MK-SGN (paper eq. 3–14, Table 7) and the building blocks shared with Base-SGN*.

Internal layout: spike tensors are ``(T_s·B, C, T, V)`` with the spike time steps ``T_s``
folded into the batch (``B = N·M``: bodies folded into the batch, as CTR-GCN) so that every
conv / BN runs once over all steps; a :class:`~mksgn.neuron.LIF` unfolds ``(T_s, B, …)``
and loops over ``T_s`` only.

Exportability (a later stage folds this into Loihi integers): every neuron's input is an
affine function (conv, graph conv, linear, BN, sums) of spike tensors, except the spiking
coding layer (real-valued clip); the only product of two spike tensors is the SG-SA
attention; BN only follows a linear op; no max-pooling, softmax or layer norm.

Every synaptic module exposes ``synaptic_ops(inputs, output) -> list[(suffix, MACs, input)]``
used by :mod:`mksgn.analysis`: MACs of the whole call and the tensor whose mean is the input
spike rate of that op.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..graph import get_layout, layout_name
from ..neuron import LIF
from .config import ModelConfig

__all__ = ["MKSGN", "GraphConv", "ChannelAffine", "SpikeAttention", "SpikingCoding", "Head",
           "fold_sn", "conv_bn", "mksgn_layers"]


def fold_sn(lif: LIF, x: torch.Tensor, time_steps: int) -> torch.Tensor:
    """Apply ``lif`` to a folded current ``(T_s·B, …)``; returns spikes ``(T_s·B, …)``."""
    return lif(x.view(time_steps, -1, *x.shape[1:])).flatten(0, 1)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """1×1 conv (temporal ``stride``) + BN: the synapse of a residual path that changes shape."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(c_out))


def _lif(cfg: ModelConfig) -> LIF:
    return LIF(cfg.beta, cfg.threshold, cfg.surrogate_width)


class ChannelAffine(nn.Module):
    """Per-channel affine ``y = w_c · x[:, :, ::stride] + b_c`` (identity at init).

    The one-to-one synapse in front of a residual neuron (``SN(P)`` of eq. 7, ``SN(H_SA)``
    of eq. 11/13) when the shape does not change; folds to a diagonal weight + bias.
    Shape ``(B, C, T, V) → (B, C, ⌈T/stride⌉, V)``.
    """

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride]
        return torch.addcmul(self.bias.view(-1, 1, 1), x, self.weight.view(-1, 1, 1))

    def synaptic_ops(self, inputs, output):
        x = inputs[0][:, :, :: self.stride]
        return [("", output.numel(), x)]


class GraphConv(nn.Module):
    """Spatial graph convolution (eq. 5–7, ST-GCN spatial partition).

    ``out[n, c', t, w] = Σ_k Σ_c W_k[c', c] · Σ_v x[n, c, t, v] · A_k[v, w]``
    with ``A`` from :meth:`mksgn.graph.Layout.adjacency` (K = 3 partitions, column-normalised;
    the paper's eq. 5 symmetric normalisation is replaced by ST-GCN's partitioned one).
    Aggregation first, then a 1×1 conv over ``K·C_in`` channels: ``W_k[c', c] =
    conv.weight[c', k·C_in + c, 0, 0]``. Shape ``(B, C_in, T, V) → (B, C_out, T, V)``.

    MACs counted: ``C_in·T·nnz(A_k)`` per partition (only non-zero adjacency entries: zero
    entries are absent synapses) plus the 1×1 conv ``K·C_in·C_out·T·V``.
    """

    def __init__(self, c_in: int, c_out: int, adjacency: torch.Tensor):
        super().__init__()
        self.num_subsets, self.num_joints = adjacency.shape[0], adjacency.shape[1]
        self.conv = nn.Conv2d(c_in * self.num_subsets, c_out, 1, bias=False)
        self.register_buffer("A", adjacency.clone(), persistent=False)
        # A_cat[v, k·V + w] = A[k, v, w]: one GEMM aggregates all partitions
        self.register_buffer("A_cat", adjacency.permute(1, 0, 2).reshape(self.num_joints, -1).contiguous(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, v = x.shape
        k = self.num_subsets
        z = (x.reshape(-1, v) @ self.A_cat).view(b, c, t, k, v).permute(0, 3, 1, 2, 4).reshape(b, k * c, t * v)
        # the 1x1 conv as a batched GEMM (faster than mkldnn's conv backward on CPU)
        w = self.conv.weight.view(self.conv.out_channels, k * c)
        return torch.matmul(w, z).view(b, -1, t, v)

    def synaptic_ops(self, inputs, output):
        x = inputs[0]
        b, c_in, t, v = x.shape
        nnz = int((self.A != 0).sum())
        macs = b * t * (c_in * nnz + self.conv.in_channels * self.conv.out_channels * v)
        return [("", macs, x)]


class SpikeAttention(nn.Module):
    """SG-SA attention product (eq. 10): ``s · (Q Kᵀ) V`` over joints per (sample, frame).

    Inputs ``q, k, v`` spikes ``(B, C, T, V)``; output ``(B, C, T, V)`` real-valued
    (non-negative multiples of ``s``). Single head. MACs: ``QKᵀ`` and ``(QKᵀ)V`` are
    ``B·T·V·V·C`` each; their input rates are those of ``Q`` and ``V`` respectively.
    The only product of two spike tensors in the model (needs a custom Lava process).
    """

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qt, kt, vt = (z.permute(0, 2, 3, 1) for z in (q, k, v))  # (B, T, V, C)
        attn = qt @ kt.transpose(-1, -2)  # (B, T, V, V)
        return (attn @ vt).mul_(self.scale).permute(0, 3, 1, 2)

    def synaptic_ops(self, inputs, output):
        q, _, v = inputs
        b, c, t, nv = q.shape
        macs = b * t * nv * nv * c
        return [(".qk", macs, q), (".av", macs, v)]


class SpikingCoding(nn.Module):
    """Spiking coding, eq. 3–4: ``P = SN(BN(Conv2d(PCM(X))))``.

    PCM = direct coding: the real-valued clip is repeated over the ``T_s`` steps, so the
    conv/BN current is computed once and fed to the neuron at every step. The conv kernel
    is (3, 1) over frames (paper "kernel size 3"), which keeps the joint graph intact.
    Only this layer sees real values (host-side MACs). Shape ``(B, C, T, V) →
    (T_s·B, C', T, V)``.
    """

    real_valued_input = True

    def __init__(self, c_in: int, c_out: int, cfg: ModelConfig):
        super().__init__()
        self.time_steps = cfg.time_steps
        self.conv = nn.Conv2d(c_in, c_out, (3, 1), padding=(1, 0), bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.lif = _lif(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cur = self.bn(self.conv(x))
        return self.lif(cur.unsqueeze(0).expand(self.time_steps, *cur.shape)).flatten(0, 1)


class GlobalPool(nn.Module):
    """GAP over frames, joints and bodies (eq. 14): ``(T_s·N·M, C, T, V) → (T_s·N, C)``.

    One accumulate per input element (MACs = input size).
    """

    def __init__(self, bodies: int):
        super().__init__()
        self.bodies = bodies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return x.view(b // self.bodies, self.bodies, c, -1).mean(dim=(1, 3))

    def synaptic_ops(self, inputs, output):
        return [("", inputs[0].numel(), inputs[0])]


class Head(nn.Module):
    """Readout, eq. 14: ``y = FC(Dropout(SN(BN(GAP(T)))))``, averaged over ``T_s``.

    Input spikes ``(T_s·N·M, C, T, V)``; output logits ``(N, num_classes)``.
    """

    def __init__(self, channels: int, cfg: ModelConfig, bodies: int):
        super().__init__()
        self.time_steps = cfg.time_steps
        self.pool = GlobalPool(bodies)
        self.bn = nn.BatchNorm1d(channels)
        self.lif = _lif(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(channels, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = fold_sn(self.lif, self.bn(self.pool(x)), self.time_steps)
        return self.fc(self.drop(s)).view(self.time_steps, -1, self.fc.out_features).mean(0)


class SASGC(nn.Module):
    """Spiking spatial graph conv, eq. 7/12: ``H0 = SN_1(res(X)) + SN_2(BN(X W))``.

    ``res`` is a :class:`ChannelAffine` when the width is kept, else 1×1 conv + BN.
    ``X`` is the previous layer's output ``T^(l−1)`` (or ``P`` for layer 1). The graph conv
    ``gcn`` has ``2·C_out`` outputs: the first half is ``X W`` (eq. 7), the second half is
    SG-SA's value current ``X W_V`` (eq. 9, ``H W_V`` with ``H`` the aggregated input) —
    two weight matrices sharing one aggregation. Returns ``(H0, value_current)``: H0 values
    in {0, 1, 2}, both ``(T_s·B, C_out, T, V)``.
    """

    def __init__(self, c_in: int, c_out: int, A: torch.Tensor, cfg: ModelConfig):
        super().__init__()
        self.time_steps = cfg.time_steps
        self.res = ChannelAffine(c_in) if c_in == c_out else conv_bn(c_in, c_out)
        self.lif1 = _lif(cfg)
        self.gcn = GraphConv(c_in, 2 * c_out, A)
        self.bn = nn.BatchNorm2d(2 * c_out)
        self.lif2 = _lif(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ts = self.time_steps
        cur, value = self.bn(self.gcn(x)).chunk(2, dim=1)
        return fold_sn(self.lif1, self.res(x), ts) + fold_sn(self.lif2, cur, ts), value


class SGSA(nn.Module):
    """Spatial global spiking attention, eq. 8–10.

    ``Q = SN_q(BN(H0 W_Q))``, ``K = SN_k(BN(H0 W_K))`` (one 1×1 conv ``qk`` with ``2·C``
    outputs: W_Q then W_K), ``V = SN_v(value)`` (value current from :class:`SASGC`),
    ``H_SA = H0 + SN_kv(s·QKᵀV)``. Returns ``H_SA`` ``(T_s·B, C, T, V)``, values in {0, 1, 2, 3}.
    """

    def __init__(self, c: int, cfg: ModelConfig):
        super().__init__()
        self.time_steps = cfg.time_steps
        self.qk = nn.Conv2d(c, 2 * c, 1, bias=False)
        self.qk_bn = nn.BatchNorm2d(2 * c)
        self.lifq = _lif(cfg)
        self.lifk = _lif(cfg)
        self.lifv = _lif(cfg)
        self.attn = SpikeAttention(cfg.attention_scale)
        self.lifkv = _lif(cfg)

    def forward(self, h0: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ts = self.time_steps
        q, k = self.qk_bn(self.qk(h0)).chunk(2, dim=1)
        q, k, v = fold_sn(self.lifq, q, ts), fold_sn(self.lifk, k, ts), fold_sn(self.lifv, value, ts)
        return h0 + fold_sn(self.lifkv, self.attn(q, k, v), ts)


class STC(nn.Module):
    """Spiking temporal convolution, eq. 11/13:
    ``T = SN(BN(TemporalConv(H_SA)) + SN_res(res(H_SA)))``.

    Temporal conv kernel ``(temporal_kernel, 1)``, stride ``(stride, 1)``, zero padding;
    the residual synapse is a :class:`ChannelAffine` with the same stride. Shape
    ``(T_s·B, C, T, V) → (T_s·B, C, ⌈T/stride⌉, V)`` spikes.
    """

    def __init__(self, c: int, stride: int, cfg: ModelConfig):
        super().__init__()
        self.time_steps = cfg.time_steps
        k = cfg.temporal_kernel
        self.tconv = nn.Conv2d(c, c, (k, 1), stride=(stride, 1), padding=((k - 1) // 2, 0), bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.res = ChannelAffine(c, stride)
        self.res_lif = _lif(cfg)
        self.lif = _lif(cfg)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        ts = self.time_steps
        return fold_sn(self.lif, self.bn(self.tconv(h)) + fold_sn(self.res_lif, self.res(h), ts), ts)


class MKSGNLayer(nn.Module):
    """One MK-SGN layer (Table 7 "SGC-STC"): SA-SGC (eq. 7) → SG-SA (eq. 8–10) → STC (eq. 11–13)."""

    def __init__(self, c_in: int, c_out: int, stride: int, A: torch.Tensor, cfg: ModelConfig):
        super().__init__()
        self.sa_sgc = SASGC(c_in, c_out, A, cfg)
        self.sg_sa = SGSA(c_out, cfg)
        self.stc = STC(c_out, stride, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stc(self.sg_sa(*self.sa_sgc(x)))


class SpikingGraphNet(nn.Module):
    """Shared skeleton of MK-SGN and Base-SGN*: coding → layers → head.

    Forward: ``x`` float ``(N, C, T, V, M)`` (C coordinates in metres, T frames, V joints,
    M bodies) → logits ``(N, num_classes)`` (mean over the ``T_s`` steps of the FC readout).

    Raises
    ------
    ConfigError
        If ``x`` does not have 5 axes or its C, V, M differ from the config/layout.
    """

    def __init__(self, cfg: ModelConfig, layers: nn.ModuleList):
        super().__init__()
        self.cfg = cfg
        layout = get_layout(cfg.layout)
        self.num_joints, self.max_bodies = layout.num_joints, layout.max_bodies
        self.sc = SpikingCoding(cfg.in_channels, cfg.coding_width, cfg)
        self.layers = layers
        self.head = Head(cfg.stages[-1][0], cfg, layout.max_bodies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.cfg.in_channels or x.shape[3] != self.num_joints \
                or x.shape[4] != self.max_bodies:
            raise ConfigError(
                f"model input has shape {tuple(x.shape)}; expected (N, {self.cfg.in_channels}, T, "
                f"{self.num_joints}, {self.max_bodies}) for layout {layout_name(self.cfg.layout)!r}")
        n, c, t, v, m = x.shape
        h = self.sc(x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v))
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class MKSGN(SpikingGraphNet):
    """MK-SGN encoder for one modality (Table 7: 6 SGC-STC layers, strides at layers 3, 5).

    Parameters
    ----------
    cfg : ModelConfig
        ``cfg.arch`` must be ``"mksgn"``.
    """

    def __init__(self, cfg: ModelConfig):
        if cfg.fusion != "none":
            raise ConfigError(f"MKSGN is the single-modality model; fusion={cfg.fusion!r} is built by "
                              "mksgn.models.build_model (mksgn.models.smf.SMFMKSGN)")
        super().__init__(cfg, mksgn_layers(cfg))


def mksgn_layers(cfg: ModelConfig) -> nn.ModuleList:
    """The 6 SGC-STC layers of MK-SGN (Table 7) for ``cfg``; layer 1 reads ``cfg.coding_width``
    channels (the spiking coding's, or the SMF's fused output's)."""
    A = torch.from_numpy(get_layout(cfg.layout).adjacency())
    layers, c_in = nn.ModuleList(), cfg.coding_width
    for c_out, stride in cfg.stages:
        layers.append(MKSGNLayer(c_in, c_out, stride, A, cfg))
        c_in = c_out
    return layers
