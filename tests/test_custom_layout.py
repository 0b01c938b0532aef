"""Issue 17's done-when: a pyskl ``.pkl`` and an ``.npz`` with a user 15-joint layout, built here by
joint selection from the real NTU RGB+D samples, go through ``mksgn-train`` (1 epoch) →
``mksgn-export --target lava`` → ``mksgn-sim --clips 1`` (bit-exact) with no code change.

The ``.pkl`` is written with plain ``pickle`` (pyskl's own format: ``split`` and ``annotations``
with ``keypoint (M, T, V, C)``) and trained with ``--layout FILE``; the ``.npz`` names its
classes and carries the layout itself, and its config's ``model.layout`` is the layout file.
The layout file is deleted after training: mksgn-eval, mksgn-export and mksgn-sim read the
layout from the checkpoint and the export. Commands run in-process (the console scripts'
``main``); the model is width 0.0625 with a 16-frame window. The Lava replays (~90 s each on
2 shared cores) are marked slow; training, export, evaluation and the layout round trip stay in
the default suite (~40 s).
"""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import cli.evaluate
import cli.export
import cli.sim
import cli.train
from mksgn.checkpoint import load_checkpoint
from mksgn.graph import get_layout
from mksgn.io import NTU60_CLASS_NAMES, read_ntu_skeleton

from .test_layouts import KINECT15

# NTU RGB+D joints (0-based) of the 15 KINECT15 joints: head, spine shoulder (neck), spine mid
# (torso), left shoulder/elbow/hand, right shoulder/elbow/hand, left hip/knee/foot, right hip/knee/foot
NTU_JOINTS = [3, 20, 1, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19]
TINY = {"arch": "mksgn", "num_classes": 60, "width": 0.0625, "temporal_kernel": 3}
TRAIN = {"epochs": 1, "batch_size": 2, "lr": 0.05, "warmup_epochs": 0}


def _run(main, args, capsys):
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, ntu_dir):
    """The layout file, the two data files and their configs (data from the real NTU samples)."""
    d = tmp_path_factory.mktemp("custom_layout")
    layout = d / "kinect15.json"
    layout.write_text(json.dumps(KINECT15))
    clips = [read_ntu_skeleton(p) for p in sorted(ntu_dir.glob("*.skeleton"))]
    assert len(clips) == 6
    names = [c.name for c in clips]
    anns = [{"frame_dir": c.name, "label": c.label, "total_frames": c.num_frames,
             "keypoint": np.ascontiguousarray(c.skeleton[:, :, NTU_JOINTS].transpose(3, 1, 2, 0))} for c in clips]
    with open(d / "ntu15.pkl", "wb") as f:  # pyskl: NTU cross-subject split names
        pickle.dump({"split": {"xsub_train": names[:4], "xsub_val": names[4:]}, "annotations": anns}, f)
    x = np.zeros((6, 3, max(c.num_frames for c in clips), 15, 2), np.float32)
    for i, c in enumerate(clips):
        x[i, :, :c.num_frames, :, :c.num_bodies] = c.skeleton[:, :, NTU_JOINTS]
    class_names = [f"A{c.meta['action']:03d}" for c in clips]
    np.savez(d / "ntu15.npz", x=x, y=np.arange(6), split=np.array(["train"] * 4 + ["test"] * 2),
             class_names=np.array(class_names), names=np.array(names),
             layout=np.array(json.dumps(get_layout(layout).to_dict())))
    (d / "cfg_pkl.json").write_text(json.dumps({"model": {**TINY, "layout": "ntu25"}, "train": TRAIN}))
    (d / "cfg_npz.json").write_text(json.dumps({"model": {**TINY, "layout": str(layout), "num_classes": 6},
                                                "train": TRAIN}))
    return {"dir": d, "layout": layout, "clips": clips, "class_names": class_names}


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory):
    """Train both (1 epoch, one thread), delete the layout file, then export both to Lava."""
    d = built["dir"]
    runs = {}
    for fmt in ("pkl", "npz"):
        extra = ["--layout", built["layout"]] if fmt == "pkl" else []
        _invoke(cli.train.main, ["--config", d / f"cfg_{fmt}.json", "--data", d / f"ntu15.{fmt}",
                                 "--out", d / f"run_{fmt}", "--threads", "1", *extra])
        runs[fmt] = {"ckpt": d / f"run_{fmt}" / "model.pt", "data": d / f"ntu15.{fmt}"}
    built["layout"].unlink()  # from here on nothing may need the layout file
    for fmt, r in runs.items():
        r["export"] = d / f"exp_{fmt}"
        _invoke(cli.export.main, [r["ckpt"], "--target", "lava", "-o", r["export"], "--calib-data", r["data"],
                                  "--calib-clips", "4"])
    return runs


def _invoke(main, args):
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code == 0, f"{args[0]}: exit {exc.code}"


def test_custom_layout_trains_and_exports_without_the_file(built, exported, capsys):
    want = get_layout(KINECT15).to_dict()
    assert not built["layout"].exists()
    for fmt, r in exported.items():
        ck = load_checkpoint(r["ckpt"])
        assert ck["config"]["model"]["layout"] == want == ck["data"]["layout"]  # the whole layout, names -> indices
        assert ck["data"]["window"] == 16 and ck["data"]["dataset"] == ("pyskl" if fmt == "pkl" else "npz")
        manifest = json.loads((r["export"] / "manifest.json").read_text())
        assert manifest["data"]["layout"] == want and manifest["model_config"]["layout"] == want
        assert manifest["input_encoding"]["shape"] == [3, 16, 15, 2]
        names = manifest["class_names"]
        if fmt == "pkl":  # pyskl files name no classes: NTU-60's, from the xsub split names
            assert names == list(NTU60_CLASS_NAMES) and ck["data"]["protocol"] == "xsub"
        else:
            assert names == built["class_names"] and ck["data"]["protocol"] is None
    # evaluation reads the layout from the checkpoint too (the 2 xsub_val clips of the .pkl)
    out = _run(cli.evaluate.main, [exported["pkl"]["ckpt"], "--data", exported["pkl"]["data"],
                                   "--json", built["dir"] / "eval.json", "--model-card", built["dir"] / "card.md"],
               capsys)
    res = json.loads((built["dir"] / "eval.json").read_text())
    assert res["clips"] == 2 and "top-1" in out
    card = (built["dir"] / "card.md").read_text().splitlines()
    assert card[2].startswith("MK-SGN (kinect15, width 0.0625") and "pyskl data (split protocol xsub)" in card[2]


def test_export_refuses_data_of_another_layout(exported, capsys, ntu_dir, tmp_path):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.export.main([str(exported["npz"]["ckpt"]), "--target", "lava", "-o", str(tmp_path / "e"),
                         "--calib-data", str(ntu_dir), "--calib-clips", "2"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("error:") == 1
    assert "layout 'ntu25'" in err and "'kinect15'" in err and not (tmp_path / "e").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pkl", "npz"])
def test_custom_layout_replays_bit_exact_in_lava(exported, fmt, capsys, tmp_path):
    r = exported[fmt]
    out = _run(cli.sim.main, [r["export"], "--data", r["data"], "--clips", "1", "--report", tmp_path / "r.json",
                              "--quiet"], capsys)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["bit_exact"] is True and rep["clips"] == 1 and not rep["mismatches"]
    assert "bit-exact on 1/1 clips" in out
