"""Batch scoring: lazy, chunked scores of Zarr archives equal the in-memory metrics."""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from support import synthetic_archive

from weather.baselines import persistence
from weather.data.errors import ArchiveError
from weather.scoring import metrics
from weather.scoring.batch import FORECAST_CHUNKS, score_archive, score_to_file

INITS = ["2001-01-01T12", "2001-01-02T00", "2001-01-02T12"]
LEADS = np.array([12, 24, 36], "timedelta64[h]")


@pytest.fixture(scope="module")
def truth() -> xr.Dataset:
    return synthetic_archive(n_lat=4, n_lon=8, days=4)


@pytest.fixture(scope="module")
def forecast(truth) -> xr.Dataset:
    """Persistence plus noise: 3 members, float32."""
    base = persistence(truth, INITS, LEADS)
    rng = np.random.default_rng(0)
    fc = base.isel(member=[0, 0, 0]).assign_coords(member=np.arange(3))
    for name, da in fc.data_vars.items():
        noise = rng.standard_normal(da.shape) * float(truth[name].std())
        fc[name] = (da + noise.astype(np.float32) * 0.3).astype(np.float32)
    return fc


@pytest.fixture(scope="module")
def stores(tmp_path_factory, forecast, truth) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scoring")
    forecast.chunk(FORECAST_CHUNKS).to_zarr(root / "f.zarr", zarr_format=3, consolidated=False)
    truth.chunk({"time": 4}).to_zarr(root / "t.zarr", zarr_format=3, consolidated=False)
    return root / "f.zarr", root / "t.zarr"


@pytest.fixture(scope="module")
def expected(forecast, truth) -> xr.Dataset:
    """The metrics functions on numpy data, stacked by hand."""
    aligned = metrics.align_truth(forecast, truth[list(forecast.data_vars)])
    scores = [
        metrics.crps(forecast, aligned),
        metrics.ensemble_mean_rmse(forecast, aligned),
        metrics.spread_skill_ratio(forecast, aligned),
    ]
    return xr.concat(scores, "metric", data_vars="all", coords="minimal", compat="override")


def _assert_equal_scores(actual: xr.Dataset, expected: xr.Dataset) -> None:
    assert list(actual["metric"].values) == ["crps", "rmse", "spread_skill"]
    assert set(actual.data_vars) == set(expected.data_vars)
    for name in expected.data_vars:
        assert actual[name].dims[:2] == ("metric", "lead_time")
        np.testing.assert_allclose(
            actual[name].transpose(*expected[name].dims).values,
            expected[name].values,
            rtol=1e-6,
            err_msg=str(name),
        )
    np.testing.assert_array_equal(actual["lead_time"].values, LEADS.astype("m8[ns]"))


def test_lazy_scores_of_zarr_archives_equal_in_memory_scores(stores, expected):
    fc = xr.open_zarr(stores[0], chunks=FORECAST_CHUNKS, consolidated=False)
    truth = xr.open_zarr(stores[1], consolidated=False)
    lazy = score_archive(fc, truth)
    assert lazy["temperature"].chunks is not None  # still a graph
    scores = lazy.compute()
    assert scores["temperature"].dims == ("metric", "lead_time", "level")
    assert scores["surface_pressure"].dims == ("metric", "lead_time")
    assert scores["temperature"].attrs["variable_units"] == "K"
    _assert_equal_scores(scores, expected)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_score_to_file_writes_and_reads_back(stores, expected, tmp_path, suffix, capsys):
    out = tmp_path / f"scores{suffix}"
    written = score_to_file(*stores, out)
    assert "[" in capsys.readouterr().out  # dask's progress bar
    if suffix == ".nc":
        back = xr.open_dataset(out).load()
    else:
        back = xr.open_zarr(out, consolidated=False).load()
    _assert_equal_scores(back, expected)
    xr.testing.assert_allclose(back, written)
    with pytest.raises(FileExistsError):
        score_to_file(*stores, out)


