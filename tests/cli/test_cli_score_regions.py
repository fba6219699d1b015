"""`weather score --regions/--box` and `--metrics acc --climatology`: the library's numbers in a
file with a region dim, and bad options refused naming the option."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr
from support import synthetic_archive

from weather.baselines import persistence
from weather.cli import main
from weather.scoring.batch import FORECAST_CHUNKS, score_archive
from weather.scoring.regions import Region, named_regions


@pytest.fixture(scope="module")
def stores(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A 2-member forecast (persistence plus noise) of the 8 x 16 truth, the truth, and
    another run's weeks around the valid times as the climatology."""
    root = tmp_path_factory.mktemp("score-regions")
    truth = synthetic_archive(n_lat=8, n_lon=16, days=4)
    climatology = synthetic_archive(n_lat=8, n_lon=16, days=24, start="2000-12-18", seed=1)
    base = persistence(truth, ["2001-01-01T12", "2001-01-02T00"], np.array([12, 24], "m8[h]"))
    forecast = base.isel(member=[0, 0]).assign_coords(member=[0, 1])
    rng = np.random.default_rng(1)
    for name, da in forecast.data_vars.items():
        noise = rng.standard_normal(da.shape) * 0.3 * float(truth[name].std())
        forecast[name] = (da + noise).astype(np.float32)
    paths = {k: root / f"{k}.zarr" for k in ("forecast", "truth", "climatology")}
    forecast.chunk(FORECAST_CHUNKS).to_zarr(paths["forecast"], zarr_format=3, consolidated=False)
    truth.to_zarr(paths["truth"], zarr_format=3, consolidated=False)
    climatology.to_zarr(paths["climatology"], zarr_format=3, consolidated=False)
    return paths, forecast, truth, climatology


def test_score_writes_regional_scores_and_acc(stores, tmp_path):
    paths, forecast, truth, climatology = stores
    out = tmp_path / "scores.nc"
    args = (
        f"score --forecast {paths['forecast']} --truth {paths['truth']} --out {out} --quiet "
        "--regions global,tropics,extra-tropics-north,extra-tropics-south --box 30,70,350,40 "
        "--box=-60,-20,0,90 "
        f"--metrics crps,rmse,acc --climatology {paths['climatology']}"
    )
    assert main(args.split()) == 0
    scores = xr.open_dataset(out).load()
    regions = [*named_regions("global,tropics,extra-tropics-north,extra-tropics-south")]
    regions += [Region.box(30, 70, 350, 40), Region.box(-60, -20, 0, 90)]
    assert scores["region"].values.tolist() == [r.name for r in regions]
    assert scores["temperature"].dims == ("metric", "region", "lead_time", "level")
    want = score_archive(
        forecast, truth, ("crps", "rmse", "acc"), regions=regions, climatology=climatology
    ).compute()
    for name in ("temperature", "surface_pressure"):
        # The same computation from the Zarr stores, chunk by chunk: ~1e-7 relative.
        np.testing.assert_allclose(scores[name].values, want[name].values, rtol=1e-6, err_msg=name)


def test_score_without_regions_keeps_the_global_layout(stores, tmp_path):
    paths, *_ = stores
    out = tmp_path / "scores.nc"
    args = f"score --forecast {paths['forecast']} --truth {paths['truth']} --out {out} --quiet"
    assert main(args.split()) == 0
    scores = xr.open_dataset(out)
    assert "region" not in scores.dims
    assert scores["temperature"].dims == ("metric", "lead_time", "level")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("--regions global,arctic", r"--regions: regions: unknown \['arctic'\]; choose from"),
        ("--box 10,20,30", "--box: box: '10,20,30' must be four numbers"),
        ("--box 20,10,0,30", r"--box: region 'box\(20,10,0,30\)': latitude band \(20, 10\)"),
        ("--metrics crps,acc", r"--metrics: \['acc'\] need --climatology"),
        ("--box 1,2,0,360", r"region 'box\(1,2,0,360\)' .* holds no grid point"),
    ],
)
def test_bad_options_are_refused_naming_them(stores, tmp_path, capsys, options, message):
    paths, *_ = stores
    out = tmp_path / "scores.nc"
    args = f"score --forecast {paths['forecast']} --truth {paths['truth']} --out {out} --quiet"
    assert main(f"{args} {options}".split()) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()
