"""Type and range checks of a training config, each error naming its key (issue 15).

:func:`check_train_values` runs on the ``train`` section before :class:`mksgn.train.TrainConfig`
is built (so ``"epochs": "ten"`` or ``"lr": NaN`` is a :class:`ConfigError`, not a TypeError
or a NaN model later); :func:`check_document` on the whole file (only ``model`` and ``train``
sections; ``model.num_classes`` must fit the dataset of ``model.layout``). Settings checked
by ``TrainConfig.from_dict`` itself (the SMF and distillation ones) are not repeated here.
"""
from __future__ import annotations

import math

from .errors import ConfigError

__all__ = ["check_train_values", "check_document", "SECTIONS", "LAYOUT_CLASSES"]

SECTIONS = ("model", "train")
#: Classes of the datasets of each joint layout (NW-UCLA 10; NTU RGB+D 60 or NTU-120).
LAYOUT_CLASSES = {"ucla20": (10,), "ntu25": (60, 120)}
_MAX_EPOCHS = 100_000


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _need(ok: bool, key: str, what: str, value) -> None:
    if not ok:
        raise ConfigError(f"train.{key} must be {what} (got {value!r})")


def check_train_values(d) -> None:
    """Raise :class:`ConfigError` naming the first ``train`` setting of the wrong type or range."""
    if not isinstance(d, dict):
        raise ConfigError(f"the train section must be a JSON object, got {type(d).__name__}")
    ints = {"epochs": (1, _MAX_EPOCHS), "batch_size": (1, 1 << 16), "warmup_epochs": (0, _MAX_EPOCHS),
            "seed": (0, 2 ** 63 - 1), "eval_every": (1, _MAX_EPOCHS)}
    for key, (lo, hi) in ints.items():
        if key in d:
            _need(_int(d[key]) and lo <= d[key] <= hi, key, f"an integer in [{lo}, {hi}]", d[key])
    if "lr" in d:
        _need(_num(d["lr"]) and d["lr"] > 0, "lr", "a finite number > 0", d["lr"])
    if "momentum" in d:
        _need(_num(d["momentum"]) and 0 <= d["momentum"] < 1, "momentum", "a number in [0, 1)", d["momentum"])
    if "weight_decay" in d:
        _need(_num(d["weight_decay"]) and d["weight_decay"] >= 0, "weight_decay", "a finite number >= 0",
              d["weight_decay"])
    if "lr_gamma" in d:
        _need(_num(d["lr_gamma"]) and d["lr_gamma"] > 0, "lr_gamma", "a finite number > 0", d["lr_gamma"])
    if "weight_noise" in d:
        _need(_num(d["weight_noise"]) and 0 <= d["weight_noise"] < 1, "weight_noise", "a number in [0, 1)",
              d["weight_noise"])
    if "nesterov" in d:
        _need(isinstance(d["nesterov"], bool), "nesterov", "true or false", d["nesterov"])
    if "lr_steps" in d:
        v = d["lr_steps"]
        _need(isinstance(v, list) and all(_int(e) and 0 <= e <= _MAX_EPOCHS for e in v), "lr_steps",
              "a list of epochs (integers >= 0)", v)
    if "lr_schedule" in d:
        v = d["lr_schedule"]
        _need(isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 and _int(p[0]) and p[0] >= 0
                                          and _num(p[1]) and p[1] > 0 for p in v),
              "lr_schedule", "a list of [epoch, rate] pairs (integer epoch >= 0, finite rate > 0)", v)
        _need(not v or min(p[0] for p in v) == 0, "lr_schedule", "a schedule starting at epoch 0", v)
    if "modalities" in d:
        v = d["modalities"]
        _need(isinstance(v, list) and v and all(isinstance(m, str) for m in v), "modalities",
              "a non-empty list of modality names", v)
    if "dataset" in d:
        _need(d["dataset"] in ("ucla", "ntu"), "dataset", "'ucla' or 'ntu'", d["dataset"])
    for key in ("protocol", "init_from"):
        if key in d:
            _need(d[key] is None or (isinstance(d[key], str) and d[key]), key, "null or a non-empty string", d[key])
    if "device" in d:
        _need(isinstance(d["device"], str), "device", "a device name such as 'cpu' or 'cuda'", d["device"])


def check_document(doc) -> None:
    """The whole config file: an object with exactly the ``model`` and ``train`` sections, and a
    ``model.num_classes`` that fits the dataset of ``model.layout``."""
    if not isinstance(doc, dict) or any(k not in doc for k in SECTIONS):
        raise ConfigError('expected an object with "model" and "train" sections')
    unknown = sorted(k for k in doc if k not in SECTIONS)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; a config has only {list(SECTIONS)}")
    model = doc["model"]
    if isinstance(model, dict):
        n, layout = model.get("num_classes"), model.get("layout")
        classes = LAYOUT_CLASSES.get(layout) if isinstance(layout, str) else None
        if classes and _int(n) and n not in classes:
            raise ConfigError(f"model.num_classes is {n}, but layout {layout!r} is "
                              f"{'NW-UCLA' if layout == 'ucla20' else 'NTU RGB+D'} with "
                              f"{' or '.join(map(str, classes))} classes")
