"""Admission over real HTTP (an API-only server in this process, no worker, no keys): the
queue limit (429 + Retry-After), idempotency keys, request checks that name the field and
the reason, the body limit, loopback-only serving, readiness, and a documented OpenAPI."""

import time

import httpx
import pytest
from service_support import INIT, server_thread, service_files, tiny_settings

from service.settings import Settings


@pytest.fixture(scope="module")
def settings(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    files = service_files(tmp_path_factory, archive, statistics)
    return tiny_settings(
        files,
        tmp_path_factory.mktemp("service-limits"),
        worker=False,
        max_queued=3,
        max_body_bytes=2048,
        retry_after_s=7,
    )


@pytest.fixture(scope="module")
def client(settings):  # type: ignore[no-untyped-def]
    with server_thread(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["detail"])


def test_requests_are_checked_field_by_field(client):
    ok = {"init_time": INIT, "lead": 24, "members": 2}
    cases = [
        (
            {"init_time": "2001-01-01T00:00Z"},
            "init_time",
            "from 2001-01-01T12:00Z to 2001-01-12T18:00Z",
        ),
        ({"init_time": "2002-06-01T00Z"}, "init_time", "not in the analysis archive"),
        ({"init_time": "yesterday"}, "init_time", "not a date-time"),
        ({"lead": 18}, "lead", "multiple of 12 h"),
        ({"lead": "P16D"}, "lead", "at most 15 days"),
        ({"lead": "soon"}, "lead", "not a duration"),
        ({"members": 9}, "members", "less than or equal to 8"),
        ({"members": 0}, "members", "greater than or equal to 1"),
        ({"variables": ["humidity"]}, "variables", "not forecast by this model"),
        ({"levels": [700]}, "levels", "[700] hPa are not model levels"),
        ({"format": "json"}, "", "needs points or a region"),
        (
            {"region": {"lat_min": 50, "lat_max": 10, "lon_min": 0, "lon_max": 10}},
            "region",
            "north",
        ),
        (
            {"region": {"lat_min": 1, "lat_max": 2, "lon_min": 1, "lon_max": 2}},
            "region",
            "no grid point",
        ),
        (
            {"summary": {"thresholds": {"temperature": [1.0]}}, "variables": ["geopotential"]},
            "summary",
            "not among the requested variables",
        ),
        ({"summary": {"quantiles": [1.5]}}, "quantiles", "between 0 and 1"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
    ]
    for change, field, reason in cases:
        r = client.post("/forecast", json={**ok, **change})
        assert r.status_code == 422, (change, r.text)
        detail = r.json()["detail"]
        text = " ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail)
        assert field in text and reason in text, (change, text)


def test_queue_limit_idempotency_and_queued_results(client):
    body = {"init_time": INIT, "lead": 12, "members": 1, "seed": 3}
    first = client.post("/forecast", json=body, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202 and first.json()["queue_position"] >= 1
    assert first.headers["location"] == f"/forecast/{first.json()['id']}"
    again = client.post("/forecast", json=body, headers={"Idempotency-Key": "abc"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    conflict = client.post(
        "/forecast", json={**body, "seed": 4}, headers={"Idempotency-Key": "abc"}
    )
    assert "different request" in problem(conflict, 409)
    job = first.json()["id"]
    # Nothing runs here (no worker): results and scores are not there yet.
    pending = client.get(f"/forecast/{job}/result")
    assert pending.status_code == 202 and pending.json()["status"] == "queued"
    assert pending.headers["retry-after"] == "1"
    assert client.get(f"/forecast/{job}/scores").status_code == 202
    # Fill the queue (3 jobs), then 429 with Retry-After.
    while (r := client.post("/forecast", json=body)).status_code == 202:
        pass
    assert "retry later" in problem(r, 429) and r.headers["retry-after"] == "7"
    # A replay still answers: it queues nothing.
    assert (
        client.post("/forecast", json=body, headers={"Idempotency-Key": "abc"}).status_code == 202
    )
    # Cancelling frees a place.
    cancelled = client.delete(f"/forecast/{job}")
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    assert "cancelled before its first lead" in problem(client.get(f"/forecast/{job}/result"), 409)
    assert client.post("/forecast", json=body).status_code == 202
    for queued in client.get("/forecast", params={"status": "queued"}).json()["jobs"]:
        client.delete(f"/forecast/{queued['id']}")


def test_body_limit_paths_and_readiness(client):
    big = {"init_time": INIT, "points": [{"latitude": 0, "longitude": 0, "name": "x" * 60}] * 40}
    assert "exceeds 2048 bytes" in problem(client.post("/forecast", json=big), 413)

    def chunked():  # no Content-Length: the limit still holds
        yield b'{"init_time": "' + b"x" * 4000 + b'"}'

    assert client.post("/forecast", content=chunked()).status_code == 413
    assert client.get("/forecast/not-a-job-id").status_code == 422
    assert client.get("/forecast/" + "0" * 32).status_code == 404
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["worker"] == "0"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert "weather_queue_depth" in client.get("/metrics").text


class FakeRequest:
    """What `owner_of` reads of a request: the client's address."""

    def __init__(self, host: str) -> None:
        self.client = type("Client", (), {"host": host})()


def test_without_keys_only_loopback_clients_are_served(settings):
    from fastapi import HTTPException

    from service.auth import owner_of

    with pytest.raises(HTTPException, match="only loopback") as refused:
        owner_of(settings, FakeRequest("192.0.2.7"), None)  # type: ignore[arg-type]
    assert refused.value.status_code == 403
    for host in ("127.0.0.1", "::1", "localhost"):
        assert owner_of(settings, FakeRequest(host), None) == "local"  # type: ignore[arg-type]


def test_serve_refuses_a_public_bind_without_keys(settings, capsys):
    from weather.cli import main

    code = main(
        [
            "serve",
            "--host",
            "0.0.0.0",
            "--checkpoint",
            str(settings.checkpoint),
            "--archive",
            str(settings.archive),
        ]
    )
    assert code == 2 and "binds to loopback only" in capsys.readouterr().err


def test_settings_are_validated():
    with pytest.raises(ValueError, match="sha256 hex digests"):
        Settings(api_keys="my-plain-key")
    with pytest.raises(ValueError, match="exceeds the largest batch size"):
        Settings(max_members=64, batch_sizes=[8, 16])
    keys = Settings(api_keys="A" * 64 + "," + "b" * 64).api_keys
    assert keys == ["a" * 64, "b" * 64]
    assert Settings(database_url=None, data_dir="/x").database == "sqlite:////x/jobs.sqlite"


def test_sampler_setting_takes_the_general_spec():
    assert Settings(sampler=" 2m:6,spread_scale=0.5 ").sampler_spec == "2m:6,spread_scale=0.5"
    assert Settings(sampler_steps=8).sampler_spec == "8"
    assert Settings().sampler_spec is None
    assert Settings().sampler_override is None
    override = Settings(sampler_steps=8).sampler_override
    assert override is not None and override.changes == (("num_steps", 8),)
    with pytest.raises(ValueError, match="sampler: 'bogus' is not SOLVER:N"):
        Settings(sampler="bogus")
    with pytest.raises(ValueError, match="spread_scale must be finite and > 0"):
        Settings(sampler="2s:5,spread_scale=0")
    with pytest.raises(ValueError, match="give only sampler"):
        Settings(sampler="2s:5", sampler_steps=5)


def test_workers_with_other_samplers_claim_other_jobs(settings):
    """The compatibility key covers the sampler: a worker never samples a job queued for
    another sampler (the key of a job is fixed when it is queued)."""
    from service.catalog import model_info

    own = model_info(settings).key
    other = model_info(settings.model_copy(update={"sampler": "2s:3"})).key
    assert own != other
    assert model_info(settings.model_copy(update={"sampler": "2s:3"})).key == other


def test_openapi_documents_every_field_with_units_and_limits(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name, schema in schemas.items():
        if name in ("HTTPValidationError", "ValidationError"):  # FastAPI's own
            continue
        for field, prop in schema.get("properties", {}).items():
            documented = "description" in prop or "$ref" in prop
            assert documented, f"{name}.{field} has no description"
    members = schemas["ForecastRequest"]["properties"]["members"]
    assert members["maximum"] == 8 and members["minimum"] == 1
    assert "hours" in schemas["ForecastRequest"]["properties"]["lead"]["description"]
    assert "degrees north" in schemas["Region"]["properties"]["lat_min"]["description"]
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert op.get("summary"), f"{method.upper()} {path} has no summary"
            for param in op.get("parameters", []):
                assert param.get("description"), f"{method.upper()} {path}: {param['name']}"
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_expired_results_are_deleted_and_answered_410(settings, client):
    from service.metrics import ServiceMetrics
    from service.results import JobFiles
    from service.runtime import Service

    body = {"init_time": INIT, "lead": 12, "members": 1}
    job = client.post("/forecast", json=body).json()["id"]
    svc = Service(settings.model_copy(update={"worker": False}), ServiceMetrics())
    try:
        files = JobFiles(settings.data_dir, job)
        files.dir.mkdir(parents=True)
        (files.dir / "scores.json").write_text("{}")
        svc.store.cancel(job, None, now=time.time(), expires_at=time.time() - 1)
        assert svc.sweep(time.time()) == [job]
        assert not files.dir.exists()
    finally:
        svc.close()
    status = client.get(f"/forecast/{job}").json()
    assert status["result_expired"] and status["status"] == "cancelled"
    assert "expired" in problem(client.get(f"/forecast/{job}/result"), 410)
