"""The Lava mapping (issues 19, 20): stand-ins equal the stock processes they replace, the
shared (Conv) mapping equals the unrolled one step by step, the process models do not compute
with the twin (the import direction itself: tests/test_layers.py), and a planted fault in the twin's attention op is reported at the attention's first graded hop."""
import ast
from pathlib import Path

import numpy as np
import pytest

from export.mapping import attention_hops, hop_latency, paired, synapse_mapping
from hw_sim.connectivity import fan_out, shared_fan_out, synapse_matrix
from hw_sim.replay import replay

from .export_fixtures import real_clips, tiny_quantised

ROOT = Path(__file__).resolve().parents[1]


def _run(build, steps):
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    src, sink, cfg = build()
    try:
        src.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt", **cfg))
        return sink.data.get().copy()
    finally:
        src.stop()


@pytest.mark.parametrize("kernel,stride,pad,graded", [((5, 1), (2, 1), (2, 0), False), ((1, 1), (1, 1), (0, 0), False),
                                                      ((3, 1), (1, 1), (1, 0), True)])
def test_fast_conv_model_equals_the_stock_conv_model(kernel, stride, pad, graded):
    """PyConvModelFixedFast (own stand-in) computes exactly what lava's PyConvModelFixed
    computes, including the 24-bit wrap (large graded inputs overflow it on purpose)."""
    from lava.proc.conv.models import PyConvModelFixed
    from lava.proc.conv.process import Conv
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer
    from hw_sim.processes import PyConvModelFixedFast
    rng = np.random.default_rng(1)
    X, Y, C, Co, steps = 9, 4, 5, 3, 4
    if graded:
        data = rng.integers(-2 ** 20, 2 ** 20, (X * Y * C, steps)).astype(np.int32)
    else:
        data = (rng.random((X * Y * C, steps)) < 0.4).astype(np.int32)
    w = rng.integers(-128, 128, (Co,) + kernel + (C,)).astype(np.int32)
    outs = []
    for model in (PyConvModelFixed, PyConvModelFixedFast):
        def build():
            src = RingBuffer(data=data)
            conv = Conv(weight=w, input_shape=(X, Y, C), padding=pad, stride=stride, num_message_bits=24 if graded else 0)
            src.s_out.reshape((X, Y, C)).connect(conv.s_in)
            n = int(np.prod(conv.a_out.shape))
            sink = Sink(shape=(n,), buffer=steps)
            conv.a_out.reshape((n,)).connect(sink.a_in)
            return src, sink, {"exception_proc_model_map": {Conv: model}}
        outs.append(_run(build, steps))
    assert np.abs(outs[0]).max() > 0
    assert np.array_equal(outs[0], outs[1])
    if graded:
        assert np.abs(outs[0]).max() >= 2 ** 22  # the wrap range was exercised


def test_multi_delay_plus_sparse_equals_delay_sparse():
    """Each line of the one delay process (own, multi_delay) + Sparse equals lava's DelaySparse
    with that delay on every synapse, step by step: two lines of different delays (3 and 1)
    from one source into the two halves of one sink, so a swapped, shared or off-by-one line
    shows."""
    from scipy import sparse as sp
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer
    from lava.proc.sparse.process import DelaySparse, Sparse
    from hw_sim.processes import multi_delay
    rng = np.random.default_rng(2)
    n_in, n_out, steps, ds = 12, 7, 12, (3, 1)
    data = (rng.random((n_in, steps)) < 0.5).astype(np.int32)

    def half(k):  # weights into rows k*n_out .. (k+1)*n_out - 1 of the sink
        w = sp.random(n_out, n_in, density=0.4, random_state=3 + k,
                      data_rvs=lambda m: rng.integers(1, 60, m) * 2).tocoo()
        return sp.csr_matrix((w.data.astype(np.int32), (w.row + k * n_out, w.col)), shape=(2 * n_out, n_in))

    ws = [half(0), half(1)]

    def ours():
        src = RingBuffer(data=data)
        lines, model = multi_delay([(n_in, d) for d in ds])
        sink = Sink(shape=(2 * n_out,), buffer=steps)
        for i, w in enumerate(ws):
            syn = Sparse(weights=w, num_weight_bits=8)
            src.s_out.connect(getattr(lines, f"in{i}"))
            getattr(lines, f"out{i}").connect(syn.s_in)
            syn.a_out.connect(sink.a_in)
        return src, sink, {"exception_proc_model_map": {lines: model}}

    def stock():
        src = RingBuffer(data=data)
        sink = Sink(shape=(2 * n_out,), buffer=steps)
        for d, w in zip(ds, ws):
            delays = w.copy()
            delays.data = np.full(delays.nnz, d, dtype=int)
            syn = DelaySparse(weights=w, delays=delays, num_weight_bits=8)
            src.s_out.connect(syn.s_in)
            syn.a_out.connect(sink.a_in)
        return src, sink, {}

    a, b = _run(ours, steps), _run(stock, steps)
    assert np.abs(a[:n_out]).sum() > 0 and np.abs(a[n_out:]).sum() > 0
    assert np.array_equal(a, b)


def test_multi_delay_refuses_a_zero_delay():
    from hw_sim.processes import multi_delay
    with pytest.raises(ValueError, match="delays >= 1"):
        multi_delay([(4, 2), (3, 0)])


def test_shared_fan_out_equals_the_unrolled_matrix():
    g = tiny_quantised("mksgn")[1]
    seen = set()
    for s in g.synapses.values():
        if synapse_mapping(s) in ("conv", "conv+floor"):
            u = s.sources[0]
            assert np.array_equal(shared_fan_out(g, s, u), fan_out(synapse_matrix(g, s, u))), s.name
            seen.add(s.kind)
    assert seen == {"conv", "graph"}


