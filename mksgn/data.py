"""Dataset folders, standard splits and the torch ``Dataset`` of preprocessed modalities.

Scan policy (documented, never silent): files whose *name* does not follow the dataset's
pattern are skipped and reported (``ScanResult.skipped``); files that fail to *parse* raise
:class:`DataError` unless ``on_error="skip"``, in which case they are reported too. The
command line prints the number skipped and the first few reasons.

Splits:

* NW-UCLA (Wang et al., CVPR 2014; CTR-GCN protocol): train = views v01 + v02 (1,020
  clips), test = view v03 (464 clips).
* NTU RGB+D (Shahroudy et al., CVPR 2016): cross-subject (``xsub``) trains on performers
  1, 2, 4, 5, 8, 9, 13–19, 25, 27, 28, 31, 34, 35, 38; cross-view (``xview``) trains on
  cameras 2 and 3 and tests on camera 1. A folder with an action above A060 is NTU-120
  (120 class names), else NTU-60.
* Whole-dataset files (:mod:`mksgn.annotations`): a pyskl ``.pkl`` or an ``.npz`` names its
  own splits (``<protocol>_train`` / ``<protocol>_val``, or ``train`` / ``val``).

The joint layout is the dataset's (folders: NW-UCLA ``ucla20``, NTU ``ntu25``; files: the
``.npz``'s own or the built-in with the file's joint count) unless the caller gives one (the
model's, from its config, checkpoint or export): then the data must fit it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .annotations import COLLECTION_SUFFIXES, Collection, read_collection, resolve_layout
from .errors import DataError
from .graph import Layout, get_layout
from .io import Clip, NTU120_CLASS_NAMES, UCLA_CLASS_NAMES, parse_ntu_name, parse_ucla_name, read_clip
from .preprocess import MODALITIES, preprocess

__all__ = ["DatasetSpec", "SPECS", "ScanResult", "scan", "load_clips", "in_split",
           "SkeletonDataset", "detect_dataset"]

NTU_XSUB_TRAIN = frozenset({1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38})
NTU_XVIEW_TRAIN = frozenset({2, 3})


@dataclass(frozen=True)
class DatasetSpec:
    """What distinguishes a dataset: file suffix, name parser, layout, class names, protocols."""

    name: str
    suffix: str
    layout: str
    class_names: tuple
    protocols: tuple
    default_protocol: str

    def parse_name(self, path: Path) -> dict:
        return parse_ucla_name(path) if self.name == "ucla" else parse_ntu_name(path)


SPECS = {
    "ucla": DatasetSpec("ucla", ".json", "ucla20", UCLA_CLASS_NAMES, ("view3",), "view3"),
    "ntu": DatasetSpec("ntu", ".skeleton", "ntu25", NTU120_CLASS_NAMES, ("xsub", "xview"), "xsub"),
}


def in_split(spec: DatasetSpec, ids: dict, split: str, protocol: str) -> bool:
    """True if a clip with the file-name ids belongs to ``split`` (``train``/``test``) under
    ``protocol`` (``view3`` for NW-UCLA; ``xsub`` or ``xview`` for NTU RGB+D).

    Raises
    ------
    DataError
        Unknown split or protocol.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; choose train or test")
    if protocol not in spec.protocols:
        raise DataError(f"unknown protocol {protocol!r} for {spec.name}; choose from {spec.protocols}")
    if protocol == "view3":
        train = ids["view"] in (1, 2)
    elif protocol == "xsub":
        train = ids["performer"] in NTU_XSUB_TRAIN
    else:
        train = ids["camera"] in NTU_XVIEW_TRAIN
    return train == (split == "train")


