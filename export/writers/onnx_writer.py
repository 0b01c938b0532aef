"""Write a quantised :class:`~export.ir.Graph` as an integer ONNX model.

The model is the fixed-point twin (:func:`export.twin.run_graph` with ``mode="int"``)
unrolled over the ``T_s`` time steps, in int64 ONNX ops only (after the host-side input
quantisation).  It must agree with the twin bit for bit; ``tests/test_onnx_export.py``
checks that on real clips.

Inputs / outputs
----------------
``clip``            float32 ``(N, C, T, V, M)``, metres (the model's preprocessed layout).
``logits``          int64 ``(N, classes)``: the twin's integer logits (sum over time steps
                    of ``shift_exp(W s, weight_exp) + bias_int``).
``spikes_<group>``  int8 ``(T_s, B, C, T, V)`` for every neuron group (``.`` → ``_`` in the
                    name), stacked per time step like ``RunResult.spikes``; ``B = N·M``
                    (``N`` for groups after the pool).

Formulation
-----------
Inside the graph every activation is int64 and channels-last, ``(B, T, V, C)``, so that every
synapse is an int64 ``MatMul`` / ``Mul`` on the last axis (ONNX ``Conv`` has no integer
kernel in onnxruntime, and ``BitShift`` is unsigned only):

* host input: ``Round(Cast<double>(x) · 2^input_frac_bits)`` → int64 (``Round`` is
  round-half-to-even like ``torch.round`` in :func:`export.twin.quantise_input`; the 16-bit
  range check of that function cannot raise inside ONNX);
* ``conv`` / ``input_conv`` (kernel ``(kt, 1)``, stride ``s``, padding ``p``): ``Pad`` the
  frame axis with ``p`` zeros each side, ``Slice`` the ``kt`` strided tap views
  ``x[:, k : k + s(T'-1) + 1 : s]``, ``Concat`` them on the channel axis and ``MatMul`` with
  the ``(kt·C, C')`` matrix ``W[o, c, k]`` → row ``k·C + c``;
* ``affine``: strided ``Slice`` over frames, ``Mul`` by the per-channel weight;
* ``graph`` (folded, ``(C'·V, C·V)``): ``Reshape`` to ``(B, T, V·C)`` and ``MatMul`` with the
  weight re-indexed to channels-last (row ``v·C + c``, column ``w·C' + o``);
* ``pool``: ``Reshape`` to ``(N, M·T·V, C)``, ``ReduceSum`` over axis 1, ``Mul`` weight;
* ``attention``: ``MatMul(MatMul(Q, Transpose(K)), V)`` over joints per ``(B, T)``, ``Mul``
  by the scalar weight;
* ``readout``: ``Reshape`` to ``(N, T·V·C)``, ``MatMul`` with the weight re-indexed to
  channels-last, shift, ``Add bias_int`` at every step.

Every integer rule comes from :mod:`export.fixed_point` (constants imported from there,
each builder below names the function it mirrors):

* ``shift_exp(x, e)``: ``x · 2^e`` for ``e ≥ 0``; for ``e < 0`` the arithmetic right shift
  (floor) is ``(x − Mod(x, 2^-e)) / 2^-e`` with ``Mod(fmod=0)`` (sign of the divisor, i.e.
  in ``[0, 2^-e)``) so that the integer ``Div`` (which truncates) is exact;
* ``wrap_signed(x, bits)``: ``Mod(x + 2^(bits-1), 2^bits) − 2^(bits-1)`` (``fmod=0``);
* ``decay(x, d)``: ``Where(p < 0, −m, m)``, ``m = Div(Abs(p), 2^DECAY_SHIFT)``,
  ``p = x · (DECAY_UNITY − d)`` (no ``Sign``: onnxruntime's int64 ``Sign`` is wrong for
  ``2^31 ≤ p < 2^32``);
* ``wrap_u``, ``clip_v``, ``effective_bias``, ``effective_threshold`` and ``lif_step`` as
  in ``fixed_point._lif_core`` (bias and threshold are folded to initializers with those very
  functions).

Time semantics are the twin's: zero delay per hop (``Synapse.delay`` is not applied; compare
with Lava after ``balance_delays``' latency), host-input synapses computed once and reused at
every step, incoming synapses summed into ``a_in`` without a 32-bit wrap (as the twin does).
Weight and bias arrays are stored in the narrowest signed integer type that holds them and
``Cast`` to int64 once; all arithmetic is int64.

The output is deterministic: fixed producer fields, no timestamps, initializers sorted by
name, node and tensor names derived from the graph, deterministic protobuf serialisation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import fixed_point as fx
from ..errors import ExportError
from ..ir import INPUT, LOGITS, Graph

__all__ = ["write_onnx", "build_onnx", "OPSET", "IR_VERSION"]

OPSET = 17
IR_VERSION = 8
PRODUCER_NAME = "mksgn.export.onnx_writer"
PRODUCER_VERSION = "1"

_I64 = TensorProto.INT64


def _safe(name: str) -> str:
    return name.replace(".", "_")


class _Builder:
    """Accumulates nodes and initializers with deterministic names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: dict = {}
        self._names: set = set()

    # ------------------------------------------------------------------ plumbing
    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def node(self, op: str, inputs: list, base: str, **attrs) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{op}:{out}", **attrs))
        return out

    def const(self, value, name: str | None = None, dtype=np.int64) -> str:
        """An initializer; scalars of the same value/dtype are shared."""
        arr = np.asarray(value, dtype=dtype)
        if name is None:
            tag = "_".join(str(v).replace("-", "m").replace(".", "p") for v in arr.ravel())
            name = f"const/{np.dtype(dtype).name}/{list(arr.shape)}/{tag}"
        if name in self.inits:
            if not np.array_equal(numpy_helper.to_array(self.inits[name]), arr):
                raise ExportError(f"ONNX initializer {name} defined twice with different values")
            return name
        self._names.add(name)
        self.inits[name] = numpy_helper.from_array(arr, name)
        return name

    def weight(self, value, name: str) -> str:
        """A named integer array stored in the narrowest signed dtype that holds it (8-bit
        weight mantissas → int16, a quarter of int64), cast to int64 once in the graph."""
        arr = np.asarray(value, dtype=np.int64)
        for dt in (np.int8, np.int16, np.int32, np.int64):
            info = np.iinfo(dt)
            if arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max):
                break
        key = f"{name}:i64"
        if key in self._names:
            return key
        stored = self.const(arr.astype(dt), name, dtype=dt)
        self._names.add(key)
        self.nodes.append(helper.make_node("Cast", [stored], [key], name=f"Cast:{key}", to=_I64))
        return key

    # ------------------------------------------------------------------ arithmetic
    def add(self, a, b, base):
        return self.node("Add", [a, b], base)

    def sub(self, a, b, base):
        return self.node("Sub", [a, b], base)

    def mul(self, a, b, base):
        return self.node("Mul", [a, b], base)

    def shift_exp(self, x: str, e: int, base: str) -> str:
        """Mirrors ``fixed_point.shift_exp``: ``x << e`` or ``x >> -e`` (floor)."""
        e = int(e)
        if e == 0:
            return x
        if e > 0:  # shift_left: exact multiplication by 2^e
            return self.mul(x, self.const(int(fx.shift_left(1, e))), f"{base}/shl{e}")
        d = self.const(int(fx.shift_left(1, -e)))
        m = self.node("Mod", [x, d], f"{base}/mod", fmod=0)  # in [0, 2^-e): Python/floor semantics
        return self.node("Div", [self.sub(x, m, f"{base}/sub"), d], f"{base}/shr{-e}")  # exact

    def wrap_signed(self, x: str, bits: int, base: str) -> str:
        """Mirrors ``fixed_point.wrap_signed``: ``((x + 2^(b-1)) mod 2^b) - 2^(b-1)``."""
        half = self.const(1 << (bits - 1))
        m = self.node("Mod", [self.add(x, half, f"{base}/wrap{bits}_add"), self.const(1 << bits)],
                      f"{base}/wrap{bits}_mod", fmod=0)
        return self.sub(m, half, f"{base}/wrap{bits}")

    def wrap_int32(self, x: str, base: str) -> str:
        """Mirrors ``fixed_point.wrap_int32``."""
        return self.wrap_signed(x, 32, base)

    def decay(self, x: str, d_eff: int, base: str) -> str:
        """Mirrors ``fixed_point.decay``: ``sign(p) * (|p| >> DECAY_SHIFT)``, ``p = x (4096 - d)``.

        The sign is applied with ``Where(p < 0, -m, m)``, not ``Sign``: onnxruntime's int64
        ``Sign`` (1.23) is wrong for ``2^31 <= p < 2^32`` (it answers -1), and ``p = v·(4096-dv)``
        reaches that range for ``|v| >= 2^19``.
        """
        p = self.mul(x, self.const(fx.DECAY_UNITY - int(d_eff)), f"{base}/p")
        mag = self.node("Div", [self.node("Abs", [p], f"{base}/abs"),
                                self.const(int(fx.shift_left(1, fx.DECAY_SHIFT)))], f"{base}/shr")
        neg = self.node("Less", [p, self.const(0)], f"{base}/neg")
        return self.node("Where", [neg, self.node("Neg", [mag], f"{base}/negmag"), mag], f"{base}/decay")

    def wrap_u(self, c: str, base: str) -> str:
        """Mirrors ``fixed_point.wrap_u`` literally (one period, ``c`` in both branches)."""
        two_m = self.const(2 * fx.MAX_UV)
        hi = self.node("Greater", [c, self.const(fx.MAX_UV)], f"{base}/gt")
        w = self.node("Where", [hi, self.wrap_int32(self.sub(c, two_m, f"{base}/cm"), f"{base}/cm"), c],
                      f"{base}/w1")
        lo = self.node("LessOrEqual", [w, self.const(-fx.MAX_UV)], f"{base}/le")
        return self.node("Where", [lo, self.wrap_int32(self.add(c, two_m, f"{base}/cp"), f"{base}/cp"), w],
                         f"{base}/u")

    def clip_v(self, v: str, base: str) -> str:
        """Mirrors ``fixed_point.clip_v``."""
        return self.node("Clip", [v, self.const(fx.V_MIN), self.const(fx.V_MAX)], f"{base}/clip")

    def lif_step(self, u, v, a_in, group, base: str, per_channel_shape=(-1,)):
        """Mirrors ``fixed_point._lif_core`` (= ``lif_step``); ``u``/``v`` None means zero state.

        Returns ``(u_new, v_new, spike_bool)``.
        """
        act = self.wrap_int32(self.mul(a_in, self.const(int(fx.shift_left(1, fx.ACT_SHIFT))),
                                       f"{base}/act"), f"{base}/act")          # wrap_int32(a_in << 6)
        if u is None:  # decay(0, .) == 0 and wrap_int32(0) == 0
            c = self.wrap_int32(act, f"{base}/c")
        else:
            du = self.wrap_int32(self.decay(u, int(group.du) + fx.DS_OFFSET, f"{base}/du"), f"{base}/du")
            c = self.wrap_int32(self.add(du, act, f"{base}/c"), f"{base}/c")
        u_new = self.wrap_u(c, f"{base}/wrap_u")
        b = fx.effective_bias(np.asarray(group.bias_mant, np.int64), np.asarray(group.bias_exp, np.int64))
        b = self.weight(np.asarray(b, np.int64).reshape(per_channel_shape), f"bias/{group.name}")
        if v is None:
            vsum = self.add(u_new, b, f"{base}/vsum")
        else:
            dv = self.wrap_int32(self.decay(v, int(group.dv) + fx.DM_OFFSET, f"{base}/dv"), f"{base}/dv")
            vsum = self.add(self.add(dv, u_new, f"{base}/vu"), b, f"{base}/vsum")
        v_raw = self.wrap_int32(vsum, f"{base}/vraw")
        v_new = self.clip_v(v_raw, f"{base}/v")
        vth = self.const(int(fx.effective_threshold(int(group.vth_mant))))
        spike = self.node("Greater", [v_new, vth], f"{base}/spike")            # strict threshold
        v_new = self.node("Where", [spike, self.const(0), v_new], f"{base}/reset")
        return u_new, v_new, spike


