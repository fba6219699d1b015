"""Speed of the ensemble rollout: a 15-day forecast, member-steps/s, recompiles; one JSON object.

Usage::

    python benchmarks/rollout.py                          # shipped checkpoint, 8 members, 15 days
    python benchmarks/rollout.py --sampler 2s:20          # GenCast's sampler instead of the default
    python benchmarks/rollout.py --members 32 --lead-days 5 --requests 3

With the shipped checkpoint (or ``--checkpoint``) and its sampler (or ``--sampler SOLVER:N``),
from initial states drawn around the normalisation means (speed does not depend on the values):

- ``compile_s``: the first chunk's wall time less a compiled chunk's (XLA compiles the chunk once
  per ensemble size and chunk length);
- ``forecast_s``: wall time of one whole forecast (``--lead-days``, ``--members``) after
  compilation, host transfers and output included; ``member_steps_per_s`` = members x steps /
  ``forecast_s``;
- ``denoiser``: XLA's FLOP count of one backbone call on the batch of members, the calls per 12 h
  step, the rate achieved over the whole forecast and its ratio to a dense float32 matmul's rate
  measured in this process just before and after (``fraction_of_matmul``);
- ``compilations_after_warmup``: XLA compilations (JAX's backend-compile events) over
  ``--requests`` further requests with other init times and seeds (and, with ``--members-list``,
  other member counts padded to the same batch); 0 means requests never recompile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denoiser import MATMUL_SIZE, xla_flops

from weather.data.times import STEP

_MATMUL = jax.jit(lambda a, b: a @ b)


def matmul_rate(repeats: int = 5) -> float:
    """FLOP/s of a dense float32 ``MATMUL_SIZE`` matmul (median of ``repeats``)."""
    a = jnp.asarray(np.random.default_rng(1).normal(size=(MATMUL_SIZE, MATMUL_SIZE)), jnp.float32)
    f = _MATMUL
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, a))
        times.append(time.perf_counter() - t0)
    return 2 * MATMUL_SIZE**3 / float(np.median(times))


def denoiser_flops(forecaster: Any, params: Any, members: int) -> float:
    """XLA's FLOPs of one backbone call on ``members`` members (attention counted unblocked)."""
    from weather.model.backbone import build_backbone

    cfg = forecaster.config.backbone
    if hasattr(cfg, "attention_implementation"):
        cfg = dataclasses.replace(cfg, attention_implementation="xla")
    module = build_backbone(cfg, forecaster.latitude, forecaster.longitude, forecaster.task.n_state)
    h, w, c = forecaster.shape
    x = jnp.zeros((members, h, w, c + forecaster.task.n_conditioning), jnp.float32)
    sigma = jnp.zeros((members,), jnp.float32)
    return xla_flops(jax.jit(module.apply).lower(params, x, sigma).cost_analysis())


class CompileCounter:
    """Counts XLA backend compilations from JAX's monitoring events."""

    def __init__(self) -> None:
        from jax._src import dispatch, monitoring

        self.count = 0
        event = dispatch.BACKEND_COMPILE_EVENT

        def listener(name: str, _secs: float, **_: Any) -> None:
            if name == event:
                self.count += 1

        monitoring.register_event_duration_secs_listener(listener)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    p.add_argument("--sampler", default=None, help="SOLVER:N, e.g. 2s:20 (default: the model's)")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--lead-days", type=float, default=15.0)
    p.add_argument("--chunk-steps", type=int, default=5, help="12 h steps per compiled chunk")
    p.add_argument("--requests", type=int, default=3, help="further requests to count compiles")
    args = p.parse_args()

    from weather.defaults import DEFAULT_CHECKPOINT
    from weather.forecast import load_forecaster
    from weather.model.rollout import Roller, RolloutConfig

    counter = CompileCounter()
    model = load_forecaster(args.checkpoint or DEFAULT_CHECKPOINT)
    fc = model.forecaster
    sampler = fc.config.sampler
    if args.sampler:
        solver, _, n = args.sampler.partition(":")
        sampler = dataclasses.replace(sampler, solver=solver, num_steps=int(n))
    calls = 2 * sampler.num_steps - 1 if sampler.solver == "2s" else sampler.num_steps
    steps = round(args.lead_days * 2)
    roller = Roller(fc, RolloutConfig(chunk_steps=args.chunk_steps, sampler=sampler))

    rng = np.random.default_rng(0)
    norm = fc.normalization
    shape = fc.shape

    def state() -> np.ndarray:
        return (norm.mean + 0.5 * norm.std * rng.normal(size=shape)).astype(np.float32)

    static = np.broadcast_to(norm.static_mean, (*shape[:2], norm.static_mean.shape[-1])).copy()
    init0 = np.datetime64("1991-01-02T00", "ns")

    def run(steps: int, init: np.datetime64, seed: int, members: int) -> list[float]:
        """Seconds per chunk of one forecast, output fetched to the host."""
        times, t0 = [], time.perf_counter()
        for _lo, _out in roller.run(
            model.params,
            previous=state(),
            current=state(),
            static=static,
            init_time=init,
            steps=steps,
            members=members,
            seed=seed,
        ):
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
        return times

    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    matmul_rate(1)  # compiles the yardstick outside the counted window
    first = run(2 * args.chunk_steps, init0, 0, args.members)  # compiles, then one warm chunk
    compile_s = first[0] - first[1]
    compiles_warmup = counter.count

    rate_before = matmul_rate()
    chunks = run(steps, init0 + STEP, 1, args.members)
    forecast_s = float(np.sum(chunks))
    rate_after = matmul_rate()

    for r in range(args.requests):
        run(args.chunk_steps, init0 + np.timedelta64(24 * (r + 2), "h"), 10 + r, args.members)
    recompiles = counter.count - compiles_warmup

    flops = denoiser_flops(fc, model.params, args.members)
    achieved = flops * calls * steps / forecast_s
    matmul = float(np.mean([rate_before, rate_after]))
    print(
        json.dumps(
            {
                "checkpoint": os.path.basename(model.path),
                "sampler": dataclasses.asdict(sampler) | {"s_tmax": str(sampler.s_tmax)},
                "members": args.members,
                "steps": steps,
                "chunk_steps": args.chunk_steps,
                "compile_s": round(compile_s, 2),
                "forecast_s": round(forecast_s, 2),
                "member_steps_per_s": round(args.members * steps / forecast_s, 3),
                "seconds_per_chunk": [round(t, 3) for t in chunks],
                "denoiser": {
                    "flops_per_call": flops,
                    "flops_per_call_per_member": flops / args.members,
                    "calls_per_step": calls,
                    "achieved_gflop_per_s": round(achieved / 1e9, 2),
                    "matmul_gflop_per_s": round(matmul / 1e9, 2),
                    "fraction_of_matmul": round(achieved / matmul, 3),
                },
                "compilations_during_warmup": compiles_warmup,
                "compilations_after_warmup": recompiles,
                "requests_after_warmup": args.requests,
                "machine": {
                    "backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()],
                    "cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "load_average_1min_at_start": round(load_at_start, 2),
                    "jax": jax.__version__,
                },
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
