"""Jobs that fail: each ends `failed` with a clear `error` on GET /forecast/{id}, and the jobs
beside it, and the worker, go on.

An in-process server (its worker a thread of this process, so that faults can be injected into
it) over a copy of the test archive whose temperature is NaN at one time:

1. A job whose worker died ``max_attempts`` times (left in the store by dead workers before the
   server starts) fails with that reason; one that died fewer times resumes and succeeds.
2. A job whose init time's analysis holds NaN fails before sampling, naming the variable; a job
   submitted with it succeeds.
3. A sampling call that raises fails its job with the exception's message; the worker takes the
   next job.
4. A job whose results cannot be written fails, naming the reason: its folder is a file, a
   lead's chunk folder is a file, a variable's array is a file, or the scores cannot be written;
   a job sharing its sampling calls succeeds.
5. A job whose end the database refuses to record (twice, as while it restarts) still ends,
   succeeded or failed, on its first attempt, once the database answers again.

No sleeps: every wait is on a job's state, with a deadline.
"""

from __future__ import annotations

import collections
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import xarray as xr
from service_support import INIT, server_thread, service_files, wait_for

from service.catalog import Catalog, model_info
from service.results import JobFiles
from service.schemas import request_model
from service.settings import Settings
from service.sql_store import SQLJobStore, open_store
from service.store import JobState, NewJob
from weather.model.rollout import BatchRoller

# The analysis of this init time holds NaN (temperature at 850 hPa, at init time itself).
NAN_INIT = "2001-01-05T00:00Z"
# Sampling calls holding a member of this init time raise.
BROKEN_INIT = "2001-01-07T00:00Z"
SAMPLING_ERROR = "injected: the accelerator is gone"
GOOD: dict[str, Any] = {"init_time": INIT, "lead": "P1D", "members": 2, "seed": 1}
MAX_ATTEMPTS = 2
# Seeds whose job's end the store refuses to record REFUSALS times; how often it did, by seed.
UNRECORDABLE_END = {905: GOOD, 906: {**GOOD, "init_time": NAN_INIT}}
REFUSALS = 2
REFUSED: collections.Counter[int] = collections.Counter()
ENDED = {"succeeded", "failed", "cancelled"}


# -- damage to a job's files, applied by the worker's own JobFiles.create (by the job's seed) ----


def folder_is_a_file(files: JobFiles) -> None:
    files.dir.parent.mkdir(parents=True, exist_ok=True)
    files.dir.write_text("not a folder")


def chunk_folder_is_a_file(files: JobFiles) -> None:
    (files.forecast / "temperature" / "c").write_text("not a folder")


def array_is_a_file(files: JobFiles) -> None:
    shutil.rmtree(files.forecast / "temperature")
    (files.forecast / "temperature").write_text("not an array")


def scores_cannot_be_written(files: JobFiles) -> None:
    # A non-empty folder where the scores go: no file can be renamed over it. (A folder at the
    # temporary name would not do: the atomic writer clears what a crash left there.)
    (files.scores / "keep").mkdir(parents=True)


# seed -> (when: before or after the store is created, the damage, words the error must hold)
DAMAGE: dict[int, tuple[str, Callable[[JobFiles], None], tuple[str, ...]]] = {
    901: ("before", folder_is_a_file, ("could not start", "File exists: 'jobs/")),
    902: (
        "after",
        chunk_folder_is_a_file,
        ("could not write its results", "Not a directory", "/forecast.zarr/temperature/c"),
    ),
    903: ("after", array_is_a_file, ("could not write its results", "temperature")),
    904: ("after", scores_cannot_be_written, ("could not write its results", "/scores.json")),
}


def damaged_archive(archive: xr.Dataset, path: Path) -> Path:
    bad = archive.copy(deep=True)
    at = {"time": np.datetime64(NAN_INIT.removesuffix("Z")), "level": 850}
    bad["temperature"].loc[at] = np.where(
        np.arange(bad.sizes["latitude"])[:, None] < 3, np.nan, bad["temperature"].loc[at].values
    )
    bad.to_zarr(path, zarr_format=3, consolidated=False)
    return path


