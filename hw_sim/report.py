"""Read, print, plot and compare the JSON reports written by ``mksgn-sim --report FILE``.

A replay report (see :meth:`hw_sim.replay.ReplayResult.to_dict`) holds per-clip totals
(``energy_mj_measured_per_clip`` in mJ, ``synaptic_events_per_clip``, ...) and a list of
per-layer rows (``layers``) whose energies are in pJ per clip. This module shows the layer
energies in µJ per clip and the totals in mJ per clip.

Only the standard library and matplotlib (Agg backend, imported on first plot) are used, so
nothing here runs Lava or torch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

from mksgn.checkpoint import atomic_write
from mksgn.guard import read_json

from .errors import SimError

PJ_PER_UJ = 1e6
UJ_PER_MJ = 1e3

#: Top-level keys every replay report must have (the rest are shown as "n/a" when absent).
REQUIRED_KEYS = ("layers", "energy_mj_measured_per_clip")
#: Keys every entry of ``layers`` must have.
REQUIRED_LAYER_KEYS = ("name", "energy_pj_measured", "energy_pj_analytic")

_NA = "n/a"
#: Largest report file read, in bytes.
REPORT_LIMIT = 64 << 20
#: Top-level numbers that must be finite and >= 0 when present (energies, events, counts, rates).
_NONNEG_KEYS = ("energy_mj_measured_per_clip", "energy_mj_analytic_per_clip", "synaptic_events_per_clip",
                "analytic_sops_per_clip", "host_macs_per_clip", "lava_top1", "twin_top1")


def _nonneg(x) -> bool:
    return _is_number(x) and math.isfinite(x) and x >= 0


# ----------------------------------------------------------------------------- loading

def load_report(path: str | Path) -> dict:
    """Read and check one replay report written by ``mksgn-sim --report FILE``.

    Parameters
    ----------
    path : str or Path
        The JSON file.

    Returns
    -------
    dict
        The report as written (energies per layer in pJ per clip, totals in mJ per clip).

    Raises
    ------
    SimError
        The file is missing or unreadable, is not valid JSON, is not a JSON object, lacks
        one of :data:`REQUIRED_KEYS`, or a ``layers`` entry lacks one of
        :data:`REQUIRED_LAYER_KEYS` or has a non-numeric energy. The message starts with
        the file name.
    """
    path = Path(path)
    hint = "expected a replay report written by 'mksgn-sim --report FILE'"
    if not path.exists():
        raise SimError(f"{path}: no such file; {hint}")
    if path.is_dir():
        raise SimError(f"{path}: is a folder, not a report file; {hint}")
    # a regular file of at most REPORT_LIMIT bytes (never /dev/zero or a pipe read without end)
    report = read_json(path, "a replay report", REPORT_LIMIT, error=SimError, hint=hint)
    if not isinstance(report, dict):
        raise SimError(f"{path}: holds a JSON {type(report).__name__}, not an object; {hint}")
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        what = ""
        if "top1" in report and "analysis" in report:
            what = " (this looks like a 'mksgn-eval --json' report of the float model)"
        raise SimError(f"{path}: missing {', '.join(repr(k) for k in missing)}{what}; {hint}")
    if not _is_number(report["energy_mj_measured_per_clip"]):
        raise SimError(f"{path}: 'energy_mj_measured_per_clip' is "
                       f"{report['energy_mj_measured_per_clip']!r}, not a number; {hint}")
    # NaN, inf and negative energies, counts or rates are corrupt, never printed as results
    for key, value in report.items():
        if key in _NONNEG_KEYS and value is not None and not _nonneg(value):
            raise SimError(f"{path}: {key!r} is {value!r}, not a finite number >= 0; {hint}")
    if "clips" in report and (not isinstance(report["clips"], int) or isinstance(report["clips"], bool)
                              or report["clips"] < 1):
        raise SimError(f"{path}: 'clips' is {report['clips']!r}; a report covers at least 1 clip; {hint}")
    layers = report["layers"]
    if not isinstance(layers, list) or not layers:
        raise SimError(f"{path}: 'layers' must be a non-empty list of per-layer rows; {hint}")
    for i, row in enumerate(layers):
        if not isinstance(row, dict):
            raise SimError(f"{path}: layers[{i}] is a {type(row).__name__}, not an object; {hint}")
        lacking = [k for k in REQUIRED_LAYER_KEYS if k not in row]
        if lacking:
            raise SimError(f"{path}: layers[{i}] ({row.get('name', '?')}) is missing "
                           f"{', '.join(repr(k) for k in lacking)}; {hint}")
        for k in ("energy_pj_measured", "energy_pj_analytic"):
            if not _is_number(row[k]):
                raise SimError(f"{path}: layers[{i}] ({row['name']}) {k!r} is {row[k]!r}, not a number")
            if not _nonneg(row[k]):
                raise SimError(f"{path}: layers[{i}] ({row['name']}) {k!r} is {row[k]!r}, not a finite "
                               "number >= 0")
    return report


def report_labels(paths: Sequence[str | Path]) -> list[str]:
    """Column labels for reports: the file stem, or ``parent/stem`` where stems repeat.

    Parameters
    ----------
    paths : sequence of str or Path

    Returns
    -------
    list of str, one per path, in order.
    """
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    labels = [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    # still equal (same parent name too): number them
    return [f"{lab}#{i + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


# ----------------------------------------------------------------------------- formatting

def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _count(x) -> str:
    """Integer-like count with thousands separators; "n/a" for None."""
    return _NA if not _is_number(x) else f"{x:,.0f}"


def _sig(x, digits: int = 4) -> str:
    """Number with ``digits`` significant digits; "n/a" for None."""
    return _NA if not _is_number(x) else f"{x:.{digits}g}"


def _pct(x) -> str:
    return _NA if not _is_number(x) else f"{x:.2f}%"


def _ratio(x) -> str:
    return _NA if not _is_number(x) else f"{x:.3f}"


def _uj(pj) -> float | None:
    return pj / PJ_PER_UJ if _is_number(pj) else None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1,
           rule_before: Iterable[int] = ()) -> list[str]:
    """Fixed-width text table: the first ``left`` columns left-aligned, the rest right-aligned.

    ``rule_before`` lists row indices before which a dashed rule is drawn.
    """
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]

    def line(cells):
        return "  ".join(str(v).ljust(w) if c < left else str(v).rjust(w)
                         for c, (v, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule]
    rules = set(rule_before)
    for i, r in enumerate(rows):
        if i in rules:
            out.append(rule)
        out.append(line(r))
    return out


def verdict(report: dict) -> str:
    """One line: ``bit-exact on N/N clips`` or ``NOT bit-exact: k of N clips diverge — <first>``.

    Parameters
    ----------
    report : dict
        A replay report (uses ``clips``, ``bit_exact``, ``mismatches``, ``events_equal``).

    Returns
    -------
    str
    """
    clips = report.get("clips")
    n = clips if _is_number(clips) else "?"
    mismatches = report.get("mismatches") or []
    if report.get("bit_exact"):
        text = f"bit-exact on {n}/{n} clips"
    elif mismatches:
        first = mismatches[0]
        msg = first.get("message") or f"clip {first.get('clip', '?')}"
        text = f"NOT bit-exact: {len(mismatches)} of {n} clips diverge — {msg}"
    else:
        text = f"NOT bit-exact on {n} clips (no mismatch recorded in the report)"
    if report.get("events_equal") is False:
        text += "; Lava and twin synaptic event counts differ"
    return text


def format_table(report: dict) -> str:
    """Per-layer table of a replay report, a totals line, the energy model and the verdict.

    Columns: layer, neurons, firing rate (spikes per neuron per time step), spikes per clip,
    measured synaptic events per clip, analytic SOPs per clip (eq. 33), measured and analytic
    energy in µJ per clip, and their ratio (measured / analytic, "n/a" where the analytic
    energy is 0).

    Parameters
    ----------
    report : dict
        A replay report as returned by :func:`load_report`.

    Returns
    -------
    str
        Several lines, no trailing newline.
    """
    header = ["layer", "neurons", "fire rate", "spikes/clip", "syn events/clip", "SOPs/clip (analytic)",
              "E meas [µJ/clip]", "E analytic [µJ/clip]", "meas/analytic"]
    layers = report["layers"]
    rows = []
    for r in layers:
        rows.append([str(r["name"]), _count(r.get("neurons")), _sig(r.get("firing_rate")),
                     _count(r.get("spikes")), _count(r.get("synaptic_events")),
                     _count(r.get("analytic_sops")), _sig(_uj(r["energy_pj_measured"])),
                     _sig(_uj(r["energy_pj_analytic"])), _ratio(r.get("ratio"))])

    def total(key):
        vals = [r.get(key) for r in layers]
        return sum(vals) if vals and all(_is_number(v) for v in vals) else None

    neurons, spikes = total("neurons"), total("spikes")
    T = report.get("time_steps")
    rate = spikes / (neurons * T) if neurons and spikes is not None and _is_number(T) and T else None
    e_meas = report["energy_mj_measured_per_clip"] * UJ_PER_MJ
    e_ana = report.get("energy_mj_analytic_per_clip")
    e_ana = e_ana * UJ_PER_MJ if _is_number(e_ana) else _uj(total("energy_pj_analytic"))
    syn = report.get("synaptic_events_per_clip", total("synaptic_events"))
    sops = report.get("analytic_sops_per_clip", total("analytic_sops"))
    ratio = report.get("energy_ratio_measured_over_analytic")
    rows.append(["total", _count(neurons), _sig(rate), _count(spikes), _count(syn), _count(sops),
                 _sig(e_meas), _sig(e_ana), _ratio(ratio)])

    title = (f"replay report: arch {report.get('arch') or _NA}, {report.get('clips', '?')} clips, "
             f"{T if _is_number(T) else '?'} time steps")
    lines = [title, *_table(header, rows, rule_before=[len(rows) - 1])]
    lines.append(f"per clip: E measured {_sig(e_meas)} µJ ({_sig(report['energy_mj_measured_per_clip'])} mJ), "
                 f"E analytic {_sig(e_ana)} µJ; host MACs {_count(report.get('host_macs_per_clip'))}")
    em = report.get("energy_model")
    if isinstance(em, dict):
        lines.append(f"energy model: E_MAC {_sig(em.get('e_mac_pj'))} pJ, E_AC {_sig(em.get('e_ac_pj'))} pJ"
                     + (f" ({em['source']})" if em.get("source") else ""))
    hops = report.get("events_per_hop_per_clip")
    if isinstance(hops, dict) and hops:
        kinds: dict = {}
        for key, val in hops.items():
            kind = str(key).rsplit("/", 1)[-1]
            if _is_number(val):
                kinds[kind] = kinds.get(kind, 0.0) + float(val)
        lines.append("synaptic events per clip by Lava hop: "
                     + ", ".join(f"{k} {_count(v)}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    if _is_number(report.get("lava_processes")):
        lines.append(f"Lava processes: {report['lava_processes']}")
    lines.append(verdict(report))
    lines.append(f"lava top-1 {_pct(report.get('lava_top1'))} | twin top-1 {_pct(report.get('twin_top1'))}")
    return "\n".join(lines)


def compare_reports(reports: Sequence[tuple[str, dict]]) -> str:
    """Side-by-side table of several replay reports, one column per report.

    Rows: arch, clips, bit_exact, lava and twin top-1 (%), host MACs, synaptic events and
    analytic SOPs per clip, measured and analytic energy in mJ per clip and their ratio,
    then the measured energy of every layer in µJ per clip (union of the layer names in
    order of first appearance; "-" where a report has no such layer).

    Parameters
    ----------
    reports : sequence of (label, report)
        Labels become the column headers (e.g. file stems, see :func:`report_labels`).

    Returns
    -------
    str
        Several lines, no trailing newline.
    """
    labels = [lab for lab, _ in reports]
    data = [rep for _, rep in reports]

    def bit_exact(r):
        if "bit_exact" not in r:
            return _NA
        if r["bit_exact"]:
            return "yes"
        return f"no ({len(r.get('mismatches') or [])} of {r.get('clips', '?')} diverge)"

    fields: list[tuple[str, Callable[[dict], str]]] = [
        ("arch", lambda r: str(r.get("arch") or _NA)),
        ("clips", lambda r: _count(r.get("clips"))),
        ("bit_exact", bit_exact),
        ("lava top-1", lambda r: _pct(r.get("lava_top1"))),
        ("twin top-1", lambda r: _pct(r.get("twin_top1"))),
        ("host MACs/clip", lambda r: _count(r.get("host_macs_per_clip"))),
        ("synaptic events/clip", lambda r: _count(r.get("synaptic_events_per_clip"))),
        ("analytic SOPs/clip", lambda r: _count(r.get("analytic_sops_per_clip"))),
        ("E measured [mJ/clip]", lambda r: _sig(r.get("energy_mj_measured_per_clip"))),
        ("E analytic [mJ/clip]", lambda r: _sig(r.get("energy_mj_analytic_per_clip"))),
        ("ratio meas/analytic", lambda r: _ratio(r.get("energy_ratio_measured_over_analytic"))),
    ]
    rows = [[name, *(f(r) for r in data)] for name, f in fields]

    names: list[str] = []
    for r in data:
        for layer in r.get("layers") or []:
            if layer["name"] not in names:
                names.append(layer["name"])
    per_layer = [{layer["name"]: layer for layer in r.get("layers") or []} for r in data]
    first_layer_row = len(rows) + 1
    rows.append(["E measured per layer [µJ/clip]", *([""] * len(data))])
    for n in names:
        rows.append([f"  {n}", *(_sig(_uj(p[n]["energy_pj_measured"])) if n in p else "-" for p in per_layer)])
    return "\n".join(_table(["", *labels], rows, rule_before=[first_layer_row - 1]))


# ----------------------------------------------------------------------------- plotting

def _atomic_savefig(fig, path: Path) -> Path:
    """Save ``fig`` as PNG via :func:`mksgn.checkpoint.atomic_write` (temp file + rename)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def _paired_bars(fig, ax, path: Path, labels, meas, ana, *, rotation: int, ylabel: str, title: str) -> Path:
    """Measured vs analytic grouped bars (log axis when wide), saved atomically to ``path``."""
    x = list(range(len(labels)))
    ax.bar([i - 0.2 for i in x], meas, width=0.4, label="measured (Lava events)", color="tab:blue")
    ax.bar([i + 0.2 for i in x], ana, width=0.4, label="analytic (eq. 33)", color="tab:orange")
    if _wide_range(meas + ana):
        ax.set_yscale("log")
    ax.set_xticks(x, labels, rotation=rotation, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _atomic_savefig(fig, path)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _wide_range(values) -> bool:
    """True if the positive values span more than two decades (use a log axis)."""
    pos = [v for v in values if _is_number(v) and v > 0]
    return len(pos) >= 2 and max(pos) / min(pos) > 100


def plot_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Write ``energy_per_layer.png`` and ``firing_rates.png`` for one replay report.

    ``energy_per_layer.png``: grouped bars, measured vs analytic energy per layer in µJ per
    clip (log axis when the values span more than two decades). ``firing_rates.png``:
    firing rate per layer (spikes per neuron per time step). Each file is written
    atomically (temp file in ``out_dir``, then ``os.replace``).

    Parameters
    ----------
    report : dict
        A replay report as returned by :func:`load_report`.
    out_dir : str or Path
        Folder, created if missing.

    Returns
    -------
    list of Path
        The two PNG paths.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    layers = report["layers"]
    names = [str(r["name"]) for r in layers]
    meas = [_uj(r["energy_pj_measured"]) for r in layers]
    ana = [_uj(r["energy_pj_analytic"]) for r in layers]
    x = list(range(len(names)))
    clips = report.get("clips", "?")
    exact = (f"bit-exact on {clips}/{clips} clips" if report.get("bit_exact")
             else f"NOT bit-exact ({len(report.get('mismatches') or [])} of {clips} clips diverge)")
    title = f"{report.get('arch') or 'export'}: {exact}"
    width = max(6.0, 0.6 * len(names) + 2)
    paths = []

    fig, ax = plt.subplots(figsize=(width, 4.2))
    try:
        paths.append(_paired_bars(fig, ax, out_dir / "energy_per_layer.png", names, meas, ana, rotation=45,
                                  ylabel="energy per clip [µJ]", title=title))
    finally:
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(width, 3.8))
    try:
        ax.bar(x, [r.get("firing_rate") or 0.0 for r in layers], color="tab:green")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("firing rate [spikes / neuron / step]")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        paths.append(_atomic_savefig(fig, out_dir / "firing_rates.png"))
    finally:
        plt.close(fig)
    return paths


def plot_comparison(reports: Sequence[tuple[str, dict]], path: str | Path) -> Path:
    """Bar chart of measured vs analytic energy in mJ per clip, one bar pair per report.

    Parameters
    ----------
    reports : sequence of (label, report)
    path : str or Path
        The PNG to write (atomically; its folder is created if missing).

    Returns
    -------
    Path
    """
    plt = _pyplot()
    labels = [lab for lab, _ in reports]
    meas = [r.get("energy_mj_measured_per_clip") for _, r in reports]
    ana = [r.get("energy_mj_analytic_per_clip") for _, r in reports]
    meas = [v if _is_number(v) else math.nan for v in meas]
    ana = [v if _is_number(v) else math.nan for v in ana]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(labels) + 2), 4.2))
    try:
        return _paired_bars(fig, ax, Path(path), labels, meas, ana, rotation=20, ylabel="energy per clip [mJ]",
                            title="energy per clip: measured vs analytic")
    finally:
        plt.close(fig)
