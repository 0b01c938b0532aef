"""Loihi's integer arithmetic -- the ONE place it lives (see DESIGN.md, "The one rule
about integers").

Every function here is a pure function on integers and works unchanged on

* NumPy integer arrays / Python ints (returned as ``np.int64`` arrays), used by the custom
  Lava ProcessModels and the ONNX writer, and
* ``torch.int64`` tensors of any batch shape and device (returned as ``torch.int64`` on the
  same device), used by the PyTorch integer twin.

If any array argument is a torch tensor the computation runs in torch, otherwise in NumPy.
All intermediates are int64, so nothing overflows silently unless Lava itself overflows;
where Lava's own model wraps a 32-bit register we wrap it here too (``wrap_int32``).

The rules were read from the installed lava-nc 0.10 and are tested bit-for-bit against
Lava's own process models in ``tests/test_fixed_point.py``:

``lava/proc/lif/models.py``
    ``AbstractPyLifModelFixed.subthr_dynamics`` / ``scale_bias`` / ``run_spk`` and
    ``PyLifModelBitAcc.scale_threshold`` / ``spiking_activation``.  ``PyLifModelBitAcc`` is
    tagged ``@tag("bit_accurate_loihi", "fixed_pt")``, so it is selected by
    ``Loihi2SimCfg(select_tag="fixed_pt")`` (or ``Loihi1SimCfg(select_tag="fixed_pt")``, or
    ``select_tag="bit_accurate_loihi"``).
``lava/proc/dense/models.py``
    ``AbstractPyDenseModelBitAcc.run_spk`` (``PyDenseModelBitAcc``, same tags).
``lava/utils/weightutils.py``
    ``determine_sign_mode``, ``clip_weights``, ``truncate_weights``,
    ``optimize_weight_bits``.
``lava/proc/conv/models.py``, ``lava/proc/conv/utils.py``
    ``PyConvModelFixed`` (tag ``fixed_pt`` only) and ``utils.signed_clamp``.

One LIF step (``lif_step``), exactly as Lava's bit-accurate model::

    a   = wrap_int32(a_in << 6)                                   # ACT_SHIFT
    c   = wrap_int32(decay(u, du + 1) + a)                        # ds_offset = 1
    u   = wrap_u(c)                                               # 1 wrap, range (-2^23, 2^23]
    b   = bias_mant << bias_exp   (>> -bias_exp, floor, if bias_exp < 0)
    v   = clip(decay(v, dv) + u + b, -(2^23-1), 2^23-1)           # dm_offset = 0
    s   = v > (vth_mant << 6)                                     # strict
    v   = 0 where s

with ``decay(x, d) = sign(x) * ((|x| * (4096 - d)) >> 12)`` (round toward zero).

One Dense step (``dense_act``)::

    W   = truncate_weights(W, num_weight_bits, sign_mode)          # clip to 8 bits, drop LSBs
    out = wrap_int32(shift(W @ s, weight_exp))                     # << e, or >> -e (floor)

and the synapse emits ``out`` one time step late (its first output is 0).

Lava facts worth knowing (all verified in the tests):

* ``a_in`` is declared ``np.int16`` but is **neither saturated nor wrapped at 16 bits**:
  ``PyInPortVectorDense.recv`` sums ``np.zeros(shape, int16) + message`` so it takes the
  sender's dtype; Dense, Conv and the fixed-point RingBuffer all send int32.  ``a_in << 6`` is
  then an int32 shift (wraps at 32 bits only for ``|a_in| >= 2^25``).  ``A_IN_BITS = 16`` is
  the *hardware* width; keep ``|a_in| < 2^15`` to stay hardware-faithful.  (Only a sender of
  dtype int16 would make Lava wrap ``a_in << 6`` at 16 bits; none of Lava's does.)
* The 24-bit wrap of ``u`` is a single conditional add/subtract of ``2^24``: values in
  ``(-2^23, 2^23]`` are kept (``+2^23`` is NOT wrapped, ``-2^23`` becomes ``+2^23``), and a
  value more than one period out of range stays out of range.
* ``v`` is clipped (saturates), not wrapped.
* The Dense output is **not** clipped to 16 or 24 bits (``precision=16`` is metadata only);
  it is the int32 value of the shifted accumulator.
* Dense weights with mixed signs and ``num_weight_bits=8`` lose their LSB: Lava clips to
  ``[-256, 255]`` and truncates ``8 - num_weight_bits + 1`` LSBs, i.e. the usable weights are
  the even numbers ``-256..254`` (mantissa ``-128..127`` times 2).
* ``PyConvModelFixed`` ignores ``weight_exp`` and ``num_weight_bits`` entirely and wraps its
  output modulo ``2^24`` (``signed_clamp`` is a modulo, not a clamp): see ``conv_wrap``.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

try:  # torch is optional for NumPy-only callers (Lava ProcessModels, ONNX writer)
    import torch
except ImportError:  # pragma: no cover
    torch = None

__all__ = [
    "DECAY_SHIFT", "DECAY_UNITY", "VTH_SHIFT", "ACT_SHIFT", "UV_BITS", "MAX_UV",
    "V_MIN", "V_MAX", "DS_OFFSET", "DM_OFFSET", "WEIGHT_BITS", "MAX_WEIGHT_BITS",
    "DECAY_BITS", "DU_MAX", "DV_MAX", "A_IN_BITS", "A_IN_MIN", "A_IN_MAX", "INPUT_BITS", "INPUT_MAX",
    "VTH_BITS", "VTH_MAX",
    "BIAS_MANT_BITS", "BIAS_MANT_MIN", "BIAS_MANT_MAX", "BIAS_EXP_BITS", "BIAS_EXP_MAX",
    "WEIGHT_EXP_MIN", "WEIGHT_EXP_MAX", "CONV_OUT_BITS", "MAX_DELAY",
    "MIXED", "EXCITATORY", "INHIBITORY",
    "shift_left", "shift_right_floor", "shift_exp", "wrap_signed", "wrap_int32",
    "decay", "wrap_u", "clip_v", "effective_bias", "effective_threshold",
    "lif_step", "lif_step_torch", "lif_run",
    "sign_mode_of", "clip_weights", "truncate_weights", "weight_grid", "dense_act",
    "conv_wrap",
    "quantise_weights", "quantise_threshold", "quantise_bias", "quantise_decay",
]

# --------------------------------------------------------------------------- constants
#: Decays are 12-bit fractions: ``x * (4096 - d) >> 12``  (lif/models.py ``decay_shift``).
DECAY_SHIFT = 12
#: ``2**DECAY_SHIFT`` (lif/models.py ``decay_unity``).
DECAY_UNITY = 4096
#: Threshold is MSB-aligned: effective threshold = ``vth << 6`` (``vth_shift``).
VTH_SHIFT = 6
#: Synaptic input is MSB-aligned: ``u += a_in << 6`` (``act_shift``).
ACT_SHIFT = 6
#: u and v are 24-bit state variables (``uv_bitwidth``).
UV_BITS = 24
#: ``2**(UV_BITS-1)`` (``max_uv_val``); u wraps into ``(-MAX_UV, MAX_UV]``.
MAX_UV = 2 ** 23
#: v saturates to ``[V_MIN, V_MAX] = [-(2^23-1), 2^23-1]``.
V_MIN = -(MAX_UV - 1)
V_MAX = MAX_UV - 1
#: Loihi's 1-bit offset registers added to du / dv (``ds_offset`` / ``dm_offset``).
DS_OFFSET = 1
DM_OFFSET = 0
#: Weight mantissa width (Dense default ``num_weight_bits``), and the clip width Lava uses.
WEIGHT_BITS = 8
MAX_WEIGHT_BITS = 8
#: du and dv are unsigned 12-bit (0..4095).
DECAY_BITS = 12
DU_MAX = 2 ** DECAY_BITS - 1
DV_MAX = 2 ** DECAY_BITS - 1
#: Hardware width of a_in (declared ``np.int16`` in AbstractPyLifModelFixed).  Lava's Python
#: model does NOT enforce it -- see the module docstring.
A_IN_BITS = 16
#: Hardware range of a_in (int16); the twin counts inputs outside it as saturation events.
A_IN_MIN = -(2 ** (A_IN_BITS - 1))
A_IN_MAX = 2 ** (A_IN_BITS - 1) - 1
#: Host-side input coordinates (the graded payload the input ``RingBuffer`` sends) are signed
#: 16-bit integers ``round(x · 2^input_frac_bits)``; ``INPUT_MAX`` is their largest magnitude.
INPUT_BITS = 16
INPUT_MAX = 2 ** (INPUT_BITS - 1) - 1
#: vth is unsigned 17-bit (``PyLifModelBitAcc.vth`` precision 17).
VTH_BITS = 17
VTH_MAX = 2 ** VTH_BITS - 1
#: bias_mant is signed 13-bit, bias_exp 3-bit (0..7 on hardware; Lava also accepts < 0).
BIAS_MANT_BITS = 13
BIAS_MANT_MIN = -(2 ** (BIAS_MANT_BITS - 1))
BIAS_MANT_MAX = 2 ** (BIAS_MANT_BITS - 1) - 1
BIAS_EXP_BITS = 3
BIAS_EXP_MAX = 2 ** BIAS_EXP_BITS - 1
#: Loihi's weight exponent register range (hardware limit; Lava's Python model takes any int).
WEIGHT_EXP_MIN = -8
WEIGHT_EXP_MAX = 7
#: PyConvModelFixed wraps its output modulo 2^24.
CONV_OUT_BITS = 24
#: Largest synaptic delay (steps) a Loihi 2 synapse holds (6-bit delay field).
MAX_DELAY = 63

#: Sign modes (same names as ``lava.utils.weightutils.SignMode``).
MIXED = "MIXED"
EXCITATORY = "EXCITATORY"
INHIBITORY = "INHIBITORY"


# --------------------------------------------------------------------------- backend helpers
def _is_torch(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _use_torch(*xs: Any):
    """Return a reference tensor if any argument is a torch tensor, else None."""
    for x in xs:
        if _is_torch(x):
            return x
    return None


def _i64(x: Any, ref=None):
    """Convert ``x`` to int64 on the chosen backend (``ref`` is a torch tensor or None)."""
    if ref is not None:
        if _is_torch(x):
            return x.to(device=ref.device, dtype=torch.int64)
        return torch.as_tensor(np.asarray(x, dtype=np.int64), device=ref.device)
    if _is_torch(x):  # pragma: no cover - only reachable when ref is None and x is torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.int64)


def _where(c, a, b):
    return torch.where(c, a, b) if _is_torch(c) else np.where(c, a, b)


def _sign(x):
    return torch.sign(x) if _is_torch(x) else np.sign(x)


def _abs(x):
    return torch.abs(x) if _is_torch(x) else np.abs(x)


def _clip(x, lo, hi):
    return torch.clamp(x, lo, hi) if _is_torch(x) else np.clip(x, lo, hi)


def _round(x):
    """Round half to even (numpy and torch agree)."""
    return torch.round(x) if _is_torch(x) else np.round(x)


def _torch_in_range(x, lo: int, hi: int) -> bool:
    """True when the torch tensor ``x`` lies in ``[lo, hi]`` (one pass, no temporary): the
    wraps below then leave it unchanged and are skipped (the integer twin's state almost
    never wraps; the result is the same either way)."""
    if x.numel() == 0:
        return True
    mn, mx = torch.aminmax(x)
    return lo <= int(mn) and int(mx) <= hi


def _float64(x):
    if _is_torch(x):
        return x.detach().to(torch.float64)
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- shifts & wraps
def shift_left(x, n):
    """Left shift ``x << n`` in int64 (``n >= 0``, scalar or broadcastable array).

    Parameters
    ----------
    x, n : int array/tensor
        Value(s) and non-negative shift amount(s).

    Returns
    -------
    int64 array/tensor
    """
    ref = _use_torch(x, n)
    x, n = _i64(x, ref), _i64(n, ref)
    return x << n


def shift_right_floor(x, n):
    """Arithmetic right shift ``x >> n`` = ``floor(x / 2**n)`` (``n >= 0``).

    This is what ``np.right_shift`` does on signed integers in Lava (e.g. the negative
    ``weight_exp`` branch of ``AbstractPyDenseModelBitAcc.run_spk`` and the negative
    ``bias_exp`` branch of ``AbstractPyLifModelFixed.scale_bias``): it rounds toward
    minus infinity, so ``-1 >> 1 == -1``.  Use it for any power-of-two scale ``2**-k``.

    Parameters
    ----------
    x, n : int array/tensor
        Value(s) and non-negative shift amount(s).

    Returns
    -------
    int64 array/tensor
    """
    ref = _use_torch(x, n)
    x, n = _i64(x, ref), _i64(n, ref)
    return x >> n


def shift_exp(x, e):
    """``x << e`` if ``e >= 0`` else ``x >> -e`` (floor), elementwise.

    Reproduces ``AbstractPyLifModelFixed.scale_bias`` (``np.where(bias_exp >= 0,
    left_shift, right_shift)``) and the ``weight_exp`` shift of
    ``AbstractPyDenseModelBitAcc.run_spk``.

    Parameters
    ----------
    x : int array/tensor
    e : int or int array/tensor (broadcast against ``x``)

    Float tensors holding integers (e.g. float64 synaptic sums) are accepted and converted
    to int64 first.

    Returns
    -------
    int64 array/tensor
    """
    if isinstance(e, (int, np.integer)) and _is_torch(x):  # one exponent: one shift (the twin's synapses)
        x = _i64(x, x)
        return x << int(e) if e >= 0 else x >> -int(e)
    ref = _use_torch(x, e)
    x, e = _i64(x, ref), _i64(e, ref)
    pos = e >= 0
    el = _where(pos, e, e * 0)
    er = _where(pos, e * 0, -e)
    return _where(pos, x << el, x >> er)


def wrap_signed(x, bits: int):
    """Two's-complement wrap of ``x`` into ``[-2**(bits-1), 2**(bits-1))``.

    Same formula as ``lava/proc/conv/utils.py::signed_clamp``:
    ``(x + 2**(bits-1)) % 2**bits - 2**(bits-1)`` (a modulo, despite the name).

    Parameters
    ----------
    x : int array/tensor
    bits : int

    Returns
    -------
    int64 array/tensor
    """
    ref = _use_torch(x)
    x = _i64(x, ref)
    half = 1 << (bits - 1)
    if ref is not None and _torch_in_range(x, -half, half - 1):
        return x
    return ((x + half) & ((1 << bits) - 1)) - half


def wrap_int32(x):
    """Wrap to int32 as NumPy does when Lava stores into / computes in an int32 array.

    Parameters
    ----------
    x : int array/tensor

    Returns
    -------
    int64 array/tensor holding int32 values
    """
    return wrap_signed(x, 32)


# --------------------------------------------------------------------------- LIF pieces
def decay(x, d):
    """Loihi decay ``sign(x) * ((|x| * (4096 - d)) >> 12)``, rounding toward zero.

    Reproduces the decay lines of ``AbstractPyLifModelFixed.subthr_dynamics``
    (``lava/proc/lif/models.py``)::

        decayed = np.int64(u) * (decay_unity - decay_const)
        decayed = np.sign(decayed) * np.right_shift(np.abs(decayed), decay_shift)

    The product is formed in int64; the magnitude is shifted, so the result rounds toward
    zero (``decay(-5, 2048) == -2``, not ``-3``).  Pass the *effective* decay constant:
    ``du + DS_OFFSET`` for u, ``dv + DM_OFFSET`` for v.

    Parameters
    ----------
    x : int array/tensor
        State (u or v).
    d : int or int array/tensor
        Effective decay constant in ``[0, 4096]``.

    Returns
    -------
    int64 array/tensor
    """
    ref = _use_torch(x, d)
    x, d = _i64(x, ref), _i64(d, ref)
    if ref is not None:  # the same integers in fewer passes: full decay is 0, trunc division = sign·(|p| >> 12)
        if d.numel() == 1 and int(d) == DECAY_UNITY:
            return torch.zeros_like(x)
        return torch.div(x * (DECAY_UNITY - d), DECAY_UNITY, rounding_mode="trunc")
    p = x * (DECAY_UNITY - d)
    return _sign(p) * (_abs(p) >> DECAY_SHIFT)


def wrap_u(c):
    """Lava's 24-bit wrap of the current ``u``, reproduced literally, quirk included.

    ``AbstractPyLifModelFixed.subthr_dynamics`` does (``M = 2**23``, ``c`` int32)::

        w = np.where(c > M, c - 2*M, c)
        w = np.where(w <= -M, c + 2*M, w)     # note: ``c``, not ``w``

    Consequences (all reproduced here):

    * the kept range is ``(-2**23, 2**23]`` -- ``+2**23`` stays, ``-2**23`` becomes ``+2**23``;
    * only one period is removed, so ``|c| > 3*2**23`` stays out of range;
    * the ``c`` vs ``w`` quirk in the second line never changes the result: it only fires
      when ``w <= -M``, which after the first line implies ``w == c``.

    The ``c +- 2*M`` arithmetic is int32 in Lava and wrapped to int32 here too.

    Parameters
    ----------
    c : int array/tensor
        Decayed current plus shifted input (already an int32 value).

    Returns
    -------
    int64 array/tensor
    """
    ref = _use_torch(c)
    c = _i64(c, ref)
    if ref is not None and _torch_in_range(c, -MAX_UV + 1, MAX_UV):
        return c
    two_m = 2 * MAX_UV
    w = _where(c > MAX_UV, wrap_int32(c - two_m), c)
    w = _where(w <= -MAX_UV, wrap_int32(c + two_m), w)
    return w


def clip_v(v):
    """Saturate the voltage to ``[-(2**23 - 1), 2**23 - 1]``.

    Reproduces ``np.clip(updated_volt, neg_voltage_limit, pos_voltage_limit)`` in
    ``AbstractPyLifModelFixed.subthr_dynamics``.

    Parameters
    ----------
    v : int array/tensor

    Returns
    -------
    int64 array/tensor
    """
    ref = _use_torch(v)
    return _clip(_i64(v, ref), V_MIN, V_MAX)


def effective_bias(bias_mant, bias_exp):
    """``bias_mant << bias_exp`` (or ``>> -bias_exp``, floor, for negative exponents).

    Reproduces ``AbstractPyLifModelFixed.scale_bias``.  Hardware ranges: ``bias_mant`` in
    ``[-4096, 4095]`` (13-bit signed), ``bias_exp`` in ``[0, 7]``.

    Parameters
    ----------
    bias_mant, bias_exp : int or int array/tensor

    Returns
    -------
    int64 array/tensor
    """
    return shift_exp(bias_mant, bias_exp)


def effective_threshold(vth_mant):
    """``vth_mant << 6`` -- ``PyLifModelBitAcc.scale_threshold``.

    Parameters
    ----------
    vth_mant : int or int array/tensor
        Threshold mantissa, unsigned 17-bit on hardware.

    Returns
    -------
    int64 array/tensor
    """
    return shift_left(vth_mant, VTH_SHIFT)


def lif_step(u, v, a_in, du, dv, vth_mant, bias_mant=0, bias_exp=0):
    """One time step of Lava's bit-accurate CUBA-LIF neuron.

    Reproduces ``PyLifModelBitAcc.run_spk`` (``lava/proc/lif/models.py``): ``scale_bias``,
    ``scale_threshold``, ``subthr_dynamics``, ``spiking_activation``, ``reset_voltage``::

        c = wrap_int32(decay(u, du + 1) + wrap_int32(a_in << 6))
        u = wrap_u(c)
        v = clip_v(decay(v, dv) + u + effective_bias(bias_mant, bias_exp))
        s = v > (vth_mant << 6)          # strict: v == vth<<6 does not spike
        v = where(s, 0, v)

    ``du = 4095`` makes the effective decay 4096, so ``u = a_in << 6`` (no memory).
    All arguments broadcast (batch dims in front of the neuron dim are fine).

    Parameters
    ----------
    u, v : int array/tensor
        Current and voltage after the previous step.
    a_in : int array/tensor
        Synaptic input received this step (Lava: what ``a_in.recv()`` returns -- a Dense
        feeding this neuron delivers its result one step late).
    du, dv : int
        12-bit decay constants (0..4095).
    vth_mant : int or int array/tensor
        Threshold mantissa (the LIF ``vth`` argument).
    bias_mant, bias_exp : int or int array/tensor
        Bias mantissa / exponent.

    Returns
    -------
    (u, v, spike) : int64, int64, bool arrays/tensors
    """
    ref = _use_torch(u, v, a_in, du, dv, vth_mant, bias_mant, bias_exp)
    u_new, v_new, spike, _, _ = _lif_core(ref, u, v, a_in, du, dv, vth_mant, bias_mant,
                                          bias_exp)
    return u_new, v_new, spike


def _lif_core(ref, u, v, a_in, du, dv, vth_mant, bias_mant, bias_exp):
    """lif_step, also returning the pre-wrap current ``c`` and the pre-clip voltage."""
    u, v, a_in = _i64(u, ref), _i64(v, ref), _i64(a_in, ref)
    du, dv = _i64(du, ref), _i64(dv, ref)
    act = wrap_int32(a_in << ACT_SHIFT)
    c = wrap_int32(wrap_int32(decay(u, du + DS_OFFSET)) + act)
    u_new = wrap_u(c)
    b = effective_bias(_i64(bias_mant, ref), _i64(bias_exp, ref))
    v_raw = wrap_int32(wrap_int32(decay(v, dv + DM_OFFSET)) + u_new + b)
    v_new = clip_v(v_raw)
    spike = v_new > effective_threshold(_i64(vth_mant, ref))
    v_new = _where(spike, v_new * 0, v_new)
    return u_new, v_new, spike, c, v_raw


def lif_step_torch(u, v, a_in, du, dv, vth_mant, bias_mant=0, bias_exp=0, with_pre: bool = False):
    """``lif_step`` on torch int64 tensors, plus saturation counters for the twin.

    Non-tensor arguments are converted to tensors on the device of the first tensor
    argument (CPU if there is none).  Arithmetic is exactly ``lif_step``.

    Returns
    -------
    (u, v, spike, flags)
        ``flags = {"u_wrap": n, "v_clip": m}``: Python ints counting the elements whose
        current was wrapped by ``wrap_u`` (``c > 2**23`` or ``c <= -2**23``) and whose
        voltage was saturated by ``clip_v`` this step. ``with_pre``: also ``flags["v_pre"]``,
        the voltage the threshold is compared with (after the clip, before the reset;
        int64 tensor), which quantisation-aware training's surrogate gradient reads.
    """
    if torch is None:  # pragma: no cover
        raise ImportError("lif_step_torch needs torch")
    ref = _use_torch(u, v, a_in, du, dv, vth_mant, bias_mant, bias_exp)
    if ref is None:
        ref = torch.zeros((), dtype=torch.int64)
    u_new, v_new, spike, c, v_raw = _lif_core(ref, u, v, a_in, du, dv, vth_mant, bias_mant,
                                              bias_exp)
    flags = {"u_wrap": 0 if _torch_in_range(c, -MAX_UV + 1, MAX_UV) else int(((c > MAX_UV) | (c <= -MAX_UV)).sum()),
             "v_clip": 0 if _torch_in_range(v_raw, V_MIN, V_MAX) else int(((v_raw > V_MAX) | (v_raw < V_MIN)).sum())}
    if with_pre:
        flags["v_pre"] = clip_v(v_raw)
    return u_new, v_new, spike, flags


def lif_run(a_in_seq, du, dv, vth_mant, bias_mant=0, bias_exp=0, u0=0, v0=0):
    """Run ``lif_step`` over a sequence; time is the FIRST axis of ``a_in_seq``.

    Equivalent to running Lava's ``LIF`` (``PyLifModelBitAcc``) for ``T`` steps with
    ``a_in_seq[t]`` received at step ``t + 1`` and probing u, v, s_out after every step.

    Parameters
    ----------
    a_in_seq : int array/tensor, shape (T, ...)
    du, dv, vth_mant, bias_mant, bias_exp :
        As in ``lif_step``.
    u0, v0 : int or int array/tensor
        Initial state (Lava ``LIF(u=..., v=...)``).

    Returns
    -------
    (u_seq, v_seq, s_seq) : arrays/tensors of shape (T, ...) (int64, int64, bool)
    """
    ref = _use_torch(a_in_seq, u0, v0, bias_mant, bias_exp, vth_mant)
    a = _i64(a_in_seq, ref)
    shape = a.shape[1:]
    u = _i64(u0, ref) + a[0] * 0
    v = _i64(v0, ref) + a[0] * 0
    us, vs, ss = [], [], []
    for t in range(a.shape[0]):
        u, v, s = lif_step(u, v, a[t], du, dv, vth_mant, bias_mant, bias_exp)
        us.append(u)
        vs.append(v)
        ss.append(s)
    if ref is not None:
        return torch.stack(us), torch.stack(vs), torch.stack(ss)
    if not us:
        empty = np.zeros((0,) + tuple(shape), np.int64)
        return empty, empty.copy(), empty.astype(bool)
    return np.stack(us), np.stack(vs), np.stack(ss)


# --------------------------------------------------------------------------- synapses
def _mode_name(sign_mode) -> Optional[str]:
    if sign_mode is None:
        return None
    name = getattr(sign_mode, "name", sign_mode)  # lava SignMode enum or a string
    name = str(name).upper()
    if name not in (MIXED, EXCITATORY, INHIBITORY):
        raise ValueError(f"unsupported sign_mode {sign_mode!r}; use MIXED, EXCITATORY or "
                         "INHIBITORY")
    return name


def sign_mode_of(w) -> str:
    """Sign mode of a weight matrix, as ``lava.utils.weightutils.determine_sign_mode``.

    ``min >= 0`` -> EXCITATORY, else ``max <= 0`` -> INHIBITORY, else MIXED
    (an all-zero matrix is EXCITATORY).

    Parameters
    ----------
    w : array/tensor

    Returns
    -------
    str : one of ``MIXED``, ``EXCITATORY``, ``INHIBITORY``
    """
    if int(w.min()) >= 0:
        return EXCITATORY
    if int(w.max()) <= 0:
        return INHIBITORY
    return MIXED


def clip_weights(w, sign_mode=None, num_bits: int = MAX_WEIGHT_BITS):
    """Clip weights as ``lava.utils.weightutils.clip_weights`` (``learning_simulation=False``).

    MIXED: ``[-2**num_bits, 2**num_bits - 1]``; EXCITATORY: ``[0, 2**num_bits - 1]``;
    INHIBITORY: ``[-(2**num_bits - 1), 0]``.  Lava's Dense calls it with ``num_bits=8``.
    (Lava casts to int32 first; pass integer weights.)

    Parameters
    ----------
    w : int array/tensor
    sign_mode : str or lava ``SignMode`` or None (None: ``sign_mode_of(w)``)
    num_bits : int

    Returns
    -------
    int64 array/tensor
    """
    ref = _use_torch(w)
    w = _i64(w, ref)
    mode = _mode_name(sign_mode) or sign_mode_of(w)
    top = 2 ** num_bits
    if mode == MIXED:
        return _clip(w, -top, top - 1)
    if mode == EXCITATORY:
        return _clip(w, 0, top - 1)
    return _clip(w, -(top - 1), 0)


def weight_grid(num_weight_bits: int = WEIGHT_BITS, sign_mode=MIXED) -> Tuple[int, int, int]:
    """The integer weights Lava's Dense can actually use: ``(step, lo, hi)``.

    ``step = 2**(8 - num_weight_bits + is_mixed)``; MIXED: ``[-256, 256 - step]``,
    EXCITATORY: ``[0, 256 - step]``, INHIBITORY: ``[-(256 - step), 0]``.  These are the
    fixed points of ``truncate_weights(clip_weights(.))``.  With 8 bits and MIXED that is
    the even numbers -256..254, i.e. an 8-bit signed mantissa times 2 (Dense docstring:
    ``w_scale = 8 - num_weight_bits + weight_exp + isMixed()``).

    Returns
    -------
    (step, lo, hi) : ints
    """
    mode = _mode_name(sign_mode)
    mixed = int(mode == MIXED)
    step = 2 ** (MAX_WEIGHT_BITS - num_weight_bits + mixed)
    top = 2 ** MAX_WEIGHT_BITS
    if mode == MIXED:
        return step, -top, top - step
    if mode == EXCITATORY:
        return step, 0, top - step
    return step, -(top - step), 0


def truncate_weights(w, num_weight_bits: int = WEIGHT_BITS, sign_mode=None):
    """Weights as ``PyDenseModelBitAcc`` uses them: clip to 8 bits, then drop LSBs.

    Reproduces the first-step weight handling in ``AbstractPyDenseModelBitAcc.run_spk``::

        sign_mode = proc_params.get("sign_mode") or determine_sign_mode(weights)
        weights = clip_weights(weights, sign_mode, num_bits=8)
        weights = truncate_weights(weights, sign_mode, num_weight_bits)

    where lava's ``truncate_weights`` does ``(w >> k) << k`` with
    ``k = 8 - num_weight_bits + is_mixed`` (floor), on ``-w`` for INHIBITORY (so inhibitory
    weights truncate toward zero, mixed ones toward minus infinity).

    Parameters
    ----------
    w : int array/tensor
        Integer weights as given to ``Dense(weights=...)``.
    num_weight_bits : int
        Dense ``num_weight_bits`` (default 8).
    sign_mode : str or lava ``SignMode`` or None
        Dense ``sign_mode``; None: determined from ``w`` like Lava does.

    Returns
    -------
    int64 array/tensor
    """
    ref = _use_torch(w)
    w = _i64(w, ref)
    mode = _mode_name(sign_mode) or sign_mode_of(w)
    w = clip_weights(w, mode, MAX_WEIGHT_BITS)
    k = MAX_WEIGHT_BITS - num_weight_bits + int(mode == MIXED)
    if mode == INHIBITORY:
        return -(((-w) >> k) << k)
    return (w >> k) << k


def dense_act(spikes, w, weight_exp: int = 0, num_weight_bits: Optional[int] = WEIGHT_BITS,
              sign_mode=None):
    """Dense synaptic output, as ``AbstractPyDenseModelBitAcc.run_spk`` computes it::

        acc = W @ s                      # exact (int64)
        out = acc << weight_exp          if weight_exp > 0
              acc >> -weight_exp         otherwise (floor)
        out = wrap_int32(out)            # a_out is an int32 port; NO 16/24-bit clipping

    The shift applies to the *sum*, so ``weight_exp < 0`` floors once per neuron, not per
    synapse.  Lava sends this value one step later (first output is 0) -- the caller owns
    that delay.  (Graded spikes, ``num_message_bits > 0``: Lava's ``W.dot(s)`` is int32, so
    the accumulator itself wraps at 32 bits; irrelevant for realistic sizes.)

    Parameters
    ----------
    spikes : int/bool array/tensor, shape (..., n_in)
        Binary (or graded) input; leading batch dims allowed.
    w : int array/tensor, shape (n_out, n_in)
        Integer weights as passed to ``Dense(weights=...)``.
    weight_exp : int
        Dense ``weight_exp``.
    num_weight_bits : int or None
        Apply ``truncate_weights(w, num_weight_bits, sign_mode)`` first (idempotent on
        weights already on the grid); None skips it (``w`` already truncated).
    sign_mode : str or lava ``SignMode`` or None

    Returns
    -------
    int64 array/tensor, shape (..., n_out)
    """
    ref = _use_torch(spikes, w)
    w = _i64(w, ref)
    s = _i64(spikes, ref)
    if num_weight_bits is not None:
        w = truncate_weights(w, num_weight_bits, sign_mode)
    if ref is not None and ref.device.type != "cpu":
        # CUDA has no int64 matmul; float64 is exact while |acc| < 2**53.
        acc = torch.round(s.to(torch.float64) @ w.to(torch.float64).T).to(torch.int64)
    else:
        acc = s @ w.T
    return wrap_int32(shift_exp(acc, int(weight_exp)))


def conv_wrap(x):
    """Output wrap of Lava's ``PyConvModelFixed``: ``signed_clamp(x, bits=24)``.

    ``lava/proc/conv/models.py::PyConvModelFixed.clamp_precision`` applies
    ``utils.signed_clamp`` = modulo ``2**24`` wrap into ``[-2**23, 2**23)``.  Note that this
    model does NOT apply ``weight_exp`` nor ``num_weight_bits`` (they are Vars it never
    reads), so the Conv output is ``conv_wrap(conv(s, W))`` with raw int weights.

    Parameters
    ----------
    x : int array/tensor

    Returns
    -------
    int64 array/tensor
    """
    return wrap_signed(x, CONV_OUT_BITS)


# --------------------------------------------------------------------------- quantisation
def quantise_weights(w_float, bits: int = WEIGHT_BITS, current_scale: Optional[float] = None,
                     sign_mode=MIXED, weight_exp: Optional[int] = None, out_dtype=np.int64):
    """Quantise float weights for ``Dense(weights=w_mant, weight_exp=e, num_weight_bits=bits)``.

    Units: a float current ``I = W_float @ s`` becomes the integer synaptic input
    ``a_in ~= I * scale`` ("current scale", a_in units per float unit).  Lava delivers
    ``(w_mant @ s) << e``, so we want ``w_mant * 2**e ~= w_float * scale``.

    * ``current_scale`` given: ``scale = current_scale``; ``e`` (unless given) is the
      smallest exponent in ``[WEIGHT_EXP_MIN, WEIGHT_EXP_MAX]`` with
      ``max|w_float * scale| / 2**e`` inside the grid range ``[lo, hi]``.
    * ``current_scale`` None: ``e = 0`` (unless given) and ``scale`` is the largest power
      of two with ``w_float * scale / 2**e`` inside ``[lo, hi]`` -- the max |w| then fills
      the 8-bit mantissa.  A power of two keeps threshold and bias conversions exact.

    Then ``w_mant = clip(step * round(w_float * scale / 2**e / step), lo, hi)`` with
    ``(step, lo, hi) = weight_grid(bits, sign_mode)`` -- e.g. even numbers in [-256, 254]
    for 8-bit MIXED (mantissa ``w_mant // 2`` in [-128, 127]).  ``w_mant`` is a fixed point
    of ``truncate_weights``, so Lava uses it unchanged.

    Parameters
    ----------
    w_float : float array/tensor
    bits : int
        ``num_weight_bits``.
    current_scale : float or None
    sign_mode : str or lava ``SignMode``
        MIXED (default) is always valid; EXCITATORY/INHIBITORY gain one bit.
    weight_exp : int or None
        Force the exponent.
    out_dtype : numpy integer dtype of a NumPy result (default int64; mantissas fit int16)

    Returns
    -------
    (w_mant, weight_exp, scale) : int64 array/tensor (``out_dtype`` for NumPy input), int, float
    """
    step, lo, hi = weight_grid(bits, sign_mode)
    wf = _float64(w_float)
    n = wf.numel() if _is_torch(wf) else wf.size
    pos = max(float(wf.max()), 0.0) if n else 0.0
    neg = max(-float(wf.min()), 0.0) if n else 0.0
    # fit factor: largest f with w*f inside [lo, hi]
    lims = []
    if pos > 0:
        if hi <= 0:
            raise ValueError(f"positive weights cannot use sign_mode {sign_mode}")
        lims.append(hi / pos)
    if neg > 0:
        if lo >= 0:
            raise ValueError(f"negative weights cannot use sign_mode {sign_mode}")
        lims.append(-lo / neg)
    fit = min(lims) if lims else math.inf
    if current_scale is None:
        e = 0 if weight_exp is None else int(weight_exp)
        scale = 1.0 if math.isinf(fit) else 2.0 ** math.floor(math.log2(fit * 2.0 ** e))
    else:
        scale = float(current_scale)
        if weight_exp is not None:
            e = int(weight_exp)
        elif math.isinf(fit):
            e = 0
        else:
            # need scale / 2**e <= fit  <=>  e >= log2(scale / fit)
            e = math.ceil(math.log2(scale / fit) - 1e-12)
            e = min(max(e, WEIGHT_EXP_MIN), WEIGHT_EXP_MAX)
    if _is_torch(wf) or np.ndim(wf) == 0:
        x = wf * (scale / 2.0 ** e) / step
        w_mant = _clip(_round(x) * step, lo, hi)
        w_mant = w_mant.to(torch.int64) if _is_torch(w_mant) else np.asarray(w_mant).astype(out_dtype)
    else:  # the same operations in place: one float64 temporary (paper width: 210 MB per matrix)
        x = wf * (scale / 2.0 ** e)
        x /= step
        np.round(x, out=x)
        x *= step
        np.clip(x, lo, hi, out=x)
        w_mant = x.astype(out_dtype)
    return w_mant, int(e), float(scale)


def quantise_threshold(vth_float, current_scale: float):
    """Float threshold -> LIF ``vth`` mantissa.

    With ``a_in = I * scale`` the state is in units of ``2**6 * scale`` per float unit
    (``u += a_in << 6``), and Lava spikes when ``v > vth << 6``; hence
    ``vth_mant = round(vth_float * scale)``, clipped to ``[0, VTH_MAX]`` (17-bit unsigned).

    Parameters
    ----------
    vth_float : float or float array/tensor
    current_scale : float

    Returns
    -------
    int64 array/tensor
    """
    x = _round(_float64(vth_float) * float(current_scale))
    x = _clip(x, 0, VTH_MAX)
    return x.to(torch.int64) if _is_torch(x) else x.astype(np.int64)


def quantise_bias(bias_float, current_scale: float, max_exp: int = BIAS_EXP_MAX):
    """Float bias (added to v each step) -> ``(bias_mant, bias_exp)``.

    The bias enters v WITHOUT the 6-bit shift (``v += bias_mant << bias_exp``), so its
    integer target is ``b = bias_float * scale * 2**6``.  ``bias_exp`` is the smallest
    exponent in ``[0, max_exp]`` with ``|round(b / 2**bias_exp)| <= 4095``, chosen per element;
    ``bias_mant = clip(round(b / 2**bias_exp), -4096, 4095)`` (13-bit signed).

    Parameters
    ----------
    bias_float : float or float array/tensor
    current_scale : float
    max_exp : int
        Largest exponent allowed (hardware: 7).

    Returns
    -------
    (bias_mant, bias_exp) : int64 arrays/tensors
    """
    b = _float64(bias_float) * (float(current_scale) * 2.0 ** ACT_SHIFT)
    if _is_torch(b):
        e = torch.zeros_like(b, dtype=torch.int64)
    else:
        e = np.zeros(np.shape(b), np.int64)
    for k in range(max_exp):  # e = number of exponents k at which the mantissa is too big
        e = e + (_abs(_round(b / 2.0 ** k)) > BIAS_MANT_MAX) * 1
    div = 2.0 ** (e.to(torch.float64) if _is_torch(e) else e.astype(np.float64))
    mant = _clip(_round(b / div), BIAS_MANT_MIN, BIAS_MANT_MAX)
    mant = mant.to(torch.int64) if _is_torch(mant) else mant.astype(np.int64)
    return mant, e


def quantise_decay(beta):
    """Float leak factor ``beta`` (``v <- beta*v + I``) -> 12-bit ``dv`` (or ``du``).

    Loihi multiplies by ``(4096 - dv) / 4096``, so ``dv = round((1 - beta) * 4096)``,
    clipped to ``[0, 4095]``.  For u, the effective constant is ``du + 1``: use
    ``du = quantise_decay(beta_u) - 1`` (clipped at 0); ``du = 4095`` means "u is the
    instantaneous input".

    Parameters
    ----------
    beta : float

    Returns
    -------
    int
    """
    return int(min(max(round((1.0 - float(beta)) * DECAY_UNITY), 0), DV_MAX))
