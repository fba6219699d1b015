"""The variable catalogue: names, units, levels and the role each field plays in the task.

Names follow WeatherBench2 / ARCO-ERA5 (`geopotential`, `2m_temperature`, ...). Every variable
also records its CDS/cfgrib short name (`z`, `t2m`, ...) so the reader can map either layout onto
the canonical one.

Roles (as in GenCast):
- ``prognostic``: an input at t-12h and t, and a target at t+12h;
- ``output``: a target only, never an input (``total_precipitation_12hr``: an accumulation
  over the step just forecast, which the next step does not need);
- ``static``: a time-invariant input (e.g. ``geopotential_at_surface``);
- ``forcing``: computed from time and position, never read from the archive
  (year and day progress as sin/cos, top-of-atmosphere incident solar radiation);
- ``diagnostic``: readable and scorable, but not part of a task.

Normalisation (`weather.model.task.Normalization`): every state channel is centred on its
climatological mean and scaled by its standard deviation as an input; a prognostic target is
the 12 h residual scaled by the standard deviation of 12 h differences, an output-only target
the value itself, centred and scaled as an input. Two attributes say what a field's values may
be: ``lower_bound`` (outputs are clipped there: precipitation and humidity are never negative)
and ``undefined_somewhere`` (sea-surface temperature is NaN over land: filled with its mean
where undefined as an input, left out of the loss there, and NaN again in outputs; the mask of
where it is defined is kept with the model).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Role = Literal["prognostic", "output", "static", "forcing", "diagnostic"]

# WeatherBench2's 13 pressure levels (hPa), the layout most ERA5-derived archives use.
WB2_LEVELS: tuple[int, ...] = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Variable:
    """One field of the catalogue.

    Attributes:
      name: canonical (WeatherBench2) name, e.g. ``"temperature"``.
      short_name: CDS/cfgrib short name, e.g. ``"t"``.
      units: canonical units (udunits spelling), e.g. ``"K"``, ``"m2 s-2"``.
      long_name: human-readable name for CF attributes.
      standard_name: CF standard name where one exists.
      has_levels: True for fields on pressure levels (dims ``level, latitude, longitude``).
      role: see the module docstring.
      lower_bound: the smallest physical value (outputs are clipped to it), or None.
      undefined_somewhere: the field is NaN at fixed places (sea-surface temperature over
        land); see the module docstring.
    """

    name: str
    short_name: str
    units: str
    long_name: str
    standard_name: str | None = None
    has_levels: bool = False
    role: Role = "diagnostic"
    lower_bound: float | None = None
    undefined_somewhere: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.short_name:
            raise ValueError("a catalogue variable needs a name and a short_name")
        if self.role == "output" and self.has_levels:
            raise ValueError(f"{self.name}: output-only fields are single-level")


_CATALOGUE: tuple[Variable, ...] = (
    Variable(
        name="geopotential",
        short_name="z",
        units="m2 s-2",
        long_name="Geopotential",
        standard_name="geopotential",
        has_levels=True,
        role="prognostic",
    ),
    Variable(
        name="temperature",
        short_name="t",
        units="K",
        long_name="Temperature",
        standard_name="air_temperature",
        has_levels=True,
        role="prognostic",
    ),
    Variable(
        name="u_component_of_wind",
        short_name="u",
        units="m s-1",
        long_name="U component of wind",
        standard_name="eastward_wind",
        has_levels=True,
        role="prognostic",
    ),
    Variable(
        name="v_component_of_wind",
        short_name="v",
        units="m s-1",
        long_name="V component of wind",
        standard_name="northward_wind",
        has_levels=True,
        role="prognostic",
    ),
    Variable(
        name="specific_humidity",
        short_name="q",
        units="kg kg-1",
        long_name="Specific humidity",
        standard_name="specific_humidity",
        has_levels=True,
        role="prognostic",
        lower_bound=0.0,
    ),
    Variable(
        name="vertical_velocity",
        short_name="w",
        units="Pa s-1",
        long_name="Vertical velocity",
        standard_name="lagrangian_tendency_of_air_pressure",
        has_levels=True,
        role="prognostic",
    ),
    Variable(
        name="surface_pressure",
        short_name="sp",
        units="Pa",
        long_name="Surface pressure",
        standard_name="surface_air_pressure",
        role="prognostic",
    ),
    Variable(
        name="mean_sea_level_pressure",
        short_name="msl",
        units="Pa",
        long_name="Mean sea level pressure",
        standard_name="air_pressure_at_mean_sea_level",
        role="prognostic",
    ),
    Variable(
        name="2m_temperature",
        short_name="t2m",
        units="K",
        long_name="2 metre temperature",
        standard_name="air_temperature",
        role="prognostic",
    ),
    Variable(
        name="10m_u_component_of_wind",
        short_name="u10",
        units="m s-1",
        long_name="10 metre U wind component",
        standard_name="eastward_wind",
        role="prognostic",
    ),
    Variable(
        name="10m_v_component_of_wind",
        short_name="v10",
        units="m s-1",
        long_name="10 metre V wind component",
        standard_name="northward_wind",
        role="prognostic",
    ),
    Variable(
        name="sea_surface_temperature",
        short_name="sst",
        units="K",
        long_name="Sea surface temperature",
        standard_name="sea_surface_temperature",
        role="prognostic",
        undefined_somewhere=True,
    ),
    Variable(
        name="total_precipitation_12hr",
        # No CDS short name: the reader sums ERA5's hourly `tp` over the 12 h ending at each time.
        short_name="tp12",
        units="m",
        long_name="Total precipitation over the 12 hours ending at the valid time",
        standard_name="precipitation_amount",
        role="output",
        lower_bound=0.0,
    ),
    Variable(
        name="toa_incident_solar_radiation",
        short_name="tisr",
        units="J m-2",
        long_name="TOA incident solar radiation over the 12 hours ending at the valid time",
        standard_name="integral_wrt_time_of_toa_incoming_shortwave_flux",
        role="forcing",
    ),
    Variable(
        name="geopotential_at_surface",
        # cfgrib calls the invariant orography field `z` too; the reader tells them apart by the
        # absence of a level dimension.
        short_name="z_surface",
        units="m2 s-2",
        long_name="Geopotential at surface",
        standard_name="surface_geopotential",
        role="static",
    ),
    Variable(
        name="land_sea_mask",
        short_name="lsm",
        units="1",
        long_name="Land-sea mask",
        standard_name="land_binary_mask",
        role="static",
    ),
)

CATALOGUE: dict[str, Variable] = {v.name: v for v in _CATALOGUE}
SHORT_NAMES: dict[str, str] = {v.short_name: v.name for v in _CATALOGUE}

# Forcings are computed, not read: GenCast's time features, as sin/cos pairs.
# `year_progress_*` depend on time only; `day_progress_*` on time and longitude (local solar time).
# (`toa_incident_solar_radiation`, the catalogue's computed forcing, depends on latitude too:
# `weather.data.solar`.)
FORCINGS: tuple[str, ...] = (
    "year_progress_sin",
    "year_progress_cos",
    "day_progress_sin",
    "day_progress_cos",
)


def get(name: str) -> Variable:
    """The catalogue entry for a canonical or short name.

    Raises:
      KeyError: naming the variable and listing the catalogue.
    """
    if name in CATALOGUE:
        return CATALOGUE[name]
    if name in SHORT_NAMES:
        return CATALOGUE[SHORT_NAMES[name]]
    raise KeyError(f"unknown variable {name!r}; the catalogue has {sorted(CATALOGUE)}")


def by_role(role: Role) -> tuple[Variable, ...]:
    """All catalogue variables with the given role, in catalogue order."""
    return tuple(v for v in _CATALOGUE if v.role == role)


# The fields that the simulated archive provides and the default task uses.
SIMULATED_LEVEL_VARIABLES: tuple[str, ...] = (
    "geopotential",
    "temperature",
    "u_component_of_wind",
    "v_component_of_wind",
)
SIMULATED_SURFACE_VARIABLES: tuple[str, ...] = ("surface_pressure",)
SIMULATED_STATIC_VARIABLES: tuple[str, ...] = ("geopotential_at_surface",)
