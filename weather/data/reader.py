"""Open ERA5-style archives (WeatherBench2, ARCO-ERA5, CDS/cfgrib) in one canonical layout.

Canonical layout (what every other module may assume):

- level fields: dims ``[time, level, latitude, longitude]``; surface fields
  ``[time, latitude, longitude]``; static fields ``[latitude, longitude]``; time-dependent fields
  gain a leading ``member`` dim when the archive is an ensemble;
- ``latitude`` ascending, float64 degrees in [-90, 90]; ``longitude`` ascending, float64 degrees
  in [0, 360); ``level`` ascending, hPa (int64 when all integral, else float64); ``time``
  datetime64[ns] (not checked for order or regularity here: see `select_window`);
- variables named as in the catalogue (`weather.data.variables`), float32, in catalogue units,
  with CF attributes; nothing else (archive variables outside the catalogue are left out).

Reading is lazy: data stay dask arrays until a caller computes them, so an archive larger than
memory opens. Every problem raises `ArchiveError` naming the variable or coordinate at fault.

Sources are local paths or fsspec URLs (``gs://``, ``s3://``, ``https://``, ``memory://``...):
a remote Zarr store is read chunk by chunk, only the chunks a computation touches (opening
reads the consolidated metadata and the coordinates); ``storage_options`` go to the filesystem
(e.g. ``{"token": "anon"}`` for a public Google Cloud bucket, ``{"anon": True}`` for S3). The
cloud filesystems are the ``cloud`` extra (``pip install -e ".[cloud]"``); ``https://`` and
``memory://`` need only fsspec with aiohttp.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import dask
import dask.utils
import numpy as np
import xarray as xr

from weather.data import times as times_lib
from weather.data import variables as catalogue
from weather.data.constants import GRAVITY
from weather.data.errors import ArchiveError
from weather.data.location import is_url
from weather.data.times import TimeLike, format_hours, format_times, to_datetime64

Source = str | os.PathLike[str] | xr.Dataset
StorageOptions = Mapping[str, object] | None
Chunks = Literal["auto"] | dict[str, int | Literal["auto"]] | None

CANONICAL_DIMS: tuple[str, ...] = ("member", "time", "level", "latitude", "longitude")


# Other names that real archives give the canonical dims (cfgrib, CDS netCDF, CMIP, short names).
_DIM_ALIASES: dict[str, tuple[str, ...]] = {
    "latitude": ("lat",),
    "longitude": ("lon",),
    "level": ("isobaricInhPa", "pressure_level", "plev"),
    "member": ("number", "realization"),
}

_COORD_ATTRS: dict[str, dict[str, str]] = {
    "member": {"standard_name": "realization", "long_name": "ensemble member"},
    "time": {"standard_name": "time", "long_name": "time"},
    "level": {"units": "hPa", "long_name": "pressure level", "standard_name": "air_pressure"},
    "latitude": {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"},
    "longitude": {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
}

# Unit spellings we can convert, keyed by their normalised form (lower case, no spaces, `**`,
# `^` or `/` folded into exponents): (canonical units, scale, offset), meaning
# canonical = x * scale + offset.
_UNITS: dict[str, tuple[str, float, float]] = {
    **dict.fromkeys(("k", "kelvin", "degk"), ("K", 1.0, 0.0)),
    **dict.fromkeys(("degc", "deg_c", "c", "celsius", "degrees_celsius"), ("K", 1.0, 273.15)),
    "pa": ("Pa", 1.0, 0.0),
    **dict.fromkeys(("hpa", "mbar", "mb", "millibar", "millibars"), ("Pa", 100.0, 0.0)),
    "kpa": ("Pa", 1000.0, 0.0),
    "m2s-2": ("m2 s-2", 1.0, 0.0),
    # Geopotential height: ERA5 products and many models store z / g in metres.
    **dict.fromkeys(("m", "gpm"), ("m2 s-2", GRAVITY, 0.0)),
    "ms-1": ("m s-1", 1.0, 0.0),
    "kmh-1": ("m s-1", 1.0 / 3.6, 0.0),
    "kgkg-1": ("kg kg-1", 1.0, 0.0),
    "gkg-1": ("kg kg-1", 1e-3, 0.0),
    "pas-1": ("Pa s-1", 1.0, 0.0),
    "hpas-1": ("Pa s-1", 100.0, 0.0),
    # "(0 - 1)" is cfgrib's spelling for fractions such as the land-sea mask.
    **dict.fromkeys(("1", "", "(0-1)", "dimensionless", "fraction"), ("1", 1.0, 0.0)),
    "%": ("1", 0.01, 0.0),
    # Precipitation (m of water) given in mm; accumulated energy (solar radiation).
    "mm": ("m", 1e-3, 0.0),
    "jm-2": ("J m-2", 1.0, 0.0),
}


def open_archive(
    source: Source,
    *,
    variables: Sequence[str] | None = None,
    levels: Sequence[float] | None = None,
    chunks: Chunks = "auto",
    storage_options: StorageOptions = None,
) -> xr.Dataset:
    """Opens a Zarr (v2 or v3) or NetCDF archive lazily, in the canonical layout.

    Args:
      source: a path (a ``.zarr`` directory or a NetCDF file), an fsspec URL of one (see the
        module docstring), or an already open `xr.Dataset`.
      variables: canonical or short names to keep (e.g. ``["temperature", "t2m"]``); all catalogue
        variables in the archive when None.
      levels: pressure levels (hPa) to keep; all when None.
      chunks: dask chunks per dim, as for `xr.open_zarr`; ``"auto"`` is dask's automatic chunking
        unless it would split a stored chunk (then the stored chunks); ignored for a Dataset.
      storage_options: passed to the fsspec filesystem of a URL (credentials, ``anon``...).

    Returns:
      The canonical Dataset (see the module docstring), dask-backed when read from a path.

    Raises:
      ArchiveError: no readable archive at `source` (a missing path or store, an unreachable
        URL, a filesystem whose package is not installed), a requested variable or level that
        the archive lacks (listing what it has), or anything that `canonicalize` rejects.
    """
    if isinstance(source, xr.Dataset):
        ds = source
    elif is_url(source):
        ds = _open_url(str(source), chunks, storage_options)
    else:
        ds = _open_path(Path(str(source).removeprefix("file://")), chunks)
    ds = canonicalize(ds, variables=variables)
    if levels is not None:
        ds = _select_levels(ds, levels)
    return ds


def open_archives(
    sources: Sequence[Source],
    *,
    variables: Sequence[str] | None = None,
    levels: Sequence[float] | None = None,
    chunks: Chunks = "auto",
    storage_options: StorageOptions = None,
) -> xr.Dataset:
    """Several archives of one grid (e.g. independent runs) as one, concatenated along time.

    Time-varying fields are joined in time order; static fields and the grid must agree. The
    result's time axis may have gaps between the parts (one run ends, the next starts later),
    which windows and scores treat as missing times, so nothing straddles two parts.

    Args:
      sources: paths or open Datasets; one source is returned as `open_archive` returns it.
      variables, levels, chunks, storage_options: as for `open_archive`.

    Raises:
      ArchiveError: an empty list; parts with different grids, levels, variables or static
        fields; or time ranges that overlap (naming both sources).
    """
    if not sources:
        raise ArchiveError("archives: need at least one source")
    parts = [
        open_archive(
            s, variables=variables, levels=levels, chunks=chunks, storage_options=storage_options
        )
        for s in sources
    ]
    names = [
        str(s) if not isinstance(s, xr.Dataset) else f"dataset #{i}" for i, s in enumerate(sources)
    ]
    first = parts[0]
    for name, part in zip(names[1:], parts[1:], strict=True):
        for coord in ("latitude", "longitude", "level"):
            if (coord in first.coords) != (coord in part.coords) or (
                coord in first.coords
                and not np.array_equal(first[coord].values, part[coord].values)
            ):
                raise ArchiveError(f"coordinate {coord!r} of {name} differs from {names[0]}'s")
        if set(first.data_vars) != set(part.data_vars):
            raise ArchiveError(
                f"variables of {name} ({sorted(map(str, part.data_vars))}) differ from "
                f"{names[0]}'s ({sorted(map(str, first.data_vars))})"
            )
    order = np.argsort([p["time"].values[0] for p in parts], kind="stable")
    parts = [parts[i] for i in order]
    names = [names[i] for i in order]
    for i in range(len(parts) - 1):
        last, first_next = parts[i]["time"].values[-1], parts[i + 1]["time"].values[0]
        if last >= first_next:
            raise ArchiveError(
                f"coordinate 'time' of {names[i]} (to {last}) overlaps {names[i + 1]} "
                f"(from {first_next})"
            )
    if len(parts) == 1:
        return parts[0]
    static = [n for n, v in first.data_vars.items() if "time" not in v.dims]
    for name, part in zip(names[1:], parts[1:], strict=True):
        for var in static:
            if not np.allclose(first[var].values, part[var].values, rtol=1e-6, atol=1e-6):
                raise ArchiveError(f"static variable {var!r} of {name} differs from {names[0]}'s")
    dynamic = [p.drop_vars(static) for p in parts]
    joined = xr.concat(
        dynamic,
        dim="time",
        data_vars="all",
        coords="minimal",
        join="exact",
        compat="equals",
        combine_attrs="drop_conflicts",
    )
    return joined.assign({var: first[var] for var in static})


def load_in_place(ds: xr.Dataset) -> xr.Dataset:
    """The dataset with every variable read into one preallocated numpy array.

    ``Dataset.load`` on a Dask graph that concatenates parts holds the chunks and the joined
    array at once (twice the data at the peak); here each chunk is written straight into its
    place (`dask.array.store`), so the peak stays near the data's own size.
    """
    import dask.array as da

    out = {}
    for name, var in ds.variables.items():
        if isinstance(var.data, da.Array):
            target = np.empty(var.shape, dtype=var.dtype)
            da.store(var.data, target, lock=False)
            out[name] = var.copy(deep=False, data=target)
        else:
            out[name] = var.load()
    return xr.Dataset(
        {n: out[n] for n in ds.data_vars},
        coords={n: out[n] for n in ds.coords},
        attrs=ds.attrs,
    )


def canonicalize(ds: xr.Dataset, *, variables: Sequence[str] | None = None) -> xr.Dataset:
    """Maps an archive's names, dims, coordinates and units onto the canonical layout.

    Never computes data: works on coordinates and attributes only, so dask arrays stay lazy.

    Args:
      ds: the archive as opened by xarray, in any supported layout.
      variables: canonical or short names to keep; all catalogue variables when None. Chosen before
        any check, so a broken variable that is not asked for does not stop the others.

    Returns:
      The canonical Dataset (see the module docstring).

    Raises:
      ArchiveError: naming the variable or coordinate and the problem.
    """
    raw_names = sorted(str(n) for n in ds.data_vars)
    ds = ds.copy()  # shallow: the attributes and encodings set below must not reach the caller's
    ds = _rename_dims(ds)
    ds = _to_valid_time(ds)
    ds, summed_at = _precipitation_over_12_hours(ds)
    ds = _rename_variables(ds)
    names = _choose_variables(ds, variables, raw_names)
    ds = ds[names]
    if summed_at is not None and "total_precipitation_12hr" in names:
        ds = ds.isel(time=summed_at)
    if "member" in ds.dims and "member" not in ds.coords:
        ds = ds.assign_coords(member=np.arange(ds.sizes["member"]))
    for dim in ("latitude", "longitude", "level", "time"):
        if dim in ds.dims and dim not in ds.coords:
            raise ArchiveError(
                f"coordinate {dim!r} is missing: the archive has a {dim!r} dim "
                "without coordinate values"
            )
    ds = _canonical_coords(ds)
    ds = ds.assign({name: _canonical_variable(ds, name) for name in names})
    # Only the dim coordinates that some variable uses survive: leftovers (cfgrib's `step`,
    # `surface`, `number`; CDS's `expver`; the time of invariants) would otherwise travel into
    # every derived product.
    used = {d for da in ds.data_vars.values() for d in da.dims}
    ds = ds.drop_vars([c for c in ds.coords if c not in used or ds[c].dims != (c,)])
    ds = ds.transpose(*CANONICAL_DIMS, missing_dims="ignore")
    for name in ds.variables:
        ds[name].encoding = {}  # stale on-disk chunks and dtypes would break a later to_zarr
    return ds


def time_step(ds: xr.Dataset) -> np.timedelta64:
    """The archive's time step, after checking that the task can use its time axis.

    Args:
      ds: a canonical Dataset with a ``time`` coordinate of at least two times.

    Returns:
      The smallest difference between consecutive times (timedelta64[ns]); it divides 12 h.
      Larger differences (gaps) are allowed here when they are multiples of it.

    Raises:
      ArchiveError: no time coordinate, or a time axis `weather.data.times.time_step` rejects.
    """
    if "time" not in ds.coords or ds["time"].ndim != 1:
        raise ArchiveError("coordinate 'time' is missing: the archive has only static fields")
    return times_lib.time_step(ds["time"].values)


def select_window(
    ds: xr.Dataset,
    start: TimeLike,
    end: TimeLike,
    *,
    step: np.timedelta64 | None = None,
    check_finite: bool = True,
) -> xr.Dataset:
    """Selects the times ``start, start + step, ..., end`` (inclusive), after checking them.

    Args:
      ds: a canonical Dataset (see `canonicalize`).
      start, end: first and last time of the window: ISO 8601 strings, datetimes or datetime64,
        UTC (time-zone-aware values are converted to UTC).
      step: spacing of the window; the archive's own step (`time_step`) when None. It must be a
        multiple of the archive's step (e.g. 12 h windows from an hourly archive).
      check_finite: also compute, on the window only, whether any value is NaN or infinite.

    Returns:
      ``ds`` restricted to the window (still lazy when ``check_finite`` is False); static fields
      are kept whole.

    Raises:
      ArchiveError: a time axis that `time_step` rejects, a window that is empty or not aligned with
        the step, times of the window that the archive lacks (naming them), or (with
        ``check_finite``) a variable with NaN or inf in the window (naming it and its first bad
        time).
    """
    archive_step = time_step(ds)
    step = archive_step if step is None else np.timedelta64(step, "ns")
    if step <= np.timedelta64(0) or step % archive_step != np.timedelta64(0):
        raise ArchiveError(
            f"window step {format_hours(step)} is not a positive multiple of the step of "
            f"coordinate 'time', {format_hours(archive_step)}"
        )
    first, last = to_datetime64(start, "window start"), to_datetime64(end, "window end")
    if last < first:
        raise ArchiveError(
            f"window end {format_times([last])} is before its start {format_times([first])}"
        )
    if (last - first) % step != np.timedelta64(0):
        raise ArchiveError(
            f"window {format_times([first])} to {format_times([last])} is not a whole number of "
            f"{format_hours(step)} steps"
        )
    wanted = np.arange(first, last + step, step)
    missing = np.setdiff1d(wanted, ds["time"].values)
    if missing.size:
        raise ArchiveError(
            f"coordinate 'time' lacks {missing.size} time(s) of the window "
            f"{format_times([first])} to {format_times([last])}: {format_times(missing)}; "
            f"the archive spans {format_times(ds['time'].values[:1])} to "
            f"{format_times(ds['time'].values[-1:])}"
        )
    window = ds.sel(time=wanted)
    if check_finite:
        # Loaded once and checked in memory: checking lazily and then reading the values would
        # read every chunk twice (twice the bytes from a remote archive).
        window = window.load()
        _check_finite(window)
    return window


# Files read through cfgrib (CDS downloads).
GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb2")


def _open_path(path: Path, chunks: Chunks) -> xr.Dataset:
    """Opens a Zarr store or NetCDF file lazily, without loading any data."""
    if not path.exists():
        raise ArchiveError(f"archive {str(path)!r} does not exist")
    if path.is_dir() and not any((path / f).exists() for f in ("zarr.json", ".zgroup")):
        raise ArchiveError(f"archive {str(path)!r} is a directory but not a Zarr store")

    def open_with(chunks: Chunks) -> xr.Dataset:
        # cfgrib's `step` (units "hours") is a timedelta only when asked: xarray no longer guesses.
        if path.suffix.lower() in GRIB_SUFFIXES:
            # No index file: cfgrib would write one beside the archive, in the user's data
            # directory (or fail on a read-only one); indexing a file of a few fields is quick.
            return xr.open_dataset(
                path,
                engine="cfgrib",
                chunks=chunks,
                decode_timedelta=True,
                backend_kwargs={"indexpath": ""},
            )
        if not path.is_dir():
            return xr.open_dataset(path, chunks=chunks, decode_timedelta=True)
        # Consolidated metadata first, falling back explicitly: consolidated=None would warn on
        # every store written without it.
        try:
            return xr.open_zarr(path, chunks=chunks, consolidated=True, decode_timedelta=True)
        except (KeyError, ValueError):
            return xr.open_zarr(path, chunks=chunks, consolidated=False, decode_timedelta=True)

    try:
        if chunks == "auto":
            chunks = _auto_chunks(open_with(None))
        return open_with(chunks)
    except (OSError, ValueError) as error:
        raise ArchiveError(
            f"archive {str(path)!r} cannot be read as Zarr, NetCDF or GRIB: {error}"
        ) from error


def _open_url(url: str, chunks: Chunks, storage_options: StorageOptions) -> xr.Dataset:
    """Opens a remote Zarr store (or NetCDF file) lazily through fsspec."""
    scheme = url.split("://", 1)[0].lower()
    options = dict(storage_options or {})
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as error:
        raise ArchiveError(
            f"archive {url!r}: reading {scheme}:// needs a filesystem package that is not "
            f'installed ({error}); pip install -e ".[cloud]"'
        ) from None
    except ValueError as error:
        raise ArchiveError(f"archive {url!r}: {error}") from None
    root = path.rstrip("/")

    def present(name: str) -> bool:
        # Reading the small metadata file, not `exists`: fsspec's HTTP `exists` and `info`
        # report a refused connection as a missing file.
        try:
            fs.cat_file(f"{root}/{name}" if name else root, start=0, end=1)
            return True
        except FileNotFoundError:
            return False

    try:
        found = {name: present(name) for name in ("zarr.json", ".zgroup", ".zmetadata")}
        is_file = not any(found.values()) and present("")
    except Exception as error:  # aiohttp, botocore and gcsfs raise their own types
        raise ArchiveError(f"archive {url!r}: cannot reach it ({_reason(error)})") from None
    if not any(found.values()) and not is_file:
        raise ArchiveError(f"archive {url!r}: no Zarr store or file there")

    def open_with(chunks: Chunks) -> xr.Dataset:
        if is_file:
            handle = fs.open(root, "rb")
            return xr.open_dataset(handle, chunks=chunks, decode_timedelta=True, engine="h5netcdf")
        # Without consolidated metadata a remote group would have to be listed, which plain
        # HTTP cannot do; WeatherBench2's and our stores are consolidated.
        consolidated = (found["zarr.json"] and _has_consolidated(fs, root)) or found[".zmetadata"]
        return xr.open_zarr(
            url,
            chunks=chunks,
            consolidated=bool(consolidated),
            decode_timedelta=True,
            storage_options=options or None,
        )

    try:
        # Remote bytes cost time: dask reads the store's own chunks, so that a computation
        # touching one time reads that time's chunks only ("auto" would group many).
        return open_with({} if chunks == "auto" else chunks)
    except Exception as error:
        raise ArchiveError(
            f"archive {url!r} cannot be read as Zarr or NetCDF: {_reason(error)}"
        ) from None


def _has_consolidated(fs: object, root: str) -> bool:
    """Whether a Zarr v3 store's root metadata holds consolidated metadata."""
    import json

    try:
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))  # type: ignore[attr-defined]
    except Exception:
        return False
    return isinstance(meta, dict) and meta.get("consolidated_metadata") is not None


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _auto_chunks(ds: xr.Dataset) -> Chunks:
    """Dask's automatic chunks, unless a stored chunk is larger than dask's target chunk size
    (ARCO-ERA5 stores 150 MB chunks): "auto" would split it, reading it once per piece, so the
    stored chunks themselves are used instead."""
    limit = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    for var in ds.variables.values():
        stored = var.encoding.get("preferred_chunks") or {}
        if stored and var.dtype.itemsize * int(np.prod(list(stored.values()))) > limit:
            return {}
    return "auto"


