"""NIR writer: the quantised IR as a NIR graph (``nir.write``), readable by ``nir.read``.

NIR is float and continuous-time; this is how the Loihi integers become NIR parameters.
Source of the NIR equations: ``nir/ir/neuron.py`` (nir 1.0.8), ``CubaLIF``::

    tau_syn · dI/dt = -I + w_in · S
    tau_mem · dv/dt = (v_leak - v) + r · I
    z = (v > v_threshold);  v = v_reset where z

Conventions (forward Euler, ``dt = 1`` time step, which reproduces Loihi's update
``u = (1 - (du+1)/4096)·u + 2^6·a_in``; ``v = (1 - dv/4096)·v + u + b``; see
:mod:`export.fixed_point`):

==============  =====================================================================
``S``           the summed synaptic input of all incoming edges, in Loihi ``a_in`` units
                (integer current per step)
weights         ``weight_mant · 2^weight_exp`` (float64, exact), i.e. ``a_in`` per spike;
                ``input_conv`` weights are per unit of the quantised host input
                ``round(x · 2^input_frac_bits)`` (graph metadata ``input_frac_bits``)
``tau_syn``     ``4096 / (du + 1)`` steps (du = 4095 → 1: the current is the input)
``tau_mem``     ``4096 / dv`` steps (dv = 0, a perfect integrator, is refused)
``w_in``        ``2^6 · tau_syn`` (Euler's ``w_in/tau_syn`` is Loihi's ``<< 6``)
``r``           ``tau_mem`` (Euler's ``r/tau_mem = 1``: Loihi adds ``u`` to ``v``)
``v``           Loihi's raw integer ``v`` units; ``v_threshold = vth_mant · 2^6``,
                ``v_reset = 0``, ``v_leak = 0``
bias            ``bias_mant · 2^bias_exp`` (raw v units per step) enters as the bias of
                the group's *first* incoming synapse node, divided by 2^6 (``a_in``
                units); exact because ``du = 4095`` makes ``u`` the instantaneous input
                (a biased group with ``du < 4095`` is refused)
readout         ``Flatten`` + ``Affine(weight_mant · 2^weight_exp, bias_int)``; the
                logits are the *sum* over ``time_steps`` steps (graph metadata)
==============  =====================================================================

Not carried by NIR (float, real-valued): Loihi's round-toward-zero decays, the 24-bit wrap
of ``u`` and the clip of ``v``; spikes equal the integer twin only where those do not act.
Lava's per-hop delays (``Synapse.meta["delays"]``) are not exported: NIR edges, like the
twin, are instantaneous.

Layout: a neuron group of IR shape ``(C, T, V)`` is a NIR tensor ``(C·V, T)`` (channel
index ``c·V + v``, frames as the conv axis), so every synapse kind is a ``Conv1d`` over
frames: the folded graph conv ``(C'·V, C·V)`` is a kernel-1 conv, a temporal conv
``(C', C, kt, 1)`` is ``W ⊗ I_V`` with kernel ``kt``, the per-channel affine a kernel-1
diagonal conv (with stride), the global pool a kernel-``T`` conv. (Not ``Conv2d`` with
``(kt, 1)`` kernels: nir 1.0.8 infers both kernel axes from ``weight.shape[2]`` and its
``nir.read`` type check then fails.) The host input is one body's clip as ``(C·V, T)``. Residual sums are several edges into one node (NIR sums
them). SG-SA attention (a product of two spike tensors) has no NIR node: every such node is
named in the :class:`~export.errors.ExportError`.
"""
from __future__ import annotations

from pathlib import Path

import nir
import numpy as np

from mksgn.checkpoint import atomic_write

from ..errors import ExportError
from ..fixed_point import ACT_SHIFT, DECAY_UNITY, DU_MAX, VTH_SHIFT
from ..ir import INPUT, LOGITS, Graph, Synapse

__all__ = ["write_nir", "to_nir", "nir_layout_shape"]


def nir_layout_shape(shape) -> tuple:
    """IR ``(C, T, V)`` → NIR ``(C·V, T)``."""
    C, T, V = (int(x) for x in shape)
    return (C * V, T)


def _eff(s: Synapse) -> np.ndarray:
    return np.asarray(s.weight_mant, np.float64) * 2.0 ** int(s.weight_exp)


