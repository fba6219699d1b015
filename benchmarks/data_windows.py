"""Training-window throughput of the data loader, and its share of a real training step.

Usage::

    python benchmarks/data_windows.py                      # synthetic archive in a temp dir
    python benchmarks/data_windows.py --archive PATH.zarr  # a canonical archive of your own
    python benchmarks/data_windows.py --no-train           # the loader alone (under a minute)

The synthetic archive is the default task's shape: a 32 x 64 (5.625 deg) grid, 13 levels, the four
level fields and surface pressure of ``weather.data.variables`` (float32 noise), 6-hourly, chunked
one time per chunk as ARCO-ERA5 is. Prints one JSON object:

- ``results``: the loader alone. Each read path (``READ_PATHS``: the zarr backend indexed
  lazily; dask arrays on the store's chunks; the fields loaded into memory first, as ``weather
  train`` does by default; and the archive opened as ``weather train --stream`` opens it) is timed
  at batch sizes 1, 8 and ``--batch-size`` with a consumer that does nothing, so the number is
  the loader's own ceiling.
- ``training``: the training step of the shipped checkpoint's architecture and optimiser
  (``weather/assets/checkpoint.msgpack``: configs, normalisation and parameters; their values do
  not matter for timing) at ``--batch-size``, on the same archive, through the project's own
  jitted step (``weather.model.train.make_train_step``). ``loops``, per read path in
  ``--train-read-paths``: ``feed_alone_seconds_per_batch``, the training feed
  (``weather.model.train.device_batches``: read, stack into channels, copy to the device) with a
  consumer that does nothing; then steps fed by that same prefetching feed exactly as
  ``weather.model.train.train`` feeds them, the loop's wall time split into waiting in ``next()``
  for a batch and the step (to the loss on the host, as ``train`` reads it); then, at once, steps
  alone on batches already on the device (``step_alone_seconds_per_step``; ``step_alone`` pools
  these blocks). ``loader_wait_fraction`` = wait / loop time and ``loader_over_step`` =
  feed-alone seconds per batch / step-alone seconds; the targets are below 0.05. On a CPU the
  prefetch thread runs on the cores the step uses, so ``step_slowdown_in_loop`` (step time in the
  loop / step alone) is reported too.

The compilation of the step (a minute or two on two CPU cores) is excluded from every number and
reported as ``compile_seconds``; with training the whole run takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from flax import serialization

import weather
from weather.data.reader import load_in_place, open_archives
from weather.data.variables import (
    SIMULATED_LEVEL_VARIABLES,
    SIMULATED_STATIC_VARIABLES,
    SIMULATED_SURFACE_VARIABLES,
    WB2_LEVELS,
)
from weather.data.windows import WindowConfig, Windows
from weather.forecast import check_param_shapes
from weather.model.checkpoint import load_checkpoint
from weather.model.denoiser import Forecaster, ModelConfig
from weather.model.task import Normalization, static_channels
from weather.model.train import (
    TrainConfig,
    batch_arrays,
    device_batches,
    make_train_step,
    task_windows,
)

READ_PATHS = {
    "zarr-lazy": "xr.open_zarr(chunks=None): one orthogonal zarr read per variable per batch",
    "dask": "xr.open_zarr(chunks={}): dask arrays on the store's chunks, one compute per batch",
    "memory": "the fields read into numpy first (load_in_place), as `weather train` does",
    "stream": "open_archives([path]): dask, its default 'auto' chunks, as `weather train --stream`",
}
SHIPPED_CHECKPOINT = Path(weather.__file__).parent / "assets" / "checkpoint.msgpack"


def write_synthetic(path: Path, n_times: int, seed: int) -> None:
    """A canonical 6-hourly archive of float32 noise, written a block of times at a time."""
    rng = np.random.default_rng(seed)
    n_lat, n_lon, levels = 32, 64, list(WB2_LEVELS)
    coords = {
        "time": np.datetime64("2000-01-01T00", "ns") + np.arange(n_times) * np.timedelta64(6, "h"),
        "level": levels,
        "latitude": -87.1875 + 5.625 * np.arange(n_lat),
        "longitude": 5.625 * np.arange(n_lon),
    }
    static = xr.Dataset(
        {
            name: (("latitude", "longitude"), rng.standard_normal((n_lat, n_lon), np.float32))
            for name in SIMULATED_STATIC_VARIABLES
        },
        coords={k: coords[k] for k in ("latitude", "longitude")},
    )
    block = 64
    for first in range(0, n_times, block):
        times = coords["time"][first : first + block]
        n = len(times)
        data = {
            name: (
                ("time", "level", "latitude", "longitude"),
                rng.standard_normal((n, len(levels), n_lat, n_lon), np.float32),
            )
            for name in SIMULATED_LEVEL_VARIABLES
        }
        data |= {
            name: (
                ("time", "latitude", "longitude"),
                rng.standard_normal((n, n_lat, n_lon), np.float32),
            )
            for name in SIMULATED_SURFACE_VARIABLES
        }
        part = xr.Dataset(data, coords={**coords, "time": times}).chunk({"time": 1})
        if first == 0:
            part.merge(static).to_zarr(path, mode="w", consolidated=False)
        else:
            part.to_zarr(path, append_dim="time", consolidated=False)


def measure(ds: xr.Dataset, config: WindowConfig, budget_s: float) -> dict[str, float]:
    """Samples per second over as many batches as fit in ``budget_s`` after one warm-up batch."""
    source = Windows(ds, config)
    with source.iterate(epochs=None) as batches:
        next(batches)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < budget_s:
            next(batches)
            n += 1
        elapsed = time.perf_counter() - start
    return {
        "batch_size": config.batch_size,
        "batches": n,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(n * config.batch_size / elapsed, 1),
        "seconds_per_batch": round(elapsed / n, 4),
    }


def open_read_path(path: Path, read_path: str) -> xr.Dataset:
    """The archive opened as ``read_path`` reads it (see ``READ_PATHS``)."""
    if read_path == "zarr-lazy":
        return xr.open_zarr(path, chunks=None, consolidated=False)
    if read_path == "stream":
        return open_archives([path])
    ds = xr.open_zarr(path, chunks={}, consolidated=False)
    return load_in_place(ds) if read_path == "memory" else ds


class Trainer:
    """The shipped checkpoint's model and optimiser on an archive's grid, with its training state.

    Everything is ``weather.model.train.train``'s: the same forecaster, jitted step (parameters,
    EMA and optimiser state donated), per-step key, static fields and prefetched batch feed.
    """

    def __init__(
        self, dataset: xr.Dataset, checkpoint: Path, batch_size: int, prefetch: int
    ) -> None:
        saved = load_checkpoint(checkpoint)
        configs = saved["configs"]
        self.model_config = ModelConfig.from_dict(configs["model"])
        self.train_config = TrainConfig(
            **{**configs["train"], "batch_size": batch_size, "prefetch": prefetch}
        )
        lat, lon = dataset["latitude"].values, dataset["longitude"].values
        self.forecaster = Forecaster(
            self.model_config, Normalization.from_dict(saved["normalization"]), lat, lon
        )
        template = self.forecaster.param_shapes()
        try:
            params = serialization.from_state_dict(template, saved["params"])
            check_param_shapes(template, params, checkpoint)
            self.parameters_from = "checkpoint"
        except ValueError:  # another grid can change some shapes: train from scratch then
            params = self.forecaster.init_params(jax.random.PRNGKey(0))
            self.parameters_from = "fresh initialisation"
        params = jax.device_put(params)
        self.params = params
        # A copy: the step donates both buffers, which must therefore be distinct.
        self.ema = jax.tree_util.tree_map(jnp.copy, params)
        self.opt_state = self.train_config.optimizer().init(params)
        self.step_number = 0
        self.key = jax.random.PRNGKey(self.train_config.seed)
        self.step_fn = make_train_step(self.forecaster, self.train_config)
        self.static_n = self.forecaster.normalize_static(
            jnp.asarray(static_channels(dataset, self.forecaster.task))
        )

    def windows(self, dataset: xr.Dataset, period: tuple[Any, Any]) -> Windows:
        """The task's windows over ``period``, as ``train`` builds them."""
        config = self.train_config
        return task_windows(
            dataset, self.model_config.task, period, config.batch_size, seed=config.seed
        )

    def batches(self, windows: Windows) -> Iterator[dict[str, jax.Array]]:
        """The step's device arrays from step 0 on, prefetched as ``train`` prefetches them."""
        return device_batches(windows, self.forecaster, 0, self.train_config.prefetch)

    def step(self, arrays: dict[str, jax.Array]) -> float:
        """One optimiser step; returns the loss, read on the host as ``train`` reads it."""
        step_key = jax.random.fold_in(jax.random.fold_in(self.key, 1), self.step_number)
        self.params, self.ema, self.opt_state, loss, _ = self.step_fn(
            self.params,
            self.ema,
            self.opt_state,
            step_key,
            arrays,
            self.static_n,
            jnp.asarray(self.step_number, jnp.int32),
        )
        self.step_number += 1
        return float(loss)


