"""SG-SA attention ``s · (Q Kᵀ) V`` from stock lava-nc processes only (``Sparse``,
``ProdNeuron``, ``GradedVec``): the Lava side of the ``attention`` row of
:mod:`export.mapping`.

Per body ``m`` and frame ``t``, with ``q, k, v`` the binary spikes ``(C, V)`` (channels ×
joints) of the three source populations, the block delivers to its target's ``a_in``::

    out[c, u] = shift( weight_mant · Σ_w (Σ_c' q[c', u] · k[c', w]) · v[c, w], weight_exp )

with ``shift(x, e) = x << e`` for ``e ≥ 0`` and ``floor(x / 2^-e)`` (arithmetic ``>>``)
otherwise — the stock fixed-point ``Sparse`` shifts the *sum* (``a_accum``) once per neuron
(``lava/proc/sparse/models.py::AbstractPySparseModelBitAcc.run_spk``). Bodies and frames are
independent blocks.

Chain (``order="qk"``; ``"kv"`` is its mirror image, see :func:`build_attention`)::

    P1    = ProdNeuron(a_in1 = Sparse q_fanout(q), a_in2 = Sparse k_fanout(k))
    A     = GradedVec(Sparse sum(P1))                      # Q Kᵀ
    P2    = ProdNeuron(a_in1 = Sparse mid_fanout(A), a_in2 = Sparse v_fanout(v))
    a_out = Sparse scale(P2)                               # weight_mant, weight_exp

Timing rules (lava-nc 0.10 sources):

* ``Sparse`` sends at step τ + 1 what it received at step τ (``a_buff``,
  ``lava/proc/sparse/models.py``): each one is a hop.
* ``ProdNeuron`` (``lava/proc/prodneuron/models.py``): ``v = (a_in1 · a_in2) >> exp``, sends
  ``v`` where ``|v| > vth`` in the same step; here ``vth = 0``, ``exp = 0``, so it sends the
  exact product and nothing where it is 0.
* ``GradedVec`` (``lava/proc/graded/models.py``): ``v = a_in``, sends ``v`` where
  ``|v| > vth`` in the same step, then clears ``v``; here ``vth = 0``.
* ``Sparse`` with ``num_message_bits > 0`` takes graded input (``weights.dot(s_in)``), with
  ``num_message_bits = 0`` binary input (columns of the spiking sources summed).
* ``Sparse``'s fixed-point model clips the weights to 8 bits and truncates them to
  ``num_weight_bits`` (``lava/utils/weightutils.py::clip_weights``/``truncate_weights``, sign
  mode from the weights' signs): all fan-out/sum weights are 1 (sign mode ``EXCITATORY``,
  nothing truncated) and the scale weight is ``weight_mant`` with ``|weight_mant| ≤ 255``
  (``EXCITATORY`` or ``INHIBITORY``: stored exactly).

So the first-stage inputs (Q, K for ``qk``; K, V for ``kv``) reach the output 4 steps later
and the late input (V, resp. Q) 2 steps later: :func:`export.mapping.attention_hops`. The
caller feeds the late input 2 steps later than the early ones (a balancing delay) so that
the products of step τ meet; P1 then works at τ + 1, the middle population at τ + 2, P2 at
τ + 3 and the target's ``a_in`` receives the result at τ + 4 (:attr:`AttentionBlock.stage`).

Population layout: every vector is flat. The Q, K, V sources and the output are in C-order
of ``(M, C, T, V)`` (bodies, channels, frames, joints): neuron ``m·C·T·V + c·T·V + t·V + v``,
the layout of the caller's ``LIFReset`` populations. The internal populations are C-order of
``(M, T, C, V, V)`` ``[m, t, c, u, w]`` (P1, P2 of ``qk``), ``(M, T, V, V)`` ``[m, t, u, w]``
(A), ``(M, T, C, C, V)`` ``[m, t, c1, c2, ·]`` (P1, P2 of ``kv``) and ``(M, T, C, C)``
``[m, t, c1, c2]`` (B).

Resources (:func:`export.mapping.attention_resources`): ``2·C·V² + V²`` neurons and
``6·C·V²`` synapses per frame and body for ``qk``, ``2·C²·V + C²`` and ``6·C²·V`` for
``kv``: every product neuron has exactly one synapse from each of its two operands and one
to its sum, so each ``Sparse`` holds one synapse per product neuron. A ``weight_mant`` of 0
keeps its ``C·V²`` (``C²·V``) scale synapses in the count; lava drops zero weights
(``truncate_weights`` → ``eliminate_zeros``) and the output is 0.

Ranges: middle values ≤ ``C`` (``qk``) or ``V`` (``kv``), P2 values likewise, the scale sum
before the shift ≤ ``C·V·|weight_mant|`` (81,600 for C = 16, V = 20): far inside int32 and
Loihi 2's 24-bit graded payloads.

Imports numpy, scipy and lava (and :mod:`export.mapping`, a pure-Python rule module); it
computes nothing with :mod:`export.twin` or :mod:`export.fixed_point`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.proc.graded.process import GradedVec
from lava.proc.prodneuron.process import ProdNeuron
from lava.proc.sparse.process import Sparse
from scipy import sparse as sp

from export.mapping import attention_hops

__all__ = ["AttentionBlock", "build_attention", "GRADED_MESSAGE_BITS", "MAX_WEIGHT_MANT"]

#: ``num_message_bits`` of the graded ``Sparse`` hops (Loihi 2 graded spikes carry up to 24
#: bits; lava's software model only checks ``> 0``).
GRADED_MESSAGE_BITS = 24

#: Largest ``|weight_mant|`` a stock ``Sparse`` stores exactly (8-bit magnitude, sign from
#: the sign mode: ``lava/utils/weightutils.py::clip_weights``).
MAX_WEIGHT_MANT = 255  # = 2**export.fixed_point.MAX_WEIGHT_BITS - 1 (tests/test_attention_lava.py);
# a literal because this module must not import export (lava's compiler imports it in every child)


@dataclass
class AttentionBlock:
    """One SG-SA block built by :func:`build_attention`.

    Attributes
    ----------
    name : str — label prefix of the Lava processes (``f"{name}:{label}"``)
    order : ``"qk"`` or ``"kv"``
    shape : ``(M, C, T, V)`` — bodies, channels, frames, joints
    q_in, k_in, v_in : InPort ``(M·C·T·V,)`` — connect the Q, K, V spike ``OutPort`` here
        (``s_in`` of that input's fan-out ``Sparse``). Each input feeds exactly one
        ``Sparse``, so each is a single InPort and the caller connects once per input.
    a_out : OutPort ``(M·C·T·V,)`` — the scale ``Sparse``'s ``a_out``; connect to the target
        population's ``a_in``.
    mid : GradedVec — A ``(M·T·V·V,)`` (``qk``) or B ``(M·T·C·C,)`` (``kv``)
    prod1, prod2 : ProdNeuron — P1, P2, ``(M·T·C·V·V,)`` (``qk``) or ``(M·T·C·C·V,)`` (``kv``)
    processes : dict label → process, every process of the block in data-flow order:
        ``{e1}_fanout``, ``{e2}_fanout``, ``prod1``, ``sum``, ``mid``, ``mid_fanout``,
        ``{late}_fanout``, ``prod2``, ``scale`` (``e1, e2, late`` = ``q, k, v`` for ``qk``;
        ``k, v, q`` for ``kv``)
    fan_outs : dict hop label (a ``Sparse`` label) → int64 array ``(n_source,)``: synapses
        leaving each source neuron of that hop (``np.bincount`` of the CSR column indices).
        Synaptic events of a hop = ``Σ_τ Σ_i [message_i(τ) ≠ 0] · fan_outs[label][i]``.
    hops : list of dict, one per ``Sparse`` in data-flow order: ``label``, ``source`` (one of
        ``q, k, v, prod1, mid, prod2``), ``target`` (``prod1.a_in1``, ``prod1.a_in2``,
        ``mid``, ``prod2.a_in1``, ``prod2.a_in2``, ``a_out``), ``n_source``, ``n_target``,
        ``synapses``, ``graded`` (``num_message_bits > 0``), ``weight``, ``weight_exp``
    neurons : int — P1 + middle + P2 neurons
    synapses : int — Σ synapses over the six ``Sparse`` (both equal
        :func:`export.mapping.attention_resources` for ``(order, C, V, T, M)``)
    input_hops : dict ``q``/``k``/``v`` → synapse hops to ``a_out``
        (= :func:`export.mapping.attention_hops`)
    stage : dict population → steps after the early inputs' step τ at which it holds that
        step's values: ``prod1`` 1, ``mid`` 2, ``prod2`` 3, ``a_out`` 4 (the late input is
        due at its fan-out at τ + 2)
    pop_shapes : dict ``prod1``/``mid``/``prod2`` → the unflattened index shape (module
        docstring)
    weight_mant, weight_exp : int — the scale ``s = weight_mant · 2^weight_exp``
    """

    name: str
    order: str
    shape: tuple
    q_in: InPort
    k_in: InPort
    v_in: InPort
    a_out: OutPort
    mid: GradedVec
    prod1: ProdNeuron
    prod2: ProdNeuron
    processes: dict
    fan_outs: dict
    hops: list
    neurons: int
    synapses: int
    input_hops: dict
    weight_mant: int
    weight_exp: int
    stage: dict = field(default_factory=lambda: {"prod1": 1, "mid": 2, "prod2": 3, "a_out": 4})
    pop_shapes: dict = field(default_factory=dict)


def _one_column_per_row(cols: np.ndarray, n_cols: int, value: int = 1) -> sp.csr_matrix:
    """CSR ``(len(cols), n_cols)`` with entry ``value`` at ``(r, cols[r])`` (a fan-out: every
    target neuron has exactly one source)."""
    n = cols.size
    return sp.csr_matrix((np.full(n, value, dtype=np.int32), cols.astype(np.int32, copy=False),
                          np.arange(n + 1, dtype=np.int32)), shape=(n, n_cols))


def _one_row_per_column(rows: np.ndarray, n_rows: int, value: int = 1) -> sp.csr_matrix:
    """CSR ``(n_rows, len(rows))`` with entry ``value`` at ``(rows[j], j)`` (a sum: every
    source neuron has exactly one target)."""
    n = rows.size
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return sp.csr_matrix((np.full(n, value, dtype=np.int32), order.astype(np.int32), indptr),
                         shape=(n_rows, n))


def _fan_out(mat: sp.csr_matrix) -> np.ndarray:
    """Synapses per source neuron (column) of a CSR matrix."""
    return np.bincount(mat.indices, minlength=mat.shape[1]).astype(np.int64)


def build_attention(name: str, shape, weight_mant: int, weight_exp: int, order: str) -> AttentionBlock:
    """Build one SG-SA block ``weight_mant·2^weight_exp · (Q Kᵀ) V`` as stock Lava processes.

    Parameters
    ----------
    name : str — prefix of the process names (``f"{name}:{label}"``)
    shape : ``(M, C, T, V)`` — bodies, channels, frames, joints of Q, K, V and the output
        (all four populations have this shape, flat in C-order)
    weight_mant : int — the scale's mantissa, ``|weight_mant| ≤ 255`` (the scale ``Sparse``
        stores it as its 8-bit weight)
    weight_exp : int — the scale's exponent: the scale ``Sparse``'s ``weight_exp``, applied
        to each output neuron's integer sum (``<<`` or flooring ``>>``)
    order : ``"qk"`` — P1 ``[m,t,c,u,w] = q[c,u]·k[c,w]``, A ``[u,w] = Σ_c P1`` (``Q Kᵀ``),
        P2 ``[m,t,c,u,w] = A[u,w]·v[c,w]``, out ``[c,u] = Σ_w P2``; Q, K enter 4 hops before
        the output, V 2.
        ``"kv"`` — P1 ``[m,t,c1,c2,w] = k[c1,w]·v[c2,w]``, B ``[c1,c2] = Σ_w P1`` (``Kᵀ V``),
        P2 ``[m,t,c1,c2,u] = B[c1,c2]·q[c1,u]``, out ``[c2,u] = Σ_c1 P2``; K, V enter 4 hops
        before the output, Q 2.
        Both give the same integers; :func:`export.mapping.attention_order` picks the one
        with fewer product neurons.

    Returns
    -------
    :class:`AttentionBlock` (ports, processes, fan-outs, resources).

    Raises
    ------
    ValueError
        ``order`` not in :data:`export.mapping.ATTENTION_ORDERS`; ``shape`` not four
        positive integers; ``weight_mant`` or ``weight_exp`` not an integer;
        ``|weight_mant| > 255`` (lava's fixed-point ``Sparse`` would clip it).
    """
    hops_rule = attention_hops(order)  # raises ValueError on an unknown order
    if len(tuple(shape)) != 4:
        raise ValueError(f"attention {name}: shape must be (M, C, T, V), got {shape!r}")
    M, C, T, V = (int(x) for x in shape)
    if min(M, C, T, V) < 1 or any(int(x) != x for x in shape):
        raise ValueError(f"attention {name}: shape must be four positive integers, got {shape!r}")
    for label, x in (("weight_mant", weight_mant), ("weight_exp", weight_exp)):
        if isinstance(x, bool) or int(x) != x:
            raise ValueError(f"attention {name}: {label} must be an integer, got {x!r}")
    weight_mant, weight_exp = int(weight_mant), int(weight_exp)
    if abs(weight_mant) > MAX_WEIGHT_MANT:
        raise ValueError(f"attention {name}: |weight_mant| = {abs(weight_mant)} exceeds the 8-bit Sparse "
                         f"weight ({MAX_WEIGHT_MANT}); lava's fixed-point Sparse would clip it")

    n_io = M * C * T * V
    m = np.arange(M).reshape(M, 1, 1, 1, 1)
    t = np.arange(T).reshape(1, T, 1, 1, 1)

    def io(mm, cc, tt, vv):  # flat (M, C, T, V) index
        return ((mm * C + cc) * T + tt) * V + vv

    if order == "qk":
        early, late = ("q", "k"), "v"
        c = np.arange(C).reshape(1, 1, C, 1, 1)
        u = np.arange(V).reshape(1, 1, 1, V, 1)
        w = np.arange(V).reshape(1, 1, 1, 1, V)
        prod_shape, mid_shape = (M, T, C, V, V), (M, T, V, V)
        full = np.zeros(prod_shape, dtype=np.int64)
        src1 = (io(m, c, t, u) + full).ravel()          # q[m,c,t,u]  → P1.a_in1
        src2 = (io(m, c, t, w) + full).ravel()          # k[m,c,t,w]  → P1.a_in2
        mid_of = (((m * T + t) * V + u) * V + w + full).ravel()  # A[m,t,u,w] ← P1 / → P2.a_in1
        late_src = (io(m, c, t, w) + full).ravel()      # v[m,c,t,w]  → P2.a_in2
        out_of = (io(m, c, t, u) + full).ravel()        # out[m,c,t,u] ← P2
    else:
        early, late = ("k", "v"), "q"
        c1 = np.arange(C).reshape(1, 1, C, 1, 1)
        c2 = np.arange(C).reshape(1, 1, 1, C, 1)
        j = np.arange(V).reshape(1, 1, 1, 1, V)  # w in P1, u in P2
        prod_shape, mid_shape = (M, T, C, C, V), (M, T, C, C)
        full = np.zeros(prod_shape, dtype=np.int64)
        src1 = (io(m, c1, t, j) + full).ravel()         # k[m,c1,t,w] → P1.a_in1
        src2 = (io(m, c2, t, j) + full).ravel()         # v[m,c2,t,w] → P1.a_in2
        mid_of = (((m * T + t) * C + c1) * C + c2 + full).ravel()  # B[m,t,c1,c2]
        late_src = (io(m, c1, t, j) + full).ravel()     # q[m,c1,t,u] → P2.a_in2
        out_of = (io(m, c2, t, j) + full).ravel()       # out[m,c2,t,u] ← P2
    del full
    n_prod = int(np.prod(prod_shape))
    n_mid = int(np.prod(mid_shape))

    mats = {
        f"{early[0]}_fanout": _one_column_per_row(src1, n_io),
        f"{early[1]}_fanout": _one_column_per_row(src2, n_io),
        "sum": _one_row_per_column(mid_of, n_mid),
        "mid_fanout": _one_column_per_row(mid_of, n_mid),
        f"{late}_fanout": _one_column_per_row(late_src, n_io),
        "scale": _one_row_per_column(out_of, n_io, weight_mant),
    }
    graded = {f"{early[0]}_fanout": False, f"{early[1]}_fanout": False, "sum": True, "mid_fanout": True,
              f"{late}_fanout": False, "scale": True}
    exps = {label: 0 for label in mats}
    exps["scale"] = weight_exp

    def sparse(label):
        return Sparse(weights=mats[label], name=f"{name}:{label}",
                      num_message_bits=GRADED_MESSAGE_BITS if graded[label] else 0,
                      weight_exp=exps[label], num_weight_bits=8)

    def named(proc, label):
        proc.name = f"{name}:{label}"
        return proc

    prod1 = named(ProdNeuron(shape=(n_prod,), vth=0, exp=0), "prod1")
    mid = named(GradedVec(shape=(n_mid,), vth=0, exp=0), "mid")
    prod2 = named(ProdNeuron(shape=(n_prod,), vth=0, exp=0), "prod2")
    syn = {label: sparse(label) for label in mats}

    syn[f"{early[0]}_fanout"].a_out.connect(prod1.a_in1)
    syn[f"{early[1]}_fanout"].a_out.connect(prod1.a_in2)
    prod1.s_out.connect(syn["sum"].s_in)
    syn["sum"].a_out.connect(mid.a_in)
    mid.s_out.connect(syn["mid_fanout"].s_in)
    syn["mid_fanout"].a_out.connect(prod2.a_in1)
    syn[f"{late}_fanout"].a_out.connect(prod2.a_in2)
    prod2.s_out.connect(syn["scale"].s_in)

    processes = {
        f"{early[0]}_fanout": syn[f"{early[0]}_fanout"], f"{early[1]}_fanout": syn[f"{early[1]}_fanout"],
        "prod1": prod1, "sum": syn["sum"], "mid": mid, "mid_fanout": syn["mid_fanout"],
        f"{late}_fanout": syn[f"{late}_fanout"], "prod2": prod2, "scale": syn["scale"],
    }
    hop_src = {f"{early[0]}_fanout": (early[0], "prod1.a_in1"), f"{early[1]}_fanout": (early[1], "prod1.a_in2"),
               "sum": ("prod1", "mid"), "mid_fanout": ("mid", "prod2.a_in1"),
               f"{late}_fanout": (late, "prod2.a_in2"), "scale": ("prod2", "a_out")}
    fan_outs = {label: _fan_out(mat) for label, mat in mats.items()}
    hops = [{"label": label, "source": hop_src[label][0], "target": hop_src[label][1],
             "n_source": int(mat.shape[1]), "n_target": int(mat.shape[0]), "synapses": int(mat.nnz),
             "graded": graded[label], "weight": weight_mant if label == "scale" else 1,
             "weight_exp": exps[label]} for label, mat in mats.items()]

    input_hops = {early[0]: 4, early[1]: 4, late: 2}
    if tuple(input_hops[x] for x in "qkv") != tuple(hops_rule):  # the chain above is the rule
        raise AssertionError(f"attention {name}: chain hops {input_hops} differ from export.mapping {hops_rule}")

    return AttentionBlock(
        name=name, order=order, shape=(M, C, T, V),
        q_in=syn["q_fanout"].s_in, k_in=syn["k_fanout"].s_in, v_in=syn["v_fanout"].s_in,
        a_out=syn["scale"].a_out, mid=mid, prod1=prod1, prod2=prod2,
        processes=processes, fan_outs=fan_outs, hops=hops,
        neurons=2 * n_prod + n_mid, synapses=int(sum(h["synapses"] for h in hops)),
        input_hops=input_hops, weight_mant=weight_mant, weight_exp=weight_exp,
        pop_shapes={"prod1": prod_shape, "mid": mid_shape, "prod2": prod_shape},
    )

