"""NIR writer: the quantised IR as a NIR graph (``nir.write``) that ``nir.read`` type-checks
and ``snntorch.import_nir.import_from_nir`` (snntorch 1.0, nirtorch 2.x) executes.

NIR is float and continuous-time; this is how the Loihi integers become NIR parameters.
Source of the NIR equations: ``nir/ir/neuron.py`` (nir 1.0.8), ``CubaLIF``::

    tau_syn · dI/dt = -I + w_in · S
    tau_mem · dv/dt = (v_leak - v) + r · I
    z = (v > v_threshold);  v = v_reset where z

Conventions (forward Euler with the time step :data:`DT` = 10⁻⁴ s, the fixed step of
snntorch's importer and of the NIR paper's reference runs; it reproduces Loihi's update
``u = (1 - (du+1)/4096)·u + 2^6·a_in``; ``v = (1 - dv/4096)·v + u + b``; see
:mod:`export.fixed_point`):

==============  =====================================================================
``S``           the summed synaptic input of all incoming edges, in Loihi ``a_in`` units
                (integer current per step)
weights         ``weight_mant · 2^weight_exp`` (float64, exact), i.e. ``a_in`` per spike;
                ``input_conv`` weights are per unit of the quantised host input
                ``round(x · 2^input_frac_bits)`` (graph metadata ``input_frac_bits``)
``tau_syn``     ``DT · 4096 / (du + 1)`` s (du = 4095 → DT: the current is the input)
``tau_mem``     ``DT · 4096 / dv`` s (dv = 0, a perfect integrator, is refused)
``w_in``        ``2^6 · tau_syn / DT`` (Euler's ``DT·w_in/tau_syn`` is Loihi's ``<< 6``)
``r``           ``tau_mem / DT`` (Euler's ``DT·r/tau_mem = 1``: Loihi adds ``u`` to ``v``)
``v``           Loihi's raw integer ``v`` units; ``v_threshold = vth_mant · 2^6``,
                ``v_reset = 0``, ``v_leak = 0``
bias            ``bias_mant · 2^bias_exp`` (raw v units per step) enters as the bias of
                the group's *first* incoming synapse node, divided by 2^6 (``a_in``
                units); exact because ``du = 4095`` makes ``u`` the instantaneous input
                (a biased group with ``du < 4095`` is refused)
readout         ``Flatten`` + ``Affine(weight_mant · 2^weight_exp, bias_int)``; the
                logits are the *sum* over ``time_steps`` steps (graph metadata)
==============  =====================================================================

snntorch's importer maps ``CubaLIF`` to ``snn.Synaptic`` with ``alpha = 1 - DT/tau_syn``,
``beta = 1 - DT/tau_mem``, reset to zero without delay and the threshold divided by
``w_in·DT/tau_syn = 2^6`` (it then takes ``S`` unscaled): the same dynamics in ``a_in``
units (``import_nir.py``, snntorch 1.0). It asserts ``r = tau_mem / 1e-4``, which is why
:data:`DT` is 10⁻⁴ s and not one abstract step.

Layout: a neuron group of IR shape ``(C, T, V)`` is a NIR tensor ``(C·V, T, 1)`` (channel
index ``c·V + v``, frames on the first spatial axis), so every synapse kind is a
``Conv2d``: the folded graph conv ``(C'·V, C·V)`` is a 1×1 conv, a temporal conv
``(C', C, kt, 1)`` is ``W ⊗ I_V`` with a ``(kt, 1)`` kernel, the per-channel affine a 1×1
diagonal conv (with stride), the global pool a ``(T, 1)`` kernel. The host input is one
body's clip as ``(C·V, T, 1)``. Residual sums are several edges into one node (NIR and
nirtorch sum them).

What NIR cannot express is said, not hidden: :func:`nir_notes` lists it, the export log
prints it and the manifest keeps it (``not_expressed``):

- nir 1.0.8 infers a ``Conv2d``'s output shape from one kernel size (``weight.shape[2]``
  for both axes), so a ``(kt, 1)`` kernel fails ``nir.read``'s type check. A temporal conv
  with ``kt > 1`` is therefore written as a stride-1 ``padding="same"`` Conv2d whose kernel
  is zero-padded to odd length ``2h+1`` and centred (``h = max(p, kt-1-p)``), followed, when
  the stride is not 1 or the output is shorter, by a 1×1 ``AvgPool2d`` (node
  ``<synapse>.pick``) that keeps frames ``0, s, 2s, …``: the same sums (the added taps are
  zeros), at up to ``s·(2h+1)/kt`` times the multiply-adds.
- Loihi's integer arithmetic (round-toward-zero decays of ``u`` and ``v``, the 24-bit wrap
  of ``u``, the clip of ``v``, the rounding of ``a_in`` for a negative ``weight_exp``):
  NIR is real-valued, so spikes equal the integer twin only where those do not act.
- Lava's per-hop delays (``Synapse.meta["delays"]``): NIR edges, like the twin, are
  instantaneous.
- The host side: the input quantisation ``round(x · 2^input_frac_bits)``, the repetition of
  the clip at every time step, and the readout sum over ``time_steps`` (metadata).

SG-SA attention (a product of two spike tensors) has no NIR node: every such node is named
in the :class:`~export.errors.ExportError`.
"""
from __future__ import annotations

