"""What this server can forecast: the model's fields and grid, the archive's usable init times.

`Catalog.normalize` turns a validated submission into the `JobRequest` the worker runs, or
raises `RequestError` naming the field and the reason (an init time outside the archive lists the
available range). Reading the catalogue touches only the checkpoint's configs and the archive's
time coordinate; the model itself is loaded by the worker.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.schemas import ForecastRequestBase, JobRequest, Region
from service.settings import Settings
from weather.data.errors import ArchiveError
from weather.data.times import STEP, parse_lead, to_datetime64
from weather.model.task import TaskConfig


class RequestError(ValueError):
    """A submission the server cannot run; ``field`` names the part at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A checkpoint's fields and grid, and its compatibility key.

    Attributes:
      key: identifies what a worker computes: the checkpoint's bytes and the sampling settings
        (sampler, initial perturbation). Workers claim only jobs with their key.
      task: the fields and levels.
      latitude, longitude: the grid (degrees).
    """

    key: str
    task: TaskConfig
    latitude: np.ndarray
    longitude: np.ndarray

    @property
    def variables(self) -> list[str]:
        return [*self.task.level_variables, *self.task.surface_variables]


def model_info(settings: Settings) -> ModelInfo:
    """Read a checkpoint's configs (not its parameters into a model).

    Raises:
      ValueError: naming the checkpoint when it is missing or not a checkpoint.
    """
    from weather.model.checkpoint import load_checkpoint

    path = Path(settings.checkpoint)
    saved = load_checkpoint(path)
    digest = hashlib.sha256(path.read_bytes())
    sampling = {
        "sampler": settings.sampler_spec,
        "initial_perturbation": settings.initial_perturbation,
    }
    digest.update(json.dumps(sampling, sort_keys=True).encode())
    grid = saved["configs"]["grid"]
    return ModelInfo(
        key=f"{path.stem}-{digest.hexdigest()[:16]}",
        task=TaskConfig.from_dict(saved["configs"]["model"]["task"]),
        latitude=np.asarray(grid["latitude"], np.float64),
        longitude=np.asarray(grid["longitude"], np.float64),
    )


def request_hash(body: dict[str, Any]) -> str:
    """Digest of a submission as the client sent it (defaults applied), for idempotency."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


# Parsing a time or a duration (pandas) is a third of a submission's own work, and submissions
# crowd on a few init times and leads. Failures are not cached (lru_cache keeps results only).
@functools.lru_cache(maxsize=1024)
def _parse_init(text: str) -> np.datetime64:
    return to_datetime64(text, "init_time")


@functools.lru_cache(maxsize=256, typed=True)
def _parse_lead(lead: float | str) -> np.timedelta64:
    return parse_lead(lead)