def test_delays_follow_the_mapping_rule():
    """Every connection arrives when its target integrates: latency(u) + delay + hops =
    latency(target); attention takes 4 hops for its first pair, 2 for the third input, and a
    shared conv with a negative exponent 2."""
    g = tiny_quantised("mksgn")[1]
    kinds = set()
    for s in g.synapses.values():
        if s.target == "logits":
            continue
        for u in s.sources:
            lat_u = 0 if u == "input" else g.groups[u].latency
            assert lat_u + s.meta["delays"][u] + hop_latency(s, u) == g.groups[s.target].latency, (s.name, u)
        kinds.add(synapse_mapping(s))
        if s.kind == "attention":
            assert sorted(hop_latency(s, u) for u in s.sources) == sorted(attention_hops(s.meta["attention_order"]))
    assert {"conv", "conv+floor", "attention", "sparse", "input"} <= kinds
    # weight-split pairs share one Conv: both halves take the relay's 2 hops
    pairs = [(s, u) for s in g.synapses.values() for u in s.sources if u != "input" and paired(s, u)]
    assert pairs and all(hop_latency(s, u) == 2 for s, u in pairs)
    for s in g.synapses.values():
        if s.meta.get("paired_with"):
            hi = g.synapses[s.meta["paired_with"]]
            assert s.meta["split_of"] == hi.name and s.weight_exp < 0 <= hi.weight_exp


def test_shared_and_unrolled_mappings_are_identical_step_by_step():
    """The same small graph replayed with Conv (weights once) and with unrolled Sparse
    matrices: both equal the twin on every group, step, spike, u and v, so they equal each
    other; their measured events are equal too, and the shared one stores fewer weights."""
    g = tiny_quantised("base_sgn")[1]
    x = real_clips("test", 1)
    a = replay(g, x, chunk=1)
    b = replay(g, x, chunk=1, shared=False)
    assert a.bit_exact and b.bit_exact
    assert a.events_lava == b.events_lava == a.events_twin
    assert "conv pair" in a.mapping.values()
    assert sum(a.stored_weights.values()) < sum(b.stored_weights.values()) / 5


def test_multi_source_synapses_share_one_process_and_floor_their_sum_once():
    """Plain 8-bit tiny MK-SGN: every multi-source synapse (Q, K, the STC conv and residual
    read H0 = SA-SGC's two spike groups, plus SG-SA's output) is ONE Lava process fed by all
    its sources, not one per source. A negative exponent planted on the three-source temporal
    conv makes it ``Conv`` → relay → floor: Lava must floor the summed input once, as the
    twin does (per-source floors would differ), and the replay stays bit-exact on every
    group, step, spike, u and v, with the twin's event count."""
    from export.frontend import from_model
    from export.mapping import merged_sources
    from export.passes import balance_delays
    from export.pipeline import lower
    from .export_fixtures import tiny_model
    g = lower(from_model(tiny_model("mksgn")), real_clips("train", 16), weight_split=())
    name = "layers.0.stc.tconv"
    s = g.synapses[name]
    assert len(s.sources) == 3 and merged_sources(s) and s.weight_exp >= 0
    g.synapses[name].weight_exp = -2  # now conv+floor: 2 hops, delays re-balanced
    g = balance_delays(g)
    assert synapse_mapping(g.synapses[name]) == "conv+floor"
    res = replay(g, real_clips("test", 1), chunk=1)
    assert res.bit_exact and res.events_lava == res.events_twin
    multi = [x for x in g.synapses.values() if merged_sources(x)]
    assert len(multi) >= 4 * 2  # per layer: q, k, stc.res, stc.tconv
    for x in multi:  # one synapse process (a relay and a floor after a negative exponent)
        labels = [k for k in res.process_labels if k.startswith(f"{x.name}<-")]
        assert labels == [f"{x.name}<-{'+'.join(x.sources)}"], (x.name, labels)
    assert res.mapping[name] == "conv+floor"


@pytest.mark.slow
def test_planted_fault_in_the_twin_attention_op_is_reported_at_its_first_hop(monkeypatch):
    """One bit of the twin's attention middle product flipped (the first graded population of
    the stock attention): the replay reports the mismatch at that hop, before any neuron
    group diverges."""
    import export.twin as twin
    g = tiny_quantised("mksgn")[1]
    real = twin.attention_op

    def faulty(s, xs, w):
        out, mid = real(s, xs, w)
        if s.name == "layers.0.sg_sa.attn":
            mid = mid.clone()
            j = int(mid.flatten().abs().argmax())
            mid.view(-1)[j] = float(int(mid.view(-1)[j]) ^ 1)
        return out, mid

    monkeypatch.setattr(twin, "attention_op", faulty)
    res = replay(g, real_clips("test", 1), chunk=1)
    assert not res.bit_exact
    mm = res.mismatches[0]
    assert mm.group == "layers.0.sg_sa.attn:mid" and mm.var == "values"
    assert abs(mm.lava - mm.twin) == 1


PROCESS_MODEL_MODULES = ("hw_sim/processes.py", "hw_sim/probes.py", "hw_sim/attention.py")


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_process_models_do_not_compute_with_the_twin_or_export_arithmetic():
    for rel in PROCESS_MODEL_MODULES:
        mods = set(_imports(ROOT / rel))
        assert not {m for m in mods if m.startswith(("export.twin", "export.fixed_point", "torch"))}, rel