def detect_dataset(root: str | Path) -> tuple[DatasetSpec, Path]:
    """Find the dataset kind and the folder holding the clip files.

    Accepts the NW-UCLA folder or its ``all_sqe`` subfolder, or a folder of NTU ``.skeleton``
    files.

    Raises
    ------
    DataError
        Missing folder, or a folder with neither ``.json`` nor ``.skeleton`` files.
    """
    root = Path(root)
    if not root.exists():
        raise DataError("dataset folder not found; pass the NW-UCLA folder (with all_sqe/) "
                        "or a folder of NTU .skeleton files, e.g. ../shared/data/nw-ucla", root)
    if not root.is_dir():
        raise DataError("expected a dataset folder, a pyskl .pkl or an .npz, got another file (use "
                        "`mksgn-data show` for one clip file)", root)
    if (root / "all_sqe").is_dir():
        root = root / "all_sqe"
    for spec in SPECS.values():
        if any(root.glob("*" + spec.suffix)):
            return spec, root
    raise DataError("no .json (NW-UCLA) or .skeleton (NTU RGB+D) files in this folder", root)


@dataclass
class ScanResult:
    """Files of a dataset folder: ``files`` with their ids, ``skipped`` as ``(path, reason)``."""

    spec: DatasetSpec
    folder: Path
    files: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


def scan(root: str | Path) -> ScanResult:
    """List the clip files of a dataset folder, sorted by name, with their file-name ids.

    Files whose name does not match the pattern are skipped and listed in ``skipped``.
    """
    spec, folder = detect_dataset(root)
    result = ScanResult(spec, folder)
    for path in sorted(folder.glob("*" + spec.suffix)):
        try:
            result.files.append((path, spec.parse_name(path)))
        except DataError as exc:
            result.skipped.append((path, str(exc)))
    return result


def load_clips(root: str | Path, split: str | None = None, protocol: str | None = None,
               on_error: str = "raise", progress: bool = False) -> tuple[list[Clip], ScanResult]:
    """Read every clip of a split (or all clips when ``split`` is None).

    Parameters
    ----------
    root : str or Path
    split : {"train", "test", None}
    protocol : str, optional
        Defaults to the dataset's standard protocol (NW-UCLA ``view3``, NTU ``xsub``).
    on_error : {"raise", "skip"}
        What a file that fails to parse does: raise its :class:`DataError`, or be skipped
        and recorded in ``ScanResult.skipped``.
    progress : bool
        Show a progress bar.

    Returns
    -------
    (list of Clip, ScanResult)

    Raises
    ------
    DataError
    """
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    result = scan(root)
    protocol = protocol or result.spec.default_protocol
    files = [(p, ids) for p, ids in result.files
             if split is None or in_split(result.spec, ids, split, protocol)]
    clips = []
    for path, _ in tqdm(files, desc=f"reading {split or 'all'}", unit="clip", disable=not progress,
                        leave=False):
        try:
            clips.append(read_clip(path))
        except DataError as exc:
            if on_error == "raise":
                raise
            result.skipped.append((path, str(exc)))
    return clips, result


