"""hw_sim.attention in Lava (Loihi2SimCfg fixed_pt): the stock-process SG-SA block against an
independent numpy reference (einsum here, not the twin), bit for bit at every step; the
middle population's values, the product populations' message counts, and the resources
against export.mapping."""
from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pytest

import hw_sim  # noqa: F401  (sets the multiprocessing start method before lava's runtime)
from export.mapping import attention_hops, attention_resources
from hw_sim.attention import build_attention
from hw_sim.probes import CountProbe, ValueProbe, open_counts, open_values, unroll

#: (M, C, T, V), (density q, k, v), weight_mant, weight_exp
CASES = [
    ((1, 4, 2, 5), (0.5, 0.5, 0.5), 3, -2),
    ((2, 8, 2, 20), (0.1, 0.5, 1.0), -5, -3),  # negative products floored
    ((2, 6, 1, 3), (1.0, 0.1, 0.5), 7, 2),     # C > V, left shift
]
IN_STEPS = 5  # steps of distinct input


def shift(x, e):
    return x << e if e >= 0 else x >> -e  # numpy >> on int64 is arithmetic: floor


def reference(order, q, k, v, mant, exp):
    """(out, mid) per step for spikes (S, M, C, T, V): out (S, M, C, T, V), mid (S, M, T, ·, ·)."""
    if order == "qk":
        mid = np.einsum("smctu,smctw->smtuw", q, k)
        out = np.einsum("smtuw,smctw->smctu", mid, v)
    else:
        mid = np.einsum("smatw,smbtw->smtab", k, v)
        out = np.einsum("smatu,smtab->smbtu", q, mid)
    return shift(out * mant, exp), mid


def product_counts(order, q, k, v, mid):
    """Non-zero messages of P1 and P2 per step."""
    if order == "qk":
        p1 = np.einsum("smctu,smctw->s", q, k)
        p2 = np.einsum("smtuw,smctw->s", (mid != 0).astype(np.int64), v)
    else:
        p1 = np.einsum("smatw,smbtw->s", k, v)
        p2 = np.einsum("smtab,smatu->s", (mid != 0).astype(np.int64), q)
    return p1, p2


@pytest.mark.parametrize("order", ["qk", "kv"])
@pytest.mark.parametrize("shape,dens,mant,exp", CASES)
def test_attention_block_matches_reference(tmp_path, order, shape, dens, mant, exp):
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer

    M, C, T, V = shape
    n = M * C * T * V
    rng = np.random.default_rng(zlib.crc32(f"{order}{shape}".encode()))
    spikes = {key: (rng.random((IN_STEPS,) + shape) < d).astype(np.int64) for key, d in zip("qkv", dens)}
    blk = build_attention("att", shape, mant, exp, order)

    # resources and hops: the rule of export.mapping
    res = attention_resources(order, C, V, T, M)
    assert (blk.neurons, blk.synapses) == (res["neurons"], res["synapses"])
    assert tuple(blk.input_hops[x] for x in "qkv") == attention_hops(order)
    for h in blk.hops:
        fo = blk.fan_outs[h["label"]]
        assert fo.shape == (h["n_source"],) and fo.sum() == h["synapses"]
    assert sum(h["synapses"] for h in blk.hops) == blk.synapses

    # sources: the late input (2 hops) is fed 2 steps after the early ones (4 hops)
    steps = IN_STEPS + 4
    late = [x for x in "qkv" if blk.input_hops[x] == 2][0]
    src = {}
    for key in "qkv":
        data = np.zeros((n, steps), dtype=np.int32)
        off = 2 if key == late else 0
        data[:, off:off + IN_STEPS] = spikes[key].reshape(IN_STEPS, n).T
        src[key] = RingBuffer(data=data)
        src[key].s_out.connect(getattr(blk, f"{key}_in"))

    dirs = {lab: tmp_path / lab for lab in ("out", "mid", "prod1", "prod2")}
    for d in dirs.values():
        d.mkdir()
    n_mid = blk.mid.s_out.shape[0]
    n_prod = blk.prod1.s_out.shape[0]
    probes = [ValueProbe(n=n, depth=steps, path=dirs["out"]), ValueProbe(n=n_mid, depth=steps, path=dirs["mid"]),
              CountProbe(n=n_prod, depth=steps, path=dirs["prod1"]),
              CountProbe(n=n_prod, depth=steps, path=dirs["prod2"])]
    blk.a_out.connect(probes[0].s_in)
    blk.mid.s_out.connect(probes[1].s_in)
    blk.prod1.s_out.connect(probes[2].s_in)
    blk.prod2.s_out.connect(probes[3].s_in)
    try:
        probes[0].run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    finally:
        probes[0].stop()

    out, mid = reference(order, spikes["q"], spikes["k"], spikes["v"], mant, exp)
    p1, p2 = product_counts(order, spikes["q"], spikes["k"], spikes["v"], mid)

    def lagged(x, lag):  # rows 0..steps-1 (Lava steps 1..steps) of a population holding input step τ at τ + lag
        x = x.reshape(IN_STEPS, -1)
        y = np.zeros((steps,) + x.shape[1:], dtype=np.int64)
        y[lag:lag + IN_STEPS] = x
        return y

    got_out = unroll(open_values(dirs["out"], steps, n), 1, steps)
    assert np.abs(out).max() > 0
    np.testing.assert_array_equal(got_out, lagged(out, blk.stage["a_out"]))
    np.testing.assert_array_equal(unroll(open_values(dirs["mid"], steps, n_mid), 1, steps),
                                  lagged(mid, blk.stage["mid"]))
    np.testing.assert_array_equal(unroll(open_counts(dirs["prod1"], steps), 1, steps),
                                  lagged(p1, blk.stage["prod1"]).ravel())
    np.testing.assert_array_equal(unroll(open_counts(dirs["prod2"], steps), 1, steps),
                                  lagged(p2, blk.stage["prod2"]).ravel())