def _shape_of(graph: Graph, src: str) -> tuple:
    """(C, T, V) of a source (a neuron group or the host input)."""
    if src == INPUT:
        C, T, V, _ = graph.input_shape
        return int(C), int(T), int(V)
    return tuple(int(d) for d in graph.groups[src].shape)


def _synapse(b: _Builder, graph: Graph, s, xs: list, M: int) -> str:
    """The linear map of ``export.twin.synapse_op`` on channels-last int64 tensors, then
    ``fixed_point.shift_exp`` by ``weight_exp``; readout adds ``bias_int``."""
    w = np.asarray(s.weight_mant, dtype=np.int64)
    base = f"{_safe(s.name)}"
    C, T, V = _shape_of(graph, s.sources[0])
    if s.kind == "attention":
        q, k, v = xs
        kt = b.node("Transpose", [k], f"{base}/kT", perm=[0, 1, 3, 2])
        y = b.node("MatMul", [b.node("MatMul", [q, kt], f"{base}/qk"), v], f"{base}/qkv")
        y = b.mul(y, b.weight(w.reshape(()), f"w/{s.name}"), f"{base}/y")
    else:
        x = xs[0]
        for i, extra in enumerate(xs[1:]):
            x = b.add(x, extra, f"{base}/in{i + 1}")
        if s.kind in ("input_conv", "conv"):
            cout, cin, kt, kw = w.shape
            if kw != 1 or cin != C:
                raise ExportError(f"{s.name}: conv weight {w.shape} does not fit input channels {C}")
            stride, pad = int(s.stride), int(s.padding)
            t_out = (T + 2 * pad - kt) // stride + 1
            if pad:
                x = b.node("Pad", [x, b.const([0, pad, 0, 0, 0, pad, 0, 0], f"pads/{s.name}")],
                           f"{base}/pad")
            taps = []
            for k in range(kt):
                taps.append(b.node("Slice", [x, b.const([k]), b.const([k + stride * (t_out - 1) + 1]),
                                             b.const([1]), b.const([stride])], f"{base}/tap{k}"))
            x = taps[0] if kt == 1 else b.node("Concat", taps, f"{base}/taps", axis=3)
            wm = w[:, :, :, 0].transpose(2, 1, 0).reshape(kt * cin, cout)    # row k·C + c
            y = b.node("MatMul", [x, b.weight(wm, f"w/{s.name}")], f"{base}/y")
        elif s.kind == "affine":
            if int(s.stride) > 1:
                x = b.node("Slice", [x, b.const([0]), b.const([T]), b.const([1]), b.const([int(s.stride)])],
                           f"{base}/stride")
            y = b.mul(x, b.weight(w.reshape(-1), f"w/{s.name}"), f"{base}/y")
        elif s.kind == "graph":
            if s.adjacency is not None:
                raise ExportError(f"{s.name}: fold the adjacency (export.passes.fold_graph) first")
            cout = w.shape[0] // V
            w4 = w.reshape(cout, V, C, V)                                       # [o, w, c, v]
            wm = w4.transpose(3, 2, 1, 0).reshape(V * C, V * cout)              # [(v, c), (w, o)]
            x = b.node("Reshape", [x, b.const([-1, T, V * C])], f"{base}/flat")
            y = b.node("MatMul", [x, b.weight(wm, f"w/{s.name}")], f"{base}/mm")
            y = b.node("Reshape", [y, b.const([-1, T, V, cout])], f"{base}/y")
        elif s.kind == "pool":
            x = b.node("Reshape", [x, b.const([-1, M * T * V, C])], f"{base}/flat")
            tot = b.node("ReduceSum", [x, b.const([1])], f"{base}/sum", keepdims=0)
            y = b.mul(tot, b.weight(w.reshape(-1), f"w/{s.name}"), f"{base}/mul")
            y = b.node("Reshape", [y, b.const([-1, 1, 1, C])], f"{base}/y")
        elif s.kind == "readout":
            ncls = w.shape[0]
            wm = w.reshape(ncls, C, T, V).transpose(2, 3, 1, 0).reshape(T * V * C, ncls)
            x = b.node("Reshape", [x, b.const([-1, T * V * C])], f"{base}/flat")
            y = b.node("MatMul", [x, b.weight(wm, f"w/{s.name}")], f"{base}/y")
        else:
            raise ExportError(f"{s.name}: unknown synapse kind {s.kind}")
    y = b.shift_exp(y, int(s.weight_exp), f"{base}/shift")
    if s.kind == "readout":
        y = b.add(y, b.weight(np.asarray(s.meta["bias_int"], np.int64).reshape(-1), f"bias_int/{s.name}"),
                  f"{base}/bias")
    return y


