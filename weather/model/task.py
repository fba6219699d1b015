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
from weather.data import solar
from weather.data.errors import ArchiveError
from weather.data.grid import cell_area_weights
from weather.data.times import STEP
from weather.data.variables import (
    CATALOGUE,
    FORCINGS,
    SIMULATED_LEVEL_VARIABLES,
    SIMULATED_STATIC_VARIABLES,
    SIMULATED_SURFACE_VARIABLES,
    WB2_LEVELS,
)

# Computed forcings a task may use, and their channels at each of the two times (t, t + 12h):
# year and day progress as sin/cos pairs; top-of-atmosphere incident solar radiation integrated
# over the 12 h ending at that time (as GenCast gives it), divided by TSI x 12 h so that it lies
# in [0, 0.73] (the largest over a year of 6-hourly times on a 5.625 deg grid: a 12 h window
# centred on local noon, where the day-side mean of cos Z, sin(lat) sin(dec) + cos(lat) cos(dec)
# 2 / pi, peaks near the subsolar latitude, times the distance factor).
FORCING_FEATURE_CHANNELS: dict[str, int] = {
    "year_progress": 2,
    "day_progress": 2,
    "toa_incident_solar_radiation": 1,
}
# Every task before issue 17 (and the simulated archive's, whose atmosphere has no sun: its
# heating is a zonally symmetric Held-Suarez relaxation with a seasonal cycle) uses these.
TIME_FORCINGS: tuple[str, ...] = ("year_progress", "day_progress")
STEP_SECONDS = float(STEP / np.timedelta64(1, "s"))
GENCAST_FORCINGS: tuple[str, ...] = (*TIME_FORCINGS, "toa_incident_solar_radiation")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """The fields of the task.

    Attributes:
      level_variables: prognostic fields on pressure levels (canonical names).
      surface_variables: predicted single-level fields: prognostic ones are inputs too,
        output-only ones (catalogue role ``output``, precipitation) targets only.
      static_variables: time-invariant inputs.
      levels: pressure levels (hPa, ascending).
      surface_weight: loss weight of each surface variable relative to the mean level weight.
      forcings: computed forcings, names of `FORCING_FEATURE_CHANNELS` in that order.
    """

    level_variables: tuple[str, ...] = SIMULATED_LEVEL_VARIABLES
    surface_variables: tuple[str, ...] = SIMULATED_SURFACE_VARIABLES
    static_variables: tuple[str, ...] = SIMULATED_STATIC_VARIABLES
    levels: tuple[int, ...] = WB2_LEVELS
    surface_weight: float = 1.0
    forcings: tuple[str, ...] = TIME_FORCINGS

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
        unknown = [f for f in self.forcings if f not in FORCING_FEATURE_CHANNELS]
        if unknown:
            raise ValueError(
                f"forcings: {unknown} unknown; choose among {list(FORCING_FEATURE_CHANNELS)}"
            )
        if list(self.forcings) != [f for f in FORCING_FEATURE_CHANNELS if f in self.forcings]:
            # One order for every task: the channel layout is fixed by the set of names.
            raise ValueError(
                f"forcings: {list(self.forcings)} must be distinct and in the order "
                f"{list(FORCING_FEATURE_CHANNELS)}"
            )

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
        return 2 * self.n_state + self.n_forcing + self.n_static

    @property
    def n_forcing(self) -> int:
        """Forcing channels: each forcing's channels at t and at t + 12h."""
        return 2 * sum(FORCING_FEATURE_CHANNELS[f] for f in self.forcings)

    def channel_names(self) -> list[str]:
        """``name@level`` (or ``name``) per state channel, in order."""
        out = [f"{v}@{p}" for v in self.level_variables for p in self.levels]
        return out + list(self.surface_variables)

    def _per_channel(self, value: Any) -> np.ndarray:
        """``[channel]`` of ``value(catalogue entry)`` (None for names outside the catalogue)."""
        names = [v for v in self.level_variables for _ in self.levels]
        names += list(self.surface_variables)
        return np.asarray([value(CATALOGUE.get(n)) for n in names])

    def input_mask(self) -> np.ndarray:
        """``[channel]`` bool: True where a state channel is an input as well as a target; False
        for output-only fields (precipitation), whose past values the model never sees."""
        return self._per_channel(lambda v: v is None or v.role != "output").astype(bool)

    def lower_bounds(self) -> np.ndarray:
        """``[channel]`` float32: the smallest physical value (outputs are clipped to it;
        ``-inf`` where the catalogue gives none)."""
        return self._per_channel(
            lambda v: -np.inf if v is None or v.lower_bound is None else v.lower_bound
        ).astype(np.float32)

    def undefined_somewhere(self) -> np.ndarray:
        """``[channel]`` bool: fields that are NaN at fixed places (sea-surface temperature)."""
        return self._per_channel(lambda v: v is not None and v.undefined_somewhere).astype(bool)

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
    forcings: Sequence[str] | None = None,
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
      forcings: computed forcings (`FORCING_FEATURE_CHANNELS` names, any order); None:
        GenCast's, solar radiation included, except on an archive of our simulator (its
        ``simulation_config`` attribute), whose atmosphere has no sun: the time features only,
        the default task of every model trained on it.
      source: how to name the archive in errors (its path).

    Raises:
      ValueError: naming ``--variables`` or ``--levels``, for names outside the catalogue, forcings
        (computed, never read), repeats or nothing to predict.
      ArchiveError: naming what ``source`` lacks (variables or levels) and what it holds, before
        any data is read.
    """
    # Catalogue order, whatever the archive's or the option's: the channel layout of a task is
    # then fixed by its set of variables (and the default one is `TaskConfig()`'s).
    # Forcings are computed and diagnostics not modelled, whatever an archive stores of them.
    modelled = [n for n, v in CATALOGUE.items() if v.role in ("prognostic", "output", "static")]
    held = [name for name in modelled if name in archive.data_vars]
    if variables is None:
        chosen = held
    else:
        chosen = list(variables)
        unknown = [n for n in chosen if n not in modelled]
        if unknown:
            forcing = [
                n
                for n in unknown
                if n in FORCINGS or (n in CATALOGUE and CATALOGUE[n].role == "forcing")
            ]
            reason = f"{forcing} are forcings, computed from time and place; " if forcing else ""
            raise ValueError(
                f"--variables: {unknown} not in the catalogue; {reason}choose among "
                f"{sorted(modelled)}"
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
    if not level_vars and all(CATALOGUE[n].role == "output" for n in surface_vars):
        # Output-only fields are never inputs: the model would see nothing of the atmosphere.
        raise ArchiveError(
            f"{source} has nothing to predict from: {list(surface_vars)} are output-only fields "
            "(never inputs); add a prognostic variable"
            + ("" if variables else f" (it holds {held})")
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
    if forcings is None:
        chosen_forcings = (
            TIME_FORCINGS if "simulation_config" in archive.attrs else GENCAST_FORCINGS
        )
    else:
        unknown = [f for f in forcings if f not in FORCING_FEATURE_CHANNELS]
        if unknown or len(set(forcings)) != len(forcings):
            raise ValueError(
                f"--forcings: {list(forcings)} must be distinct names among "
                f"{list(FORCING_FEATURE_CHANNELS)}"
            )
        chosen_forcings = tuple(f for f in FORCING_FEATURE_CHANNELS if f in forcings)
    return TaskConfig(
        level_variables=level_vars,
        surface_variables=surface_vars,
        static_variables=static_vars,
        levels=chosen_levels,
        forcings=chosen_forcings,
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
      valid: ``[H, W, channel]`` bool, where each channel is defined (False for sea-surface
        temperature over land, True elsewhere; `valid_mask`), or None when every channel is
        defined everywhere. Kept with the model (a checkpoint's normalisation): inputs are
        filled with the mean and outputs set to NaN where a channel is undefined.
      degree_power: ``[degree, channel]`` the truth's mean power per spherical-harmonic degree
        (`weather.model.spectral.mean_degree_power`, units of the channel squared; ``inf`` for
        a channel undefined somewhere), or None; the sampler's ``power_cap`` needs it
        (``weather export --degree-power-from ARCHIVE`` adds it to a checkpoint).
    """

    mean: np.ndarray
    std: np.ndarray
    diff_std: np.ndarray
    static_mean: np.ndarray
    static_std: np.ndarray
    valid: np.ndarray | None = None
    degree_power: np.ndarray | None = None

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
        return {k: np.asarray(v) for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalization:
        fields = {k: np.asarray(d[k], np.float32) for k in cls.__dataclass_fields__ if k in d}
        if "valid" in fields:
            fields["valid"] = fields["valid"].astype(bool)
        return cls(**fields)

    def with_valid(self, valid: np.ndarray | None) -> Normalization:
        """This normalisation with the mask of where each channel is defined (`valid_mask`)."""
        return dataclasses.replace(self, valid=valid)


def valid_mask(task: TaskConfig, archive: xr.Dataset) -> np.ndarray | None:
    """Where each state channel is defined, ``[H, W, channel]`` bool, or None when every
    channel is defined everywhere (the task has no field undefined somewhere).

    A field undefined somewhere (sea-surface temperature: NaN over land) is taken as defined
    where it is finite at the archive's first time: ERA5's land points are fixed.
    """
    partial = task.undefined_somewhere()
    if not partial.any():
        return None
    h, w = archive["latitude"].size, archive["longitude"].size
    valid = np.ones((h, w, task.n_state), bool)
    channel = 0
    for name in task.level_variables:
        for level in task.levels:
            if partial[channel]:
                first = archive[name].isel(time=0).sel(level=level).values
                valid[..., channel] = np.isfinite(first)
            channel += 1
    for name in task.surface_variables:
        if partial[channel]:
            valid[..., channel] = np.isfinite(archive[name].isel(time=0).values)
        channel += 1
    return valid


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


def forcing_channels(
    task: TaskConfig, time: np.ndarray, longitude: np.ndarray, latitude: np.ndarray
) -> np.ndarray:
    """The task's forcings at the input and target times as channels.

    Args:
      task: which forcings (`TaskConfig.forcings`).
      time: ``[..., 2]`` datetime64: (t, t + 12h) per sample.
      longitude: ``[lon]`` degrees east.
      latitude: ``[lat]`` degrees north (only solar radiation varies with it).

    Returns:
      ``[..., lat, lon, task.n_forcing]`` float32: for each of the two times in turn, the task's
      forcings in order: year progress sin/cos, day progress (local mean solar time) sin/cos,
      top-of-atmosphere incident solar radiation over the 12 h ending then, in units of
      ``TSI x 12 h``.
    """
    t = np.asarray(time, dtype="datetime64[ns]")
    flat = t.reshape(-1)
    n_lat, n_lon = len(latitude), len(longitude)
    shape = (flat.size, n_lat, n_lon)
    chans: list[np.ndarray] = []
    if "year_progress" in task.forcings or "day_progress" in task.forcings:
        f = forcings_lib.forcings(flat, longitude)
        if "year_progress" in task.forcings:
            for name in ("year_progress_sin", "year_progress_cos"):
                chans.append(np.broadcast_to(f[name][:, None, None], shape))
        if "day_progress" in task.forcings:
            for name in ("day_progress_sin", "day_progress_cos"):
                chans.append(np.broadcast_to(f[name][:, None, :], shape))
    if "toa_incident_solar_radiation" in task.forcings:
        energy = solar.toa_incident_solar_radiation(flat, latitude, longitude, period=STEP)
        chans.append(energy / (solar.TSI * STEP_SECONDS))
    per_time = np.stack(chans, axis=-1)  # [N, lat, lon, F]
    n = per_time.shape[-1]
    both = per_time.reshape(*t.shape, n_lat, n_lon, n)  # [..., 2, lat, lon, F]
    both = np.moveaxis(both, -4, -2)  # [..., lat, lon, 2, F]
    return np.ascontiguousarray(both.reshape(*t.shape[:-1], n_lat, n_lon, 2 * n), np.float32)