def ready_batches(trainer: Trainer, windows: Windows) -> list[dict[str, jax.Array]]:
    """Two batches already on the device, made as the training feed makes them."""
    order = windows.epoch_batches(0)
    return [
        jax.device_put(batch_arrays(windows.load(order[i]), trainer.forecaster)) for i in (0, 1)
    ]


def compile_step(trainer: Trainer, ready: list[dict[str, jax.Array]]) -> float:
    """Seconds of the first step (compilation and one run); one more step leaves it warm."""
    start = time.perf_counter()
    trainer.step(ready[0])
    seconds = time.perf_counter() - start
    trainer.step(ready[1])  # the first timed step must not pay for first-run allocations
    return seconds


def measure_step_alone(
    trainer: Trainer, ready: list[dict[str, jax.Array]], steps: int, budget_s: float
) -> list[float]:
    """Seconds of each step on batches already on the device (``steps`` or ``budget_s``)."""
    times: list[float] = []
    while len(times) < steps and sum(times) < budget_s:
        t0 = time.perf_counter()
        trainer.step(ready[len(times) % 2])
        times.append(time.perf_counter() - t0)
    return times


def measure_feed_alone(trainer: Trainer, windows: Windows, budget_s: float) -> float:
    """Seconds per batch of the training feed with a consumer that does nothing."""
    batches = trainer.batches(windows)
    try:
        next(batches)  # starts the thread; the first batch is the same start-up cost as below
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < budget_s:
            next(batches)
            n += 1
        return (time.perf_counter() - start) / n
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def measure_training_loop(
    trainer: Trainer, windows: Windows, steps: int, warmup: int, budget_s: float
) -> dict[str, float]:
    """``train``'s loop body timed in two parts: waiting in ``next()`` for a batch, and the step.

    The first ``warmup`` iterations are left out: the first ``next()`` waits for the prefetch
    thread's first batch, a start-up cost rather than the loop's steady state.
    """
    batches = trainer.batches(windows)
    wait, step = [], []
    try:
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            arrays = next(batches)
            t1 = time.perf_counter()
            trainer.step(arrays)
            t2 = time.perf_counter()
            if i >= warmup:
                wait.append(t1 - t0)
                step.append(t2 - t1)
                if sum(wait) + sum(step) >= budget_s:
                    break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    total = sum(wait) + sum(step)
    n = len(step)
    return {
        "steps": n,
        "seconds": round(total, 3),
        "seconds_per_step": round(total / n, 4),
        "wait_seconds_per_step": round(sum(wait) / n, 4),
        "max_wait_seconds": round(max(wait), 4),
        "step_seconds_per_step": round(sum(step) / n, 4),
        "loader_wait_fraction": round(sum(wait) / total, 4),
    }


