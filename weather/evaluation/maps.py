"""Single-forecast pictures for people and scripts: a map of one field and a meteogram (plume)
at one place. The service draws its ``map.png`` and ``meteogram.png`` with these.

Each function builds a `matplotlib.figure.Figure` without pyplot, so no global figure state is
shared and several threads can draw at once; `png_bytes` renders one. Values are shown as
`weather.evaluation.plots` maps them (geopotential as height in m, surface pressure in hPa,
everything else in its stored units), with the units on the colour bar or the value axis.

Coastlines are the 0.5 contour of the land fraction of the committed 1-degree orography asset
(``weather/assets/orography_1deg.nc``, ETOPO20-derived, land where the relief is above sea level;
the simulator reads its heights from the same file), so nothing is downloaded when drawing. Its
1-degree outline is much finer than the model's 5.625-degree grid, whose own orography would
outline only blocks of cells.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
import xarray as xr

from weather.evaluation.plots import _display

LAND_ASSET = "orography_1deg.nc"
COAST_LEVEL = 0.5  # land fraction of the outline
_PERCENT = 100.0


@dataclasses.dataclass(frozen=True)
class LandFraction:
    """The land fraction of 1-degree cells (read-only arrays).

    Attributes:
      latitude: cell centres, degrees north, ascending [h].
      longitude: cell centres, degrees east in [0, 360), ascending [w].
      fraction: [h, w] land fraction (0 ocean .. 1 land).
    """

    latitude: np.ndarray
    longitude: np.ndarray
    fraction: np.ndarray


@functools.lru_cache(maxsize=1)
def land_fraction() -> LandFraction:
    """The committed asset's land fraction (read once per process)."""
    path = resources.files("weather") / "assets" / LAND_ASSET
    with resources.as_file(path) as p, xr.open_dataset(p, engine="netcdf4") as ds:
        land = ds["land_fraction"].sortby("latitude").sortby("longitude")
        out = LandFraction(
            latitude=np.asarray(land["latitude"].values, np.float64),
            longitude=np.asarray(land["longitude"].values, np.float64) % 360.0,
            fraction=np.asarray(land.values, np.float32),
        )
    for array in (out.latitude, out.longitude, out.fraction):
        array.flags.writeable = False
    return out


def unwrapped_longitude(longitude: np.ndarray) -> np.ndarray:
    """Longitudes made increasing from the first one (a box across the dateline, e.g. 350, 355,
    0, 5, becomes 350, 355, 360, 365), so that they can be drawn as one axis."""
    lon = np.asarray(longitude, np.float64)
    return lon[0] + (lon - lon[0]) % 360.0 if lon.size else lon


def _edges(centres: np.ndarray) -> tuple[float, float]:
    half = abs(float(centres[1] - centres[0])) / 2 if centres.size > 1 else 0.5
    return float(centres.min()) - half, float(centres.max()) + half


def draw_coastlines(ax: Any, lon_range: tuple[float, float], lat_range: tuple[float, float]) -> Any:
    """Draw the land-sea outline (black) over ``ax`` within the given ranges (degrees; the
    longitudes may run past 360 or below 0, as `unwrapped_longitude` gives them). Returns the
    contour set."""
    land = land_fraction()
    lo, hi = lon_range
    # Copies of the globe shifted by whole turns, enough to cover [lo, hi].
    turns = range(int(np.floor(lo / 360.0)) - 1, int(np.floor(hi / 360.0)) + 1)
    lon = np.concatenate([land.longitude + 360.0 * k for k in turns])
    fraction = np.concatenate([land.fraction] * len(turns), axis=1)
    keep = (lon >= lo - 1.0) & (lon <= hi + 1.0)
    rows = (land.latitude >= lat_range[0] - 1.0) & (land.latitude <= lat_range[1] + 1.0)
    return ax.contour(
        lon[keep],
        land.latitude[rows],
        fraction[np.ix_(rows, keep)],
        levels=[COAST_LEVEL],
        colors="black",
        linewidths=0.6,
    )


def quantity_label(variable: str, level: int | None, long_name: str | None = None) -> str:
    """What a value axis or colour bar shows, without units: ``geopotential height at 500 hPa``,
    ``surface pressure``."""
    name = "geopotential height" if variable == "geopotential" else (long_name or variable)
    name = name.replace("_", " ")
    name = name[:1].lower() + name[1:] if name[1:2].islower() else name
    return f"{name} at {level} hPa" if level is not None else name