def build_onnx(graph: Graph) -> onnx.ModelProto:
    """The integer ONNX model of a quantised graph (see the module docstring).

    Raises
    ------
    ExportError
        Unquantised graph, or a synapse kind / shape the writer cannot express.
    """
    if not graph.quantised:
        raise ExportError("the ONNX writer needs a quantised graph (run export.passes.quantise)")
    graph.validate()
    C, T, V, M = (int(d) for d in graph.input_shape)
    steps = int(graph.time_steps)
    fb = int(graph.meta["input_frac_bits"])
    b = _Builder()
    b._names.update({"clip", "logits"})
    # host-side input quantisation (twin.quantise_input): round(x · 2^fb), half to even
    x = b.node("Transpose", ["clip"], "input/nmtvc", perm=[0, 4, 2, 3, 1])
    x = b.node("Reshape", [x, b.const([-1, T, V, C])], "input/btvc")
    x = b.node("Cast", [x], "input/f64", to=TensorProto.DOUBLE)
    x = b.mul(x, b.const(2.0 ** fb, dtype=np.float64), "input/scaled")
    x = b.node("Round", [x], "input/round")
    xin = b.node("Cast", [x], "input/q", to=_I64)

    batch_sym = {INPUT: "N" if M == 1 else "B"}
    for name in graph.groups:
        srcs = [s for s in graph.incoming(name)]
        batch_sym[name] = "N" if any(s.kind == "pool" for s in srcs) else batch_sym[srcs[0].sources[0]]

    const_y: dict = {}  # synapses from the host input: the same current every step
    state: dict = {}
    spikes_hist = {name: [] for name in graph.groups}
    logits = None
    for t in range(steps):
        spikes: dict = {}
        for name, g in graph.groups.items():
            cur = None
            for s in graph.incoming(name):
                if s.sources == (INPUT,):
                    if s.name not in const_y:
                        const_y[s.name] = _synapse(b, graph, s, [xin], M)
                    y = const_y[s.name]
                else:
                    y = _synapse(b, graph, s, [spikes[u] for u in s.sources], M)
                cur = y if cur is None else b.add(cur, y, f"{_safe(name)}/t{t}/a_in")
            u0, v0 = state.get(name, (None, None))
            u, v, sp = b.lif_step(u0, v0, cur, g, f"{_safe(name)}/t{t}/lif")
            state[name] = (u, v)
            spikes[name] = b.node("Cast", [sp], f"{_safe(name)}/t{t}/s", to=_I64)
            s8 = b.node("Cast", [sp], f"{_safe(name)}/t{t}/s8", to=TensorProto.INT8)
            spikes_hist[name].append(b.node("Unsqueeze", [s8, b.const([0])], f"{_safe(name)}/t{t}/s8u"))
        for s in graph.incoming(LOGITS):
            y = _synapse(b, graph, s, [spikes[u] for u in s.sources], M)
            logits = y if logits is None else b.add(logits, y, f"logits/t{t}")
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="Identity:logits"))

    ncls = int(np.asarray(graph.incoming(LOGITS)[0].weight_mant).shape[0])
    outputs = [helper.make_tensor_value_info("logits", _I64, ["N", ncls])]
    for name, g in graph.groups.items():
        out = f"spikes_{_safe(name)}"
        hist = spikes_hist[name]
        st = hist[0] if len(hist) == 1 else b.node("Concat", hist, f"{_safe(name)}/s8_steps", axis=0)
        b.nodes.append(helper.make_node("Transpose", [st], [out], name=f"Transpose:{out}",
                                        perm=[0, 1, 4, 2, 3]))
        gc, gt, gv = (int(d) for d in g.shape)
        outputs.append(helper.make_tensor_value_info(out, TensorProto.INT8,
                                                     [steps, batch_sym[name], gc, gt, gv]))
    inputs = [helper.make_tensor_value_info("clip", TensorProto.FLOAT, ["N", C, T, V, M])]
    inits = [b.inits[k] for k in sorted(b.inits)]
    arch = str(graph.meta.get("arch", "sgn"))
    og = helper.make_graph(b.nodes, f"{arch}_int_T{steps}", inputs, outputs, inits,
                           doc_string="Loihi fixed-point twin of the SGN, unrolled over time steps "
                                      "(export.writers.onnx_writer)")
    model = helper.make_model(og, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=PRODUCER_NAME, producer_version=PRODUCER_VERSION)
    model.ir_version = IR_VERSION
    model.model_version = 1
    meta = {"arch": arch, "time_steps": str(steps), "input_frac_bits": str(fb),
            "readout_scale": repr(graph.meta.get("readout_scale")),
            "logits": "integer sum over time steps; divide by readout_scale * time_steps for float"}
    for k in sorted(meta):
        p = model.metadata_props.add()
        p.key, p.value = k, meta[k]
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(graph: Graph, path) -> Path:
    """Write :func:`build_onnx` of ``graph`` to ``path`` (deterministic bytes).

    Returns
    -------
    Path
    """
    path = Path(path)
    model = build_onnx(graph)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path