def _rename_dims(ds: xr.Dataset) -> xr.Dataset:
    """Renames aliased dims and coordinates (``lat``, ``isobaricInhPa``, ``number``...)."""
    renames: dict[Hashable, str] = {}
    for canonical, aliases in _DIM_ALIASES.items():
        found: list[Hashable] = [n for n in (canonical, *aliases) if n in ds.dims or n in ds.coords]
        if canonical == "member":
            # An ensemble dim is recognised by its CF standard name whatever it is called.
            found += [
                n
                for n in ds.dims
                if n not in found
                and n in ds.coords
                and ds[n].attrs.get("standard_name") == "realization"
            ]
        if len(found) > 1:
            raise ArchiveError(f"coordinate {canonical!r} is ambiguous: the archive has {found}")
        if found and found[0] != canonical:
            renames[found[0]] = canonical
    return ds.rename(renames)


def _to_valid_time(ds: xr.Dataset) -> xr.Dataset:
    """Makes ``time`` the valid time, whether the archive stores it as ``time``, ``valid_time``
    (CDS netCDF), or initial ``time`` plus forecast ``step`` (cfgrib)."""
    if "valid_time" in ds.dims:
        leftovers = [n for n in ("time", "step") if n in ds.coords and n not in ds.dims]
        return ds.drop_vars(leftovers).rename({"valid_time": "time"})
    if "step" in ds.dims:
        if "time" not in ds.coords:
            raise ArchiveError(
                "coordinate 'time' is missing: the archive has a 'step' dim without initial times"
            )
        if not np.issubdtype(ds["step"].dtype, np.timedelta64):
            raise ArchiveError(f"coordinate 'step' has dtype {ds['step'].dtype}, not a timedelta")
        ds = ds.drop_vars(["valid_time"], errors="ignore")
        stacked = ds.stack(_valid=[d for d in ("time", "step") if d in ds.dims])
        valid = (stacked["time"] + stacked["step"]).values
        stacked = stacked.drop_vars(["_valid", "time", "step"]).rename({"_valid": "time"})
        return stacked.assign_coords(time=valid)
    if "valid_time" in ds.coords:
        if ds["valid_time"].ndim == 0:
            return ds.drop_vars(["time"], errors="ignore").rename({"valid_time": "time"})
        if ds["valid_time"].dims == ("time",):
            return (
                ds.swap_dims({"time": "valid_time"})
                .drop_vars("time")
                .rename({"valid_time": "time"})
            )
        raise ArchiveError(
            f"coordinate 'valid_time' has dims {ds['valid_time'].dims}; expected "
            "('time',) or ('valid_time',)"
        )
    return ds


