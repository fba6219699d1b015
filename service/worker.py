"""The worker: claims compatible jobs and samples all their members in one batched call per chunk.

Continuous batching. The worker keeps the jobs it holds as *lanes* (a job's members, their two
latest states, keys and lead step). Before every chunk it claims more queued jobs while their
members fit in the largest batch size, then advances every lane's members together in one
compiled call (`weather.model.rollout.BatchRoller.advance`, padded to a fixed batch size), so
jobs with different init times, seeds and lead steps share each call and a job submitted while
others run joins at the next chunk. After the call each lane writes its new leads to its Zarr
store, saves its resume state and records its progress; a job cancelled (or claimed by another
worker after a missed heartbeat) is dropped there, between chunks. A finished job is scored
and marked succeeded.

Member ``m`` of a job is keyed by ``member_keys(seed, [m])`` and its step counter, exactly as in
`weather.forecast.forecast`, so its forecast does not depend on a restart (a re-claimed job
resumes from its saved states) nor, up to float32 rounding, on what shares its batch: the
batch's size and layout change the order of the compiled call's sums, and the atmosphere's
chaos grows such last-bit differences with lead. With ``settings.reproducible`` each job is
sampled in its own call, padded to the smallest batch size that holds it (the padding repeats
its member 0), so the same request and seed give bit-identical numbers whatever else is queued
(on the same machine and software: other hardware or XLA versions may round differently).

A heartbeat thread records that the worker lives (the compiled call may take longer than a
heartbeat period), so a job is claimed again only when its worker really stopped. Because the
heartbeat keeps every job the worker holds alive, a job's end that the store could not record
(the database briefly unreachable) is kept and recorded again at each heartbeat until it lands;
otherwise the job would stay `running` for as long as the worker lives.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.catalog import ModelInfo, model_info
from service.metrics import ServiceMetrics
from service.results import JobFiles, Subset
from service.schemas import JobRequest
from service.scoring import domain, score_job
from service.settings import Settings
from service.store import Job, JobState, JobStore

log = logging.getLogger("service.worker")

# Analysis states kept in memory (two states per init time).
ANALYSIS_CACHE = 16


@dataclasses.dataclass(frozen=True)
class JobEnd:
    """A job's end as the worker records it: succeeded, or failed with ``error``."""

    job: Job
    state: JobState
    error: str | None = None
    claimed: float | None = None  # when this worker claimed it (for the run-time metric)


@dataclasses.dataclass
class Lane:
    """One job in flight: its members' keys ``[M]`` and latest states ``[M, H, W, C]``."""

    job: Job
    request: JobRequest
    subset: Subset
    files: JobFiles
    keys: np.ndarray
    previous: np.ndarray
    current: np.ndarray
    init: np.datetime64
    done: int
    total: int
    claimed: float

    @property
    def members(self) -> int:
        return self.request.members


