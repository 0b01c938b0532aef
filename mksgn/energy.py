"""Energy constants: the one cited home for them.

Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm
CMOS, 32-bit floating point: multiply 3.7 pJ + add 0.9 pJ = 4.6 pJ per MAC, add 0.9 pJ per
AC. Used by the paper (eq. 34–37, "45nm hardware (Zhou et al. 2022)"):
``E = E_MAC · FLOPs(first layer) + E_AC · Σ SOPs``.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EnergyModel", "DEFAULT_45NM"]


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

    def energy_pj(self, macs: float, sops: float) -> float:
        """``E_MAC·macs + E_AC·sops`` in pJ (paper eq. 34–37)."""
        return self.e_mac_pj * macs + self.e_ac_pj * sops


DEFAULT_45NM = EnergyModel()
"""The paper's constants: E_MAC = 4.6 pJ, E_AC = 0.9 pJ."""
