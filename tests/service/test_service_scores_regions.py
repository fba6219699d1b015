"""Scores per WeatherBench2 region (`GET /forecast/{id}/scores?region=`) against masks by hand.

Two jobs run through an in-process server: the globe, and a box across the 0/360 meridian
that reaches into the tropics. Each job's ensemble is downloaded; the scores of every named
region must equal a brute-force float64 computation on that ensemble against the archive,
over the grid points written out here from the regions' definitions (edges inclusive) within
the job's domain, weighted by the cell areas of the whole grid. Bad regions are refused with a
4xx naming ``region``.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import numpy as np
import pytest
import xarray as xr
from service_support import INIT, server_thread, service_files, tiny_settings, wait_for

from service.results import JobFiles

BOX = {"lat_min": 10, "lat_max": 60, "lon_min": 300, "lon_max": 40}
JOBS: dict[str, dict[str, Any]] = {
    "globe": {
        "init_time": INIT,
        "lead": "P1D",
        "members": 3,
        "seed": 11,
        "variables": ["temperature", "surface_pressure"],
        "levels": [850],
    },
    "box": {
        "init_time": "2001-01-04T12:00Z",
        "lead": "P1D",
        "members": 3,
        "seed": 12,
        "variables": ["temperature", "surface_pressure"],
        "levels": [850],
        "region": BOX,
    },
}
# Latitude bands of each named region, from WeatherBench2's definitions (edges inclusive).
BANDS = {
    "global": [(-90, 90)],
    "tropics": [(-20, 20)],
    "extra-tropics": [(-90, -20), (20, 90)],
    "extra-tropics-north": [(20, 90)],
    "extra-tropics-south": [(-90, -20)],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    """``{job: (ensemble, {region or None: (status, body)}, job id)}`` and the settings."""
    files = service_files(tmp_path_factory, archive, statistics)
    root = tmp_path_factory.mktemp("service-scores-regions")
    settings = tiny_settings(
        files,
        root / "data",
        worker_process=False,
        batch_window_s=0.5,
    )
    out: dict[str, Any] = {}
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
            assert r.status_code == 200
            path = root / f"{name}.nc"
            path.write_bytes(r.content)
            with xr.open_dataset(path) as nc:
                ensemble = nc.load()
            answers = {}
            for region in [None, *BANDS, "arctic"]:
                params = {} if region is None else {"region": region}
                got = client.get(f"/forecast/{job_id}/scores", params=params)
                answers[region] = (got.status_code, got.json())
            out[name] = (ensemble, answers, job_id)
        # Scores stored before per-region scores existed: the job's own rows only.
        job_id = ids["globe"]
        job_files = JobFiles(settings.data_dir, job_id)
        old = {k: v for k, v in job_files.read_scores().items() if k != "regions"}  # type: ignore[union-attr]
        job_files.write_scores(old)
        got = client.get(f"/forecast/{job_id}/scores", params={"region": "tropics"})
        out["old"] = (got.status_code, got.json())
        got = client.get(f"/forecast/{job_id}/scores", params={"region": "global"})
        out["old-global"] = (got.status_code, got.json())
    return out


def whole_grid_areas(latitude: np.ndarray) -> dict[float, float]:
    """Relative cell area of each row of the whole (equiangular) grid, by latitude."""
    lat = np.sort(np.asarray(latitude, np.float64))
    bounds = np.deg2rad(np.concatenate([[-90.0], (lat[1:] + lat[:-1]) / 2, [90.0]]))
    return dict(zip(lat.tolist(), np.diff(np.sin(bounds)).tolist(), strict=True))


def reference(ensemble: xr.Dataset, archive: xr.Dataset, region: str) -> dict[Any, Any]:
    """Fair CRPS, RMSE and spread/skill of the ensemble's points inside ``region`` (by the
    bands above), per (variable, level, lead hours), float64; None where no point is inside."""
    areas = whole_grid_areas(archive.latitude.values)
    lat = ensemble.latitude.values
    inside = np.zeros(lat.shape, bool)
    for south, north in BANDS[region]:
        inside |= (lat >= south) & (lat <= north)
    w = np.asarray([areas[float(x)] for x in lat]) * inside
    init = ensemble.init_time.values[0]
    rows: dict[Any, Any] = {}
    for name in ensemble.data_vars:
        levels = ensemble.level.values.tolist() if "level" in ensemble[name].dims else [None]
        for level, lead in itertools.product(levels, ensemble.lead_time.values):
            x = ensemble[str(name)].isel(init_time=0).sel(lead_time=lead)
            truth = archive[str(name)].sel(time=init + lead)
            if level is not None:
                x, truth = x.sel(level=level), truth.sel(level=level)
            truth = truth.sel(latitude=x.latitude, longitude=x.longitude)
            xs = x.transpose("member", "latitude", "longitude").values.astype(np.float64)
            y = truth.transpose("latitude", "longitude").values.astype(np.float64)
            m = xs.shape[0]

            def mean(field: np.ndarray) -> float:
                return float((field * w[:, None]).sum() / (w.sum() * field.shape[1]))

            skill = np.abs(xs - y).mean(0)
            spread = np.abs(xs[:, None] - xs[None, :]).sum((0, 1)) / (2 * m * (m - 1))
            mse = mean((xs.mean(0) - y) ** 2)
            variance = mean(xs.var(0, ddof=1))
            key = (str(name), level, int(lead // np.timedelta64(1, "h")))
            rows[key] = {
                "crps": mean(skill - spread),
                "rmse": mse**0.5,
                "spread_skill": float(np.sqrt((m + 1) / m * variance / mse)),
                "spread": variance**0.5,
                "scale": float(max(np.abs(xs).max(), np.abs(y).max())),
            }
    return rows


# As in test_service_scores_reference: float32 per-point scores (a few ulps of the largest
# operand, `scale`) averaged in float64, against float64 here; 4 eps32 * scale bounds CRPS and
# RMSE, and the ratio moves by that much relative to the spread plus relative to the RMSE. A
# wrong mask or weights (e.g. the region's rows as a grid of their own) is off by far more.
EPS32 = float(np.finfo(np.float32).eps)


def assert_close(got: dict[str, Any], want: dict[str, float], what: object) -> None:
    error = 4 * EPS32 * want["scale"]
    bounds = {
        "crps": error,
        "rmse": error,
        "spread_skill": want["spread_skill"] * (error / want["rmse"] + error / want["spread"]),
    }
    for metric, bound in bounds.items():
        assert got[metric] is not None, f"{what} {metric}: null"
        assert abs(got[metric] - want[metric]) <= bound, (
            f"{what} {metric}: service {got[metric]}, reference {want[metric]} (bound {bound:.3g})"
        )


@pytest.mark.parametrize("job", list(JOBS))
def test_each_regions_scores_equal_the_masked_brute_force(finished, archive, job):
    ensemble, answers, _ = finished[job]
    whole_status, whole = answers[None]
    assert whole_status == 200 and "regions" not in whole
    lat = ensemble.latitude.values
    scored = 0
    for region, bands in BANDS.items():
        status, body = answers[region]
        overlaps = any(((lat >= s) & (lat <= n)).any() for s, n in bands)
        if not overlaps:
            # The box (10..60 N) reaches no row south of -20.
            assert (job, region) == ("box", "extra-tropics-south")
            assert status == 422
            (error,) = body["detail"]
            assert error["loc"] == ["query", "region"]
            assert (
                "'extra-tropics-south' (latitude -90..-20, every longitude) holds no grid point "
                "of the job's domain (lat_min=10, " in error["msg"]
            )
            continue
        assert status == 200, body
        if region == "global":
            assert body == whole
            continue
        if job == "globe":
            assert body["domain"].startswith(f"{region} (latitude ")
        else:
            assert body["domain"].endswith("within lat_min=10, lat_max=60, lon_min=300, lon_max=40")
        want = reference(ensemble, archive, region)
        got = {(r["variable"], r["level"], r["lead_hours"]): r for r in body["rows"]}
        assert sorted(got, key=str) == sorted(want, key=str)
        for key, row in got.items():
            assert row["verified"], key
            assert_close(row, want[key], (job, region, key))
            scored += 1
    assert scored == {"globe": 4 * 4, "box": 3 * 4}[job]  # regions x (2 fields x 2 leads)
    # The box's tropical part is one row (16.875 N) of the 16 x 32 grid: not its whole box.
    if job == "box":
        tropics = answers["tropics"][1]["rows"][0]["crps"]
        assert tropics != whole["rows"][0]["crps"]


def test_bad_regions_are_refused_naming_the_parameter(finished):
    _, answers, _ = finished["globe"]
    status, body = answers["arctic"]
    assert status == 422
    (error,) = body["detail"]
    assert error["loc"] == ["query", "region"]
    assert error["msg"].startswith("unknown region 'arctic'; choose from ['global', 'tropics'")
    # Scores stored before regions existed: 409 for a region, the job's rows for global.
    status, body = finished["old"]
    assert status == 409
    (error,) = body["detail"]
    assert error["loc"] == ["query", "region"]
    assert "scored before per-region scores existed" in error["msg"]
    status, body = finished["old-global"]
    assert status == 200 and body["rows"] == answers[None][1]["rows"]
