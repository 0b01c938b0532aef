"""Training loop for the spiking models on real skeleton clips (paper Table 5 settings).

SGD with momentum and weight decay 1e-4, learning rate 0.1 with linear warm-up and a step
schedule, dropout 0.3 (in the model head), cross-entropy (paper eq. 15, the standard
soft-max form). Seeded and resumable: ``<out>/last.pt`` holds model, optimiser and
scheduler state and is rewritten atomically after every epoch; at the end ``<out>/model.pt``
holds the weights only (the shippable checkpoint).

Issue 4: the four-modality MK-SGN (``model.fusion = "smf"``) trains its MINE estimators with
their own optimiser (:class:`MineTrainer`) and ships with them dropped; ``teachers``
(``mksgn-train --teacher`` × 4) switches the loss to the distillation objective of eq. 32,
the FTMs with their own SGD (:class:`mksgn.distill.Distiller`).

:func:`train` is a short loop over the parts of a run: :func:`_settings` (config and
overrides), :func:`_build` (teachers, data, model, optimisers), :func:`_initialise`
(``init_from``, ``init_encoders``), :func:`_restore` (``last.pt``), per epoch
:func:`_train_epoch` (:func:`_step` per batch), :func:`_test_and_record` and
:func:`_save_last`, and :func:`_save_final` (``model.pt``).
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import checkpoint_fusion_rule, git_revision, load_checkpoint, load_state, save_checkpoint
from . import distributed
from .config_check import check_document, check_train_values
from .data import SkeletonDataset
from .distill import DEFAULT_ALPHAS, Distiller
from .errors import ConfigError
from .evaluate import evaluate_logits, load_teachers, model_input, to_device
from .graph import layout_record
from .guard import read_json
from .models import ModelConfig, build_model
from .models.smf import FUSION_RULES
from .preprocess import MODALITIES

__all__ = ["TrainConfig", "load_config", "train", "MineTrainer", "MINE_OPTIMIZERS", "QAT_AGREE_MODES", "mutual_kl", "eval_mode_logits"]

MINE_OPTIMIZERS = ("adam", "sgd")
QAT_AGREE_MODES = ("train", "eval")
#: ``train.amp`` → autocast dtype (None: float32 throughout).
AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Optimisation settings (paper Table 5; batch and epochs reduced for a 2-core CPU).

    Attributes
    ----------
    epochs, batch_size : int
    lr : float
        Peak learning rate (0.1).
    momentum, weight_decay : float
    nesterov : bool
    lr_steps : list of int
        Epochs at which the learning rate is multiplied by ``lr_gamma``.
    lr_gamma : float
    warmup_epochs : int
        Linear warm-up from ``lr / warmup_epochs`` (CTR-GCN uses 5).
    lr_schedule : list of [epoch, lr]
        Optional piecewise-constant schedule (e.g. a warm restart after the step schedule);
        when given it replaces ``lr``/``lr_steps``/``lr_gamma`` after the warm-up.
    seed : int
    modalities : list of str
    dataset : str
        ``ucla`` or ``ntu``.
    protocol : str or None
    eval_every : int
        Evaluate on the test split every this many epochs (and at the last).
    weight_noise : float
        Noise-aware training: relative std ``σ`` of a multiplicative Gaussian perturbation
        ``w·(1 + σ·z)`` drawn afresh for every synaptic weight tensor (conv, linear,
        per-channel affine; not BN) at every training step; the gradient is taken at the
        perturbed weights and applied to the clean ones (weight-noise injection, Murray &
        Edwards 1994, IEEE TNN 5(5)). ``σ ≈ 2⁻⁸`` matches the rounding of Loihi's 8-bit
        weight mantissa. 0 switches it off.
    init_from : str or None
        Start from this checkpoint's weights (fine-tuning; same model config required). A
        relative path is taken from the working directory.
    trainable : list of str or None
        Parameter-name prefixes that are trained (e.g. ``["sc."]``: only the spiking coding,
        to adapt a trained network's encoder to another modality); every other parameter is
        frozen (``requires_grad`` off, not in the optimiser; BatchNorm running statistics
        still follow the data, :func:`freeze_except`). None trains all.

    Four-modality MK-SGN (``model.fusion = "smf"``; ``modalities`` must then be all four):

    smf_momentum : float
        Running-average momentum of the frozen fusion weights, in (0, 1]
        (:class:`mksgn.models.smf.SMF`; our rule, the paper gives none).
    mine_hidden : int
        LSTM hidden size of each MINE statistics network.
    mine_optimizer : {"adam", "sgd"}
        Optimiser of the statistics networks, which maximise the DV bounds
        (``SMF.estimator_loss``, eq. 21) separately from the network's loss; SGD uses
        ``momentum`` and no weight decay.
    mine_lr : float
        Its (constant) learning rate.
    mine_every : int ≥ 1
        Run the estimators (MI matrix, fusion-weight update, estimator step) on every
        ``mine_every``-th training batch only (batches 0, k, 2k, … of each epoch); the other
        batches fuse with the current running weights. The six LSTMs over every
        (clip, frame, joint) position are about half the cost of a four-modality step
        (1.3 of 2.5 s per batch of 16 on 2 cores), so 8 makes a step ≈ 1.75× faster; each
        estimate is unchanged, only rarer (scale ``smf_momentum`` to taste). Our setting;
        the paper estimates on every batch (default 1).
    init_encoders : dict modality → str, or None
        After ``init_from``: the spiking coding ``sc.*`` of each given single-modality MK-SGN
        checkpoint (trained or encoder-adapted on that modality; its ``data.modalities`` must
        say so) initialises that modality's encoder ``sc.encoders.<m>.*``.
    smf_init_weight : list of 4 floats ≥ 0, or None
        Starting fusion weights (MODALITIES order) instead of the ones of ``init_from``; the
        running average (``smf_momentum``) then moves them towards the rule's weights.
    smf_weights : {"share", "paper", "complement"}
        Fusion-weight rule (:func:`mksgn.models.smf.fusion_weights`). ``"share"`` (default,
        issue 16): eq. 22 alone, each modality's share of the mutual information (weights
        sum to 1, none is 0 while its bounds are positive). ``"complement"``: ``(1 − share)/3``
        (sums to 1, every weight ≥ 1/6; the modality most redundant with the others gets the
        least). ``"paper"``: eq. 22–23 as
        printed (the min–max of eq. 23 gives the least-dependent modality weight 0 on every
        batch); the rule of every run before issue 16, and of checkpoints that do not record
        one. Recorded in checkpoints (``config.train.smf_weights``, ``metrics.fusion_rule``);
        resuming a ``last.pt`` with another rule is refused.

    Distillation (eq. 25–32; on when ``teachers`` is non-empty, e.g. ``mksgn-train --teacher``):

    teachers : list of str
        The four CTR-GCN stream checkpoints (one per modality; each one's
        ``data.modalities`` says which). The CLI's ``--teacher`` replaces this list.
    kd_alphas : list of 4 floats ≥ 0
        ``α`` of eq. 25 in the stream order joint, bone, joint_motion, bone_motion. The paper
        gives no values; the default is the CTR-GCN ensemble script's (0.6, 0.6, 0.4, 0.4).
    kd_temperature : float > 0
        Softmax temperature of the soft labels (eq. 26, :func:`mksgn.distill.soft_label_loss`).
    kd_gamma1, kd_gamma2, kd_gamma3 : float ≥ 0
        ``γ`` of eq. 32 (hard label, soft label, features). Not given in the paper: 1.
    kd_beta1, kd_beta2 : float ≥ 0
        ``β`` of eq. 31 (teacher layer 5 ↔ student layer 3, teacher 8 ↔ student 5). Not
        given in the paper: 1.
    kd_ftm_lr : float > 0
        Peak learning rate of the FTMs' own SGD optimiser (Table 5: 0.1, the same as the
        student's). It follows the student's warm-up and step schedule (scaled by
        ``kd_ftm_lr / lr``; Table 5 "decay rate 0.1/0.1") with the same ``momentum``,
        ``weight_decay`` (Table 5: 1e-4) and ``nesterov``.

    device : str
        Torch device of the model, the teachers and the batches: ``"cpu"`` (default) or
        ``"cuda"`` / ``"cuda:N"`` (``mksgn-train --device`` overrides). Data loading and
        augmentation stay on the CPU; checkpoints are always written with CPU tensors.
        Under ``torchrun`` (``WORLD_SIZE > 1``) each process takes ``batch_size / world``
        clips of every global batch (:mod:`mksgn.distributed`): ``gloo`` on the CPU,
        ``nccl`` with ``cuda`` (one GPU per local rank).
    amp : {"off", "fp16", "bf16"}
        Mixed precision on CUDA (with ``mksgn-train --device cuda``): forward and loss under
        ``torch.autocast`` in that dtype; ``fp16`` scales the loss with
        ``torch.cuda.amp.GradScaler`` (its state is kept in ``last.pt``). Refused on the
        CPU, where training stays float32 (unchanged).

    Quantisation-aware training (issue 14; ``mksgn-train --qat``):

    qat : bool
        The forward pass is the export's Loihi integer twin with straight-through gradients
        (:mod:`export.qat`, handed to :func:`train` as ``forward`` by the CLI: this package
        does not import the export layer). Plain cross-entropy only (no SMF, no distillation).
    qat_calib_every : int ≥ 1
        Recalibrate the per-group current scales every this many epochs (epoch 0 always).
    qat_calib_clips : int ≥ 1
        Calibration clips (training split, ``mksgn-export``'s default 64 and seed, so the
        trained grid is the one the export computes).
    qat_float_weight : float in [0, 1]
        Loss mix ``α·CE(float logits) + (1 − α)·CE(integer logits)``: the float network (train
        mode: batch statistics, dropout) is trained alongside the integer twin so it does not
        drift from it (0: integer loss alone, the first QAT run, whose float top-1 fell 8 points;
        our rule, measured in docs/results.md). Costs one float forward per step.
    qat_agree_weight : float ≥ 0
        Weight λ of a mutual-distillation term added to the QAT loss,
        ``λ · ½ [KL(sg(p_float) ‖ p_int) + KL(sg(p_int) ‖ p_float)]`` with ``p`` the softmax of
        each network's logits and ``sg`` stop-gradient (deep mutual learning, Zhang et al.,
        CVPR 2018, eq. 1–2): it pulls the integer and float networks towards the *same*
        predictions, the float–integer gap that issue 14 bounds, instead of only towards the
        labels. 0 (default) leaves the loss as before. Needs ``qat``.
    qat_agree_mode : "train" or "eval"
        Which float forward the agreement term compares with the integer twin. ``"train"``
        (default; configs 9–10): the float forward of ``qat_float_weight`` (train mode: batch
        statistics, dropout). ``"eval"``: a second float forward in eval mode (BN on its running
        statistics, no dropout), with gradients — the float network that evaluation and the
        export see, which differs from the twin only by the integer arithmetic, so the term
        measures the disagreement the gap bound counts (measured in docs/results.md: the
        train-mode term did not close the gap). Costs one more float forward.
    """

    epochs: int = 64
    batch_size: int = 16
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    lr_steps: list = field(default_factory=lambda: [50])
    lr_gamma: float = 0.1
    warmup_epochs: int = 5
    lr_schedule: list = field(default_factory=list)
    seed: int = 1
    modalities: list = field(default_factory=lambda: ["joint"])
    dataset: str = "ucla"
    protocol: str | None = None
    eval_every: int = 1
    weight_noise: float = 0.0
    init_from: str | None = None
    trainable: list | None = None
    init_encoders: dict | None = None
    smf_init_weight: list | None = None
    smf_momentum: float = 0.1
    smf_weights: str = "share"
    mine_hidden: int = 32
    mine_optimizer: str = "adam"
    mine_lr: float = 1e-3
    mine_every: int = 1
    teachers: list = field(default_factory=list)
    kd_alphas: list = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    kd_temperature: float = 1.0
    kd_gamma1: float = 1.0
    kd_gamma2: float = 1.0
    kd_gamma3: float = 1.0
    kd_beta1: float = 1.0
    kd_beta2: float = 1.0
    kd_ftm_lr: float = 0.1
    device: str = "cpu"
    amp: str = "off"
    qat: bool = False
    qat_calib_every: int = 1
    qat_calib_clips: int = 64
    qat_float_weight: float = 0.0
    qat_agree_weight: float = 0.0
    qat_agree_mode: str = "train"

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"the train section must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown train setting(s) {unknown}; known: {sorted(known)}")
        check_train_values(d)  # types and ranges, the key named (mksgn.config_check)
        cfg = cls(**d)

        def num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not num(cfg.smf_momentum) or not 0 < cfg.smf_momentum <= 1:
            raise ConfigError(f"train.smf_momentum must be a number in (0, 1] (got {cfg.smf_momentum!r})")
        for name in ("mine_hidden", "mine_every", "qat_calib_every", "qat_calib_clips"):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"train.{name} must be an integer >= 1 (got {v!r})")
        if cfg.smf_weights not in FUSION_RULES:
            raise ConfigError(f"train.smf_weights must be one of {list(FUSION_RULES)} (got {cfg.smf_weights!r}): "
                              '"share" = eq. 22 alone (default), "paper" = eq. 22-23 as printed')
        if not isinstance(cfg.qat, bool):
            raise ConfigError(f"train.qat must be true or false (got {cfg.qat!r})")
        if not num(cfg.qat_float_weight) or not 0 <= cfg.qat_float_weight <= 1:
            raise ConfigError(f"train.qat_float_weight must be a number in [0, 1] (got {cfg.qat_float_weight!r})")
        if not num(cfg.qat_agree_weight) or cfg.qat_agree_weight < 0:
            raise ConfigError(f"train.qat_agree_weight must be a number >= 0 (got {cfg.qat_agree_weight!r})")
        if cfg.qat_agree_weight > 0 and not cfg.qat:
            raise ConfigError("train.qat_agree_weight needs train.qat: true (it ties the integer twin's predictions "
                              "to the float network's)")
        if cfg.qat_agree_mode not in QAT_AGREE_MODES:
            raise ConfigError(f"train.qat_agree_mode must be one of {list(QAT_AGREE_MODES)} "
                              f"(got {cfg.qat_agree_mode!r})")
        if cfg.mine_optimizer not in MINE_OPTIMIZERS:
            raise ConfigError(f"train.mine_optimizer must be one of {list(MINE_OPTIMIZERS)} "
                              f"(got {cfg.mine_optimizer!r})")
        for name in ("mine_lr", "kd_temperature", "kd_ftm_lr"):
            if not num(getattr(cfg, name)) or getattr(cfg, name) <= 0:
                raise ConfigError(f"train.{name} must be a number > 0 (got {getattr(cfg, name)!r})")
        for name in ("kd_gamma1", "kd_gamma2", "kd_gamma3", "kd_beta1", "kd_beta2"):
            if not num(getattr(cfg, name)) or getattr(cfg, name) < 0:
                raise ConfigError(f"train.{name} must be a number >= 0 (got {getattr(cfg, name)!r})")
        if not isinstance(cfg.kd_alphas, list) or len(cfg.kd_alphas) != len(MODALITIES) \
                or not all(num(a) and a >= 0 for a in cfg.kd_alphas):
            raise ConfigError(f"train.kd_alphas must be {len(MODALITIES)} numbers >= 0, one per teacher "
                              f"stream {list(MODALITIES)} (got {cfg.kd_alphas!r})")
        if not isinstance(cfg.teachers, list) or not all(isinstance(t, str) for t in cfg.teachers):
            raise ConfigError(f"train.teachers must be a list of checkpoint paths (got {cfg.teachers!r})")
        if cfg.trainable is not None and (not isinstance(cfg.trainable, list) or not cfg.trainable
                                          or not all(isinstance(t, str) and t for t in cfg.trainable)):
            raise ConfigError(f"train.trainable must be a non-empty list of parameter-name prefixes such as "
                              f'["sc."] (got {cfg.trainable!r})')
        if cfg.init_encoders is not None and (
                not isinstance(cfg.init_encoders, dict) or not cfg.init_encoders
                or not all(m in MODALITIES and isinstance(v, str) for m, v in cfg.init_encoders.items())):
            raise ConfigError(f"train.init_encoders must map modalities {list(MODALITIES)} to checkpoint "
                              f"paths (got {cfg.init_encoders!r})")
        if cfg.smf_init_weight is not None and (
                not isinstance(cfg.smf_init_weight, list) or len(cfg.smf_init_weight) != len(MODALITIES)
                or not all(num(w) and w >= 0 for w in cfg.smf_init_weight)):
            raise ConfigError(f"train.smf_init_weight must be {len(MODALITIES)} numbers >= 0 in the order "
                              f"{list(MODALITIES)} (got {cfg.smf_init_weight!r})")
        _device(cfg.device)  # a bad name is refused here, a missing GPU only when training starts
        if cfg.amp not in AMP_DTYPES:
            raise ConfigError(f"train.amp must be one of {list(AMP_DTYPES)} (got {cfg.amp!r})")
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
            raise ConfigError("train.epochs and train.batch_size must be ≥ 1 and train.lr > 0")
        if not 0 <= cfg.weight_noise < 1:
            raise ConfigError(f"train.weight_noise must be in [0, 1) (got {cfg.weight_noise})")
        if cfg.lr_schedule and (min(e for e, _ in cfg.lr_schedule) != 0
                                or any(lr <= 0 for _, lr in cfg.lr_schedule)):
            raise ConfigError("train.lr_schedule must start at epoch 0 and have positive rates")
        return cfg

    def lr_at(self, epoch: float) -> float:
        """Learning rate at a (fractional) epoch: linear warm-up, then step decay."""
        if self.warmup_epochs and epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / (self.warmup_epochs + 1)
        if self.lr_schedule:
            return float([lr for start, lr in sorted(self.lr_schedule) if epoch >= start][-1])
        return self.lr * self.lr_gamma ** sum(epoch >= s for s in self.lr_steps)


