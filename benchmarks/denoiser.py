"""Cost and speed of one denoiser-backbone call per architecture; prints one JSON object.

Usage::

    python benchmarks/denoiser.py                         # both architectures, batch 1, 8, 32
    python benchmarks/denoiser.py --quick                 # batch 1 and 8, fewer repeats (< 60 s)
    python benchmarks/denoiser.py --arch transformer --batch 8 --set num_heads=4
    python benchmarks/denoiser.py --quick --train          # also forward + backward

For each architecture at its default config on the 5.625 deg grid (32 x 64; --lat/--lon for
others) with realistic channel counts (in: 3 * (4 variables * 13 levels + 1) + 4 forcings +
1 static = 164; out: 53), it reports:

- `params`: parameter count;
- per batch size, for one `call` (and with --train for a `train_step`, forward and backward):
  - `flops`: XLA's cost analysis of the jitted function. The blocked CPU attention is a loop,
    whose body XLA counts once, so FLOPs are counted on the same model lowered with XLA's
    batched attention (identical arithmetic); `flops_counted_by_xla_on_timed` is the timed
    program's own, undercounted, figure;
  - `seconds` (median after warm-up), `seconds_per_sample` (per batch element), `gflop_per_s`
    and `fraction_of_matmul`: the achieved rate over the rate of a dense float32 2048 x 2048
    matmul timed in the same process, interleaved call by call with the model so that other
    load on the machine affects both alike (the median of the per-repeat ratios).

Parameters are random numbers of the right shapes (drawn with numpy, not the modules'
initialisers, whose RNG compiles slowly on a CPU); speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from weather.data.grid import equiangular_grid, gaussian_latitudes
from weather.model.backbone import (
    BackboneConfig,
    SphereTransformerConfig,
    SphereUNetConfig,
    build_backbone,
    config_to_dict,
)

ARCHITECTURES: dict[str, type[SphereTransformerConfig] | type[SphereUNetConfig]] = {
    "transformer": SphereTransformerConfig,
    "unet": SphereUNetConfig,
}
MATMUL_SIZE = 2048


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to config fields; values parsed as JSON where possible."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def random_params(module, x: np.ndarray, c: np.ndarray, seed: int = 0) -> Any:
    """Parameters of the module's shapes, normal with fan-in scaling (float32 numpy)."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, c))
    rng = np.random.default_rng(seed)

    def draw(leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
        return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree.map(draw, shapes)


def xla_flops(cost: Any) -> float:
    """The 'flops' entry of a cost analysis (a dict, or a list of one dict in older JAX)."""
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost["flops"])


