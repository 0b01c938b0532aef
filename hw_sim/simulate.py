"""The main job: export directory + real clips → Lava replay, bit-exact verdict, events, energy.

Used by ``mksgn-sim``, ``make demo`` and ``benchmarks/replay.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export.evaluate import load_export_graph
from export.pipeline import graph_input, input_modalities
from mksgn.checkpoint import atomic_write
from mksgn.data import SkeletonDataset
from mksgn.guard import number, optional_output

from .errors import SimError
from .replay import ReplayResult, replay
from .report import plot_report

__all__ = ["load_clips", "simulate", "check_clips"]


def check_clips(clips) -> int | str:
    """``--clips``: ``"all"`` or an integer >= 1 (checked before anything is read).

    Raises
    ------
    SimError
    """
    if clips == "all":
        return clips
    try:
        n = int(clips)
    except (TypeError, ValueError, OverflowError):
        raise SimError(f"--clips must be a number or 'all', got {clips!r}") from None
    if n < 1:
        raise SimError(f"--clips must be at least 1, got {n}")
    return n


def load_clips(manifest: dict, data_root, split: str, clips) -> tuple[torch.Tensor, np.ndarray]:
    """The first ``clips`` preprocessed clips of a split, in the export's modality and layout.

    Parameters
    ----------
    manifest : dict — the export's ``manifest.json``
    clips : int or "all"

    Returns
    -------
    ``(x (N, C, T, V, M) float, labels (N,) int64)``

    Raises
    ------
    SimError
        Bad clip count.
    DataError
        Data of another layout than the export.
    """
    d = manifest["data"]
    # the data must fit the export's layout (a name, or the whole layout for a user layout)
    ds = SkeletonDataset(data_root, split, d["modalities"], d.get("protocol"), train=False, progress=False,
                         layout=d["layout"])
    n = check_clips(clips)
    n = len(ds) if n == "all" else min(n, len(ds))
    items = [ds[i] for i in range(n)]
    mods = input_modalities(d)
    x = torch.stack([graph_input(it[0], mods) for it in items])
    return x, np.array([int(it[1]) for it in items], dtype=np.int64)


def simulate(export_dir, data_root, split: str = "test", clips="8", chunk: int = 4,
             timeout_s: float | None = None, report_path=None, plots_dir=None,
             progress: bool = True) -> tuple[ReplayResult, dict]:
    """Replay an export directory on real clips in Lava and compare with the twin.

    Returns
    -------
    ``(ReplayResult, report dict)`` — the report has the keys documented in
    :meth:`hw_sim.replay.ReplayResult.to_dict` plus ``export``, ``split``, ``class_names``.

    Raises
    ------
    ExportError
        Missing / tampered export directory (sha256 of every file is checked first).
    SimError
        Lava failed or got stuck, or the data does not fit the export.
    """
    number(timeout_s, "--timeout", 0, 7 * 24 * 3600, low_open=True, error=SimError)
    check_clips(clips)
    export_dir = Path(export_dir)
    graph, manifest = load_export_graph(export_dir)
    x, labels = load_clips(manifest, data_root, split, clips)
    bar = tqdm(total=len(x), desc=f"Lava replay ({split})", unit="clip", disable=not progress)
    try:
        result = replay(graph, x, labels, chunk=chunk, timeout_s=timeout_s, progress=bar.update)
    finally:
        bar.close()
    report = result.to_dict()
    report.update({"export": str(export_dir), "split": split, "class_names": list(manifest["class_names"])})
    if report_path:
        atomic_write(Path(report_path), lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    if plots_dir:  # optional: the result above stands if the plots fail (a warning on stderr)
        optional_output(lambda: plot_report(report, plots_dir), f"plots in {plots_dir}")
    return result, report
