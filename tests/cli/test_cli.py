"""The command line: each command runs and bad input exits 2 with a message naming the problem."""

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

from weather.cli import main
from weather.data.reader import open_archive

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


def test_serve_falls_back_to_the_embedded_archive_only_for_the_default(tmp_path, monkeypatch):
    from service.cli import with_embedded_archive
    from service.settings import Settings

    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("WEATHER_"):
            monkeypatch.delenv(name)
    named = Settings(archive=tmp_path / "mine.zarr")
    assert with_embedded_archive(named, days=1, progress=False) is named
    settings = with_embedded_archive(Settings(), days=1, progress=False)
    assert settings.archive == Path("data/demo/archive.zarr")
    ds = open_archive(settings.archive)
    assert ds.sizes["time"] == 4 and str(ds["time"].values[0])[:13] == "1991-01-01T00"
    # Once the standard archive exists it is served as it is.
    (tmp_path / "data" / "era5sim" / "test.zarr").mkdir(parents=True)
    assert with_embedded_archive(Settings(), days=1, progress=False).archive == Path(
        "data/era5sim/test.zarr"
    )