def left_by_dead_workers(settings: Settings) -> dict[str, str]:
    """Two running jobs whose workers died (claimed, then silent for an hour): ``dead`` claimed
    ``MAX_ATTEMPTS`` times, ``once`` once. Stored before the server starts, so only its worker
    can claim them next."""
    info = model_info(settings)
    catalog = Catalog(info, settings.archive)
    model = request_model(settings.max_members)
    store = open_store(settings.database)
    ids = {}
    created = time.time() - 7200
    try:
        for i, name in enumerate(("dead", "once")):
            run = catalog.normalize(model(**{**GOOD, "seed": 31 if name == "dead" else 32}))
            job, _ = store.submit(
                NewJob(
                    id=uuid.uuid4().hex,
                    owner="local",
                    model=info.key,
                    request=run.model_dump(mode="json"),
                    request_hash=uuid.uuid4().hex,
                    members=run.members,
                    steps_total=run.lead_hours // 12,
                ),
                max_queued=10,
                now=created + i,
            )
            ids[name] = job.id
        # The first dead worker took both; the second, once the first fell silent, the older.
        past = time.time() - 3600
        taken = store.claim(
            "dead-1",
            info.key,
            max_members=8,
            limit=2,
            now=past,
            timeout=settings.worker_timeout_s,
            max_attempts=MAX_ATTEMPTS,
        )
        assert [j.id for j in taken] == [ids["dead"], ids["once"]]
        (again,) = store.claim(
            "dead-2",
            info.key,
            max_members=8,
            limit=1,
            now=past + 2 * settings.worker_timeout_s,
            timeout=settings.worker_timeout_s,
            max_attempts=MAX_ATTEMPTS,
        )
        assert again.id == ids["dead"] and again.attempts == MAX_ATTEMPTS
    finally:
        store.close()
    return ids


@pytest.fixture(scope="module")
def service(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    """``(url, settings, ids of the jobs left by dead workers)``, faults installed."""
    files = service_files(tmp_path_factory, archive, statistics)
    root = tmp_path_factory.mktemp("service-worker-failures")
    settings = Settings(
        checkpoint=files.checkpoint,
        archive=damaged_archive(archive, root / "archive.zarr"),
        data_dir=root / "data",
        worker_process=False,
        max_members=8,
        batch_sizes=[8],
        batch_window_s=0.3,
        poll_s=0.2,
        max_attempts=MAX_ATTEMPTS,
    )
    dead = left_by_dead_workers(settings)

    advance = BatchRoller.advance
    broken = np.datetime64(BROKEN_INIT.removesuffix("Z"), "ns")

    def failing_advance(self: BatchRoller, *args: Any, **kwargs: Any) -> Any:
        if np.any(np.asarray(kwargs["init_times"], "datetime64[ns]") == broken):
            raise RuntimeError(SAMPLING_ERROR)
        return advance(self, *args, **kwargs)

    create = JobFiles.create

    def damaging_create(self: JobFiles, info: Any, request: Any, subset: Any) -> None:
        when, damage, _ = DAMAGE.get(request.seed, (None, None, ()))
        if when == "before" and damage is not None:
            damage(self)
        create(self, info, request, subset)
        if when == "after" and damage is not None:
            damage(self)

    finish = SQLJobStore.finish

    def refusing_finish(
        self: SQLJobStore, job_id: str, worker_id: str, status: JobState, **kwargs: Any
    ) -> bool:
        job = self.get(job_id)
        seed = job.request["seed"] if job is not None else None
        if seed in UNRECORDABLE_END and REFUSED[seed] < REFUSALS:
            REFUSED[seed] += 1
            raise OSError("injected: the database is restarting")
        return finish(self, job_id, worker_id, status, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BatchRoller, "advance", failing_advance)
        patch.setattr(JobFiles, "create", damaging_create)
        patch.setattr(SQLJobStore, "finish", refusing_finish)
        with server_thread(settings) as url:
            yield url, settings, dead


@pytest.fixture
def client(service):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=service[0], timeout=60) as c:
        yield c


