"""A forecast's climate: area-weighted global statistics of fields, for drift diagnostics.

A model rolled out far beyond its skill should still produce weather that looks like the
atmosphere's: the same global mean (mass, mean temperature) and the same spatial variability
(the equator-pole contrast, the size of the eddies). These functions reduce fields ``[..., lat,
lon]`` to such numbers with exact cell-area weights, as plain numpy (they run on rolled-out chunks
as they come off the device).
"""

from __future__ import annotations

import numpy as np

from weather.data.grid import cell_area_weights


def _row_weights(latitude: np.ndarray) -> np.ndarray:
    """Cell-area weights ``[lat, 1]`` of mean 1 for ascending or descending latitudes."""
    lat = np.asarray(latitude, np.float64)
    order = np.argsort(lat)
    weights = np.empty_like(lat)
    weights[order] = cell_area_weights(lat[order])
    return weights[:, None]


def global_mean(field: np.ndarray, latitude: np.ndarray) -> np.ndarray:
    """Area-weighted mean over the last two dims ``[..., lat, lon]`` -> ``[...]`` (float64)."""
    x = np.asarray(field, np.float64)
    return (x * _row_weights(latitude)).mean(axis=(-2, -1))


def field_statistics(field: np.ndarray, latitude: np.ndarray) -> dict[str, np.ndarray]:
    """Global statistics of fields ``[..., lat, lon]``, each ``[...]`` (float64, field units).

    Returns:
      ``mean``: area-weighted mean; ``std``: area-weighted spatial standard deviation about it
      (``sqrt(mean(w (x - mean)^2))``, the whole field's variability: the equator-pole contrast
      plus eddies); ``min``, ``max``: extremes over the grid points.
    """
    x = np.asarray(field, np.float64)
    mean = global_mean(x, latitude)
    anomaly = x - mean[..., None, None]
    std = np.sqrt(global_mean(anomaly**2, latitude))
    return {"mean": mean, "std": std, "min": x.min(axis=(-2, -1)), "max": x.max(axis=(-2, -1))}


def zonal_mean(field: np.ndarray) -> np.ndarray:
    """Mean over longitude (the last dim): ``[..., lat, lon]`` -> ``[..., lat]``."""
    return np.asarray(field, np.float64).mean(axis=-1)
