"""``mksgn-export``: quantise a checkpoint to Loihi fixed point and write a Lava / ONNX / NIR graph."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from cli.common import run
from mksgn.guard import integer, number, optional_output, output_dir, output_file

from export.exporter import TARGETS, run_export
from export.passes import SPLIT_KINDS

#: ``--weight-split/--no-weight-split`` of mksgn-export and mksgn-qcheck (the same lowering);
#: the callback turns the flag into the synapse kinds :func:`export.passes.quantise` splits.
_weight_split_option = click.option(
    "--weight-split/--no-weight-split", default=None,
    callback=lambda ctx, param, on: None if on is None else (SPLIT_KINDS if on else ()),
    help="Give every spike-driven conv/affine/graph/pool synapse group a low-mantissa partner "
         "(weight_exp - 8) so weights keep ~15 bits: 2x their synaptic events. Default: split, except for a "
         "checkpoint trained with quantisation-aware training (mksgn-train --qat), which exports plain 8-bit.")


@click.command(help="Quantise an MK-SGN / Base-SGN* checkpoint to Loihi fixed point (8-bit weight mantissa + "
                    "per-layer weight_exp, 12-bit du/dv, vth in units of 2^6, 24-bit state) with scales "
                    "calibrated on real training clips, and write an export directory.")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(sorted(TARGETS)), required=True,
              help="lava: HDF5 network (netx per-layer conventions + graph) and manifest.json; onnx: integer "
                   "graph unrolled over the time steps; nir: NIR graph (float, continuous time).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output directory (default: <checkpoint stem>_<target>/ beside the checkpoint).")
@click.option("--calib-data", type=click.Path(path_type=Path), default=Path("../shared/data/nw-ucla"),
              show_default=True, help="Dataset folder whose training clips calibrate the per-layer scales.")
@click.option("--calib-clips", type=int, default=64, show_default=True,
              help="Number of training clips used for calibration.")
@click.option("--force", is_flag=True, help="Replace a previous export in the output directory (a folder holding only an export's manifest.json and its files; never the working folder or one holding the inputs).")
@_weight_split_option
@click.option("--recalibrate", is_flag=True,
              help="For a checkpoint trained with quantisation-aware training: calibrate the scales afresh "
                   "instead of exporting the grid it was trained on (the default).")
def cli(checkpoint, target, out_dir, calib_data, calib_clips, force, weight_split, recalibrate):
    summary = run_export(checkpoint, target, out_dir, calib_data, calib_clips, force,
                         weight_split=weight_split, recalibrate=recalibrate)
    click.echo(summary.format())
    for line in summary.warnings:
        click.echo(f"warning: {line}", err=True)


main = run(cli)


@click.command(help="Does a checkpoint survive Loihi's integer arithmetic? Lowers it as mksgn-export does, "
                    "then runs the float network and its Loihi fixed-point twin on real clips: float vs "
                    "integer top-1, where the two part ways group by group (spike flips), and the float "
                    "model's own noise floor (top-1 under tiny random weight changes). Exits 1 when the loss exceeds "
                    "--max-loss and lies below that floor.")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Dataset folder to evaluate on, e.g. ../shared/data/nw-ucla.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--clips", type=int, default=None, help="Only the first N clips of the split (default: all).")
@click.option("--calib-data", type=click.Path(path_type=Path), default=None,
              help="Dataset folder for calibration (default: --data); training clips, as mksgn-export.")
@click.option("--calib-clips", type=int, default=64, show_default=True)
@click.option("--runs", type=int, default=8, show_default=True,
              help="Perturbed float runs for the noise floor (0 skips it).")
@click.option("--eps", type=float, default=None,
              help="Relative weight perturbation of the noise floor [default: 1e-4, ~1/40 of an 8-bit step].")
@click.option("--divergence-clips", type=int, default=16, show_default=True,
              help="Clips for the per-group spike-divergence table (records every group).")
@click.option("--max-loss", type=float, default=0.5, show_default=True,
              help="Accepted quantisation loss in top-1 points.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the whole result to this JSON file.")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path), default=None,
              help="Write divergence.png and noise_floor.png into this folder.")
@_weight_split_option
def qcheck(checkpoint, data, split, clips, calib_data, calib_clips, runs, eps, divergence_clips, max_loss,
           json_path, plots_dir, weight_split):
    import json

    from mksgn.checkpoint import atomic_write
    # every number and output path is checked before the calibration and the runs
    integer(clips, "--clips", 1)
    integer(calib_clips, "--calib-clips", 1)
    integer(runs, "--runs", 0, 10_000)
    number(eps, "--eps", 0, 1, low_open=True)
    integer(divergence_clips, "--divergence-clips", 1)
    number(max_loss, "--max-loss", 0, 100)
    output_file(json_path, "--json")
    output_dir(plots_dir, "--plots")

    from export.sensitivity import DEFAULT_EPS, HOT_FACTOR, format_divergence, plot_quant_check, quant_check
    r = quant_check(checkpoint, data, split, calib_data, calib_clips, runs,
                    DEFAULT_EPS if eps is None else eps, divergence_clips, max_loss, clips,
                    weight_split=weight_split)
    click.echo(f"\nspike divergence, integer vs float network ({r['divergence_clips']} {split} clips):")
    click.echo(format_divergence(r["divergence"]))
    click.echo(f"\n{Path(checkpoint).name} on {r['clips']} {split} clips:")
    click.echo(f"  float top-1     {r['float_top1']:.2f} %")
    click.echo(f"  integer top-1   {r['int_top1']:.2f} %   (loss {r['loss']:+.2f} points, "
               f"{r['changed']} predictions changed; weight split: {', '.join(r['weight_split']) or 'none'})")
    click.echo("  mappings side by side (same scales):")
    for m in r["mappings"]:
        click.echo(f"    {m['name']:<12} integer top-1 {m['int_top1']:6.2f} %   loss {m['loss']:+.2f} points   "
                   f"{m['spike_synapses']} spike-driven synapse groups")
    f = r["floor"]
    if f:
        click.echo(f"  noise floor     float top-1 {f['mean']:.2f} ± {f['std']:.2f} % (min {f['min']:.2f}, "
                   f"max {f['max']:.2f}) over {f['runs']} runs with weights × (1 + {f['eps']:g}·z); "
                   f"{np.mean(f['changed']):.1f} predictions changed per run")
    if r["hot_spots"]:
        click.echo(f"  hot spots (flip more than {HOT_FACTOR:g}x their sources): {', '.join(r['hot_spots'])}")
    click.echo(f"verdict ({r['status']}): {r['verdict']}")
    if json_path:
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(r, indent=1)))
        click.echo(f"wrote {json_path}")
    if plots_dir:  # optional: a failure is a warning and the verdict's exit status stands
        for p in optional_output(lambda: plot_quant_check(r, plots_dir), f"plots in {plots_dir}") or ():
            click.echo(f"wrote {p}")
    if r["status"] == "loss":
        raise SystemExit(1)


qcheck_main = run(qcheck)
