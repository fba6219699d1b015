"""Prometheus metrics of the API and its worker, in a registry of their own (one per app).

The queue gauges are read from the job store at each scrape, so they are right however many
API servers and workers share the queue; the sampling metrics are the local worker's (a worker
process serves its own with ``weather worker --metrics-port``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.store import JobState, JobStore


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

    def refresh(self, store: JobStore) -> None:
        """Read the queue gauges from the store (call before each scrape)."""
        counts = store.counts()
        self.queue_depth.set(counts[JobState.QUEUED])
        for state, n in counts.items():
            self.jobs.labels(state.value).set(n)
