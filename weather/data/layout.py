"""The forecast layout shared by the model, the baselines, the service and the scores.

Dims ``member, init_time, lead_time, [level,] latitude, longitude``; ``lead_time`` a timedelta;
``member`` with ``standard_name: realization``; variables with the catalogue's CF attributes.

CF (`CONVENTIONS`): the dims keep their names (many readers use them) and carry the standard
names CF readers look for: ``init_time`` is the ``forecast_reference_time``, ``lead_time`` the
``forecast_period`` (encoded in hours), ``member`` the ``realization``; a 2-D ``valid_time``
coordinate ``[init_time, lead_time]`` (``standard_name: time``) is their sum. Every coordinate
and variable has units (the times through their encoding: ``hours since 1970-01-01``).

Every producer of forecasts (the diffusion model, the physics and perfect-model ensembles, the
service's jobs) writes through one `ForecastWriter`: a Zarr store created atomically (all NaN,
one chunk per init time and lead, so that writing one never touches another) or arrays in memory.
A store carries consolidated metadata, so that ``xarray.open_zarr`` opens it in one read and
without a warning; its structure never changes after it is made (writes fill chunks only), so
the consolidated copy stays true.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from weather.data.atomic import replacing
from weather.data.variables import CATALOGUE

FORECAST_DIMS = ("member", "init_time", "lead_time", "level", "latitude", "longitude")
CONVENTIONS = "CF-1.8"
# The epoch of the stored times: CF readers get "hours since 1970-01-01".
_EPOCH = np.datetime64("1970-01-01T00:00:00", "ns")


def variable_attrs(name: str) -> dict[str, Any]:
    """The CF attributes (units, long_name, standard_name) of a catalogued variable, else {}."""
    entry = CATALOGUE.get(name)
    if entry is None:
        return {}
    attrs: dict[str, Any] = {"units": entry.units, "long_name": entry.long_name}
    if entry.standard_name:
        attrs["standard_name"] = entry.standard_name
    return attrs


def _time_unit(values: np.ndarray, zero: np.datetime64 | np.timedelta64) -> str:
    """The coarsest of hours, minutes and seconds that counts ``values - zero`` in whole
    numbers (so xarray stores them as int64, exactly, instead of warning and using floats)."""
    offsets = (np.asarray(values) - zero).astype("timedelta64[ns]").astype(np.int64).ravel()
    for unit, ns in (("hours", 3_600_000_000_000), ("minutes", 60_000_000_000)):
        if (offsets % ns == 0).all():
            return unit
    return "seconds"


def _annotate_coords(ds: xr.Dataset) -> None:
    ds["member"].attrs.update(standard_name="realization", long_name="ensemble member", units="1")
    ds["latitude"].attrs.update(units="degrees_north", standard_name="latitude", axis="Y")
    ds["longitude"].attrs.update(units="degrees_east", standard_name="longitude", axis="X")
    if "level" in ds.coords:
        ds["level"].attrs.update(
            units="hPa",
            long_name="pressure level",
            standard_name="air_pressure",
            positive="down",
            axis="Z",
        )
    # Time units live in the encoding: xarray refuses a "units" attribute on datetime64 and
    # timedelta64 variables and writes the encoding's units instead.
    ds["init_time"].attrs.update(
        standard_name="forecast_reference_time", long_name="forecast reference (initial) time"
    )
    ds["lead_time"].attrs.update(standard_name="forecast_period", long_name="forecast lead time")
    # With the dtype too: xarray wants both or neither for chunked (dask) times, and the unit
    # counts every time in whole numbers.
    ds["lead_time"].encoding.update(
        units=_time_unit(ds["lead_time"].values, np.timedelta64(0, "ns")), dtype="int64"
    )
    if ds["init_time"].ndim <= 1 and ds["lead_time"].ndim <= 1:
        ds.coords["valid_time"] = ds["init_time"] + ds["lead_time"]
        ds["valid_time"].attrs.update(standard_name="time", long_name="valid time")
    for name in ("init_time", "valid_time"):
        if name in ds.coords:
            unit = _time_unit(ds[name].values, _EPOCH)
            ds[name].encoding.update(
                units=f"{unit} since 1970-01-01", calendar="proleptic_gregorian", dtype="int64"
            )
    for name in ("latitude", "longitude"):
        # CF: coordinate variables hold no missing values, so no _FillValue (xarray would add
        # NaN to float ones).
        ds[name].encoding["_FillValue"] = None
    ds.attrs.setdefault("Conventions", CONVENTIONS)


def annotate_forecast(ds: xr.Dataset) -> None:
    """Set (in place) the CF attributes of a forecast dataset's variables and coordinates, its
    ``valid_time`` coordinate and its ``Conventions``."""
    for name in ds.data_vars:
        ds[name].attrs.update(variable_attrs(str(name)))
    _annotate_coords(ds)


@dataclasses.dataclass(frozen=True)
class ForecastLayout:
    """The variables and coordinates of one forecast dataset.

    Attributes:
      variables: names, in order.
      level_variables: those of ``variables`` with a ``level`` dim (needs ``levels``).
      members: member numbers [M] (int).
      init_times: [I] datetime64.
      lead_times: [S] timedelta64.
      latitude: [H] degrees north.
      longitude: [W] degrees east.
      levels: [L] hPa, or None when no variable has levels.
      attrs: the dataset's global attributes.
    """

    variables: tuple[str, ...]
    level_variables: frozenset[str]
    members: np.ndarray
    init_times: np.ndarray
    lead_times: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    levels: np.ndarray | None = None
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(
        cls,
        variables: Collection[str],
        level_variables: Collection[str],
        *,
        members: Any,
        init_times: Any,
        lead_times: Any,
        latitude: Any,
        longitude: Any,
        levels: Any = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> ForecastLayout:
        """A layout with its coordinates cast to the stored dtypes (level only if used)."""
        names = tuple(variables)
        leveled = frozenset(n for n in names if n in set(level_variables))
        if leveled and levels is None:
            raise ValueError(f"levels: needed for the level variables {sorted(leveled)}")
        return cls(
            variables=names,
            level_variables=leveled,
            members=np.asarray(members, dtype=np.int64),
            init_times=np.asarray(init_times, dtype="datetime64[ns]"),
            lead_times=np.asarray(lead_times, dtype="timedelta64[ns]"),
            latitude=np.asarray(latitude),
            longitude=np.asarray(longitude),
            levels=np.asarray(levels, dtype=np.int64) if leveled else None,
            attrs=dict(attrs or {}),
        )

    def dims(self, name: str) -> tuple[str, ...]:
        """``(member, init_time, lead_time, [level,] latitude, longitude)`` of a variable."""
        return tuple(d for d in FORECAST_DIMS if d != "level" or name in self.level_variables)

    def shape(self, name: str) -> tuple[int, ...]:
        sizes = {
            "member": self.members.size,
            "init_time": self.init_times.size,
            "lead_time": self.lead_times.size,
            "level": 0 if self.levels is None else self.levels.size,
            "latitude": self.latitude.size,
            "longitude": self.longitude.size,
        }
        return tuple(sizes[d] for d in self.dims(name))

    def coords(self) -> xr.Dataset:
        """The coordinates alone (with their CF attributes) and the global attributes."""
        coords: dict[str, Any] = {
            "member": self.members,
            "init_time": self.init_times,
            "lead_time": self.lead_times,
            "latitude": self.latitude,
            "longitude": self.longitude,
        }
        if self.levels is not None:
            coords["level"] = self.levels
        ds = xr.Dataset(coords=coords, attrs=dict(self.attrs))
        _annotate_coords(ds)
        return ds


def consolidate(store: str | Path) -> None:
    """Write the consolidated metadata of a Zarr v3 store (every array's metadata in the root
    ``zarr.json``), so that ``xarray.open_zarr`` reads it once and does not warn.

    Call it once the store's structure is final: writing chunks afterwards keeps it true, adding
    arrays or attributes does not.
    """
    import zarr

    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not in the v3 spec yet; xarray and
        # zarr-python both read it, and readers without it fall back to listing the store.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(store), zarr_format=3)


def write_netcdf(ds: xr.Dataset, path: str | Path) -> None:
    """A forecast as one NetCDF-4 file (CF: no _FillValue on the grid's coordinates, which
    xarray would otherwise give float coordinates, even when read from a Zarr store)."""
    encoding = {
        str(dim): {"_FillValue": None}
        for dim in ds.dims
        if dim in ds.coords and ds[dim].dtype.kind == "f"
    }
    ds.to_netcdf(path, engine="netcdf4", encoding=encoding)


class ForecastWriter:
    """Streams a forecast into a Zarr store or into arrays in memory.

    With ``out``, the store is created up front with every array (all NaN; chunks of one init
    time and one lead, everything else whole), under a temporary name renamed into place, so a
    half-made store never appears; `write` then fills regions. Without ``out`` the same layout is
    kept in memory. `dataset` returns the forecast (opened lazily from the store).
    """

    def __init__(
        self, layout: ForecastLayout, out: str | Path | None = None, *, exist_ok: bool = False
    ) -> None:
        """Args:
        layout: what the forecast holds.
        out: the Zarr store to create, or None to keep the forecast in memory.
        exist_ok: reopen a store that exists (a resumed job) instead of refusing it.
        """
        self.layout: ForecastLayout | None = layout
        self.store = Path(out) if out is not None else None
        self._arrays: dict[str, np.ndarray] = {}
        if self.store is None:
            self._arrays = {
                n: np.full(layout.shape(n), np.nan, np.float32) for n in layout.variables
            }
        elif self.store.exists():
            if not exist_ok:
                raise FileExistsError(
                    f"out: {self.store} exists; forecasts never overwrite a store"
                )
        else:
            self._create(self.store)

    @classmethod
    def reopen(cls, store: str | Path) -> ForecastWriter:
        """A writer into a store that exists (made by another writer, maybe in another
        process), for `write` and `dataset` alone."""
        path = Path(store)
        if not path.exists():
            raise FileNotFoundError(f"store: {path} does not exist")
        writer = cls.__new__(cls)
        writer.layout, writer.store, writer._arrays = None, path, {}
        return writer

    def _create(self, store: Path) -> None:
        # xarray writes the coordinates (with their CF time encoding); the empty data arrays
        # are made with zarr directly, in milliseconds where a lazy dask template takes a second.
        import zarr

        assert self.layout is not None
        store.parent.mkdir(parents=True, exist_ok=True)
        with replacing(store, ".creating") as tmp:
            coords = self.layout.coords()
            # valid_time [init_time, lead_time] chunked as the fields are, so that a reader
            # asking for chunks of one init time and lead (the scores do) splits none.
            coords["valid_time"].encoding["chunks"] = (1, 1)
            coords.to_zarr(tmp, zarr_format=3, consolidated=False)
            group = zarr.open_group(tmp, mode="r+", zarr_format=3)
            for name in self.layout.variables:
                dims, shape = self.layout.dims(name), self.layout.shape(name)
                chunks = tuple(
                    1 if d in ("init_time", "lead_time") else n
                    for d, n in zip(dims, shape, strict=True)
                )
                attrs = variable_attrs(name)
                # CF ties the 2-D valid time to each field; xarray reads it back as a coordinate.
                attrs["coordinates"] = "valid_time"
                group.create_array(
                    name,
                    shape=shape,
                    chunks=chunks,
                    dtype="float32",
                    fill_value=np.nan,
                    dimension_names=dims,
                    attributes=attrs,
                )
            consolidate(tmp)

    def write(
        self,
        fields: Mapping[str, np.ndarray],
        *,
        init: slice = slice(None),
        lead: slice = slice(None),
    ) -> None:
        """Write ``fields[name]`` ``[M, init slice, lead slice, (L,) H, W]`` into the forecast.

        Regions should cover whole chunks (whole init times and leads) so that concurrent
        writers of different regions never share one.
        """
        index = (slice(None), init, lead)
        if self.store is None:
            self._check_names(fields, self._arrays)
            for name, value in fields.items():
                self._arrays[name][index] = value
            return
        import zarr

        # The arrays as they are on disk, not as the consolidated copy remembers them.
        group = zarr.open_group(self.store, mode="r+", zarr_format=3, use_consolidated=False)
        self._check_names(fields, list(group.array_keys()))
        for name, value in fields.items():
            array = group[name]
            assert isinstance(array, zarr.Array)
            array[index] = np.asarray(value, dtype=np.float32)

    @staticmethod
    def _check_names(fields: Mapping[str, np.ndarray], held: Collection[str]) -> None:
        unknown = sorted(set(fields) - set(held))
        if unknown:
            raise KeyError(f"fields: {unknown} are not in the forecast (it holds {sorted(held)})")

    def dataset(self) -> xr.Dataset:
        """The forecast: opened lazily from the store, or the in-memory arrays."""
        if self.store is not None:
            return xr.open_zarr(self.store, consolidated=False)
        assert self.layout is not None
        coords = self.layout.coords()
        return xr.Dataset(
            {
                n: (self.layout.dims(n), self._arrays[n], variable_attrs(n))
                for n in self.layout.variables
            },
            coords=coords.coords,
            attrs=coords.attrs,
        )


__all__ = [
    "CONVENTIONS",
    "FORECAST_DIMS",
    "ForecastLayout",
    "ForecastWriter",
    "annotate_forecast",
    "consolidate",
    "variable_attrs",
    "write_netcdf",
]
