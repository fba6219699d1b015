"""The spherical-harmonic transform against closed forms and scipy's independent harmonics."""

from __future__ import annotations

import numpy as np
import pytest
from support import real_harmonic

from weather.data.harmonics import SphericalTransform

# WeatherBench2's 5.625 deg grid: 32 rows without poles, 64 columns from 0 E; the rows are
# given north to south and the columns start at 2.8 E to check that neither order nor the first
# longitude matters.
LAT = np.linspace(87.1875, -87.1875, 32)
LON = np.arange(64) * 5.625 + 2.8125


@pytest.fixture(scope="module")
def transform() -> SphericalTransform:
    return SphericalTransform.build(LAT, LON)


def test_closed_forms(transform):
    # cos(lat) cos(lon) = sqrt(4 pi / 3) Y_11: its sphere mean of f^2 is 1/3, all in degree 1.
    f = np.cos(np.deg2rad(LAT))[:, None] * np.cos(np.deg2rad(LON))[None, :]
    power = transform.power(f)
    expected = np.zeros(32)
    expected[1] = 1.0 / 3.0
    # Float64 least squares on 32 rows: agreement to rounding (measured ~1e-16).
    np.testing.assert_allclose(power, expected, atol=1e-12)
    # A constant c: mean square c^2, all in degree 0.
    np.testing.assert_allclose(transform.power(np.full((32, 64), 3.0))[0], 9.0, rtol=1e-12)
    # sin(lat) = sqrt(4 pi / 3) Y_10: 1/3 in degree 1 as well.
    g = np.broadcast_to(np.sin(np.deg2rad(LAT))[:, None], (32, 64))
    np.testing.assert_allclose(transform.power(g)[1], 1.0 / 3.0, rtol=1e-12)
    assert np.abs(np.delete(transform.power(g), 1)).max() < 1e-12


def test_random_band_limited_field_recovered_degree_by_degree(transform):
    rng = np.random.default_rng(0)
    field = np.zeros((32, 64))
    expected = np.zeros(32)
    for degree in range(32):
        for order in range(-degree, degree + 1):
            if abs(order) > 31:
                continue
            a = rng.normal()
            field += a * real_harmonic(LAT, LON, degree, order)
            expected[degree] += a * a / (4.0 * np.pi)
    # Degree 31 at order 31 is the sharpest the 32 rows resolve; the weighted normal equations
    # there lose a few digits (measured max relative error 3e-10).
    np.testing.assert_allclose(transform.power(field), expected, rtol=1e-8)


def test_leading_dims_and_refusals(transform):
    rng = np.random.default_rng(1)
    fields = rng.normal(size=(3, 2, 32, 64))
    stacked = transform.power(fields)
    assert stacked.shape == (3, 2, 32)
    np.testing.assert_allclose(stacked[2, 1], transform.power(fields[2, 1]), rtol=1e-12)
    with pytest.raises(ValueError, match=r"field: expected \[\.\.\., 32, 64\]"):
        transform.power(np.zeros((64, 32)))
    with pytest.raises(ValueError, match="max_degree must be in"):
        SphericalTransform.build(LAT, LON, max_degree=32)
    with pytest.raises(ValueError, match="longitude: values must be equispaced"):
        SphericalTransform.build(LAT, np.sort(np.r_[LON[:-1], 1.0]))


def test_synthesis_inverts_analysis(transform):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 2, 32, 32))
    degree, order = np.meshgrid(np.arange(32), np.arange(32))  # [m, l]
    a = np.where(degree >= order, a, 0.0)  # no l < m
    a[:, 1, 0, :] = 0.0  # no sine of order 0
    field = transform.synthesize(a)
    assert field.shape == (3, 32, 64)
    # Round trips both ways (float64; measured ~1e-13 at degree 31).
    np.testing.assert_allclose(transform.coefficients(field), a, atol=1e-10)
    np.testing.assert_allclose(
        transform.synthesize(transform.coefficients(field)), field, atol=1e-10
    )
    # Against scipy's harmonic: a unit cosine coefficient of (l, m) = (4, 2) is +-Y_42.
    one = np.zeros((2, 32, 32))
    one[0, 2, 4] = 1.0
    np.testing.assert_allclose(
        np.abs(transform.synthesize(one)), np.abs(real_harmonic(LAT, LON, 4, 2)), atol=1e-12
    )
