"""`weather.evaluation.maps`: what the figures hold (labels, units, colour bars, coastlines, the
plotted numbers), read from the matplotlib objects before rendering."""

from __future__ import annotations

import io

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.contour import ContourSet
from PIL import Image

from weather.data.constants import GRAVITY
from weather.data.grid import equiangular_grid
from weather.evaluation import maps


def grid_field(values: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> xr.DataArray:
    return xr.DataArray(
        values, dims=("latitude", "longitude"), coords={"latitude": lat, "longitude": lon}
    )


def test_land_fraction_is_the_shipped_outline_of_real_coasts():
    land = maps.land_fraction()
    assert land.fraction.shape == (180, 360) and not land.fraction.flags.writeable

    def at(lat: float, lon: float) -> float:
        i = int(np.argmin(np.abs(land.latitude - lat)))
        j = int(np.argmin(np.abs(land.longitude - lon % 360)))
        return float(land.fraction[i, j])

    # Land: the Alps, central Australia, the Sahara; sea: mid-Pacific, mid-Atlantic.
    assert at(46.5, 9.5) == 1 and at(-25.0, 134.0) == 1 and at(23.0, 10.0) == 1
    assert at(0.0, 180.0) == 0 and at(30.0, -40.0) == 0


def test_unwrapped_longitude_runs_east_across_the_dateline():
    got = maps.unwrapped_longitude(np.array([337.5, 348.75, 0.0, 11.25]))
    np.testing.assert_array_equal(got, [337.5, 348.75, 360.0, 371.25])
    np.testing.assert_array_equal(maps.unwrapped_longitude(np.array([0.0, 90.0])), [0.0, 90.0])


def test_field_map_has_labelled_axes_a_colour_bar_in_display_units_and_coastlines():
    lat, lon = equiangular_grid(16, 32)
    z = 5.5e4 + 800.0 * np.cos(np.deg2rad(lat))[:, None] * np.ones(lon.size)  # m2 s-2
    fig = maps.field_map(
        grid_field(z, lat, lon), variable="geopotential", units="m2 s-2", level=500, title="z"
    )
    ax, bar = fig.axes
    assert ax.get_xlabel() == "longitude (degrees east)"
    assert ax.get_ylabel() == "latitude (degrees north)"
    assert ax.get_title() == "z"
    assert bar.get_ylabel() == "geopotential height at 500 hPa (m)"
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    # Geopotential drawn as height: the values divided by g, colour range their extremes.
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(z.shape), z / GRAVITY)
    assert mesh.get_clim() == pytest.approx((z.min() / GRAVITY, z.max() / GRAVITY))
    (coast,) = [c for c in ax.collections if isinstance(c, ContourSet)]
    assert list(coast.levels) == [maps.COAST_LEVEL]
    vertices = np.concatenate([p.vertices for p in coast.get_paths() if len(p.vertices)])
    # The outline passes by Lisbon (38.7N, 9.1W) and Sydney (33.9S, 151.2E).
    for lat0, lon0 in ((38.7, 350.9), (-33.9, 151.2)):
        assert np.hypot(vertices[:, 0] - lon0, vertices[:, 1] - lat0).min() < 1.5
    # The whole globe, cell edges included.
    assert ax.get_xlim() == pytest.approx((-5.625, 354.375))
    assert ax.get_ylim() == pytest.approx((-90.0, 90.0))


def test_spread_map_starts_at_zero_and_a_dateline_box_is_drawn_in_one_piece():
    lat, lon = equiangular_grid(16, 32)
    box = grid_field(
        np.arange(4 * 4, dtype=float).reshape(4, 4) * 100.0, lat[10:14], lon[[30, 31, 0, 1]]
    )
    fig = maps.field_map(
        box,
        variable="surface_pressure",
        units="Pa",
        level=None,
        title="sp",
        spread=True,
        long_name="Surface pressure",
    )
    ax, bar = fig.axes
    assert bar.get_ylabel() == "spread of surface pressure (hPa)"
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert mesh.get_clim() == pytest.approx((0.0, 15.0))  # hPa
    assert ax.get_xlim() == pytest.approx((337.5 - 5.625, 371.25 + 5.625))
    # Ticks past 360 are labelled in degrees east.
    formatter = ax.xaxis.get_major_formatter()
    assert formatter(370.0, 0) == "10"


def test_meteogram_draws_members_mean_and_the_10_90_band_against_valid_time():
    rng = np.random.default_rng(0)
    values = 280.0 + rng.standard_normal((5, 4))
    leads = np.timedelta64(12, "h") * np.arange(1, 5)
    members = xr.DataArray(
        values, dims=("member", "lead_time"), coords={"member": np.arange(5), "lead_time": leads}
    )
    init = np.datetime64("2001-01-03T00", "ns")
    fig = maps.meteogram(
        members,
        variable="temperature",
        units="K",
        level=850,
        init_time=init,
        title="t850",
        long_name="Temperature",
    )
    (ax,) = fig.axes
    assert ax.get_xlabel() == "valid time (UTC)"
    assert ax.get_ylabel() == "temperature at 850 hPa (K)"
    lines = ax.get_lines()
    thin = [line for line in lines if line.get_linewidth() < 1]
    (mean,) = [line for line in lines if line.get_label() == "mean"]
    assert len(thin) == 5 and mean.get_linewidth() > thin[0].get_linewidth()
    for line, row in zip(thin, values, strict=True):
        np.testing.assert_allclose(line.get_ydata(), row)
    np.testing.assert_allclose(mean.get_ydata(), values.mean(0))
    np.testing.assert_array_equal(np.asarray(mean.get_xdata()), init + leads)
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert band.get_label() == "10-90 % of members"
    ys = band.get_paths()[0].vertices[:, 1]
    lo, hi = np.quantile(values, 0.1, axis=0), np.quantile(values, 0.9, axis=0)
    for want in (*lo, *hi):
        assert np.min(np.abs(ys - want)) < 1e-9
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {
        "members",
        "10-90 % of members",
        "mean",
    }


def test_png_bytes_renders_a_png_of_the_figure_size():
    lat, lon = equiangular_grid(16, 32)
    fig = maps.field_map(
        grid_field(np.zeros((16, 32)), lat, lon),
        variable="temperature",
        units="K",
        level=850,
        title="t",
        coastlines=False,
    )
    data = maps.png_bytes(fig, dpi=50)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    width, height = fig.get_size_inches() * 50
    assert image.format == "PNG" and image.size == (round(width), round(height))
