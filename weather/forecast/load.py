"""Loading a forecaster: checkpoint -> model, parameters and its sampler.

`load_forecaster` rebuilds the model from a checkpoint (`weather.model.checkpoint`), with an
optional `SamplerOverride` parsed where the user gave it (command line, service settings).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

from weather.model.checkpoint import load_checkpoint
from weather.model.denoiser import Forecaster, ModelConfig
from weather.model.sampler import SamplerOverride
from weather.model.task import Normalization


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    forecaster: Forecaster
    params: Any
    metadata: dict[str, Any]
    path: str


def load_forecaster(path: str | Path, sampler: SamplerOverride | None = None) -> LoadedModel:
    """Rebuild a forecaster and its (EMA) parameters from a checkpoint file.

    Args:
      path: the checkpoint.
      sampler: changes to the checkpoint's sampler (None: its own); the forecaster samples with
        the result everywhere (`Forecaster.sample_step`, rollouts, forecasts' attributes).
    """
    saved = load_checkpoint(path)
    configs = saved["configs"]
    model_config = ModelConfig.from_dict(configs["model"])
    if sampler is not None:
        model_config = dataclasses.replace(
            model_config, sampler=sampler.apply(model_config.sampler)
        )
    norm = Normalization.from_dict(saved["normalization"])
    grid = configs["grid"]
    forecaster = Forecaster(
        model_config, norm, np.asarray(grid["latitude"]), np.asarray(grid["longitude"])
    )
    import jax

    template = forecaster.param_shapes()
    params = serialization.from_state_dict(template, saved["params"])
    check_param_shapes(template, params, path)
    return LoadedModel(forecaster, jax.device_put(params), saved["metadata"], str(path))


def check_param_shapes(template: Any, params: Any, path: str | Path) -> None:
    """Raise `ValueError` naming the first parameter whose shape differs from the model's."""
    import jax

    want = dict(jax.tree_util.tree_leaves_with_path(template))
    for key, value in jax.tree_util.tree_leaves_with_path(params):
        expected = want.get(key)
        shape = tuple(np.shape(value))
        if expected is None or tuple(expected.shape) != shape:
            name = jax.tree_util.keystr(key)
            raise ValueError(
                f"checkpoint {path}: parameter {name} has shape {shape}, but the model's "
                f"config makes {None if expected is None else tuple(expected.shape)}"
            )


__all__ = ["LoadedModel", "check_param_shapes", "load_forecaster"]
