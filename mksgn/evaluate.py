"""Evaluation of a checkpoint on a real split: top-1, per-class accuracy, confusion matrix,
and the per-layer firing-rate / FLOPs / SOPs / energy analysis (paper eq. 33–37)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .analysis import analyse
from .checkpoint import atomic_write, load_checkpoint, load_state, sha256_file
from .data import SkeletonDataset
from .distill import DEFAULT_ALPHAS, ensemble_logits
from .errors import CheckpointError, ConfigError
from .guard import optional_output
from .models import ModelConfig, build_model
from .preprocess import MODALITIES

__all__ = ["load_model", "load_teachers", "evaluate", "evaluate_ensemble", "confusion_matrix",
           "plot_confusion", "model_input", "evaluate_logits", "to_device"]


def to_device(x, device: torch.device):
    """A batch (tensor, or dict modality → tensor) on ``device``; unchanged on the CPU."""
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def model_input(batch: dict, modalities, fusion: str = "none"):
    """The model's input from a collated dataset batch.

    Parameters
    ----------
    batch : dict modality → Tensor ``(N, C, T, V, M)``
    modalities : sequence of str
        The model's modalities (``train.modalities`` / the checkpoint's ``data.modalities``).
    fusion : {"none", "smf"}
        ``ModelConfig.fusion`` of the model.

    Returns
    -------
    Tensor ``(N, C, T, V, M)`` of the one modality (``fusion="none"``), or a dict of all four
    modalities (``fusion="smf"``, :class:`~mksgn.models.smf.SMFMKSGN`).

    Raises
    ------
    ConfigError
        Several modalities for a single-modality model, or not all four for the SMF model.
    """
    if fusion == "smf":
        missing = [m for m in MODALITIES if m not in modalities or m not in batch]
        if missing:
            raise ConfigError(f"the four-modality MK-SGN (model.fusion 'smf') needs all of {list(MODALITIES)}; "
                              f"missing {missing}")
        return {m: batch[m] for m in MODALITIES}
    if len(modalities) != 1:
        raise ConfigError(f"train.modalities {list(modalities)}: a single-modality model takes one; "
                          "multi-modal input needs the SMF model (model.fusion 'smf', all four modalities)")
    return batch[modalities[0]]


def _fusion(model) -> str:
    return getattr(getattr(model, "cfg", None), "fusion", "none")


@torch.no_grad()
def evaluate_logits(model, dataset, batch_size: int = 32, progress: bool = True,
                    desc: str = "eval", modalities=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``dataset``; returns logits ``(N, classes)`` and labels ``(N,)``.

    ``modalities``: the model's (default: the dataset's); the input is :func:`model_input`.
    """
    model.eval()
    device = next(model.parameters()).device  # the batches go where the model is; logits come back
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    mods = dataset.modalities if modalities is None else modalities
    outs, labels = [], []
    for x, y in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        outs.append(model(model_input(to_device(x, device), mods, _fusion(model))).cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


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
    model = build_model(cfg)  # four-modality MK-SGN: with_estimator=False, frozen fusion weights
    state = ckpt["state_dict"]
    if cfg.fusion == "smf":  # a resume file (last.pt) still holds the MINE estimators: not needed here
        state = {k: v for k, v in state.items() if not k.startswith("sc.estimators.")}
    load_state(model, state, path)
    model.eval()
    return model, ckpt


def load_teachers(paths, layout: str | None = None, num_classes: int | None = None) -> tuple[dict, list]:
    """Load the four CTR-GCN teacher streams (one checkpoint per modality) in eval mode, frozen.

    Each checkpoint's ``data.modalities`` (one modality, ``mksgn-train --modality``) says
    which stream it is.

    Parameters
    ----------
    paths : sequence of 4 paths
        Any order.
    layout, num_classes : optional
        The student's (checked against every teacher's config).

    Returns
    -------
    (dict modality → CTRGCN in :data:`~mksgn.preprocess.MODALITIES` order, ``requires_grad`` off;
    list of ``{"modality", "checkpoint", "sha256", "test_top1"}`` in the same order)

    Raises
    ------
    ConfigError
        Not exactly four paths; a checkpoint that is not CTR-GCN (``model.arch``), has not
        exactly one modality, whose modality is already taken by another (duplicate), whose
        layout/classes differ from ``layout``/``num_classes`` or from the other teachers', or
        whose feature widths differ from the others'; a modality without a teacher.
    CheckpointError
        A missing, corrupt or foreign file.
    """
    paths = [Path(p) for p in paths]
    if len(paths) != len(MODALITIES):
        raise ConfigError(f"--teacher: got {len(paths)} checkpoint(s); the 4-stream teacher needs exactly "
                          f"{len(MODALITIES)} CTR-GCN checkpoints, one per modality {list(MODALITIES)} "
                          "(train each with mksgn-train --config configs/ctrgcn/ucla_teacher.json --modality M)")
    found, ref = {}, None
    for p in paths:
        model, ckpt = load_model(p)
        mc = ckpt["config"]["model"]
        if mc.get("arch") != "ctrgcn":
            raise ConfigError(f"--teacher {p}: not a CTR-GCN checkpoint (model.arch is {mc.get('arch')!r}); "
                              "the teacher streams are CTR-GCN models (configs/ctrgcn/ucla_teacher.json)")
        mods = list(ckpt["data"].get("modalities", []))
        if len(mods) != 1 or mods[0] not in MODALITIES:
            raise ConfigError(f"--teacher {p}: a teacher stream has exactly one modality of {list(MODALITIES)}; "
                              f"this checkpoint has {mods!r}")
        m = mods[0]
        if m in found:
            raise ConfigError(f"--teacher: modality {m!r} given twice ({found[m][1]} and {p}); give one "
                              f"checkpoint per modality {list(MODALITIES)}")
        for name, want in (("layout", layout), ("num_classes", num_classes)):
            if want is not None and mc.get(name) != want:
                raise ConfigError(f"--teacher {p}: model.{name} is {mc.get(name)!r}, the student's is {want!r}")
        key = (mc.get("layout"), mc.get("num_classes"), model.feature_channels)
        if ref is not None and key != ref[0]:
            raise ConfigError(f"--teacher {p}: (layout, classes, feature widths) {key} differ from {ref[1]}'s "
                              f"{ref[0]}; train the four streams from one config")
        ref = ref or (key, p)
        for q in model.parameters():
            q.requires_grad_(False)
        found[m] = (model, p, ckpt)
    missing = [m for m in MODALITIES if m not in found]
    if missing:
        raise ConfigError(f"--teacher: no checkpoint for modality(ies) {missing}; need one per modality "
                          f"{list(MODALITIES)}")
    models = {m: found[m][0] for m in MODALITIES}
    info = [{"modality": m, "checkpoint": str(found[m][1]), "sha256": sha256_file(found[m][1]),
             "test_top1": found[m][2].get("metrics", {}).get("test_top1")} for m in MODALITIES]
    return models, info


def evaluate_ensemble(checkpoints, data_root: str | Path, split: str = "test", alphas=None,
                      json_path: str | Path | None = None, progress: bool = True) -> dict:
    """Per-stream and 4-stream ensemble top-1 of the CTR-GCN teacher (eq. 25).

    Parameters
    ----------
    checkpoints : sequence of 4 paths
        CTR-GCN stream checkpoints, one per modality (any order; see :func:`load_teachers`).
    data_root : dataset folder
    split : {"train", "test"}
    alphas : sequence of 4 floats, optional
        ``α`` of eq. 25 in the order joint, bone, joint_motion, bone_motion (default
        :data:`mksgn.distill.DEFAULT_ALPHAS`).
    json_path : optional, where to write the result as JSON

    Returns
    -------
    dict with ``streams`` (modality → ``{"checkpoint", "top1"}``), ``top1`` (the ensemble's,
    percent), ``alphas`` (modality → α), ``clips`` and ``split``.

    Raises
    ------
    ConfigError, CheckpointError, DataError
    """
    alphas = list(DEFAULT_ALPHAS if alphas is None else alphas)
    models, info = load_teachers(checkpoints)
    first = load_checkpoint(info[0]["checkpoint"])["data"]
    dataset = SkeletonDataset(data_root, split, MODALITIES, first.get("protocol"), train=False, progress=progress,
                              layout=first["layout"])  # the data must fit the checkpoint's layout
    stream_logits, streams, labels = [], {}, None
    for m, rec in zip(MODALITIES, info):
        logits, labels = evaluate_logits(models[m], dataset, progress=progress, desc=f"{m} {split}",
                                         modalities=(m,))
        stream_logits.append(logits)
        streams[m] = {"checkpoint": rec["checkpoint"],
                      "top1": float(100 * (logits.argmax(1) == labels).float().mean())}
    ens = ensemble_logits(stream_logits, alphas)
    result = {"split": split, "clips": int(len(labels)), "streams": streams,
              "alphas": dict(zip(MODALITIES, alphas)),
              "top1": float(100 * (ens.argmax(1) == labels).float().mean())}
    if json_path:
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    return result


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
                              progress=progress, layout=d["layout"])  # the data must fit the checkpoint's layout
    logits, labels = evaluate_logits(model, dataset, progress=progress, desc=f"eval {split}")
    preds = logits.argmax(1).numpy()
    labels = labels.numpy()
    names = list(ckpt["class_names"])
    cm = confusion_matrix(labels, preds, len(names))
    per_class = {n: float(100 * cm[i, i] / max(cm[i].sum(), 1)) for i, n in enumerate(names)}
    n_an = len(dataset) if analysis_clips is None else min(analysis_clips, len(dataset))
    sub = torch.utils.data.Subset(dataset, range(n_an))
    batches = (model_input(x, dataset.modalities, model.cfg.fusion)
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
    if plots_dir:  # optional outputs: a failure is a warning, the result above stands
        plots_dir = Path(plots_dir)
        optional_output(lambda: plot_confusion(cm, names, plots_dir / "confusion.png",
                                               f"{Path(checkpoint).name} on {split}: top-1 {result['top1']:.1f}%"),
                        f"{plots_dir / 'confusion.png'}")
        optional_output(lambda: plot_firing_rates(result["analysis"], plots_dir / "firing_rates.png",
                                                  f"{Path(checkpoint).name}: firing rates on {n_an} {split} clips"),
                        f"{plots_dir / 'firing_rates.png'}")
    return result
