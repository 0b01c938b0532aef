"""Analyser: FLOPs formulas, SOPs = fr_in·T_s·FLOPs, input rates equal upstream firing rates."""
import pytest
import torch

from mksgn.analysis import analyse
from mksgn.energy import DEFAULT_45NM
from mksgn.models import ModelConfig, build_model


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="mksgn", layout="ucla20", num_classes=5, width=0.125, time_steps=3,
                      coding_channels=4)
    model = build_model(cfg)
    clips = [torch.randn(3, 3, 12, 20, 1) for _ in range(2)]
    with torch.no_grad():  # settle BN running statistics so eval-mode neurons fire
        model.train()
        for x in clips * 3:
            model(x)
    return cfg, model, analyse(model, clips, cfg.time_steps)


def test_conv_flops_formula(run):
    cfg, model, rep = run
    ops = {o.name: o for o in rep.ops}
    c = cfg.stages[0][0]
    # temporal conv of layer 1: C_out·C_in·k·T_out·V (stride 1: T_out = 12)
    assert ops["layers.0.stc.tconv"].flops == c * c * 9 * 12 * 20
    # stride-2 layer (index 2): T_out = 6
    c2 = cfg.stages[2][0]
    assert ops["layers.2.stc.tconv"].flops == c2 * c2 * 9 * 6 * 20
    # spiking coding conv: real input, per clip, (3, 1) kernel
    assert ops["sc.conv"].real_input and ops["sc.conv"].flops == 4 * 3 * 3 * 12 * 20
    # graph conv: only non-zero adjacency entries + the 1x1 conv over K·C_in channels
    nnz = 20 + 19 + 19
    assert ops["layers.0.sa_sgc.gcn"].flops == 4 * 12 * nnz + 3 * 4 * (2 * c) * 12 * 20
    # attention: two V·V·C products per frame
    assert ops["layers.0.sg_sa.attn.qk"].flops == 12 * 20 * 20 * c
    assert ops["head.fc"].flops == cfg.stages[-1][0] * 5


def test_sops_and_input_rates(run):
    cfg, model, rep = run
    ops = {o.name: o for o in rep.ops}
    rates = {n.name: n.firing_rate for n in rep.neurons}
    assert rates["sc.lif"] > 0
    for o in rep.ops:
        expected = 0.0 if o.real_input else o.fr_in * cfg.time_steps * o.flops  # eq. 33
        assert o.sops == pytest.approx(expected)
    # the input of an op is the output of the neurons feeding it
    assert ops["layers.0.sa_sgc.gcn"].fr_in == pytest.approx(rates["sc.lif"])
    assert ops["head.fc"].fr_in == pytest.approx(rates["head.lif"])
    assert ops["layers.0.sg_sa.attn.qk"].fr_in == pytest.approx(rates["layers.0.sg_sa.lifq"])
    assert ops["layers.0.sg_sa.attn.av"].fr_in == pytest.approx(rates["layers.0.sg_sa.lifv"])
    e = DEFAULT_45NM
    assert rep.energy_mj == pytest.approx((e.e_mac_pj * ops["sc.conv"].flops + e.e_ac_pj * rep.total_sops) * 1e-9)
    assert rep.params == sum(p.numel() for p in model.parameters())
    assert rep.num_clips == 6


def test_firing_rate_is_spikes_per_neuron_per_step(run):
    cfg, model, rep = run
    counts = {}
    h = model.head.lif.register_forward_hook(lambda m, i, o: counts.setdefault("s", []).append(o))
    x = torch.randn(2, 3, 12, 20, 1)
    model.eval()
    with torch.no_grad():
        model(x)
    h.remove()
    one = analyse(model, [x], cfg.time_steps)
    s = counts["s"][0]
    fr = {n.name: n for n in one.neurons}["head.lif"]
    assert fr.firing_rate == pytest.approx(float(s.sum()) / (cfg.stages[-1][0] * cfg.time_steps * 2))
    assert fr.neurons == cfg.stages[-1][0]


def test_report_serialises(run):
    import json
    _, _, rep = run
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["energy_model"]["e_ac_pj"] == 0.9
    table = rep.format_table()
    assert "layers.0.sg_sa.lifkv" in table and "energy" in table
