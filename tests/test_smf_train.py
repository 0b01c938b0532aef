"""Issue 4, training side: the four-modality MK-SGN (SMF front end), its training with the MINE
estimator, GCN→SGN distillation from four CTR-GCN streams, and the teacher-ensemble evaluation —
on a handful of real NW-UCLA clips."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mksgn.analysis import analyse
from mksgn.checkpoint import load_checkpoint, save_checkpoint
from mksgn.distill import Distiller
from mksgn.errors import ConfigError
from mksgn.evaluate import evaluate_ensemble, load_model, load_teachers
from mksgn.models import MKSGN, ModelConfig, SMFMKSGN, build_model
from mksgn.models.smf import _weights_defined, fusion_weights
from mksgn.preprocess import MODALITIES
from mksgn.train import load_config, train

WIDTH = 0.125
SMF_MODEL = {"arch": "mksgn", "layout": "ucla20", "num_classes": 10, "width": WIDTH, "temporal_kernel": 3,
             "fusion": "smf"}
SMF_TRAIN = {"epochs": 2, "batch_size": 4, "lr": 0.05, "warmup_epochs": 0, "lr_steps": [], "seed": 3,
             "modalities": list(MODALITIES), "dataset": "ucla", "smf_momentum": 1.0, "mine_hidden": 8,
             "mine_lr": 1e-2}
ROOT = Path(__file__).resolve().parent.parent


def cli(tool: str, *args) -> subprocess.CompletedProcess:
    """Run a console script's ``main`` from this checkout (the installed scripts may point at
    another worktree): ``tool`` is ``train`` or ``evaluate`` (``cli.<tool>``)."""
    code = f"import sys; from cli.{tool} import main; main(sys.argv[1:])"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on the shared 2-core CPU: one intra-op thread; restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_config(path: Path, model=None, train=None) -> Path:
    path.write_text(json.dumps({"model": {**SMF_MODEL, **(model or {})}, "train": {**SMF_TRAIN, **(train or {})}}))
    return path


def save_untrained(path: Path, model_cfg: dict, modality: str, seed: int) -> Path:
    """An untrained model saved in the trainer's checkpoint format (a stand-in teacher stream)."""
    torch.manual_seed(seed)
    cfg = ModelConfig.from_dict(model_cfg)
    model = build_model(cfg)
    save_checkpoint(path, {"config": {"model": cfg.to_dict(), "train": {}}, "state_dict": model.state_dict(),
                           "class_names": [f"c{i}" for i in range(cfg.num_classes)],
                           "data": {"dataset": "ucla", "layout": cfg.layout, "modalities": [modality],
                                    "window": 52, "protocol": "view3"},
                           "metrics": {"test_top1": 10.0 + seed}, "epoch": 0})
    return path


TEACHER = {"arch": "ctrgcn", "layout": "ucla20", "num_classes": 10, "width": WIDTH, "dropout": 0.0}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    d = tmp_path_factory.mktemp("teachers")
    # deliberately not in stream order: each checkpoint's data.modalities says which stream it is
    order = ("bone_motion", "joint", "joint_motion", "bone")
    return [save_untrained(d / f"{m}.pt", TEACHER, m, 20 + k) for k, m in enumerate(order)]


def _real_batch(root, n=4, frames=24):
    from mksgn.data import SkeletonDataset
    ds = SkeletonDataset(root, "train", MODALITIES, train=False)
    items = [ds[i] for i in range(n)]
    x = {m: torch.stack([it[0][m] for it in items])[:, :, :frames] for m in MODALITIES}
    return x, torch.tensor([it[1] for it in items])


