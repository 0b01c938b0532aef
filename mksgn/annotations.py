"""Readers for whole-dataset skeleton files: pyskl / MMAction2 annotation ``.pkl`` and plain ``.npz``.

pyskl ``.pkl`` (Duan et al., "PYSKL", ACM MM 2022; the format of its ``tools/data`` files and of
MMAction2's skeleton datasets): a pickled dict ::

    {"split": {name: [frame_dir, ...]},
     "annotations": [{"frame_dir": str, "label": int (0-based),
                      "keypoint": (M, T, V, C) float, "keypoint_score": (M, T, V) (optional),
                      "total_frames": T (optional), ...}, ...]}

Split names ``<protocol>_train`` / ``<protocol>_val`` (``xsub``, ``xview``, ``xset``) or plain
``train`` / ``val``. 2-D keypoints (C = 2) with ``keypoint_score`` become ``(x, y, score)``,
C = 3, as pyskl's ``GenSkeFeat`` concatenates them for its GCNs; 3-D keypoints are used as they
are. An optional ``class_names`` list is ours (pyskl files name no classes).

``.npz`` (``numpy.savez``; read without pickle): ``x`` (N, C=3, T, V, M) float, ``y`` (N,) int
(0-based), optional ``split`` (N,) str (each clip's split name, as above; without it every
clip is in every split: a file holding one split), ``class_names`` (K,) str, ``names`` (N,) str,
``layout`` () str: a built-in layout name or a layout as JSON (:mod:`mksgn.graph`).

Class names come from the dataset: the file's own, else NTU RGB+D's 60 or 120 (Liu et al., TPAMI
2019) when the split names are NTU protocols (120 with ``xset`` or a label above 59), else
``class 0`` ... ``class K-1``.

Safety and memory: a pickle is unpickled by :class:`SafeUnpickler`, which builds only plain
containers and numpy arrays (numpy's ``_reconstruct`` / ``_frombuffer`` / ``scalar`` /
``dtype`` with their arguments checked, no object arrays); anything else — a hostile file whose
reduce would call ``os.system`` — is refused before it runs. We write this restricted
unpickler ourselves because no library offers one for numpy arrays (``numpy.load`` with
``allow_pickle=False`` refuses pickles altogether, ``torch.load(weights_only=True)`` reads only
torch's zip format). It is the pure-Python ``pickle._Unpickler`` so that ``BUILD`` (``__setstate__``)
can be checked too, reading from the file's bytes held in memory: no opcode can allocate more
than the file holds. The file is at most :data:`PICKLE_LIMIT` bytes; peak memory is about twice
the file (its bytes, then its arrays; measured 481 MB for a 226 MB file of 5,000 NTU-shaped clips,
read in 5.0 s against 0.27 s for the unrestricted ``pickle.loads``, on 2 shared cores). An ``.npz`` member's
array is allocated only after its header's size is checked against the member's size, and the
members together hold at most :data:`NPZ_LIMIT` bytes.

Every problem raises :class:`mksgn.errors.DataError` naming the file and what to do.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:  # numpy >= 2 names its core numpy._core
    from numpy._core import multiarray as _multiarray
except ImportError:
    from numpy.core import multiarray as _multiarray

from .errors import DataError, MksgnError
from .graph import Layout, get_layout, layout_for_joints
from .guard import read_limited
from .io import NTU120_CLASS_NAMES, Clip, _existing

__all__ = ["SafeUnpickler", "safe_load_pickle", "read_pyskl", "read_npz", "read_collection", "Collection",
           "dataset_class_names", "resolve_layout", "PICKLE_LIMIT", "NPZ_LIMIT", "COLLECTION_SUFFIXES"]

#: Largest ``.pkl`` read, in bytes (pyskl's NTU-120 3-D annotation file is about 4 GB).
PICKLE_LIMIT = 16 << 30
#: Largest total of an ``.npz``'s members (uncompressed), in bytes.
NPZ_LIMIT = 16 << 30
COLLECTION_SUFFIXES = (".pkl", ".npz")
_NTU_PROTOCOLS = ("xsub", "xview", "xset")
_NPZ_MEMBERS = ("x", "y", "split", "class_names", "names", "layout")
_DTYPE_KINDS = "biufcUS"


# --------------------------------------------------------------------------- restricted unpickler

class _Refused(Exception):
    """A pickle asked for something outside the allow-list."""


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` in a pickle: only :func:`_reconstruct` takes it, so a
    pickle cannot call ``ndarray(shape)`` to allocate an array of any size."""


