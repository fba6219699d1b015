"""GRIB2 encoding of a forecast (WMO FM 92 GRIB edition 2), written with ecCodes.

One message per init time, member, lead, variable and level, in that order of loops:

- section 1: no originating centre (255: we are not a WMO centre), reference time = the init
  time (significance 1, start of forecast), research products (1.3: 2), perturbed forecast
  products (1.4: 4);
- section 3: template 3.0, a regular latitude-longitude grid in the forecast's own order
  (``jScansPositively`` 1 when latitudes ascend, 0 when they descend; longitudes eastward from
  the first, across the dateline where a region spans it);
- section 4: template 4.1, an individual ensemble forecast at a point in time: the parameter
  (`PARAMETERS`: discipline, Code Tables 4.1 and 4.2), ensemble forecast as the generating
  process (4.3: 4), the lead in hours (``forecastTime``, 4.4: 1), the fixed surface (4.5: 100
  isobaric with the level in Pa, 1 ground or water, 101 mean sea level, 103 a height above
  ground in m), ``typeOfEnsembleForecast`` 3 (4.6: positively perturbed; every member is a draw
  of the sampler, none is an unperturbed control), ``perturbationNumber`` = the ``member``
  number as stored (member 0 is number 0, so GRIB, Zarr and NetCDF number members alike) and
  ``numberOfForecastsInEnsemble`` = the ensemble size;
- sections 5-7: simple packing (template 5.0) with ``bits_per_value`` bits (default 24), no
  decimal scaling; missing values (NaN: leads not written yet) go into a bitmap.

Precision (simple packing, decimal scale factor D = 0): a value Y is stored as
``Y = R + X * 2**E`` with R the field's minimum (an IEEE float32, exact for our float32 fields),
X an integer of ``bits_per_value`` bits and E the smallest binary scale for which
``(max - min) / 2**E <= 2**bits_per_value - 1``. So every decoded value is within one packing
step ``2**E`` of the stored one (half a step when X is rounded), and
``2**E < 2 * (max - min) / (2**bits_per_value - 1)``: with 24 bits, 1.2e-7 of the field's range
(`packing_step` computes it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

# Code Table 4.5: types of fixed surface.
GROUND = 1
MEAN_SEA_LEVEL = 101
ISOBARIC = 100
HEIGHT_ABOVE_GROUND = 103

# Stands for NaN in the values handed to ecCodes (which then marks them in a bitmap); no field of
# the catalogue comes near it (ecCodes' default, 9999, is a possible geopotential).
_MISSING_VALUE = 1e20
_MAX_MEMBER = 254  # perturbationNumber is one octet; 255 means missing


@dataclasses.dataclass(frozen=True, kw_only=True)
class Grib2Parameter:
    """How one catalogue variable is identified in GRIB2.

    Attributes:
      discipline: Code Table 0.0 (0 meteorological, 2 land surface).
      category: ``parameterCategory``, Code Table 4.1.
      number: ``parameterNumber``, Code Table 4.2.
      surface: ``typeOfFirstFixedSurface``, Code Table 4.5 (`ISOBARIC` for level variables).
      height: metres above ground, for `HEIGHT_ABOVE_GROUND`.
      short_name: ecCodes' ``shortName`` of these codes (what cfgrib names the variable), as a
        check.
    """

    discipline: int
    category: int
    number: int
    surface: int
    height: int | None = None
    short_name: str

    def __post_init__(self) -> None:
        if (self.surface == HEIGHT_ABOVE_GROUND) != (self.height is not None):
            raise ValueError("a height goes with surface 103 (height above ground) and only it")


PARAMETERS: dict[str, Grib2Parameter] = {
    "geopotential": Grib2Parameter(
        discipline=0, category=3, number=4, surface=ISOBARIC, short_name="z"
    ),
    "temperature": Grib2Parameter(
        discipline=0, category=0, number=0, surface=ISOBARIC, short_name="t"
    ),
    "u_component_of_wind": Grib2Parameter(
        discipline=0, category=2, number=2, surface=ISOBARIC, short_name="u"
    ),
    "v_component_of_wind": Grib2Parameter(
        discipline=0, category=2, number=3, surface=ISOBARIC, short_name="v"
    ),
    "specific_humidity": Grib2Parameter(
        discipline=0, category=1, number=0, surface=ISOBARIC, short_name="q"
    ),
    "vertical_velocity": Grib2Parameter(
        discipline=0, category=2, number=8, surface=ISOBARIC, short_name="w"
    ),
    "surface_pressure": Grib2Parameter(
        discipline=0, category=3, number=0, surface=GROUND, short_name="sp"
    ),
    "mean_sea_level_pressure": Grib2Parameter(
        discipline=0, category=3, number=0, surface=MEAN_SEA_LEVEL, short_name="msl"
    ),
    "2m_temperature": Grib2Parameter(
        discipline=0, category=0, number=0, surface=HEIGHT_ABOVE_GROUND, height=2, short_name="2t"
    ),
    "10m_u_component_of_wind": Grib2Parameter(
        discipline=0,
        category=2,
        number=2,
        surface=HEIGHT_ABOVE_GROUND,
        height=10,
        short_name="10u",
    ),
    "10m_v_component_of_wind": Grib2Parameter(
        discipline=0,
        category=2,
        number=3,
        surface=HEIGHT_ABOVE_GROUND,
        height=10,
        short_name="10v",
    ),
    "geopotential_at_surface": Grib2Parameter(
        discipline=0, category=3, number=4, surface=GROUND, short_name="z"
    ),
    "land_sea_mask": Grib2Parameter(
        discipline=2, category=0, number=0, surface=GROUND, short_name="lsm"
    ),
}


def without_grib2_code(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that GRIB2 cannot encode (no entry in `PARAMETERS`)."""
    return [str(n) for n in names if str(n) not in PARAMETERS]


