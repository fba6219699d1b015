"""The sampler's degree scales: which factor each channel's degrees get, and the filter against
fields built from scipy's spherical harmonics."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import sph_harm_y

from weather.model.spectral import channel_degree_factors, degree_filter

LAT = np.linspace(-87.1875, 87.1875, 32)
LON = np.arange(64) * 5.625
COLAT, AZIMUTH = np.meshgrid(np.deg2rad(90.0 - LAT), np.deg2rad(LON), indexing="ij")
CHANNELS = ["geopotential@500", "geopotential@850", "temperature@500", "surface_pressure"]


def harmonic(degree: int, order: int) -> np.ndarray:
    """A real orthonormal Y_lm [lat, lon] (cosine for order > 0, sine for < 0)."""
    y = sph_harm_y(degree, abs(order), COLAT, AZIMUTH)
    return y.real if order == 0 else np.sqrt(2.0) * (y.real if order > 0 else y.imag)


def test_each_channel_takes_its_most_specific_entries_piecewise_in_degree():
    scales = [
        ("", 0, 1.2),  # every channel without entries of its own
        ("", 16, 0.7),
        ("geopotential", 4, 1.5),  # both geopotential channels: 1 below degree 4
        ("geopotential", 20, 0.5),
        ("geopotential@850", 10, 0.9),  # this channel alone: 1 below 10, 0.9 above
    ]
    got = channel_degree_factors(CHANNELS, scales, max_degree=31)
    assert got is not None and got.shape == (32, 4)
    degree = np.arange(32)
    np.testing.assert_array_equal(
        got[:, 0], np.where(degree < 4, 1, np.where(degree < 20, 1.5, 0.5))
    )
    np.testing.assert_array_equal(got[:, 1], np.where(degree < 10, 1, 0.9))
    np.testing.assert_array_equal(got[:, 2], np.where(degree < 16, 1.2, 0.7))
    np.testing.assert_array_equal(got[:, 3], got[:, 2])
    assert channel_degree_factors(CHANNELS, [], max_degree=31) is None
    with pytest.raises(ValueError, match=r"degree_scale\.vorticity\.3: 'vorticity' is neither"):
        channel_degree_factors(CHANNELS, [("vorticity", 3, 0.5)], max_degree=31)
    with pytest.raises(ValueError, match=r"degree_scale\.40: degree 40 is above .* 31"):
        channel_degree_factors(CHANNELS, [("", 40, 0.5)], max_degree=31)


def test_filter_scales_each_degree_of_each_channel_by_its_factor():
    factors = np.ones((32, 2))
    factors[:16, 0], factors[16:, 0] = 1.5, 0.5  # channel 0: large scales up, small down
    large, small = harmonic(2, 1), harmonic(20, -7)
    field = np.stack([large + small, harmonic(5, 3)], axis=-1)  # [lat, lon, channel]
    want = np.stack([1.5 * large + 0.5 * small, harmonic(5, 3)], axis=-1)
    members = jnp.asarray(np.stack([field, -2.0 * field]), jnp.float32)  # [M, H, W, C]
    got = np.asarray(degree_filter(LAT, LON, factors)(members))
    # float32 tables and einsums over 32-64 terms on O(1) values: measured 3e-6 max error.
    np.testing.assert_allclose(got[0], want, atol=2e-5)
    np.testing.assert_allclose(got[1], -2.0 * want, atol=4e-5)


def test_filter_leaves_what_the_truncation_cannot_hold():
    # cos(32 lon) (order n_lon / 2) has no harmonic of degree <= 31 on this grid: any factors
    # leave it alone, as they leave everything with factors 1.
    nyquist = np.broadcast_to(np.cos(np.deg2rad(32 * LON)), (32, 64))
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(32, 64))
    field = jnp.asarray(np.stack([nyquist, noise], axis=-1)[None], jnp.float32)
    shrink = degree_filter(LAT, LON, np.full((32, 2), 0.3))(field)
    np.testing.assert_allclose(np.asarray(shrink)[0, ..., 0], nyquist, atol=1e-5)
    same = degree_filter(LAT, LON, np.ones((32, 2)))(field)
    np.testing.assert_allclose(np.asarray(same), np.asarray(field), atol=0)
