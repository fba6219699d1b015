"""Validation losses of checkpoints, exactly as `weather train` reports them during training.

    python scripts/validate_checkpoint.py CKPT [CKPT ...] [--archive data/era5sim/val.zarr]

For each checkpoint: the EDM loss with training's noise-level distribution and at each fixed
noise level of its `TrainConfig.validation_sigmas`, over the same deterministic validation
windows, keys and batch size that training uses (`weather.model.train`), on the whole
validation archive. This is how a candidate (an EMA snapshot of a long run) is compared with the
shipped checkpoint before it replaces it: on validation, never on test. Prints one JSON object
per checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from weather.data.reader import open_archive
from weather.forecast.load import load_forecaster
from weather.model.checkpoint import load_checkpoint
from weather.model.task import static_channels
from weather.model.train import TrainConfig, _validation


def validation_losses(checkpoint: Path, archive: Path) -> dict[str, float]:
    """``{"validation_loss": L, "validation_sigma_S": L_S, ...}`` of ``checkpoint``'s EMA
    parameters on ``archive`` (its whole period)."""
    loaded = load_forecaster(checkpoint)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = load_checkpoint(checkpoint)["configs"]["train"]
    config = TrainConfig(**{k: v for k, v in saved.items() if k in fields})
    data = open_archive(archive)
    fc = loaded.forecaster
    task = fc.task
    names = [*task.level_variables, *task.surface_variables, *task.static_variables]
    data = data[names].sel(level=list(task.levels)).load()
    period = (data["time"].values[0], data["time"].values[-1])
    static_n = fc.normalize_static(jnp.asarray(static_channels(data, task)))
    evaluate = _validation(fc, config, data, period, static_n, jax.device_put)
    assert evaluate is not None
    return {k: round(v, 5) for k, v in evaluate(loaded.params).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--archive", type=Path, default=Path("data/era5sim/val.zarr"))
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        print(
            json.dumps(
                {"checkpoint": str(checkpoint), **validation_losses(checkpoint, args.archive)}
            )
        )


if __name__ == "__main__":
    main()
