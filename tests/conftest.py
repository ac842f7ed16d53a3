"""Shared fixtures. Importing qdjax turns on JAX's float64 mode for the physics tests."""

import os

# The suite runs in two worker processes (pytest-xdist, pyproject.toml): on a GPU each would
# otherwise reserve most of the card's memory before the other starts.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qdjax  # noqa: E402
from qdjax import potentials  # noqa: E402


@pytest.fixture(scope="session")
def config():
    """Paper defaults: L = 30 nm, grid 64, basis 32, 8 orbitals, GaAs."""
    return qdjax.EDConfig()


@pytest.fixture(scope="session")
def random_V(config):
    """Three random confinement potentials of the paper's class (eV), shape (3, 64, 64)."""
    return potentials.random_potentials([11, 12, 13], config)


def random_symmetric(n, seed):
    """A random real symmetric matrix (n, n) with entries of order one."""
    a = np.random.default_rng(seed).normal(size=(n, n))
    return 0.5 * (a + a.T)
