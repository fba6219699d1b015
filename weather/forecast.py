"""The functional inference entry point: checkpoint + analysis archive -> ensemble forecast.

`load_forecaster` rebuilds the model from a checkpoint; `forecast` reads the two analysis states
at ``init - 12h`` and ``init``, rolls the ensemble out chunk by chunk, and either returns the
forecast as an `xarray.Dataset` or streams each chunk of leads into a Zarr store as it is produced.

Forecast layout (WeatherBench2 style, physical units, canonical names): dims
``member, init_time, lead_time, level, latitude, longitude`` for level fields and
``member, init_time, lead_time, latitude, longitude`` for surface fields; ``lead_time`` is a
timedelta (12 h, 24 h, ...), ``member`` carries ``standard_name: realization``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from flax import serialization

from weather.data.errors import ArchiveError
from weather.data.layout import annotate_forecast
from weather.data.reader import select_window
from weather.data.times import STEP, TimeLike, parse_lead, to_datetime64
from weather.model.checkpoint import load_checkpoint
from weather.model.denoiser import Forecaster, ModelConfig
from weather.model.rollout import Roller, RolloutConfig
from weather.model.task import (
    Normalization,
    TaskConfig,
    channels_to_state,
    state_to_channels,
    static_channels,
)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    forecaster: Forecaster
    params: Any
    metadata: dict[str, Any]
    path: str


def load_forecaster(path: str | Path) -> LoadedModel:
    """Rebuild a forecaster and its (EMA) parameters from a checkpoint file."""
    saved = load_checkpoint(path)
    configs = saved["configs"]
    model_config = ModelConfig.from_dict(configs["model"])
    norm = Normalization.from_dict(saved["normalization"])
    grid = configs["grid"]
    forecaster = Forecaster(
        model_config, norm, np.asarray(grid["latitude"]), np.asarray(grid["longitude"])
    )
    import jax

    template = forecaster.param_shapes()
    params = serialization.from_state_dict(template, saved["params"])
    check_param_shapes(template, params, path)
    return LoadedModel(forecaster, jax.device_put(params), saved["metadata"], str(path))


def check_param_shapes(template: Any, params: Any, path: str | Path) -> None:
    """Raise `ValueError` naming the first parameter whose shape differs from the model's."""
    import jax

    want = dict(jax.tree_util.tree_leaves_with_path(template))
    for key, value in jax.tree_util.tree_leaves_with_path(params):
        expected = want.get(key)
        shape = tuple(np.shape(value))
        if expected is None or tuple(expected.shape) != shape:
            name = jax.tree_util.keystr(key)
            raise ValueError(
                f"checkpoint {path}: parameter {name} has shape {shape}, but the model's "
                f"config makes {None if expected is None else tuple(expected.shape)}"
            )


def check_archive_fits(
    task: TaskConfig, latitude: np.ndarray, longitude: np.ndarray, archive: xr.Dataset
) -> None:
    """Raise `ArchiveError` naming what a model needs and a canonical archive lacks: variables
    (all of them, with what the archive has), pressure levels, or its grid."""
    needed = (*task.level_variables, *task.surface_variables, *task.static_variables)
    missing = [name for name in needed if name not in archive]
    if missing:
        raise ArchiveError(
            f"variables {missing} are missing from the archive; the model needs them (the "
            f"archive has {sorted(map(str, archive.data_vars))})"
        )
    for coord, mine in (("latitude", latitude), ("longitude", longitude)):
        theirs = archive[coord].values
        if theirs.shape != mine.shape or not np.allclose(theirs, mine, atol=1e-6):
            raise ArchiveError(
                f"coordinate {coord!r}: the archive's grid ({theirs.size} points) is not the "
                f"model's ({mine.size} points)"
            )
    if task.level_variables:
        have = {int(x) for x in archive["level"].values} if "level" in archive.coords else set()
        missing_levels = sorted(set(task.levels) - have)
        if missing_levels:
            raise ArchiveError(
                f"coordinate 'level' lacks {missing_levels} hPa, which the model needs; the "
                f"archive has {sorted(have)}"
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
    return both[0], both[1], static_channels(archive, forecaster.task)


def _forecast_template(
    forecaster: Forecaster,
    init: np.datetime64,
    leads: np.ndarray,
    members: np.ndarray,
    attrs: dict[str, Any],
) -> xr.Dataset:
    import dask.array as da

    task = forecaster.task
    lat, lon = forecaster.latitude, forecaster.longitude
    m, s = members.size, leads.size
    levels = np.asarray(task.levels)
    data_vars: dict[str, Any] = {}
    for name in task.level_variables:
        shape = (m, 1, s, levels.size, lat.size, lon.size)
        chunks = (m, 1, 1, levels.size, lat.size, lon.size)
        data_vars[name] = (
            ("member", "init_time", "lead_time", "level", "latitude", "longitude"),
            da.full(shape, np.nan, dtype=np.float32, chunks=chunks),
        )
    for name in task.surface_variables:
        surface_shape = (m, 1, s, lat.size, lon.size)
        data_vars[name] = (
            ("member", "init_time", "lead_time", "latitude", "longitude"),
            da.full(surface_shape, np.nan, dtype=np.float32, chunks=(m, 1, 1, lat.size, lon.size)),
        )
    ds = xr.Dataset(
        data_vars,
        coords={
            "member": members.astype(np.int64),
            "init_time": np.asarray([init], dtype="datetime64[ns]"),
            "lead_time": leads.astype("timedelta64[ns]"),
            "level": levels.astype(np.int64),
            "latitude": lat,
            "longitude": lon,
        },
        attrs=attrs,
    )
    annotate_forecast(ds)
    return ds


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
      out: a Zarr store to stream into (written atomically per chunk of leads; must not exist).
      on_chunk: called with (steps done, steps total) after each chunk.

    Returns:
      The forecast (loaded in memory, or opened lazily from `out`).
    """
    if members < 1:
        raise ValueError(f"members: must be >= 1, got {members}")
    fc = model.forecaster
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
    template = _forecast_template(fc, init, leads, member_index, attrs)
    store = Path(out) if out is not None else None
    if store is not None:
        if store.exists():
            raise FileExistsError(f"out: {store} exists; forecasts never overwrite a store")
        tmp = store.with_name(store.name + ".creating")
        if tmp.exists():
            shutil.rmtree(tmp)
        template.to_zarr(tmp, compute=False, zarr_format=3, consolidated=False)
        os.replace(tmp, store)
        result = None
    else:
        result = {
            name: np.full(template[name].shape, np.nan, np.float32) for name in template.data_vars
        }
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
        if store is not None:
            chunk = xr.Dataset({n: (template[n].dims, v) for n, v in fields.items()})
            chunk.to_zarr(
                store, region={"lead_time": slice(lo, hi)}, consolidated=False, zarr_format=3
            )
        else:
            assert result is not None
            for name, value in fields.items():
                result[name][:, :, lo:hi] = value
        if on_chunk is not None:
            on_chunk(hi, steps)
    if store is not None:
        return xr.open_zarr(store, consolidated=False)
    assert result is not None
    return xr.Dataset(
        {n: (template[n].dims, result[n], template[n].attrs) for n in template.data_vars},
        coords=template.coords,
        attrs=template.attrs,
    )
