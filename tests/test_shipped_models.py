"""The shipped checkpoints load (weights_only), reproduce their model card's top-1 on the
real NW-UCLA test split (464 clips) and meet their issue's bar there."""
from pathlib import Path

import pytest

from mksgn.checkpoint import checkpoint_fusion_rule
from mksgn.evaluate import evaluate
from mksgn.model_card import read_card_top1

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = ["mksgn_ucla_joint", "mksgn_ucla_joint_float", "base_sgn_ucla_joint", "mksgn_ucla_4modal_kd_interim",
           "mksgn_ucla_4modal_kd_share_interim", "mksgn_ucla_4modal_kd", "mksgn_ucla_joint_width05"]
BARS = {"mksgn_ucla_joint": 82.5, "mksgn_ucla_joint_float": 80.0, "mksgn_ucla_4modal_kd": 84.5}
"""Issue 3: the single-modality MK-SGN reaches >= 80 % top-1 on the 464 test clips; issue 14:
the shipped (QAT) one keeps a float top-1 >= 82.5 %; issue 16: the four-modality + KD student
reaches >= 84.5 %."""


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reproduces_card(name, ucla_dir):
    ckpt = MODELS / f"{name}.pt"
    assert ckpt.stat().st_size <= 10e6
    r = evaluate(ckpt, ucla_dir, analysis_clips=64, progress=False)
    assert r["clips"] == 464
    assert round(r["top1"], 2) == read_card_top1(MODELS / f"{name}.md")
    assert r["top1"] >= BARS.get(name, 0.0)  # measured now, not read from the card


@pytest.mark.slow
def test_quantised_mksgn_within_half_a_point(ucla_dir, tmp_path):
    """Issue bar (3, 14): the Loihi fixed-point MK-SGN (default export → integer twin) loses at
    most 0.5 points of top-1 on the 464 NW-UCLA test clips (42 s on 2 cores). The shipped
    model is QAT-trained, so the default export is plain 8-bit on its recorded grid: 82.76 %
    integer vs 82.76 % float (the float-trained predecessor ``mksgn_ucla_joint_float.pt``:
    79.31 % plain, 82.97 % with the weight split)."""
    from export.evaluate import evaluate_export
    from export.exporter import run_export
    run_export(MODELS / "mksgn_ucla_joint.pt", "lava", tmp_path / "q", ucla_dir, progress=False)
    q = evaluate_export(tmp_path / "q", ucla_dir, progress=False)
    assert q["top1"] >= read_card_top1(MODELS / "mksgn_ucla_joint.md") - 0.5
    assert not q["saturation"]


