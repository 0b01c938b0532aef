"""SMF (paper eq. 16–24): DV bound, MI matrix, fusion weights, running weights, eval fusion."""
import math

import pytest
import torch

import mksgn.models.smf as smf_mod
from mksgn.errors import ConfigError
from mksgn.models import MKSGN, ModelConfig
from mksgn.models.smf import (FUSION_RULES, PAIRS, SMF, MineEstimator, fusion_weights, mi_lower_bound,
                              mi_matrix, pair_key)
from mksgn.neuron import lif_scan
from mksgn.preprocess import MODALITIES


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (two spin-waiting OpenMP threads on the shared
    2-core CPU made the optimisation loop ~30x slower); restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- DV bound
TS, B, C, T, V = 4, 4, 4, 8, 5  # 160 spike trains of 4 steps per batch


def _bernoulli(g):
    return (torch.rand(TS * B, C, T, V, generator=g) < 0.5).float()


def _lif_code(g):
    """Direct-coded LIF spikes (constant current over T_s, as SpikingCoding): patterns such
    as 1111, 0101, 0010 whose step order is far from exchangeable."""
    cur = torch.rand(B, C, T, V, generator=g) * 1.5
    return lif_scan(cur.unsqueeze(0).expand(TS, *cur.shape), 0.25, 1.0)[0].flatten(0, 1)


def _pair(kind, g):
    a = _bernoulli(g)
    if kind == "noisy":  # b = a with 10 % of the spikes flipped
        return a, torch.where(torch.rand(a.shape, generator=g) < 0.1, 1 - a, a)
    if kind == "independent":
        return a, _bernoulli(g)
    return a, _lif_code(g)  # independent of a, strong structure over T_s


