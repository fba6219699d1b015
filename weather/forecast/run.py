"""Running a loaded model: analysis archive -> ensemble forecast.

`forecast` reads the two analysis states at ``init - 12h`` and ``init`` (`initial_states`),
rolls the ensemble out chunk by chunk, and either returns the forecast as an `xarray.Dataset` or
streams each chunk of leads into a Zarr store as it is produced (`weather.data.layout`), or
writes it at the end as one NetCDF or GRIB2 file (`OUTPUT_FORMATS`, chosen by `output_format`).

Forecast layout (WeatherBench2 style, physical units, canonical names): dims
``member, init_time, lead_time, level, latitude, longitude`` for level fields and
``member, init_time, lead_time, latitude, longitude`` for surface fields; ``lead_time`` is a
timedelta (12 h, 24 h, ...), ``member`` carries ``standard_name: realization``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np
import xarray as xr

from weather.data.atomic import replacing
from weather.data.errors import ArchiveError
from weather.data.grib import without_grib2_code, write_grib2
from weather.data.layout import ForecastLayout, ForecastWriter, write_netcdf
from weather.data.reader import select_window
from weather.data.times import STEP, TimeLike, parse_lead, to_datetime64
from weather.forecast.load import LoadedModel
from weather.model.denoiser import Forecaster
from weather.model.rollout import Roller, RolloutConfig
from weather.model.task import (
    TaskConfig,
    channels_to_state,
    check_archive,
    state_to_channels,
    static_channels,
)

OutputFormat = Literal["zarr", "netcdf", "grib2"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
# File name endings that choose a format; anything else is a Zarr store (a directory).
_SUFFIXES = {
    ".nc": "netcdf",
    ".nc4": "netcdf",
    ".grib2": "grib2",
    ".grb2": "grib2",
    ".grib": "grib2",
}


def output_format(out: str | Path, chosen: str | None = None) -> OutputFormat:
    """The format of an output: ``chosen`` if given, else from the name's ending (``.nc``,
    ``.nc4``: NetCDF; ``.grib2``, ``.grb2``, ``.grib``: GRIB2; anything else: a Zarr store).

    Raises:
      ValueError: naming ``chosen`` when it is not one of `OUTPUT_FORMATS`.
    """
    if chosen is None:
        chosen = _SUFFIXES.get(Path(out).suffix.lower(), "zarr")
    if chosen not in OUTPUT_FORMATS:
        raise ValueError(f"output format {chosen!r}: not one of {list(OUTPUT_FORMATS)}")
    return cast(OutputFormat, chosen)


def check_archive_fits(
    task: TaskConfig, latitude: np.ndarray, longitude: np.ndarray, archive: xr.Dataset
) -> None:
    """Raise `ArchiveError` naming what a model needs and a canonical archive lacks: variables
    and pressure levels (all of them at once, with what the archive holds; see
    `weather.model.task.check_archive`), or its grid."""
    check_archive(task, archive)
    for coord, mine in (("latitude", latitude), ("longitude", longitude)):
        theirs = archive[coord].values
        if theirs.shape != mine.shape or not np.allclose(theirs, mine, atol=1e-6):
            raise ArchiveError(
                f"coordinate {coord!r}: the archive's grid ({theirs.size} points) is not the "
                f"model's ({mine.size} points)"
            )


def initial_states(
    archive: xr.Dataset, forecaster: Forecaster, init_time: TimeLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(previous, current, static) channels from a canonical archive, physical units.

    Raises:
      ArchiveError: the init time or the time 12 h before is missing (naming the available
        range), a variable or level the model needs is absent, or the grid differs from the
        model's.
    """
    task = forecaster.task
    t = to_datetime64(init_time, "init_time")
    check_archive_fits(task, forecaster.latitude, forecaster.longitude, archive)
    times = archive["time"].values
    for needed in (t - STEP, t):
        if needed not in times:
            raise ArchiveError(
                f"init_time {np.datetime_as_string(t, unit='m')}: the analysis needs "
                f"{np.datetime_as_string(needed, unit='m')}, which the archive lacks; it has "
                f"{np.datetime_as_string(times[0], unit='m')} to "
                f"{np.datetime_as_string(times[-1], unit='m')} (the first usable init is 12 h "
                "after its start)"
            )
    names = [*task.level_variables, *task.surface_variables]
    window = select_window(archive[names].sel(level=list(task.levels)), t - STEP, t, step=STEP)
    fields = {n: window[n].values for n in names}
    both = state_to_channels(task, fields)  # [2, H, W, C]
    # A field undefined somewhere (sea-surface temperature) may be NaN only where the model
    # knows it is (over its training archive's land); an input NaN elsewhere would spread.
    valid = forecaster.normalization.valid
    if valid is not None:
        stray = np.isnan(both) & valid & task.input_mask()
        if stray.any():
            channel = task.channel_names()[int(np.nonzero(stray.any(axis=(0, 1, 2)))[0][0])]
            raise ArchiveError(
                f"variable {channel!r}: NaN at {int(stray.sum())} point(s) of the analysis at "
                f"{np.datetime_as_string(t, unit='m')} where the model's training archive had "
                "values (another land-sea mask?)"
            )
    return both[0], both[1], static_channels(archive, forecaster.task)


