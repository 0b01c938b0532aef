"""The shipped checkpoints load (weights_only) and reproduce their model card's top-1 on the
real NW-UCLA test split (464 clips)."""
from pathlib import Path

import pytest

from mksgn.evaluate import evaluate
from mksgn.model_card import read_card_top1

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = ["mksgn_ucla_joint", "base_sgn_ucla_joint"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reproduces_card(name, ucla_dir):
    ckpt = MODELS / f"{name}.pt"
    assert ckpt.stat().st_size <= 10e6
    r = evaluate(ckpt, ucla_dir, analysis_clips=64, progress=False)
    assert r["clips"] == 464
    assert round(r["top1"], 2) == read_card_top1(MODELS / f"{name}.md")


def test_mksgn_meets_the_bar(ucla_dir):
    assert read_card_top1(MODELS / "mksgn_ucla_joint.md") >= 80.0
