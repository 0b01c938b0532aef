"""Checkpoints: one dict format, written atomically, read with ``weights_only=True``.

Layout (``format = "mksgn-checkpoint"``, ``version = 1``)::

    {"format", "version", "config": {"model": {...}, "train": {...}},
     "state_dict", "class_names", "data": {"dataset", "layout", "modalities", "window",
     "protocol"}, "metrics": {...}, "git_revision", "epoch",
     "optimizer"/"scheduler" (resume checkpoints only)}

``torch.load(..., weights_only=True)`` only unpickles tensors and plain containers, so a
hostile file cannot run code.
"""
from __future__ import annotations

import hashlib

import os
import subprocess
import tempfile
from pathlib import Path

import torch

from .errors import CheckpointError, MksgnError
from .graph import get_layout, layout_name

FORMAT = "mksgn-checkpoint"
VERSION = 1
REQUIRED = ("config", "state_dict", "class_names", "data")


def git_revision() -> str:
    """Short git revision of the source tree (``+dirty`` if modified), or ``"unknown"``."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path`` and rename it into place.

    A failure (or Ctrl-C) leaves ``path`` untouched and removes the temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints and exports are shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write a checkpoint dict atomically (temp file + rename), adding format and version."""
    full = {"format": FORMAT, "version": VERSION, **payload}
    return atomic_write(path, lambda tmp: torch.save(full, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint with ``torch.load(weights_only=True)``.

    Raises
    ------
    CheckpointError
        Missing file, not a torch file, not an mksgn checkpoint, unsupported version,
        or missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/hostile files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mksgn checkpoint (no format={FORMAT!r}); "
                              "expected a file written by mksgn-train")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r} is not supported "
                              f"(this mksgn reads version {VERSION}); retrain or upgrade mksgn")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    _check_contents(ckpt, path)
    return ckpt


def _check_contents(ckpt: dict, path: Path) -> None:
    """Types of the required keys, class names that fit the model, finite weights."""
    cfg, sd, names, data = ckpt["config"], ckpt["state_dict"], ckpt["class_names"], ckpt["data"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{path}: 'config' must be an object with a 'model' section")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: 'data' must be an object, got {type(data).__name__}")
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path}: 'state_dict' must map parameter names to tensors")
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: 'class_names' must be a non-empty list of strings")
    n = cfg["model"].get("num_classes")
    if isinstance(n, int) and not isinstance(n, bool) and len(names) != n:
        raise CheckpointError(f"{path}: {len(names)} class_names for a model with num_classes {n}")
    if "layout" in data and "layout" in cfg["model"]:  # the data record's layout is the model's
        try:
            same = get_layout(data["layout"]) == get_layout(cfg["model"]["layout"])
        except MksgnError as exc:
            raise CheckpointError(f"{path}: bad joint layout ({exc})") from None
        if not same:
            raise CheckpointError(f"{path}: data.layout {layout_name(data['layout'])!r} differs from the model's "
                                  f"layout {layout_name(cfg['model']['layout'])!r}; the checkpoint is damaged")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: non-finite (NaN/Inf) values in {', '.join(bad[:3])}"
                              f"{' and more' if len(bad) > 3 else ''}; the checkpoint is damaged or its "
                              "training diverged")


def load_state(model: torch.nn.Module, state_dict: dict, path: str | Path = "checkpoint",
               optional_prefixes: tuple = ()) -> None:
    """Load ``state_dict`` into ``model`` strictly, with a clear error on the first mismatch.

    ``optional_prefixes``: keys of ``model`` under these prefixes may be absent from
    ``state_dict`` (they keep their current values), e.g. ``("sc.estimators.",)`` to start
    an SMF training run from a shipped checkpoint whose MINE estimators were dropped.

    Raises
    ------
    CheckpointError
        Missing or unexpected keys, or a tensor of the wrong shape.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(tuple(optional_prefixes))]
    extra = [k for k in state_dict if k not in own]
    if missing or extra:
        raise CheckpointError(f"{path}: weights do not match the model of its config "
                              f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in own.items():
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: weight {k} has shape {tuple(state_dict[k].shape)}, the "
                                  f"model expects {tuple(v.shape)}")
    model.load_state_dict(state_dict, strict=not optional_prefixes)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (export manifests, teacher checkpoints in a
    student's metrics)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_fusion_rule(ckpt: dict) -> str | None:
    """The fusion-weight rule (``train.smf_weights``) a four-modality checkpoint was trained
    with: the recorded one, else ``"paper"`` (the only rule before issue 16); None for a
    single-modality checkpoint."""
    if ckpt.get("config", {}).get("model", {}).get("fusion", "none") != "smf":
        return None
    return (ckpt.get("metrics", {}).get("fusion_rule")
            or ckpt.get("config", {}).get("train", {}).get("smf_weights") or "paper")
