"""Fault injection: every failure found by trying the service as a careful user and an attacker
would answers clearly, and none comes back.

1. Non-finite numbers (NaN, Infinity, 1e400) in any field: 422 naming the field, and the
   kept-alive connection stays usable.
2. Lone surrogates in a string field or a field name: 422 the same way.
3. A damaged result (garbage metadata, chunk or scores, an unwritable temporary folder): a
   clear 500 or 503 naming the job and the damage, and no export file left behind.
4. A result store missing a variable: reported as damaged, never served as complete.
5. A raw key where its digest belongs: refused without printing the key.
6. A wrong database URL or an SQLite path that cannot be made: one line, exit 2, no traceback;
   a huge lead: a 422 that says what a lead may be.
7. Workers killed without a clean stop: pruned from the workers table after the grace period.
8. The same request and seed, with `reproducible`: bit-identical numbers whatever shares the
   worker's batch.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from service_support import INIT, REPO, server_thread, service_files, tiny_settings

from service.catalog import Catalog, model_info
from service.results import JobFiles, Subset
from service.schemas import JobRequest, request_model
from service.settings import Settings
from service.sql_store import open_store
from service.store import JobState, NewJob

POSTGRES_URL = os.environ.get("WEATHER_TEST_POSTGRES_URL")


@pytest.fixture(scope="module")
def settings(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    files = service_files(tmp_path_factory, archive, statistics)
    return tiny_settings(
        files,
        tmp_path_factory.mktemp("service-faults"),
        worker=False,
    )


@pytest.fixture(scope="module")
def url(settings):  # type: ignore[no-untyped-def]
    with server_thread(settings) as base:
        yield base


@pytest.fixture
def client(url):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


# -- 1, 2: bodies that JSON can carry in but not back out --------------------------------------

VALID = '"init_time": "2001-01-03T00:00Z", "lead": 24, "members": 2'
UNENCODABLE_BODIES = {
    "lead NaN": ('{"init_time": "2001-01-03T00:00Z", "lead": NaN}', "lead"),
    "lead Infinity": ('{"init_time": "2001-01-03T00:00Z", "lead": Infinity}', "lead"),
    "lead 1e400": ('{"init_time": "2001-01-03T00:00Z", "lead": 1e400}', "lead"),
    "lead -Infinity": ('{"init_time": "2001-01-03T00:00Z", "lead": -Infinity}', "lead"),
    "members NaN": ('{"init_time": "2001-01-03T00:00Z", "members": NaN}', "members"),
    "members 1e400": ('{"init_time": "2001-01-03T00:00Z", "members": 1e400}', "members"),
    "seed huge": ('{"init_time": "2001-01-03T00:00Z", "seed": ' + "9" * 400 + "}", "seed"),
    "region NaN": (
        "{" + VALID + ', "region": {"lat_min": NaN, "lat_max": 10, "lon_min": 0, "lon_max": 10}}',
        "region",
    ),
    "point latitude Infinity": (
        "{" + VALID + ', "format": "json", "points": [{"latitude": Infinity, "longitude": 1}]}',
        "points",
    ),
    "quantile NaN": ("{" + VALID + ', "summary": {"quantiles": [NaN]}}', "summary"),
    "threshold 1e400": (
        "{" + VALID + ', "summary": {"thresholds": {"temperature": [1e400]}}}',
        "summary",
    ),
    "surrogate in a string": ('{"init_time": "\\ud800", "lead": 24}', "init_time"),
    "surrogate in a variable": ("{" + VALID + ', "variables": ["\\udfff"]}', "variables"),
    "surrogate in a field name": ("{" + VALID + ', "\\ud800x": 1}', "\\ud800x"),
    "surrogate in a point name": (
        "{" + VALID + ', "format": "json", "points": [{"latitude": 1, "longitude": 1, '
        '"name": "\\ud83d"}]}',
        "points",
    ),
}


@pytest.mark.parametrize("case", list(UNENCODABLE_BODIES))
def test_unencodable_input_gets_422_and_the_connection_stays_usable(url, case):
    body, field = UNENCODABLE_BODIES[case]
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/forecast", body=body, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        text = answer.read().decode("utf-8")
        assert answer.status == 422, text
        detail = json.loads(text)["detail"]
        assert field in json.dumps(detail, ensure_ascii=False), detail
        # Same connection (HTTP/1.1 keep-alive): the server neither dropped nor reset it.
        conn.request("GET", "/healthz")
        again = conn.getresponse()
        assert again.status == 200 and json.loads(again.read()) == {"status": "ok"}
    finally:
        conn.close()


def test_a_huge_lead_is_refused_with_what_a_lead_may_be(client):
    for lead in ("9" * 400 + "d", 10**400, "P99999999999999999999D"):
        r = client.post(
            "/forecast",
            content=json.dumps({"init_time": INIT, "lead": lead, "members": 2}),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 422, r.text
        text = json.dumps(r.json()["detail"])
        assert "lead" in text and "too big to convert" not in text, text
        assert "360" in text or "ISO 8601" in text, text


# -- 3, 4: damaged results ---------------------------------------------------------------------


def finished_job(settings: Settings, client: httpx.Client, **request: Any) -> JobFiles:
    """A job submitted over HTTP and finished by hand (random but finite leads, real scores
    layout), so that its files can be damaged without running the model."""
    body = {"init_time": INIT, "lead": 24, "members": 2, "seed": 3, **request}
    r = client.post("/forecast", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    info = model_info(settings)
    store = open_store(settings.database)
    try:
        worker = f"test-{uuid.uuid4().hex[:6]}"
        (job,) = store.claim(
            worker, info.key, max_members=8, limit=1, now=time.time(), timeout=30, max_attempts=3
        )
        assert job.id == job_id
        run = JobRequest.model_validate(job.request)
        subset = Subset.of(info, run)
        files = JobFiles(settings.data_dir, job_id)
        files.create(info, run, subset)
        h, w = info.latitude.size, info.longitude.size
        states = np.random.default_rng(0).normal(
            280.0, 5.0, (2, run.members, h, w, info.task.n_state)
        )
        files.write_leads(info, subset, 0, states.astype(np.float32))
        files.write_scores(
            {"job_id": job_id, "members": run.members, "domain": "globe", "rows": []}
        )
        assert store.progress(job_id, worker, 2, now=time.time())
        assert store.finish(job_id, worker, JobState.SUCCEEDED, now=time.time(), expires_at=1e12)
    finally:
        store.close()
    return files


def tmp_files(settings: Settings) -> list[Path]:
    return sorted((Path(settings.data_dir) / "tmp").iterdir())


def damaged(r: httpx.Response, job_id: str, *words: str) -> None:
    assert r.status_code == 500, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert f"the stored result of job {job_id} is damaged" in detail, detail
    for word in words:
        assert word in detail, detail


def test_a_sound_result_is_served_complete(settings, client):
    files = finished_job(settings, client)
    r = client.get(f"/forecast/{files.job_id}/result", params={"format": "netcdf"})
    assert r.status_code == 200 and r.headers["X-Forecast-Complete"] == "true"
    assert client.get(f"/forecast/{files.job_id}/scores").status_code == 200
    assert tmp_files(settings) == []


@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
def test_garbage_metadata_is_reported_as_damage_and_leaves_no_export(settings, client, fmt):
    files = finished_job(settings, client)
    (files.forecast / "temperature" / "zarr.json").write_text("{ not json")
    r = client.get(f"/forecast/{files.job_id}/result", params={"format": fmt})
    damaged(r, files.job_id)
    assert tmp_files(settings) == []


@pytest.mark.parametrize("fmt", ["zarr", "netcdf", "json"])
def test_a_garbage_chunk_is_reported_naming_the_variable_and_lead(settings, client, fmt):
    request = {"format": "json", "points": [{"latitude": 10, "longitude": 20}]}
    files = finished_job(settings, client, **(request if fmt == "json" else {}))
    chunks = sorted((files.forecast / "geopotential" / "c").rglob("*"))
    chunk = [c for c in chunks if c.is_file()][-1]
    chunk.write_bytes(b"\x00garbage, not zstd" * 10)
    r = client.get(f"/forecast/{files.job_id}/result", params={"format": fmt})
    damaged(r, files.job_id, "geopotential")
    assert tmp_files(settings) == []


def test_a_missing_variable_is_damage_not_a_complete_result(settings, client):
    files = finished_job(settings, client)
    shutil.rmtree(files.forecast / "u_component_of_wind")
    r = client.get(f"/forecast/{files.job_id}/result", params={"format": "zarr"})
    damaged(r, files.job_id, "u_component_of_wind", "missing")
    assert "X-Forecast-Complete" not in r.headers


def test_garbage_scores_are_reported_as_damage(settings, client):
    files = finished_job(settings, client)
    files.scores.write_bytes(b"\xff\xfe garbage")
    damaged(client.get(f"/forecast/{files.job_id}/scores"), files.job_id, "scores.json")
    files.scores.write_text('["a list, not scores"]')
    damaged(client.get(f"/forecast/{files.job_id}/scores"), files.job_id, "scores.json")


def test_an_unwritable_temporary_folder_gets_503_and_nothing_is_left(settings, client):
    files = finished_job(settings, client)
    tmp = Path(settings.data_dir) / "tmp"
    # Root ignores permissions, so the folder is made unusable by replacing it with a file.
    shutil.rmtree(tmp)
    tmp.write_text("not a folder")
    try:
        r = client.get(f"/forecast/{files.job_id}/result", params={"format": "netcdf"})
        assert r.status_code == 503, r.text
        assert "temporary folder" in r.json()["detail"] and "Retry-After" in r.headers
    finally:
        tmp.unlink()
        tmp.mkdir()
    r = client.get(f"/forecast/{files.job_id}/result", params={"format": "netcdf"})
    assert r.status_code == 200


# -- 5, 6: start-up errors -----------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WEATHER_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "weather.cli", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_raw_key_is_refused_without_being_printed(tmp_path):
    secret = "raw-secret-" + uuid.uuid4().hex
    done = run_cli("serve", "--data-dir", str(tmp_path), env={"WEATHER_API_KEYS": secret})
    assert done.returncode == 2
    assert "api_keys" in done.stderr and "sha256" in done.stderr
    assert secret not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    with pytest.raises(ValueError) as error:
        Settings(api_keys=[secret])
    assert secret not in str(error.value)


def bad_database_urls(tmp_path: Path) -> list[tuple[str, str]]:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [(f"sqlite:///{blocker}/sub/jobs.sqlite", "cannot create its folder")]
    if POSTGRES_URL:
        base, _, _ = POSTGRES_URL.rpartition("/")
        host = base.split("@")[-1].split(":")[0]
        user = base.split("://")[1].split("@")[0]
        cases += [
            (f"{base}/no_such_database_{uuid.uuid4().hex[:6]}", "does not exist"),
            (f"postgresql://{user}@{host}:1/test", "refused"),
            (f"postgresql://no_such_role_{uuid.uuid4().hex[:6]}@{host}/test", "does not exist"),
        ]
    return cases


def test_database_errors_at_start_up_are_one_line_without_traceback(tmp_path):
    for url, words in bad_database_urls(tmp_path):
        t0 = time.monotonic()
        done = run_cli("worker", "--database-url", url, "--data-dir", str(tmp_path))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("weather: error: database_url"), lines
        assert words in lines[0], lines
        assert time.monotonic() - t0 < 60


# -- 7: dead workers -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_killed_workers_are_pruned_after_the_grace_period(tmp_path, kind):
    if kind == "postgres" and not POSTGRES_URL:
        pytest.skip("WEATHER_TEST_POSTGRES_URL is not set")
    schema = f"weather_faults_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = POSTGRES_URL if kind == "postgres" else f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    assert url is not None
    store = open_store(url, schema=schema)
    try:
        t0 = 1_000_000.0
        store.heartbeat("dead", "m", "host", ready=True, now=t0)
        store.heartbeat("alive", "m", "host", ready=True, now=t0 + 500)
        assert store.prune_workers(now=t0 + 550, grace=600) == []
        assert store.prune_workers(now=t0 + 700, grace=600) == ["dead"]
        assert [w.id for w in store.live_workers(now=t0 + 700, timeout=1e9)] == ["alive"]
    finally:
        if kind == "postgres":
            store.drop_schema()  # type: ignore[attr-defined]
        store.close()


# -- 8: reproducibility --------------------------------------------------------------------------


def run_jobs(settings: Settings, bodies: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    """Run the jobs through a worker (its own methods, no thread: the jobs are claimed together
    and share each chunk) and return each job's fields."""
    from service.worker import Worker

    info = model_info(settings)
    catalog = Catalog(info, settings.archive)
    model = request_model(settings.max_members)
    store = open_store(settings.database)
    ids = []
    for body in bodies:
        run = catalog.normalize(model(**body))
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
            now=time.time(),
        )
        ids.append(job.id)
    worker = Worker(settings, store)
    try:
        worker._setup()
        worker._admit()
        assert len(worker.lanes) == len(bodies)
        while worker.lanes:
            worker._chunk()
    finally:
        worker._finisher.shutdown(wait=True)
    out = []
    for job_id in ids:
        job = store.get(job_id, "local")
        assert job is not None and job.status == JobState.SUCCEEDED, job
        ds = JobFiles(settings.data_dir, job_id).open_forecast(job.steps_total).load()
        out.append({str(n): ds[n].values for n in ds.data_vars})
    store.close()
    return out


