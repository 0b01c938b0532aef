"""Replay speed: seconds per clip in Lava (Loihi2SimCfg fixed_pt) and in the PyTorch twin, for
the shipped Base-SGN* and MK-SGN exports on real NW-UCLA test clips.

Each model is exported once (64 calibration clips) into a temporary folder, then replayed
twice, on ``n1`` and ``n2`` clips, each run compiled once and streamed. The marginal cost
``(t(n2) − t(n1)) / (n2 − n1)`` is the streaming cost per clip, the rest the fixed cost
(process build, compile, pipeline fill); the time for the whole 464-clip test split is
``fixed + 464 · marginal``. Every run is also checked bit-exact (the benchmark fails if not).
Prints a table and writes JSON (default ``benchmarks/results/replay.json``).

Usage::

    python benchmarks/replay.py [--data ../shared/data/nw-ucla] [--n1 2] [--n2 6]
        [--models models/base_sgn_ucla_joint.pt models/mksgn_ucla_joint.pt]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from export.exporter import run_export
from hw_sim.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
TEST_CLIPS = 464


def measure(ckpt: Path, data: Path, n1: int, n2: int, chunk: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mksgn-bench-") as tmp:
        t0 = time.perf_counter()
        run_export(ckpt, "lava", Path(tmp) / "export", data, calib_clips=64, progress=False)
        export_s = time.perf_counter() - t0
        runs = {}
        for n in (n1, n2):
            t0 = time.perf_counter()
            res, rep = simulate(Path(tmp) / "export", data, clips=str(n), chunk=chunk, progress=False)
            wall = time.perf_counter() - t0
            if not rep["bit_exact"]:
                raise SystemExit(f"{ckpt.name}: NOT bit-exact on {n} clips: {rep['mismatches'][0]['message']}")
            runs[n] = {"wall_s": wall, "lava_s": rep["seconds_lava"], "twin_s": rep["seconds_twin"],
                       "energy_mj_measured_per_clip": rep["energy_mj_measured_per_clip"],
                       "energy_mj_analytic_per_clip": rep["energy_mj_analytic_per_clip"]}
    lava_marg = (runs[n2]["lava_s"] - runs[n1]["lava_s"]) / (n2 - n1)
    twin_marg = (runs[n2]["twin_s"] - runs[n1]["twin_s"]) / (n2 - n1)
    fixed = runs[n1]["lava_s"] - n1 * lava_marg
    return {"model": ckpt.name, "export_s": export_s, "runs": runs,
            "lava_s_per_clip": lava_marg, "twin_s_per_clip": twin_marg,
            "lava_over_twin": lava_marg / twin_marg if twin_marg > 0 else None,
            "lava_fixed_s": fixed, "test_split_estimate_min": (fixed + TEST_CLIPS * lava_marg) / 60.0,
            "bit_exact": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nw-ucla")
    ap.add_argument("--models", nargs="+", type=Path,
                    default=[ROOT / "models" / "base_sgn_ucla_joint.pt", ROOT / "models" / "mksgn_ucla_joint.pt"])
    ap.add_argument("--n1", type=int, default=2)
    ap.add_argument("--n2", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "replay.json")
    args = ap.parse_args()
    if args.n2 <= args.n1:
        raise SystemExit("--n2 must be larger than --n1")
    torch.set_num_threads(args.threads)
    rows = [measure(m, args.data, args.n1, args.n2, args.chunk) for m in args.models]
    head = f"{'model':<26} {'Lava s/clip':>11} {'twin s/clip':>11} {'ratio':>7} {'fixed s':>8} {'464 clips (min)':>16}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = "n/a" if r["lava_over_twin"] is None else f"{r['lava_over_twin']:.1f}"
        print(f"{r['model']:<26} {r['lava_s_per_clip']:>11.2f} {r['twin_s_per_clip']:>11.2f} {ratio:>7} "
              f"{r['lava_fixed_s']:>8.1f} {r['test_split_estimate_min']:>16.1f}")
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "torch_threads": args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": machine, "n1": args.n1, "n2": args.n2, "chunk": args.chunk,
                               "results": rows}, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