_NDARRAY = _NdarrayClass()


def _plain_dtype(d) -> np.dtype:
    if not isinstance(d, np.dtype) or d.kind not in _DTYPE_KINDS or d.fields is not None or d.subdtype:
        raise _Refused(f"numpy dtype {d!r} (only plain numeric and string arrays are read)")
    return d


def _dtype(obj, align=False, copy=False):
    if not isinstance(obj, str):
        raise _Refused(f"numpy.dtype({obj!r})")
    try:
        d = np.dtype(obj, align, copy)
    except TypeError:
        raise _Refused(f"numpy.dtype({obj!r})") from None
    return _plain_dtype(d)


def _nbytes(shape, dtype) -> int:
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                               for s in shape):
        raise _Refused(f"array shape {shape!r}")
    return math.prod(shape) * dtype.itemsize


def _reconstruct(cls, shape, typecode):
    # numpy's ndarray.__reduce__ always writes _reconstruct(ndarray, (0,), b'b'); the data come by BUILD
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise _Refused(f"numpy _reconstruct{(cls, shape, typecode)!r}")
    return _multiarray._reconstruct(np.ndarray, (0,), b"b")


def _frombuffer(buf, dtype, shape, order):
    # protocol-5 arrays: numpy.core.numeric._frombuffer(buffer, dtype, shape, order)
    dtype = _plain_dtype(dtype)
    if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F") or len(buf) != _nbytes(shape, dtype):
        raise _Refused("numpy _frombuffer with a buffer that does not match its shape")
    return np.frombuffer(buf, dtype).reshape(shape, order=order)


def _scalar(dtype, data):
    dtype = _plain_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Refused("numpy scalar whose bytes do not match its dtype")
    return _multiarray.scalar(dtype, data)


def _latin1(text, encoding):
    # protocol <= 2 writes bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode other than the latin1 form pickle writes for bytes")
    return text.encode("latin1")


def _bytearray(data=b""):
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("bytearray of a non-bytes argument")
    return bytearray(data)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): _bytearray,
}
_ALLOWED.update({("__builtin__", name): fn for (mod, name), fn in list(_ALLOWED.items()) if mod == "builtins"})
# (protocol <= 2 pickles name the builtins module by its Python 2 name)


