"""Drift diagnostics' global statistics against exact answers on the sphere."""

import numpy as np
import pytest

from weather.data.grid import equiangular_grid
from weather.scoring.climate import field_statistics, global_mean, zonal_mean


def _bands(lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edges (radians) of the rows of an equiangular grid without poles."""
    d = np.deg2rad(180.0 / lat.size)
    centre = np.deg2rad(lat)
    return centre - d / 2, centre + d / 2


def _band_average(power: int, lat: np.ndarray) -> np.ndarray:
    """The exact area average of sin(lat)^power over each row's band:
    int sin^p cos / int cos = (sin^(p+1) b - sin^(p+1) a) / ((p + 1) (sin b - sin a))."""
    a, b = _bands(lat)
    return (np.sin(b) ** (power + 1) - np.sin(a) ** (power + 1)) / (
        (power + 1) * (np.sin(b) - np.sin(a))
    )


@pytest.mark.parametrize("shape", [(32, 64), (45, 8)])
def test_global_means_of_band_averages_are_the_sphere_integrals(shape):
    lat, lon = equiangular_grid(*shape)
    rows = np.ones((lat.size, lon.size))
    sin2 = _band_average(2, lat)[:, None] * rows
    sin1 = _band_average(1, lat)[:, None] * rows
    # Over the sphere: mean sin^2 = 1/3, mean sin = 0 (exact, whatever the resolution, because
    # each row holds its band's exact average and the weights are the exact band areas).
    np.testing.assert_allclose(global_mean(sin2, lat), 1 / 3, rtol=1e-13)
    np.testing.assert_allclose(global_mean(sin1, lat), 0, atol=1e-15)
    # Descending latitudes (ERA5's order) give the same numbers.
    np.testing.assert_allclose(global_mean(sin2[::-1], lat[::-1]), 1 / 3, rtol=1e-13)
    stats = field_statistics(sin1, lat)
    # std^2 = mean(x^2) - mean(x)^2 with x the row averages: brute force with band areas.
    a, b = _bands(lat)
    area = (np.sin(b) - np.sin(a)) / 2  # fractions of the sphere per row, summing to 1
    want = np.sqrt(np.sum(area * _band_average(1, lat) ** 2))
    np.testing.assert_allclose(stats["std"], want, rtol=1e-12)
    assert stats["max"] == sin1.max() and stats["min"] == sin1.min()


def test_statistics_keep_leading_dims_and_ignore_longitude_order():
    lat, lon = equiangular_grid(16, 32)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, lat.size, lon.size))
    stats = field_statistics(x, lat)
    assert {k: v.shape for k, v in stats.items()} == dict.fromkeys(stats, (3, 2))
    rolled = field_statistics(np.roll(x, 5, axis=-1), lat)
    for key in stats:
        np.testing.assert_allclose(rolled[key], stats[key], rtol=1e-12)
    # A constant field: its value, no spread.
    const = field_statistics(np.full((lat.size, lon.size), 287.5), lat)
    np.testing.assert_allclose(const["mean"], 287.5, rtol=1e-15)
    np.testing.assert_allclose(const["std"], 0, atol=1e-12)
    np.testing.assert_allclose(zonal_mean(x), x.mean(-1))
    assert zonal_mean(x).shape == (3, 2, lat.size)
