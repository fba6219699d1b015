"""Probabilistic verification of ensemble forecasts.

`weather.scoring.kernels` holds the per-point scores as pure jax functions over arrays;
`weather.scoring.metrics` applies them to xarray forecasts and truths and averages them with
cell-area weights, globally or over the regions of `weather.scoring.regions` (WeatherBench2's and
lat-lon boxes); `weather.scoring.climatology` gives the climatological mean that the anomaly
correlation needs. The xarray functions are re-exported here.
"""

from weather.scoring.climatology import climatological_mean
from weather.scoring.metrics import (
    align_truth,
    anomaly_correlation,
    area_weighted_mean,
    area_weights,
    brier,
    crps,
    energy_score,
    ensemble_mean_rmse,
    rank_histogram,
    select_region,
    spread_skill_ratio,
)
from weather.scoring.regions import REGIONS, Region

__all__ = [
    "REGIONS",
    "Region",
    "align_truth",
    "anomaly_correlation",
    "area_weighted_mean",
    "area_weights",
    "brier",
    "climatological_mean",
    "crps",
    "energy_score",
    "ensemble_mean_rmse",
    "rank_histogram",
    "select_region",
    "spread_skill_ratio",
]
