"""POST /forecast latency from concurrent clients while the worker samples; prints one JSON object.

Usage::

    python benchmarks/forecast_service.py --tiny          # a tiny model and archive (~1 min)
    python benchmarks/forecast_service.py                 # the shipped checkpoint and test archive
    python benchmarks/forecast_service.py --checkpoint C --archive A --init 1991-03-01T00:00Z
    python benchmarks/forecast_service.py --url http://127.0.0.1:8000 --init T  # a running server
    python benchmarks/forecast_service.py --tiny --batching   # also K jobs together vs in turn

It starts `weather serve` in a subprocess (its default worker, SQLite in a temp dir, other
settings from the environment, ``WEATHER_*``), so the clients, which run here in one asyncio
loop on plain sockets (a few tens of microseconds of client CPU per request, where a thread and
an httpx client per request cost milliseconds and queue behind the client's own GIL), never share
a process with the server. With ``--tiny`` it first writes the tiny checkpoint and synthetic
archive of the service tests (``tests/service_support.py``) to the temp dir.

What it measures, over HTTP/1.1 on 127.0.0.1:

1. ``--busy-jobs`` jobs of ``--busy-members`` members and 15 days keep the worker sampling
   throughout (a keeper resubmits one that ends; ``worker.busy_fraction`` is the share of its
   polls that found one running, ``worker.busy_steps`` the 12 h steps they advanced);
2. ``--clients`` clients open a keep-alive connection each and submit once all at the same
   instant: ``burst_latency_ms``, the worst case (the last of them waits for the 99 before it,
   so this measures throughput more than latency);
3. then each client submits ``--requests`` more forecasts (``--members`` members, ``--lead``),
   each after a random pause (exponential, mean ``--pause`` s), so that together they arrive as
   a Poisson stream of ``offered_per_s`` = clients / pause: ``post_latency_ms``, p50, p99 and max
   of those submissions' latency (request written to response read), and ``achieved_per_s``.
   Each client cancels its job right after the 202, so the queue does not grow (the cancel is
   load too, not timed); ``errors`` counts answers other than 202 by status.

Bounded in count (``--clients`` x (1 + ``--requests``)) and time (``--duration`` s for step 3,
then the clients stop; ``--startup-timeout`` s for the server to be ready).

``--batching`` adds ``K_jobs_x_M_members_s``: the wall time (s) of ``--jobs`` jobs submitted at
once (their members share each sampling call) and of the same jobs one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "failed", "cancelled")


class Connection:
    """One client's keep-alive HTTP/1.1 connection (JSON bodies, Content-Length framing)."""

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0.0

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """``(status, decoded JSON body or None)``; reconnects when the server closed."""
        # uvicorn closes connections idle for 5 s; a client that paused longer reconnects
        # first (and the connect counts in its latency, as it would for a real client).
        if self.writer is not None and time.monotonic() - self.used > 3.0:
            self.close()
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = b"" if body is None else json.dumps(body).encode()
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"connection" and b"close" in value.lower():
                close = True
        payload = await self.reader.readexactly(length)
        self.used = time.monotonic()
        if close:
            self.close()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1e3
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "max": round(float(a.max()), 1),
    }


async def _wait_ready(
    c: Connection, timeout: float, server: subprocess.Popen[bytes] | None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"weather serve exited with {server.returncode}")
        try:
            if (await c.request("GET", "/readyz"))[0] == 200:
                return
        except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
            c.close()
        await asyncio.sleep(0.5)
    raise SystemExit(f"the server was not ready within {timeout:g} s")


