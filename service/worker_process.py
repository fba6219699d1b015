"""The API server's worker as a child process, the default of `weather serve`.

Why not a thread of the API process: the worker's host-side work (Zarr writes, which zarr runs on
an I/O thread of its own, numpy, job set-up in xarray) holds the interpreter lock about a fifth of
the time (py-spy --gil, tiny model), and each time the event loop or a route's thread wants the
lock back it may wait out the interpreter's 5 ms switch interval. With
``benchmarks/forecast_service.py --tiny`` (100 clients, 100 submissions/s while sampling, on 2
cores shared with other work), POST took p50 55-70 ms, p99 220-320 ms with the worker as a
thread, and p50 6-11 ms, p99 56-306 ms (most runs under 130 ms) with the same code and worker
in a process of its own; the rest of that tail is the machine's other load.

Protocol. The parent starts ``python -m service.worker_process`` with a pipe as its standard
input: the first line is JSON (``settings``, ``worker_id``, ``metrics_file``, ``log_level``);
after it every byte is a wake-up (a job was submitted), and end of file means the parent is
gone, so a child never outlives its server. SIGTERM, SIGINT and end of file all stop the worker
after its current chunk and hand its unfinished jobs back to the queue. The child writes its
sampling metrics to ``metrics_file`` whenever they change; the parent serves them at /metrics.
Its readiness is its heartbeat row in the job store. If it dies, the parent starts another
(after 1, 2, 4 ... 60 s), which resumes the dead one's jobs once their heartbeats go stale.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from service.metrics import ServiceMetrics
from service.settings import Settings
from service.store import JobStore

log = logging.getLogger("service.worker")


class WorkerProcess:
    """Starts, wakes, supervises and stops the worker's child process.

    Args:
      settings: the server's settings; the child gets them all (and the same database).
      metrics: the server's metrics; its worker metrics become the child's.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics_file = Path(settings.data_dir) / "workers" / f"{uuid.uuid4().hex}.prom"
        self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics.serve_worker_file(self.metrics_file)
        self.worker_id = ""
        self.failure: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, name="weather-worker-supervisor", daemon=True
        )
        self._supervisor.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            # A new id per child: a dead child's heartbeat row must not make its successor
            # look ready.
            self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            settings = self.settings.model_dump(mode="json")
            settings["database_url"] = self.settings.database
            init = {
                "settings": settings,
                "worker_id": self.worker_id,
                "metrics_file": str(self.metrics_file),
                "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            }
            process = subprocess.Popen(
                [sys.executable, "-m", "service.worker_process"], stdin=subprocess.PIPE
            )
            assert process.stdin is not None
            process.stdin.write(json.dumps(init).encode() + b"\n")
            process.stdin.flush()
            # Wake-ups come from request threads: never block one on a full pipe.
            os.set_blocking(process.stdin.fileno(), False)
            self._process = process

    def _supervise(self) -> None:
        delay = 1.0
        while True:
            process = self._process
            assert process is not None
            code = process.wait()
            if self._stop.is_set():
                return
            self.failure = f"the worker process exited with {code}; starting another"
            log.error("worker %s: %s in %g s", self.worker_id, self.failure, delay)
            if self._stop.wait(delay):
                return
            delay = min(2 * delay, 60.0)
            try:
                self._spawn()
            except OSError:  # the next round tries again (the dead process returns at once)
                log.exception("worker process: could not start another")

    def wake(self) -> None:
        """A job was submitted: look for work now rather than at the next poll."""
        process = self._process
        if process is None or process.stdin is None:
            return
        # A full pipe holds wake-ups already; a broken one, a dead child being replaced.
        with contextlib.suppress(OSError):
            os.write(process.stdin.fileno(), b"\n")

    def readiness(self, store: JobStore, now: float) -> tuple[bool, str]:
        """``(ready, detail)``: ready once the child's heartbeat says its model is compiled."""
        timeout = self.settings.worker_timeout_s
        for worker in store.live_workers(now=now, timeout=timeout):
            if worker.id == self.worker_id and worker.ready:
                return True, "model loaded and compiled"
        return False, self.failure or "loading and compiling the model"

    def stop(self, timeout: float = 60.0) -> None:
        """Let the child finish its chunk and hand its jobs back; kill it after ``timeout``."""
        with self._lock:
            self._stop.set()
            process = self._process
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("worker %s did not stop within %g s; killing it", self.worker_id, timeout)
                process.kill()
                process.wait()
            if process.stdin is not None:
                process.stdin.close()
        if self._supervisor is not None:
            self._supervisor.join(5)
        self.metrics_file.unlink(missing_ok=True)


def _listen(worker: Any) -> None:
    """Wake the worker on each byte from the parent; stop it when the parent is gone."""
    while True:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except OSError:
            data = b""
        if not data:
            worker.stop(timeout=0)
            return
        worker.wake()


def main() -> int:
    """The child: read the first line of standard input, then run the worker until stopped."""
    line = sys.stdin.buffer.readline()
    if not line:  # the parent went away before telling us anything
        return 0
    init = json.loads(line)
    settings = Settings(**init["settings"])
    # Before JAX starts its threads, which inherit the niceness.
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    logging.basicConfig(
        level=init.get("log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from service.sql_store import open_store
    from service.worker import Worker

    metrics_file = Path(init["metrics_file"])
    metrics = ServiceMetrics()
    store = open_store(settings.database, schema=settings.database_schema)
    worker = Worker(
        settings,
        store,
        metrics,
        worker_id=init["worker_id"],
        on_metrics=lambda: metrics.write_worker_file(metrics_file),
    )

    def stop(signum: int, frame: Any) -> None:
        worker.stop(timeout=0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    metrics.write_worker_file(metrics_file)  # zeros until the first chunk, as in a thread
    threading.Thread(target=_listen, args=(worker,), name="weather-parent", daemon=True).start()
    started = time.monotonic()
    try:
        worker.run()
    finally:
        store.close()
    log.info("worker %s stopped after %.0f s", worker.id, time.monotonic() - started)
    return 1 if worker.failure else 0


if __name__ == "__main__":
    sys.exit(main())
