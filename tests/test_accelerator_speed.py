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

REPO = Path(__file__).resolve().parents[1]
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
            # the yardsticks (rounding of the printed values: 3 decimals, 2 for GFLOP/s).
            assert (
                abs(call["gflop_per_s"] - call["flops"] / call["seconds"] / 1e9)
                < 0.02 * (call["gflop_per_s"])
            )
            for dtype, rate in rates.items():
                got = call[f"fraction_of_large_{dtype}_matmul"]
                assert abs(got - call["gflop_per_s"] / rate) <= 1e-3, (dtype, call)
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
    assert (
        abs(sharding["speed_up"] - sharding["seconds_one_device"] / sharding["seconds_all_devices"])
        <= 0.01
    )
