"""Scale benchmark (issue 20): export and bit-exact Lava replay of MK-SGN at several widths on
this machine — export time and peak RSS, Lava build+compile time, seconds per clip, Lava
process count, peak memory of the whole process tree as summed PSS, bit-exact verdict.

Widths other than a shipped checkpoint's are random-init checkpoints built from
``configs/mksgn/ucla_joint_width1.json`` (no training needed: the graph and its size are what is
measured). Memory is the peak over the run of the summed PSS (``/proc/PID/smaps_rollup``) of
this process and all its descendants — Lava forks one OS process per Lava process and the
forked workers share pages, so summed RSS would count those pages many times over.

Usage::

    python benchmarks/scale.py --widths 0.25 0.5 1.0 --clips 4 --json out/scale.json
    python benchmarks/scale.py --widths 1.0 --plain --clips 4   # plain 8-bit, as a QAT model exports
    python benchmarks/scale.py --checkpoint models/mksgn_ucla_joint.pt --clips all

Prints a table and writes JSON. Run one at a time: a width-1.0 replay needs most of 24 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from export.exporter import run_export  # noqa: E402
from export.writers.lava_writer import read_lava  # noqa: E402
from hw_sim.replay import replay  # noqa: E402
from hw_sim.simulate import load_clips  # noqa: E402
from mksgn.checkpoint import save_checkpoint  # noqa: E402
from mksgn.io import UCLA_CLASS_NAMES  # noqa: E402
from mksgn.models import ModelConfig, build_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "nw-ucla"
#: The run is stopped when the process tree's PSS passes this (the machine has 24 GB).
LIMIT_MB = 20_000.0


def _children() -> dict:
    par = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    par[int(p)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    return par


def process_tree(root: int | None = None) -> list:
    """``root`` (default this process) and all its descendants, as pids (``root`` first)."""
    root = os.getpid() if root is None else root
    kids = {}
    for p, pp in _children().items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_pss_mb(root: int | None = None) -> tuple:
    """``(summed PSS in MB, processes)`` of ``root`` (default this process) and descendants."""
    tree = process_tree(root)
    total = 0
    for p in tree:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0, len(tree)


def available_mb() -> float:
    """The machine's ``MemAvailable`` (MB): shared memory and page cache count there too."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    return float("inf")


class PeakPss:
    """Samples :func:`tree_pss_mb` every ``interval`` s in a thread; ``peak_mb``, ``peak_procs``.

    ``limit_mb``: when the tree's PSS passes it (or the machine has under 1.5 GB available),
    every descendant process is killed, ``over_limit`` is set and this process gets a SIGINT
    (the replay, waiting on the dead runtime, ends with ``KeyboardInterrupt`` and stops it)
    — so a run that would exhaust the machine stops first."""

    def __init__(self, interval: float = 1.0, limit_mb: float | None = None):
        self.interval, self.peak_mb, self.peak_procs = interval, 0.0, 0
        self.limit_mb, self.over_limit = limit_mb, False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            mb, n = tree_pss_mb()
            self.peak_mb, self.peak_procs = max(self.peak_mb, mb), max(self.peak_procs, n)
            if self.limit_mb and (mb > self.limit_mb or available_mb() < 1500) and not self.over_limit:
                self.over_limit = True
                par = _children()
                for p, pp in par.items():
                    if pp == os.getpid():
                        try:
                            os.kill(p, signal.SIGKILL)
                        except OSError:
                            pass
                # the replay would wait on the dead runtime until its timeout: interrupt it
                # (a real SIGINT ends the main thread's wait; replay then stops the runtime)
                os.kill(os.getpid(), signal.SIGINT)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def random_checkpoint(path: Path, width: float, seed: int = 0) -> Path:
    """A random-init MK-SGN checkpoint of ``width`` from ``configs/mksgn/ucla_joint_width1.json``."""
    cfg = json.loads((ROOT / "configs" / "mksgn" / "ucla_joint_width1.json").read_text())
    mcfg = dict(cfg["model"], width=width)
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_dict(mcfg))
    save_checkpoint(path, {"config": {"model": model.cfg.to_dict(), "train": {}},
                           "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
                           "class_names": list(UCLA_CLASS_NAMES),
                           "data": {"dataset": "ucla", "layout": "ucla20", "modalities": ["joint"],
                                    "window": 52, "protocol": "view3"},
                           "metrics": {"note": f"random init, width {width} (benchmarks/scale.py)"},
                           "git_revision": "benchmark", "epoch": 0})
    return path


