"""Spiking Multimodal Fusion (SMF), paper eq. 16–24: MINE-weighted early fusion of the
four skeleton modalities' spike codes.

Own code: no library provides a MINE (Belghazi et al. 2018) statistics network or
Donsker–Varadhan bound for spike tensors with a folded time-step axis, so the estimator,
the bound and the fusion-weight rule are written here from the paper's text.

Pipeline (paper Fig. 2, "The spiking multimodal fusion module")::

    x[m]  (N, C, T, V, M)            one clip tensor per modality m in MODALITIES
      │  SpikingCoding_m (eq. 3–4), bodies folded into the batch as MK-SGN does
    s[m]  (T_s·N·M, C', T, V)        spikes in {0, 1}
      │  training only: MI[i, j] = DV lower bound of I(s[i]; s[j])  (eq. 16–21, six pairs)
      │                 W_batch = fusion_weights(max(MI, 0), rule)  (eq. 22, + eq. 23 for "paper")
      │                 w ← (1 − momentum)·w + momentum·W_batch     (our freezing rule)
    fused = Σ_m w[m] · s[m]          (eq. 24), (T_s·N·M, C', T, V), real-valued

Axis names: ``T_s`` spike time steps (the paper's "Times", ``ModelConfig.time_steps``),
``N`` clips, ``M`` bodies, ``B = N·M``, ``C'`` coding channels (``ModelConfig.coding_width``),
``T`` frames (a data axis, not spike time), ``V`` joints. Spike tensors keep the package's
layout ``(T_s·B, C', T, V)`` with ``T_s`` outermost (:class:`~mksgn.models.mksgn.SpikingCoding`).

Interpretations (the paper is terse; each is documented where it is used):

* The statistics network's LSTM runs over the ``T_s`` spike steps. One sequence is one
  (clip·body, frame, joint) position; its input at step ``τ`` is the two modalities'
  channel vectors concatenated (eq. 16, ``dim=1`` is the channel axis here too). The FC
  reads the last step's hidden state: one score per sequence.
* The marginal (eq. 17) shuffles the *frame* axis ``T`` of the second modality, with one
  random cyclic derangement of the frames shared by the batch. The paper shuffles "along
  the temporal dimension Times"; shuffling the ``T_s`` axis that the LSTM reads would change
  the second modality's own distribution (a direct-coded LIF train such as 0101 reordered to
  1100 is no LIF output), so the bound would report dependence even between independent
  modalities. Permuting frames only re-pairs whole spike trains: both marginals are kept
  exactly. Frames of one clip are correlated, so the bound is conservative.
* Six statistics networks, one per pair (the DV supremum is per pair).
* The MI matrix has zeros on the diagonal ("a symmetric matrix MI stacked with zeros in the
  middle"). Negative bounds are clamped to 0 before eq. 22 (MI ≥ 0, so ``max(0, lb)`` is
  still a lower bound); a batch whose clamped matrix makes the rule undefined (zero sum, or
  for ``"paper"`` all modalities equal) leaves the running weights unchanged.
* Fusion rule (:data:`FUSION_RULES`, ``train.smf_weights``): ``"share"`` (default, our
  deviation) stops after eq. 22, so each modality's weight is its share of the mutual
  information and the weights sum to 1; ``"paper"`` applies eq. 23's min–max as printed,
  which gives the least-dependent modality weight exactly 0 on every batch (on NW-UCLA the
  joint modality: final weights 0.004, 0.085, 0.963, 0.991, see :func:`fusion_weights`);
  ``"complement"`` = (1 − eq. 22)/3 gives the most redundant modality the least weight
  (measured 2.58 points below ``"share"`` with KD on NW-UCLA).
* Eq. 24 is a weighted sum of spike trains, so the fused output is real-valued, not binary;
  it is the input current of the next layer's synapses, which is where export folds ``w``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import ConfigError
from ..graph import get_layout, layout_name
from ..preprocess import MODALITIES
from .config import ModelConfig
from .mksgn import Head, SpikingCoding, mksgn_layers

__all__ = ["MineEstimator", "mi_lower_bound", "mi_matrix", "fusion_weights", "SMF", "SMFMKSGN", "PAIRS",
           "pair_key", "FUSION_RULES", "DEFAULT_RULE"]

PAIRS = tuple(itertools.combinations(MODALITIES, 2))
"""The six unordered modality pairs ``(m_i, m_j)``, ``i < j`` in :data:`MODALITIES` order."""

FUSION_RULES = ("share", "paper", "complement")
"""Fusion-weight rules of :func:`fusion_weights`: ``"share"`` = eq. 22 alone (default),
``"paper"`` = eq. 22 then eq. 23 exactly as printed, ``"complement"`` = ``(1 − eq. 22)/3``
(the modality most redundant with the others gets the least weight)."""
DEFAULT_RULE = "share"
"""The rule of new runs (``train.smf_weights``); checkpoints that do not record one used
``"paper"`` (the only rule before issue 16)."""


def _check_rule(rule, where: str) -> str:
    if rule not in FUSION_RULES:
        raise ConfigError(f"{where}: fusion rule {rule!r} is unknown; expected one of {list(FUSION_RULES)} "
                          '("share": eq. 22 alone, the default; "paper": eq. 22-23 as printed)')
    return rule


def pair_key(first: str, second: str) -> str:
    """Key of the statistics network of a pair in :attr:`SMF.estimators`: ``"first-second"``."""
    return f"{first}-{second}"


class MineEstimator(nn.Module):
    """MINE statistics network ``T_θ`` for one modality pair (eq. 16, 19–20: ``FC(LSTM(·))``).

    Parameters
    ----------
    channels : int
        ``C'``, channels of each of the two spike tensors (the LSTM sees ``2·C'``).
    time_steps : int
        ``T_s``, spike steps folded into the batch axis of the inputs; the LSTM's sequence.
    hidden : int
        LSTM hidden size.

    Shape
    -----
    ``a``, ``b``: ``(T_s·B, C', T, V)``, ``T_s`` outermost (as
    :class:`~mksgn.models.mksgn.SpikingCoding` returns them), usually spikes.
    Output: ``(B, T, V)`` scores ``T_θ(a, b)``, one per (sample, frame, joint) spike train:
    ``cat(a, b, dim=1)`` (eq. 16) read as ``B·T·V`` sequences of ``T_s`` steps with ``2·C'``
    features, LSTM, then FC on the last step's hidden state.

    Raises
    ------
    ConfigError
        If ``channels``, ``time_steps`` or ``hidden`` is not a positive integer; if ``a`` and
        ``b`` are not 4-D tensors of the same shape with ``C'`` channels and a first axis
        divisible by ``T_s``.
    """

    def __init__(self, channels: int, time_steps: int, hidden: int = 32):
        super().__init__()
        for name, value in (("channels", channels), ("time_steps", time_steps), ("hidden", hidden)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"MineEstimator: {name}={value!r} is invalid; expected an integer >= 1")
        self.channels, self.time_steps, self.hidden = channels, time_steps, hidden
        self.lstm = nn.LSTM(2 * channels, hidden)  # sequence-first: (T_s, sequences, 2C')
        self.fc = nn.Linear(hidden, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _check_pair(a, b, self.channels, self.time_steps, "MineEstimator")
        ts = self.time_steps
        x = torch.cat([a, b], dim=1)  # eq. 16: (T_s·B, 2C', T, V)
        tb, c2, t, v = x.shape
        seq = x.view(ts, tb // ts, c2, t, v).permute(0, 1, 3, 4, 2).reshape(ts, -1, c2)
        out, _ = self.lstm(seq)
        return self.fc(out[-1]).view(tb // ts, t, v)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, time_steps={self.time_steps}, hidden={self.hidden}"


def _check_pair(a, b, channels: int, time_steps: int, where: str) -> None:
    for name, z in (("a", a), ("b", b)):
        if not isinstance(z, torch.Tensor) or z.dim() != 4:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ConfigError(f"{where}: input {name} is {shape}; expected a tensor "
                              f"(T_s·B, C'={channels}, T, V) as SpikingCoding returns")
    if a.shape != b.shape or a.shape[1] != channels or a.shape[0] % time_steps:
        raise ConfigError(f"{where}: inputs have shapes {tuple(a.shape)} and {tuple(b.shape)}; "
                          f"expected two equal shapes (T_s·B, C'={channels}, T, V) with the first "
                          f"axis a multiple of T_s={time_steps}")


def _cyclic_derangement(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random permutation ``σ`` of ``range(n)`` with no fixed point (a single n-cycle)."""
    p = torch.randperm(n, generator=generator)
    sigma = torch.empty_like(p)
    sigma[p] = p.roll(-1)  # σ(p[i]) = p[i+1]
    return sigma


