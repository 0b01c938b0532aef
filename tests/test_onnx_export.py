"""The integer ONNX export (export/writers/onnx_writer.py) equals the fixed-point twin bit for bit.

On real NW-UCLA clips and tiny warmed models (MK-SGN and Base-SGN*), onnxruntime's logits and
every group's per-step spikes must be exactly the twin's (``run_graph(mode="int")``); the
writer's integer rules are also checked directly against :mod:`export.fixed_point` on edge
values (24-bit ``u`` wrap, int32 wraps, ``v`` clip, floor shifts of negative numbers).
"""
from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export import fixed_point as fx

ort = pytest.importorskip("onnxruntime")

ARCHS = ("mksgn", "base_sgn")


def _run(model_or_path, feeds: dict) -> dict:
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def _out_name(group: str) -> str:
    return "spikes_" + group.replace(".", "_")


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory):
    """(arch, graph, clips, twin result, ONNX path, ONNX outputs) per architecture."""
    from export.twin import run_graph
    from export.writers.onnx_writer import write_onnx
    from tests.export_fixtures import real_clips, tiny_quantised

    _, graph = tiny_quantised(request.param)
    x = real_clips("test", 4)
    ref = run_graph(graph, x, mode="int", record=True)
    path = write_onnx(graph, tmp_path_factory.mktemp(request.param) / "model.onnx")
    out = _run(path, {"clip": x.numpy().astype(np.float32)})
    return request.param, graph, x, ref, path, out


def test_onnx_equals_twin_exactly(exported):
    arch, graph, x, ref, path, out = exported
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert out["logits"].dtype == np.int64
    assert out["logits"].shape == (x.shape[0], tuple(ref.logits.shape)[1])
    assert np.array_equal(out["logits"], ref.logits.numpy().astype(np.int64)), arch
    assert np.array_equal(ref.logits.numpy(), np.round(ref.logits.numpy()))  # twin holds integers
    exported_groups = [g for g in graph.groups if _out_name(g) in out]
    assert exported_groups == list(graph.groups)  # every group is exported
    for g in exported_groups:
        got = out[_out_name(g)]
        want = ref.spikes[g].numpy()
        assert got.shape == want.shape, (g, got.shape, want.shape)
        assert np.array_equal(got, want), f"{arch}: spikes of {g} differ at " \
            f"{np.argwhere(got != want)[:5].tolist()}"
    # the test can fail: the network really spikes, up to the last layer (the tiny untrained
    # models' head group stays silent on these clips, so the logits are bias_int · T_s there)
    head = graph.incoming("logits")[0].sources[0]
    last_layer = graph.incoming(head)[0].sources[0]
    assert out[_out_name(last_layer)].sum() > 0, f"{arch}: {last_layer} never spikes"
    assert sum(int(out[_out_name(g)].sum()) for g in exported_groups) > 1000


def test_onnx_bytes_are_deterministic(exported, tmp_path):
    from export.writers.onnx_writer import write_onnx

    _, graph, _, _, path, _ = exported
    a = write_onnx(graph, tmp_path / "a.onnx").read_bytes()
    b = write_onnx(graph.copy(), tmp_path / "b.onnx").read_bytes()
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(a).hexdigest()


