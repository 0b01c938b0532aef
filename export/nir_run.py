"""Run a NIR export in another framework (snntorch) on real clips and compare it with our
float model.

``mksgn-export CHECKPOINT --target nir`` writes ``network.nir``
(:mod:`export.writers.nir_writer`); :func:`import_snntorch` hands it to snntorch's own
importer (``snntorch.import_nir.import_from_nir``, which builds a ``torch.fx`` module with
nirtorch: ``Conv2d`` → ``torch.nn.Conv2d``, ``CubaLIF`` → ``snn.Synaptic``, ``AvgPool2d``,
``Flatten``, ``Affine`` → ``torch.nn.Linear``; several edges into one node are summed).
Nothing here re-implements a NIR node: :class:`SnntorchRunner` only does what the graph's
metadata says the host does (quantise the clip, feed it at each of ``time_steps`` steps,
sum the readout) and records the spikes of every ``Synaptic`` with forward hooks.

One clip at a time: NIR shapes carry no batch axis and the graph's ``Flatten`` starts at
axis 0, so a batch would be flattened with the features.

:func:`agreement` compares, on real clips, the snntorch run with the checkpoint's PyTorch
float model (predictions, and per neuron group the fraction of (time step, neuron) spike
values that are equal) and, given the quantised IR, with the Loihi integer twin. Agreement
is a fraction, not an equality: NIR is float (the integer decays, the 24-bit wrap of ``u``
and the clip of ``v`` are not carried), the export quantises the weights to 8-bit mantissas,
and snntorch sums in float32 in its own order; a spike whose membrane lands on the threshold
flips, and the flip propagates to later layers.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import nir
import numpy as np
import snntorch as snn
import torch
from snntorch.import_nir import import_from_nir
from tqdm import tqdm

from mksgn.data import SkeletonDataset
from mksgn.errors import MksgnError
from mksgn.evaluate import load_model

from .errors import ExportError
from .exporter import verified_bytes, verify_export_dir
from .ir import Graph
from .pipeline import graph_input, input_modalities
from .twin import quantise_input, run_graph

__all__ = ["read_nir_export", "import_snntorch", "SnntorchRunner", "nir_layout", "float_reference", "agreement",
           "format_agreement"]


def read_nir_export(export_dir: str | Path) -> tuple[nir.NIRGraph, dict]:
    """Verify a NIR export directory and read its ``network.nir`` (the verified bytes).

    Returns ``(NIR graph, manifest)``.

    Raises
    ------
    ExportError
        Not an export directory, tampered files, another target, or a file nir cannot read.
    """
    export_dir = Path(export_dir)
    manifest = verify_export_dir(export_dir)
    if manifest["target"] != "nir":
        raise ExportError(f"{export_dir}: a {manifest['target']} export; snntorch runs NIR exports "
                          "(mksgn-export CHECKPOINT --target nir)")
    raw = verified_bytes(export_dir, "network.nir", manifest)
    try:
        return nir.read(io.BytesIO(raw)), manifest
    except Exception as exc:  # h5py / nir raise their own types for a damaged file
        raise ExportError(f"{export_dir / 'network.nir'}: not a readable NIR graph ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); re-export") from None


def import_snntorch(graph: nir.NIRGraph) -> torch.nn.Module:
    """``snntorch.import_nir.import_from_nir(graph)``, its diagnostic prints captured (it prints
    the threshold rescaling of every CubaLIF, whole arrays). The module maps one time step:
    ``out, state = module(x)``; the neurons keep their state between calls (``init_hidden``).

    Raises
    ------
    ExportError
        snntorch or nirtorch refuses the graph (the message is theirs).
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return import_from_nir(graph)
    except (AssertionError, ValueError, NotImplementedError, KeyError, TypeError) as exc:
        raise ExportError(f"snntorch cannot import this NIR graph: {type(exc).__name__}: {exc}") from None