def time_interleaved(
    fn, args, matmul, matmul_args, repeats: int
) -> tuple[list[float], list[float]]:
    """Seconds per call of `fn` and of the matmul, alternating call by call, after warm-up."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(matmul(*matmul_args))
    model_s, matmul_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(matmul(*matmul_args))
        t1 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        t2 = time.perf_counter()
        matmul_s.append(t1 - t0)
        model_s.append(t2 - t1)
    return model_s, matmul_s


def bench_architecture(
    config: BackboneConfig,
    latitude: np.ndarray,
    longitude: np.ndarray,
    in_channels: int,
    out_channels: int,
    batches: list[int],
    repeats: int,
    matmul,
    matmul_args,
    train: bool = False,
) -> dict[str, Any]:
    module = build_backbone(config, latitude, longitude, out_channels)
    counting = build_backbone(
        dataclasses.replace(config, attention_implementation="xla"),
        latitude,
        longitude,
        out_channels,
    )
    rng = np.random.default_rng(0)
    shape = (latitude.size, longitude.size, in_channels)
    x1 = rng.normal(size=(1, *shape)).astype(np.float32)
    params = jax.device_put(random_params(module, x1, np.zeros(1, np.float32)))

    def train_step(module):
        # Forward and backward of a stand-in loss: what one optimiser step costs, bar the update.
        return jax.grad(lambda p, x, c: jnp.mean(jnp.square(module.apply(p, x, c))))

    rows = []
    for batch in batches:
        x = jnp.asarray(rng.normal(size=(batch, *shape)).astype(np.float32))
        c = jnp.asarray(rng.uniform(-1, 1, batch).astype(np.float32))
        row: dict[str, Any] = {"batch": batch}
        kinds = [("call", module.apply, counting.apply)]
        if train:
            kinds.append(("train_step", train_step(module), train_step(counting)))
        for kind, fn, counted in kinds:
            t0 = time.perf_counter()
            compiled = jax.jit(fn).lower(params, x, c).compile()
            compile_s = time.perf_counter() - t0
            flops = xla_flops(jax.jit(counted).lower(params, x, c).cost_analysis())
            model_s, matmul_s = time_interleaved(
                compiled, (params, x, c), matmul, matmul_args, repeats
            )
            matmul_rate = np.array([2 * MATMUL_SIZE**3 / s for s in matmul_s])
            model_rate = np.array([flops / s for s in model_s])
            seconds = float(np.median(model_s))
            row[kind] = {
                "flops": flops,
                "flops_counted_by_xla_on_timed": xla_flops(compiled.cost_analysis()),
                "seconds": round(seconds, 5),
                "seconds_per_sample": round(seconds / batch, 5),
                "gflop_per_s": round(float(np.median(model_rate)) / 1e9, 2),
                "matmul_gflop_per_s": round(float(np.median(matmul_rate)) / 1e9, 2),
                "fraction_of_matmul": round(float(np.median(model_rate / matmul_rate)), 3),
                "compile_s": round(compile_s, 2),
            }
        rows.append(row)
    return {
        "config": config_to_dict(config),
        "params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
        "batches": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=[*ARCHITECTURES, "all"], default="all")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="default 1 8 32")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 8, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 7)")
    parser.add_argument(
        "--train", action="store_true", help="also time forward + backward (a training step)"
    )
    parser.add_argument("--lat", type=int, default=32)
    parser.add_argument("--lon", type=int, default=64)
    parser.add_argument("--grid", choices=["equiangular", "gaussian"], default="equiangular")
    parser.add_argument("--in-channels", type=int, default=3 * (4 * 13 + 1) + 4 + 1)
    parser.add_argument("--out-channels", type=int, default=4 * 13 + 1)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field of the chosen architecture(s), e.g. --set num_heads=4",
    )
    args = parser.parse_args()

    batches = args.batch or ([1, 8] if args.quick else [1, 8, 32])
    repeats = args.repeats or (3 if args.quick else 7)
    lat, lon = equiangular_grid(args.lat, args.lon)
    if args.grid == "gaussian":
        lat = gaussian_latitudes(args.lat)[0]
    overrides = parse_overrides(args.set)
    archs = list(ARCHITECTURES) if args.arch == "all" else [args.arch]

    matmul = jax.jit(lambda a, b: a @ b)
    a = jnp.asarray(np.random.default_rng(1).normal(size=(MATMUL_SIZE, MATMUL_SIZE)), jnp.float32)
    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    results = {}
    for arch in archs:
        cls = ARCHITECTURES[arch]
        known = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in overrides.items() if k in known})
        results[arch] = bench_architecture(
            config,
            lat,
            lon,
            args.in_channels,
            args.out_channels,
            batches,
            repeats,
            matmul,
            (a, a),
            train=args.train,
        )
    print(
        json.dumps(
            {
                "grid": {"kind": args.grid, "lat": args.lat, "lon": args.lon},
                "in_channels": args.in_channels,
                "out_channels": args.out_channels,
                "repeats": repeats,
                "machine": {
                    "backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()],
                    "cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "load_average_1min_at_start": round(load_at_start, 2),
                    "jax": jax.__version__,
                },
                "architectures": results,
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
