"""Throughput of the training-window iterator on a zarr archive; prints one JSON object.

Usage::

    python benchmarks/data_windows.py                      # synthetic archive in a temp dir
    python benchmarks/data_windows.py --archive PATH.zarr  # a canonical archive of your own

The synthetic archive is the default task's shape: a 32 x 64 (5.625 deg) grid, 13 levels, the four
level fields and surface pressure of ``weather.data.variables`` (float32 noise), 6-hourly, chunked
one time per chunk as ARCO-ERA5 is. Each read path (the zarr backend indexed lazily, and dask
arrays over the same store) is timed at batch sizes 1 and 8 with a consumer that does nothing, so
the number is the loader's own ceiling. The whole run stays under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from weather.data.variables import (
    SIMULATED_LEVEL_VARIABLES,
    SIMULATED_STATIC_VARIABLES,
    SIMULATED_SURFACE_VARIABLES,
    WB2_LEVELS,
)
from weather.data.windows import WindowConfig, Windows

READ_PATHS = {
    "zarr-lazy": "xr.open_zarr(chunks=None): one orthogonal zarr read per variable per batch",
    "dask": "xr.open_zarr(chunks={}): dask arrays on the store's chunks, one compute per batch",
}


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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, help="canonical zarr archive (default: synthetic)")
    parser.add_argument(
        "--times", type=int, default=600, help="synthetic times (6-hourly; 600 = 150 days)"
    )
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

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
            ds = xr.open_zarr(
                path, chunks=None if read_path == "zarr-lazy" else {}, consolidated=False
            )
            for batch_size in (1, 8):
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
            "read_paths": READ_PATHS,
            "results": results,
            "best": {k: best[k] for k in ("read_path", "batch_size", "samples_per_s")},
            "write_seconds": round(write_s, 2),
            "total_seconds": round(time.perf_counter() - t0, 2),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
