"""Tests of qdjax.potentials: the random quantum-well maps of Pantis-Simut et al. (2023),
section II, the pixel-averaged harmonic trap and the empty box."""

import math

import jax
import numpy as np
import pytest
from scipy import ndimage

import qdjax
from qdjax import potentials
from qdjax.config import EDConfig

CFG = EDConfig()
SMALL = EDConfig(length_nm=20.0, grid=32)
N_MAPS = 300  # maps for the statistical rules; all seeds are fixed, so every test is deterministic


@pytest.fixture(scope="module")
def wells():
    """(centres, radii) of N_MAPS paper-parameter maps, seeds 0..N_MAPS-1."""
    return [potentials.random_wells(s, CFG) for s in range(N_MAPS)]


@pytest.fixture(scope="module")
def maps():
    return potentials.random_potentials(range(N_MAPS), CFG)


# ------------------------------------------------------------------ shapes, values, determinism


@pytest.mark.parametrize("cfg", [CFG, SMALL])
def test_shape_dtype_and_two_levels(cfg):
    # Expected: (grid, grid) float64 with only Vs = 0.5 eV and V0 = 0 eV (paper, section II).
    # Both levels occur: a well centred in the box with r >= L/16 >= h/sqrt(2) contains at least
    # one pixel centre, and coverage <= 0.8 leaves barrier pixels.
    for seed in range(5):
        V = potentials.random_potential(seed, cfg)
        assert V.shape == (cfg.grid, cfg.grid) and V.dtype == np.float64
        assert set(np.unique(V)) == {0.0, 0.5}


def test_levels_are_parameters():
    # Expected: the same geometry with the two levels replaced (v_well where V0 was).
    V = potentials.random_potential(7, CFG)
    W = potentials.random_potential(7, CFG, v_step=0.3, v_well=-0.1)
    np.testing.assert_array_equal(W, np.where(V == 0.0, -0.1, 0.3))


def test_same_seed_same_map_different_seeds_differ():
    # Expected: a pure function of the seed; distinct seeds give distinct maps (25 random wells
    # coinciding pixel for pixel does not happen for these fixed seeds).
    np.testing.assert_array_equal(potentials.random_potential(3, CFG), potentials.random_potential(3, CFG))
    stack = potentials.random_potentials(range(20), CFG)
    flat = stack.reshape(20, -1)
    assert len({row.tobytes() for row in flat}) == 20


def test_integer_seed_forms_agree():
    # Expected: Python int, NumPy integer and 0-d integer arrays are the same seed.
    V = potentials.random_potential(11, CFG)
    for seed in (np.int64(11), np.uint32(11), np.array(11), jax.numpy.asarray(11)):
        np.testing.assert_array_equal(potentials.random_potential(seed, CFG), V)


def test_jax_keys():
    # Expected: deterministic in the key; a typed key and the legacy uint32[2] key with the same
    # key data give the same map (module docstring: entropy = key_data words); other keys differ.
    typed, legacy = jax.random.key(5), jax.random.PRNGKey(5)
    V = potentials.random_potential(typed, CFG)
    np.testing.assert_array_equal(potentials.random_potential(jax.random.key(5), CFG), V)
    np.testing.assert_array_equal(potentials.random_potential(legacy, CFG), V)
    assert not np.array_equal(potentials.random_potential(jax.random.key(6), CFG), V)
    keys = jax.random.split(jax.random.key(0), 4)
    stack = potentials.random_potentials(keys, CFG)
    for k in range(4):
        np.testing.assert_array_equal(stack[k], potentials.random_potential(keys[k], CFG))
    np.testing.assert_array_equal(potentials.random_potentials(jax.random.key_data(keys), CFG), stack)


def test_random_potentials_equals_loop():
    # Expected: out[k] == random_potential(seeds[k]) for every accepted form of the batch.
    seeds = [4, 0, 17, 4, 123456789]
    loop = np.stack([potentials.random_potential(s, SMALL, n_wells=10) for s in seeds])
    for batch in (seeds, tuple(seeds), np.array(seeds)):
        np.testing.assert_array_equal(potentials.random_potentials(batch, SMALL, n_wells=10), loop)
    assert potentials.random_potentials([], SMALL).shape == (0, SMALL.grid, SMALL.grid)


