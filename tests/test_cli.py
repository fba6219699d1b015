"""The command line: each command runs and bad input exits 2 with a message naming the problem."""

import json

import numpy as np
import xarray as xr

from weather.cli import main

TINY = "--resolution T21 --layers 8 --dt-minutes 60 --spinup-days 2 --levels 250,500,850,925"


def test_simulate_check_stats(tmp_path, capsys):
    store = tmp_path / "a.zarr"
    cache = tmp_path / "c"
    simulate = f"data simulate --out {store} --start 2001-03-01 --days 1 --seed 7 --chunk-days 1"
    assert main(f"{simulate} --cache-dir {cache} --quiet {TINY}".split()) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["progress"]["complete"] is True
    assert xr.open_zarr(store).sizes["time"] == 4
    assert main(f"data check {store} --json".split()) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["times"] == 4 and 900 < report["surface_pressure_global_mean_hPa"] < 1010
    out = tmp_path / "s" / "stats.nc"
    stats_cmd = f"data stats {store} --start 2001-03-01 --end 2001-03-01T18 --out {out}"
    assert main(stats_cmd.split()) == 0
    stats = xr.open_dataset(out)
    assert np.isfinite(stats["temperature_std"]).all()


def test_errors_exit_2_with_the_reason(tmp_path, capsys):
    missing = tmp_path / "none.msgpack"
    forecast = f"forecast --checkpoint {missing} --init 2001-01-01 --out {tmp_path / 'f.zarr'}"
    assert main(forecast.split()) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(f"data check {tmp_path / 'missing.zarr'}".split()) == 2
    assert "missing.zarr" in capsys.readouterr().err
