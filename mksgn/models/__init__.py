"""Float spiking models MK-SGN and Base-SGN* (paper Table 7) and the CTR-GCN teacher, built from a
:class:`ModelConfig`."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .base_sgn import BaseSGN
from .config import ARCHS, ModelConfig
from .ctrgcn import CTRGCN
from .mksgn import MKSGN
from .smf import SMFMKSGN

__all__ = ["ModelConfig", "ARCHS", "build_model", "MKSGN", "BaseSGN", "CTRGCN", "SMFMKSGN"]


def build_model(cfg: ModelConfig, with_estimator: bool = False, smf_momentum: float = 0.1,
                estimator_hidden: int = 32, smf_weights: str = "share") -> nn.Module:
    """Build the model named by ``cfg.arch`` (and ``cfg.fusion``).

    Parameters
    ----------
    cfg : ModelConfig
    with_estimator, smf_momentum, estimator_hidden, smf_weights
        Only for ``cfg.fusion == "smf"`` (:class:`~mksgn.models.smf.SMFMKSGN`): build the
        MINE statistics networks (training; default False = inference with the frozen
        fusion weights), the running-average momentum of the fusion weights, the
        estimators' LSTM hidden size and the fusion-weight rule (``"share"`` | ``"paper"``,
        :func:`~mksgn.models.smf.fusion_weights`). Ignored for the other models.

    Returns
    -------
    torch.nn.Module
        Maps a float clip ``(N, C, T, V, M)`` — for ``fusion="smf"`` a dict modality → clip
        with all four modalities — to logits ``(N, num_classes)``; it has the config as
        ``.cfg``.

    Raises
    ------
    ConfigError
        If ``cfg`` is not a :class:`ModelConfig` (the arch itself is validated by it), or
        bad SMF arguments.
    """
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"build_model needs a ModelConfig, got {type(cfg).__name__}; "
                          "use ModelConfig.from_dict for a dict")
    if cfg.arch == "ctrgcn":
        model = CTRGCN(cfg.layout, cfg.num_classes, cfg.in_channels, cfg.width, cfg.dropout)
        model.cfg = cfg
        return model
    if cfg.fusion == "smf":
        return SMFMKSGN(cfg, with_estimator, smf_momentum, estimator_hidden, smf_weights)
    return MKSGN(cfg) if cfg.arch == "mksgn" else BaseSGN(cfg)