# ------------------------------------------------------------------ geometric rules (section II)


def test_radii_and_centres_in_range(wells):
    # Expected: centres uniform in [0, L]^2, radii uniform in [L/16, L/8] (paper, section II).
    L = CFG.length_nm
    for c, r in wells:
        assert c.shape == (25, 2) and r.shape == (25,)
        assert np.all((c >= 0) & (c <= L))
        assert np.all((r >= L / 16) & (r <= L / 8))
    # The draws fill the ranges (a 25 x 300 uniform sample reaches within 2% of each end).
    r_all = np.concatenate([r for _, r in wells])
    assert r_all.min() < L / 16 * 1.02 and r_all.max() > L / 8 * 0.98


def test_each_well_touches_its_predecessor(wells):
    # Expected: |c_k - c_{k-1}| <= r_k + r_{k-1} (paper: a new QW disconnected from the current
    # one is discarded). This chain also makes the union of disks connected in the continuum.
    for c, r in wells:
        d = np.linalg.norm(c[1:] - c[:-1], axis=1)
        assert np.all(d <= r[1:] + r[:-1] + 1e-12)


def _lens_area_by_quadrature(c1, r1, c2, r2, n=20000):
    """Area of disk1 ∩ disk2 as the x-integral of the overlap of the two vertical chords,
    midpoint rule on n points over disk 1's x-extent. Independent of the closed form: the
    integrand is continuous with square-root end points, so the error is O(r^2 n^-1.5),
    ~1e-6 of the disk area for n = 20000."""
    x = c1[0] - r1 + (np.arange(n) + 0.5) * (2 * r1 / n)
    h1 = np.sqrt(np.maximum(r1**2 - (x - c1[0]) ** 2, 0.0))
    h2 = np.sqrt(np.maximum(r2**2 - (x - c2[0]) ** 2, 0.0))
    inside2 = np.abs(x - c2[0]) <= r2
    top = np.minimum(c1[1] + h1, c2[1] + h2)
    bottom = np.maximum(c1[1] - h1, c2[1] - h2)
    return np.sum(np.where(inside2, np.maximum(top - bottom, 0.0), 0.0)) * (2 * r1 / n)


def test_quadrature_oracle_matches_known_lenses():
    # Expected: closed cases of the oracle itself: full containment (pi r^2), disjoint (0), and
    # two unit disks at distance 1: 2 pi / 3 - sqrt(3) / 2 (textbook lens area).
    assert math.isclose(_lens_area_by_quadrature((0, 0), 1.0, (0.2, 0.1), 3.0), math.pi, rel_tol=1e-5)
    assert _lens_area_by_quadrature((0, 0), 1.0, (2.5, 0.0), 1.0) == 0.0
    exact = 2 * math.pi / 3 - math.sqrt(3) / 2
    assert math.isclose(_lens_area_by_quadrature((0, 0), 1.0, (0.6, 0.8), 1.0), exact, rel_tol=1e-5)


@pytest.mark.parametrize("max_overlap", [0.75, 0.3])
def test_overlap_with_predecessor_at_most_max_overlap(max_overlap):
    # Expected: lens(new, current) <= max_overlap * pi r_new^2 (paper: 3/4). Checked with the
    # quadrature oracle above; its error (~1e-6 of the area) is far below the 1e-4 slack, so a
    # correct generator cannot fail this.
    ratios = []
    for seed in range(40):
        c, r = potentials.random_wells(seed, CFG, max_overlap=max_overlap)
        for k in range(1, len(r)):
            lens = _lens_area_by_quadrature(c[k], r[k], c[k - 1], r[k - 1])
            ratios.append(lens / (math.pi * r[k] ** 2))
    ratios = np.array(ratios)
    assert ratios.max() <= max_overlap + 1e-4
    # The rule binds rather than forbidding overlaps: out of 960 pairs some come within 10% of
    # the limit (for 0.75, about 6% of pairs exceed 0.6 with these seeds).
    assert ratios.max() > 0.9 * max_overlap


def test_coverage_at_most_80_percent(maps):
    # Expected: fraction of pixels at V0 <= 0.8 (paper: maps covering > 80% are discarded).
    coverage = (maps == 0.0).mean(axis=(1, 2))
    assert coverage.max() <= 0.8