def test_quantised_mksgn_agrees_on_real_clips(ucla_dir):
    """Default-suite guard: on 24 real test clips the integer twin of the shipped MK-SGN
    predicts the same class as the float model on at least 19. Measured on the whole split
    with plain 8-bit weights: 46–59 of 464 predictions change for the QAT runs and 55 for the
    float-trained predecessor (≈ 2.4–3 of 24 expected), and a float model alone changes 20.6
    of 464 under 1e-4 relative weight noise (``mksgn-qcheck``, README); a broken quantiser
    changes most of them. The full-split numbers are in the slow test above and in README."""
    import torch

    from export.pipeline import export_graph
    from export.twin import run_graph
    from mksgn.data import SkeletonDataset
    from mksgn.evaluate import load_model

    q, _ = export_graph(MODELS / "mksgn_ucla_joint.pt", ucla_dir, progress=False)  # as mksgn-export does
    assert not q.meta["qat_grid_mismatches"] and not any("split_of" in s.meta for s in q.synapses.values())
    ds = SkeletonDataset(ucla_dir, "test", train=False)
    idx = range(0, len(ds), len(ds) // 24)
    x = torch.stack([ds[i][0]["joint"] for i in idx][:24])
    model, _ = load_model(MODELS / "mksgn_ucla_joint.pt")
    with torch.no_grad():
        ref = model(x).argmax(1)
    got = run_graph(q, x, "int").logits.argmax(1)
    assert int((got == ref).sum()) >= 19


def test_shipped_teacher_reproduces_card(ucla_dir):
    """The four shipped CTR-GCN teacher streams load (weights_only) and give their card's
    per-stream and eq. 25 ensemble top-1 on the 464 NW-UCLA test clips; each row's epochs are
    the checkpoint's."""
    import re

    import torch

    from mksgn.evaluate import evaluate_ensemble
    card = (MODELS / "ctrgcn_ucla_teacher.md").read_text()
    paths = [MODELS / f"ctrgcn_ucla_{m}.pt" for m in ("joint", "bone", "joint_motion", "bone_motion")]
    assert all(p.stat().st_size <= 10e6 for p in paths)
    r = evaluate_ensemble(paths, ucla_dir, progress=False)
    assert r["clips"] == 464
    assert f"ensemble (eq. 25) test top-1: {r['top1']:.2f} %" in card
    for m, s in r["streams"].items():
        epochs = torch.load(MODELS / f"ctrgcn_ucla_{m}.pt", map_location="cpu", weights_only=True)["epoch"]
        assert re.search(rf"\| {m} \| `models/ctrgcn_ucla_{m}.pt` \| {s['top1']:.2f} % \| [0-9.]+ \| {epochs} \|",
                         card), m


@pytest.mark.parametrize("name, rule, bar", [("mksgn_ucla_4modal_kd_interim", "paper", "below issue 4's bar"),
                                             ("mksgn_ucla_4modal_kd_share_interim", "share", "below issue 16's bar")])
def test_interim_four_modality_student_is_frozen_smf_and_labelled_below_the_bar(name, rule, bar):
    """The interim four-modality + KD students carry frozen fusion weights of their rule (eq.
    22-23 as printed: in [0, 1], the least-dependent modality's running average near 0; "share": eq. 22's
    shares, all > 0, summing to 1) and no estimator, teacher or FTM parameters, record their
    four teachers, and their cards say they are below the bar (so nobody mistakes one for
    ``mksgn_ucla_4modal_kd.pt``)."""
    import torch

    raw = torch.load(MODELS / f"{name}.pt", map_location="cpu", weights_only=True)
    keys = list(raw["state_dict"])
    assert "sc.fusion_weight" in keys and not [k for k in keys if "estimator" in k or "ftm" in k.lower()]
    w = raw["state_dict"]["sc.fusion_weight"]
    assert w.shape == (4,) and float(w.min()) >= 0 and float(w.max()) <= 1  # eq. 23 range
    assert checkpoint_fusion_rule(raw) == rule
    if rule == "share":
        assert float(w.min()) > 0.01 and abs(float(w.sum()) - 1) < 1e-3  # a running average of shares
    else:
        assert float(w.min()) < 0.01  # eq. 23 maps the smallest row sum to 0 at every batch
    assert sorted(t["modality"] for t in raw["metrics"]["teachers"]) == \
        ["bone", "bone_motion", "joint", "joint_motion"]
    card = (MODELS / f"{name}.md").read_text()
    assert read_card_top1(MODELS / f"{name}.md") < 84.5 and bar in card


def test_four_modality_student_beats_one_modality_of_its_width():
    """Issue 16's bar: the shipped four-modality + KD student (SMF, default fusion rule) is at
    least 1.5 points above the one-modality MK-SGN of the same width trained with the same
    recipe, and at least 84.5 % (card values, each reproduced on the whole test split by
    ``test_shipped_checkpoint_reproduces_card``). Also pinned: the two are the pair the bar
    compares — equal width, time steps and train schedule, one vs four modalities, frozen
    share-rule weights, four teachers recorded (distilled) vs none."""
    import torch

    four = torch.load(MODELS / "mksgn_ucla_4modal_kd.pt", map_location="cpu", weights_only=True)
    one = torch.load(MODELS / "mksgn_ucla_joint_width05.pt", map_location="cpu", weights_only=True)
    for k in ("width", "time_steps", "coding_channels"):
        assert four["config"]["model"][k] == one["config"]["model"][k], k
    for k in ("epochs", "lr_schedule", "seed", "weight_noise", "batch_size"):
        assert four["config"]["train"][k] == one["config"]["train"][k], k
    assert four["data"]["modalities"] == ["joint", "bone", "joint_motion", "bone_motion"]
    assert one["data"]["modalities"] == ["joint"]
    assert checkpoint_fusion_rule(four) == "share"
    w = four["state_dict"]["sc.fusion_weight"]
    assert float(w.min()) > 0.01 and abs(float(w.sum()) - 1) < 1e-3  # every modality kept
    assert len(four["metrics"]["teachers"]) == 4 and not one["metrics"].get("teachers")
    top4 = read_card_top1(MODELS / "mksgn_ucla_4modal_kd.md")
    top1 = read_card_top1(MODELS / "mksgn_ucla_joint_width05.md")
    assert top4 >= 84.5 and top4 >= top1 + 1.5, (top4, top1)


@pytest.mark.slow
def test_four_modality_student_replays_bit_exact_in_lava(ucla_dir, tmp_path):
    """Issue 16: the shipped four-modality student's default export (float-trained, so with the
    weight split) replays bit-exact in Lava on 8 real test clips — every group, step, spike,
    u, v and logit — with equal event counts (328 Lava processes; 2 min 17 s and 11.2 GB peak
    PSS on the 2-core machine)."""
    from export.exporter import run_export
    from hw_sim.simulate import simulate
    run_export(MODELS / "mksgn_ucla_4modal_kd.pt", "lava", tmp_path / "s4", ucla_dir, progress=False)
    result, report = simulate(tmp_path / "s4", ucla_dir, clips=8, progress=False)
    assert result.bit_exact and result.mismatches == []
    assert report["events_equal"] and report["synaptic_events_per_clip"] > 0
