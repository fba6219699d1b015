"""The deployment of compose.yaml as processes: an API-only server (`weather serve --no-worker`)
and three `weather worker` processes sharing this machine's PostgreSQL. Twenty jobs, one worker
killed with SIGKILL in the middle of a job: every job succeeds, none is lost, none is finished
by two workers, and the killed worker's job resumes on another with the result of an
uninterrupted run."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import xarray as xr
from service_support import (
    INIT,
    REPO,
    assert_same_forecast,
    environment,
    free_port,
    reference_forecast,
    service_files,
)

POSTGRES_URL = os.environ.get("WEATHER_TEST_POSTGRES_URL")
JOBS = 20
WORKERS = 3


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "weather.cli", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _until(what: str, check, timeout: float = 240):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout} s")


def _running(url: str, schema: str) -> list[tuple[str, str, int]]:
    """(job id, worker id, steps done) of the running jobs, read from the database itself."""
    import psycopg

    assert url is not None
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT id, worker_id, steps_done FROM {schema}.jobs WHERE status = 'running'"
        ).fetchall()
    return [(str(a), str(b), int(c)) for a, b, c in rows]


def test_twenty_jobs_on_three_workers_survive_a_killed_worker(
    tmp_path, tmp_path_factory, archive, statistics
):
    if not POSTGRES_URL:
        pytest.skip("WEATHER_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    files = service_files(tmp_path_factory, archive, statistics)
    schema = f"weather_topology_{uuid.uuid4().hex[:10]}"
    # A live worker is never taken for dead: 10 s without a heartbeat (sent every 0.5 s) on a
    # loaded 2-core machine running four Python processes would be a real hang.
    timing = {"heartbeat_s": 0.5, "worker_timeout_s": 10.0, "poll_s": 0.1}
    env = environment(
        files,
        tmp_path / "data",
        database_url=POSTGRES_URL,
        database_schema=schema,
        max_queued=JOBS,
        **timing,
    )
    port = free_port()
    api = _start(["serve", "--no-worker", "--port", str(port)], env, tmp_path / "api.log")
    workers = [_start(["worker"], env, tmp_path / f"worker-{i}.log") for i in range(WORKERS)]
    url = f"http://127.0.0.1:{port}"
    killed: tuple[str, str, int] | None = None
    try:
        with httpx.Client(base_url=url, timeout=60) as client:

            def ready() -> bool:
                assert api.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.HTTPError:
                    return False

            _until("a worker ready", ready)
            bodies = [
                {"init_time": INIT, "lead": "P10D", "members": 2 + i % 2, "seed": 100 + i}
                for i in range(JOBS)
            ]
            ids = []
            for body in bodies:
                r = client.post("/forecast", json=body)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])

            # Kill the worker of a job that is under way (some leads written, not all).
            pids = {w.pid: w for w in workers}

            def mid_job() -> tuple[str, str, int] | None:
                for job_id, worker_id, done in _running(POSTGRES_URL, schema):
                    pid = int(worker_id.split("-")[-2])
                    # Under way: leads written, most still to come (20 steps in all), so the
                    # kill lands mid-job however fast the machine samples.
                    if 1 <= done <= 15 and pid in pids:
                        return job_id, worker_id, done
                return None

            killed = _until("a job under way", mid_job, timeout=300)
            victim = pids[int(killed[1].split("-")[-2])]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            # Its jobs, read at once: none can be claimed again within worker_timeout_s.
            orphans = {j for j, w, _ in _running(POSTGRES_URL, schema) if w == killed[1]}
            assert killed[0] in orphans

            def all_ended() -> list[dict[str, object]] | None:
                states = [client.get(f"/forecast/{i}").json() for i in ids]
                ended = all(s["status"] in ("succeeded", "failed", "cancelled") for s in states)
                return states if ended else None

            states = _until("all jobs ended", all_ended, timeout=600)
            assert [s["status"] for s in states] == ["succeeded"] * JOBS, states
            again = {s["id"]: s["attempts"] for s in states if s["attempts"] != 1}
            # The killed worker's jobs were claimed once more each; no other job twice.
            assert again == dict.fromkeys(orphans, 2), (again, orphans)
            resumed_path = tmp_path / "resumed.nc"
            r = client.get(f"/forecast/{killed[0]}/result", params={"format": "netcdf"})
            assert r.status_code == 200 and r.headers["x-forecast-complete"] == "true"
            resumed_path.write_bytes(r.content)
    finally:
        for process in [*workers, api]:
            _stop(process)
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    # Each job finished exactly once, by one worker (the store's finish only counts for the
    # job's holder; a worker that lost its job logs that instead).
    finished: collections.Counter[str] = collections.Counter()
    for i in range(WORKERS):
        text = (tmp_path / f"worker-{i}.log").read_text()
        finished.update(re.findall(r"job ([0-9a-f]{32}) succeeded on worker", text))
    assert finished == collections.Counter(ids), finished
    index = ids.index(killed[0])
    with xr.open_dataset(resumed_path) as resumed:
        want = reference_forecast(
            files, archive, INIT, 240, bodies[index]["members"], seed=bodies[index]["seed"]
        )
        assert_same_forecast(resumed.load(), want)
