"""NIR writer: Base-SGN* exports completely and reads back exactly; MK-SGN's attention is refused."""
from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.errors import ExportError
from export.ir import INPUT, LOGITS
from export.twin import synapse_op
from export.writers.nir_writer import to_nir, write_nir


@pytest.fixture(scope="module")
def base_graph():
    from tests.export_fixtures import tiny_quantised
    return tiny_quantised("base_sgn")[1]


def _edge_set(edges):
    return {tuple(e) for e in edges}


def test_base_sgn_round_trip(tmp_path, base_graph):
    g = base_graph
    built = to_nir(g)
    path = write_nir(g, tmp_path / "net.nir")
    back = nir.read(path)
    names = {"input", "output"} | set(g.groups) | set(g.synapses) | {"head.fc.flatten"}
    assert set(back.nodes) == set(built.nodes) == names
    assert _edge_set(back.edges) == _edge_set(built.edges)
    # every IR connection is an edge; residual groups have several incoming edges
    for s in g.synapses.values():
        for u in s.sources:
            assert ("input" if u == INPUT else u, s.name if s.target != LOGITS else f"{s.name}.flatten") \
                in _edge_set(back.edges)
    into = [e[0] for e in back.edges if e[1] == "layers.1.lif"]
    assert sorted(into) == sorted(s.name for s in g.incoming("layers.1.lif"))
    assert sum(1 for u in into if not g.synapses[u].meta.get("split_of")) == 2  # residual + main path
    for name, node in built.nodes.items():
        rb = back.nodes[name]
        assert type(rb) is type(node), name
        for attr in ("weight", "bias", "tau_syn", "tau_mem", "r", "v_leak", "v_threshold",
                     "v_reset", "w_in"):
            if hasattr(node, attr):
                np.testing.assert_array_equal(np.asarray(getattr(rb, attr)),
                                              np.asarray(getattr(node, attr)), err_msg=f"{name}.{attr}")
    lif = back.nodes["layers.0.lif"]
    grp = g.groups["layers.0.lif"]
    assert float(lif.v_threshold.flat[0]) == grp.vth_mant * 64
    assert float(lif.tau_syn.flat[0]) == 1.0 and float(lif.w_in.flat[0]) == 64.0
    fc = g.synapses["head.fc"]
    np.testing.assert_array_equal(back.nodes["head.fc"].weight, fc.weight_mant * 2.0 ** fc.weight_exp)
    np.testing.assert_array_equal(back.nodes["head.fc"].bias, fc.meta["bias_int"])


def test_nir_convs_compute_the_twin_map(base_graph):
    """Each NIR Conv1d on the (C·V, T) layout equals the twin's synapse_op (without bias)."""
    g = base_graph
    nodes = to_nir(g).nodes
    rng = np.random.default_rng(0)
    C, T, V, _ = g.input_shape
    shapes = {INPUT: (C, T, V), **{n: tuple(x.shape) for n, x in g.groups.items()}}
    for s in g.synapses.values():
        if s.target == LOGITS:
            continue
        Cs, Ts, Vs = shapes[s.sources[0]]
        x = torch.as_tensor(rng.integers(0, 2, (1, Cs, Ts, Vs)), dtype=torch.float64)
        want = synapse_op(s, [x], s.weight_mant, 1) * 2.0 ** s.weight_exp
        node = nodes[s.name]
        xl = x.permute(0, 1, 3, 2).reshape(1, Cs * Vs, Ts)
        y = F.conv1d(xl, torch.as_tensor(node.weight), stride=int(np.ravel(node.stride)[0]),
                     padding=int(np.ravel(node.padding)[0]))
        Co, To, Vo = shapes[s.target]
        got = y.reshape(1, Co, Vo, To).permute(0, 1, 3, 2)
        torch.testing.assert_close(got, want.reshape(got.shape), rtol=0, atol=0, msg=s.name)


def test_mksgn_attention_refused_and_named(tmp_path):
    from export.frontend import from_model
    from export.passes import balance_delays, fold_bn, fold_fusion, fold_graph
    from tests.export_fixtures import tiny_model
    g = balance_delays(fold_fusion(fold_graph(fold_bn(from_model(tiny_model("mksgn"))))))
    att = [s.name for s in g.synapses.values() if s.kind == "attention"]
    assert att
    with pytest.raises(ExportError, match="NIR cannot express spike-spike attention") as exc:
        write_nir(g, tmp_path / "m.nir")
    for name in att:
        assert name in str(exc.value)
    assert not (tmp_path / "m.nir").exists()
