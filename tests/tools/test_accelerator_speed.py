"""benchmarks/accelerator_speed.py, the one command for a lent accelerator, runs end to end on
the CPU with --tiny (two forced host devices, so that the sharding section runs too) and its
numbers agree with each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service_support import service_files

REPO = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, "benchmarks/accelerator_speed.py", "--tiny", "--budget-s", "300"]


def test_the_accelerator_speed_script_runs_and_its_numbers_agree(
    tmp_path_factory, archive, statistics
):
    checkpoint = service_files(tmp_path_factory, archive, statistics).checkpoint
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [*SCRIPT, "--checkpoint", str(checkpoint)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["platform"] == "cpu" and report["devices"] == 2
    rates = report["matmul_gflop_per_s"]
    assert rates["float32"] > 0 and rates["bfloat16"] > 0
    grids = {row["grid"]: row for row in report["denoiser"]}
    assert grids["1deg"]["shape"] == [16, 32] and grids["shipped_grid"]["shape"] == [
        archive.latitude.size,
        archive.longitude.size,
    ]
    for row in grids.values():
        for batch in row["batches"]:
            call = batch["call"]
            # The rate is XLA's FLOPs over the median seconds; the fractions are that rate over
            # the yardsticks.
            # The median of 3 per-call rates is the rate at the median time; the printed seconds
            # are rounded to 5 decimals (a relative error of 5e-6 / seconds), the rate to 2.
            recomputed = call["flops"] / call["seconds"] / 1e9
            assert abs(call["gflop_per_s"] - recomputed) <= 0.005 + recomputed * 1.01 * (
                5e-6 / call["seconds"]
            )
            for dtype, rate in rates.items():
                got = call[f"fraction_of_large_{dtype}_matmul"]
                # Rounded to 3 decimals, from the rate before its rounding to 2.
                bound = 5e-4 + 0.0051 / rate
                assert abs(got - call["gflop_per_s"] / rate) <= bound, (dtype, call)
    for name in ("shipped", "1deg_random_weights"):
        rows = report["rollout"][name]
        assert [r["batch"] for r in rows][:1] == [2], rows
        for r in rows:
            if "seconds" in r:
                # One 12 h step timed (--tiny): 15 days is 30 of them.
                assert (
                    abs(r["fifteen_day_seconds"] - 30 * r["seconds"])
                    <= 0.01 + 0.01 * r["fifteen_day_seconds"]
                )
                assert (
                    abs(r["member_steps_per_s"] - r["batch"] / r["seconds"])
                    <= 0.01 * r["member_steps_per_s"] + 0.01
                )
    sharding = report["devices_sharding"]
    assert sharding["members"] == 16
    # speed_up is rounded to 2 decimals (0.005); the seconds to 6, whose error (<= 5e-7 s on
    # runs of milliseconds and more) moves the ratio by under 1e-3.
    assert (
        abs(sharding["speed_up"] - sharding["seconds_one_device"] / sharding["seconds_all_devices"])
        <= 0.006
    )