def _trained_bound(kind, steps=200):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    est = MineEstimator(C, TS, hidden=16)
    opt = torch.optim.Adam(est.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = -mi_lower_bound(est, *_pair(kind, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # held-out batches
        return sum(mi_lower_bound(est, *_pair(kind, g), generator=g).item() for _ in range(5)) / 5


def test_bound_larger_for_dependent_than_independent_signals():
    dependent, independent = _trained_bound("noisy"), _trained_bound("independent")
    # seen: ~4.8 nats vs ~0.0001 nats
    assert dependent > 1.0
    assert abs(independent) < 0.1
    assert dependent > independent + 1.0


def test_bound_near_zero_for_independent_lif_codes():
    """The marginal shuffles frames, keeping every spike train of b: independent modalities
    with structured trains give ~0. (Shuffling the T_s axis instead gave ~3.4 nats here.)"""
    assert abs(_trained_bound("lif_independent")) < 0.1


class _Recorder(MineEstimator):
    """Scores = fixed linear function of the inputs; records what it was given."""

    def forward(self, a, b):
        self.seen = (a, b)
        return (a.sum(1) - 2 * b.sum(1)).view(self.time_steps, -1, *a.shape[2:]).mean(0)


def test_marginal_is_a_frame_derangement_of_b_only():
    g = torch.Generator().manual_seed(3)
    a, b = _bernoulli(g), torch.randn(TS * B, C, T, V, generator=g)
    est = _Recorder(C, TS)
    lb = mi_lower_bound(est, a, b, generator=torch.Generator().manual_seed(7))
    a2, b2 = est.seen
    assert torch.equal(a2, torch.cat([a, a], dim=2))
    assert torch.equal(b2[:, :, :T], b)
    marg = b2[:, :, T:]
    sigma = [next(s for s in range(T) if torch.equal(marg[:, :, tau], b[:, :, s])) for tau in range(T)]
    assert sorted(sigma) == list(range(T))  # a permutation of frames ...
    assert all(s != tau for tau, s in enumerate(sigma))  # ... with no fixed point
    # DV (eq. 21): mean(T_joint) − log mean exp(T_marginal), over B·T·V scores
    scores = est(a2, b2)
    j, m = scores[:, :T].flatten(), scores[:, T:].flatten()
    assert lb.item() == pytest.approx((j.mean() - m.exp().mean().log()).item(), rel=1e-5, abs=1e-5)


def test_bound_is_finite_for_huge_scores():
    class Huge(MineEstimator):
        def forward(self, a, b):
            return 1000.0 + b.view(self.time_steps, -1, *b.shape[1:])[0].sum(1)  # (B, T, V)

    g = torch.Generator().manual_seed(0)
    a, b = _bernoulli(g), _bernoulli(g)
    assert torch.isfinite(mi_lower_bound(Huge(C, TS), a, b, generator=g))


def test_mi_matrix_symmetric_zero_diagonal_and_per_pair_bounds():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    ests = {pair_key(*p): MineEstimator(C, TS, hidden=8) for p in PAIRS}
    spikes = {m: _bernoulli(g) for m in MODALITIES}
    mi = mi_matrix(ests, spikes, generator=torch.Generator().manual_seed(5))
    assert mi.shape == (4, 4)
    assert torch.equal(mi, mi.T) and torch.equal(mi.diagonal(), torch.zeros(4))
    g2 = torch.Generator().manual_seed(5)
    for first, second in PAIRS:  # same generator draws, same order
        lb = mi_lower_bound(ests[pair_key(first, second)], spikes[first], spikes[second], generator=g2)
        assert mi[MODALITIES.index(first), MODALITIES.index(second)].item() == lb.item()
    with pytest.raises(ConfigError, match="bone_motion"):
        mi_matrix(ests, {m: spikes[m] for m in MODALITIES[:3]})


# --------------------------------------------------------------------------- eq. 22–23
BY_HAND_MI = torch.tensor([[0., 1., 2., 3.],
                           [1., 0., 4., 5.],
                           [2., 4., 0., 6.],
                           [3., 5., 6., 0.]])
"""A symmetric MI matrix small enough to do eq. 22-23 by hand: row sums 6, 10, 12, 14 of 42."""
UCLA_MI = torch.tensor([[0., 0.0101, 0.0052, 0.0011], [0.0101, 0., 0.0054, 0.0123],
                        [0.0052, 0.0054, 0., 0.1335], [0.0011, 0.0123, 0.1335, 0.]])
"""The NW-UCLA MI matrix (nats) of the interim four-modality run's last epoch."""

def test_fusion_weights_equal_eq_22_23_by_hand():
    mi = BY_HAND_MI
    # eq. 22: row sums 6, 10, 12, 14 over the total 42; eq. 23: (x − 6/42) / (8/42)
    expected = torch.tensor([0.0, 4 / 8, 6 / 8, 1.0])
    assert torch.allclose(fusion_weights(mi, "paper"), expected, atol=1e-6)
    # not symmetric: eq. 22 uses the row sums (dim = 1)
    mi2 = torch.tensor([[0., 3., 0., 0.], [0., 0., 0., 1.], [0., 0., 0., 0.], [0., 0., 2., 0.]])
    assert torch.allclose(fusion_weights(mi2, "paper"), torch.tensor([1.0, 1 / 3, 0.0, 2 / 3]), atol=1e-6)


def test_share_rule_is_eq_22_alone_by_hand_and_the_default():
    mi = BY_HAND_MI
    expected = torch.tensor([6., 10., 12., 14.]) / 42  # eq. 22: row sums over the total
    assert torch.allclose(fusion_weights(mi, "share"), expected, atol=1e-6)
    assert torch.equal(fusion_weights(mi), fusion_weights(mi, "share"))
    assert FUSION_RULES == ("share", "paper", "complement")
    # all shares equal: eq. 23 is undefined, the share rule gives 1/4 each
    assert torch.allclose(fusion_weights(torch.ones(4, 4) - torch.eye(4)), torch.full((4,), 0.25))


def test_share_rule_keeps_every_modality_for_positive_mi():
    """Issue 16: for any MI matrix with positive off-diagonal bounds the share rule gives every
    modality a weight > 0 and the weights sum to 1, while eq. 23 ("paper") always gives the
    least-dependent modality exactly 0 -- also for the NW-UCLA matrix measured in the interim
    run's last epoch (bounds <= 0.016 nats except joint motion-bone motion)."""
    g = torch.Generator().manual_seed(0)
    for k in range(200):
        a = torch.rand(4, 4, generator=g) * 10 ** (-3 * torch.rand((), generator=g)) + 1e-6
        mi = torch.triu(a, 1) + torch.triu(a, 1).T
        w = fusion_weights(mi)
        assert (w > 0).all() and w.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert fusion_weights(mi, "paper").min().item() == 0.0
    ucla = UCLA_MI
    assert fusion_weights(ucla).tolist() == pytest.approx([0.049, 0.083, 0.430, 0.438], abs=1e-3)
    assert fusion_weights(ucla, "paper").tolist() == pytest.approx([0.0, 0.087, 0.978, 1.0], abs=1e-3)
    # a modality is 0 only when every bound in its row is 0
    iso = torch.tensor([[0., 0., 0., 0.], [0., 0., 1., 2.], [0., 1., 0., 3.], [0., 2., 3., 0.]])
    assert fusion_weights(iso).tolist() == pytest.approx([0.0, 3 / 12, 4 / 12, 5 / 12])


def test_complement_rule_by_hand_reverses_the_share_ranking_and_keeps_a_sixth():
    """``"complement"`` = (1 − eq. 22)/3: sums to 1, orders the modalities opposite to their MI
    share, and (symmetric MI, zero diagonal: a row holds at most half the total) never gives a
    modality less than 1/6 -- on the NW-UCLA matrix the position modalities lead."""
    mi = BY_HAND_MI
    expected = (1 - torch.tensor([6., 10., 12., 14.]) / 42) / 3
    assert torch.allclose(fusion_weights(mi, "complement"), expected, atol=1e-6)
    g = torch.Generator().manual_seed(1)
    for k in range(200):
        a = torch.rand(4, 4, generator=g) ** (1 + 4 * torch.rand((), generator=g))
        sym = torch.triu(a, 1) + torch.triu(a, 1).T
        w, share = fusion_weights(sym, "complement"), fusion_weights(sym, "share")
        assert w.sum().item() == pytest.approx(1.0, abs=1e-6) and w.min().item() >= 1 / 6 - 1e-6
        assert torch.equal(torch.argsort(w, stable=True), torch.argsort(-share, stable=True))
    ucla = UCLA_MI
    assert fusion_weights(ucla, "complement").tolist() == pytest.approx([0.317, 0.306, 0.190, 0.187], abs=1e-3)
    # one modality holding all of the MI with a second: the two get 1/6, the others 1/3
    pair = torch.zeros(4, 4)
    pair[2, 3] = pair[3, 2] = 1.0
    assert fusion_weights(pair, "complement").tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 6, 1 / 6])


@pytest.mark.parametrize("rule", FUSION_RULES)
@pytest.mark.parametrize("mi, what", [
    (torch.zeros(3, 3), "expected a \\(4, 4\\)"),
    (-torch.ones(4, 4), "negative or non-finite"),
    (torch.full((4, 4), float("nan")), "negative or non-finite"),
    (torch.zeros(4, 4), "sum\\(MI\\) is 0"),
])
def test_fusion_weights_rejects_bad_or_degenerate_matrices(mi, what, rule):
    with pytest.raises(ConfigError, match=what):
        fusion_weights(mi, rule)


def test_eq_23_undefined_for_equal_shares_and_unknown_rules_refused():
    with pytest.raises(ConfigError, match="all MI_av are equal"):
        fusion_weights(torch.ones(4, 4) - torch.eye(4), "paper")
    for bad in ("minmax", None, 1):
        with pytest.raises(ConfigError, match="fusion rule"):
            fusion_weights(torch.ones(4, 4), bad)
        with pytest.raises(ConfigError, match="fusion rule"):
            SMF(_cfg(), rule=bad)


# --------------------------------------------------------------------------- SMF module
def _cfg(layout="ucla20"):
    return ModelConfig(arch="mksgn", layout=layout, num_classes=5, width=0.0625, time_steps=2)


def _batch(seed=0, n=2, t=6, v=20, m=1):
    g = torch.Generator().manual_seed(seed)
    return {k: 2 * torch.randn(n, 3, t, v, m, generator=g) for k in MODALITIES}


def _smf(**kw):
    torch.manual_seed(0)
    return SMF(_cfg(), estimator_hidden=8, **kw)


def test_eval_is_a_fixed_weighted_sum_of_binary_spikes():
    smf = _smf()
    smf.train()
    smf(_batch(1))  # BN running stats move
    smf.eval()
    w = torch.tensor([0.2, 1.0, 0.0, 0.6])
    smf.fusion_weight.copy_(w)
    for est in smf.estimators.values():  # eval must not run the estimators
        est.register_forward_pre_hook(lambda *_: pytest.fail("estimator ran in eval mode"))
    x = _batch(2)
    with torch.no_grad():
        y1, y2 = smf(x), smf(x)
        spikes = smf.encode(x)
    assert y1.shape == (2 * 2 * 1, 4, 6, 20)  # (T_s·N·M, C', T, V)
    assert torch.equal(y1, y2)
    assert torch.equal(smf.fusion_weight, w)
    for s in spikes.values():
        assert s.shape == y1.shape
        assert ((s == 0) | (s == 1)).all() and 0 < s.mean() < 1
    assert torch.allclose(y1, sum(w[i] * spikes[m] for i, m in enumerate(MODALITIES)))
    assert smf.last_mi is None


def test_drop_estimator_state_dict_round_trip_gives_identical_output():
    smf = _smf()
    smf.train()
    smf(_batch(1))
    smf.fusion_weight.copy_(torch.tensor([0.3, 0.0, 1.0, 0.7]))
    smf.eval()
    x = _batch(2)
    with torch.no_grad():
        before = smf(x)
    state = smf.drop_estimator().state_dict()
    assert not any(k.startswith("estimators") for k in state) and "fusion_weight" in state
    torch.manual_seed(123)  # different init: everything must come from the state_dict
    fresh = SMF(_cfg(), with_estimator=False)
    fresh.load_state_dict(state)  # strict
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), before)
    with pytest.raises(ConfigError, match="no estimator"):
        fresh.estimator_loss()


