"""Area-conservative regridding of whole archives onto equiangular grids, as WeatherBench2 does.

Grids are named as WeatherBench2 names them, ``NLONxNLAT`` (`parse_grid`): 64x32 is 5.625 deg
without pole rows, 240x121 is 1.5 deg and 1440x721 is 0.25 deg with rows on both poles (half
cells there). Regridding (`regrid_dataset`) uses the separable weights of
`weather.data.grid.ConservativeRegridder`, so area integrals and constants are kept; missing
values are skipped (an ocean field stays an ocean field, see `MIN_VALID_FRACTION`). It stays lazy
on dask arrays, one block of times at a time, so an archive larger than memory regrids.
`regrid_archive` reads an archive through the reader (canonical layout, catalogue variables) and
writes the result with `write_archive`: under a temporary name renamed into place, so a
half-written destination never appears.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from weather.data import grid as grid_lib
from weather.data.atomic import replacing
from weather.data.errors import ArchiveError
from weather.data.layout import consolidate, write_netcdf
from weather.data.location import is_url

GRID_DIMS = ("latitude", "longitude")

# A target cell is NaN unless more than this fraction of its area lies over valid source cells.
# Not 0: cell bounds computed in floating point leave spurious overlaps of ~1e-15 of a cell
# where two grids share a bound (measured: 2.3e-15 between a 64-row Gaussian grid and 64x32 at
# the equator), which would hand a cell fully over land the value of the ocean cell beyond that
# bound. Real overlaps are far larger: a 0.25 deg pole half cell is 5e-6 of a 5.625 deg cell.
MIN_VALID_FRACTION = 1e-9

# Bytes of float64 source or result (the larger) per block regridded at once; a block's working
# set is about four times this (source, anomalies, valid mask, products), per dask thread.
BLOCK_BYTES = 64 * 2**20

_GRID_SPEC = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
_GRID_FORMS = (
    "expected NLONxNLAT (longitudes x latitudes, as WeatherBench2 names grids), e.g. 64x32, "
    "240x121 or 1440x721, with NLON >= 1 and NLAT >= 2; an even NLAT has no pole rows, an odd "
    "one has rows on both poles"
)
_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")
# Encodings that describe the source's storage of the old grid, not the data.
_GRID_ENCODINGS = ("chunks", "preferred_chunks", "chunksizes", "original_shape", "shards")


def parse_grid(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The cell centres (degrees) of the equiangular grid ``NLONxNLAT``.

    Latitudes [NLAT] ascending: for an even NLAT, ``-90 + 180 / NLAT * (i + 0.5)`` (no pole rows,
    as `weather.data.grid.equiangular_grid`); for an odd NLAT, -90 to 90 every ``180 / (NLAT -
    1)`` (rows on both poles; their cells are half cells). Longitudes [NLON]: 0 every
    ``360 / NLON``.

    Raises:
      ValueError: naming ``--grid`` and the accepted forms.
    """
    match = _GRID_SPEC.match(text)
    if match is None:
        raise ValueError(f"--grid: {text!r} is not a grid; {_GRID_FORMS}")
    n_lon, n_lat = int(match[1]), int(match[2])
    if n_lon < 1 or n_lat < 2:
        raise ValueError(
            f"--grid: {text!r} has {n_lon} longitudes and {n_lat} latitudes; {_GRID_FORMS}"
        )
    latitude, longitude = grid_lib.equiangular_grid(n_lat, n_lon)
    if n_lat % 2:
        latitude = np.linspace(-90.0, 90.0, n_lat)
    return latitude, longitude


def describe_grid(latitude: np.ndarray, longitude: np.ndarray) -> str:
    """``NLONxNLAT`` and the grid's kind, e.g. ``240x121 equiangular with pole rows``."""
    lat = np.sort(np.asarray(latitude, dtype=np.float64))
    name = f"{np.size(longitude)}x{lat.size}"
    if grid_lib.is_equiangular(lat):
        poles = lat[0] == -90.0 and lat[-1] == 90.0
        return f"{name} equiangular{' with pole rows' if poles else ''}"
    if grid_lib.is_gaussian(lat):
        return f"{name} Gaussian"
    return f"{name} irregular"


