"""Training on a tiny archive: the loss falls, checkpoints round-trip, resume equals no stop."""

import dataclasses
import threading

import jax
import numpy as np
import pytest
from support import tiny_model_config

from weather.forecast import load_forecaster
from weather.model.checkpoint import load_checkpoint
from weather.model.train import TrainConfig, train

PERIOD = ("2001-01-01", "2001-01-09")
VALID = ("2001-01-09T12", "2001-01-12T18")


def _train(tmp, archive, statistics, steps, rollout_inputs=0, rollout_depth=1, **kw):  # type: ignore[no-untyped-def]
    config = TrainConfig(
        rollout_inputs=rollout_inputs,
        rollout_depth=rollout_depth,
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


def test_history_reports_the_validation_loss_per_noise_band(tmp_path, archive, statistics):
    from weather.model.train import band_label

    path = _train(tmp_path, archive, statistics, steps=3)
    entry = load_checkpoint(path)["metadata"]["history"][-1]
    bands = [entry[band_label(s)] for s in TrainConfig().validation_sigmas]
    assert all(np.isfinite(bands)) and all(b > 0 for b in bands)
    # The bands are losses at fixed levels of the same windows and noise, so they differ; the
    # untrained network's D is about c_skip x, whose weighted loss is largest where the data's
    # detail must be recovered (low sigma) relative to the EDM weight's unit scale.
    assert len(set(bands)) == len(bands)


def test_warm_start_begins_at_the_given_parameters_and_snapshots_its_ema(
    tmp_path, archive, statistics
):
    """A warm start trains on from the source's EMA parameters (step 0 = the source), and keeps
    inference-only snapshots that `load_forecaster` reads."""
    source = load_checkpoint(_train(tmp_path / "a", archive, statistics, steps=3))
    config = TrainConfig(
        steps=2,
        batch_size=2,
        peak_learning_rate=0.0,  # no update: the EMA must stay exactly the source's
        warmup_steps=0,
        log_every=1,
        validate_every=1,
        validation_batches=1,
        snapshot_every=1,
        prefetch=0,
    )
    path = train(
        run_dir=tmp_path / "b",
        model_config=tiny_model_config(),
        train_config=config,
        train_data=archive,
        train_period=PERIOD,
        statistics=statistics,
        progress=False,
        init_params=source["params"],
        metadata={"warm_start": "a/checkpoint.msgpack", "warm_start_step": 3},
    )
    warm = load_checkpoint(path)
    for a, b in zip(
        jax.tree_util.tree_leaves(source["params"]),
        jax.tree_util.tree_leaves(warm["params"]),
        strict=True,
    ):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    snaps = sorted((tmp_path / "b" / "snapshots").glob("step_*.msgpack"))
    assert [s.name for s in snaps] == ["step_0000001.msgpack", "step_0000002.msgpack"]
    loaded = load_forecaster(snaps[-1])
    meta = load_checkpoint(snaps[-1])["metadata"]
    # The run's provenance travels with each snapshot (it may be exported or warm-started from).
    assert (meta["step"], meta["warm_start"], meta["warm_start_step"]) == (
        2,
        "a/checkpoint.msgpack",
        3,
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(loaded.params),
        jax.tree_util.tree_leaves(warm["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), b)
    bad = {**source["params"]}
    first = next(iter(bad["params"]))
    bad["params"] = {**bad["params"], first: {"oops": np.zeros(3, np.float32)}}
    with pytest.raises(ValueError):
        train(
            run_dir=tmp_path / "c",
            model_config=tiny_model_config(),
            train_config=config,
            train_data=archive,
            train_period=PERIOD,
            statistics=statistics,
            progress=False,
            init_params=bad,
        )


def test_the_rsqrt_schedule_warms_up_holds_then_decays_as_one_over_sqrt():
    config = TrainConfig(
        steps=100_000,
        peak_learning_rate=1e-3,
        warmup_steps=100,
        schedule="rsqrt",
        rsqrt_ref_steps=1000,
    )
    lr = config.learning_rate()
    expected = {0: 0.0, 50: 5e-4, 100: 1e-3, 1000: 1e-3, 4000: 5e-4, 16000: 2.5e-4}
    for step, want in expected.items():
        np.testing.assert_allclose(float(lr(step)), want, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="input_noise"):
        TrainConfig(input_noise=-0.1)


def test_input_noise_perturbs_each_channel_by_its_std(archive, statistics):
    """perturb_inputs adds independent unit-variance noise times scale x std to both states."""
    import jax.numpy as jnp

    from weather.model.denoiser import Forecaster
    from weather.model.task import Normalization

    model = tiny_model_config()
    norm = Normalization.from_statistics(model.task, statistics)
    lat, lon = archive["latitude"].values, archive["longitude"].values
    forecaster = Forecaster(model, norm, lat, lon)
    shape = (64, *forecaster.shape)
    zeros = jnp.zeros(shape, jnp.float32)
    prev, cur = forecaster.perturb_inputs(jax.random.key(0), zeros, zeros, 0.1)
    for x in (prev, cur):
        ratio = np.asarray(x).reshape(-1, shape[-1]).std(axis=0) / (0.1 * norm.std)
        # 64 x H x W draws per channel of unit-variance noise: the sample std is within a few
        # per cent of 1 (spherical noise is correlated only within one field).
        np.testing.assert_allclose(ratio, 1.0, rtol=0.1)
    assert float(jnp.abs(prev - cur).max()) > 0


def test_rollout_inputs_train_on_the_ema_models_own_forecast_of_the_current_state(
    archive, statistics
):
    """A step with rollout_inputs=k equals the plain step on a batch whose first k current
    states were replaced by `sample_step` of the EMA parameters from the two states before."""
    import jax.numpy as jnp

    from weather.model.denoiser import Forecaster
    from weather.model.task import Normalization, static_channels
    from weather.model.train import batch_arrays, task_windows, train_step

    model = tiny_model_config()
    norm = Normalization.from_statistics(model.task, statistics)
    lat, lon = archive["latitude"].values, archive["longitude"].values
    forecaster = Forecaster(model, norm, lat, lon)
    windows = task_windows(archive, model.task, PERIOD, 3, seed=0, input_steps=3)
    arrays = {
        k: jnp.asarray(v) for k, v in batch_arrays(windows.load([0, 5, 9]), forecaster).items()
    }
    plain_windows = task_windows(archive, model.task, PERIOD, 3, seed=0)
    anchor = windows.anchors[[0, 5, 9]]
    plain = batch_arrays(
        plain_windows.load(np.searchsorted(plain_windows.anchors, anchor)), forecaster
    )
    for name, value in plain.items():  # the three-state batch's last two states are the task's
        np.testing.assert_array_equal(arrays[name], value)
    np.testing.assert_array_equal(arrays["rollout_start"][:, 1], arrays["previous"])
    static = forecaster.normalize_static(jnp.asarray(static_channels(archive, forecaster.task)))
    params = forecaster.init_params(jax.random.key(1))
    # EMA != params in every leaf (the output layer starts at zero, so scaling would not do):
    # the test tells which of the two made the forecast.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    noise = [0.05 * jax.random.normal(jax.random.key(i), p.shape) for i, p in enumerate(leaves)]
    ema = jax.tree_util.tree_unflatten(treedef, [p + n for p, n in zip(leaves, noise, strict=True)])
    key, k = jax.random.key(2), 2

    def run(config, batch):  # type: ignore[no-untyped-def]
        optimizer = config.optimizer()
        fn = jax.jit(train_step(forecaster, config))
        copy = jax.tree_util.tree_map(jnp.copy, (params, ema))
        return fn(*copy, optimizer.init(params), key, batch, static, jnp.int32(5))

    config = TrainConfig(steps=10, batch_size=3, warmup_steps=1, rollout_inputs=k)
    got = run(config, arrays)
    own = forecaster.sample_step(
        ema,
        jax.random.split(jax.random.fold_in(key, 11), k),
        arrays["rollout_start"][:k, 0],
        arrays["previous"][:k],
        arrays["rollout_forcings"][:k, 0],
        static,
    )
    # The model's forecast is not the truth (an untrained network), so the lever changes the step.
    assert float(jnp.abs(own - arrays["current"][:k]).max()) > 1.0
    replaced = dict(arrays, current=arrays["current"].at[:k].set(own))
    want = run(dataclasses.replace(config, rollout_inputs=0), replaced)
    # Same arithmetic in the same compiled order, up to XLA fusing the sampler into the step:
    # float32 rounding of the loss (~1e-7 relative) and of the parameters after one update.
    np.testing.assert_allclose(float(got[3]), float(want[3]), rtol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves(got[0]), jax.tree_util.tree_leaves(want[0]), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rollout_inputs"):
        TrainConfig(batch_size=2, rollout_inputs=3)


@pytest.mark.parametrize("depth", [2, 3])
def test_rollout_depth_makes_both_inputs_the_ema_models_own_chained_forecasts(
    archive, statistics, depth
):
    """With rollout_depth=d >= 2 the step equals the plain step on a batch whose first k
    input states are the EMA model's own: from the truth's (x(t - 12h (d + 1)), x(t - 12h d))
    it forecasts x(t - 12h (d - 1)), then each next state from the two before, to x(t); the
    last two forecasts replace (x(t - 12h), x(t)). The step that makes x(t) draws with
    fold_in(key, 11), each earlier one with the next integer."""
    import jax.numpy as jnp

    from weather.data.times import STEP
    from weather.model.denoiser import Forecaster
    from weather.model.task import Normalization, forcing_channels, static_channels
    from weather.model.train import batch_arrays, task_windows, train_step

    model = tiny_model_config()
    norm = Normalization.from_statistics(model.task, statistics)
    lat, lon = archive["latitude"].values, archive["longitude"].values
    forecaster = Forecaster(model, norm, lat, lon)
    windows = task_windows(archive, model.task, PERIOD, 3, seed=0, input_steps=2 + depth)
    batch = windows.load([0, 4, 7])
    arrays = {k: jnp.asarray(v) for k, v in batch_arrays(batch, forecaster).items()}
    plain_windows = task_windows(archive, model.task, PERIOD, 3, seed=0)
    plain = batch_arrays(
        plain_windows.load(np.searchsorted(plain_windows.anchors, windows.anchors[[0, 4, 7]])),
        forecaster,
    )
    for name, value in plain.items():  # the last two states are the plain batch's
        np.testing.assert_array_equal(arrays[name], value)
    # The rollout starts from the archive's states at t - 12h (d + 1) and t - 12h d; step j
    # forecasts tau = t - 12h (d - 1 - j) with the forcings of (tau - 12h, tau).
    t = np.asarray(batch["time"], dtype="datetime64[ns]")
    level = forecaster.task.levels[0]
    channel = forecaster.task.channel_names().index(f"temperature@{level}")
    for i, ti in enumerate(t):
        for s, back in enumerate((depth + 1, depth)):
            field = archive["temperature"].sel(time=ti - back * STEP, level=level).values
            np.testing.assert_array_equal(arrays["rollout_start"][i, s, ..., channel], field)
    assert arrays["rollout_forcings"].shape[1] == depth
    for j in range(depth):
        tau = t - (depth - 1 - j) * STEP
        want_forcings = forcing_channels(forecaster.task, np.stack([tau - STEP, tau], -1), lon, lat)
        np.testing.assert_array_equal(arrays["rollout_forcings"][:, j], want_forcings)

    static = forecaster.normalize_static(jnp.asarray(static_channels(archive, forecaster.task)))
    leaves, treedef = jax.tree_util.tree_flatten(forecaster.init_params(jax.random.key(1)))

    def perturbed(seed):  # type: ignore[no-untyped-def]
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        noise = [0.05 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
        return jax.tree_util.tree_unflatten(
            treedef, [p + n for p, n in zip(leaves, noise, strict=True)]
        )

    # Neither at the initialisation (its output layer is zero, so the loss would not see the
    # previous state at all): the trained parameters' loss depends on both inputs, and the
    # EMA's forecasts tell which parameters made them.
    params, ema = perturbed(3), perturbed(4)
    key, k = jax.random.key(2), 2

    def run(config, batch):  # type: ignore[no-untyped-def]
        optimizer = config.optimizer()
        fn = jax.jit(train_step(forecaster, config))
        copy = jax.tree_util.tree_map(jnp.copy, (params, ema))
        return fn(*copy, optimizer.init(params), key, batch, static, jnp.int32(5))

    config = TrainConfig(
        steps=10, batch_size=3, warmup_steps=1, rollout_inputs=k, rollout_depth=depth
    )
    got = run(config, arrays)
    states = [arrays["rollout_start"][:k, 0], arrays["rollout_start"][:k, 1]]
    for j, fold in enumerate(range(10 + depth, 10, -1)):  # 12, 11 for d = 2; 13, 12, 11 for 3
        states.append(
            forecaster.sample_step(
                ema,
                jax.random.split(jax.random.fold_in(key, fold), k),
                states[-2],
                states[-1],
                arrays["rollout_forcings"][:k, j],
                static,
            )
        )
    own_previous, own = states[-2], states[-1]
    assert float(jnp.abs(own_previous - arrays["previous"][:k]).max()) > 1.0
    replaced = dict(
        arrays,
        previous=arrays["previous"].at[:k].set(own_previous),
        current=arrays["current"].at[:k].set(own),
    )
    want = run(dataclasses.replace(config, rollout_inputs=0), replaced)
    # As in the depth-1 test: float32 rounding of one compiled step against another.
    np.testing.assert_allclose(float(got[3]), float(want[3]), rtol=1e-5)
    np.testing.assert_allclose(float(got[4]), float(want[4]), rtol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves(got[0]), jax.tree_util.tree_leaves(want[0]), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_rollout_depth_below_one_is_refused():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="rollout_depth: must be >= 1"):
            TrainConfig(rollout_depth=bad)


def test_a_run_saved_before_an_option_existed_resumes_with_its_default(
    tmp_path, archive, statistics
):
    from weather.model.checkpoint import save_checkpoint

    path = _train(tmp_path, archive, statistics, steps=4, stop_after=2)
    saved = load_checkpoint(path)

    def write(train_config):  # type: ignore[no-untyped-def]
        configs = dict(saved["configs"], train=train_config)
        fields = ("normalization", "params", "metadata", "train")
        save_checkpoint(path, configs=configs, **{k: saved[k] for k in fields})

    older = {k: v for k, v in saved["configs"]["train"].items() if k != "rollout_depth"}
    write(older)  # as a version without the option wrote it
    resumed = load_checkpoint(_train(tmp_path, archive, statistics, steps=4))
    assert resumed["train"]["step"] == 4
    write(dict(older, rollout_depth=2))  # a value that is not the default: refused
    with pytest.raises(ValueError, match="other configs"):
        _train(tmp_path, archive, statistics, steps=5)


@pytest.mark.parametrize("depth", [1, 2])
def test_a_run_with_rollout_inputs_trains_and_resumes_exactly(tmp_path, archive, statistics, depth):
    kw = {"rollout_inputs": 1, "rollout_depth": depth}
    straight = load_checkpoint(_train(tmp_path / "a", archive, statistics, steps=4, **kw))
    _train(tmp_path / "b", archive, statistics, steps=4, stop_after=2, **kw)
    resumed = load_checkpoint(_train(tmp_path / "b", archive, statistics, steps=4, **kw))
    for a, b in zip(
        jax.tree_util.tree_leaves(straight["params"]),
        jax.tree_util.tree_leaves(resumed["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(straight["metadata"]["history"][-1]["validation_loss"])


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


def test_the_ema_warms_up_then_decays_at_its_rate(tmp_path, archive, statistics):
    """EMA_t = d_t EMA_{t-1} + (1 - d_t) p_t with d_t = min(decay, (1 + t) / (10 + t)), t from 0."""
    import jax.numpy as jnp

    from weather.model.task import Normalization, static_channels
    from weather.model.train import _setup, batch_arrays, task_windows

    config = TrainConfig(steps=10, batch_size=1, warmup_steps=0, ema_decay=0.5)
    model = tiny_model_config()
    norm = Normalization.from_statistics(model.task, statistics)
    lat, lon = archive["latitude"].values, archive["longitude"].values
    forecaster, step_fn = _setup(model, config, norm, lat, lon)
    params = forecaster.init_params(jax.random.PRNGKey(0))
    ema0 = jax.tree_util.tree_map(jnp.copy, params)
    opt_state = config.optimizer().init(params)
    static = forecaster.normalize_static(jnp.asarray(static_channels(archive, forecaster.task)))
    windows = task_windows(archive, model.task, PERIOD, 1, seed=0)
    arrays = {k: jnp.asarray(v) for k, v in batch_arrays(windows.load([0]), forecaster).items()}
    expected_ema = jax.tree_util.tree_map(lambda x: np.array(x, copy=True), ema0)
    ema = ema0
    for t, decay in enumerate(
        [1 / 10, 2 / 11, 3 / 12, 4 / 13, 5 / 14, 6 / 15, 7 / 16, 8 / 17, 0.5]
    ):
        key = jax.random.PRNGKey(t)
        params, ema, opt_state, _, _ = step_fn(
            params, ema, opt_state, key, arrays, static, jnp.asarray(t, jnp.int32)
        )
        expected_ema = jax.tree_util.tree_map(
            lambda e, p, d=decay: d * e + (1 - d) * np.array(p, copy=True), expected_ema, params
        )
        for got, want in zip(
            jax.tree_util.tree_leaves(ema), jax.tree_util.tree_leaves(expected_ema), strict=True
        ):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_the_feed_gives_each_steps_arrays_made_off_the_loops_thread(
    archive, statistics, monkeypatch, prefetch
):
    """From any step, across an epoch's end, the batch_arrays of that step's windows, as device
    arrays; with prefetch every batch (reading, stacking, copying) is made in the prefetch thread.
    """
    from weather.data.windows import Prefetcher
    from weather.model import train as train_lib
    from weather.model.denoiser import Forecaster
    from weather.model.task import Normalization

    model = tiny_model_config()
    lat, lon = archive["latitude"].values, archive["longitude"].values
    forecaster = Forecaster(model, Normalization.from_statistics(model.task, statistics), lat, lon)
    windows = train_lib.task_windows(archive, model.task, PERIOD, 2, seed=0)
    first = windows.batches_per_epoch - 1
    rows = [windows.epoch_batches(0)[-1], *windows.epoch_batches(1)[:2]]
    made_in: list[str] = []
    batch_arrays = train_lib.batch_arrays

    def recording(batch, f):  # type: ignore[no-untyped-def]
        made_in.append(threading.current_thread().name)
        return batch_arrays(batch, f)

    monkeypatch.setattr(train_lib, "batch_arrays", recording)
    feed = train_lib.device_batches(windows, forecaster, first, prefetch)
    try:
        got = [next(feed) for _ in rows]
    finally:
        if isinstance(feed, Prefetcher):
            feed.close()
    loop_thread = threading.current_thread().name
    assert set(made_in) == ({"weather-prefetch"} if prefetch else {loop_thread})
    for arrays, batch_rows in zip(got, rows, strict=True):
        want = batch_arrays(windows.load(batch_rows), forecaster)
        assert arrays.keys() == want.keys()
        for name, value in want.items():
            assert isinstance(arrays[name], jax.Array)
            np.testing.assert_array_equal(np.asarray(arrays[name]), value)
