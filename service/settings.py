"""Service settings, read from the environment (prefix ``WEATHER_``) by pydantic-settings.

Nothing here runs at import time: `Settings()` reads the environment when the app factory or a
command calls it. Lists take JSON (``WEATHER_API_KEYS='["ab12...", "cd34..."]'``) or comma-separated
text (``WEATHER_API_KEYS=ab12...,cd34...``).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from weather.defaults import DEFAULT_CHECKPOINT, DEFAULT_DATA_DIR

if TYPE_CHECKING:
    from weather.model.sampler import SamplerOverride

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _split_list(value: Any) -> Any:
    """JSON lists stay lists; ``"a,b"`` becomes ``["a", "b"]``; ``""`` the empty list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything the service and its workers can be told (env var = ``WEATHER_`` + name)."""

    # hide_input_in_errors: a refused setting is described, never echoed (an API key put where
    # its digest belongs must not reach a terminal or a log).
    model_config = SettingsConfigDict(
        env_prefix="WEATHER_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # -- model and data --
    checkpoint: Path = Field(default=DEFAULT_CHECKPOINT, description="model checkpoint (msgpack)")
    archive: str | Path = Field(
        default=DEFAULT_DATA_DIR / "era5sim" / "test.zarr",
        description="analysis archive: initial conditions and the verifying truth of scores; "
        "a path or an fsspec URL (gs://, s3://, https://: read chunk by chunk)",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description='fsspec options (JSON) for a URL archive, e.g. {"anon": true} for a '
        "public S3 bucket; default: credentials from the environment",
    )
    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR / "service",
        description="job results (one directory per job id) and the default SQLite database",
    )
    database_url: str | None = Field(
        default=None,
        description="sqlite:///PATH or postgresql://USER@HOST:PORT/DB; default: SQLite in data_dir",
    )
    database_schema: str = Field(
        default="weather",
        description="PostgreSQL schema holding the job tables (created if absent)",
    )

    # -- HTTP --
    host: str = Field(default="127.0.0.1", description="bind address of `weather serve`")
    port: int = Field(
        default=8000, ge=0, le=65535, description="port of `weather serve` (0: any free)"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="sha256 hex digests of the accepted bearer tokens; empty: no authentication, "
        "and the server only binds to and answers loopback addresses",
    )
    max_body_bytes: int = Field(
        default=65_536, ge=1_024, description="largest request body (bytes)"
    )
    max_members: int = Field(default=32, ge=1, description="most ensemble members per job")
    max_queued: int = Field(
        default=64, ge=1, description="queued jobs beyond which POST answers 429"
    )
    retry_after_s: int = Field(default=30, ge=1, description="Retry-After (s) sent with 429")
    result_ttl_hours: float = Field(
        default=72.0, gt=0, description="results are deleted this long after their job ends (hours)"
    )

    # -- worker --
    worker: bool = Field(default=True, description="run a worker with the API server")
    worker_process: bool = Field(
        default=True,
        description="run the API server's worker as a child process (its own interpreter lock "
        "and garbage collector, so sampling never holds up the API); false: a thread of the "
        "API process",
    )
    worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU niceness the worker's child process adds to its own, so that the API "
        "gets the cores first when both want them",
    )
    batch_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [8, 16, 32],
        description="padded batch sizes of one sampling call (members of all jobs together), "
        "per device",
    )
    devices: str | None = Field(
        default=None,
        description="devices a worker shards each call's members over: a count or 'all' "
        "(default: one); the batch sizes are per device",
    )
    chunk_steps: int = Field(
        default=1, ge=1, le=30, description="12 h steps per sampling call (leads written per call)"
    )
    sampler: str | None = Field(
        default=None,
        description="the sampler, [SOLVER:]N[,FIELD=VALUE...] applied to the checkpoint's own: "
        "N noise levels, solver 2s (2N-1 denoiser calls a step) or 2m (N calls), and "
        "SamplerConfig fields, e.g. '2s:20' (GenCast's) or '2s:5,spread_scale=0.6' "
        "(default: the checkpoint's)",
    )
    sampler_steps: int | None = Field(
        default=None,
        ge=2,
        description="shorthand for sampler=N (the checkpoint's solver with N noise levels)",
    )
    initial_perturbation: float = Field(
        default=0.0,
        ge=0,
        description="initial-condition noise in stds of 12 h differences (0: off)",
    )
    batch_window_s: float = Field(
        default=0.1, ge=0, description="an idle worker waits this long (s) for more jobs to batch"
    )
    poll_s: float = Field(
        default=1.0, gt=0, description="an idle worker looks for jobs this often (s)"
    )
    heartbeat_s: float = Field(default=5.0, gt=0, description="worker heartbeat period (s)")
    worker_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="a running job whose worker is silent this long is claimed again",
    )
    worker_prune_s: float = Field(
        default=600.0,
        gt=0,
        description="a worker silent this long (s) is removed from the workers table (one "
        "killed without a clean stop); must exceed worker_timeout_s",
    )
    reproducible: bool = Field(
        default=False,
        description="sample each job in its own call, padded to a fixed batch size, so that "
        "the same request and seed give bit-identical numbers whatever else is queued; false "
        "(default): members of several jobs share each call (faster on an accelerator; a "
        "member's numbers then agree to float32 rounding)",
    )
    max_attempts: int = Field(default=3, ge=1, description="claims of one job before it is failed")
    warmup: bool = Field(default=True, description="compile every batch size before taking jobs")
    compilation_cache_dir: Path | None = Field(
        default=None, description="JAX persistent compilation cache (restarts skip compiling)"
    )

    @field_validator("archive", mode="after")
    @classmethod
    def _source(cls, value: str | Path) -> str | Path:
        from weather.data.location import as_source

        return as_source(value)

    @field_validator("api_keys", "batch_sizes", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("api_keys")
    @classmethod
    def _hashes(cls, keys: list[str]) -> list[str]:
        digests = [k.lower() for k in keys]
        bad = [k for k in digests if not _SHA256.fullmatch(k)]
        if bad:
            raise ValueError(
                f"api_keys: {len(bad)} entr(ies) are not sha256 hex digests (64 hex characters); "
                'store hashes, never keys: python -c "import hashlib,sys; '
                'print(hashlib.sha256(sys.argv[1].encode()).hexdigest())" KEY'
            )
        return digests

    @field_validator("batch_sizes")
    @classmethod
    def _ascending(cls, sizes: list[int]) -> list[int]:
        if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError(f"batch_sizes: must be positive and strictly ascending, got {sizes}")
        return sizes

    @field_validator("sampler")
    @classmethod
    def _sampler_spec(cls, text: str | None) -> str | None:
        if text is None:
            return None
        from weather.model.sampler import SamplerOverride

        SamplerOverride.parse(text)  # the syntax and the values, against the defaults
        return text.strip()

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = str(value).strip().lower()
        if text != "all" and not (text.isdigit() and int(text) >= 1):
            raise ValueError(f"devices: {value!r} is not a count >= 1 or 'all'")
        return text

    @field_validator("database_schema")
    @classmethod
    def _identifier(cls, schema: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise ValueError(f"database_schema: {schema!r} is not a lower-case SQL identifier")
        return schema

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_members > self.batch_sizes[-1]:
            raise ValueError(
                f"max_members ({self.max_members}) exceeds the largest batch size "
                f"({self.batch_sizes[-1]}): a job's members are sampled in one call"
            )
        if self.worker_timeout_s <= self.heartbeat_s:
            raise ValueError(
                f"worker_timeout_s ({self.worker_timeout_s}) must exceed heartbeat_s "
                f"({self.heartbeat_s})"
            )
        if self.worker_prune_s <= self.worker_timeout_s:
            raise ValueError(
                f"worker_prune_s ({self.worker_prune_s}) must exceed worker_timeout_s "
                f"({self.worker_timeout_s})"
            )
        if self.sampler is not None and self.sampler_steps is not None:
            raise ValueError(
                f"sampler ({self.sampler!r}) and sampler_steps ({self.sampler_steps}) are both "
                "set; give only sampler"
            )
        return self

    @property
    def sampler_spec(self) -> str | None:
        """The sampler to apply to the checkpoint's (`SamplerOverride` text), or None for its
        own."""
        if self.sampler_steps is not None:
            return str(self.sampler_steps)
        return self.sampler

    @property
    def sampler_override(self) -> SamplerOverride | None:
        """`sampler_spec` parsed (it was validated with the settings)."""
        from weather.model.sampler import SamplerOverride

        spec = self.sampler_spec
        return None if spec is None else SamplerOverride.parse(spec)

    @property
    def database(self) -> str:
        """The job store's URL (SQLite under ``data_dir`` unless ``database_url`` is set)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'jobs.sqlite'}"


def is_loopback(host: str) -> bool:
    """Whether a bind or client address is the local machine only (``localhost``, 127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