class Catalog:
    """The model's fields and the archive's times, for validating submissions.

    Args:
      info: from `model_info`.
      archive: the analysis archive's path or URL; its time axis is re-read when a requested
        init time is missing (at most every ``refresh_s`` seconds, so bad requests cannot keep
        the server re-reading it), so an archive that grows serves new init times without a
        restart.
      refresh_s: least interval between two re-reads (s).
      storage_options: for the fsspec filesystem of a URL archive.
    """

    def __init__(
        self,
        info: ModelInfo,
        archive: str | Path,
        refresh_s: float = 30.0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.info = info
        self.archive = archive
        self.storage_options = storage_options
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._set_times(self._read_times())
        self._read_at = time.monotonic()

    def _set_times(self, times: np.ndarray) -> None:
        self._times = times
        # Membership by hashing: `in` on the array compares every time, twice per request.
        self._known = frozenset(times.view(np.int64).tolist())

    def _read_times(self) -> np.ndarray:
        from weather.data.reader import open_archive
        from weather.forecast import check_archive_fits

        try:
            ds = open_archive(self.archive, storage_options=self.storage_options)
            check_archive_fits(self.info.task, self.info.latitude, self.info.longitude, ds)
        except ArchiveError as error:
            raise ArchiveError(f"archive {self.archive}: {error}") from None
        return np.asarray(ds["time"].values, dtype="datetime64[ns]")

    def times(self, refresh: bool = False) -> np.ndarray:
        """The archive's times ``[time]``; ``refresh`` re-reads them unless that was just done."""
        with self._lock:
            if refresh and time.monotonic() - self._read_at >= self.refresh_s:
                self._set_times(self._read_times())
                self._read_at = time.monotonic()
            return self._times

    def _check_init(self, init: np.datetime64) -> None:
        wanted = (init.astype("datetime64[ns]").view(np.int64), (init - STEP).view(np.int64))
        for refresh in (False, True):
            times = self.times(refresh)
            if all(int(t) in self._known for t in wanted):
                return
        if times.size == 0:
            raise RequestError("init_time", f"the analysis archive {self.archive} is empty")
        first, last = times[0] + STEP, times[-1]
        raise RequestError(
            "init_time",
            f"{np.datetime_as_string(init, unit='m')}Z is not in the analysis archive with the "
            f"time 12 h before; available init times run from "
            f"{np.datetime_as_string(first, unit='m')}Z to "
            f"{np.datetime_as_string(last, unit='m')}Z",
        )

    def normalize(self, request: ForecastRequestBase) -> JobRequest:
        """The request as the worker runs it.

        Raises:
          RequestError: naming the field and the reason.
        """
        info = self.info
        try:
            init = _parse_init(request.init_time)
        except ArchiveError as error:
            raise RequestError("init_time", str(error)) from None
        except (OverflowError, ValueError) as error:  # pandas' out-of-range dates
            raise RequestError("init_time", f"{request.init_time!r}: {error}") from None
        self._check_init(init)
        try:
            lead = _parse_lead(request.lead)
        except (ValueError, OverflowError) as error:
            raise RequestError("lead", str(error)) from None
        variables = request.variables or info.variables
        unknown = [v for v in variables if v not in info.variables]
        if unknown:
            raise RequestError(
                "variables", f"{unknown} are not forecast by this model; it has {info.variables}"
            )
        if len(set(variables)) != len(variables):
            raise RequestError("variables", "a variable is repeated")
        levels = request.levels or list(info.task.levels)
        missing = sorted(set(levels) - set(info.task.levels))
        if missing:
            raise RequestError(
                "levels", f"{missing} hPa are not model levels; it has {list(info.task.levels)}"
            )
        if len(set(levels)) != len(levels):
            raise RequestError("levels", "a level is repeated")
        odd = sorted(set(request.summary.thresholds) - set(variables))
        if odd:
            raise RequestError(
                "summary.thresholds", f"{odd} are not among the requested variables {variables}"
            )
        if request.region is not None:
            try:
                region_indices(info.latitude, info.longitude, request.region)
            except ValueError as error:
                raise RequestError("region", str(error)) from None
        members = int(getattr(request, "members", 1))
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        return JobRequest(
            init_time=init.astype("datetime64[us]").item().replace(tzinfo=datetime.UTC),
            lead_hours=int(lead // np.timedelta64(1, "h")),
            members=members,
            seed=seed,
            variables=list(variables),
            levels=sorted(levels),
            region=request.region,
            points=request.points,
            format=request.format,
            summary=request.summary,
        )


def region_indices(
    latitude: np.ndarray, longitude: np.ndarray, region: Region | None
) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices inside a box: ``([h] latitude indices, [w] longitude indices)``.

    Longitudes run eastward from the western edge, so a box across the dateline comes out
    contiguous (e.g. 350, 355, 0, 5 degrees).

    Raises:
      ValueError: the box holds no grid point.
    """
    if region is None:
        return np.arange(latitude.size), np.arange(longitude.size)
    lat_index = np.flatnonzero((latitude >= region.lat_min) & (latitude <= region.lat_max))
    span = region.lon_max - region.lon_min
    width = span if 0 <= span < 360 else (360.0 if span >= 360 else span % 360)
    west = region.lon_min % 360
    east_of_west = (longitude - west) % 360
    lon_index = np.flatnonzero(east_of_west <= width + 1e-9)
    lon_index = lon_index[np.argsort(east_of_west[lon_index], kind="stable")]
    if lat_index.size == 0 or lon_index.size == 0:
        spacing = abs(float(latitude[1] - latitude[0])) if latitude.size > 1 else 0.0
        raise ValueError(
            f"the box {region.model_dump()} holds no grid point (the grid's spacing is "
            f"{spacing:g} degrees)"
        )
    return lat_index, lon_index
