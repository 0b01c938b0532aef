"""mksgn-export end to end on tiny real-data checkpoints: outputs, determinism, bad inputs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.errors import ExportError
from export.evaluate import evaluate_export
from export.exporter import run_export, verify_export_dir
from export.mapping import attention_resources
from export.resources import NEURONS_PER_CORE, format_resources, resources

from .conftest import UCLA
from .export_fixtures import tiny_checkpoint

EXE = Path(sys.executable).parent / "mksgn-export"


def cli(*args, timeout=300):
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, ucla_dir):
    d = tmp_path_factory.mktemp("ckpt")
    return {"mksgn": tiny_checkpoint(d / "mksgn.pt", "mksgn"),
            "base_sgn": tiny_checkpoint(d / "base.pt", "base_sgn")}


def _leftovers(parent: Path):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_lava_export_deterministic_and_verified(ckpts, tmp_path):
    a = run_export(ckpts["base_sgn"], "lava", tmp_path / "a", UCLA, calib_clips=8, progress=False)
    b = run_export(ckpts["base_sgn"], "lava", tmp_path / "b", UCLA, calib_clips=8, progress=False)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["manifest.json", "network.net", "quantisation.json", "resources.json"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    m = verify_export_dir(tmp_path / "a")
    assert m["target"] == "lava" and m["input_encoding"]["input_frac_bits"] == a.graph.meta["input_frac_bits"]
    assert m["readout_latency"] == a.graph.meta["readout_latency"] > len(a.graph.groups) // 2
    res = json.loads((tmp_path / "a" / "resources.json").read_text())
    assert res["fits_one_chip"] and res["total_neurons"] == sum(g.size for g in a.graph.groups.values())
    assert not _leftovers(tmp_path)
    assert b.layers[0]["group"] == "sc.lif"


def test_export_dir_evaluates_in_integers(ckpts, tmp_path):
    run_export(ckpts["mksgn"], "lava", tmp_path / "e", UCLA, calib_clips=8, progress=False)
    r = evaluate_export(tmp_path / "e", UCLA, progress=False)
    assert r["clips"] == 464 and r["quantised"] and 0 <= r["top1"] <= 100
    # tampering with the network file is detected
    net = tmp_path / "e" / "network.net"
    original = net.read_bytes()
    data = bytearray(original)
    data[-100] ^= 1
    net.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match its sha256"):
        evaluate_export(tmp_path / "e", UCLA, progress=False)
    net.write_bytes(original)
    verify_export_dir(tmp_path / "e")
    (tmp_path / "e" / "resources.json").unlink()
    with pytest.raises(ExportError, match="resources.json listed in manifest.json is missing"):
        verify_export_dir(tmp_path / "e")


def _nan(sd):
    k = next(k for k in sd if k.endswith("conv.weight"))
    sd[k][0].view(-1)[0] = float("nan")


def _huge(sd):
    k = next(k for k in sd if "tconv.weight" in k)
    sd[k].mul_(1e12)


BAD = [
    ("missing", None, [], "checkpoint not found"),
    ("corrupt", b"garbage", [], "not a readable torch checkpoint"),
    ("foreign", "foreign", [], "not an mksgn checkpoint"),
    ("nan", _nan, [], "non-finite"),
    ("huge", _huge, [], "too large to represent"),
    ("no_calib", "ok", ["--calib-data", "/nonexistent/ucla"], "dataset folder not found"),
    ("zero_calib", "ok", ["--calib-clips", "0"], "--calib-clips must be an integer >= 1"),
    ("nir_attention", "ok", ["--target", "nir"], "NIR cannot express"),
]


@pytest.mark.parametrize("case,make,extra,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(case, make, extra, message, tmp_path):
    ck = tmp_path / "in" / "model.pt"
    ck.parent.mkdir()
    if make is None:
        pass
    elif isinstance(make, bytes):
        ck.write_bytes(make)
    elif make == "foreign":
        torch.save({"weights": torch.zeros(3)}, ck)
    elif make == "ok":
        tiny_checkpoint(ck, "mksgn")
    else:
        tiny_checkpoint(ck, "mksgn", mutate=make)
    out = tmp_path / "out"
    target = [] if "--target" in extra else ["--target", "lava"]
    calib = [] if "--calib-data" in extra else ["--calib-data", UCLA]
    r = cli(ck, *target, "-o", out, *calib, "--calib-clips", "4", *extra)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert message in r.stderr
    assert not out.exists() and not _leftovers(tmp_path)


def test_existing_output_needs_force(ckpts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli(ckpts["base_sgn"], "--target", "lava", "-o", out, "--calib-data", UCLA, "--calib-clips", "4")
    assert r.returncode == 2 and "exists; pass --force" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only a previous export: a folder holding other files is refused
    r = cli(ckpts["base_sgn"], "--target", "lava", "-o", out, "--calib-data", UCLA, "--calib-clips", "4",
            "--force")
    assert r.returncode == 2 and "not a previous export" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    out.rmdir()
    r = cli(ckpts["base_sgn"], "--target", "lava", "-o", out, "--calib-data", UCLA, "--calib-clips", "4")
    assert r.returncode == 0, r.stderr
    first = (out / "manifest.json").read_bytes()
    r = cli(ckpts["base_sgn"], "--target", "lava", "-o", out, "--calib-data", UCLA, "--calib-clips", "4",
            "--force")
    assert r.returncode == 0, r.stderr
    assert (out / "network.net").exists() and (out / "manifest.json").read_bytes() == first
    assert "fits one Loihi 2 chip" in r.stdout and "sc.lif" in r.stdout
    assert not _leftovers(tmp_path)


def test_unknown_target(ckpts, tmp_path):
    r = cli(ckpts["base_sgn"], "--target", "tflite", "-o", tmp_path / "o")
    assert r.returncode == 2 and "Invalid value for '--target'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_resources_split_attention_from_the_rest(ckpts, tmp_path):
    """The attention's share of the core estimate is what its product/middle populations add:
    zero for Base-SGN* (no SG-SA), for MK-SGN the neurons of export.mapping's rule per block."""
    for arch in ("base_sgn", "mksgn"):
        r = run_export(ckpts[arch], "lava", tmp_path / arch, UCLA, calib_clips=8, progress=False)
        res = resources(r.graph)
        att = res["attention"]
        M = int(r.graph.input_shape[3])
        blocks = [s for s in r.graph.synapses.values() if s.kind == "attention"]
        want = 0
        for s in blocks:
            C, T, V = (int(x) for x in r.graph.groups[s.sources[0]].shape)
            want += attention_resources(s.meta.get("attention_order") or "qk", C, V, T, M)["neurons"] // M
        assert att["neurons"] == want and (want > 0) == (arch == "mksgn")
        assert att["cores"] + att["cores_without_attention"] == res["total_cores"]
        # a block may share its last core with its group's own neurons: ceil(a + b) - ceil(b) >= ceil(a) - 1
        assert att["cores"] >= att["min_cores"] - len(blocks) and att["min_cores"] == -(-want // NEURONS_PER_CORE)
        assert ("of which SG-SA attention" in format_resources(res)) == (arch == "mksgn")
