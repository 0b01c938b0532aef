"""How each IR synapse maps onto Loihi 2 / lava-nc processes — the ONE rule that the
delay-balancing pass (:func:`export.passes.balance_delays`), the resource estimate
(:mod:`export.resources`) and the Lava builder (:mod:`hw_sim.network`) all read.

Every synapse hop in Lava costs one time step (a ``Sparse``/``Dense``/``Conv`` sends at step
τ + 1 what it received at step τ; neurons — ``LIFReset``, ``GradedVec``, ``ProdNeuron`` —
send in the step they receive). So the latency of a mapping is its number of synapse hops,
per source (the attention takes its three inputs at different depths).

=====================  ==================================================  ===========
IR synapse             Lava processes (all stock lava-nc 0.10)              hops
=====================  ==================================================  ===========
``input_conv``         ``RingBuffer`` (quantised coordinates) → ``Sparse``  1
                       (graded messages, ``weight_exp``)
``conv``/``graph``,    ``Conv`` (weights stored once, ``weight_mant ·       1
``weight_exp ≥ 0``     2^weight_exp``: exact, the shift distributes over
                       the sum)
``conv``/``graph``,    ``Conv`` (``weight_mant``) → ``GradedVec`` relay     2
``weight_exp < 0``     (vth 0) → ``Sparse`` one-to-one (weight 1,
                       ``weight_exp``): the relay carries the exact
                       integer sum, the ``Sparse`` floors it once per
                       neuron as Loihi does (``Conv``'s fixed-point model
                       ignores ``weight_exp``)
weight-split pair      a high group (``e ≥ 0``) and its low partner (``e_lo  2
(``conv``/``graph``)   = −k < 0``) from the same source share ONE ``Conv``
                       (``2·C'`` outputs: ``hi·2^s`` and ``lo``), one relay
                       and one flooring ``Sparse`` with weights ``2^w`` and
                       1 at ``weight_exp = −k`` (``w = min(e + k, 7)``,
                       ``s = e + k − w``): exact, since ``⌊(2^(e+k)·H +
                       L) / 2^k⌋ = 2^e·H + ⌊L / 2^k⌋`` for integer ``H``
                       (:func:`mark_pairs`)
``affine``/``pool``    ``Sparse`` (one synapse per neuron: nothing to share) 1
multi-source synapse   ONE process of its mapping fed by every source: Lava  as its mapping
(not paired, not       sums the messages of all connections into an InPort
readout)               (``PyInPortVectorDense.recv``), so it takes graded
                       messages (the spike count 0..len(sources)) and
                       applies ``weight_exp`` to the sum once, as the twin
                       does (:func:`merged_sources`)
``readout``            ``Dense`` → non-spiking ``LIFReset`` integrator      1
``attention``          ``Sparse`` fan-out → ``ProdNeuron`` → ``Sparse`` sum  4 for the first
                       → ``GradedVec`` → ``Sparse`` fan-out → ``ProdNeuron`` pair, 2 for the
                       → ``Sparse`` (scale ``s``) — see                     third input
                       :func:`attention_order`
=====================  ==================================================  ===========

A graph conv after :func:`export.passes.fold_graph` is a dense ``(C'·V, C·V)`` matrix per
frame and body: it is a 1×1 ``Conv`` over ``C·V`` channels with frames (and bodies) as the
spatial axes, so its weight is stored once instead of ``T·M`` times.
"""
from __future__ import annotations

from .ir import Synapse

__all__ = ["ATTENTION_ORDERS", "attention_order", "attention_hops", "synapse_mapping", "hop_latency",
           "attention_resources", "SHARED_KINDS", "mark_pairs", "paired", "merged_sources"]

#: SG-SA product orders: ``qk`` computes ``A = Q Kᵀ`` (``V×V`` per frame) first, ``kv``
#: computes ``B = Kᵀ V`` (``C×C`` per frame) first. Integer arithmetic is exact, so both give
#: the same output; they differ in neurons, synapses and which input enters late.
ATTENTION_ORDERS = ("qk", "kv")

#: Synapse kinds whose weight is shared over frames and bodies (mapped to ``Conv``).
SHARED_KINDS = ("conv", "graph")


def attention_order(channels: int, joints: int) -> str:
    """The product order with fewer product neurons: ``qk`` needs ``2·C·V²`` per frame and
    body, ``kv`` needs ``2·C²·V``; ``qk`` when ``C ≥ V`` (ties go to ``qk``)."""
    return "qk" if channels >= joints else "kv"


def attention_hops(order: str) -> tuple:
    """Synapse hops from the ``(Q, K, V)`` spikes to the target's ``a_in``.

    ``qk``: Q, K → fan-out ``Sparse`` → ``ProdNeuron`` P1 → sum ``Sparse`` → ``GradedVec`` A
    → fan-out ``Sparse`` → ``ProdNeuron`` P2 (× V, which enters here through its own fan-out
    ``Sparse``) → scale ``Sparse``: Q and K take 4 hops, V 2. ``kv`` is the mirror image (K, V
    take 4, Q 2).
    """
    if order == "qk":
        return (4, 4, 2)
    if order == "kv":
        return (2, 4, 4)
    raise ValueError(f"unknown attention order {order!r}; expected one of {ATTENTION_ORDERS}")


