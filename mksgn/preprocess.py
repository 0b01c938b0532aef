"""Skeleton preprocessing and the four modalities, as in the field (CTR-GCN ``feeders/tools.py``).

All functions take and return float32 arrays in the layout ``(C=3, T, V, M)`` (coordinates,
frames, joints, bodies). Frames where a body is absent are all-zero and stay zero.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .graph import Layout

__all__ = [
    "MODALITIES", "centre", "pad_bodies", "valid_crop_resize", "random_rotation", "rotation_matrix",
    "bone", "motion", "modality", "preprocess",
]

MODALITIES = ("joint", "bone", "joint_motion", "bone_motion")
TEST_CROP = (0.95,)          # CTR-GCN test-time p_interval: central 95 % of the valid frames
TRAIN_CROP = (0.5, 1.0)      # CTR-GCN train-time p_interval: random crop of 50–100 %
ROTATION_THETA = 0.3         # CTR-GCN random_rot: angles uniform in ±0.3 rad about x, y, z


def _present(data: np.ndarray) -> np.ndarray:
    """Mask ``(T, M)``: True where the body has any non-zero coordinate in the frame."""
    return (data != 0).any(axis=(0, 2))


def centre(data: np.ndarray, layout: Layout, channels: int | None = None) -> np.ndarray:
    """Subtract the centre joint of the first frame of body 0 from every present joint.

    Origin = ``data[:, t0, layout.centre_joint, 0]`` with ``t0`` the first frame where
    body 0 is present (CTR-GCN ``seq_transformation``/``feeder_ucla``: spine joint of the
    first frame). Absent (all-zero) frames stay zero.

    Parameters
    ----------
    data : np.ndarray, shape ``(C, T, V, M)``, metres
    layout : Layout
    channels : int, optional
        Only the first ``channels`` channels move (2 for 2-D ``(x, y, score)`` keypoints);
        default all.

    Returns
    -------
    np.ndarray, shape ``(C, T, V, M)``, metres relative to the origin.
    """
    present = _present(data)
    frames = np.flatnonzero(present[:, 0])
    if len(frames) == 0:
        return data.copy()
    origin = data[:, frames[0], layout.centre_joint, 0].copy()
    if channels is not None:  # only the coordinate channels move (2-D: x, y of (x, y, score))
        origin[channels:] = 0
    out = data - origin[:, None, None, None]
    return np.where(present[None, :, None, :], out, 0).astype(np.float32)


def pad_bodies(data: np.ndarray, num_bodies: int) -> np.ndarray:
    """Zero-pad (or cut) the body axis to ``num_bodies``: ``(C, T, V, M) -> (C, T, V, num_bodies)``."""
    C, T, V, M = data.shape
    if M >= num_bodies:
        return data[..., :num_bodies]
    out = np.zeros((C, T, V, num_bodies), dtype=np.float32)
    out[..., :M] = data
    return out


def valid_crop_resize(data: np.ndarray, window: int, p_interval: tuple,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Crop the valid frames and resize them to ``window`` frames (CTR-GCN ``valid_crop_resize``).

    Valid frames are those from the first to the last frame with any body present. With one
    ratio ``p`` (test) the central ``p`` fraction is kept; with two ``(lo, hi)`` (training) a
    random fraction in ``[lo, hi)`` at a random offset (at least ``min(window, valid)`` frames).
    The crop is resized by bilinear interpolation along time (``F.interpolate``,
    ``align_corners=False``), as in CTR-GCN.

    Parameters
    ----------
    data : np.ndarray, shape ``(C, T, V, M)``
    window : int
        Output frames (NTU RGB+D 64, NW-UCLA 52).
    p_interval : tuple of float
        ``(p,)`` or ``(lo, hi)``.
    rng : np.random.Generator, optional
        Required for the random (two-value) form.

    Returns
    -------
    np.ndarray, shape ``(C, window, V, M)``

    Raises
    ------
    DataError
        If the clip has no frame with a body.
    """
    present = _present(data).any(axis=1)
    idx = np.flatnonzero(present)
    if len(idx) == 0:
        raise DataError("clip has no frame with a body present; nothing to crop")
    begin, end = int(idx[0]), int(idx[-1]) + 1
    valid = end - begin
    if len(p_interval) == 1:
        bias = int((1 - p_interval[0]) * valid / 2)
        crop = data[:, begin + bias:end - bias]
    else:
        if rng is None:
            raise ValueError("a random crop needs rng")
        p = rng.uniform(p_interval[0], p_interval[1])
        length = int(min(max(int(np.floor(valid * p)), min(window, valid)), valid))
        bias = int(rng.integers(0, valid - length + 1))
        crop = data[:, begin + bias:begin + bias + length]
    C, T, V, M = crop.shape
    flat = torch.from_numpy(np.ascontiguousarray(crop.transpose(0, 2, 3, 1))).reshape(1, 1, C * V * M, T)
    out = F.interpolate(flat, size=(C * V * M, window), mode="bilinear", align_corners=False)
    return out.reshape(C, V, M, window).permute(0, 3, 1, 2).numpy().astype(np.float32)


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """3×3 rotation ``Rz·Ry·Rx`` for angles ``(ax, ay, az)`` in radians (CTR-GCN ``_rot``)."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rotation(data: np.ndarray, rng: np.random.Generator,
                    theta: float = ROTATION_THETA) -> np.ndarray:
    """Rotate the whole clip by one random rotation, angles uniform in ``±theta`` rad
    about x, y and z (CTR-GCN ``random_rot``). Training only. Shape ``(C, T, V, M)`` kept."""
    rot = rotation_matrix(rng.uniform(-theta, theta, size=3)).astype(np.float32)
    return np.einsum("ij,jtvm->itvm", rot, data).astype(np.float32)


def bone(joint: np.ndarray, layout: Layout) -> np.ndarray:
    """Bone modality: each joint minus its parent, ``bone[:, :, v] = x[:, :, v] − x[:, :, parent(v)]``.

    The root's parent is itself, so its bone is zero (CTR-GCN ``bone_pairs``).
    Shape ``(C, T, V, M)`` in, same out.
    """
    return (joint - joint[:, :, layout.bone_parent]).astype(np.float32)


def motion(data: np.ndarray) -> np.ndarray:
    """Motion modality: frame difference ``m[:, t] = x[:, t+1] − x[:, t]``, last frame zero.
    Shape ``(C, T, V, M)`` in, same out."""
    out = np.zeros_like(data)
    out[:, :-1] = data[:, 1:] - data[:, :-1]
    return out


def modality(joint: np.ndarray, name: str, layout: Layout) -> np.ndarray:
    """One of :data:`MODALITIES` computed from the joint array ``(C, T, V, M)``.

    Raises
    ------
    DataError
        Unknown modality name.
    """
    if name == "joint":
        return joint
    if name == "bone":
        return bone(joint, layout)
    if name == "joint_motion":
        return motion(joint)
    if name == "bone_motion":
        return motion(bone(joint, layout))
    raise DataError(f"unknown modality {name!r}; choose from {', '.join(MODALITIES)}")


def preprocess(skeleton: np.ndarray, layout: Layout, modalities: tuple, train: bool,
               rng: np.random.Generator | None = None, planar: bool = False) -> dict:
    """The full pipeline for one clip: centre → pad bodies → crop/resize → (rotate) → modalities.

    Parameters
    ----------
    skeleton : np.ndarray, shape ``(C=3, T, V, M_present)``, metres
    layout : Layout
        Gives ``window``, ``max_bodies``, ``centre_joint`` and bone parents.
    modalities : tuple of str
        Any of ``joint``, ``bone``, ``joint_motion``, ``bone_motion``.
    train : bool
        Random crop (50–100 %) and random rotation if True; central 95 % crop otherwise.
    rng : np.random.Generator, optional
        Required when ``train`` is True.
    planar : bool
        2-D keypoints stored as ``(x, y, score)`` (:mod:`mksgn.annotations`): centring moves x
        and y only and training does not rotate (a 3-D rotation would mix the score into x, y;
        pyskl's 2-D GCN pipelines do not rotate either).

    Returns
    -------
    dict
        modality name → float32 array ``(C, layout.window, V, layout.max_bodies)``.
    """
    data = pad_bodies(centre(skeleton, layout, 2 if planar else None), layout.max_bodies)
    data = valid_crop_resize(data, layout.window, TRAIN_CROP if train else TEST_CROP, rng)
    if train and not planar:
        data = random_rotation(data, rng)
    return {m: modality(data, m, layout) for m in modalities}
