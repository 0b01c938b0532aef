"""Small real-data fixtures shared by the export tests (imported, not collected)."""
from __future__ import annotations

import copy
import functools

import torch

from mksgn.data import SkeletonDataset
from mksgn.models import ModelConfig, build_model

from .conftest import UCLA


@functools.lru_cache(maxsize=None)
def real_clips(split: str = "test", n: int = 8) -> torch.Tensor:
    """First ``n`` real NW-UCLA clips of a split, ``(n, 3, 52, 20, 1)``."""
    ds = SkeletonDataset(UCLA, split, train=False)
    return torch.stack([ds[i][0]["joint"] for i in range(n)])


def tiny_model(arch: str = "mksgn", width: float = 0.125, seed: int = 0):
    """A tiny model whose BN statistics are warmed on real clips so that it fires (a fresh
    copy each call)."""
    return copy.deepcopy(_tiny_model(arch, width, seed))


@functools.lru_cache(maxsize=None)
def _tiny_model(arch: str, width: float, seed: int):
    torch.manual_seed(seed)
    m = build_model(ModelConfig.from_dict({"arch": arch, "layout": "ucla20", "num_classes": 10,
                                           "width": width, "temporal_kernel": 3}))
    x = real_clips("train", 16)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None  # cumulative average: a few passes give the batch statistics
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(x)
    for bn in bns:
        bn.momentum = 0.1
    return m.eval()


@functools.lru_cache(maxsize=None)
def tiny_quantised(arch: str = "mksgn"):
    """``(model, quantised Graph)`` for a tiny warmed model, calibrated on 16 training clips."""
    from export.frontend import from_model
    from export.pipeline import lower
    m = tiny_model(arch)
    return m, lower(from_model(m), real_clips("train", 16))


def tiny_checkpoint(path, arch: str = "mksgn", mutate=None):
    """Save a tiny warmed model as an mksgn checkpoint at ``path`` (``mutate(state_dict)``
    may corrupt it for bad-input tests)."""
    from mksgn.checkpoint import save_checkpoint
    from mksgn.io import UCLA_CLASS_NAMES
    m = tiny_model(arch)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    if mutate:
        mutate(sd)
    save_checkpoint(path, {"config": {"model": m.cfg.to_dict(), "train": {}}, "state_dict": sd,
                           "class_names": list(UCLA_CLASS_NAMES),
                           "data": {"dataset": "ucla", "layout": "ucla20", "modalities": ["joint"],
                                    "window": 52, "protocol": "view3"},
                           "metrics": {}, "git_revision": "test", "epoch": 0})
    return path
