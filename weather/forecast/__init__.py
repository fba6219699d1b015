"""Forecasting with a trained model: load a checkpoint (`load`), run it from an analysis
(`run`).

Forecast layout (WeatherBench2 style, physical units, canonical names): dims
``member, init_time, lead_time, level, latitude, longitude`` for level fields and
``member, init_time, lead_time, latitude, longitude`` for surface fields; ``lead_time`` is a
timedelta (12 h, 24 h, ...), ``member`` carries ``standard_name: realization``.
"""

from weather.forecast.load import LoadedModel, check_param_shapes, load_forecaster
from weather.forecast.run import check_archive_fits, forecast, initial_states

__all__ = [
    "LoadedModel",
    "check_archive_fits",
    "check_param_shapes",
    "forecast",
    "initial_states",
    "load_forecaster",
]