def regrid_dataset(
    ds: xr.Dataset,
    latitude: np.ndarray,
    longitude: np.ndarray,
    *,
    min_valid_fraction: float = MIN_VALID_FRACTION,
    block_bytes: int = BLOCK_BYTES,
) -> xr.Dataset:
    """``ds`` conservatively regridded onto the global grid of cell centres ``latitude`` [H],
    ``longitude`` [W] (degrees).

    Every data variable with ``latitude`` and ``longitude`` dims is regridded, its other dims
    (time, level, member...), dim order, attributes and data encodings kept; variables and
    coordinates without them are kept as they are. A target value is the area-weighted mean
    ``sum(w * x) / sum(w)`` over the source cells it overlaps (w: the overlap area), the sums
    taken over valid (finite) source values only: NaN where no more than `min_valid_fraction` of
    the target cell lies over valid values.

    The source grid must be global: latitudes Gaussian, or equiangular with or without pole rows
    (or irregular with their outer cells reaching the poles), in either order; longitudes evenly
    spaced around the circle, in any convention (0..360, -180..180). Values are computed in
    float64 and returned in the source's float type (float32 stays float32; integer fields
    become floats).

    Lazy: a dask-backed variable stays dask-backed. It is regridded in blocks whole in latitude
    and longitude of about `block_bytes` of float64 source or result, whichever is larger (a few
    times, or part of one time's levels), and the result comes in chunks of up to `block_bytes`
    along time (its other dims whole), so that writing it streams block by block into few,
    large chunks.

    Raises:
      ArchiveError: the source grid is missing, not 1-D, not global, or a variable has only one
        of the two grid dims.
      ValueError: the target grid or `min_valid_fraction` is not usable.
    """
    if not 0.0 <= min_valid_fraction < 1.0:
        raise ValueError(f"min_valid_fraction: {min_valid_fraction} is not in [0, 1)")
    missing = [d for d in GRID_DIMS if d not in ds.dims or d not in ds.coords]
    if missing:
        raise ArchiveError(
            f"coordinate(s) {missing} missing: regridding needs 'latitude' and 'longitude' dims "
            f"with coordinate values; the dataset has dims {list(ds.dims)}"
        )
    src_lat, src_lon = _checked_grid(ds["latitude"].values, ds["longitude"].values, "source")
    try:
        dst_lat, dst_lon = _checked_grid(latitude, longitude, "target")
    except ArchiveError as error:
        raise ValueError(str(error)) from None
    lat_matrix = _permuted(grid_lib.latitude_regrid_matrix, src_lat, dst_lat)
    lon_matrix = _permuted(grid_lib.longitude_regrid_matrix, src_lon, dst_lon)

    for name, var in ds.data_vars.items():
        if len(set(GRID_DIMS) & set(var.dims)) == 1:
            raise ArchiveError(
                f"variable {name!r} has dims {list(var.dims)}: only one of 'latitude' and "
                "'longitude', which conservative regridding cannot handle"
            )
    regridded = {
        name: _regrid_variable(
            var,
            lat_matrix,
            lon_matrix,
            min_valid_fraction=min_valid_fraction,
            block_bytes=block_bytes,
        )
        for name, var in ds.data_vars.items()
        if set(GRID_DIMS) <= set(var.dims)
    }
    # Coordinates on the old grid other than the grid itself (2-D latitudes, cell bounds) would
    # describe cells that no longer exist.
    rest = ds.drop_vars(
        [n for n, v in ds.variables.items() if set(GRID_DIMS) & set(v.dims) and n not in GRID_DIMS]
    ).drop_dims(list(GRID_DIMS))
    coords: dict[Hashable, Any] = dict(rest.coords)
    for dim, values in zip(GRID_DIMS, (dst_lat, dst_lon), strict=True):
        attrs = {k: v for k, v in ds[dim].attrs.items() if k != "bounds"}
        coord = xr.Variable(dim, values, attrs)
        # CF: coordinate variables hold no missing values (xarray would give them a NaN fill).
        coord.encoding = {"_FillValue": None}
        coords[dim] = coord
    attrs = dict(ds.attrs)
    attrs["regridded_from"] = describe_grid(src_lat, src_lon)
    return xr.Dataset(
        {name: regridded.get(name, var) for name, var in ds.data_vars.items()},
        coords=coords,
        attrs=attrs,
    )


