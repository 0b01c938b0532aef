"""Hostile input, interrupted runs and full disks (issue 15), across all seven commands.

Every case in :data:`CASES` runs a console-script entry point in-process (``cli.*.main``, the
function pyproject's scripts call) and must end with exit status 2, exactly one ``error:``
line that names the file or option, no traceback, and no file created, changed or removed
in the case's folder (inputs included). Nothing here runs a real calibration or a Lava replay:
the checkpoint is a tiny untrained MK-SGN and the export pipeline is calibrated on two random
clips (``fake_pipeline``), so the file runs in well under a minute on 2 cores.

The remaining tests cover what is not an exit-2 error: SIGTERM (exit 143, temp output removed),
a killed run's temp folders removed by the next export, ``--force`` replacing a previous
export, a plot failure that only warns, a swallowed Ctrl-C, the NTU reader's skip path.
"""
from __future__ import annotations

import copy
import errno
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli.data
import cli.evaluate
import cli.export
import cli.sim
import cli.train
import export.exporter as exporter
from mksgn.checkpoint import save_checkpoint
from mksgn.io import UCLA_CLASS_NAMES
from mksgn.models import ModelConfig, build_model

from .conftest import NTU, UCLA

MAINS = {"data": cli.data.main, "train": cli.train.main, "eval": cli.evaluate.main, "export": cli.export.main,
         "qcheck": cli.export.qcheck_main, "sim": cli.sim.main, "energy": cli.sim.energy_main}

TINY = {"arch": "mksgn", "layout": "ucla20", "num_classes": 10, "width": 0.0625, "temporal_kernel": 3}
DATA = {"dataset": "ucla", "layout": "ucla20", "modalities": ["joint"], "window": 52, "protocol": "view3"}
GOOD_TRAIN = {"epochs": 1, "batch_size": 4, "lr": 0.1}


# --------------------------------------------------------------------------- fixtures

def save_tiny(path: Path, mutate=None, names=None) -> Path:
    """An untrained tiny MK-SGN checkpoint (seeded, no data needed); ``mutate(state_dict)``."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(TINY)
    sd = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
    if mutate:
        mutate(sd)
    save_checkpoint(path, {"config": {"model": cfg.to_dict(), "train": {}}, "state_dict": sd,
                           "class_names": list(UCLA_CLASS_NAMES if names is None else names), "data": dict(DATA),
                           "metrics": {}, "git_revision": "test", "epoch": 0})
    return path


_LOWERED = {}


def _fake_export_graph(checkpoint, calib_data, calib_clips=64, progress=True, weight_split=(), recalibrate=False):
    """export.pipeline.export_graph calibrated on 2 seeded random clips instead of real
    training clips (the integrity and file-handling paths do not depend on the scales)."""
    from export.frontend import from_checkpoint
    from export.pipeline import lower
    graph, _ = from_checkpoint(checkpoint)  # the checkpoint's own errors, as the real pipeline
    key = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    if key not in _LOWERED:
        x = torch.randn(2, 3, 52, 20, 1, generator=torch.Generator().manual_seed(0))
        q = lower(graph, x, ())
        q.meta["calibration"] = {"clips": 2, "split": "train", "modality": "joint"}
        _LOWERED[key] = (q, x)
    q, x = _LOWERED[key]
    return copy.deepcopy(q), x


@pytest.fixture
def fake_pipeline(monkeypatch):
    monkeypatch.setattr(exporter, "export_graph", _fake_export_graph)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, ucla_dir):
    """A tiny checkpoint and its lava export (module-wide originals; cases copy them)."""
    d = tmp_path_factory.mktemp("hostile_assets")
    ckpt = save_tiny(d / "tiny.pt")
    mp = pytest.MonkeyPatch()
    mp.setattr(exporter, "export_graph", _fake_export_graph)
    try:
        exporter.run_export(ckpt, "lava", d / "exp", UCLA, calib_clips=2, progress=False, weight_split=())
    finally:
        mp.undo()
    return {"ckpt": ckpt, "export": d / "exp"}


def _unwritable_dir(tmp: Path) -> Path:
    """A folder nobody here can create files in: chmod 555 for a normal user; for root (whom
    permissions do not stop) /sys, whose files cannot be created."""
    if os.geteuid() != 0:
        ro = tmp / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    try:
        fd, probe = __import__("tempfile").mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(probe)
    pytest.skip("no unwritable folder available (root and /sys writable)")


class Ctx:
    """A case's folder: inputs are made here on demand; the working folder is ``cwd``."""

    def __init__(self, root: Path, assets: dict):
        self.root, self.assets = root, assets
        self.inp = root / "in"
        self.inp.mkdir()
        self.cwd = root / "cwd"
        self.cwd.mkdir()

    def ckpt(self, name="model.pt", folder=None) -> Path:
        dest = (folder or self.inp) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.assets["ckpt"], dest)
        return dest

    def bad_ckpt(self, mutate=None, names=None) -> Path:
        return save_tiny(self.inp / "bad.pt", mutate, names)

    def export(self, name="exp") -> Path:
        dest = self.inp / name
        shutil.copytree(self.assets["export"], dest)
        return dest

    def manifest(self, exp: Path, edit) -> Path:
        """Rewrite ``exp/manifest.json`` with ``edit(dict) -> object``."""
        m = json.loads((exp / "manifest.json").read_text())
        (exp / "manifest.json").write_text(json.dumps(edit(m)))
        return exp

    def write(self, name: str, content) -> Path:
        p = self.inp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        # never through a link: the real data must not be touched whatever a case sets up
        assert not p.is_symlink() and self.root in p.resolve().parents
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content if isinstance(content, str) else json.dumps(content))
        return p

    def sparse(self, name: str, size: int) -> Path:
        p = self.inp / name
        with open(p, "wb") as f:
            f.truncate(size)
        return p

    def config(self, model=None, train=None, extra=None, raw: str | None = None) -> Path:
        if raw is not None:
            return self.write("cfg.json", raw)
        doc = {"model": {**TINY, **(model or {})}, "train": {**GOOD_TRAIN, **(train or {})}, **(extra or {})}
        return self.write("cfg.json", doc)

    def report(self, name="r.json", **changes) -> Path:
        rep = {"clips": 2, "bit_exact": True, "energy_mj_measured_per_clip": 0.1,
               "energy_mj_analytic_per_clip": 0.12, "synaptic_events_per_clip": 1000,
               "layers": [{"name": "l1", "energy_pj_measured": 5.0, "energy_pj_analytic": 6.0}]}
        for k, v in changes.items():
            if k == "layer":
                rep["layers"][0].update(v)
            else:
                rep[k] = v
        return self.write(name, json.dumps(rep))

    def unwritable(self) -> Path:
        return _unwritable_dir(self.root)

    def file(self, name="plain.txt") -> Path:
        return self.write(name, "not a folder")


