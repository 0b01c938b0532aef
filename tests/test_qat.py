"""Quantisation-aware training (issue 14): the QAT forward is the export's integer twin, its
gradients reach the float weights, a QAT checkpoint records its grid and the export checks it.
Real NW-UCLA clips, a tiny warmed model (~1 min)."""
import json

import pytest
import torch
import torch.nn.functional as F

from export.exporter import run_export
from export.frontend import from_model
from export.grid import compare_grids
from export.passes import SPLIT_KINDS
from export.pipeline import calibration_clips, check_qat_grid, default_weight_split, export_graph, lower
from export.qat import QATForward
from export.twin import run_graph
from mksgn.checkpoint import load_checkpoint, save_checkpoint
from mksgn.errors import ConfigError
from mksgn.train import train

from .export_fixtures import real_clips, tiny_model

TINY_CONFIG = {"model": {"arch": "mksgn", "layout": "ucla20", "num_classes": 10, "width": 0.0625,
                         "temporal_kernel": 3},
               "train": {"epochs": 1, "batch_size": 4, "lr": 1e-6, "warmup_epochs": 0, "lr_steps": [],
                         "seed": 3, "modalities": ["joint"], "dataset": "ucla", "qat": True,
                         "qat_calib_clips": 8}}


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("mksgn")
    calib = real_clips("train", 16)
    qat = QATForward(calib)
    qat.calibrate(model)
    return model, calib, qat


def test_eval_forward_is_the_twin_bit_for_bit(tiny):
    """The logits of the QAT forward, with and without gradients, are the export's integer
    logits (plain 8-bit, same calibration clips) on real test clips: equal, no tolerance."""
    model, calib, qat = tiny
    q = lower(from_model(model), calib, weight_split=())
    x = real_clips("test", 8)
    twin = run_graph(q, x, mode="int").logits / (q.meta["readout_scale"] * q.time_steps)
    with torch.no_grad():
        got = qat(model, x)
    assert torch.equal(got.double(), twin)
    with_grad = qat(model, x)  # the straight-through path computes the same integers
    assert with_grad.requires_grad and torch.equal(with_grad.detach().double(), twin)
    assert len(set(twin.argmax(1).tolist())) > 1  # the model is alive: not all one class


