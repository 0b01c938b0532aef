"""Evaluate an export directory: the quantised network on real clips, in integer arithmetic.

``network.net`` (Lava target) is read back into the IR and run by the fixed-point twin;
``model.onnx`` is run by onnxruntime (equal to the twin bit for bit). Results use the same
keys as :func:`mksgn.evaluate.evaluate` (``top1`` in percent), so float and quantised top-1
are compared with one command each.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mksgn.checkpoint import atomic_write
from mksgn.data import SkeletonDataset
from mksgn.evaluate import confusion_matrix, plot_confusion
from mksgn.guard import optional_output

from .errors import ExportError
from .exporter import verified_bytes, verify_export_dir
from .pipeline import graph_input, input_modalities
from .twin import run_graph
from .writers.lava_writer import read_lava

__all__ = ["load_export_graph", "evaluate_export"]


def load_export_graph(export_dir: str | Path):
    """Verify an export directory and return ``(graph, manifest)`` from its ``network.net``.

    Raises
    ------
    ExportError
        Not an export dir, tampered files, or a target without a readable graph (NIR).
    """
    export_dir = Path(export_dir)
    manifest = verify_export_dir(export_dir)
    if manifest["target"] != "lava":
        raise ExportError(f"{export_dir}: a {manifest['target']} export has no Lava graph; "
                          "export with --target lava")
    # the bytes parsed are the bytes checked against the manifest (no swap between check and read)
    return read_lava(export_dir / "network.net", verified_bytes(export_dir, "network.net", manifest)), manifest


def _onnx_runner(export_dir: Path, manifest: dict):
    import onnxruntime as ort
    model = verified_bytes(export_dir, "model.onnx", manifest)
    try:
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for a damaged model
        raise ExportError(f"{export_dir / 'model.onnx'}: not a readable ONNX model "
                          f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})"
                          "; re-export") from None
    return lambda x: torch.from_numpy(sess.run(["logits"], {"clip": x.numpy().astype(np.float32)})[0])


def evaluate_export(export_dir: str | Path, data_root: str | Path, split: str = "test",
                    json_path=None, plots_dir=None, batch_size: int = 16, progress: bool = True) -> dict:
    """Top-1, per-class accuracy and confusion of the quantised network on a split.

    Returns
    -------
    dict with ``top1`` (percent), ``per_class``, ``confusion``, ``class_names``, ``clips``,
    ``quantised: True``, ``target``, and ``saturation`` (twin: per group counts of clipped v
    and wrapped u over the split).

    Raises
    ------
    ExportError
    """
    export_dir = Path(export_dir)
    manifest = verify_export_dir(export_dir)
    target = manifest["target"]
    if target == "lava":
        graph, _ = load_export_graph(export_dir)
        runner = None
    elif target == "onnx":
        runner = _onnx_runner(export_dir, manifest)
    else:
        raise ExportError(f"{export_dir}: NIR exports are float and continuous-time; evaluate the "
                          "lava or onnx export (or the checkpoint)")
    d = manifest["data"]
    mods = input_modalities(d)
    ds = SkeletonDataset(data_root, split, d["modalities"], d.get("protocol"), train=False, progress=progress,
                         layout=d["layout"])  # the data must fit the export's layout
    preds, labels = [], []
    saturation = {}
    for x, y in tqdm(DataLoader(ds, batch_size=batch_size), desc=f"quantised eval {split}", unit="batch",
                     disable=not progress, leave=False):
        clip = graph_input(x, mods)
        if runner is None:
            r = run_graph(graph, clip, mode="int")
            logits = r.logits
            for name, counts in r.saturation.items():
                acc = saturation.setdefault(name, {k: 0 for k in counts})
                for k, v in counts.items():
                    acc[k] += v
        else:
            logits = runner(clip)
        preds.append(logits.argmax(1))
        labels.append(y)
    preds, labels = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    names = list(manifest["class_names"])
    cm = confusion_matrix(labels, preds, len(names))
    result = {"export": str(export_dir), "target": target, "quantised": True, "split": split,
              "clips": int(len(labels)), "top1": float(100 * (preds == labels).mean()),
              "per_class": {n: float(100 * cm[i, i] / max(cm[i].sum(), 1)) for i, n in enumerate(names)},
              "confusion": cm.tolist(), "class_names": names,
              "saturation": {k: v for k, v in saturation.items() if any(v.values())}}
    if json_path:
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    if plots_dir:  # optional: a failure is a warning, the result above stands
        optional_output(lambda: plot_confusion(cm, names, Path(plots_dir) / "confusion.png",
                                               f"{export_dir.name} (quantised) on {split}: "
                                               f"top-1 {result['top1']:.1f}%"), f"{plots_dir}/confusion.png")
    return result
