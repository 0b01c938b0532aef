"""NIR in another framework: snntorch runs ``mksgn-export --target nir`` of the shipped
Base-SGN* on real NW-UCLA test clips; agreement with our float model and the integer twin.

The checkpoint is exported once (``--calib-clips`` training clips, 64 as ``mksgn-export``)
into a temporary folder; ``snntorch.import_nir.import_from_nir`` loads ``network.nir`` and
:func:`export.nir_run.agreement` runs it clip by clip, ``time_steps`` steps each, against
the PyTorch float model and the Loihi integer twin (the reference Lava equals bit for bit).
Prints the per-group table and writes JSON (default ``benchmarks/results/nir_snntorch.json``)
with seconds per clip.

Usage::

    python benchmarks/nir_snntorch.py [--checkpoint models/base_sgn_ucla_joint.pt]
        [--data ../shared/data/nw-ucla] [--clips 64] [--calib-clips 64] [--threads 1]
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
from export.nir_run import agreement, format_agreement

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "base_sgn_ucla_joint.pt")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nw-ucla")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--calib-clips", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "nir_snntorch.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mksgn-nir-") as tmp:
        t0 = time.perf_counter()
        summary = run_export(args.checkpoint, "nir", Path(tmp) / "export", args.data,
                             calib_clips=args.calib_clips, progress=False)
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = agreement(Path(tmp) / "export", args.checkpoint, args.data, clips=args.clips, graph=summary.graph,
                        progress=False)
        res["seconds"] = time.perf_counter() - t0
        res["export_s"] = export_s
        res["not_expressed"] = summary.manifest.get("not_expressed")
    print(format_agreement(res))
    print(f"{res['clips']} clips in {res['seconds']:.0f} s (snntorch + float model + twin; export {export_s:.0f} s)")
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "torch_threads": args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": machine, "calib_clips": args.calib_clips, "result": res}, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
