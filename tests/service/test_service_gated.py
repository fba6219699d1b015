"""Batching, partial results and cancelling, held by events rather than by the machine's speed:
an in-process server without a worker (jobs queue), and an in-process worker started when the
test says so, whose sampling calls can be held at a given call. What these tests check is then
the same on a slow CPU and on a fast GPU."""

from __future__ import annotations

import concurrent.futures
import io
import re
import zipfile
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import xarray as xr
from prometheus_client import generate_latest
from service_support import (
    INIT,
    assert_same_forecast,
    hold_before_call,
    reference_forecast,
    server_thread,
    service_files,
    tiny_settings,
    wait_for,
)

from service.sql_store import open_store
from service.worker import Worker
from weather.scoring import metrics


@pytest.fixture(scope="module")
def files(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    return service_files(tmp_path_factory, archive, statistics)


@pytest.fixture
def service(files, tmp_path) -> Iterator[tuple[httpx.Client, Callable[[], Worker]]]:  # type: ignore[no-untyped-def]
    """(client of a server with no worker, a function that starts its worker in-process)."""
    settings = tiny_settings(
        files,
        tmp_path / "data",
        compilation_cache_dir=files.jax_cache,
        worker=False,
        warmup=False,
        poll_s=0.1,
    )
    workers: list[Worker] = []

    def start_worker() -> Worker:
        worker = Worker(settings, open_store(settings.database, schema=settings.database_schema))
        worker.start()
        workers.append(worker)
        return worker

    with server_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        try:
            yield client, start_worker
        finally:
            for worker in workers:
                worker.stop()
                worker.store.close()


def worker_metrics(worker: Worker) -> str:
    return generate_latest(worker.metrics.registry).decode()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


def test_jobs_batched_together_equal_forecasts_run_alone_in_every_format(
    service, files, archive, tmp_path
):
    alice, start_worker = service
    bodies = {
        "zarr": {"init_time": INIT, "lead": "PT36H", "members": 3, "seed": 11},
        "points": {
            "init_time": "2001-01-04T12:00Z",
            "lead": 24,
            "members": 3,
            "seed": 12,
            "variables": ["temperature", "surface_pressure"],
            "levels": [850],
            "points": [{"latitude": 47.3, "longitude": 8.5, "name": "Zurich"}],
            "format": "json",
            "summary": {"quantiles": [0.5], "thresholds": {"temperature": [280.0]}},
        },
        "region": {
            "init_time": INIT,
            "lead": "1d",
            "members": 3,
            "seed": 13,
            "variables": ["temperature"],
            "region": {"lat_min": 20, "lat_max": 60, "lon_min": 340, "lon_max": 30},
            "format": "netcdf",
        },
    }
    # Queued before any worker runs, the worker's first claim takes the first two (6 of its 8
    # members) and samples them in shared calls: different init times, seeds and members.
    answers = {name: alice.post("/forecast", json=body) for name, body in bodies.items()}
    assert {r.status_code for r in answers.values()} == {202}
    worker = start_worker()
    before = worker_metrics(worker)
    ids = {name: r.json()["id"] for name, r in answers.items()}
    for job_id in ids.values():
        done = wait_for(alice, job_id, {"succeeded", "failed"})
        assert done["status"] == "succeeded", done
        assert done["progress"]["fraction"] == 1.0 and done["attempts"] == 1
    after = worker_metrics(worker)
    calls = metric(after, "weather_batch_jobs_count") - metric(before, "weather_batch_jobs_count")
    served = metric(after, "weather_batch_jobs_sum") - metric(before, "weather_batch_jobs_sum")
    # 7 job-steps: zarr's 3 and points' 2 in 3 shared calls, then region's 2 (it joins once
    # members free up, or alone): at most 5 calls.
    assert served == 3 + 2 + 2 and calls <= 5, (calls, served)

    # Zarr (zip): the whole forecast, equal to the same forecast run alone.
    r = alice.get(f"/forecast/{ids['zarr']}/result")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert r.headers["x-forecast-complete"] == "true" and r.headers["x-leads-done"] == "36"
    zipped = tmp_path / "f.zarr.zip"
    zipped.write_bytes(r.content)
    import zarr

    ds = xr.open_zarr(zarr.storage.ZipStore(zipped, mode="r"), consolidated=False).load()
    assert ds.sizes == {
        "member": 3,
        "init_time": 1,
        "lead_time": 3,
        "level": 2,
        "latitude": 16,
        "longitude": 32,
    }
    assert ds["temperature"].attrs["units"] == "K"
    assert_same_forecast(ds, reference_forecast(files, archive, INIT, 36, 3, seed=11))

    # NetCDF of the region: the box across the dateline, longitudes running east from 340.
    r = alice.get(f"/forecast/{ids['region']}/result")
    assert r.headers["content-type"] == "application/x-netcdf"
    (tmp_path / "r.nc").write_bytes(r.content)
    with xr.open_dataset(tmp_path / "r.nc") as nc:
        region = nc.load()
    assert list(region.data_vars) == ["temperature"]
    assert region.longitude.values[0] >= 340 and region.longitude.values[-1] <= 30
    assert ((region.latitude >= 20) & (region.latitude <= 60)).all()
    whole = reference_forecast(files, archive, INIT, 24, 3, seed=13)
    assert_same_forecast(region, whole)
    # The same job as Zarr on request.
    assert (
        alice.get(f"/forecast/{ids['region']}/result", params={"format": "zarr"}).status_code == 200
    )

    # JSON summaries at a point, against numpy on the nearest grid point of the full forecast.
    r = alice.get(f"/forecast/{ids['points']}/result")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    result = r.json()
    assert result["complete"] and result["lead_hours"] == [12, 24] and result["members"] == 3
    assert result["valid_times"] == ["2001-01-05T00:00:00Z", "2001-01-05T12:00:00Z"]
    full = reference_forecast(files, archive, "2001-01-04T12:00Z", 24, 3, seed=12)
    t850 = next(s for s in result["series"] if s["variable"] == "temperature")
    loc = t850["location"]
    lat = float(archive.latitude[np.argmin(np.abs(archive.latitude.values - 47.3))])
    lon = float(archive.longitude[np.argmin(np.abs(archive.longitude.values - 8.5))])
    assert (loc["name"], loc["grid_latitude"], loc["grid_longitude"]) == ("Zurich", lat, lon)
    assert t850["level"] == 850 and t850["units"] == "K"
    x = full["temperature"].sel(level=850, latitude=lat, longitude=lon).isel(init_time=0)
    x = x.transpose("member", "lead_time").values  # [3, 2]
    np.testing.assert_allclose(t850["mean"], x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(t850["spread"], x.std(0, ddof=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(t850["quantiles"]["0.5"], np.median(x, 0), rtol=1e-5)
    np.testing.assert_allclose(t850["exceedance"]["280"], (x > 280).mean(0))
    assert {s["variable"] for s in result["series"]} == {"temperature", "surface_pressure"}

    # Scores: one row per variable, level and lead; the numbers are weather.scoring's.
    scores = alice.get(f"/forecast/{ids['zarr']}/scores").json()
    assert scores["domain"] == "globe" and scores["members"] == 3
    assert len(scores["rows"]) == (4 * 2 + 1) * 3
    row = next(
        r
        for r in scores["rows"]
        if (r["variable"], r["level"], r["lead_hours"]) == ("temperature", 500, 24)
    )
    assert row["verified"] and row["valid_time"] == "2001-01-04T00:00:00Z"
    truth = metrics.align_truth(ds, archive[["temperature"]])
    want = metrics.crps(ds[["temperature"]], truth)["temperature"].sel(level=500).isel(lead_time=1)
    assert row["crps"] == pytest.approx(float(want), rel=1e-5)
    assert row["rmse"] > 0 and row["spread_skill"] > 0
    region_scores = alice.get(f"/forecast/{ids['region']}/scores").json()
    assert region_scores["domain"].startswith("lat_min=20")
    assert all(r["verified"] and r["crps"] is not None for r in region_scores["rows"])


def test_partial_results_while_running_then_cancel(service, monkeypatch):
    """The worker is held before its third sampling call: the job has exactly two leads, which
    the result serves as incomplete; cancelled there, it stops and keeps them."""
    alice, start_worker = service
    held, release = hold_before_call(monkeypatch, 3)
    body = {"init_time": INIT, "lead": "P15D", "members": 8, "seed": 1, "format": "netcdf"}
    job = alice.post("/forecast", json=body).json()
    early = alice.get(f"/forecast/{job['id']}/result")
    assert early.status_code == 202  # queued: no lead yet
    start_worker()
    assert held.wait(120), "the worker never reached its third call"
    status = alice.get(f"/forecast/{job['id']}").json()
    assert status["status"] == "running" and status["progress"]["steps_done"] == 2, status
    assert alice.get(f"/forecast/{job['id']}/scores").status_code == 202
    r = alice.get(f"/forecast/{job['id']}/result", params={"format": "zarr"})
    assert r.status_code == 200 and r.headers["x-forecast-complete"] == "false"
    leads = int(r.headers["x-leads-done"]) // 12
    assert leads == 2
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
    # Only the leads done so far: one chunk per lead of each variable.
    assert len([n for n in names if n.startswith("temperature/c/")]) == leads
    cancelled = alice.delete(f"/forecast/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert alice.delete(f"/forecast/{job['id']}").status_code == 409
    release.set()
    after = wait_for(alice, job["id"], {"cancelled"})
    # The held call may finish its step; the worker then sees the cancellation and stops.
    assert after["progress"]["steps_done"] <= 3 and after["finished_at"] is not None
    assert alice.get(f"/forecast/{job['id']}/scores").status_code == 409
    # The leads written before the cancellation stay readable.
    assert alice.get(f"/forecast/{job['id']}/result").status_code == 200


def test_fifty_concurrent_submissions_queue_then_share_sampling_calls(service):
    alice, start_worker = service
    # Valid times past the archive's end: nothing to score, only sampling.
    body = {"init_time": "2001-01-12T18:00Z", "lead": 24, "members": 1}

    def submit(seed: int) -> httpx.Response:
        return alice.post("/forecast", json={**body, "seed": seed})

    # All 50 queue (concurrent POSTs, no worker yet), so batching does not hang on the worker
    # being slower than the clients.
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(submit, range(50)))
    assert [r.status_code for r in answers] == [202] * 50
    ids = [r.json()["id"] for r in answers]
    assert len(set(ids)) == 50
    server_before = alice.get("/metrics").text
    assert metric(server_before, "weather_queue_depth") == 50
    worker = start_worker()
    before = worker_metrics(worker)
    for job_id in ids:
        assert wait_for(alice, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    after = worker_metrics(worker)
    calls = metric(after, "weather_batch_jobs_count") - metric(before, "weather_batch_jobs_count")
    jobs = metric(after, "weather_batch_jobs_sum") - metric(before, "weather_batch_jobs_sum")
    # 50 one-member jobs x 2 steps in calls of 8 members: the lanes stay full, so 6 full
    # batches and one of 2, each for 2 steps: 14 calls (one per job and step would be 100).
    assert jobs == 100 and calls == 14, (calls, jobs)
    steps = metric(after, "weather_member_steps_total") - metric(
        before, "weather_member_steps_total"
    )
    assert steps == 100
    server_after = alice.get("/metrics").text
    assert metric(server_after, 'weather_submissions_total{outcome="accepted"}') >= 50
    assert metric(server_after, "weather_queue_depth") == 0