def _forecast_layout(
    forecaster: Forecaster,
    init: np.datetime64,
    leads: np.ndarray,
    members: np.ndarray,
    attrs: dict[str, Any],
) -> ForecastLayout:
    task = forecaster.task
    return ForecastLayout.of(
        (*task.level_variables, *task.surface_variables),
        task.level_variables,
        members=members,
        init_times=[init],
        lead_times=leads,
        latitude=forecaster.latitude,
        longitude=forecaster.longitude,
        levels=task.levels,
        attrs=attrs,
    )


def forecast(
    model: LoadedModel,
    archive: xr.Dataset,
    *,
    init_time: TimeLike,
    lead: str | float | np.timedelta64,
    members: int,
    seed: int = 0,
    rollout: RolloutConfig | None = None,
    roller: Roller | None = None,
    out: str | Path | None = None,
    out_format: str | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """Run an ensemble forecast.

    Args:
      model: from `load_forecaster`.
      archive: canonical analysis archive holding init-12h and init.
      init_time: initial time (UTC).
      lead: total lead (multiple of 12 h, at most 15 days).
      members: ensemble size.
      seed: the forecast's seed (member i is the same for any ensemble size).
      rollout: chunking, perturbations and sampler overrides.
      roller: a `Roller` to reuse (its compiled chunks), instead of `rollout`.
      out: where to write the forecast (must not exist): a Zarr store, streamed into per chunk
        of leads, or a NetCDF or GRIB2 file, written whole (atomically) at the end.
      out_format: one of `OUTPUT_FORMATS`; None chooses by the name of ``out``
        (`output_format`).
      on_chunk: called with (steps done, steps total) after each chunk.

    Returns:
      The forecast (loaded in memory, or opened lazily from a Zarr ``out``).

    Raises:
      ValueError: a bad argument, an unknown ``out_format`` or, for GRIB2, a variable without
        a GRIB2 code (checked before anything runs).
      FileExistsError: ``out`` exists.
    """
    if members < 1:
        raise ValueError(f"members: must be >= 1, got {members}")
    fc = model.forecaster
    fmt = output_format(out, out_format) if out is not None else "zarr"
    if out is not None and fmt != "zarr":
        if Path(out).exists():
            raise FileExistsError(f"out: {out} exists; forecasts never overwrite a file")
        uncoded = without_grib2_code((*fc.task.level_variables, *fc.task.surface_variables))
        if fmt == "grib2" and uncoded:
            raise ValueError(f"out: GRIB2 has no parameter code for the variables {uncoded}")
    total = parse_lead(lead)
    steps = int(total // STEP)
    init = to_datetime64(init_time, "init_time")
    previous, current, static = initial_states(archive, fc, init)
    roller = roller or Roller(fc, rollout)
    leads = STEP * np.arange(1, steps + 1)
    member_index = np.arange(members)
    attrs = {
        "title": "Ensemble forecast (diffusion model)",
        "checkpoint": os.path.basename(model.path),
        "seed": seed,
        "sampler": json.dumps(
            dataclasses.asdict(roller.config.sampler or fc.config.sampler), default=str
        ),
        "initial_perturbation": roller.config.initial_perturbation,
    }
    layout = _forecast_layout(fc, init, leads, member_index, attrs)
    writer = ForecastWriter(layout, out if fmt == "zarr" else None)
    for lo, states in roller.run(
        model.params,
        previous=previous,
        current=current,
        static=static,
        init_time=init,
        steps=steps,
        members=member_index,
        seed=seed,
    ):
        # states: [k, M, H, W, C] -> per variable [M, 1, k, ...]
        fields = channels_to_state(fc.task, np.moveaxis(states, 0, 1)[:, None])
        hi = lo + states.shape[0]
        writer.write(fields, lead=slice(lo, hi))
        if on_chunk is not None:
            on_chunk(hi, steps)
    ds = writer.dataset()
    if out is not None and fmt != "zarr":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with replacing(out) as tmp:
            (write_grib2 if fmt == "grib2" else write_netcdf)(ds, tmp)
    return ds


__all__ = [
    "OUTPUT_FORMATS",
    "OutputFormat",
    "check_archive_fits",
    "forecast",
    "initial_states",
    "output_format",
]