def mi_lower_bound(estimator: MineEstimator, a: torch.Tensor, b: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Donsker–Varadhan lower bound of the mutual information ``I(a; b)`` (eq. 16–21), nats.

    ``mi_lb = mean(T_θ(joint)) − log mean(exp(T_θ(marginal)))`` (eq. 19–21), with

    * joint samples (eq. 16): the aligned pairs ``(a, b)``;
    * marginal samples (eq. 17–18): ``(a, b')`` with ``b'[:, :, τ] = b[:, :, σ(τ)]``: the
      frame axis ``T`` of ``b`` permuted by one random cyclic derangement ``σ`` (no frame
      keeps its partner) shared by the whole batch. The ``T_s`` spike steps, channels,
      joints and samples of ``b`` are not touched, so every spike train of ``b`` is kept
      and only re-paired (see the module docstring for why not ``T_s``).

    The mean is over the ``B·T·V`` scores; ``log mean exp`` is computed as
    ``logsumexp − log(B·T·V)`` (numerically stable).

    Parameters
    ----------
    estimator : MineEstimator
        Statistics network ``T_θ`` of this pair.
    a, b : Tensor, shape ``(T_s·B, C', T, V)``
        Spike features of the two modalities, aligned sample by sample and frame by frame.
        Gradients flow to whatever requires them (detach the spikes to train ``θ`` only).
    generator : torch.Generator, optional
        CPU generator for the frame permutation (default: the global one).

    Returns
    -------
    Tensor, shape ``()``
        The bound in nats (may be negative for an untrained estimator). Maximise it
        w.r.t. ``θ`` to train the estimator.

    Raises
    ------
    ConfigError
        Bad shapes (see :class:`MineEstimator`), or fewer than 2 frames (nothing to shuffle).
    """
    _check_pair(a, b, estimator.channels, estimator.time_steps, "mi_lower_bound")
    t = a.shape[2]
    if t < 2:
        raise ConfigError(f"mi_lower_bound: inputs have {t} frame(s) (axis 2 of {tuple(a.shape)}); "
                          "the marginal shuffles frames, so at least 2 are needed")
    sigma = _cyclic_derangement(t, generator).to(b.device)
    # joint and marginal in one LSTM call: the estimator scores each frame independently
    scores = estimator(torch.cat([a, a], dim=2), torch.cat([b, b[:, :, sigma]], dim=2))
    joint, marginal = scores[:, :t].flatten(), scores[:, t:].flatten()
    return joint.mean() - (torch.logsumexp(marginal, 0) - math.log(marginal.numel()))


def mi_matrix(estimators: Mapping, spikes: Mapping, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """Pairwise MI lower bounds of the four modalities as a symmetric matrix (eq. 16–21).

    ``MI[i, j] = MI[j, i] = mi_lower_bound(estimators[pair_key(m_i, m_j)], s[m_i], s[m_j])``
    for the six pairs ``i < j`` (:data:`PAIRS`; ``m_j`` is the shuffled one), ``MI[i, i] = 0``
    (paper: "a symmetric matrix MI stacked with zeros in the middle"). Rows/columns follow
    :data:`~mksgn.preprocess.MODALITIES` (joint, bone, joint_motion, bone_motion), not the
    paper's B, J, BM, JM order of eq. 24.

    Parameters
    ----------
    estimators : mapping str → MineEstimator
        One statistics network per pair, keyed by :func:`pair_key`.
    spikes : mapping str → Tensor ``(T_s·B, C', T, V)``
        Spike features of every modality in :data:`MODALITIES`.
    generator : torch.Generator, optional
        For the frame permutations (one per pair).

    Returns
    -------
    Tensor, shape ``(4, 4)``, nats
        Differentiable w.r.t. the estimators (and the spikes unless detached).

    Raises
    ------
    ConfigError
        A modality or pair estimator is missing, or shapes are bad.
    """
    missing = [m for m in MODALITIES if m not in spikes]
    if missing:
        raise ConfigError(f"mi_matrix: no spikes for modality(ies) {missing}; "
                          f"expected all of {list(MODALITIES)}")
    missing = [pair_key(*p) for p in PAIRS if pair_key(*p) not in estimators]
    if missing:
        raise ConfigError(f"mi_matrix: no estimator for pair(s) {missing}; expected keys "
                          f"{[pair_key(*p) for p in PAIRS]}")
    ref = spikes[MODALITIES[0]]
    mi = ref.new_zeros(len(MODALITIES), len(MODALITIES))
    index = {m: i for i, m in enumerate(MODALITIES)}
    for first, second in PAIRS:
        lb = mi_lower_bound(estimators[pair_key(first, second)], spikes[first], spikes[second], generator)
        basis = torch.zeros_like(mi)
        i, j = index[first], index[second]
        basis[i, j] = basis[j, i] = 1.0
        mi = mi + lb * basis
    return mi


def fusion_weights(mi: torch.Tensor, rule: str = DEFAULT_RULE) -> torch.Tensor:
    """Fusion weights from the MI matrix: eq. 22, then (``rule="paper"``) eq. 23 as printed::

        MI_av = sum(MI, dim = 1) / sum(MI)                           (22)
        W = (MI_av − min MI_av) / (max MI_av − min MI_av)            (23, "paper" only)

    ``rule="share"`` (default, our deviation from the paper): ``W = MI_av``, each modality's
    share of the mutual information. The weights are ≥ 0 and **sum to 1**; a modality's
    weight is 0 only if every bound in its row is 0, so positive MI keeps all four. The
    fused input (eq. 24) then has the scale of one modality's spikes, the scale a
    one-modality model's layer 1 was trained on.

    ``rule="complement"`` (our alternative): ``W = (1 − MI_av) / (n − 1)`` with ``n = 4``
    modalities. Also sums to 1 and keeps every modality, but *inverts* the ranking: a
    modality that shares much information with the others (is redundant with them) gets
    less weight, one that carries information the others lack gets more. Because the MI
    matrix is symmetric with a zero diagonal, a row holds at most half of the total, so
    ``MI_av ≤ 1/2`` and every weight is ``≥ 1/6``. On the NW-UCLA shares above it gives
    (0.317, 0.306, 0.190, 0.187): the two position modalities (the stronger teacher streams,
    88.8 / 88.4 % vs 83.8 / 82.3 % for the motions) lead, the redundant motion pair follows.
    Measured (``configs/mksgn/ucla_4modal_complement.json``, the default KD recipe with only
    the rule changed): 79.53 % vs the share rule's 82.11 % top-1, so it is not the default.

    ``rule="paper"``: eq. 22–23 exactly as printed, i.e. the row shares min–max scaled to
    [0, 1]: the least informative modality always gets weight exactly 0 and the most
    informative weight 1, whatever the MI values. Measured on NW-UCLA (the interim
    four-modality run, last epoch: bounds ≤ 0.016 nats except joint motion–bone motion,
    0.13): shares (0.049, 0.083, 0.430, 0.438) → eq. 23 (0, 0.087, 0.978, 1); the running
    average of the per-batch weights froze at (0.004, 0.085, 0.963, 0.991) for joint, bone,
    joint motion, bone motion — the joint modality, on which the backbone was trained, is
    dropped.

    Parameters
    ----------
    mi : Tensor, shape ``(4, 4)``, nats
        MI matrix (:func:`mi_matrix`, clamped at 0); rows follow :data:`MODALITIES`.
    rule : {"share", "paper", "complement"}
        :data:`FUSION_RULES`.

    Returns
    -------
    Tensor, shape ``(4,)``
        ``W``, same dtype/device as ``mi``; ``W[i]`` weights modality ``MODALITIES[i]``.

    Raises
    ------
    ConfigError
        If ``mi`` is not a finite ``(4, 4)`` tensor with entries ``>= 0``; an unknown
        ``rule``; if the rule is undefined: ``sum(MI) == 0`` (both), or all ``MI_av`` equal
        (zero range of eq. 23, ``"paper"`` only; ``"share"`` then gives 1/4 each).
    """
    _check_rule(rule, "fusion_weights")
    if not isinstance(mi, torch.Tensor) or mi.shape != (len(MODALITIES), len(MODALITIES)):
        shape = tuple(mi.shape) if isinstance(mi, torch.Tensor) else type(mi).__name__
        raise ConfigError(f"fusion_weights: MI matrix is {shape}; expected a (4, 4) tensor "
                          f"over {list(MODALITIES)}")
    if not torch.isfinite(mi).all() or (mi < 0).any():
        raise ConfigError(f"fusion_weights: MI matrix {mi.tolist()} has negative or non-finite "
                          "entries; clamp the lower bounds at 0 first (MI >= 0)")
    total = mi.sum()
    if total <= 0:
        raise ConfigError("fusion_weights: sum(MI) is 0, so eq. 22 is undefined; the estimators "
                          "found no dependence — keep the previous weights")
    mi_av = mi.sum(dim=1) / total  # eq. 22
    if rule == "share":
        return mi_av
    if rule == "complement":
        return (1.0 - mi_av) / (len(MODALITIES) - 1)
    lo, hi = mi_av.min(), mi_av.max()
    if hi <= lo:
        raise ConfigError(f"fusion_weights: all MI_av are equal ({lo.item():.6g}), so eq. 23 is "
                          "undefined (zero range); keep the previous weights")
    return (mi_av - lo) / (hi - lo)  # eq. 23


def _weights_defined(mi: torch.Tensor, rule: str = DEFAULT_RULE) -> bool:
    """True when :func:`fusion_weights` is defined for the (non-negative) matrix ``mi``."""
    total = mi.sum()
    if not torch.isfinite(total) or total <= 0:
        return False
    if rule in ("share", "complement"):
        return True
    mi_av = mi.sum(dim=1) / total
    return bool(mi_av.max() > mi_av.min())


def _fold_bodies(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, T, V, M) → (N·M, C, T, V)``, body-major within a clip: the same fold as
    :meth:`mksgn.models.mksgn.SpikingGraphNet.forward` (CTR-GCN convention)."""
    n, c, t, v, m = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)


class SMF(nn.Module):
    """Spiking multimodal fusion (paper eq. 3–4 per modality, 16–24).

    Four :class:`~mksgn.models.mksgn.SpikingCoding` encoders ``SpikingCoding(cfg.in_channels,
    cfg.coding_width, cfg)`` (MK-SGN's first layer, one per modality of
    :data:`~mksgn.preprocess.MODALITIES`), fused by eq. 24 with the weights held in the
    buffer ``fusion_weight`` (shape ``(4,)``, persistent, initialised to ones = plain sum):

    ``fused = Σ_m fusion_weight[m] · s[m]``                                   (eq. 24)

    **Training mode** with the estimators (and ``forward(x, estimate=True)``, the default;
    the trainer passes False on the batches ``train.mine_every`` skips): each forward computes
    the MI matrix of the batch
    (:func:`mi_matrix` on the *detached* spikes, so gradients reach the statistics networks
    only), the batch weights ``W_batch = fusion_weights(max(MI, 0), rule)`` (eq. 22, and
    eq. 23 for ``rule="paper"``; no gradient) and updates the running weights (our rule;
    the paper is silent)::

        fusion_weight ← (1 − momentum) · fusion_weight + momentum · W_batch

    then fuses with the updated ``fusion_weight``, the same quantity eval uses. A batch whose
    clamped MI makes the rule undefined leaves ``fusion_weight`` unchanged
    (``last_batch_weights`` is then None). :meth:`estimator_loss` returns ``−mean`` of the
    six bounds of the last training forward for the caller's own optimiser.

    **Eval mode**, or after :meth:`drop_estimator`: the estimators are not run and
    ``fusion_weight`` is not changed; fusion is the fixed weighted sum (export folds the
    weights into the synapses that read the encoders' spikes).

    Parameters
    ----------
    cfg : ModelConfig
        The MK-SGN config (``in_channels``, ``coding_width``, ``time_steps``, LIF
        parameters, ``layout`` for V and M).
    momentum : float
        Running-average momentum in (0, 1] (PyTorch BatchNorm convention; 1 = last batch).
    estimator_hidden : int
        LSTM hidden size of each :class:`MineEstimator`.
    with_estimator : bool
        Build the six statistics networks (False: inference / fine-tuning with frozen
        weights; loads a state_dict saved after :meth:`drop_estimator`).
    rule : {"share", "paper", "complement"}
        Fusion-weight rule of :func:`fusion_weights` (:data:`FUSION_RULES`; default
        ``"share"``). Training only: eval fuses with the buffer whatever the rule.

    Shape
    -----
    Input: dict modality → float tensor ``(N, C, T, V, M)`` (C coordinates, metres), all
    four modalities, equal shapes (a collated :class:`~mksgn.data.SkeletonDataset` batch).
    Output: ``(T_s·N·M, C', T, V)`` real-valued (weighted sum of {0, 1} spikes), ``T_s``
    outermost then bodies folded as MK-SGN does; :meth:`encode` gives the binary spikes.

    Raises
    ------
    ConfigError
        Bad ``cfg``/``momentum``/``estimator_hidden``; input not a mapping, a modality
        missing or unknown, a tensor not ``(N, cfg.in_channels, T, V, M)`` for the layout,
        or shapes differing between modalities.
    """

    def __init__(self, cfg: ModelConfig, momentum: float = 0.1, estimator_hidden: int = 32,
                 with_estimator: bool = True, rule: str = DEFAULT_RULE):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise ConfigError(f"SMF needs a ModelConfig, got {type(cfg).__name__}; "
                              "use ModelConfig.from_dict for a dict")
        self.rule = _check_rule(rule, "SMF")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ConfigError(f"SMF: momentum={momentum!r} is invalid; expected a number in (0, 1]")
        self.cfg = cfg
        self.momentum = float(momentum)
        layout = get_layout(cfg.layout)
        self.num_joints, self.max_bodies = layout.num_joints, layout.max_bodies
        self.encoders = nn.ModuleDict(
            {m: SpikingCoding(cfg.in_channels, cfg.coding_width, cfg) for m in MODALITIES})
        estimators = None
        if with_estimator:
            estimators = nn.ModuleDict({pair_key(*p): MineEstimator(cfg.coding_width, cfg.time_steps,
                                                                   estimator_hidden) for p in PAIRS})
        self.register_module("estimators", estimators)
        self.register_buffer("fusion_weight", torch.ones(len(MODALITIES)))
        self._last_mi = None
        self.last_batch_weights = None

    # -- pieces -------------------------------------------------------------------------
    def encode(self, x: Mapping) -> dict:
        """Spike codes of the four modalities (eq. 3–4 each).

        Parameters
        ----------
        x : mapping str → Tensor ``(N, C, T, V, M)``

        Returns
        -------
        dict str → Tensor ``(T_s·N·M, C', T, V)``, values in {0, 1}

        Raises
        ------
        ConfigError
            See the class docstring.
        """
        self._check_input(x)
        return {m: self.encoders[m](_fold_bodies(x[m])) for m in MODALITIES}

    def fuse(self, spikes: Mapping) -> torch.Tensor:
        """Eq. 24 with the current ``fusion_weight``: ``Σ_m w[m]·spikes[m]``.

        ``spikes``: dict modality → ``(T_s·B, C', T, V)``; returns the same shape.
        """
        w = self.fusion_weight
        out = None
        for i, m in enumerate(MODALITIES):
            term = w[i] * spikes[m]
            out = term if out is None else out + term
        return out

    @torch.no_grad()
    def update_fusion_weight(self, mi: torch.Tensor):
        """Move ``fusion_weight`` toward ``fusion_weights(max(mi, 0), self.rule)`` by ``momentum``.

        Returns the batch weights ``(4,)``, or None (buffer unchanged) when the rule is
        undefined for the clamped matrix. Raises ConfigError for a bad ``mi`` shape.
        """
        if not isinstance(mi, torch.Tensor) or mi.shape != (len(MODALITIES), len(MODALITIES)):
            fusion_weights(mi, self.rule)  # raises the shape error
        mi = mi.detach().clamp(min=0)
        if not _weights_defined(mi, self.rule):
            self.last_batch_weights = None
            return None
        w_batch = fusion_weights(mi, self.rule).to(self.fusion_weight.dtype)
        self.fusion_weight.mul_(1.0 - self.momentum).add_(w_batch, alpha=self.momentum)
        self.last_batch_weights = w_batch
        return w_batch

    def forward(self, x: Mapping, estimate: bool = True) -> torch.Tensor:
        """Encode, (training with estimators and ``estimate``: estimate MI, update
        ``fusion_weight``), fuse.

        ``x``: dict modality → ``(N, C, T, V, M)``; returns ``(T_s·N·M, C', T, V)`` (eq. 24).
        ``estimate=False`` skips the estimators on this batch (``train.mine_every``): the
        fusion uses the current running weights and :attr:`last_mi` is None.
        Raises ConfigError for bad input (see the class docstring).
        """
        spikes = self.encode(x)
        self._last_mi = None
        if self.training and self.estimators is not None and estimate:
            self._last_mi = mi_matrix(self.estimators, {m: s.detach() for m, s in spikes.items()})
            self.update_fusion_weight(self._last_mi)
        return self.fuse(spikes)

    # -- estimator ----------------------------------------------------------------------
    @property
    def last_mi(self):
        """MI matrix ``(4, 4)`` (nats, unclamped) of the last training forward, or None."""
        return self._last_mi

    def estimator_loss(self) -> torch.Tensor:
        """Loss of the statistics networks: ``−mean`` of the six DV bounds (eq. 21, nats) of
        the last training-mode forward. Its gradient reaches only ``self.estimators``.

        Raises
        ------
        ConfigError
            If the estimators were dropped, or the last forward was not in training mode.
        """
        if self.estimators is None:
            raise ConfigError("SMF.estimator_loss: this SMF has no estimator (dropped or built "
                              "with with_estimator=False); the fusion weights are frozen")
        if self._last_mi is None:
            raise ConfigError("SMF.estimator_loss: no MI estimate; call the SMF in training mode "
                              "(model.train()) on a batch first")
        iu = torch.triu_indices(len(MODALITIES), len(MODALITIES), offset=1)
        return -self._last_mi[iu[0], iu[1]].mean()

    def drop_estimator(self) -> "SMF":
        """Remove the statistics networks (their parameters leave ``state_dict``); the
        fusion weights stay frozen in ``fusion_weight``. Returns ``self``."""
        self.estimators = None
        self._last_mi = None
        return self

    # -- checks -------------------------------------------------------------------------
    def _check_input(self, x) -> None:
        expected = f"(N, {self.cfg.in_channels}, T, {self.num_joints}, {self.max_bodies})"
        if not isinstance(x, Mapping):
            raise ConfigError(f"SMF input is a {type(x).__name__}; expected a dict modality → tensor "
                              f"{expected} with keys {list(MODALITIES)}")
        missing = [m for m in MODALITIES if m not in x]
        unknown = sorted(str(k) for k in x if k not in MODALITIES)
        if missing or unknown:
            raise ConfigError(f"SMF input has keys {sorted(map(str, x))}: missing {missing}, unknown "
                              f"{unknown}; expected exactly {list(MODALITIES)} (build the dataset with "
                              "all four modalities)")
        shape0 = None
        for m in MODALITIES:
            z = x[m]
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            if not isinstance(z, torch.Tensor) or z.dim() != 5 or z.shape[1] != self.cfg.in_channels \
                    or z.shape[3] != self.num_joints or z.shape[4] != self.max_bodies:
                raise ConfigError(f"SMF input {m!r} has shape {shape}; expected {expected} for layout "
                                  f"{layout_name(self.cfg.layout)!r}")
            if shape0 is None:
                shape0 = shape
            elif shape != shape0:
                raise ConfigError(f"SMF input {m!r} has shape {shape} but {MODALITIES[0]!r} has {shape0}; "
                                  "all modalities of a batch must have the same shape")


class SMFMKSGN(nn.Module):
    """Four-modality MK-SGN: :class:`SMF` coding stage (eq. 3–4 per modality, 16–24), then
    MK-SGN's 6 SGC-STC layers and head (eq. 5–14, Table 7) — ``ModelConfig(fusion="smf")``.

    ``fused = SMF(x)`` replaces the single spiking-coding output ``P`` of
    :class:`~mksgn.models.mksgn.MKSGN`; it is real-valued (a weighted sum of the four
    encoders' {0, 1} spikes, eq. 24) and is the input current of layer 1's synapses, whose
    neurons emit binary spikes again. Layer and head modules have the same names as in
    :class:`~mksgn.models.mksgn.MKSGN` (``layers.i``, ``head``); the encoders are
    ``sc.encoders.<modality>``, the statistics networks ``sc.estimators.<pair>``.

    Parameters
    ----------
    cfg : ModelConfig
        ``arch="mksgn"``, ``fusion="smf"``.
    with_estimator : bool
        Build the six MINE statistics networks (training). ``False`` (inference, the default
        of :func:`mksgn.models.build_model`) loads a ``state_dict`` saved after
        :meth:`drop_estimator`: the fusion weights are the frozen buffer ``sc.fusion_weight``.
    momentum : float
        Running-average momentum of the fusion weights, in (0, 1] (:class:`SMF`).
    estimator_hidden : int
        LSTM hidden size of each statistics network.
    rule : {"share", "paper", "complement"}
        Fusion-weight rule (:class:`SMF`, :func:`fusion_weights`).

    Shape
    -----
    Input: dict modality → float ``(N, C, T, V, M)`` (C coordinates in metres), all four of
    :data:`~mksgn.preprocess.MODALITIES`, equal shapes. Output: logits ``(N, num_classes)``.

    Raises
    ------
    ConfigError
        ``cfg`` not an MK-SGN config with ``fusion="smf"``; bad ``momentum`` /
        ``estimator_hidden``; at forward, bad input (see :class:`SMF`).
    """

    def __init__(self, cfg: ModelConfig, with_estimator: bool = False, momentum: float = 0.1,
                 estimator_hidden: int = 32, rule: str = DEFAULT_RULE):
        super().__init__()
        if not isinstance(cfg, ModelConfig) or cfg.arch != "mksgn" or cfg.fusion != "smf":
            got = f"arch={cfg.arch!r}, fusion={cfg.fusion!r}" if isinstance(cfg, ModelConfig) else type(cfg).__name__
            raise ConfigError(f"SMFMKSGN needs an MK-SGN ModelConfig with fusion='smf', got {got}")
        self.cfg = cfg
        layout = get_layout(cfg.layout)
        self.sc = SMF(cfg, momentum, estimator_hidden, with_estimator, rule)
        self.layers = mksgn_layers(cfg)
        self.head = Head(cfg.stages[-1][0], cfg, layout.max_bodies)

    def forward(self, x: Mapping, estimate: bool = True) -> torch.Tensor:
        """Logits ``(N, num_classes)``; ``estimate``: run the MINE estimators on this training
        batch (:meth:`SMF.forward`)."""
        h = self.sc(x, estimate)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)

    @property
    def fusion_weight(self) -> torch.Tensor:
        """The eq. 24 weights ``(4,)`` in :data:`MODALITIES` order (the SMF buffer)."""
        return self.sc.fusion_weight

    @property
    def has_estimator(self) -> bool:
        """True while the MINE statistics networks are part of the model (training)."""
        return self.sc.estimators is not None

    def estimator_parameters(self) -> list:
        """Parameters of the statistics networks (their own optimiser); ``[]`` when dropped."""
        return [] if self.sc.estimators is None else list(self.sc.estimators.parameters())

    def network_parameters(self) -> list:
        """Every parameter except the statistics networks': what the classification loss trains."""
        est = {id(p) for p in self.estimator_parameters()}
        return [p for p in self.parameters() if id(p) not in est]

    def estimator_loss(self) -> torch.Tensor:
        """:meth:`SMF.estimator_loss` (``−mean`` of the six DV bounds of the last training forward)."""
        return self.sc.estimator_loss()

    def drop_estimator(self) -> "SMFMKSGN":
        """:meth:`SMF.drop_estimator`: freeze the fusion weights, remove the estimator's
        parameters from ``state_dict``. Returns ``self``."""
        self.sc.drop_estimator()
        return self