class SafeUnpickler(pickle._Unpickler):  # noqa: SLF001 - the pure-Python unpickler, so BUILD can be checked
    """Unpickles plain containers (dict, list, tuple, set, str, bytes, numbers, None) and numpy
    arrays, dtypes and scalars of numeric or string dtypes; refuses every other global and
    every ``BUILD`` (``__setstate__``) on anything but a fresh array or dtype, before it runs.

    Raises
    ------
    pickle.UnpicklingError
        ``"refused: ..."`` for anything outside the allow-list; persistent ids and
        out-of-band buffers are refused by the base class.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def find_class(self, module, name):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise _Refused(f"the global {module}.{name}")
        return fn

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray and inst.shape == (0,) and inst.base is None:
            if (not isinstance(state, tuple) or len(state) != 5 or state[0] != 1
                    or not isinstance(state[3], bool) or not isinstance(state[4], (bytes, bytearray))
                    or len(state[4]) != _nbytes(state[1], _plain_dtype(state[2]))):
                raise _Refused("an array state that does not match its shape and dtype")
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):
            canonical = inst.__reduce__()[2]
            if (not isinstance(state, tuple) or len(state) != len(canonical) or state[1] not in ("<", ">", "|", "=")
                    or state[0] != canonical[0] or state[2:] != canonical[2:]):
                raise _Refused(f"a dtype state {state!r} other than a byte order")
            inst.__setstate__(state)
        else:
            raise _Refused(f"__setstate__ on a {type(inst).__name__}")

    dispatch[pickle.BUILD[0]] = load_build


def safe_load_pickle(path, what: str = "a skeleton annotation file", limit: int = PICKLE_LIMIT):
    """The object in a pickle file, built by :class:`SafeUnpickler` from the file's bytes.

    Raises
    ------
    DataError
        Missing, oversize (> ``limit``) or non-regular file; a pickle asking for anything but
        plain containers and numpy arrays (the message says it was refused and not run); a
        damaged or truncated pickle.
    """
    path = Path(path)
    raw = read_limited(path, what, limit, error=DataError)
    try:
        return SafeUnpickler(io.BytesIO(raw)).load()
    except _Refused as exc:
        raise DataError(f"refused to load: the pickle asks for {exc}; {what} holds only plain containers and "
                        "numpy arrays, so this file is not one (it may be hostile) and nothing in it was run",
                        path) from None
    except MemoryError:
        raise DataError(f"not enough memory to unpickle ({len(raw):,} bytes)", path) from None
    except Exception as exc:  # noqa: BLE001 - a damaged pickle raises many types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"not a readable pickle ({type(exc).__name__}: {first}); expected {what}", path) from None


# --------------------------------------------------------------------------- collections

@dataclass
class Collection:
    """The clips of a whole-dataset file.

    Attributes
    ----------
    path : Path
    kind : {"pyskl", "npz"}
    clips : list of Clip
        ``skeleton`` float32 ``(C=3, T, V, M)``; ``meta`` has ``split`` (names) and ``index``.
    splits : dict or None
        Split name → clip indices; None when the file names no splits (every clip in every split).
    class_names : tuple of str
    class_source : str
        Where the class names came from (the file, NTU RGB+D 60/120, numbered).
    layout : Layout or None
        The layout the file names (``.npz`` ``layout``), else None.
    planar : bool
        2-D keypoints stored as ``(x, y, score)`` (a pyskl file with C = 2): not rotated in
        training (:func:`mksgn.preprocess.preprocess`).
    """

    path: Path
    kind: str
    clips: list
    splits: dict | None
    class_names: tuple
    class_source: str
    layout: Layout | None = None
    planar: bool = False
    protocols: dict = field(default_factory=dict)

    def __post_init__(self):
        self.protocols = _protocols(self.splits)

    @property
    def num_joints(self) -> int:
        return int(self.clips[0].skeleton.shape[2])

    @property
    def default_protocol(self) -> str | None:
        """Plain ``train``/``val`` when present, else ``xsub``, else the first protocol; None
        when the file has no splits or only plain ones."""
        if not self.protocols or None in self.protocols:
            return None
        return "xsub" if "xsub" in self.protocols else sorted(self.protocols)[0]

    def split_name(self, split: str, protocol: str | None) -> str | None:
        """The file's split name for ``split`` (``train``/``test``) under ``protocol``; None when
        the file has no splits.

        Raises
        ------
        DataError
            Unknown split, or a protocol / split the file does not have.
        """
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r}; choose train or test")
        if self.splits is None:
            if protocol is not None:
                raise DataError(f"the file names no splits, so protocol {protocol!r} does not apply", self.path)
            return None
        if protocol not in self.protocols:
            have = [p for p in self.protocols if p is not None]
            raise DataError(f"no split for protocol {protocol!r} in this file; its splits are "
                            f"{sorted(self.splits)} (protocols {have or 'none: plain train/val'})", self.path)
        name = self.protocols[protocol][0 if split == "train" else 1]
        if name is None:
            raise DataError(f"no {split} split for protocol {protocol!r}; the file's splits are "
                            f"{sorted(self.splits)}", self.path)
        return name

    def select(self, split: str | None, protocol: str | None) -> list:
        """The clips of ``split`` (all clips when ``split`` is None or the file has no splits)."""
        if split is None:
            return list(self.clips)
        name = self.split_name(split, protocol)
        return list(self.clips) if name is None else [self.clips[i] for i in self.splits[name]]


def _protocols(splits) -> dict:
    """protocol (None = plain) → (train split name, test split name); either may be None."""
    out: dict = {}
    for name in splits or {}:
        stem, _, part = name.rpartition("_")
        if not stem and name in ("train", "val", "test"):
            stem, part = None, name
        elif part not in ("train", "val", "test"):
            continue
        train, test = out.get(stem, (None, None))
        out[stem] = (name, test) if part == "train" else (train, test or name)
    return out


def dataset_class_names(max_label: int, split_names, given=None, where=None) -> tuple[tuple, str]:
    """``(class names, where they came from)`` for a file whose largest label is ``max_label``.

    The file's own names (``given``) when it has them; NTU RGB+D's when its split names are
    NTU protocols (``xsub``/``xview``/``xset``): the 60 of NTU-60, or all 120 (NTU-120, Liu et
    al., TPAMI 2019) with ``xset`` splits or a label above 59; else ``class 0`` ... numbered.

    Raises
    ------
    DataError
        ``given`` is not a list of strings or has fewer names than ``max_label + 1``.
    """
    if given is not None:
        names = list(given)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise DataError("class_names must be a non-empty list of strings", where)
        if len(names) <= max_label:
            raise DataError(f"{len(names)} class_names but a label {max_label}; give one name per class", where)
        return tuple(names), "the file"
    protocols = {n.rpartition("_")[0] for n in split_names}
    if protocols & set(_NTU_PROTOCOLS) and max_label < 120:
        n = 120 if ("xset" in protocols or max_label >= 60) else 60
        return NTU120_CLASS_NAMES[:n], f"NTU RGB+D {n} (split names {sorted(protocols & set(_NTU_PROTOCOLS))})"
    return tuple(f"class {i}" for i in range(max_label + 1)), "numbered (the file names no classes)"


def _label(v, where, path) -> int:
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, np.integer):
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise DataError(f"{where}: label {v!r} is not a 0-based class index", path)
    return v


def _keypoints(ann: dict, k: int, path: Path, num_joints: int | None) -> np.ndarray:
    """One annotation's keypoints as float32 ``(C=3, T, V, M)``."""
    where = f"annotation {k} ({ann.get('frame_dir', '?')})"
    kp = ann.get("keypoint")
    if kp is None:
        raise DataError(f"{where} has no 'keypoint' array (pyskl files that keep keypoints in separate raw "
                        "files are not read; convert them with pyskl first)", path)
    if not isinstance(kp, np.ndarray) or kp.ndim != 4 or kp.dtype.kind not in "iuf" or min(kp.shape) < 1:
        raise DataError(f"{where}: keypoint must be a numeric array (M, T, V, C), got "
                        f"{getattr(kp, 'shape', type(kp).__name__)}", path)
    M, T, V, C = kp.shape
    if num_joints is not None and V != num_joints:
        raise DataError(f"{where} has {V} joints, the annotations before it {num_joints}", path)
    score = ann.get("keypoint_score")
    if C == 2:
        if score is None:
            raise DataError(f"{where}: 2-D keypoints without keypoint_score; the model reads 3 channels "
                            "(x, y, z) or (x, y, score)", path)
        if not isinstance(score, np.ndarray) or score.shape != (M, T, V) or score.dtype.kind not in "iuf":
            raise DataError(f"{where}: keypoint_score must be an array (M, T, V) = {(M, T, V)}, got "
                            f"{getattr(score, 'shape', type(score).__name__)}", path)
        kp = np.concatenate([kp, score[..., None]], axis=-1)  # pyskl GenSkeFeat: (x, y, score)
    elif C != 3:
        raise DataError(f"{where}: keypoints have {C} coordinates; expected 3 (x, y, z) or 2 with keypoint_score",
                        path)
    total = ann.get("total_frames")
    if total is not None and _label(total, where, path) != T:
        raise DataError(f"{where}: total_frames is {total} but keypoint has {T} frames", path)
    out = np.ascontiguousarray(kp.transpose(3, 1, 2, 0), dtype=np.float32)  # (M,T,V,C) -> (C,T,V,M)
    if not np.isfinite(out).all():
        raise DataError(f"{where}: non-finite keypoint value", path)
    return out