def test_attention_rejects_bad_arguments():
    with pytest.raises(ValueError, match="order"):
        build_attention("att", (1, 2, 1, 3), 1, 0, "vq")
    with pytest.raises(ValueError, match="8-bit"):
        build_attention("att", (1, 2, 1, 3), 256, 0, "qk")
    with pytest.raises(ValueError, match="shape"):
        build_attention("att", (1, 2, 3), 1, 0, "qk")


def test_attention_connectivity_and_fan_outs():
    """The CSR matrices follow the documented layout (checked on a dense rebuild by loops)."""
    M, C, T, V = 2, 3, 2, 4
    for order in ("qk", "kv"):
        blk = build_attention("att", (M, C, T, V), 2, 0, order)
        W = {lab: p.weights.init.toarray() for lab, p in blk.processes.items() if hasattr(p, "weights")}
        io = lambda m, c, t, v: ((m * C + c) * T + t) * V + v  # noqa: E731
        P = np.zeros((M, T, C, V, V) if order == "qk" else (M, T, C, C, V), dtype=int)
        for m in range(M):
            for t in range(T):
                for a in range(P.shape[2]):
                    for b in range(P.shape[3]):
                        for x in range(V):
                            r = np.ravel_multi_index((m, t, a, b, x), P.shape)
                            if order == "qk":  # [c, u, w]
                                assert W["q_fanout"][r, io(m, a, t, b)] == 1 and W["k_fanout"][r, io(m, a, t, x)] == 1
                                assert W["v_fanout"][r, io(m, a, t, x)] == 1
                                assert W["scale"][io(m, a, t, b), r] == 2
                                mid = np.ravel_multi_index((m, t, b, x), (M, T, V, V))
                            else:  # [c1, c2, w|u]
                                assert W["k_fanout"][r, io(m, a, t, x)] == 1 and W["v_fanout"][r, io(m, b, t, x)] == 1
                                assert W["q_fanout"][r, io(m, a, t, x)] == 1
                                assert W["scale"][io(m, b, t, x), r] == 2
                                mid = np.ravel_multi_index((m, t, a, b), (M, T, C, C))
                            assert W["sum"][mid, r] == 1 and W["mid_fanout"][r, mid] == 1
        for lab, w in W.items():
            assert ((w != 0).sum(axis=1) == (1 if lab not in ("sum", "scale") else w.shape[1] // w.shape[0])).all()
            np.testing.assert_array_equal(blk.fan_outs[lab], (w != 0).sum(axis=0))
            assert blk.processes[lab].weights.init.dtype == np.int32


def test_max_weight_mant_is_the_fixed_point_limit():
    from export import fixed_point as fx
    from hw_sim.attention import MAX_WEIGHT_MANT
    assert MAX_WEIGHT_MANT == 2 ** fx.MAX_WEIGHT_BITS - 1


def test_modules_import_light():
    code = ("import sys, hw_sim.attention, hw_sim.probes; "
            "bad = [m for m in ('torch', 'export.twin', 'export.fixed_point') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
