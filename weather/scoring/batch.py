"""Batch scoring of forecast archives against an analysis archive, lazily with Dask.

`score_archive` builds the scores of a forecast Dataset (the layout of `weather.forecast`, any
number of init times) as a lazy Dask graph from the metrics of `weather.scoring.metrics`; the
same graph runs on the local threaded scheduler or on a ``dask.distributed`` cluster.
`score_to_file` opens two Zarr archives, computes with a progress bar and writes the scores.

Output layout: one data variable per forecast variable (the variable's own name and units
attribute), dims ``(metric, lead_time, [level])`` — plus ``init_time`` when
``over_init_time=False`` — with a string ``metric`` coordinate in the order asked. Keeping
variables as data variables (not a ``variable`` dim) lets level and surface fields keep their own
dims. With ``regions`` (`weather.scoring.regions`) the scores gain a ``region`` dim after
``metric``, ``(metric, region, lead_time, [level])`` as in WeatherBench2's results, labelled by
the regions' names; without, they are the global means and have no ``region`` dim (the layout
of every scores file before regions existed). Metrics (all latitude-area weighted means over
the globe or each region, then over init times):

- ``crps``: fair ensemble CRPS (`metrics.crps`, ``fair=True``), units of the variable; NaN for a
  one-member forecast;
- ``crps_standard``: CRPS of the ensemble as an empirical distribution (MAE for one member);
- ``rmse``: RMSE of the ensemble mean (`metrics.ensemble_mean_rmse`), units of the variable;
- ``spread_skill``: spread/skill ratio with the finite-ensemble correction
  (`metrics.spread_skill_ratio`), dimensionless;
- ``acc``: anomaly correlation of the ensemble mean (`metrics.anomaly_correlation`) against the
  climatological mean of a ``climatology`` archive (`climatology.climatological_mean`, e.g. the
  training years), dimensionless; needs ``climatology``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from weather.data.errors import ArchiveError
from weather.data.location import is_url
from weather.data.reader import open_archive, open_archives
from weather.data.variables import CATALOGUE
from weather.scoring import metrics as m
from weather.scoring.climatology import WINDOW_DAYS, climatological_mean
from weather.scoring.regions import Region

# Each takes (forecast, truth, climatology or None, **options).
METRICS: dict[str, Callable[..., xr.Dataset]] = {
    "crps": lambda f, t, c, **kw: m.crps(f, t, fair=True, **kw),
    "crps_standard": lambda f, t, c, **kw: m.crps(f, t, fair=False, **kw),
    "rmse": lambda f, t, c, **kw: m.ensemble_mean_rmse(f, t, **kw),
    "spread_skill": lambda f, t, c, **kw: m.spread_skill_ratio(f, t, **kw),
    "acc": lambda f, t, c, **kw: m.anomaly_correlation(f, t, c, **kw),
}
NEEDS_CLIMATOLOGY = frozenset({"acc"})

# Chunks of a forecast for scoring: all members together (the kernels need them in one chunk),
# one init time and one lead per chunk, whole fields.
FORECAST_CHUNKS = {"member": -1, "init_time": 1, "lead_time": 1}


def score_archive(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    metrics: Sequence[str] = ("crps", "rmse", "spread_skill"),
    *,
    variables: Sequence[str] | None = None,
    over_init_time: bool = True,
    skipna: bool = False,
    regions: Sequence[Region] | None = None,
    climatology: xr.Dataset | None = None,
    window_days: int = WINDOW_DAYS,
) -> xr.Dataset:
    """Scores of ``forecast`` against ``truth``, lazy when either is Dask-backed.

    Args:
      forecast: ``[member, init_time, lead_time, (level,) latitude, longitude]``. A numpy-backed
        forecast is chunked by `FORECAST_CHUNKS`; a Dask-backed one keeps its chunks except that
        members are merged into one chunk.
      truth: a canonical analysis archive with a ``time`` dim, on the forecast's grid, holding
        every valid time (``init_time + lead_time``); aligned with `metrics.align_truth` and
        restricted to the forecast's levels.
      metrics: names among `METRICS` (see the module docstring).
      variables: forecast variables to score; all when None.
      over_init_time: average over init times (else keep an ``init_time`` dim).
      skipna: leave NaN points out of the averages (see `weather.scoring.metrics`).
      regions: score over each of these regions (a ``region`` dim, in this order); None: the
        globe, without a ``region`` dim.
      climatology: for ``acc``: archives on the forecast's grid whose climatological mean at
        each valid time is the anomalies' reference (computed here, eagerly: one read of the
        archives' times that the valid times' windows reach).
      window_days: the climatology's triangular window (days, odd; WeatherBench2: 61).

    Returns:
      Dataset, one variable per forecast variable, dims ``(metric, [region,] lead_time,
      [level])``; Dask arrays until computed (``.compute()``) when the inputs are Dask-backed.

    Raises:
      ValueError: an unknown metric, ``acc`` without a climatology, a region that holds no grid
        point, or repeated region names.
      ArchiveError: a variable absent from the forecast, the truth or the climatology, levels
        or valid times that the truth lacks, a climatology on another grid.
    """
    unknown = [name for name in metrics if name not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics: unknown {unknown} (choose among {sorted(METRICS)})")
    if NEEDS_CLIMATOLOGY & set(metrics) and climatology is None:
        raise ValueError(
            f"metrics: {sorted(NEEDS_CLIMATOLOGY & set(metrics))} need a climatology (the "
            "training archives, --climatology)"
        )
    if regions is not None:
        regions = list(regions)
        for region in regions:  # fails now, naming the region, rather than inside the graph
            region.indices(forecast["latitude"].values, forecast["longitude"].values)
    names = [str(n) for n in forecast.data_vars] if variables is None else list(variables)
    for name in names:
        if name not in forecast.data_vars:
            raise ArchiveError(f"variable {name!r} is missing from the forecast")
        if name not in truth.data_vars:
            raise ArchiveError(f"variable {name!r} is missing from the truth archive")
    fc = forecast[names]
    # Dataset.chunks would raise when variables are chunked differently along a shared dim.
    if any(da.chunks is not None for da in fc.data_vars.values()):
        fc = fc.chunk({"member": -1})
    else:
        fc = fc.chunk({d: c for d, c in FORECAST_CHUNKS.items() if d in fc.dims})
    target = truth[names]
    if "level" in fc.dims:
        if "level" not in target.dims:
            raise ArchiveError("coordinate 'level' is missing from the truth archive")
        absent = sorted(set(fc["level"].values.tolist()) - set(target["level"].values.tolist()))
        if absent:
            raise ArchiveError(f"coordinate 'level' of the truth archive lacks {absent} hPa")
        target = target.sel(level=fc["level"].values)
    aligned = m.align_truth(fc, target, missing="raise")
    aligned = aligned.drop_vars("valid_time")
    anomalies_of = None
    if NEEDS_CLIMATOLOGY & set(metrics):
        assert climatology is not None
        anomalies_of = _climatology_at(fc, names, climatology, window_days)
    # A field undefined somewhere (sea-surface temperature over land) is averaged where it is
    # defined, whatever `skipna` says for the others.
    groups: dict[bool, list[str]] = {}
    for name in names:
        entry = CATALOGUE.get(name)
        groups.setdefault(skipna or bool(entry and entry.undefined_somewhere), []).append(name)

    def scored(metric: str) -> xr.Dataset:
        parts = [
            METRICS[metric](
                fc[group],
                aligned[group],
                None if anomalies_of is None else anomalies_of[group],
                over_init_time=over_init_time,
                skipna=skip,
                region=regions,
            )
            for skip, group in groups.items()
        ]
        return parts[0] if len(parts) == 1 else xr.merge(parts, join="exact")

    per_metric = [scored(name) for name in metrics]
    scores = xr.concat(
        per_metric, dim="metric", data_vars="all", coords="minimal", compat="override", join="exact"
    )
    # Variable-length strings: Zarr 3 has no stable fixed-length unicode type (it warns).
    scores = scores.assign_coords(metric=np.array(list(metrics), dtype=object))
    first = ("metric", "region", "lead_time") if regions is not None else ("metric", "lead_time")
    for name in names:
        scores[name] = scores[name].transpose(*first, ...)
        units = forecast[name].attrs.get("units")
        if units is not None:
            # Not "units": spread_skill is dimensionless while the other scores are not.
            scores[name].attrs["variable_units"] = units
    scores["metric"].attrs["long_name"] = "score"
    where = "global means" if regions is None else "means over each region"
    scores.attrs["description"] = f"latitude-area weighted {where}" + (
        ", averaged over init times" * over_init_time
    )
    if regions is not None:
        scores["region"].attrs["definitions"] = "; ".join(
            f"{r.name}: {r.describe()}" for r in regions
        )
    if anomalies_of is not None:
        scores.attrs["climatology"] = (
            f"{anomalies_of.attrs['climatology_span']}, window {window_days} days"
        )
    return scores


def _climatology_at(
    forecast: xr.Dataset, names: list[str], climatology: xr.Dataset, window_days: int
) -> xr.Dataset:
    """The climatological mean at each forecast's valid time, laid out like the aligned truth
    ``(init_time, lead_time, [level,] latitude, longitude)``."""
    for coord in ("latitude", "longitude"):
        if coord not in climatology.coords or not np.array_equal(
            np.asarray(climatology[coord].values, np.float64),
            np.asarray(forecast[coord].values, np.float64),
        ):
            raise ArchiveError(
                f"climatology archive: coordinate {coord!r} differs from the forecast's (the "
                "climatology must be on the forecast's grid)"
            )
    valid = (forecast["init_time"] + forecast["lead_time"]).values.reshape(-1)
    levels = forecast["level"].values.tolist() if "level" in forecast.dims else None
    mean = climatological_mean(
        climatology, valid, variables=names, levels=levels, window_days=window_days
    )
    return m.align_truth(forecast, mean, missing="raise").drop_vars("valid_time")


def score_to_file(
    forecast_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    client_address: str | None = None,
    *,
    metrics: Sequence[str] = ("crps", "rmse", "spread_skill"),
    variables: Sequence[str] | None = None,
    over_init_time: bool = True,
    progress: bool = True,
    storage_options: Mapping[str, object] | None = None,
    regions: Sequence[Region] | None = None,
    climatology_paths: Sequence[str | os.PathLike[str]] = (),
) -> xr.Dataset:
    """Score a Zarr forecast archive against a Zarr (or NetCDF) analysis archive into a file.

    Both archives are opened lazily (the forecast chunked by `FORECAST_CHUNKS`, the truth by
    `open_archive`); the scores are computed with a progress bar (dask's ``ProgressBar`` on the
    local scheduler, ``distributed.progress`` on a cluster) and written to ``out_path``: NetCDF for
    a ``.nc`` name, Zarr (format 3) for ``.zarr``.

    Args:
      forecast_path: a Zarr store in the layout of `weather.forecast` (a path or fsspec URL).
      truth_path: a canonical analysis archive (anything `open_archive` reads, URLs too).
      out_path: where to write; must not exist.
      client_address: a ``dask.distributed`` scheduler address (``"tcp://host:8786"``) to
        compute on; the local threaded scheduler when None.
      metrics, variables, over_init_time, regions: as for `score_archive`.
      progress: show a progress bar.
      storage_options: for the fsspec filesystems of URL sources (all archives).
      climatology_paths: archives whose climatology ``acc`` needs (`open_archives`: e.g. the
        training runs, joined along time).

    Returns:
      The computed scores (as written).
    """
    out = Path(out_path)
    if out.suffix not in (".nc", ".zarr"):
        raise ValueError(f"out_path: {out} must end in .nc (NetCDF) or .zarr (Zarr)")
    if out.exists():
        raise FileExistsError(f"out_path: {out} exists; scores never overwrite a file")
    forecast = _open_forecast(forecast_path, storage_options)
    truth = open_archive(truth_path, storage_options=storage_options)
    climatology = None
    if climatology_paths:
        climatology = open_archives(list(climatology_paths), storage_options=storage_options)
    lazy = score_archive(
        forecast,
        truth,
        metrics,
        variables=variables,
        over_init_time=over_init_time,
        regions=regions,
        climatology=climatology,
    )
    scores = _compute(lazy, client_address, progress)
    if out.suffix == ".nc":
        scores.to_netcdf(out)
    else:
        scores.to_zarr(out, mode="w-", zarr_format=3, consolidated=False)
    return scores


def _open_forecast(source: Any, storage_options: Mapping[str, object] | None) -> xr.Dataset:
    kw: dict[str, Any] = {"chunks": FORECAST_CHUNKS, "decode_timedelta": True}
    if is_url(source):
        options = dict(storage_options or {}) or None
        try:
            try:
                return xr.open_zarr(str(source), consolidated=True, storage_options=options, **kw)
            except (KeyError, ValueError):
                return xr.open_zarr(str(source), consolidated=False, storage_options=options, **kw)
        except Exception as error:
            raise ArchiveError(
                f"forecast archive {source!r} cannot be read as Zarr: {type(error).__name__}: "
                f"{error}"
            ) from None
    path = Path(source)
    if not path.exists():
        raise ArchiveError(f"forecast archive {str(path)!r} does not exist")
    # Consolidated metadata first, then without: consolidated=None warns on stores without it.
    try:
        return xr.open_zarr(path, consolidated=True, **kw)
    except (KeyError, ValueError):
        try:
            return xr.open_zarr(path, consolidated=False, **kw)
        except (OSError, ValueError) as error:
            raise ArchiveError(
                f"forecast archive {str(path)!r} cannot be read as Zarr: {error}"
            ) from error


def _compute(lazy: xr.Dataset, client_address: str | None, progress: bool) -> xr.Dataset:
    if client_address is None:
        from dask.diagnostics import ProgressBar

        if not progress:
            return lazy.compute()
        with ProgressBar():
            return lazy.compute()
    from distributed import Client
    from distributed import progress as show_progress

    with Client(client_address) as client:
        persisted = client.persist(lazy)
        if progress:
            show_progress(persisted)
        return persisted.compute()


__all__ = ["FORECAST_CHUNKS", "METRICS", "NEEDS_CLIMATOLOGY", "score_archive", "score_to_file"]
