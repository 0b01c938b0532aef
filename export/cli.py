"""``mksgn-export``: quantise a checkpoint to Loihi fixed point and write a Lava / ONNX / NIR graph.

Status: the command line is declared; the quantisation pipeline is tracked in issue 5 and
the command fails with a clear message until it lands.
"""
from __future__ import annotations

from pathlib import Path

import click

from mksgn.cli.common import run

from .errors import ExportError


@click.command(help="Quantise an MK-SGN / Base-SGN* checkpoint to Loihi fixed point (8-bit weights + "
                    "per-layer weight_exp, 12-bit du/dv) and write an export directory.")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["lava", "onnx", "nir"]), required=True,
              help="lava: HDF5 network (netx conventions + graph) and manifest.json; onnx: integer "
                   "graph unrolled over the time steps; nir: NIR graph (float, continuous time).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output directory (default: <checkpoint stem>_<target>/). Written to a temp dir and renamed.")
@click.option("--calib-data", type=click.Path(path_type=Path), default=None,
              help="Dataset folder whose training clips calibrate the per-layer scales.")
@click.option("--calib-clips", type=int, default=64, show_default=True,
              help="Number of training clips used for calibration.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def cli(checkpoint, target, out_dir, calib_data, calib_clips, force):
    raise ExportError("mksgn-export is not implemented yet (issue 5: quantise and export); "
                      "use mksgn-eval to evaluate the float checkpoint")


main = run(cli)
