"""Model cards for shipped checkpoints: a short Markdown file next to each ``models/*.pt``.

The card is generated from the checkpoint (config, training history, machine) and an
evaluation result (:func:`mksgn.evaluate.evaluate`), so its numbers are reproducible with
``mksgn-eval``. The line ``- test top-1: XX.XX %`` is machine-read by the test suite.
"""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

from .checkpoint import atomic_write, checkpoint_fusion_rule, load_checkpoint
from .graph import layout_name

ARCH_NAMES = {"mksgn": "MK-SGN", "base_sgn": "Base-SGN*", "ctrgcn": "CTR-GCN"}
FUSION_RULE_WORDS = {
    "share": "eq. 22 alone, each modality's share of the mutual information (deviates from the paper: no eq. 23 "
             "min–max, which gives the least-dependent modality weight 0)",
    "complement": "(1 − eq. 22)/3, the complement of each modality's share of the mutual information (deviates "
                  "from the paper: a modality redundant with the others gets less weight, not more; no eq. 23 "
                  "min–max)",
    "paper": "eq. 22–23 as printed",
}
"""What a card says of each fusion rule (:data:`mksgn.models.smf.FUSION_RULES`)."""
TOP1_LINE = re.compile(r"^- test top-1: ([0-9.]+) %", re.M)


def read_card_top1(path: str | Path) -> float:
    """The test top-1 (percent) stated in a model card."""
    m = TOP1_LINE.search(Path(path).read_text())
    if not m:
        raise ValueError(f"{path}: no '- test top-1: XX.XX %' line")
    return float(m.group(1))


