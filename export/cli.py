"""``mksgn-export``: quantise a checkpoint to Loihi fixed point and write a Lava / ONNX / NIR graph."""
from __future__ import annotations

from pathlib import Path

import click

from mksgn.cli.common import run

from .exporter import TARGETS, run_export


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
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def cli(checkpoint, target, out_dir, calib_data, calib_clips, force):
    summary = run_export(checkpoint, target, out_dir, calib_data, calib_clips, force)
    click.echo(summary.format())


main = run(cli)
