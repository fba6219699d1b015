"""Ensemble rollout: determinism, member independence of ensemble size, sharding, compilation."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from support import assert_close_per_channel, run, setup

from weather.model.denoiser import Forecaster, ModelConfig
from weather.model.rollout import Roller, RolloutConfig


@pytest.fixture(scope="module")
def model(archive, statistics):  # type: ignore[no-untyped-def]
    return setup(archive, statistics)


def test_deterministic_and_seed_dependent(model):
    fc, params, prev, cur, static = model
    roller = Roller(fc, RolloutConfig(chunk_steps=2))
    a = run(roller, params, prev, cur, static, members=2)
    b = run(roller, params, prev, cur, static, members=2)
    c = run(roller, params, prev, cur, static, members=2, seed=1)
    assert a.shape == (3, 2, 16, 32, fc.task.n_state)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0
    assert np.abs(a[:, 0] - a[:, 1]).max() > 0  # members differ
    # One compilation served every request of this shape (the last chunk is trimmed, not
    # recompiled).
    assert roller.compilations == 1


def test_member_is_the_same_whatever_the_ensemble_size(model):
    fc, params, prev, cur, static = model
    roller = Roller(fc, RolloutConfig(chunk_steps=3))
    four = run(roller, params, prev, cur, static, members=4)
    eight = run(roller, params, prev, cur, static, members=8)
    # Batched matmuls may round differently for other batch sizes (measured: bit-identical
    # here); the draws are identical. Per channel, 16 ulps of its magnitude per step.
    assert_close_per_channel(four, eight[:, :4], 16 * 3, "4 against 8 members")
    alone = run(roller, params, prev, cur, static, members=np.array([3]))
    assert_close_per_channel(alone[:, 0], eight[:, 3], 16 * 3, "member 3 alone")


def test_thirty_steps_stay_finite(model):
    fc, params, prev, cur, static = model
    roller = Roller(fc, RolloutConfig(chunk_steps=10))
    out = run(roller, params, prev, cur, static, members=2, steps=30)
    assert out.shape[0] == 30 and np.isfinite(out).all()


SHARDED = """
import sys
import numpy as np
import jax
sys.path.insert(0, {tests!r})
from support import synthetic_archive
from weather.data.statistics import compute_statistics
from support import setup, run
from weather.model.rollout import Roller, RolloutConfig, member_mesh
assert len(jax.devices()) == 4, jax.devices()
archive = synthetic_archive()
stats = compute_statistics(archive, [str(v) for v in archive.data_vars],
                           start=archive.time.values[0], end=archive.time.values[-1])
fc, params, prev, cur, static = setup(archive, stats)
plain = run(Roller(fc, RolloutConfig(chunk_steps=2)), params, prev, cur, static, members=8)
sharded_roller = Roller(fc, RolloutConfig(chunk_steps=2), mesh=member_mesh())
sharded = run(sharded_roller, params, prev, cur, static, members=8)
from support import assert_close_per_channel
# Four devices sum each member's batch of 2 instead of 8: ulps per step per channel.
assert_close_per_channel(sharded, plain, 16 * 3, "sharded")
print("OK", np.abs(sharded - plain).max())
"""


def test_sharded_over_four_devices_equals_unsharded():
    tests = str(Path(__file__).parents[1])
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SHARDED.format(tests=tests))],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


def test_batch_roller_pads_to_fixed_sizes(model):
    from weather.model.rollout import BatchRoller

    fc = model[0]
    roller = BatchRoller(fc, RolloutConfig(chunk_steps=1), batch_sizes=(4, 8))
    assert [roller.padded_size(n) for n in (1, 4, 5, 8)] == [4, 4, 8, 8]
    assert roller.max_members == 8
    with pytest.raises(ValueError, match="exceed the largest batch size 8"):
        roller.padded_size(9)
    with pytest.raises(ValueError, match="ascending"):
        BatchRoller(fc, batch_sizes=(8, 4))
    # One member per call is a valid (if slow) size; none is not.
    assert BatchRoller(fc, batch_sizes=(1, 2)).padded_size(1) == 1
    with pytest.raises(ValueError, match="positive"):
        BatchRoller(fc, batch_sizes=(0, 2))


def test_conserving_surface_pressure_keeps_its_global_mean_step_after_step(model):
    """With `conserve`, every member's area-weighted global-mean surface pressure stays the
    initial state's over a rollout (float32 rounding of ~1e5 Pa: a few hundredths of a Pa);
    every other channel is the unconstrained model's in the first step."""
    import dataclasses

    from weather.data.grid import cell_area_weights

    fc, params, prev, cur, static = model
    kept = Forecaster(
        dataclasses.replace(fc.config, conserve=("surface_pressure",)),
        fc.normalization,
        fc.latitude,
        fc.longitude,
    )
    c = fc.task.channel_names().index("surface_pressure")
    area = cell_area_weights(fc.latitude)[:, None]

    def global_mean(x: np.ndarray) -> np.ndarray:
        return (np.asarray(x[..., c], np.float64) * area).mean(axis=(-2, -1))

    free = run(Roller(fc, RolloutConfig(chunk_steps=2)), params, prev, cur, static, members=2)
    held = run(Roller(kept, RolloutConfig(chunk_steps=2)), params, prev, cur, static, members=2)
    start = global_mean(cur)
    assert np.abs(global_mean(free) - start).max() > 1.0  # the model alone drifts
    np.testing.assert_allclose(global_mean(held), start, rtol=0, atol=0.05)
    others = [i for i in range(fc.task.n_state) if i != c]
    np.testing.assert_array_equal(held[0][..., others], free[0][..., others])
    with pytest.raises(ValueError, match="conserve"):
        dataclasses.replace(fc.config, conserve=("temperature",))
    assert ModelConfig.from_dict(kept.config.to_dict()) == kept.config
    assert "conserve" not in fc.config.to_dict()  # older checkpoints' configs are unchanged


def test_select_devices_reads_counts_and_all_and_refuses_the_rest():
    import jax

    from weather.model.rollout import select_devices

    available = jax.devices()
    assert select_devices(None) == available[:1]
    assert select_devices(" ALL ") == available and select_devices("1") == available[:1]
    # Words that sort after "all" are not "all" (a comparison instead of equality would pass
    # them), nor are counts beyond what the process sees.
    for bad in ("bogus", "b", "zero"):
        with pytest.raises(ValueError, match=rf"devices: '{bad}' is not a count or 'all'"):
            select_devices(bad)
    for count in (0, len(available) + 1):
        with pytest.raises(ValueError, match=rf"asked for {count}, this process sees"):
            select_devices(count)