def packing_step(values: np.ndarray, bits_per_value: int) -> float:
    """The largest error of simple packing ``values`` with ``bits_per_value`` bits: the step
    ``2**E`` of the smallest binary scale E with ``(max - min) / 2**E <= 2**bits - 1``
    (0 for a constant field); NaN are ignored."""
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    if spread == 0.0:
        return 0.0
    return 2.0 ** math.ceil(math.log2(spread / (2**bits_per_value - 1)))


def _uniform_step(values: np.ndarray, name: str, *, periodic: bool) -> float | None:
    """The spacing of an evenly spaced coordinate (eastward modulo 360 if ``periodic``), None
    for a single point.

    Raises:
      ValueError: naming the coordinate when it is not evenly spaced.
    """
    if values.size < 2:
        return None
    steps = np.diff(values) % 360.0 if periodic else np.diff(values)
    # GRIB2 stores degrees in millionths; a grid regular to that precision is regular.
    if not np.allclose(steps, steps[0], rtol=0.0, atol=1e-6) or steps[0] == 0.0:
        raise ValueError(
            f"coordinate {name!r}: GRIB2 needs a regular latitude-longitude grid; its spacing "
            f"varies ({np.unique(np.round(steps, 6)).tolist()} degrees)"
        )
    return float(steps[0])


