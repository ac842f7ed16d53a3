"""Physical constants and units used throughout qdjax.

Units: energies in eV, lengths in nm, densities in nm^-2. Constants are CODATA 2018
(https://physics.nist.gov/cuu/Constants/), written here once; no other module hard-codes one.
"""

#: hbar^2 / (2 m_e) in eV nm^2 (CODATA 2018: hbar^2/(2 m_e) = 3.80998212 eV Angstrom^2).
HBAR2_OVER_2ME = 0.0380998212

#: Coulomb constant e^2 / (4 pi eps0) in eV nm (CODATA 2018: 1.439964548 eV nm).
COULOMB_K = 1.439964548

#: Hartree energy in eV (CODATA 2018), used only to express effective atomic units.
HARTREE_EV = 27.211386245988

#: GaAs effective mass in units of m_e (assumed material; the source paper does not state it).
GAAS_M_EFF = 0.067

#: GaAs static relative permittivity.
GAAS_EPS_R = 12.9


def kinetic_prefactor(m_eff: float) -> float:
    """hbar^2 / (2 m*) in eV nm^2 for an effective mass m_eff (units of m_e)."""
    return HBAR2_OVER_2ME / m_eff


def effective_hartree(m_eff: float, eps_r: float) -> float:
    """Effective Hartree energy Ha* = Ha m* / eps_r^2 in eV."""
    return HARTREE_EV * m_eff / eps_r**2


def effective_bohr_nm(m_eff: float, eps_r: float) -> float:
    """Effective Bohr radius a* = (hbar^2 / (2 m*)) * 2 / (e^2 / (4 pi eps0 eps_r)) in nm."""
    return 2.0 * kinetic_prefactor(m_eff) * eps_r / COULOMB_K
