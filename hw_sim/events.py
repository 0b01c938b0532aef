"""Synaptic-event counting (own code: no library counts events per synapse group) and the
measured vs analytic energy per clip.

Two independent counts per synapse and clip:

* :func:`lava_events` — from the spikes and graded messages Lava sent (group probes, and
  count / value probes on relays and the attention's products and middle population) and
  the fan-out of the connectivity Lava was given (computed once at build):
  ``events = Σ_t messages_t · fan_out``;
* :func:`twin_events` — from the twin's spike tensors through the twin's own synapse op with
  the 0/1 mask of the non-zero weights (``synapse_op(s, spikes, weight_mant ≠ 0)``), i.e.
  without the matrices; attention by matrix products of the spike tensors.

Attention is counted hop by hop as the stock mapping sends its messages
(:func:`attention_events`); a shared conv with a negative exponent adds the messages of its
relay (:mod:`export.mapping`).

Energy (paper eq. 34–37 with the constants of :mod:`mksgn.energy`):
measured ``E = E_MAC · MACs(first layer) + E_AC · events``; analytic
``E = E_MAC · FLOPs(first layer) + E_AC · Σ fr · T_s · FLOPs`` with FLOPs the dense (ANN)
multiply-accumulates of each deployed synapse group per time step and ``fr`` the measured
firing rate of its source(s).
"""
from __future__ import annotations

import numpy as np

from export.ir import INPUT, Graph
from export.mapping import merged_sources, paired, synapse_mapping
from export.twin import synapse_op


__all__ = ["attention_events", "lava_events", "twin_events", "dense_flops", "firing_rates"]


def attention_events(order: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, weight_nonzero: bool = True) -> int:
    """Synaptic events of one SG-SA block in the stock mapping (:mod:`hw_sim.attention`), from
    its spikes ``(steps, M, C, T, V)`` (0/1), summed over its four hops.

    ``qk``: Q and K fan out to ``V`` products each (``(Σq + Σk)·V``), every non-zero product
    ``q[c,u]·k[c,w]`` sends one message (``Σ A``), every non-zero ``A[u,w]`` fans out to ``C``
    products and every V spike to ``V`` (``nnz(A)·C + Σv·V``), every non-zero ``A[u,w]·v[c,w]``
    sends one message. ``kv`` is the mirror image with ``B = Kᵀ V``.
    """
    q, k, v = (np.asarray(a, dtype=np.int64) for a in (q, k, v))
    C, V = q.shape[2], q.shape[4]
    if order == "qk":
        mid = np.einsum("smctu,smctw->smtuw", q, k)
        nz = (mid != 0).astype(np.int64)
        last = int(np.einsum("smtuw,smctw->", nz, v))
        return int((q.sum() + k.sum()) * V + mid.sum() + nz.sum() * C + v.sum() * V + last * weight_nonzero)
    mid = np.einsum("smatw,smbtw->smtab", k, v)  # B[c1, c2]
    nz = (mid != 0).astype(np.int64)
    last = int(np.einsum("smtab,smatu->", nz, q))
    return int((k.sum() + v.sum()) * C + mid.sum() + nz.sum() * V + q.sum() * C + last * weight_nonzero)


def lava_events(event_terms: list, spikes: dict, aux: dict) -> tuple:
    """Synaptic events of one clip, from what Lava sent and the connectivity Lava was given.

    Parameters
    ----------
    event_terms : list — :attr:`hw_sim.network.LavaNetwork.event_terms`
    spikes : dict group → int array ``(T_s, n)`` (Lava-probed)
    aux : dict probe label → counts ``(T_s,)`` or graded values ``(T_s, n)`` (Lava-probed)

    Returns
    -------
    ``(per synapse, per hop)`` — dicts synapse name → int and ``"synapse/hop"`` → int
    """
    per_syn, per_hop = {}, {}
    for term in event_terms:
        kind, key = term["trace"]
        a = spikes[key] if kind == "spikes" else aux[key]
        fo = term["fan_out"]
        if a.ndim == 1:  # a count probe: messages per step, one synapse each
            ev = int(a.sum()) * int(fo)
        elif np.ndim(fo) == 0:
            ev = int((a != 0).sum()) * int(fo)
        else:
            ev = int((a != 0).sum(axis=0).astype(np.int64) @ fo)
        per_syn[term["synapse"]] = per_syn.get(term["synapse"], 0) + ev
        hop = f"{term['synapse']}/{term['hop']}"
        per_hop[hop] = per_hop.get(hop, 0) + ev
    return per_syn, per_hop


def twin_events(graph: Graph, spikes: dict, num_bodies: int) -> dict:
    """Synaptic events per synapse for one clip, from the twin's spikes (independent of the
    Lava connectivity).

    Parameters
    ----------
    spikes : dict group → Tensor ``(T_s, B, C, T, V)`` for one clip (B = bodies, or 1
        behind the pool)
    num_bodies : int, M

    Returns
    -------
    dict synapse name → int. A shared conv with a negative ``weight_exp``
    (:func:`export.mapping.synapse_mapping` ``conv+floor``), and the high group of a shared
    weight-split pair (:func:`export.mapping.paired`), add one event per non-zero sum their
    relay forwards to the flooring synapse (one relay for all sources of a merged synapse,
    :func:`export.mapping.merged_sources`, else one per source).
    """
    out = {}
    for s in graph.synapses.values():
        if s.sources == (INPUT,):
            continue
        if s.kind == "attention":
            q, k, v = (spikes[u].numpy() for u in s.sources)
            out[s.name] = attention_events(s.meta["attention_order"], q, k, v,
                                           bool(np.asarray(s.weight_mant) != 0))
            continue
        mask = (np.asarray(s.weight_mant) != 0).astype(np.float64)
        total = 0.0
        floor = synapse_mapping(s) == "conv+floor"
        # the fan-out count is linear in the input: one op on the spikes summed over time steps
        # and sources (every source sees the same weights) equals the sum of the per-step ops
        counts = sum(spikes[u].double().sum(dim=0) for u in s.sources)
        total += float(synapse_op(s, [counts], mask, num_bodies).sum())
        for u in s.sources:
            if (floor and not merged_sources(s)) or paired(s, u):
                sp = spikes[u].double()
                for t in range(sp.shape[0]):
                    total += float((synapse_op(s, [sp[t]], s.weight_mant, num_bodies) != 0).sum())
        if floor and merged_sources(s):  # one relay carries the sum of all sources
            for t in range(spikes[s.sources[0]].shape[0]):
                xs = [spikes[u][t].double() for u in s.sources]
                total += float((synapse_op(s, xs, s.weight_mant, num_bodies) != 0).sum())
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

