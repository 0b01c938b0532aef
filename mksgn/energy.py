"""Paper eq. 33–37, the one home of the energy estimate and its constants.

Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm
CMOS, 32-bit floating point: multiply 3.7 pJ + add 0.9 pJ = 4.6 pJ per MAC, add 0.9 pJ per
AC. Used by the paper (eq. 34–37, "45nm hardware (Zhou et al. 2022)")::

    SOPs = fr · T_s · FLOPs                              (eq. 33, per synapse)
    E    = E_MAC · FLOPs(real-valued input) + E_AC · Σ SOPs   (eq. 34–37)

The float model's analysis (:mod:`mksgn.analysis`) and the Lava replay
(:mod:`hw_sim.replay`, with measured synaptic events in place of ``Σ SOPs``) both call
:func:`synaptic_ops` and :class:`EnergyModel`.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EnergyModel", "DEFAULT_45NM", "MJ_PER_PJ", "synaptic_ops"]

MJ_PER_PJ = 1e-9
"""Millijoules per picojoule: per-operation energies are in pJ, per-clip totals in mJ."""


def synaptic_ops(firing_rate: float, time_steps: int, flops: float) -> float:
    """Eq. 33: synaptic operations of one synapse per clip, ``fr · T_s · FLOPs``.

    ``firing_rate``: spikes per source neuron per time step (in [0, 1]); ``flops``: the
    dense (ANN) multiply-accumulates of one time step of the synapse.
    """
    return firing_rate * time_steps * flops


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation.

    Attributes
    ----------
    e_mac_pj : float
        Energy of one multiply-accumulate (real-valued input, first layer), pJ (eq. 36).
    e_ac_pj : float
        Energy of one accumulate (synaptic operation triggered by a spike), pJ (eq. 37).
    name : str
        Where the numbers come from.
    """

    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9
    name: str = "45nm CMOS fp32, Horowitz ISSCC 2014"

    def mac_pj(self, macs: float) -> float:
        """Eq. 36: ``E_MAC · macs`` in pJ (operations on real-valued input)."""
        return self.e_mac_pj * macs

    def ac_pj(self, sops: float) -> float:
        """Eq. 37: ``E_AC · sops`` in pJ (operations triggered by spikes, or synaptic events)."""
        return self.e_ac_pj * sops

    def energy_pj(self, macs: float, sops: float) -> float:
        """Eq. 34: ``E_MAC·macs + E_AC·sops`` in pJ."""
        return self.mac_pj(macs) + self.ac_pj(sops)


DEFAULT_45NM = EnergyModel()
"""The paper's constants: E_MAC = 4.6 pJ, E_AC = 0.9 pJ."""
