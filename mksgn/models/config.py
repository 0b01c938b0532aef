"""Model configuration: one frozen dataclass, validated on construction."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import ConfigError
from ..graph import get_layout, layout_record
from .ctrgcn import ctrgcn_stages

__all__ = ["ModelConfig", "ARCHS", "FUSIONS"]

ARCHS = ("mksgn", "base_sgn", "ctrgcn")
FUSIONS = ("none", "smf")
# Paper Table 7 (NTU RGB+D 60): (out_channels, temporal stride) per layer.
_TABLE7 = {
    "mksgn": ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1)),
    "base_sgn": ((64, 1), (64, 1), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1),
                 (256, 2), (256, 1), (256, 1)),
}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of MK-SGN / Base-SGN* (one modality encoder).

    Attributes
    ----------
    arch : {"mksgn", "base_sgn", "ctrgcn"}
        ``ctrgcn`` is the float (ReLU) CTR-GCN teacher of the distillation (issue 4); it uses
        ``layout``, ``num_classes``, ``in_channels``, ``width`` and ``dropout`` only.
        MK-SGN (6 SA-SGC + STC layers) or Base-SGN* (10-layer spiking ST-GCN), Table 7.
    layout : str or dict
        Joint layout (:func:`mksgn.graph.get_layout`); fixes V, M, the window and the
        adjacency. A built-in name (``ntu25``, ``ucla20``, ``openpose18``, ``coco17``), a
        layout JSON file (relative to the working folder) or a layout dict; a file becomes
        its dict on construction (:func:`mksgn.graph.layout_record`), so ``to_dict`` -- and
        every checkpoint and export -- carries the whole layout and needs no file.
    num_classes : int
        Action classes J (NW-UCLA 10, NTU-60 60).
    in_channels : int
        C of the input clip (3 coordinates, metres).
    time_steps : int
        Spike time steps T_s per clip (paper 4); separate from the frame axis T.
    width : float
        Channel multiplier on the Table 7 widths; each width is rounded to a multiple of 4,
        minimum 4.
    temporal_kernel : int
        Odd kernel size over frames of the temporal convolution (eq. 11, 13).
    dropout : float
        Dropout before the FC readout (Table 5: 0.3).
    attention_shift : int
        SG-SA scale ``s = 2**-attention_shift`` (eq. 10); a power of two so it is an exact
        shift in integers. Default 3 (s = 0.125, Spikformer's scale).
    beta, threshold, surrogate_width : float
        LIF decay β, threshold vth, surrogate window a (Table 4: 0.25, 1.0, 1.0).
    coding_channels : int or None
        Output channels of the spiking-coding conv (eq. 4). Table 7 says 3; ``None`` (the
        default) means "the first layer's width" — a deviation: a 3-channel binary code
        at 4 steps loses most of the coordinate information.
    fusion : {"none", "smf"}
        Input stage of MK-SGN. ``"none"`` (the default; every config and checkpoint written
        before issue 4 has it): one modality, one spiking-coding layer (eq. 3–4), input a
        tensor ``(N, C, T, V, M)``. ``"smf"``: the four-modality MK-SGN whose coding stage is
        the Spiking Multimodal Fusion module (:class:`mksgn.models.smf.SMF`, eq. 16–24: one
        spiking-coding layer per modality, spikes fused by the frozen weights of eq. 24),
        input a dict modality → ``(N, C, T, V, M)`` with all four modalities. ``arch
        "mksgn"`` only.
    """

    arch: str
    layout: str
    num_classes: int
    in_channels: int = 3
    time_steps: int = 4
    width: float = 1.0
    temporal_kernel: int = 9
    dropout: float = 0.3
    attention_shift: int = 3
    beta: float = 0.25
    threshold: float = 1.0
    surrogate_width: float = 1.0
    coding_channels: int | None = None
    fusion: str = "none"

    def __post_init__(self):
        def check(name, ok, what):
            if not ok:
                raise ConfigError(f"model config: {name}={getattr(self, name)!r} is invalid; expected {what}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):  # finite: NaN fails every range below, inf would pass "> 0"
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        check("arch", self.arch in ARCHS, f"one of {list(ARCHS)}")
        if not isinstance(self.layout, (str, dict)):
            check("layout", False, "a built-in layout name, a layout JSON file or a layout object")
        try:
            object.__setattr__(self, "layout", layout_record(self.layout))
        except ConfigError as exc:
            raise ConfigError(f"model config: layout: {exc}") from None
        check("num_classes", is_int(self.num_classes) and 1 <= self.num_classes <= 100_000, "an integer in [1, 100000]")
        check("in_channels", is_int(self.in_channels) and 1 <= self.in_channels <= 64, "an integer in [1, 64]")
        check("time_steps", is_int(self.time_steps) and 1 <= self.time_steps <= 1024, "an integer in [1, 1024]")
        check("width", is_num(self.width) and 0 < self.width <= 64, "a number in (0, 64]")
        check("temporal_kernel", is_int(self.temporal_kernel) and 1 <= self.temporal_kernel <= 63
              and self.temporal_kernel % 2 == 1, "an odd integer in [1, 63]")
        check("dropout", is_num(self.dropout) and 0 <= self.dropout < 1, "a number in [0, 1)")
        check("attention_shift", is_int(self.attention_shift) and 0 <= self.attention_shift <= 16,
              "an integer in [0, 16]")
        check("beta", is_num(self.beta) and 0 <= self.beta <= 1, "a number in [0, 1]")
        check("threshold", is_num(self.threshold) and self.threshold > 0, "a number > 0")
        check("surrogate_width", is_num(self.surrogate_width) and self.surrogate_width > 0, "a number > 0")
        check("coding_channels", self.coding_channels is None
              or (is_int(self.coding_channels) and 1 <= self.coding_channels <= 65536), "null or an integer in [1, 65536]")
        check("fusion", self.fusion in FUSIONS, f"one of {list(FUSIONS)}")
        if self.fusion != "none" and self.arch != "mksgn":
            raise ConfigError(f"model config: fusion={self.fusion!r} needs arch 'mksgn' (the SMF front end "
                              f"feeds MK-SGN's layers), got arch {self.arch!r}; use fusion 'none'")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a JSON-like dict.

        Raises
        ------
        ConfigError
            If ``d`` is not a dict, has an unknown key, lacks ``arch``/``layout``/
            ``num_classes``, or a value is out of range (the message names the key).
        """
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"model config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        missing = [k for k in ("arch", "layout", "num_classes") if k not in d]
        if missing:
            raise ConfigError(f"model config: missing required key(s) {missing}")
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-ready dict; ``ModelConfig.from_dict(cfg.to_dict()) == cfg``.

        ``fusion`` is left out when it is ``"none"`` (its default), so a single-modality
        config writes the same dict — and exports to the same bytes — as before the key existed.
        """
        d = asdict(self)
        if d["fusion"] == "none":
            del d["fusion"]
        return d

    @property
    def joint_layout(self):
        """The :class:`mksgn.graph.Layout` of ``layout``."""
        return get_layout(self.layout)

    @property
    def stages(self) -> tuple:
        """``((out_channels, stride), ...)`` per layer: Table 7 widths × ``width``."""
        if self.arch == "ctrgcn":
            return tuple(ctrgcn_stages(self.width))
        return tuple((max(4, int(round(c * self.width / 4)) * 4), s) for c, s in _TABLE7[self.arch])

    @property
    def attention_scale(self) -> float:
        """SG-SA scale ``s = 2**-attention_shift`` (eq. 10)."""
        return 2.0 ** -self.attention_shift

    @property
    def coding_width(self) -> int:
        """Channels of the spiking-coding layer (``coding_channels`` or the first width)."""
        return self.coding_channels if self.coding_channels is not None else self.stages[0][0]