def test_a_dask_cluster_gives_the_same_scores(stores, expected, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        scores = score_to_file(
            *stores, tmp_path / "s.nc", client_address=cluster.scheduler_address, progress=False
        )
    _assert_equal_scores(scores, expected)


def test_errors(stores, forecast, truth, tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        score_archive(forecast, truth, metrics=("crps", "brier"))
    with pytest.raises(ArchiveError, match="lacks 1 valid time"):
        score_archive(forecast, truth.sel(time=slice(None, "2001-01-03T23")))
    with pytest.raises(ArchiveError, match="'surface_pressure' is missing from the truth"):
        score_archive(forecast, truth.drop_vars("surface_pressure"))
    with pytest.raises(ArchiveError, match="lacks \\[850\\] hPa"):
        score_archive(forecast, truth.sel(level=[500]))
    with pytest.raises(ValueError, match=r"\.nc .*or \.zarr"):
        score_to_file(*stores, tmp_path / "s.csv")


def test_one_member_standard_crps_is_the_mae_per_init_time(truth):
    fc = persistence(truth, INITS, LEADS, variables=["temperature"])
    scores = score_archive(fc, truth, ("crps_standard",), over_init_time=False).compute()
    assert scores["temperature"].dims == ("metric", "lead_time", "init_time", "level")
    error = abs(fc["temperature"].isel(member=0) - metrics.align_truth(fc, truth["temperature"]))
    mae = metrics.area_weighted_mean(error)
    np.testing.assert_allclose(
        scores["temperature"].sel(metric="crps_standard").transpose(*mae.dims).values,
        mae.values,
        rtol=1e-6,
    )


def test_regions_add_a_region_dim_with_the_in_memory_regional_scores(stores, forecast, truth):
    from weather.scoring.regions import REGIONS, Region

    # The 4 x 8 grid's rows are +-22.5 and +-67.5: no tropical row.
    regions = [REGIONS["global"], REGIONS["extra-tropics-north"], Region.box(-30, 70, 300, 60)]
    fc = xr.open_zarr(stores[0], chunks=FORECAST_CHUNKS, consolidated=False)
    lazy = score_archive(fc, xr.open_zarr(stores[1], consolidated=False), regions=regions)
    scores = lazy.compute()
    assert scores["temperature"].dims == ("metric", "region", "lead_time", "level")
    assert scores["surface_pressure"].dims == ("metric", "region", "lead_time")
    assert scores["region"].values.tolist() == [
        "global",
        "extra-tropics-north",
        "box(-30,70,300,60)",
    ]
    assert "extra-tropics-north: latitude 20..90" in scores["region"].attrs["definitions"]
    aligned = metrics.align_truth(forecast, truth[list(forecast.data_vars)])
    want = metrics.crps(forecast, aligned, region=regions)
    for name in forecast.data_vars:
        # The same kernels and means, chunk by chunk (one init and lead per chunk) instead of
        # whole: equal but for the summation order of the init-time mean, ~1e-7 relative.
        np.testing.assert_allclose(
            scores[name].sel(metric="crps").transpose(*want[name].dims).values,
            want[name].values,
            rtol=1e-6,
            err_msg=str(name),
        )
    # The global region is the file without regions, bit for bit.
    plain = score_archive(fc, xr.open_zarr(stores[1], consolidated=False)).compute()
    xr.testing.assert_identical(
        scores.sel(region="global", drop=True)["temperature"], plain["temperature"]
    )
    with pytest.raises(ValueError, match=r"region 'tropics'.*holds no grid point"):
        score_archive(forecast, truth, regions=[REGIONS["tropics"]])


@pytest.fixture(scope="module")
def training() -> xr.Dataset:
    """Another run's weeks around the forecasts' valid times (1-4 January): the climatology."""
    return synthetic_archive(n_lat=4, n_lon=8, days=24, start="2000-12-18", seed=1)


def test_acc_against_the_climatology_of_training_archives(forecast, truth, training, tmp_path):
    from weather.scoring.climatology import climatological_mean

    scores = score_archive(forecast, truth, ("acc", "rmse"), climatology=training).compute()
    assert scores["temperature"].dims == ("metric", "lead_time", "level")
    assert scores.attrs["climatology"] == "[2000-12-18T00:00, 2001-01-10T18:00], window 61 days"
    names = list(forecast.data_vars)
    aligned = metrics.align_truth(forecast, truth[names])
    valid = (forecast["init_time"] + forecast["lead_time"]).values.reshape(-1)
    clim = metrics.align_truth(forecast, climatological_mean(training, valid, variables=names))
    want = metrics.anomaly_correlation(forecast, aligned, clim.drop_vars("valid_time"))
    for name in names:
        got = scores[name].sel(metric="acc").transpose(*want[name].dims).values
        # The same computation chunk by chunk against whole arrays (see above).
        np.testing.assert_allclose(got, want[name].values, rtol=1e-6, err_msg=name)
        assert (np.abs(got) <= 1).all() and np.isfinite(got).all()
    with pytest.raises(ValueError, match=r"\['acc'\] need a climatology"):
        score_archive(forecast, truth, ("crps", "acc"))
    with pytest.raises(ArchiveError, match="coordinate 'latitude' differs from the forecast's"):
        score_archive(forecast, truth, ("acc",), climatology=training.isel(latitude=[1, 0, 2, 3]))
    with pytest.raises(ArchiveError, match="no time at the time of day"):
        score_archive(forecast, truth, ("acc",), climatology=training.isel(time=slice(0, None, 4)))


def test_score_to_file_with_regions_and_acc(stores, training, tmp_path):
    from weather.scoring.regions import named_regions

    clim_store = tmp_path / "train.zarr"
    training.to_zarr(clim_store, zarr_format=3, consolidated=False)
    out = tmp_path / "regional.nc"
    regions = named_regions("global,extra-tropics-south")
    written = score_to_file(
        *stores,
        out,
        metrics=("crps", "acc"),
        regions=regions,
        climatology_paths=[clim_store],
        progress=False,
    )
    back = xr.open_dataset(out).load()
    assert back["region"].values.tolist() == ["global", "extra-tropics-south"]
    assert back["metric"].values.tolist() == ["crps", "acc"]
    xr.testing.assert_allclose(back, written)
