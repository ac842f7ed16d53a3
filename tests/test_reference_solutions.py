"""Independent reference numbers used as anchors elsewhere, re-derived here.

Two electrons in a 2D harmonic trap separate into centre of mass (hbar w) and relative motion
with reduced mass m*/2 and the Coulomb term e^2 / (4 pi eps0 eps_r r). The m = 0 radial equation
of the relative motion is solved by second-order finite volumes on a cell-centred grid
(-(1/r)(r u')' with zero flux through r = 0), which needs nothing from qdjax but its constants.
"""

import numpy as np
import pytest
from scipy.linalg import eigh_tridiagonal

from qdjax import units


def relative_motion_energy(hbar_omega, m_eff=units.GAAS_M_EFF, eps_r=units.GAAS_EPS_R, n=40000, extent=12.0):
    """Lowest m = 0 eigenvalue (eV) of the relative motion of two electrons in a 2D trap."""
    t_mu = 2.0 * units.kinetic_prefactor(m_eff)  # hbar^2 / (2 mu), mu = m* / 2
    length = np.sqrt(2.0 * t_mu / hbar_omega)  # sqrt(hbar / (mu w))
    d = extent * length / n
    r = (np.arange(n) + 0.5) * d
    r_face = r + 0.5 * d
    potential = 0.25 * hbar_omega**2 / t_mu * r**2 + units.COULOMB_K / (eps_r * r)
    diag = t_mu * (np.r_[0.0, r_face[:-1]] + r_face) / d**2 + r * potential
    off = -t_mu * r_face[:-1] / d**2
    s = 1.0 / np.sqrt(r)  # symmetric form of the generalised problem with weight r
    return eigh_tridiagonal(diag * s * s, off * s[:-1] * s[1:], select="i", select_range=(0, 0))[0][0]


def test_taut_closed_form():
    # Taut's closed-form solution (J. Phys. A 27, 1045 (1994)): at hbar w = 1 Ha* the 2D
    # two-electron ground state has E = 3 Ha* (centre of mass 1 Ha* + relative motion 2 Ha*).
    ha = units.effective_hartree(units.GAAS_M_EFF, units.GAAS_EPS_R)
    assert (ha + relative_motion_energy(ha)) / ha == pytest.approx(3.0, abs=1e-8)


def test_gaas_50_mev_anchor():
    # DESIGN.md anchor: 0.12608 eV at hbar w = 50 meV (the value used in test_ed.py).
    assert 0.05 + relative_motion_energy(0.05) == pytest.approx(0.12608014, abs=2e-8)


def test_non_interacting_limit():
    # With eps_r -> infinity the relative motion is an oscillator: E_rel = hbar w.
    assert relative_motion_energy(0.05, eps_r=1e12) == pytest.approx(0.05, rel=1e-7)
