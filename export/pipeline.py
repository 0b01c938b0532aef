"""The export pipeline: checkpoint → IR → passes → quantised graph (+ calibration report)."""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from mksgn.data import SkeletonDataset
from mksgn.errors import MksgnError

from .errors import ExportError
from .frontend import from_checkpoint
from .ir import Graph
from .passes import balance_delays, fold_bn, fold_fusion, fold_graph, quantise

__all__ = ["calibration_clips", "fold_all", "lower", "export_graph"]


def calibration_clips(data_root: str | Path, modality: str, num_clips: int, seed: int = 0,
                      progress: bool = True) -> torch.Tensor:
    """``num_clips`` real *training* clips (test-time preprocessing, no augmentation), chosen
    with a fixed seed spread over the split. Returns ``(N, C, T, V, M)``.

    Raises
    ------
    ExportError
        Missing or bad dataset folder, ``num_clips < 1``.
    """
    if num_clips < 1:
        raise ExportError(f"--calib-clips must be at least 1 (got {num_clips})")
    try:
        ds = SkeletonDataset(data_root, "train", (modality,), train=False)
    except MksgnError as exc:
        raise ExportError(f"calibration data: {exc}") from None
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:num_clips].sort().values
    clips = [ds[int(i)][0][modality] for i in tqdm(idx, desc="calibration clips", unit="clip",
                                                   disable=not progress, leave=False)]
    return torch.stack(clips)


def fold_all(graph: Graph) -> Graph:
    """The float passes in order: fold BN → fold adjacency → fold fusion → balance delays.
    The result computes what the PyTorch model computes (``run_graph(..., mode="float")``)."""
    return balance_delays(fold_fusion(fold_graph(fold_bn(graph))))


def lower(graph: Graph, calib_x: torch.Tensor) -> Graph:
    """All passes in order: :func:`fold_all`, then quantise with calibration clips ``calib_x``."""
    return quantise(fold_all(graph), calib_x)


def export_graph(checkpoint: str | Path, calib_data: str | Path, calib_clips: int = 64,
                 progress: bool = True) -> tuple[Graph, torch.Tensor]:
    """Load a checkpoint and lower it to a quantised, delay-balanced graph.

    Returns ``(graph, calibration clips (N, C, T, V, M))``.

    Raises
    ------
    ExportError
    """
    graph, ckpt = from_checkpoint(checkpoint)
    modality = ckpt["data"]["modalities"][0]
    x = calibration_clips(calib_data, modality, calib_clips, progress=progress)
    q = lower(graph, x)
    q.meta["calibration"] = {"clips": int(len(x)), "split": "train", "modality": modality}
    return q, x
