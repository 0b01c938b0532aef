"""Training loop for the spiking models on real skeleton clips (paper Table 5 settings).

SGD with momentum and weight decay 1e-4, learning rate 0.1 with linear warm-up and a step
schedule, dropout 0.3 (in the model head), cross-entropy (paper eq. 15, the standard
soft-max form). Seeded and resumable: ``<out>/last.pt`` holds model, optimiser and
scheduler state and is rewritten atomically after every epoch; at the end ``<out>/model.pt``
holds the weights only (the shippable checkpoint).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import git_revision, load_checkpoint, load_state, save_checkpoint
from .data import SkeletonDataset
from .errors import ConfigError
from .models import ModelConfig, build_model

__all__ = ["TrainConfig", "load_config", "train", "model_input", "evaluate_logits"]


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

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown train setting(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**d)
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


def load_config(path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """Read a JSON config ``{"model": {...}, "train": {...}}``.

    Raises
    ------
    ConfigError
        Missing file, invalid JSON, missing section, unknown key or bad value.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (see configs/ for examples)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(doc, dict) or "model" not in doc or "train" not in doc:
        raise ConfigError(f'{path}: expected an object with "model" and "train" sections')
    try:
        return ModelConfig.from_dict(doc["model"]), TrainConfig.from_dict(doc["train"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_input(batch: dict, modalities) -> torch.Tensor:
    """The model's input from a collated dataset batch: ``(N, C, T, V, M)`` for one modality."""
    if len(modalities) != 1:
        raise ConfigError("multi-modal input needs the SMF model (issue 4); use one modality")
    return batch[modalities[0]]


@torch.no_grad()
def evaluate_logits(model, dataset, batch_size: int = 32, progress: bool = True,
                    desc: str = "eval") -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``dataset``; returns logits ``(N, classes)`` and labels ``(N,)``."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outs, labels = [], []
    for x, y in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        outs.append(model(model_input(x, dataset.modalities)))
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def _payload(model, mcfg, tcfg, train_set, epoch, metrics, opt=None) -> dict:
    out = {
        "config": {"model": mcfg.to_dict(), "train": asdict(tcfg)},
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "class_names": list(train_set.class_names),
        "data": {"dataset": train_set.spec.name, "layout": train_set.layout.name,
                 "modalities": list(train_set.modalities), "window": train_set.layout.window,
                 "protocol": train_set.protocol},
        "metrics": metrics,
        "git_revision": git_revision(),
        "epoch": epoch,
    }
    if opt is not None:
        out["optimizer"] = opt.state_dict()
    return out


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


def _perturb_weights(model: torch.nn.Module, sigma: float) -> list:
    """Multiply every synaptic weight (conv, linear, per-channel affine: every module weight
    except normalisation layers') by ``1 + sigma·z`` in place (noise-aware training); returns
    ``[(parameter, clean copy)]`` for :func:`_restore_weights`. ``sigma = 0``: no-op."""
    if sigma <= 0:
        return []
    saved = []
    with torch.no_grad():
        for mod in model.modules():
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.nn.Parameter) and not isinstance(mod, torch.nn.modules.batchnorm._NormBase):
                saved.append((w, w.detach().clone()))
                w.mul_(1 + sigma * torch.randn_like(w))
    return saved


def _restore_weights(saved: list) -> None:
    with torch.no_grad():
        for w, clean in saved:
            w.copy_(clean)


def train(config_path: str | Path, data_root: str | Path, out_dir: str | Path,
          epochs: int | None = None, resume: bool = True, threads: int | None = None,
          log=print, modality: str | None = None) -> dict:
    """Train a model from a config file on a real dataset; returns the final metrics.

    Parameters
    ----------
    config_path : path of a JSON config (``configs/*.json``)
    data_root : dataset folder (e.g. ``../shared/data/nw-ucla``)
    out_dir : where ``last.pt``, ``model.pt`` and ``history.json`` go
    epochs : overrides ``train.epochs`` when given
    resume : continue from ``out_dir/last.pt`` when it exists
    threads : torch intra-op threads (default: torch's choice)
    modality : overrides ``train.modalities`` with this one modality (e.g. one CTR-GCN teacher
        stream per modality from one config)

    Raises
    ------
    ConfigError, DataError, CheckpointError
    """
    mcfg, tcfg = load_config(config_path)
    if epochs is not None:
        tcfg.epochs = epochs
    if modality is not None:
        tcfg.modalities = [modality]
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    seed_everything(tcfg.seed)
    train_set = SkeletonDataset(data_root, "train", tcfg.modalities, tcfg.protocol, seed=tcfg.seed,
                                progress=True)
    test_set = SkeletonDataset(data_root, "test", tcfg.modalities, tcfg.protocol, progress=True)
    if train_set.layout.name != mcfg.layout:
        raise ConfigError(f"{config_path}: model.layout is {mcfg.layout!r} but the data is "
                          f"{train_set.layout.name!r}")
    model = build_model(mcfg)
    opt = torch.optim.SGD(model.parameters(), lr=tcfg.lr, momentum=tcfg.momentum,
                          weight_decay=tcfg.weight_decay, nesterov=tcfg.nesterov)
    start, history = 0, []
    last = out_dir / "last.pt"
    parent = None
    if tcfg.init_from:
        init = load_checkpoint(tcfg.init_from)
        load_state(model, init["state_dict"], tcfg.init_from)
        parent = parent_summary(init, tcfg.init_from)
        log(f"initialised from {tcfg.init_from}")
    if resume and last.exists():
        ckpt = load_checkpoint(last)
        load_state(model, ckpt["state_dict"], last)
        opt.load_state_dict(ckpt["optimizer"])
        start, history = ckpt["epoch"], list(ckpt["metrics"].get("history", []))
        log(f"resuming from {last} at epoch {start}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{mcfg.arch}: {n_params:,} parameters; {len(train_set)} training / {len(test_set)} test clips")
    gen = torch.Generator().manual_seed(tcfg.seed)
    t_start = time.time()
    for epoch in range(start, tcfg.epochs):
        train_set.set_epoch(epoch)
        # per-epoch seeds (shuffle and dropout): a resumed run equals an uninterrupted one
        gen.manual_seed(tcfg.seed * 1000 + epoch)
        torch.manual_seed(tcfg.seed * 1000 + epoch)
        loader = DataLoader(train_set, batch_size=tcfg.batch_size, shuffle=True, generator=gen,
                            drop_last=True)
        model.train()
        seen = correct = 0
        loss_sum = 0.0
        t0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tcfg.epochs}", unit="batch", leave=False)
        for i, (x, y) in enumerate(bar):
            lr = tcfg.lr_at(epoch + i / len(loader))
            for g in opt.param_groups:
                g["lr"] = lr
            clean = _perturb_weights(model, tcfg.weight_noise)
            logits = model(model_input(x, tcfg.modalities))
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise ConfigError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); "
                                  "lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _restore_weights(clean)
            opt.step()
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}%",
                            sps=f"{seen / (time.time() - t0):.1f}", lr=f"{lr:.3g}")
        rec = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": 100 * correct / seen,
               "seconds": time.time() - t0, "samples_per_s": seen / (time.time() - t0)}
        if (epoch + 1) % tcfg.eval_every == 0 or epoch + 1 == tcfg.epochs:
            logits, labels = evaluate_logits(model, test_set, desc="test")
            rec["test_top1"] = 100 * (logits.argmax(1) == labels).float().mean().item()
        history.append(rec)
        log(f"epoch {epoch + 1:3d}/{tcfg.epochs}  loss {rec['train_loss']:.3f}  train {rec['train_top1']:.1f}%  "
            + (f"test {rec['test_top1']:.1f}%  " if "test_top1" in rec else "")
            + f"{rec['seconds']:.0f}s ({rec['samples_per_s']:.1f} samples/s)")
        metrics = {"history": history, "params": n_params, **({"init_from": parent} if parent else {})}
        save_checkpoint(last, _payload(model, mcfg, tcfg, train_set, epoch + 1, metrics, opt))
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    final = history[-1] if history else {}
    metrics = {"history": history, "params": n_params, "test_top1": final.get("test_top1"),
               "epochs": tcfg.epochs,
               "train_seconds": sum(h["seconds"] for h in history),
               "wall_seconds_this_run": time.time() - t_start, **({"init_from": parent} if parent else {})}
    save_checkpoint(out_dir / "model.pt", _payload(model, mcfg, tcfg, train_set, tcfg.epochs, metrics))
    log(f"wrote {out_dir / 'model.pt'} (test top-1 {final.get('test_top1', float('nan')):.2f}%)")
    return metrics
