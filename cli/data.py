"""``mksgn-data``: inspect real skeleton datasets and clips."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import click
import numpy as np

from mksgn.annotations import COLLECTION_SUFFIXES, read_collection, resolve_layout
from mksgn.data import SPECS, in_split, load_clips
from mksgn.errors import ConfigError
from mksgn.io import read_clip
from cli.common import run


@click.group(help="Inspect skeleton datasets (NW-UCLA json folders, NTU RGB+D .skeleton files, pyskl .pkl and "
                  ".npz files).")
def cli():
    pass


def _length_stats(lengths) -> str:
    a = np.asarray(lengths)
    return f"frames min {a.min()}, median {int(np.median(a))}, mean {a.mean():.1f}, max {a.max()}"


def _class_table(clips, class_names) -> None:
    counts = Counter(c.label for c in clips)
    click.echo(f"  {'class':>5}  {'name':<34} {'clips':>5}")
    for label in sorted(counts):
        name = class_names[label] if label < len(class_names) else "?"
        click.echo(f"  {label:>5}  {name:<34} {counts[label]:>5}")


def _valid_frames(clip) -> int:
    """Frames with any body present (an .npz pads clips with all-zero frames)."""
    return int((clip.skeleton != 0).any(axis=(0, 2, 3)).sum())


def _file_stats(path: Path, protocol: str | None, layout: str | None) -> None:
    col = read_collection(path)
    try:
        lay = resolve_layout(col, layout)
    except ConfigError:  # no layout given and no built-in with this joint count: still show the data
        if layout is not None:
            raise
        click.echo(f"dataset: {col.kind} file {path}, {col.num_joints} joints, no built-in layout with that many "
                   "(train with --layout FILE)")
    else:
        how = "given" if layout else ("the file's" if col.layout else f"built-in for {col.num_joints} joints")
        click.echo(f"dataset: {col.kind} file {path}, layout {lay.name} ({lay.num_joints} joints, {lay.max_bodies} "
                   f"bodies, window {lay.window}; {how})")
    click.echo(f"clips: {len(col.clips)}, classes: {len(col.class_names)} (names: {col.class_source})")
    if col.splits is None:
        click.echo("splits: none (every clip is in every split)")
    else:
        click.echo("splits: " + ", ".join(f"{k} {len(v)}" for k, v in col.splits.items())
                   + f"; protocols {[p or 'plain' for p in col.protocols]}, default {col.default_protocol or 'plain'}")
    protocol = protocol or col.default_protocol
    for split in ("train", "test"):
        if col.splits is not None and protocol in col.protocols \
                and col.protocols[protocol][0 if split == "train" else 1] is None:
            click.echo(f"\n[{split}] ({protocol or 'plain'}): no such split")
            continue
        name = col.split_name(split, protocol)
        sel = col.select(split, protocol)
        click.echo(f"\n[{split}] ({name or 'all clips'}): {len(sel)} clips, "
                   f"{_length_stats([_valid_frames(c) for c in sel])}")
        _class_table(sel, col.class_names)
    multi = sum(1 for c in col.clips if (c.skeleton[..., 1:] != 0).any())
    click.echo(f"\nall: {len(col.clips)} clips, {len(set(c.label for c in col.clips))} classes present, "
               f"{multi} with 2+ bodies, {_length_stats([_valid_frames(c) for c in col.clips])}")


@cli.command(help="Per-split and per-class clip counts and frame-length statistics of a dataset "
                  "folder (NW-UCLA folder or its all_sqe/, or a folder of NTU .skeleton files) or of a "
                  "pyskl .pkl / .npz file.")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--protocol", default=None,
              help="Split protocol: view3 for NW-UCLA (default); xsub (default) or xview for NTU RGB+D; a file's "
                   "split prefix (xsub, xset, ...; default plain train/val, else xsub).")
@click.option("--strict/--skip-bad", default=False, show_default=True,
              help="--strict stops at the first unreadable file; --skip-bad skips and counts them.")
@click.option("--layout", default=None,
              help="Joint layout of a .pkl/.npz file (a built-in name or a layout JSON file); default the file's "
                   "own, else the built-in with its joint count.")
def stats(path: Path, protocol: str | None, strict: bool, layout: str | None):
    if path.is_file() and path.suffix in COLLECTION_SUFFIXES:
        _file_stats(path, protocol, layout)
        return
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
        _class_table(sel, spec.class_names)
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
