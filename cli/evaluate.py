"""``mksgn-eval``: top-1, per-class accuracy, confusion matrix and the ops/energy analysis."""
from __future__ import annotations

from pathlib import Path

import click

from mksgn.evaluate import evaluate
from cli.common import run
from mksgn.guard import integer, number, output_dir, output_file


@click.command(help="Evaluate a checkpoint on real clips: top-1 (%), per-class accuracy, confusion "
                    "matrix, and per-layer firing rate / FLOPs / SOPs / energy (paper eq. 33-37). Given an "
                    "export directory (mksgn-export), evaluates the quantised network in Loihi integer "
                    "arithmetic instead (same JSON keys).")
@click.argument("checkpoint", type=click.Path(path_type=Path), metavar="CHECKPOINT|EXPORT_DIR", required=False)
@click.option("--ensemble", type=click.Path(path_type=Path), nargs=4, default=None,
              metavar="CKPT CKPT CKPT CKPT",
              help="Instead of CHECKPOINT: four CTR-GCN teacher streams (one per modality); reports each "
                   "stream's top-1 and the 4-stream ensemble top-1 (paper eq. 25); JSON keys streams, top1.")
@click.option("--alphas", type=float, nargs=4, default=None, metavar="A_J A_B A_JM A_BM",
              help="With --ensemble: eq. 25 weights for joint, bone, joint_motion, bone_motion "
                   "(default 0.6 0.6 0.4 0.4, the CTR-GCN ensemble's).")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Dataset folder, e.g. ../shared/data/nw-ucla.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
              help="Split to evaluate.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write all results (key top1 in percent) to this JSON file.")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path), default=None,
              help="Write confusion.png and firing_rates.png into this folder.")
@click.option("--analysis-clips", type=int, default=None,
              help="Clips used for the firing-rate/energy analysis (default: the whole split).")
@click.option("--model-card", type=click.Path(path_type=Path), default=None,
              help="Write a Markdown model card (config, training, top-1, firing rates, SOPs, energy).")
def cli(checkpoint, data, split, json_path, plots_dir, analysis_clips, model_card, ensemble, alphas):
    if (checkpoint is None) == (not ensemble):
        raise click.UsageError("give either CHECKPOINT|EXPORT_DIR or --ensemble CKPT CKPT CKPT CKPT")
    if alphas and not ensemble:
        raise click.UsageError("--alphas only applies to --ensemble")
    for a in alphas or ():  # checked before any clip is read
        number(a, "--alphas", 0)
    integer(analysis_clips, "--analysis-clips", 1)
    output_file(json_path, "--json")
    output_dir(plots_dir, "--plots")
    output_file(model_card, "--model-card")
    if ensemble:
        from mksgn.evaluate import evaluate_ensemble
        r = evaluate_ensemble(list(ensemble), data, split, alphas or None, json_path)
        click.echo(f"\n4-stream CTR-GCN teacher on {split} ({r['clips']} clips):")
        for m, rec in r["streams"].items():
            click.echo(f"  {m:<12} top-1 {rec['top1']:6.2f}%  (alpha {r['alphas'][m]:g})  {rec['checkpoint']}")
        click.echo(f"  {'ensemble':<12} top-1 {r['top1']:6.2f}%  (eq. 25)")
        if json_path:
            click.echo(f"wrote {json_path}")
        return
    if Path(checkpoint).is_dir():  # an export directory: evaluate the quantised network
        from export.evaluate import evaluate_export
        r = evaluate_export(checkpoint, data, split, json_path, plots_dir)
        click.echo(f"\n{Path(checkpoint).name} (quantised, {r['target']}) on {split} ({r['clips']} clips): "
                   f"top-1 {r['top1']:.2f}%")
        for name, counts in r["saturation"].items():
            click.echo(f"  saturation in {name}: {counts}")
        return
    r = evaluate(checkpoint, data, split, json_path, plots_dir, analysis_clips)
    click.echo(f"\n{Path(checkpoint).name} on {split} ({r['clips']} clips): top-1 {r['top1']:.2f}%")
    width = max(len(n) for n in r["per_class"])
    for name, acc in r["per_class"].items():
        click.echo(f"  {name:<{width}}  {acc:6.1f}%")
    click.echo(f"\nops and energy per clip (analysis on {r['analysis_clips']} clips):")
    click.echo(r["_table"])
    if json_path:
        click.echo(f"wrote {json_path}")
    if plots_dir:
        click.echo(f"wrote {Path(plots_dir) / 'confusion.png'} and firing_rates.png")
    if model_card:
        from mksgn.model_card import write_model_card
        click.echo(f"wrote {write_model_card(checkpoint, r, model_card)}")


main = run(cli)