def measure_training(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The ``training`` section of the report (see the module docstring).

    Each loop is followed at once by steps alone, and ratios use that adjacent block: the load of
    a shared machine drifts by tens of percent within minutes, more than the effects measured.
    """
    datasets = {read_path: open_read_path(path, read_path) for read_path in args.train_read_paths}
    first = datasets[args.train_read_paths[0]]
    times = first["time"].values
    period = (times[0], times[-1])
    trainer = Trainer(first, args.checkpoint, args.batch_size, args.prefetch)
    ready = ready_batches(trainer, trainer.windows(first, period))
    compile_s = compile_step(trainer, ready)
    loops, alone_all = {}, []
    for read_path, ds in datasets.items():
        windows = trainer.windows(ds, period)
        feed_s = measure_feed_alone(trainer, windows, args.budget)
        loop = measure_training_loop(trainer, windows, args.steps, args.warmup, args.train_budget)
        alone = measure_step_alone(trainer, ready, args.steps, args.train_budget / 2)
        alone_all += alone
        alone_s = float(np.mean(alone))
        loop |= {
            "step_alone_steps": len(alone),
            "step_alone_seconds_per_step": round(alone_s, 4),
            "step_slowdown_in_loop": round(loop["step_seconds_per_step"] / alone_s, 3),
            "feed_alone_seconds_per_batch": round(feed_s, 4),
            "loader_over_step": round(feed_s / alone_s, 4),
        }
        loops[read_path] = loop
    backbone = trainer.model_config.backbone
    return {
        "checkpoint": str(args.checkpoint),
        "backbone": type(backbone).__name__,
        "channels": list(getattr(backbone, "channels", ())),
        "parameters": trainer.forecaster.count_params(trainer.params),
        "parameters_from": trainer.parameters_from,
        "batch_size": args.batch_size,
        "prefetch": trainer.train_config.prefetch,
        "jax_backend": jax.default_backend(),
        "compile_seconds": round(compile_s, 1),
        "step_alone": {
            "steps": len(alone_all),
            "seconds_per_step": round(float(np.mean(alone_all)), 4),
            "median_seconds_per_step": round(float(np.median(alone_all)), 4),
        },
        "loops": loops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, help="canonical zarr archive (default: synthetic)")
    parser.add_argument(
        "--times", type=int, default=600, help="synthetic times (6-hourly; 600 = 150 days)"
    )
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument(
        "--prefetch", type=int, default=2, help="batches loaded ahead (loader and training)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-train", action="store_true", help="time the loader alone")
    parser.add_argument(
        "--checkpoint", type=Path, default=SHIPPED_CHECKPOINT, help="architecture to train"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="training windows per step")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per loop")
    parser.add_argument("--warmup", type=int, default=1, help="untimed loop iterations first")
    parser.add_argument(
        "--train-budget",
        type=float,
        default=20.0,
        help="seconds at most per timed loop (and half of it for the steps alone after it)",
    )
    parser.add_argument(
        "--train-read-paths",
        type=lambda text: [p for p in text.split(",") if p],
        default=["memory", "stream"],
        help=f"comma-separated, of {sorted(READ_PATHS)}",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.train_read_paths) - set(READ_PATHS))
    if unknown or not args.train_read_paths:
        parser.error(f"--train-read-paths: unknown {unknown}; choose from {sorted(READ_PATHS)}")

    load_at_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="weather-bench-") as tmp:
        write_s = 0.0
        path = args.archive
        if path is None:
            path = Path(tmp) / "archive.zarr"
            write_synthetic(path, args.times, args.seed)
            write_s = time.perf_counter() - t0
        probe = xr.open_zarr(path, chunks=None, consolidated=False)
        variables = tuple(
            v
            for v in SIMULATED_LEVEL_VARIABLES + SIMULATED_SURFACE_VARIABLES
            if v in probe.data_vars
        )
        static = tuple(v for v in SIMULATED_STATIC_VARIABLES if v in probe.data_vars)
        times = probe["time"].values
        results = []
        for read_path in READ_PATHS:
            ds = open_read_path(path, read_path)
            for batch_size in sorted({1, 8, args.batch_size}):
                config = WindowConfig(
                    start=times[0],
                    end=times[-1],
                    variables=variables,
                    static_variables=static,
                    batch_size=batch_size,
                    seed=args.seed,
                    prefetch=args.prefetch,
                )
                results.append({"read_path": read_path, **measure(ds, config, args.budget)})
        best = max(results, key=lambda r: r["samples_per_s"])
        training = None if args.no_train else measure_training(path, args)
        report = {
            "benchmark": "data_windows",
            "archive": str(args.archive) if args.archive else "synthetic (temp dir)",
            "grid": [probe.sizes["latitude"], probe.sizes["longitude"]],
            "levels": probe.sizes.get("level", 0),
            "times": len(times),
            "variables": list(variables),
            "static_variables": list(static),
            "archive_bytes_per_time": int(
                sum(probe[v].dtype.itemsize * probe[v][0].size for v in variables)
            ),
            "prefetch": args.prefetch,
            "cpu_count": os.cpu_count(),
            "load_average_1min_at_start": round(load_at_start, 2),
            "read_paths": READ_PATHS,
            "results": results,
            "best": {k: best[k] for k in ("read_path", "batch_size", "samples_per_s")},
            "training": training,
            "write_seconds": round(write_s, 2),
            "total_seconds": round(time.perf_counter() - t0, 2),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