class SnntorchRunner:
    """Run an imported NIR graph clip by clip, step by step.

    Parameters
    ----------
    graph : nir.NIRGraph
        An export of :mod:`export.writers.nir_writer` (metadata ``time_steps``,
        ``input_frac_bits``; CubaLIF nodes named as the IR's neuron groups).
    dtype : torch.dtype
        Of the imported module (nirtorch builds float32).

    Attributes
    ----------
    module : the snntorch / nirtorch ``GraphModule``.
    groups : list of neuron-group names (the graph's CubaLIF nodes), in graph order.

    Raises
    ------
    ExportError
        Metadata of another producer, a graph snntorch refuses, or a CubaLIF that snntorch did
        not import as ``snn.Synaptic``.
    """

    def __init__(self, graph: nir.NIRGraph, dtype: torch.dtype = torch.float32):
        meta = graph.metadata or {}
        if "time_steps" not in meta or "input_frac_bits" not in meta:
            raise ExportError("NIR graph metadata lacks time_steps / input_frac_bits: not an mksgn export")
        self.time_steps, self.frac_bits = int(meta["time_steps"]), int(meta["input_frac_bits"])
        self.shapes = {n: tuple(int(d) for d in node.input_type["input"]) for n, node in graph.nodes.items()
                       if isinstance(node, nir.CubaLIF)}
        self.groups = list(self.shapes)
        self.module = import_snntorch(graph).to(dtype)
        self.dtype = dtype
        mods = dict(self.module.named_modules())
        self._neurons = []
        self._spikes = {}
        for name in self.groups:
            mod = mods.get(name.replace(".", "_"))
            if not isinstance(mod, snn.Synaptic):
                raise ExportError(f"snntorch imported CubaLIF {name!r} as {type(mod).__name__}, not snn.Synaptic")
            self._neurons.append(mod)
            mod.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def record(_mod, _inp, out):
            self._spikes[name].append(out.detach() > 0)
        return record

    def run(self, clip: torch.Tensor, record: bool = True) -> tuple[torch.Tensor, dict]:
        """One clip ``(C, T, V, 1)`` (metres, preprocessed): the host input
        ``round(x · 2^input_frac_bits)`` as ``(C·V, T, 1)`` at each of ``time_steps`` steps
        from rest.

        Returns
        -------
        logits : Tensor ``(classes,)``, float64 — the sum over steps of the readout (the
            integer twin's units).
        spikes : dict group → bool Tensor ``(time_steps, C·V, T)``, the NIR layout
            (``record``; :func:`nir_layout` maps the IR's ``(…, C, T, V)`` to it).
        """
        if clip.dim() != 4 or clip.shape[-1] != 1:
            raise ExportError(f"clip of shape {tuple(clip.shape)}: expected (C, T, V, 1), one body")
        x = nir_layout(quantise_input(clip[..., 0], self.frac_bits)).unsqueeze(-1).to(self.dtype)
        for mod in self._neurons:
            mod.reset_mem()
        self._spikes = {n: [] for n in self.groups}
        logits = 0
        with torch.no_grad():
            for _ in range(self.time_steps):
                out, _state = self.module(x)
                logits = logits + out.double()
        spikes = {n: torch.stack(steps)[..., 0] for n, steps in self._spikes.items()} if record else {}
        self._spikes = {}
        return logits, spikes


def nir_layout(x: torch.Tensor) -> torch.Tensor:
    """``(…, C, T, V)`` → ``(…, C·V, T)`` (channel ``c·V + v``), the writer's layout without
    its trailing unit axis."""
    *lead, C, T, V = x.shape
    return x.transpose(-1, -2).reshape(*lead, C * V, T)


def float_reference(model: torch.nn.Module, clips: torch.Tensor, groups) -> tuple[torch.Tensor, dict]:
    """Our float model on ``clips`` ``(N, C, T, V, M)``: logits ``(N, classes)`` and the spikes
    of every LIF module named in ``groups`` (the IR's group names are the module paths), as
    bool ``(N, T_s, C·V, T)`` (:func:`nir_layout`).

    Raises
    ------
    ExportError
        A group the model has no module for.
    """
    mods = dict(model.named_modules())
    missing = [g for g in groups if g not in mods]
    if missing:
        raise ExportError(f"the float model has no neuron module(s) {missing}; is this the exported checkpoint?")
    rec, hooks = {}, []
    for g in groups:
        hooks.append(mods[g].register_forward_hook(
            lambda _m, _i, out, g=g: rec.__setitem__(g, _as_groups(out).transpose(0, 1))))
    try:
        with torch.no_grad():
            logits = model(clips)
    finally:
        for h in hooks:
            h.remove()
    return logits, rec


def _as_groups(out: torch.Tensor) -> torch.Tensor:
    """A LIF module's spikes ``(T_s, B, C, T, V)`` -- or the head's ``(T_s, B, C)``, whose IR
    group is ``(C, 1, 1)`` -- as bool ``(T_s, B, C·V, T)``."""
    out = out.detach() > 0
    return nir_layout(out[..., None, None] if out.dim() == 3 else out)


