"""Property-based fuzzing of the API from its own OpenAPI document: no input gives a 5xx.

Bodies are drawn from the submission's JSON schema in the OpenAPI document (`from_schema`
below covers what FastAPI emits: objects, ``$ref``, ``anyOf``, enums, numbers with bounds,
strings and arrays with lengths), most of them with a valid init time so that they get past
the archive check, plus arbitrary JSON; path ids and query parameters are drawn freely.
Bounded: a few dozen examples per route, against an API-only server over real HTTP (no worker,
so nothing is sampled).
"""

import urllib.parse
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_support import INIT, server_thread, service_files

from service.settings import Settings

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def from_schema(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of an OpenAPI (JSON Schema) schema; optional properties are sometimes left out
    and, now and then, a value breaks its schema (a wrong type) to probe the validation."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return st.deferred(lambda: from_schema(root["components"]["schemas"][name], root))
    if "anyOf" in schema:
        return st.one_of([from_schema(s, root) for s in schema["anyOf"]])
    if "enum" in schema or "const" in schema:
        return st.sampled_from(schema.get("enum", [schema.get("const")]))
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        if not props:  # a mapping, e.g. thresholds per variable
            values = from_schema(schema.get("additionalProperties", {}), root)
            keys = st.sampled_from(["temperature", "geopotential", "humidity"]) | st.text(
                max_size=5
            )
            return st.dictionaries(keys, values, max_size=3)
        required = set(schema.get("required", []))
        optional = {k: from_schema(v, root) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(
            {k: from_schema(v, root) for k, v in props.items() if k in required},
            optional=optional,
        )
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {}), root),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 5), 5),
        )
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**40)), schema.get("maximum", 2**40))
    if kind == "number":
        return st.floats(
            schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False
        ) | st.integers(-1000, 1000)
    if kind == "string":
        return st.text(
            min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 30), 30)
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON


@pytest.fixture(scope="module")
def client(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    files = service_files(tmp_path_factory, archive, statistics)
    config = Settings(
        checkpoint=files.checkpoint,
        archive=files.archive,
        data_dir=tmp_path_factory.mktemp("service-fuzz"),
        worker=False,
        max_queued=20,
        max_members=8,
        batch_sizes=[8],
    )
    with server_thread(config) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json()
    return spec


def fine(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.request.method, r.request.url, r.text)
    if r.status_code >= 400:
        assert "detail" in r.json(), r.text


def test_schema_drawn_submissions_never_fail_the_server(client, spec):
    request = spec["components"]["schemas"]["ForecastRequest"]

    @FUZZ
    @given(
        body=from_schema(request, spec),
        init=st.sampled_from([None, INIT, INIT, "2001-01-12T18:00Z"]),
        key=st.none() | st.text(min_size=1, max_size=8, alphabet="abc"),
    )
    def submit(body: dict[str, Any], init: str | None, key: str | None) -> None:
        if init is not None:
            body["init_time"] = init
        headers = {"Idempotency-Key": key} if key is not None else {}
        r = client.post("/forecast", json=body, headers=headers)
        fine(r)
        if r.status_code == 202:
            fine(client.get(f"/forecast/{r.json()['id']}/result"))
            fine(client.delete(f"/forecast/{r.json()['id']}"))

    submit()


def test_arbitrary_bodies_ids_and_queries_never_fail_the_server(client):
    @FUZZ
    @given(
        body=JSON,
        raw=st.binary(max_size=64),
        job_id=st.text(max_size=40) | st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
        query=st.dictionaries(
            st.sampled_from(["status", "limit", "offset", "format"]),
            st.text(max_size=12) | st.integers(-5, 10**7).map(str),
            max_size=3,
        ),
    )
    def anything(body: Any, raw: bytes, job_id: str, query: dict[str, str]) -> None:
        fine(client.post("/forecast", json=body))
        fine(client.post("/forecast", content=raw, headers={"Content-Type": "application/json"}))
        path = "/forecast/" + urllib.parse.quote(job_id, safe="")
        for route in (path, f"{path}/result", f"{path}/scores"):
            fine(client.get(route, params=query))
        fine(client.delete(path))
        fine(client.get("/forecast", params=query))

    anything()
