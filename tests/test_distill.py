"""GCN→SGN distillation: CTR-GCN teacher, FTM, the losses of eq. 25–32, one step on real clips."""
import math

import pytest
import torch
import torch.nn.functional as F

from mksgn.distill import (FeatureTranslation, cosine_feature_loss, ensemble_logits,
                           soft_label_loss, student_features, total_loss)
from mksgn.errors import ConfigError, MksgnError
from mksgn.models import ModelConfig, build_model
from mksgn.models.ctrgcn import CTRGC, CTRGCN, ctrgcn_stages
from mksgn.preprocess import MODALITIES

SHAPES = {"ucla20": (20, 1), "ntu25": (25, 2)}
WIDTH = 0.125


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread. On the shared 2-core CPU, two OpenMP threads that
    spin-wait for each other made these tests ~100x slower; restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _teacher(layout, seed=0, classes=10):
    torch.manual_seed(seed)
    return CTRGCN(layout, classes, width=WIDTH)


def _student(layout, classes=10, time_steps=2, **kw):
    torch.manual_seed(100)
    cfg = ModelConfig(arch="mksgn", layout=layout, num_classes=classes, width=WIDTH, time_steps=time_steps, **kw)
    return cfg, build_model(cfg)


# ---------------------------------------------------------------- CTR-GCN teacher

def test_ctrgcn_official_widths():
    assert ctrgcn_stages(1.0) == ((64, 1), (64, 1), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1),
                                  (256, 2), (256, 1), (256, 1))
    assert [c for c, _ in ctrgcn_stages(WIDTH)] == [8] * 4 + [16] * 3 + [32] * 3


@pytest.mark.parametrize("layout", ["ucla20", "ntu25"])
def test_ctrgcn_shapes(layout):
    V, M = SHAPES[layout]
    model = _teacher(layout, classes=7)
    x = torch.randn(3, 3, 15, V, M)  # odd T: strides round up, as the student's
    assert model(x).shape == (3, 7)
    logits, (f5, f8) = model(x, return_features=True)
    assert logits.shape == (3, 7)
    assert f5.shape == (3 * M, 16, 8, V)
    assert f8.shape == (3 * M, 32, 4, V)
    assert model.feature_channels == (16, 32)
    assert (f5 >= 0).all() and (f8 >= 0).all() and f8.abs().sum() > 0  # after the unit's ReLU


def test_ctrgcn_gradient_reaches_first_layer():
    model = _teacher("ucla20")
    x = torch.randn(4, 3, 12, 20, 1)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    first = model.layers[0]
    for name, p in (("data_bn", model.data_bn.weight), ("l1 rho", first.gcn.convs[0].conv3.weight),
                    ("l1 alpha", first.gcn.alpha), ("l1 PA", first.gcn.PA),
                    ("l1 tcn", first.tcn.branches[0][0].weight)):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ctrgc_matches_definition():
    torch.manual_seed(1)
    gc = CTRGC(4, 6)
    A = torch.rand(5, 5)
    alpha = torch.tensor([0.7])
    x = torch.randn(2, 4, 3, 5)
    out = gc(x, A, alpha)
    with torch.no_grad():
        x1, x2, x3 = gc.conv1(x).mean(2), gc.conv2(x).mean(2), gc.conv3(x)  # (N, R, V), (N, C, T, V)
        ref = torch.zeros(2, 6, 3, 5)
        for n in range(2):
            rel = torch.tanh(x1[n][:, :, None] - x2[n][:, None, :])            # (R, U, V)
            Ac = torch.einsum("cr,ruv->cuv", gc.conv4.weight[:, :, 0, 0], rel) \
                + gc.conv4.bias[:, None, None]
            Ac = alpha * Ac + A                                               # (C, U, V)
            for u in range(5):
                ref[n, :, :, u] = (Ac[:, u, None, :] * x3[n]).sum(-1)        # Σ_v A_c[u, v]·ρ(x)[t, v]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- FTM