def _check(ds: xr.Dataset, bits_per_value: int) -> None:
    """Raise ValueError naming what GRIB2 cannot encode, before anything is written."""
    if not 1 <= bits_per_value <= 32:
        raise ValueError(f"bits_per_value: must be 1..32 for simple packing, got {bits_per_value}")
    names = [str(n) for n in ds.data_vars]
    missing = without_grib2_code(names)
    if missing:
        raise ValueError(
            f"variables {missing}: no GRIB2 parameter code; GRIB2 output has codes for "
            f"{sorted(PARAMETERS)}"
        )
    for name in names:
        dims = ds[name].dims
        want: tuple[str, ...] = ("member", "init_time", "lead_time", "latitude", "longitude")
        if PARAMETERS[name].surface == ISOBARIC:
            want = (*want[:3], "level", *want[3:])
        if set(dims) != set(want):
            raise ValueError(f"variable {name!r}: dims {dims}; GRIB2 output needs {want}")
    members = ds["member"].values
    if members.min() < 0 or members.max() > _MAX_MEMBER:
        raise ValueError(
            f"member: numbers {members.min()}..{members.max()} do not fit GRIB2's "
            f"perturbationNumber (0..{_MAX_MEMBER})"
        )
    hours = ds["lead_time"].values / np.timedelta64(1, "h")
    if not np.array_equal(hours, np.round(hours)) or (hours < 0).any():
        raise ValueError(f"lead_time: GRIB2 output needs whole hours >= 0, got {hours.tolist()}")
    init = ds["init_time"].values
    if not np.array_equal(init, init.astype("datetime64[s]")):
        raise ValueError("init_time: GRIB2 stores whole seconds")
    if "level" in ds.dims:
        levels = ds["level"].values
        if not np.array_equal(levels, np.round(levels)) or (levels <= 0).any():
            raise ValueError(f"level: GRIB2 output needs whole hPa > 0, got {levels.tolist()}")
    latitude = ds["latitude"].values
    if np.abs(latitude).max() > 90.0:
        raise ValueError("latitude: values beyond +-90 degrees")
    _uniform_step(latitude, "latitude", periodic=False)
    _uniform_step(ds["longitude"].values, "longitude", periodic=True)


def _grid_keys(latitude: np.ndarray, longitude: np.ndarray) -> list[tuple[str, Any]]:
    """Section 3 (template 3.0) for the forecast's grid, in its own order."""
    d_lat = _uniform_step(latitude, "latitude", periodic=False)
    d_lon = _uniform_step(longitude, "longitude", periodic=True)
    keys: list[tuple[str, Any]] = [
        ("gridType", "regular_ll"),
        ("Ni", longitude.size),
        ("Nj", latitude.size),
        ("iScansNegatively", 0),
        ("jScansPositively", int(d_lat is not None and d_lat > 0)),
        ("jPointsAreConsecutive", 0),
        ("latitudeOfFirstGridPointInDegrees", float(latitude[0])),
        ("latitudeOfLastGridPointInDegrees", float(latitude[-1])),
        ("longitudeOfFirstGridPointInDegrees", float(longitude[0] % 360.0)),
        ("longitudeOfLastGridPointInDegrees", float(longitude[-1] % 360.0)),
    ]
    if d_lon is not None:
        keys.append(("iDirectionIncrementInDegrees", d_lon))
    if d_lat is not None:
        keys.append(("jDirectionIncrementInDegrees", abs(d_lat)))
    return keys


def _set(handle: Any, keys: Iterable[tuple[str, Any]]) -> None:
    import eccodes

    for key, value in keys:
        if value is None:
            eccodes.codes_set_missing(handle, key)
        else:
            eccodes.codes_set(handle, key, value)


def _surface_keys(parameter: Grib2Parameter, level: int | None) -> list[tuple[str, Any]]:
    if parameter.surface == ISOBARIC:
        scaled: tuple[int | None, int | None] = (0, 100 * int(level or 0))  # hPa -> Pa
    elif parameter.surface == HEIGHT_ABOVE_GROUND:
        scaled = (0, parameter.height)
    else:
        scaled = (None, None)
    return [
        ("discipline", parameter.discipline),
        ("parameterCategory", parameter.category),
        ("parameterNumber", parameter.number),
        ("typeOfFirstFixedSurface", parameter.surface),
        ("scaleFactorOfFirstFixedSurface", scaled[0]),
        ("scaledValueOfFirstFixedSurface", scaled[1]),
        ("typeOfSecondFixedSurface", 255),
    ]