async def _wait_done(c: Connection, job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (await c.request("GET", f"/forecast/{job_id}"))[1]["status"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} did not end within {timeout:g} s")
        await asyncio.sleep(0.05)


async def measure(
    host: str, port: int, args: argparse.Namespace, server: subprocess.Popen[bytes] | None
) -> dict[str, Any]:
    """The measurements (see the module docstring) against a running service."""
    control = Connection(host, port, args.token)
    await _wait_ready(control, args.startup_timeout, server)
    body = {"init_time": args.init, "lead": args.lead, "members": args.members}
    busy_body = {**body, "lead": "P15D", "members": args.busy_members}

    # 1. Keep the worker sampling.
    busy: list[str] = []
    for s in range(args.busy_jobs):
        status, job = await control.request("POST", "/forecast", {**busy_body, "seed": 99 + s})
        if status != 202:
            raise SystemExit(f"the busy job was refused: {status} {job}")
        busy.append(job["id"])
    deadline = time.monotonic() + args.startup_timeout
    while True:
        states = [(await control.request("GET", f"/forecast/{i}"))[1] for i in busy]
        if all(st["status"] == "running" for st in states):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the busy jobs did not start within {args.startup_timeout:g} s")
        await asyncio.sleep(0.05)
    steps_before = sum(st["progress"]["steps_done"] for st in states)
    keeper_polls, keeper_busy, busy_steps, resubmitted = 0, 0, 0, 0
    stop = asyncio.Event()

    async def keeper() -> None:
        nonlocal keeper_polls, keeper_busy, busy_steps, resubmitted
        keep = Connection(host, port, args.token)
        seen = {i: 0 for i in busy}
        while not stop.is_set():
            running = False
            for k, job_id in enumerate(list(busy)):
                st = (await keep.request("GET", f"/forecast/{job_id}"))[1]
                busy_steps += st["progress"]["steps_done"] - seen.get(job_id, 0)
                seen[job_id] = st["progress"]["steps_done"]
                running |= st["status"] == "running"
                if st["status"] in TERMINAL:
                    seed = 1_000_000 + resubmitted
                    new = (await keep.request("POST", "/forecast", {**busy_body, "seed": seed}))[1]
                    busy[k], resubmitted = new["id"], resubmitted + 1
                    seen[new["id"]] = 0
            keeper_polls, keeper_busy = keeper_polls + 1, keeper_busy + running
            await asyncio.sleep(0.25)
        keep.close()

    # 2. The clients: connect all, one simultaneous submission each (the burst), then each
    # submits at random times (exponential pauses, so together they arrive as a Poisson
    # stream of clients / pause per second).
    steady: list[float] = []
    burst: list[float] = []
    errors: dict[str, int] = {}
    connections = [Connection(host, port, args.token) for _ in range(args.clients)]
    for c in connections:
        await c.request("GET", "/healthz")

    async def submit(c: Connection, seed: int, into: list[float]) -> None:
        t0 = time.perf_counter()
        status, job = await c.request("POST", "/forecast", {**body, "seed": seed})
        into.append(time.perf_counter() - t0)
        if status != 202:
            errors[str(status)] = errors.get(str(status), 0) + 1
            return
        await c.request("DELETE", f"/forecast/{job['id']}")

    async def client(i: int, c: Connection, deadline: float) -> None:
        rng = random.Random(i)
        for j in range(args.requests):
            if args.pause > 0:
                await asyncio.sleep(rng.expovariate(1 / args.pause))
            if time.monotonic() >= deadline:
                break
            await submit(c, 1000 * i + j + 1, steady)

    keeping = asyncio.create_task(keeper())
    await asyncio.gather(*(submit(c, 1000 * i, burst) for i, c in enumerate(connections)))
    t0 = time.perf_counter()
    deadline = time.monotonic() + args.duration
    await asyncio.gather(*(client(i, c, deadline) for i, c in enumerate(connections)))
    wall = time.perf_counter() - t0
    for c in connections:
        c.close()
    stop.set()
    await keeping
    for job_id in busy:
        await control.request("DELETE", f"/forecast/{job_id}")
    result: dict[str, Any] = {
        "post_latency_ms": {
            "clients": args.clients,
            "submissions": len(steady),
            **_ms(steady),
            "offered_per_s": round(args.clients / args.pause, 1) if args.pause > 0 else None,
            "achieved_per_s": round(len(steady) / wall, 1),
        },
        "burst_latency_ms": {"submissions": len(burst), **_ms(burst)},
        "errors": errors,
        "wall_s": round(wall, 2),
        "worker": {
            "busy_fraction": round(keeper_busy / max(keeper_polls, 1), 3),
            "busy_steps": busy_steps - steps_before,
            "busy_jobs_resubmitted": resubmitted,
        },
        "settings": {
            k: getattr(args, k)
            for k in ("requests", "pause", "duration", "members", "lead", "busy_jobs")
        }
        | {"busy_members": args.busy_members},
    }
    for job_id in busy:
        await _wait_done(control, job_id, args.startup_timeout)

    # 3. K jobs together vs one after another (--batching).
    if args.batching:
        t1 = time.perf_counter()
        ids = [
            (await control.request("POST", "/forecast", {**body, "seed": s}))[1]["id"]
            for s in range(args.jobs)
        ]
        for job_id in ids:
            await _wait_done(control, job_id, args.startup_timeout)
        together = time.perf_counter() - t1
        t1 = time.perf_counter()
        for s in range(args.jobs):
            job = (await control.request("POST", "/forecast", {**body, "seed": s}))[1]
            await _wait_done(control, job["id"], args.startup_timeout)
        sequential = time.perf_counter() - t1
        # The same member-steps as one job: what batching across jobs should match.
        t1 = time.perf_counter()
        big = {**body, "members": args.jobs * args.members, "seed": 0}
        status, job = await control.request("POST", "/forecast", big)
        if status != 202:
            raise SystemExit(f"the {big['members']}-member job was refused: {status} {job}")
        await _wait_done(control, job["id"], args.startup_timeout)
        one_big = time.perf_counter() - t1
        result[f"{args.jobs}_jobs_x_{args.members}_members_s"] = {
            "lead": args.lead,
            "together": round(together, 2),
            "one_after_another": round(sequential, 2),
            f"one_{args.jobs * args.members}_member_job": round(one_big, 2),
            "speed_up": round(sequential / together, 2),
            "together_over_one_big_job": round(together / one_big, 2),
        }
    control.close()
    return result


def tiny_files(root: Path) -> tuple[Path, Path, str]:
    """The service tests' tiny checkpoint and archive under ``root``; ``(checkpoint, archive,
    an init time)``."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import synthetic_archive
    from service_support import INIT, write_service_files

    from weather.data.statistics import compute_statistics

    archive = synthetic_archive()
    names = [str(v) for v in archive.data_vars]
    stats = compute_statistics(
        archive, names, start=archive.time.values[0], end=archive.time.values[-1]
    )
    files = write_service_files(root, archive, stats)
    return files.checkpoint, files.archive, INIT


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="the tests' tiny model and archive")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--archive", type=Path)
    p.add_argument(
        "--url",
        help="measure a running server instead (its WEATHER_MAX_QUEUED must exceed --clients)",
    )
    p.add_argument("--token", help="bearer token for --url (API keys)")
    p.add_argument("--init", help="init time (default 1991-03-01T00:00Z; the tiny archive's)")
    p.add_argument("--clients", type=int, default=100, help="concurrent clients (default 100)")
    p.add_argument("--requests", type=int, default=20, help="submissions per client (default 20)")
    p.add_argument(
        "--pause", type=float, default=1.0, help="mean pause (s) before a client's next (1.0)"
    )
    p.add_argument("--duration", type=float, default=60.0, help="at most this long (s, 60)")
    p.add_argument("--startup-timeout", type=float, default=900.0, help="ready within (s, 900)")
    p.add_argument("--lead", default="P5D", help="lead of the submissions (default P5D)")
    p.add_argument("--members", type=int, default=8, help="members per submission (default 8)")
    p.add_argument("--busy-jobs", type=int, default=1, help="jobs keeping it busy (default 1)")
    p.add_argument("--busy-members", type=int, default=8, help="their members (default 8)")
    p.add_argument("--batching", action="store_true", help="also K jobs together vs in turn")
    p.add_argument("--jobs", type=int, default=4, help="K jobs of --batching (default 4)")
    args = p.parse_args()

    if args.url:
        url = urllib.parse.urlsplit(args.url)
        args.init = args.init or "1991-03-01T00:00Z"
        result = asyncio.run(measure(url.hostname or "127.0.0.1", url.port or 80, args, None))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "WEATHER_DATA_DIR": tmp, "WEATHER_MAX_QUEUED": str(10 * args.clients)}
        if args.tiny:
            checkpoint, archive, init = tiny_files(Path(tmp) / "tiny")
            env.update(WEATHER_CHECKPOINT=str(checkpoint), WEATHER_ARCHIVE=str(archive))
            env.setdefault("JAX_PLATFORMS", "cpu")
            args.init = args.init or init
        args.init = args.init or "1991-03-01T00:00Z"
        if args.checkpoint:
            env["WEATHER_CHECKPOINT"] = str(args.checkpoint)
        if args.archive:
            env["WEATHER_ARCHIVE"] = str(args.archive)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with open(Path(tmp) / "server.log", "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "weather.cli", "serve", "--port", str(port)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            result = asyncio.run(measure("127.0.0.1", port, args, server))
        except BaseException:
            sys.stderr.write((Path(tmp) / "server.log").read_text()[-4000:])
            raise
        finally:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
