"""The forecasting task: which fields go in and out, their channel layout and normalisation.

GenCast's task (Price et al. 2024): given the states at t-12h and t, forcings and static fields,
predict x(t+12h). The diffusion model's target is the residual ``x(t+12h) - x(t)`` divided by
the standard deviation of 12 h differences; inputs are normalised by their per-level mean and
standard deviation.

Inside the model every state is one array ``[..., lat, lon, channel]``: the level variables in
`TaskConfig.level_variables` order, each over `TaskConfig.levels` (ascending hPa), then the
surface variables. `state_to_channels` / `channels_to_state` convert to and from the dict-of-arrays
layout of `weather.data.windows` (``{var: [..., level, lat, lon]}`` / ``{var: [..., lat, lon]}``),
so jit-ed code never sees names or labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from weather.data import forcings as forcings_lib
from weather.data.errors import ArchiveError
from weather.data.grid import cell_area_weights
from weather.data.variables import (
    SIMULATED_LEVEL_VARIABLES,
    SIMULATED_STATIC_VARIABLES,
    SIMULATED_SURFACE_VARIABLES,
    WB2_LEVELS,
)

# Forcing channels: year and day progress as sin/cos, at the input time t and the target time.
FORCING_CHANNELS = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """The fields of the task.

    Attributes:
      level_variables: prognostic fields on pressure levels (canonical names).
      surface_variables: prognostic single-level fields.
      static_variables: time-invariant inputs.
      levels: pressure levels (hPa, ascending).
      surface_weight: loss weight of each surface variable relative to the mean level weight.
    """

    level_variables: tuple[str, ...] = SIMULATED_LEVEL_VARIABLES
    surface_variables: tuple[str, ...] = SIMULATED_SURFACE_VARIABLES
    static_variables: tuple[str, ...] = SIMULATED_STATIC_VARIABLES
    levels: tuple[int, ...] = WB2_LEVELS
    surface_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.level_variables and not self.surface_variables:
            raise ValueError("a task needs at least one prognostic variable")
        if self.level_variables and not self.levels:
            raise ValueError("levels: level variables need at least one pressure level")
        if list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"levels: must be strictly ascending, got {self.levels}")
        names = self.level_variables + self.surface_variables + self.static_variables
        if len(set(names)) != len(names):
            raise ValueError(f"variables: a name repeats in {names}")

    @property
    def n_state(self) -> int:
        """Channels of one state."""
        return len(self.level_variables) * len(self.levels) + len(self.surface_variables)

    @property
    def n_static(self) -> int:
        return len(self.static_variables)

    @property
    def n_conditioning(self) -> int:
        """Channels that condition the denoiser besides the noisy target."""
        return 2 * self.n_state + FORCING_CHANNELS + self.n_static

    def channel_names(self) -> list[str]:
        """``name@level`` (or ``name``) per state channel, in order."""
        out = [f"{v}@{p}" for v in self.level_variables for p in self.levels]
        return out + list(self.surface_variables)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskConfig:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)


def state_to_channels(task: TaskConfig, fields: Mapping[str, np.ndarray]) -> np.ndarray:
    """``{var: [..., level, lat, lon] | [..., lat, lon]}`` -> ``[..., lat, lon, channel]``.

    Level fields must already hold exactly `task.levels`, in order.
    """
    parts = []
    for name in task.level_variables:
        x = np.asarray(fields[name])
        parts.append(np.moveaxis(x, -3, -1))
    for name in task.surface_variables:
        parts.append(np.asarray(fields[name])[..., None])
    return np.concatenate(parts, axis=-1).astype(np.float32)


def static_channels(dataset: xr.Dataset, task: TaskConfig) -> np.ndarray:
    """The archive's static fields as physical channels ``[H, W, S]`` float32 (``S`` = 0 when
    the task has none), in the task's order."""
    fields = [np.asarray(dataset[name].values, np.float32) for name in task.static_variables]
    if fields:
        return np.stack(fields, axis=-1)
    return np.zeros((dataset["latitude"].size, dataset["longitude"].size, 0), np.float32)