def write_grib2(ds: xr.Dataset, path: str | Path, *, bits_per_value: int = 24) -> int:
    """Write a forecast as GRIB2 (see the module docstring); returns the number of messages.

    Args:
      ds: dims ``member, init_time, lead_time, [level,] latitude, longitude`` (the forecast
        layout), physical units (those of `weather.data.variables`, which are GRIB2's), every
        variable in `PARAMETERS`, a regular latitude-longitude grid.
      path: the file to write (replaced if it exists; callers that must not leave a partial
        file write to a temporary name, as `weather.data.atomic.replacing` does).
      bits_per_value: simple packing's bits per value (see `packing_step` for the error).

    Raises:
      ValueError: naming the variable, coordinate or value GRIB2 cannot encode; raised before
        the file is opened.
    """
    import eccodes

    _check(ds, bits_per_value)
    members = ds["member"].values
    levels = ds["level"].values if "level" in ds.dims else None
    base = eccodes.codes_grib_new_from_samples("GRIB2")
    templates: list[tuple[str, Any, Any]] = []  # (name, level or None, handle)
    count = 0
    try:
        _set(
            base,
            [
                ("centre", 255),
                ("subCentre", 0),
                ("productionStatusOfProcessedData", 2),
                ("typeOfProcessedData", 4),
                ("significanceOfReferenceTime", 1),
                *_grid_keys(ds["latitude"].values, ds["longitude"].values),
                ("productDefinitionTemplateNumber", 1),
                ("typeOfGeneratingProcess", 4),
                ("indicatorOfUnitOfTimeRange", 1),
                ("typeOfEnsembleForecast", 3),
                ("numberOfForecastsInEnsemble", int(members.size)),
                ("packingType", "grid_simple"),
                ("bitsPerValue", bits_per_value),
            ],
        )
        for name in map(str, ds.data_vars):
            parameter = PARAMETERS[name]
            on_levels = levels if parameter.surface == ISOBARIC else None
            for level in [None] if on_levels is None else list(on_levels):
                handle = eccodes.codes_clone(base)
                templates.append((name, level, handle))
                _set(handle, _surface_keys(parameter, level))
        order = {
            name: ds[name].transpose(
                "member", "init_time", "lead_time", ..., "latitude", "longitude"
            )
            for name in map(str, ds.data_vars)
        }
        with open(path, "wb") as out:
            for i, init in enumerate(ds["init_time"].values):
                t = init.astype("datetime64[s]").item()
                when = [
                    ("year", t.year),
                    ("month", t.month),
                    ("day", t.day),
                    ("hour", t.hour),
                    ("minute", t.minute),
                    ("second", t.second),
                ]
                for m, member in enumerate(members):
                    # One read per variable, member and init: [lead, (level,) lat, lon].
                    fields = {n: np.asarray(da[m, i], np.float64) for n, da in order.items()}
                    for s, lead in enumerate(ds["lead_time"].values):
                        hours = int(lead // np.timedelta64(1, "h"))
                        for name, level, template in templates:
                            field = fields[name][s]
                            if level is not None:
                                field = field[int(np.flatnonzero(levels == level)[0])]
                            handle = eccodes.codes_clone(template)
                            try:
                                _set(
                                    handle,
                                    [
                                        *when,
                                        ("forecastTime", hours),
                                        ("perturbationNumber", int(member)),
                                    ],
                                )
                                _set_values(handle, field.ravel())
                                eccodes.codes_write(handle, out)
                            finally:
                                eccodes.codes_release(handle)
                            count += 1
    finally:
        for _, _, handle in templates:
            eccodes.codes_release(handle)
        eccodes.codes_release(base)
    return count


def _set_values(handle: Any, values: np.ndarray) -> None:
    import eccodes

    missing = ~np.isfinite(values)
    if missing.any():
        eccodes.codes_set(handle, "bitmapPresent", 1)
        eccodes.codes_set(handle, "missingValue", _MISSING_VALUE)
        values = np.where(missing, _MISSING_VALUE, values)
    eccodes.codes_set_values(handle, values)


__all__ = [
    "GROUND",
    "HEIGHT_ABOVE_GROUND",
    "ISOBARIC",
    "MEAN_SEA_LEVEL",
    "PARAMETERS",
    "Grib2Parameter",
    "packing_step",
    "without_grib2_code",
    "write_grib2",
]
