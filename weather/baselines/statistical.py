"""Reference forecasts from an analysis archive, in the model's forecast layout.

Both baselines return a Dataset laid out exactly like `weather.forecast.forecast`'s output: dims
``member, init_time, lead_time, level, latitude, longitude`` for level fields and
``member, init_time, lead_time, latitude, longitude`` for surface fields, ``lead_time`` a
timedelta64[ns], ``member`` an int64 index with ``standard_name: realization``, float32 data in
catalogue units with the same CF attributes. So the scores of `weather.scoring` apply unchanged.

- `persistence`: one member, the analysis at the initial time, for every lead.
- `climatology_ensemble`: members drawn from other years of a training archive at the same time
  of year and time of day as each valid time (see its docstring for the exact rule).

Only coordinates are read to choose the times: the fields are gathered with one lazy index
selection per variable, so a dask-backed archive (e.g. ten years, 6-hourly, from `open_archive`)
stays lazy, and the result is chunked like the model's Zarr forecasts (all members, one init
time and one lead per chunk).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import xarray as xr

from weather.data.errors import ArchiveError
from weather.data.layout import annotate_forecast
from weather.data.times import TimeLike, format_hours, format_times, to_datetime64

LeadLike: TypeAlias = np.timedelta64 | pd.Timedelta | float | int | str

_DAY = np.timedelta64(1, "D")


def persistence(
    archive: xr.Dataset,
    init_times: Sequence[TimeLike],
    lead_times: Sequence[LeadLike],
    variables: Sequence[str] | None = None,
) -> xr.Dataset:
    """The persistence forecast: the analysis at ``init_time`` for every lead, one member.

    Args:
      archive: a canonical analysis archive (`weather.data.reader.open_archive`), dims
        ``[time, (level,) latitude, longitude]``; numpy- or dask-backed.
      init_times: initial times (UTC), each in the archive's ``time``.
      lead_times: leads (timedelta64, ``pandas.Timedelta`` strings such as ``"36h"``, or numbers
        of hours), non-negative and distinct.
      variables: canonical names to forecast; every time-dependent variable when None.

    Returns:
      Dataset ``[member=1, init_time, lead_time, (level,) latitude, longitude]``, float32.

    Raises:
      ArchiveError: naming the variable that is absent or static, or the init time the archive
        lacks.
    """
    names = _variables(archive, variables)
    inits = _init_times(init_times)
    leads = _lead_times(lead_times)
    index = _time_index(archive)
    positions = index.get_indexer(inits)
    for t, p in zip(inits, positions, strict=True):
        if p < 0:
            raise ArchiveError(
                f"init_time {_fmt(t)}: persistence needs the analysis at this time, "
                f"which the archive lacks; it spans {_span(index)}"
            )
    idx = np.broadcast_to(positions[None, :, None], (1, inits.size, leads.size))
    return _gather(archive, names, idx, inits, leads, {"title": "Persistence forecast (baseline)"})


def climatology_ensemble(
    archive: xr.Dataset,
    init_times: Sequence[TimeLike],
    lead_times: Sequence[LeadLike],
    members: int,
    years: Sequence[int],
    seed: int = 0,
    variables: Sequence[str] | None = None,
) -> xr.Dataset:
    """A climatological ensemble: past states at the valid time's time of year and time of day.

    The rule, for each valid time ``v = init_time + lead_time``:

    - a candidate is a pair (year ``y``, day offset ``d``): the state at ``v`` moved to year ``y``
      (same month, day, hour and minute; 29 February becomes 28 February in a common year) plus
      ``d`` days, so it has the same time of day as ``v``;
    - offsets are taken in the order 0, -1, +1, -2, +2, ...: all ``years`` at offset 0 first, then
      all at -1, and so on, so members come from distinct years whenever
      ``members <= len(years)`` and neighbouring days are used only to fill a larger ensemble;
    - within each offset the years are taken in a random order, drawn from a generator seeded by
      ``(seed, v)``. So the ensemble depends only on the seed and the valid time (two forecasts
      with the same valid time get the same members), and it is reproducible.

    Choose ``years`` apart from the years being verified, or a member can equal the truth.

    Args:
      archive: a canonical archive holding the training ``years`` (numpy- or dask-backed; only
        the chosen times are read, when computed).
      init_times: initial times (UTC).
      lead_times: leads as for `persistence`.
      members: ensemble size, at least 1.
      years: distinct calendar years to draw from, at least one.
      seed: the draw's seed.
      variables: canonical names; every time-dependent variable when None.

    Returns:
      Dataset ``[member, init_time, lead_time, (level,) latitude, longitude]``, float32; the
      attributes ``years``, ``seed`` and ``selection_rule`` record the draw.

    Raises:
      ArchiveError: naming the variable that is absent or static, or the init time, lead and
        candidate time that the archive lacks.
    """
    if members < 1:
        raise ValueError(f"members: must be >= 1, got {members}")
    year_list = [int(y) for y in years]
    if not year_list:
        raise ValueError("years: at least one year is needed")
    if len(set(year_list)) != len(year_list):
        raise ValueError(f"years: must be distinct, got {year_list}")
    names = _variables(archive, variables)
    inits = _init_times(init_times)
    leads = _lead_times(lead_times)
    index = _time_index(archive)
    n_years = len(year_list)
    rings = -(-members // n_years)  # offsets needed: ceil(members / years)
    offsets = [-(k + 1) // 2 if k % 2 else k // 2 for k in range(rings)]  # 0, -1, 1, -2, 2, ...
    idx = np.empty((members, inits.size, leads.size), np.int64)
    for i, init in enumerate(inits):
        for j, lead in enumerate(leads):
            valid = init + lead
            rng = np.random.default_rng([seed, int(valid.astype(np.int64)) % 2**63])
            picks = [
                (year_list[p], offset) for offset in offsets for p in rng.permutation(n_years)
            ][:members]
            wanted = np.array([_same_time_in(valid, y) + d * _DAY for y, d in picks])
            positions = index.get_indexer(wanted)
            for k in np.flatnonzero(positions < 0):
                year, offset = picks[k]
                raise ArchiveError(
                    f"init_time {_fmt(init)}, lead {format_hours(lead)}: member {k} "
                    f"needs {_fmt(wanted[k])} (year {year}, day offset {offset:+d}), "
                    f"which the archive lacks; it spans {_span(index)}"
                )
            idx[:, i, j] = positions
    attrs = {
        "title": "Climatological ensemble (baseline)",
        "years": year_list,
        "seed": seed,
        "selection_rule": (
            "valid time moved to each year, offsets 0, -1, +1, ... days, years shuffled by "
            "(seed, valid time)"
        ),
    }
    return _gather(archive, names, idx, inits, leads, attrs)


def _variables(archive: xr.Dataset, variables: Sequence[str] | None) -> list[str]:
    if "time" not in archive.dims:
        raise ArchiveError("coordinate 'time' is missing: the archive has only static fields")
    if "member" in archive.dims:
        raise ArchiveError(
            "coordinate 'member': the archive is an ensemble; baselines need one analysis"
        )
    if variables is None:
        names = [str(n) for n, da in archive.data_vars.items() if "time" in da.dims]
        if not names:
            raise ArchiveError("the archive has no time-dependent variable to forecast")
        return names
    for name in variables:
        if name not in archive.data_vars:
            raise ArchiveError(
                f"variable {name!r} is missing from the archive; it has "
                f"{sorted(str(n) for n in archive.data_vars)}"
            )
        if "time" not in archive[name].dims:
            raise ArchiveError(
                f"variable {name!r} is static (no 'time' dim); it cannot be forecast"
            )
    return list(variables)


def _init_times(init_times: Sequence[TimeLike]) -> np.ndarray:
    inits = np.array([to_datetime64(t, "init_time") for t in init_times], "datetime64[ns]")
    if inits.size == 0:
        raise ValueError("init_times: at least one initial time is needed")
    if np.unique(inits).size != inits.size:
        raise ValueError(f"init_times: must be distinct, got {format_times(inits)}")
    return inits


def _lead_times(lead_times: Sequence[LeadLike]) -> np.ndarray:
    leads = []
    for lead in lead_times:
        try:
            # np.timedelta64 is a numpy integer: test it before plain numbers (hours).
            if isinstance(lead, np.timedelta64 | pd.Timedelta | str):
                td = pd.Timedelta(lead)
            elif isinstance(lead, numbers.Real) and not isinstance(lead, bool):
                td = pd.Timedelta(hours=float(lead))
            else:
                raise TypeError(f"{type(lead).__name__} is not a duration")
        except (ValueError, TypeError) as error:
            raise ValueError(f"lead {lead!r}: not a duration ({error})") from None
        if pd.isna(td) or td < pd.Timedelta(0):
            raise ValueError(f"lead {lead!r}: must be a non-negative duration")
        leads.append(td.as_unit("ns").to_timedelta64())
    out = np.array(leads, "timedelta64[ns]")
    if out.size == 0:
        raise ValueError("lead_times: at least one lead is needed")
    if np.unique(out).size != out.size:
        raise ValueError("lead_times: must be distinct")
    return out


def _time_index(archive: xr.Dataset) -> pd.DatetimeIndex:
    index = archive.indexes["time"]
    if not isinstance(index, pd.DatetimeIndex):
        raise ArchiveError(f"coordinate 'time' is not datetime64 (it is {index.dtype})")
    if not index.is_unique:
        raise ArchiveError("coordinate 'time' has repeated times")
    return index


def _span(index: pd.DatetimeIndex) -> str:
    return f"{_fmt(index.values[0])} to {_fmt(index.values[-1])}"


def _fmt(time: np.datetime64) -> str:
    return str(np.datetime_as_string(time, unit="m"))


def _same_time_in(valid: np.datetime64, year: int) -> np.datetime64:
    """``valid`` with its year replaced (29 February -> 28 February in a common year)."""
    stamp = pd.Timestamp(valid)
    try:
        moved = stamp.replace(year=year)
    except ValueError:  # 29 February into a common year
        moved = stamp.replace(year=year, day=28)
    return moved.as_unit("ns").to_datetime64()


def _gather(
    archive: xr.Dataset,
    names: list[str],
    idx: np.ndarray,
    inits: np.ndarray,
    leads: np.ndarray,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """The archive's fields at time positions ``idx`` [member, init_time, lead_time].

    One orthogonal selection along ``time`` (lazy for dask) in (init, lead, member) order; the
    selected axis is then split into (init, lead, member) whole chunks of members, so no chunk
    of the result mixes init times or leads.
    """
    m, n_init, n_lead = idx.shape
    flat = np.ascontiguousarray(idx.transpose(1, 2, 0)).reshape(-1)
    data_vars = {}
    for name in names:
        field = archive[name].transpose("time", ...)
        taken = field.isel(time=flat).data
        rest = field.dims[1:]
        if hasattr(taken, "rechunk"):
            taken = taken.rechunk({0: m, **{a: -1 for a in range(1, taken.ndim)}})
        taken = taken.reshape((n_init, n_lead, m, *taken.shape[1:]))
        data_vars[name] = (
            ("init_time", "lead_time", "member", *rest),
            taken.astype(np.float32),
        )
    coords: dict[str, Any] = {
        "member": np.arange(m, dtype=np.int64),
        "init_time": inits.astype("datetime64[ns]"),
        "lead_time": leads.astype("timedelta64[ns]"),
        "latitude": archive["latitude"].values,
        "longitude": archive["longitude"].values,
    }
    used = {d for name in names for d in archive[name].dims}
    if "level" in used:
        coords["level"] = archive["level"].values
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    order = ("member", "init_time", "lead_time", "level", "latitude", "longitude")
    ds = ds.transpose(*order, missing_dims="ignore")
    annotate_forecast(ds)
    return ds


def whole_years(times: np.ndarray) -> list[int]:
    """Calendar years that ``times`` covers completely at its step (no day missing).

    A year with a gap (e.g. the day between two independent runs) cannot serve every valid time
    of a climatological ensemble, so it is left out.
    """
    from weather.data.times import time_step

    t = np.asarray(times).astype("datetime64[ns]")
    per_day = int(np.timedelta64(1, "D") // time_step(t))
    years, counts = np.unique(t.astype("datetime64[Y]").astype(int) + 1970, return_counts=True)
    out = []
    for year, count in zip(years, counts, strict=True):
        days = (np.datetime64(f"{year + 1}-01-01") - np.datetime64(f"{year}-01-01")).astype(int)
        if count == days * per_day:
            out.append(int(year))
    return out


__all__ = ["climatology_ensemble", "persistence", "whole_years"]
