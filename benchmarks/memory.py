"""Where the memory of a Lava replay goes: PSS of the whole process tree split by Lava
process model (``LIFReset``, ``Conv``, ``Sparse``, ``ProdNeuron``, …), the parent (twin,
builder) and lava's runtime services, sampled while ``mksgn-sim`` replays real clips.

Every Lava process model runs in its own forked OS process (lava-nc 0.10,
``lava/magma/runtime/message_infrastructure/multiprocessing.py``). This script records which
model each forked actor runs by wrapping ``MultiProcessing.build_actor`` (instrumentation
only; nothing the replay computes changes), samples ``/proc/PID/smaps_rollup`` of every
process of the tree every ``--interval`` seconds and reports, at the sample with the
largest summed PSS and at the last one, PSS and private-dirty memory per model class:
count, total MB and MB per process. Summed PSS is the physical memory the tree uses (shared
copy-on-write pages are divided among their sharers); summed RSS would count them once per
process.

Usage::

    python benchmarks/memory.py EXPORT_DIR [--data ../shared/data/nw-ucla] [--clips 8]
        [--chunk 8] [--interval 2] [--json benchmarks/results/memory.json]

Prints a table and writes JSON. Stops the replay (SIGKILL of the tree) when the machine has
less than 2.5 GB available.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections import defaultdict
from pathlib import Path

from lava.magma.runtime.message_infrastructure import multiprocessing as lava_mp

from hw_sim.simulate import simulate
from scale import available_mb, process_tree  # benchmarks/scale.py: one home for the tree walk

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("Pss", "Private_Dirty", "Private_Clean", "Shared_Dirty", "Shared_Clean")

#: pid → name of the Lava process model (or runtime service) the forked actor runs
ACTORS: dict = {}
_build_actor = lava_mp.MultiProcessing.build_actor


def _recording_build_actor(self, target_fn, builder, exception_q=None):
    actor = _build_actor(self, target_fn, builder, exception_q)
    model = getattr(builder, "proc_model", None)
    ACTORS[actor.pid] = model.__name__ if model is not None else type(builder).__name__
    return actor


lava_mp.MultiProcessing.build_actor = _recording_build_actor


def _rollup(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            out = {}
            for line in f:
                key, _, rest = line.partition(":")
                if key in FIELDS:
                    out[key] = int(rest.split()[0]) / 1024.0
            return out
    except OSError:
        return None


def sample(root: int) -> dict:
    """Per-class memory of the tree now: ``{class: {"n", "Pss", "Private_Dirty", …}}`` in MB."""
    by = defaultdict(lambda: defaultdict(float))
    for pid in process_tree(root):
        r = _rollup(pid)
        if r is None:
            continue
        name = "parent (twin, builder)" if pid == root else ACTORS.get(pid, "other (lava manager)")
        by[name]["n"] += 1
        for k, v in r.items():
            by[name][k] += v
    return {k: dict(v) for k, v in by.items()}


class Sampler(threading.Thread):
    """Samples :func:`sample` every ``interval`` s; keeps the peak-PSS sample and the last."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.stop_flag = interval, threading.Event()
        self.peak, self.peak_total, self.first, self.last, self.series = {}, 0.0, {}, {}, []

    def run(self):
        t0 = time.monotonic()
        while not self.stop_flag.wait(self.interval):
            s = sample(os.getpid())
            total = sum(v.get("Pss", 0.0) for v in s.values())
            self.series.append({"t_s": round(time.monotonic() - t0, 1), "pss_mb": round(total),
                                "processes": int(sum(v["n"] for v in s.values())),
                                "private_dirty_mb": {k: round(v.get("Private_Dirty", 0.0)) for k, v in s.items()}})
            if sum(v["n"] for v in s.values()) > 10:  # the Lava processes are up
                self.first = self.first or s
                self.last = s
            if total > self.peak_total:
                self.peak, self.peak_total = s, total
            if available_mb() < 2500:
                print(f"memory: only {available_mb():.0f} MB available; stopping the replay", flush=True)
                for pid in process_tree(os.getpid())[1:]:
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
                os._exit(3)


def table(s: dict, title: str) -> str:
    rows = sorted(s.items(), key=lambda kv: -kv[1].get("Pss", 0.0))
    lines = [title, f"{'process model':<28} {'n':>4} {'PSS MB':>9} {'PSS/proc':>9} {'priv dirty MB':>13} {'priv/proc':>9}"]
    for name, v in rows:
        n = max(v["n"], 1)
        lines.append(f"{name:<28} {v['n']:>4.0f} {v.get('Pss', 0):>9.0f} {v.get('Pss', 0) / n:>9.1f} "
                     f"{v.get('Private_Dirty', 0):>13.0f} {v.get('Private_Dirty', 0) / n:>9.1f}")
    tot = {k: sum(v.get(k, 0.0) for v in s.values()) for k in ("n", "Pss", "Private_Dirty")}
    lines.append(f"{'total':<28} {tot['n']:>4.0f} {tot['Pss']:>9.0f} {'':>9} {tot['Private_Dirty']:>13.0f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nw-ucla")
    ap.add_argument("--clips", default="8")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    a = ap.parse_args(argv)
    sampler = Sampler(a.interval)
    sampler.start()
    t0 = time.perf_counter()
    res, rep = simulate(a.export_dir, a.data, clips=a.clips, chunk=a.chunk, progress=True)
    wall = time.perf_counter() - t0
    sampler.stop_flag.set()
    sampler.join()
    print(table(sampler.peak, f"\nat the peak ({sampler.peak_total / 1024:.2f} GB summed PSS)"))
    print(table(sampler.last, "\nlast sample with the Lava processes up"))
    print("\ngrowth of private dirty memory from the first to the last such sample (MB): " + ", ".join(
        f"{k} {sampler.last[k].get('Private_Dirty', 0) - v.get('Private_Dirty', 0):+.0f}"
        for k, v in sorted(sampler.first.items()) if k in sampler.last))
    print(f"\n{rep['clips']} clips, bit-exact {rep['bit_exact']}, wall {wall:.0f} s, "
          f"Lava processes {res.processes}; {platform.node()} {os.cpu_count()} cores")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"export": str(a.export_dir), "clips": rep["clips"], "bit_exact": rep["bit_exact"],
                                  "wall_s": wall, "peak_pss_mb": sampler.peak_total, "peak": sampler.peak,
                                  "first": sampler.first, "last": sampler.last, "series": sampler.series,
                                  "machine": {"cpus": os.cpu_count(), "node": platform.node()}}, indent=1))
    return 0 if rep["bit_exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
