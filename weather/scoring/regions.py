"""Regions that scores are averaged over, as WeatherBench2 defines them, and lat-lon boxes.

A `Region` is a set of latitude bands (degrees north) times a longitude range (degrees east,
eastward from its western edge, so a box may cross the 0/360 meridian); a grid point belongs
to it when its latitude lies in one of the bands and its longitude in the range. Edges are
inclusive, as WeatherBench2's ``SliceRegion`` (``Dataset.sel`` with a label slice) and
``ExtraTropicalRegion`` (``|latitude| >= 20``) are: a row exactly on 20 deg belongs to the tropics
*and* to the extra-tropics. Edges are compared with a tolerance of `EDGE_TOLERANCE_DEG`, so a row
meant to lie on an edge (20 deg on the 0.25 deg ERA5 grid) counts as inside whatever the
rounding of its coordinate. The 5.625 deg grid has no row within 0.3 deg of +-20.

Averages over a region keep the cell-area weights of the whole grid, restricted to the region's
rows (WeatherBench2's ``_spatial_average``): a region's edge rows are cells of the grid, not
polar caps. `weather.scoring.metrics` applies the regions; this module only says which points
belong.

Named regions (`REGIONS`), from WeatherBench2's ``scripts/evaluate.py``:

- ``global``: every point;
- ``tropics``: latitudes -20..20;
- ``extra-tropics``: -90..-20 and 20..90;
- ``extra-tropics-north``: 20..90 (WeatherBench2's ``northern-hemisphere``);
- ``extra-tropics-south``: -90..-20 (WeatherBench2's ``southern-hemisphere``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

EDGE_TOLERANCE_DEG = 1e-6


@dataclasses.dataclass(frozen=True, kw_only=True)
class Region:
    """A set of latitude bands times a longitude range.

    Attributes:
      name: the label of the region's scores (a ``region`` coordinate value).
      latitudes: ``((south, north), ...)`` bands in degrees north, edges inclusive.
      longitudes: ``(west, east)`` in degrees east (-180..360), taken eastward from ``west``:
        ``(350, 20)`` crosses the 0/360 meridian, ``(0, 360)`` is every longitude; None: every
        longitude.
    """

    name: str
    latitudes: tuple[tuple[float, float], ...] = ((-90.0, 90.0),)
    longitudes: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("region: needs a name")
        if not self.latitudes:
            raise ValueError(f"region {self.name!r}: needs at least one latitude band")
        for south, north in self.latitudes:
            if not (-90.0 <= south <= north <= 90.0):
                raise ValueError(
                    f"region {self.name!r}: latitude band ({south:g}, {north:g}) must satisfy "
                    "-90 <= south <= north <= 90"
                )
        if self.longitudes is not None:
            for edge in self.longitudes:
                if not (math.isfinite(edge) and -180.0 <= edge <= 360.0):
                    raise ValueError(
                        f"region {self.name!r}: longitude {edge:g} must lie in -180..360"
                    )

    @classmethod
    def box(cls, lat_min: float, lat_max: float, lon_min: float, lon_max: float) -> Region:
        """A lat-lon box (degrees), named ``box(lat_min,lat_max,lon_min,lon_max)``.

        ``lon_min`` east of ``lon_max`` (e.g. 350, 20) makes a box across the 0/360 meridian.
        """
        values = (lat_min, lat_max, lon_min, lon_max)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"box: {values} must be finite numbers")
        name = "box(" + ",".join(f"{v:g}" for v in values) + ")"
        return cls(name=name, latitudes=((lat_min, lat_max),), longitudes=(lon_min, lon_max))

    @property
    def every_longitude(self) -> bool:
        return self.longitudes is None or self.longitudes[1] - self.longitudes[0] >= 360.0

    def describe(self) -> str:
        """The region in words: ``latitude -20..20, every longitude``."""
        bands = " and ".join(f"{s:g}..{n:g}" for s, n in self.latitudes)
        if self.every_longitude:
            return f"latitude {bands}, every longitude"
        assert self.longitudes is not None
        west, east = self.longitudes
        return f"latitude {bands}, longitude {west:g}..{east:g} eastward"

    def latitude_mask(self, latitude: np.ndarray) -> np.ndarray:
        """``[lat]`` bool: rows (degrees north, any order) in one of the bands."""
        lat = np.asarray(latitude, np.float64)
        inside = np.zeros(lat.shape, bool)
        for south, north in self.latitudes:
            inside |= (lat >= south - EDGE_TOLERANCE_DEG) & (lat <= north + EDGE_TOLERANCE_DEG)
        return inside

    def longitude_mask(self, longitude: np.ndarray) -> np.ndarray:
        """``[lon]`` bool: columns (degrees east, any range or order) in the longitude range."""
        lon = np.asarray(longitude, np.float64)
        if self.every_longitude:
            return np.ones(lon.shape, bool)
        assert self.longitudes is not None
        west, east = self.longitudes
        span = east - west
        # Eastward from the western edge: a negative span wraps (350 -> 20 spans 30 degrees).
        width = span if span >= 0 else span % 360.0
        east_of_west = (lon - west) % 360.0
        # A point a hair west of the western edge is at ~360 - tiny; count it as on the edge.
        on_west_edge = east_of_west >= 360.0 - EDGE_TOLERANCE_DEG
        return (east_of_west <= width + EDGE_TOLERANCE_DEG) | on_west_edge

    def indices(self, latitude: np.ndarray, longitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the rows ``[h]`` and columns ``[w]`` inside the region, ascending.

        Raises:
          ValueError: no row or no column of the grid lies inside (naming the region).
        """
        rows = np.flatnonzero(self.latitude_mask(latitude))
        columns = np.flatnonzero(self.longitude_mask(longitude))
        if rows.size == 0 or columns.size == 0:
            raise ValueError(
                f"region {self.name!r} ({self.describe()}) holds no grid point: "
                f"{rows.size} of {np.size(latitude)} rows and {columns.size} of "
                f"{np.size(longitude)} columns lie inside"
            )
        return rows, columns

    def covers(self, latitude: np.ndarray, longitude: np.ndarray) -> bool:
        """Whether every point of the grid lies inside (so averages need no selection)."""
        return bool(self.latitude_mask(latitude).all() and self.longitude_mask(longitude).all())


