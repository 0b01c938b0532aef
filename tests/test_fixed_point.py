"""export/fixed_point.py: hand-checked rules, and bit-exact agreement with Lava's own
bit-accurate process models (PyLifModelBitAcc, PyDenseModelBitAcc) selected with
``Loihi2SimCfg(select_tag="fixed_pt")``."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from export import fixed_point as fp

M = fp.MAX_UV


# ----------------------------------------------------------------------------- by hand
def test_constants():
    assert (fp.DECAY_SHIFT, fp.DECAY_UNITY, fp.VTH_SHIFT, fp.ACT_SHIFT) == (12, 4096, 6, 6)
    assert (fp.UV_BITS, fp.MAX_UV, fp.A_IN_BITS, fp.WEIGHT_BITS, fp.DECAY_BITS) == (
        24, 2 ** 23, 16, 8, 12)


def test_decay_rounds_toward_zero():
    x = np.array([-5, 5, -1, 1, -4097, 4097, 0])
    assert fp.decay(x, 2048).tolist() == [-2, 2, 0, 0, -2048, 2048, 0]
    # floor would give -3, -1, -2049 for the negatives
    assert fp.decay(torch.tensor([-5, 5, -1]), torch.tensor(2048)).tolist() == [-2, 2, 0]
    assert fp.decay(np.array([123456, -123456]), 4096).tolist() == [0, 0]
    assert fp.decay(np.array([123456, -123456]), 0).tolist() == [123456, -123456]


def test_shifts():
    assert fp.shift_right_floor(np.array([-1, -3, 3, -4]), 1).tolist() == [-1, -2, 1, -2]
    assert fp.shift_exp(np.array([-3, 3]), np.array([-1, 2])).tolist() == [-2, 12]
    assert fp.wrap_int32(np.array([2 ** 31, -2 ** 31 - 1])).tolist() == [-2 ** 31, 2 ** 31 - 1]
    assert fp.conv_wrap(np.array([2 ** 23, -2 ** 23, 2 ** 24 + 5])).tolist() == [-2 ** 23,
                                                                                -2 ** 23, 5]


def test_wrap_u_quirks():
    c = np.array([M, -M, M + 1, -M - 1, M - 1, -M + 1, 3 * M + 5, -3 * M - 5, 0])
    assert fp.wrap_u(c).tolist() == [M, M, -M + 1, M - 1, M - 1, -M + 1, M + 5, -M - 5, 0]
    assert fp.wrap_u(torch.tensor(c)).tolist() == fp.wrap_u(c).tolist()


def test_clip_v():
    assert fp.clip_v(np.array([M, -M, 5, 2 * M])).tolist() == [M - 1, -M + 1, 5, M - 1]


def test_strict_threshold_and_reset():
    # du = 4095 -> u = a_in << 6; v = u; vth = 2 -> effective 128
    u, v, s = fp.lif_step(0, 0, np.array([2, 3, 1]), du=4095, dv=0, vth_mant=2)
    assert u.tolist() == [128, 192, 64]
    assert s.tolist() == [False, True, False]  # v == 128 does not spike
    assert v.tolist() == [128, 0, 64]  # reset to 0 where spiked
    # negative bias exponent is a floor shift
    assert fp.effective_bias(np.array([-64, 64, -1]), np.array([-7, -7, -1])).tolist() == [
        -1, 0, -1]


def test_weight_rules():
    w = np.array([[-300, 3, -3, 255, 1, -1]])
    assert fp.truncate_weights(w).tolist() == [[-256, 2, -4, 254, 0, -2]]  # mixed: even
    assert fp.truncate_weights(np.array([[0, 3, 300]])).tolist() == [[0, 3, 255]]
    assert fp.truncate_weights(np.array([[0, -3, -300]])).tolist() == [[0, -3, -255]]
    assert fp.truncate_weights(np.array([[0, -3, -7]]), 6).tolist() == [[0, 0, -4]]  # to 0
    assert fp.dense_act(np.array([1, 0, 1]), np.array([[1, 2, 3], [-5, 6, -7]]), -1).tolist() \
        == [1, -7]


def test_torch_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.integers(-3000, 3000, (20, 4, 7))
    bm = rng.integers(-4096, 4096, 7)
    res_np = fp.lif_run(a, 300, 1000, 200, bm, 2)
    res_t = fp.lif_run(torch.tensor(a), 300, 1000, 200, torch.tensor(bm), 2)
    for x, y in zip(res_np, res_t):
        assert np.array_equal(x, y.numpy())
    w = rng.integers(-256, 256, (5, 9))
    s = rng.integers(0, 2, (3, 9))
    assert np.array_equal(fp.dense_act(s, w, -2), fp.dense_act(torch.tensor(s), w, -2).numpy())


def test_lif_step_torch_flags_and_shift_exp():
    u0 = torch.tensor([[M - 10, 0, 0]])
    v0 = torch.tensor([[0, M - 1, 0]])
    a = torch.tensor([[1, 1, 1]])
    u, v, s, flags = fp.lif_step_torch(u0, v0, a, 4094, 0, 2 ** 17 - 1, np.array([0, 0, 0]), 0)
    ref = fp.lif_step(u0.numpy(), v0.numpy(), a.numpy(), 4094, 0, 2 ** 17 - 1, 0, 0)
    assert all(np.array_equal(x.numpy(), y) for x, y in zip((u, v, s), ref))
    assert u.dtype == torch.int64 and flags == {"u_wrap": 0, "v_clip": 1}
    _, _, _, flags = fp.lif_step_torch(u0, v0, a * 1024, 0, 0, 1, 0, 0)
    assert flags["u_wrap"] == 1  # decay(M - 10, 1) + (1024 << 6) > M
    assert fp.A_IN_MIN == -32768 and fp.A_IN_MAX == 32767
    y = fp.shift_exp(torch.tensor([-3.0, 3.0, 5.0], dtype=torch.float64), -1)
    assert y.dtype == torch.int64 and y.tolist() == [-2, 1, 2]


def test_quantise():
    w = np.array([0.5, -1.0, 0.25, 0.0])
    wm, e, scale = fp.quantise_weights(w)
    assert e == 0 and scale == 256.0 and wm.tolist() == [128, -256, 64, 0]
    assert np.array_equal(fp.truncate_weights(wm, 8, fp.MIXED), wm)
    rng = np.random.default_rng(2)
    wf = rng.normal(0, 0.3, (16, 16))
    wm, e, scale = fp.quantise_weights(wf, current_scale=1000.0)
    assert np.array_equal(fp.truncate_weights(wm, 8, fp.MIXED), wm)
    assert np.abs(wm * 2.0 ** e - wf * scale).max() <= 2.0 ** e  # half a grid step of 2
    assert np.abs(wm).max() >= 128  # the exponent makes the mantissa range used
    assert fp.quantise_threshold(1.0, 100).item() == 100
    bm, be = fp.quantise_bias(np.array([0.1, 10.0, 0.0]), 100)
    assert bm.tolist() == [640, 4000, 0] and be.tolist() == [0, 4, 0]
    assert fp.quantise_decay(0.75) == 1024 and fp.quantise_decay(0.0) == 4095


# ----------------------------------------------------------------------------- vs Lava
try:
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.models import PyDenseModelBitAcc
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.models import PyLifModelBitAcc
    from lava.proc.lif.process import LIF
    from lava.proc.monitor.process import Monitor
    from lava.utils.weightutils import SignMode
    HAVE_LAVA = True
except ImportError:  # pragma: no cover
    HAVE_LAVA = False
    SignMode = None
needs_lava = pytest.mark.skipif(not HAVE_LAVA, reason="lava-nc not installed")

CFG = dict(select_tag="fixed_pt")


@needs_lava
def test_fixed_pt_tag_selects_bit_accurate_models():
    assert "fixed_pt" in PyLifModelBitAcc.tags and "bit_accurate_loihi" in PyLifModelBitAcc.tags
    assert "fixed_pt" in PyDenseModelBitAcc.tags


def _only(d):
    (inner,) = d.values()
    (arr,) = inner.values()
    return np.asarray(arr)


def _lava_lif(a_in, du, dv, vth, bias_mant, bias_exp, u0, v0):
    """Drive LIF directly from a fixed-point RingBuffer (int32, no synaptic delay)."""
    n, t = a_in.shape
    rb = RingBuffer(data=a_in.astype(np.int32))
    lif = LIF(shape=(n,), du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=bias_exp,
              u=u0, v=v0)
    rb.s_out.connect(lif.a_in)
    mons = [Monitor() for _ in range(3)]
    for m, target in zip(mons, (lif.u, lif.v, lif.s_out)):
        m.probe(target, t)
    try:
        lif.run(condition=RunSteps(num_steps=t), run_cfg=Loihi2SimCfg(**CFG))
        out = [_only(m.get_data()) for m in mons]
    finally:
        lif.stop()
    return [np.rint(x).astype(np.int64) for x in out]  # (T, n) each


LIF_CASES = {
    # name: (a_in range, du, dv, vth, bias range, bias_exp choice, u0/v0 range)
    "typical": (3000, 1000, 800, 300, 4096, [0, 1, 2, 3], 0),
    "instant_u": (4000, 4095, 3072, 50, 1000, [0, 7], 0),
    "no_leak_clip_v": (2 ** 16, 0, 0, 2 ** 17 - 1, 4096, [5, 6, 7], 2 ** 22),
    "wrap_u_big_inputs": (2 ** 26, 7, 100, 10000, 4096, [-3, -1, 0, 4], M),
    # v is a random walk in steps of 64 hitting vth << 6 exactly: strict threshold
    "exact_threshold": (4, 4095, 0, 3, 0, [0], 0),
}


@needs_lava
@pytest.mark.parametrize("name", sorted(LIF_CASES))
def test_lif_run_matches_lava_bit_accurate(name):
    amp, du, dv, vth, bamp, bexps, s0 = LIF_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    n, t = 12, 25
    a_in = rng.integers(-amp, amp, (n, t))
    if name == "wrap_u_big_inputs":  # hit the wrap boundaries exactly
        a_in[0, :] = 2 ** 17  # u = 2**23 is kept
        a_in[1, :] = -(2 ** 17)  # u = -2**23 becomes +2**23
        a_in[2, :5] = 2 ** 25  # a_in << 6 wraps int32
    bias_mant = rng.integers(-bamp, bamp, n) if bamp else np.zeros(n, np.int64)
    bias_exp = rng.choice(bexps, n)
    u0 = rng.integers(-s0, s0 + 1, n) if s0 else np.zeros(n, np.int64)
    v0 = rng.integers(-s0, s0 + 1, n) if s0 else np.zeros(n, np.int64)
    if s0:
        u0[0] = v0[0] = 0
        u0[1] = v0[1] = 0
    u_l, v_l, s_l = _lava_lif(a_in, du, dv, vth, bias_mant, bias_exp, u0, v0)
    u, v, s = fp.lif_run(a_in.T, du, dv, vth, bias_mant, bias_exp, u0, v0)
    for step in range(t):
        assert np.array_equal(u[step], u_l[step]), (name, step, u[step], u_l[step])
        assert np.array_equal(v[step], v_l[step]), (name, step, v[step], v_l[step])
        assert np.array_equal(s[step].astype(np.int64), s_l[step]), (name, step)
    assert s.any() or name == "no_leak_clip_v"
    if name == "wrap_u_big_inputs":
        assert (u[:, 0] == M).any() and (u[:, 1] == M).any()
    if name == "exact_threshold":
        assert (v == vth << 6).any()
    if name == "no_leak_clip_v":
        assert (np.abs(v) == M - 1).any()
    # same through torch
    ut, vt, st = fp.lif_run(torch.tensor(a_in.T), du, dv, vth, torch.tensor(bias_mant),
                            torch.tensor(bias_exp), torch.tensor(u0), torch.tensor(v0))
    assert np.array_equal(ut.numpy(), u) and np.array_equal(vt.numpy(), v)


DENSE_CASES = [  # (weight_exp, num_weight_bits, weight kind, sign_mode passed)
    (-3, 8, "mixed", None), (-2, 8, "mixed", None), (-1, 8, "mixed", None),
    (0, 8, "mixed", None), (1, 8, "mixed", None), (2, 8, "mixed", None),
    (3, 8, "mixed", None), (0, 8, "exc", None), (-1, 8, "inh", None),
    (1, 6, "mixed", None), (0, 7, "exc", "MIXED"),  # forced sign mode (SignMode.MIXED in Lava)
]


@needs_lava
def test_dense_act_matches_lava_bit_accurate():
    rng = np.random.default_rng(7)
    n_in, n_out, t = 20, 9, 12
    spikes = rng.integers(0, 2, (n_in, t))
    spikes[:, 0] = 1  # all-on step: large sums
    rb = RingBuffer(data=spikes.astype(np.int32))
    procs, weights, mons = [], [], []
    for e, nwb, kind, sm in DENSE_CASES:
        lo, hi = {"mixed": (-300, 300), "exc": (0, 300), "inh": (-300, 1)}[kind]
        w = rng.integers(lo, hi, (n_out, n_in))
        kw = dict(weights=w, weight_exp=e, num_weight_bits=nwb)
        if sm is not None:
            kw["sign_mode"] = SignMode[sm]
        d = Dense(**kw)
        rb.s_out.connect(d.s_in)
        m = Monitor()
        m.probe(d.a_out, t)
        procs.append(d)
        weights.append(w)
        mons.append(m)
    try:
        rb.run(condition=RunSteps(num_steps=t), run_cfg=Loihi2SimCfg(**CFG))
        outs = [np.rint(_only(m.get_data())).astype(np.int64) for m in mons]
    finally:
        rb.stop()
    for (e, nwb, kind, sm), w, out in zip(DENSE_CASES, weights, outs):
        assert np.array_equal(out[0], np.zeros(n_out))  # one step late: first output is 0
        want = fp.dense_act(spikes.T[:-1], w, e, nwb, sm)  # (t-1, n_out)
        assert np.array_equal(out[1:], want), (e, nwb, kind, out[1:], want)
        want_t = fp.dense_act(torch.tensor(spikes.T[:-1]), torch.tensor(w), e, nwb, sm)
        assert np.array_equal(want_t.numpy(), want)
