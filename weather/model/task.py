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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from weather.data import forcings as forcings_lib
from weather.data.errors import ArchiveError
from weather.data.grid import cell_area_weights
from weather.data.variables import (
    CATALOGUE,
    FORCINGS,
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


def choose_task(
    archive: xr.Dataset,
    *,
    variables: Sequence[str] | None = None,
    levels: Sequence[int] | None = None,
    source: str = "the archive",
) -> TaskConfig:
    """The task of a new model on ``archive`` (canonical layout, see `weather.data.reader`).

    Args:
      archive: the training archive; its data variables and ``level`` coordinate (hPa) say what
        can be modelled.
      variables: canonical (WeatherBench2) names to model, level and surface variables alike;
        static fields (role ``static``) named here become static inputs. None: every catalogue
        variable the archive holds (static ones as static inputs), which for the simulated
        archive is the default task.
      levels: pressure levels (hPa) of the level variables; None: all the archive's levels.
      source: how to name the archive in errors (its path).

    Raises:
      ValueError: naming ``--variables`` or ``--levels``, for names outside the catalogue, forcings
        (computed, never read), repeats or nothing to predict.
      ArchiveError: naming what ``source`` lacks (variables or levels) and what it holds, before
        any data is read.
    """
    # Catalogue order, whatever the archive's or the option's: the channel layout of a task is
    # then fixed by its set of variables (and the default one is `TaskConfig()`'s).
    held = [name for name in CATALOGUE if name in archive.data_vars]
    if variables is None:
        chosen = held
    else:
        chosen = list(variables)
        unknown = [n for n in chosen if n not in CATALOGUE]
        if unknown:
            forcing = [n for n in unknown if n in FORCINGS]
            reason = f"{forcing} are forcings, computed from time and place; " if forcing else ""
            raise ValueError(
                f"--variables: {unknown} not in the catalogue; {reason}choose among "
                f"{sorted(n for n in CATALOGUE)}"
            )
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"--variables: a name repeats in {chosen}")
        missing = [n for n in chosen if n not in held]
        if missing:
            raise ArchiveError(
                f"{source} lacks {missing} (asked by --variables); it holds "
                f"{held or 'no catalogue variable'}"
            )
    chosen = [n for n in CATALOGUE if n in chosen]
    level_vars = tuple(n for n in chosen if CATALOGUE[n].has_levels)
    static_vars = tuple(n for n in chosen if CATALOGUE[n].role == "static")
    surface_vars = tuple(
        n for n in chosen if not CATALOGUE[n].has_levels and CATALOGUE[n].role != "static"
    )
    if not level_vars and not surface_vars:
        raise ArchiveError(
            f"{source} has nothing to predict: "
            + (f"--variables {chosen} are all static" if variables else f"it holds {held}")
        )
    archive_levels = [int(x) for x in archive["level"].values] if "level" in archive.coords else []
    if not level_vars:
        chosen_levels: tuple[int, ...] = ()
    elif levels is None:
        chosen_levels = tuple(sorted(archive_levels))
    else:
        chosen_levels = tuple(sorted(int(x) for x in levels))
        if len(set(chosen_levels)) != len(chosen_levels):
            raise ValueError(f"--levels: a level repeats in {list(levels)}")
        missing_levels = [p for p in chosen_levels if p not in archive_levels]
        if missing_levels:
            raise ArchiveError(
                f"{source} lacks levels {missing_levels} hPa (asked by --levels); it holds "
                f"{sorted(archive_levels)}"
            )
    return TaskConfig(
        level_variables=level_vars,
        surface_variables=surface_vars,
        static_variables=static_vars,
        levels=chosen_levels,
    )


def check_archive(task: TaskConfig, archive: xr.Dataset, source: str = "the archive") -> None:
    """Refuse an archive that does not hold the task's fields, saying everything that differs.

    Raises:
      ArchiveError: naming the variables and levels the task needs that ``source`` lacks, and
        what it holds.
    """
    names = [*task.level_variables, *task.surface_variables, *task.static_variables]
    missing = [n for n in names if n not in archive.data_vars]
    problems = []
    if missing:
        held = [n for n in CATALOGUE if n in archive.data_vars]
        problems.append(f"variables {missing} (it holds {held})")
    if task.level_variables:
        held_levels = [int(x) for x in archive["level"].values] if "level" in archive.coords else []
        missing_levels = [p for p in task.levels if p not in held_levels]
        if missing_levels:
            problems.append(f"levels {missing_levels} hPa (it holds {sorted(held_levels)})")
    if problems:
        raise ArchiveError(f"{source} lacks the model's " + " and ".join(problems))


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