GLOBAL = Region(name="global")
TROPICS = Region(name="tropics", latitudes=((-20.0, 20.0),))
EXTRA_TROPICS = Region(name="extra-tropics", latitudes=((-90.0, -20.0), (20.0, 90.0)))
EXTRA_TROPICS_NORTH = Region(name="extra-tropics-north", latitudes=((20.0, 90.0),))
EXTRA_TROPICS_SOUTH = Region(name="extra-tropics-south", latitudes=((-90.0, -20.0),))

REGIONS: dict[str, Region] = {
    r.name: r for r in (GLOBAL, TROPICS, EXTRA_TROPICS, EXTRA_TROPICS_NORTH, EXTRA_TROPICS_SOUTH)
}
# The four that partition WeatherBench2's headline scores: the globe, the tropics and each
# hemisphere's extra-tropics.
HEADLINE_REGIONS: tuple[str, ...] = (
    "global",
    "tropics",
    "extra-tropics-north",
    "extra-tropics-south",
)


def named_regions(names: str | Sequence[str]) -> list[Region]:
    """Regions by name, in the order given: a comma-separated string or a sequence of names.

    Raises:
      ValueError: naming the unknown names and the known ones, or repeated names.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    unknown = [n for n in names if n not in REGIONS]
    if unknown:
        raise ValueError(f"regions: unknown {unknown}; choose from {list(REGIONS)}")
    if not names:
        raise ValueError(f"regions: name at least one of {list(REGIONS)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"regions: {repeated} named more than once")
    return [REGIONS[n] for n in names]


def parse_box(text: str) -> Region:
    """A box from ``"lat_min,lat_max,lon_min,lon_max"`` (degrees; see `Region.box`).

    Raises:
      ValueError: not four numbers, or numbers out of range (naming them).
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError(
            f"box: {text!r} must be four numbers lat_min,lat_max,lon_min,lon_max (degrees)"
        )
    return Region.box(*values)


__all__ = [
    "EDGE_TOLERANCE_DEG",
    "EXTRA_TROPICS",
    "EXTRA_TROPICS_NORTH",
    "EXTRA_TROPICS_SOUTH",
    "GLOBAL",
    "HEADLINE_REGIONS",
    "REGIONS",
    "TROPICS",
    "Region",
    "named_regions",
    "parse_box",
]