from pathlib import Path

import nir
import numpy as np

from mksgn.checkpoint import atomic_write

from ..errors import ExportError
from ..fixed_point import ACT_SHIFT, DECAY_UNITY, DU_MAX, VTH_SHIFT
from ..ir import INPUT, LOGITS, Graph, Synapse

__all__ = ["write_nir", "to_nir", "nir_layout_shape", "nir_notes", "DT", "PICK_SUFFIX"]

#: Seconds per Loihi time step in the NIR graph (snntorch's importer assumes this step).
DT = 1e-4
#: Name suffix of the 1×1 AvgPool2d that keeps every s-th frame after a "same" conv.
PICK_SUFFIX = ".pick"

_LOIHI_NOTE = ("Loihi integer arithmetic is not carried (NIR is real-valued): round-toward-zero decays of u "
               "and v, the 24-bit wrap of u, the clip of v and the rounding of a_in for a negative weight_exp; "
               "spikes equal the integer twin only where those do not act")
_DELAY_NOTE = "Lava's per-hop delays are not exported: NIR edges are instantaneous (the twin's zero-delay time)"
_HOST_NOTE = ("host side, outside the graph: input round(x * 2**input_frac_bits) as (C*V, T, 1), fed at every "
              "one of time_steps steps; logits = sum over the steps of the Affine output")


def nir_layout_shape(shape) -> tuple:
    """IR ``(C, T, V)`` → NIR ``(C·V, T, 1)``."""
    C, T, V = (int(x) for x in shape)
    return (C * V, T, 1)


def _eff(s: Synapse) -> np.ndarray:
    return np.asarray(s.weight_mant, np.float64) * 2.0 ** int(s.weight_exp)


def _kernel(s: Synapse, src_shape: tuple, tgt_shape: tuple) -> tuple:
    """The synapse as a dense kernel ``(C'·V', C·V, kt, 1)`` on the (C·V, T, 1) layout, with its
    temporal stride and padding."""
    C, T, V = src_shape
    Co, To, Vo = tgt_shape
    w = _eff(s)
    stride, padding = int(s.stride), int(s.padding)
    if s.kind in ("conv", "input_conv"):
        kt = w.shape[2]
        k = np.einsum("oik,wv->owivk", w[..., 0], np.eye(V)).reshape(Co * V, C * V, kt, 1)
    elif s.kind == "affine":
        k = np.kron(np.diag(w), np.eye(V))[:, :, None, None]
        padding = 0
    elif s.kind == "graph":
        if s.adjacency is not None:
            raise ExportError(f"{s.name}: graph conv adjacency not folded; run "
                              "export.passes.fold_graph before writing NIR")
        k = w[:, :, None, None]
        stride, padding = 1, 0
    elif s.kind == "pool":
        k = np.zeros((C, C * V, T, 1))
        for c in range(C):
            k[c, c * V:(c + 1) * V, :, 0] = w[c]
        stride, padding = 1, 0
    else:  # pragma: no cover - attention is refused earlier, readout handled apart
        raise ExportError(f"{s.name}: no NIR node for a {s.kind} synapse")
    return k, stride, padding