@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    """A tiny U-Net: its compiled convolutions sum in an order that depends on the batch size
    on this CPU (the tiny transformer's happen not to), as the shipped model's do."""
    import dataclasses

    from support import perturbed_params, tiny_model_config

    from weather.model.backbone import SphereUNetConfig
    from weather.model.checkpoint import save_checkpoint
    from weather.model.denoiser import Forecaster
    from weather.model.task import Normalization

    backbone = SphereUNetConfig(
        channels=(8, 16),
        num_groups=4,
        bottleneck_attention_layers=0,
        conditioning_dim=16,
        noise_frequencies=4,
    )
    config = dataclasses.replace(tiny_model_config(), noise="iid", backbone=backbone)
    norm = Normalization.from_statistics(config.task, statistics)
    lat, lon = archive.latitude.values, archive.longitude.values
    return save_checkpoint(
        tmp_path_factory.mktemp("unet") / "unet.msgpack",
        configs={
            "model": config.to_dict(),
            "grid": {"latitude": lat.tolist(), "longitude": lon.tolist()},
        },
        normalization=norm.to_dict(),
        params=perturbed_params(Forecaster(config, norm, lat, lon)),
    )


def test_reproducible_mode_gives_bit_identical_members_whatever_shares_the_batch(
    settings, unet_checkpoint, tmp_path
):
    mine = {"init_time": INIT, "lead": 24, "members": 1, "seed": 21}
    other = {"init_time": "2001-01-04T12:00Z", "lead": 36, "members": 4, "seed": 5}
    # Batch sizes 1 and 8: alone, the one member is a batch of 1; beside the other job's 4 it
    # would share a call of 8, whose compiled convolutions and matmuls sum in another order
    # (measured with the shipped model: 4.8e4 of 5.4e4 values of one step differ, by up to
    # 0.016, between batches of 1 and 8; with this test's tiny U-Net 1137 of 9216).
    common = {
        "checkpoint": unet_checkpoint,
        "batch_sizes": [1, 8],
        "max_members": 4,
        "reproducible": True,
        "warmup": False,
    }
    alone = settings.model_copy(update={"data_dir": tmp_path / "alone", **common})
    shared = settings.model_copy(update={"data_dir": tmp_path / "shared", **common})
    (a,) = run_jobs(alone, [mine])
    b, _ = run_jobs(shared, [mine, other])
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
