"""Spherical-harmonic white noise against exact identities and its analytic correlation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weather.data import grid
from weather.model import noise

N_MC = 8192  # Monte-Carlo fields per grid: variance s.e. sqrt(2/n) = 0.016, mean s.e. 0.011


def _grid(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "equiangular":
        return grid.equiangular_grid(32, 64)
    if name == "gaussian":
        lat, _ = grid.gaussian_latitudes(32)
        return lat, grid.equiangular_grid(32, 64)[1]
    if name == "poles-descending":  # ARCO-ERA5 order, pole rows, shifted longitudes
        return np.linspace(90.0, -90.0, 33), np.arange(64) * 5.625 - 180.0
    raise ValueError(name)


GRIDS = ["equiangular", "gaussian", "poles-descending"]


def _points(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit vectors [lat * lon, 3] of the grid points, row-major like the fields."""
    phi, lam = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    return np.stack(
        [np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1
    ).reshape(-1, 3)


def _distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.arccos(np.clip(np.sum(p * q, axis=-1), -1.0, 1.0))


def test_default_truncation():
    assert noise.default_max_wavenumber(32, 64) == 31
    assert noise.default_max_wavenumber(181, 360) == 179
    assert noise.default_max_wavenumber(721, 1440) == 719
    assert noise.SphericalNoise.build(*grid.equiangular_grid(16, 64)).max_wavenumber == 15


@pytest.mark.parametrize("name", GRIDS)
def test_exact_covariance_is_unit_variance_and_isotropic(name):
    # The field is linear in i.i.d. N(0, 1) coefficients, so its covariance is exactly
    # sum_k f_k f_k^T over the fields f_k of the unit coefficient vectors.
    lat, lon = _grid(name)
    sampler = noise.SphericalNoise.build(lat, lon)
    shape = sampler.coefficient_shape
    basis = jnp.eye(int(np.prod(shape)), dtype=jnp.float32).reshape(-1, *shape)
    fields = np.asarray(sampler.synthesize(basis), dtype=np.float64).reshape(basis.shape[0], -1)

    np.testing.assert_allclose(np.sum(fields**2, axis=0), 1.0, atol=1e-5)

    rows = np.random.default_rng(0).choice(fields.shape[1], size=128, replace=False)
    covariance = fields[:, rows].T @ fields
    p = _points(lat, lon)
    analytic = noise.spherical_correlation(
        _distance(p[rows, None, :], p[None, :, :]), sampler.max_wavenumber
    )
    np.testing.assert_allclose(covariance, analytic, atol=2e-5)


def test_analytic_correlation_is_one_at_zero_distance_and_integrates_to_zero():
    assert noise.spherical_correlation(np.array(0.0), 31) == pytest.approx(1.0, rel=1e-12)
    # Only l = 0 survives the integral over the sphere: mean correlation 1 / (L + 1)^2.
    x, w = np.polynomial.legendre.leggauss(64)
    mean = np.sum(w * noise.spherical_correlation(np.arccos(x), 31)) / 2.0
    assert mean == pytest.approx(1.0 / 32**2, rel=1e-10)


@jax.jit
def _moments(sampler, key, pairs):
    """Sums of x, x^2 and pair products over N_MC // 2 fields; one compile serves both grids."""
    x = sampler(key, (N_MC // 2,)).reshape(N_MC // 2, -1)
    return x.sum(0), (x * x).sum(0), (x[:, pairs[:, 0]] * x[:, pairs[:, 1]]).sum(0)


@pytest.fixture(scope="module", params=["equiangular", "gaussian"])
def monte_carlo(request):
    """Means of x, x^2 and a few pair products over N_MC sampled fields (float64)."""
    lat, lon = _grid(request.param)
    sampler = noise.SphericalNoise.build(lat, lon)
    pairs = _pairs(lat, lon)
    chunks = [_moments(sampler, jax.random.key(i), pairs) for i in range(2)]
    totals = [sum(np.asarray(c[k], dtype=np.float64) for c in chunks) for k in range(3)]
    return request.param, lat, lon, sampler, pairs, [t / N_MC for t in totals]


def _pairs(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Flat index pairs: 3 at one distance in different places and orientations, then 200 random."""
    n_lat, n_lon = lat.size, lon.size

    def flat(i, j):
        return i * n_lon + j

    fixed = [
        (flat(n_lat // 2 - 1, 0), flat(n_lat // 2, 0)),  # across the equator, meridional
        (flat(n_lat - 1, 5), flat(n_lat - 1, 5 + n_lon // 2)),  # across the north pole
        (flat(0, 10), flat(0, 10 + n_lon // 2)),  # across the south pole
    ]
    rng = np.random.default_rng(1)
    random = rng.integers(0, n_lat * n_lon, size=(200, 2))
    return np.concatenate([np.array(fixed), random])


def test_monte_carlo_unit_variance_and_zero_mean_everywhere(monte_carlo):
    _, _, _, _, _, (mean, second, _) = monte_carlo
    variance = second - mean**2
    se_var, se_mean = np.sqrt(2.0 / N_MC), 1.0 / np.sqrt(N_MC)
    assert np.max(np.abs(variance - 1.0)) < 5 * se_var
    assert np.max(np.abs(mean)) < 5 * se_mean
    # Averaged over the ~(L+1)^2 independent degrees of freedom of each field.
    assert abs(variance.mean() - 1.0) < 5 * se_var / 8


def test_monte_carlo_correlation_depends_only_on_distance(monte_carlo):
    name, lat, lon, sampler, pairs, (mean, second, products) = monte_carlo
    std = np.sqrt(second - mean**2)
    corr = (products - mean[pairs[:, 0]] * mean[pairs[:, 1]]) / (
        std[pairs[:, 0]] * std[pairs[:, 1]]
    )
    p = _points(lat, lon)
    distance = _distance(p[pairs[:, 0]], p[pairs[:, 1]])
    analytic = noise.spherical_correlation(distance, sampler.max_wavenumber)
    se = (1.0 - analytic**2) / np.sqrt(N_MC) + 1e-3
    assert np.all(np.abs(corr - analytic) < 5 * se)
    if name == "equiangular":
        # The equator-crossing and the two pole-crossing pairs are all 5.625 degrees apart.
        np.testing.assert_allclose(distance[:3], np.deg2rad(5.625), rtol=1e-9)
        assert np.ptp(corr[:3]) < 5 * np.sqrt(2.0) * se[0]


def test_call_shapes_dtype_and_determinism():
    lat, lon = grid.equiangular_grid(32, 64)
    sampler = noise.SphericalNoise.build(lat, lon)
    out = sampler(jax.random.key(0), (4,))
    assert out.shape == (4, 32, 64) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, sampler(jax.random.key(0), (4,)))
    assert not np.allclose(out, sampler(jax.random.key(1), (4,)))
    assert not np.allclose(out[0], out[1])


@pytest.mark.parametrize("kind", ["spherical", "iid"])
def test_make_noise_fn_takes_the_full_shape(kind):
    lat, lon = grid.equiangular_grid(32, 64)
    noise_fn = noise.make_noise_fn(kind, lat, lon)
    key = jax.random.key(3)
    out = noise_fn(key, (4, 32, 64))
    assert out.shape == (4, 32, 64) and out.dtype == jnp.float32
    if kind == "iid":
        np.testing.assert_array_equal(out, noise.iid_noise(key, (4,), 32, 64))
    # Channel-last [..., lat, lon, channel]: the same fields, channels moved last.
    np.testing.assert_array_equal(noise_fn(key, (32, 64, 4)), jnp.moveaxis(out, 0, -1))
    # With leading dims too: [batch, lat, lon, channel] holds the fields of [batch, channel].
    batched = noise_fn(key, (2, 4, 32, 64))
    np.testing.assert_array_equal(noise_fn(key, (2, 32, 64, 4)), jnp.moveaxis(batched, 1, -1))
    for wrong in [(4, 64, 32), (40, 64, 4), (4, 32, 63)]:
        with pytest.raises(ValueError, match="must end with"):
            noise_fn(key, wrong)


def test_invalid_grids_and_truncations_are_rejected():
    lat, lon = grid.equiangular_grid(32, 64)
    with pytest.raises(ValueError, match="max_wavenumber"):
        noise.SphericalNoise.build(lat, lon, max_wavenumber=32)  # m = n_lon / 2 aliases
    with pytest.raises(ValueError, match="equispaced"):
        noise.SphericalNoise.build(lat, lon[:-1])  # does not close the circle
    with pytest.raises(ValueError, match="latitude"):
        noise.SphericalNoise.build(np.append(lat, 95.0), lon)
    with pytest.raises(ValueError, match="noise kind"):
        noise.make_noise_fn("pink", lat, lon)
    for bad in (lat.reshape(2, 16), lat[:0]):
        with pytest.raises(ValueError, match="latitude must be a non-empty 1-D array"):
            noise.SphericalNoise.build(bad, lon)