@pytest.mark.parametrize("rule, w_batch", [
    ("paper", [0.0, 0.5, 0.75, 1.0]),  # eq. 22–23 of mi, by hand: the behaviour before issue 16
    ("share", [6 / 42, 10 / 42, 12 / 42, 14 / 42]),  # eq. 22 alone
])
def test_training_forward_moves_buffer_by_the_momentum_rule(monkeypatch, rule, w_batch):
    monkeypatch.setattr(smf_mod, "mi_matrix", lambda *a, **k: BY_HAND_MI.clone())
    smf = SMF(_cfg(), momentum=0.25, estimator_hidden=8, rule=rule)
    assert smf.rule == rule
    smf.train()
    old = torch.tensor([1.0, 0.5, 0.2, 0.0])
    smf.fusion_weight.copy_(old)
    x = _batch(3)
    y = smf(x)
    w_batch = torch.tensor(w_batch)
    expected = 0.75 * old + 0.25 * w_batch
    assert torch.allclose(smf.fusion_weight, expected, atol=1e-6)
    assert torch.allclose(smf.last_batch_weights, w_batch, atol=1e-6)
    with torch.no_grad():  # training fuses with the updated buffer
        spikes = smf.encode(x)
    assert torch.allclose(y, sum(expected[i] * spikes[m] for i, m in enumerate(MODALITIES)))
    # a degenerate batch (all bounds <= 0 after clamping) leaves the buffer unchanged
    monkeypatch.setattr(smf_mod, "mi_matrix", lambda *a, **k: -torch.ones(4, 4))
    smf(x)
    assert torch.allclose(smf.fusion_weight, expected, atol=1e-6) and smf.last_batch_weights is None
    smf.eval()
    with torch.no_grad():
        smf(x)
    assert torch.allclose(smf.fusion_weight, expected, atol=1e-6)