def _synapse_nodes(s: Synapse, src_shape: tuple, tgt_shape: tuple, bias: np.ndarray) -> dict:
    """NIR node(s) of one synapse, in order (the last one feeds the target group): one Conv2d,
    or for a ``(kt, 1)`` kernel a centred "same" Conv2d and possibly a 1×1 AvgPool2d frame pick
    (module docstring)."""
    k, stride, padding = _kernel(s, src_shape, tgt_shape)
    T, To = int(src_shape[1]), int(tgt_shape[1])
    meta = {"ir_kind": s.kind, "weight_exp": int(s.weight_exp)}
    kt = k.shape[2]
    if kt == 1:
        nodes = {s.name: nir.Conv2d(input_shape=(T, 1), weight=k, stride=(stride, 1), padding=(padding, 0),
                                    dilation=1, groups=1, bias=bias, metadata=meta)}
    else:
        h = max(padding, kt - 1 - padding)
        kk = np.zeros(k.shape[:2] + (2 * h + 1, 1))
        kk[:, :, h - padding:h - padding + kt] = k
        pick = stride if To > 1 else max(T, 1)
        if (T - 1) // pick + 1 != To:
            raise ExportError(f"{s.name}: NIR cannot express this temporal conv (kernel {kt}, stride {stride}, "
                              f"padding {padding}, {T} -> {To} frames) as a 'same' Conv2d plus a frame pick; "
                              "export it with --target lava or onnx")
        nodes = {s.name: nir.Conv2d(input_shape=(T, 1), weight=kk, stride=1, padding="same", dilation=1,
                                    groups=1, bias=bias,
                                    metadata={**meta, "kernel": kt, "stride": stride, "padding": padding})}
        if pick != 1:
            nodes[s.name + PICK_SUFFIX] = nir.AvgPool2d(kernel_size=np.array([1, 1]),
                                                        stride=np.array([pick, 1]), padding=np.array([0, 0]))
    return nodes


def _temporal(s: Synapse) -> bool:
    """A synapse with a ``(kt > 1, 1)`` kernel over frames (temporal conv, input conv, pool)."""
    return s.kind == "pool" or (s.kind in ("conv", "input_conv") and np.shape(s.weight_mant)[2] > 1)


def nir_notes(graph: Graph) -> list:
    """What the NIR graph of ``graph`` does not express or expresses differently (module
    docstring), one sentence each: the export log prints them, the manifest keeps them."""
    picked = [s.name for s in graph.synapses.values() if _temporal(s)]
    notes = [_LOIHI_NOTE, _DELAY_NOTE, _HOST_NOTE]
    if picked:
        notes.append(f"{len(picked)} temporal conv(s) with a (k, 1) kernel are written as a stride-1 'same' "
                     "Conv2d with a centred, zero-padded odd kernel (+ a 1x1 AvgPool2d '<name>.pick' keeping every "
                     "s-th frame where the stride is s or the output shorter), because nir 1.0.8 infers Conv2d "
                     "shapes from one kernel size: the same sums, more multiply-adds")
    return notes


