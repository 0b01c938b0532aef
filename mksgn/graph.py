"""Skeleton joint layouts, bone pairs and the normalised adjacency: the one home for them.

Two layouts are defined, with the edge lists of CTR-GCN (Chen et al., ICCV 2021,
``graph/ntu_rgb_d.py`` and ``graph/ucla.py``):

* ``ntu25`` — NTU RGB+D, Kinect v2, 25 joints, at most 2 bodies (M = 2).
* ``ucla20`` — NW-UCLA, Kinect v1, 20 joints, one body (M = 1).

The adjacency follows the ST-GCN *spatial partition* as built by CTR-GCN
``graph/tools.py::get_spatial_graph``: ``A[0] = I`` (self), ``A[1] = norm(inward)``,
``A[2] = norm(outward)``, where an edge ``(i, j)`` sets ``M[j, i] = 1`` and ``norm`` divides
each column by its sum (``normalize_digraph``: ``A @ D^-1`` with ``D`` the column sums), so
every non-empty column of ``A[1]`` and ``A[2]`` sums to 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError

__all__ = ["Layout", "LAYOUTS", "get_layout"]


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


@dataclass(frozen=True)
class Layout:
    """A skeleton joint layout.

    Attributes
    ----------
    name : str
        ``"ntu25"`` or ``"ucla20"``.
    num_joints : int
        V, joints per body.
    max_bodies : int
        M, bodies per clip in the model input (second body zero-padded when absent).
    window : int
        Frames per clip after valid-frame crop and resize (NTU 64, NW-UCLA 52, as CTR-GCN).
    centre_joint : int
        0-based joint used for centring: the spine joint, as CTR-GCN's preprocessing
        (``seq_transformation`` for NTU, ``feeder_ucla`` for NW-UCLA).
    inward : tuple of (int, int)
        0-based edges (child, parent), child further from the centre.
    joint_names : tuple of str
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
        parent = np.arange(self.num_joints)
        for child, par in self.inward:
            if parent[child] == child:  # first inward edge of a joint defines its bone
                parent[child] = par
        object.__setattr__(self, "bone_parent", parent)

    @property
    def outward(self) -> tuple:
        """0-based edges (parent, child)."""
        return tuple((j, i) for i, j in self.inward)

    @property
    def bone_pairs(self) -> tuple:
        """``(joint, parent)`` 0-based pairs, one per joint; the root's parent is itself
        (its bone is zero). Bone = joint − parent (CTR-GCN ``bone_pairs``)."""
        return tuple((v, int(p)) for v, p in enumerate(self.bone_parent))

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
}


def get_layout(name: str) -> Layout:
    """Return the layout called ``name``.

    Raises
    ------
    ConfigError
        If ``name`` is not ``"ntu25"`` or ``"ucla20"``.
    """
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConfigError(f"unknown joint layout {name!r}; choose one of {sorted(LAYOUTS)}") from None
