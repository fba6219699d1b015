"""Every score the service reports equals the same score computed here from its own ensemble.

Three jobs run through an in-process server (its worker a thread, the three sharing sampling
calls): the globe with every variable and level, a box across the dateline, and a box on the
southern edge of the grid whose last lead lies past the archive's end. Each job's ensemble is
downloaded (`GET /forecast/{id}/result`) and its scores (`GET /forecast/{id}/scores`); every row
(variable, level, lead) must equal, for fair CRPS, ensemble-mean RMSE and the spread/skill ratio,
a brute-force float64 numpy computation on that ensemble against the archive's analysis at the
valid time, area-weighted with exact cell areas of the whole grid (a box's edge rows are cells
of the grid, not polar caps); the global job also against `weather.scoring.metrics` called
directly. Unverified leads must have null scores, and no row may be missing or extra.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import numpy as np
import pytest
import xarray as xr
from service_support import INIT, server_thread, service_files, tiny_settings, wait_for

from weather.scoring import metrics

JOBS: dict[str, dict[str, Any]] = {
    "globe": {"init_time": INIT, "lead": "P2D", "members": 3, "seed": 7},
    "dateline": {
        "init_time": "2001-01-04T12:00Z",
        "lead": "P1D",
        "members": 3,
        "seed": 8,
        "variables": ["temperature", "geopotential", "surface_pressure"],
        "levels": [850],
        "region": {"lat_min": 20, "lat_max": 60, "lon_min": 300, "lon_max": 40},
    },
    # The archive ends at 2001-01-12T18: the 12 h lead verifies, the 24 h lead does not.
    "south": {
        "init_time": "2001-01-12T00:00Z",
        "lead": "P1D",
        "members": 2,
        "seed": 9,
        "variables": ["u_component_of_wind", "v_component_of_wind"],
        "levels": [500],
        "region": {"lat_min": -90, "lat_max": -40, "lon_min": 0, "lon_max": 360},
    },
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    """``{job name: (ensemble, scores)}`` of the three jobs, downloaded from the service."""
    files = service_files(tmp_path_factory, archive, statistics)
    root = tmp_path_factory.mktemp("service-scores-reference")
    settings = tiny_settings(
        files,
        root / "data",
        worker_process=False,
        batch_window_s=0.5,
    )
    out = {}
    with server_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        ids = {}
        for name, body in JOBS.items():
            r = client.post("/forecast", json=body)
            assert r.status_code == 202, r.text
            ids[name] = r.json()["id"]
        for name, job_id in ids.items():
            done = wait_for(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=240)
            assert done["status"] == "succeeded", done
            r = client.get(f"/forecast/{job_id}/result", params={"format": "netcdf"})
            assert r.status_code == 200 and r.headers["x-forecast-complete"] == "true"
            path = root / f"{name}.nc"
            path.write_bytes(r.content)
            with xr.open_dataset(path) as nc:
                ensemble = nc.load()
            scores = client.get(f"/forecast/{job_id}/scores")
            assert scores.status_code == 200, scores.text
            out[name] = (ensemble, scores.json())
    return out


def cell_areas(latitude: np.ndarray) -> dict[float, float]:
    """Area of one cell of each row of an equiangular grid, by its latitude: the band between
    the midpoints to its neighbours (the poles beyond the outermost rows) on the unit sphere,
    divided by the number of longitudes (a constant, which the weighted means cancel)."""
    lat = np.sort(np.asarray(latitude, np.float64))
    bounds = np.deg2rad(np.concatenate([[-90.0], (lat[1:] + lat[:-1]) / 2, [90.0]]))
    return dict(zip(lat.tolist(), np.diff(np.sin(bounds)).tolist(), strict=True))


def brute_force(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """Fair CRPS, ensemble-mean RMSE, spread/skill and the spread (root mean variance) of members
    ``x [M, H, W]`` against ``y [H, W]``, each point's value averaged with weights ``w [H]``
    (float64 throughout)."""
    m = x.shape[0]

    def mean(field: np.ndarray) -> float:
        return float((field * w[:, None]).sum() / (w.sum() * field.shape[1]))

    skill = np.abs(x - y).mean(0)
    spread = np.abs(x[:, None] - x[None, :]).sum((0, 1)) / (2 * m * (m - 1))
    mse = mean((x.mean(0) - y) ** 2)
    variance = mean(((x - x.mean(0)) ** 2).sum(0) / (m - 1))
    return {
        "crps": mean(skill - spread),
        "rmse": mse**0.5,
        "spread_skill": float(np.sqrt((m + 1) / m * variance / mse)),
        "spread": variance**0.5,
    }


# Tolerances. The service computes each point's score in float32 (jax without x64) from float32
# members and truth, then averages over the area in float64; the references compute in float64
# (or in float32 in another layout) from the same float32 values. A point's float32 result is
# off by a few units in the last place of its operands, whose magnitude is at most ``scale``
# (the largest |member| or |truth| of the field), and an average of such errors by no more: so
# CRPS and RMSE may differ by ULPS * eps32 * scale (measured: at most 0.11 eps32 * scale). The
# spread/skill ratio sqrt(variance) / RMSE then differs by that much relative to the spread
# plus relative to the RMSE. A score of the wrong thing (another member or valid time, the
# region's rows weighted as if they were the whole sphere) is off by far more.
ULPS = 4
EPS32 = float(np.finfo(np.float32).eps)


def assert_scores_close(
    got: dict[str, Any], want: dict[str, float], scale: float, what: object
) -> None:
    """``got``'s crps, rmse and spread_skill equal ``want``'s to float32 rounding."""
    error = ULPS * EPS32 * scale
    tolerance = {
        "crps": error,
        "rmse": error,
        "spread_skill": want["spread_skill"] * (error / want["rmse"] + error / want["spread"]),
    }
    for metric, bound in tolerance.items():
        value = got[metric]
        assert value is not None, f"{what} {metric}: null, expected {want[metric]}"
        assert abs(value - want[metric]) <= bound, (
            f"{what} {metric}: service {value}, reference {want[metric]} (tolerance {bound:.3g})"
        )


def reference_rows(
    ensemble: xr.Dataset, archive: xr.Dataset
) -> dict[tuple[str, int | None, int], dict[str, Any]]:
    """The scores of ``ensemble`` by brute force, keyed by (variable, level, lead hours)."""
    areas = cell_areas(archive.latitude.values)
    w = np.asarray([areas[float(lat)] for lat in ensemble.latitude.values])
    init = ensemble.init_time.values[0]
    rows = {}
    for name in ensemble.data_vars:
        levels = ensemble.level.values.tolist() if "level" in ensemble[name].dims else [None]
        for level, lead in itertools.product(levels, ensemble.lead_time.values):
            valid = init + lead
            x = ensemble[str(name)].isel(init_time=0).sel(lead_time=lead)
            if level is not None:
                x = x.sel(level=level)
            hours = int(lead // np.timedelta64(1, "h"))
            key = (str(name), level, hours)
            row: dict[str, Any] = {
                "valid_time": np.datetime_as_string(valid, unit="s") + "Z",
                "units": archive[str(name)].attrs["units"],
                "verified": bool(valid in archive.time.values),
            }
            if row["verified"]:
                truth = archive[str(name)].sel(time=valid)
                if level is not None:
                    truth = truth.sel(level=level)
                # Select the truth at the ensemble's own coordinates (exact grid values).
                truth = truth.sel(latitude=x.latitude, longitude=x.longitude)
                xs = x.transpose("member", "latitude", "longitude").values.astype(np.float64)
                y = truth.transpose("latitude", "longitude").values.astype(np.float64)
                row["scores"] = brute_force(xs, y, w)
                row["scale"] = float(max(np.abs(xs).max(), np.abs(y).max()))
            rows[key] = row
    return rows


@pytest.mark.parametrize("job", list(JOBS))
def test_every_score_row_equals_a_brute_force_computation_on_the_ensemble(finished, archive, job):
    ensemble, scores = finished[job]
    body = JOBS[job]
    assert scores["members"] == body["members"] == ensemble.sizes["member"]
    assert scores.get("error") is None
    if "region" in body:
        box = body["region"]
        assert scores["domain"] == ", ".join(f"{k}={v:g}" for k, v in box.items())
        # The ensemble holds the box's grid points and nothing else.
        lat = archive.latitude.values
        assert ensemble.latitude.values.tolist() == sorted(
            lat[(lat >= box["lat_min"]) & (lat <= box["lat_max"])].tolist()
        )
    else:
        assert scores["domain"] == "globe"
        assert ensemble.sizes["latitude"] == archive.sizes["latitude"]
        assert ensemble.sizes["longitude"] == archive.sizes["longitude"]

    want = reference_rows(ensemble, archive)
    got = {(r["variable"], r["level"], r["lead_hours"]): r for r in scores["rows"]}
    assert len(got) == len(scores["rows"]), "repeated rows"
    assert sorted(got, key=str) == sorted(want, key=str)
    verified = 0
    for key, row in got.items():
        ref = want[key]
        assert row["valid_time"] == ref["valid_time"], key
        assert row["units"] == ref["units"], key
        assert row["verified"] == ref["verified"], key
        if not ref["verified"]:
            assert (row["crps"], row["rmse"], row["spread_skill"]) == (None, None, None), key
            continue
        verified += 1
        assert_scores_close(row, ref["scores"], ref["scale"], key)
    expected_verified = {"globe": 36, "dateline": 6, "south": 2}[job]
    assert verified == expected_verified


def test_the_global_scores_equal_weather_scoring_metrics_called_directly(finished, archive):
    """The library's own functions on the downloaded ensemble (the global job: no region), and
    the brute force above agrees with them (the reference is the library's definition)."""
    ensemble, scores = finished["globe"]
    truth = metrics.align_truth(ensemble, archive[list(ensemble.data_vars)], missing="raise")
    truth = truth.sel(level=ensemble.level)
    library = {
        "crps": metrics.crps(ensemble, truth, fair=True),
        "rmse": metrics.ensemble_mean_rmse(ensemble, truth),
        "spread_skill": metrics.spread_skill_ratio(ensemble, truth),
    }
    variance = xr.Dataset(
        {
            name: ensemble[name]
            .isel(init_time=0)
            .var("member", ddof=1)
            .weighted(metrics.area_weights(ensemble.latitude))
            .mean(["latitude", "longitude"])
            for name in ensemble.data_vars
        }
    )
    brute = reference_rows(ensemble, archive)
    assert len(scores["rows"]) == 36
    for row in scores["rows"]:
        key = (row["variable"], row["level"], row["lead_hours"])
        at: dict[str, Any] = {"lead_time": np.timedelta64(row["lead_hours"], "h")}
        if row["level"] is not None:
            at["level"] = row["level"]
        want = {
            metric: float(values[row["variable"]].sel(at)) for metric, values in library.items()
        }
        want["spread"] = float(variance[row["variable"]].sel(at)) ** 0.5
        assert_scores_close(row, want, brute[key]["scale"], key)
        assert_scores_close(want, brute[key]["scores"], brute[key]["scale"], key)