def test_max_coverage_binds(maps):
    # Expected: with max_coverage = 0.3 every map has coverage <= 0.3, while the paper's
    # parameters give maps above 0.3 for the same seeds (mean coverage is about 0.3), so the
    # rejection is really exercised.
    assert ((maps[:50] == 0.0).mean(axis=(1, 2)) > 0.3).any()
    low = potentials.random_potentials(range(50), CFG, max_coverage=0.3)
    assert (low == 0.0).mean(axis=(1, 2)).max() <= 0.3


def test_rasterisation_matches_geometry(wells, maps):
    # Expected: V[i, j] = V0 iff the centre ((i+1/2) h, (j+1/2) h) lies in a closed disk
    # (DESIGN.md pixel convention, x first index). Reference: a slow loop over wells.
    h = CFG.pixel_nm
    x = (np.arange(CFG.grid) + 0.5) * h
    X, Y = np.meshgrid(x, x, indexing="ij")
    for (c, r), V in list(zip(wells, maps))[:30]:
        inside = np.zeros_like(X, dtype=bool)
        for (cx, cy), rk in zip(c, r):
            inside |= (X - cx) ** 2 + (Y - cy) ** 2 <= rk**2
        np.testing.assert_array_equal(V == 0.0, inside)
    # Same seed through random_wells and random_potential: the same geometry.
    np.testing.assert_array_equal(maps[0], potentials.random_potential(0, CFG))


def test_well_pixels_connected_up_to_one_pixel(maps):
    # Expected: one 8-connected component after dilating the well pixels by one pixel.
    # Why this cannot fail by chance: each disk (r >= L/16 = 4 h, centre in the box) covers a
    # non-empty, 4-connected set of pixel centres (rows of a disk are nested intervals), and two
    # touching disks share a point q on the segment between their centres, which lies in the
    # box; each disk has a pixel centre within sqrt(2) h of q, so the two sets are at Chebyshev
    # distance <= 2 pixels and their 3 x 3 dilations meet. Without dilation a tangent contact
    # may rasterise to two pieces, so undilated connectivity is not a property of the method.
    eight = np.ones((3, 3), dtype=bool)
    for V in maps:
        grown = ndimage.binary_dilation(V == 0.0, structure=eight)
        assert ndimage.label(grown, structure=eight)[1] == 1


# ------------------------------------------------------------------ harmonic trap, empty box


def _brute_pixel_average(cfg, hbar_omega, center, sub=50):
    """Mean of V over sub x sub midpoint samples per pixel, V = (hbar w)^2/(4 hbar^2/(2m*)) |r-c|^2
    with hbar^2/(2m*) from the CODATA value written out (units.py source)."""
    k = hbar_omega**2 / (4 * 0.0380998212 / cfg.m_eff)
    s = cfg.pixel_nm / sub
    t = (np.arange(cfg.grid * sub) + 0.5) * s
    V = k * ((t[:, None] - center[0]) ** 2 + (t[None, :] - center[1]) ** 2)
    return V.reshape(cfg.grid, sub, cfg.grid, sub).mean(axis=(1, 3)), k, s


@pytest.mark.parametrize("cfg,hbar_omega,center", [
    (CFG, 0.05, None),
    (CFG, 0.01, (7.3, 21.9)),
    (SMALL, 0.2, (0.0, 20.0)),
    (EDConfig(grid=16, m_eff=0.2), 0.03, (40.0, -3.0)),
])
def test_harmonic_is_exact_pixel_average(cfg, hbar_omega, center):
    # Expected: the midpoint rule with sub-cell s = h/50 undershoots the mean of u^2 over a
    # pixel by exactly s^2/12 per axis, so brute = exact - k s^2/6; tolerance = that bound plus
    # float64 rounding.
    V = potentials.harmonic(cfg, hbar_omega, center)
    c = (cfg.length_nm / 2, cfg.length_nm / 2) if center is None else center
    brute, k, s = _brute_pixel_average(cfg, hbar_omega, c)
    assert V.shape == (cfg.grid, cfg.grid) and V.dtype == np.float64
    assert np.all(V >= brute - 1e-12 * V.max())
    assert np.max(np.abs(V - brute)) <= k * s**2 / 6 * (1 + 1e-6) + 1e-12 * V.max()


