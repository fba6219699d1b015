"""The forecast service under load; prints one JSON object.

Usage::

    python benchmarks/forecast_service.py                                   # the shipped defaults
    python benchmarks/forecast_service.py --checkpoint C --archive A --init 1991-03-01T00:00Z

Starts `weather serve` in a subprocess (in-process worker, SQLite in a temp dir; other
settings from the environment, ``WEATHER_*``) and measures, over real HTTP on 127.0.0.1, from
client threads in this process:

- ``post_latency``: POST /forecast latency (p50, p99, max, in ms) of ``--clients`` concurrent
  clients while the worker samples (a background job keeps it busy; the submissions are
  cancelled at once so they do not pile up behind it);
- ``together`` vs ``one_after_another``: the wall time (s) of K jobs of M members submitted at
  once (their members share each sampling call) and of the same K jobs submitted one at a time,
  each after the previous finished.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def _wait(client: httpx.Client, job_id: str) -> None:
    while client.get(f"/forecast/{job_id}").json()["status"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        time.sleep(0.05)


def main() -> None:
    import os
    import socket
    import subprocess
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--archive", type=Path)
    p.add_argument("--init", default="1991-03-01T00:00Z")
    p.add_argument("--lead", default="P5D", help="lead of the timed jobs (default P5D)")
    p.add_argument("--jobs", type=int, default=4, help="K jobs (default 4)")
    p.add_argument("--members", type=int, default=8, help="M members per job (default 8)")
    p.add_argument("--clients", type=int, default=100, help="concurrent clients (default 100)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = {**os.environ, "WEATHER_DATA_DIR": tmp, "WEATHER_MAX_QUEUED": str(10 * args.clients)}
        if args.checkpoint:
            env["WEATHER_CHECKPOINT"] = str(args.checkpoint)
        if args.archive:
            env["WEATHER_ARCHIVE"] = str(args.archive)
        server = subprocess.Popen(
            [sys.executable, "-m", "weather.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            result = measure(url, args)
        finally:
            server.terminate()
            server.wait(60)
    print(json.dumps(result))


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The measurements (see the module docstring) against a running service."""
    with httpx.Client(base_url=url, timeout=600) as client:
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        result: dict[str, Any] = {}
        body = {"init_time": args.init, "lead": args.lead, "members": args.members}

        # POST latency while sampling.
        busy = client.post("/forecast", json={**body, "lead": "P15D", "seed": 99}).json()
        while client.get(f"/forecast/{busy['id']}").json()["status"] != "running":
            time.sleep(0.05)

        def post(i: int) -> float:
            with httpx.Client(base_url=url, timeout=600) as c:
                t0 = time.perf_counter()
                r = c.post("/forecast", json={**body, "seed": 1000 + i})
                elapsed = time.perf_counter() - t0
                c.delete(f"/forecast/{r.json()['id']}")
                return elapsed

        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            latencies = np.asarray(list(pool.map(post, range(args.clients)))) * 1e3
        client.delete(f"/forecast/{busy['id']}")
        _wait(client, busy["id"])
        result["post_latency_ms"] = {
            "clients": args.clients,
            "p50": round(float(np.percentile(latencies, 50)), 1),
            "p99": round(float(np.percentile(latencies, 99)), 1),
            "max": round(float(latencies.max()), 1),
        }

        # K jobs together vs one after another.
        t0 = time.perf_counter()
        ids = [
            client.post("/forecast", json={**body, "seed": s}).json()["id"]
            for s in range(args.jobs)
        ]
        for job_id in ids:
            _wait(client, job_id)
        together = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in range(args.jobs):
            _wait(client, client.post("/forecast", json={**body, "seed": s}).json()["id"])
        sequential = time.perf_counter() - t0
        result[f"{args.jobs}_jobs_x_{args.members}_members_s"] = {
            "lead": args.lead,
            "together": round(together, 2),
            "one_after_another": round(sequential, 2),
            "speed_up": round(sequential / together, 2),
        }
    return result


if __name__ == "__main__":
    main()
