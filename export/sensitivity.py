"""Does a model survive Loihi's integer arithmetic? Float vs quantised top-1, where the two
networks part ways layer by layer, and how much top-1 moves under changes far smaller than
quantisation (the model's own noise floor).

Why the noise floor: a spiking network with hard thresholds is discontinuous in its weights.
A change of one part in 10⁴ to the weights moves a few membrane potentials across the
threshold, each flipped spike changes the next layer's input, and by the last layer a few
percent of the clips change their prediction. For the shipped MK-SGN (width 0.25, 464 NW-UCLA
test clips) float top-1 moves by more than a point under such changes, in both directions.
A quantisation loss inside that spread is the model's sensitivity, not a defect of the
integer rules; one outside it points at a specific layer (see :func:`divergence_profile`).

Own code: no library measures spike divergence between a float network and its Loihi
fixed-point twin. Both networks run in :func:`export.twin.run_graph` (float and integer
mode of the same graph), so the comparison is group by group, time step by time step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mksgn.checkpoint import atomic_write
from mksgn.data import SkeletonDataset
from mksgn.errors import MksgnError

from .errors import ExportError
from .frontend import from_checkpoint
from .ir import INPUT, Graph
from .passes import SPLIT_KINDS, quantise
from .pipeline import calibration_clips, default_weight_split, fold_all, graph_input, input_modalities
from .twin import run_graph

__all__ = ["predict", "divergence_profile", "perturbation_floor", "verdict", "quant_check",
           "format_divergence", "plot_quant_check"]

#: Default relative weight perturbation of the noise floor: 1e-4, about 1/40 of the largest
#: relative rounding error of an 8-bit mantissa (2^-8 ≈ 3.9e-3), so the floor measures the
#: model's sensitivity, not a second quantisation.
DEFAULT_EPS = 1e-4
#: A group is a divergence *hot spot* when its flips per float spike exceed HOT_MIN_RATE and
#: HOT_FACTOR times the largest rate among its source groups. Flips grow naturally by 2–3x
#: per group (shipped MK-SGN); 5x means the group's own arithmetic adds most of them.
HOT_MIN_RATE = 0.01
HOT_FACTOR = 5.0


def predict(graph: Graph, x: torch.Tensor, mode: str, batch_size: int = 32,
            progress: bool = False, desc: str = "") -> torch.Tensor:
    """Predicted class per clip. ``x``: ``(N, C, T, V, M)``; returns ``(N,)`` int64.

    ``mode="float"`` runs the float graph (equal to the PyTorch model), ``"int"`` the
    quantised graph in Loihi integer arithmetic (:func:`export.twin.run_graph`)."""
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc or f"{mode} twin", unit="batch",
                  disable=not progress, leave=False):
        out.append(run_graph(graph, x[i:i + batch_size], mode=mode).logits.argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def divergence_profile(float_graph: Graph, int_graph: Graph, x: torch.Tensor, batch_size: int = 8,
                       progress: bool = False) -> list:
    """Spike disagreement between the float network and its integer twin, per neuron group.

    Both run on the same clips ``x`` ``(N, C, T, V, M)``; a *flip* is a (clip, time step,
    neuron) where one network spikes and the other does not. Groups are in graph
    (topological) order, so the first group with many flips is where the integer network
    starts to part ways; later groups inherit the flips of earlier ones.

    Returns
    -------
    list of dict, one per group: ``group``, ``layer``, ``neurons``, ``spikes_float``,
    ``spikes_int``, ``flips``, ``flips_per_spike`` (flips / float spikes),
    ``source_flips_per_spike`` (the largest of its source groups; 0 for the host-fed first
    group), ``hot_spot`` (flips per spike above ``HOT_MIN_RATE`` and more than ``HOT_FACTOR``
    times its sources': this group's own integer arithmetic, not inherited flips, makes the
    difference — e.g. a bias or weight that sits on the threshold), ``worst_channel`` and
    ``worst_channel_share`` (the channel with most flips and its share of them).

    Raises
    ------
    ExportError
        ``int_graph`` not quantised, or the graphs have different groups.
    """
    if not int_graph.quantised:
        raise ExportError("divergence_profile needs the quantised graph as int_graph")
    if list(float_graph.groups) != list(int_graph.groups):
        raise ExportError("float and quantised graphs have different neuron groups; "
                          "quantise the same folded graph")
    acc = {name: {"spikes_float": 0, "spikes_int": 0, "flips": 0, "per_channel": None}
           for name in float_graph.groups}
    for i in tqdm(range(0, len(x), batch_size), desc="divergence", unit="batch",
                  disable=not progress, leave=False):
        xb = x[i:i + batch_size]
        rf = run_graph(float_graph, xb, mode="float", record=True)
        ri = run_graph(int_graph, xb, mode="int", record=True)
        for name, a in acc.items():
            sf, si = rf.spikes[name], ri.spikes[name]  # (T_s, B, C, T, V) int8
            d = sf != si
            a["spikes_float"] += int(sf.sum())
            a["spikes_int"] += int(si.sum())
            a["flips"] += int(d.sum())
            ch = d.sum(dim=(0, 1, 3, 4)).numpy()
            a["per_channel"] = ch if a["per_channel"] is None else a["per_channel"] + ch
    rows, rate = [], {}
    for name, a in acc.items():
        g = float_graph.groups[name]
        ch = a["per_channel"]
        worst = int(np.argmax(ch)) if a["flips"] else None
        rate[name] = a["flips"] / max(a["spikes_float"], 1)
        sources = {u for s in float_graph.incoming(name) for u in s.sources if u != INPUT}
        inherited = max((rate[u] for u in sources), default=0.0)
        rows.append({"group": name, "layer": g.layer, "neurons": int(np.prod(g.shape)),
                     "spikes_float": a["spikes_float"], "spikes_int": a["spikes_int"],
                     "flips": a["flips"], "flips_per_spike": rate[name],
                     "source_flips_per_spike": inherited,
                     "hot_spot": bool(rate[name] > HOT_MIN_RATE and rate[name] > HOT_FACTOR * inherited),
                     "worst_channel": worst,
                     "worst_channel_share": float(ch[worst] / a["flips"]) if a["flips"] else 0.0})
    return rows


def _perturbed(graph: Graph, eps: float, rng: np.random.Generator) -> Graph:
    g = graph.copy()
    for s in g.synapses.values():
        s.weight = s.weight * (1.0 + eps * rng.standard_normal(s.weight.shape))
    return g


def perturbation_floor(float_graph: Graph, x: torch.Tensor, labels: torch.Tensor, eps: float = DEFAULT_EPS,
                       runs: int = 8, seed: int = 0, batch_size: int = 32, progress: bool = False,
                       reference: torch.Tensor | None = None) -> dict:
    """Top-1 of the float network under ``runs`` independent random weight perturbations.

    Every synapse weight ``w`` (all synapse groups, readout included; biases and
    thresholds untouched) becomes ``w·(1 + eps·z)``, ``z ~ N(0, 1)`` per weight, drawn from
    ``numpy.random.default_rng(seed)``. ``x``: ``(N, C, T, V, M)``; ``labels``: ``(N,)``.

    Returns
    -------
    dict: ``eps``, ``runs``, ``seed``, ``top1`` (list, percent), ``mean``, ``std`` (sample,
    ddof 1; 0 for one run), ``min``, ``max``, ``changed`` (list: predictions that differ from
    the unperturbed float network, per run; ``reference`` may pass those predictions).

    Raises
    ------
    ExportError
        ``runs < 1`` or ``eps < 0``.
    """
    if runs < 1 or eps < 0:
        raise ExportError(f"the noise floor needs runs >= 1 and eps >= 0 (got runs={runs}, eps={eps})")
    if reference is None:
        reference = predict(float_graph, x, "float", batch_size)
    rng = np.random.default_rng(seed)
    top1, changed = [], []
    for _ in tqdm(range(runs), desc=f"noise floor (eps {eps:g})", unit="run", disable=not progress,
                  leave=False):
        p = predict(_perturbed(float_graph, eps, rng), x, "float", batch_size)
        top1.append(float(100 * (p == labels).double().mean()))
        changed.append(int((p != reference).sum()))
    return {"eps": float(eps), "runs": int(runs), "seed": int(seed), "top1": top1,
            "mean": float(np.mean(top1)), "std": float(np.std(top1, ddof=1)) if runs > 1 else 0.0,
            "min": float(min(top1)), "max": float(max(top1)), "changed": changed}


def verdict(float_top1: float, int_top1: float, floor: dict | None, max_loss: float = 0.5) -> tuple:
    """``(status, sentence)`` for a quantisation loss ``float_top1 − int_top1`` (points).

    ``status``: ``"ok"`` (loss ≤ ``max_loss``), ``"noise"`` (loss larger, but the quantised
    top-1 is not below the lowest top-1 of the float network's perturbed runs, i.e. inside
    its own noise floor), ``"loss"`` (below the floor, or no floor measured).
    """
    loss = float_top1 - int_top1
    if loss <= max_loss:
        return "ok", f"quantisation loss {loss:+.2f} points is within the {max_loss:g}-point budget"
    if floor is not None and int_top1 >= floor["min"]:
        return "noise", (f"quantisation loss {loss:+.2f} points exceeds the {max_loss:g}-point budget but "
                         f"lies inside the float model's own noise floor (top-1 {floor['min']:.2f}–"
                         f"{floor['max']:.2f} % under relative weight changes of {floor['eps']:g}): the "
                         "model is this sensitive to any change, integer or not, so finer arithmetic "
                         "would not shrink it; a model with larger logit margins would")
    return "loss", (f"quantisation loss {loss:+.2f} points exceeds the {max_loss:g}-point budget and the "
                    "float model's noise floor: look at the hot spots (groups flipping far more than "
                    "their sources) in the divergence table")


def _load_split(data_root, split: str, modalities: list, progress: bool, data: dict | None = None):
    data = data or {}
    try:  # the data must fit the checkpoint's layout (data record ``data``)
        ds = SkeletonDataset(data_root, split, tuple(modalities), data.get("protocol"), train=False,
                             progress=progress, layout=data.get("layout"))
    except MksgnError as exc:
        raise ExportError(f"evaluation data: {exc}") from None
    xs, ys = [], []
    for x, y in tqdm(DataLoader(ds, batch_size=64), desc=f"loading {split}", unit="batch",
                     disable=not progress, leave=False):
        xs.append(graph_input(x, modalities))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys), ds


def quant_check(checkpoint: str | Path, data_root: str | Path, split: str = "test",
                calib_data: str | Path | None = None, calib_clips: int = 64, runs: int = 8,
                eps: float = DEFAULT_EPS, divergence_clips: int = 16, max_loss: float = 0.5,
                clips: int | None = None, progress: bool = True,
                weight_split: Sequence[str] | None = None) -> dict:
    """Float vs Loihi-integer top-1 of a checkpoint, the divergence profile and the noise floor.

    The checkpoint is lowered exactly as ``mksgn-export`` does (same passes, same
    calibration clips from ``calib_data``, default ``data_root``), then the float graph
    (equal to the PyTorch model) and the quantised graph (bit-exact to Lava,
    ``hw_sim``) run on the clips of ``split``.

    Parameters
    ----------
    clips : int, optional
        Use only the first ``clips`` clips of the split (default: all).
    divergence_clips : int
        Clips for :func:`divergence_profile` (records every group; memory ∝ clips).
    runs, eps :
        :func:`perturbation_floor`; ``runs=0`` skips it.
    weight_split : synapse kinds given a low-mantissa partner (as ``mksgn-export --weight-split``);
        None: the export's default for the checkpoint (plain 8-bit after quantisation-aware
        training, else split; :func:`export.pipeline.default_weight_split`). The verdict, the
        divergence table and ``int_top1`` are this mapping's.

    Returns
    -------
    dict: ``checkpoint``, ``split``, ``clips``, ``float_top1``, ``int_top1``, ``loss`` (points),
    ``changed`` (clips whose prediction differs), ``divergence`` (rows), ``floor`` (or None),
    ``status`` and ``verdict`` (:func:`verdict`), ``max_loss``, ``hot_spots`` (groups flagged by
    :func:`divergence_profile`), ``quantisation`` (per group scale, vth_mant, limiting constraint),
    ``weight_split`` (the kinds of this mapping) and ``mappings``: plain 8-bit and split side by
    side, each ``{"name", "weight_split", "int_top1", "loss", "changed", "spike_synapses"}``
    (``spike_synapses``: synapse groups driven by spikes, each costing its events; the split
    doubles the split kinds') at the same calibrated scales.

    Raises
    ------
    ExportError
        Bad checkpoint, data, or options.
    """
    if divergence_clips < 1 or runs < 0 or (clips is not None and clips < 1):
        raise ExportError("--divergence-clips and --clips must be at least 1 and --runs at least 0")
    graph, ckpt = from_checkpoint(checkpoint)
    mods = input_modalities(ckpt["data"])
    calib = calibration_clips(calib_data or data_root, mods, calib_clips, progress=progress,
                              layout=ckpt["data"]["layout"], protocol=ckpt["data"].get("protocol"))
    folded = fold_all(graph)
    if weight_split is None:
        weight_split = default_weight_split(ckpt)
    q_split = quantise(folded, calib, weight_split=SPLIT_KINDS)
    scales = {"input_frac_bits": q_split.meta["input_frac_bits"],
              "groups": {n: g.scale for n, g in q_split.groups.items()}}  # S does not depend on the split
    q_plain = quantise(folded, None, weight_split=(), scales=scales)
    if not weight_split:
        q = q_plain
    elif sorted(weight_split) == sorted(SPLIT_KINDS):
        q = q_split
    else:
        q = quantise(folded, None, weight_split=weight_split, scales=scales)
    x, y, ds = _load_split(data_root, split, mods, progress, ckpt["data"])
    if clips is not None:
        x, y = x[:clips], y[:clips]
    pf = predict(folded, x, "float", progress=progress, desc="float twin")
    mappings = []
    for name, qm in (("plain 8-bit", q_plain), ("split", q_split)):
        pm = predict(qm, x, "int", progress=progress, desc=f"integer twin, {name}")
        top = float(100 * (pm == y).double().mean())
        mappings.append({"name": name, "weight_split": qm.meta["quantisation"]["weight_split"], "int_top1": top,
                         "loss": float(100 * (pf == y).double().mean()) - top, "changed": int((pf != pm).sum()),
                         "spike_synapses": sum(1 for s in qm.synapses.values() if s.kind != "input_conv"),
                         "_pred": pm})
    pi = next((m["_pred"] for m in mappings if m["weight_split"] == q.meta["quantisation"]["weight_split"]), None)
    if pi is None:
        pi = predict(q, x, "int", progress=progress, desc="integer twin")
    for m in mappings:
        del m["_pred"]
    f1, i1 = float(100 * (pf == y).double().mean()), float(100 * (pi == y).double().mean())
    div = divergence_profile(folded, q, x[:divergence_clips], progress=progress)
    floor = perturbation_floor(folded, x, y, eps, runs, progress=progress, reference=pf) if runs else None
    status, sentence = verdict(f1, i1, floor, max_loss)
    return {"checkpoint": str(checkpoint), "split": split, "clips": int(len(y)), "float_top1": f1,
            "int_top1": i1, "loss": f1 - i1, "changed": int((pf != pi).sum()),
            "divergence_clips": int(min(divergence_clips, len(y))), "divergence": div, "floor": floor,
            "status": status, "verdict": sentence, "max_loss": float(max_loss),
            "hot_spots": [r["group"] for r in div if r["hot_spot"]],
            "quantisation": q.meta["quantisation"]["groups"],
            "weight_split": q.meta["quantisation"]["weight_split"], "mappings": mappings}


def format_divergence(rows: list) -> str:
    """The divergence profile as a fixed-width table (one line per neuron group)."""
    head = (f"{'neuron group':<28} {'float spikes':>12} {'int spikes':>12} {'flips':>9} {'flips/spike':>11} "
            f"{'sources':>8}  worst channel")
    lines = [head, "-" * len(head)]
    for r in rows:
        worst = "" if r["worst_channel"] is None else f"{r['worst_channel']} ({100 * r['worst_channel_share']:.0f} %)"
        lines.append(f"{r['group']:<28} {r['spikes_float']:>12,} {r['spikes_int']:>12,} {r['flips']:>9,} "
                     f"{r['flips_per_spike']:>11.4f} {r['source_flips_per_spike']:>8.4f}  {worst}"
                     + ("   <- hot spot" if r["hot_spot"] else ""))
    return "\n".join(lines)


def plot_quant_check(result: dict, out_dir: str | Path) -> list:
    """``divergence.png`` (flips per float spike per group, log axis, graph order) and, with a
    noise floor, ``noise_floor.png`` (perturbed float top-1 against float and integer top-1).
    Written atomically into ``out_dir`` (created). Returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    rows = result["divergence"]
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.18 * len(rows)))
    vals = [max(r["flips_per_spike"], 1e-6) for r in rows]
    ax.barh(range(len(rows)), vals, color=["tab:red" if r["hot_spot"] else "tab:blue" for r in rows])
    ax.set_yticks(range(len(rows)), [r["group"] for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("spike flips per float spike, integer vs float network (red: hot spot)")
    ax.set_title(f"where the integer network parts from the float one ({result['divergence_clips']} clips)",
                 fontsize=9)
    fig.tight_layout()
    paths.append(atomic_write(out_dir / "divergence.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png")))
    plt.close(fig)
    floor = result.get("floor")
    if floor:
        fig, ax = plt.subplots(figsize=(6, 2.4))
        ax.plot(floor["top1"], np.zeros(len(floor["top1"])), "o", color="tab:grey", alpha=0.7,
                label=f"float, weights × (1 + {floor['eps']:g}·z), {floor['runs']} runs")
        ax.axvline(result["float_top1"], color="tab:blue", label=f"float {result['float_top1']:.2f} %")
        ax.axvline(result["int_top1"], color="tab:red", ls="--", label=f"integer {result['int_top1']:.2f} %")
        ax.set_yticks([])
        ax.set_xlabel(f"top-1 (%) on {result['clips']} {result['split']} clips")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        paths.append(atomic_write(out_dir / "noise_floor.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png")))
        plt.close(fig)
    return paths