def read_pyskl(path) -> Collection:
    """Read a pyskl / MMAction2 skeleton annotation ``.pkl`` (format in the module docstring).

    Returns
    -------
    Collection
        Clips ``(C=3, T, V, M)`` in the file's units (metres for NTU 3-D, pixels for 2-D),
        labels as in the file, the file's splits.

    Raises
    ------
    DataError
        A refused (possibly hostile) or damaged pickle, a missing key, keypoints of the wrong
        shape or type, joint counts that differ between clips, a split naming an unknown
        ``frame_dir``.
    """
    path = _existing(path)
    doc = safe_load_pickle(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise DataError("expected a pyskl annotation dict with 'split' and 'annotations' (a list)", path)
    anns = doc["annotations"]
    if not anns:
        raise DataError("'annotations' is empty", path)
    clips, index, V = [], {}, None
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict) or not isinstance(ann.get("frame_dir"), str) or "label" not in ann:
            raise DataError(f"annotation {k}: expected a dict with 'frame_dir' (str), 'label' and 'keypoint'", path)
        name = ann["frame_dir"]
        if name in index:
            raise DataError(f"annotation {k}: frame_dir {name!r} given twice", path)
        skeleton = _keypoints(ann, k, path, V)
        V = skeleton.shape[2]
        index[name] = k
        clips.append(Clip(name, skeleton, _label(ann["label"], f"annotation {k} ({name})", path),
                          {"index": k, "bodies_seen": int(skeleton.shape[3])}))
    splits = doc.get("split")
    if splits is not None:
        if not isinstance(splits, dict) or not all(isinstance(s, str) and isinstance(v, (list, tuple))
                                                   for s, v in splits.items()):
            raise DataError("'split' must map split names to lists of frame_dir", path)
        resolved = {}
        for s, names in splits.items():
            missing = [n for n in names if n not in index]
            if missing:
                raise DataError(f"split {s!r} names {len(missing)} frame_dir(s) without an annotation, e.g. "
                                f"{missing[0]!r}", path)
            resolved[s] = [index[n] for n in names]
        splits = resolved
    names, source = dataset_class_names(max(c.label for c in clips), splits or (), doc.get("class_names"), path)
    planar = any(isinstance(a.get("keypoint"), np.ndarray) and a["keypoint"].shape[-1] == 2 for a in anns)
    return Collection(path, "pyskl", clips, splits, names, source, planar=planar)


