"""Training, checkpoints and evaluation on a handful of real NW-UCLA clips."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mksgn.checkpoint import load_checkpoint, save_checkpoint
from mksgn.errors import CheckpointError, ConfigError
from mksgn.evaluate import evaluate, load_model
from mksgn.train import load_config, train

TINY_MODEL = {"arch": "mksgn", "layout": "ucla20", "num_classes": 10, "width": 0.0625,
              "temporal_kernel": 3}
TINY_TRAIN = {"epochs": 2, "batch_size": 4, "lr": 0.05, "warmup_epochs": 0, "lr_steps": [],
              "seed": 3, "modalities": ["joint"], "dataset": "ucla"}


def write_config(path: Path, model=None, train=None) -> Path:
    path.write_text(json.dumps({"model": {**TINY_MODEL, **(model or {})},
                                "train": {**TINY_TRAIN, **(train or {})}}))
    return path


@pytest.fixture(scope="module")
def trained(small_ucla, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = write_config(out / "cfg.json")
    metrics = train(cfg, small_ucla, out / "ckpt", log=lambda *a: None)
    return out, cfg, metrics


def test_checkpoint_contents(trained):
    out, _, metrics = trained
    ckpt = load_checkpoint(out / "ckpt" / "model.pt")
    assert ckpt["config"]["model"]["arch"] == "mksgn"
    assert ckpt["data"] == {"dataset": "ucla", "layout": "ucla20", "modalities": ["joint"],
                            "window": 52, "protocol": "view3"}
    assert len(ckpt["class_names"]) == 10 and ckpt["epoch"] == 2
    assert "optimizer" not in ckpt  # the shippable file holds weights only
    assert len(metrics["history"]) == 2 and 0 <= metrics["test_top1"] <= 100
    assert "optimizer" in load_checkpoint(out / "ckpt" / "last.pt")
    assert not list((out / "ckpt").glob("*.tmp"))


def test_resume_continues_and_matches(trained, small_ucla, tmp_path):
    """Stopping after epoch 1 and resuming gives bit-identical weights to an uninterrupted run."""
    out, cfg, _ = trained
    train(cfg, small_ucla, tmp_path, epochs=1, log=lambda *a: None)
    logs = []
    train(cfg, small_ucla, tmp_path, log=logs.append)
    assert any("resuming" in line and "epoch 1" in line for line in logs)
    a = load_checkpoint(tmp_path / "model.pt")["state_dict"]
    b = load_checkpoint(out / "ckpt" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_reports(trained, small_ucla, tmp_path):
    out, _, metrics = trained
    r = evaluate(out / "ckpt" / "model.pt", small_ucla, json_path=tmp_path / "r.json",
                 plots_dir=tmp_path / "plots", progress=False)
    assert r["clips"] == 6
    assert r["top1"] == pytest.approx(metrics["test_top1"])  # same weights, same clips
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["top1"] == r["top1"] and "analysis" in saved
    assert sum(map(sum, saved["confusion"])) == 6
    assert (tmp_path / "plots" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "plots" / "firing_rates.png").read_bytes()[:4] == b"\x89PNG"


def test_a_few_steps_reduce_the_loss(small_ucla, tmp_path):
    """Overfitting a fixed real batch: the surrogate gradient trains the network."""
    from mksgn.data import SkeletonDataset
    from mksgn.models import ModelConfig, build_model
    torch.manual_seed(0)
    ds = SkeletonDataset(small_ucla, "train", train=False)
    x = torch.stack([ds[i][0]["joint"] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    model = build_model(ModelConfig.from_dict({**TINY_MODEL, "width": 0.125, "dropout": 0.0}))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_bad_checkpoints(tmp_path, trained):
    out, _, _ = trained
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_model(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an mksgn checkpoint"):
        load_model(tmp_path / "foreign.pt")
    ckpt = load_checkpoint(out / "ckpt" / "model.pt")
    torch.save({**ckpt, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        load_model(tmp_path / "future.pt")
    wrong = dict(ckpt)
    wrong["config"] = {**ckpt["config"], "model": {**ckpt["config"]["model"], "width": 0.25}}
    save_checkpoint(tmp_path / "shape.pt", {k: v for k, v in wrong.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="has shape"):
        load_model(tmp_path / "shape.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"format": "mksgn-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_model(tmp_path / "evil.pt")


def test_bad_configs(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path / "a.json")
    with pytest.raises(ConfigError, match="unknown train setting"):
        load_config(write_config(tmp_path / "b.json", train={"lr_warmup": 3}))
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(write_config(tmp_path / "c.json", model={"depth": 3}))


def test_eval_cli_errors(tmp_path, small_ucla):
    exe = Path(sys.executable).parent / "mksgn-eval"
    (tmp_path / "junk.pt").write_bytes(b"xx")
    r = subprocess.run([str(exe), str(tmp_path / "junk.pt"), "--data", str(small_ucla)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not a readable torch checkpoint" in r.stderr


def test_device_defaults_to_cpu_and_a_missing_gpu_is_a_clean_error(tmp_path, small_ucla):
    _, tcfg = load_config(write_config(tmp_path / "cfg.json"))
    assert tcfg.device == "cpu"
    with pytest.raises(ConfigError, match="train.device"):
        load_config(write_config(tmp_path / "bad.json", train={"device": "tpu"}))
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda would train")
    exe = Path(sys.executable).parent / "mksgn-train"
    r = subprocess.run([str(exe), "--config", str(tmp_path / "cfg.json"), "--data", str(small_ucla),
                        "--out", str(tmp_path / "out"), "--device", "cuda"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "sees no CUDA GPU" in r.stderr and "--device cpu" in r.stderr
    assert not (tmp_path / "out" / "last.pt").exists()


def test_weight_noise_perturbs_synapses_only_and_restores_exactly():
    from mksgn.models import ModelConfig, build_model
    from mksgn.train import _perturb_weights, _restore_weights
    m = build_model(ModelConfig.from_dict(TINY_MODEL))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert _perturb_weights(m, 0.0) == []
    torch.manual_seed(0)
    saved = _perturb_weights(m, 0.01)
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    norm = {f"{n}.{p}" for n, mod in m.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._NormBase)
            for p, _ in mod.state_dict().items()}
    synaptic = {f"{n}.weight" for n, mod in m.named_modules()
                if isinstance(getattr(mod, "weight", None), torch.nn.Parameter)} - norm
    assert changed == synaptic and "head.fc.weight" in changed and "sc.conv.weight" in changed
    rel = max(float(((after[k] - before[k]).abs() / before[k].abs().clamp_min(1e-12)).max()) for k in changed)
    assert 0.01 < rel < 0.1  # about sigma, several sigmas at most
    _restore_weights(saved)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_fine_tune_from_a_checkpoint_with_weight_noise(trained, small_ucla, tmp_path):
    out, _, _ = trained
    init = out / "ckpt" / "model.pt"
    cfg = write_config(tmp_path / "ft.json", train={"epochs": 1, "lr": 1e-9, "weight_noise": 0.004,
                                                    "init_from": str(init)})
    train(cfg, small_ucla, tmp_path / "ft", log=lambda *a: None)
    a = load_checkpoint(init)["state_dict"]
    b = load_checkpoint(tmp_path / "ft" / "model.pt")["state_dict"]
    # lr ~ 0: the fine-tuned weights are the initial ones (the noise is never kept), BN stats move
    w = [k for k in a if k.endswith("conv.weight") or k.endswith("fc.weight")]
    assert w and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in w)
    # the parent's recipe survives in the checkpoint and its model card
    parent = load_checkpoint(tmp_path / "ft" / "model.pt")["metrics"]["init_from"]
    assert parent["checkpoint"] == str(init) and parent["epochs"] == TINY_TRAIN["epochs"]
    from mksgn.model_card import write_model_card
    r = evaluate(tmp_path / "ft" / "model.pt", small_ucla, analysis_clips=2, progress=False)
    card = write_model_card(tmp_path / "ft" / "model.pt", r, tmp_path / "card.md").read_text()
    assert f"fine-tuned from `{init}`: {TINY_TRAIN['epochs']} epochs before this run" in card
    assert f"total {TINY_TRAIN['epochs'] + 1} epochs" in card and "weight × (1 + 0.004·z)" in card
    with pytest.raises(ConfigError, match="weight_noise"):
        load_config(write_config(tmp_path / "bad.json", train={"weight_noise": 1.5}))


def test_ctrgcn_teacher_trains_evaluates_and_is_refused_by_export(small_ucla, tmp_path):
    from export.errors import ExportError
    from export.frontend import from_checkpoint
    from mksgn.model_card import write_model_card
    cfg = write_config(tmp_path / "t.json", model={"arch": "ctrgcn", "width": 0.125, "dropout": 0.0},
                       train={"epochs": 1})
    train(cfg, small_ucla, tmp_path / "t", log=lambda *a: None, modality="bone")
    ck = tmp_path / "t" / "model.pt"
    saved = load_checkpoint(ck)
    assert saved["config"]["model"]["arch"] == "ctrgcn" and saved["data"]["modalities"] == ["bone"]
    r = evaluate(ck, small_ucla, analysis_clips=2, progress=False)
    an = r["analysis"]
    # a float ANN: no spiking neurons, every op is a MAC, energy = E_MAC · FLOPs (eq. 36)
    assert an["neurons"] == [] and an["total_sops"] == 0
    assert an["mac_flops"] == pytest.approx(an["total_flops"]) and an["total_flops"] > 1e6
    assert an["energy_mj"] == pytest.approx(4.6e-9 * an["total_flops"])
    card = write_model_card(ck, r, tmp_path / "card.md").read_text()
    assert card.splitlines()[2].startswith("CTR-GCN (ucla20, width 0.125, float ANN teacher), bone modality")
    with pytest.raises(ExportError, match="teacher"):
        from_checkpoint(ck)