# ERA5's hourly precipitation (the CDS's `tp`): metres of water accumulated over the hour that
# ends at each time; the catalogue's `total_precipitation_12hr` is the sum of 12 of them.
_HOURLY_PRECIPITATION = "tp"
_HOUR = np.timedelta64(1, "h")
_HOURS_PER_STEP = 12


def _precipitation_over_12_hours(ds: xr.Dataset) -> tuple[xr.Dataset, np.ndarray | None]:
    """Replaces ERA5's hourly ``tp`` with ``total_precipitation_12hr``, lazily.

    The value at time t is the sum of the hourly values at t - 11 h ... t. Where one of those
    hours is not in the archive (its first 11 hours, and the 11 after a gap) there is no sum:
    the times that have one are returned, so that a caller reading the variable keeps only
    them (a NaN target would reach training), decided from the time axis alone.

    Returns:
      The dataset, and the indices along ``time`` that have a complete sum (None without `tp`).

    Raises:
      ArchiveError: `tp` without a time axis, with times that are not hourly or fewer than 12
        in a row, or beside a `total_precipitation_12hr` of the archive's own.
    """
    if _HOURLY_PRECIPITATION not in ds.data_vars:
        return ds, None
    target = "total_precipitation_12hr"
    if target in ds.data_vars:
        raise ArchiveError(
            f"variable(s) [{target!r}] appear twice: as the archive's own and as ERA5's hourly "
            f"{_HOURLY_PRECIPITATION!r}, which would be summed into it"
        )
    hourly = ds[_HOURLY_PRECIPITATION]
    if "time" not in hourly.dims or "time" not in ds.coords:
        raise ArchiveError(
            f"variable {_HOURLY_PRECIPITATION!r} has no time axis: ERA5's hourly precipitation "
            f"is summed over 12 h into {target!r}, which needs its hours"
        )
    times = np.asarray(ds["time"].values).astype("datetime64[ns]")
    present, counts = np.unique(times, return_counts=True)
    if np.any(counts > 1):
        raise ArchiveError(
            f"coordinate 'time' has duplicated values: {format_times(present[counts > 1])}, so "
            f"the hourly precipitation {_HOURLY_PRECIPITATION!r} cannot be summed over 12 h"
        )
    steps = np.diff(present)
    if steps.size and steps.min() != _HOUR:
        raise ArchiveError(
            f"variable {_HOURLY_PRECIPITATION!r}: ERA5's precipitation is accumulated over the "
            f"hour ending at each time, so its 12 h total {target!r} needs hourly times; this "
            f"archive's are {format_hours(steps.min())} apart"
        )
    earliest = times - (_HOURS_PER_STEP - 1) * _HOUR
    # Hours present up to and including each time, minus those before its first summed hour.
    complete = (
        np.searchsorted(present, times, side="right")
        - np.searchsorted(present, earliest, side="left")
        == _HOURS_PER_STEP
    )
    if not complete.any():
        raise ArchiveError(
            f"variable {_HOURLY_PRECIPITATION!r}: the archive holds no {_HOURS_PER_STEP} "
            f"consecutive hours to sum into {target!r}"
        )
    every_hour = np.arange(present[0], present[-1] + _HOUR, _HOUR)
    total = (
        hourly.reindex(time=every_hour)
        .rolling(time=_HOURS_PER_STEP, min_periods=_HOURS_PER_STEP)
        .sum()
        .sel(time=times)
        .assign_attrs(hourly.attrs)
    )
    ds = ds.drop_vars(_HOURLY_PRECIPITATION).assign({target: total})
    return ds, np.flatnonzero(complete)