def to_nir(graph: Graph) -> nir.NIRGraph:
    """Build the NIR graph (conventions in the module docstring).

    Raises
    ------
    ExportError
        Attention nodes (all named), an unquantised graph, several bodies per clip
        (the pool sums over bodies), ``dv = 0``, a biased group with ``du < 4095``, or a
        temporal conv whose frames a stride-1 conv plus a frame pick cannot reproduce.
    """
    graph.validate()
    att = [s.name for s in graph.synapses.values() if s.kind == "attention"]
    if att:
        raise ExportError("NIR cannot express spike-spike attention (a product of two spike "
                          f"tensors): {', '.join(att)}; export MK-SGN with the Lava writer, or "
                          "Base-SGN* to NIR")
    if not graph.quantised:
        raise ExportError("NIR export needs a quantised graph (run export.passes.quantise)")
    C, T, V, M = graph.input_shape
    if M != 1:
        raise ExportError(f"NIR export handles one body per clip; this graph has M = {M} "
                          "(the pool sums over bodies)")
    shapes = {INPUT: (C, T, V), **{n: tuple(g.shape) for n, g in graph.groups.items()}}
    nodes = {"input": nir.Input(input_type={"input": np.array(nir_layout_shape((C, T, V)))})}
    edges = []
    first_in = {}
    for s in graph.synapses.values():
        first_in.setdefault(s.target, s.name)
    for s in graph.synapses.values():
        if s.target == LOGITS:
            continue
        g = graph.groups[s.target]
        Co, To, Vo = g.shape
        bias = np.zeros(Co * Vo)
        if first_in[s.target] == s.name:
            b = np.asarray(g.bias_mant, np.float64) * 2.0 ** np.asarray(g.bias_exp, np.float64)
            bias = np.repeat(b / 2.0 ** ACT_SHIFT, Vo)
        for u in s.sources:
            if shapes[u] != shapes[s.sources[0]]:
                raise ExportError(f"{s.name}: sources of different shapes cannot be summed")
            edges.append(("input" if u == INPUT else u, s.name))
        chain = _synapse_nodes(s, shapes[s.sources[0]], tuple(g.shape), bias)
        names = list(chain)
        edges += list(zip(names[:-1], names[1:]))
        edges.append((names[-1], s.target))
        nodes.update(chain)
    for name, g in graph.groups.items():
        if g.dv == 0:
            raise ExportError(f"{name}: dv = 0 (no leak) has no finite tau_mem in NIR CubaLIF")
        if g.du != DU_MAX and np.any(np.asarray(g.bias_mant) != 0):
            raise ExportError(f"{name}: bias with du = {g.du} < {DU_MAX} cannot enter through the "
                              "synaptic current exactly")
        shp = nir_layout_shape(g.shape)
        tau_syn = DT * DECAY_UNITY / (g.du + 1)
        tau_mem = DT * DECAY_UNITY / g.dv
        full = lambda v: np.full(shp, float(v))  # noqa: E731
        nodes[name] = nir.CubaLIF(tau_syn=full(tau_syn), tau_mem=full(tau_mem), r=full(DECAY_UNITY / g.dv),
                                  v_leak=full(0.0), v_threshold=full(g.vth_mant * 2 ** VTH_SHIFT),
                                  v_reset=full(0.0), w_in=full(2 ** ACT_SHIFT * DECAY_UNITY / (g.du + 1)),
                                  metadata={"du": int(g.du), "dv": int(g.dv),
                                            "vth_mant": int(g.vth_mant)})
    readouts = graph.incoming(LOGITS)
    classes = None
    for s in readouts:
        src = s.sources[0]
        Cs, Ts, Vs = shapes[src]
        w = _eff(s)  # columns in IR order c·T·V + t·V + v → NIR order (c·V + v)·T + t
        w = w.reshape(-1, Cs, Ts, Vs).transpose(0, 1, 3, 2).reshape(w.shape[0], -1)
        flat = f"{s.name}.flatten"
        nodes[flat] = nir.Flatten(input_type={"input": np.array(nir_layout_shape(shapes[src]))},
                                  start_dim=0, end_dim=-1)
        nodes[s.name] = nir.Affine(weight=w, bias=np.asarray(s.meta["bias_int"], np.float64),
                                   metadata={"ir_kind": "readout",
                                             "weight_exp": int(s.weight_exp)})
        for u in s.sources:
            edges.append((u, flat))
        edges.append((flat, s.name))
        edges.append((s.name, "output"))
        classes = w.shape[0]
    nodes["output"] = nir.Output(output_type={"output": np.array([classes])})
    meta = {"producer": "mksgn export.writers.nir_writer", "arch": str(graph.meta.get("arch", "")),
            "dt": DT, "time_steps": int(graph.time_steps),
            "input_frac_bits": int(graph.meta.get("input_frac_bits", 0)),
            "layout": "group (C, T, V) -> (C*V, T, 1), channel c*V + v",
            "units": "a_in (Loihi integer current) for S and weights; raw Loihi v for v; seconds for tau",
            "readout": "logits = sum over time_steps of the Affine output",
            "not_expressed": nir_notes(graph)}
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)
    except ValueError as exc:  # nir's type inference: a shape this writer got wrong
        raise ExportError(f"NIR graph does not type-check: {exc}") from None


def write_nir(graph: Graph, path) -> Path:
    """Write the graph as a NIR file (temp name + rename).

    Parameters
    ----------
    graph : Graph
        Quantised, without attention (Base-SGN*).
    path : str or Path

    Returns
    -------
    Path

    Raises
    ------
    ExportError
        See :func:`to_nir`.
    """
    g = to_nir(graph)
    return atomic_write(path, lambda tmp: nir.write(tmp, g))
