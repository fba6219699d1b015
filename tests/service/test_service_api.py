"""End to end over real HTTP: `weather serve` in a subprocess (tiny model, its default worker: a
child process of the server, whose sampling metrics the server serves).

Submit, poll, long polls and auth isolation between two keys. Batching across jobs in every
format, 50 concurrent submissions sharing sampling calls, partial results and cancelling are in
`test_service_gated.py`, where the worker's start and progress are held by events.
"""

import concurrent.futures
import re

import httpx
import pytest
from service_support import (
    INIT,
    KEYS,
    digest,
    environment,
    server_process,
    service_files,
    wait_for,
)


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


def test_one_long_poll_after_the_post_gets_the_scores(alice):
    """``wait`` answers once the job ended: POST, then one GET has the scores (the README's
    recipe), while other requests keep being answered."""
    body = {"init_time": INIT, "lead": "P2D", "members": 2, "seed": 5}
    job = alice.post("/forecast", json=body).json()
    long = alice.post("/forecast", json={**body, "lead": "P15D", "seed": 6}).json()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(alice.get, f"/forecast/{job['id']}/scores", params={"wait": 120})
        short = alice.get(f"/forecast/{long['id']}/result", params={"wait": 0.3})
        # The long poll of one job (up to 120 s) does not hold up another's short one: that
        # answers within the client's 60 s timeout, whatever the machine's speed.
        assert short.status_code in (200, 202)
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
