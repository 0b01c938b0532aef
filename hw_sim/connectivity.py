"""Integer connectivity of an exported graph as lava-nc processes take it, and the per-neuron
fan-out that event counting needs.

* Shared (:func:`conv_params`): temporal convs and folded graph convs become lava's ``Conv``
  (weight stored once, see :mod:`export.mapping`); its fixed-point model
  (``lava/proc/conv/models.py::PyConvModelFixed``) never reads ``weight_exp``, so a
  non-negative exponent is folded into the weights (``w·2^e``: the shift distributes over
  the sum exactly) and a negative one is applied by a flooring one-to-one ``Sparse`` behind a
  graded relay (:func:`export.mapping.hop_latency` counts that hop). The ``Conv`` input and
  output are the populations seen through transposing virtual ports
  (:func:`conv_views`).
* Unrolled (:func:`synapse_matrix`): one CSR matrix ``(n_target, n_source)`` per (synapse,
  source) pair for the per-channel affine, the pool, the readout and the first layer (from
  the quantised coordinates), on the same integer ``weight_mant`` the twin uses; only
  non-zero weights are stored, so a column's entries are exactly the synapses a spike of
  that neuron drives.

Neuron order inside a population is C-order over ``(M, C, T, V)`` (bodies, channels, frames,
joints) for per-body groups and ``(C, 1, 1)`` for groups behind the global pool, which is
where the twin's ``(B = N·M, C, T, V)`` tensors put them.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from export.ir import INPUT, Graph, Synapse

from .errors import SimError

__all__ = ["per_clip_groups", "population_shape", "synapse_matrix", "fan_out", "static_connections",
           "conv_params", "conv_views", "shared_fan_out", "unrolled_synapses"]


def per_clip_groups(graph: Graph) -> set:
    """Names of groups that hold one population per clip (behind the global pool) instead of
    one per body."""
    out = set()
    for name in graph.groups:
        for s in graph.incoming(name):
            if s.kind == "pool" or any(u in out for u in s.sources if u != INPUT):
                out.add(name)
    return out


def population_shape(graph: Graph, name: str, per_clip: set | None = None) -> tuple:
    """``(M, C, T, V)`` of one clip's population of group ``name`` (M = 1 behind the pool);
    for ``INPUT`` the quantised coordinates ``(M, C, T, V)``."""
    if name == INPUT:
        C, T, V, M = (int(x) for x in graph.input_shape)
        return (M, C, T, V)
    per_clip = per_clip_groups(graph) if per_clip is None else per_clip
    m = 1 if name in per_clip else int(graph.input_shape[3])
    return (m,) + tuple(int(x) for x in graph.groups[name].shape)


def _coo(rows, cols, vals, shape) -> sparse.csr_matrix:
    rows, cols, vals = (np.asarray(a).ravel() for a in (rows, cols, vals))
    keep = vals != 0
    mat = sparse.csr_matrix((vals[keep].astype(np.int32), (rows[keep].astype(np.int64),
                                                           cols[keep].astype(np.int64))), shape=shape)
    mat.sum_duplicates()
    mat.eliminate_zeros()
    return mat


def synapse_matrix(graph: Graph, s: Synapse, source: str, per_clip: set | None = None) -> sparse.csr_matrix:
    """The integer weight matrix of synapse ``s`` from one of its ``sources``.

    Parameters
    ----------
    graph : Graph (quantised)
    s : Synapse of kind ``conv``, ``affine``, ``graph`` (folded), ``pool`` or ``readout``
    source : str, one of ``s.sources``

    Returns
    -------
    scipy CSR ``(n_target, n_source)`` of int32 ``weight_mant`` (zeros not stored); the
    synapse's ``weight_exp`` applies to the product as in Lava's ``Sparse``.

    Raises
    ------
    SimError
        Attention, input conv or an unfolded graph conv (no static matrix).
    """
    if s.kind == "attention" or s.adjacency is not None:
        raise SimError(f"synapse {s.name} ({s.kind}) has no static weight matrix")
    if s.weight_mant is None:
        raise SimError(f"synapse {s.name} is not quantised; export the checkpoint first")
    per_clip = per_clip_groups(graph) if per_clip is None else per_clip
    M, C, T, V = population_shape(graph, source, per_clip)
    n_in = M * C * T * V
    w = np.asarray(s.weight_mant, dtype=np.int64)
    src = np.arange(n_in).reshape(M, C, T, V)
    if s.kind == "readout":
        return _coo(*np.meshgrid(np.arange(w.shape[0]), src.ravel(), indexing="ij"), w, (w.shape[0], n_in))
    Mt, Co, To, Vo = population_shape(graph, s.target, per_clip)
    tgt = np.arange(Mt * Co * To * Vo).reshape(Mt, Co, To, Vo)
    shape = (tgt.size, n_in)
    if s.kind == "pool":
        rows = np.broadcast_to(np.arange(C)[None, :, None, None], src.shape)
        vals = np.broadcast_to(w[None, :, None, None], src.shape)
        return _coo(rows, src, vals, shape)
    if s.kind == "affine":
        sub = src[:, :, :: s.stride]
        return _coo(tgt, sub, np.broadcast_to(w[None, :, None, None], tgt.shape), shape)
    if s.kind in ("conv", "input_conv"):
        rows, cols, vals = [], [], []
        kt = w.shape[2]
        for k in range(kt):
            ti = np.arange(To) * s.stride + k - s.padding
            ok = (ti >= 0) & (ti < T)
            # (M, C', C, T'ok, V)
            r = np.broadcast_to(tgt[:, :, None, ok, :], (M, Co, C, int(ok.sum()), V))
            c = np.broadcast_to(src[:, None, :, ti[ok], :], r.shape)
            v = np.broadcast_to(w[None, :, :, k, 0, None, None], r.shape)
            rows.append(r.ravel()); cols.append(c.ravel()); vals.append(v.ravel())
        return _coo(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), shape)
    if s.kind == "graph":
        if w.shape != (Co * V, C * V):
            raise SimError(f"synapse {s.name}: folded graph weight {w.shape} does not match "
                           f"({Co}·{V}, {C}·{V})")
        oi, ii = np.nonzero(w)
        co, vo = np.divmod(oi, V)
        ci, vi = np.divmod(ii, V)
        m = np.arange(M)[:, None, None]
        t = np.arange(T)[None, :, None]
        rows = tgt[m, co[None, None, :], t, vo[None, None, :]]
        cols = src[m, ci[None, None, :], t, vi[None, None, :]]
        vals = np.broadcast_to(w[oi, ii][None, None, :], rows.shape)
        return _coo(rows, cols, vals, shape)
    raise SimError(f"synapse {s.name}: unknown kind {s.kind}")


def fan_out(mat: sparse.csr_matrix) -> np.ndarray:
    """Non-zero synapses per source neuron (column counts), ``(n_source,)`` int64."""
    return np.bincount(mat.indices, minlength=mat.shape[1]).astype(np.int64)


def static_connections(graph: Graph):
    """Yield ``(synapse, source)`` for every static connection (all but attention; the first
    layer's source is ``INPUT``)."""
    for s in graph.synapses.values():
        if s.kind == "attention":
            continue
        for u in s.sources:
            yield s, u


def conv_params(graph: Graph, s: Synapse, shift: int = 0) -> dict:
    """Arguments of lava's ``Conv`` for a shared synapse (``conv`` or folded ``graph``).

    The weight is ``weight_mant · 2^shift`` (``shift = weight_exp ≥ 0``, or 0 when a flooring
    ``Sparse`` applies a negative exponent), laid out ``(C', kx, ky, C)`` and flipped along
    the kernel axes (lava's ``Conv`` convolves, the IR correlates). Input/output shapes are
    those of :func:`conv_views`.

    Returns dict ``weight``, ``input_shape``, ``padding``, ``stride``.

    Raises
    ------
    SimError
        Unquantised synapse, an unsupported kind, or a weight that does not fit int32.
    """
    if s.weight_mant is None:
        raise SimError(f"synapse {s.name} is not quantised; export the checkpoint first")
    w = np.asarray(s.weight_mant, dtype=np.int64) << int(shift)
    if np.abs(w).max(initial=0) >= 2 ** 31:
        raise SimError(f"synapse {s.name}: weight << {shift} does not fit int32")
    M, C, T, V = population_shape(graph, s.sources[0])
    if s.kind == "conv":
        weight = w[:, :, ::-1, :].transpose(0, 2, 3, 1)  # (C', kt, 1, C), flipped
        return {"weight": np.ascontiguousarray(weight).astype(np.int32), "input_shape": (T, M * V, C),
                "padding": (int(s.padding), 0), "stride": (int(s.stride), 1)}
    if s.kind == "graph" and s.adjacency is None:
        Co = w.shape[0] // V
        weight = w.reshape(Co * V, 1, 1, C * V)
        return {"weight": np.ascontiguousarray(weight).astype(np.int32), "input_shape": (T, M, C * V),
                "padding": (0, 0), "stride": (1, 1)}
    raise SimError(f"synapse {s.name} ({s.kind}) has no shared (Conv) mapping")


def conv_views(s: Synapse, src_port, src_shape: tuple, tgt_shape: tuple, halves: int = 1):
    """The virtual ports that let a ``Conv`` read and write populations in the IR order.

    ``src_port`` is the source population's OutPort (flat, C-order of ``src_shape = (M, C, T,
    V)``). Returns ``(input view, output view)``: the input view has the ``Conv``'s
    ``(X, Y, C)`` shape — ``(T, M·V, C)`` for a temporal conv, ``(T, M, C·V)`` for a graph
    conv — and ``output view(conv.a_out)`` is a flat port in the target's ``tgt_shape =
    (M, C', T', V)`` order. Lava's ``reshape``/``transpose`` virtual ports only permute the
    vector: no arithmetic. ``halves = 2`` for a weight-split pair's ``Conv`` with ``2·C'``
    outputs (high group first): the flat output is ``[high (M, C', T', V); low (…)]``.
    """
    M, C, T, V = src_shape
    Mo, Co, To, Vo = tgt_shape
    h = int(halves)
    flat = h * Mo * Co * To * Vo
    if s.kind == "conv":
        view = src_port.reshape((M, C, T, V)).transpose((2, 0, 3, 1)).reshape((T, M * V, C))

        def out(port):
            return port.reshape((To, Mo, Vo, h, Co)).transpose((3, 1, 4, 0, 2)).reshape((flat,))
    else:
        view = src_port.reshape((M, C, T, V)).transpose((2, 0, 1, 3)).reshape((T, M, C * V))

        def out(port):
            return port.reshape((To, Mo, h, Co, Vo)).transpose((2, 1, 3, 0, 4)).reshape((flat,))
    return view, out


def shared_fan_out(graph: Graph, s: Synapse, source: str, per_clip: set | None = None) -> np.ndarray:
    """Non-zero synapses driven by each source neuron of a shared (``Conv``) synapse, without
    unrolling it: ``(n_source,)`` int64 in the source's ``(M, C, T, V)`` order.

    Temporal conv: a spike of channel ``c`` at frame ``t`` drives, for every tap ``k`` whose
    output frame ``o = (t + pad − k) / stride`` is whole and in range, the non-zero
    ``w[:, c, k]``. Folded graph conv: a spike of ``(c, v)`` drives the non-zero entries of
    column ``c·V + v`` at its own frame. Equals :func:`fan_out` of :func:`synapse_matrix`
    (tested).
    """
    per_clip = per_clip_groups(graph) if per_clip is None else per_clip
    M, C, T, V = population_shape(graph, source, per_clip)
    w = np.asarray(s.weight_mant)
    if s.kind == "conv":
        To = graph.groups[s.target].shape[1]
        nz = (w[:, :, :, 0] != 0).sum(axis=0)  # (C, kt)
        per = np.zeros((C, T), dtype=np.int64)
        for k in range(w.shape[2]):
            num = np.arange(T) + s.padding - k
            ok = (num % s.stride == 0) & (num >= 0) & (num // s.stride < To)
            per[:, ok] += nz[:, k:k + 1]
        return np.broadcast_to(per[None, :, :, None], (M, C, T, V)).ravel().astype(np.int64)
    if s.kind == "graph":
        per = (w != 0).sum(axis=0).reshape(C, V)
        return np.broadcast_to(per[None, :, None, :], (M, C, T, V)).ravel().astype(np.int64)
    raise SimError(f"synapse {s.name} ({s.kind}) has no shared (Conv) mapping")


def unrolled_synapses(graph: Graph, s: Synapse, source: str, per_clip: set | None = None) -> int:
    """Non-zero synapses of one (synapse, source) connection if it were unrolled per clip."""
    if s.kind in ("conv", "graph") and s.adjacency is None:
        return int(shared_fan_out(graph, s, source, per_clip).sum())
    return int(synapse_matrix(graph, s, source, per_clip).nnz)

