"""The server's worker as a child process (`service.worker_process`, the default of `weather
serve`): its sampling metrics reach the server's /metrics through a file; a child that dies is
replaced and its job resumed; and none outlives its server: when the server is killed outright,
the child stops after its chunk and hands its job back to the queue."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from service_support import INIT, REPO, environment, free_port, service_files, wait_ready

from service.metrics import ServiceMetrics
from service.sql_store import SQLiteJobStore
from service.store import JobState


@pytest.fixture(scope="module")
def files(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    return service_files(tmp_path_factory, archive, statistics)


def test_worker_metrics_reach_the_server_through_a_file(tmp_path):
    path = tmp_path / "worker.prom"
    server = ServiceMetrics()
    server.serve_worker_file(path)
    server.queue_depth.set(1)
    before = generate_latest(server.registry).decode()
    assert "weather_queue_depth 1.0" in before and "weather_sampling_calls" not in before

    worker = ServiceMetrics()
    worker.sampling_calls.inc(3)
    worker.batch_jobs.observe(2)
    worker.queue_depth.set(5)  # a worker's queue gauges are never read: the server's count
    worker.write_worker_file(path)
    text = generate_latest(server.registry).decode()
    assert "weather_sampling_calls_total 3.0" in text
    assert "weather_batch_jobs_sum 2.0" in text
    assert "weather_queue_depth 1.0" in text and "weather_queue_depth 5.0" not in text
    names = [family.name for family in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))  # each family once: a valid exposition


def children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_steps(url: str, job_id: str, more_than: int, timeout: float = 180) -> dict[str, Any]:
    """Poll a job until it has done more than ``more_than`` steps."""
    import httpx

    deadline = time.monotonic() + timeout
    while (status := httpx.get(f"{url}/forecast/{job_id}").json())["progress"][
        "steps_done"
    ] <= more_than:
        assert status["status"] in ("queued", "running"), status
        assert time.monotonic() < deadline, status
        time.sleep(0.02)
    result: dict[str, Any] = status
    return result


# Imported at start-up by the server and its worker child (a `sitecustomize` on their
# PYTHONPATH): each process's first sampling call runs, and every later one waits while the
# hold file exists. So a worker process always does exactly one chunk and then stops in a known
# state, however fast the machine is: the test never races the job to its end.
GATE = """
import os
import time

import service.worker

_hold = os.environ["TEST_WORKER_HOLD"]
_sample = service.worker.Worker._sample
_calls = []


def _gated(self, lanes):
    _calls.append(1)
    while len(_calls) > 1 and os.path.exists(_hold):
        time.sleep(0.02)
    return _sample(self, lanes)


service.worker.Worker._sample = _gated
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_dead_worker_process_is_replaced_and_none_outlives_its_server(files, tmp_path):
    import httpx

    data = tmp_path / "data"
    # A live worker is never taken for dead: 5 s without one of its heartbeats (every 0.2 s)
    # would be a real hang even on a loaded machine.
    env = environment(files, data, heartbeat_s=0.2, worker_timeout_s=5.0, poll_s=0.1)
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "sitecustomize.py").write_text(GATE)
    hold = tmp_path / "hold"
    hold.touch()
    env["TEST_WORKER_HOLD"] = str(hold)
    env["PYTHONPATH"] = os.pathsep.join([str(gate), *filter(None, [env.get("PYTHONPATH")])])
    port = free_port()
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "weather.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    workers: list[int] = []
    try:
        wait_ready(url, server)
        assert httpx.get(f"{url}/readyz").json()["worker"] == "process"
        workers = children(server.pid)
        assert len(workers) == 1
        body = {"init_time": INIT, "lead": "P15D", "members": 3, "seed": 5}
        job = httpx.post(f"{url}/forecast", json=body).json()
        first = wait_steps(url, job["id"], 0)
        assert first["progress"]["steps_done"] == 1, first  # one chunk, then held

        # The child dies: the server starts another, which resumes the job once its lease ends.
        os.kill(workers[0], signal.SIGKILL)
        first_killed = time.time()
        deadline = time.monotonic() + 180
        while not (replaced := [p for p in children(server.pid) if p not in workers]):
            assert time.monotonic() < deadline, "no new worker process"
            time.sleep(0.1)
        workers += replaced
        resumed = wait_steps(url, job["id"], first["progress"]["steps_done"])
        # The new child resumed from the first one's step, did its one chunk and is held.
        assert resumed["progress"]["steps_done"] == 2, resumed
        assert resumed["status"] == "running" and resumed["attempts"] == 2, resumed
        assert httpx.get(f"{url}/readyz").json()["ready"] is True

        # The server dies without a shutdown: only the pipe's end tells its child to stop.
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        hold.unlink()  # the held child runs its chunk, then finds its server gone
        deadline = time.monotonic() + 60
        while alive(workers[-1]):
            assert time.monotonic() < deadline, "the worker process outlived its server"
            time.sleep(0.1)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    store = SQLiteJobStore(data / "jobs.sqlite")
    try:
        after = store.get(job["id"])
        assert after is not None
        # Handed back on a clean stop (that attempt not counted), to resume where it stopped.
        assert after.status == JobState.QUEUED and after.attempts == 1, after
        assert after.steps_done == 3 < after.steps_total, after  # the released chunk, no more
        # Only the killed child's row is left (stale); the second one removed its own.
        rows = store.live_workers(now=time.time(), timeout=3600)
        assert [w.heartbeat_at < first_killed for w in rows] == [True], rows
    finally:
        store.close()