def test_harmonic_minimum_at_centre():
    # Expected: pixel mean = k (|m - c|^2 + h^2/6) with m the pixel centre, so the minimum is the
    # pixel containing c; at the default centre (L/2, L/2) = a pixel corner the four central
    # pixels tie, with value k (2 (h/2)^2 + h^2/6).
    h, g = CFG.pixel_nm, CFG.grid
    V = potentials.harmonic(CFG, 0.05)
    k = 0.05**2 / (4 * CFG.kinetic_prefactor)
    mins = np.argwhere(np.isclose(V, V.min(), rtol=1e-12, atol=0))
    centre_four = [(i, j) for i in (g // 2 - 1, g // 2) for j in (g // 2 - 1, g // 2)]
    assert sorted(map(tuple, mins)) == centre_four
    assert math.isclose(V.min(), k * (h**2 / 2 + h**2 / 6), rel_tol=1e-12)
    V = potentials.harmonic(CFG, 0.05, center=(7.3, 21.9))
    assert np.unravel_index(np.argmin(V), V.shape) == (int(7.3 // h), int(21.9 // h))


def test_empty_box():
    # Expected: V = 0 on every pixel.
    V = potentials.empty_box(SMALL)
    assert V.shape == (32, 32) and V.dtype == np.float64 and not V.any()


# ------------------------------------------------------------------ invalid input


@pytest.mark.parametrize("kwargs", [
    dict(seed=-1), dict(seed=1.5), dict(seed=True), dict(seed="3"), dict(seed=np.array([1, 2])),
    dict(seed=jax.random.split(jax.random.key(0), 2)), dict(seed=np.zeros(3, np.uint32)),
    dict(n_wells=0), dict(n_wells=2.0), dict(radius_range=(0.1, 0.05)), dict(radius_range=(0.0, 0.1)),
    dict(radius_range=(0.1, math.inf)), dict(radius_range=0.1), dict(max_overlap=0.0), dict(max_overlap=1.5),
    dict(max_coverage=0.0), dict(max_coverage=1.2), dict(max_coverage=math.nan), dict(v_step=math.nan),
    dict(v_well=math.inf), dict(config="EDConfig"),
])
def test_random_potential_rejects_bad_input(kwargs):
    # Expected: ValueError before any drawing (module contract).
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError):
        potentials.random_potential(**kwargs)


@pytest.mark.parametrize("seeds", [[0, -1], [0, 1.0], "01", 5, np.zeros((2, 2)), np.zeros((2, 3), np.uint32)])
def test_random_potentials_rejects_bad_seeds(seeds):
    # Expected: ValueError for any bad seed in the batch, before any map is drawn.
    with pytest.raises(ValueError):
        potentials.random_potentials(seeds, SMALL)


def test_traced_key_rejected():
    # Expected: maps are drawn on the host, a traced seed is a clear ValueError.
    with pytest.raises(ValueError, match="host"):
        jax.jit(lambda key: potentials.random_potential(key, SMALL))(jax.random.key(0))


@pytest.mark.parametrize("hbar_omega,center", [
    (0.0, None), (-0.01, None), (math.inf, None), (math.nan, None), ("0.05", None),
    (0.05, (1.0,)), (0.05, (1.0, math.nan)),
])
def test_harmonic_rejects_bad_input(hbar_omega, center):
    with pytest.raises(ValueError):
        potentials.harmonic(CFG, hbar_omega, center)


def test_impossible_parameters_raise_runtime_error():
    # Expected: the documented guards. 25 wells of radius >= L/16 cannot stay below 1% coverage;
    # an overlap limit of 1e-12 of the area needs a near-exact tangency (probability ~1e-9 per
    # draw), never met in 100_000 draws.
    with pytest.raises(RuntimeError, match="max_coverage"):
        potentials.random_potential(0, CFG, max_coverage=0.01)
    with pytest.raises(RuntimeError, match="max_overlap"):
        potentials.random_potential(0, CFG, max_overlap=1e-12)


def test_public_names():
    # Expected: the API other modules and examples call.
    assert {"random_wells", "random_potential", "random_potentials", "harmonic", "empty_box"} <= set(potentials.__all__)
    assert qdjax.EDConfig is EDConfig
