"""Base-SGN*: the 10-layer ST-GCN of Table 7 ("Base-SGN") with every ReLU replaced by the LIF.

Per layer ``l`` (input spikes ``X``, shape ``(T_s·B, C_in, T, V)``)::

    S = SN(BN(GraphConv(X)))                        # spatial, eq. 6 form
    Y = SN(BN(TemporalConv(S)) + res(X))            # temporal + residual (ST-GCN unit)

``res`` is absent in layer 1, a per-channel affine when shape is kept, else 1×1 conv + BN
(temporal stride). Same spiking coding input (eq. 3–4) and head (eq. 14) as MK-SGN.
"""
from __future__ import annotations

import torch
from torch import nn

from ..graph import get_layout
from .config import ModelConfig
from .mksgn import ChannelAffine, GraphConv, SpikingGraphNet, _lif, conv_bn, fold_sn

__all__ = ["BaseSGN", "BaseSGNLayer"]


class BaseSGNLayer(nn.Module):
    """One spiking ST-GCN unit (GC-TC of Table 7); see the module docstring."""

    def __init__(self, c_in: int, c_out: int, stride: int, A: torch.Tensor, cfg: ModelConfig,
                 residual: bool):
        super().__init__()
        self.time_steps = cfg.time_steps
        k = cfg.temporal_kernel
        self.gcn = GraphConv(c_in, c_out, A)
        self.gcn_bn = nn.BatchNorm2d(c_out)
        self.gcn_lif = _lif(cfg)
        self.tconv = nn.Conv2d(c_out, c_out, (k, 1), stride=(stride, 1), padding=((k - 1) // 2, 0), bias=False)
        self.tconv_bn = nn.BatchNorm2d(c_out)
        if not residual:
            self.res = None
        elif c_in == c_out:
            self.res = ChannelAffine(c_in, stride)
        else:
            self.res = conv_bn(c_in, c_out, stride)
        self.lif = _lif(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ts = self.time_steps
        cur = self.tconv_bn(self.tconv(fold_sn(self.gcn_lif, self.gcn_bn(self.gcn(x)), ts)))
        if self.res is not None:
            cur = cur + self.res(x)
        return fold_sn(self.lif, cur, ts)


class BaseSGN(SpikingGraphNet):
    """Base-SGN* (Table 7: 10 layers 64×4, 128×3, 256×3, strides at layers 5 and 8).

    Parameters
    ----------
    cfg : ModelConfig
        ``cfg.arch`` must be ``"base_sgn"``.
    """

    def __init__(self, cfg: ModelConfig):
        A = torch.from_numpy(get_layout(cfg.layout).adjacency())
        layers, c_in = nn.ModuleList(), cfg.coding_width
        for i, (c_out, stride) in enumerate(cfg.stages):
            layers.append(BaseSGNLayer(c_in, c_out, stride, A, cfg, residual=i > 0))
            c_in = c_out
        super().__init__(cfg, layers)
