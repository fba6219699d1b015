"""The sampler's degree scales (which factor each channel's degrees get) and power cap, and the
climatological spectrum the cap reads, against fields built from scipy's spherical harmonics."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from support import real_harmonic

from weather.model.spectral import (
    channel_degree_factors,
    degree_filter,
    mean_degree_power,
    power_cap_filter,
)

LAT = np.linspace(-87.1875, 87.1875, 32)
LON = np.arange(64) * 5.625
CHANNELS = ["geopotential@500", "geopotential@850", "temperature@500", "surface_pressure"]


def harmonic(degree: int, order: int) -> np.ndarray:
    return real_harmonic(LAT, LON, degree, order)


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


def test_mean_degree_power_is_the_time_mean_of_each_channels_spectrum():
    # Two times: degree 3 with power 4 / 4pi then 0, so its mean is 2 / 4pi; degree 10 with
    # 1 / 4pi at both. A channel with a NaN has no spectrum: inf, never capped.
    a, b = 2.0 * harmonic(3, -2), harmonic(10, 5)
    states = np.stack([np.stack([a + b, b]), np.stack([b, a])], axis=-1)  # [T, H, W, C]
    states[1, 5, 7, 1] = np.nan
    got = mean_degree_power(LAT, LON, states)
    want = np.zeros(32)
    want[3], want[10] = 2.0 / (4 * np.pi), 1.0 / (4 * np.pi)
    # Float64 least squares against scipy's harmonics: measured 1e-16.
    np.testing.assert_allclose(got[:, 0], want, atol=1e-12)
    assert np.all(np.isinf(got[:, 1]))
    with pytest.raises(ValueError, match=r"states: expected \[time, lat, lon, channel\]"):
        mean_degree_power(LAT, LON, states[0])


def test_power_cap_scales_a_degree_down_to_the_cap_and_leaves_the_rest():
    # Channel 0: degree 20 at power 8 / 4pi against a climate of 1 / 4pi and a cap of 2, so
    # its amplitude halves; degree 2 lies below the first capped degree (its power 9x the
    # climate stays). Channel 1: degree 20 under the cap, untouched. Channel 2: no climate.
    small = np.sqrt(8.0) * (harmonic(20, -7) + harmonic(20, 3)) / np.sqrt(2.0)  # power 8 / 4pi
    large = 3.0 * harmonic(2, 1)
    climate = np.full((32, 3), 1.0 / (4 * np.pi))
    climate[:, 2] = np.inf
    field = np.stack([large + small, 0.5 * small, small], axis=-1)
    want = np.stack([large + 0.5 * small, 0.5 * small, small], axis=-1)
    members = jnp.asarray(np.stack([field, 0.25 * field]), jnp.float32)  # [M, H, W, C]
    got = np.asarray(power_cap_filter(LAT, LON, climate, 2.0, 16)(members))
    # float32 tables and einsums on O(1) values: measured 5e-6 max error.
    np.testing.assert_allclose(got[0], want, atol=3e-5)
    # Member 1 (a quarter of the amplitude, power 0.5 / 4pi) is under the cap everywhere.
    np.testing.assert_allclose(got[1], 0.25 * field, atol=1e-5)
    # From degree 21 on nothing exceeds: no change at all.
    same = np.asarray(power_cap_filter(LAT, LON, climate, 2.0, 21)(members))
    np.testing.assert_array_equal(same, np.asarray(members))
    with pytest.raises(ValueError, match="cap must be finite and > 0"):
        power_cap_filter(LAT, LON, climate, 0.0, 16)
    with pytest.raises(ValueError, match=r"first_degree must be in \[0, 31\]"):
        power_cap_filter(LAT, LON, climate, 2.0, 32)