# ---------------------------------------------------------------- (a) the model
@pytest.mark.parametrize("layout, joints, bodies, classes", [("ucla20", 20, 1, 10), ("ntu25", 25, 2, 60)])
def test_smf_mksgn_shapes_and_binary_spikes_after_fusion(layout, joints, bodies, classes):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="mksgn", layout=layout, num_classes=classes, width=WIDTH, time_steps=2, fusion="smf")
    model = build_model(cfg)
    assert isinstance(model, SMFMKSGN) and not model.has_estimator  # inference build by default
    model.sc.fusion_weight.copy_(torch.tensor([1.0, 0.5, 0.25, 0.75]))
    model.eval()
    n, t = 3, 12
    x = {m: torch.randn(n, 3, t, joints, bodies) for m in MODALITIES}
    seen = {}
    hooks = [model.sc.register_forward_hook(lambda mod, i, o: seen.__setitem__("fused", o))]
    for name in ("sa_sgc.lif1", "sa_sgc.lif2", "sg_sa.lifq", "stc.lif"):
        hooks.append(model.layers[0].get_submodule(name).register_forward_hook(
            lambda mod, i, o, name=name: seen.__setitem__(name, o)))
    logits = model(x)
    for h in hooks:
        h.remove()
    assert logits.shape == (n, classes) and torch.isfinite(logits).all()
    fused = seen["fused"]
    assert fused.shape == (2 * n * bodies, cfg.coding_width, t, joints)
    # eq. 24: a weighted sum of the four binary codes -> real-valued, e.g. 0.25 or 1.75
    values = set(fused.unique().tolist())
    assert values - {0.0, 1.0}, "the fused tensor should hold weighted sums, not spikes"
    spikes = model.sc.encode(x)
    assert torch.allclose(fused, sum(w * spikes[m] for w, m in zip((1.0, 0.5, 0.25, 0.75), MODALITIES)))
    # layer 1's neurons turn the fused current back into binary spikes
    for name in ("sa_sgc.lif1", "sa_sgc.lif2", "sg_sa.lifq", "stc.lif"):
        out = seen[name]
        assert set(out.unique().tolist()) <= {0.0, 1.0}, name
        assert out.shape[:2] == (2, n * bodies) and out.shape[-1] == joints  # LIF output (T_s, B, C, T, V)
    assert seen["sa_sgc.lif1"].sum() > 0
    # a tensor instead of the modality dict is refused with the package's error
    with pytest.raises(ConfigError, match="expected a dict"):
        model(x["joint"])


def test_fusion_key_is_validated_and_old_configs_are_unchanged():
    old = {"arch": "mksgn", "layout": "ucla20", "num_classes": 10}
    cfg = ModelConfig.from_dict(old)
    assert cfg.fusion == "none" and "fusion" not in cfg.to_dict()  # same dict as before the key existed
    assert isinstance(build_model(cfg), MKSGN)
    smf = ModelConfig.from_dict({**old, "fusion": "smf"})
    assert smf.to_dict()["fusion"] == "smf" and ModelConfig.from_dict(smf.to_dict()) == smf
    with pytest.raises(ConfigError, match="fusion='late' is invalid"):
        ModelConfig.from_dict({**old, "fusion": "late"})
    with pytest.raises(ConfigError, match="needs arch 'mksgn'"):
        ModelConfig.from_dict({**old, "arch": "base_sgn", "fusion": "smf"})
    with pytest.raises(ConfigError, match="single-modality model"):
        MKSGN(smf)
    # the shipped single-modality checkpoint still loads
    shipped = Path(__file__).resolve().parent.parent / "models" / "mksgn_ucla_joint.pt"
    if shipped.exists():
        model, _ = load_model(shipped)
        assert isinstance(model, MKSGN)


def test_analysis_counts_the_four_encoders_and_events_into_layer_1():
    torch.manual_seed(1)
    cfg = ModelConfig(arch="mksgn", layout="ucla20", num_classes=10, width=WIDTH, fusion="smf")
    model = build_model(cfg).eval()
    w = torch.tensor([1.0, 0.0, 0.5, 0.2])  # bone weight 0: its synapses are absent after folding
    model.sc.fusion_weight.copy_(w)
    x = {m: torch.randn(2, 3, 16, 20, 1) for m in MODALITIES}
    single = build_model(ModelConfig(arch="mksgn", layout="ucla20", num_classes=10, width=WIDTH))
    ref = analyse(single, [x["joint"]], cfg.time_steps)
    r = analyse(model, [(x, torch.zeros(2))], cfg.time_steps)
    enc = [o for o in r.ops if o.name.startswith("sc.encoders.")]
    assert [o.name for o in enc] == [f"sc.encoders.{m}.conv" for m in MODALITIES]
    sc_flops = next(o.flops for o in ref.ops if o.name == "sc.conv")
    assert all(o.real_input and o.sops == 0 and o.flops == sc_flops for o in enc)
    assert r.mac_flops == pytest.approx(4 * sc_flops)  # host-side MACs of all four encoders, E_MAC each
    rates = {n.name: n.firing_rate for n in r.neurons}
    expected = sum(rates[f"sc.encoders.{m}.lif"] for m, wm in zip(MODALITIES, w) if wm != 0)
    gcn = next(o for o in r.ops if o.name == "layers.0.sa_sgc.gcn")
    res = next(o for o in r.ops if o.name == "layers.0.sa_sgc.res")
    assert gcn.fr_in == pytest.approx(expected, rel=1e-6) and res.fr_in == pytest.approx(expected, rel=1e-6)
    assert gcn.sops == pytest.approx(gcn.fr_in * cfg.time_steps * gcn.flops)
    # layer 2 reads spikes again: its input rate is layer 1's output neurons' rate
    l2 = next(o for o in r.ops if o.name == "layers.1.sa_sgc.gcn")
    assert l2.fr_in == pytest.approx(rates["layers.0.stc.lif"], rel=1e-6)


