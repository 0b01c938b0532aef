"""The shipped configs: grouped by model (``configs/<arch>/``), every one parses, and every
``init_from`` / ``init_encoders`` path resolves — to a checkpoint in ``models/`` or to the output
of an earlier config of the same recipe chain (``mksgn-train --config configs/<arch>/<name>.json
--out runs/<arch>/<name>`` writes ``runs/<arch>/<name>/model.pt``)."""
import json
from pathlib import Path

import pytest

from mksgn.train import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.json"))


def output_of(config: Path, root: Path) -> str:
    """``runs/<arch>/<name>/model.pt``: where the recipe writes the model of ``config``."""
    return f"runs/{config.relative_to(root / 'configs').with_suffix('').as_posix()}/model.pt"


def init_paths(config: Path) -> list:
    train = json.loads(config.read_text())["train"]
    return [p for p in [train.get("init_from"), *(train.get("init_encoders") or {}).values()] if p]


def unresolved(configs, root: Path) -> list:
    """One line per init path of ``configs`` that names neither a file under ``root/models``
    nor the output of another config that comes before it (name order) and whose own chain
    resolves."""
    produced = {output_of(c, root): c for c in configs}
    bad = []
    for c in configs:
        for p in init_paths(c):
            if p.startswith("models/"):
                if not (root / p).is_file():
                    bad.append(f"{c.relative_to(root)}: {p} does not exist")
            elif p not in produced:
                bad.append(f"{c.relative_to(root)}: {p} is neither in models/ nor made by a shipped config")
            elif not produced[p].name < c.name or produced[p].parent != c.parent:
                bad.append(f"{c.relative_to(root)}: {p} is made by {produced[p].relative_to(root)}, "
                           "not an earlier config of the same chain")
    return bad


def test_configs_are_grouped_by_model_and_parse():
    assert CONFIGS
    assert not list((ROOT / "configs").glob("*.json")), "configs live in configs/<arch>/"
    for f in CONFIGS:
        mcfg, tcfg = load_config(f)
        assert f.parent.name == mcfg.arch, f
        assert mcfg.layout == "ucla20" and tcfg.dataset == "ucla"


def test_every_init_path_resolves():
    assert unresolved(CONFIGS, ROOT) == []
    assert sum(bool(init_paths(c)) for c in CONFIGS) >= 4  # the chains are really checked


def test_a_dangling_init_path_is_reported(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.pt").write_bytes(b"")
    d = tmp_path / "configs" / "mksgn"
    d.mkdir(parents=True)

    def cfg(name, init):
        (d / f"{name}.json").write_text(json.dumps({"model": {}, "train": {"init_from": init}}))
        return d / f"{name}.json"

    files = [cfg("x_1", "models/a.pt"), cfg("x_2", "runs/mksgn/x_1/model.pt"), cfg("y_1", "models/gone.pt"),
             cfg("y_0", "runs/mksgn/y_1/model.pt"), cfg("z", "runs/lost/model.pt")]
    bad = unresolved(sorted(files), tmp_path)
    assert len(bad) == 3, bad
    assert any("gone.pt does not exist" in b for b in bad)
    assert any("y_0.json" in b and "not an earlier config" in b for b in bad)
    assert any("runs/lost/model.pt is neither" in b for b in bad)


@pytest.mark.parametrize("name, model", [("mksgn/ucla_joint_3_noise_restart", "mksgn_ucla_joint_float"),
                                         ("mksgn/ucla_joint_13_qat_agree_eval16", "mksgn_ucla_joint"),
                                         ("base_sgn/ucla_joint", "base_sgn_ucla_joint"),
                                         ("mksgn/ucla_4modal_paper", "mksgn_ucla_4modal_kd_interim"),
                                         ("mksgn/ucla_4modal_scratch_width05", "mksgn_ucla_4modal_kd"),
                                         ("mksgn/ucla_joint_scratch60_width05", "mksgn_ucla_joint_width05"),
                                         ("ctrgcn/ucla_teacher", "ctrgcn_ucla_joint"),
                                         ("mksgn/ucla_joint_7_qat_cont", "mksgn_ucla_joint_qat_interim")])
def test_the_last_config_of_a_chain_is_the_shipped_model_s_recipe(name, model):
    """The shipped checkpoint was trained with the train settings of its chain's last config
    (paths apart: ``init_from`` named the run folder of its day)."""
    import torch

    from mksgn.checkpoint import checkpoint_fusion_rule

    ck = torch.load(ROOT / "models" / f"{model}.pt", map_location="cpu", weights_only=True)
    want = json.loads((ROOT / "configs" / f"{name}.json").read_text())
    got_train = {k: v for k, v in ck["config"]["train"].items() if k in want["train"] and k != "init_from"}
    if "smf_weights" in want["train"]:  # checkpoints from before the key was recorded: "paper"
        got_train["smf_weights"] = checkpoint_fusion_rule(ck)
    assert got_train == {k: v for k, v in want["train"].items() if k != "init_from"}
    assert all(ck["config"]["model"].get(k) == v for k, v in want["model"].items())
