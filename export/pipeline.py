"""The export pipeline: checkpoint → IR → passes → quantised graph (+ calibration report)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from mksgn.data import SkeletonDataset
from mksgn.errors import MksgnError
from mksgn.preprocess import MODALITIES

from .errors import ExportError
from .frontend import from_checkpoint
from .grid import compare_grids, grid_record, scales_from_grid
from .ir import Graph
from .passes import SPLIT_KINDS, balance_delays, fold_bn, fold_fusion, fold_graph, quantise

__all__ = ["input_modalities", "graph_input", "calibration_clips", "fold_all", "lower", "export_graph",
           "default_weight_split", "check_qat_grid", "trained_scales"]


def input_modalities(data: Mapping) -> list:
    """The modalities an exported graph reads, in the order its input concatenates them.

    ``data`` is a checkpoint's / manifest's ``data`` record. One modality: that one. Several
    (the SMF four-modality MK-SGN): :data:`mksgn.preprocess.MODALITIES` order, the order in
    which :func:`export.frontend.from_model` stacks the encoders.

    Raises
    ------
    ExportError
        No modality, an unknown one, or a multi-modal record that is not all four.
    """
    mods = list(data.get("modalities") or [])
    if len(mods) == 1 and mods[0] in MODALITIES:
        return mods
    if sorted(mods) == sorted(MODALITIES):
        return list(MODALITIES)
    raise ExportError(f"data.modalities {mods} is neither one of {list(MODALITIES)} nor all four "
                      "(SMF); the checkpoint's data record is damaged")


def graph_input(sample: Mapping, modalities: Sequence[str]) -> torch.Tensor:
    """The graph's input from a dataset item or collated batch (dict modality → tensor):
    the modalities concatenated on the channel axis, ``(C, T, V, M) → (n·C, T, V, M)`` or
    ``(N, C, T, V, M) → (N, n·C, T, V, M)``. One modality: the tensor itself."""
    if len(modalities) == 1:
        return sample[modalities[0]]
    return torch.cat([sample[m] for m in modalities], dim=-4)


def calibration_clips(data_root: str | Path, modalities: str | Sequence[str], num_clips: int, seed: int = 0,
                      progress: bool = True, layout=None, protocol: str | None = None) -> torch.Tensor:
    """``num_clips`` real *training* clips (test-time preprocessing, no augmentation), chosen
    with a fixed seed spread over the split. Returns ``(N, C, T, V, M)`` — for several
    modalities their channel concatenation (:func:`graph_input`). ``layout`` / ``protocol``:
    the checkpoint's (``data.layout``, ``data.protocol``; default the data's own).

    Raises
    ------
    ExportError
        Missing or bad dataset folder, ``num_clips < 1``.
    """
    if num_clips < 1:
        raise ExportError(f"--calib-clips must be at least 1 (got {num_clips})")
    mods = [modalities] if isinstance(modalities, str) else list(modalities)
    try:
        ds = SkeletonDataset(data_root, "train", tuple(mods), protocol, train=False, layout=layout)
    except MksgnError as exc:
        raise ExportError(f"calibration data: {exc}") from None
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:num_clips].sort().values
    clips = [graph_input(ds[int(i)][0], mods) for i in tqdm(idx, desc="calibration clips", unit="clip",
                                                           disable=not progress, leave=False)]
    return torch.stack(clips)


def fold_all(graph: Graph) -> Graph:
    """The float passes in order: fold BN → fold adjacency → fold fusion → balance delays.
    The result computes what the PyTorch model computes (``run_graph(..., mode="float")``)."""
    return balance_delays(fold_fusion(fold_graph(fold_bn(graph))))


def lower(graph: Graph, calib_x: torch.Tensor, weight_split: Sequence[str] = SPLIT_KINDS) -> Graph:
    """All passes in order: :func:`fold_all`, then quantise with calibration clips ``calib_x``
    (``weight_split``: synapse kinds given a low-mantissa partner, :func:`export.passes.quantise`),
    then balance the delays again: the Lava mapping of a synapse (and so its hops) depends on
    its quantised ``weight_exp`` (:func:`export.mapping.hop_latency`)."""
    return balance_delays(quantise(fold_all(graph), calib_x, weight_split=weight_split))


def default_weight_split(ckpt: Mapping) -> tuple:
    """The export's default mapping for a checkpoint: plain 8-bit weights (``()``) when it was
    trained with quantisation-aware training (``metrics["qat"]``, :mod:`export.qat`: it learnt
    the 8-bit grid, and the split would double its synaptic events for nothing), else
    :data:`~export.passes.SPLIT_KINDS`."""
    return () if (ckpt.get("metrics") or {}).get("qat") else SPLIT_KINDS


def check_qat_grid(ckpt: Mapping, q: Graph) -> list:
    """For a QAT checkpoint: where the grid it was trained on (``metrics["qat"]["grid"]``)
    differs from the quantised graph's (:func:`export.grid.compare_grids`); ``[]`` when they
    match or the checkpoint is not a QAT one."""
    qat = (ckpt.get("metrics") or {}).get("qat")
    if not qat:
        return []
    if not isinstance(qat, Mapping) or not isinstance(qat.get("grid"), Mapping):
        return ["the checkpoint's metrics.qat has no grid record"]
    return compare_grids(qat["grid"], grid_record(q))


def trained_scales(ckpt: Mapping, checkpoint, weight_split: Sequence[str]) -> dict | None:
    """The scales to export a QAT checkpoint on: those of the grid it recorded
    (:func:`export.grid.scales_from_grid`), when it has one and it was trained with this
    ``weight_split``; None (calibrate afresh) otherwise.

    Why: QAT recalibrates at the start of an epoch and the weights move during it, so
    calibrating the final weights again may pick another power of two for a few groups (the
    first QAT run moved ``layers.2.sg_sa.lifkv`` 2¹¹ → 2¹²) and lose what QAT learnt; the
    trained grid is the one whose integer accuracy the training log reports.

    Raises
    ------
    ExportError
        A malformed grid record.
    """
    qat = (ckpt.get("metrics") or {}).get("qat")
    if not isinstance(qat, Mapping) or not isinstance(qat.get("grid"), Mapping):
        return None
    if sorted(qat["grid"].get("weight_split", [])) != sorted(weight_split):
        return None
    try:
        return scales_from_grid(qat["grid"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportError(f"{checkpoint}: metrics.qat.grid is malformed ({type(exc).__name__}: {exc}); "
                          "export with --recalibrate") from None


def export_graph(checkpoint: str | Path, calib_data: str | Path, calib_clips: int = 64,
                 progress: bool = True, weight_split: Sequence[str] | None = None,
                 recalibrate: bool = False) -> tuple[Graph, torch.Tensor]:
    """Load a checkpoint and lower it to a quantised, delay-balanced graph.

    ``weight_split`` None: :func:`default_weight_split` (plain 8-bit for a QAT checkpoint, else
    split). A QAT checkpoint is exported on the scales of the grid it was trained on
    (:func:`trained_scales`) unless ``recalibrate``; ``graph.meta["qat_grid_mismatches"]``
    lists where the trained grid and this export's differ (:func:`check_qat_grid`; ``[]``: it
    exports the grid it was trained on). The calibration clips still give the saturation
    report and the returned clips.

    Returns ``(graph, calibration clips (N, C, T, V, M))``.

    Raises
    ------
    ExportError
    """
    graph, ckpt = from_checkpoint(checkpoint)
    mods = input_modalities(ckpt["data"])
    x = calibration_clips(calib_data, mods, calib_clips, progress=progress, layout=ckpt["data"]["layout"],
                          protocol=ckpt["data"].get("protocol"))
    split = default_weight_split(ckpt) if weight_split is None else tuple(weight_split)
    scales = None if recalibrate else trained_scales(ckpt, checkpoint, split)
    if scales is None:
        q = lower(graph, x, split)
    else:
        q = balance_delays(quantise(fold_all(graph), None, weight_split=split, scales=scales))
    q.meta["calibration"] = {"clips": int(len(x)), "split": "train", "modality": "+".join(mods),
                             "scales": "calibrated" if scales is None else "trained (QAT grid)"}
    if (ckpt.get("metrics") or {}).get("qat"):
        q.meta["qat_grid_mismatches"] = check_qat_grid(ckpt, q)
    return q, x
