"""Prometheus metrics of the API and its worker, in a registry of their own (one per app).

The queue gauges are read from the job store at each scrape, so they are right however many
API servers and workers share the queue; the sampling metrics are the server's own worker's
(its child process writes them to a file that the API serves, `serve_worker_file`; a
``weather worker`` process serves its own with ``--metrics-port``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from service.store import JobState, JobStore
from weather.data.atomic import replacing


class _Collectors:
    """Some collectors exposed together (a registry of a subset)."""

    def __init__(self, collectors: Iterable[Counter | Gauge | Histogram]) -> None:
        self.collectors = tuple(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class _WorkerFile:
    """The metrics a worker process last wrote to a file (none before its first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        yield from text_string_to_metric_families(text)


class ServiceMetrics:
    """The service's metrics; pass one to the app and its worker."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("weather_queue_depth", "Jobs waiting for a worker", registry=r)
        self.jobs = Gauge("weather_jobs", "Jobs in the store per state", ["state"], registry=r)
        self.submissions = Counter(
            "weather_submissions",
            "POST /forecast outcomes (accepted, replayed, rejected, throttled)",
            ["outcome"],
            registry=r,
        )
        self.job_duration = Histogram(
            "weather_job_duration_seconds",
            "Submission to success of a job (s)",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600),
            registry=r,
        )
        self.job_run = Histogram(
            "weather_job_run_seconds",
            "Last claim to success of a job (s)",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600),
            registry=r,
        )
        self.member_steps = Counter(
            "weather_member_steps",
            "12 h steps of one member sampled (padding excluded); rate() gives member-steps/s",
            registry=r,
        )
        self.member_steps_per_second = Gauge(
            "weather_member_steps_per_second",
            "Member-steps per second of the latest sampling call",
            registry=r,
        )
        self.sampling_calls = Counter(
            "weather_sampling_calls", "Batched sampling calls (one compiled chunk each)", registry=r
        )
        self.batch_fill = Histogram(
            "weather_batch_fill_ratio",
            "Real members / padded batch size of a sampling call",
            buckets=(0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0),
            registry=r,
        )
        self.batch_jobs = Histogram(
            "weather_batch_jobs",
            "Jobs served by one sampling call",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )

    @property
    def worker_metrics(self) -> tuple[Counter | Gauge | Histogram, ...]:
        """What a worker records (the rest are the API's)."""
        return (
            self.job_duration,
            self.job_run,
            self.member_steps,
            self.member_steps_per_second,
            self.sampling_calls,
            self.batch_fill,
            self.batch_jobs,
        )

    def write_worker_file(self, path: Path) -> None:
        """Write the worker metrics to ``path`` in the text format (atomically: readers see
        the previous or the new file, never a torn one)."""
        registry = CollectorRegistry()
        registry.register(_Collectors(self.worker_metrics))
        # Several worker processes may share the file: each writes its own temporary.
        with replacing(path, unique=True) as tmp:
            tmp.write_bytes(generate_latest(registry))

    def serve_worker_file(self, path: Path) -> None:
        """Expose the worker metrics a worker process writes to ``path`` (`write_worker_file`)
        in place of this process's own, which then stay idle."""
        for metric in self.worker_metrics:
            self.registry.unregister(metric)
        self.registry.register(_WorkerFile(path))

    def refresh(self, store: JobStore) -> None:
        """Read the queue gauges from the store (call before each scrape)."""
        counts = store.counts()
        self.queue_depth.set(counts[JobState.QUEUED])
        for state, n in counts.items():
            self.jobs.labels(state.value).set(n)