def write_model_card(checkpoint: str | Path, result: dict, path: str | Path) -> Path:
    """Write the card of ``checkpoint`` given its evaluation ``result`` (with ``analysis``)."""
    ckpt = load_checkpoint(checkpoint)
    cfg, tr = ckpt["config"]["model"], ckpt["config"]["train"]
    met = ckpt.get("metrics", {})
    hist = met.get("history", [])
    an = result["analysis"]
    secs = met.get("train_seconds") or sum(h.get("seconds", 0) for h in hist)
    size_mb = Path(checkpoint).stat().st_size / 1e6
    d = ckpt["data"]
    ucla = d.get("dataset", "ucla") == "ucla"
    trained_on = ("NW-UCLA split (views v01+v02 train, v03 test)" if ucla else  # other data: as recorded
                  f"{d.get('dataset')} data (split protocol {d.get('protocol') or 'train/val'})")
    lines = [
        f"# {Path(checkpoint).name}",
        "",
        f"{ARCH_NAMES.get(cfg['arch'], cfg['arch'])} ({layout_name(cfg['layout'])}, width {cfg['width']}"
        + (f", T_s = {cfg['time_steps']}" if cfg["arch"] != "ctrgcn" else ", float ANN teacher") +
        f"), {', '.join(ckpt['data']['modalities'])} modality, trained on the real "
        f"{trained_on} with `mksgn-train`.",
        "",
        "## Result (reproduce with `mksgn-eval " + f"models/{Path(checkpoint).name} --data "
        + ("../shared/data/nw-ucla`)" if ucla else "DATA`)"),
        f"- test top-1: {result['top1']:.2f} % ({result['clips']} clips)",
        f"- parameters: {an['params']:,}",
        f"- per clip: {an['total_flops'] / 1e9:.4f} GFLOPs (ANN-equivalent), {an['total_sops'] / 1e9:.4f} G SOPs, "
        f"energy {an['energy_mj']:.4f} mJ (paper eq. 33–37, E_MAC {an['energy_model']['e_mac_pj']} pJ, "
        f"E_AC {an['energy_model']['e_ac_pj']} pJ)",
        f"- mean firing rate over neuron groups: "
        f"{sum(n['firing_rate'] for n in an['neurons']) / max(len(an['neurons']), 1):.4f} spikes/neuron/step",
        "",
        "## Training",
        f"- epochs {len(hist)}, batch {tr.get('batch_size')}, SGD lr {tr.get('lr')} (momentum "
        f"{tr.get('momentum')}, nesterov {tr.get('nesterov')}), weight decay {tr.get('weight_decay')}, "
        f"warm-up {tr.get('warmup_epochs')} epochs, "
        + (f"piecewise lr [epoch, lr] {tr['lr_schedule']}, " if tr.get("lr_schedule")
           else f"lr × {tr.get('lr_gamma')} at epochs {tr.get('lr_steps')}, ") +
        f"dropout {cfg['dropout']}, seed {tr.get('seed')}",
        f"- training time {secs / 60:.1f} min on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(torch {torch.__version__}); source revision {ckpt.get('git_revision')}",
        f"- final train top-1 {hist[-1]['train_top1']:.1f} %" if hist else "- no history recorded",
    ]
    parent = met.get("init_from")
    if tr.get("weight_noise"):
        lines.append(f"- noise-aware training: every synaptic weight × (1 + {tr['weight_noise']}·z), z ~ N(0, 1), "
                     "redrawn at every step (`train.weight_noise`)")
    if cfg.get("fusion") == "smf":
        w = met.get("fusion_weight") or {}
        rule = checkpoint_fusion_rule(ckpt)
        lines.append("- four-modality MK-SGN: Spiking Multimodal Fusion (SMF, paper eq. 16–24), frozen fusion "
                     "weights (eq. 24) " + ", ".join(f"{m} {v:.4f}" for m, v in w.items())
                     + f"; fusion rule `train.smf_weights` {rule!r}: "
                     + FUSION_RULE_WORDS.get(rule, FUSION_RULE_WORDS["paper"])
                     + f"; MINE estimators (LSTM hidden {tr.get('mine_hidden')}, {tr.get('mine_optimizer')} "
                       f"lr {tr.get('mine_lr')}, running-average momentum {tr.get('smf_momentum')}) used in "
                       "training only, not in this file")
    if tr.get("trainable"):
        lines.append(f"- only parameters under {tr['trainable']} trained (`train.trainable`), the rest frozen")
    encs = met.get("init_encoders") or {m: {"checkpoint": p} for m, p in (tr.get("init_encoders") or {}).items()}
    if encs:
        lines.append("- encoders initialised (`train.init_encoders`) from single-modality checkpoints: "
                     + "; ".join(f"{m} `{e['checkpoint']}`" + (f" (test top-1 {e['test_top1']:.2f} %)"
                                                               if e.get("test_top1") is not None else "")
                                 for m, e in encs.items()))
    if met.get("teachers"):
        kd = met.get("distillation", {})
        lines.append("- distilled (paper eq. 25–32) from a 4-stream CTR-GCN teacher: "
                     + "; ".join(f"{t['modality']} `{t['checkpoint']}` (sha256 {t['sha256'][:12]}…"
                                 + (f", test top-1 {t['test_top1']:.2f} %" if t.get("test_top1") is not None else "")
                                 + ")" for t in met["teachers"])
                     + f"; α {kd.get('alphas')}, γ1/γ2/γ3 {kd.get('gamma1')}/{kd.get('gamma2')}/{kd.get('gamma3')}, "
                       f"β1/β2 {kd.get('beta1')}/{kd.get('beta2')}, temperature {kd.get('temperature')}, "
                       f"FTM SGD lr {kd.get('ftm_lr')}; teachers and FTMs are not in this file")
    if parent:
        top = parent.get("test_top1")
        lines.append(f"- fine-tuned from `{parent['checkpoint']}`: {parent['epochs']} epochs before this run "
                     f"({parent['train_seconds'] / 60:.1f} min, revision {parent.get('git_revision')}"
                     + (f", test top-1 {top:.2f} %" if top is not None else "") + "); its schedule: "
                     + (f"piecewise lr {parent['train']['lr_schedule']}" if parent["train"].get("lr_schedule")
                        else f"lr {parent['train'].get('lr')}") +
                     f"; total {parent['epochs'] + len(hist)} epochs, "
                     f"{(parent['train_seconds'] + secs) / 60:.1f} min")
    lines += [
        f"- file size {size_mb:.2f} MB",
        "",
        "## Firing rates (spikes per neuron per time step, test split)",
        "",
        "| neuron group | neurons | firing rate |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {n['name']} | {n['neurons']:,} | {n['firing_rate']:.4f} |" for n in an["neurons"]]
    lines += ["", "## Test accuracy during training", "", "| epoch | train top-1 | test top-1 |", "| ---: | ---: | ---: |"]
    lines += [f"| {h['epoch']} | {h['train_top1']:.1f} | {h['test_top1']:.1f} |" for h in hist if "test_top1" in h]
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))