def _npz_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One ``.npy`` member, its size checked against the member before anything is allocated."""
    where = f"member {info.filename}"
    fmt = np.lib.format
    try:
        with zf.open(info) as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                shape, fortran, dtype = fmt._read_array_header(f, version)  # noqa: SLF001 - version 3.0 headers
            if dtype.hasobject or dtype.kind not in _DTYPE_KINDS or dtype.fields is not None:
                raise DataError(f"{where}: dtype {dtype} is not read (numeric or string arrays only, no pickles)", path)
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size:
                raise DataError(f"{where}: header claims shape {shape} ({nbytes:,} bytes) but the member holds "
                                f"{info.file_size:,} bytes (damaged or hostile file)", path)
            data = f.read(nbytes)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{where}: not a readable .npy array ({exc})", path) from None
    if len(data) != nbytes:
        raise DataError(f"{where}: truncated ({len(data):,} of {nbytes:,} bytes)", path)
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _strings(a: np.ndarray, n: int | None, key: str, path: Path) -> list:
    if a.dtype.kind not in "US" or a.ndim != 1 or (n is not None and len(a) != n):
        want = f"({n},)" if n is not None else "(K,)"
        raise DataError(f"{key} must be a 1-D string array {want}, got {a.dtype} {a.shape}", path)
    return [str(s) for s in a.tolist()]


def read_npz(path) -> Collection:
    """Read a plain ``.npz`` skeleton file (format in the module docstring), without pickle.

    Raises
    ------
    DataError
        Not a zip / npz, an unknown member, an object (pickled) array, a member whose header
        claims more than it holds, members over :data:`NPZ_LIMIT` bytes, ``x``/``y``/``split``/
        ``class_names``/``names``/``layout`` of the wrong shape or type, a bad layout.
    """
    path = _existing(path)
    size = path.stat().st_size
    if size > NPZ_LIMIT:
        raise DataError(f"{size:,} bytes, larger than the {NPZ_LIMIT:,}-byte limit for an .npz", path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not an .npz (zip) file ({exc})", path) from None
    with zf:
        infos = {}
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key not in _NPZ_MEMBERS:
                raise DataError(f"unknown member {info.filename!r}; an .npz skeleton file has {list(_NPZ_MEMBERS)}",
                                path)
            infos[key] = info
        total = sum(i.file_size for i in infos.values())
        if total > NPZ_LIMIT:
            raise DataError(f"members hold {total:,} bytes uncompressed, more than the {NPZ_LIMIT:,}-byte limit",
                            path)
        missing = [k for k in ("x", "y") if k not in infos]
        if missing:
            raise DataError(f"missing member(s) {missing}; expected x (N, C, T, V, M) and y (N,)", path)
        arr = {k: _npz_array(zf, i, path) for k, i in infos.items()}
    x, y = arr["x"], arr["y"]
    if x.ndim != 5 or x.dtype.kind not in "iuf" or min(x.shape) < 1 or x.shape[1] != 3:
        raise DataError(f"x must be a numeric array (N, C=3, T, V, M), got {x.dtype} {x.shape}", path)
    N = x.shape[0]
    if y.shape != (N,) or y.dtype.kind not in "iu" or (y < 0).any():
        raise DataError(f"y must be ({N},) 0-based integer labels, got {y.dtype} {y.shape}", path)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError("x holds a non-finite value", path)
    names = _strings(arr["names"], N, "names", path) if "names" in arr else [f"{path.stem}#{i}" for i in range(N)]
    splits = None
    if "split" in arr:
        splits = {}
        for i, s in enumerate(_strings(arr["split"], N, "split", path)):
            splits.setdefault(s, []).append(i)
    layout = None
    if "layout" in arr:
        spec = arr["layout"]
        if spec.dtype.kind != "U" or spec.shape != ():
            raise DataError(f"layout must be a string (a built-in name or layout JSON), got {spec.dtype} {spec.shape}",
                            path)
        text = str(spec[()])
        try:
            layout = get_layout(json.loads(text) if text.lstrip().startswith("{") else text)
        except (MksgnError, json.JSONDecodeError) as exc:
            raise DataError(f"member layout: {exc}", path) from None
    given = _strings(arr["class_names"], None, "class_names", path) if "class_names" in arr else None
    class_names, source = dataset_class_names(int(y.max()), splits or (), given, path)
    clips = [Clip(names[i], x[i], int(y[i]), {"index": i, "bodies_seen": int(x.shape[4])}) for i in range(N)]
    return Collection(path, "npz", clips, splits, class_names, source, layout)


def read_collection(path) -> Collection:
    """Read a ``.pkl`` (pyskl) or ``.npz`` skeleton file by its suffix.

    Raises
    ------
    DataError
    """
    path = Path(path)
    if path.suffix == ".pkl":
        return read_pyskl(path)
    if path.suffix == ".npz":
        return read_npz(path)
    raise DataError("unknown file type: expected a folder of clips, a pyskl .pkl or an .npz", path)


def resolve_layout(collection: Collection, layout=None) -> Layout:
    """The layout of a collection's clips: ``layout`` (the model's) when given, checked against
    the file's joint count and its own layout; else the file's layout; else the built-in with
    the file's joint count.

    Raises
    ------
    DataError
        ``layout`` has another joint count than the clips, or differs from the file's layout.
    ConfigError
        No layout given and no built-in has the file's joint count.
    """
    V = collection.num_joints
    if layout is None:
        return collection.layout or layout_for_joints(V)
    lay = get_layout(layout)
    if lay.num_joints != V:
        raise DataError(f"clips have {V} joints but layout {lay.name!r} has {lay.num_joints}; train with the "
                        "layout of the data (--layout FILE or model.layout)", collection.path)
    if collection.layout is not None and collection.layout != lay:
        raise DataError(f"the file's layout {collection.layout.name!r} differs from layout {lay.name!r} (joint "
                        "names, edges, centre, bodies or window); use the file's layout", collection.path)
    return lay
