"""Skeleton joint layouts, bone pairs and the normalised adjacency: the one home for them.

A layout is data (:class:`Layout`): joint names, inward edges ``(child, parent)``, the centre
joint, bodies per clip and the frame window. Built-ins, with the sources of their edges:

* ``ntu25`` — NTU RGB+D 60/120, Kinect v2, 25 joints, M = 2, window 64. Edges: CTR-GCN
  (Chen et al., ICCV 2021) ``graph/ntu_rgb_d.py`` ``inward_ori_index``.
* ``ucla20`` — NW-UCLA, Kinect v1, 20 joints, M = 1, window 52. Edges: CTR-GCN ``graph/ucla.py``.
* ``openpose18`` — OpenPose COCO-18 keypoints (Kinetics-skeleton of ST-GCN), 2-D, M = 2,
  window 64. Edges and centre (joint 1, neck): pyskl (Duan et al., ACM MM 2022)
  ``pyskl/utils/graph.py`` layout ``'openpose'`` (commit 4d290ec), the same list as ST-GCN
  (Yan et al., AAAI 2018) ``net/utils/graph.py``. Joint order: OpenPose's COCO-18 output.
* ``coco17`` — COCO 17 keypoints (pyskl's HRNet 2-D annotations of NTU and Kinetics), M = 2,
  window 64. Edges and centre (joint 0, nose): pyskl ``pyskl/utils/graph.py`` layout ``'coco'``.
  Joint order: the COCO keypoint order.

The centre joint is the one subtracted for centring (:func:`mksgn.preprocess.centre`): the
spine joint for NTU / NW-UCLA as CTR-GCN's preprocessing, pyskl's graph centre for the 2-D
layouts. The windows 64 of the new layouts are our choice (NTU's).

A user layout is a JSON file (:func:`load_layout_file`)::

    {"name": "kinect15", "joint_names": ["spine_base", ...], "inward": [[1, 0], ...],
     "centre_joint": 1, "max_bodies": 2, "window": 64}

``inward`` edges and ``centre_joint`` are 0-based joint indices or joint names; ``max_bodies``
(default 2) and ``window`` (default 64) are optional. :func:`get_layout` accepts a built-in
name, such a file, its parsed dict or a :class:`Layout`, so a file works wherever a name does.
Checkpoints and exports store :func:`layout_record`: the name of a built-in, the whole layout
(a dict) otherwise, so reading them needs no file.

Bone pairs (:attr:`Layout.bone_pairs`): each joint's parent is the parent of its first inward
edge; the one joint without an inward edge is the root and its bone is zero (CTR-GCN
``bone_pairs``).

The adjacency follows the ST-GCN *spatial partition* as built by CTR-GCN
``graph/tools.py::get_spatial_graph`` (and pyskl's ``Graph.spatial``): ``A[0] = I`` (self),
``A[1] = norm(inward)``, ``A[2] = norm(outward)``, where an edge ``(i, j)`` sets
``M[j, i] = 1`` and ``norm`` divides each column by its sum (``normalize_digraph``:
``A @ D^-1`` with ``D`` the column sums), so every non-empty column of ``A[1]`` and ``A[2]``
sums to 1.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .guard import read_json

__all__ = ["Layout", "LAYOUTS", "get_layout", "load_layout_file", "layout_record", "layout_name",
           "layout_for_joints", "LAYOUT_FILE_LIMIT", "MAX_JOINTS"]

#: Largest layout JSON file read, in bytes.
LAYOUT_FILE_LIMIT = 1 << 20
#: Most joints a layout may have (the SA-SGC attention is V x V per frame).
MAX_JOINTS = 1024
_MAX_BODIES = 8
_MAX_WINDOW = 4096
_DEFAULT_BODIES = 2
_DEFAULT_WINDOW = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_FILE_KEYS = ("name", "joint_names", "inward", "centre_joint", "max_bodies", "window")


def _zero_based(pairs):
    return tuple((i - 1, j - 1) for i, j in pairs)


# CTR-GCN graph/ntu_rgb_d.py, inward_ori_index (1-based: child -> parent towards the centre)
_NTU25_INWARD = _zero_based([
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19), (22, 23), (23, 8), (24, 25), (25, 12),
])
# CTR-GCN graph/ucla.py, inward_ori_index (1-based)
_UCLA20_INWARD = _zero_based([
    (1, 2), (2, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10),
    (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
])
# pyskl pyskl/utils/graph.py, layout 'openpose' (0-based), = ST-GCN net/utils/graph.py neighbor_link
_OPENPOSE18_INWARD = (
    (4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5), (8, 2), (5, 1),
    (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14),
)
# pyskl pyskl/utils/graph.py, layout 'coco' (0-based)
_COCO17_INWARD = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8), (8, 6),
    (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2),
)

_NTU25_NAMES = (
    "spine_base", "spine_mid", "neck", "head", "shoulder_left", "elbow_left", "wrist_left",
    "hand_left", "shoulder_right", "elbow_right", "wrist_right", "hand_right", "hip_left",
    "knee_left", "ankle_left", "foot_left", "hip_right", "knee_right", "ankle_right",
    "foot_right", "spine_shoulder", "hand_tip_left", "thumb_left", "hand_tip_right",
    "thumb_right",
)
_UCLA20_NAMES = (
    "hip_center", "spine", "shoulder_center", "head", "shoulder_left", "elbow_left",
    "wrist_left", "hand_left", "shoulder_right", "elbow_right", "wrist_right", "hand_right",
    "hip_left", "knee_left", "ankle_left", "foot_left", "hip_right", "knee_right",
    "ankle_right", "foot_right",
)
# OpenPose output format "COCO" (18 keypoints)
_OPENPOSE18_NAMES = (
    "nose", "neck", "shoulder_right", "elbow_right", "wrist_right", "shoulder_left", "elbow_left",
    "wrist_left", "hip_right", "knee_right", "ankle_right", "hip_left", "knee_left", "ankle_left",
    "eye_right", "eye_left", "ear_right", "ear_left",
)
# COCO person keypoints
_COCO17_NAMES = (
    "nose", "eye_left", "eye_right", "ear_left", "ear_right", "shoulder_left", "shoulder_right",
    "elbow_left", "elbow_right", "wrist_left", "wrist_right", "hip_left", "hip_right", "knee_left",
    "knee_right", "ankle_left", "ankle_right",
)


@dataclass(frozen=True)
class Layout:
    """A skeleton joint layout (validated on construction).

    Attributes
    ----------
    name : str
        ``ntu25``, ``ucla20``, ``openpose18``, ``coco17`` or a user layout's name.
    num_joints : int
        V, joints per body.
    max_bodies : int
        M, bodies per clip in the model input (missing bodies zero-padded, extra ones cut).
    window : int
        Frames per clip after valid-frame crop and resize (NTU 64, NW-UCLA 52, as CTR-GCN).
    centre_joint : int
        0-based joint subtracted for centring.
    inward : tuple of (int, int)
        0-based edges (child, parent), child further from the root.
    joint_names : tuple of str

    Raises
    ------
    ConfigError
        Names not unique, an edge out of range, to itself or repeated, a joint the edges do
        not connect, bone parents that loop or more than one root, a centre out of range.
    """

    name: str
    num_joints: int
    max_bodies: int
    window: int
    centre_joint: int
    inward: tuple
    joint_names: tuple
    bone_parent: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "inward", tuple((int(c), int(p)) for c, p in self.inward))
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        object.__setattr__(self, "bone_parent", _check(self, f"joint layout {self.name!r}"))

    @property
    def outward(self) -> tuple:
        """0-based edges (parent, child)."""
        return tuple((j, i) for i, j in self.inward)

    @property
    def bone_pairs(self) -> tuple:
        """``(joint, parent)`` 0-based pairs, one per joint; the root's parent is itself
        (its bone is zero). Bone = joint − parent (CTR-GCN ``bone_pairs``)."""
        return tuple((v, int(p)) for v, p in enumerate(self.bone_parent))

    @property
    def builtin(self) -> bool:
        """True for one of :data:`LAYOUTS`."""
        return LAYOUTS.get(self.name) == self

    def adjacency(self) -> np.ndarray:
        """Normalised spatial-partition adjacency, shape ``(K=3, V, V)``, float32.

        Used as in ST-GCN / CTR-GCN: ``out[..., w] = Σ_v x[..., v] · A[k][v, w]``
        (einsum ``nkctv,kvw->nctw``), with ``edge2mat`` setting ``M[j, i] = 1`` for an edge
        ``(i, j)``. ``A[0]`` is the identity; every non-zero column of ``A[1]`` and ``A[2]``
        sums to 1.
        """
        V = self.num_joints
        eye = np.eye(V, dtype=np.float64)
        return np.stack([eye, _normalize_digraph(_edge2mat(self.inward, V)),
                         _normalize_digraph(_edge2mat(self.outward, V))]).astype(np.float32)

    def to_dict(self) -> dict:
        """The layout as a JSON-ready dict (the layout-file format, indices 0-based);
        ``Layout.from_dict(lay.to_dict()) == lay``."""
        return {"name": self.name, "joint_names": list(self.joint_names),
                "inward": [[c, p] for c, p in self.inward], "centre_joint": self.centre_joint,
                "max_bodies": self.max_bodies, "window": self.window}

    @classmethod
    def from_dict(cls, d, where: str = "joint layout") -> "Layout":
        """Build from the layout-file format (edges and centre as indices or joint names).

        Raises
        ------
        ConfigError
            Not an object, an unknown or missing key, a value of the wrong type or range, a
            joint name that is not in ``joint_names``, or a graph :class:`Layout` refuses;
            the message starts with ``where``.
        """
        def bad(what):
            raise ConfigError(f"{where}: {what}")

        if not isinstance(d, dict):
            bad(f"expected a JSON object with keys {list(_FILE_KEYS)}, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_FILE_KEYS))
        if unknown:
            bad(f"unknown key(s) {unknown}; a layout has {list(_FILE_KEYS)}")
        missing = [k for k in ("name", "joint_names", "inward", "centre_joint") if k not in d]
        if missing:
            bad(f"missing key(s) {missing}")
        name, names = d["name"], d["joint_names"]
        if not isinstance(name, str) or not _NAME.match(name):
            bad(f"name {name!r} must be 1-64 letters, digits or '_.+-' (starting with a letter or digit)")
        if (not isinstance(names, list) or not 2 <= len(names) <= MAX_JOINTS
                or not all(isinstance(n, str) and n.strip() for n in names)):
            bad(f"joint_names must be a list of 2 to {MAX_JOINTS} non-empty strings")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            bad(f"joint name(s) {dup} given more than once")
        index = {n: i for i, n in enumerate(names)}

        def joint(v, what):
            if isinstance(v, str):
                if v not in index:
                    bad(f"{what} names joint {v!r}, which is not in joint_names")
                return index[v]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < len(names):
                bad(f"{what} is {v!r}; expected a joint name or a 0-based index in [0, {len(names) - 1}]")
            return v

        edges = d["inward"]
        if not isinstance(edges, list) or not edges:
            bad("inward must be a non-empty list of [child, parent] edges (child further from the root)")
        inward = []
        for k, e in enumerate(edges):
            if not isinstance(e, (list, tuple)) or len(e) != 2:
                bad(f"inward[{k}] is {e!r}; expected [child, parent]")
            inward.append((joint(e[0], f"inward[{k}][0]"), joint(e[1], f"inward[{k}][1]")))
        bodies, window = d.get("max_bodies", _DEFAULT_BODIES), d.get("window", _DEFAULT_WINDOW)
        for key, v, hi in (("max_bodies", bodies, _MAX_BODIES), ("window", window, _MAX_WINDOW)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
                bad(f"{key} is {v!r}; expected an integer in [1, {hi}]")
        centre = joint(d["centre_joint"], "centre_joint")
        try:
            lay = cls(name, len(names), bodies, window, centre, tuple(inward), tuple(names))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
        if name in LAYOUTS and lay != LAYOUTS[name]:
            bad(f"name {name!r} is a built-in layout with other joints or edges; give your layout another name")
        return lay


def _check(lay: Layout, where: str) -> np.ndarray:
    """Validate a layout's graph; return its bone parents (V,) int."""
    def bad(what):
        raise ConfigError(f"{where}: {what}")

    V = lay.num_joints
    if len(lay.joint_names) != V:
        bad(f"{len(lay.joint_names)} joint names for {V} joints")
    if not 0 <= lay.centre_joint < V:
        bad(f"centre_joint {lay.centre_joint} is outside [0, {V - 1}]")
    seen = set()
    for c, p in lay.inward:
        if not (0 <= c < V and 0 <= p < V):
            bad(f"edge ({c}, {p}) names a joint outside [0, {V - 1}]")
        if c == p:
            bad(f"edge ({c}, {p}) joins joint {lay.joint_names[c]!r} to itself")
        if (c, p) in seen or (p, c) in seen:
            bad(f"edge ({c}, {p}) is given twice (in either direction)")
        seen.add((c, p))
    parent = np.arange(V)
    for child, par in lay.inward:
        if parent[child] == child:  # first inward edge of a joint defines its bone
            parent[child] = par
    roots = [lay.joint_names[v] for v in range(V) if parent[v] == v]
    if len(roots) != 1:
        bad(f"{len(roots)} joints have no inward edge ({roots[:5]}); the edges must form a tree "
            "with one root: give every other joint an edge [joint, its parent]")
    for v in range(V):  # following parents reaches the root without a loop
        hops, u = 0, v
        while parent[u] != u:
            u, hops = parent[u], hops + 1
            if hops > V:
                bad(f"the parents of joint {lay.joint_names[v]!r} loop; inward edges must point "
                    "towards the root")
    return parent


