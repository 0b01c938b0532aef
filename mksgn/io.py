"""Readers for the two real skeleton formats: NTU RGB+D ``.skeleton`` text and NW-UCLA json.

Both return a :class:`Clip` whose ``skeleton`` array is in the field's layout
``(C=3, T, V, M)`` — coordinates (x, y, z) in metres, frames, joints, bodies — holding only
the bodies actually present (``M ≥ 1``); padding to the model's body count happens in
:mod:`mksgn.preprocess`.

Every malformed input raises :class:`mksgn.errors.DataError` naming the file (and, for the
NTU text format, the 1-based line) and what was expected.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .guard import read_limited

__all__ = [
    "Clip", "read_ntu_skeleton", "read_ucla_json", "read_clip", "parse_ntu_name",
    "parse_ucla_name", "NTU_MAX_BODIES", "UCLA_ACTIONS", "UCLA_CLASS_NAMES", "NTU60_CLASS_NAMES",
    "NTU120_CLASS_NAMES",
]

NTU_JOINTS = 25
UCLA_JOINTS = 20
NTU_MAX_BODIES = 2
_NTU_INFO_VALUES = 10
_NTU_JOINT_VALUES = 12

NTU_NAME = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")
UCLA_NAME = re.compile(r"^a(\d{2})_s(\d{2})_e(\d{2})_v(\d{2})$")

# NW-UCLA: labels 1..10 are actions a01..a06, a08, a09, a11, a12 (data/README.md).
UCLA_ACTIONS = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)
UCLA_CLASS_NAMES = (
    "pick up with one hand", "pick up with two hands", "drop trash", "walk around",
    "sit down", "stand up", "donning", "doffing", "throw", "carry",
)
NTU60_CLASS_NAMES = (
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup",
    "throw", "sitting down", "standing up", "clapping", "reading", "writing",
    "tear up paper", "wear jacket", "take off jacket", "wear a shoe", "take off a shoe",
    "wear on glasses", "take off glasses", "put on a hat/cap", "take off a hat/cap",
    "cheer up", "hand waving", "kicking something", "reach into pocket", "hopping",
    "jump up", "make a phone call", "playing with phone/tablet", "typing on a keyboard",
    "pointing to something with finger", "taking a selfie", "check time (from watch)",
    "rub two hands together", "nod head/bow", "shake head", "wipe face", "salute",
    "put the palms together", "cross hands in front", "sneeze/cough", "staggering",
    "falling", "touch head", "touch chest", "touch back", "touch neck",
    "nausea or vomiting", "use a fan", "punching/slapping other person",
    "kicking other person", "pushing other person", "pat on back of other person",
    "point finger at the other person", "hugging other person",
    "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
)
# NTU RGB+D 120 (Liu et al., TPAMI 2019), actions A061-A120 as the dataset's action list names them
NTU120_CLASS_NAMES = NTU60_CLASS_NAMES + (
    "put on headphone", "take off headphone", "shoot at the basket", "bounce ball", "tennis bat swing",
    "juggling table tennis balls", "hush (quite)", "flick hair", "thumb up", "thumb down", "make ok sign",
    "make victory sign", "staple book", "counting money", "cutting nails", "cutting paper (using scissors)",
    "snapping fingers", "open bottle", "sniff (smell)", "squat down", "toss a coin", "fold paper",
    "ball up paper", "play magic cube", "apply cream on face", "apply cream on hand back", "put on bag",
    "take off bag", "put something into a bag", "take something out of a bag", "open a box",
    "move heavy objects", "shake fist", "throw up cap/hat", "hands up (both hands)", "cross arms",
    "arm circles", "arm swings", "running on the spot", "butt kicks (kick backward)", "cross toe touch",
    "side kick", "yawn", "stretch oneself", "blow nose", "hit other person with something",
    "wield knife towards other person", "knock over other person (hit with body)",
    "grab other person's stuff", "shoot at other person with a gun", "step on foot", "high-five",
    "cheers and drink", "carry something with other person", "take a photo of other person",
    "follow other person", "whisper in other person's ear", "exchange things with other person",
    "support somebody with hand", "finger-guessing game (playing rock-paper-scissors)",
)


@dataclass
class Clip:
    """One skeleton recording.

    Attributes
    ----------
    name : str
        File stem, e.g. ``a01_s01_e00_v01`` or ``S001C001P001R001A001``.
    skeleton : np.ndarray
        float32, shape ``(C=3, T, V, M)``: x, y, z in metres; only present bodies, ranked
        by motion (most moving first) for NTU.
    label : int
        0-based class index.
    meta : dict
        Ids parsed from the file name (``action``, ``subject``/``performer``, ``view``/
        ``camera``, ...) and ``bodies_seen`` (distinct bodies in the file).
    """

    name: str
    skeleton: np.ndarray
    label: int
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.skeleton.shape[1])

    @property
    def num_bodies(self) -> int:
        return int(self.skeleton.shape[3])


def parse_ntu_name(path: str | Path) -> dict:
    """Ids of an NTU RGB+D file name ``SsssCcccPpppRrrrAaaa`` (Shahroudy et al., CVPR 2016).

    Returns
    -------
    dict with ``setup``, ``camera``, ``performer``, ``replication``, ``action`` (1-based ints).

    Raises
    ------
    DataError
        If the stem does not match the pattern.
    """
    stem = Path(path).name.split(".")[0]
    m = NTU_NAME.match(stem)
    if not m:
        raise DataError(f"file name {stem!r} does not match the NTU RGB+D pattern "
                        "SsssCcccPpppRrrrAaaa (e.g. S001C001P001R001A001)", path)
    keys = ("setup", "camera", "performer", "replication", "action")
    return dict(zip(keys, map(int, m.groups())))


def parse_ucla_name(path: str | Path) -> dict:
    """Ids of an NW-UCLA file name ``aAA_sSS_eEE_vVV`` (action, subject, repetition, view).

    Raises
    ------
    DataError
        If the stem does not match the pattern.
    """
    stem = Path(path).name.split(".")[0]
    m = UCLA_NAME.match(stem)
    if not m:
        raise DataError(f"file name {stem!r} does not match the NW-UCLA pattern "
                        "aAA_sSS_eEE_vVV (e.g. a01_s01_e00_v01)", path)
    return dict(zip(("action", "subject", "repetition", "view"), map(int, m.groups())))


class _Lines:
    """Line cursor over a text file that knows the 1-based line number for errors."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()  # handles CRLF and LF
        self.pos = 0

    def next_values(self, what: str, count: int | None = None) -> list[str]:
        while True:
            if self.pos >= len(self.lines):
                raise DataError(f"file ends early: expected {what} at line {self.pos + 1} "
                                "(truncated file?)", self.path, self.pos + 1)
            raw = self.lines[self.pos]
            self.pos += 1
            if raw.strip():
                break
            raise DataError(f"blank line where {what} was expected", self.path, self.pos)
        values = raw.split()
        if count is not None and len(values) != count:
            raise DataError(f"expected {what} ({count} values), found {len(values)} values",
                            self.path, self.pos)
        return values

    def next_int(self, what: str) -> int:
        values = self.next_values(what, 1)
        try:
            return int(values[0])
        except ValueError:
            raise DataError(f"expected an integer {what}, found {values[0]!r}",
                            self.path, self.pos) from None

    def floats(self, values: list[str], what: str) -> list[float]:
        try:
            out = [float(v) for v in values]
        except ValueError:
            bad = next(v for v in values if not _is_float(v))
            raise DataError(f"non-numeric value {bad!r} in {what}", self.path, self.pos) from None
        if not all(np.isfinite(out)):
            raise DataError(f"non-finite value in {what}", self.path, self.pos)
        return out


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path)
    if path.is_dir():
        raise DataError("is a folder, expected a clip file", path)
    return path