def agreement(export_dir: str | Path, checkpoint: str | Path, data_root: str | Path, clips: int = 32,
              split: str = "test", graph: Graph | None = None, progress: bool = True, chunk: int = 8) -> dict:
    """snntorch's run of a NIR export against our float model on the first ``clips`` clips of
    ``split`` (and against the integer twin when the quantised IR ``graph`` is given).

    Returns
    -------
    dict with ``clips``; ``top1`` (percent) of ``snntorch``, ``float`` (and ``twin``);
    ``prediction_agreement`` (fraction of clips whose argmax equals the float model's),
    ``spike_agreement`` (group → fraction of equal spike values over clips, steps and
    neurons), ``spike_agreement_min`` (the lowest group's), ``spike_rate`` (group →
    snntorch's spikes per neuron per step); with ``graph`` also
    ``prediction_agreement_twin``, ``spike_agreement_twin`` and its min.

    Raises
    ------
    ExportError
        A bad export directory or data folder, a checkpoint that is not the exported one.
    """
    nir_graph, manifest = read_nir_export(export_dir)
    runner = SnntorchRunner(nir_graph)
    model, _ = load_model(checkpoint)
    d = manifest["data"]
    mods = input_modalities(d)
    try:
        ds = SkeletonDataset(data_root, split, d["modalities"], d.get("protocol"), train=False, layout=d["layout"])
    except MksgnError as exc:
        raise ExportError(f"data: {exc}") from None
    n = min(int(clips), len(ds))
    names = runner.groups
    equal, equal_twin, fired, total = ({g: 0 for g in names} for _ in range(4))
    preds, f_preds, t_preds, labels = [], [], [], []
    bar = tqdm(total=n, desc="snntorch NIR", unit="clip", leave=False, disable=not progress)
    for start in range(0, n, chunk):  # the float model and the twin a chunk at a time (memory)
        idx = range(start, min(start + chunk, n))
        x = torch.stack([graph_input(ds[i][0], mods) for i in idx])
        labels += [int(ds[i][1]) for i in idx]
        f_logits, f_spikes = float_reference(model, x, names)
        f_preds += f_logits.argmax(1).tolist()
        t_res = run_graph(graph, x, mode="int", record=names) if graph is not None else None
        if t_res is not None:
            t_preds += t_res.logits.argmax(1).tolist()
        for j in range(len(x)):
            logits, spikes = runner.run(x[j])
            preds.append(int(logits.argmax()))
            for g, s in spikes.items():
                if s.shape != f_spikes[g][j].shape:
                    raise ExportError(f"{g}: snntorch spikes {tuple(s.shape)} but the float model's "
                                      f"{tuple(f_spikes[g][j].shape)}; is this the exported checkpoint?")
                equal[g] += int((s == f_spikes[g][j]).sum())
                fired[g] += int(s.sum())
                total[g] += s.numel()
                if t_res is not None:
                    equal_twin[g] += int((s == nir_layout(t_res.spikes[g][:, j] > 0)).sum())
            bar.update()
    bar.close()
    y, f_pred = torch.tensor(labels), torch.tensor(f_preds)
    preds = torch.tensor(preds)
    spike_agr = {g: equal[g] / total[g] for g in names}
    out = {"export": str(export_dir), "checkpoint": str(checkpoint), "split": split, "clips": n,
           "time_steps": runner.time_steps,
           "top1": {"snntorch": 100 * float((preds == y).float().mean()),
                    "float": 100 * float((f_pred == y).float().mean())},
           "prediction_agreement": float((preds == f_pred).float().mean()),
           "spike_agreement": spike_agr, "spike_agreement_min": min(spike_agr.values()),
           "spike_rate": {g: fired[g] / total[g] for g in names}}
    if graph is not None:
        t_pred = torch.tensor(t_preds)
        twin_agr = {g: equal_twin[g] / total[g] for g in names}
        out["top1"]["twin"] = 100 * float((t_pred == y).float().mean())
        out["prediction_agreement_twin"] = float((preds == t_pred).float().mean())
        out["spike_agreement_twin"] = twin_agr
        out["spike_agreement_twin_min"] = min(twin_agr.values())
    return out


def format_agreement(r: dict) -> str:
    """A table: one row per neuron group (spike rate, agreement with the float model and the
    twin), then predictions and top-1."""
    twin = "spike_agreement_twin" in r
    lines = [f"{'group':<22} {'rate':>6} {'= float':>8}" + (f" {'= twin':>8}" if twin else "")]
    for g, a in r["spike_agreement"].items():
        lines.append(f"{g:<22} {r['spike_rate'][g]:>6.3f} {a:>8.4f}"
                     + (f" {r['spike_agreement_twin'][g]:>8.4f}" if twin else ""))
    lines.append(f"predictions equal to the float model: {100 * r['prediction_agreement']:.1f} % of {r['clips']} "
                 f"clips" + (f"; to the integer twin: {100 * r['prediction_agreement_twin']:.1f} %" if twin else ""))
    lines.append("top-1 " + ", ".join(f"{k} {v:.1f} %" for k, v in r["top1"].items()))
    return "\n".join(lines)
