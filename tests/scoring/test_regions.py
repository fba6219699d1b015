"""Regions as WeatherBench2 defines them, and regional scores against hand-computed masks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr

from weather.data.grid import equiangular_grid
from weather.scoring import metrics
from weather.scoring.regions import (
    GLOBAL,
    REGIONS,
    TROPICS,
    Region,
    named_regions,
    parse_box,
)


def test_named_regions_on_the_wb2_64x32_grid_are_the_rows_listed_by_hand():
    lat, lon = equiangular_grid(32, 64)  # rows at +-2.8125, +-8.4375, ..., +-87.1875
    rows = {name: lat[r.latitude_mask(lat)].tolist() for name, r in REGIONS.items()}
    tropics = [-19.6875, -14.0625, -8.4375, -2.8125, 2.8125, 8.4375, 14.0625, 19.6875]
    north = [22.5 + 5.625 * k + 2.8125 for k in range(12)]  # 25.3125 .. 87.1875
    south = sorted(-x for x in north)
    assert rows["tropics"] == tropics
    assert rows["extra-tropics-north"] == north
    assert rows["extra-tropics-south"] == south
    assert rows["extra-tropics"] == south + north
    assert rows["global"] == lat.tolist()
    for region in REGIONS.values():
        assert region.longitude_mask(lon).all()
        assert region.covers(lat, lon) == (region.name == "global")
    # The three headline bands partition the globe's rows.
    assert sorted(south + tropics + north) == lat.tolist()


def test_edges_are_inclusive_as_in_weatherbench2():
    # A 2.5 degree grid with pole rows has rows on +-20 (as ERA5's 0.25 degree grid does):
    # WB2's `sel(latitude=slice(-20, 20))` keeps them and so does its ExtraTropicalRegion's
    # `abs(latitude) >= 20`, so they count in the tropics and in the extra-tropics.
    lat = np.linspace(-90, 90, 73)
    assert 20.0 in lat.tolist() and -20.0 in lat.tolist()
    tropics = lat[TROPICS.latitude_mask(lat)]
    assert (tropics[0], tropics[-1], tropics.size) == (-20.0, 20.0, 17)
    north = lat[REGIONS["extra-tropics-north"].latitude_mask(lat)]
    south = lat[REGIONS["extra-tropics-south"].latitude_mask(lat)]
    assert (north[0], north[-1], north.size) == (20.0, 90.0, 29)
    assert (south[0], south[-1], south.size) == (-90.0, -20.0, 29)
    both = lat[REGIONS["extra-tropics"].latitude_mask(lat)]
    assert both.tolist() == south.tolist() + north.tolist()
    # Rounding of a coordinate meant to be 20 does not move it out; a real offset does.
    near = np.array([20.0 + 1e-9, 20.0 - 1e-9, 20.01, 19.99, -20.01])
    np.testing.assert_array_equal(TROPICS.latitude_mask(near), [True, True, False, True, False])
    np.testing.assert_array_equal(
        REGIONS["extra-tropics-north"].latitude_mask(near), [True, True, True, False, False]
    )


def test_a_box_across_the_dateline_takes_the_columns_on_both_sides():
    _, lon = equiangular_grid(32, 64)  # 0, 5.625, ..., 354.375
    box = Region.box(-10, 30, 350, 20)
    # 354.375 and 0 .. 16.875 by hand; 22.5 is past the eastern edge, 348.75 before the western.
    columns = np.flatnonzero(box.longitude_mask(lon))
    assert lon[columns].tolist() == [0.0, 5.625, 11.25, 16.875, 354.375]
    # The same box written with a negative western edge, and on a -180..180 grid.
    assert np.array_equal(Region.box(-10, 30, -10, 20).longitude_mask(lon), box.longitude_mask(lon))
    shifted = np.where(lon >= 180, lon - 360, lon)
    assert np.array_equal(box.longitude_mask(shifted), box.longitude_mask(lon))
    # Edges inclusive: a box from 5.625 to 11.25 holds both columns.
    assert lon[Region.box(0, 10, 5.625, 11.25).longitude_mask(lon)].tolist() == [5.625, 11.25]
    assert Region.box(-90, 90, 0, 360).covers(*equiangular_grid(32, 64))
    assert Region.box(-90, 90, -180, 180).longitude_mask(lon).all()
    assert box.name == "box(-10,30,350,20)"
    assert box.describe() == "latitude -10..30, longitude 350..20 eastward"
    assert parse_box(" -10, 30,350,20") == box


def test_bad_regions_are_refused_naming_the_problem():
    lat, lon = equiangular_grid(8, 16)
    with pytest.raises(ValueError, match=r"latitude band \(30, 10\) must satisfy"):
        Region.box(30, 10, 0, 20)
    with pytest.raises(ValueError, match=r"longitude 400 must lie in -180\.\.360"):
        Region.box(0, 10, 0, 400)
    with pytest.raises(ValueError, match="must be finite"):
        Region.box(0, float("nan"), 0, 10)
    with pytest.raises(ValueError, match=r"box\(1,2,0,360\).*holds no grid point: 0 of 8 rows"):
        Region.box(1, 2, 0, 360).indices(lat, lon)
    with pytest.raises(ValueError, match=r"regions: unknown \['arctic'\]; choose from"):
        named_regions("global,arctic")
    with pytest.raises(ValueError, match=r"\['tropics'\] named more than once"):
        named_regions(["tropics", "global", "tropics"])
    with pytest.raises(ValueError, match="name at least one"):
        named_regions(" , ")
    with pytest.raises(ValueError, match="must be four numbers lat_min,lat_max,lon_min,lon_max"):
        parse_box("10,20,30")
    assert [r.name for r in named_regions("tropics, global")] == ["tropics", "global"]


# -- regional scores against hand-computed masks ----------------------------------------------

N_LAT, N_LON, M = 8, 16, 4
LAT, LON = equiangular_grid(N_LAT, N_LON)  # rows +-11.25, +-33.75, +-56.25, +-78.75
INITS = np.array(["2001-01-01T00", "2001-01-02T00"], "datetime64[ns]")
LEADS = np.array([12, 24, 36], "timedelta64[h]").astype("timedelta64[ns]")
DATELINE_BOX = Region.box(-40, 60, 330, 40)


def _hand_mask(name: str) -> np.ndarray:
    """``[lat, lon]`` membership written out from the definitions, independently of the module."""
    lat, lon = LAT[:, None], LON[None, :]
    every = np.ones((N_LAT, N_LON), bool)
    if name == "global":
        return every
    if name == "tropics":
        return every & (np.abs(lat) <= 20)
    if name == "extra-tropics":
        return every & (np.abs(lat) >= 20)
    if name == "extra-tropics-north":
        return every & (lat >= 20)
    if name == "extra-tropics-south":
        return every & (lat <= -20)
    assert name == DATELINE_BOX.name
    return (lat >= -40) & (lat <= 60) & ((lon >= 330) | (lon <= 40))


def _cell_areas() -> np.ndarray:
    """Relative areas of the whole grid's rows: sin of the bands' edges (half-way between rows,
    the poles outside), on the unit sphere."""
    edges = np.deg2rad(np.concatenate([[-90.0], (LAT[1:] + LAT[:-1]) / 2, [90.0]]))
    return np.diff(np.sin(edges))


def _masked_mean(per_point: np.ndarray, name: str) -> np.ndarray:
    """``[init, lead, lat, lon]`` -> ``[lead]``: the whole grid's cell areas times the mask,
    normalised over the masked points, then the mean over inits."""
    w = _cell_areas()[:, None] * _hand_mask(name)
    return np.sum(per_point * w, axis=(-2, -1)).mean(0) / w.sum()


@pytest.fixture(scope="module")
def case() -> tuple[xr.DataArray, xr.DataArray]:
    """A 4-member forecast [member, init, lead, lat, lon] and its truth, O(1) values whose
    spread and error differ from row to row (so that a wrong region or weight shows)."""
    rng = np.random.default_rng(42)
    scale = 1.0 + np.abs(LAT)[:, None] / 30.0 + 0.3 * np.cos(np.deg2rad(LON))[None, :]
    truth = rng.standard_normal((INITS.size, LEADS.size, N_LAT, N_LON)) * scale
    members = truth + rng.standard_normal((M, *truth.shape)) * scale * 0.7 + 0.2 * scale
    coords = {"init_time": INITS, "lead_time": LEADS, "latitude": LAT, "longitude": LON}
    dims = ("init_time", "lead_time", "latitude", "longitude")
    return (
        xr.DataArray(members, dims=("member", *dims), coords=coords, name="t"),
        xr.DataArray(truth, dims=dims, coords=coords, name="t"),
    )


def _brute_force(x: np.ndarray, y: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """Fair CRPS, ensemble-mean RMSE and spread/skill over the hand mask, float64."""
    skill = np.mean(np.abs(x - y), axis=0)
    pairs = sum(np.abs(x[i] - x[j]) for i, j in itertools.product(range(M), range(M)))
    crps = _masked_mean(skill - pairs / (2 * M * (M - 1)), name)
    mse = _masked_mean((x.mean(0) - y) ** 2, name)
    variance = _masked_mean(x.var(0, ddof=1), name)
    return {
        "crps": crps,
        "rmse": np.sqrt(mse),
        "spread_skill": np.sqrt((M + 1) / M * variance / mse),
    }


ALL = [*REGIONS.values(), DATELINE_BOX]


def test_regional_scores_equal_masked_area_weighted_numpy(case):
    forecast, truth = case
    x, y = forecast.values, truth.values
    got = {
        "crps": metrics.crps(forecast, truth, region=ALL),
        "rmse": metrics.ensemble_mean_rmse(forecast, truth, region=ALL),
        "spread_skill": metrics.spread_skill_ratio(forecast, truth, region=ALL),
    }
    for values in got.values():
        assert values.dims == ("region", "lead_time")
        assert values["region"].values.tolist() == [r.name for r in ALL]
    for region in ALL:
        want = _brute_force(x, y, region.name)
        for metric, values in got.items():
            # Kernels run in float32 (jax without x64) on O(1) values: each point's score is
            # off by a few float32 ulps of its operands (eps32 = 1.2e-7), and averages of such
            # errors by no more. Measured: at most 1.5e-7 relative; 2e-6 leaves over 10x. A
            # wrong row moves these scores by ~20 %, the box's own-grid weights by 1-4 %.
            np.testing.assert_allclose(
                values.sel(region=region.name).values,
                want[metric],
                rtol=2e-6,
                err_msg=f"{region.name} {metric}",
            )
    # One region alone is the same numbers without a region dim.
    alone = metrics.crps(forecast, truth, region=DATELINE_BOX)
    assert alone.dims == ("lead_time",)
    np.testing.assert_array_equal(alone.values, got["crps"].sel(region=DATELINE_BOX.name).values)


def test_the_global_region_is_bit_for_bit_the_plain_average(case):
    forecast, truth = case
    plain = metrics.crps(forecast, truth)
    np.testing.assert_array_equal(metrics.crps(forecast, truth, region=GLOBAL).values, plain.values)
    np.testing.assert_array_equal(
        metrics.crps(forecast, truth, region=[GLOBAL, TROPICS]).sel(region="global").values,
        plain.values,
    )


def test_points_outside_a_region_never_count_even_when_nan(case):
    forecast, truth = case
    outside = ~_hand_mask("tropics")
    spoiled = truth.where(~xr.DataArray(outside, dims=("latitude", "longitude")))
    assert np.isnan(float(metrics.crps(forecast, spoiled).isel(lead_time=0)))
    np.testing.assert_array_equal(
        metrics.crps(forecast, spoiled, region=TROPICS).values,
        metrics.crps(forecast, truth, region=TROPICS).values,
    )


def test_regional_weights_are_the_whole_grids_not_the_regions_own(case):
    """Averaging the box's points as a grid of their own (its edge rows reaching the poles)
    gives another answer, which the masked reference above would catch."""
    forecast, truth = case
    own = metrics.crps(
        metrics.select_region(forecast, DATELINE_BOX), metrics.select_region(truth, DATELINE_BOX)
    )
    whole = metrics.crps(forecast, truth, region=DATELINE_BOX)
    # Measured: 1.2 % to 4 % apart; the regional reference's tolerance is 2e-6.
    assert np.all(np.abs(own.values - whole.values) > 1e-3 * np.abs(whole.values))


def test_regional_rank_histogram_counts_the_regions_points(case):
    forecast, truth = case
    hist = metrics.rank_histogram(forecast, truth, region=[GLOBAL, DATELINE_BOX])
    assert hist.dims == ("rank", "region", "lead_time")
    x, y = forecast.values, truth.values
    ranks = np.sum(x < y, axis=0)  # continuous random values: no ties
    mask = _hand_mask(DATELINE_BOX.name)
    for r in range(M + 1):
        want = np.sum((ranks == r) & mask, axis=(0, 2, 3))
        np.testing.assert_array_equal(hist.sel(rank=r, region=DATELINE_BOX.name).values, want)
    np.testing.assert_array_equal(
        hist.sel(region=DATELINE_BOX.name).sum("rank").values, mask.sum() * INITS.size
    )


def test_region_errors_name_the_region(case):
    forecast, truth = case
    with pytest.raises(ValueError, match=r"region 'box\(0,1,0,360\)'.*holds no grid point"):
        metrics.crps(forecast, truth, region=Region.box(0, 1, 0, 360))
    with pytest.raises(ValueError, match="names must be distinct"):
        metrics.crps(forecast, truth, region=[TROPICS, TROPICS])
    with pytest.raises(ValueError, match="need 'latitude' and 'longitude' among the dims"):
        metrics.area_weighted_mean(truth, ("init_time", "latitude"), region=TROPICS)
