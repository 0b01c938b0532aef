"""Evaluation of a checkpoint on a real split: top-1, per-class accuracy, confusion matrix,
and the per-layer firing-rate / FLOPs / SOPs / energy analysis (paper eq. 33–37)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .analysis import analyse
from .checkpoint import atomic_write, load_checkpoint, load_state
from .data import SkeletonDataset
from .errors import CheckpointError, ConfigError
from .models import ModelConfig, build_model
from .train import evaluate_logits, model_input

__all__ = ["load_model", "evaluate", "confusion_matrix", "plot_confusion"]


def load_model(path: str | Path):
    """Build the model of a checkpoint and load its weights (``weights_only=True``).

    Returns
    -------
    (torch.nn.Module in eval mode, checkpoint dict)

    Raises
    ------
    CheckpointError
        Missing, corrupt or foreign file, unsupported version, config or weights that do not
        match the model.
    """
    ckpt = load_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(ckpt["config"]["model"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint model config is invalid ({exc})") from None
    model = build_model(cfg)
    load_state(model, ckpt["state_dict"], path)
    model.eval()
    return model, ckpt


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(num_classes, num_classes)``: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def plot_confusion(cm: np.ndarray, class_names, path: Path, title: str) -> Path:
    """Row-normalised confusion matrix as a PNG (written atomically)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(class_names), 0.8 + 0.5 * len(class_names)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_firing_rates(analysis: dict, path: Path, title: str) -> Path:
    """Per-neuron-group firing rate (spikes / neuron / time step) as a horizontal bar PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n["name"] for n in analysis["neurons"]]
    rates = [n["firing_rate"] for n in analysis["neurons"]]
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.22 * len(names)))
    ax.barh(range(len(names)), rates, color="tab:orange")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("firing rate (spikes per neuron per time step)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def evaluate(checkpoint: str | Path, data_root: str | Path, split: str = "test",
             json_path: str | Path | None = None, plots_dir: str | Path | None = None,
             analysis_clips: int | None = None, progress: bool = True) -> dict:
    """Evaluate a checkpoint on a split of a real dataset.

    Returns
    -------
    dict with ``top1`` (percent), ``per_class`` (percent per class name), ``confusion``
    (list of rows), ``clips``, ``checkpoint``, ``split`` and ``analysis`` (per-layer firing
    rates, FLOPs, SOPs, energy in pJ and totals per clip in mJ; see :mod:`mksgn.analysis`).

    Raises
    ------
    CheckpointError, DataError
    """
    model, ckpt = load_model(checkpoint)
    d = ckpt["data"]
    dataset = SkeletonDataset(data_root, split, d["modalities"], d.get("protocol"), train=False,
                              progress=progress)
    if dataset.layout.name != d["layout"]:
        raise CheckpointError(f"{checkpoint}: trained on layout {d['layout']!r}, but {data_root} "
                              f"is {dataset.layout.name!r}")
    logits, labels = evaluate_logits(model, dataset, progress=progress, desc=f"eval {split}")
    preds = logits.argmax(1).numpy()
    labels = labels.numpy()
    names = list(ckpt["class_names"])
    cm = confusion_matrix(labels, preds, len(names))
    per_class = {n: float(100 * cm[i, i] / max(cm[i].sum(), 1)) for i, n in enumerate(names)}
    n_an = len(dataset) if analysis_clips is None else min(analysis_clips, len(dataset))
    sub = torch.utils.data.Subset(dataset, range(n_an))
    batches = (model_input(x, dataset.modalities)
               for x, _ in torch.utils.data.DataLoader(sub, batch_size=32))
    report = analyse(model, batches, model.cfg.time_steps)
    result = {
        "checkpoint": str(checkpoint), "split": split, "clips": int(len(labels)),
        "top1": float(100 * (preds == labels).mean()),
        "per_class": per_class, "confusion": cm.tolist(), "class_names": names,
        "analysis_clips": n_an, "analysis": report.to_dict(),
    }
    result["_table"] = report.format_table()
    if json_path:
        body = {k: v for k, v in result.items() if not k.startswith("_")}
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(body, indent=1)))
    if plots_dir:
        plots_dir = Path(plots_dir)
        plot_confusion(cm, names, plots_dir / "confusion.png",
                       f"{Path(checkpoint).name} on {split}: top-1 {result['top1']:.1f}%")
        plot_firing_rates(result["analysis"], plots_dir / "firing_rates.png",
                          f"{Path(checkpoint).name}: firing rates on {n_an} {split} clips")
    return result
