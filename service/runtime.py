"""What the routes share at run time: `Service` holds the settings, job store, catalogue,
metrics, the local worker (a thread or a child process) and the janitor that maintains the store
and deletes expired results. `service.app` makes one per app in its lifespan; the routes reach it
through ``request.app.state.service``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from pathlib import Path

from service.catalog import Catalog, model_info
from service.metrics import ServiceMetrics
from service.results import JobFiles
from service.settings import Settings
from service.sql_store import open_store
from service.store import JobStore
from service.worker import Worker
from service.worker_process import WorkerProcess

log = logging.getLogger("service")


class Service:
    """What the routes share: settings, store, catalogue, metrics and the local worker."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store: JobStore = open_store(
            settings.database, schema=settings.database_schema, maintained=True
        )
        try:
            self.catalog = Catalog(
                model_info(settings), settings.archive, storage_options=settings.storage_options
            )
            self.worker: Worker | None = None
            self.worker_process: WorkerProcess | None = None
            if settings.worker and settings.worker_process:
                self.worker_process = WorkerProcess(settings, metrics)
                self.worker_process.start()
            elif settings.worker:
                self.worker = Worker(settings, self.store, metrics)
                self.worker.start()
        except BaseException:
            self.store.close()
            raise
        self.tmp = Path(settings.data_dir) / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._janitor = threading.Thread(target=self._sweep, name="weather-janitor", daemon=True)
        self._janitor.start()

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()
        if self.worker_process is not None:
            self.worker_process.wake()

    def _sweep(self) -> None:
        """Maintain the store every second; delete expired results (and stale export files)
        now and then."""
        period = min(60.0, self.settings.result_ttl_hours * 3600 / 4)
        next_sweep = time.monotonic() + period
        while not self._stop.wait(1.0):
            try:
                self.store.maintain()
            except Exception:  # the next round retries
                log.exception("job store maintenance failed")
            if time.monotonic() < next_sweep:
                continue
            next_sweep = time.monotonic() + period
            try:
                self.sweep(time.time())
            except Exception:  # the next sweep retries
                log.exception("result expiry failed")

    def sweep(self, now: float) -> list[str]:
        """Delete the results of jobs whose expiry passed (returns their ids), and forget
        workers that died without a clean stop."""
        gone = self.store.prune_workers(now=now, grace=self.settings.worker_prune_s)
        if gone:
            log.info("removed %d silent worker(s): %s", len(gone), ", ".join(gone))
        expired = self.store.expire(now)
        for job_id in expired:
            JobFiles(self.settings.data_dir, job_id).delete()
        # Exports left by a killed request (files, and the folders a zipped Zarr is made in).
        for stale in self.tmp.glob("*"):
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < now - 3600:
                    if stale.is_dir() and not stale.is_symlink():
                        shutil.rmtree(stale)
                    else:
                        stale.unlink()
        return expired

    def close(self) -> None:
        self._stop.set()
        if self.worker is not None:
            self.worker.stop()
        if self.worker_process is not None:
            self.worker_process.stop()
        self._janitor.join(5)
        self.store.close()
