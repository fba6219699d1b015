"""Kill -9 a worker in the middle of a job, start another: the job finishes, equal to an
uninterrupted run with the same seed. API-only server (in this process) plus `weather worker`
processes sharing one SQLite database."""

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import xarray as xr
from service_support import (
    INIT,
    REPO,
    assert_same_forecast,
    environment,
    reference_forecast,
    server_thread,
    service_files,
    tiny_settings,
    wait_for,
    wait_ready,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    return service_files(tmp_path_factory, archive, statistics)


def start_worker(env: dict[str, str], log) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        [sys.executable, "-m", "weather.cli", "worker"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def result(client: httpx.Client, job_id: str, tmp_path) -> xr.Dataset:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{job_id}.nc"
    r = client.get(f"/forecast/{job_id}/result", params={"format": "netcdf"})
    assert r.status_code == 200 and r.headers["x-forecast-complete"] == "true"
    path.write_bytes(r.content)
    with xr.open_dataset(path) as ds:
        return ds.load()


def test_a_killed_workers_job_resumes_on_another_and_equals_an_uninterrupted_run(
    files, archive, tmp_path
):
    data = tmp_path / "data"
    # 5 s without a heartbeat (sent every 0.2 s): a live worker on a loaded machine is never
    # taken for dead and re-claims its own job.
    timing = {"heartbeat_s": 0.2, "worker_timeout_s": 5.0, "poll_s": 0.1}
    env = environment(files, data, **timing)
    settings = tiny_settings(
        files,
        data,
        worker=False,
        **timing,
    )
    body = {"init_time": INIT, "lead": "P5D", "members": 3, "seed": 21}
    with (
        open(tmp_path / "workers.log", "wb") as log,
        server_thread(settings) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        assert client.get("/readyz").status_code == 503  # no worker yet
        job = client.post("/forecast", json=body).json()
        first = start_worker(env, log)
        try:
            wait_ready(url, first)
            status, deadline = job, time.monotonic() + 120
            while status["progress"]["steps_done"] < 3:
                assert time.monotonic() < deadline, status
                assert status["status"] in ("queued", "running"), status
                time.sleep(0.01)
                status = client.get(f"/forecast/{job['id']}").json()
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        killed = client.get(f"/forecast/{job['id']}").json()
        assert killed["status"] == "running" and killed["progress"]["steps_done"] < 10, killed
        second = start_worker(env, log)
        try:
            done = wait_for(client, job["id"], {"succeeded", "failed"}, timeout=240)
            assert done["status"] == "succeeded" and done["attempts"] == 2, done
            # The same request again, run by the second worker without interruption.
            again = client.post("/forecast", json=body).json()
            assert wait_for(client, again["id"], {"succeeded", "failed"})["status"] == "succeeded"
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
        resumed, uninterrupted = (
            result(client, job["id"], tmp_path),
            result(client, again["id"], tmp_path),
        )
    for name in resumed.data_vars:
        np.testing.assert_array_equal(resumed[name].values, uninterrupted[name].values)
    assert np.isfinite(resumed["temperature"].values).all()
    assert_same_forecast(resumed, reference_forecast(files, archive, INIT, 120, 3, seed=21))
    # The worker's state file served its purpose and is gone.
    assert not (data / "jobs" / job["id"] / "state.npz").exists()
