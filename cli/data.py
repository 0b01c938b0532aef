"""``mksgn-data``: inspect real skeleton datasets and clips."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import click
import numpy as np

from mksgn.data import SPECS, in_split, load_clips
from mksgn.io import read_clip
from cli.common import run


@click.group(help="Inspect skeleton datasets (NW-UCLA json folders, NTU RGB+D .skeleton files).")
def cli():
    pass


def _length_stats(lengths) -> str:
    a = np.asarray(lengths)
    return f"frames min {a.min()}, median {int(np.median(a))}, mean {a.mean():.1f}, max {a.max()}"


@cli.command(help="Per-split and per-class clip counts and frame-length statistics of a dataset "
                  "folder (NW-UCLA folder or its all_sqe/, or a folder of NTU .skeleton files).")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--protocol", default=None,
              help="Split protocol: view3 for NW-UCLA (default); xsub (default) or xview for NTU RGB+D.")
@click.option("--strict/--skip-bad", default=False, show_default=True,
              help="--strict stops at the first unreadable file; --skip-bad skips and counts them.")
def stats(path: Path, protocol: str | None, strict: bool):
    clips, result = load_clips(path, None, protocol, "raise" if strict else "skip", progress=True)
    spec = result.spec
    protocol = protocol or spec.default_protocol
    click.echo(f"dataset: {spec.name} ({spec.layout}), folder {result.folder}")
    click.echo(f"clips read: {len(clips)}   skipped: {len(result.skipped)}")
    for p, why in result.skipped[:5]:
        click.echo(f"  skipped {p.name}: {why}")
    by_name = {c.name: c for c in clips}
    for split in ("train", "test"):
        sel = [c for c in clips if in_split(spec, c.meta, split, protocol)]
        if not sel:
            click.echo(f"\n[{split}] ({protocol}): 0 clips")
            continue
        click.echo(f"\n[{split}] ({protocol}): {len(sel)} clips, {_length_stats([c.num_frames for c in sel])}")
        counts = Counter(c.label for c in sel)
        click.echo(f"  {'class':>5}  {'name':<34} {'clips':>5}")
        for label in sorted(counts):
            click.echo(f"  {label:>5}  {spec.class_names[label]:<34} {counts[label]:>5}")
    multi = sum(1 for c in by_name.values() if c.num_bodies > 1)
    click.echo(f"\nall: {len(clips)} clips, {len(set(c.label for c in clips))} classes, "
               f"{multi} with 2 bodies, {_length_stats([c.num_frames for c in clips])}")


@cli.command(help="Shape, bodies, frames and label of one clip file (.json NW-UCLA or .skeleton NTU RGB+D).")
@click.argument("file", type=click.Path(path_type=Path))
def show(file: Path):
    clip = read_clip(file)
    spec = SPECS["ntu" if file.suffix == ".skeleton" else "ucla"]
    sk = clip.skeleton
    click.echo(f"clip: {clip.name}   ({spec.name}, layout {spec.layout})")
    click.echo(f"label: {clip.label} ({spec.class_names[clip.label]})")
    click.echo("ids: " + ", ".join(f"{k}={v}" for k, v in clip.meta.items()))
    click.echo(f"skeleton (C, T, V, M): {tuple(sk.shape)}  — {clip.num_frames} frames, "
               f"{sk.shape[2]} joints, {clip.num_bodies} bodies kept of {clip.meta['bodies_seen']} seen")
    for m in range(sk.shape[3]):
        present = (sk[..., m] != 0).any(axis=(0, 2))
        xyz = sk[..., m][:, present]
        lo, hi = xyz.reshape(3, -1).min(1), xyz.reshape(3, -1).max(1)
        click.echo(f"  body {m}: present in {int(present.sum())}/{clip.num_frames} frames; "
                   f"x [{lo[0]:.3f}, {hi[0]:.3f}] y [{lo[1]:.3f}, {hi[1]:.3f}] z [{lo[2]:.3f}, {hi[2]:.3f}] m")
    click.echo(f"first frame, joint 0 (x, y, z) m: {tuple(round(float(v), 6) for v in sk[:, 0, 0, 0])}")


main = run(cli)