def _edge2mat(edges, num_nodes: int) -> np.ndarray:
    mat = np.zeros((num_nodes, num_nodes))
    for i, j in edges:
        mat[j, i] = 1
    return mat


def _normalize_digraph(mat: np.ndarray) -> np.ndarray:
    col = mat.sum(0)
    inv = np.where(col > 0, 1.0 / np.where(col > 0, col, 1), 0.0)
    return mat @ np.diag(inv)


LAYOUTS = {
    "ntu25": Layout("ntu25", 25, 2, 64, 1, _NTU25_INWARD, _NTU25_NAMES),
    "ucla20": Layout("ucla20", 20, 1, 52, 1, _UCLA20_INWARD, _UCLA20_NAMES),
    "openpose18": Layout("openpose18", 18, 2, 64, 1, _OPENPOSE18_INWARD, _OPENPOSE18_NAMES),
    "coco17": Layout("coco17", 17, 2, 64, 0, _COCO17_INWARD, _COCO17_NAMES),
}


def load_layout_file(path) -> Layout:
    """Read a user layout JSON file (format in the module docstring).

    Raises
    ------
    ConfigError
        Missing, unreadable, oversize (> :data:`LAYOUT_FILE_LIMIT`) or invalid JSON, or a
        layout :meth:`Layout.from_dict` refuses; the message names the file.
    """
    path = Path(path)
    doc = read_json(path, "a joint layout file", LAYOUT_FILE_LIMIT, error=ConfigError,
                    hint="see the layout format in docs/design.md")
    return Layout.from_dict(doc, f"{path}")


