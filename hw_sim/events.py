"""Synaptic-event counting (own code: no library counts events per synapse group) and the
measured vs analytic energy per clip.

Two independent counts per synapse and clip:

* :func:`lava_events` — from the spikes Lava emitted and the fan-out of the CSR matrices Lava
  was given (:func:`hw_sim.connectivity.fan_out`, computed once at build):
  ``events = Σ_t spikes_t · fan_out`` (each spike × its non-zero fan-out), attention from
  the Q/K/V spikes by :func:`attention_events`;
* :func:`twin_events` — from the twin's spike tensors through the twin's own synapse op with
  the 0/1 mask of the non-zero weights (``synapse_op(s, spikes, weight_mant ≠ 0)``), i.e.
  without the matrices; attention by matrix products of the spike tensors.

Attention (``(Q Kᵀ) V`` per frame) is counted as the non-zero terms of both products:
``Σ_c q[c,u]·k[c,w]`` over (u, w, c) plus ``[A[u,w] ≠ 0]·v[c,w]`` over (u, w, c).

Energy (paper eq. 34–37 with the constants of :mod:`mksgn.energy`):
measured ``E = E_MAC · MACs(first layer) + E_AC · events``; analytic
``E = E_MAC · FLOPs(first layer) + E_AC · Σ fr · T_s · FLOPs`` with FLOPs the dense (ANN)
multiply-accumulates of each deployed synapse group per time step and ``fr`` the measured
firing rate of its source(s).
"""
from __future__ import annotations

import numpy as np

from export.ir import INPUT, Graph
from export.twin import synapse_op


__all__ = ["attention_events", "lava_events", "twin_events", "dense_flops", "firing_rates"]


def attention_events(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> int:
    """Non-zero terms of ``(Q Kᵀ) V`` per frame; inputs ``(steps, M, C, T, V)`` 0/1 arrays."""
    q, k, v = (np.asarray(a, dtype=np.int64) for a in (q, k, v))
    qk = np.einsum("smctu,smctw->smtuw", q, k)  # A[u, w] per step, body, frame
    first = int(qk.sum())
    second = int(np.einsum("smtuw,smctw->", (qk != 0).astype(np.int64), v))
    return first + second


def lava_events(graph: Graph, fan_outs: dict, spikes: dict, shapes: dict) -> dict:
    """Synaptic events per synapse for one clip, from Lava's spikes and matrices' fan-out.

    Parameters
    ----------
    fan_outs : dict (synapse, source) → non-zero synapses per source neuron ``(n_source,)``
    spikes : dict group → int array ``(T_s, n)`` (Lava-probed)
    shapes : dict group → ``(M, C, T, V)``

    Returns
    -------
    dict synapse name → int
    """
    out = {}
    for s in graph.synapses.values():
        if s.sources == (INPUT,):
            continue
        if s.kind == "attention":
            q, k, v = (spikes[u].reshape((-1,) + tuple(shapes[u])) for u in s.sources)
            out[s.name] = attention_events(q, k, v)
            continue
        out[s.name] = int(sum(int(spikes[u].sum(axis=0) @ fan_outs[(s.name, u)]) for u in s.sources))
    return out


def twin_events(graph: Graph, spikes: dict, num_bodies: int) -> dict:
    """Synaptic events per synapse for one clip, from the twin's spikes (independent of the
    CSR matrices).

    Parameters
    ----------
    spikes : dict group → Tensor ``(T_s, B, C, T, V)`` for one clip (B = bodies, or 1
        behind the pool)
    num_bodies : int, M

    Returns
    -------
    dict synapse name → int
    """
    out = {}
    for s in graph.synapses.values():
        if s.sources == (INPUT,):
            continue
        if s.kind == "attention":
            q, k, v = (spikes[u].double().permute(0, 1, 3, 2, 4) for u in s.sources)  # (S, B, T, C, V)
            a = q.transpose(-1, -2) @ k  # (S, B, T, V, V)
            second = (a != 0).double() @ v.transpose(-1, -2)  # (S, B, T, V, C)
            out[s.name] = int(a.sum()) + int(second.sum())
            continue
        mask = (np.asarray(s.weight_mant) != 0).astype(np.float64)
        total = 0.0
        for u in s.sources:
            sp = spikes[u].double()
            for t in range(sp.shape[0]):
                total += float(synapse_op(s, [sp[t]], mask, num_bodies).sum())
        out[s.name] = int(round(total))
    return out


def dense_flops(graph: Graph, shapes: dict) -> dict:
    """Dense (ANN) multiply-accumulates per time step and clip of every synapse, per source.

    conv: ``C'·C·kt·T'·V·M``; affine: ``C·T'·V·M``; folded graph: ``(C'·V)·(C·V)·T·M``;
    pool: ``C·T·V·M``; readout: ``classes·C``; attention: ``2·C·V²·T·M``; the first
    layer: its conv MACs once per clip. Zeros and padding included — that is the analytic
    model's premise. Low-mantissa partners of split weights (``meta["split_of"]``,
    :func:`export.passes.split_residual`) count 0: the analytic model counts the network's
    operations, the measured events count what the deployment pays for them.

    Returns
    -------
    dict synapse name → float (summed over sources)
    """
    out = {}
    for s in graph.synapses.values():
        w = np.asarray(s.weight_mant)
        if s.meta.get("split_of"):
            out[s.name] = 0.0
            continue
        if s.sources == (INPUT,):
            M = int(graph.input_shape[3])
            Co, To, V = graph.groups[s.target].shape
            out[s.name] = float(w.shape[1] * w.shape[2] * Co * To * V * M)
            continue
        src = shapes[s.sources[0]]
        M, C, T, V = src
        if s.kind == "attention":
            out[s.name] = float(2 * C * V * V * T * M)
        elif s.kind == "readout":
            out[s.name] = float(w.size)
        elif s.kind == "pool":
            out[s.name] = float(C * T * V * M) * len(s.sources)
        else:
            Mt, Co, To, Vo = shapes[s.target]
            if s.kind == "conv":
                per = Co * C * w.shape[2] * To * Vo * Mt
            elif s.kind == "affine":
                per = Co * To * Vo * Mt
            else:  # folded graph
                per = (Co * Vo) * (C * V) * To * Mt
            out[s.name] = float(per) * len(s.sources)
    return out


def firing_rates(spikes: dict) -> dict:
    """Spikes per neuron per time step of each group; ``spikes`` group → ``(T_s, n)``."""
    return {g: float(np.asarray(a).mean()) for g, a in spikes.items()}