def _synapse_node(s: Synapse, src_shape: tuple, tgt_shape: tuple, bias: np.ndarray) -> nir.Conv1d:
    C, T, V = src_shape
    Co, To, Vo = tgt_shape
    w = _eff(s)
    stride, padding = (int(s.stride), 1), (int(s.padding), 0)
    if s.kind in ("conv", "input_conv"):
        kt = w.shape[2]
        k = np.einsum("oik,wv->owivk", w[..., 0], np.eye(V)).reshape(Co * V, C * V, kt, 1)
    elif s.kind == "affine":
        k = np.kron(np.diag(w), np.eye(V))[:, :, None, None]
        padding = (0, 0)
    elif s.kind == "graph":
        if s.adjacency is not None:
            raise ExportError(f"{s.name}: graph conv adjacency not folded; run "
                              "export.passes.fold_graph before writing NIR")
        k = w[:, :, None, None]
        stride, padding = (1, 1), (0, 0)
    elif s.kind == "pool":
        k = np.zeros((C, C * V, T, 1))
        for c in range(C):
            k[c, c * V:(c + 1) * V, :, 0] = w[c]
        stride, padding = (1, 1), (0, 0)
    else:  # pragma: no cover - attention is refused earlier, readout handled apart
        raise ExportError(f"{s.name}: no NIR node for a {s.kind} synapse")
    # Conv1d over frames (nir 1.0.8's Conv2d shape inference uses weight.shape[2] as the
    # kernel of both axes, which breaks (kt, 1) kernels in nir.read's type check).
    k = k[..., 0]
    node = nir.Conv1d(input_shape=T, weight=k, stride=int(stride[0]), padding=int(padding[0]),
                      dilation=1, groups=1, bias=bias,
                      metadata={"ir_kind": s.kind, "weight_exp": int(s.weight_exp)})
    want = np.array(nir_layout_shape(tgt_shape))
    if not np.array_equal(node.output_type["output"], want):
        raise ExportError(f"{s.name}: NIR conv output {node.output_type['output'].tolist()} != "
                          f"target layout {want.tolist()}")
    return node


def to_nir(graph: Graph) -> nir.NIRGraph:
    """Build the NIR graph (conventions in the module docstring).

    Raises
    ------
    ExportError
        Attention nodes (all named), an unquantised graph, several bodies per clip
        (the pool sums over bodies), ``dv = 0``, or a biased group with ``du < 4095``.
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
        nodes[s.name] = _synapse_node(s, shapes[s.sources[0]], tuple(g.shape), bias)
        for u in s.sources:
            if shapes[u] != shapes[s.sources[0]]:
                raise ExportError(f"{s.name}: sources of different shapes cannot be summed")
            edges.append(("input" if u == INPUT else u, s.name))
        edges.append((s.name, s.target))
    for name, g in graph.groups.items():
        if g.dv == 0:
            raise ExportError(f"{name}: dv = 0 (no leak) has no finite tau_mem in NIR CubaLIF")
        if g.du != DU_MAX and np.any(np.asarray(g.bias_mant) != 0):
            raise ExportError(f"{name}: bias with du = {g.du} < {DU_MAX} cannot enter through the "
                              "synaptic current exactly")
        shp = nir_layout_shape(g.shape)
        tau_syn = DECAY_UNITY / (g.du + 1)
        tau_mem = DECAY_UNITY / g.dv
        full = lambda v: np.full(shp, float(v))  # noqa: E731
        nodes[name] = nir.CubaLIF(tau_syn=full(tau_syn), tau_mem=full(tau_mem), r=full(tau_mem),
                                  v_leak=full(0.0), v_threshold=full(g.vth_mant * 2 ** VTH_SHIFT),
                                  v_reset=full(0.0), w_in=full(2 ** ACT_SHIFT * tau_syn),
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
            "dt": 1.0, "time_steps": int(graph.time_steps),
            "input_frac_bits": int(graph.meta.get("input_frac_bits", 0)),
            "layout": "group (C, T, V) -> (C*V, T), channel c*V + v",
            "units": "a_in (Loihi integer current) for S and weights; raw Loihi v for v",
            "readout": "logits = sum over time_steps of the Affine output"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


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