def _rename_variables(ds: xr.Dataset) -> xr.Dataset:
    """Renames short names (``t2m``...) to catalogue names; ``z`` is the invariant surface
    geopotential when it has no pressure level, as cfgrib gives both the same short name."""
    renames: dict[Hashable, str] = {}
    for name in ds.data_vars:
        if name == "z":
            on_level = "level" in ds["z"].dims or "level" in ds["z"].coords
            renames[name] = "geopotential" if on_level else "geopotential_at_surface"
        elif name in catalogue.SHORT_NAMES:
            renames[name] = catalogue.SHORT_NAMES[str(name)]
    targets = [*renames.values(), *(n for n in ds.data_vars if n not in renames)]
    doubled = sorted({str(n) for n in targets if targets.count(n) > 1})
    if doubled:
        raise ArchiveError(
            f"variable(s) {doubled} appear twice, under a canonical and a short name"
        )
    return ds.rename(renames)


def _choose_variables(
    ds: xr.Dataset, requested: Sequence[str] | None, raw_names: list[str]
) -> list[str]:
    """Canonical names of the variables to keep, in catalogue order unless requested otherwise."""
    present = [v for v in catalogue.CATALOGUE if v in ds.data_vars]
    if requested is None:
        if not present:
            raise ArchiveError(
                f"the archive has no catalogue variable: it has {raw_names}; the "
                f"catalogue has {sorted(catalogue.CATALOGUE)}"
            )
        return present
    names = []
    for name in requested:
        try:
            canonical = catalogue.get(name).name
        except KeyError as error:
            raise ArchiveError(
                f"variable {name!r} is not in the catalogue {sorted(catalogue.CATALOGUE)}"
            ) from error
        if canonical not in ds.data_vars:
            raise ArchiveError(f"variable {name!r} is missing: the archive has {raw_names}")
        names.append(canonical)
    return list(dict.fromkeys(names))