# ---------------------------------------------------------------- (b) + (e) trainer
@pytest.fixture(scope="module")
def trained_kd(small_ucla, teachers, tmp_path_factory):
    """Two epochs of the 4-modal student distilled from four (untrained) tiny teachers."""
    out = tmp_path_factory.mktemp("smf_kd")
    cfg = write_config(out / "cfg.json")
    logs = []
    metrics = train(cfg, small_ucla, out / "run", log=logs.append, teachers=teachers)
    return out, cfg, metrics, logs


def test_frozen_checkpoint_has_no_estimator_and_reloads_deterministically(trained_kd, small_ucla):
    out, _, metrics, _ = trained_kd
    path = out / "run" / "model.pt"
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and containers only
    keys = list(raw["state_dict"])
    assert keys and not [k for k in keys if "estimator" in k]
    assert not [k for k in keys if "ftm" in k.lower() or "teacher" in k.lower()]
    assert "sc.fusion_weight" in keys and "optimizer" not in raw and "ftm_state" not in raw
    # resume file: estimators kept and trained by their own optimiser, not by the network's
    last = load_checkpoint(out / "run" / "last.pt")
    assert any(k.startswith("sc.estimators.") for k in last["state_dict"])
    est_state = last["estimator_optimizer"]["state"]
    n_est = sum(1 for k in last["state_dict"] if k.startswith("sc.estimators."))
    assert len(est_state) == n_est and all(int(s["step"]) == 4 for s in est_state.values())  # 2 epochs x 2
    net_ids = last["optimizer"]["param_groups"][0]["params"]
    model, _ = load_model(path)
    assert len(net_ids) == sum(1 for _ in model.parameters())  # SGD holds the network's parameters only
    # frozen fusion weights: the buffer, the metrics and the last epoch's record agree
    w = model.fusion_weight.tolist()
    assert w == pytest.approx(list(metrics["fusion_weight"].values()))
    assert w == pytest.approx(list(metrics["history"][-1]["fusion_weight"].values()))
    assert metrics["fusion_modalities"] == list(MODALITIES)
    for rec in metrics["history"]:
        mi = torch.tensor(rec["mi"])
        assert mi.shape == (4, 4) and torch.equal(mi, mi.T) and (mi.diagonal() == 0).all()
    # inference with with_estimator=False: identical logits in two runs (eval mode, no estimator)
    from mksgn.data import SkeletonDataset
    ds = SkeletonDataset(small_ucla, "test", MODALITIES, train=False)
    x = {m: torch.stack([ds[i][0][m] for i in range(3)]) for m in MODALITIES}
    assert not model.has_estimator and not model.training
    a, b = model(x), load_model(path)[0](x)
    assert torch.equal(a, b) and torch.equal(a, model(x))
    assert model.fusion_weight.tolist() == w  # eval forwards do not move the frozen weights


