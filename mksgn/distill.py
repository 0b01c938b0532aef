"""GCN→SGN knowledge distillation (paper "Knowledge Distillation of GCN-to-SGN", eq. 25–32).

A 4-stream CTR-GCN teacher (:class:`mksgn.models.ctrgcn.CTRGCN`, one model per modality)
guides the spiking student (:class:`mksgn.models.MKSGN`) in two ways:

* soft labels — the teacher streams' logits are combined (eq. 25, :func:`ensemble_logits`)
  and the student's prediction is pulled towards them (eq. 26, :func:`soft_label_loss`);
* inner-layer features — the four streams' features after teacher layers 5 and 8 are fused
  and turned into spikes by a learnable Feature Translation Module (eq. 27–28,
  :class:`FeatureTranslation`), and compared with the student's spikes after its layers 3
  and 5 by a cosine loss (eq. 29–31, :func:`cosine_feature_loss`).

:func:`total_loss` is eq. 32. Training uses two optimisers (paper Table 5, "SGD/SGD"): one
for the student, one for the FTMs; the teacher is fixed (run it under ``torch.no_grad()``).

Layouts: teacher features are ``(N·M, C, T, V)`` (bodies folded into the batch, row
``n·M + m``); student spikes are ``(T_s·N·M, C, T, V)`` (row ``t·N·M + n·M + m``), the layout
of :mod:`mksgn.models.mksgn`. The FTM output uses the student's layout, so the two can be
compared row by row.

Own code: no library offers these losses for spike tensors (snntorch, SpikingJelly and
torchdistill have logit-KD and feature-KD losses for float tensors only, none of this
paper's ``‖y − ŷ‖`` form or the FTM).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_state
from .errors import ConfigError
from .models.config import ModelConfig
from .models.mksgn import SpikingCoding
from .preprocess import MODALITIES

__all__ = ["DEFAULT_ALPHAS", "STUDENT_LAYERS", "TEACHER_LAYERS", "ensemble_logits", "soft_label_loss",
           "FeatureTranslation", "cosine_feature_loss", "student_features", "DistillLoss", "total_loss",
           "Distiller"]

DEFAULT_ALPHAS = (0.6, 0.6, 0.4, 0.4)
"""Default ``α`` of eq. 25 (joint, bone, joint motion, bone motion): the weights of the
CTR-GCN ensemble script (``ensemble.py``); the paper gives none."""
TEACHER_LAYERS = (5, 8)
"""1-based teacher (CTR-GCN) layers whose features are translated (paper: ``T_A·5``, ``T_A·8``)."""
STUDENT_LAYERS = (3, 5)
"""1-based student (MK-SGN) layers they are matched with (paper eq. 29–30: ``S_3``, ``S_5``)."""


def _check_number(name: str, value, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise ConfigError(f"{where}: {name}={value!r} is invalid; expected a finite number "
                          f"{'> 0' if positive else '>= 0'}")
    return float(value)


def _check_streams(items, what: str, where: str) -> list:
    if isinstance(items, torch.Tensor) or not isinstance(items, Sequence) or len(items) != len(MODALITIES):
        got = f"{len(items)} items" if isinstance(items, Sequence) and not isinstance(items, torch.Tensor) \
            else type(items).__name__
        raise ConfigError(f"{where}: expected a sequence of {len(MODALITIES)} {what}, one per stream "
                          f"{list(MODALITIES)} in that order; got {got}")
    return list(items)


def ensemble_logits(stream_logits: Sequence[torch.Tensor], alphas: Sequence[float]) -> torch.Tensor:
    """Weighted ensemble of the four teacher streams, eq. 25.

    ``ŷ = α_j·y_j + α_b·y_b + α_jm·y_jm + α_bm·y_bm`` — a weighted sum of the streams' raw
    logits (the CTR-GCN ensemble script sums the streams' scores the same way); no softmax
    and no normalisation of the α (the paper calls them hyper-parameters and does not
    constrain them).

    Parameters
    ----------
    stream_logits : sequence of 4 Tensors, each ``(N, num_classes)``
        Teacher logits in the order of :data:`~mksgn.preprocess.MODALITIES` (joint, bone,
        joint motion, bone motion).
    alphas : sequence of 4 floats ≥ 0
        ``α`` per stream, same order.

    Returns
    -------
    Tensor ``(N, num_classes)``

    Raises
    ------
    ConfigError
        Not exactly four streams or four alphas; an alpha negative or not finite; logits
        that are not 2-D or differ in shape.
    """
    where = "ensemble_logits (eq. 25)"
    logits = _check_streams(stream_logits, "logit tensors", where)
    alphas = _check_streams(alphas, "alphas", where)
    alphas = [_check_number(f"alphas[{i}]", a, where) for i, a in enumerate(alphas)]
    shape = logits[0].shape if isinstance(logits[0], torch.Tensor) else None
    for name, y in zip(MODALITIES, logits):
        if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape != shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ConfigError(f"{where}: {name} logits have shape {got}; every stream must be "
                              f"(N, num_classes) and all four the same shape, first is "
                              f"{tuple(shape) if shape is not None else None}")
    out = alphas[0] * logits[0]
    for a, y in zip(alphas[1:], logits[1:]):
        out = out + a * y
    return out


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """Soft-label distillation loss, eq. 26: ``L_sdk = ‖y − ŷ‖``.

    The paper writes ``L_sdk = ‖y − ŷ‖`` with ``ŷ`` the ensembled teacher soft labels
    (eq. 25) and gives no norm subscript, temperature or batch reduction. Here, per clip,
    ``y = softmax(z_s / τ)`` and ``ŷ = softmax(z_t / τ)`` (soft labels are class
    probabilities, "soft" by a temperature ``τ``), the norm is the Euclidean (L2) norm over
    the classes (not squared), and the batch reduction is the mean over clips (as the
    ``1/B`` of eq. 15)::

        L_sdk = 1/N · Σ_n ‖softmax(z_s[n]/τ) − softmax(z_t[n]/τ)‖₂

    Temperature convention: the same ``τ`` divides both logit sets; there is no ``τ²``
    factor (Hinton et al. 2015 multiply their KL term by ``τ²``; the paper's formula has no
    such factor). ``τ = 1`` is the plain softmax. Because it is a norm of a difference, the
    loss is exactly 0 when the two logit sets are equal (up to a per-clip constant shift) —
    unlike a cross-entropy soft-label loss, which is the teacher's entropy there. The
    teacher is a target: ``teacher_logits`` is detached. The gradient is 0 (not NaN) where
    the two distributions coincide.

    Parameters
    ----------
    student_logits : Tensor ``(N, num_classes)``
        ``z_s``, the student's FC output (eq. 14).
    teacher_logits : Tensor ``(N, num_classes)``
        ``z_t``, the ensembled teacher logits (:func:`ensemble_logits`).
    temperature : float > 0
        ``τ`` (dimensionless).

    Returns
    -------
    Tensor, scalar, in ``[0, √2]``.

    Raises
    ------
    ConfigError
        Shapes differ or are not 2-D; ``temperature`` not a finite number > 0.
    """
    where = "soft_label_loss (eq. 26)"
    tau = _check_number("temperature", temperature, where, positive=True)
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"{where}: student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} must both be (N, num_classes); pass the "
                          "ensembled teacher logits (ensemble_logits), not the four streams")
    diff = F.softmax(student_logits / tau, dim=1) - F.softmax(teacher_logits.detach() / tau, dim=1)
    return torch.linalg.vector_norm(diff, ord=2, dim=1).mean()


class FeatureTranslation(nn.Module):
    """Feature Translation Module (FTM), eq. 27–28: teacher float features → student spikes.

    ::

        T_Am = BN(PW(DW(cat(T_A,j, T_A,b, T_A,jm, T_A,bm))))      eq. 27 (Con2d = depth-wise separable)
        T_Sm = SN(BN(Conv2d(PCM(T_Am))))                         eq. 28

    * ``cat`` along channels: ``4·C_t`` channels (paper ``8C`` for four ``2C`` features).
    * Depth-wise separable conv (paper: "fuses them using depth-wise separable
      convolution"): a depth-wise ``(3, 1)`` conv over frames (groups = ``4·C_t``) then a
      point-wise 1×1 conv ``4·C_t → 4·C_t`` (eq. 27 keeps ``8C`` channels), no bias, no
      activation in between, then BN. The kernel runs over frames only, as in the student's
      spiking coding: joint indices are not a grid.
    * ``PCM`` + ``Conv2d`` + ``BN`` + ``SN``: exactly the student's spiking-coding layer
      (:class:`mksgn.models.mksgn.SpikingCoding`, eq. 3–4) — the real-valued fused feature is
      repeated over the ``T_s`` spike steps (direct coding), a ``(3, 1)`` conv ``4·C_t → C_s``
      and BN, and the MK-SGN LIF (built by the same factory, ``_lif``, from the student's
      ``cfg``: same β, threshold and surrogate).

    Parameters
    ----------
    teacher_channels : int
        ``C_t``, channels of ONE stream's teacher feature at this depth.
    student_channels : int
        ``C_s``, channels of the student layer it is compared with.
    cfg : ModelConfig
        The student's config (``time_steps``, ``beta``, ``threshold``, ``surrogate_width``).
    num_streams : int
        Teacher streams concatenated (4 in the paper).

    Shape
    -----
    Input: a sequence of ``num_streams`` tensors ``(N·M, C_t, T', V)`` (teacher layout, stream
    order :data:`~mksgn.preprocess.MODALITIES`). Output: spikes in {0, 1},
    ``(T_s·N·M, C_s, T', V)`` (student layout). For the paper's pairs, teacher layer 5 ``(N·M, 128w, ⌈T/2⌉, V)`` → student layer
    3 ``(T_s·N·M, 128w, ⌈T/2⌉, V)``, teacher layer 8 ``(N·M, 256w, ⌈T/4⌉, V)`` → student
    layer 5 ``(T_s·N·M, 256w, ⌈T/4⌉, V)``.

    Raises
    ------
    ConfigError
        Bad channel counts or ``cfg`` at construction; at forward, the wrong number of
        streams, a stream that is not 4-D, streams of different shapes, or a channel count
        other than ``teacher_channels``.
    """

    def __init__(self, teacher_channels: int, student_channels: int, cfg: ModelConfig, num_streams: int = 4):
        super().__init__()
        for name, v in (("teacher_channels", teacher_channels), ("student_channels", student_channels),
                        ("num_streams", num_streams)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"FeatureTranslation: {name}={v!r} is invalid; expected an integer >= 1")
        if not isinstance(cfg, ModelConfig):
            raise ConfigError(f"FeatureTranslation needs the student's ModelConfig, got {type(cfg).__name__}")
        self.teacher_channels, self.student_channels = teacher_channels, student_channels
        self.num_streams, self.time_steps = num_streams, cfg.time_steps
        c = num_streams * teacher_channels
        self.depthwise = nn.Conv2d(c, c, (3, 1), padding=(1, 0), groups=c, bias=False)
        self.pointwise = nn.Conv2d(c, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.coding = SpikingCoding(c, student_channels, cfg)

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Eq. 27 only: the fused float feature ``T_Am`` ``(N·M, num_streams·C_t, T', V)``."""
        where = "FeatureTranslation"
        if isinstance(features, torch.Tensor) or not isinstance(features, Sequence) \
                or len(features) != self.num_streams:
            got = f"{len(features)}" if isinstance(features, Sequence) and not isinstance(features, torch.Tensor) \
                else type(features).__name__
            raise ConfigError(f"{where}: expected {self.num_streams} teacher feature tensors (one per stream, "
                              f"order {list(MODALITIES)}), got {got}")
        first = features[0]
        for i, f in enumerate(features):
            if not isinstance(f, torch.Tensor) or f.dim() != 4 or f.shape != first.shape \
                    or f.shape[1] != self.teacher_channels:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ConfigError(f"{where}: teacher stream {i} feature has shape {got}; expected "
                                  f"(N·M, {self.teacher_channels}, T', V), the same for all streams "
                                  f"(stream 0 is {tuple(first.shape) if isinstance(first, torch.Tensor) else None}); "
                                  "pass the teacher features of one layer (CTRGCN(..., return_features=True))")
        return self.bn(self.pointwise(self.depthwise(torch.cat(list(features), dim=1))))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.coding(self.fuse(features))


def cosine_feature_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine feature-distillation loss of one layer pair, eq. 29/30.

    ``L = 1/J · Σ_j (1 − a_j·b_j / (‖a_j‖·‖b_j‖))`` — the mean over feature vectors of one
    minus their cosine similarity. The paper's ``J`` is not defined for this equation (the
    text after it defines "K is the number of action classes", apparently a slip). Here
    ``j`` runs over the rows of the leading axis and each row, flattened, is one feature
    vector: for the folded spike layout ``(T_s·N·M, C, T, V)`` a vector is one clip's
    (body's) feature map ``C×T×V`` at one spike step, ``J = T_s·N·M``.

    Range ``[0, 2]``: 0 for identical (or positively proportional) rows, 1 for orthogonal,
    2 for opposite. A row where ``a_j`` or ``b_j`` is all zero (a silent spike map) has no
    defined cosine; it counts as similarity 0 (loss 1) and contributes no gradient (a
    norm clamped at a small eps, as in ``torch.nn.functional.cosine_similarity``, would give
    it gradients of order ``1/eps``).

    Parameters
    ----------
    a, b : Tensor ``(J, ...)``, same shape, e.g. ``(T_s·N·M, C, T, V)``
        Student spikes ``S_l`` and translated teacher spikes ``T_Sm`` (:class:`FeatureTranslation`).

    Returns
    -------
    Tensor, scalar (dimensionless).

    Raises
    ------
    ConfigError
        Shapes differ, fewer than 2 axes, or no rows.
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape \
            or a.dim() < 2 or a.shape[0] == 0:
        sa = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        sb = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
        raise ConfigError(f"cosine_feature_loss (eq. 29-30): features have shapes {sa} and {sb}; they must "
                          "be equal, with >= 2 axes and >= 1 row, e.g. (T_s·N·M, C, T, V) — check that the "
                          "FTM's student_channels and the student layer match (teacher 5 <-> student 3, "
                          "teacher 8 <-> student 5) and that both use the same T_s and frames")
    a2, b2 = a.flatten(1), b.flatten(1)
    na, nb = torch.linalg.vector_norm(a2, dim=1), torch.linalg.vector_norm(b2, dim=1)
    ok = (na > 0) & (nb > 0)
    denom = torch.where(ok, na * nb, torch.ones_like(na))
    cos = torch.where(ok, (a2 * b2).sum(1) / denom, torch.zeros_like(na))
    return (1 - cos).mean()


def student_features(model: nn.Module, x: torch.Tensor, layers: Sequence[int] = STUDENT_LAYERS,
                     **forward_kwargs) -> tuple[torch.Tensor, list]:
    """Run the student and capture the outputs of some of its layers (forward hooks).

    Parameters
    ----------
    model : MKSGN, SMFMKSGN or BaseSGN
        A model with a ``layers`` ModuleList (:class:`mksgn.models.mksgn.SpikingGraphNet`,
        :class:`mksgn.models.smf.SMFMKSGN`).
    x : Tensor ``(N, C, T, V, M)``, or dict modality → such tensors
        The student's input clip (the dict of all four modalities for the four-modality
        MK-SGN, whose layers read the SMF's fused spikes, eq. 24).
    layers : sequence of int
        1-based layer numbers (default :data:`STUDENT_LAYERS`, the paper's 3 and 5).
    **forward_kwargs
        Passed to the model's forward (the SMF student's ``estimate``).

    Returns
    -------
    (logits ``(N, num_classes)``, list of spike tensors ``(T_s·N·M, C_l, T_l, V)`` in the
    order of ``layers``).

    Raises
    ------
    ConfigError
        The model has no ``layers`` or a layer number is out of range.
    """
    mods = getattr(model, "layers", None)
    if not isinstance(mods, nn.ModuleList):
        raise ConfigError(f"student_features: {type(model).__name__} has no `layers` ModuleList; "
                          "pass an MKSGN/BaseSGN built by mksgn.models.build_model")
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= len(mods)]
    if bad:
        raise ConfigError(f"student_features: layer number(s) {bad} out of range; the student has layers "
                          f"1..{len(mods)} (1-based)")
    seen: dict = {}
    handles = [mods[i - 1].register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, out))
               for i in layers]
    try:
        logits = model(x, **forward_kwargs)
    finally:
        for h in handles:
            h.remove()
    return logits, [seen[i] for i in layers]


