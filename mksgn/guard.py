"""Checks run *before* long work: numbers (finite, in range), output paths (writable), and
bounded reads of files a user hands over (reports, manifests, configs).

Every check raises an error of the caller's package family (default :class:`OptionError`,
an :class:`~mksgn.errors.MksgnError`), so the command-line tools print one ``error:`` line and
exit 2. :func:`optional_output` runs a step whose failure must not cost the result (plots):
it prints ``warning: ...`` instead of raising.
"""
from __future__ import annotations

import errno
import json
import math
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Callable

from .errors import MksgnError, OptionError

__all__ = ["number", "integer", "output_file", "output_dir", "read_limited", "optional_output",
           "is_no_space", "JSON_LIMIT"]

#: Largest JSON input (report, manifest, config, quantisation table) read, in bytes.
JSON_LIMIT = 64 << 20


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_fmt(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_fmt(high)}"
    return ""


def number(value, name: str, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, error: type = OptionError):
    """``value`` if it is a finite number in the range, else ``error`` naming ``name``.

    None passes through (an option that was not given)."""
    if value is None:
        return None
    ok = _is_num(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise error(f"{name} must be a finite number {_range(low, high, low_open, high_open)}".rstrip()
                    + f", got {value!r}")
    return value


def integer(value, name: str, low: int | None = None, high: int | None = None, error: type = OptionError):
    """``value`` if it is an int (not a bool) in ``[low, high]``, else ``error`` naming ``name``."""
    if value is None:
        return None
    if (not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low)
            or (high is not None and value > high)):
        raise error(f"{name} must be an integer {_range(low, high, False, False)}".rstrip() + f", got {value!r}")
    return value


def _writable_ancestor(path: Path, name: str, error: type, shown: Path | None = None) -> None:
    """The nearest existing ancestor of ``path`` must be a folder we can create files in;
    messages name ``shown`` (the output the user gave), default ``path``."""
    shown = path if shown is None else shown
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise error(f"{name} {shown}: cannot be created, {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mksgn-probe.", dir=probe)
    except OSError as exc:
        raise error(f"{name} {shown}: cannot write in {probe} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)


def output_file(path, name: str, error: type = OptionError) -> Path | None:
    """Check that a file can be written at ``path``: its folder exists and is writable."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise error(f"{name} {path}: is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise error(f"{name} {path}: exists and is not a regular file")
    parent = path.parent
    if not parent.exists():
        raise error(f"{name} {path}: folder {parent} does not exist")
    _writable_ancestor(parent, name, error, shown=path)
    return path


def output_dir(path, name: str, error: type = OptionError) -> Path | None:
    """Check that files can be written into the folder ``path``: it is a writable folder, or it
    can be created (its nearest existing ancestor is a writable folder)."""
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{name} {path}: exists and is not a folder")
    _writable_ancestor(path, name, error)
    return path


def read_limited(path, what: str, limit: int = JSON_LIMIT, error: type = MksgnError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Devices, pipes and folders are refused (``/dev/zero`` never ends); the size is checked
    before reading and the read stops after ``limit`` + 1 bytes whatever ``stat`` said."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: no such file ({what})") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc}; {what})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: is a folder, not a file ({what})")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file ({what}); devices and pipes are not read")
    if st.st_size > limit:
        raise error(f"{path}: {st.st_size:,} bytes, larger than the {limit:,}-byte limit for {what}")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc}; {what})") from None
    if len(data) > limit:
        raise error(f"{path}: larger than the {limit:,}-byte limit for {what}")
    return data


def read_json(path, what: str, limit: int = JSON_LIMIT, error: type = MksgnError, hint: str = ""):
    """The parsed JSON document of a regular file of at most ``limit`` bytes (see
    :func:`read_limited`); one home for the checks every JSON input gets (configs, export
    manifests, replay reports).

    Raises
    ------
    error
        The file is missing, not regular, too large, not UTF-8, not valid JSON (line and
        column named) or nested too deeply; ``hint`` (what to do) ends the message.
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    raw = read_limited(path, what, limit, error=error)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text ({what}){tail}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}, column {exc.colno}){tail}") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply{tail}") from None


def optional_output(write: Callable, what: str):
    """Run ``write()`` for an optional output (plots); a failure prints one ``warning:`` line
    on stderr and returns None instead of raising, so the result already printed or written
    keeps its exit status. Ctrl-C / SIGTERM still propagate."""
    try:
        return write()
    except Exception as exc:  # noqa: BLE001 - any plotting failure is a warning, never the result
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"warning: {what} not written: {reason}", file=sys.stderr)
        return None


def is_no_space(exc: BaseException) -> bool:
    """True for a full disk (or quota) error."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
