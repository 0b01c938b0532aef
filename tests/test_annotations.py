"""Whole-dataset files (issue 17): the restricted unpickler, the pyskl ``.pkl`` and ``.npz`` readers,
class names from the dataset, splits and protocols, and the data checked against the model's layout."""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import cli.data
import cli.train
from mksgn.annotations import SafeUnpickler, read_collection, read_npz, read_pyskl, safe_load_pickle
from mksgn.data import SkeletonDataset
from mksgn.errors import ConfigError, DataError
from mksgn.graph import get_layout
from mksgn.io import NTU120_CLASS_NAMES

from .test_layouts import KINECT15

_reconstruct = np.core.multiarray._reconstruct


def _ann(name, label, M=1, T=12, V=25, C=3, seed=0, score=False):
    rng = np.random.default_rng(seed)
    a = {"frame_dir": name, "label": label, "keypoint": rng.normal(size=(M, T, V, C)).astype(np.float32),
         "total_frames": T}
    if score:
        a["keypoint_score"] = rng.uniform(size=(M, T, V)).astype(np.float16)
    return a


def _pyskl(path, anns, split, protocol=4, **extra):
    with open(path, "wb") as f:
        pickle.dump({"split": split, "annotations": anns, **extra}, f, protocol=protocol)
    return path


def _main(main, args, capsys):
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- restricted unpickler