def test_evaluate_model_card_and_export_of_the_smf_student(trained_kd, small_ucla, tmp_path):
    """mksgn-eval runs the student alone on its four modalities; the analyser counts the four
    encoders; the exported graph (fusion weights folded) equals the model."""
    from export.frontend import from_checkpoint
    from mksgn.evaluate import evaluate
    from mksgn.model_card import write_model_card
    out, _, metrics, _ = trained_kd
    path = out / "run" / "model.pt"
    r = evaluate(path, small_ucla, analysis_clips=2, progress=False)
    assert r["clips"] == 6 and r["top1"] == pytest.approx(metrics["test_top1"])
    an = r["analysis"]
    enc = [o for o in an["ops"] if o["name"].startswith("sc.encoders.")]
    assert len(enc) == 4 and all(o["real_input"] for o in enc)
    assert an["mac_flops"] == pytest.approx(sum(o["flops"] for o in enc))
    card = write_model_card(path, r, tmp_path / "card.md").read_text()
    assert "joint, bone, joint_motion, bone_motion" in card
    w = metrics["fusion_weight"]
    assert "frozen fusion weights (eq. 24) " + ", ".join(f"{m} {v:.4f}" for m, v in w.items()) in card
    assert "4-stream CTR-GCN teacher: joint `" in card and metrics["teachers"][0]["sha256"][:12] in card
    assert "fusion rule `train.smf_weights` 'share': eq. 22 alone" in card and "deviates from the paper" in card
    # a checkpoint of the "complement" rule says so, not the share rule's words
    ck = load_checkpoint(path)
    ck["config"]["train"]["smf_weights"] = ck["metrics"]["fusion_rule"] = "complement"
    save_checkpoint(tmp_path / "complement.pt", ck)
    card_c = write_model_card(tmp_path / "complement.pt", r, tmp_path / "card_c.md").read_text()
    assert "fusion rule `train.smf_weights` 'complement': (1 − eq. 22)/3" in card_c
    assert "eq. 22 alone" not in card_c and "deviates from the paper" in card_c
    # the trained student exports: its frozen fusion weights reach the graph, and the folded
    # float graph computes what the model computes on the real clips
    import torch
    from export.pipeline import fold_all, graph_input
    from export.twin import run_graph
    from mksgn.data import SkeletonDataset
    from mksgn.evaluate import load_model
    graph, _ = from_checkpoint(path)
    assert graph.meta["fusion_weights"] == pytest.approx(list(w.values()))
    model, _ = load_model(path)
    ds = SkeletonDataset(small_ucla, "test", MODALITIES, train=False)
    batch = {m: torch.stack([ds[i][0][m] for i in range(2)]) for m in MODALITIES}
    with torch.no_grad():
        ref = model(batch).double()
    assert torch.allclose(run_graph(fold_all(graph), graph_input(batch, list(MODALITIES)), "float").logits,
                          ref, atol=1e-9)


def test_distillation_metrics_record_the_teachers(trained_kd, teachers):
    _, _, metrics, logs = trained_kd
    from mksgn.checkpoint import sha256_file
    recs = {t["modality"]: t for t in metrics["teachers"]}
    assert list(recs) == list(MODALITIES)
    by_name = {Path(p).stem: p for p in teachers}
    for m, t in recs.items():
        assert t["checkpoint"] == str(by_name[m]) and t["sha256"] == sha256_file(by_name[m])
    assert metrics["distillation"]["alphas"] == dict(zip(MODALITIES, (0.6, 0.6, 0.4, 0.4)))
    h = metrics["history"][0]
    assert 0 < h["loss_feature_1"] < 2 and 0 < h["loss_soft"] and h["loss_hard"] > 0
    total = h["loss_hard"] + h["loss_soft"] + h["loss_feature"]  # gammas and betas 1
    assert h["train_loss"] == pytest.approx(total, rel=1e-5)
    assert any("distilling from 4 CTR-GCN streams" in line for line in logs)


