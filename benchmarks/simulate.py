"""Simulation speed: seconds per simulated day at several resolutions, and archive bytes per year.

Prints one JSON object. Each resolution is compiled first and then timed over --days days (the
median of --repeats runs); the float32 matmul rate measured in the same process is reported as the
machine's yardstick, because these machines are shared and noisy.

    python benchmarks/simulate.py --days 5 --resolutions T21,T31,T42
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from weather.sim.dynamics import HeldSuarezModel, SimulationConfig

LAYERS = {"T21": 8, "T31": 10, "T42": 12, "T85": 20}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def seconds_per_day(resolution: str, days: float, repeats: int) -> dict[str, float]:
    model = HeldSuarezModel(SimulationConfig(resolution=resolution, layers=LAYERS[resolution]))
    state = model.initial_state(0, np.datetime64("2000-01-01"))
    per_day = 24 // model.config.output_hours
    n = max(1, round(days * per_day))
    t0 = time.perf_counter()
    state, diags = model.advance(state, n)
    jax.block_until_ready(diags)
    compile_and_first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, diags = model.advance(state, n)
        jax.block_until_ready(diags)
        runs.append((time.perf_counter() - t0) / (n / per_day))
    return {"seconds_per_day": float(np.median(runs)), "compile_seconds": compile_and_first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resolutions", default="T21,T31,T42")
    args = parser.parse_args()
    result: dict[str, object] = {
        "benchmark": "simulate",
        "machine": platform.processor() or platform.machine(),
        "devices": [str(d) for d in jax.devices()],
        "matmul_gflops_before": matmul_gflops(),
    }
    per_time = 4 * 13 * 32 * 64 * 4 + 32 * 64 * 4  # float32 bytes per 6-hourly archive time
    result["archive_bytes_per_year_uncompressed"] = per_time * 4 * 365
    for res in args.resolutions.split(","):
        result[res] = seconds_per_day(res, args.days, args.repeats)
        result[res]["days_per_10_years_hours"] = result[res]["seconds_per_day"] * 3652 / 3600
    result["matmul_gflops_after"] = matmul_gflops()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