def test_planted_weight_change_is_seen(exported, tmp_path):
    """+1 on one weight mantissa of the first (host-input) synapse changes the spikes."""
    from export.writers.onnx_writer import write_onnx

    _, graph, x, _, _, out = exported
    g2 = graph.copy()
    first = next(s for s in g2.synapses.values() if s.sources == ("input",))
    first.weight_mant = np.array(first.weight_mant, dtype=np.int64)
    idx = (0, 0, first.weight_mant.shape[2] // 2, 0)
    first.weight_mant[idx] += 1
    out2 = _run(write_onnx(g2, tmp_path / "planted.onnx"), {"clip": x.numpy().astype(np.float32)})
    assert not np.array_equal(out2[_out_name(first.target)], out[_out_name(first.target)])


# ----------------------------------------------------------------------------- integer rules
def _probe_model(build, inputs: dict, outputs: list, bool_outputs=()) -> dict:
    """Build a one-off model with the writer's builder and run it on ``inputs`` (int64)."""
    from export.writers.onnx_writer import IR_VERSION, OPSET, _Builder

    b = _Builder()
    b._names.update(inputs)
    results = build(b, *inputs)
    nodes = list(b.nodes) + [helper.make_node("Identity", [r], [o]) for r, o in zip(results, outputs)]
    g = helper.make_graph(nodes, "probe",
                          [helper.make_tensor_value_info(k, TensorProto.INT64, list(v.shape))
                           for k, v in inputs.items()],
                          [helper.make_tensor_value_info(o, TensorProto.BOOL if o in bool_outputs else TensorProto.INT64, None)
                           for o in outputs],
                          [b.inits[k] for k in sorted(b.inits)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = IR_VERSION
    return _run(m, inputs)


def _edge_ints(rng, n: int, scale: int) -> np.ndarray:
    special = np.array([0, 1, -1, 2, -2, 63, -64, 4095, -4096, 2 ** 23 - 1, 2 ** 23, 2 ** 23 + 1,
                        -(2 ** 23) + 1, -(2 ** 23), -(2 ** 23) - 1, 2 ** 24, -(2 ** 24), 2 ** 25 + 7,
                        -(2 ** 25) - 7, 3 * 2 ** 23 + 5, -3 * 2 ** 23 - 5], np.int64)
    return np.concatenate([special, rng.integers(-scale, scale, n - special.size)]).astype(np.int64)


def test_shift_exp_and_wrap_match_fixed_point():
    rng = np.random.default_rng(0)
    x = _edge_ints(rng, 400, 2 ** 40)
    exps = list(range(fx.WEIGHT_EXP_MIN, fx.WEIGHT_EXP_MAX + 1))

    def build(b, name):
        return [b.shift_exp(name, e, f"s{e}") for e in exps] + [b.wrap_int32(name, "w32"),
                                                                  b.wrap_signed(name, fx.CONV_OUT_BITS, "w24")]
    outs = [f"shift{e}" for e in exps] + ["w32", "w24"]
    got = _probe_model(build, {"x": x}, outs)
    for e in exps:
        assert np.array_equal(got[f"shift{e}"], fx.shift_exp(x, e)), e
    assert np.array_equal(got["w32"], fx.wrap_int32(x))
    assert np.array_equal(got["w24"], fx.wrap_signed(x, fx.CONV_OUT_BITS))


@pytest.mark.parametrize("du,dv,zero_state", [(fx.DU_MAX, 3072, False), (100, 0, False),
                                              (0, fx.DV_MAX, False), (fx.DU_MAX, 3072, True)])
def test_lif_step_matches_fixed_point(du, dv, zero_state):
    rng = np.random.default_rng(du + dv)
    C = 4
    n = 96
    u = _edge_ints(rng, n * C, 2 ** 24).reshape(n, C)
    v = _edge_ints(rng, n * C, 2 ** 24)[::-1].copy().reshape(n, C)
    a = np.concatenate([_edge_ints(rng, n * C // 2, 2 ** 26),
                        rng.integers(-(2 ** 15), 2 ** 15, n * C // 2)]).reshape(n, C)
    group = SimpleNamespace(name="probe", du=du, dv=dv, vth_mant=1000,
                            bias_mant=np.array([0, 4095, -4096, 17]), bias_exp=np.array([0, 7, 3, 1]))

    def build(b, un, vn, an):
        return list(b.lif_step(None if zero_state else un, None if zero_state else vn, an, group, "lif"))
    got = _probe_model(build, {"u": u, "v": v, "a": a}, ["u_new", "v_new", "s"],
                       bool_outputs=("s",))
    u0, v0 = (0 * u, 0 * v) if zero_state else (u, v)
    want = fx.lif_step(u0, v0, a, du, dv, group.vth_mant, group.bias_mant, group.bias_exp)
    assert np.array_equal(np.broadcast_to(got["u_new"], u.shape), want[0])
    assert np.array_equal(np.broadcast_to(got["v_new"], u.shape), want[1])
    assert np.array_equal(np.broadcast_to(got["s"], u.shape), want[2])
    assert want[2].any() and not want[2].all()
    if not zero_state and dv < 2048:  # |p| in [2^31, 2^32) inside decay (onnxruntime's int64 Sign fails there)
        p = np.abs(v * (fx.DECAY_UNITY - dv - fx.DM_OFFSET))
        assert ((p >= 2 ** 31) & (p < 2 ** 32)).any()
    c = fx.wrap_int32(fx.wrap_int32(fx.decay(u0, du + fx.DS_OFFSET)) + fx.wrap_int32(a << fx.ACT_SHIFT))
    assert ((c > fx.MAX_UV) | (c <= -fx.MAX_UV)).any()  # the u wrap is exercised


def test_unquantised_graph_is_refused(tmp_path):
    from export.errors import ExportError
    from export.ir import Graph
    from export.writers.onnx_writer import write_onnx

    g = Graph(groups={}, synapses={"s": SimpleNamespace(weight_mant=None)}, input_shape=(3, 4, 2, 1),
              time_steps=1)
    with pytest.raises(ExportError):
        write_onnx(g, tmp_path / "x.onnx")
