"""benchmarks/spread_by_scale.py on a hand-made evaluation out-dir whose members, mean error and
truth are single spherical harmonics, so every band's answer is known in closed form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from support import real_harmonic

REPO = Path(__file__).resolve().parents[2]
LAT = np.linspace(-87.1875, 87.1875, 32)
LON = np.arange(64) * 5.625
INIT = np.datetime64("1990-01-01T00", "ns")
LEAD = np.timedelta64(12, "h").astype("timedelta64[ns]")


def harmonic(degree: int, order: int) -> np.ndarray:
    return real_harmonic(LAT, LON, degree, order)


def test_bands_against_closed_forms(tmp_path):
    c = 0.6
    # The truth: degree 1 (power 4 / 4 pi) and degree 6 (power 1 / 4 pi).
    truth_field = 2.0 * harmonic(1, 0) + harmonic(6, 2)
    error = harmonic(2, 1)  # the ensemble mean's error: degree 2, power 1 / (4 pi)
    deviation = c * harmonic(5, -3)  # members' deviations: degree 5, power c^2 / (4 pi)
    members = np.stack([truth_field + error + deviation, truth_field + error - deviation])
    forecast = xr.Dataset(
        {
            "geopotential": (
                ("member", "init_time", "lead_time", "level", "latitude", "longitude"),
                members[:, None, None, None],
            )
        },
        coords={
            "member": [0, 1],
            "init_time": [INIT],
            "lead_time": [LEAD],
            "level": [500],
            "latitude": LAT,
            "longitude": LON,
        },
    )
    store = tmp_path / "eval" / "forecasts" / "model" / "1990-01-01T00.zarr"
    store.parent.mkdir(parents=True)
    forecast.to_zarr(store, consolidated=False)
    store.with_name(store.name + ".done").touch()
    truth = xr.Dataset(
        {"geopotential": (("time", "level", "latitude", "longitude"), truth_field[None, None])},
        coords={"time": [INIT + LEAD], "level": [500], "latitude": LAT, "longitude": LON},
    )
    truth.to_zarr(tmp_path / "truth.zarr", consolidated=False)

    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/spread_by_scale.py",
            str(tmp_path / "eval"),
            "--archive",
            str(tmp_path / "truth.zarr"),
            "--leads",
            "12",
            "--bands",
            "0-3,4-7",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)["runs"][str(tmp_path / "eval")]["z500"]["12"]
    four_pi = 4.0 * np.pi
    # The canonical reader hands the truth over as float32 (measured 1.7e-8 relative on the
    # power ratio); the analysis itself recovers single harmonics to ~1e-15.
    tol = 1e-6
    # Degrees 0-3 hold the truth and the error: RMS error sqrt(1 / 4 pi); no spread there.
    assert got["0-3"]["error"] == pytest.approx(np.sqrt(1 / four_pi), rel=tol)
    assert got["0-3"]["spread"] == pytest.approx(0.0, abs=1e-12)
    # Members' power there: (4 + 1) / 4 pi against the truth's 4 / 4 pi.
    assert got["0-3"]["power_ratio"] == pytest.approx(5 / 4, rel=tol)
    # Degrees 4-7: unbiased variance 2 c^2 / 4 pi (M / (M - 1) = 2), no error; each member
    # carries the truth's 1 / 4 pi and its deviation's c^2 / 4 pi (the mean field would not).
    assert got["4-7"]["power_ratio"] == pytest.approx(1 + c * c, rel=tol)
    assert got["4-7"]["spread"] == pytest.approx(np.sqrt(2 * c * c / four_pi), rel=tol)
    assert got["4-7"]["error"] == pytest.approx(0.0, abs=tol)  # float32 truth: ~4e-9
    # All degrees: sqrt((M + 1) / M * 2 c^2 / 1) = sqrt(3) c.
    assert got["all"]["spread_skill"] == pytest.approx(np.sqrt(3.0) * c, rel=tol)


def test_suggested_degree_scales_average_runs_and_mark_every_change():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "spread_by_scale", REPO / "benchmarks" / "spread_by_scale.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(*ratios: float) -> dict:
        bands = ("0-3", "4-7", "8-15", "16-31")
        return {
            "z500": {"12": {b: {"spread_skill": r} for b, r in zip(bands, ratios, strict=True)}}
        }

    # Two runs averaged: 1 / mean(0.4, 0.6) = 2; 4-7 and 8-15 within 5 % of 1 -> 1, written
    # at 4 because the factor changes there; 16-31: 1 / 4 clipped to 0.5.
    runs = {"a": run(0.4, 0.97, 1.0, 3.0), "b": run(0.6, 0.99, 1.02, 5.0)}
    text = module.suggest(runs, {"z500": "geopotential@500"}, "12", ["0-3", "4-7", "8-15", "16-31"])
    assert text == (
        "degree_scale.geopotential@500.0=2,degree_scale.geopotential@500.4=1,"
        "degree_scale.geopotential@500.16=0.5"
    )
