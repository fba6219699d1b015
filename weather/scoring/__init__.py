"""Probabilistic verification of ensemble forecasts.

`weather.scoring.kernels` holds the per-point scores as pure jax functions over arrays;
`weather.scoring.metrics` applies them to xarray forecasts and truths and averages them with
cell-area weights. The xarray functions are re-exported here.
"""

from weather.scoring.metrics import (
    align_truth,
    area_weighted_mean,
    area_weights,
    brier,
    crps,
    energy_score,
    ensemble_mean_rmse,
    rank_histogram,
    spread_skill_ratio,
)

__all__ = [
    "align_truth",
    "area_weighted_mean",
    "area_weights",
    "brier",
    "crps",
    "energy_score",
    "ensemble_mean_rmse",
    "rank_histogram",
    "spread_skill_ratio",
]