def _device(name) -> torch.device:
    """``train.device`` as a torch device; ConfigError unless it names the CPU or a CUDA GPU."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device must be 'cpu' or 'cuda' (or 'cuda:N'), got {name!r}")
    return dev


def _cpu(obj):
    """``obj`` (nested dicts / lists / tuples of tensors) with every tensor on the CPU, so a
    checkpoint written on a GPU loads anywhere with ``weights_only=True``; CPU tensors are
    returned as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def load_config(path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """Read a JSON config ``{"model": {...}, "train": {...}}``.

    Raises
    ------
    ConfigError
        Missing file, invalid JSON, missing section, unknown key or bad value.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found (see configs/ for examples)")
    doc = read_json(path, "a config file", error=ConfigError, hint="see configs/ for examples")
    try:
        check_document(doc)  # only model/train, num_classes fits the layout's dataset
        return ModelConfig.from_dict(doc["model"]), TrainConfig.from_dict(doc["train"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)



def _payload(model, mcfg, tcfg, train_set, epoch, metrics, opt=None, modalities=None, extra=None) -> dict:
    out = {
        "config": {"model": mcfg.to_dict(), "train": asdict(tcfg)},
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "class_names": list(train_set.class_names),
        "data": {"dataset": train_set.spec.name, "layout": layout_record(train_set.layout),
                 "modalities": list(train_set.modalities if modalities is None else modalities),
                 "window": train_set.layout.window, "protocol": train_set.protocol},
        "metrics": metrics,
        "git_revision": git_revision(),
        "epoch": epoch,
    }
    if opt is not None:
        out["optimizer"] = opt.state_dict()
    out.update(extra or {})
    return _cpu(out)


def parent_summary(ckpt: dict, path) -> dict:
    """What a fine-tuned checkpoint keeps of the one it started from (``train.init_from``):
    path, epochs, training seconds (its own and its ancestors'), final test top-1, train
    config and revision -- so its model card can state the whole recipe after the parent
    file is gone."""
    met = ckpt.get("metrics", {})
    hist = met.get("history", [])
    own = met.get("train_seconds") or sum(h.get("seconds", 0) for h in hist)
    up = met.get("init_from") or {}
    return {"checkpoint": str(path), "epochs": len(hist) + up.get("epochs", 0),
            "train_seconds": own + up.get("train_seconds", 0), "test_top1": met.get("test_top1"),
            "train": ckpt.get("config", {}).get("train", {}), "git_revision": ckpt.get("git_revision")}


def _perturb_weights(model: torch.nn.Module, sigma: float, exclude: torch.nn.Module | None = None) -> list:
    """Multiply every synaptic weight (conv, linear, per-channel affine: every module weight
    except normalisation layers') by ``1 + sigma·z`` in place (noise-aware training); returns
    ``[(parameter, clean copy)]`` for :func:`_restore_weights`. ``sigma = 0``: no-op.
    Modules inside ``exclude`` (the SMF's MINE estimators, which are never deployed) are skipped."""
    if sigma <= 0:
        return []
    skip = set() if exclude is None else {id(m) for m in exclude.modules()}
    saved = []
    with torch.no_grad():
        for mod in model.modules():
            if id(mod) in skip:
                continue
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.nn.Parameter) and not isinstance(mod, torch.nn.modules.batchnorm._NormBase):
                saved.append((w, w.detach().clone()))
                w.mul_(1 + sigma * torch.randn_like(w))
    return saved


def _restore_weights(saved: list) -> None:
    with torch.no_grad():
        for w, clean in saved:
            w.copy_(clean)


def _student_modalities(mcfg: ModelConfig, tcfg: TrainConfig, config_path) -> list:
    """``train.modalities`` checked against the model: all four (in MODALITIES order) for SMF."""
    bad = [m for m in tcfg.modalities if m not in MODALITIES]
    if bad or not tcfg.modalities:
        raise ConfigError(f"{config_path}: train.modalities {tcfg.modalities!r} has unknown modality(ies) "
                          f"{bad}; choose from {list(MODALITIES)}")
    if mcfg.fusion == "smf":
        if sorted(tcfg.modalities) != sorted(MODALITIES):
            raise ConfigError(f"{config_path}: model.fusion 'smf' needs train.modalities = all four "
                              f"{list(MODALITIES)} (each once), got {tcfg.modalities!r}")
        return list(MODALITIES)
    if len(tcfg.modalities) != 1:
        raise ConfigError(f"{config_path}: train.modalities {tcfg.modalities!r}: a single-modality model "
                          "takes one; for several set model.fusion to 'smf' (all four modalities)")
    return list(tcfg.modalities)


def smf_state_from_single(state_dict: dict, modality: str = "joint") -> dict:
    """Map a single-modality MK-SGN ``state_dict`` onto the four-modality SMF model (fine-tuning
    a 4-modality student from a trained 1-modality one, ``train.init_from``): the spiking coding
    ``sc.<p>`` initialises every encoder ``sc.encoders.<m>.<p>``; ``layers.*`` and ``head.*``
    keep their names. The fusion weights start one-hot on ``modality`` (the one the model was
    trained on), so the student starts as exactly the 1-modality model; the running average
    (``train.smf_momentum``) then moves them towards the fusion rule's. (Starting at ones would feed
    layer 1 about four times the input it was trained on: train top-1 fell to 35 %.) The MI
    estimators start fresh."""
    if modality not in MODALITIES:
        raise ConfigError(f"init_from modality {modality!r} is not one of {list(MODALITIES)}")
    out = {"sc.fusion_weight": torch.tensor([float(m == modality) for m in MODALITIES])}
    for k, v in state_dict.items():
        if k.startswith("sc."):
            for m in MODALITIES:
                out[f"sc.encoders.{m}.{k[3:]}"] = v.clone()
        else:
            out[k] = v
    return out


def freeze_except(model: torch.nn.Module, prefixes, keep=()) -> None:
    """``train.trainable``: switch ``requires_grad`` off for every parameter whose name does not
    start with one of ``prefixes``, except the parameters in ``keep`` (the SMF's MINE
    estimators, which have their own loss and optimiser and are never deployed). Frozen BatchNorms stay in train mode (batch statistics;
    their running statistics follow the new data): holding them in eval mode while dropout is
    active mis-scales their input — on a real bone batch the loss then rose step after step.
    Raises ConfigError when no parameter matches (a typo would otherwise train nothing)."""
    prefixes = tuple(prefixes)
    keep = {id(p) for p in keep}
    hit = False
    for name, p in model.named_parameters():
        if id(p) not in keep:
            p.requires_grad_(name.startswith(prefixes))
            hit |= p.requires_grad
    if not hit:
        names = sorted({n.split(".")[0] + "." for n, _ in model.named_parameters()})
        raise ConfigError(f"train.trainable {list(prefixes)} matches no parameter of the model; "
                          f"its top-level prefixes are {names}")


def load_encoders(model, encoders: dict, log=print) -> dict:
    """``train.init_encoders``: copy the spiking coding ``sc.*`` of each single-modality MK-SGN
    checkpoint into the SMF encoder of its modality; returns modality → :func:`parent_summary`
    (kept in the student's metrics for its model card). Raises ConfigError when a checkpoint
    is an SMF model or was trained on another modality, CheckpointError on a shape mismatch."""
    parents = {}
    for m, path in encoders.items():
        ck = load_checkpoint(path)
        mods = ck.get("data", {}).get("modalities") or []
        if ck.get("config", {}).get("model", {}).get("fusion", "none") != "none" or mods != [m]:
            raise ConfigError(f"train.init_encoders[{m!r}] = {path}: expected a single-modality MK-SGN "
                              f"trained on {m!r}, got modalities {mods} "
                              f"(fusion {ck.get('config', {}).get('model', {}).get('fusion', 'none')!r})")
        enc = {k[3:]: v for k, v in ck["state_dict"].items() if k.startswith("sc.")}
        load_state(model.sc.encoders[m], enc, f"{path} (spiking coding)")
        parents[m] = parent_summary(ck, path)
        log(f"encoder {m} initialised from {path}")
    return parents


def train(config_path: str | Path, data_root: str | Path, out_dir: str | Path,
          epochs: int | None = None, resume: bool = True, threads: int | None = None,
          log=print, modality: str | None = None, teachers=None, device: str | None = None, layout=None,
          forward=None) -> dict:
    """Train a model from a config file on a real dataset; returns the final metrics.

    Parameters
    ----------
    config_path : path of a JSON config (``configs/<arch>/*.json``)
    data_root : dataset folder (e.g. ``../shared/data/nw-ucla``)
    out_dir : where ``last.pt``, ``model.pt`` and ``history.json`` go
    epochs : overrides ``train.epochs`` when given
    resume : continue from ``out_dir/last.pt`` when it exists
    threads : torch intra-op threads (default: torch's choice)
    modality : overrides ``train.modalities`` with this one modality (e.g. one CTR-GCN teacher
        stream per modality from one config); refused for the four-modality model
    teachers : sequence of paths, optional
        Overrides ``train.teachers``: four CTR-GCN stream checkpoints, one per modality.
        Non-empty switches on distillation (eq. 32; :mod:`mksgn.distill`).
    device : ``"cpu"`` or ``"cuda"``, optional
        Overrides ``train.device`` (where the model, teachers and batches live).
        Started by ``torchrun`` (``WORLD_SIZE > 1``): data parallel with DDP over the
        processes, same global batch (:mod:`mksgn.distributed`); rank 0 alone writes files
        and logs.
    layout : str, optional
        Replaces ``model.layout``: a built-in name or a layout JSON file (``mksgn-train
        --layout``); the checkpoint stores the whole layout (:func:`mksgn.graph.layout_record`).
    forward : object, optional
        Replaces the model's forward in every training step (``train.qat``): called as
        ``forward(model, x) -> logits (N, classes)``, with ``start_epoch(model, epoch)``
        before each epoch, ``metrics()`` (joins the checkpoints' metrics) and
        ``state_dict()`` / ``load_state_dict(ckpt)`` (kept in ``last.pt``). The CLI passes
        :class:`export.qat.QATForward`. Given: ``train.qat`` is recorded as true.

    Four-modality MK-SGN (``model.fusion = "smf"``): the model input is the dict of the four
    modalities; the MINE statistics networks are trained by their own optimiser
    (``train.mine_optimizer``) on ``estimator_loss()`` (eq. 21), the rest of the network by
    SGD on the classification (or distillation) loss; the fusion weights are the SMF's
    running average. Every history record has ``fusion_weight`` (modality → weight at the
    end of the epoch), ``mi`` (mean over the epoch's batches of the 4×4 MI lower-bound
    matrix, nats, rows/columns in :data:`~mksgn.preprocess.MODALITIES` order) and
    ``estimator_loss``. ``last.pt`` keeps the estimators (resumable); ``model.pt`` is saved
    after :meth:`~mksgn.models.smf.SMFMKSGN.drop_estimator` (no estimator parameters; load
    with ``build_model(cfg)``, i.e. ``with_estimator=False``).

    Distillation: the training set yields all four modalities (the teacher streams'); the
    loss is :func:`mksgn.distill.total_loss` (eq. 32) with the ``kd_*`` settings; the
    student (SGD, Table 5) and the two FTMs (their own SGD, ``kd_ftm_lr``) are optimised;
    the teachers are frozen and run under ``no_grad``; the test split runs the student
    only. Teachers and FTMs are not in ``model.pt`` (``last.pt`` keeps the FTMs and their
    optimiser for resuming); ``metrics["teachers"]`` records each teacher checkpoint's
    modality, path, sha256 and test top-1. The history has ``loss_hard``, ``loss_soft``,
    ``loss_feature``, ``loss_feature_1`` and ``loss_feature_2`` per epoch.

    Raises
    ------
    ConfigError, DataError, CheckpointError
        Among others: ``train.modalities`` that do not fit the model; ``--teacher`` with not
        exactly four checkpoints, a modality missing or duplicated, a checkpoint that is not
        CTR-GCN or does not fit the student's layout/classes, a student that is not MK-SGN;
        resuming a distillation run without its teachers (or the other way round).
    """
    mcfg, tcfg, dev = _settings(config_path, epochs, modality, teachers, device, layout)
    ddp, dev = distributed.setup(dev)
    run = _build(mcfg, tcfg, dev, config_path, data_root, out_dir, threads, log if ddp.main else _quiet, ddp)
    _use_forward(run, forward)
    _initialise(run)
    _parallel(run)
    if resume:
        _restore(run)
    log(run.summary())
    t_start = time.time()
    for epoch in range(run.start, run.tcfg.epochs):
        rec = _train_epoch(run, epoch)
        _test_and_record(run, epoch, rec)
        _save_last(run, epoch + 1)
    metrics = _save_final(run, t_start)
    distributed.teardown(run.ddp)
    return metrics


def _quiet(*_args) -> None:
    """The log of ranks > 0 (rank 0 logs for the run)."""


class MineTrainer:
    """The four-modality MK-SGN's MINE statistics networks in training (eq. 21): their own
    optimiser, which batches run them, and the epoch's record.

    The statistics networks maximise the DV bounds (``estimator_loss()``, eq. 21) separately
    from the network's loss; their input spikes are detached, so the network's backward does
    not reach them. On the batches :meth:`estimates` skips, the SMF fuses with its current
    running weights.

    Parameters
    ----------
    model : SMFMKSGN
        Built with ``with_estimator=True``.
    tcfg : TrainConfig
        ``mine_optimizer`` (``"adam"``; ``"sgd"`` uses ``momentum``, no weight decay),
        ``mine_lr`` (constant), ``mine_every``, ``smf_weights`` (the rule, recorded).

    Attributes
    ----------
    optimizer : the statistics networks' optimiser.
    parents : dict modality → :func:`parent_summary` of ``train.init_encoders``, or None.
    """

    def __init__(self, model, tcfg: TrainConfig):
        self.model, self.every, self.rule = model, tcfg.mine_every, tcfg.smf_weights
        params = model.estimator_parameters()
        if tcfg.mine_optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=tcfg.mine_lr)
        else:
            self.optimizer = torch.optim.SGD(params, lr=tcfg.mine_lr, momentum=tcfg.momentum)
        self.parents = None
        self.start_epoch()

    def estimates(self, batch_index: int) -> bool:
        """True on the batches of an epoch the estimators run on: 0, k, 2k, … (k = ``mine_every``)."""
        return batch_index % self.every == 0

    def start_epoch(self) -> None:
        """The epoch's sums to zero."""
        self._loss_sum, self._mi_sum, self._mi_batches, self._clips = 0.0, None, 0, 0

    def backward(self, clips: int) -> None:
        """On an estimated batch of ``clips`` clips, after the network's forward: the
        estimators' loss (−mean of the six bounds of that forward) and its gradient; the
        batch's loss and MI matrix join the epoch's record."""
        est_loss = self.model.estimator_loss()
        self.optimizer.zero_grad(set_to_none=True)
        est_loss.backward()
        self._loss_sum += est_loss.item() * clips
        mi = self.model.sc.last_mi.detach()
        self._mi_sum = mi if self._mi_sum is None else self._mi_sum + mi
        self._mi_batches += 1
        self._clips += clips

    def step(self) -> None:
        self.optimizer.step()

    def record(self) -> dict:
        """The epoch's ``estimator_loss`` (mean per clip over the estimated batches), ``mi``
        (mean 4×4 MI lower-bound matrix, nats, :data:`~mksgn.preprocess.MODALITIES` order)
        and ``fusion_weight`` (modality → weight at the end of the epoch)."""
        return {"estimator_loss": self._loss_sum / self._clips, "mi": (self._mi_sum / self._mi_batches).tolist(),
                "fusion_weight": dict(zip(MODALITIES, self.model.fusion_weight.tolist()))}

    def metrics(self, final: bool = False) -> dict:
        """What the checkpoint's metrics keep: the modality order, the fusion rule, the
        encoders' parents, and (``final``, after ``drop_estimator``) the frozen weights."""
        out = {"fusion_modalities": list(MODALITIES), "fusion_rule": self.rule}
        if self.parents:
            out["init_encoders"] = self.parents
        if final:
            out["fusion_weight"] = dict(zip(MODALITIES, self.model.fusion_weight.tolist()))
        return out

    def state_dict(self) -> dict:
        """Resume state for ``last.pt``: ``estimator_optimizer``."""
        return {"estimator_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, ckpt: dict) -> None:
        self.optimizer.load_state_dict(ckpt["estimator_optimizer"])


@dataclass
class _Run:
    """What the parts of one training run share (built by :func:`_build`)."""

    mcfg: ModelConfig
    tcfg: TrainConfig
    config_path: str | Path
    out_dir: Path
    log: object
    dev: torch.device
    student_mods: list
    train_set: SkeletonDataset
    test_set: SkeletonDataset
    model: torch.nn.Module
    net_params: list
    opt: torch.optim.Optimizer
    mine: MineTrainer | None = None
    kd: Distiller | None = None
    forward: object = None  # quantisation-aware training: export.qat.QATForward (train's ``forward``)
    gen: torch.Generator = None
    ddp: distributed.Dist = field(default_factory=distributed.Dist)
    net: torch.nn.Module | None = None  # what a step calls: the model, or its DDP wrapper
    scaler: torch.cuda.amp.GradScaler | None = None  # train.amp = "fp16"
    start: int = 0
    history: list = field(default_factory=list)
    parent: dict | None = None

    def summary(self) -> str:
        return (f"{self.mcfg.arch}{' + SMF' if self.mine else ''}: {self.n_params:,} parameters; "
                f"{len(self.train_set)} training / {len(self.test_set)} test clips"
                + (f"; distilling from {len(self.kd.teachers)} CTR-GCN streams" if self.kd else ""))

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.net_params)

    def metrics(self, **final) -> dict:
        """The checkpoint's metrics: history, parameter count, ``final`` (model.pt's totals),
        the SMF's and distillation's records, the ``init_from`` parent."""
        return {"history": self.history, "params": self.n_params, **final,
                **(self.mine.metrics(final=bool(final)) if self.mine else {}),
                **(self.kd.metrics() if self.kd else {}),
                **(self.forward.metrics() if self.forward is not None else {}),
                **({"init_from": self.parent} if self.parent else {})}


def _settings(config_path, epochs, modality, teachers, device, layout=None) -> tuple[ModelConfig, TrainConfig,
                                                                                      torch.device]:
    """The config file with :func:`train`'s overrides applied and checked, and the device."""
    mcfg, tcfg = load_config(config_path)
    if layout is not None:  # mksgn-train --layout: replaces model.layout (a file becomes its dict)
        mcfg = replace(mcfg, layout=layout)
    if epochs is not None:
        tcfg.epochs = epochs
    if modality is not None:
        if mcfg.fusion == "smf":
            raise ConfigError(f"--modality {modality}: the four-modality MK-SGN (model.fusion 'smf') "
                              "trains on all four modalities; drop --modality")
        tcfg.modalities = [modality]
    if teachers is not None and len(teachers):
        tcfg.teachers = [str(t) for t in teachers]
    if device is not None:
        tcfg.device = device
    dev = _device(tcfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {tcfg.device!r} requested but this torch ({torch.__version__}) sees no CUDA "
                          "GPU (torch.cuda.is_available() is False); use --device cpu")
    tcfg.modalities = _student_modalities(mcfg, tcfg, config_path)
    if tcfg.teachers and mcfg.arch != "mksgn":
        raise ConfigError(f"{config_path}: distillation (--teacher) needs an MK-SGN student (model.arch "
                          f"'mksgn': its layers 3 and 5 match teacher layers 5 and 8), got {mcfg.arch!r}")
    return mcfg, tcfg, dev


def _build(mcfg: ModelConfig, tcfg: TrainConfig, dev: torch.device, config_path, data_root, out_dir, threads,
           log, ddp: distributed.Dist = distributed.Dist()) -> _Run:
    """Teachers, data, model and optimisers, in the order that fixes the random draws
    (teachers before the seed; model, then FTMs after it)."""
    smf = mcfg.fusion == "smf"
    if threads:
        torch.set_num_threads(threads)
    if tcfg.teachers:
        t_models, t_info = load_teachers(tcfg.teachers, mcfg.layout, mcfg.num_classes)
        t_models = {m: t.to(dev) for m, t in t_models.items()}
    seed_everything(tcfg.seed)
    student_mods = list(tcfg.modalities)
    data_mods = list(MODALITIES) if tcfg.teachers else student_mods
    # the data must fit the model's layout (joints, and the file's own layout if it names one)
    train_set = SkeletonDataset(data_root, "train", data_mods, tcfg.protocol, seed=tcfg.seed, progress=ddp.main,
                                layout=mcfg.layout)
    test_set = SkeletonDataset(data_root, "test", student_mods, tcfg.protocol, progress=ddp.main,
                               layout=mcfg.layout)
    if len(train_set.class_names) != mcfg.num_classes:
        raise ConfigError(f"{config_path}: model.num_classes is {mcfg.num_classes} but the data has "
                          f"{len(train_set.class_names)} classes ({train_set.class_names[0]!r}, ...); set "
                          "model.num_classes to the dataset's")
    model = build_model(mcfg, with_estimator=smf, smf_momentum=tcfg.smf_momentum,
                        estimator_hidden=tcfg.mine_hidden, smf_weights=tcfg.smf_weights).to(dev)
    if tcfg.trainable:
        freeze_except(model, tcfg.trainable, model.estimator_parameters() if smf else ())
    net_params = [p for p in (model.network_parameters() if smf else model.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(net_params, lr=tcfg.lr, momentum=tcfg.momentum,
                          weight_decay=tcfg.weight_decay, nesterov=tcfg.nesterov)
    return _Run(mcfg, tcfg, config_path, Path(out_dir), log, dev, student_mods, train_set, test_set, model,
                net_params, opt, mine=MineTrainer(model, tcfg) if smf else None,
                kd=Distiller(t_models, t_info, mcfg, tcfg, dev) if tcfg.teachers else None,
                gen=torch.Generator().manual_seed(tcfg.seed), ddp=ddp)


def _use_forward(run: _Run, forward) -> None:
    """Install a replacement forward (quantisation-aware training); ``train.qat`` without one is
    refused (the grid lives in the export layer, which this package does not import)."""
    if forward is None:
        if run.tcfg.qat:
            raise ConfigError(f"{run.config_path}: train.qat needs the export layer's QAT forward; train with "
                              "mksgn-train (or pass forward=export.qat.QATForward(...) to mksgn.train.train)")
        return
    if run.kd is not None or run.mine is not None:
        raise ConfigError(f"{run.config_path}: quantisation-aware training supports plain cross-entropy on a "
                          "single-modality MK-SGN / Base-SGN* (no SMF, no --teacher)")
    run.tcfg.qat = True
    run.forward = forward


def _parallel(run: _Run) -> None:
    """What a training step calls (:attr:`_Run.net`): the model, or under torchrun its DDP
    wrapper with global-batch BatchNorm (:func:`mksgn.distributed.wrap`); and the fp16
    GradScaler. Mixed precision and DDP cover plain cross-entropy training only."""
    tcfg = run.tcfg
    plain = run.kd is None and run.mine is None and getattr(run, "forward", None) is None
    if tcfg.amp != "off":
        if run.dev.type != "cuda":
            raise ConfigError(f"train.amp {tcfg.amp!r} needs --device cuda (on the CPU training stays float32); "
                              "set train.amp to \"off\" or train on a GPU")
        if not plain:
            raise ConfigError(f"{run.config_path}: train.amp supports plain cross-entropy training only (no "
                              "distillation, SMF or QAT)")
        if tcfg.amp == "fp16":
            run.scaler = torch.cuda.amp.GradScaler()
    distributed.check_plain(run.ddp, run.kd, run.mine, getattr(run, "forward", None), run.config_path)
    if run.ddp.active and tcfg.batch_size % run.ddp.world:
        raise ConfigError(f"{run.config_path}: train.batch_size {tcfg.batch_size} is the global batch and must be "
                          f"a multiple of the {run.ddp.world} processes")
    run.net = distributed.wrap(run.model, run.ddp, run.dev)


def _initialise(run: _Run) -> None:
    """``train.init_from`` (a single-modality parent of an SMF student fills all four
    encoders), ``init_encoders``, ``smf_init_weight``."""
    tcfg, model, smf = run.tcfg, run.model, run.mine is not None
    if tcfg.init_from:
        init = load_checkpoint(tcfg.init_from)
        init_sd = init["state_dict"]
        if smf and init.get("config", {}).get("model", {}).get("fusion", "none") == "none":
            init_sd = smf_state_from_single(init_sd, (init.get("data", {}).get("modalities") or ["joint"])[0])
            run.log(f"{tcfg.init_from} is a single-modality MK-SGN: its spiking coding initialises all "
                    "four SMF encoders, its layers and head the student's")
        load_state(model, init_sd, tcfg.init_from,
                   optional_prefixes=("sc.estimators.", "sc.fusion_weight") if smf else ())
        run.parent = parent_summary(init, tcfg.init_from)
        run.log(f"initialised from {tcfg.init_from}")
    if (tcfg.init_encoders or tcfg.smf_init_weight) and not smf:
        raise ConfigError(f"{run.config_path}: train.init_encoders / smf_init_weight need the four-modality "
                          "model (model.fusion 'smf')")
    if tcfg.init_encoders:
        run.mine.parents = load_encoders(model, tcfg.init_encoders, run.log)
    if tcfg.smf_init_weight:
        with torch.no_grad():
            model.sc.fusion_weight.copy_(torch.tensor(tcfg.smf_init_weight))


def _restore(run: _Run) -> None:
    """Continue from ``out_dir/last.pt`` when it exists: model, optimisers, FTMs, history.
    Refuses a distillation run without its teachers (or the other way round) and another
    fusion rule."""
    last = run.out_dir / "last.pt"
    if not last.exists():
        return
    ckpt = load_checkpoint(last)
    if ("ftm_state" in ckpt) != (run.kd is not None):
        raise ConfigError(f"{last}: " + ("is a distillation run; resume it with the same --teacher "
                                         "checkpoints" if "ftm_state" in ckpt else
                                         "is not a distillation run; use --no-resume or another --out "
                                         "to distil"))
    if run.mine is not None and checkpoint_fusion_rule(ckpt) != run.tcfg.smf_weights:
        raise ConfigError(f"{last}: was trained with fusion rule train.smf_weights "
                          f"{checkpoint_fusion_rule(ckpt)!r}, the config says {run.tcfg.smf_weights!r}; "
                          "resume with the same rule, or use --no-resume / another --out")
    load_state(run.model, ckpt["state_dict"], last)
    run.opt.load_state_dict(ckpt["optimizer"])
    if run.mine is not None:
        run.mine.load_state_dict(ckpt)
    if run.kd is not None:
        run.kd.load_state_dict(ckpt, str(last))
    if run.forward is not None:
        run.forward.load_state_dict(ckpt)
    if run.scaler is not None and "grad_scaler" in ckpt:
        run.scaler.load_state_dict(ckpt["grad_scaler"])
    run.start, run.history = ckpt["epoch"], list(ckpt["metrics"].get("history", []))
    run.log(f"resuming from {last} at epoch {run.start}")


def _train_epoch(run: _Run, epoch: int) -> dict:
    """One pass over the training set; returns the epoch's history record (no test top-1)."""
    tcfg = run.tcfg
    run.train_set.set_epoch(epoch)
    # per-epoch seeds (shuffle, dropout, MINE's frame permutations): a resumed run equals an
    # uninterrupted one
    run.gen.manual_seed(tcfg.seed * 1000 + epoch)
    torch.manual_seed(tcfg.seed * 1000 + epoch + distributed.RANK_SEED_STRIDE * run.ddp.rank)
    if run.ddp.active:  # this rank's share of the single-process global batches
        sampler = distributed.GlobalBatchSampler(len(run.train_set), tcfg.batch_size, run.gen, run.ddp.rank,
                                                 run.ddp.world)
        # its own generator: the loader's base-seed draw must not move the rank's dropout stream
        loader = DataLoader(run.train_set, batch_size=tcfg.batch_size // run.ddp.world, sampler=sampler,
                            drop_last=True, generator=torch.Generator())
    else:
        loader = DataLoader(run.train_set, batch_size=tcfg.batch_size, shuffle=True, generator=run.gen,
                            drop_last=True)
    run.model.train()
    for part in (run.kd, run.mine):
        if part is not None:
            part.start_epoch()
    if run.forward is not None:
        run.forward.start_epoch(run.model, epoch)
    seen = correct = 0
    loss_sum = 0.0
    t0 = time.time()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tcfg.epochs}", unit="batch", leave=False, disable=not run.ddp.main)
    for i, (x, y) in enumerate(bar):
        lr = tcfg.lr_at(epoch + i / len(loader))
        loss, logits, y = _step(run, epoch, i, lr, x, y)
        seen += len(y)
        correct += (logits.argmax(1) == y).sum().item()
        loss_sum += loss.item() * len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}%",
                        sps=f"{seen / (time.time() - t0):.1f}", lr=f"{lr:.3g}")
    seen, correct, loss_sum = distributed.all_sum(run.ddp, seen, correct, loss_sum)  # the global batches'
    rec = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": 100 * correct / seen,
           "seconds": time.time() - t0, "samples_per_s": seen / (time.time() - t0)}
    if run.kd is not None:
        rec.update(run.kd.record(seen))
    if run.mine is not None:
        rec.update(run.mine.record())
    return rec