def submit(client: httpx.Client, **body: Any) -> str:
    r = client.post("/forecast", json=body)
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


def assert_failed(client: httpx.Client, job_id: str, *words: str) -> dict[str, Any]:
    """The job ends failed, its error holding ``words``, and it has no scores (409)."""
    job = wait_for(client, job_id, ENDED)
    assert job["status"] == "failed", job
    assert job["finished_at"] is not None and job["error"], job
    for word in words:
        assert word in job["error"], job["error"]
    scores = client.get(f"/forecast/{job_id}/scores")
    assert scores.status_code == 409 and "failed" in scores.json()["detail"], scores.text
    return job


def assert_succeeded(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job ends succeeded with its whole forecast and verified scores."""
    job = wait_for(client, job_id, ENDED)
    assert job["status"] == "succeeded" and job["error"] is None, job
    result = client.get(f"/forecast/{job_id}/result", params={"format": "netcdf"})
    assert result.status_code == 200 and result.headers["x-forecast-complete"] == "true"
    scores = client.get(f"/forecast/{job_id}/scores").json()
    assert scores.get("error") is None and scores["rows"], scores
    assert all(r["verified"] and r["crps"] is not None for r in scores["rows"]), scores
    return job


def test_a_job_whose_worker_died_max_attempts_times_fails_with_the_reason(service, client):
    _, _, dead = service
    job = assert_failed(client, dead["dead"], f"its worker stopped {MAX_ATTEMPTS} times")
    assert job["attempts"] == MAX_ATTEMPTS
    # A job whose worker died fewer times is claimed again and finishes.
    once = assert_succeeded(client, dead["once"])
    assert once["attempts"] == 2


def test_a_nan_analysis_fails_its_job_before_sampling_and_not_its_neighbour(client):
    bad = submit(client, **{**GOOD, "init_time": NAN_INIT, "seed": 2})
    good = submit(client, **{**GOOD, "seed": 3})
    job = assert_failed(client, bad, "could not start", "temperature", "NaN")
    assert job["progress"]["steps_done"] == 0
    assert_succeeded(client, good)


def test_a_sampling_call_that_raises_fails_its_job_and_the_worker_goes_on(client):
    # Alone in its calls: a sampling call that raises fails every job it holds.
    deadline = time.monotonic() + 120
    while client.get("/forecast", params={"status": ["queued", "running"]}).json()["jobs"]:
        assert time.monotonic() < deadline, "jobs of earlier tests still run"
        time.sleep(0.1)
    bad = submit(client, **{**GOOD, "init_time": BROKEN_INIT, "seed": 4})
    assert_failed(client, bad, "sampling failed", SAMPLING_ERROR)
    # Submitted after the failure: the same worker runs it.
    assert_succeeded(client, submit(client, **{**GOOD, "seed": 5}))


@pytest.mark.parametrize("seed", list(DAMAGE), ids=[d[1].__name__ for d in DAMAGE.values()])
def test_a_job_whose_results_cannot_be_written_fails_and_not_its_neighbour(service, client, seed):
    bad = submit(client, **{**GOOD, "seed": seed})
    good = submit(client, **{**GOOD, "seed": 6})
    error = assert_failed(client, bad, *DAMAGE[seed][2])["error"]
    # Paths relative to the data folder: the server's own folders are not the client's.
    data_dir = service[1].data_dir
    assert str(data_dir) not in error and str(data_dir.resolve()) not in error, error
    assert_succeeded(client, good)


def test_a_job_whose_end_cannot_be_recorded_at_once_ends_when_the_database_answers(client):
    # Without the worker keeping the end, both would stay `running` for good: its heartbeat
    # keeps the jobs it holds alive, so no other worker would ever take them over.
    ok = submit(client, **{**UNRECORDABLE_END[905], "seed": 905})
    bad = submit(client, **{**UNRECORDABLE_END[906], "seed": 906})
    assert assert_succeeded(client, ok)["attempts"] == 1
    assert assert_failed(client, bad, "could not start", "NaN")["attempts"] == 1
    assert REFUSED == {905: REFUSALS, 906: REFUSALS}