@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_unpickler_reads_containers_and_arrays(protocol):
    doc = {"a": [1, 2.5, "x", None, True, (3, b"\x00\xff")], "s": {1, 2}, "f": frozenset({"q"}),
           "arr": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "big": np.arange(6, dtype=">i8"),
           "fortran": np.asfortranarray(np.ones((3, 2), np.float16)), "str": np.array(["ab", "c"]),
           "scalar": np.int64(7), "ba": bytearray(b"xyz")}
    out = SafeUnpickler(io.BytesIO(pickle.dumps(doc, protocol=protocol))).load()
    ref = pickle.loads(pickle.dumps(doc, protocol=protocol))  # what the plain unpickler builds
    assert out.keys() == doc.keys()
    for k in ("arr", "big", "fortran", "str"):
        assert out[k].dtype == ref[k].dtype and np.array_equal(out[k], doc[k])
    assert out["fortran"].flags.f_contiguous
    assert out["a"] == doc["a"] and out["s"] == doc["s"] and out["scalar"] == 7 and out["ba"] == b"xyz"


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Reduce:
    """Pickles as ``fn(*args)`` with an optional BUILD state."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def test_hostile_pickle_is_refused_and_not_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"split": {}, "annotations": [_System(marker)]})
    pickle.loads(payload)  # the plain unpickler runs it: the marker shows the payload works
    assert marker.exists()
    marker.unlink()
    bad = tmp_path / "hostile.pkl"
    bad.write_bytes(payload)
    with pytest.raises(DataError, match=r"hostile.pkl: refused to load: .*posix.system|hostile.pkl: refused.*system"):
        safe_load_pickle(bad)
    assert not marker.exists()
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"arch": "mksgn", "layout": "ntu25", "num_classes": 60}, "train": {}}))
    for main, args in ((cli.data.main, ["stats", bad]),
                       (cli.train.main, ["--config", cfg, "--data", bad, "--out", tmp_path / "o"])):
        code, err = _main(main, args, capsys)
        assert code == 2 and "Traceback" not in err and "refused to load" in err and not marker.exists()
    code, err = _main(cli.data.main, ["stats", bad], capsys)
    assert err.count("error:") == 1 and "refused to load" in err and "nothing in it was run" in err


HOSTILE = [
    ("eval", lambda: _Reduce(eval, ("1+1",)), "builtins.eval"),
    ("ndarray-by-shape", lambda: _Reduce(np.ndarray, ((1 << 40,),)), "not a readable pickle"),
    ("object-array", lambda: np.array([1, None], dtype=object), "dtype"),
    ("matrix-subclass", lambda: np.matrix([[1.0]]), "numpy.matrix"),
    ("array-state-short", lambda: _Reduce(_reconstruct, (np.ndarray, (0,), b"b"),
                                          (1, (1 << 20,), np.dtype("f4"), False, b"abcd")), "does not match"),
    ("reconstruct-huge", lambda: _Reduce(_reconstruct, (np.ndarray, (1 << 40,), b"b")), "_reconstruct"),
    ("setstate-on-set", lambda: _Reduce(set, ([1],), {"x": 1}), "__setstate__ on a set"),
]


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # numpy.matrix
@pytest.mark.parametrize("make,msg", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_unpickler_refuses(tmp_path, make, msg):
    f = tmp_path / "x.pkl"
    f.write_bytes(pickle.dumps({"annotations": [make()]}, protocol=4))
    with pytest.raises(DataError, match=msg):
        read_pyskl(f)


def test_truncated_or_oversize_pickle(tmp_path):
    f = _pyskl(tmp_path / "t.pkl", [_ann("a", 0)], {"train": ["a"]})
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(DataError, match="t.pkl: not a readable pickle"):
        read_pyskl(f)
    with pytest.raises(DataError, match="larger than the 10-byte limit"):
        safe_load_pickle(f, limit=10)


# --------------------------------------------------------------------------- pyskl reader

def test_pyskl_ntu_file_splits_protocols_and_names(tmp_path):
    anns = [_ann(f"S001C001P00{i}R001A00{i}", i, M=1 + i % 2, T=10 + i, seed=i) for i in range(1, 6)]
    split = {"xsub_train": [a["frame_dir"] for a in anns[:3]], "xsub_val": [a["frame_dir"] for a in anns[3:]],
             "xview_train": [anns[4]["frame_dir"]], "xview_val": [anns[0]["frame_dir"]]}
    f = _pyskl(tmp_path / "ntu.pkl", anns, split)
    col = read_pyskl(f)
    assert col.class_names == NTU120_CLASS_NAMES[:60] and "NTU RGB+D 60" in col.class_source
    assert col.default_protocol == "xsub" and set(col.protocols) == {"xsub", "xview"}
    c = col.clips[1]  # (M, T, V, C) -> (C, T, V, M)
    np.testing.assert_array_equal(c.skeleton, anns[1]["keypoint"].transpose(3, 1, 2, 0))
    assert (c.name, c.label) == (anns[1]["frame_dir"], 2)
    ds = SkeletonDataset(f, "test", train=False)
    assert ds.layout.name == "ntu25" and [x.name for x in ds.clips] == split["xsub_val"]
    assert ds.spec.name == "pyskl" and ds.protocol == "xsub" and len(ds.class_names) == 60
    x, y = ds[0]
    assert x["joint"].shape == (3, 64, 25, 2) and y == 4
    assert [x.name for x in SkeletonDataset(f, "train", protocol="xview").clips] == split["xview_train"]
    with pytest.raises(DataError, match="no split for protocol 'xset'"):
        SkeletonDataset(f, "train", protocol="xset")
    # NTU-120: xset splits (or a label above 59) give the 120 names
    f120 = _pyskl(tmp_path / "ntu120.pkl", anns, {"xset_train": split["xsub_train"], "xset_val": split["xsub_val"]})
    assert read_pyskl(f120).class_names == NTU120_CLASS_NAMES and len(NTU120_CLASS_NAMES) == 120
    assert NTU120_CLASS_NAMES[119] == "finger-guessing game (playing rock-paper-scissors)"


def test_pyskl_2d_keypoints_with_score(tmp_path):
    anns = [_ann(f"k{i}", i % 3, M=2, T=20, V=17, C=2, seed=i, score=True) for i in range(4)]
    f = _pyskl(tmp_path / "k.pkl", anns, {"train": ["k0", "k1", "k2"], "val": ["k3"]}, protocol=5)
    col = read_collection(f)
    sk = col.clips[0].skeleton
    assert sk.shape == (3, 20, 17, 2)  # pyskl GenSkeFeat: (x, y, score)
    np.testing.assert_array_equal(sk[2], anns[0]["keypoint_score"].astype(np.float32).transpose(1, 2, 0))
    assert col.class_names == ("class 0", "class 1", "class 2") and col.default_protocol is None
    ds = SkeletonDataset(f, "test")
    assert ds.layout.name == "coco17" and len(ds) == 1 and ds.protocol is None
    # (x, y, score): centring moves x, y only and training does not rotate, so the score stays a score
    assert col.planar and not read_pyskl(_pyskl(tmp_path / "3d.pkl", [_ann("a", 0)], {"train": ["a"]})).planar
    for split, train in (("test", False), ("train", True)):
        score = SkeletonDataset(f, split, train=train)[0][0]["joint"][2].numpy()
        assert score.min() >= 0 and score.max() <= 1 and score.max() > 0.5
    named = _pyskl(tmp_path / "n.pkl", anns, {"train": ["k0"]}, class_names=["run", "jump", "sit"])
    assert read_pyskl(named).class_names == ("run", "jump", "sit")


BAD_PYSKL = [
    ("no-annotations", lambda: {"split": {}}, "'annotations'"),
    ("no-keypoint", lambda: {"annotations": [{"frame_dir": "a", "label": 0}]}, "no 'keypoint'"),
    ("2d-without-score", lambda: {"annotations": [_ann("a", 0, C=2)]}, "without keypoint_score"),
    ("four-coordinates", lambda: {"annotations": [_ann("a", 0, C=4)]}, "4 coordinates"),
    ("joint-counts-differ", lambda: {"annotations": [_ann("a", 0), _ann("b", 0, V=20)]}, "20 joints"),
    ("total-frames", lambda: {"annotations": [dict(_ann("a", 0), total_frames=99)]}, "total_frames is 99"),
    ("negative-label", lambda: {"annotations": [_ann("a", -1)]}, "label -1"),
    ("nan", lambda: {"annotations": [dict(_ann("a", 0), keypoint=np.full((1, 2, 25, 3), np.nan), total_frames=2)]}, "non-finite"),
    ("duplicate-frame-dir", lambda: {"annotations": [_ann("a", 0), _ann("a", 1)]}, "given twice"),
    ("split-unknown-clip", lambda: {"split": {"train": ["zz"]}, "annotations": [_ann("a", 0)]}, "'zz'"),
    ("few-class-names", lambda: {"annotations": [_ann("a", 3)], "class_names": ["x"]}, "1 class_names"),
]


@pytest.mark.parametrize("make,msg", [b[1:] for b in BAD_PYSKL], ids=[b[0] for b in BAD_PYSKL])
def test_bad_pyskl_files(tmp_path, make, msg):
    f = tmp_path / "bad.pkl"
    f.write_bytes(pickle.dumps(make()))
    with pytest.raises(DataError, match=msg) as err:
        read_pyskl(f)
    assert "bad.pkl" in str(err.value)


# --------------------------------------------------------------------------- npz reader

def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_reader_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 30, 15, 2)).astype(np.float32)
    x[:, :, 25:] = 0  # zero-padded tail frames
    y = np.array([0, 1, 2, 1, 0])
    lay_json = json.dumps(get_layout(KINECT15).to_dict())
    f = _npz(tmp_path / "d.npz", x=x, y=y, split=np.array(["train", "train", "train", "test", "test"]),
             class_names=np.array(["a", "b", "c"]), names=np.array([f"n{i}" for i in range(5)]),
             layout=np.array(lay_json))
    col = read_npz(f)
    assert [c.name for c in col.clips] == [f"n{i}" for i in range(5)] and col.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(col.clips[3].skeleton, x[3])
    assert col.layout == get_layout(KINECT15) and col.splits == {"train": [0, 1, 2], "test": [3, 4]}
    ds = SkeletonDataset(f, "test", train=False)  # the file's own layout
    assert ds.layout.name == "kinect15" and [int(c.label) for c in ds.clips] == [1, 0]
    assert ds[0][0]["joint"].shape == (3, 16, 15, 2)
    # the model's layout must fit the file
    with pytest.raises(DataError, match="clips have 15 joints but layout 'ntu25' has 25"):
        SkeletonDataset(f, "train", layout="ntu25")
    other = dict(KINECT15, name="kinect15b", centre_joint="neck")
    with pytest.raises(DataError, match="the file's layout 'kinect15' differs from layout 'kinect15b'"):
        SkeletonDataset(f, "train", layout=other)
    # no split: every clip is in every split
    plain = _npz(tmp_path / "p.npz", x=x, y=y)
    assert len(SkeletonDataset(plain, "train", layout=KINECT15)) == 5 == len(SkeletonDataset(plain, "test",
                                                                                             layout=KINECT15))
    with pytest.raises(ConfigError, match="no built-in joint layout has 15 joints"):
        SkeletonDataset(plain, "train")
    assert read_npz(plain).class_names == ("class 0", "class 1", "class 2")


def _raw_npy(shape, payload: bytes, dtype="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def test_npz_header_claiming_more_than_it_holds(tmp_path):
    f = tmp_path / "bomb.npz"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _raw_npy((100_000, 3, 300, 25, 2), b"\0" * 64))  # claims 18 GB
        z.writestr("y.npy", _raw_npy((1,), b"\0" * 8, "<i8"))
    with pytest.raises(DataError, match=r"bomb.npz: member x.npy: header claims shape \(100000, 3, 300, 25, 2\)"):
        read_npz(f)


BAD_NPZ = [
    ("missing-y", dict(x=np.zeros((2, 3, 4, 25, 1))), "missing member"),
    ("object-y", dict(x=np.ones((2, 3, 4, 25, 1)), y=np.array([0, None], dtype=object)), "no pickles"),
    ("two-channels", dict(x=np.ones((2, 2, 4, 25, 1)), y=np.array([0, 1])), "C=3"),
    ("float-labels", dict(x=np.ones((2, 3, 4, 25, 1)), y=np.array([0.0, 1.0])), "integer labels"),
    ("short-split", dict(x=np.ones((2, 3, 4, 25, 1)), y=np.array([0, 1]), split=np.array(["train"])), "split"),
    ("unknown-member", dict(x=np.ones((2, 3, 4, 25, 1)), y=np.array([0, 1]), X=np.ones(1)), "unknown member 'X.npy'"),
    ("bad-layout", dict(x=np.ones((2, 3, 4, 25, 1)), y=np.array([0, 1]), layout=np.array("coco18")), "member layout"),
    ("inf", dict(x=np.full((2, 3, 4, 25, 1), np.inf), y=np.array([0, 1])), "non-finite"),
]


@pytest.mark.parametrize("arrays,msg", [b[1:] for b in BAD_NPZ], ids=[b[0] for b in BAD_NPZ])
def test_bad_npz_files(tmp_path, arrays, msg):
    f = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=msg) as err:
        read_npz(f)
    assert "bad.npz" in str(err.value)


def test_not_a_zip(tmp_path):
    f = tmp_path / "x.npz"
    f.write_text("hello")
    with pytest.raises(DataError, match="x.npz: not an .npz"):
        read_collection(f)
