"""A job's files: the forecast Zarr store written lead by lead, the resume state, the scores.

Layout under ``data_dir/jobs/<job id>/`` (the id is the server's, never a client's text):

- ``forecast.zarr``: the requested variables, levels and region, dims
  ``member, init_time, lead_time, [level,] latitude, longitude`` (physical units, the layout of
  `weather.forecast`), one Zarr chunk per lead so that writing a lead touches no other lead;
- ``state.npz``: the two latest full model states ``[M, H, W, C]`` and the step they belong to,
  replaced atomically after each chunk of leads, so a re-claimed job resumes exactly where its
  last worker stopped (the states are exactly what the rollout carries, so resuming changes
  nothing in the result);
- ``scores.json``: the scores, written when the job succeeds.

Readers never see a torn lead: a worker records a job's progress in the job store only after the
leads are written, and readers read only the leads up to the recorded progress.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from pydantic import ValidationError

from service.catalog import ModelInfo, region_indices
from service.schemas import JobRequest, Scores
from weather.data.atomic import replacing, write_bytes
from weather.data.layout import ForecastLayout, ForecastWriter
from weather.data.times import STEP
from weather.model.task import channels_to_state

JOB_ID = re.compile(r"[0-9a-f]{32}")


class DamagedResultError(RuntimeError):
    """A job's stored files are not what its worker wrote (a missing variable or lead, a
    chunk or metadata file that does not decode, scores that are not JSON)."""


def job_dir(data_dir: Path, job_id: str) -> Path:
    """The directory of a job; refuses anything but a job id (no path from user text)."""
    if not JOB_ID.fullmatch(job_id):
        raise ValueError(f"job id {job_id!r}: not 32 lower-case hex digits")
    return Path(data_dir) / "jobs" / job_id


@dataclasses.dataclass(frozen=True)
class Subset:
    """What a job keeps of each model state: variables, levels and grid indices."""

    variables: tuple[str, ...]
    levels: tuple[int, ...]
    level_index: np.ndarray
    lat_index: np.ndarray
    lon_index: np.ndarray

    @classmethod
    def of(cls, info: ModelInfo, request: JobRequest) -> Subset:
        lat_index, lon_index = region_indices(info.latitude, info.longitude, request.region)
        model_levels = list(info.task.levels)
        return cls(
            variables=tuple(request.variables),
            levels=tuple(request.levels),
            level_index=np.asarray([model_levels.index(lv) for lv in request.levels]),
            lat_index=lat_index,
            lon_index=lon_index,
        )


class JobFiles:
    """The files of one job (see the module docstring)."""

    def __init__(self, data_dir: Path, job_id: str) -> None:
        self.job_id = job_id
        self.dir = job_dir(data_dir, job_id)
        self.forecast = self.dir / "forecast.zarr"
        self.state = self.dir / "state.npz"
        self.scores = self.dir / "scores.json"

    # -- writing (the worker) -------------------------------------------------------------------

    def create(self, info: ModelInfo, request: JobRequest, subset: Subset) -> None:
        """Create the forecast store (all NaN, one chunk per lead) unless an earlier attempt
        did; atomic."""
        self.dir.mkdir(parents=True, exist_ok=True)
        layout = ForecastLayout.of(
            subset.variables,
            info.task.level_variables,
            members=np.arange(request.members),
            init_times=[_datetime64(request)],
            lead_times=STEP * np.arange(1, request.lead_hours // 12 + 1),
            latitude=info.latitude[subset.lat_index],
            longitude=info.longitude[subset.lon_index],
            levels=subset.levels,
            attrs={
                "title": "Ensemble forecast (diffusion model)",
                "job_id": self.job_id,
                "model": info.key,
                "seed": request.seed,
            },
        )
        ForecastWriter(layout, self.forecast, exist_ok=True)

    def write_leads(self, info: ModelInfo, subset: Subset, lo: int, states: np.ndarray) -> None:
        """Write leads ``lo .. lo + n - 1`` (0-based steps) from full states ``[n, M, H, W, C]``."""
        fields = channels_to_state(info.task, np.moveaxis(states, 0, 1)[:, None])
        kept = {}
        for name in subset.variables:
            x = fields[name]  # [M, 1, n, (L,) H, W]
            if name in info.task.level_variables:
                x = x[:, :, :, subset.level_index]
            kept[name] = np.take(np.take(x, subset.lat_index, axis=-2), subset.lon_index, axis=-1)
        ForecastWriter.reopen(self.forecast).write(kept, lead=slice(lo, lo + states.shape[0]))

    def save_state(self, steps_done: int, previous: np.ndarray, current: np.ndarray) -> None:
        """Replace the resume state atomically (write a new file, then rename it)."""
        with replacing(self.state) as tmp, open(tmp, "wb") as f:
            np.savez(f, steps_done=np.int64(steps_done), previous=previous, current=current)

    def load_state(self) -> tuple[int, np.ndarray, np.ndarray] | None:
        """``(steps done, previous [M, H, W, C], current [M, H, W, C])``, or None to start over
        (no state yet, or an unreadable one)."""
        if not self.state.exists():
            return None
        try:
            with np.load(self.state) as saved:
                return int(saved["steps_done"]), saved["previous"], saved["current"]
        except (OSError, ValueError, KeyError):
            return None

    def write_scores(self, scores: dict[str, Any]) -> None:
        write_bytes(self.scores, json.dumps(scores).encode())

    def finish(self) -> None:
        """Drop what only resuming needed."""
        self.state.unlink(missing_ok=True)

    def delete(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- reading (the API) ----------------------------------------------------------------------

    def open_forecast(
        self, steps_done: int, variables: tuple[str, ...] | list[str] | None = None
    ) -> xr.Dataset:
        """The leads written so far (lazy).

        With ``variables`` (what the job's request asked for) the store is checked first: every
        variable there with at least ``steps_done`` leads, and every chunk of those leads
        readable (one decoding pass over them, which also warms the page cache for the export
        that follows), so that a damaged store is reported instead of served in part.

        Raises:
          FileNotFoundError: the store is gone (deleted).
          DamagedResultError: naming the variable, lead or file at fault.
        """
        if not self.forecast.exists():
            raise FileNotFoundError(self.forecast)
        try:
            if variables is not None:
                self._verify(steps_done, variables)
            ds = xr.open_zarr(self.forecast, consolidated=False, zarr_format=3)
            return ds.isel(lead_time=slice(0, steps_done))
        except (FileNotFoundError, DamagedResultError):
            raise
        except Exception as error:  # zarr and xarray raise many types on a damaged store
            raise DamagedResultError(f"forecast store: {type(error).__name__}: {error}") from None

    def _verify(self, steps_done: int, variables: tuple[str, ...] | list[str]) -> None:
        import zarr

        # What is on disk, not what the consolidated metadata remembers (a deleted array).
        group = zarr.open_group(self.forecast, mode="r", zarr_format=3, use_consolidated=False)
        present = set(group.array_keys())
        for name in variables:
            if name not in present:
                raise DamagedResultError(f"variable {name!r} is missing from the forecast store")
            array = group[name]
            assert isinstance(array, zarr.Array)
            dims = list(getattr(array.metadata, "dimension_names", None) or ())
            if "lead_time" not in dims:
                raise DamagedResultError(f"variable {name!r} has no lead_time dimension")
            axis = dims.index("lead_time")
            if array.shape[axis] < steps_done:
                raise DamagedResultError(
                    f"variable {name!r} holds {array.shape[axis]} leads, {steps_done} are done"
                )
            for lead in range(steps_done):
                index = tuple(lead if d == axis else slice(None) for d in range(array.ndim))
                try:
                    array[index]
                except Exception as error:
                    raise DamagedResultError(
                        f"variable {name!r}, lead {12 * (lead + 1)} h: unreadable "
                        f"({type(error).__name__}: {error})"
                    ) from None

    def read_scores(self) -> dict[str, Any] | None:
        """The scores, or None when there are none (deleted).

        Raises:
          DamagedResultError: the file is not the scores the worker wrote.
        """
        try:
            text = self.scores.read_bytes()
        except FileNotFoundError:
            return None
        try:
            result = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise DamagedResultError(f"scores.json is not JSON ({error})") from None
        if not isinstance(result, dict):
            raise DamagedResultError("scores.json does not hold a scores object")
        try:
            Scores.model_validate(result)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise DamagedResultError(
                f"scores.json does not match the scores layout ({where}: {first['msg']})"
            ) from None
        return result


def _datetime64(request: JobRequest) -> np.datetime64:
    from weather.data.times import to_datetime64

    return to_datetime64(request.init_time, "init_time")
