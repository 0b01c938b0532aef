"""mksgn-qcheck: float vs integer divergence per group, the noise floor, the verdict."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.errors import ExportError
from export.frontend import from_model
from export.passes import SPLIT_KINDS
from export.pipeline import fold_all
from export.sensitivity import divergence_profile, perturbation_floor, predict, verdict

from .conftest import UCLA
from .export_fixtures import real_clips, tiny_checkpoint, tiny_model, tiny_quantised

EXE = Path(sys.executable).parent / "mksgn-qcheck"


@pytest.fixture(scope="module")
def graphs(ucla_dir):
    model, q = tiny_quantised("mksgn")
    return model, fold_all(from_model(model)), q


def test_planted_bias_error_is_the_hot_spot_and_earlier_groups_are_untouched(graphs):
    _, folded, q = graphs
    x = real_clips("test", 4)
    clean = divergence_profile(folded, q, x)
    names = [r["group"] for r in clean]
    k = names.index("layers.0.sa_sgc.lif1")
    assert not clean[k]["hot_spot"]
    bad = q.copy()
    g = bad.groups[names[k]]
    g.bias_mant = np.full_like(g.bias_mant, 4095)  # a bias far above threshold, one group only
    g.bias_exp = np.full_like(g.bias_exp, 7)
    planted = divergence_profile(folded, bad, x)
    assert planted[:k] == clean[:k]  # groups before it see exactly the same flips
    assert planted[k]["flips"] > 10 * max(clean[k]["flips"], 1)
    assert planted[k]["hot_spot"] and planted[k]["spikes_int"] > planted[k]["spikes_float"]


def test_divergence_needs_the_quantised_graph(graphs):
    _, folded, _ = graphs
    with pytest.raises(ExportError, match="quantised"):
        divergence_profile(folded, folded, real_clips("test", 1))


def test_noise_floor_is_exact_at_zero_and_reproducible(graphs):
    _, folded, _ = graphs
    x = real_clips("test", 8)
    y = torch.arange(8) % 10
    base = float(100 * (predict(folded, x, "float") == y).double().mean())
    zero = perturbation_floor(folded, x, y, eps=0.0, runs=2)
    assert zero["top1"] == [base, base] and zero["changed"] == [0, 0] and zero["std"] == 0.0
    a = perturbation_floor(folded, x, y, eps=0.05, runs=3, seed=7)
    b = perturbation_floor(folded, x, y, eps=0.05, runs=3, seed=7)
    assert a == b and a["min"] <= a["mean"] <= a["max"]
    with pytest.raises(ExportError, match="runs"):
        perturbation_floor(folded, x, y, runs=0)


def test_float_twin_predictions_equal_the_pytorch_model(graphs):
    model, folded, _ = graphs
    x = real_clips("test", 8)
    with torch.no_grad():
        expected = model(x).argmax(1)
    assert torch.equal(predict(folded, x, "float"), expected)


@pytest.mark.parametrize("f, i, floor, status", [
    (76.0, 75.6, None, "ok"),
    (76.0, 75.0, None, "loss"),
    (76.0, 75.0, {"min": 74.5, "max": 77.0, "eps": 1e-4}, "noise"),
    (76.0, 74.0, {"min": 74.5, "max": 77.0, "eps": 1e-4}, "loss"),
])
def test_verdict(f, i, floor, status):
    assert verdict(f, i, floor, max_loss=0.5)[0] == status


def test_cli_json_matches_the_model_and_bad_input_is_one_line(tmp_path, ucla_dir):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", "mksgn")
    out = tmp_path / "qc.json"
    r = subprocess.run([str(EXE), ckpt, "--data", UCLA, "--clips", "8", "--runs", "1", "--calib-clips", "8",
                        "--divergence-clips", "2", "--json", out, "--plots", tmp_path / "plots"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr
    res = json.loads(out.read_text())
    model = tiny_model("mksgn")
    x = real_clips("test", 8)
    from mksgn.data import SkeletonDataset
    ds = SkeletonDataset(UCLA, "test", train=False)
    y = torch.tensor([ds[i][1] for i in range(8)])
    with torch.no_grad():
        assert res["float_top1"] == pytest.approx(float(100 * (model(x).argmax(1) == y).double().mean()))
    assert res["clips"] == 8 and len(res["divergence"]) == len(tiny_quantised("mksgn")[1].groups)
    assert res["loss"] == pytest.approx(res["float_top1"] - res["int_top1"])
    assert (r.returncode == 1) == (res["status"] == "loss")
    assert (tmp_path / "plots" / "divergence.png").stat().st_size > 1000
    # plain 8-bit and split side by side; a checkpoint without QAT is judged on the split
    plain, split = res["mappings"]
    assert plain["weight_split"] == [] and split["weight_split"] == sorted(SPLIT_KINDS)
    assert split["spike_synapses"] > plain["spike_synapses"]
    assert res["weight_split"] == sorted(SPLIT_KINDS) and res["int_top1"] == split["int_top1"]
    assert "plain 8-bit" in r.stdout and "split" in r.stdout
    bad = subprocess.run([str(EXE), tmp_path / "missing.pt", "--data", UCLA], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