def _canonical_coords(ds: xr.Dataset) -> xr.Dataset:
    """Checks, converts and sorts the coordinates, reordering the data lazily to match."""
    if "latitude" in ds.dims:
        lat = _coord_values(ds, "latitude")
        if np.any(np.abs(lat) > 90):
            raise ArchiveError(
                f"coordinate 'latitude' has values outside [-90, 90]: {lat.min()} to {lat.max()}"
            )
        ds = _sorted_by(ds.assign_coords(latitude=lat), "latitude")
    if "longitude" in ds.dims:
        lon = np.mod(_coord_values(ds, "longitude"), 360.0)
        lon[lon >= 360.0] = 0.0  # np.mod can round a tiny negative longitude up to 360
        ds = _sorted_by(ds.assign_coords(longitude=lon), "longitude")
    if "level" in ds.coords:
        level = _coord_values(ds, "level")
        units = str(ds["level"].attrs.get("units", "hPa")).strip().lower()
        if units == "pa":
            level = level / 100.0
        elif units not in ("hpa", "mbar", "millibars", "millibar", "mb"):
            raise ArchiveError(f"coordinate 'level' has units {units!r}; expected hPa or Pa")
        if np.all(level == np.round(level)):
            level = level.astype(np.int64)
        ds = ds.assign_coords(level=(ds["level"].dims, level))
        if "level" in ds.dims:
            ds = _sorted_by(ds, "level")
    if "time" in ds.coords:
        if not np.issubdtype(ds["time"].dtype, np.datetime64):
            raise ArchiveError(
                f"coordinate 'time' has dtype {ds['time'].dtype}, not datetime64 "
                "(a calendar other than the standard one is not supported)"
            )
        ds = ds.assign_coords(time=(ds["time"].dims, ds["time"].values.astype("datetime64[ns]")))
    for name, attrs in _COORD_ATTRS.items():
        if name in ds.coords:
            ds[name].attrs = dict(attrs)
    return ds


