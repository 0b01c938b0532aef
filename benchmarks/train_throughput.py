"""Training throughput of MK-SGN and Base-SGN* on this machine (real NW-UCLA batches).

Measures forward + backward + SGD step on batches of real training clips and reports samples
per second and the implied seconds per NW-UCLA epoch (1,020 clips), for each config given.
Prints a table and writes JSON (default ``benchmarks/results/train_throughput.json``).

Usage::

    python benchmarks/train_throughput.py [--data ../shared/data/nw-ucla] [--batches 6]
        [--threads 2] [--configs configs/mksgn/ucla_joint_width1.json ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mksgn.data import SkeletonDataset
from mksgn.train import load_config
from mksgn.models import build_model

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ["mksgn/ucla_joint_1_train", "mksgn/ucla_joint_width1", "base_sgn/ucla_joint",
                   "base_sgn/ucla_joint_width1", "ctrgcn/ucla_teacher"]


def measure(config: Path, data: Path, batches: int, warmup: int = 1) -> dict:
    mcfg, tcfg = load_config(config)
    ds = SkeletonDataset(data, "train", tcfg.modalities, seed=tcfg.seed)
    model = build_model(mcfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = iter(DataLoader(ds, batch_size=tcfg.batch_size, shuffle=True,
                             generator=torch.Generator().manual_seed(0)))
    seen, elapsed = 0, 0.0
    for i in range(warmup + batches):
        x, y = next(loader)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x[tcfg.modalities[0]]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            elapsed += time.perf_counter() - t0
            seen += len(y)
    sps = seen / elapsed
    return {"config": config.stem, "arch": mcfg.arch, "width": mcfg.width,
            "params": sum(p.numel() for p in model.parameters()), "batch_size": tcfg.batch_size,
            "samples_per_s": sps, "seconds_per_ucla_epoch": len(ds) / sps}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nw-ucla")
    ap.add_argument("--configs", nargs="*", type=Path,
                    default=[ROOT / "configs" / f"{c}.json" for c in DEFAULT_CONFIGS])
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [measure(c, args.data, args.batches) for c in args.configs]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads"
    print(f"training throughput on {machine}")
    print(f"{'config':<28} {'params':>9} {'batch':>5} {'samples/s':>10} {'s/epoch (1020)':>15}")
    for r in rows:
        print(f"{r['config']:<28} {r['params']:>9,} {r['batch_size']:>5} {r['samples_per_s']:>10.1f} "
              f"{r['seconds_per_ucla_epoch']:>15.0f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
