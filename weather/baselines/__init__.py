"""The forecasters the model is measured against, behind one interface shared with the model.

- `statistical`: persistence and the climatological ensemble, drawn from archives;
- `physics`: the simulator's own ensembles, the T21 physics ensemble (our ECMWF ENS stand-in)
  and the perfect-model ensemble;
- `interface`: `EnsembleForecaster` (what history a forecaster reads, how it forecasts one init)
  and its implementations, `DiffusionModel` included, which `weather.evaluation` runs alike.

Every one returns (or streams into a Zarr store) the forecast layout of `weather.data.layout`.
"""

from weather.baselines.interface import (
    Climatology,
    DiffusionModel,
    EnsembleForecaster,
    PerfectModel,
    Persistence,
    PhysicsEnsemble,
)
from weather.baselines.statistical import climatology_ensemble, persistence, whole_years

__all__ = [
    "Climatology",
    "DiffusionModel",
    "EnsembleForecaster",
    "PerfectModel",
    "Persistence",
    "PhysicsEnsemble",
    "climatology_ensemble",
    "persistence",
    "whole_years",
]