def _digest(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its kind and (files) content digest; symlinks not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                out[str(p)] = ("dir",)
            elif p.stat().st_size > (8 << 20):  # sparse size-limit inputs: size is enough
                out[str(p)] = ("file", p.stat().st_size)
            else:
                out[str(p)] = ("file", _digest(p))
    return out


def invoke(command: str, args, capsys):
    """Run a console-script entry point in-process; ``(exit status, stdout, stderr)``."""
    capsys.readouterr()
    try:
        MAINS[command]([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- the cases
# (id, command, build(ctx) -> (args, text the error line must contain))

def _nan(sd):
    next(v for k, v in sd.items() if k.endswith("conv.weight")).view(-1)[0] = float("nan")


def _inf(sd):
    next(v for k, v in sd.items() if v.is_floating_point()).view(-1)[0] = float("inf")


def _flip_listed(exp: Path, name: str, data: bytes) -> Path:
    """Replace ``name`` by ``data`` and update its sha256 in the manifest (a consistent forgery)."""
    (exp / name).write_bytes(data)
    m = json.loads((exp / "manifest.json").read_text())
    m["files"][name] = hashlib.sha256(data).hexdigest()
    (exp / "manifest.json").write_text(json.dumps(m))
    return exp


def _unlisted_and_edited(c: Ctx):
    exp = c.ctx_export = c.export()
    c.manifest(exp, lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != "network.net"}})
    data = bytearray((exp / "network.net").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (exp / "network.net").write_bytes(bytes(data))
    return [exp, "--data", UCLA], "does not list network.net"


def _q(c: Ctx, *opts):
    return [c.ckpt(), "--data", UCLA, *opts]


def _sim(c: Ctx, *opts):
    return [c.export(), "--data", UCLA, "--quiet", *opts]


def _ev(c: Ctx, *opts):
    return [c.ckpt(), "--data", UCLA, *opts]


def _tr(c: Ctx, cfg: Path | None = None, *opts):
    return ["--config", cfg or c.config(), "--data", UCLA, "--out", c.root / "cwd" / "run", *opts]


def _export(c: Ctx, ck: Path, out: Path, *opts):
    return [ck, "--target", "lava", "-o", out, "--calib-data", UCLA, "--calib-clips", "2", *opts]


def _with_calib_inside(c: Ctx):
    out = c.export("prev")
    data = out / "all_sqe"
    data.mkdir()
    (data / "a01_s01_e00_v01.json").symlink_to(UCLA / "all_sqe" / "a01_s01_e00_v01.json")
    return [c.ckpt(), "--target", "lava", "-o", out, "--calib-data", out, "--force"], "an input of this export"


def _ntu(c: Ctx, header: str) -> Path:
    return c.write("S001C001P001R001A001.skeleton", header)


CASES = [
    # ---- mksgn-export: --force and the output folder
    ("export-force-folder-holds-checkpoint", "export",
     lambda c: (_export(c, c.ckpt("model.pt", c.inp / "d"), c.inp / "d", "--force"), "an input of this export")),
    ("export-force-parent-of-checkpoint", "export",
     lambda c: (_export(c, c.ckpt("model.pt", c.inp / "a" / "b"), c.inp / "a", "--force"), "an input of this export")),
    ("export-force-cwd", "export", lambda c: (_export(c, c.ckpt(), Path("."), "--force"), "working folder")),
    ("export-force-parent-of-cwd", "export", lambda c: (_export(c, c.ckpt(), Path(".."), "--force"), "working folder")),
    ("export-force-not-an-export", "export",
     lambda c: (_export(c, c.ckpt(), c.write("mine/keep.txt", "x").parent, "--force"), "not a previous export")),
    ("export-force-export-with-extra-file", "export",
     lambda c: (_export(c, c.ckpt(), (lambda e: (e / "notes.txt").write_text("x") and e)(c.export()), "--force"),
                "notes.txt")),
    ("export-force-manifest-a-list", "export",
     lambda c: (_export(c, c.ckpt(), c.write("fake/manifest.json", "[]").parent, "--force"), "not an export manifest")),
    ("export-force-calib-data-inside", "export", _with_calib_inside),
    ("export-out-exists-no-force", "export", lambda c: (_export(c, c.ckpt(), c.export()), "pass --force")),
    ("export-out-is-a-file", "export", lambda c: (_export(c, c.ckpt(), c.file(), "--force"), "not a folder")),
    ("export-out-parent-is-a-file", "export", lambda c: (_export(c, c.ckpt(), c.file() / "sub"), "-o")),
    ("export-out-unwritable", "export", lambda c: (_export(c, c.ckpt(), c.unwritable() / "out"), "cannot write")),
    ("export-out-symlink", "export",
     lambda c: (_export(c, c.ckpt(), (lambda l: (l.symlink_to(c.export()), l)[1])(c.inp / "link"), "--force"),
                "symbolic link")),
    ("export-calib-clips-negative", "export", lambda c: (_export(c, c.ckpt(), c.inp / "o") + ["--calib-clips", "-5"],
                                                         "--calib-clips")),
    ("export-calib-clips-text", "export", lambda c: (_export(c, c.ckpt(), c.inp / "o") + ["--calib-clips", "ten"],
                                                     "--calib-clips")),
    ("export-checkpoint-nan", "export", lambda c: (_export(c, c.bad_ckpt(_nan), c.inp / "o"), "bad.pt")),
    ("export-checkpoint-inf", "export", lambda c: (_export(c, c.bad_ckpt(_inf), c.inp / "o"), "non-finite")),
    ("export-checkpoint-2-class-names", "export",
     lambda c: (_export(c, c.bad_ckpt(names=["a", "b"]), c.inp / "o"), "2 class_names")),
    ("export-checkpoint-garbage", "export", lambda c: (_export(c, c.write("g.pt", b"\x00garbage"), c.inp / "o"), "g.pt")),
    ("export-checkpoint-missing", "export", lambda c: (_export(c, c.inp / "none.pt", c.inp / "o"), "none.pt")),
    ("export-unknown-target", "export", lambda c: ([c.ckpt(), "--target", "tflite", "-o", c.inp / "o"], "--target")),
    # ---- export integrity, read through mksgn-eval EXPORT_DIR
    ("manifest-unlists-edited-network", "eval", _unlisted_and_edited),
    ("manifest-path-traversal", "eval",
     lambda c: ([c.manifest(c.export(), lambda m: {**m, "files": {**m["files"], "../../../../etc/passwd": "0" * 64}}),
                 "--data", UCLA], "../../../../etc/passwd")),
    ("manifest-absolute-path", "eval",
     lambda c: ([c.manifest(c.export(), lambda m: {**m, "files": {**m["files"], "/etc/passwd": "0" * 64}}),
                 "--data", UCLA], "plain file names")),
    ("manifest-without-target", "eval",
     lambda c: ([c.manifest(c.export(), lambda m: {k: v for k, v in m.items() if k != "target"}), "--data", UCLA],
                "'target'")),
    ("manifest-without-data", "eval",
     lambda c: ([c.manifest(c.export(), lambda m: {k: v for k, v in m.items() if k != "data"}), "--data", UCLA],
                "'data'")),
    ("manifest-a-list", "eval", lambda c: ([c.manifest(c.export(), lambda m: [m]), "--data", UCLA], "JSON list")),
    ("manifest-target-a-number", "eval",
     lambda c: ([c.manifest(c.export(), lambda m: {**m, "target": 5}), "--data", UCLA], "target 5")),
    ("manifest-data-a-string", "eval",
     lambda c: ([c.manifest(c.export(), lambda m: {**m, "data": "ucla"}), "--data", UCLA], "'data' is a str")),
    ("manifest-files-a-list", "eval",
     lambda c: ([c.manifest(c.export(), lambda m: {**m, "files": list(m["files"])}), "--data", UCLA], "'files'")),
    ("manifest-digest-not-hex", "eval",
     lambda c: ([c.manifest(c.export(), lambda m: {**m, "files": {**m["files"], "network.net": "xyz"}}),
                 "--data", UCLA], "sha256 hex digest")),
    ("manifest-version-unknown", "eval",
     lambda c: ([c.manifest(c.export(), lambda m: {**m, "manifest_version": 99}), "--data", UCLA], "manifest_version")),
    ("manifest-class-names-2", "eval",
     lambda c: ([c.manifest(c.export(), lambda m: {**m, "class_names": ["a", "b"]}), "--data", UCLA], "num_classes")),
    ("manifest-invalid-json", "eval",
     lambda c: ((lambda e: ((e / "manifest.json").write_text("{"), [e, "--data", UCLA])[1])(c.export()),
                "not valid JSON")),
    ("manifest-oversize", "eval",
     lambda c: ((lambda e: (os.truncate(e / "manifest.json", 65 << 20), [e, "--data", UCLA])[1])(c.export()),
                "limit")),
    ("network-tampered", "eval",
     lambda c: ((lambda e: ((e / "network.net").write_bytes(b"x" + (e / "network.net").read_bytes()[1:]),
                            [e, "--data", UCLA])[1])(c.export()), "does not match its sha256")),
    ("network-unreadable-with-forged-hash", "eval",
     lambda c: ([_flip_listed(c.export(), "network.net", (c.assets["export"] / "network.net").read_bytes()[:5000]),
                 "--data", UCLA], "network.net")),
    ("network-garbage-with-forged-hash", "eval",
     lambda c: ([_flip_listed(c.export(), "network.net", b"\x89HDF\r\n\x1a\n" + b"\xff" * 4000), "--data", UCLA],
                "network.net")),
    ("network-missing", "eval",
     lambda c: ((lambda e: ((e / "network.net").unlink(), [e, "--data", UCLA])[1])(c.export()), "is missing")),
    ("network-symlink-outside", "eval",
     lambda c: ((lambda e: ((e / "network.net").unlink(), (e / "network.net").symlink_to(c.assets["export"] / "network.net"),
                            [e, "--data", UCLA])[2])(c.export()), "not a regular file")),
    # ---- mksgn-sim
    ("sim-timeout-inf", "sim", lambda c: (_sim(c, "--timeout", "inf"), "--timeout")),
    ("sim-timeout-nan", "sim", lambda c: (_sim(c, "--timeout", "nan"), "--timeout")),
    ("sim-timeout-negative", "sim", lambda c: (_sim(c, "--timeout", "-1"), "--timeout")),
    ("sim-timeout-zero", "sim", lambda c: (_sim(c, "--timeout", "0"), "--timeout")),
    ("sim-clips-zero", "sim", lambda c: (_sim(c, "--clips", "0"), "--clips")),
    ("sim-clips-text", "sim", lambda c: (_sim(c, "--clips", "many"), "--clips")),
    ("sim-chunk-zero", "sim", lambda c: (_sim(c, "--chunk", "0"), "--chunk")),
    ("sim-report-missing-parent", "sim", lambda c: (_sim(c, "--report", c.inp / "nope" / "r.json"), "--report")),
    ("sim-report-parent-is-file", "sim", lambda c: (_sim(c, "--report", c.file() / "r.json"), "--report")),
    ("sim-report-is-a-folder", "sim", lambda c: (_sim(c, "--report", c.inp), "is a folder")),
    ("sim-report-unwritable", "sim", lambda c: (_sim(c, "--report", c.unwritable() / "r.json"), "--report")),
    ("sim-plots-unwritable", "sim", lambda c: (_sim(c, "--plots", c.unwritable() / "p"), "--plots")),
    ("sim-plots-is-a-file", "sim", lambda c: (_sim(c, "--plots", c.file()), "--plots")),
    ("sim-export-not-a-folder", "sim", lambda c: ([c.file("x.net"), "--data", UCLA], "x.net")),
    ("sim-export-tampered", "sim",
     lambda c: ((lambda e: ((e / "quantisation.json").write_text("{}"), [e, "--data", UCLA])[1])(c.export()),
                "quantisation.json")),
    # ---- mksgn-energy
    ("energy-dev-zero", "energy", lambda c: ([c.report(), "/dev/zero"], "/dev/zero")),
    ("energy-nan-energy", "energy",
     lambda c: ([c.report(), c.write("n.json", '{"clips": 2, "energy_mj_measured_per_clip": NaN, "layers": '
                                     '[{"name": "l", "energy_pj_measured": 1, "energy_pj_analytic": 1}]}')], "n.json")),
    ("energy-infinite-energy", "energy",
     lambda c: ([c.report(), c.report("i.json", energy_mj_analytic_per_clip=math.inf)], "i.json")),
    ("energy-negative-energy", "energy",
     lambda c: ([c.report(), c.report("neg.json", energy_mj_measured_per_clip=-0.5)], "neg.json")),
    ("energy-zero-clips", "energy", lambda c: ([c.report(), c.report("z.json", clips=0)], "'clips'")),
    ("energy-negative-layer-energy", "energy",
     lambda c: ([c.report(), c.report("l.json", layer={"energy_pj_measured": -3.0})], "l.json")),
    ("energy-oversize-report", "energy", lambda c: ([c.report(), c.sparse("big.json", 65 << 20)], "limit")),
    ("energy-one-report", "energy", lambda c: ([c.report()], "at least two")),
    ("energy-plot-unwritable", "energy",
     lambda c: ([c.report("a.json"), c.report("b.json"), "--plot", c.unwritable() / "p.png"], "--plot")),
    ("energy-plot-missing-parent", "energy",
     lambda c: ([c.report("a.json"), c.report("b.json"), "--plot", c.inp / "no" / "p.png"], "--plot")),
    ("energy-not-json", "energy", lambda c: ([c.report(), c.write("t.json", "energy: lots")], "t.json")),
    ("energy-json-list", "energy", lambda c: ([c.report(), c.write("l.json", "[1, 2]")], "JSON list")),
    ("energy-folder", "energy", lambda c: ([c.report(), c.inp], "is a folder")),
    # ---- mksgn-qcheck (all refused before the calibration)
    ("qcheck-eps-nan", "qcheck", lambda c: (_q(c, "--eps", "nan"), "--eps")),
    ("qcheck-eps-inf", "qcheck", lambda c: (_q(c, "--eps", "inf"), "--eps")),
    ("qcheck-eps-negative", "qcheck", lambda c: (_q(c, "--eps", "-1e-4"), "--eps")),
    ("qcheck-eps-zero", "qcheck", lambda c: (_q(c, "--eps", "0"), "--eps")),
    ("qcheck-max-loss-nan", "qcheck", lambda c: (_q(c, "--max-loss", "nan"), "--max-loss")),
    ("qcheck-runs-negative", "qcheck", lambda c: (_q(c, "--runs", "-1"), "--runs")),
    ("qcheck-clips-zero", "qcheck", lambda c: (_q(c, "--clips", "0"), "--clips")),
    ("qcheck-divergence-clips-zero", "qcheck", lambda c: (_q(c, "--divergence-clips", "0"), "--divergence-clips")),
    ("qcheck-calib-clips-zero", "qcheck", lambda c: (_q(c, "--calib-clips", "0"), "--calib-clips")),
    ("qcheck-json-unwritable", "qcheck", lambda c: (_q(c, "--json", c.unwritable() / "q.json"), "--json")),
    ("qcheck-json-missing-parent", "qcheck", lambda c: (_q(c, "--json", c.inp / "no" / "q.json"), "--json")),
    ("qcheck-plots-parent-is-file", "qcheck", lambda c: (_q(c, "--plots", c.file() / "p"), "--plots")),
    # ---- mksgn-eval
    ("eval-checkpoint-nan", "eval", lambda c: ([c.bad_ckpt(_nan), "--data", UCLA], "non-finite")),
    ("eval-checkpoint-2-class-names", "eval", lambda c: ([c.bad_ckpt(names=["a", "b"]), "--data", UCLA], "bad.pt")),
    ("eval-json-missing-parent", "eval", lambda c: (_ev(c, "--json", c.inp / "no" / "r.json"), "--json")),
    ("eval-json-is-a-folder", "eval", lambda c: (_ev(c, "--json", c.inp), "--json")),
    ("eval-plots-parent-is-file", "eval", lambda c: (_ev(c, "--plots", c.file() / "p"), "--plots")),
    ("eval-model-card-unwritable", "eval", lambda c: (_ev(c, "--model-card", c.unwritable() / "card.md"),
                                                      "--model-card")),
    ("eval-analysis-clips-zero", "eval", lambda c: (_ev(c, "--analysis-clips", "0"), "--analysis-clips")),
    ("eval-alphas-nan", "eval",
     lambda c: (["--ensemble", *[c.ckpt(f"t{i}.pt") for i in range(4)], "--alphas", "nan", "1", "1", "1",
                 "--data", UCLA], "--alphas")),
    ("eval-checkpoint-missing", "eval", lambda c: ([c.inp / "gone.pt", "--data", UCLA], "gone.pt")),
    # ---- mksgn-train: options and config values (refused before any clip is read)
    ("train-epochs-negative", "train", lambda c: (_tr(c, None, "--epochs", "-1"), "--epochs")),
    ("train-epochs-zero", "train", lambda c: (_tr(c, None, "--epochs", "0"), "--epochs")),
    ("train-threads-zero", "train", lambda c: (_tr(c, None, "--threads", "0"), "--threads")),
    ("train-out-parent-is-file", "train",
     lambda c: (["--config", c.config(), "--data", UCLA, "--out", c.file() / "run"], "--out")),
    ("config-epochs-text", "train", lambda c: (_tr(c, c.config(train={"epochs": "ten"})), "train.epochs")),
    ("config-lr-nan", "train", lambda c: (_tr(c, c.config(raw=json.dumps({"model": TINY, "train": GOOD_TRAIN})
                                                          .replace('"lr": 0.1', '"lr": NaN'))), "train.lr")),
    ("config-lr-infinity", "train", lambda c: (_tr(c, c.config(train={"lr": math.inf})), "train.lr")),
    ("config-lr-schedule-short-pair", "train", lambda c: (_tr(c, c.config(train={"lr_schedule": [[0]]})),
                                                          "train.lr_schedule")),
    ("config-num-classes-3", "train", lambda c: (_tr(c, c.config(model={"num_classes": 3})), "num_classes")),
    ("config-unknown-top-level-key", "train", lambda c: (_tr(c, c.config(extra={"trian": {}})), "trian")),
    ("config-batch-size-bool", "train", lambda c: (_tr(c, c.config(train={"batch_size": True})), "train.batch_size")),
    ("config-momentum-text", "train", lambda c: (_tr(c, c.config(train={"momentum": "0.9"})), "train.momentum")),
    ("config-lr-steps-text", "train", lambda c: (_tr(c, c.config(train={"lr_steps": ["50"]})), "train.lr_steps")),
    ("config-nesterov-text", "train", lambda c: (_tr(c, c.config(train={"nesterov": "yes"})), "train.nesterov")),
    ("config-width-infinite", "train", lambda c: (_tr(c, c.config(model={"width": 1e309})), "width")),
    ("config-width-huge", "train", lambda c: (_tr(c, c.config(model={"width": 1e9})), "width")),
    ("config-model-a-list", "train", lambda c: (_tr(c, c.config(raw='{"model": [], "train": {}}')), "model config")),
    ("config-train-a-list", "train", lambda c: (_tr(c, c.config(raw=json.dumps({"model": TINY, "train": []}))),
                                                "train section")),
    ("config-dev-zero", "train", lambda c: (_tr(c, Path("/dev/zero")), "/dev/zero")),
    ("config-not-utf8", "train", lambda c: (_tr(c, c.write("cfg.json", b"\xff\xfe{}")), "cfg.json")),
    # ---- mksgn-data: readers
    ("ntu-header-999999999-frames", "data", lambda c: (["show", _ntu(c, "999999999\n1\n")], "999,999,999 frames")),
    ("ntu-header-negative-frames", "data", lambda c: (["show", _ntu(c, "-3\n")], "S001C001P001R001A001.skeleton")),
    ("ntu-header-999999999-strict-stats", "data",
     lambda c: (["stats", _ntu(c, "999999999\n0\n").parent, "--strict"], "999,999,999 frames")),
    ("ucla-label-true", "data",
     lambda c: (["show", c.write("a01_s01_e00_v01.json", {"skeletons": [[[0.1, 0.2, 3.0]] * 20], "label": True})],
                "label True")),
    ("ucla-label-float", "data",
     lambda c: (["show", c.write("a01_s01_e00_v01.json", {"skeletons": [[[0.1, 0.2, 3.0]] * 20], "label": 1.0})],
                "label 1.0")),
    ("clip-is-dev-zero", "data",
     lambda c: (["show", (lambda p: (p.symlink_to("/dev/zero"), p)[1])(c.inp / "a01_s01_e00_v01.json")],
                "not a regular file")),
    ("clip-oversize", "data", lambda c: (["show", c.sparse("a01_s01_e00_v02.json", 65 << 20)], "limit")),
]


@pytest.mark.parametrize("case,command,build", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_clean_error(case, command, build, assets, tmp_path, monkeypatch, capsys):
    ctx = Ctx(tmp_path, assets)
    monkeypatch.chdir(ctx.cwd)
    monkeypatch.setattr(exporter, "export_graph", _fake_export_graph)  # never a real calibration
    args, expected = build(ctx)
    before = snapshot(tmp_path)
    code, out, err = invoke(command, args, capsys)
    text = out + err
    assert code == 2, f"exit {code}\n{text[-3000:]}"
    assert "Traceback" not in text
    lines = [ln for ln in err.splitlines() if ln.lower().startswith("error:")]
    assert len(lines) == 1 and err.lower().count("error:") == 1, err
    assert expected in lines[0], lines[0]
    assert snapshot(tmp_path) == before, "files created, changed or removed"


def test_case_count():
    assert len(CASES) >= 60


# --------------------------------------------------------------------------- not exit-2 paths

def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_full_disk_during_export_is_clean(assets, tmp_path, monkeypatch, capsys, fake_pipeline):
    """ENOSPC while the target file is written: 'no space left', nothing left behind."""
    def full(graph, target, directory):
        (directory / "network.net").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "network.net"))
    monkeypatch.setattr(exporter, "write_target", full)
    ck = shutil.copy(assets["ckpt"], tmp_path / "m.pt")
    code, out, err = invoke("export", _export(None, ck, tmp_path / "out"), capsys)
    assert code == 2 and "no space left" in err and err.count("error:") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_full_disk_elsewhere_is_clean(tmp_path, monkeypatch, capsys):
    """An ENOSPC OSError out of any command (here mksgn-energy's chart) is one error line."""
    import hw_sim.report as report

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "/x/chart.png")
    monkeypatch.setattr(report, "compare_reports", full)
    ctx = Ctx(tmp_path, {})
    code, _, err = invoke("energy", [ctx.report("a.json"), ctx.report("b.json")], capsys)
    assert code == 2 and "no space left on device" in err and err.count("error:") == 1