def _coord_values(ds: xr.Dataset, name: str) -> np.ndarray:
    """A 1-D numeric coordinate as finite float64 values."""
    coord = ds[name]
    if coord.ndim > 1 or not np.issubdtype(coord.dtype, np.number):
        raise ArchiveError(
            f"coordinate {name!r} must be 1-D and numeric; it has dims "
            f"{coord.dims} and dtype {coord.dtype}"
        )
    values = np.asarray(coord.values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ArchiveError(f"coordinate {name!r} has NaN or infinite values")
    return values


def _sorted_by(ds: xr.Dataset, dim: str) -> xr.Dataset:
    """Sorts ``ds`` along ``dim`` by its coordinate, preferring slices and rolls to fancy indexing
    so that dask neither copies nor splits chunks for the common cases (reversed, rotated)."""
    values = ds[dim].values
    unique, counts = np.unique(values, return_counts=True)
    if np.any(counts > 1):
        raise ArchiveError(f"coordinate {dim!r} has duplicated values: {unique[counts > 1]}")
    order = np.argsort(values, kind="stable")
    n = order.size
    if np.array_equal(order, np.arange(n)):
        return ds
    if np.array_equal(order, np.arange(n)[::-1]):
        return ds.isel({dim: slice(None, None, -1)})
    shift = int(order[0])
    if np.array_equal(order, (np.arange(n) + shift) % n):
        return ds.roll({dim: -shift}, roll_coords=True)
    return ds.isel({dim: order})


def _canonical_variable(ds: xr.Dataset, name: str) -> xr.DataArray:
    """One variable with canonical dims, dtype (float32), units and attributes."""
    var = catalogue.CATALOGUE[name]
    da = ds[name]
    unknown = [str(d) for d in da.dims if d not in CANONICAL_DIMS]
    if unknown:
        raise ArchiveError(
            f"variable {name!r} has unknown dim(s) {unknown}; expected dims among "
            f"{list(CANONICAL_DIMS)}"
        )
    if var.role == "static":
        # CDS stores invariants along its time (and member) axes; they are constant there, so
        # the first entry will do.
        da = da.isel({d: 0 for d in ("member", "time") if d in da.dims})
        required = ["latitude", "longitude"]
    else:
        required = (
            ["time", "level", "latitude", "longitude"]
            if var.has_levels
            else ["time", "latitude", "longitude"]
        )
        if "member" in ds.dims:
            required.insert(0, "member")
    if not var.has_levels and "level" in da.dims:
        raise ArchiveError(f"variable {name!r} is a surface field but has a 'level' dim")
    for dim in required:
        # cfgrib squeezes single-valued dims (one level, one time) into scalar coordinates.
        if dim not in da.dims and dim in da.coords and da[dim].ndim == 0:
            da = da.expand_dims(dim)
    missing = [d for d in required if d not in da.dims]
    if missing:
        raise ArchiveError(
            f"variable {name!r} lacks dim(s) {missing}: it has {list(da.dims)}; expected {required}"
        )
    da = _to_canonical_units(da, name, var.units).astype(np.float32)
    attrs = {"units": var.units, "long_name": var.long_name}
    if var.standard_name:
        attrs["standard_name"] = var.standard_name
    da.attrs = attrs
    return da


def _to_canonical_units(da: xr.DataArray, name: str, units: str) -> xr.DataArray:
    """Converts ``da`` lazily to the catalogue ``units``; data without a units attribute are taken
    to be in them already (WeatherBench2 stores often omit it)."""
    given = da.attrs.get("units")
    if given is None:
        return da
    key = str(given).lower().replace("**", "").replace("^", "").replace(" ", "")
    key = key.replace("/s2", "s-2").replace("/s", "s-1").replace("/kg", "kg-1").replace("/h", "h-1")
    if key == units.lower().replace(" ", ""):
        # Already the catalogue's units (first: "m" is precipitation's own unit, and also a
        # geopotential height that the table converts).
        return da
    target, scale, offset = _UNITS.get(key, (None, 1.0, 0.0))
    if target is None:
        raise ArchiveError(
            f"variable {name!r} has units {given!r}, which the reader cannot convert to {units!r}"
        )
    if target != units:
        raise ArchiveError(
            f"variable {name!r} has units {given!r}, which are not units of {units!r}"
        )
    if scale == 1.0 and offset == 0.0:
        return da
    # Converted in float64 so that the float32 result is the correctly rounded value.
    return da.astype(np.float64) * scale + offset


def _select_levels(ds: xr.Dataset, levels: Iterable[float]) -> xr.Dataset:
    """``ds`` on the requested pressure levels (hPa), in ascending order."""
    if "level" not in ds.dims:
        raise ArchiveError("coordinate 'level' is missing: no selected variable has levels")
    available = ds["level"].values
    wanted = sorted(set(levels))
    missing = [lv for lv in wanted if lv not in available]
    if missing:
        raise ArchiveError(
            f"coordinate 'level' lacks {missing} hPa: the archive has {available.tolist()}"
        )
    return ds.sel(level=np.asarray(wanted, dtype=available.dtype))


def _check_finite(window: xr.Dataset) -> None:
    """Raises if any variable of ``window`` has NaN or inf, computing all variables in one pass.

    A field the catalogue marks ``undefined_somewhere`` (sea-surface temperature, NaN over
    land) may hold NaN; an infinity is still an error. Whether its NaNs are where a model
    expects them is the model's to check (`weather.forecast.run`).
    """

    def bad_values(name: Hashable, da: xr.DataArray) -> xr.DataArray:
        entry = catalogue.CATALOGUE.get(str(name))
        if entry is not None and entry.undefined_somewhere:
            return xr.ufuncs.isinf(da)
        return ~xr.ufuncs.isfinite(da)

    bad = xr.Dataset(
        {
            name: bad_values(name, da).any([d for d in da.dims if d != "time"])
            for name, da in window.data_vars.items()
        }
    ).compute()
    for name, flags in bad.data_vars.items():
        if "time" not in flags.dims:
            if bool(flags):
                raise ArchiveError(f"variable {name!r} (static) has NaN or infinite values")
            continue
        times = flags["time"].values[flags.values]
        if times.size:
            raise ArchiveError(
                f"variable {name!r} has NaN or infinite values at "
                f"{times.size} time(s), first at {format_times(times[:1])}"
            )
