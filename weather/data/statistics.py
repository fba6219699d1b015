"""Normalisation statistics: per-level mean and std of each field, and std of its 12 h differences.

GenCast normalises every input by its mean and standard deviation per pressure level, and its
diffusion target, the residual ``x(t+12h) - x(t)``, by the standard deviation of 12 h differences.
This module computes the three lazily (one dask graph, one ``compute``, each chunk read once) over a
chosen period of a canonical archive, and saves them to / loads them from NetCDF.

Definitions, for a field ``x`` with area weights ``w(lat)`` (the grid's cell areas,
``weather.data.grid.cell_area_weights``, by default; 1 with ``area_weighted=False``), over all
times ``t`` in ``[start, end]``, latitudes and longitudes, and separately for each level:

- ``mean = sum w x / sum w``;
- ``std = sqrt(sum w (x - mean)^2 / sum w)`` (population std, ddof 0);
- ``diff_std``: the same std of ``d = x(t + 12h) - x(t)`` over the pairs with both times in
  ``[start, end]`` and in the archive (centred on the mean of ``d``).

Static fields (no time) get ``mean`` and ``std`` over latitude and longitude only. A field the
catalogue marks ``undefined_somewhere`` (sea-surface temperature, NaN over land) is described
where it is defined: its sums and weights skip its NaNs. Any other NaN is an error.

Area weighting is the default because the training loss is area-weighted (DESIGN: Model): on a
regular latitude-longitude grid unweighted statistics count the few square kilometres near the
poles as often as the tropics, inflating the scales of polar-dominated fields.

Zero std: a constant field would make normalisation divide by zero, so every ``std`` and
``diff_std`` is floored at ``max(STD_REL_FLOOR * |mean|, STD_ABS_FLOOR)``. The relative part is
about ten float32 ulps of the field's magnitude: differences smaller than that are rounding noise
of float32 data, and dividing by them would amplify that noise ~10^6-fold. The absolute part only
matters for fields that are identically zero.

Layout of the returned ``xarray.Dataset`` (float64; ``level`` coordinate in hPa for level fields):

- ``<name>_mean``, ``<name>_std``: ``[level]`` for level fields, scalars for surface and static
  fields, in the field's units (copied into the variable's ``units`` attribute when known);
- ``<name>_diff_std``: the same shape, time-varying fields only;
- attrs: ``statistics_version``, ``period_start``, ``period_end`` (ISO, as requested),
  ``variables`` (comma-separated), ``time_step_seconds`` (the archive's step, 0 when no time-varying
  field was asked for), ``lead_hours`` (12), ``area_weighted`` (0/1), ``n_times``,
  ``n_diff_pairs``, ``std_floor`` (the rule above) and ``source`` (empty when not given).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from weather.data.errors import ArchiveError
from weather.data.grid import cell_area_weights
from weather.data.times import STEP, TimeLike, to_datetime64
from weather.data.times import time_step as archive_step
from weather.data.variables import CATALOGUE
from weather.data.windows import canonical_field, lead_pairs

STATISTICS_VERSION = 1
STD_REL_FLOOR = 1e-6
STD_ABS_FLOOR = 1e-12

# Target bytes of one dask chunk when an in-memory or lazily indexed array must be chunked.
_CHUNK_BYTES = 64 * 2**20

SPATIAL_DIMS = ("latitude", "longitude")


def _lazy(da: xr.DataArray) -> xr.DataArray:
    """``da`` as a dask array (chunked along time), so reductions are built, not run, here."""
    if da.chunks is not None:
        return da
    if "time" not in da.dims:
        return da.chunk()
    per_time = da.dtype.itemsize * int(np.prod([n for d, n in da.sizes.items() if d != "time"]))
    return da.chunk({"time": max(1, _CHUNK_BYTES // max(per_time, 1))})


def _weighted_moments(
    x: xr.DataArray, weights: xr.DataArray, shift: xr.DataArray | float, skipna: bool = False
) -> tuple[xr.DataArray, xr.DataArray]:
    """Lazy ``sum w (x - shift)`` and ``sum w (x - shift)^2`` over every dim except ``level``.

    Shifting by a value near the mean before squaring keeps the one-pass variance
    ``E[(x-k)^2] - E[x-k]^2`` free of cancellation (geopotential is ~1e5 with a std ~1e3), while
    still reading the data only once; a two-pass std would keep every chunk in memory between the
    passes.
    """
    dims = [d for d in x.dims if d != "level"]
    centred = x.astype(np.float64) - shift
    if skipna:  # a field undefined somewhere: its NaNs add nothing (see `_valid_weight`)
        centred = centred.fillna(0.0)
    # skipna=False: xarray would otherwise silently drop NaNs that the archive must not have.
    return (
        (centred * weights).sum(dims, skipna=False),
        (centred * centred * weights).sum(dims, skipna=False),
    )


def _valid_weight(x: xr.DataArray, weights: xr.DataArray) -> xr.DataArray:
    """Lazy ``sum w`` over the points where ``x`` is defined, per level: the count that the
    moments of a field undefined somewhere (sea-surface temperature over land) divide by."""
    dims = [d for d in x.dims if d != "level"]
    return (x.notnull() * weights).sum(dims)


def _floor(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return np.maximum(std, np.maximum(STD_REL_FLOOR * np.abs(mean), STD_ABS_FLOOR))


def _isel_time(da: xr.DataArray, index: np.ndarray) -> xr.DataArray:
    """``da`` at the given (ascending) time indices, as a slice when they are contiguous."""
    if index.size and np.all(np.diff(index) == 1):
        out = da.isel(time=slice(int(index[0]), int(index[-1]) + 1))
    else:
        out = da.isel(time=index)
    # Positional from here: x(t+12h) - x(t) must not align on the (different) time labels.
    return out.drop_vars("time")


def compute_statistics(
    dataset: xr.Dataset,
    variables: Sequence[str],
    *,
    start: TimeLike,
    end: TimeLike,
    levels: Sequence[int] | None = None,
    area_weighted: bool = True,
    source: str | None = None,
) -> xr.Dataset:
    """Mean, std and 12 h difference std of ``variables`` over ``[start, end]``.

    Args:
      dataset: canonical archive (numpy-, dask- or lazily zarr-backed); level fields
        ``[time, level, latitude, longitude]``, surface ``[time, latitude, longitude]``, static
        ``[latitude, longitude]``; latitude in degrees.
      variables: fields to describe (time-varying and static alike).
      start, end: the period, inclusive (anything ``numpy.datetime64`` parses, UTC); static fields
        ignore it.
      levels: pressure levels (hPa) to keep; None keeps all.
      area_weighted: weight by cell area (the default) or count every grid point equally.
      source: where the archive came from, recorded in the attrs.

    Returns:
      the Dataset described in the module docstring.

    Raises:
      ArchiveError: a missing variable or level, wrong dims, a time step that does not divide
        12 h, a period without times or without 12 h pairs, or statistics that are not finite
        (NaN or inf in the data).
    """
    names = tuple(variables)
    if not names:
        raise ArchiveError("variables: need at least one variable to describe")
    if len(set(names)) != len(names):
        raise ArchiveError(f"variables: names repeat in {names}")
    lo, hi = to_datetime64(start, "start"), to_datetime64(end, "end")
    if lo > hi:
        raise ArchiveError(f"period start {lo} is after its end {hi}")
    fields = {name: canonical_field(dataset, name) for name in names}
    if levels is not None:
        fields = {name: _select_levels(name, da, levels) for name, da in fields.items()}

    for coord in SPATIAL_DIMS:
        if coord not in dataset.coords:
            raise ArchiveError(f"coordinate {coord!r} is missing from the archive")
    latitude = np.asarray(dataset["latitude"].values, dtype=np.float64)
    if area_weighted:
        if np.any(np.abs(latitude) > 90):
            raise ArchiveError("coordinate 'latitude' has values outside [-90, 90]")
        # Exact cell areas (the same weights as the loss and the scores), right for equiangular
        # grids with or without pole rows and for Gaussian grids.
        w = cell_area_weights(latitude)
    else:
        w = np.ones_like(latitude)
    if not w.sum() > 0:
        raise ArchiveError("coordinate 'latitude' gives zero total area weight (only poles?)")
    weights = xr.DataArray(w, dims="latitude")
    area = float(w.sum()) * dataset.sizes["longitude"]

    dynamic = [name for name, da in fields.items() if "time" in da.dims]
    step: np.timedelta64 = np.timedelta64(0, "ns")
    period = pairs = np.zeros((0,), dtype=np.int64)
    if dynamic:
        time = dataset["time"].values
        step = archive_step(time)
        time = time.astype("datetime64[ns]")
        period = np.flatnonzero((time >= lo) & (time <= hi))
        if period.size == 0:
            raise ArchiveError(f"coordinate 'time' has no value in the period [{lo}, {hi}]")
        pairs = lead_pairs(time, start=lo, end=hi)
        if len(pairs) == 0:
            raise ArchiveError(
                f"coordinate 'time' has no pair of times 12 h apart in the period [{lo}, {hi}]"
            )

    # Everything below is lazy; the single compute reads each chunk once for all variables.
    lazy: dict[str, xr.DataArray] = {}
    # Fields that the catalogue says are undefined somewhere (NaN over land) are described
    # where they are defined; a NaN anywhere else is an error (below).
    partial = {n for n in names if n in CATALOGUE and CATALOGUE[n].undefined_somewhere}
    for name, da in fields.items():
        skip = name in partial
        whole = _lazy(da)
        x = whole
        if "time" in x.dims:
            # Both selections below index the same dask array, so they share its chunk reads.
            x = _isel_time(whole, period)
            # Any value close to the mean works as a shift; the first time's spatial mean is one
            # chunk away. It enters the graph as a tiny dask array, computed before the sums.
            shift = x.isel(time=0).astype(np.float64).mean(SPATIAL_DIMS, skipna=skip)
            later = _isel_time(whole, pairs[:, 1]).astype(np.float64)
            earlier = _isel_time(whole, pairs[:, 0]).astype(np.float64)
            lazy[f"{name}__d1"], lazy[f"{name}__d2"] = _weighted_moments(
                later - earlier, weights, 0.0, skip
            )
            if skip:
                lazy[f"{name}__wd"] = _valid_weight(later - earlier, weights)
        else:
            shift = x.astype(np.float64).mean(SPATIAL_DIMS, skipna=skip)
        lazy[f"{name}__shift"] = shift
        lazy[f"{name}__s1"], lazy[f"{name}__s2"] = _weighted_moments(x, weights, shift, skip)
        if skip:
            lazy[f"{name}__w"] = _valid_weight(x, weights)
    sums = xr.Dataset(lazy).compute()

    out = xr.Dataset()
    for name, da in fields.items():
        count: xr.DataArray | float = area * (period.size if "time" in da.dims else 1)
        if name in partial:
            count = sums[f"{name}__w"]
        s1, s2 = sums[f"{name}__s1"] / count, sums[f"{name}__s2"] / count
        mean = sums[f"{name}__shift"] + s1
        std = (s2 - s1 * s1).clip(min=0.0) ** 0.5
        stats: dict[str, xr.DataArray] = {"mean": mean, "std": std}
        if "time" in da.dims:
            count = sums[f"{name}__wd"] if name in partial else area * len(pairs)
            d1, d2 = sums[f"{name}__d1"] / count, sums[f"{name}__d2"] / count
            stats["diff_std"] = (d2 - d1 * d1).clip(min=0.0) ** 0.5
        for kind, value in stats.items():
            if not np.isfinite(value.values).all():
                raise ArchiveError(
                    f"variable {name!r} has NaN or infinite values in the period, so its "
                    f"{kind} is not finite"
                )
            if kind != "mean":
                value = value.copy(data=_floor(value.values, mean.values))
            value = value.astype(np.float64).reset_coords(drop=True)
            if "units" in da.attrs:
                value.attrs["units"] = da.attrs["units"]
            out[f"{name}_{kind}"] = value

    out.attrs = {
        "statistics_version": STATISTICS_VERSION,
        "period_start": str(np.datetime_as_string(lo, unit="s")),
        "period_end": str(np.datetime_as_string(hi, unit="s")),
        "variables": ",".join(names),
        "time_step_seconds": int(step // np.timedelta64(1, "s")),
        "lead_hours": int(STEP // np.timedelta64(1, "h")),
        "area_weighted": int(area_weighted),
        "n_times": int(period.size),
        "n_diff_pairs": len(pairs),
        "std_floor": f"max(std, {STD_REL_FLOOR:g} * abs(mean), {STD_ABS_FLOOR:g})",
        "source": source or "",
    }
    return out


def _select_levels(name: str, da: xr.DataArray, levels: Sequence[int]) -> xr.DataArray:
    if "level" not in da.dims:
        return da
    missing = sorted(set(levels) - set(da["level"].values.tolist()))
    if missing:
        raise ArchiveError(f"coordinate 'level' lacks {missing} hPa (asked for {name!r})")
    return da.sel(level=list(levels))


def save_statistics(stats: xr.Dataset, path: str | os.PathLike[str]) -> None:
    """Write statistics made by ``compute_statistics`` to a NetCDF file at ``path``."""
    if stats.attrs.get("statistics_version") != STATISTICS_VERSION:
        raise ArchiveError(
            f"attribute 'statistics_version' is {stats.attrs.get('statistics_version')!r}; "
            f"only statistics of version {STATISTICS_VERSION} can be saved"
        )
    # netCDF reports a missing folder as "Permission denied"; make it instead.
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stats.to_netcdf(path)


def load_statistics(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read statistics written by ``save_statistics`` (fully into memory; the file is closed).

    Raises:
      ArchiveError: the file does not exist, or holds no statistics of this version.
    """
    if not os.path.exists(path):
        raise ArchiveError(f"statistics file {os.fspath(path)!r} does not exist")
    with xr.open_dataset(path) as opened:
        stats = opened.load()
    version = stats.attrs.get("statistics_version")
    if version != STATISTICS_VERSION:
        raise ArchiveError(
            f"statistics file {os.fspath(path)!r} has attribute 'statistics_version' "
            f"{version!r}; this code reads version {STATISTICS_VERSION}"
        )
    return stats
