"""Float spiking models MK-SGN and Base-SGN* (paper Table 7) and the CTR-GCN teacher, built from a
:class:`ModelConfig`."""
from __future__ import annotations

from torch import nn

from .base_sgn import BaseSGN
from .config import ARCHS, ModelConfig
from .ctrgcn import CTRGCN
from .mksgn import MKSGN

__all__ = ["ModelConfig", "ARCHS", "build_model", "MKSGN", "BaseSGN", "CTRGCN"]


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model named by ``cfg.arch``.

    Parameters
    ----------
    cfg : ModelConfig

    Returns
    -------
    torch.nn.Module
        Maps a float clip ``(N, C, T, V, M)`` to logits ``(N, num_classes)``; it has the
        config as ``.cfg``.

    Raises
    ------
    ConfigError
        If ``cfg`` is not a :class:`ModelConfig` (the arch itself is validated by it).
    """
    from ..errors import ConfigError

    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"build_model needs a ModelConfig, got {type(cfg).__name__}; "
                          "use ModelConfig.from_dict for a dict")
    if cfg.arch == "ctrgcn":
        model = CTRGCN(cfg.layout, cfg.num_classes, cfg.in_channels, cfg.width, cfg.dropout)
        model.cfg = cfg
        return model
    return MKSGN(cfg) if cfg.arch == "mksgn" else BaseSGN(cfg)
