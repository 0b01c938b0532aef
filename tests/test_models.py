"""MK-SGN / Base-SGN*: shapes, binary spikes, gradient through the surrogate, config errors."""
import pytest
import torch

from mksgn.errors import ConfigError
from mksgn.models import ModelConfig, build_model
from mksgn.models.mksgn import GraphConv
from mksgn.neuron import LIF
from mksgn.graph import get_layout

SHAPES = {"ucla20": (20, 1), "ntu25": (25, 2)}


def _model(arch, layout, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, layout=layout, num_classes=5, width=0.0625, time_steps=2, **kw)
    return cfg, build_model(cfg)


@pytest.mark.parametrize("arch", ["mksgn", "base_sgn"])
@pytest.mark.parametrize("layout", ["ucla20", "ntu25"])
def test_shapes_and_binary_spikes(arch, layout):
    cfg, model = _model(arch, layout)
    V, M = SHAPES[layout]
    x = torch.randn(2, 3, 16, V, M)
    seen = {}

    def hook(name):
        def f(mod, inp, out):
            seen[name] = out
        return f

    for name, mod in model.named_modules():
        if isinstance(mod, LIF):
            mod.register_forward_hook(hook(name))
    y = model(x)
    assert y.shape == (2, 5)
    n_lif = sum(isinstance(m, LIF) for m in model.modules())
    assert len(seen) == n_lif > 0
    for name, s in seen.items():
        assert s.shape[0] == cfg.time_steps, name
        assert ((s == 0) | (s == 1)).all(), name
    # frames halve at each stride-2 layer; the last layer has the last Table 7 width
    last = seen["layers.%d.%s" % (len(cfg.stages) - 1, "stc.lif" if arch == "mksgn" else "lif")]
    assert last.shape == (cfg.time_steps, 2 * M, cfg.stages[-1][0], 4, V)
    assert seen["head.lif"].shape == (cfg.time_steps, 2, cfg.stages[-1][0])


def test_table7_widths_and_names():
    cfg = ModelConfig(arch="mksgn", layout="ntu25", num_classes=60)
    assert [c for c, _ in cfg.stages] == [64, 64, 128, 128, 256, 256]
    assert [s for _, s in cfg.stages] == [1, 1, 2, 1, 2, 1]
    base = ModelConfig(arch="base_sgn", layout="ntu25", num_classes=60)
    assert [c for c, _ in base.stages] == [64] * 4 + [128] * 3 + [256] * 3
    names = dict(build_model(ModelConfig(arch="mksgn", layout="ucla20", num_classes=10, width=0.0625)).named_modules())
    for n in ("sc.lif", "layers.0.sa_sgc.lif1", "layers.0.sa_sgc.lif2", "layers.0.sg_sa.lifq",
              "layers.0.sg_sa.lifk", "layers.0.sg_sa.lifv", "layers.0.sg_sa.lifkv", "layers.0.stc.lif",
              "layers.0.stc.res_lif", "head.lif", "head.fc"):
        assert n in names, n


@pytest.mark.parametrize("arch", ["mksgn", "base_sgn"])
def test_gradient_reaches_first_layer(arch):
    _, model = _model(arch, "ucla20")
    x = torch.randn(4, 3, 16, 20, 1)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    g = model.sc.conv.weight.grad
    assert g is not None and g.abs().sum() > 0


def test_graph_conv_matches_definition():
    A = torch.from_numpy(get_layout("ucla20").adjacency())
    gc = GraphConv(3, 4, A)
    x = torch.randn(2, 3, 5, 20)
    W = gc.conv.weight.view(4, 3, 3)  # [c', k, c]
    ref = torch.einsum("dkc,bctv,kvw->bdtw", W, x, A)
    assert torch.allclose(gc(x), ref, atol=1e-5)


def test_wrong_input_shape_raises():
    _, model = _model("mksgn", "ucla20")
    with pytest.raises(ConfigError, match="expected"):
        model(torch.randn(2, 3, 16, 25, 2))


def test_config_errors_and_roundtrip():
    d = {"arch": "mksgn", "layout": "ucla20", "num_classes": 10}
    cfg = ModelConfig.from_dict(d)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="widht"):
        ModelConfig.from_dict({**d, "widht": 0.5})
    with pytest.raises(ConfigError, match="temporal_kernel"):
        ModelConfig.from_dict({**d, "temporal_kernel": 4})
    with pytest.raises(ConfigError, match="arch"):
        ModelConfig.from_dict({**d, "arch": "resnet"})
    with pytest.raises(ConfigError, match="num_classes"):
        ModelConfig.from_dict({"arch": "mksgn", "layout": "ucla20"})
