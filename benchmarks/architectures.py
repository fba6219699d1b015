"""Skill per training minute of the backbone architectures; prints one JSON object.

Trains each candidate for the same wall-clock budget on the same windows (one after another, in
this process, so that both see the same machine) and reports its validation loss (the EDM
denoising loss on fixed windows and noise of a held-out period: lower is better) against training
time, plus its size and FLOPs per denoiser call. Example (the comparison in the README)::

    python benchmarks/architectures.py --archive data/era5sim/val.zarr \\
        --train-period 1990-01-01,1990-09-30 --val-period 1990-10-01,1990-12-31 --minutes 10

Candidates are named ``transformer`` and ``unet`` with their sizes set to about the same FLOPs
per call; ``--set arch.field=value`` overrides one (``--set unet.channels=[32,64,128]``).
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from weather.data.reader import open_archive
from weather.data.statistics import compute_statistics
from weather.model.backbone import SphereTransformerConfig, SphereUNetConfig
from weather.model.denoiser import ModelConfig
from weather.model.task import TaskConfig
from weather.model.train import TrainConfig, train

CANDIDATES: dict[str, Any] = {
    "transformer": SphereTransformerConfig(patch_size=4, d_model=256, num_layers=6, num_heads=8),
    "unet": SphereUNetConfig(channels=(32, 64, 128), bottleneck_attention_layers=1),
}


def flops_per_call(model_config: ModelConfig, lat: np.ndarray, lon: np.ndarray) -> float:
    """XLA's FLOP count of one backbone call for one sample (batch 1)."""
    from weather.model.backbone import build_backbone

    task = model_config.task
    module = build_backbone(model_config.backbone, lat, lon, task.n_state)
    x = jnp.zeros((1, lat.size, lon.size, task.n_state + task.n_conditioning), jnp.float32)
    c = jnp.zeros((1,), jnp.float32)
    params = jax.jit(module.init)(jax.random.PRNGKey(0), x, c)
    cost = jax.jit(module.apply).lower(params, x, c).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--train-period", required=True, help="START,END")
    parser.add_argument("--val-period", required=True, help="START,END")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per arch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--arch", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--set", action="append", default=[], metavar="ARCH.FIELD=VALUE")
    parser.add_argument("--run-dir", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()

    candidates = dict(CANDIDATES)
    for item in args.set:
        target, value = item.split("=", 1)
        arch, field = target.split(".", 1)
        parsed = ast.literal_eval(value)
        parsed = tuple(parsed) if isinstance(parsed, list) else parsed
        candidates[arch] = candidates[arch].__class__(
            **{**candidates[arch].__dict__, field: parsed}
        )

    ds = open_archive(args.archive)
    levels = tuple(int(x) for x in ds["level"].values)
    task = TaskConfig(levels=levels)
    names = [*task.level_variables, *task.surface_variables, *task.static_variables]
    ds = ds[names].load()
    train_period = tuple(args.train_period.split(","))
    val_period = tuple(args.val_period.split(","))
    stats = compute_statistics(
        ds, names, start=train_period[0], end=train_period[1], source=str(args.archive)
    )
    lat, lon = ds["latitude"].values, ds["longitude"].values
    results: dict[str, Any] = {}
    root = args.run_dir or Path(tempfile.mkdtemp(prefix="architectures-"))
    for arch in args.arch:
        model_config = ModelConfig(task=task, backbone=candidates[arch])
        # Enough steps that the budget, not the schedule, ends the run; a short EMA so that the
        # validated parameters follow the training within a few hundred steps.
        train_config = TrainConfig(
            steps=100_000,
            batch_size=args.batch_size,
            peak_learning_rate=args.lr,
            warmup_steps=200,
            ema_decay=0.99,
            log_every=50,
            validate_every=100,
            checkpoint_every=100_000,
        )
        t0 = time.perf_counter()
        train(
            run_dir=root / arch,
            model_config=model_config,
            train_config=train_config,
            train_data=ds,
            train_period=train_period,
            statistics=stats,
            validation_data=ds,
            validation_period=val_period,
            progress=False,
            stop_after_seconds=args.minutes * 60,
        )
        history = [json.loads(line) for line in (root / arch / "history.jsonl").open()]
        curve = [
            {"step": h["step"], "seconds": h["seconds"], "validation_loss": h["validation_loss"]}
            for h in history
            if "validation_loss" in h
        ]
        results[arch] = {
            "config": model_config.to_dict()["backbone"],
            "gflop_per_call_per_sample": flops_per_call(model_config, lat, lon) / 1e9,
            "steps": history[-1]["step"] if history else 0,
            "seconds_per_step": history[-1]["seconds"] / history[-1]["step"] if history else None,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "final_validation_loss": curve[-1]["validation_loss"] if curve else None,
            "validation_curve": curve,
        }
    print(
        json.dumps(
            {
                "archive": str(args.archive),
                "train_period": train_period,
                "val_period": val_period,
                "minutes_per_arch": args.minutes,
                "batch_size": args.batch_size,
                "machine": {"processor": platform.processor(), "cpus": jax.device_count()},
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