def test_resumed_distillation_run_equals_uninterrupted(trained_kd, small_ucla, teachers, tmp_path):
    out, cfg, _, _ = trained_kd
    train(cfg, small_ucla, tmp_path, epochs=1, log=lambda *a: None, teachers=teachers)
    assert set(load_checkpoint(tmp_path / "last.pt")) >= {"ftm_state", "ftm_optimizer", "estimator_optimizer"}
    logs = []
    train(cfg, small_ucla, tmp_path, log=logs.append, teachers=teachers)
    assert any("resuming" in line and "epoch 1" in line for line in logs)
    a = load_checkpoint(tmp_path / "last.pt")
    b = load_checkpoint(out / "run" / "last.pt")
    for part in ("state_dict", "ftm_state"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    # resuming a distillation run without its teachers is refused
    with pytest.raises(ConfigError, match="resume it with the same --teacher"):
        train(cfg, small_ucla, tmp_path, epochs=3, log=lambda *a: None)


def test_single_modality_student_distils_from_four_streams(small_ucla, teachers, tmp_path):
    cfg = write_config(tmp_path / "c.json", model={"fusion": "none"}, train={"epochs": 1, "modalities": ["bone"]})
    metrics = train(cfg, small_ucla, tmp_path / "run", log=lambda *a: None, teachers=teachers)
    assert [t["modality"] for t in metrics["teachers"]] == list(MODALITIES)
    assert "fusion_weight" not in metrics and metrics["history"][0]["loss_feature_2"] > 0
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert ckpt["data"]["modalities"] == ["bone"]  # the student's modality, not the teachers' four
    model, _ = load_model(tmp_path / "run" / "model.pt")
    assert isinstance(model, MKSGN)
    with pytest.raises(ConfigError, match="needs an MK-SGN student"):
        train(write_config(tmp_path / "b.json", model={"fusion": "none", "arch": "base_sgn"},
                           train={"modalities": ["joint"]}), small_ucla, tmp_path / "b", log=lambda *a: None,
              teachers=teachers)


# ---------------------------------------------------------------- (c) one distillation step
def test_one_distillation_step_of_the_smf_student_reduces_eq_32(small_ucla, teachers, tmp_path):
    x, y = _real_batch(small_ucla)
    mcfg = ModelConfig.from_dict({**SMF_MODEL, "dropout": 0.0})
    _, tcfg = load_config(write_config(tmp_path / "kd_step.json", train={"kd_gamma2": 0.5,
                                                                                 "kd_beta1": 0.3}))
    t_models, t_info = load_teachers(teachers, "ucla20", 10)
    torch.manual_seed(4)
    student = build_model(mcfg)  # frozen fusion weights (no estimator): the loss moves only by the step
    student.sc.fusion_weight.copy_(torch.tensor([1.0, 0.6, 0.3, 0.8]))
    kd = Distiller(t_models, t_info, mcfg, tcfg)
    opt_s = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt_f = torch.optim.SGD(kd.ftms.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    student.train(), kd.ftms.train()
    before, _ = kd.loss(student, x, x, y)
    expected = before.hard + 0.5 * before.soft + (0.3 * before.feature_1 + before.feature_2)
    assert before.total.item() == pytest.approx(expected.item(), rel=1e-6)
    opt_s.zero_grad(), opt_f.zero_grad()
    before.total.backward()
    assert all(student.sc.encoders[m].conv.weight.grad.abs().sum() > 0 for m in MODALITIES)
    assert kd.ftms[0].pointwise.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for t in t_models.values() for p in t.parameters())
    opt_s.step(), opt_f.step()
    with torch.no_grad():
        after, _ = kd.loss(student, x, x, y)
    assert after.total < before.total - 1e-3, (before.total.item(), after.total.item())


# ---------------------------------------------------------------- (d) bad teachers
def test_bad_teacher_sets_raise_config_error(teachers, tmp_path):
    with pytest.raises(ConfigError, match="got 3 checkpoint"):
        load_teachers(teachers[:3])
    dup = save_untrained(tmp_path / "joint2.pt", TEACHER, "joint", 40)
    with pytest.raises(ConfigError, match="modality 'joint' given twice"):
        load_teachers([teachers[0], teachers[1], teachers[2], dup])
    spiking = save_untrained(tmp_path / "snn.pt", {**SMF_MODEL, "fusion": "none"}, "bone", 41)
    with pytest.raises(ConfigError, match="not a CTR-GCN checkpoint"):
        load_teachers([*teachers[:3], spiking])
    ntu = save_untrained(tmp_path / "ntu.pt", {**TEACHER, "layout": "ntu25", "num_classes": 60}, "bone", 42)
    with pytest.raises(ConfigError, match="model.layout is 'ntu25'"):
        load_teachers([*teachers[:3], ntu], "ucla20", 10)


def test_teacher_cli_errors_exit_2_without_traceback(teachers, small_ucla, tmp_path):
    cfg = write_config(tmp_path / "cfg.json")
    dup = save_untrained(tmp_path / "joint2.pt", TEACHER, "joint", 43)
    base = ["--config", cfg, "--data", small_ucla, "--out", tmp_path / "o"]
    for extra, msg in (([teachers[0], teachers[1], teachers[2], dup], "given twice"),
                       (teachers[:2], "got 2 checkpoint")):
        r = cli("train", *base, *[a for t in extra for a in ("--teacher", t)])
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("error: ") and msg in r.stderr
    assert not (tmp_path / "o" / "last.pt").exists()


def test_smf_student_needs_all_four_modalities(small_ucla, tmp_path):
    cfg = write_config(tmp_path / "c.json", train={"modalities": ["joint", "bone"]})
    with pytest.raises(ConfigError, match="needs train.modalities = all four"):
        train(cfg, small_ucla, tmp_path / "o", log=lambda *a: None)
    with pytest.raises(ConfigError, match="drop --modality"):
        train(write_config(tmp_path / "d.json"), small_ucla, tmp_path / "o", log=lambda *a: None, modality="joint")
    with pytest.raises(ConfigError, match="mine_optimizer"):
        load_config(write_config(tmp_path / "e.json", train={"mine_optimizer": "rmsprop"}))
    with pytest.raises(ConfigError, match="kd_alphas"):
        load_config(write_config(tmp_path / "f.json", train={"kd_alphas": [1, 1, 1]}))


# ---------------------------------------------------------------- ensemble evaluation
def test_teacher_ensemble_evaluation(teachers, small_ucla, tmp_path):
    r = evaluate_ensemble(teachers, small_ucla, alphas=(1.0, 0.0, 0.0, 0.0), json_path=tmp_path / "e.json",
                          progress=False)
    assert list(r["streams"]) == list(MODALITIES) and r["clips"] == 6
    # with all the weight on the joint stream the ensemble is that stream
    assert r["top1"] == pytest.approx(r["streams"]["joint"]["top1"])
    assert json.loads((tmp_path / "e.json").read_text())["streams"]["bone"]["top1"] == r["streams"]["bone"]["top1"]
    # by hand, default alphas
    from mksgn.data import SkeletonDataset
    from mksgn.distill import ensemble_logits
    models, _ = load_teachers(teachers)
    ds = SkeletonDataset(small_ucla, "test", MODALITIES, train=False)
    x = {m: torch.stack([ds[i][0][m] for i in range(len(ds))]) for m in MODALITIES}
    y = torch.tensor(ds.labels)
    with torch.no_grad():
        ens = ensemble_logits([models[m](x[m]) for m in MODALITIES], (0.6, 0.6, 0.4, 0.4))
    out = cli("evaluate", "--ensemble", *teachers, "--data", small_ucla, "--json", tmp_path / "d.json")
    assert out.returncode == 0, out.stderr
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["top1"] == pytest.approx(100 * (ens.argmax(1) == y).float().mean().item())
    assert "ensemble" in out.stdout


def test_smf_student_initialised_from_a_single_modality_model(small_ucla):
    """train.init_from a 1-modality MK-SGN: every SMF encoder gets its spiking coding, layers and
    head keep theirs; the fusion weights start at (1, 0, 0, 0), so the 4-modality model computes
    exactly the 1-modality model's logits on the joint modality."""
    from mksgn.checkpoint import load_state
    from mksgn.data import SkeletonDataset
    from mksgn.train import smf_state_from_single
    torch.manual_seed(0)
    single = build_model(ModelConfig.from_dict({k: v for k, v in SMF_MODEL.items() if k != "fusion"})).eval()
    smf = build_model(ModelConfig.from_dict(SMF_MODEL)).eval()
    load_state(smf, smf_state_from_single(single.state_dict()), "single.pt",
               optional_prefixes=("sc.estimators.", "sc.fusion_weight"))
    for m in MODALITIES:
        assert torch.equal(smf.sc.encoders[m].conv.weight, single.sc.conv.weight)
    assert smf.sc.fusion_weight.tolist() == [1.0, 0.0, 0.0, 0.0]  # one-hot on the joint modality
    ds = SkeletonDataset(small_ucla, "test", MODALITIES, train=False)
    batch = {m: torch.stack([ds[i][0][m] for i in range(3)]) for m in MODALITIES}
    with torch.no_grad():
        assert torch.allclose(smf(batch), single(batch["joint"]), atol=1e-6)


# ---------------------------------------------------------------- staged initialisation
SINGLE_MODEL = {k: v for k, v in SMF_MODEL.items() if k != "fusion"}


def test_encoder_adaptation_trains_only_the_spiking_coding(small_ucla, tmp_path):
    """train.trainable ["sc."] (encoder adaptation): a joint model's encoder is
    adapted to the bone modality; every parameter outside sc.* is bit-identical afterwards, the
    encoder's changed, and the checkpoint says it is a bone model."""
    init = save_untrained(tmp_path / "joint.pt", SINGLE_MODEL, "joint", seed=1)
    cfg = tmp_path / "enc.json"
    cfg.write_text(json.dumps({"model": SINGLE_MODEL, "train": {
        **{k: v for k, v in SMF_TRAIN.items() if not k.startswith(("smf_", "mine_"))},
        "epochs": 1, "modalities": ["joint"], "init_from": str(init), "trainable": ["sc."]}}))
    train(cfg, small_ucla, tmp_path / "o", log=lambda *a: None, modality="bone")
    out = load_checkpoint(tmp_path / "o" / "model.pt")
    before = load_checkpoint(init)["state_dict"]
    params = dict(build_model(ModelConfig.from_dict(SINGLE_MODEL)).named_parameters())
    assert out["data"]["modalities"] == ["bone"]
    changed = {k for k in params if not torch.equal(out["state_dict"][k], before[k])}
    assert changed and all(k.startswith("sc.") for k in changed), changed
    assert "sc.conv.weight" in changed
    cfg.write_text(json.dumps({"model": SINGLE_MODEL, "train": {"trainable": ["encoder."]}}))
    with pytest.raises(ConfigError, match="matches no parameter"):
        train(cfg, small_ucla, tmp_path / "o2", log=lambda *a: None)


def test_smf_encoders_and_fusion_weights_from_staged_checkpoints(small_ucla, tmp_path):
    """train.init_encoders: each SMF encoder starts from the spiking coding of the
    single-modality checkpoint of its modality; train.smf_init_weight sets the starting fusion
    weights. Trained with only the head free and a negligible running-average momentum, the
    saved student still has those encoders and weights; a checkpoint of the wrong modality is
    refused."""
    joint = save_untrained(tmp_path / "joint.pt", SINGLE_MODEL, "joint", seed=1)
    enc = {m: save_untrained(tmp_path / f"{m}.pt", SINGLE_MODEL, m, seed=10 + i)
           for i, m in enumerate(MODALITIES) if m != "joint"}
    w0 = [0.4, 0.3, 0.2, 0.1]
    cfg = write_config(tmp_path / "c.json", train={
        "epochs": 1, "init_from": str(joint), "init_encoders": {m: str(p) for m, p in enc.items()},
        "smf_init_weight": w0, "smf_momentum": 1e-12, "trainable": ["head."]})
    train(cfg, small_ucla, tmp_path / "o", log=lambda *a: None)
    out = load_checkpoint(tmp_path / "o" / "model.pt")
    sd = out["state_dict"]
    assert {m: e["checkpoint"] for m, e in out["metrics"]["init_encoders"].items()} == \
        {m: str(p) for m, p in enc.items()}  # provenance for the model card
    for m in MODALITIES:
        src = load_checkpoint(joint if m == "joint" else enc[m])["state_dict"]
        assert torch.equal(sd[f"sc.encoders.{m}.conv.weight"], src["sc.conv.weight"]), m
    assert sd["sc.fusion_weight"].tolist() == pytest.approx(w0, abs=1e-6)  # float32 storage
    bad = write_config(tmp_path / "b.json", train={"init_from": str(joint), "init_encoders": {"bone": str(joint)}})
    with pytest.raises(ConfigError, match="trained on 'bone'"):
        train(bad, small_ucla, tmp_path / "o2", log=lambda *a: None)
    for setting in ({"smf_init_weight": [1, 1, 1]}, {"smf_init_weight": [1, -1, 1, 1]},
                    {"init_encoders": {"depth": "x.pt"}}, {"trainable": []}):
        with pytest.raises(ConfigError, match=next(iter(setting))):
            load_config(write_config(tmp_path / "v.json", train=setting))


def test_mine_every_runs_the_estimators_on_every_kth_batch_only(small_ucla, tmp_path):
    """train.mine_every = 2 with 2 batches per epoch: the statistics networks take one Adam step
    per epoch (batch 0), not two, and the fusion weights are the last *estimated* batch's
    eq. 22-23 weights (momentum 1); bad values are refused."""
    cfg = write_config(tmp_path / "c.json", train={"mine_every": 2})
    metrics = train(cfg, small_ucla, tmp_path / "o", log=lambda *a: None)
    last = load_checkpoint(tmp_path / "o" / "last.pt")
    steps = {int(s["step"]) for s in last["estimator_optimizer"]["state"].values()}
    assert steps == {2}  # 2 epochs x 1 estimated batch (every batch would give 4)
    previous = [1.0] * 4  # the buffer's initial value
    for rec in metrics["history"]:
        w = list(rec["fusion_weight"].values())
        mi = torch.tensor(rec["mi"]).clamp(min=0)  # the mean over estimated batches = batch 0's
        # batch 1 (not estimated) leaves the weights as batch 0 set them (or kept them, where
        # eq. 22-23 are undefined for an untrained estimator's negative bounds)
        expected = fusion_weights(mi).tolist() if _weights_defined(mi) else previous
        assert w == pytest.approx(expected, abs=1e-6)
        previous = w
    for bad in (0, 1.5, True, "8"):
        with pytest.raises(ConfigError, match="mine_every"):
            load_config(write_config(tmp_path / "v.json", train={"mine_every": bad}))


def test_fusion_rule_paper_reproduces_eq_23_is_recorded_and_resume_keeps_the_rule(small_ucla, tmp_path):
    """Issue 16: ``train.smf_weights: "paper"`` gives every estimated epoch eq. 22-23's weights
    (momentum 1: the least-dependent modality exactly 0), the default ``"share"`` eq. 22's
    shares (sum 1), ``"complement"`` (1 - shares)/3 (sum 1, each >= 1/6); the rule is recorded in last.pt and model.pt; a last.pt is resumed only
    with its own rule, and one that records none (before issue 16) counts as "paper"."""
    from mksgn.checkpoint import checkpoint_fusion_rule
    for rule in ("paper", "share", "complement"):
        cfg = write_config(tmp_path / f"{rule}.json", train={"mine_every": 2, "smf_weights": rule})
        metrics = train(cfg, small_ucla, tmp_path / rule, log=lambda *a: None)
        assert metrics["fusion_rule"] == rule
        previous = [1.0] * 4
        for rec in metrics["history"]:
            w = list(rec["fusion_weight"].values())
            mi = torch.tensor(rec["mi"]).clamp(min=0)
            if _weights_defined(mi, rule):
                assert w == pytest.approx(fusion_weights(mi, rule).tolist(), abs=1e-6)
                assert (min(w) == 0.0) if rule == "paper" else sum(w) == pytest.approx(1.0, abs=1e-6)
                assert rule != "complement" or min(w) >= 1 / 6 - 1e-6
            else:
                assert w == pytest.approx(previous, abs=1e-6)
            previous = w
        for name in ("last.pt", "model.pt"):
            ck = load_checkpoint(tmp_path / rule / name)
            assert ck["config"]["train"]["smf_weights"] == rule and checkpoint_fusion_rule(ck) == rule
    share_cfg = write_config(tmp_path / "s3.json", train={"mine_every": 2, "epochs": 3})
    with pytest.raises(ConfigError, match="fusion rule train.smf_weights 'paper'"):
        train(share_cfg, small_ucla, tmp_path / "paper", log=lambda *a: None)
    # a last.pt from before issue 16 (no rule recorded) was trained with eq. 22-23 as printed
    last = load_checkpoint(tmp_path / "paper" / "last.pt")
    del last["config"]["train"]["smf_weights"], last["metrics"]["fusion_rule"]
    save_checkpoint(tmp_path / "paper" / "last.pt", last)
    assert checkpoint_fusion_rule(last) == "paper"
    with pytest.raises(ConfigError, match="fusion rule"):
        train(share_cfg, small_ucla, tmp_path / "paper", log=lambda *a: None)
    logs = []
    train(write_config(tmp_path / "p3.json", train={"mine_every": 2, "epochs": 3, "smf_weights": "paper"}),
          small_ucla, tmp_path / "paper", log=logs.append)
    assert any("resuming" in line for line in logs)
    assert checkpoint_fusion_rule({"config": {"model": {"fusion": "none"}}}) is None
    for bad in ("minmax", None):
        with pytest.raises(ConfigError, match="smf_weights"):
            load_config(write_config(tmp_path / "v.json", train={"smf_weights": bad}))
