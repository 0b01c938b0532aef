"""Write an export directory atomically: target file(s), ``resources.json``, ``manifest.json``.

Layout of ``OUT/`` (all targets)::

    network.net | model.onnx | network.nir   the target file
    quantisation.json                        per-group scale, vth, weight_exp, saturation
                                             (integer twin on the first SATURATION_CLIPS
                                             calibration clips: ``saturation_clips``)
    resources.json                           neurons, synapses, fan-in/out, Loihi 2 cores
    manifest.json                            versions, input encoding, scales, latency,
                                             class names, sha256 of every other file

Everything is written into a temp directory ``.OUT.<pid>.<random>.tmp`` beside ``OUT`` and
renamed on success, so a failed, interrupted (Ctrl-C, SIGTERM) or out-of-space export leaves
nothing behind; the temp folders of a killed run (SIGKILL, power loss) are removed by the next
export to the same place. ``--force`` replaces only a previous export (a folder holding a
``manifest.json`` and only the files it lists), never the working folder or a folder that holds
the checkpoint or the calibration data. Same checkpoint + options → byte-identical files.

Readers go through :func:`verify_export_dir` (schema of ``manifest.json``) and
:func:`verified_bytes` (a listed file, read once and checked against its sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from mksgn.checkpoint import sha256_file
from mksgn.errors import MksgnError
from mksgn.graph import get_layout
from mksgn.guard import integer, is_no_space, output_dir, read_json, read_limited

from .errors import ExportError
from .ir import Graph
from .passes import SATURATION_BATCH, SATURATION_CLIPS, SPLIT_KINDS
from .pipeline import export_graph
from .resources import format_resources, resources
from .twin import run_graph
from .writers.nir_writer import nir_notes

TARGETS = {"lava": "network.net", "onnx": "model.onnx", "nir": "network.nir"}
MANIFEST_VERSION = 1
_PACKAGES = ("mksgn", "lava-nc", "lava-dl", "torch", "numpy", "onnx", "onnxruntime", "nir", "nirtorch", "snntorch",
             "h5py")


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

    @property
    def warnings(self) -> list:
        """Lines to show the user: a quantisation-aware-trained checkpoint exported on another
        grid than it was trained on (:func:`export.pipeline.check_qat_grid`)."""
        bad = self.graph.meta.get("qat_grid_mismatches") or []
        if not bad:
            return []
        return [f"the checkpoint was trained (QAT) on another Loihi grid than this export's ({len(bad)} "
                f"difference(s); its accuracy on this grid is not what QAT trained for): " + "; ".join(bad[:5])
                + (" ..." if len(bad) > 5 else "")
                + ". Export with the calibration data, --calib-clips and weight split of training, or "
                  "fine-tune on this grid again."]

    def format(self) -> str:
        notes = self.manifest.get("not_expressed") or []
        return (format_layer_table(self.layers) + "\n\n" + format_resources(self.resources)
                + "".join(f"\nNIR does not express: {n}" for n in notes)
                + f"\n\nwrote {self.out_dir}/ ({', '.join(sorted(self.manifest['files']) + ['manifest.json'])})")


#: A temp folder without a process id (written before ids were recorded) is stale after this.
_LEGACY_STALE_S = 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_stale_temps(out_dir: str | Path) -> list[Path]:
    """Remove the hidden temp folders ``.OUT.<pid>.<random>.tmp`` / ``.old`` that a killed export
    to ``out_dir`` left beside it (their process is gone), and ``.OUT.<random>.tmp`` /
    ``.OUT.old.<random>`` of older versions once they are an hour old. Returns what was removed."""
    out_dir = Path(out_dir)
    parent = out_dir.parent
    removed = []
    if not parent.is_dir() or not out_dir.name:
        return removed
    name = re.escape(out_dir.name)
    temp = re.compile(rf"^\.{name}\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{{8}}\.(?:tmp|old)$")
    legacy_old = re.compile(rf"^\.{name}\.old\.[a-z0-9_]{{8}}$")
    for p in parent.iterdir():
        m = temp.match(p.name) or legacy_old.match(p.name)
        if not m or p.is_symlink() or not p.is_dir():
            continue
        pid = m.groupdict().get("pid")
        if pid is not None:
            if _alive(int(pid)):
                continue
        else:
            try:
                if time.time() - p.stat().st_mtime < _LEGACY_STALE_S:
                    continue
            except OSError:
                continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(out_dir: str | Path, force: bool, keep: Sequence[str | Path] = ()) -> None:
    """Refuse an output folder that cannot or must not be written, before any long work.

    A missing ``out_dir`` must be creatable (its nearest existing ancestor writable). An existing
    one needs ``force`` and must be a previous export: a folder whose ``manifest.json`` is an
    export manifest and which holds nothing but the files it lists. Never replaced: the working
    folder or a folder above it, a folder holding any of ``keep`` (the checkpoint, the
    calibration data), a symbolic link.

    Raises
    ------
    ExportError
    """
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise ExportError(f"{out_dir}: is a symbolic link; give the real folder or another -o")
    if not out_dir.exists():
        output_dir(out_dir, "-o", error=ExportError)
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a folder; choose another -o")
    if not force:
        raise ExportError(f"{out_dir} exists; pass --force to replace it or -o to choose another folder")
    real = out_dir.resolve()
    if _inside(Path.cwd().resolve(), real):
        raise ExportError(f"-o {out_dir}: is the working folder or one above it; --force never replaces "
                          "it (choose a new folder)")
    for k in keep:
        if k is not None and _inside(Path(k).resolve(), real):
            raise ExportError(f"-o {out_dir}: holds {k}, an input of this export; --force never replaces "
                              "it (choose another folder)")
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        raise ExportError(f"-o {out_dir}: not a previous export (no manifest.json); --force only replaces "
                          "an export folder; choose another folder or remove it yourself")
    try:
        doc = json.loads(read_limited(manifest, "an export manifest", error=ExportError))
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not (isinstance(doc, dict) and isinstance(doc.get("files"), dict) and "manifest_version" in doc):
        raise ExportError(f"-o {out_dir}: manifest.json is not an export manifest; --force only replaces "
                          "an export folder; choose another folder or remove it yourself")
    extra = sorted(p.name for p in out_dir.iterdir() if p.name != "manifest.json" and p.name not in doc["files"])
    if extra:
        raise ExportError(f"-o {out_dir}: holds files that are not part of its export "
                          f"({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}); --force would "
                          "delete them; move them away or choose another folder")


def run_export(checkpoint: str | Path, target: str, out_dir: str | Path | None, calib_data: str | Path,
               calib_clips: int = 64, force: bool = False, progress: bool = True,
               weight_split: Sequence[str] | None = None, recalibrate: bool = False) -> ExportSummary:
    """Export a checkpoint to ``target`` in ``out_dir`` (see module docstring).

    ``weight_split``: synapse kinds whose 8-bit weights get a low-mantissa partner synapse
    (:func:`export.passes.split_residual`; ``()`` for plain 8-bit weights, half the events);
    None: plain 8-bit for a quantisation-aware-trained checkpoint, else all of
    :data:`~export.passes.SPLIT_KINDS` (:func:`export.pipeline.default_weight_split`). A QAT
    checkpoint is exported on the scales it was trained on (its recorded grid), unless
    ``recalibrate``; the recorded grid is compared with the export's: differences go to
    ``summary.warnings``, ``manifest["qat"]`` and ``quantisation.json``.

    Raises
    ------
    ExportError
        Unknown target, existing ``out_dir`` without ``force``, a bad checkpoint or
        calibration folder, unrepresentable weights, or a target that cannot express the
        graph (NIR and the spike-spike attention).
    """

    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir else checkpoint.with_name(f"{checkpoint.stem}_{target}")
    if calib_data is None:
        raise ExportError("--calib-data is required: quantisation scales are calibrated on real "
                          "training clips (e.g. --calib-data ../shared/data/nw-ucla)")
    integer(calib_clips, "--calib-clips", 1, error=ExportError)
    check_out_dir(out_dir, force, keep=[checkpoint, Path(calib_data)])  # before the long calibration
    remove_stale_temps(out_dir)
    graph, x = export_graph(checkpoint, calib_data, calib_clips, progress=progress, weight_split=weight_split,
                            recalibrate=recalibrate)
    # saturation in integer arithmetic on the first SATURATION_CLIPS calibration clips
    sat_x = x[:SATURATION_CLIPS]
    graph.meta["quantisation"]["saturation"] = run_graph(graph, sat_x, mode="int", batch_size=SATURATION_BATCH,
                                                         cache_weights=False).saturation
    graph.meta["quantisation"]["saturation_clips"] = int(len(sat_x))
    layers = layer_table(graph)
    res = resources(graph)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".tmp", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        write_target(graph, target, tmp)
        (tmp / "quantisation.json").write_text(_json({"layers": layers, **graph.meta["quantisation"],
                                                      **({"qat_grid_mismatches": graph.meta["qat_grid_mismatches"]}
                                                         if "qat_grid_mismatches" in graph.meta else {})}))
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
            **({"qat": {"grid_mismatches": graph.meta["qat_grid_mismatches"]}}
               if "qat_grid_mismatches" in graph.meta else {}),
            "latency": graph.meta["latency"], "readout_latency": graph.meta["readout_latency"],
            "calibration": graph.meta["calibration"], "versions": _versions(), "files": files,
        }
        if target == "nir":  # what NIR cannot express, said in the manifest and the log
            manifest["not_expressed"] = nir_notes(graph)
        (tmp / "manifest.json").write_text(_json(manifest))
        if out_dir.exists():  # a previous export (check_out_dir): swap, then remove the old one
            old = out_dir.with_name(tmp.name[:-len(".tmp")] + ".old")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_no_space(exc):
            raise ExportError(f"{out_dir}: no space left on device while writing the export; nothing was "
                              "written (free some space and run again)") from None
        raise
    return ExportSummary(out_dir, graph, layers, res, manifest)


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _plain_name(name) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..", "manifest.json")
            and not any(c in name for c in "/\\\0") and name == name.strip())


def check_manifest(manifest, where: str) -> dict:
    """Validate the schema of an export manifest: one :class:`ExportError` naming the first
    problem (the file and the key)."""
    def bad(what):
        raise ExportError(f"{where}: {what}; re-export (mksgn-export)")

    if not isinstance(manifest, dict):
        bad(f"holds a JSON {type(manifest).__name__}, not an object")
    for key in ("manifest_version", "target", "files", "data", "class_names"):
        if key not in manifest:
            bad(f"missing key {key!r}")
    if manifest["manifest_version"] != MANIFEST_VERSION or isinstance(manifest["manifest_version"], bool):
        bad(f"manifest_version {manifest['manifest_version']!r} is not supported (this mksgn reads "
            f"{MANIFEST_VERSION})")
    if not isinstance(manifest["target"], str) or manifest["target"] not in TARGETS:
        bad(f"target {manifest['target']!r} is not one of {list(TARGETS)}")
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        bad("'files' must be an object mapping file names to sha256 digests")
    for name, digest in files.items():
        if not _plain_name(name):
            bad(f"'files' lists {name!r}: only plain file names inside the export folder are allowed")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            bad(f"'files' gives {name!r} the digest {digest!r}, not a sha256 hex digest")
    if TARGETS[manifest["target"]] not in files:
        bad(f"'files' does not list {TARGETS[manifest['target']]}, the {manifest['target']} target file")
    d = manifest["data"]
    if not isinstance(d, dict):
        bad(f"'data' is a {type(d).__name__}, not an object")
    if not isinstance(d.get("layout"), (str, dict)):
        bad(f"data.layout is {d.get('layout')!r}, not a layout name or a layout")
    try:
        get_layout(d["layout"])
    except MksgnError as exc:
        bad(f"data.layout: {exc}")
    mods = d.get("modalities")
    if not isinstance(mods, list) or not mods or not all(isinstance(m, str) for m in mods):
        bad(f"data.modalities is {mods!r}, not a list of modality names")
    if d.get("protocol") is not None and not isinstance(d["protocol"], str):
        bad(f"data.protocol is {d['protocol']!r}, not a protocol name")
    names = manifest["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        bad("'class_names' must be a non-empty list of strings")
    mc = manifest.get("model_config")
    if mc is not None:
        n = mc.get("num_classes") if isinstance(mc, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n != len(names):
            bad(f"model_config.num_classes {n!r} does not match the {len(names)} class_names")
    return manifest


def verified_bytes(path: str | Path, name: str, manifest: dict) -> bytes:
    """The bytes of ``name`` in the export folder ``path``, read once and checked against the
    sha256 that ``manifest`` (already :func:`check_manifest`-ed) lists for it.

    Raises
    ------
    ExportError
        A name the manifest does not list, a missing or modified file.
    """
    path = Path(path)
    digest = manifest["files"].get(name)
    if digest is None:
        raise ExportError(f"{path}: {name} is not listed in manifest.json, so it cannot be verified; re-export")
    f = path / name
    if f.is_symlink() or not f.is_file():
        raise ExportError(f"{path}: {name} listed in manifest.json is missing or not a regular file")
    try:
        data = f.read_bytes()
    except OSError as exc:
        raise ExportError(f"{path}: {name} cannot be read ({exc.strerror or exc})") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise ExportError(f"{path}: {name} does not match its sha256 in manifest.json (modified or corrupt); "
                          "re-export")
    return data


def verify_export_dir(path: str | Path) -> dict:
    """Read ``manifest.json``, validate its schema and check the sha256 of every listed file.

    Raises
    ------
    ExportError
        Missing folder or manifest, a manifest of the wrong shape (missing or mistyped
        ``target`` / ``data`` / ``files`` / ``class_names``, names outside the folder, the
        target file not listed), a missing or tampered file.
    """
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path}: no such export folder; run mksgn-export first")
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise ExportError(f"{path}: not an export directory (no manifest.json); run mksgn-export first")
    manifest = read_json(mpath, "an export manifest", error=ExportError,
                         hint="re-run mksgn-export to write a fresh export")
    check_manifest(manifest, str(mpath))
    for name, digest in manifest["files"].items():
        f = path / name
        if f.is_symlink() or not f.is_file():
            raise ExportError(f"{path}: {name} listed in manifest.json is missing or not a regular file")
        if sha256_file(f) != digest:
            raise ExportError(f"{path}: {name} does not match its sha256 in manifest.json "
                              "(modified or corrupt); re-export")
    return manifest