def write_archive(
    ds: xr.Dataset, destination: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``ds`` to ``destination``: a NetCDF-4 file when its name ends in ``.nc``, ``.nc4``
    or ``.netcdf``, else a Zarr v3 store with consolidated metadata. Dask-backed data are
    computed and written chunk by chunk.

    The archive is written as the sibling ``DESTINATION.regridding`` and renamed into place once
    complete, so a destination that exists is always whole. An interrupted write leaves that
    sibling, which the next write removes. Replacing an existing directory renames it to
    ``DESTINATION.replaced`` first (POSIX cannot rename over a non-empty directory): a reader
    then sees the old archive, briefly none, then the new one.

    Raises:
      FileExistsError: ``destination`` exists and ``overwrite`` is False (nothing is written).
    """
    target = Path(destination)
    _refuse_existing(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f"{target.name}.replaced")
    with replacing(target, ".regridding") as tmp:
        if target.suffix.lower() in _NETCDF_SUFFIXES:
            write_netcdf(ds, tmp)
        else:
            ds.to_zarr(tmp, zarr_format=3, consolidated=False)
            consolidate(tmp)
        _refuse_existing(target, overwrite)  # it may have appeared while we computed
        if target.exists() and (target.is_dir() or tmp.is_dir()):
            _remove(old)
            os.replace(target, old)
    _remove(old)
    return target


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegridSummary:
    """What `regrid_archive` did, as its one-line `str`."""

    source: str
    destination: str
    source_grid: str
    target_grid: str
    variables: tuple[str, ...]
    times: int | None

    def __str__(self) -> str:
        times = f" at {self.times} times" if self.times is not None else ""
        return (
            f"regridded {self.source} ({self.source_grid}) -> {self.destination} "
            f"({self.target_grid}): {', '.join(self.variables)}{times}"
        )


def regrid_archive(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    latitude: np.ndarray,
    longitude: np.ndarray,
    *,
    overwrite: bool = False,
    storage_options: Mapping[str, object] | None = None,
) -> RegridSummary:
    """Regrid the archive at ``source`` (a Zarr store or NetCDF file, path or fsspec URL) onto
    ``latitude`` [H], ``longitude`` [W] and write it to ``destination`` (see `write_archive`).

    The source is read through `weather.data.reader.open_archive`, so the destination holds its
    catalogue variables in the canonical layout (float32, catalogue units; variables outside the
    catalogue are left out, as the reader leaves them out).

    Raises:
      FileExistsError: ``destination`` exists and ``overwrite`` is False (checked first).
      ArchiveError: ``source`` cannot be read (see `open_archive`) or its grid regridded.
      ValueError: ``destination`` is ``source``.
    """
    from weather.data.reader import open_archive

    target = Path(destination)
    _refuse_existing(target, overwrite)
    if not is_url(source) and target.resolve() == Path(source).resolve():
        raise ValueError(
            f"destination {target} is the source; write the regridded archive elsewhere"
        )
    ds = open_archive(source, storage_options=storage_options)
    regridded = regrid_dataset(ds, latitude, longitude)
    write_archive(regridded, target, overwrite=overwrite)
    return RegridSummary(
        source=str(source),
        destination=str(target),
        source_grid=describe_grid(ds["latitude"].values, ds["longitude"].values),
        target_grid=describe_grid(latitude, longitude),
        variables=tuple(str(n) for n in regridded.data_vars),
        times=regridded.sizes.get("time"),
    )


def _refuse_existing(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"destination {target} exists; replacing it needs overwrite=True (--overwrite)"
        )


def _checked_grid(latitude: Any, longitude: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude (0..360) as float64, after checking that they cover the globe."""
    lat = np.asarray(latitude, dtype=np.float64)
    lon = np.mod(np.asarray(longitude, dtype=np.float64), 360.0)
    lon[lon >= 360.0] = 0.0  # np.mod can round a tiny negative longitude up to 360
    for name, values in (("latitude", lat), ("longitude", lon)):
        if values.ndim != 1 or values.size < (2 if name == "latitude" else 1):
            raise ArchiveError(
                f"coordinate {name!r} of the {what} grid must be 1-D, got {values.shape}"
            )
        if not np.all(np.isfinite(values)) or np.unique(values).size != values.size:
            raise ArchiveError(f"coordinate {name!r} of the {what} grid has NaN or repeated values")
    s = np.sort(lat)
    if s[0] < -90.0 or s[-1] > 90.0:
        raise ArchiveError(f"coordinate 'latitude' of the {what} grid leaves [-90, 90]")
    # Outer cells reach the poles on equiangular grids (a half spacing away, or on them) and on
    # Gaussian ones (by their weights); anything else is a regional grid, whose outer cells
    # `grid.latitude_bounds` would stretch to the poles.
    reach = 0.5 * (1 + 1e-6)
    if not grid_lib.is_gaussian(s) and (
        s[0] + 90.0 > reach * (s[1] - s[0]) or 90.0 - s[-1] > reach * (s[-1] - s[-2])
    ):
        raise ArchiveError(
            f"coordinate 'latitude' of the {what} grid spans {s[0]} to {s[-1]}: not global (the "
            "outermost rows must lie within half a row of the poles)"
        )
    gaps = np.diff(np.concatenate([np.sort(lon), [np.min(lon) + 360.0]]))
    if not np.allclose(gaps, 360.0 / lon.size, rtol=1e-6, atol=0.0):
        raise ArchiveError(
            f"coordinate 'longitude' of the {what} grid is not evenly spaced around the globe "
            f"(spacings {gaps.min()} to {gaps.max()} degrees)"
        )
    return lat, lon


def _permuted(
    build: Callable[[np.ndarray, np.ndarray], np.ndarray], source: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """``build``'s weights [target, source] for centres in any order (it wants them ascending):
    the weights of the sorted grids, rows and columns put back where the centres are."""
    s_order, t_order = np.argsort(source, kind="stable"), np.argsort(target, kind="stable")
    ascending = build(source[s_order], target[t_order])
    matrix = np.empty_like(ascending)
    matrix[np.ix_(t_order, s_order)] = ascending
    return matrix


def _regrid_variable(
    var: xr.DataArray,
    lat_matrix: np.ndarray,
    lon_matrix: np.ndarray,
    *,
    min_valid_fraction: float,
    block_bytes: int,
) -> xr.DataArray:
    """One variable regridded (lazily when dask-backed), dims in their original order."""
    dtype = np.result_type(var.dtype, np.float32)
    lazy = var.chunks is not None
    if lazy:
        # Blocks sized by the larger of source and result: onto a finer grid, the result.
        source_cells = var.sizes["latitude"] * var.sizes["longitude"]
        target_cells = lat_matrix.shape[0] * lon_matrix.shape[0]
        limit = block_bytes * source_cells // max(source_cells, target_cells)
        var = _rechunked(var, {d: -1 for d in GRID_DIMS}, limit, np.dtype(np.float64))
    out = xr.apply_ufunc(
        _regrid_block,
        var,
        kwargs={
            "lat_matrix": lat_matrix,
            "lon_matrix": lon_matrix,
            "min_valid_fraction": min_valid_fraction,
            "dtype": dtype,
        },
        input_core_dims=[list(GRID_DIMS)],
        output_core_dims=[list(GRID_DIMS)],
        exclude_dims=set(GRID_DIMS),
        dask="parallelized",
        output_dtypes=[dtype],
        dask_gufunc_kwargs={
            "output_sizes": {"latitude": lat_matrix.shape[0], "longitude": lon_matrix.shape[0]}
        },
        keep_attrs=True,
    ).transpose(*var.dims)
    if lazy:
        # A coarser target makes small blocks: they are joined along time into chunks of up to
        # block_bytes, every other dim whole, so that a store of decades has few, large chunks.
        whole = {d: -1 for d in out.dims if d != "time"}
        out = _rechunked(out, whole, block_bytes, dtype)
    encoding = {k: v for k, v in var.encoding.items() if k not in _GRID_ENCODINGS}
    # An integer storage type would truncate the fractions and lose the NaN of a regridded
    # field, unless it packs floats (scale_factor) with a fill value.
    stored = np.dtype(encoding.get("dtype", dtype))
    if stored.kind != "f" and "scale_factor" not in encoding:
        encoding.pop("dtype", None)
    out.encoding = encoding
    return out


def _rechunked(
    var: xr.DataArray, fixed: Mapping[Hashable, int], limit: int, dtype: np.dtype
) -> xr.DataArray:
    """``var`` in chunks of ``fixed`` sizes (-1: whole) along those dims and, along the others,
    as many elements as keep a chunk of ``dtype`` within ``limit`` bytes."""
    from dask.array.core import normalize_chunks

    wanted = tuple(fixed.get(d, "auto") for d in var.dims)
    chunks = normalize_chunks(wanted, shape=var.shape, limit=limit, dtype=dtype)
    return var.chunk(dict(zip(var.dims, chunks, strict=True)))


def _regrid_block(
    x: np.ndarray,
    *,
    lat_matrix: np.ndarray,
    lon_matrix: np.ndarray,
    min_valid_fraction: float,
    dtype: np.dtype,
) -> np.ndarray:
    """``x`` [..., lat, lon] regridded to [..., H, W]: ``A_lat @ x @ A_lon.T`` over the valid
    values, normalised by the valid area fraction ``A_lat @ valid @ A_lon.T``."""
    x = np.asarray(x, dtype=np.float64)
    valid = np.isfinite(x)
    # Regridding anomalies from each field's midrange keeps a constant exactly constant (its
    # anomalies are exactly 0, and (c + c) / 2 == c) and spares the products a large offset
    # (geopotential). fmin/fmax skip NaN; a field without valid values gets offset 0 (its
    # result is NaN anyway).
    masked = np.where(valid, x, np.nan)
    lowest = np.fmin.reduce(masked, axis=(-2, -1), keepdims=True)
    highest = np.fmax.reduce(masked, axis=(-2, -1), keepdims=True)
    offset = np.nan_to_num(0.5 * (lowest + highest), nan=0.0)
    if valid.all():
        out = offset + lat_matrix @ (x - offset) @ lon_matrix.T
    else:
        anomalies = np.where(valid, x - offset, 0.0)
        weighted = lat_matrix @ anomalies @ lon_matrix.T
        fraction = lat_matrix @ valid.astype(np.float64) @ lon_matrix.T
        enough = fraction > min_valid_fraction
        out = np.where(enough, offset + weighted / np.where(enough, fraction, 1.0), np.nan)
    return out.astype(dtype)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


__all__ = [
    "BLOCK_BYTES",
    "MIN_VALID_FRACTION",
    "RegridSummary",
    "describe_grid",
    "parse_grid",
    "regrid_archive",
    "regrid_dataset",
    "write_archive",
]
