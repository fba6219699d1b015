"""Grid geometry and conservative regridding against exact answers."""

import numpy as np
import pytest

from weather.data import grid


@pytest.mark.parametrize("n_lat", [4, 32, 64])
def test_equiangular_bands_are_the_cells_around_each_centre(n_lat):
    """Without pole rows each band is its centre +- half the spacing (exactly), and its area
    weight the band's area 2 pi (sin b1 - sin b0) over the mean band's."""
    lat, _ = grid.equiangular_grid(n_lat, 2 * n_lat)
    half = 90.0 / n_lat
    np.testing.assert_allclose(grid.latitude_bounds(lat)[:-1], lat - half, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grid.latitude_bounds(lat)[1:], lat + half, rtol=0, atol=1e-12)
    area = np.sin(np.deg2rad(lat + half)) - np.sin(np.deg2rad(lat - half))
    np.testing.assert_allclose(grid.cell_area_weights(lat), area / area.mean(), rtol=1e-12)


def test_pole_rows_are_half_cells():
    """With pole rows (ERA5's grids, WeatherBench2's *_with_poles), the first and last rows are
    caps of half the spacing around each pole; the others are centre +- half the spacing."""
    n = 33
    lat = np.linspace(-90, 90, n)
    d = 180.0 / (n - 1)
    bounds = np.concatenate([[-90.0], lat[1:-1] - d / 2, [lat[-2] + d / 2, 90.0]])
    np.testing.assert_allclose(grid.latitude_bounds(lat), bounds, rtol=0, atol=1e-12)
    edges = np.deg2rad(bounds)
    area = np.diff(np.sin(edges))
    # A polar cap of angular radius d/2 has area 2 pi (1 - cos(d/2)): as a band, 1 - sin(90 - d/2).
    np.testing.assert_allclose(area[0], 1 - np.cos(np.deg2rad(d / 2)), rtol=1e-12)
    np.testing.assert_allclose(grid.cell_area_weights(lat), area / area.mean(), rtol=1e-12)


def test_gaussian_cell_areas_equal_quadrature_weights():
    lat, w = grid.gaussian_latitudes(48)
    assert grid.is_gaussian(lat) and not grid.is_equiangular(lat)
    np.testing.assert_allclose(grid.cell_area_weights(lat), w / w.mean(), rtol=1e-10)
    # Each band's sine span is its Gauss-Legendre weight (the weights integrate d(sin lat)).
    np.testing.assert_allclose(
        np.diff(np.sin(np.deg2rad(grid.latitude_bounds(lat)))), w, rtol=1e-10, atol=1e-14
    )


def test_equiangular_area_weights_match_analytic_band_areas():
    lat, _ = grid.equiangular_grid(32, 64)
    half = np.deg2rad(90 / 32)
    exact = np.sin(np.deg2rad(lat) + half) - np.sin(np.deg2rad(lat) - half)
    np.testing.assert_allclose(grid.cell_area_weights(lat), exact / exact.mean(), rtol=1e-12)


def test_conservative_regridding_preserves_integral_and_constants():
    rng = np.random.default_rng(0)
    src_lat, _ = grid.gaussian_latitudes(64)
    src_lon = np.arange(128) * 360 / 128
    dst_lat, dst_lon = grid.equiangular_grid(32, 64)
    regrid = grid.ConservativeRegridder.build(src_lat, src_lon, dst_lat, dst_lon)
    field = rng.normal(size=(3, 64, 128))
    out = regrid(field)
    assert out.shape == (3, 32, 64)
    integral_src = (grid.cell_area_weights(src_lat)[:, None] * field).mean(axis=(-2, -1))
    integral_dst = (grid.cell_area_weights(dst_lat)[:, None] * out).mean(axis=(-2, -1))
    np.testing.assert_allclose(integral_dst, integral_src, rtol=1e-12)
    np.testing.assert_allclose(regrid(np.full((64, 128), 7.5)), 7.5, rtol=1e-12)


def test_longitude_regridding_wraps_around_the_dateline():
    # Target cell centred on 0 degrees spans [-2.8125, 2.8125]: half from source cells on each
    # side of the dateline.
    src_lon = np.arange(64) * 360 / 64 + 360 / 128  # cell edges on multiples of 5.625
    dst_lon = np.arange(64) * 360 / 64
    m = grid.longitude_regrid_matrix(src_lon, dst_lon)
    assert m[0, 0] == pytest.approx(0.5) and m[0, -1] == pytest.approx(0.5)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)


def test_identity_regridding():
    lat, lon = grid.equiangular_grid(8, 16)
    regrid = grid.ConservativeRegridder.build(lat, lon, lat, lon)
    np.testing.assert_allclose(regrid.lat_matrix, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(regrid.lon_matrix, np.eye(16), atol=1e-12)


def test_bad_latitudes_are_rejected():
    with pytest.raises(ValueError, match="ascending"):
        grid.latitude_bounds(np.array([10.0, 0.0]))


def test_a_single_longitude_is_one_cell_around_the_globe():
    np.testing.assert_array_equal(grid.longitude_bounds(np.array([10.0])), [-170.0, 190.0])


@pytest.mark.parametrize("bad", [np.zeros((2, 2)), np.array([])])
def test_bad_coordinates_are_refused(bad):
    with pytest.raises(ValueError, match="non-empty 1-D"):
        grid.latitude_bounds(bad)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        grid.longitude_bounds(bad)
    with pytest.raises(ValueError, match="ascending"):
        grid.latitude_bounds(np.array([10.0, 5.0]))


def test_grid_kinds_are_told_apart_at_their_tolerances():
    """Gaussian latitudes are recognised to 1e-4 degrees (as archives round them), not beyond;
    an equiangular grid is evenly spaced to a relative 1e-6 of its step."""
    lat, _ = grid.gaussian_latitudes(32)
    assert grid.is_gaussian(lat + 5e-5) and not grid.is_gaussian(lat + 5e-4)
    assert not grid.is_equiangular(lat)
    even, _ = grid.equiangular_grid(32, 64)
    assert grid.is_equiangular(even) and not grid.is_gaussian(even)
    assert not grid.is_equiangular(even + np.where(np.arange(32) == 5, 1e-3, 0.0))
    assert grid.is_equiangular(even[:1])  # one row: nothing to compare