class DistillLoss(NamedTuple):
    """The terms of eq. 32, each a scalar Tensor (``total`` carries the gradient graph)."""

    total: torch.Tensor      #: L, eq. 32
    hard: torch.Tensor       #: L_b, cross-entropy with the labels (eq. 15)
    soft: torch.Tensor       #: L_sdk, eq. 26
    feature: torch.Tensor    #: L_fkd = β1·L_fkd1 + β2·L_fkd2, eq. 31
    feature_1: torch.Tensor  #: L_fkd1, eq. 29 (teacher 5 ↔ student 3)
    feature_2: torch.Tensor  #: L_fkd2, eq. 30 (teacher 8 ↔ student 5)


def total_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
               student_feats: Sequence[torch.Tensor], teacher_spikes: Sequence[torch.Tensor], *,
               gamma1: float, gamma2: float, gamma3: float, beta1: float, beta2: float,
               temperature: float) -> DistillLoss:
    """Final distillation objective, eq. 32 (with eq. 31 inside)::

        L = γ1·L_b + γ2·L_sdk + γ3·L_fkd,     L_fkd = β1·L_fkd1 + β2·L_fkd2

    * ``γ1`` weighs ``L_b``, the hard-label classification loss (eq. 15). Implemented as
      the soft-max cross-entropy ``F.cross_entropy`` (mean over clips), as
      :mod:`mksgn.train` does — eq. 15 is printed in a binary cross-entropy form.
    * ``γ2`` weighs ``L_sdk``, the soft-label loss (eq. 26, :func:`soft_label_loss` at
      ``temperature``).
    * ``γ3`` weighs ``L_fkd``, the inner-layer feature loss (eq. 31), in which ``β1`` weighs
      ``L_fkd1`` (eq. 29: translated teacher layer 5 vs student layer 3) and ``β2`` weighs
      ``L_fkd2`` (eq. 30: teacher layer 8 vs student layer 5), each a
      :func:`cosine_feature_loss`.

    The paper gives no values for γ and β. Gradients reach the student (all terms) and the
    FTMs (``L_fkd``, through ``teacher_spikes``); none reach the teacher.

    Parameters
    ----------
    student_logits : Tensor ``(N, num_classes)``
    labels : LongTensor ``(N,)``, class indices
    teacher_logits : Tensor ``(N, num_classes)``
        Ensembled teacher logits ``ŷ`` (:func:`ensemble_logits`).
    student_feats : sequence of 2 Tensors
        ``(S_3, S_5)``, student spikes ``(T_s·N·M, C, T', V)`` (:func:`student_features`).
    teacher_spikes : sequence of 2 Tensors
        ``(T_Sm5, T_Sm8)``, the FTM outputs, same shapes as ``student_feats``.
    gamma1, gamma2, gamma3, beta1, beta2 : float ≥ 0
    temperature : float > 0

    Returns
    -------
    DistillLoss

    Raises
    ------
    ConfigError
        A weight negative or not finite; not exactly two feature pairs; any shape mismatch
        (from the individual losses); labels not ``(N,)``.
    """
    where = "total_loss (eq. 32)"
    g1, g2, g3, b1, b2 = (_check_number(n, v, where) for n, v in
                          (("gamma1", gamma1), ("gamma2", gamma2), ("gamma3", gamma3),
                           ("beta1", beta1), ("beta2", beta2)))
    for name, seq in (("student_feats", student_feats), ("teacher_spikes", teacher_spikes)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence) or len(seq) != 2:
            raise ConfigError(f"{where}: {name} must be a sequence of 2 tensors (layer pairs teacher 5 <-> "
                              "student 3 and teacher 8 <-> student 5, weighted by beta1 and beta2)")
    if labels.dim() != 1 or student_logits.dim() != 2 or labels.shape[0] != student_logits.shape[0]:
        raise ConfigError(f"{where}: labels {tuple(labels.shape)} must be (N,) class indices for student "
                          f"logits {tuple(student_logits.shape)} (N, num_classes)")
    hard = F.cross_entropy(student_logits, labels)
    soft = soft_label_loss(student_logits, teacher_logits, temperature)
    f1 = cosine_feature_loss(student_feats[0], teacher_spikes[0])
    f2 = cosine_feature_loss(student_feats[1], teacher_spikes[1])
    feature = b1 * f1 + b2 * f2
    return DistillLoss(g1 * hard + g2 * soft + g3 * feature, hard, soft, feature, f1, f2)