#: Largest clip file read, in bytes (real NTU RGB+D files are under 3 MB, NW-UCLA under 1 MB).
CLIP_LIMIT = 64 << 20


def _read_text(path: Path) -> str:
    raw = read_limited(path, "a skeleton clip", CLIP_LIMIT, error=DataError)
    try:
        return raw.decode("ascii", errors="strict")
    except UnicodeDecodeError as exc:
        raise DataError(f"not a text file (byte {exc.start} is not ASCII)", path) from None


def read_ntu_skeleton(path: str | Path, max_bodies: int = NTU_MAX_BODIES) -> Clip:
    """Parse an official NTU RGB+D ``.skeleton`` file.

    Format: frame count; per frame a body count; per body an info line of 10 values
    (body id, clipped edges, hand confidences/states, restricted, lean x/y, tracking state),
    a joint count (25) and 25 joint lines of 12 values (x y z, depth x y, colour x y,
    orientation w x y z, tracking state). CRLF and LF are both accepted.

    Bodies are tracked by body id across frames and at most ``max_bodies`` are kept,
    ranked by motion as the field does (2s-AGCN ``ntu_gendata.get_nonzero_std``: the sum
    over x, y, z of the standard deviation over the body's present frames and joints).

    Parameters
    ----------
    path : str or Path
    max_bodies : int
        Bodies kept (2 in NTU RGB+D protocols).

    Returns
    -------
    Clip
        ``skeleton`` of shape ``(3, T, 25, M)`` in metres with ``M = min(bodies, max_bodies)``;
        frames where a kept body is absent are zero. ``label = action − 1``.

    Raises
    ------
    DataError
        Bad file name, truncated file, non-numeric values, a wrong value or joint count,
        zero frames, no body in any frame, or data after the last frame.
    """
    path = _existing(path)
    ids = parse_ntu_name(path)
    cur = _Lines(path, _read_text(path))
    num_frames = cur.next_int("frame count")
    if num_frames <= 0:
        raise DataError(f"clip has {num_frames} frames; a clip needs at least one frame",
                        path, cur.pos)
    # every frame takes at least its body-count line: a header claiming more frames than the
    # file has lines is refused before anything is allocated for them
    if num_frames > len(cur.lines) - cur.pos:
        raise DataError(f"header claims {num_frames:,} frames but only {len(cur.lines) - cur.pos:,} "
                        "lines follow (corrupt or truncated file)", path, cur.pos)
    # body id -> {frame: (25, 3) joints}: memory grows with the lines read, not with the header
    tracks: dict[str, dict[int, np.ndarray]] = {}
    for t in range(num_frames):
        num_bodies = cur.next_int(f"body count of frame {t + 1}")
        if num_bodies < 0:
            raise DataError(f"negative body count {num_bodies} in frame {t + 1}", path, cur.pos)
        for _ in range(num_bodies):
            info = cur.next_values(f"body info line of frame {t + 1}", _NTU_INFO_VALUES)
            cur.floats(info, "body info line")
            body_id = info[0]
            num_joints = cur.next_int(f"joint count of frame {t + 1}")
            if num_joints != NTU_JOINTS:
                raise DataError(f"expected {NTU_JOINTS} joints per body (NTU RGB+D Kinect v2), "
                                f"found {num_joints} in frame {t + 1}", path, cur.pos)
            joints = np.zeros((NTU_JOINTS, 3), np.float32)
            for v in range(NTU_JOINTS):
                vals = cur.floats(cur.next_values(f"joint {v + 1} of frame {t + 1}",
                                                  _NTU_JOINT_VALUES), "joint line")
                joints[v] = vals[:3]
            tracks.setdefault(body_id, {})[t] = joints
    while cur.pos < len(cur.lines):
        if cur.lines[cur.pos].strip():
            raise DataError(f"unexpected data after the last of {num_frames} frames",
                            path, cur.pos + 1)
        cur.pos += 1
    if not tracks:
        raise DataError(f"no body in any of the {num_frames} frames", path)
    ranked = sorted(tracks.values(), key=_motion_energy, reverse=True)[:max_bodies]
    dense = []
    for frames in ranked:  # only the kept bodies become (T, V, 3) arrays
        track = np.zeros((num_frames, NTU_JOINTS, 3), np.float32)
        for t, joints in frames.items():
            track[t] = joints
        dense.append(track)
    skeleton = np.stack(dense, axis=-1).transpose(2, 0, 1, 3)  # (T,V,3,M) -> (3,T,V,M)
    meta = dict(ids, bodies_seen=len(tracks))
    return Clip(path.name.split(".")[0], np.ascontiguousarray(skeleton), ids["action"] - 1, meta)