@pytest.mark.parametrize("layout", ["ucla20", "ntu25"])
def test_ftm_spikes_have_student_shape(layout):
    V, M = SHAPES[layout]
    cfg, student = _student(layout)
    teacher = _teacher(layout).eval()
    x = torch.randn(2, 3, 12, V, M)
    seen = {}
    hooks = [student.layers[i - 1].register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, out))
             for i in (3, 5)]
    student(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        _, (f5, f8) = teacher(x, return_features=True)
    torch.manual_seed(2)
    for (t_feat, s_layer) in ((f5, 3), (f8, 5)):
        s = seen[s_layer]
        assert s.shape[0] == cfg.time_steps * 2 * M
        ftm = FeatureTranslation(t_feat.shape[1], s.shape[1], cfg)
        # four different streams (the teacher is one model here; perturb to tell them apart)
        out = ftm([t_feat * (1 + 0.1 * k) for k in range(4)])
        assert out.shape == s.shape, (s_layer, out.shape, s.shape)
        assert ((out == 0) | (out == 1)).all()
        assert 0 < out.mean() < 1  # some spikes and some silence: not a constant
        out.sum().backward()       # surrogate gradient reaches the fusion conv
        assert ftm.depthwise.weight.grad.abs().sum() > 0
    # the student helper reads the same layers
    _, (s3, s5) = student_features(student, x)
    assert s3.shape == seen[3].shape and s5.shape == seen[5].shape


# ---------------------------------------------------------------- losses

def test_cosine_loss_values():
    torch.manual_seed(3)
    a = torch.randn(5, 4, 3, 6)
    assert abs(cosine_feature_loss(a, a).item()) < 1e-6
    assert abs(cosine_feature_loss(a, 3 * a).item()) < 1e-6
    assert abs(cosine_feature_loss(a, -a).item() - 2) < 1e-6
    # per-row mean: row 0 identical (0), row 1 opposite (2), row 2 orthogonal (1) -> 1
    b = a[:3].clone()
    b[1] = -a[1]
    e = torch.zeros_like(a[2]).flatten()
    e[0], e[1] = a[2].flatten()[1], -a[2].flatten()[0]
    b[2] = e.view_as(a[2])
    assert abs(cosine_feature_loss(a[:3], b).item() - 1) < 1e-6
    # a silent (all-zero) row counts as similarity 0 and gives no gradient, not 1/eps
    s = torch.zeros(2, 8, requires_grad=True)
    t = torch.ones(2, 8)
    t[1] = 0
    loss = cosine_feature_loss(s, t)
    loss.backward()
    assert loss.item() == 1 and torch.isfinite(s.grad).all() and s.grad.abs().max() == 0


def test_soft_label_loss_hand_value():
    s = torch.tensor([[0.0, 0.0]], requires_grad=True)  # p_s = (0.5, 0.5)
    t = torch.tensor([[math.log(3.0), 0.0]])            # p_t = (0.75, 0.25) at tau = 1
    # ||(0.5 - 0.75, 0.5 - 0.25)||_2 = 0.25·sqrt(2)
    assert soft_label_loss(s, t, 1.0).item() == pytest.approx(0.25 * math.sqrt(2), abs=1e-6)
    # the same teacher at tau = 2 needs logits twice as far apart
    assert soft_label_loss(s, 2 * t, 2.0).item() == pytest.approx(0.25 * math.sqrt(2), abs=1e-6)
    # tau = 1 on the doubled logits: p_t = (0.9, 0.1) -> 0.4·sqrt(2)
    assert soft_label_loss(s, 2 * t, 1.0).item() == pytest.approx(0.4 * math.sqrt(2), abs=1e-6)
    # batch mean over clips: (0.25·sqrt 2 + 0) / 2
    s2 = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    t2 = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    assert soft_label_loss(s2, t2, 1.0).item() == pytest.approx(0.125 * math.sqrt(2), abs=1e-6)
    # eq. 26 is a norm of a difference: exactly 0 for equal logits, with a finite (zero) gradient
    eq = t.clone().requires_grad_(True)
    loss = soft_label_loss(eq, t, 4.0)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(eq.grad).all()
    # the teacher is a target: no gradient flows into it
    tt = t.clone().requires_grad_(True)
    soft_label_loss(s, tt, 1.0).backward()
    assert tt.grad is None and s.grad.abs().sum() > 0


def test_ensemble_logits_hand_value():
    ys = [torch.full((2, 3), float(k + 1)) for k in range(4)]  # joint 1, bone 2, jm 3, bm 4
    ys[0][0, 0] = 10.0
    out = ensemble_logits(ys, (0.5, 0.25, 2.0, 0.0))
    expected = torch.full((2, 3), 0.5 * 1 + 0.25 * 2 + 2.0 * 3 + 0.0 * 4)
    expected[0, 0] = 0.5 * 10 + 0.25 * 2 + 2.0 * 3
    torch.testing.assert_close(out, expected)
    assert MODALITIES == ("joint", "bone", "joint_motion", "bone_motion")


# ---------------------------------------------------------------- one step on real NW-UCLA clips

@pytest.fixture(scope="module")
def ucla_batch(ucla_dir):
    from mksgn.data import SkeletonDataset

    ds = SkeletonDataset(ucla_dir, "train", modalities=MODALITIES, train=False)
    labels = ds.labels
    idx = [int((labels == c).nonzero()[0][0]) for c in range(6)]  # six clips, six classes
    items = [ds[i] for i in idx]
    x = {m: torch.stack([it[0][m] for it in items])[:, :, :24] for m in MODALITIES}  # (6, 3, 24, 20, 1)
    y = torch.tensor([it[1] for it in items])
    return x, y


def test_one_distillation_step_reduces_total_loss(ucla_batch):
    x, y = ucla_batch
    assert x["joint"].shape == (6, 3, 24, 20, 1) and x["joint"].abs().sum() > 0
    cfg, student = _student("ucla20", time_steps=4, dropout=0.0)  # paper T_s = 4
    teachers = [_teacher("ucla20", seed=10 + k).eval() for k in range(4)]
    with torch.no_grad():
        outs = [t(x[m], return_features=True) for t, m in zip(teachers, MODALITIES)]
    t_logits = ensemble_logits([o[0] for o in outs], (0.6, 0.6, 0.4, 0.4))
    t_feats = [[o[1][d] for o in outs] for d in range(2)]  # per depth: four streams
    torch.manual_seed(5)
    c5, c8 = teachers[0].feature_channels
    s_ch = [cfg.stages[2][0], cfg.stages[4][0]]
    ftms = torch.nn.ModuleList([FeatureTranslation(c5, s_ch[0], cfg), FeatureTranslation(c8, s_ch[1], cfg)])
    opt_s = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)  # Table 5
    opt_f = torch.optim.SGD(ftms.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)  # Table 5
    weights = dict(gamma1=1.0, gamma2=0.5, gamma3=2.0, beta1=0.3, beta2=0.7, temperature=2.0)

    def loss():
        logits, feats = student_features(student, x["joint"])
        spikes = [ftm(f) for ftm, f in zip(ftms, t_feats)]
        return total_loss(logits, y, t_logits, feats, spikes, **weights)

    student.train(), ftms.train()
    before = loss()
    for term in before:
        assert torch.isfinite(term)
    assert 0 < before.feature_1 < 2 and 0 < before.feature_2 < 2 and before.soft > 0
    expected = before.hard + 0.5 * before.soft + 2.0 * (0.3 * before.feature_1 + 0.7 * before.feature_2)
    assert before.total.item() == pytest.approx(expected.item(), rel=1e-6)
    opt_s.zero_grad(), opt_f.zero_grad()
    before.total.backward()
    assert student.sc.conv.weight.grad.abs().sum() > 0
    assert ftms[0].depthwise.weight.grad.abs().sum() > 0 and ftms[1].pointwise.weight.grad.abs().sum() > 0
    assert all(p.grad is None for t in teachers for p in t.parameters())
    opt_s.step(), opt_f.step()
    with torch.no_grad():
        after = loss()
    assert after.total < before.total - 1e-3, (before.total.item(), after.total.item())
    assert after.feature < before.feature  # student and FTM both move towards each other


