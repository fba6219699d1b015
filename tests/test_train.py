"""Training on a tiny archive: the loss falls, checkpoints round-trip, resume equals no stop."""

import jax
import numpy as np
import pytest
from conftest import tiny_model_config

from weather.forecast import load_forecaster
from weather.model.checkpoint import load_checkpoint
from weather.model.train import TrainConfig, train

PERIOD = ("2001-01-01", "2001-01-09")
VALID = ("2001-01-09T12", "2001-01-12T18")


def _train(tmp, archive, statistics, steps, **kw):  # type: ignore[no-untyped-def]
    config = TrainConfig(
        steps=steps,
        batch_size=2,
        peak_learning_rate=3e-3,
        warmup_steps=2,
        checkpoint_every=3,
        log_every=3,
        validate_every=3,
        validation_batches=2,
        ema_decay=0.9,
        prefetch=1,
    )
    return train(
        run_dir=tmp,
        model_config=tiny_model_config(),
        train_config=config,
        train_data=archive,
        train_period=PERIOD,
        statistics=statistics,
        validation_data=archive,
        validation_period=VALID,
        progress=False,
        **kw,
    )


def test_validation_loss_falls(tmp_path, archive, statistics):
    path = _train(tmp_path, archive, statistics, steps=30)
    history = load_checkpoint(path)["metadata"]["history"]
    val = [h["validation_loss"] for h in history if "validation_loss" in h]
    assert len(val) == 10
    # Fixed windows and noise, EMA parameters: a steady fall from the untrained model's ~1.
    assert val[-1] < 0.92 * val[0], val
    assert val[-1] <= min(val) + 1e-6, val
    assert (tmp_path / "loss.png").exists()


def test_resumed_training_equals_uninterrupted(tmp_path, archive, statistics):
    straight = load_checkpoint(_train(tmp_path / "a", archive, statistics, steps=6))
    _train(tmp_path / "b", archive, statistics, steps=6, stop_after=3)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.msgpack")["train"]["step"] == 3
    resumed = load_checkpoint(_train(tmp_path / "b", archive, statistics, steps=6))
    assert resumed["train"]["step"] == 6
    for a, b in zip(
        jax.tree_util.tree_leaves(straight["train"]["params"]),
        jax.tree_util.tree_leaves(resumed["train"]["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree_util.tree_leaves(straight["params"]),
        jax.tree_util.tree_leaves(resumed["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_rebuilds_the_model_exactly_and_refuses_other_configs(
    tmp_path, archive, statistics
):
    path = _train(tmp_path, archive, statistics, steps=3)
    loaded = load_forecaster(path)
    saved = load_checkpoint(path)
    for a, b in zip(
        jax.tree_util.tree_leaves(loaded.params),
        jax.tree_util.tree_leaves(saved["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert loaded.forecaster.config == tiny_model_config()
    with pytest.raises(ValueError, match="other configs"):
        _train(tmp_path, archive, statistics, steps=4)