def measure(ckpt: Path, clips, workdir: Path, label: str, weight_split=None, calib_clips: int = 64,
            chunk: int = 4) -> dict:
    out = workdir / f"export_{label}"
    t0 = time.perf_counter()
    with PeakPss(0.5) as mem_export:
        run_export(ckpt, "lava", out, DATA, calib_clips=calib_clips, progress=False, weight_split=weight_split)
    export_s = time.perf_counter() - t0
    graph = read_lava(out)
    manifest = json.loads((out / "manifest.json").read_text())
    x, labels = load_clips(manifest, DATA, "test", clips)
    res_json = json.loads((out / "resources.json").read_text())
    with PeakPss(1.0, limit_mb=LIMIT_MB) as mem:
        try:
            r = replay(graph, x, labels, chunk=chunk, timeout_s=3600)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - reported as a row
            if not mem.over_limit:
                raise
            return {"label": label, "stopped": f"peak PSS over {LIMIT_MB:.0f} MB: {type(exc).__name__}",
                    "peak_pss_mb": mem.peak_mb, "peak_os_processes": mem.peak_procs, "export_s": export_s,
                    "export_peak_pss_mb": mem_export.peak_mb}
    d = r.to_dict()
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    return {"label": label, "params": int(sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k)),
            "neurons": res_json.get("total_neurons"), "stored_weights": res_json.get("stored_weights"),
            "unrolled_synapses": res_json.get("total_synapses"), "export_s": export_s,
            "export_peak_pss_mb": mem_export.peak_mb, "clips": r.clips, "bit_exact": r.bit_exact,
            "lava_s": r.seconds, "s_per_clip": r.seconds / r.clips, "lava_processes": r.processes,
            "peak_pss_mb": mem.peak_mb, "peak_os_processes": mem.peak_procs,
            "lava_top1": d["lava_top1"], "twin_top1": d["twin_top1"],
            "events_per_clip": d["synaptic_events_per_clip"],
            "energy_mj_measured": d["energy_mj_measured_per_clip"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=float, nargs="*", default=[])
    ap.add_argument("--checkpoint", action="append", default=[])
    ap.add_argument("--clips", default="4")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plain", action="store_true",
                    help="export with plain 8-bit weights (no weight split), as a QAT checkpoint exports")
    ap.add_argument("--calib-clips", type=int, default=64, help="mksgn-export's --calib-clips (default 64)")
    ap.add_argument("--chunk", type=int, default=4, help="clips per Lava run chunk (mksgn-sim --chunk)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mksgn-scale-") as tmp:
        tmp = Path(tmp)
        jobs = [(Path(c), Path(c).stem) for c in args.checkpoint]
        jobs += [(random_checkpoint(tmp / f"w{w}.pt", w), f"width {w}") for w in args.widths]
        for ckpt, label in jobs:
            row = measure(ckpt, args.clips, tmp, label.replace(" ", "_"), weight_split=() if args.plain else None,
                          calib_clips=args.calib_clips, chunk=args.chunk)
            row["weight_split"] = "none" if args.plain else "default"
            row["label"] = label
            rows.append(row)
            print(json.dumps(row), flush=True)
    hdr = (f"{'model':<22} {'params':>9} {'neurons':>10} {'export s':>8} {'export MB':>9} {'clips':>5} "
           f"{'bit-exact':>9} {'s/clip':>7} {'procs':>5} {'peak PSS MB':>11}")
    print(hdr)
    for r in rows:
        if "stopped" in r:
            print(f"{r['label']:<22} stopped: {r['stopped']} (export {r['export_s']:.0f} s)")
            continue
        print(f"{r['label']:<22} {r['params']:>9,} {r['neurons'] or 0:>10,} {r['export_s']:>8.0f} "
              f"{r['export_peak_pss_mb']:>9.0f} {r['clips']:>5} {str(r['bit_exact']):>9} {r['s_per_clip']:>7.1f} "
              f"{r['lava_processes']:>5} {r['peak_pss_mb']:>11.0f}")
    print(f"machine: {os.cpu_count()} cores, peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
