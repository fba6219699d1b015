"""Speed on whatever accelerator this process sees, in one run; prints one JSON object.

Usage (the one command for a lent GPU machine; ``--tiny`` checks it on a CPU in about a minute)::

    python benchmarks/accelerator_speed.py --budget-s 420 > speed.json
    python benchmarks/accelerator_speed.py --tiny

Sections, each skipped (with the reason) once ``--budget-s`` is spent:

- ``matmul_gflop_per_s``: dense float32 and bfloat16 8192 x 8192 matmul rates (the yardsticks;
  512 with ``--tiny``);
- ``denoiser``: one backbone call of the shipped architecture at random weights, on the shipped
  grid and on a 1 degree grid (180 x 360), at batch 8 and 32: seconds, XLA's FLOP count, the
  rate and its fraction of each matmul (`denoiser.bench_architecture`);
- ``rollout``: member throughput of a 15-day forecast (30 steps of 12 h) with the shipped
  checkpoint and its sampler at batch 8, 32 and doubling until the device runs out of memory or
  the batch costs more than its share of the budget (the largest that fits), and the same for the
  1 degree configuration at random weights (timed over ``--steps-1deg`` steps, as steps cost the
  same all along a rollout); ``member_steps_per_s`` and the 15-day seconds per batch;
- ``devices``: with more than one device, 8 x devices members on one device and sharded over
  all (`weather.model.rollout.mesh_for`): seconds and the speed-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denoiser import MATMUL_SIZE, bench_architecture

FIFTEEN_DAYS = 30  # 12 h steps


class Budget:
    """Wall-clock budget of the whole run (s)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def matmul_rates(size: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of a dense ``size x size`` matmul in float32 and bfloat16 (median)."""
    out = {}
    rng = np.random.default_rng(0)
    for dtype in ("float32", "bfloat16"):
        a = jnp.asarray(rng.normal(size=(size, size)), dtype)
        fn = jax.jit(lambda x, y: x @ y)
        jax.block_until_ready(fn(a, a))
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(a, a))
            seconds.append(time.perf_counter() - t0)
        out[dtype] = round(2 * size**3 / float(np.median(seconds)) / 1e9, 1)
    return out


def _out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def rollout_throughput(
    forecaster: Any,
    params: Any,
    batches: list[int],
    grow_to: int,
    steps: int,
    budget: Budget,
    share: float,
) -> list[dict[str, Any]]:
    """Member-steps/s of `steps` 12 h steps at each batch, then doubling up to `grow_to`.

    A batch whose compile plus run took more than `share` of the budget left stops the growth,
    as does running out of device memory (reported as such).
    """
    from weather.model.rollout import Roller, RolloutConfig

    roller = Roller(forecaster, RolloutConfig(chunk_steps=steps))
    norm = forecaster.normalization
    rng = np.random.default_rng(0)
    state = (norm.mean + 0.5 * norm.std * rng.normal(size=forecaster.shape)).astype(np.float32)
    static = np.broadcast_to(
        norm.static_mean, (*forecaster.shape[:2], norm.static_mean.shape[-1])
    ).copy()

    def run(members: int) -> float:
        t0 = time.perf_counter()
        for _ in roller.run(
            params,
            previous=state,
            current=state,
            static=static,
            init_time=np.datetime64("1991-01-02T00", "ns"),
            steps=steps,
            members=members,
            seed=0,
        ):
            pass
        return time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    queue = list(batches)
    while queue:
        members = queue.pop(0)
        if budget.left() <= 0:
            rows.append({"batch": members, "skipped": "budget spent"})
            break
        started = time.perf_counter()
        try:
            first = run(members)  # compiles
            seconds = run(members)
        except Exception as error:  # the device's memory is the limit being looked for
            if not _out_of_memory(error):
                raise
            rows.append({"batch": members, "out_of_memory": True})
            break
        rows.append(
            {
                "batch": members,
                "compile_s": round(first - seconds, 2),
                "seconds": round(seconds, 6),
                "fifteen_day_seconds": round(seconds * FIFTEEN_DAYS / steps, 2),
                "member_steps_per_s": round(members * steps / seconds, 2),
            }
        )
        cost = time.perf_counter() - started
        if not queue and members * 2 <= grow_to and cost * 2.5 < share * budget.left():
            queue.append(members * 2)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the run")
    p.add_argument("--steps-1deg", type=int, default=4, help="12 h steps timed at 1 degree")
    p.add_argument("--tiny", action="store_true", help="CPU check: small grids and batches")
    args = p.parse_args()

    from weather.data.grid import equiangular_grid
    from weather.defaults import DEFAULT_CHECKPOINT
    from weather.forecast import load_forecaster
    from weather.model.denoiser import Forecaster
    from weather.model.rollout import Roller, RolloutConfig, mesh_for

    budget = Budget(args.budget_s)
    started = time.perf_counter()
    model = load_forecaster(args.checkpoint or DEFAULT_CHECKPOINT)
    fc = model.forecaster
    fine_grid = (16, 32) if args.tiny else (180, 360)
    batches = [2] if args.tiny else [8, 32]
    grow_to = 4 if args.tiny else 4096
    steps = 1 if args.tiny else FIFTEEN_DAYS
    report: dict[str, Any] = {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "devices": len(jax.devices()),
        "jax": jax.__version__,
        "checkpoint": os.path.basename(model.path),
        "tiny": args.tiny,
    }
    report["matmul_gflop_per_s"] = rates = matmul_rates(512 if args.tiny else 8192, 5)

    # One backbone call, shipped grid and 1 degree, as fractions of both matmuls.
    rows = []
    # The interleaved yardstick of `bench_architecture` (its fraction_of_matmul); the fractions
    # of the large matmuls above are added to each row.
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(MATMUL_SIZE, MATMUL_SIZE)), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    backbone = fc.config.backbone
    n_in = fc.task.n_state + fc.task.n_conditioning  # noisy target + conditioning
    for name, grid in (("shipped_grid", fc.shape[:2]), ("1deg", fine_grid)):
        if budget.left() <= 0:
            rows.append({"grid": name, "skipped": "budget spent"})
            continue
        lat, lon = (
            (fc.latitude, fc.longitude) if name == "shipped_grid" else equiangular_grid(*grid)
        )
        result = bench_architecture(
            backbone, lat, lon, n_in, fc.task.n_state, batches, 3, matmul, (a, a)
        )
        for row in result["batches"]:
            call = row["call"]
            for dtype in ("float32", "bfloat16"):
                call[f"fraction_of_large_{dtype}_matmul"] = round(
                    call["gflop_per_s"] / rates[dtype], 3
                )
        rows.append({"grid": name, "shape": [int(lat.size), int(lon.size)], **result})
    report["denoiser"] = rows

    report["rollout"] = {
        "shipped": rollout_throughput(fc, model.params, batches, grow_to, steps, budget, share=0.35)
    }
    if budget.left() > 0:
        lat, lon = equiangular_grid(*fine_grid)
        fine = Forecaster(fc.config, fc.normalization, lat, lon)
        params = fine.init_params(jax.random.key(0))
        report["rollout"]["1deg_random_weights"] = rollout_throughput(
            fine, params, batches, grow_to, min(steps, args.steps_1deg), budget, share=0.6
        )
    else:
        report["rollout"]["1deg_random_weights"] = [{"skipped": "budget spent"}]

    if len(jax.devices()) > 1 and budget.left() > 0:
        members = 8 * len(jax.devices())
        timed = {}
        state = np.asarray(fc.normalization.mean, np.float32) * np.ones(fc.shape, np.float32)
        static = np.zeros((*fc.shape[:2], fc.task.n_static), np.float32)
        for label, mesh in (("one", None), ("all", mesh_for("all"))):
            roller = Roller(fc, RolloutConfig(chunk_steps=2), mesh=mesh)

            def go(roller: Roller = roller) -> float:
                t0 = time.perf_counter()
                for _ in roller.run(
                    model.params,
                    previous=state,
                    current=state,
                    static=static,
                    init_time=np.datetime64("1991-01-02T00", "ns"),
                    steps=2,
                    members=members,
                    seed=0,
                ):
                    pass
                return time.perf_counter() - t0

            go()
            timed[label] = go()
        report["devices_sharding"] = {
            "members": members,
            "seconds_one_device": round(timed["one"], 6),
            "seconds_all_devices": round(timed["all"], 6),
            "speed_up": round(timed["one"] / timed["all"], 2),
        }
    else:
        report["devices_sharding"] = {
            "skipped": "one device" if len(jax.devices()) == 1 else "budget"
        }
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1, default=lambda o: dataclasses.asdict(o)))


if __name__ == "__main__":
    main()
