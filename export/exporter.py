"""Write an export directory atomically: target file(s), ``resources.json``, ``manifest.json``.

Layout of ``OUT/`` (all targets)::

    network.net | model.onnx | network.nir   the target file
    quantisation.json                        per-group scale, vth, weight_exp, saturation
    resources.json                           neurons, synapses, fan-in/out, Loihi 2 cores
    manifest.json                            versions, input encoding, scales, latency,
                                             class names, sha256 of every other file

Everything is written into a temp directory beside ``OUT`` and renamed on success, so a
failed export leaves nothing behind. Same checkpoint + options → byte-identical files.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from mksgn.checkpoint import sha256_file

from .errors import ExportError
from .ir import Graph
from .passes import SPLIT_KINDS
from .pipeline import export_graph
from .resources import format_resources, resources

TARGETS = {"lava": "network.net", "onnx": "model.onnx", "nir": "network.nir"}
MANIFEST_VERSION = 1
_PACKAGES = ("mksgn", "lava-nc", "lava-dl", "torch", "numpy", "onnx", "onnxruntime", "nir", "h5py")


def _versions() -> dict:
    out = {}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def _json(obj) -> str:
    def default(o):
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o).__name__)
    return json.dumps(obj, indent=1, sort_keys=True, default=default) + "\n"


def write_target(graph: Graph, target: str, directory: Path) -> Path:
    """Write the target file of ``graph`` into ``directory``."""
    path = directory / TARGETS[target]
    if target == "lava":
        from .writers.lava_writer import write_lava
        write_lava(graph, directory)
    elif target == "onnx":
        from .writers.onnx_writer import write_onnx
        write_onnx(graph, path)
    else:
        from .writers.nir_writer import write_nir
        write_nir(graph, path)
    return path


def layer_table(graph: Graph) -> list[dict]:
    """One row per neuron group: scale, vth, incoming weight_exp, saturation, latency."""
    q = graph.meta["quantisation"]
    rows = []
    for name, g in graph.groups.items():
        sat = q.get("saturation", {}).get(name, {})
        rows.append({"group": name, "scale_log2": int(np.log2(g.scale)), "vth_mant": g.vth_mant,
                     "weight_exp": {s.name: s.weight_exp for s in graph.incoming(name)},
                     "limited_by": q["groups"][name]["limited_by"],
                     "saturated": int(sum(sat.values())), "latency": g.latency})
    return rows


def format_layer_table(rows: list[dict]) -> str:
    lines = [f"{'group':<28} {'scale':>6} {'vth':>6} {'weight_exp':>12} {'limit':>7} {'sat':>5} {'lat':>4}"]
    for r in rows:
        exps = ",".join(str(e) for e in r["weight_exp"].values())
        lines.append(f"{r['group']:<28} {'2^' + str(r['scale_log2']):>6} {r['vth_mant']:>6} {exps:>12} "
                     f"{r['limited_by']:>7} {r['saturated']:>5} {r['latency']:>4}")
    return "\n".join(lines)


@dataclass
class ExportSummary:
    out_dir: Path
    graph: Graph
    layers: list
    resources: dict
    manifest: dict

    def format(self) -> str:
        return (format_layer_table(self.layers) + "\n\n" + format_resources(self.resources)
                + f"\n\nwrote {self.out_dir}/ ({', '.join(sorted(self.manifest['files']) + ['manifest.json'])})")


def run_export(checkpoint: str | Path, target: str, out_dir: str | Path | None, calib_data: str | Path,
               calib_clips: int = 64, force: bool = False, progress: bool = True,
               weight_split: Sequence[str] = SPLIT_KINDS) -> ExportSummary:
    """Export a checkpoint to ``target`` in ``out_dir`` (see module docstring).

    ``weight_split``: synapse kinds whose 8-bit weights get a low-mantissa partner synapse
    (:func:`export.passes.split_residual`; ``()`` for plain 8-bit weights, half the events).

    Raises
    ------
    ExportError
        Unknown target, existing ``out_dir`` without ``force``, a bad checkpoint or
        calibration folder, unrepresentable weights, or a target that cannot express the
        graph (NIR and the spike-spike attention).
    """
    from .twin import run_graph

    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir else checkpoint.with_name(f"{checkpoint.stem}_{target}")
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} exists; pass --force to replace it or -o to choose another folder")
    if calib_data is None:
        raise ExportError("--calib-data is required: quantisation scales are calibrated on real "
                          "training clips (e.g. --calib-data ../shared/data/nw-ucla)")
    graph, x = export_graph(checkpoint, calib_data, calib_clips, progress=progress, weight_split=weight_split)
    # saturation on the calibration clips, in integer arithmetic
    graph.meta["quantisation"]["saturation"] = run_graph(graph, x, mode="int").saturation
    layers = layer_table(graph)
    res = resources(graph)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        write_target(graph, target, tmp)
        (tmp / "quantisation.json").write_text(_json({"layers": layers, **graph.meta["quantisation"]}))
        (tmp / "resources.json").write_text(_json(res))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        manifest = {
            "manifest_version": MANIFEST_VERSION, "target": target,
            "checkpoint": {"name": checkpoint.name, "sha256": sha256_file(checkpoint)},
            "arch": graph.meta["arch"], "model_config": graph.meta["model_config"],
            "class_names": graph.meta["class_names"], "data": graph.meta["data"],
            "input_encoding": {"layout": "(N, C, T, V, M)", "shape": list(graph.input_shape),
                               "units": "metres", "host_quantisation": "round(x * 2**input_frac_bits)",
                               "input_frac_bits": graph.meta["input_frac_bits"],
                               "time_steps": graph.time_steps,
                               "preprocessing": "mksgn.preprocess.preprocess(train=False)"},
            "quantisation_scales": {n: g.scale for n, g in graph.groups.items()},
            "readout_scale": graph.meta["readout_scale"],
            "weight_split": graph.meta["quantisation"]["weight_split"],
            "latency": graph.meta["latency"], "readout_latency": graph.meta["readout_latency"],
            "calibration": graph.meta["calibration"], "versions": _versions(), "files": files,
        }
        (tmp / "manifest.json").write_text(_json(manifest))
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            out_dir.rename(old / out_dir.name)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportSummary(out_dir, graph, layers, res, manifest)


def verify_export_dir(path: str | Path) -> dict:
    """Read ``manifest.json`` and check the sha256 of every listed file.

    Raises
    ------
    ExportError
        Missing folder or manifest, a missing or tampered file.
    """
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise ExportError(f"{path}: not an export directory (no manifest.json); run mksgn-export first")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{mpath}: invalid JSON ({exc.msg})") from None
    for name, digest in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise ExportError(f"{path}: {name} listed in manifest.json is missing")
        if sha256_file(f) != digest:
            raise ExportError(f"{path}: {name} does not match its sha256 in manifest.json "
                              "(modified or corrupt); re-export")
    return manifest
