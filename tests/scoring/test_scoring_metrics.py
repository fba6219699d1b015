"""xarray scoring functions against numpy references, exact spherical averages and alignment."""

from __future__ import annotations

import itertools

import dask.array
import numpy as np
import pytest
import xarray as xr

from weather.data import grid
from weather.data.errors import ArchiveError
from weather.scoring import metrics

INIT = np.array(["2000-01-01T00", "2000-01-02T00"], dtype="datetime64[ns]")
LEADS = np.array([12, 36, 72], dtype="timedelta64[h]").astype("timedelta64[ns]")


def _grid_coords(n_lat: int, n_lon: int) -> dict[str, np.ndarray]:
    lat, lon = grid.equiangular_grid(n_lat, n_lon)
    return {"latitude": lat, "longitude": lon}


def _forecast_and_truth(
    m: int = 4, n_lat: int = 6, n_lon: int = 8, seed: int = 0
) -> tuple[xr.Dataset, xr.Dataset]:
    """Forecast [member, init_time, lead_time, (level,) latitude, longitude] and its truth."""
    rng = np.random.default_rng(seed)
    coords = {
        "member": np.arange(m),
        "init_time": INIT,
        "lead_time": LEADS,
        "level": np.array([500, 850]),
        **_grid_coords(n_lat, n_lon),
    }
    dims3 = ("member", "init_time", "lead_time", "level", "latitude", "longitude")
    dims2 = tuple(d for d in dims3 if d != "level")
    shape3 = tuple(len(coords[d]) for d in dims3)
    shape2 = tuple(len(coords[d]) for d in dims2)
    forecast = xr.Dataset(
        {
            "temperature": (dims3, 250 + 5 * rng.normal(size=shape3)),
            "surface_pressure": (dims2, 1e3 * rng.normal(size=shape2)),
        },
        coords=coords,
    )
    truth = xr.Dataset(
        {
            "temperature": (dims3[1:], 250 + 5 * rng.normal(size=shape3[1:])),
            "surface_pressure": (dims2[1:], 1e3 * rng.normal(size=shape2[1:])),
        },
        coords={k: v for k, v in coords.items() if k != "member"},
    )
    return forecast, truth


def _band_weights(lat: np.ndarray) -> np.ndarray:
    """Exact relative areas of equiangular latitude bands (no pole rows), mean 1."""
    half = np.deg2rad(0.5 * (lat[1] - lat[0]))
    w = np.sin(np.deg2rad(lat) + half) - np.sin(np.deg2rad(lat) - half)
    return w / w.mean()