def channels_to_state(task: TaskConfig, x: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of `state_to_channels`."""
    n_lev = len(task.levels)
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(task.level_variables):
        out[name] = np.moveaxis(x[..., i * n_lev : (i + 1) * n_lev], -1, -3)
    base = len(task.level_variables) * n_lev
    for j, name in enumerate(task.surface_variables):
        out[name] = x[..., base + j]
    return out


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel scales of the task, from `weather.data.statistics`.

    Attributes:
      mean, std: ``[channel]`` of the state (physical units).
      diff_std: ``[channel]`` std of 12 h differences (the residual target's scale).
      static_mean, static_std: ``[static]``.
    """

    mean: np.ndarray
    std: np.ndarray
    diff_std: np.ndarray
    static_mean: np.ndarray
    static_std: np.ndarray

    @classmethod
    def from_statistics(cls, task: TaskConfig, stats: xr.Dataset) -> Normalization:
        """Pick the task's channels out of a statistics dataset.

        Raises:
          ArchiveError: a variable or level of the task missing from the statistics.
        """

        def get(name: str, kind: str, level: int | None = None) -> float:
            key = f"{name}_{kind}"
            if key not in stats:
                raise ArchiveError(f"statistics lack {key!r} (variable {name!r})")
            da = stats[key]
            if level is not None:
                if level not in da["level"].values:
                    raise ArchiveError(
                        f"statistics of {name!r} lack level {level} hPa; they have "
                        f"{da['level'].values.tolist()}"
                    )
                da = da.sel(level=level)
            return float(da)

        def per_channel(kind: str) -> np.ndarray:
            values = [get(v, kind, p) for v in task.level_variables for p in task.levels]
            values += [get(v, kind) for v in task.surface_variables]
            return np.asarray(values, np.float32)

        return cls(
            mean=per_channel("mean"),
            std=per_channel("std"),
            diff_std=per_channel("diff_std"),
            static_mean=np.asarray([get(v, "mean") for v in task.static_variables], np.float32),
            static_std=np.asarray([get(v, "std") for v in task.static_variables], np.float32),
        )

    def to_dict(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalization:
        return cls(**{k: np.asarray(d[k], np.float32) for k in cls.__dataclass_fields__})


def channel_weights(task: TaskConfig) -> np.ndarray:
    """Loss weight per state channel ``[channel]``.

    As GenCast: a level's weight is proportional to its pressure (levels near the surface, where
    most of the atmosphere's mass and most users' interest lie, count most), normalised to mean 1
    over levels; each surface variable weighs `task.surface_weight`.
    """
    levels = np.asarray(task.levels, np.float64)
    per_level = levels / levels.mean() if levels.size else levels
    w = np.concatenate(
        [
            np.tile(per_level, len(task.level_variables)),
            np.full(len(task.surface_variables), task.surface_weight),
        ]
    )
    return w.astype(np.float32)


def loss_weights(task: TaskConfig, latitude: np.ndarray) -> np.ndarray:
    """Area x channel weights ``[lat, 1, channel]`` with mean 1 over the sphere and channels."""
    area = cell_area_weights(latitude)[:, None, None]
    w = area * channel_weights(task)[None, None, :]
    return (w / (area.mean() * channel_weights(task).mean())).astype(np.float32)


def forcing_channels(time: np.ndarray, longitude: np.ndarray, n_lat: int) -> np.ndarray:
    """Forcings at the input and target times as channels.

    Args:
      time: ``[..., 2]`` datetime64: (t, t + 12h) per sample.
      longitude: ``[lon]`` degrees.
      n_lat: number of latitudes (forcings do not vary with latitude).

    Returns:
      ``[..., lat, lon, 8]`` float32: for each of the two times, year progress sin/cos and day
      progress sin/cos (local solar time).
    """
    t = np.asarray(time, dtype="datetime64[ns]")
    flat = t.reshape(-1)
    f = forcings_lib.forcings(flat, longitude)
    n_lon = len(longitude)
    chans = [
        np.broadcast_to(f["year_progress_sin"][:, None], (flat.size, n_lon)),
        np.broadcast_to(f["year_progress_cos"][:, None], (flat.size, n_lon)),
        f["day_progress_sin"],
        f["day_progress_cos"],
    ]
    per_time = np.stack(chans, axis=-1)  # [N, lon, 4]
    both = per_time.reshape(*t.shape, n_lon, 4)  # [..., 2, lon, 4]
    both = np.moveaxis(both, -3, -2).reshape(*t.shape[:-1], n_lon, 2 * 4)  # [..., lon, 8]
    out = np.broadcast_to(both[..., None, :, :], (*t.shape[:-1], n_lat, n_lon, 8))
    return np.ascontiguousarray(out, dtype=np.float32)