# ---------------------------------------------------------------- bad input

def test_bad_input_raises_package_error():
    y = torch.zeros(2, 5)
    with pytest.raises(ConfigError, match="4 logit tensors"):
        ensemble_logits([y, y, y], (1, 1, 1))
    with pytest.raises(ConfigError, match="4 alphas"):
        ensemble_logits([y] * 4, (1, 1))
    with pytest.raises(ConfigError, match="bone logits have shape"):
        ensemble_logits([y, torch.zeros(2, 6), y, y], (1, 1, 1, 1))
    with pytest.raises(ConfigError, match="alphas"):
        ensemble_logits([y] * 4, (1, -1, 1, 1))
    with pytest.raises(ConfigError, match="teacher logits"):
        soft_label_loss(y, torch.zeros(3, 5), 1.0)
    with pytest.raises(ConfigError, match="temperature"):
        soft_label_loss(y, y, 0.0)
    with pytest.raises(ConfigError, match="must\\s+be equal"):
        cosine_feature_loss(torch.zeros(4, 8, 3, 20), torch.zeros(4, 16, 3, 20))
    cfg = ModelConfig(arch="mksgn", layout="ucla20", num_classes=10, width=WIDTH, time_steps=2)
    ftm = FeatureTranslation(16, 16, cfg)
    f = torch.zeros(2, 16, 6, 20)
    with pytest.raises(ConfigError, match="expected 4 teacher feature tensors"):
        ftm([f, f, f])
    with pytest.raises(ConfigError, match="teacher stream 2"):
        ftm([f, f, torch.zeros(2, 16, 5, 20), f])
    with pytest.raises(ConfigError, match="teacher stream 0"):
        ftm([torch.zeros(2, 8, 6, 20)] * 4)
    with pytest.raises(ConfigError, match="student's ModelConfig"):
        FeatureTranslation(16, 16, {"time_steps": 4})
    labels = torch.zeros(2, dtype=torch.long)
    s = torch.zeros(4, 8, 3, 20)
    w = dict(gamma1=1, gamma2=1, gamma3=1, beta1=1, beta2=1, temperature=1)
    with pytest.raises(ConfigError, match="sequence of 2 tensors"):
        total_loss(y, labels, y, [s], [s], **w)
    with pytest.raises(ConfigError, match="gamma2"):
        total_loss(y, labels, y, [s, s], [s, s], **{**w, "gamma2": float("nan")})
    with pytest.raises(ConfigError, match="must\\s+be equal"):
        total_loss(y, labels, y, [s, s], [s, torch.zeros(2, 8, 3, 20)], **w)
    with pytest.raises(ConfigError, match="expected \\(N, 3, T, 20, 1\\)"):
        _teacher("ucla20")(torch.zeros(2, 3, 8, 25, 2))
    with pytest.raises(ConfigError, match="width"):
        CTRGCN("ucla20", 10, width=0)
    with pytest.raises(ConfigError, match="unknown joint layout"):
        CTRGCN("kinetics18", 10)
    _, student = _student("ucla20")
    with pytest.raises(ConfigError, match="out of range"):
        student_features(student, torch.zeros(1, 3, 8, 20, 1), layers=(3, 7))
    assert issubclass(ConfigError, MksgnError)