class Worker:
    """Runs jobs of one model from a job store.

    Args:
      settings: checkpoint, archive, batch sizes, timings (see `service.settings.Settings`).
      store: the job queue.
      metrics: where to count sampling calls, batch fill and job durations.
      worker_id: defaults to host, pid and a random suffix.
      on_metrics: called after the metrics change (a worker process publishes them then); a
        chunk's sampling metrics before its progress is recorded, so a reader who sees a job's
        progress sees the sampling calls that made it.
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        metrics: ServiceMetrics | None = None,
        *,
        worker_id: str | None = None,
        on_metrics: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or ServiceMetrics()
        self.on_metrics = on_metrics
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.host = socket.gethostname()
        self.ready = threading.Event()
        self.failure: str | None = None
        self.lanes: list[Lane] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        # Finished jobs are scored here, so sampling goes on meanwhile.
        self._finisher = concurrent.futures.ThreadPoolExecutor(1, "weather-scorer")
        # Ends the store could not record yet, by job id (the finisher, the sampling loop and
        # the heartbeat all touch them).
        self._unrecorded: dict[str, JobEnd] = {}
        self._unrecorded_lock = threading.Lock()
        self._analyses: collections.OrderedDict[np.datetime64, tuple[np.ndarray, np.ndarray]] = (
            collections.OrderedDict()
        )
        self.info: ModelInfo | None = None

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in a background thread (the in-process worker)."""
        self._thread = threading.Thread(target=self.run, name="weather-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the current chunk, hand unfinished jobs back to the queue, and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """A job was submitted: look for work now rather than at the next poll."""
        self._wake.set()

    def run(self) -> None:
        """Load, warm up, then serve jobs until `stop` (blocks)."""
        try:
            self._setup()
        except Exception as error:  # reported by /readyz; the API keeps serving reads
            self.failure = f"{type(error).__name__}: {error}"
            log.exception("worker %s could not start", self.id)
            return
        self._heartbeat = threading.Thread(
            target=self._beat, name="weather-worker-heartbeat", daemon=True
        )
        self._heartbeat.start()
        try:
            if self.settings.warmup:
                self._warm_up()
            # The model, its compiled calls and the archive stay for the process's life: keep
            # them out of the garbage collector's full passes, which stop every thread (in
            # `weather serve`, the API's event loop too) for as long as they take.
            gc.freeze()
            self.ready.set()
            self._beat_once()
            log.info("worker %s ready for model %s", self.id, self.model_key)
            while not self._stop.is_set():
                try:
                    self._admit()
                    if not self.lanes:
                        if self._wake.wait(self.settings.poll_s):
                            self._wake.clear()
                            # Let near-simultaneous submissions arrive to share the first call.
                            self._stop.wait(self.settings.batch_window_s)
                        continue
                    self._chunk()
                except Exception:  # e.g. the database is briefly unreachable: retry, not die
                    log.exception("worker %s: loop error; retrying", self.id)
                    self._stop.wait(self.settings.poll_s)
        finally:
            self._stop.set()
            self._finisher.shutdown(wait=True)
            if self._heartbeat is not None:
                self._heartbeat.join(self.settings.heartbeat_s + 5)
            # A last try; what is still unrecorded goes back to the queue below, and the next
            # worker ends it again (a finished job from its saved results, without sampling).
            self._record_unrecorded()
            try:
                self.store.remove_worker(self.id)
            except Exception:
                log.exception("worker %s: could not hand its jobs back", self.id)

    @property
    def model_key(self) -> str:
        assert self.info is not None
        return self.info.key

    def _setup(self) -> None:
        import jax

        from weather.data.reader import open_archive
        from weather.forecast import load_forecaster
        from weather.model.rollout import BatchRoller, RolloutConfig, mesh_for
        from weather.model.task import static_channels

        s = self.settings
        if s.compilation_cache_dir is not None:
            jax.config.update("jax_compilation_cache_dir", str(s.compilation_cache_dir))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        self.info = model_info(s)
        self.model = load_forecaster(s.checkpoint, sampler=s.sampler_override)
        fc = self.model.forecaster
        mesh = mesh_for(s.devices)
        per_call = 1 if mesh is None else mesh.devices.size
        self.roller = BatchRoller(
            fc,
            RolloutConfig(
                chunk_steps=s.chunk_steps,
                initial_perturbation=s.initial_perturbation,
            ),
            mesh=mesh,
            # Batch sizes are per device: each device samples its share of every call.
            batch_sizes=tuple(b * per_call for b in s.batch_sizes),
        )
        self.archive = open_archive(s.archive, storage_options=s.storage_options)
        self.static = static_channels(self.archive, fc.task)

    def _warm_up(self) -> None:
        """Compile every batch size now, so that no request waits for a compilation."""
        from weather.model.rollout import member_keys

        fc = self.model.forecaster
        state = np.broadcast_to(np.asarray(fc.normalization.mean, np.float32), fc.shape)
        for size in self.roller.batch_sizes:
            if self._stop.is_set():
                return
            t0 = time.perf_counter()
            self.roller.advance(
                self.model.params,
                keys=np.asarray(member_keys(0, np.arange(size))),
                previous=np.broadcast_to(state, (size, *fc.shape)),
                current=np.broadcast_to(state, (size, *fc.shape)),
                steps=np.zeros(size, np.int64),
                init_times=np.full(size, np.datetime64("2000-01-01T00", "ns")),
                static=self.static,
            )
            log.info("batch size %d compiled in %.1f s", size, time.perf_counter() - t0)

    def _beat_once(self) -> None:
        self.store.heartbeat(
            self.id, self.model_key, self.host, ready=self.ready.is_set(), now=time.time()
        )

    def _beat(self) -> None:
        next_prune = 0.0
        while not self._stop.is_set():
            try:
                self._beat_once()
            except Exception:  # a missed beat is retried; the job lease covers a few
                log.exception("worker %s: heartbeat failed", self.id)
            self._record_unrecorded()
            if time.monotonic() >= next_prune:
                # Workers alone on a database (no API server's janitor) forget dead peers too.
                next_prune = time.monotonic() + 60.0
                try:
                    self.store.prune_workers(now=time.time(), grace=self.settings.worker_prune_s)
                except Exception:
                    log.exception("worker %s: could not prune silent workers", self.id)
            self._stop.wait(self.settings.heartbeat_s)

    # -- jobs -------------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Claim queued jobs while their members fit beside the lanes already held."""
        used = sum(lane.members for lane in self.lanes)
        capacity = self.roller.max_members - used
        if capacity <= 0:
            return
        s = self.settings
        jobs = self.store.claim(
            self.id,
            self.model_key,
            max_members=capacity,
            limit=capacity,
            now=time.time(),
            timeout=s.worker_timeout_s,
            max_attempts=s.max_attempts,
        )
        for job in jobs:
            try:
                lane = self._open(job)
            except Exception as error:  # a job we cannot start fails alone, with the reason
                log.exception("job %s could not start", job.id)
                self._fail(job, f"could not start: {error}")
                continue
            if lane.done >= lane.total:  # its last worker stopped while scoring it
                self._finisher.submit(self._succeed, lane)
            else:
                self.lanes.append(lane)

    def _open(self, job: Job) -> Lane:
        from weather.data.times import to_datetime64
        from weather.model.rollout import member_keys

        assert self.info is not None
        request = JobRequest.model_validate(job.request)
        subset = Subset.of(self.info, request)
        files = JobFiles(self.settings.data_dir, job.id)
        files.create(self.info, request, subset)
        index = np.arange(request.members)
        init = to_datetime64(request.init_time, "init_time")
        saved = files.load_state()
        if saved is not None and saved[1].shape[0] == request.members:
            done, previous, current = saved
            keys = np.asarray(member_keys(request.seed, index))
            log.info("job %s resumes at step %d", job.id, done)
        else:
            start = self.roller.start(request.seed, index, *self._analysis(init))
            keys, previous, current = (
                np.asarray(start.keys),
                np.asarray(start.previous),
                np.asarray(start.current),
            )
            done = 0
        return Lane(
            job=job,
            request=request,
            subset=subset,
            files=files,
            keys=keys,
            previous=previous,
            current=current,
            init=init,
            done=done,
            total=request.lead_hours // 12,
            claimed=time.time(),
        )

    def _analysis(self, init: np.datetime64) -> tuple[np.ndarray, np.ndarray]:
        """The analysis states at ``init - 12h`` and ``init`` ``[H, W, C]``, cached: requests
        crowd on the latest init times, and reading the archive costs more than sampling a
        small model."""
        from weather.forecast import initial_states

        key: np.datetime64 = init.astype("datetime64[ns]")
        if key in self._analyses:
            self._analyses.move_to_end(key)
            return self._analyses[key]
        previous, current, _ = initial_states(self.archive, self.model.forecaster, key)
        self._analyses[key] = (previous, current)
        if len(self._analyses) > ANALYSIS_CACHE:
            self._analyses.popitem(last=False)
        return previous, current

    def _chunk(self) -> None:
        """Advance every lane by one chunk, in one sampling call (or, with
        ``settings.reproducible``, one call per job), then write and account."""
        if self.settings.reproducible:
            kept = []
            for lane in self.lanes:
                self.lanes = [lane]
                self._sample(self.lanes)
                kept.extend(self.lanes)
            self.lanes = kept
        else:
            self._sample(self.lanes)

    def _sample(self, lanes: list[Lane]) -> None:
        """Advance ``lanes`` by one chunk in one sampling call; ``self.lanes`` becomes those
        that stay (not finished, failed or cancelled)."""
        members = [lane.members for lane in lanes]
        n = sum(members)
        t0 = time.perf_counter()
        try:
            out = self.roller.advance(
                self.model.params,
                keys=np.concatenate([lane.keys for lane in lanes]),
                previous=np.concatenate([lane.previous for lane in lanes]),
                current=np.concatenate([lane.current for lane in lanes]),
                steps=np.concatenate(
                    [np.full(m, lane.done) for m, lane in zip(members, lanes, strict=True)]
                ),
                init_times=np.concatenate(
                    [np.full(m, lane.init) for m, lane in zip(members, lanes, strict=True)]
                ),
                static=self.static,
            )  # [k, N, H, W, C]
        except Exception as error:  # the model failed on this batch: fail its jobs, go on
            log.exception("sampling call failed")
            for lane in list(lanes):
                self._fail(lane.job, f"sampling failed: {error}")
            self.lanes = []
            return
        elapsed = time.perf_counter() - t0
        k = out.shape[0]
        useful = sum(min(k, lane.total - lane.done) * lane.members for lane in lanes)
        self.metrics.sampling_calls.inc()
        self.metrics.batch_jobs.observe(len(lanes))
        self.metrics.batch_fill.observe(n / self.roller.padded_size(n))
        self.metrics.member_steps.inc(useful)
        self.metrics.member_steps_per_second.set(useful / max(elapsed, 1e-9))
        self._published()
        offset = 0
        kept = []
        for lane in lanes:
            part = out[:, offset : offset + lane.members]  # [k, M, H, W, C]
            offset += lane.members
            if self._advance_lane(lane, part):
                kept.append(lane)
        self.lanes = kept

    def _advance_lane(self, lane: Lane, part: np.ndarray) -> bool:
        """Write a lane's new leads and record them; False when the lane leaves the batch."""
        assert self.info is not None
        k = part.shape[0]
        new = min(k, lane.total - lane.done)
        try:
            lane.files.write_leads(self.info, lane.subset, lane.done, part[:new])
            lane.previous = part[k - 2] if k >= 2 else lane.current
            lane.current = part[k - 1]
            lane.done += new
            lane.files.save_state(lane.done, lane.previous, lane.current)
        except Exception as error:  # OSError, or zarr's errors on a store damaged under it
            log.exception("job %s: could not write its results", lane.job.id)
            self._fail(lane.job, f"could not write its results: {_reason(error)}")
            return False
        if not self.store.progress(lane.job.id, self.id, lane.done, now=time.time()):
            log.info("job %s left the batch (cancelled or claimed by another)", lane.job.id)
            return False
        if lane.done >= lane.total:
            self._finisher.submit(self._succeed, lane)
            return False
        return True

    def _succeed(self, lane: Lane) -> None:
        assert self.info is not None
        try:
            forecast = lane.files.open_forecast(lane.total)
            scores = score_job(
                lane.job.id, forecast, self.archive, self.info, lane.request, lane.subset
            )
        except Exception as error:  # the forecast stands even if its scores cannot be made
            log.exception("job %s: scoring failed", lane.job.id)
            scores = {
                "job_id": lane.job.id,
                "members": lane.request.members,
                "domain": domain(lane.request),
                "rows": [],
                "error": f"scoring failed: {error}",
            }
        try:
            lane.files.write_scores(scores)
            lane.files.finish()
        except Exception as error:  # else the job stays running (this thread's error unseen)
            log.exception("job %s: could not write its scores", lane.job.id)
            self._fail(lane.job, f"could not write its results: {_reason(error)}")
            return
        self._end(JobEnd(lane.job, JobState.SUCCEEDED, claimed=lane.claimed))

    def _published(self) -> None:
        if self.on_metrics is None:
            return
        try:
            self.on_metrics()
        except Exception:  # metrics never fail a job
            log.exception("worker %s: could not publish its metrics", self.id)

    def _fail(self, job: Job, error: str) -> None:
        self._end(JobEnd(job, JobState.FAILED, self._without_folders(error)))

    def _without_folders(self, error: str) -> str:
        """``error`` as its client reads it: paths relative to the data folder
        (``jobs/ID/forecast.zarr/temperature/c``). The server's layout is not the client's
        business; the log keeps the full paths."""
        root = Path(self.settings.data_dir)
        # Absolute forms only, each followed by a separator: a relative data folder ("data")
        # would also match inside words ("metadata"). Longest first, so that the resolved form
        # of a symlinked folder is not cut in half.
        folders = {str(root.resolve())} | ({str(root)} if root.is_absolute() else set())
        for folder in sorted(folders, key=len, reverse=True):
            error = error.replace(folder + os.sep, "")
        return error

    def _end(self, end: JobEnd) -> None:
        """Record ``end`` in the store, or keep it for the heartbeat to record when the store
        answers again. Never raises: the sampling loop and the scorer go on."""
        try:
            self._record(end)
        except Exception:
            log.exception(
                "job %s: could not record that it %s; retrying at each heartbeat",
                end.job.id,
                end.state.value,
            )
            with self._unrecorded_lock:
                self._unrecorded[end.job.id] = end

    def _record_unrecorded(self) -> None:
        with self._unrecorded_lock:
            ends = list(self._unrecorded.values())
        for end in ends:
            try:
                self._record(end)
            except Exception as error:  # still unreachable: the next heartbeat tries again
                log.warning("job %s: its end is still unrecorded: %s", end.job.id, error)
                continue
            with self._unrecorded_lock:
                if self._unrecorded.get(end.job.id) is end:
                    del self._unrecorded[end.job.id]

    def _record(self, end: JobEnd) -> None:
        now = time.time()
        if not self.store.finish(
            end.job.id,
            self.id,
            end.state,
            now=now,
            expires_at=now + self.settings.result_ttl_hours * 3600,
            error=end.error,
        ):
            # Cancelled meanwhile, or claimed again by another worker after this one missed its
            # heartbeats: that worker's end is the one that counts.
            log.warning(
                "job %s: no longer held by worker %s; its end is left to the holder",
                end.job.id,
                self.id,
            )
            return
        if end.state is JobState.FAILED:
            log.info("job %s failed on worker %s: %s", end.job.id, self.id, end.error)
            return
        log.info("job %s succeeded on worker %s", end.job.id, self.id)
        self.metrics.job_duration.observe(now - end.job.created_at)
        if end.claimed is not None:
            self.metrics.job_run.observe(now - end.claimed)
        self._published()


def _reason(error: Exception) -> str:
    """An exception as an error message: an OSError's own text names the file and the reason;
    other types (e.g. zarr's KeyError for a missing array) need their name to be understood."""
    return str(error) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
