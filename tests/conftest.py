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
