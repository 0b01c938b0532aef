"""Malformed inputs, written into a temp dir: each gives its documented DataError (file, line)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mksgn.data import SkeletonDataset, load_clips
from mksgn.errors import DataError
from mksgn.io import read_clip

JOINT = "0.1 0.2 3.0 1 2 3 4 0 0 0 0 2"
INFO = "72057594037944738 0 1 1 1 1 0 0.01 -0.25 2"


def ntu_text(frames=2, joints=25, joint_line=JOINT, eol="\r\n"):
    lines = [str(frames)]
    for _ in range(frames):
        lines += ["1", INFO, str(joints)] + [joint_line] * joints
    return eol.join(lines) + eol


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


NTU_NAME = "S001C001P001R001A001.skeleton"
UCLA_NAME = "a01_s01_e00_v01.json"


def ucla_doc(frames=2, joints=20, label=1):
    return json.dumps({"file_name": "a01_s01_e00_v01", "label": label,
                       "skeletons": [[[0.1, 0.2, 3.0]] * joints] * frames})


CASES = [
    # (file name, content, error pattern, line or None)
    ("ntu_truncated", NTU_NAME, "\r\n".join(ntu_text().split("\r\n")[:50]), r"file ends early: expected joint 19 of frame 2", 51),
    ("ntu_non_numeric", NTU_NAME, ntu_text().replace(JOINT, "0.1 abc 3.0 1 2 3 4 0 0 0 0 2", 1),
     r"non-numeric value 'abc' in joint line", 5),
    ("ntu_wrong_joint_count", NTU_NAME, ntu_text(joints=24), r"expected 25 joints .* found 24", 4),
    ("ntu_zero_frames", NTU_NAME, "0\r\n", r"0 frames; a clip needs at least one frame", 1),
    ("ntu_short_joint_line", NTU_NAME, ntu_text(joint_line="0.1 0.2 3.0"), r"\(12 values\), found 3", 5),
    ("ntu_trailing_data", NTU_NAME, ntu_text() + "1\r\n", r"unexpected data after the last of 2 frames", 58),
    ("ntu_no_body", NTU_NAME, "2\n0\n0\n", r"no body in any of the 2 frames", None),
    ("ntu_bad_name", "clip001.skeleton", ntu_text(), r"does not match the NTU RGB\+D pattern", None),
    ("ucla_zero_frames", UCLA_NAME, ucla_doc(frames=0), r"0 frames", None),
    ("ucla_wrong_joints", UCLA_NAME, ucla_doc(joints=19), r"expected 20 joints .* found 19", None),
    ("ucla_bad_json", UCLA_NAME, '{"skeletons": [', r"invalid json", 1),
    ("ucla_label_mismatch", UCLA_NAME, ucla_doc(label=3), r"label 3 means action a03 but the file name says a01", None),
    ("ucla_bad_name", "walk_01.json", ucla_doc(), r"does not match the NW-UCLA pattern", None),
    ("unknown_suffix", "S001C001P001R001A001.txt", "1", r"unknown file type", None),
]


@pytest.mark.parametrize("case,name,text,pattern,line", CASES, ids=[c[0] for c in CASES])
def test_bad_file_errors(tmp_path, case, name, text, pattern, line):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError, match=pattern) as err:
        read_clip(path)
    assert str(path) in str(err.value)
    assert err.value.line == line
    if line is not None:
        assert f"{path}:{line}:" in str(err.value)


def test_lf_and_crlf_parse_the_same(tmp_path):
    a = read_clip(write(tmp_path / "", NTU_NAME, ntu_text(eol="\r\n")))
    (tmp_path / "lf").mkdir()
    b = read_clip(write(tmp_path / "lf", NTU_NAME, ntu_text(eol="\n")))
    assert (a.skeleton == b.skeleton).all()


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_clip(tmp_path / UCLA_NAME)
    with pytest.raises(DataError, match="dataset folder not found"):
        SkeletonDataset(tmp_path / "nope", "train")
    with pytest.raises(DataError, match=r"no \.json \(NW-UCLA\) or \.skeleton"):
        SkeletonDataset(tmp_path, "train")


def test_scan_policy_skips_and_reports(tmp_path):
    write(tmp_path, "a01_s01_e00_v01.json", ucla_doc())
    write(tmp_path, "a01_s01_e01_v03.json", ucla_doc())
    write(tmp_path, "a01_s01_e02_v01.json", ucla_doc(joints=3))   # unparsable
    write(tmp_path, "notes.json", "{}")                            # name outside the pattern
    clips, scan = load_clips(tmp_path, on_error="skip")
    assert len(clips) == 2
    assert sorted(p.name for p, _ in scan.skipped) == ["a01_s01_e02_v01.json", "notes.json"]
    with pytest.raises(DataError, match="expected 20 joints"):
        load_clips(tmp_path, on_error="raise")
    with pytest.raises(DataError, match="split 'test' of this folder has no clips"):
        SkeletonDataset(_only_train(tmp_path), "test")


def _only_train(tmp_path):
    d = tmp_path / "only_train"
    d.mkdir()
    write(d, "a01_s01_e00_v01.json", ucla_doc())
    return d


def test_unknown_modality(ucla_dir):
    with pytest.raises(DataError, match="unknown modality"):
        SkeletonDataset(ucla_dir, "test", ("velocity",))


def _cli(*args):
    exe = Path(sys.executable).parent / "mksgn-data"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_cli_bad_input_no_traceback(tmp_path):
    bad = write(tmp_path, NTU_NAME, ntu_text(joints=24))
    r = _cli("show", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"error: {bad}:4: expected 25 joints" in r.stderr
    r = _cli("stats", str(tmp_path / "missing"))
    assert r.returncode == 2 and "dataset folder not found" in r.stderr and "Traceback" not in r.stderr


def test_cli_stats_reports_skipped(tmp_path):
    write(tmp_path, "a01_s01_e00_v01.json", ucla_doc())
    write(tmp_path, "a01_s01_e02_v03.json", ucla_doc(frames=0))
    r = _cli("stats", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "clips read: 1   skipped: 1" in r.stdout
    assert "a01_s01_e02_v03.json" in r.stdout
    r = _cli("stats", "--strict", str(tmp_path))
    assert r.returncode == 2 and "0 frames" in r.stderr


def test_cli_stats_real_ucla(ucla_dir):
    r = _cli("stats", str(ucla_dir))
    assert r.returncode == 0, r.stderr
    assert "[train] (view3): 1020 clips" in r.stdout and "[test] (view3): 464 clips" in r.stdout
