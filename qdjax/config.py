"""Static configuration of an exact-diagonalisation run.

`EDConfig` holds every setting that fixes array shapes or host-side tables (grid, basis,
orbitals) together with the material constants. It is frozen and hashable, so it can be a
static argument of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from qdjax import backend, units

_DTYPES = ("float64", "float32")
_DENSITY_MODES = ("rdm1", "diagonal")
_EIGENSOLVERS = ("auto", "dense", "iterative")


@dataclasses.dataclass(frozen=True)
class EDConfig:
    """Settings of the sine-basis exact diagonalisation.

    Attributes:
      length_nm: side L of the square box [0, L]^2 with hard walls, nm (paper: 30).
      grid: pixels per side of potential and density images (paper: 64).
      basis: sine functions per direction, basis^2 product functions (paper: 32).
      orbitals: K, the number of lowest single-particle orbitals kept for the many-body
        problem (paper: 8, i.e. 16 spin-orbitals).
      m_eff: effective mass in units of the electron mass (GaAs: 0.067).
      eps_r: relative permittivity (GaAs: 12.9); ``math.inf`` switches the Coulomb
        interaction off.
      density_mode: ``"rdm1"`` (default) builds the density from the full spin-summed
        one-body density matrix; ``"diagonal"`` keeps only its diagonal, as eq. (9) of
        Pantis-Simut et al. (2023).
      degeneracy_tol: eV. Many-body states within this energy of the lowest one form the
        ground manifold; energy and density are averaged over it.
      dtype: ``"float64"`` (default) or ``"float32"`` for the ED arithmetic.
      eigensolver: ``"dense"`` diagonalises the basis^2 x basis^2 single-particle matrix and
        the many-body matrix completely (the reference); ``"iterative"`` finds the lowest
        orbitals by matrix-free LOBPCG and the lowest many-body states by block Davidson
        (sizes too small for it stay dense); ``"auto"`` (default) uses LOBPCG for the
        orbitals whenever the basis allows it and Davidson for many-body spaces above
        ``qdjax.ed.FOCK_DENSE_MAX`` determinants. All give the same results to ~1e-12 eV
        (docs/benchmarks.md, qdjax.single_particle, qdjax.ed).
      batching: how a batch of potentials is laid out (qdjax.backend): ``"vectorized"``, one
        program with the per-instance solve under jax.vmap (the accelerator layout);
        ``"sequential"``, one potential after another with the CPU kernel choices; ``"auto"``
        (default), sequential when jax.default_backend() is "cpu", vectorized elsewhere. Both
        give the same results to rounding.
    """

    length_nm: float = 30.0
    grid: int = 64
    basis: int = 32
    orbitals: int = 8
    m_eff: float = units.GAAS_M_EFF
    eps_r: float = units.GAAS_EPS_R
    density_mode: str = "rdm1"
    degeneracy_tol: float = 1e-6
    dtype: str = "float64"
    eigensolver: str = "auto"
    batching: str = "auto"

    def __post_init__(self):
        for name in ("grid", "basis", "orbitals"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"EDConfig.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # NumPy integers stored as int (hashing, JSON)
        for name in ("length_nm", "m_eff", "eps_r", "degeneracy_tol"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise ValueError(f"EDConfig.{name} must be a real number, got {value!r}")
            if isinstance(value, (np.floating, np.integer)):
                object.__setattr__(self, name, value.item())
        for name in ("length_nm", "m_eff"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"EDConfig.{name} must be a positive finite number, got {value!r}")
        if not (self.eps_r > 0 and not math.isnan(self.eps_r)):
            raise ValueError(f"EDConfig.eps_r must be positive (math.inf for no interaction), got {self.eps_r!r}")
        if self.orbitals > self.basis**2:
            raise ValueError(
                f"EDConfig.orbitals={self.orbitals} exceeds the number of basis functions "
                f"basis**2={self.basis**2}"
            )
        if self.density_mode not in _DENSITY_MODES:
            raise ValueError(f"EDConfig.density_mode must be one of {_DENSITY_MODES}, got {self.density_mode!r}")
        if not self.degeneracy_tol >= 0:
            raise ValueError(f"EDConfig.degeneracy_tol must be >= 0 eV, got {self.degeneracy_tol!r}")
        if self.eigensolver not in _EIGENSOLVERS:
            raise ValueError(f"EDConfig.eigensolver must be one of {_EIGENSOLVERS}, got {self.eigensolver!r}")
        if self.batching not in backend.BATCHING:
            raise ValueError(f"EDConfig.batching must be one of {backend.BATCHING}, got {self.batching!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"EDConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        self._check_scales()

    def _check_scales(self) -> None:
        """Refuse box lengths and masses whose scales the dtype cannot hold.

        The box area L^2 (nm^2), the density scale 1 / h^2 (nm^-2) and the largest kinetic
        energy hbar^2 pi^2 (2 basis^2) / (2 m* L^2) (eV) must lie within
        [sqrt(tiny), sqrt(max)] of the dtype (float64: 1e-154..1e154, float32: 1e-19..1.8e19),
        so that their products inside the ED stay finite and normal. Computed in logarithms,
        so that no intermediate overflows.
        """
        info = np.finfo(self.dtype)
        lo, hi = 0.5 * math.log10(info.tiny), 0.5 * math.log10(info.max)
        log_l = math.log10(self.length_nm)
        scales = {
            "the box area L^2 (nm^2)": 2 * log_l,
            "the density scale 1/h^2 (nm^-2)": 2 * (math.log10(self.grid) - log_l),
            "the largest kinetic energy hbar^2 pi^2 (2 basis^2) / (2 m* L^2) (eV)": (
                math.log10(2 * math.pi**2 * units.HBAR2_OVER_2ME) - math.log10(self.m_eff) + 2 * math.log10(self.basis)
                - 2 * log_l
            ),
        }
        for what, log_value in scales.items():
            if not lo <= log_value <= hi:
                raise ValueError(
                    f"EDConfig.length_nm={self.length_nm!r} with m_eff={self.m_eff!r}, grid={self.grid}, "
                    f"basis={self.basis} gives {what} of 1e{log_value:.0f}, outside the range "
                    f"1e{lo:.0f}..1e{hi:.0f} that dtype {self.dtype} handles"
                )

    @property
    def pixel_nm(self) -> float:
        """Pixel side h = L / grid in nm."""
        return self.length_nm / self.grid

    @property
    def interacting(self) -> bool:
        """False when eps_r is infinite (no Coulomb interaction)."""
        return math.isfinite(self.eps_r)

    @property
    def kinetic_prefactor(self) -> float:
        """hbar^2 / (2 m*) in eV nm^2."""
        return units.kinetic_prefactor(self.m_eff)

    def to_dict(self) -> dict:
        """JSON-ready fields (eps_r = math.inf written as "inf"); `from_dict` inverts it."""
        return {k: ("inf" if v == math.inf else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: dict) -> "EDConfig":
        """Inverse of `to_dict` (fields left out take their defaults)."""
        return cls(**{k: (math.inf if v == "inf" else v) for k, v in fields.items()})

    def replace(self, **changes) -> "EDConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def non_interacting(self) -> "EDConfig":
        """The same configuration with the Coulomb interaction switched off."""
        return self.replace(eps_r=math.inf)