def _motion_energy(frames: dict) -> float:
    """Sum over x, y, z of the std over the body's present frames (any non-zero coordinate)
    and joints; the frames in time order."""
    present = [frames[t] for t in sorted(frames) if frames[t].any()]
    if not present:
        return 0.0
    arr = np.stack(present)
    return float(sum(arr[..., c].std() for c in range(3)))


def read_ucla_json(path: str | Path) -> Clip:
    """Read an NW-UCLA clip ``{"file_name", "skeletons": [T][20][3], "label": 1..10}``.

    Returns
    -------
    Clip
        ``skeleton`` of shape ``(3, T, 20, 1)`` in metres (Kinect v1 camera frame);
        ``label`` 0..9 (file label − 1).

    Raises
    ------
    DataError
        Bad file name, invalid json, missing keys, zero frames, a frame without 20 joints of
        3 finite numbers, a label outside 1..10 or one that disagrees with the file name.
    """
    path = _existing(path)
    ids = parse_ucla_name(path)
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid json ({exc.msg} at line {exc.lineno})", path, exc.lineno) from None
    if not isinstance(doc, dict) or "skeletons" not in doc or "label" not in doc:
        raise DataError('expected a json object with keys "skeletons" and "label"', path)
    frames = doc["skeletons"]
    if not isinstance(frames, list) or len(frames) == 0:
        raise DataError("clip has 0 frames; a clip needs at least one frame", path)
    for t, frame in enumerate(frames):
        if not isinstance(frame, list) or len(frame) != UCLA_JOINTS:
            found = len(frame) if isinstance(frame, list) else type(frame).__name__
            raise DataError(f"frame {t}: expected {UCLA_JOINTS} joints (NW-UCLA Kinect v1), "
                            f"found {found}", path)
        for v, joint in enumerate(frame):
            if (not isinstance(joint, list) or len(joint) != 3
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in joint)):
                raise DataError(f"frame {t} joint {v}: expected 3 numbers (x, y, z), "
                                f"found {joint!r}", path)
    arr = np.asarray(frames, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise DataError("non-finite coordinate", path)
    label = doc["label"]
    if not isinstance(label, int) or isinstance(label, bool) or not 1 <= label <= len(UCLA_ACTIONS):
        raise DataError(f"label {label!r} outside 1..{len(UCLA_ACTIONS)}", path)
    if UCLA_ACTIONS[label - 1] != ids["action"]:
        raise DataError(f"label {label} means action a{UCLA_ACTIONS[label - 1]:02d} but the file "
                        f"name says a{ids['action']:02d}", path)
    skeleton = arr.transpose(2, 0, 1)[..., None]  # (T,V,3) -> (3,T,V,1)
    return Clip(path.stem, np.ascontiguousarray(skeleton), label - 1, dict(ids, bodies_seen=1))


def read_clip(path: str | Path) -> Clip:
    """Read a ``.skeleton`` (NTU RGB+D) or ``.json`` (NW-UCLA) file by its suffix.

    Raises
    ------
    DataError
        Unknown suffix, or any error of the format's reader.
    """
    path = _existing(path)
    if path.suffix == ".skeleton":
        return read_ntu_skeleton(path)
    if path.suffix == ".json":
        return read_ucla_json(path)
    raise DataError("unknown file type: expected .skeleton (NTU RGB+D) or .json (NW-UCLA)", path)
