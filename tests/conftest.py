"""Shared fixtures: the real data in ../shared/data (skipped with a reason when absent)."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
UCLA = DATA / "nw-ucla"
NTU = DATA / "ntu-samples"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (expected ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def ucla_dir() -> Path:
    return _need(UCLA)


@pytest.fixture(scope="session")
def ntu_dir() -> Path:
    return _need(NTU)


@pytest.fixture(scope="module")
def small_ucla(ucla_dir, tmp_path_factory):
    """8 training + 6 test clips of the real data, linked (not copied) into a temp folder."""
    d = tmp_path_factory.mktemp("ucla_small") / "all_sqe"
    d.mkdir()
    src = ucla_dir / "all_sqe"
    names = [f"a{a:02d}_s01_e00_v{v:02d}.json" for a in (1, 2, 3, 4) for v in (1, 2)]
    names += [f"a{a:02d}_s01_e00_v03.json" for a in (1, 2, 3, 4, 5, 6)]
    for n in names:
        (d / n).symlink_to(src / n)
    return d.parent
