"""Lava writer: the quantised IR as one HDF5 file ``network.net``, plus lava-dl netx's
sequential ``layer`` stack where the graph is a plain chain that netx can load exactly.

File layout (all groups created with ``track_order=True``, no timestamps, written to a
temporary name and renamed, so the same graph always gives the same bytes)::

    /                         attrs: format="mksgn-lava", format_version=1,
                                     netx_sequential (0/1), netx_reason (why not, or "")
    /layer/<i>                netx stack, only if netx_sequential == 1 (see netx_layers)
        type                  b"input" | b"dense"      (S10, shape (1,), as slayer writes it)
        shape                 (C, T, V)                 (netx reads it reversed as W, H, C)
        weight                int (n_out, n_in)         effective integer weight per spike
        bias                  int (n_out,)              netx bias_mant (netx fixes bias_exp=6)
        neuron/type           b"CUBA"
        neuron/vThMant, iDecay, vDecay, refDelay, gradedSpike
    /graph                    the complete IR (what read_lava parses; the only source of truth)
        time_steps, input_shape, meta_json
        groups/<i>            name, layer, shape, latency, beta, threshold, bias (float),
                              scale, neuron/{type, vThMant, iDecay, vDecay, refDelay,
                              gradedSpike, du, dv, vth_mant, bias_mant, bias_exp}
        synapses/<i>          name, kind, layer, sources, target, weight (float), stride,
                              padding, delay, delays (per source, aligned with sources),
                              weight_mant, weight_exp, [bias, adjacency, bn/{mean,var,gamma,
                              beta,eps}], meta_json
        host_input            graded host-side input: shape (C, T, V, M), input_frac_bits,
                              synapses fed by it (index only)
        attention/<i>         SG-SA nodes (custom Lava process): name, sources (Q, K, V),
                              target, weight_mant, weight_exp, delays (index only)
        readout               name, sources, weight_mant, weight_exp, bias_int, scale,
                              latency (index only)

``<i>`` are decimal indices in topological (graph insertion) order.  Optional IR fields that
are ``None`` are absent; :func:`read_lava` maps absent back to ``None`` and raises
:class:`~export.errors.ExportError` when a required field is missing.

netx conventions (read from lava-dl 0.6 ``lava/lib/dl/netx/hdf5.py``, ``utils.py``,
``blocks/process.py``):

* ``Network._create`` walks ``layer/0 .. layer/n-1``; ``type`` b"input" without ``neuron``
  only sets the input shape, so the network's ``inp`` is the first Dense's ``s_in``.
* ``create_dense`` reads ``shape`` (uses its product), ``weight`` (``astype(int)``), optional
  ``bias`` and ``delay`` (a ``delay`` dataset switches to ``DelayDense``; we write none: a
  chain has no delays) and ``neuron``.  It **re-derives** ``num_weight_bits``,
  ``weight_exp`` and ``sign_mode`` with ``utils.optimize_weight_bits``, which shifts the
  weights so that the Dense output equals ``weight @ s`` exactly, provided the weights lie in
  ``[-256, 254]`` (larger ones are clipped).  So the file holds the *effective* integer weight
  ``weight_mant · 2^weight_exp``; a negative ``weight_exp`` is only expressible when it
  divides every mantissa (Lava floors the shifted *sum*).
* ``get_neuron_params`` for ``CUBA``: ``LIF(vth=vThMant, du=iDecay - 1, dv=vDecay,
  bias_exp=6, bias_mant=bias)``; hence ``iDecay = du + 1`` (du = 4095 -> iDecay = 4096) and
  ``bias = (bias_mant << bias_exp) >> 6``, which must be exact.  ``refDelay`` and
  ``gradedSpike`` are read by netx only for other neuron types; we write 1 and False as
  slayer does.
* Conv layers: Lava's ``Conv`` ignores ``weight_exp`` and computes in float32, so every
  linear synapse kind is written as an explicit Dense matrix (built with the twin's own
  :func:`export.twin.synapse_op`, so it is the same map by construction).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from mksgn.checkpoint import atomic_write

from .. import fixed_point as fx
from ..errors import ExportError
from ..ir import INPUT, LOGITS, MANT_DTYPE, Graph, NeuronGroup, Synapse
from ..twin import synapse_op

__all__ = ["write_lava", "read_lava", "netx_layers", "write_netx_sequential", "dense_matrix",
           "FILE_NAME", "FORMAT", "FORMAT_VERSION"]

FILE_NAME = "network.net"
FORMAT = "mksgn-lava"
FORMAT_VERSION = 1
ACT_SHIFT = 6  # netx fixes bias_exp = 6 (hdf5.py get_neuron_params)
_, NETX_W_MIN, NETX_W_MAX = fx.weight_grid()  # 8-bit MIXED grid; utils.optimize_weight_bits clips outside it
LINEAR_KINDS = ("input_conv", "conv", "affine", "graph", "pool")


# --------------------------------------------------------------------------- json for meta
def _to_json(obj):
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (tuple,)):
        return list(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in the graph metadata")


def _from_json(d):
    if "__ndarray__" in d:
        return np.asarray(d["__ndarray__"], dtype=d["dtype"]).reshape(d["shape"])
    return d


def _dumps(obj) -> bytes:
    return json.dumps(obj, default=_to_json, sort_keys=True, allow_nan=True).encode()


def _loads(raw) -> dict:
    return json.loads(bytes(raw).decode(), object_hook=_from_json)


# --------------------------------------------------------------------------- h5 helpers
def _str(h, name, s: str) -> None:
    h.create_dataset(name, data=np.bytes_(s.encode()))


def _strs(h, name, items) -> None:
    h.create_dataset(name, data=np.array([str(i).encode() for i in items], dtype="S")
                     if len(items) else np.zeros((0,), "S1"))


def _type(h, name, s: str) -> None:
    """A string the way slayer writes ``type`` (S10, shape (1,)); netx reads ``value[0]``."""
    h.create_dataset(name, (1,), "S10", [s.encode("ascii")])


def _arr(h, name, a) -> None:
    """Large arrays are gzip-compressed (deterministic; h5py/netx read them transparently):
    the folded graph-conv matrices are mostly zeros. Level 1 without byte shuffling: on a
    paper-width folded graph conv (5120 × 5120) it writes the int64 mantissas in 1.2 s instead
    of 1.7 s and smaller (16 vs 27 MB), the float weights in 3.7 s instead of 5.1 s."""
    a = np.asarray(a)
    if a.size >= 4096:
        h.create_dataset(name, data=a, compression="gzip", compression_opts=1)
    else:
        h.create_dataset(name, data=a)


def _read_str(h, name) -> str:
    v = h[name][()]
    if isinstance(v, np.ndarray):
        v = v[0]
    return bytes(v).decode()


def _read_strs(h, name) -> tuple:
    return tuple(bytes(v).decode() for v in h[name][()])


def _need(h, name, where: str):
    if name not in h:
        raise ExportError(f"{where}: required field {name!r} is missing from the Lava file; "
                          "re-export the checkpoint")
    return h[name]


def _opt(h, name):
    return h[name][()] if name in h else None


def _new_group(h, name):
    return h.create_group(name, track_order=True)


# --------------------------------------------------------------------------- netx stack
# Largest dense netx layer the writer builds (entries): a real model's first layers would need
# (16,640 × 16,640) float64 identity probes — 24 GB — before the chain check even fails.
NETX_MAX_DENSE = 2 ** 24


def dense_matrix(s: Synapse, in_shape: tuple, weight) -> np.ndarray:
    """The explicit ``(n_out, n_in)`` matrix of a linear synapse on one sample.

    Built by applying :func:`export.twin.synapse_op` to the identity basis of the source
    shape ``(C, T, V)``, so it is the twin's map by construction. Index order of both axes is
    C-order over ``(C, T, V)``.

    Raises
    ------
    ExportError
        Attention or readout (not a single linear map on one source).
    """
    if s.kind not in LINEAR_KINDS:
        raise ExportError(f"{s.name}: a {s.kind} synapse has no single dense matrix")
    n_in = int(np.prod(in_shape))
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, *in_shape)
    y = synapse_op(s, [eye], weight, 1)
    return y.reshape(n_in, -1).T.numpy().copy()


def netx_layers(graph: Graph) -> list:
    """The graph as lava-dl netx's sequential layer list, exactly, or an ExportError.

    Expressible: a quantised plain chain ``input -> s0 -> g0 -> s1 -> g1 ... -> gN`` (one
    single-source linear synapse into each group, no delays, one body) whose effective
    weights ``weight_mant·2^weight_exp`` are integers in ``[-256, 254]`` and whose biases
    ``bias_mant·2^bias_exp`` are multiples of 2^6. The readout stays in ``/graph`` (netx has
    no neuron-less layer).

    Returns
    -------
    list of dict: ``{"type", "shape", "weight"?, "bias"?, "neuron"?}``

    Raises
    ------
    ExportError
        Listing every reason the graph is not a netx chain.
    """
    why = []
    C, T, V, M = graph.input_shape
    if M != 1:
        why.append(f"{M} bodies per clip (netx layers are per sample)")
    if not graph.quantised:
        why.append("graph is not quantised")
    prev, prev_shape = INPUT, (C, T, V)
    layers = [{"type": "input", "shape": np.array([C, T, V], np.int64)}]
    for name, g in graph.groups.items():
        ins = graph.incoming(name)
        if len(ins) != 1 or ins[0].sources != (prev,):
            why.append(f"group {name} is not fed by one synapse from {prev} alone "
                       f"(residual/attention/branch)")
            break
        s = ins[0]
        if s.kind not in LINEAR_KINDS:
            why.append(f"synapse {s.name} is a {s.kind}")
            break
        if any(d for d in s.meta.get("delays", {}).values()) or s.delay:
            why.append(f"synapse {s.name} has a delay")
        layer = {"type": "dense", "shape": np.array(g.shape, np.int64)}
        size = int(np.prod(prev_shape)) * g.size
        if size > NETX_MAX_DENSE:
            why.append(f"synapse {s.name}: its dense ({g.size}, {int(np.prod(prev_shape))}) matrix has "
                       f"{size:,} entries (> {NETX_MAX_DENSE:,}); netx's dense layer format would be too large")
        elif graph.quantised:
            m = np.rint(dense_matrix(s, prev_shape, s.weight_mant)).astype(np.int64)
            e = int(s.weight_exp)
            if e >= 0:
                w = m << e
            elif np.all(m % (1 << -e) == 0):
                w = m >> -e
            else:
                why.append(f"synapse {s.name}: weight_exp {e} floors the summed current; "
                           "netx can only hold integer per-spike weights")
                w = m
            if w.min() < NETX_W_MIN or w.max() > NETX_W_MAX or not w.any():
                why.append(f"synapse {s.name}: effective weights [{w.min()}, {w.max()}] are "
                           f"outside netx's [{NETX_W_MIN}, {NETX_W_MAX}] or all zero")
            b = np.asarray(g.bias_mant, np.int64) * (2 ** np.asarray(g.bias_exp, np.int64))
            if np.any(b % (1 << ACT_SHIFT)):
                why.append(f"group {name}: bias_mant·2^bias_exp is not a multiple of 2^6 "
                           "(netx fixes bias_exp = 6)")
            bias = np.broadcast_to((b >> ACT_SHIFT).reshape(-1, *([1] * (len(g.shape) - 1))),
                                   g.shape).reshape(-1)
            layer.update(weight=w, bias=np.ascontiguousarray(bias),
                         neuron=_netx_neuron(g))
        layers.append(layer)
        prev, prev_shape = name, tuple(g.shape)
    for s in graph.synapses.values():
        if s.target == LOGITS and s.sources != (prev,):
            why.append(f"readout {s.name} does not read the last group {prev}")
    if why:
        raise ExportError("graph is not a netx sequential chain: " + "; ".join(why))
    return layers


def _netx_neuron(g: NeuronGroup) -> dict:
    return {"type": "CUBA", "vThMant": int(g.vth_mant), "iDecay": int(g.du) + 1,
            "vDecay": int(g.dv), "refDelay": 1, "gradedSpike": False}


def _write_neuron(h, n: dict) -> None:
    _type(h, "type", n["type"])
    for k in ("vThMant", "iDecay", "vDecay", "refDelay"):
        _arr(h, k, np.int64(n[k]))
    _arr(h, "gradedSpike", np.bool_(n["gradedSpike"]))


def _write_layers(f, layers: list) -> None:
    top = _new_group(f, "layer")
    for i, layer in enumerate(layers):
        h = _new_group(top, str(i))
        _type(h, "type", layer["type"])
        _arr(h, "shape", layer["shape"])
        if "weight" in layer:
            _arr(h, "weight", layer["weight"])
            _arr(h, "bias", layer["bias"])
        if "neuron" in layer:
            _write_neuron(_new_group(h, "neuron"), layer["neuron"])


# --------------------------------------------------------------------------- full graph
def _write_group(h, g: NeuronGroup) -> None:
    _str(h, "name", g.name)
    _str(h, "layer", g.layer)
    _arr(h, "shape", np.array(g.shape, np.int64))
    _arr(h, "latency", np.int64(g.latency))
    _arr(h, "beta", np.float64(g.beta))
    _arr(h, "threshold", np.float64(g.threshold))
    _arr(h, "bias", np.asarray(g.bias, np.float64))
    if g.scale is not None:
        _arr(h, "scale", np.float64(g.scale))
    n = _new_group(h, "neuron")
    _type(n, "type", "CUBA")
    if g.vth_mant is not None:
        for k, v in _netx_neuron(g).items():
            if k not in ("type", "gradedSpike"):
                _arr(n, k, np.int64(v))
        _arr(n, "gradedSpike", np.bool_(False))
        _arr(n, "du", np.int64(g.du))
        _arr(n, "dv", np.int64(g.dv))
        _arr(n, "vth_mant", np.int64(g.vth_mant))
        _arr(n, "bias_mant", np.asarray(g.bias_mant, np.int64))
        _arr(n, "bias_exp", np.asarray(g.bias_exp, np.int64))


def _write_synapse(h, s: Synapse) -> None:
    _str(h, "name", s.name)
    _str(h, "kind", s.kind)
    _str(h, "layer", s.layer)
    _strs(h, "sources", s.sources)
    _str(h, "target", s.target)
    _arr(h, "weight", np.asarray(s.weight))
    _arr(h, "stride", np.int64(s.stride))
    _arr(h, "padding", np.int64(s.padding))
    _arr(h, "delay", np.int64(s.delay))
    delays = s.meta.get("delays")
    if delays is not None:
        _arr(h, "delays", np.array([int(delays[u]) for u in s.sources], np.int64))
    if s.weight_mant is not None:
        _arr(h, "weight_mant", np.asarray(s.weight_mant, np.int64))
    if s.weight_exp is not None:
        _arr(h, "weight_exp", np.int64(s.weight_exp))
    if s.bias is not None:
        _arr(h, "bias", np.asarray(s.bias))
    if s.adjacency is not None:
        _arr(h, "adjacency", np.asarray(s.adjacency))
    if s.bn is not None:
        b = _new_group(h, "bn")
        for k, v in zip(("mean", "var", "gamma", "beta", "eps"), s.bn):
            _arr(b, k, np.asarray(v))
    _arr(h, "meta_json", np.void(_dumps(s.meta)))


def _write_index(gr, graph: Graph) -> None:
    """Redundant, consumer-friendly summaries (host input, attention, readout)."""
    hi = _new_group(gr, "host_input")
    _str(hi, "name", INPUT)
    _arr(hi, "graded", np.bool_(True))
    _arr(hi, "shape", np.array(graph.input_shape, np.int64))
    if "input_frac_bits" in graph.meta:
        _arr(hi, "input_frac_bits", np.int64(graph.meta["input_frac_bits"]))
    _strs(hi, "synapses", [s.name for s in graph.synapses.values() if INPUT in s.sources])
    att = _new_group(gr, "attention")
    for i, s in enumerate(s for s in graph.synapses.values() if s.kind == "attention"):
        a = _new_group(att, str(i))
        _str(a, "name", s.name)
        _strs(a, "sources", s.sources)
        _str(a, "target", s.target)
        _str(a, "implementation", "stock lava-nc processes (export/mapping.py): Sparse fan-out -> "
                                  "ProdNeuron -> Sparse sum -> GradedVec -> Sparse fan-out -> ProdNeuron "
                                  "-> Sparse scale; s * (Q K^T) V over joints, order "
                                  + str(s.meta.get("attention_order", "set by balance_delays")))
        if s.weight_mant is not None:
            _arr(a, "weight_mant", np.asarray(s.weight_mant, np.int64))
            _arr(a, "weight_exp", np.int64(s.weight_exp))
        if "delays" in s.meta:
            _arr(a, "delays", np.array([s.meta["delays"][u] for u in s.sources], np.int64))
    ro = [s for s in graph.synapses.values() if s.target == LOGITS]
    if ro:
        s = ro[0]
        r = _new_group(gr, "readout")
        _str(r, "name", s.name)
        _strs(r, "sources", s.sources)
        if s.weight_mant is not None:
            _arr(r, "weight_mant", np.asarray(s.weight_mant, np.int64))
            _arr(r, "weight_exp", np.int64(s.weight_exp))
        if "bias_int" in s.meta:
            _arr(r, "bias_int", np.asarray(s.meta["bias_int"], np.int64))
        if "scale" in s.meta:
            _arr(r, "scale", np.float64(s.meta["scale"]))
        if "readout_latency" in graph.meta:
            _arr(r, "latency", np.int64(graph.meta["readout_latency"]))


def _atomic_h5(path: Path, fill) -> Path:
    # The HDF5 image is built in memory and written with one plain write: a full disk is then an
    # OSError (ENOSPC) of that write, not an HDF5 library failure halfway through the file. The
    # bytes equal those h5py writes to a file directly.
    buf = io.BytesIO()
    with h5py.File(buf, "w", track_order=True, libver=("earliest", "v110")) as f:
        fill(f)
    image = buf.getvalue()

    def write(tmp):
        tmp.write_bytes(image)
        os.chmod(tmp, 0o644)
    return atomic_write(path, write)


def write_lava(graph: Graph, out_dir) -> list:
    """Write ``out_dir/network.net`` (layout in the module docstring).

    Parameters
    ----------
    graph : Graph
        Usually quantised and delay-balanced; unquantised fields are simply absent.
    out_dir : str or Path

    Returns
    -------
    list of Path : ``[out_dir/network.net]``

    Raises
    ------
    ExportError
        Invalid graph (``Graph.validate``) or metadata that is not JSON-representable.
    """
    graph.validate()
    try:
        layers, reason = netx_layers(graph), ""
    except ExportError as exc:
        layers, reason = None, str(exc)

    def fill(f):
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["netx_sequential"] = int(layers is not None)
        f.attrs["netx_reason"] = reason
        if layers is not None:
            _write_layers(f, layers)
        gr = _new_group(f, "graph")
        _arr(gr, "time_steps", np.int64(graph.time_steps))
        _arr(gr, "input_shape", np.array(graph.input_shape, np.int64))
        try:
            _arr(gr, "meta_json", np.void(_dumps(graph.meta)))
        except TypeError as exc:
            raise ExportError(f"graph metadata: {exc}") from None
        groups = _new_group(gr, "groups")
        for i, g in enumerate(graph.groups.values()):
            _write_group(_new_group(groups, str(i)), g)
        syns = _new_group(gr, "synapses")
        for i, s in enumerate(graph.synapses.values()):
            _write_synapse(_new_group(syns, str(i)), s)
        _write_index(gr, graph)

    return [_atomic_h5(Path(out_dir) / FILE_NAME, fill)]


def write_netx_sequential(graph: Graph, path) -> Path:
    """Write only the netx ``layer`` stack to ``path`` (loadable by
    ``lava.lib.dl.netx.hdf5.Network``).

    Raises
    ------
    ExportError
        The graph is not an exactly expressible chain (:func:`netx_layers`).
    """
    layers = netx_layers(graph)
    return _atomic_h5(Path(path), lambda f: _write_layers(f, layers))


# --------------------------------------------------------------------------- reading
def _read_group(h, where: str) -> NeuronGroup:
    _need(h, "name", where)
    name = _read_str(h, "name")
    where = f"{where} ({name})"
    n = _need(h, "neuron", where)
    quant = "vth_mant" in n
    return NeuronGroup(
        name=name, shape=tuple(int(x) for x in _need(h, "shape", where)[()]),
        beta=float(_need(h, "beta", where)[()]), threshold=float(_need(h, "threshold", where)[()]),
        bias=_need(h, "bias", where)[()], layer=_read_str(h, "layer"),
        latency=int(_need(h, "latency", where)[()]),
        du=int(n["du"][()]) if quant else None, dv=int(n["dv"][()]) if quant else None,
        vth_mant=int(n["vth_mant"][()]) if quant else None,
        bias_mant=n["bias_mant"][()] if quant else None,
        bias_exp=n["bias_exp"][()] if quant else None,
        scale=float(h["scale"][()]) if "scale" in h else None)


def _mant(a):
    """Mantissas as the graph holds them (:data:`export.ir.MANT_DTYPE`; the file has int64)."""
    if a is None:
        return None
    m = np.asarray(a)
    out = m.astype(MANT_DTYPE)
    if not np.array_equal(out, m):
        raise ExportError("network.net holds weight mantissas outside the int32 range; the file is damaged")
    return out


def _read_synapse(h, where: str) -> Synapse:
    for k in ("name", "kind", "layer", "sources", "target", "weight", "stride", "padding",
              "delay", "meta_json"):
        _need(h, k, where)
    bn = None
    if "bn" in h:
        b = h["bn"]
        bn = tuple(b[k][()] for k in ("mean", "var", "gamma", "beta", "eps"))
        bn = bn[:4] + (float(bn[4]),)
    we = _opt(h, "weight_exp")
    return Synapse(
        name=_read_str(h, "name"), kind=_read_str(h, "kind"), sources=_read_strs(h, "sources"),
        target=_read_str(h, "target"), weight=h["weight"][()], stride=int(h["stride"][()]),
        padding=int(h["padding"][()]), adjacency=_opt(h, "adjacency"), bn=bn,
        bias=_opt(h, "bias"), layer=_read_str(h, "layer"), delay=int(h["delay"][()]),
        weight_mant=_mant(_opt(h, "weight_mant")), weight_exp=None if we is None else int(we),
        meta=_loads(h["meta_json"][()].tobytes()))


def read_lava(path, data: bytes | None = None) -> Graph:
    """Parse ``network.net`` (or its directory) back into an IR :class:`Graph`.

    Parsing only; building Lava processes from the graph is ``hw_sim``'s job. ``data``: the
    file's bytes, already read (and checked against the manifest) by the caller; ``path`` then
    only names the file in messages.

    Raises
    ------
    ExportError
        Not a file of this format/version, a required field missing, or a damaged file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if data is None and not path.is_file():
        raise ExportError(f"{path}: no Lava export here; run the exporter first")
    try:
        f = h5py.File(io.BytesIO(data) if data is not None else path, "r")
    except OSError as exc:
        raise ExportError(f"{path}: not an HDF5 file ({exc})") from None
    try:
        with f:
            return _read_graph(f, path)
    except (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError,
            UnicodeDecodeError) as exc:  # h5py / numpy on a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: corrupt or unreadable Lava network file ({first[:200]}); "
                          "re-export it") from None


def _read_graph(f, path: Path) -> Graph:
    """The graph of an open ``network.net`` (:func:`read_lava`)."""
    if f.attrs.get("format") != FORMAT or int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
        raise ExportError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file "
                          f"(format={f.attrs.get('format')!r}); re-export it")
    gr = _need(f, "graph", str(path))
    groups = {}
    hg = _need(gr, "groups", str(path))
    for i in range(len(hg)):
        g = _read_group(hg[str(i)], f"{path}: /graph/groups/{i}")
        groups[g.name] = g
    syns = {}
    hs = _need(gr, "synapses", str(path))
    for i in range(len(hs)):
        s = _read_synapse(hs[str(i)], f"{path}: /graph/synapses/{i}")
        syns[s.name] = s
    graph = Graph(groups=groups, synapses=syns,
                  input_shape=tuple(int(x) for x in _need(gr, "input_shape", str(path))[()]),
                  time_steps=int(_need(gr, "time_steps", str(path))[()]),
                  meta=_loads(_need(gr, "meta_json", str(path))[()].tobytes()))
    return graph.validate()
