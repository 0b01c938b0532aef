"""``mksgn-train``: train MK-SGN / Base-SGN* on a real skeleton dataset."""
from __future__ import annotations

from pathlib import Path

import click
import torch

from export.pipeline import calibration_clips
from export.qat import QATForward
from mksgn.preprocess import MODALITIES
from mksgn.train import load_config, train
from cli.common import run
from mksgn.guard import integer, output_dir


@click.command(help="Train a spiking model (MK-SGN, the four-modality MK-SGN with SMF, or Base-SGN*) or the CTR-GCN "
                    "teacher from a JSON config on real clips, optionally distilled from four CTR-GCN streams "
                    "(--teacher). Writes <out>/last.pt after every epoch (resumable), <out>/model.pt at the end.")
@click.option("--config", "config", type=click.Path(path_type=Path), required=True,
              help="Model + training config, e.g. configs/mksgn/ucla_joint_1_train.json.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Dataset folder (e.g. ../shared/data/nw-ucla), pyskl .pkl or .npz file.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output folder for checkpoints and history.json.")
@click.option("--epochs", type=int, default=None, help="Override train.epochs of the config.")
@click.option("--no-resume", is_flag=True, help="Start from scratch even if <out>/last.pt exists.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: all cores).")
@click.option("--modality", type=click.Choice(list(MODALITIES)), default=None,
              help="Override train.modalities with this one modality (e.g. one CTR-GCN teacher stream each).")
@click.option("--teacher", "teachers", type=click.Path(path_type=Path), multiple=True,
              help="A CTR-GCN teacher stream checkpoint; give it four times, one per modality (joint, bone, "
                   "joint_motion, bone_motion: each checkpoint's data.modalities says which). Switches on "
                   "GCN-to-SGN distillation (paper eq. 25-32) with the kd_* settings of the config; replaces "
                   "train.teachers.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Train on the CPU or a CUDA GPU (overrides train.device, default cpu); checkpoints are "
                   "written with CPU tensors either way.")
@click.option("--layout", default=None,
              help="Joint layout, replacing model.layout: ntu25, ucla20, openpose18, coco17 or a layout JSON file "
                   "(joint names, inward edges, centre joint); stored whole in the checkpoint.")
@click.option("--qat", is_flag=True,
              help="Quantisation-aware training (also train.qat in the config): the forward pass is the export's "
                   "Loihi integer twin (plain 8-bit weights, scales calibrated on training clips every "
                   "train.qat_calib_every epochs) with straight-through gradients; mksgn-export then defaults "
                   "to --no-weight-split.")
def cli(config, data, out_dir, epochs, no_resume, threads, modality, teachers, device, layout, qat):
    integer(epochs, "--epochs", 1, 100_000)
    integer(threads, "--threads", 1, 4096)
    output_dir(out_dir, "--out")
    forward = None
    _, tcfg = load_config(config)
    if qat or tcfg.qat:
        if threads:
            torch.set_num_threads(threads)
        mods = [modality] if modality else list(tcfg.modalities)
        forward = QATForward(calibration_clips(data, mods, tcfg.qat_calib_clips, layout=layout, protocol=tcfg.protocol),
                             tcfg.qat_calib_every)
    train(config, data, out_dir, epochs=epochs, resume=not no_resume, threads=threads, log=click.echo,
          modality=modality, teachers=list(teachers) or None, device=device, layout=layout, forward=forward)


main = run(cli)