def test_gradients_reach_the_float_weights_straight_through(tiny):
    """Every parameter the export reads gets a gradient (the surrogate carries it through every
    neuron group down to the input conv), and the readout's is exactly the straight-through
    one: d logits / d W_fc = Σ_t s_t / T_s (head spikes of the integer twin)."""
    model, calib, qat = tiny
    x, y = real_clips("test", 8), torch.arange(8) % 10
    model.zero_grad(set_to_none=True)
    logits = qat(model, x)
    logits.retain_grad()
    F.cross_entropy(logits, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    q = lower(from_model(model), calib, weight_split=())
    spikes = run_graph(q, x, mode="int", record=["head.lif"]).spikes["head.lif"].double()  # (T_s, B, C, 1, 1)
    rate = spikes.mean(0).flatten(1)  # (B, C)
    expected = logits.grad.double().T @ rate
    assert torch.allclose(model.head.fc.weight.grad.double(), expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(model.head.fc.bias.grad.double(), logits.grad.double().sum(0), rtol=1e-5, atol=1e-7)


def test_a_few_qat_steps_lower_the_integer_loss(tiny):
    """SGD on the straight-through gradient lowers the loss of the integer network itself."""
    model, calib, qat = tiny
    model = tiny_model("mksgn")
    x, y = real_clips("train", 8), torch.arange(8) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    with torch.no_grad():
        before = F.cross_entropy(qat(model, x), y).item()
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(qat(model, x), y).backward()
        opt.step()
    with torch.no_grad():
        after = F.cross_entropy(qat(model, x), y).item()
    assert after < before, (before, after)  # a zero or sign-flipped gradient fails


def test_compare_grids_names_every_difference():
    grid = {"input_frac_bits": 12, "weight_split": [], "readout_scale_exp": 7,
            "groups": {"a": {"scale_exp": 9, "vth_mant": 512, "du": 4095, "dv": 3072}},
            "synapses": {"s": 3}}
    assert compare_grids(grid, json.loads(json.dumps(grid))) == []
    other = json.loads(json.dumps(grid))
    other["groups"]["a"]["scale_exp"] = 8
    other["synapses"]["s"] = 4
    other["weight_split"] = list(SPLIT_KINDS)
    diffs = compare_grids(grid, other)
    assert len(diffs) == 3 and any("neuron group a scale_exp: 9 (trained) vs 8 (export)" in d for d in diffs)
    assert any("synapse s weight_exp" in d for d in diffs) and any("weight_split" in d for d in diffs)


def test_qat_config_without_the_export_forward_is_refused(tmp_path, small_ucla):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(ConfigError, match="train.qat needs the export layer"):
        train(cfg, small_ucla, tmp_path / "o", log=lambda *a: None)


def test_qat_checkpoint_records_its_grid_and_the_export_checks_it(tmp_path, small_ucla):
    """One QAT epoch on real clips: the checkpoint records train.qat and the grid; the export
    defaults to plain 8-bit for it and finds the same grid (same calibration clips); a planted
    change of one group's scale in the record is reported (summary warning, manifest)."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    qat = QATForward(calibration_clips(small_ucla, ["joint"], 8, progress=False))
    train(cfg, small_ucla, tmp_path / "run", log=lambda *a: None, forward=qat)
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert ckpt["config"]["train"]["qat"] is True
    rec = ckpt["metrics"]["qat"]
    assert rec["grid"]["weight_split"] == [] and rec["calibrated_at_epochs"] == [0]
    assert rec["grid"]["groups"]["sc.lif"]["scale_exp"] == int(torch.tensor(qat.scales["groups"]["sc.lif"]).log2())
    assert "qat_scales" in load_checkpoint(tmp_path / "run" / "last.pt")  # resumable at the held scales
    assert default_weight_split(ckpt) == () and default_weight_split({"metrics": {}}) == SPLIT_KINDS
    q, _ = export_graph(tmp_path / "run" / "model.pt", small_ucla, calib_clips=8, progress=False)
    assert q.meta["quantisation"]["weight_split"] == [] and q.meta["qat_grid_mismatches"] == []
    assert check_qat_grid(ckpt, q) == []

    planted = dict(ckpt, metrics=dict(ckpt["metrics"], qat=json.loads(json.dumps(rec))))
    planted["metrics"]["qat"]["grid"]["groups"]["layers.0.stc.lif"]["scale_exp"] += 1
    save_checkpoint(tmp_path / "planted.pt", planted)
    # --recalibrate: the export calibrates afresh and reports where the record differs
    summary = run_export(tmp_path / "planted.pt", "lava", tmp_path / "exp", small_ucla, calib_clips=8,
                         progress=False, recalibrate=True)
    assert len(summary.warnings) == 1 and "layers.0.stc.lif scale_exp" in summary.warnings[0]
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert manifest["weight_split"] == [] and any("layers.0.stc.lif scale_exp" in m
                                                  for m in manifest["qat"]["grid_mismatches"])
    # default: the export is made on the recorded (here planted) scales, not calibrated ones
    qp, _ = export_graph(tmp_path / "planted.pt", small_ucla, calib_clips=8, progress=False)
    assert qp.groups["layers.0.stc.lif"].scale == 2 * q.groups["layers.0.stc.lif"].scale
    assert qp.meta["calibration"]["scales"] == "trained (QAT grid)"
    assert not any("scale_exp" in m for m in qp.meta["qat_grid_mismatches"])
    assert any("layers.0.stc.lif vth_mant" in m for m in qp.meta["qat_grid_mismatches"])  # record kept the old one


def test_a_qat_export_is_the_grid_training_evaluated_on(tmp_path, small_ucla):
    """Weights that moved after the last calibration (as during a QAT epoch) can calibrate to
    another grid; the export of the checkpoint is made on the recorded grid, so its integers
    are those the training's integer evaluation computed: same logits as QATForward at the
    held scales, and no grid mismatch. With --recalibrate a moved scale is reported."""
    model = tiny_model("mksgn")
    calib = calibration_clips(small_ucla, ["joint"], 8, progress=False)
    qat = QATForward(calib)
    qat.calibrate(model)
    with torch.no_grad():  # a weight change of the kind a QAT epoch makes, enough to move scales
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(1.7)
        x = real_clips("test", 4)
        held = qat(model, x)
    ckpt = {"config": {"model": model.cfg.to_dict(), "train": {"qat": True}}, "state_dict": model.state_dict(),
            "class_names": [str(i) for i in range(10)],
            "data": {"dataset": "ucla", "layout": "ucla20", "modalities": ["joint"], "window": 52,
                     "protocol": "view3"},
            "metrics": {"qat": {"grid": qat.grid}}, "epoch": 1}
    save_checkpoint(tmp_path / "moved.pt", ckpt)
    q, _ = export_graph(tmp_path / "moved.pt", small_ucla, calib_clips=8, progress=False)
    assert q.meta["qat_grid_mismatches"] == []
    twin = run_graph(q, x, mode="int").logits / (q.meta["readout_scale"] * q.time_steps)
    assert torch.equal(twin, held)
    qr, _ = export_graph(tmp_path / "moved.pt", small_ucla, calib_clips=8, progress=False, recalibrate=True)
    assert qr.meta["qat_grid_mismatches"], "a 1.7x weight change should move at least one scale"


def test_mutual_kl_is_zero_only_when_the_networks_agree_and_pulls_both():
    """``train.qat_agree_weight``'s term: 0 for logits equal up to a per-clip constant, > 0
    otherwise, and its gradient moves *each* network towards the other's prediction."""
    from mksgn.train import mutual_kl

    a = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    assert mutual_kl(a, a + torch.tensor([[1.5], [-2.0]])).abs().item() < 1e-6
    a = a.clone().requires_grad_()
    b = torch.tensor([[0.0, 2.0, -1.0], [0.5, 0.5, 3.0]], requires_grad=True)
    loss = mutual_kl(a, b)
    assert loss.item() > 0.1
    loss.backward()
    assert a.grad[0, 1] < 0 < a.grad[0, 0] and b.grad[0, 0] < 0 < b.grad[0, 1]  # each towards the other
    assert a.grad[1].abs().max() < 1e-7 and b.grad[1].abs().max() < 1e-7  # the agreeing clip: no pull


@pytest.mark.parametrize("train_cfg, msg", [({"qat_agree_weight": -1.0, "qat": True}, "must be a number >= 0"),
                                            ({"qat_agree_weight": 1.0, "qat": False}, "needs train.qat"),
                                            ({"qat_agree_mode": "test", "qat": True}, "qat_agree_mode must be one of")])
def test_bad_agreement_weight_is_refused(train_cfg, msg):
    from mksgn.train import TrainConfig

    with pytest.raises(ConfigError, match=msg):
        TrainConfig.from_dict(train_cfg)


def test_eval_mode_agreement_sees_the_exported_float_network_and_moves_no_statistic():
    """``train.qat_agree_mode: "eval"`` compares the twin with the float network as evaluation
    and the export see it (BN on running statistics, no dropout), with gradients, and leaves the
    model in train mode with its running statistics untouched. A train-mode forward (batch
    statistics, dropout) would give other logits and move the statistics."""
    import torch

    from mksgn.train import eval_mode_logits

    model = tiny_model("mksgn")
    model.train()
    x = real_clips("test", 3)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    got = eval_mode_logits(model, x)
    assert got.requires_grad and model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    model.eval()
    with torch.no_grad():
        want = model(x)
    assert torch.equal(got.detach(), want)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), want)  # the train-mode forward is another function
