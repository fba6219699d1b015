"""`weather forecast --out f.grib2` (and --format): the same ensemble as `--out f.zarr`, every
value read back with cfgrib within the packing step; an unknown format or an existing file is
refused by name before the model runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from service_support import service_files

from weather.cli import main
from weather.data.grib import packing_step
from weather.data.variables import CATALOGUE

INIT = "2001-01-03T00"


def _forecast(files, out: Path, *extra: str) -> int:
    args = f"forecast --checkpoint {files.checkpoint} --archive {files.archive} --init {INIT}"
    args += f" --lead 24h --members 2 --seed 3 --sampler 2m:2 --chunk-steps 2 --out {out} --quiet"
    return main([*args.split(), *extra])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, archive, statistics) -> dict[str, Path]:
    """The same forecast written as Zarr, GRIB2 (by its ending) and NetCDF (by --format)."""
    files = service_files(tmp_path_factory, archive, statistics)
    root = tmp_path_factory.mktemp("cli-outputs")
    written = {
        "zarr": root / "f.zarr",
        "grib2": root / "f.grib2",
        "netcdf": root / "forecast.cdf",
    }
    for fmt, out in written.items():
        extra = ("--format", "netcdf") if fmt == "netcdf" else ()
        assert _forecast(files, out, *extra) == 0, fmt
    return written


def test_grib2_holds_every_value_of_the_zarr_forecast(outputs):
    want = xr.open_zarr(outputs["zarr"]).load()
    assert want.sizes["member"] == 2 and want.sizes["lead_time"] == 2
    for kind in ("isobaricInhPa", "surface"):
        got = xr.open_dataset(
            outputs["grib2"],
            engine="cfgrib",
            backend_kwargs={"indexpath": "", "filter_by_keys": {"typeOfLevel": kind}},
            decode_timedelta=True,
        ).load()
        assert got["time"].values == want["init_time"].values[0]
        names = [n for n in want.data_vars if ("level" in want[n].dims) == (kind != "surface")]
        assert sorted(got.data_vars) == sorted(CATALOGUE[str(n)].short_name for n in names)
        for name in names:
            field = want[name]
            x = got[CATALOGUE[str(name)].short_name]
            x = x.rename(number="member", step="lead_time").expand_dims(init_time=1)
            if "level" in field.dims:
                x = x.rename(isobaricInhPa="level").sel(level=field["level"].values)
            x = x.transpose(*field.dims)
            np.testing.assert_array_equal(x["lead_time"].values, field["lead_time"].values)
            np.testing.assert_array_equal(x["latitude"].values, field["latitude"].values)
            # Per field, within 24-bit simple packing's step plus float32 rounding
            # (weather/data/grib.py derives the step).
            y = field.values.astype(np.float64).reshape(
                -1, field.latitude.size * field.longitude.size
            )
            step = np.array([packing_step(f, 24) for f in y])
            rounding = np.spacing(np.abs(y).max(axis=1).astype(np.float32))
            error = np.abs(x.values.reshape(y.shape) - y).max(axis=1)
            assert (error <= step + rounding).all(), name


def test_netcdf_by_format_is_the_zarr_forecast(outputs):
    want = xr.open_zarr(outputs["zarr"]).load()
    with xr.open_dataset(outputs["netcdf"], decode_timedelta=True) as got:
        assert got.attrs["Conventions"] == want.attrs["Conventions"] == "CF-1.8"
        for name in want.data_vars:  # the same compiled program: bit for bit
            np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=str(name))


def test_unknown_format_and_existing_file_are_refused(
    outputs, tmp_path_factory, archive, statistics, capsys
):
    files = service_files(tmp_path_factory, archive, statistics)
    capsys.readouterr()
    assert _forecast(files, outputs["zarr"].with_name("g"), "--format", "grib1") == 2
    assert "--format" in (err := capsys.readouterr().err) and "'grib1'" in err, err
    assert not outputs["zarr"].with_name("g").exists()
    before = outputs["grib2"].read_bytes()
    assert _forecast(files, outputs["grib2"]) == 2
    assert "exists" in (err := capsys.readouterr().err) and "f.grib2" in err, err
    assert outputs["grib2"].read_bytes() == before
