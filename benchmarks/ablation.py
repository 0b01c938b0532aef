"""The paper's Table 1 ablation on our data: Base-SGN*, MK-SGN 1-modal, 1-modal + KD, 4-modal,
4-modal + KD, and 4-modal + KD with the fusion rule of eq. 23 as printed and with the
"complement" rule, on NW-UCLA — Param (M), time steps, modalities, KD, SOPs (G), FLOPs (G), energy (mJ)
and top-1 (%) per row, as a Markdown table and JSON.

Each row is a checkpoint. Rows come from ``--row NAME=CHECKPOINT`` (an existing checkpoint,
e.g. the shipped ones), or, with ``--train``, are trained here from their config
(``ROWS`` below; the KD rows need ``--teacher`` ×4, one CTR-GCN stream per modality). A row
with neither is listed as "not run" — the table never invents a number. Every number comes
from ``mksgn.evaluate.evaluate`` on the real test split: top-1 over all test clips, the
analysis (firing rates, FLOPs, SOPs, energy of paper eq. 33–37) over ``--analysis-clips``.

Usage::

    .venv/bin/python benchmarks/ablation.py --data ../shared/data/nw-ucla \\
        --row base_sgn=models/base_sgn_ucla_joint.pt --row mksgn_1modal=models/mksgn_ucla_joint.pt
    # a GPU / long CPU session: train every missing row (teachers trained beforehand)
    .venv/bin/python benchmarks/ablation.py --train --teacher runs/ctrgcn_joint/model.pt ... (×4)

Writes ``OUT/ablation.md`` and ``OUT/ablation.json`` (default ``benchmarks/results/``).
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import click
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mksgn.checkpoint import atomic_write, load_checkpoint  # noqa: E402
from mksgn.errors import MksgnError  # noqa: E402
from mksgn.evaluate import evaluate  # noqa: E402
from mksgn.train import train  # noqa: E402

# (name, label, config, distilled) in the paper's Table 1 order
ROWS = [
    ("base_sgn", "Base-SGN*", "configs/base_sgn/ucla_joint.json", False),
    ("mksgn_1modal", "MK-SGN, 1 modality", "configs/mksgn/ucla_joint_1_train.json", False),
    ("mksgn_1modal_kd", "MK-SGN, 1 modality + KD", "configs/mksgn/ucla_joint_1_train.json", True),
    ("mksgn_4modal", "MK-SGN, 4 modalities", "configs/mksgn/ucla_4modal.json", False),
    ("mksgn_4modal_kd", "MK-SGN, 4 modalities + KD", "configs/mksgn/ucla_4modal.json", True),
    # the fusion rule as printed (eq. 22-23, train.smf_weights "paper"); the rows above use the
    # default eq. 22 shares (issue 16)
    ("mksgn_4modal_kd_paper", "MK-SGN, 4 modalities + KD, eq. 23 as printed", "configs/mksgn/ucla_4modal_paper.json",
     True),
    # the alternative rule (1 - eq. 22)/3 ("complement": the modality most redundant with the
    # others gets the least weight), measured against the default before choosing it
    ("mksgn_4modal_kd_complement", "MK-SGN, 4 modalities + KD, complement rule",
     "configs/mksgn/ucla_4modal_complement.json", True),
]
COLUMNS = ["model", "Param (M)", "time steps", "modalities", "KD", "SOPs (G)", "FLOPs (G)", "energy (mJ)",
           "top-1 (%)", "checkpoint"]


def row_of(name: str, label: str, ckpt_path: Path, data: Path, analysis_clips: int) -> dict:
    """Evaluate one checkpoint; returns the table row (numbers per clip)."""
    ck = load_checkpoint(ckpt_path)
    r = evaluate(ckpt_path, data, analysis_clips=analysis_clips, progress=False)
    an = r["analysis"]
    met = ck.get("metrics", {})
    return {"name": name, "model": label, "params_m": an["params"] / 1e6, "time_steps": an["time_steps"],
            "modalities": len(ck["data"]["modalities"]), "kd": bool(met.get("teachers")),
            "sops_g": an["total_sops"] / 1e9, "flops_g": an["total_flops"] / 1e9, "energy_mj": an["energy_mj"],
            "top1": r["top1"], "clips": r["clips"], "checkpoint": str(ckpt_path),
            "epochs": met.get("epochs"), "train_seconds": met.get("train_seconds")}


def markdown(rows: list) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "| --- |" + " ---: |" * (len(COLUMNS) - 2) + " --- |"]
    for r in rows:
        if "top1" not in r:
            lines.append(f"| {r['model']} |" + " — |" * (len(COLUMNS) - 2) + f" not run: {r['why']} |")
            continue
        lines.append(f"| {r['model']} | {r['params_m']:.3f} | {r['time_steps']} | {r['modalities']} | "
                     f"{'yes' if r['kd'] else 'no'} | {r['sops_g']:.4f} | {r['flops_g']:.4f} | "
                     f"{r['energy_mj']:.4f} | {r['top1']:.2f} | `{r['checkpoint']}` |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--data", "data", type=click.Path(path_type=Path), default=ROOT.parent / "shared/data/nw-ucla",
              show_default=True, help="NW-UCLA folder")
@click.option("--row", "given", multiple=True, metavar="NAME=CHECKPOINT",
              help=f"use an existing checkpoint for a row ({', '.join(r[0] for r in ROWS)})")
@click.option("--train", "do_train", is_flag=True, help="train the rows that have no checkpoint")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(path_type=Path),
              help="CTR-GCN stream checkpoint, one per modality (×4), for the KD rows")
@click.option("--epochs", type=int, default=None, help="override train.epochs when training rows")
@click.option("--runs", type=click.Path(path_type=Path), default=ROOT / "runs/ablation", show_default=True,
              help="training output folders")
@click.option("--analysis-clips", type=int, default=64, show_default=True,
              help="test clips for firing rates / SOPs / energy (top-1 always uses the whole split)")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks/results", show_default=True)
def main(data, given, do_train, teachers, epochs, runs, analysis_clips, threads, out):
    """Build the ablation table (paper Table 1) on NW-UCLA; see the module docstring."""
    torch.set_num_threads(threads)
    known = {r[0] for r in ROWS}
    chosen = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or name not in known:
            raise click.UsageError(f"--row {item!r}: expected NAME=CHECKPOINT with NAME one of {sorted(known)}")
        if not Path(path).is_file():
            raise click.UsageError(f"--row {item!r}: no such checkpoint file")
        chosen[name] = Path(path)
    rows = []
    for name, label, config, kd in ROWS:
        ckpt = chosen.get(name)
        if ckpt is None and do_train and (not kd or len(teachers) == 4):
            t0 = time.time()
            click.echo(f"training {label} from {config}")
            train(ROOT / config, data, runs / name, epochs=epochs, threads=threads,
                  teachers=list(teachers) if kd else None)
            ckpt = runs / name / "model.pt"
            click.echo(f"  {time.time() - t0:.0f} s")
        if ckpt is None:
            why = "needs --teacher ×4" if kd and do_train else "no checkpoint (--row) and no --train"
            rows.append({"name": name, "model": label, "why": why})
            continue
        click.echo(f"evaluating {label}: {ckpt}")
        rows.append(row_of(name, label, ckpt, data, analysis_clips))
    table = markdown(rows)
    click.echo("\n" + table)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "ablation.md", lambda tmp: tmp.write_text(f"Machine: {machine}\n\n{table}"))
    atomic_write(out / "ablation.json", lambda tmp: tmp.write_text(json.dumps(
        {"machine": machine, "data": str(data), "analysis_clips": analysis_clips, "rows": rows}, indent=1)))
    click.echo(f"wrote {out / 'ablation.md'} and {out / 'ablation.json'}")


if __name__ == "__main__":
    try:
        main(standalone_mode=True)
    except MksgnError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