def test_sigterm_during_export_removes_the_temp_folder(assets, tmp_path, monkeypatch, capsys, fake_pipeline):
    real = exporter.write_target

    def killed(graph, target, directory):
        real(graph, target, directory)  # a network.net in the temp folder, then SIGTERM arrives
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(exporter, "write_target", killed)
    ck = shutil.copy(assets["ckpt"], tmp_path / "m.pt")
    handler = signal.getsignal(signal.SIGTERM)
    code, _, err = invoke("export", _export(None, ck, tmp_path / "out"), capsys)
    assert code == 143 and "terminated" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    assert signal.getsignal(signal.SIGTERM) is handler  # the CLI restores the handlers


def test_swallowed_interrupt_is_not_a_success(tmp_path, monkeypatch, capsys):
    """A Ctrl-C that a library catches (the 'Exception ignored' case) still ends with 130."""
    import hw_sim.report as report
    real = report.compare_reports

    def swallowing(loaded):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return real(loaded)
    monkeypatch.setattr(report, "compare_reports", swallowing)
    ctx = Ctx(tmp_path, {})
    code, out, err = invoke("energy", [ctx.report("a.json"), ctx.report("b.json")], capsys)
    assert code == 130 and "interrupted" in err


def test_killed_export_temp_folders_removed_by_next_export(assets, tmp_path, capsys, fake_pipeline):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".out.{dead}.abcd1234.tmp"
    stale.mkdir()
    (stale / "network.net").write_bytes(b"partial")
    stale_old = tmp_path / f".out.{dead}.efgh5678.old"
    stale_old.mkdir()
    live = tmp_path / f".out.{os.getpid()}.ijkl9012.tmp"  # a running export's: kept
    live.mkdir()
    other = tmp_path / f".other.{dead}.abcd1234.tmp"  # another output's: kept
    other.mkdir()
    ck = shutil.copy(assets["ckpt"], tmp_path / "m.pt")
    code, out, err = invoke("export", _export(None, ck, tmp_path / "out"), capsys)
    assert code == 0, err
    assert _leftovers(tmp_path) == sorted([live.name, other.name])
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_force_replaces_a_previous_export_only(assets, tmp_path, capsys, fake_pipeline):
    out = tmp_path / "out"
    shutil.copytree(assets["export"], out)
    ck = shutil.copy(assets["ckpt"], tmp_path / "m.pt")
    code, _, err = invoke("export", _export(None, ck, out, "--force"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "out"]
    for name in ("network.net", "quantisation.json", "resources.json"):
        assert (out / name).read_bytes() == (assets["export"] / name).read_bytes(), name
    exporter.verify_export_dir(out)


def test_plot_failure_is_a_warning(tmp_path, monkeypatch, capsys):
    import hw_sim.report as report

    def broken(loaded, path):
        raise RuntimeError("matplotlib backend unavailable")
    monkeypatch.setattr(report, "plot_comparison", broken)
    ctx = Ctx(tmp_path, {})
    code, out, err = invoke("energy", [ctx.report("a.json"), ctx.report("b.json"), "--plot", tmp_path / "p.png"],
                            capsys)
    assert code == 0 and "warning:" in err and "error:" not in err and "a" in out.splitlines()[0]
    assert not (tmp_path / "p.png").exists()


def test_ntu_huge_header_is_skipped_by_default(ntu_dir, tmp_path, capsys):
    """The bad file is one skipped file; the rest of the folder is still read (--skip-bad)."""
    real = sorted(ntu_dir.glob("*.skeleton"))[0]
    shutil.copyfile(real, tmp_path / real.name)  # a copy in tmp: the bad file must never be written into the data
    bad = tmp_path / "S099C001P001R001A001.skeleton"
    assert not bad.exists() and not (ntu_dir / bad.name).exists()
    bad.write_text("999999999\n1\n")
    code, out, err = invoke("data", ["stats", tmp_path], capsys)
    assert code == 0, err
    assert "clips read: 1   skipped: 1" in out and "999,999,999 frames" in out


def _dense_ntu(path: Path, max_bodies: int = 2):
    """The NTU reader before issue 15 (one dense (T, 25, 3) track per body id), as reference."""
    import numpy as np
    lines = [ln for ln in path.read_text().splitlines()]
    pos = 0

    def nxt():
        nonlocal pos
        pos += 1
        return lines[pos - 1].split()
    frames = int(nxt()[0])
    tracks = {}
    for t in range(frames):
        for _ in range(int(nxt()[0])):
            body = nxt()[0]
            nxt()
            track = tracks.setdefault(body, np.zeros((frames, 25, 3), np.float32))
            for v in range(25):
                track[t, v] = [float(x) for x in nxt()[:3]]

    def energy(track):
        present = track.reshape(frames, -1).any(axis=1)
        f = track[present]
        return 0.0 if len(f) == 0 else float(sum(f[..., c].std() for c in range(3)))
    ranked = sorted(tracks.values(), key=energy, reverse=True)[:max_bodies]
    return np.stack(ranked, axis=-1).transpose(2, 0, 1, 3)


def test_ntu_reader_equals_the_dense_reader(ntu_dir):
    """Bounding the allocation changed nothing: every NTU sample reads to the same array as
    the dense per-body reader it replaced (ranking by motion, zeros where a body is absent)."""
    import numpy as np
    from mksgn.io import read_ntu_skeleton
    files = sorted(ntu_dir.glob("*.skeleton"))
    assert files
    for f in files:
        assert np.array_equal(read_ntu_skeleton(f).skeleton, _dense_ntu(f)), f.name
