"""The spiking neuron of every float model: a multi-step LIF in Loihi form.

Dynamics (paper Table 4; Loihi CUBA-LIF with ``du = 4095``, docs/design.md "Integer rules"),
per time step ``t = 0 … T_s−1`` and per neuron, starting from ``v[−1] = 0``::

    h[t] = β · v[t−1] + I[t]           # leaky integration ("decay 0.25" → β = 0.25)
    s[t] = 1  if h[t] > vth  else 0    # strict threshold: h == vth does NOT spike
    v[t] = 0  if s[t]        else h[t] # hard reset to V_reset = 0 in the same step

``v`` is what a Lava probe of Loihi's ``v`` reads. The surrogate gradient (STBP rectangular
window of width ``a``, Table 4 "window size 1.0") is ``∂s/∂h = 1/a · [|h − vth| < a/2]``;
the reset is detached from the graph (SpikingJelly ``detach_reset=True``).

Loihi mapping (``lava/proc/lif/models.py``, fixed point; the rules themselves live in
``export/fixed_point.py``, which this float model does not need):

* ``dv = quantise_decay(β) = round(4096 · (1 − β)) = 3072`` for β = 0.25, so
  ``v·(4096−dv)>>12 = v/4``;
* ``du = DU_MAX = 4095``: the current ``u`` is the instantaneous synaptic input ``a_in << 6``;
* ``vth`` (mantissa) ``= (threshold · scale) >> 6`` where ``scale`` is the integer scale of
  the synaptic weights (weights·scale are the integer weights), because Lava compares
  ``v > vth << 6``;
* ``bias_mant`` carries the folded BN shift, ``(shift · scale)``.

Why not ``snntorch.Leaky``: ``Leaky(beta, threshold, reset_mechanism="zero",
reset_delay=False)`` computes exactly these forward values (the test suite checks spikes and
membrane against it), but it builds ~8 autograd nodes per step and lets the gradient flow
through the reset. Training must run on a 2-core CPU, so this module does the whole ``T_s``
loop in one ``torch.autograd.Function`` with a hand-written BPTT backward (one saved tensor).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["LIF", "lif_scan"]


@torch.no_grad()
def lif_scan(current: torch.Tensor, beta: float, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the LIF over the leading time axis without gradients.

    Parameters
    ----------
    current : Tensor, shape ``(T_s, ...)``
        Input current ``I[t]`` (dimensionless, threshold units).
    beta, threshold : float
        Decay β and firing threshold vth.

    Returns
    -------
    spikes : Tensor, shape ``(T_s, ...)``, values in {0, 1}
    v : Tensor, shape ``(T_s, ...)``
        Membrane after the step's reset (0 where the neuron spiked).
    """
    h = _integrate(current, beta, threshold)
    s = (h > threshold).to(current.dtype)
    return s, h * (1 - s)


def _integrate(current: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """Pre-reset membranes ``h[t]`` (see module docstring), shape ``(T_s, ...)``."""
    h_all = torch.empty(current.shape, dtype=current.dtype, device=current.device)
    v = None
    for t in range(current.shape[0]):
        h = h_all[t]
        if v is None:
            h.copy_(current[t])
        else:
            torch.add(current[t], v, alpha=beta, out=h)
        v = h * (h <= threshold)  # hard reset: v = 0 where the neuron spiked
    return h_all


class _LIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, beta, threshold, width):
        h_all = _integrate(current.detach(), beta, threshold)
        ctx.save_for_backward(h_all)
        ctx.beta, ctx.threshold, ctx.width = beta, threshold, width
        return (h_all > threshold).to(current.dtype)

    @staticmethod
    def backward(ctx, grad_s):
        (h_all,) = ctx.saved_tensors
        beta, thr, a = ctx.beta, ctx.threshold, ctx.width
        window = (h_all - thr).abs_().lt_(a / 2)  # rectangular surrogate support
        keep = h_all <= thr  # 1 − s[t]: the reset is detached
        grad_in = torch.empty_like(h_all)
        g_next = None
        for t in range(h_all.shape[0] - 1, -1, -1):
            g = torch.mul(grad_s[t], window[t], out=grad_in[t])
            if a != 1.0:
                g.mul_(1.0 / a)
            if g_next is not None:  # h[t+1] = β·(1−s[t])·h[t] + I[t+1]
                g.add_(g_next * keep[t], alpha=beta)
            g_next = g
        return grad_in, None, None, None


class LIF(nn.Module):
    """Multi-step leaky integrate-and-fire neuron (Loihi form, hard reset, strict threshold).

    Equations in the module docstring (paper Table 4, eq. 4, 7–13: every ``SN``). State is
    reset at every call: one call = one clip of ``T_s`` steps.

    Parameters
    ----------
    beta : float
        Membrane decay β in [0, 1] (paper "decay factor 0.25"; Loihi
        ``dv = export.fixed_point.quantise_decay(β)``).
    threshold : float
        Firing threshold vth > 0 (paper 1.0).
    surrogate_width : float
        Width ``a`` of the rectangular surrogate window (paper 1.0).

    Shape
    -----
    Input ``(T_s, B, ...)`` current, output ``(T_s, B, ...)`` spikes in {0, 1}, same dtype.
    """

    def __init__(self, beta: float = 0.25, threshold: float = 1.0, surrogate_width: float = 1.0):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"LIF beta must be in [0, 1], got {beta}")
        if threshold <= 0 or surrogate_width <= 0:
            raise ValueError("LIF threshold and surrogate_width must be > 0")
        self.beta, self.threshold, self.surrogate_width = float(beta), float(threshold), float(surrogate_width)

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        """Spikes ``(T_s, B, ...)`` for input current ``(T_s, B, ...)``."""
        return _LIFFunction.apply(current, self.beta, self.threshold, self.surrogate_width)

    def membrane(self, current: torch.Tensor) -> torch.Tensor:
        """Post-reset membrane trace ``v`` ``(T_s, B, ...)`` (no gradient) for ``current``."""
        return lif_scan(current, self.beta, self.threshold)[1]

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}, surrogate_width={self.surrogate_width}"