def get_layout(spec) -> Layout:
    """The layout ``spec`` stands for.

    Parameters
    ----------
    spec : str, Path, dict or Layout
        A built-in name (:data:`LAYOUTS`), a layout JSON file, a layout dict (a checkpoint's
        or export's :func:`layout_record`) or a :class:`Layout`.

    Raises
    ------
    ConfigError
        An unknown name that is not a file either, or an invalid layout file / dict.
    """
    if isinstance(spec, Layout):
        return spec
    if isinstance(spec, dict):
        return Layout.from_dict(spec)
    if isinstance(spec, str) and spec in LAYOUTS:
        return LAYOUTS[spec]
    if isinstance(spec, (str, Path)) and (str(spec).endswith(".json") or Path(spec).exists()):
        return load_layout_file(spec)
    raise ConfigError(f"unknown joint layout {spec!r}; choose one of {sorted(LAYOUTS)} or give a "
                      "layout JSON file (joint names, inward edges, centre joint)")


def layout_record(spec):
    """What configs, checkpoints and exports store for a layout: the name of a built-in, the
    whole layout (:meth:`Layout.to_dict`) otherwise."""
    lay = get_layout(spec)
    return lay.name if lay.builtin else lay.to_dict()


def layout_name(spec) -> str:
    """The name of a layout record / spec, for messages and model cards (never raises)."""
    if isinstance(spec, Layout):
        return spec.name
    if isinstance(spec, dict):
        return str(spec.get("name", "?"))
    return str(spec)


def layout_for_joints(num_joints: int) -> Layout:
    """The built-in layout with ``num_joints`` joints (25 NTU, 20 NW-UCLA, 18 OpenPose, 17 COCO),
    for data files that name none.

    Raises
    ------
    ConfigError
        No built-in has that many joints.
    """
    for lay in LAYOUTS.values():
        if lay.num_joints == num_joints:
            return lay
    raise ConfigError(f"no built-in joint layout has {num_joints} joints "
                      f"({', '.join(f'{n} {l.num_joints}' for n, l in LAYOUTS.items())}); give a layout "
                      "JSON file with --layout (or model.layout)")
