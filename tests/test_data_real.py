"""Real-data tests: every NW-UCLA clip and all six NTU RGB+D files."""
import json

import numpy as np
import pytest

from mksgn.data import SkeletonDataset, load_clips
from mksgn.graph import get_layout
from mksgn.io import read_clip, read_ucla_json
from mksgn.preprocess import bone, motion, preprocess


@pytest.fixture(scope="module")
def ucla_all(ucla_dir):
    clips, scan = load_clips(ucla_dir)
    return clips, scan


def test_ucla_splits_and_every_clip_loads(ucla_dir, ucla_all):
    clips, scan = ucla_all
    assert len(clips) == 1484 and not scan.skipped
    train = SkeletonDataset(ucla_dir, "train")
    test = SkeletonDataset(ucla_dir, "test")
    assert (len(train), len(test)) == (1020, 464)
    assert sorted(set(train.labels)) == list(range(10)) == sorted(set(test.labels))
    assert all(c.name.endswith(("v01", "v02")) for c in train.clips)
    assert all(c.name.endswith("v03") for c in test.clips)
    for c in clips:
        assert c.skeleton.shape[0] == 3 and c.skeleton.shape[2:] == (20, 1)


def test_ucla_known_clip_values(ucla_dir):
    path = ucla_dir / "all_sqe" / "a01_s01_e00_v01.json"
    raw = json.loads(path.read_text())
    clip = read_ucla_json(path)
    np.testing.assert_allclose(clip.skeleton[:, 0, 0, 0], [-0.619699, 0.328046, 3.18186], rtol=0, atol=1e-6)
    np.testing.assert_allclose(clip.skeleton[:, -1, 19, 0], raw["skeletons"][-1][19], atol=1e-6)
    assert clip.label == raw["label"] - 1 == 0
    assert clip.num_frames == len(raw["skeletons"])


def test_ucla_one_frame_clips(ucla_dir):
    for name in ("a02_s09_e04_v02", "a02_s09_e04_v03"):
        clip = read_clip(ucla_dir / "all_sqe" / f"{name}.json")
        assert clip.num_frames == 1
        x = preprocess(clip.skeleton, get_layout("ucla20"), ("joint", "joint_motion"), train=False)
        assert x["joint"].shape == (3, 52, 20, 1)
        # a one-frame clip resized to 52 frames is constant in time: zero motion (up to
        # float32 rounding of the bilinear resize, one ulp at 1 m)
        assert np.abs(x["joint_motion"]).max() <= 2.4e-7
        np.testing.assert_allclose(x["joint"][:, 10], x["joint"][:, 0])


def test_ntu_all_six_parse_and_frame_counts(ntu_dir):
    files = sorted(ntu_dir.glob("*.skeleton"))
    assert len(files) == 6
    for f in files:
        clip = read_clip(f)
        header = int(f.read_text().splitlines()[0])
        assert clip.num_frames == header
        assert clip.skeleton.shape[2] == 25
        assert clip.label == clip.meta["action"] - 1


def test_ntu_two_body_clip(ntu_dir):
    clip = read_clip(ntu_dir / "S001C003P008R002A058.skeleton")
    assert clip.num_bodies == 2 and clip.meta["bodies_seen"] == 2
    assert clip.label == 57
    for m in range(2):
        assert (clip.skeleton[..., m] != 0).any(axis=(0, 2)).all()  # filled in every frame
    # first body's first joint equals the file (ranked bodies: it is one of the two)
    lines = (ntu_dir / "S001C003P008R002A058.skeleton").read_text().splitlines()
    first_bodies = [[float(v) for v in lines[i].split()[:3]] for i in (4, 31)]
    got = [list(clip.skeleton[:, 0, 0, m]) for m in range(2)]
    for g in got:
        assert any(np.allclose(g, fb, atol=1e-6) for fb in first_bodies)
    x = SkeletonDataset(ntu_dir, "train", ("joint",))[
        [c.name for c in SkeletonDataset(ntu_dir, "train").clips].index("S001C003P008R002A058")]
    assert x[0]["joint"].shape == (3, 64, 25, 2)


def test_ntu_single_body_zero_padded(ntu_dir):
    ds = SkeletonDataset(ntu_dir, "test")
    x, _ = ds[0]
    assert x["joint"].shape == (3, 64, 25, 2)
    assert float(x["joint"][..., 1].abs().sum()) == 0.0


def test_ntu_splits(ntu_dir):
    xsub_train = {c.name for c in SkeletonDataset(ntu_dir, "train", protocol="xsub").clips}
    xview_test = {c.name for c in SkeletonDataset(ntu_dir, "test", protocol="xview").clips}
    # performers 1 and 8 and 15 train in cross-subject, performer 3 tests
    assert "S002C001P003R001A003" not in xsub_train and "S001C001P001R001A001" in xsub_train
    # camera 1 is the cross-view test camera
    assert xview_test == {"S001C001P001R001A001", "S001C001P001R001A011", "S002C001P003R001A003",
                          "S003C001P015R001A034"}


def test_bone_and_motion_by_hand(ucla_dir):
    """Against values computed by hand from the raw json of a real clip."""
    raw = json.loads((ucla_dir / "all_sqe" / "a04_s02_e01_v01.json").read_text())["skeletons"]
    lay = get_layout("ucla20")
    joint = np.asarray(raw, dtype=np.float32).transpose(2, 0, 1)[..., None]
    b = bone(joint, lay)
    # head (joint 4) minus shoulder centre (joint 3), 1-based, frame 5
    np.testing.assert_allclose(b[:, 5, 3, 0], np.subtract(raw[5][3], raw[5][2]), atol=1e-6)
    # left elbow (6) minus left shoulder (5)
    np.testing.assert_allclose(b[:, 0, 5, 0], np.subtract(raw[0][5], raw[0][4]), atol=1e-6)
    assert np.all(b[:, :, 2] == 0)  # root bone is zero
    m = motion(joint)
    np.testing.assert_allclose(m[:, 7, 10, 0], np.subtract(raw[8][10], raw[7][10]), atol=1e-6)
    assert np.all(m[:, -1] == 0)


def test_centring_and_test_crop_deterministic(ucla_dir):
    ds = SkeletonDataset(ucla_dir, "test", ("joint",))
    a, _ = ds[3]
    b, _ = ds[3]
    assert np.array_equal(a["joint"], b["joint"])
    # the first resized frame starts near the origin at the spine joint (centred on frame 0)
    assert float(a["joint"][:, 0, 1, 0].abs().max()) < 0.15


def test_train_augmentation_seeded(ucla_dir):
    ds1 = SkeletonDataset(ucla_dir, "train", ("joint", "bone"), seed=7)
    ds2 = SkeletonDataset(ucla_dir, "train", ("joint", "bone"), seed=7)
    x1, y1 = ds1[11]
    x2, y2 = ds2[11]
    assert y1 == y2 and np.array_equal(x1["bone"], x2["bone"])
    ds2.set_epoch(1)
    assert not np.array_equal(x1["joint"], ds2[11][0]["joint"])  # a new draw each epoch
    # rotation preserves bone lengths (rigid motion)
    clean = preprocess(ds1.clips[11].skeleton, ds1.layout, ("bone",), train=False)["bone"]
    assert np.allclose(np.linalg.norm(clean, axis=0).max(), np.linalg.norm(x1["bone"].numpy(), axis=0).max(),
                       rtol=0.35)
