"""Property-based fuzzing of the API from its own OpenAPI document: no input gives a 5xx.

Bodies are drawn from the submission's JSON schema in the OpenAPI document (`from_schema`
below covers what FastAPI emits: objects, ``$ref``, ``anyOf``, enums, numbers with bounds,
strings and arrays with lengths), most of them with a valid init time so that they get past
the archive check, plus arbitrary JSON; path ids and query parameters are drawn freely.
Every number may also be one that JSON carries in but not back out (NaN, Infinity, 1e400), an
integer far beyond any bound, and every string may hold lone UTF-16 surrogates: each must get
its 4xx, and the next request on the same kept-alive connection must succeed (`fine` checks
both). Bounded: a few dozen examples per route, against an API-only server over real HTTP (no
worker, so nothing is sampled).
"""

import json
import urllib.parse
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_support import INIT, server_thread, service_files, tiny_settings

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# What a hostile client sends: non-finite numbers, integers of hundreds of digits, and text with
# lone surrogates (category Cs), which no UTF-8 encoder accepts.
HOSTILE_NUMBERS = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308 * 10]) | (
    st.integers(300, 1200).map(lambda digits: int("9" * digits))
)
HOSTILE_TEXT = st.text(
    st.characters(categories=["Cs"]) | st.characters(codec="utf-8"), min_size=1, max_size=8
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | HOSTILE_NUMBERS
    | st.text(max_size=20)
    | HOSTILE_TEXT,
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
            keys = (
                st.sampled_from(["temperature", "geopotential", "humidity"])
                | st.text(max_size=5)
                | HOSTILE_TEXT
            )
            return st.dictionaries(keys, values, max_size=3)
        required = set(schema.get("required", []))
        optional = {k: from_schema(v, root) for k, v in props.items() if k not in required}
        # Now and then a field name with a lone surrogate joins the object.
        optional["\ud800" + next(iter(props), "")] = HOSTILE_TEXT
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
        return (
            st.integers(schema.get("minimum", -(2**40)), schema.get("maximum", 2**40))
            | HOSTILE_NUMBERS
        )
    if kind == "number":
        return (
            st.floats(
                schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False
            )
            | st.integers(-1000, 1000)
            | HOSTILE_NUMBERS
        )
    if kind == "string":
        return (
            st.text(
                min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 30), 30)
            )
            | HOSTILE_TEXT
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON


@pytest.fixture(scope="module")
def client(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    files = service_files(tmp_path_factory, archive, statistics)
    config = tiny_settings(
        files,
        tmp_path_factory.mktemp("service-fuzz"),
        worker=False,
        max_queued=20,
    )
    with server_thread(config) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json()
    return spec


REQUESTS = {"count": 0}


def send(client: httpx.Client, method: str, url: str, **kw: Any) -> httpx.Response:
    """One request; bodies go as JSON text that may hold NaN, Infinity and lone surrogates
    (what Python's JSON writer emits for them), as a hostile client would send them."""
    if "json" in kw:
        kw["content"] = json.dumps(kw.pop("json"))
        kw.setdefault("headers", {})["Content-Type"] = "application/json"
    REQUESTS["count"] += 1
    return client.request(method, url, **kw)


def fine(r: httpx.Response, client: httpx.Client | None = None) -> None:
    """No 5xx; a 4xx says why in ``detail``; the connection still serves the next request."""
    assert r.status_code < 500, (r.status_code, r.request.method, r.request.url, r.text)
    if r.status_code >= 400:
        assert "detail" in r.json(), r.text
    if client is not None:
        REQUESTS["count"] += 1
        assert client.get("/healthz").status_code == 200


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
        r = send(client, "POST", "/forecast", json=body, headers=headers)
        fine(r, client)
        if r.status_code == 202:
            fine(send(client, "GET", f"/forecast/{r.json()['id']}/result"))
            fine(send(client, "DELETE", f"/forecast/{r.json()['id']}"))

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
        fine(send(client, "POST", "/forecast", json=body), client)
        fine(
            send(
                client,
                "POST",
                "/forecast",
                content=raw,
                headers={"Content-Type": "application/json"},
            ),
            client,
        )
        path = "/forecast/" + urllib.parse.quote(job_id, safe="")
        for route in (path, f"{path}/result", f"{path}/scores"):
            fine(send(client, "GET", route, params=query))
        fine(send(client, "DELETE", path))
        fine(send(client, "GET", "/forecast", params=query), client)

    anything()


def test_the_fuzz_run_made_hundreds_of_requests():
    """The two runs above (same module, in order) sent this many requests, none answered 5xx."""
    print(f"fuzz: {REQUESTS['count']} requests, none answered 5xx")
    assert REQUESTS["count"] >= 300, REQUESTS
