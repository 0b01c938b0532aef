"""NIR writer: Base-SGN* exports completely, reads back exactly and type-checks; every synapse
chain computes the twin's map; MK-SGN's attention is refused."""
from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.errors import ExportError
from export.ir import INPUT, LOGITS
from export.twin import synapse_op
from export.writers.nir_writer import DT, PICK_SUFFIX, nir_notes, to_nir, write_nir


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
    picks = {n for n in built.nodes if n.endswith(PICK_SUFFIX)}
    names = {"input", "output"} | set(g.groups) | set(g.synapses) | {"head.fc.flatten"} | picks
    assert set(back.nodes) == set(built.nodes) == names
    # strided temporal convs (layers 4 and 7, main and low-mantissa partner) and the pool pick frames
    assert {p[:-len(PICK_SUFFIX)] for p in picks} == {s.name for s in g.synapses.values()
                                                      if s.kind == "pool" or (s.kind == "conv" and s.stride > 1
                                                                              and np.shape(s.weight_mant)[2] > 1)}
    assert all(isinstance(n, (nir.Conv2d, nir.AvgPool2d, nir.CubaLIF, nir.Flatten, nir.Affine, nir.Input,
                              nir.Output)) for n in back.nodes.values())  # what snntorch's importer maps
    assert _edge_set(back.edges) == _edge_set(built.edges)
    # every IR connection is an edge; residual groups have several incoming edges
    for s in g.synapses.values():
        for u in s.sources:
            assert ("input" if u == INPUT else u, s.name if s.target != LOGITS else f"{s.name}.flatten") \
                in _edge_set(back.edges)
    into = [e[0].removesuffix(PICK_SUFFIX) for e in back.edges if e[1] == "layers.1.lif"]
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
    assert float(lif.tau_syn.flat[0]) == DT and float(lif.w_in.flat[0]) == 64.0
    # snntorch's importer (dt = 1e-4) asserts r = tau_mem / dt and takes beta = 1 - dt / tau_mem
    np.testing.assert_allclose(lif.r, lif.tau_mem / 1e-4)
    np.testing.assert_allclose(1 - 1e-4 / lif.tau_mem, 1 - grp.dv / 4096)
    notes = [n.decode() if isinstance(n, bytes) else str(n) for n in back.metadata["not_expressed"]]
    assert notes == nir_notes(g)  # (nir.write keeps a list of str as bytes)
    assert any("Loihi" in n for n in nir_notes(g)) and any("AvgPool2d" in n for n in nir_notes(g))
    fc = g.synapses["head.fc"]
    np.testing.assert_array_equal(back.nodes["head.fc"].weight, fc.weight_mant * 2.0 ** fc.weight_exp)
    np.testing.assert_array_equal(back.nodes["head.fc"].bias, fc.meta["bias_int"])


def test_nir_convs_compute_the_twin_map(base_graph):
    """Each NIR synapse chain (Conv2d, and its frame pick) on the (C·V, T, 1) layout equals the
    twin's synapse_op (without bias), exactly."""
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
        xl = x.permute(0, 1, 3, 2).reshape(1, Cs * Vs, Ts, 1)
        pad = node.padding if isinstance(node.padding, str) else tuple(int(p) for p in np.ravel(node.padding))
        y = F.conv2d(xl, torch.as_tensor(node.weight), stride=tuple(int(v) for v in np.ravel(node.stride)),
                     padding=pad)
        pick = nodes.get(s.name + PICK_SUFFIX)
        if pick is not None:
            y = F.avg_pool2d(y, tuple(int(v) for v in pick.kernel_size), tuple(int(v) for v in pick.stride))
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
