"""Latitude-longitude grids: cell bounds, cell areas and conservative regridding.

Grids are described by their cell-centre coordinates in degrees (latitude ascending, longitude
ascending in [0, 360)). Latitude cell bounds are exact for the two families our archives use:

- equiangular grids (with or without pole rows): bounds half-way between centres, clipped to the
  poles;
- Gaussian grids: bounds where the cumulative Gauss-Legendre weights put them, so that each cell's
  area equals its quadrature weight exactly (sin(bound) = -1 + cumulative weight).

Conservative regridding is separable on lat-lon grids: the overlap fraction of each target cell
with each source cell factorises into a latitude part (in sin(latitude), i.e. area) and a
longitude part (periodic). The regridder is a pair of small dense matrices applied as
`A_lat @ field @ A_lon.T`, which preserves area integrals and constants exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_GAUSSIAN_TOLERANCE_DEG = 1e-6


def is_equiangular(latitude: np.ndarray, rtol: float = 1e-6) -> bool:
    """Whether `latitude` (degrees, ascending) is evenly spaced."""
    lat = np.asarray(latitude, dtype=np.float64)
    if lat.size < 2:
        return True
    d = np.diff(lat)
    return bool(np.allclose(d, d[0], rtol=rtol, atol=1e-9))


def gaussian_latitudes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre latitudes (degrees, ascending) and weights (summing to 2) for `n` rows."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return np.rad2deg(np.arcsin(nodes)), weights


def is_gaussian(latitude: np.ndarray) -> bool:
    """Whether `latitude` (degrees, ascending) are the Gauss-Legendre latitudes of their size."""
    lat = np.asarray(latitude, dtype=np.float64)
    expected, _ = gaussian_latitudes(lat.size)
    return bool(np.allclose(lat, expected, atol=_GAUSSIAN_TOLERANCE_DEG * 100))


def latitude_bounds(latitude: np.ndarray) -> np.ndarray:
    """Cell bounds in degrees, shape [n + 1], for ascending cell-centre latitudes [n].

    Gaussian grids get the bounds implied by their quadrature weights; any other grid (equiangular
    or irregular) gets bounds half-way between centres. The outermost bounds are the poles.
    """
    lat = np.asarray(latitude, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 1:
        raise ValueError(f"latitude must be a non-empty 1-D array, got shape {lat.shape}")
    if np.any(np.diff(lat) <= 0):
        raise ValueError("latitude must be strictly ascending")
    if not is_equiangular(lat) and is_gaussian(lat):
        _, weights = gaussian_latitudes(lat.size)
        sin_bounds = np.clip(-1.0 + np.concatenate([[0.0], np.cumsum(weights)]), -1.0, 1.0)
        sin_bounds[-1] = 1.0
        return np.rad2deg(np.arcsin(sin_bounds))
    mid = 0.5 * (lat[1:] + lat[:-1])
    return np.concatenate([[-90.0], mid, [90.0]])


def longitude_bounds(longitude: np.ndarray) -> np.ndarray:
    """Cell bounds in degrees, shape [n + 1], for ascending, periodic cell-centre longitudes [n].

    Bounds lie half-way between neighbours, the first one half-way between the last centre
    (minus 360) and the first.
    """
    lon = np.asarray(longitude, dtype=np.float64)
    if lon.ndim != 1 or lon.size < 1:
        raise ValueError(f"longitude must be a non-empty 1-D array, got shape {lon.shape}")
    if lon.size == 1:
        return np.array([lon[0] - 180.0, lon[0] + 180.0])
    ext = np.concatenate([[lon[-1] - 360.0], lon, [lon[0] + 360.0]])
    return 0.5 * (ext[1:] + ext[:-1])


def cell_area_weights(latitude: np.ndarray) -> np.ndarray:
    """Relative area of a grid cell in each latitude row, shape [lat], mean 1 over rows.

    Proportional to sin(upper bound) - sin(lower bound), which is exact for both equiangular
    and Gaussian grids (for Gaussian grids it equals the quadrature weight).
    """
    bounds = np.deg2rad(latitude_bounds(latitude))
    w = np.diff(np.sin(bounds))
    return w / w.mean()


def _overlap_1d(target_bounds: np.ndarray, source_bounds: np.ndarray) -> np.ndarray:
    """Overlap lengths [n_target, n_source] between two sets of 1-D intervals."""
    lo = np.maximum(target_bounds[:-1, None], source_bounds[None, :-1])
    hi = np.minimum(target_bounds[1:, None], source_bounds[None, 1:])
    return np.maximum(hi - lo, 0.0)


def latitude_regrid_matrix(source_lat: np.ndarray, target_lat: np.ndarray) -> np.ndarray:
    """Conservative latitude regridding weights [n_target, n_source]; rows sum to 1.

    Overlaps are measured in sin(latitude), so the weights are area fractions.
    """
    s = np.sin(np.deg2rad(latitude_bounds(source_lat)))
    t = np.sin(np.deg2rad(latitude_bounds(target_lat)))
    overlap = _overlap_1d(t, s)
    return overlap / overlap.sum(axis=1, keepdims=True)


def longitude_regrid_matrix(source_lon: np.ndarray, target_lon: np.ndarray) -> np.ndarray:
    """Conservative periodic longitude regridding weights [n_target, n_source]; rows sum to 1."""
    s = longitude_bounds(source_lon)
    t = longitude_bounds(target_lon)
    # Shift copies of the source by -360, 0, +360 degrees so that wrapped overlaps count.
    overlap = np.sum([_overlap_1d(t, s + shift) for shift in (-360.0, 0.0, 360.0)], axis=0)
    return overlap / overlap.sum(axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class ConservativeRegridder:
    """Area-conservative regridding between two lat-lon grids.

    Attributes:
      lat_matrix: [target_lat, source_lat] area fractions.
      lon_matrix: [target_lon, source_lon] length fractions.
    """

    lat_matrix: np.ndarray
    lon_matrix: np.ndarray

    @classmethod
    def build(
        cls,
        source_lat: np.ndarray,
        source_lon: np.ndarray,
        target_lat: np.ndarray,
        target_lon: np.ndarray,
    ) -> ConservativeRegridder:
        """Regridder from the source grid's cell centres to the target grid's (degrees)."""
        return cls(
            lat_matrix=latitude_regrid_matrix(source_lat, target_lat),
            lon_matrix=longitude_regrid_matrix(source_lon, target_lon),
        )

    def __call__(self, field):
        """Regrid the last two axes `[..., lat, lon]` (numpy or jax arrays)."""
        out = self.lat_matrix.astype(field.dtype) @ field
        return out @ self.lon_matrix.T.astype(field.dtype)


def equiangular_grid(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (degrees) of an equiangular grid without pole rows, as WeatherBench2's.

    For (32, 64): latitudes -87.1875 .. 87.1875 and longitudes 0 .. 354.375 every 5.625 degrees.
    """
    dlat = 180.0 / n_lat
    lat = -90.0 + dlat * (np.arange(n_lat) + 0.5)
    lon = 360.0 / n_lon * np.arange(n_lon)
    return lat, lon
