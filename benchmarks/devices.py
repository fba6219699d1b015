"""Members sharded over N devices against one device, same process; prints one JSON object.

Usage (the README's number; on a CPU the devices are forced host devices)::

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/devices.py --devices 4

Times the same ensemble forecast (the shipped checkpoint and its sampler, ``--members`` members,
``--lead-hours``) on one device and sharded over ``--devices`` (`weather.model.rollout.mesh_for`),
alternating ``--repeats`` times after one compiling run each, and reports the median seconds and
their ratio, plus the largest difference between the two ensembles (float32 rounding of the
smaller per-device batches). On a CPU forced devices share the same cores, so the ratio measures
the sharding's overhead (copies, collectives), not a speed-up: issue 16's goal is at most 1.1.
On an accelerator machine with several devices it is the speed-up itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    p.add_argument("--devices", default="all")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--lead-hours", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import jax

    from weather.defaults import DEFAULT_CHECKPOINT
    from weather.forecast import load_forecaster
    from weather.model.rollout import Roller, RolloutConfig, mesh_for

    model = load_forecaster(args.checkpoint or DEFAULT_CHECKPOINT)
    fc = model.forecaster
    rng = np.random.default_rng(0)
    noise = rng.normal(size=fc.shape).astype(np.float32)
    state = (fc.normalization.mean + 0.5 * fc.normalization.std * noise).astype(np.float32)
    static = np.zeros((*fc.shape[:2], fc.task.n_static), np.float32)
    steps = args.lead_hours // 12
    rollers = {
        "one": Roller(fc, RolloutConfig(chunk_steps=steps)),
        "sharded": Roller(fc, RolloutConfig(chunk_steps=steps), mesh=mesh_for(args.devices)),
    }

    def run(name: str) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        (_, out), *_ = rollers[name].run(
            model.params,
            previous=state,
            current=state,
            static=static,
            init_time=np.datetime64("1991-01-02T00", "ns"),
            steps=steps,
            members=args.members,
            seed=0,
        )
        return time.perf_counter() - t0, out

    outputs = {name: run(name)[1] for name in rollers}  # compiles
    seconds: dict[str, list[float]] = {name: [] for name in rollers}
    for _ in range(args.repeats):
        for name in rollers:
            seconds[name].append(run(name)[0])
    median = {name: statistics.median(v) for name, v in seconds.items()}
    mesh = rollers["sharded"].mesh
    print(
        json.dumps(
            {
                "platform": jax.devices()[0].platform,
                "devices": 1 if mesh is None else int(mesh.devices.size),
                "members": args.members,
                "lead_hours": args.lead_hours,
                "seconds_one_device": round(median["one"], 3),
                "seconds_sharded": round(median["sharded"], 3),
                "sharded_over_one": round(median["sharded"] / median["one"], 3),
                "max_abs_difference": float(np.abs(outputs["one"] - outputs["sharded"]).max()),
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
