"""End to end over real HTTP: `weather serve` in a subprocess (tiny model, its default worker: a
child process of the server, whose sampling metrics the server serves).

Submit, poll, fetch every format, scores, partial results, cancel, auth isolation between two
keys, and 50 concurrent submissions that share sampling calls. Each job's members, sampled in
batches with other jobs, equal the same forecast run alone by `weather.forecast.forecast`.
"""

import concurrent.futures
import io
import re
import time
import zipfile

import httpx
import numpy as np
import pytest
import xarray as xr
from service_support import (
    INIT,
    KEYS,
    assert_same_forecast,
    digest,
    environment,
    reference_forecast,
    server_process,
    service_files,
    wait_for,
)

from weather.scoring import metrics


@pytest.fixture(scope="module")
def files(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    return service_files(tmp_path_factory, archive, statistics)


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("service-api")
    env = environment(
        files,
        root / "data",
        api_keys=",".join(digest(k) for k in KEYS.values()),
        max_queued=64,
        batch_window_s=0.3,
    )
    with server_process(env, root / "server.log") as url:
        yield url


@pytest.fixture
def alice(server):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    with httpx.Client(base_url=server, headers=headers, timeout=60) as client:
        yield client


@pytest.fixture
def bob(server):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {KEYS['bob']}"}
    with httpx.Client(base_url=server, headers=headers, timeout=60) as client:
        yield client


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


def test_jobs_batched_together_equal_forecasts_run_alone_in_every_format(
    alice, files, archive, tmp_path
):
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
    # Submitted at once, they share sampling calls (different init times, seeds and members).
    before = alice.get("/metrics").text
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = dict(
            zip(
                bodies,
                pool.map(lambda b: alice.post("/forecast", json=b), bodies.values()),
                strict=True,
            )
        )
    assert {r.status_code for r in answers.values()} == {202}
    ids = {name: r.json()["id"] for name, r in answers.items()}
    for job_id in ids.values():
        done = wait_for(alice, job_id, {"succeeded", "failed"})
        assert done["status"] == "succeeded", done
        assert done["progress"]["fraction"] == 1.0 and done["attempts"] == 1
    after = alice.get("/metrics").text
    calls = metric(after, "weather_batch_jobs_count") - metric(before, "weather_batch_jobs_count")
    served = metric(after, "weather_batch_jobs_sum") - metric(before, "weather_batch_jobs_sum")
    assert served == 3 + 2 + 2 and calls < served  # 7 job-steps in fewer calls: shared

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


def test_partial_results_while_running_then_cancel(alice):
    body = {"init_time": INIT, "lead": "P15D", "members": 8, "seed": 1, "format": "netcdf"}
    job = alice.post("/forecast", json=body).json()
    early = alice.get(f"/forecast/{job['id']}/result")
    assert early.status_code in (200, 202)  # 202 until the first lead is written
    status = job
    while status["progress"]["steps_done"] < 2:
        assert status["status"] in ("queued", "running"), status
        time.sleep(0.02)
        status = alice.get(f"/forecast/{job['id']}").json()
    assert alice.get(f"/forecast/{job['id']}/scores").status_code == 202
    r = alice.get(f"/forecast/{job['id']}/result", params={"format": "zarr"})
    assert r.status_code == 200 and r.headers["x-forecast-complete"] == "false"
    leads = int(r.headers["x-leads-done"]) // 12
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
    # Only the leads done so far: one chunk per lead of each variable.
    assert len([n for n in names if n.startswith("temperature/c/")]) == leads
    cancelled = alice.delete(f"/forecast/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert alice.delete(f"/forecast/{job['id']}").status_code == 409
    after = wait_for(alice, job["id"], {"cancelled"})
    assert after["progress"]["steps_done"] < 30 and after["finished_at"] is not None
    assert alice.get(f"/forecast/{job['id']}/scores").status_code == 409
    # The leads written before the cancellation stay readable.
    assert alice.get(f"/forecast/{job['id']}/result").status_code == 200


def test_one_long_poll_after_the_post_gets_the_scores(alice):
    """``wait`` answers once the job ended: POST, then one GET has the scores (the README's
    recipe), while other requests keep being answered."""
    body = {"init_time": INIT, "lead": "P2D", "members": 2, "seed": 5}
    job = alice.post("/forecast", json=body).json()
    long = alice.post("/forecast", json={**body, "lead": "P15D", "seed": 6}).json()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(alice.get, f"/forecast/{job['id']}/scores", params={"wait": 120})
        t0 = time.monotonic()
        short = alice.get(f"/forecast/{long['id']}/result", params={"wait": 0.3})
        # The long poll of one job does not hold up another's short one.
        assert short.status_code in (200, 202) and time.monotonic() - t0 < 30
        scores = waiting.result()
    assert scores.status_code == 200, scores.text
    rows = scores.json()["rows"]
    assert scores.json()["members"] == 2 and {r["lead_hours"] for r in rows} == {12, 24, 36, 48}
    assert all(r["verified"] and r["crps"] is not None for r in rows)
    assert alice.get(f"/forecast/{job['id']}").json()["status"] == "succeeded"
    done = alice.get(f"/forecast/{job['id']}/result", params={"wait": 5, "format": "netcdf"})
    assert done.status_code == 200 and done.headers["x-forecast-complete"] == "true"
    too_long = alice.get(f"/forecast/{job['id']}/scores", params={"wait": 901})
    assert too_long.status_code == 422 and "wait" in too_long.text
    alice.delete(f"/forecast/{long['id']}")


def test_keys_see_only_their_own_jobs(alice, bob, server):
    mine = alice.post("/forecast", json={"init_time": INIT, "lead": 12, "members": 1}).json()
    assert bob.get(f"/forecast/{mine['id']}").status_code == 404
    assert bob.get(f"/forecast/{mine['id']}/result").status_code == 404
    assert bob.delete(f"/forecast/{mine['id']}").status_code == 404
    assert mine["id"] not in {j["id"] for j in bob.get("/forecast").json()["jobs"]}
    assert mine["id"] in {j["id"] for j in alice.get("/forecast").json()["jobs"]}
    ended = alice.get("/forecast", params={"status": ["succeeded", "cancelled"]}).json()["jobs"]
    assert all(j["status"] in ("succeeded", "cancelled") for j in ended)
    anonymous = httpx.get(f"{server}/forecast/{mine['id']}")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{server}/forecast", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(f"{server}/metrics").status_code == 401
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").json()["ready"] is True
    wait_for(alice, mine["id"], {"succeeded"})


def test_fifty_concurrent_submissions_finish_sharing_sampling_calls(alice):
    before = alice.get("/metrics").text
    # Valid times past the archive's end: nothing to score, the test times the sampling.
    body = {"init_time": "2001-01-12T18:00Z", "lead": 24, "members": 1}

    def submit(seed: int) -> httpx.Response:
        return alice.post("/forecast", json={**body, "seed": seed})

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(submit, range(50)))
    assert [r.status_code for r in answers] == [202] * 50
    for r in answers:
        assert wait_for(alice, r.json()["id"], {"succeeded", "failed"})["status"] == "succeeded"
    after = alice.get("/metrics").text
    calls = metric(after, "weather_batch_jobs_count") - metric(before, "weather_batch_jobs_count")
    jobs = metric(after, "weather_batch_jobs_sum") - metric(before, "weather_batch_jobs_sum")
    # 50 jobs x 2 steps: one call per job and step would be 100 calls; batches of up to 8 jobs
    # need far fewer.
    assert jobs == 100 and calls <= 50, (calls, jobs)
    assert (
        metric(after, "weather_member_steps_total") - metric(before, "weather_member_steps_total")
        == 100
    )
    assert metric(after, 'weather_submissions_total{outcome="accepted"}') >= 50
    assert metric(after, "weather_queue_depth") == 0