def synapse_mapping(s: Synapse) -> str:
    """The Lava mapping of one synapse: ``sparse`` (unrolled ``Sparse``), ``conv`` (shared
    ``Conv``), ``conv+floor`` (shared ``Conv`` → relay → flooring ``Sparse``), ``dense``
    (readout), ``attention`` (stock product chain) or ``input`` (``RingBuffer`` →
    ``Sparse``)."""
    if s.kind == "input_conv":
        return "input"
    if s.kind == "readout":
        return "dense"
    if s.kind == "attention":
        return "attention"
    if s.kind in SHARED_KINDS and s.adjacency is None:
        e = 0 if s.weight_exp is None else int(s.weight_exp)
        return "conv" if e >= 0 else "conv+floor"
    return "sparse"


def mark_pairs(synapses: dict) -> None:
    """Mark the weight-split pairs that share one ``Conv`` (see the module table): a low
    partner ``lo`` (``meta["split_of"] = hi.name``, one source ``u``, ``weight_exp < 0``) of a
    shared high group ``hi`` (``weight_exp ≥ 0``) of the same kind, stride and padding. Sets ``hi.meta["paired_sources"]`` (sources whose connection is
    paired) and ``lo.meta["paired_with"]`` (the high group's name); clears stale marks."""
    for s in synapses.values():
        s.meta.pop("paired_sources", None)
        s.meta.pop("paired_with", None)
    for lo in synapses.values():
        hi = synapses.get(lo.meta.get("split_of", ""))
        if hi is None or len(lo.sources) != 1 or lo.sources[0] not in hi.sources:
            continue
        if synapse_mapping(hi) != "conv" or synapse_mapping(lo) != "conv+floor" or hi.kind != lo.kind:
            continue
        if (hi.stride, hi.padding) != (lo.stride, lo.padding):
            continue
        hi.meta.setdefault("paired_sources", []).append(lo.sources[0])
        lo.meta["paired_with"] = hi.name


def paired(s: Synapse, source: str) -> bool:
    """Whether the connection (``s``, ``source``) is one half of a shared weight-split pair."""
    return source in s.meta.get("paired_sources", ()) or bool(s.meta.get("paired_with"))


def merged_sources(s: Synapse) -> bool:
    """Whether the sources of ``s`` feed ONE Lava process (its ``Conv``, ``Conv`` + relay +
    floor, or ``Sparse``) instead of one per source.

    True for a synapse with several sources, none of them half of a weight-split pair, other
    than the readout, the first layer and the attention. All its connections then end on the
    same ``s_in``; lava-nc adds the messages of every connection of an InPort
    (``lava/magma/core/model/py/ports.py::PyInPortVectorDense.recv``), so the process receives
    the spike count ``0..len(sources)`` (graded messages) and its ``weight_exp`` shifts (or
    floors) the *sum* once — what the twin computes (:func:`export.twin.synapse_op` on the
    summed sources, then :func:`export.fixed_point.shift_exp`). One process per source would
    floor each source's sum separately. The sources all have the target's input shape, so
    every source sees the same weights; synaptic events are still counted per source spike.
    """
    if len(s.sources) < 2 or s.kind in ("readout", "input_conv", "attention"):
        return False
    return not s.meta.get("paired_sources") and not s.meta.get("paired_with")


def hop_latency(s: Synapse, source: str, channels: int | None = None, joints: int | None = None) -> int:
    """Lava steps from the spikes of ``source`` to the ``a_in`` of ``s.target`` (see the module
    table). ``channels``/``joints`` are needed for attention (its order) unless
    ``s.meta["attention_order"]`` is set."""
    m = synapse_mapping(s)
    if m == "conv+floor" or paired(s, source):
        return 2
    if m == "attention":
        order = s.meta.get("attention_order") or attention_order(channels, joints)
        return attention_hops(order)[s.sources.index(source)]
    return 1


def attention_resources(order: str, C: int, V: int, frames: int, bodies: int) -> dict:
    """Neurons and synapses of one SG-SA block per clip in the stock mapping.

    ``qk``: P1 ``C·V²``, A ``V²``, P2 ``C·V²`` neurons; synapses: Q and K fan-out ``C·V²``
    each, sum ``C·V²``, A fan-out ``C·V²``, V fan-out ``C·V²``, scale ``C·V²`` (per frame and
    body). ``kv``: the same with ``C²·V`` products and ``C²`` middle neurons.

    Returns dict with ``neurons``, ``synapses``, ``products`` (per clip) and ``order``.
    """
    fb = frames * bodies
    prod = C * V * V if order == "qk" else C * C * V
    mid = V * V if order == "qk" else C * C
    return {"order": order, "neurons": (2 * prod + mid) * fb, "products": 2 * prod * fb,
            "synapses": 6 * prod * fb, "middle": mid * fb}
