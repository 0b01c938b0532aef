"""Joint layouts as data (issue 17): the four built-ins, user layout files and their errors, and
the layout carried by model configs, checkpoints and export manifests."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import cli.train
from export.errors import ExportError
from export.exporter import check_manifest
from mksgn.checkpoint import load_checkpoint, save_checkpoint
from mksgn.errors import CheckpointError, ConfigError
from mksgn.graph import LAYOUTS, Layout, get_layout, layout_for_joints, layout_record
from mksgn.models import ModelConfig, build_model

# a 15-joint Kinect-style skeleton; edges by joint name, centre by name
KINECT15 = {
    "name": "kinect15",
    "joint_names": ["head", "neck", "torso", "shoulder_left", "elbow_left", "hand_left", "shoulder_right",
                    "elbow_right", "hand_right", "hip_left", "knee_left", "foot_left", "hip_right", "knee_right",
                    "foot_right"],
    "inward": [["head", "neck"], ["neck", "torso"], ["shoulder_left", "neck"], ["elbow_left", "shoulder_left"],
               ["hand_left", "elbow_left"], ["shoulder_right", "neck"], ["elbow_right", "shoulder_right"],
               ["hand_right", "elbow_right"], ["hip_left", "torso"], ["knee_left", "hip_left"],
               ["foot_left", "knee_left"], ["hip_right", "torso"], ["knee_right", "hip_right"],
               ["foot_right", "knee_right"]],
    "centre_joint": "torso",
    "max_bodies": 2,
    "window": 16,
}


def _reaches_root(lay: Layout) -> bool:
    root = [v for v, p in lay.bone_pairs if v == p]
    for v in range(lay.num_joints):
        for _ in range(lay.num_joints + 1):
            if lay.bone_parent[v] == v:
                break
            v = lay.bone_parent[v]
        if v != root[0]:
            return False
    return len(root) == 1


# --------------------------------------------------------------------------- built-ins

@pytest.mark.parametrize("name,V,M,centre", [("ntu25", 25, 2, "spine_mid"), ("ucla20", 20, 1, "spine"),
                                             ("openpose18", 18, 2, "neck"), ("coco17", 17, 2, "nose")])
def test_builtin_layouts(name, V, M, centre):
    lay = get_layout(name)
    assert (lay.num_joints, lay.max_bodies, len(lay.joint_names), len(set(lay.joint_names))) == (V, M, V, V)
    assert lay.joint_names[lay.centre_joint] == centre
    assert len(lay.inward) == V - 1 and _reaches_root(lay)  # a tree: connected, one root
    A = lay.adjacency()
    assert A.shape == (3, V, V) and np.all(np.isclose(A[1].sum(0), 1) | (A[1].sum(0) == 0))
    assert layout_record(lay) == name and lay.builtin
    assert layout_for_joints(V) == lay


def test_builtin_2d_edges_follow_pyskl():
    op, coco = get_layout("openpose18"), get_layout("coco17")
    # pyskl graph.py: openpose (4, 3) wrist -> elbow, (0, 1) nose -> neck; coco (15, 13) ankle -> knee
    assert (op.joint_names[4], op.joint_names[op.bone_parent[4]]) == ("wrist_right", "elbow_right")
    assert op.bone_parent[0] == 1 and op.bone_parent[1] == 1          # neck is the root
    assert (coco.joint_names[15], coco.joint_names[coco.bone_parent[15]]) == ("ankle_left", "knee_left")
    assert coco.bone_parent[0] == 0                                   # nose is the root


def test_no_builtin_for_other_joint_counts():
    with pytest.raises(ConfigError, match="no built-in joint layout has 15 joints.*--layout"):
        layout_for_joints(15)


# --------------------------------------------------------------------------- user layout files

def test_user_layout_file_round_trip(tmp_path):
    f = tmp_path / "k15.json"
    f.write_text(json.dumps(KINECT15))
    lay = get_layout(str(f))
    assert (lay.name, lay.num_joints, lay.max_bodies, lay.window) == ("kinect15", 15, 2, 16)
    assert lay.joint_names[lay.centre_joint] == "torso" and _reaches_root(lay)
    assert lay.joint_names[lay.bone_parent[5]] == "elbow_left"       # hand_left -> elbow_left
    rec = layout_record(lay)
    assert isinstance(rec, dict) and rec["inward"][0] == [0, 1]      # names became indices
    assert get_layout(rec) == lay == Layout.from_dict(json.loads(json.dumps(rec)))
    assert not lay.builtin


def _bad(**change):
    d = copy.deepcopy(KINECT15)
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return d


BAD_LAYOUTS = [
    ("unknown-key", _bad(centre="torso"), "unknown key"),
    ("missing-inward", _bad(inward=None), "missing key"),
    ("duplicate-name", _bad(joint_names=KINECT15["joint_names"][:-1] + ["head"]), "more than once"),
    ("unknown-joint", _bad(inward=KINECT15["inward"] + [["tail", "torso"]]), "'tail', which is not in joint_names"),
    ("index-out-of-range", _bad(inward=KINECT15["inward"][:-1] + [[15, 13]]), r"index in \[0, 14\]"),
    ("self-edge", _bad(inward=KINECT15["inward"] + [["head", "head"]]), "to itself"),
    ("edge-twice", _bad(inward=KINECT15["inward"] + [["neck", "head"]]), "given twice"),
    ("disconnected", _bad(inward=KINECT15["inward"][:-1]), "2 joints have no inward edge"),
    ("loop", _bad(inward=KINECT15["inward"][1:] + [["torso", "knee_left"]]), "parents of joint .* loop"),
    ("centre-out-of-range", _bad(centre_joint=99), "centre_joint is 99"),
    ("window-zero", _bad(window=0), "window is 0"),
    ("bodies-bool", _bad(max_bodies=True), "max_bodies is True"),
    ("builtin-name", _bad(name="ntu25"), "built-in layout"),
    ("bad-name", _bad(name="my layout!"), "name 'my layout!'"),
    ("not-an-object", [1, 2], "expected a JSON object"),
]


@pytest.mark.parametrize("doc,msg", [c[1:] for c in BAD_LAYOUTS], ids=[c[0] for c in BAD_LAYOUTS])
def test_bad_layout_file_is_a_clear_error(tmp_path, doc, msg):
    f = tmp_path / "bad_layout.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=msg) as err:
        get_layout(f)
    assert str(err.value).startswith(str(f))  # names the file


def test_unreadable_layout_files(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('{"name": "x",')
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):
        get_layout(f)
    with pytest.raises(ConfigError, match="no such file"):
        get_layout(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="unknown joint layout 'kinect15'"):
        get_layout("kinect15")


def test_train_cli_refuses_a_bad_layout_file(tmp_path, capsys):
    bad = tmp_path / "bad_layout.json"
    bad.write_text(json.dumps(_bad(inward=KINECT15["inward"][:-1])))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"arch": "mksgn", "layout": "ntu25", "num_classes": 60},
                               "train": {"epochs": 1}}))
    with pytest.raises(SystemExit) as exc:
        cli.train.main(["--config", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                        "--layout", str(bad)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert err.count("error:") == 1 and "bad_layout.json" in err and "no inward edge" in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- configs, checkpoints, manifests

def test_model_config_stores_the_whole_layout(tmp_path):
    f = tmp_path / "k15.json"
    f.write_text(json.dumps(KINECT15))
    cfg = ModelConfig.from_dict({"arch": "mksgn", "layout": str(f), "num_classes": 6, "width": 0.0625,
                                 "temporal_kernel": 3})
    assert cfg.layout == get_layout(f).to_dict()
    f.unlink()  # from here on nothing needs the file
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.joint_layout.num_joints == 15
    model = build_model(again)
    assert model(torch.zeros(2, 3, 16, 15, 2)).shape == (2, 6)
    with pytest.raises(ConfigError, match="expected .*15, 2"):
        model(torch.zeros(2, 3, 16, 25, 2))


def _ckpt(path, layout_model, layout_data):
    cfg = ModelConfig.from_dict({"arch": "mksgn", "layout": layout_model, "num_classes": 6, "width": 0.0625,
                                 "temporal_kernel": 3})
    sd = build_model(cfg).state_dict()
    save_checkpoint(path, {"config": {"model": cfg.to_dict(), "train": {}}, "state_dict": sd,
                           "class_names": [f"c{i}" for i in range(6)],
                           "data": {"dataset": "npz", "layout": layout_data, "modalities": ["joint"],
                                    "window": 16, "protocol": None},
                           "metrics": {}, "git_revision": "test", "epoch": 0})
    return path


def test_checkpoint_and_manifest_carry_the_layout(tmp_path):
    rec = get_layout(KINECT15).to_dict()
    ck = load_checkpoint(_ckpt(tmp_path / "ok.pt", rec, rec))
    assert get_layout(ck["data"]["layout"]) == get_layout(ck["config"]["model"]["layout"]) == get_layout(KINECT15)
    other = dict(rec, centre_joint=0)
    with pytest.raises(CheckpointError, match="data.layout 'kinect15' differs from the model's layout"):
        load_checkpoint(_ckpt(tmp_path / "bad.pt", rec, other))
    manifest = {"manifest_version": 1, "target": "lava", "files": {"network.net": "0" * 64},
                "class_names": ["a"], "data": {"layout": rec, "modalities": ["joint"]}}
    assert check_manifest(manifest, "m.json")["data"]["layout"] == rec
    broken = dict(manifest, data={"layout": dict(rec, inward=rec["inward"][:-1]), "modalities": ["joint"]})
    with pytest.raises(ExportError, match="m.json: data.layout: .*no inward edge"):
        check_manifest(broken, "m.json")


def test_builtin_records_unchanged():
    """Built-in layouts stay names in configs (checkpoints and exports of shipped models are unchanged)."""
    cfg = ModelConfig.from_dict({"arch": "mksgn", "layout": "ucla20", "num_classes": 10})
    assert cfg.to_dict()["layout"] == "ucla20"
    assert all(layout_record(LAYOUTS[n].to_dict()) == n for n in LAYOUTS)