class SkeletonDataset(Dataset):
    """Preprocessed clips of one split, yielding the requested modalities.

    Items are ``(x, label)`` with ``x`` a dict modality → float32 tensor ``(C=3, T, V, M)``
    (T = layout window: NTU RGB+D 64, NW-UCLA 52) and ``label`` an int. Random crop and
    rotation apply when ``train`` is True; their randomness is derived from
    ``(seed, epoch, index)`` only, so an item is the same whatever the worker, order or
    process (call :meth:`set_epoch` each epoch).

    Parameters
    ----------
    root : str or Path
        NW-UCLA folder (or its ``all_sqe``), a folder of NTU ``.skeleton`` files, a pyskl
        ``.pkl`` or an ``.npz`` (:mod:`mksgn.annotations`).
    split : {"train", "test"}
    modalities : sequence of str
        Subset of ``joint``, ``bone``, ``joint_motion``, ``bone_motion``.
    protocol : str, optional
        NW-UCLA ``view3``; NTU ``xsub`` (default) or ``xview``; a file's split prefix
        (``xsub``, ``xset``, ...; default plain ``train``/``val``, else ``xsub``).
    train : bool, optional
        Augment; defaults to ``split == "train"``.
    seed : int
    on_error : {"raise", "skip"}
    progress : bool
    layout : str, dict or Layout, optional
        The model's layout (:func:`mksgn.graph.get_layout`: a built-in name, a layout file
        or a checkpoint's layout record); the data must fit it. Default: the data's own.

    Attributes
    ----------
    spec : DatasetSpec
        ``name`` ``ucla``, ``ntu``, ``pyskl`` or ``npz``.
    layout : Layout
    class_names : tuple of str
    planar : bool
        2-D keypoints stored as ``(x, y, score)`` (a pyskl file with C = 2).

    Raises
    ------
    DataError
        Bad folder or file (with ``on_error="raise"``), unknown modality, empty split, data
        that does not fit ``layout``.
    ConfigError
        A bad ``layout``, or a file with no layout of its own and a joint count no built-in has.
    """

    def __init__(self, root, split: str, modalities=("joint",), protocol: str | None = None,
                 train: bool | None = None, seed: int = 0, on_error: str = "raise",
                 progress: bool = False, layout=None):
        bad = [m for m in modalities if m not in MODALITIES]
        if bad or not modalities:
            raise DataError(f"unknown modality {bad or modalities!r}; choose from {', '.join(MODALITIES)}")
        self.planar = False  # 2-D (x, y, score) keypoints: see mksgn.preprocess.preprocess
        if Path(root).is_file() and Path(root).suffix in COLLECTION_SUFFIXES:
            col: Collection = read_collection(root)
            self.layout: Layout = resolve_layout(col, layout)
            protocol = protocol or col.default_protocol
            self.clips = col.select(split, protocol)  # only this split's clips stay in memory
            self.spec = DatasetSpec(col.kind, Path(root).suffix, self.layout.name, col.class_names,
                                    tuple(col.protocols), col.default_protocol)
            self.planar, self.scan = col.planar, None
            where, what = root, "file"
        else:
            self.clips, self.scan = load_clips(root, split, protocol, on_error, progress)
            self.spec = self.scan.spec
            self.layout = get_layout(self.spec.layout)
            if layout is not None and get_layout(layout) != self.layout:
                want = get_layout(layout)
                raise DataError(f"this folder holds {self.spec.name} clips (layout {self.layout.name!r}, "
                                f"{self.layout.num_joints} joints) but the model's layout is {want.name!r} "
                                f"({want.num_joints} joints); give data of the model's layout", self.scan.folder)
            protocol = protocol or self.spec.default_protocol
            where, what = self.scan.folder, "folder"
        if not self.clips:
            raise DataError(f"split {split!r} of this {what} has no clips", where)
        self.split = split
        self.protocol = protocol
        self.modalities = tuple(modalities)
        self.train = split == "train" if train is None else train
        self.seed = seed
        self.epoch = 0

    @property
    def class_names(self) -> tuple:
        """The dataset's class names: NW-UCLA 10; an NTU folder 120 when any of its files is an
        action above A060 (NTU-120), else 60; a file's own (:mod:`mksgn.annotations`)."""
        if self.scan is None:  # a file: the names Collection found (mksgn.annotations)
            return self.spec.class_names
        if self.spec.name == "ucla":
            return self.spec.class_names[:10]
        ntu120 = any(ids["action"] > 60 for _, ids in self.scan.files)
        return self.spec.class_names[:120 if ntu120 else 60]

    @property
    def labels(self) -> np.ndarray:
        return np.array([c.label for c in self.clips])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of this epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int):
        clip = self.clips[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        arrays = preprocess(clip.skeleton, self.layout, self.modalities, self.train, rng, planar=self.planar)
        return {m: torch.from_numpy(a) for m, a in arrays.items()}, clip.label