def test_estimator_loss_trains_only_the_estimators():
    smf = _smf()
    smf.train()
    with pytest.raises(ConfigError, match="training mode"):
        smf.estimator_loss()
    before = smf.fusion_weight.clone()
    smf(_batch(4))
    mi = smf.last_mi
    assert mi.shape == (4, 4) and torch.equal(mi, mi.T)
    loss = smf.estimator_loss()
    iu = torch.triu_indices(4, 4, offset=1)
    assert loss.item() == pytest.approx(-mi[iu[0], iu[1]].mean().item())
    loss.backward()
    assert all(p.grad is None for p in smf.encoders.parameters())
    grads = [p.grad for p in smf.estimators.parameters()]
    assert all(gr is not None for gr in grads) and any(gr.abs().sum() > 0 for gr in grads)
    if smf.last_batch_weights is None:
        assert torch.equal(smf.fusion_weight, before)
    else:
        assert torch.allclose(smf.fusion_weight, 0.9 * before + 0.1 * smf.last_batch_weights)


def test_bodies_are_folded_like_mksgn():
    cfg = _cfg("ntu25")  # M = 2
    torch.manual_seed(0)
    net, smf = MKSGN(cfg).eval(), SMF(cfg, with_estimator=False).eval()
    smf.encoders["bone"].load_state_dict(net.sc.state_dict())
    seen = {}
    net.sc.register_forward_hook(lambda mod, inp, out: seen.setdefault("sc", out))
    x = _batch(5, n=3, v=25, m=2)
    x["bone"][:, :, :, :, 1] *= 0.5  # make the two bodies differ
    with torch.no_grad():
        net(x["bone"])
        assert torch.equal(smf.encode(x)["bone"], seen["sc"])