def _step(run: _Run, epoch: int, i: int, lr: float, x, y):
    """One optimisation step on batch ``i`` (``x``: dict modality → ``(N, C, T, V, M)``, ``y``
    labels ``(N,)``) at learning rate ``lr``: the network's loss (cross-entropy, or eq. 32
    when distilling) at noise-perturbed weights, its gradient applied to the clean weights;
    the FTMs and (on estimated batches) the MINE estimators step with their own optimisers.
    Returns ``(loss, logits, y on the device)``; ConfigError when the loss is not finite."""
    model, kd, mine = run.model, run.kd, run.mine
    for g in run.opt.param_groups:
        g["lr"] = lr
    if kd is not None:
        kd.set_lr(lr)
    estimate = mine is not None and mine.estimates(i)
    forward = {"estimate": estimate} if mine is not None else {}  # SMF: run the estimators on this batch?
    clean = _perturb_weights(model, run.tcfg.weight_noise, model.sc.estimators if mine is not None else None)
    x, y = to_device(x, run.dev), y.to(run.dev)
    x_in = model_input(x, run.student_mods, run.mcfg.fusion)
    if kd is not None:
        terms, logits = kd.loss(model, x_in, x, y, **forward)
        loss = terms.total
    else:
        with _autocast(run):  # train.amp; a no-op otherwise
            net = model if run.net is None else run.net  # the DDP wrapper under torchrun
            logits = net(x_in, **forward) if run.forward is None else run.forward(model, x_in)
            loss = F.cross_entropy(logits, y)
            alpha = run.tcfg.qat_float_weight if run.forward is not None else 0.0
            agree = run.tcfg.qat_agree_weight if run.forward is not None else 0.0
            train_agree = agree > 0 and run.tcfg.qat_agree_mode == "train"
            if alpha > 0 or train_agree:  # QAT: the train-mode float network beside the integer one
                float_logits = net(x_in)
                if alpha > 0:  # train.qat_float_weight
                    loss = alpha * F.cross_entropy(float_logits, y) + (1 - alpha) * loss
            if agree > 0:  # train.qat_agree_weight, against train.qat_agree_mode's float forward
                other = float_logits if train_agree else eval_mode_logits(model, x_in)
                loss = loss + agree * mutual_kl(logits, other)
    if not torch.isfinite(loss):
        raise ConfigError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower train.lr")
    run.opt.zero_grad(set_to_none=True)
    if kd is not None:
        kd.zero_grad()
    (loss if run.scaler is None else run.scaler.scale(loss)).backward()
    if estimate:
        mine.backward(len(y))
    _restore_weights(clean)
    if run.scaler is None:
        run.opt.step()
    else:  # fp16: unscale, skip the step on inf/NaN gradients, adapt the scale
        run.scaler.step(run.opt)
        run.scaler.update()
    if kd is not None:
        kd.step()
    if estimate:
        mine.step()
    return loss, logits, y