def field_map(
    field: xr.DataArray,
    *,
    variable: str,
    units: str,
    level: int | None,
    title: str,
    spread: bool = False,
    long_name: str | None = None,
    coastlines: bool = True,
) -> Any:
    """A map of one field with a colour bar (its units) and the coastlines.

    Args:
      field: ``[latitude, longitude]`` values in the variable's stored units (a member, the
        ensemble mean or the spread); longitudes may cross the dateline (a region).
      variable, units, level: what it is (level None for a surface field); units as stored
        (``m2 s-2``, ``Pa``, ``K``, ...), converted for display as the module docstring says.
      title: the figure's title (what, when).
      spread: an ensemble spread (a sequential colour map from 0) rather than values.
      long_name: the variable's long name for the colour bar (default: its name).
      coastlines: draw the land-sea outline.

    Returns:
      The `matplotlib.figure.Figure` (one map axes and its colour bar axes).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    field = field.transpose("latitude", "longitude")
    lat = np.asarray(field["latitude"].values, np.float64)
    lon = unwrapped_longitude(field["longitude"].values)
    order = np.argsort(lat)
    values, shown_units = _display(variable, field.assign_attrs(units=units))
    values = values[order]
    lat = lat[order]
    lon_range, lat_range = _edges(lon), _edges(lat)
    width = lon_range[1] - lon_range[0]
    height = lat_range[1] - lat_range[0]
    fig = Figure(figsize=(3.0 + 6.0 * min(1.0, width / height / 2.0), 4.0), layout="constrained")
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    if spread:
        cmap, vmin = "magma", 0.0
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    else:
        cmap = "viridis"
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    mesh = ax.pcolormesh(lon, lat, values, cmap=cmap, vmin=vmin, vmax=vmax, shading="nearest")
    if coastlines:
        draw_coastlines(ax, lon_range, lat_range)
    ax.set_xlim(*lon_range)
    ax.set_ylim(*lat_range)
    ax.set_aspect("equal")
    # A box across the dateline is drawn on unwrapped longitudes; its ticks say degrees east.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x % 360.0:g}"))
    ax.set_xlabel("longitude (degrees east)")
    ax.set_ylabel("latitude (degrees north)")
    ax.set_title(title, fontsize=10)
    what = quantity_label(variable, level, long_name)
    label = f"spread of {what}" if spread else what
    fig.colorbar(mesh, ax=ax, label=f"{label} ({shown_units})", shrink=0.8)
    return fig


def meteogram(
    members: xr.DataArray,
    *,
    variable: str,
    units: str,
    level: int | None,
    init_time: np.datetime64,
    title: str,
    band: Sequence[float] = (0.1, 0.9),
    long_name: str | None = None,
) -> Any:
    """An ensemble plume at one place: every member as a thin line, the ensemble mean, and the
    band between two quantiles (10-90 % by default), against valid time.

    Args:
      members: ``[member, lead_time]`` values in the variable's stored units; ``lead_time``
        timedeltas.
      variable, units, level: what they are (converted for display as the module says).
      init_time: the forecast's initial time (valid time = init_time + lead_time).
      title: the figure's title (where, from when).
      band: the lower and upper quantile of the shaded band (numpy's linear quantiles).
      long_name: the variable's long name for the value axis.

    Returns:
      The `matplotlib.figure.Figure` (one axes).
    """
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    lo_q, hi_q = band
    members = members.transpose("member", "lead_time")
    values, shown_units = _display(variable, members.assign_attrs(units=units))  # [M, S]
    leads = np.asarray(members["lead_time"].values).astype("timedelta64[ns]")
    valid = np.asarray(init_time).astype("datetime64[ns]") + leads
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    marker = "o" if valid.size == 1 else None
    for m, row in enumerate(values):
        ax.plot(
            valid,
            row,
            color="0.55",
            linewidth=0.6,
            marker=marker,
            markersize=2,
            label="members" if m == 0 else None,
        )
    ax.fill_between(
        valid,
        np.quantile(values, lo_q, axis=0),
        np.quantile(values, hi_q, axis=0),
        color="tab:blue",
        alpha=0.25,
        linewidth=0,
        label=f"{lo_q * _PERCENT:g}-{hi_q * _PERCENT:g} % of members",
    )
    ax.plot(valid, values.mean(axis=0), color="tab:blue", linewidth=2, marker=marker, label="mean")
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel("valid time (UTC)")
    ax.set_ylabel(f"{quantity_label(variable, level, long_name)} ({shown_units})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def png_bytes(fig: Any, dpi: int = 80) -> bytes:
    """The figure rendered as PNG (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    return out.getvalue()