class Distiller:
    """One distillation run (eq. 25–32): the frozen 4-stream teacher, the two FTMs, the FTMs'
    own SGD optimiser (paper Table 5 "SGD/SGD") and the epoch's loss terms.

    Parameters
    ----------
    teachers : dict modality → CTR-GCN
        In eval mode with ``requires_grad`` off (:func:`mksgn.evaluate.load_teachers`).
    info : list of dict
        Each teacher's ``{"modality", "checkpoint", "sha256", "test_top1"}`` (kept in the
        student's metrics).
    mcfg : ModelConfig
        The student's (its layer 3 and 5 widths size the FTMs).
    tcfg : TrainConfig
        ``kd_*`` weights, ``kd_ftm_lr``, ``lr``, ``momentum``, ``weight_decay``, ``nesterov``.
    device : torch.device or str, optional
        Where the FTMs live (the teachers are moved by the caller).

    Attributes
    ----------
    ftms : ``ModuleList`` of the FTMs for teacher layer 5 → student layer 3 and teacher
        layer 8 → student layer 5 (eq. 27–28); built here, so they draw from torch's global
        generator.
    optimizer : SGD over the FTMs, peak rate ``kd_ftm_lr``; :meth:`set_lr` follows the
        student's warm-up and step schedule scaled by ``kd_ftm_lr / lr`` (Table 5 "decay
        rate 0.1/0.1").
    """

    TERMS = ("hard", "soft", "feature", "feature_1", "feature_2")
    """The :class:`DistillLoss` terms recorded per epoch (``loss_<term>``, mean per clip)."""

    def __init__(self, teachers: dict, info: list, mcfg: ModelConfig, tcfg, device=None):
        self.teachers, self.info, self.tcfg = teachers, info, tcfg
        c5, c8 = next(iter(teachers.values())).feature_channels
        s3, s5 = (mcfg.stages[i - 1][0] for i in STUDENT_LAYERS)
        self.ftms = nn.ModuleList([FeatureTranslation(c5, s3, mcfg), FeatureTranslation(c8, s5, mcfg)])
        if device is not None:
            self.ftms.to(device)
        self.optimizer = torch.optim.SGD(self.ftms.parameters(), lr=tcfg.kd_ftm_lr, momentum=tcfg.momentum,
                                         weight_decay=tcfg.weight_decay, nesterov=tcfg.nesterov)
        self._sums: dict = {}

    def loss(self, model, x_student, batch: dict, labels: torch.Tensor, **forward_kwargs):
        """Eq. 32 on one batch: ``(DistillLoss, student logits)``. The teacher runs under
        ``torch.no_grad()`` on each stream's modality of ``batch`` (dict modality → ``(N, C,
        T, V, M)``); ``x_student`` is the student's input; ``forward_kwargs`` go to its
        forward. Adds the batch's terms to the epoch record (:meth:`record`)."""
        with torch.no_grad():
            outs = [self.teachers[m](batch[m], return_features=True) for m in MODALITIES]
        t_logits = ensemble_logits([o[0] for o in outs], self.tcfg.kd_alphas)
        logits, feats = student_features(model, x_student, **forward_kwargs)
        spikes = [ftm([o[1][d] for o in outs]) for d, ftm in enumerate(self.ftms)]
        t = self.tcfg
        terms = total_loss(logits, labels, t_logits, feats, spikes, gamma1=t.kd_gamma1, gamma2=t.kd_gamma2,
                           gamma3=t.kd_gamma3, beta1=t.kd_beta1, beta2=t.kd_beta2,
                           temperature=t.kd_temperature)
        for k in self.TERMS:
            self._sums[k] = self._sums.get(k, 0.0) + getattr(terms, k).item() * len(labels)
        return terms, logits

    # -- the training loop's calls, in its order --------------------------------------------
    def start_epoch(self) -> None:
        """FTMs to train mode; the epoch's loss sums to zero."""
        self.ftms.train()
        self._sums = {}

    def set_lr(self, student_lr: float) -> None:
        """The FTMs' rate for a step whose student rate is ``student_lr``."""
        for g in self.optimizer.param_groups:
            g["lr"] = student_lr * self.tcfg.kd_ftm_lr / self.tcfg.lr

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()

    def record(self, clips: int) -> dict:
        """``{"loss_<term>": mean per clip}`` over the epoch's ``clips`` training clips."""
        return {f"loss_{k}": self._sums[k] / clips for k in self.TERMS}

    def metrics(self) -> dict:
        """What the student's metrics keep of this run: the teachers and the settings."""
        t = self.tcfg
        return {"teachers": self.info, "distillation": {
            "alphas": dict(zip(MODALITIES, t.kd_alphas)), "temperature": t.kd_temperature,
            "gamma1": t.kd_gamma1, "gamma2": t.kd_gamma2, "gamma3": t.kd_gamma3,
            "beta1": t.kd_beta1, "beta2": t.kd_beta2, "ftm_lr": t.kd_ftm_lr}}

    def state_dict(self) -> dict:
        """Resume state for ``last.pt``: ``ftm_state`` and ``ftm_optimizer``."""
        return {"ftm_state": {k: v.detach().clone() for k, v in self.ftms.state_dict().items()},
                "ftm_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, ckpt: dict, where: str) -> None:
        """Restore :meth:`state_dict`'s keys from a resume checkpoint ``ckpt`` (read from
        ``where``); CheckpointError when the FTM weights do not fit."""
        load_state(self.ftms, ckpt["ftm_state"], f"{where} (FTM)")
        self.optimizer.load_state_dict(ckpt["ftm_optimizer"])