def eval_mode_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, classes)`` of ``model`` in eval mode (BN on its running statistics, no
    dropout) *with* gradients, for ``x`` ``(N, C, T, V, M)``; the model's train/eval flags are
    restored afterwards, and no running statistic moves (``train.qat_agree_mode: "eval"``)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(x)
    finally:
        for m, was in modes:
            m.training = was


def mutual_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric mutual-distillation loss of two networks' logits ``a``, ``b`` ``(N, classes)``:
    ``½ [KL(sg(softmax a) ‖ softmax b) + KL(sg(softmax b) ‖ softmax a)]``, batch mean, nats
    (deep mutual learning, Zhang et al., CVPR 2018, eq. 1–2; ``sg`` = stop-gradient, so each
    network is pulled towards the other's current prediction). 0 when the logits agree up to a
    per-clip constant; ``train.qat_agree_weight``."""
    la, lb = F.log_softmax(a, dim=1), F.log_softmax(b, dim=1)
    return 0.5 * (F.kl_div(lb, la.detach(), reduction="batchmean", log_target=True)
                  + F.kl_div(la, lb.detach(), reduction="batchmean", log_target=True))


def _autocast(run: _Run):
    """``torch.autocast`` on the run's CUDA device in ``train.amp``'s dtype, or a null context."""
    dtype = AMP_DTYPES[run.tcfg.amp]
    return contextlib.nullcontext() if dtype is None else torch.autocast(run.dev.type, dtype=dtype)


def _test_and_record(run: _Run, epoch: int, rec: dict) -> None:
    """Test top-1 every ``eval_every`` epochs and at the last; the record joins the history
    and the log."""
    tcfg = run.tcfg
    if run.ddp.main and ((epoch + 1) % tcfg.eval_every == 0 or epoch + 1 == tcfg.epochs):  # rank 0 tests
        logits, labels = evaluate_logits(run.model, run.test_set, desc="test")
        rec["test_top1"] = 100 * (logits.argmax(1) == labels).float().mean().item()
        if run.forward is not None and hasattr(run.forward, "evaluate"):  # QAT: the integer twin's top-1
            rec["test_top1_int"] = run.forward.evaluate(run.model, run.test_set)
    run.history.append(rec)
    run.log(f"epoch {epoch + 1:3d}/{tcfg.epochs}  loss {rec['train_loss']:.3f}  train {rec['train_top1']:.1f}%  "
            + (f"test {rec['test_top1']:.1f}%  " if "test_top1" in rec else "")
            + (f"int {rec['test_top1_int']:.1f}%  " if "test_top1_int" in rec else "")
            + f"{rec['seconds']:.0f}s ({rec['samples_per_s']:.1f} samples/s)"
            + ("  fusion w " + " ".join(f"{w:.3f}" for w in rec["fusion_weight"].values()) if run.mine else ""))


def _save_last(run: _Run, epochs_done: int) -> None:
    """``last.pt`` (model, optimisers, FTMs: resumable) and ``history.json``; rank 0 only."""
    if not run.ddp.main:
        return
    extra = {} if run.scaler is None else {"grad_scaler": run.scaler.state_dict()}
    for part in (run.mine, run.kd, run.forward):
        if part is not None:
            extra.update(part.state_dict())
    save_checkpoint(run.out_dir / "last.pt", _payload(run.model, run.mcfg, run.tcfg, run.train_set, epochs_done,
                                                      run.metrics(), run.opt, run.student_mods, extra))
    (run.out_dir / "history.json").write_text(json.dumps(run.history, indent=1))


def _save_final(run: _Run, t_start: float) -> dict:
    """``model.pt``: the weights only (an SMF model without its estimators), with the final
    metrics; returns them."""
    final = run.history[-1] if run.history else {}
    if run.mine is not None:
        run.model.drop_estimator()  # the shipped model: frozen fusion weights, no estimator parameters
    metrics = run.metrics(test_top1=final.get("test_top1"), epochs=run.tcfg.epochs,
                          train_seconds=sum(h["seconds"] for h in run.history),
                          wall_seconds_this_run=time.time() - t_start)
    out = run.out_dir / "model.pt"
    if not run.ddp.main:  # rank 0 writes
        return metrics
    save_checkpoint(out, _payload(run.model, run.mcfg, run.tcfg, run.train_set, run.tcfg.epochs, metrics,
                                  modalities=run.student_mods))
    run.log(f"wrote {out} (test top-1 {final.get('test_top1', float('nan')):.2f}%)")
    return metrics
