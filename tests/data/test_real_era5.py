"""A real ERA5 file end to end, without network (tests/data/era5/README.md says where it is from).

The CDS's GRIB (cfgrib names, latitude 90..-90, 61 rows with both poles, geopotential and
temperature on two levels) is read, regridded conservatively onto 32 x 17 (pole rows kept), and
then trained on for a few steps with only the variables it holds, forecast 24 h and scored, all
through `weather.cli.main` as a user would; asking for a variable it lacks is one clear line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from weather.cli import main
from weather.data.grid import cell_area_weights
from weather.data.reader import open_archive

ERA5 = Path(__file__).parent / "era5" / "era5-levels-member0.grib"


def test_the_reader_makes_the_cds_grib_canonical():
    ds = open_archive(ERA5)
    assert sorted(ds.data_vars) == ["geopotential", "temperature"]
    assert ds["level"].values.tolist() == [500, 850]
    lat = ds["latitude"].values
    assert (lat[0], lat[-1], lat.size, ds.sizes["longitude"]) == (-90.0, 90.0, 61, 120)
    assert ds.sizes["time"] == 4
    # Real values in canonical units: z500 of a January day ~ 5.0e4-5.9e4 m2 s-2, t850 in K.
    z500 = ds["geopotential"].sel(level=500).values
    assert z500.min() > 4.5e4 and z500.max() < 6.0e4
    t850 = ds["temperature"].sel(level=850).values
    assert t850.min() > 220 and t850.max() < 310
    # No cfgrib index file is left beside the archive.
    assert not list(ERA5.parent.glob("*.idx"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """The file regridded to 32 x 17 (odd: pole rows) through `weather data regrid`."""
    out = tmp_path_factory.mktemp("era5") / "era5-32x17.zarr"
    assert main(["data", "regrid", str(ERA5), str(out), "--grid", "32x17"]) == 0
    return out


def test_regridding_the_real_file_keeps_its_global_means(small):
    source, target = open_archive(ERA5), open_archive(small)
    assert target.sizes["latitude"] == 17 and target["latitude"].values[0] == -90.0

    def global_mean(ds: xr.Dataset) -> np.ndarray:
        w = cell_area_weights(ds["latitude"].values)[:, None]
        return (ds["temperature"].values * w).mean(axis=(-2, -1))

    # Conservative: the area mean is kept up to float32 rounding of ~250 K values (computed in
    # float64, stored as float32: a few ulps of 250 K, 1e-4 K).
    np.testing.assert_allclose(global_mean(target), global_mean(source), atol=1e-3)


def test_train_forecast_and_score_on_what_the_archive_holds(small, tmp_path, capsys):
    run = tmp_path / "run"
    train = [
        "train", "--train-archive", str(small), "--val-archive", str(small),
        "--run-dir", str(run), "--arch", "unet", "--unet-channels", "8,16", "--noise", "iid",
        "--steps", "2", "--batch-size", "1", "--warmup", "1", "--validate-every", "2",
        "--quiet",
    ]  # fmt: skip
    assert main(train) == 0
    forecast = tmp_path / "f.zarr"
    checkpoint = str(run / "checkpoint.msgpack")
    predict = [
        "forecast", "--checkpoint", checkpoint, "--archive", str(small), "--init",
        "2017-01-01T12", "--lead", "24", "--members", "2", "--out", str(forecast), "--quiet",
    ]  # fmt: skip
    assert main(predict) == 0
    fc = xr.open_zarr(forecast)
    assert sorted(fc.data_vars) == ["geopotential", "temperature"]
    assert fc.sizes["latitude"] == 17 and fc.sizes["lead_time"] == 2
    scores_path = tmp_path / "s.nc"
    assert (
        main(
            ["score", "--forecast", str(forecast), "--truth", str(small), "--out", str(scores_path)]
        )
        == 0
    )
    scores = xr.open_dataset(scores_path)
    crps = scores["geopotential"].sel(metric="crps", level=500)
    assert np.isfinite(crps.values).all() and (crps.values > 0).all()
    # Asking for what the archive lacks: one line, naming it and what the archive holds.
    capsys.readouterr()
    lacking = [*train[:-1], "--variables", "geopotential,u_component_of_wind", "--quiet"]
    lacking[lacking.index("--run-dir") + 1] = str(tmp_path / "other")
    assert main(lacking) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks ['u_component_of_wind'] (asked by --variables)" in err[0]
    assert "it holds ['geopotential', 'temperature']" in err[0]