def _average(per_point: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """[init, lead, ..., lat, lon] -> [lead, ...]: area-weighted over lat, lon, mean over init."""
    return np.mean(_band_weights(lat)[:, None] * per_point, axis=(0, -2, -1))


def _crps_reference(x: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    m = x.shape[0]
    skill = np.mean(np.abs(x - y), axis=0)
    pairs = sum(np.abs(x[i] - x[j]) for i, j in itertools.product(range(m), range(m)))
    return skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


@pytest.mark.parametrize("n_lat", [16, 32])
def test_area_weighted_mean_matches_spherical_averages_on_an_equiangular_grid(n_lat):
    lat = xr.DataArray(grid.equiangular_grid(n_lat, 4)[0], dims="latitude")
    lon = xr.DataArray(np.arange(4) * 90.0, dims="longitude")
    lat, lon = lat.assign_coords(latitude=lat), lon.assign_coords(longitude=lon)
    constant = xr.full_like(lat * lon, 3.25)
    assert float(metrics.area_weighted_mean(constant)) == pytest.approx(3.25, rel=1e-14)
    # sin^2(latitude) averages to 1/3 over the sphere; centre values on bands of width d are
    # second-order accurate, the error shrinking 4-fold as the grid doubles.
    field = np.sin(np.deg2rad(lat)) ** 2 + 0 * lon
    error = float(metrics.area_weighted_mean(field)) - 1 / 3
    d = np.pi / n_lat
    assert 0 < error < d**2 / 30
    assert error == pytest.approx(d**2 / 36, rel=0.01)
    # Descending latitudes (ERA5's native order) give the same mean.
    flipped = field.isel(latitude=slice(None, None, -1))
    assert float(metrics.area_weighted_mean(flipped)) == pytest.approx(error + 1 / 3, rel=1e-14)


def test_area_weighted_mean_is_exact_for_sin_squared_on_a_gaussian_grid():
    lat, _ = grid.gaussian_latitudes(24)
    field = xr.DataArray(
        np.sin(np.deg2rad(lat))[:, None] ** 2 * np.ones(48),
        dims=("latitude", "longitude"),
        coords={"latitude": lat, "longitude": np.arange(48) * 7.5},
    )
    assert float(metrics.area_weighted_mean(field)) == pytest.approx(1 / 3, rel=1e-13)
    assert float(metrics.area_weighted_mean(0 * field + 2.0)) == pytest.approx(2.0, rel=1e-14)


def test_area_weighted_mean_propagates_nan_unless_skipna():
    lat, _ = grid.equiangular_grid(4, 3)
    values = np.arange(12.0).reshape(4, 3)
    field = xr.DataArray(values, dims=("latitude", "longitude"), coords=_grid_coords(4, 3))
    field[1, 2] = np.nan
    assert np.isnan(float(metrics.area_weighted_mean(field)))
    w = _band_weights(lat)[:, None] * np.ones(3)
    valid = ~np.isnan(field.values)
    expected = np.sum((w * values)[valid]) / np.sum(w[valid])
    got = float(metrics.area_weighted_mean(field, skipna=True))
    assert got == pytest.approx(expected, rel=1e-12)
    assert np.isnan(float(metrics.area_weighted_mean(field * np.nan, skipna=True)))
    with pytest.raises(ValueError, match="not dims"):
        metrics.area_weighted_mean(field, ("latitude", "level"))


def test_crps_rmse_and_brier_match_numpy_references():
    forecast, truth = _forecast_and_truth()
    lat = forecast.latitude.values
    for fair in (True, False):
        scores = metrics.crps(forecast, truth, fair=fair)
        assert isinstance(scores, xr.Dataset)
        assert scores.temperature.dims == ("lead_time", "level")
        assert scores.surface_pressure.dims == ("lead_time",)
        for name in ("temperature", "surface_pressure"):
            x, y = forecast[name].values, truth[name].values
            np.testing.assert_allclose(
                scores[name].values, _average(_crps_reference(x, y, fair), lat), rtol=1e-5
            )
    rmse = metrics.ensemble_mean_rmse(forecast, truth)
    x, y = forecast.temperature.values, truth.temperature.values
    expected = np.sqrt(_average((x.mean(0) - y) ** 2, lat))
    np.testing.assert_allclose(rmse.temperature.values, expected, rtol=1e-5)
    # Brier with a threshold per variable: p = fraction of members above, o = truth above.
    thresholds = {"temperature": 252.0, "surface_pressure": 0.0}
    brier = metrics.brier(forecast, truth, thresholds)
    p, o = np.mean(x > 252.0, axis=0), (y > 252.0).astype(float)
    fair_bs = (p - o) ** 2 - p * (1 - p) / (x.shape[0] - 1)
    np.testing.assert_allclose(brier.temperature.values, _average(fair_bs, lat), rtol=1e-5)
    # A threshold field per latitude broadcasts against the truth.
    per_lat = xr.DataArray(np.full(lat.size, 252.0), dims="latitude", coords={"latitude": lat})
    by_field = metrics.brier(forecast.temperature, truth.temperature, per_lat)
    np.testing.assert_allclose(by_field.values, brier.temperature.values, rtol=1e-12)


def test_scores_keep_init_time_when_asked():
    forecast, truth = _forecast_and_truth()
    scores = metrics.crps(forecast.surface_pressure, truth.surface_pressure, over_init_time=False)
    assert scores.dims == ("init_time", "lead_time")
    averaged = metrics.crps(forecast.surface_pressure, truth.surface_pressure)
    np.testing.assert_allclose(scores.mean("init_time"), averaged, rtol=1e-12)


def test_spread_skill_ratio_is_about_one_for_a_calibrated_ensemble():
    rng = np.random.default_rng(1)
    m, n_init = 5, 40
    coords = {"init_time": np.arange(n_init), "lead_time": LEADS[:2], **_grid_coords(16, 32)}
    shape = (m, n_init, 2, 16, 32)
    dims = ("member", "init_time", "lead_time", "latitude", "longitude")
    forecast = xr.DataArray(rng.normal(size=shape), dims=dims, coords=coords)
    truth = xr.DataArray(rng.normal(size=shape[1:]), dims=dims[1:], coords=coords)
    ratio = metrics.spread_skill_ratio(forecast, truth)
    assert ratio.dims == ("lead_time",)
    np.testing.assert_allclose(ratio, 1.0, atol=0.03)
    # The uncorrected ratio sqrt(mean var) / RMSE sits near sqrt(M / (M + 1)) = 0.91.
    spread = metrics.area_weighted_mean(
        forecast.var("member", ddof=1), ("init_time", "latitude", "longitude")
    )
    uncorrected = np.sqrt(spread) / metrics.ensemble_mean_rmse(forecast, truth)
    np.testing.assert_allclose(uncorrected, np.sqrt(m / (m + 1)), atol=0.03)
    np.testing.assert_allclose(ratio, uncorrected * np.sqrt((m + 1) / m), rtol=1e-5)


def test_rank_histogram_counts_ranks_per_lead_and_is_flat_when_calibrated():
    rng = np.random.default_rng(2)
    m, n_init = 4, 20
    coords = {"init_time": np.arange(n_init), "lead_time": LEADS, **_grid_coords(16, 32)}
    dims = ("member", "init_time", "lead_time", "latitude", "longitude")
    shape = (m, n_init, 3, 16, 32)
    forecast = xr.DataArray(rng.normal(size=shape), dims=dims, coords=coords)
    truth = xr.DataArray(rng.normal(size=shape[1:]), dims=dims[1:], coords=coords)
    counts = metrics.rank_histogram(forecast, truth)
    assert counts.dims == ("rank", "lead_time")
    np.testing.assert_array_equal(counts["rank"], np.arange(m + 1))
    n_points = n_init * 16 * 32
    np.testing.assert_array_equal(counts.sum("rank"), n_points)
    expected = n_points / (m + 1)
    chi_square = ((counts - expected) ** 2 / expected).sum("rank")
    assert (chi_square < 18.5).all()  # 4 degrees of freedom, p = 0.001
    under = metrics.rank_histogram(0.3 * forecast, truth)
    assert (under.isel(rank=0) > 2 * under.isel(rank=m // 2)).all()
    # A NaN makes its lead's counts NaN, unless skipna leaves the point out.
    truth[0, 1, 0, 0] = np.nan
    with_nan = metrics.rank_histogram(forecast, truth)
    assert np.isnan(with_nan.isel(lead_time=1)).all()
    np.testing.assert_array_equal(with_nan.isel(lead_time=[0, 2]), counts.isel(lead_time=[0, 2]))
    skipped = metrics.rank_histogram(forecast, truth, skipna=True)
    assert float(skipped.isel(lead_time=1).sum()) == n_points - 1


def _energy_reference(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Fair energy score of x [M, ..., F] against y [..., F] with norm sqrt(sum w v^2)."""
    m = x.shape[0]

    def norm(v: np.ndarray) -> np.ndarray:
        return np.sqrt(np.sum(w * v**2, axis=-1))

    skill = np.mean([norm(x[i] - y) for i in range(m)], axis=0)
    pairs = sum(norm(x[i] - x[j]) for i, j in itertools.product(range(m), range(m)))
    return skill - pairs / (2 * m * (m - 1))


def test_energy_score_over_the_grid_matches_a_numpy_reference():
    forecast, truth = _forecast_and_truth(m=3, n_lat=4, n_lon=5)
    es = metrics.energy_score(forecast.temperature, truth.temperature)
    assert es.dims == ("lead_time", "level")
    x = forecast.temperature.values.reshape(3, 2, 3, 2, 20)
    y = truth.temperature.values.reshape(2, 3, 2, 20)
    w = np.repeat(_band_weights(forecast.latitude.values), 5) / 20
    np.testing.assert_allclose(es.values, _energy_reference(x, y, w).mean(0), rtol=1e-5)


def test_energy_score_of_a_one_point_grid_is_the_crps():
    forecast, truth = _forecast_and_truth(m=5, n_lat=1, n_lon=1)
    forecast, truth = forecast[["surface_pressure"]], truth[["surface_pressure"]]
    for fair in (True, False):
        np.testing.assert_allclose(
            metrics.energy_score(forecast, truth, fair=fair).to_array(),
            metrics.crps(forecast, truth, fair=fair).to_array(),
            rtol=1e-6,
        )


def test_nan_points_make_scores_nan_unless_skipna():
    forecast, truth = _forecast_and_truth()
    fc, tr = forecast.surface_pressure.copy(), truth.surface_pressure
    fc[2, 0, 1, 3, 4] = np.nan  # one member, at lead 36 h
    for score in (metrics.crps, metrics.ensemble_mean_rmse, metrics.spread_skill_ratio):
        result = score(fc, tr)
        assert np.isnan(result.sel(lead_time=LEADS[1])), score.__name__
        assert np.isfinite(result.sel(lead_time=LEADS[[0, 2]])).all(), score.__name__
        assert np.isfinite(score(fc, tr, skipna=True)).all(), score.__name__
    assert np.isnan(metrics.brier(fc, tr, 0.0).sel(lead_time=LEADS[1]))
    assert np.isnan(metrics.energy_score(fc, tr).sel(lead_time=LEADS[1]))
    # skipna: the other points, with the area weights renormalised over them.
    per_point = _crps_reference(fc.values, tr.values, fair=True)
    weights = _band_weights(fc.latitude.values)[:, None] * np.ones(fc.longitude.size)
    lead = per_point[:, 1]
    valid = ~np.isnan(lead)
    w = np.broadcast_to(weights, lead.shape)
    expected = np.sum((w * lead)[valid]) / np.sum(w[valid])
    got = metrics.crps(fc, tr, skipna=True).sel(lead_time=LEADS[1])
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_one_member_crps_is_the_absolute_error_and_fair_is_nan():
    forecast, truth = _forecast_and_truth(m=1)
    standard = metrics.crps(forecast, truth, fair=False)
    mae = np.abs(forecast.isel(member=0, drop=True) - truth)
    expected = metrics.area_weighted_mean(mae, ("init_time", "latitude", "longitude"))
    xr.testing.assert_allclose(standard, expected, rtol=1e-6)
    assert np.isnan(metrics.crps(forecast, truth).to_array()).all()


def test_dask_inputs_stay_lazy_and_give_the_same_scores():
    forecast, truth = _forecast_and_truth()
    forecast, truth = forecast[["temperature"]], truth[["temperature"]]
    lazy = metrics.crps(forecast.chunk({"lead_time": 1}), truth.chunk({"lead_time": 1}))
    assert isinstance(lazy.temperature.data, dask.array.Array)
    xr.testing.assert_allclose(lazy.compute(), metrics.crps(forecast, truth))
    ratio = metrics.spread_skill_ratio(forecast.chunk({"init_time": 1}), truth)
    assert isinstance(ratio.temperature.data, dask.array.Array)
    xr.testing.assert_allclose(ratio.compute(), metrics.spread_skill_ratio(forecast, truth))


def test_inputs_that_do_not_line_up_are_refused():
    forecast, truth = _forecast_and_truth()
    shifted = truth.assign_coords(latitude=truth.latitude + 1.0)
    with pytest.raises(ValueError, match="coordinates differ"):
        metrics.crps(forecast, shifted)
    with pytest.raises(ValueError, match="must not have"):
        metrics.crps(forecast, forecast)
    with pytest.raises(ValueError, match="not in the truth"):
        metrics.crps(forecast, truth[["temperature"]])
    with pytest.raises(TypeError, match="DataArray truth"):
        metrics.crps(forecast.temperature, truth)


def _archive(days: int) -> xr.Dataset:
    time = np.datetime64("2000-01-01T00", "ns") + np.arange(4 * days) * np.timedelta64(6, "h")
    hours = (time - time[0]) / np.timedelta64(1, "h")
    field = hours[:, None, None] + np.zeros((1, 6, 8))
    return xr.Dataset(
        {
            "temperature": (("time", "latitude", "longitude"), field),
            "geopotential_at_surface": (("latitude", "longitude"), np.ones((6, 8))),
        },
        coords={"time": time, **_grid_coords(6, 8)},
    )


def test_align_truth_picks_valid_times_and_fills_missing_ones_with_nan():
    forecast, _ = _forecast_and_truth()
    archive = _archive(days=4)  # 2000-01-01T00 .. 2000-01-04T18
    truth = metrics.align_truth(forecast, archive)
    t = truth.temperature
    assert t.dims == ("init_time", "lead_time", "latitude", "longitude")
    # Archive values are hours since 2000-01-01T00: init 01T00 + 36 h -> 02T12 (36 h).
    assert truth.valid_time.sel(init_time=INIT[0], lead_time=LEADS[1]) == np.datetime64(
        "2000-01-02T12", "ns"
    )
    np.testing.assert_array_equal(t.isel(latitude=0, longitude=0), [[12, 36, 72], [36, 60, np.nan]])
    assert truth.geopotential_at_surface.dims == ("latitude", "longitude")
    with pytest.raises(ArchiveError, match="2000-01-05T00:00"):
        metrics.align_truth(forecast, archive, missing="raise")
    # The aligned truth scores directly against the forecast (NaN where missing).
    rmse = metrics.ensemble_mean_rmse(forecast.temperature, t.drop_vars("valid_time"))
    assert rmse.dims == ("lead_time", "level")
    assert np.isnan(rmse.sel(lead_time=LEADS[2])).all()


def test_align_truth_on_a_data_array_and_a_scalar_init_time():
    archive = _archive(days=2).temperature
    forecast = xr.Dataset(coords={"init_time": INIT[0], "lead_time": LEADS[:2]})
    truth = metrics.align_truth(forecast, archive, missing="raise")
    assert truth.dims == ("lead_time", "latitude", "longitude")
    np.testing.assert_array_equal(truth.isel(latitude=0, longitude=0), [12, 36])


def _acc_reference(x: np.ndarray, y: np.ndarray, c: np.ndarray, w: np.ndarray) -> np.ndarray:
    """WeatherBench2's ACC by its definition, float64, with explicit loops over inits and leads:
    x [M, init, lead, lat, lon], y and c [init, lead, lat, lon], w [lat, lon] (0 outside the
    region) -> [lead], the mean over inits."""
    acc = np.empty(y.shape[:2])
    for i, j in itertools.product(range(y.shape[0]), range(y.shape[1])):
        f = x[:, i, j].mean(0) - c[i, j]
        o = y[i, j] - c[i, j]
        acc[i, j] = np.sum(w * f * o) / np.sqrt(np.sum(w * f * f) * np.sum(w * o * o))
    return acc.mean(0)


def test_anomaly_correlation_matches_a_brute_force_computation():
    from weather.scoring.regions import Region

    forecast, truth = _forecast_and_truth(m=3, n_lat=8, n_lon=12, seed=4)
    rng = np.random.default_rng(5)
    # A climatology off the truth by a smooth anomaly plus noise.
    climatology = xr.Dataset(
        {
            n: truth[n] - 3.0 * np.cos(np.deg2rad(truth.longitude)) + rng.normal(size=da.shape)
            for n, da in truth.data_vars.items()
        }
    )
    lat = forecast.latitude.values
    box = Region.box(-50, 30, 300, 60)  # across the 0/360 meridian
    inside = ((lat >= -50) & (lat <= 30))[:, None] & (
        (forecast.longitude.values >= 300) | (forecast.longitude.values <= 60)
    )[None, :]
    got = metrics.anomaly_correlation(forecast, truth, climatology)
    boxed = metrics.anomaly_correlation(forecast, truth, climatology, region=box)
    assert got.temperature.dims == ("lead_time", "level")
    assert got.surface_pressure.dims == ("lead_time",)
    w = _band_weights(lat)[:, None] * np.ones(inside.shape)
    for name, at in (("temperature", {"level": 500}), ("temperature", {"level": 850}),
                     ("surface_pressure", {})):  # fmt: skip
        x, y, c = (d[name].sel(at).values for d in (forecast, truth, climatology))
        # The ensemble mean and anomalies in float32 (the kernels), float64 sums: |anomaly| ~ 1
        # to 10 against fields of ~250, so float32 rounding of the mean (~250 * 6e-8 = 1.5e-5)
        # is ~1e-5 of an anomaly, and the correlation moves by less. Measured: at most 2.5e-7
        # absolute; 1e-5 leaves room. Dropping the area weights moves it by 0.04 to 0.06.
        np.testing.assert_allclose(
            got[name].sel(at).values, _acc_reference(x, y, c, w), atol=1e-5, err_msg=name
        )
        np.testing.assert_allclose(
            boxed[name].sel(at).values,
            _acc_reference(x, y, c, w * inside),
            atol=1e-5,
            err_msg=f"{name} box",
        )


def test_anomaly_correlation_identities():
    forecast, truth = _forecast_and_truth(m=2, seed=6)
    # Values exact in float32, so that the float32 ensemble mean of members equal to the
    # climatology is the climatology itself.
    climatology = (truth * 0.5 + 10.0).astype(np.float32).astype(np.float64)
    perfect = forecast * 0 + truth  # every member the truth
    one = metrics.anomaly_correlation(perfect, truth, climatology)
    np.testing.assert_allclose(one.temperature.values, 1.0, rtol=1e-6)
    # The anomaly turned over: -1; the climatology as the forecast: NaN (no forecast anomaly).
    mirror = 2 * climatology - truth
    minus = metrics.anomaly_correlation(forecast * 0 + mirror, truth, climatology)
    np.testing.assert_allclose(minus.temperature.values, -1.0, rtol=1e-6)
    none = metrics.anomaly_correlation(forecast * 0 + climatology, truth, climatology)
    assert np.isnan(none.temperature.values).all()
    kept = metrics.anomaly_correlation(forecast, truth, climatology, over_init_time=False)
    assert kept.temperature.dims == ("init_time", "lead_time", "level")
    np.testing.assert_allclose(
        kept.temperature.mean("init_time").values,
        metrics.anomaly_correlation(forecast, truth, climatology).temperature.values,
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="truth and climatology coordinates differ"):
        metrics.anomaly_correlation(forecast, truth, climatology.isel(latitude=slice(1, None)))
    with pytest.raises(ValueError, match="surface_pressure: not in the climatology"):
        metrics.anomaly_correlation(forecast, truth, climatology[["temperature"]])
