"""Integer synapse matrices of an exported graph, as Lava's ``Sparse`` / ``Dense`` processes take
them, and the per-neuron fan-out that event counting needs.

Lava's ``Conv`` process does not fit: its fixed-point model (``lava/proc/conv/models.py``,
``PyConvModelFixed``) never reads ``weight_exp`` or ``num_weight_bits`` (see
:func:`export.fixed_point.conv_wrap`). Every static synapse group of the IR (temporal conv,
per-channel affine, folded graph conv, global pool, readout) is therefore unrolled here into
one CSR matrix ``(n_target, n_source)`` per (synapse, source) pair, on the same integer
``weight_mant`` the twin uses; only non-zero weights are stored, so a column's entries are
exactly the synapses a spike of that neuron drives.

Neuron order inside a population is C-order over ``(M, C, T, V)`` (bodies, channels, frames,
joints) for per-body groups and ``(C, 1, 1)`` for groups behind the global pool, which is
where the twin's ``(B = N·M, C, T, V)`` tensors put them.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from export.ir import INPUT, Graph, Synapse

from .errors import SimError

__all__ = ["per_clip_groups", "population_shape", "synapse_matrix", "fan_out", "static_connections"]


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
    """``(M, C, T, V)`` of one clip's population of group ``name`` (M = 1 behind the pool)."""
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
    if s.kind in ("attention", "input_conv") or s.adjacency is not None:
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
    if s.kind == "conv":
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
    """Yield ``(synapse, source)`` for every static (Lava ``Sparse``/``Dense``) connection."""
    for s in graph.synapses.values():
        if s.kind in ("attention", "input_conv"):
            continue
        for u in s.sources:
            yield s, u