@pytest.mark.parametrize("change, what", [
    (lambda x: x.pop("bone_motion"), "missing \\['bone_motion'\\]"),
    (lambda x: x.update(jointmotion=x["joint"]), "unknown \\['jointmotion'\\]"),
    (lambda x: x.update(bone=x["bone"][..., :10, :]),
     "'bone' has shape \\(2, 3, 6, 10, 1\\); expected \\(N, 3, T, 20, 1\\)"),
    (lambda x: x.update(joint=x["joint"][..., 0]), "'joint' has shape \\(2, 3, 6, 20\\)"),
    (lambda x: x.update(bone=x["bone"][:, :, :4]), "all modalities of a batch must have the same shape"),
    (lambda x: x.update(joint=x["joint"].numpy()), "'joint' has shape ndarray"),
])
def test_bad_input_raises_config_error(change, what):
    smf = _smf(with_estimator=False)
    x = _batch(0)
    change(x)
    with pytest.raises(ConfigError, match=what):
        smf(x)


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="expected a dict"):
        _smf(with_estimator=False)(torch.zeros(2, 3, 6, 20, 1))
    with pytest.raises(ConfigError, match="momentum"):
        SMF(_cfg(), momentum=0)
    with pytest.raises(ConfigError, match="ModelConfig"):
        SMF(_cfg().to_dict())
    with pytest.raises(ConfigError, match="hidden"):
        MineEstimator(4, 2, hidden=0)
    est = MineEstimator(C, TS)
    with pytest.raises(ConfigError, match="multiple of T_s=4"):
        mi_lower_bound(est, torch.zeros(6, C, T, V), torch.zeros(6, C, T, V))
    with pytest.raises(ConfigError, match="at least 2"):
        mi_lower_bound(est, torch.zeros(TS, C, 1, V), torch.zeros(TS, C, 1, V))
    assert math.isfinite(mi_lower_bound(est, torch.zeros(TS, C, 2, V), torch.ones(TS, C, 2, V)).item())
