"""Training: AdamW with warm-up and cosine decay, gradient clipping, EMA, resumable checkpoints.

`train` runs on whatever JAX device is present (CPU here, unchanged on GPU/TPU). Every
`checkpoint_every` steps it writes `<run>/checkpoint.msgpack` atomically with the EMA parameters
(for inference) and everything resuming needs (raw parameters, optimiser state, step); the data
order and the random keys are functions of the step (`fold_in(key, step)`, epoch/batch from the
step), so a resumed run continues exactly as an uninterrupted one. Losses go to
`<run>/history.jsonl` (one JSON line per logged step) and `<run>/loss.png`.

Data parallel: given a `mesh` (`data_mesh`), the parameters, EMA and optimiser state are
replicated on every device and each batch is split along its first axis; XLA inserts the
gradients' all-reduce, so the step is the one-device step on the same batch up to the order of
float32 sums. Across hosts (`jax.distributed`) every process draws the same global batch (the
order is a function of the seed and step) and places only its own devices' rows; process 0
alone writes files.
"""

from __future__ import annotations

import dataclasses
import json
import time as wallclock
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from flax import serialization
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from weather.data.times import STEP
from weather.data.windows import Batch, Prefetcher, WindowConfig, Windows
from weather.model.checkpoint import load_checkpoint, save_checkpoint
from weather.model.denoiser import Forecaster, ModelConfig
from weather.model.task import (
    Normalization,
    TaskConfig,
    forcing_channels,
    state_to_channels,
    static_channels,
    valid_mask,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
      steps: total optimiser steps.
      batch_size: training windows per step.
      peak_learning_rate: AdamW's learning rate after warm-up.
      warmup_steps: linear warm-up from 0.
      schedule: after the warm-up, ``"cosine"`` decays to ``final_learning_rate_fraction`` of
        the peak at `steps`; ``"rsqrt"`` (EDM2's, Karras et al. 2024) holds the peak until
        `rsqrt_ref_steps` and then decays as ``peak / sqrt(step / rsqrt_ref_steps)``, so a run
        of open-ended length can stop at any step with a sensible learning rate behind it.
      rsqrt_ref_steps: where the ``"rsqrt"`` decay starts.
      final_learning_rate_fraction: cosine decay ends at this fraction of the peak.
      weight_decay: AdamW's decoupled weight decay.
      b1, b2: Adam's moment decays.
      grad_clip: global-norm clipping threshold.
      ema_decay: decay of the parameters' exponential moving average (used for inference),
        reached after a warm-up: step t uses min(ema_decay, (1 + t) / (10 + t)).
      seed: parameter initialisation, data order and noise draws.
      checkpoint_every, log_every, validate_every: in steps.
      validation_batches: fixed validation batches (same windows and noise every time).
      validation_sigmas: noise levels ``sigma`` at which the validation loss is also reported
        band by band (fixed levels, same windows and noise), the learning curve's bands: low
        levels fix fine detail and the sample's spread, high ones the conditional mean.
      input_noise: std of the isotropic noise added to both input states during training, in
        units of each channel's climatological std (0: none); a lever against drift.
      rollout_inputs: rows of each batch (the first ones) whose current state ``x(t)`` is
        replaced by the EMA model's own 12 h forecast of it from ``(x(t - 24h), x(t - 12h))``,
        sampled with the model's sampler (0: none; the "pushforward" lever against drift: the
        model learns to take its own, imperfect, states back towards the truth, as a rollout
        needs). Training then reads windows with three input states.
      rollout_depth: with ``rollout_inputs``, how many of the model's own 12 h steps make the
        inputs: 1 replaces ``x(t)`` only (the truth's ``x(t - 12h)`` stays beside it), 2 also
        replaces ``x(t - 12h)`` by its forecast from ``(x(t - 36h), x(t - 24h))`` and then
        forecasts ``x(t)`` from ``(x(t - 24h), x̂(t - 12h))``, so that both inputs are the
        model's, as they are in a rollout from its third step on; ``d > 2`` rolls out ``d``
        steps from ``(x(t - 12h (d + 1)), x(t - 12h d))``, so the loss sees the states of a
        ``12h d`` forecast, as the second week's steps do. Windows then hold
        ``2 + rollout_depth`` input states; each step costs one sampler call per row.
      snapshot_every: keep an inference-only copy of the EMA parameters every this many steps
        in ``<run>/snapshots/step_NNNNNNN.msgpack`` (0: none), for the learning curve.
      prefetch: training batches loaded ahead in a background thread.
    """

    steps: int = 10_000
    batch_size: int = 4
    peak_learning_rate: float = 1e-3
    warmup_steps: int = 500
    schedule: str = "cosine"
    rsqrt_ref_steps: int = 2000
    final_learning_rate_fraction: float = 0.01
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    validate_every: int = 500
    validation_batches: int = 8
    validation_sigmas: tuple[float, ...] = (0.05, 0.25, 1.0, 5.0, 25.0)
    input_noise: float = 0.0
    rollout_inputs: int = 0
    rollout_depth: int = 1
    snapshot_every: int = 0
    prefetch: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "validation_sigmas", tuple(self.validation_sigmas))
        for name in (
            "steps",
            "batch_size",
            "checkpoint_every",
            "log_every",
            "validate_every",
            "rsqrt_ref_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.schedule not in ("cosine", "rsqrt"):
            raise ValueError(f"schedule: must be 'cosine' or 'rsqrt', got {self.schedule!r}")
        if not (np.isfinite(self.input_noise) and self.input_noise >= 0):
            raise ValueError(f"input_noise: must be finite and >= 0, got {self.input_noise}")
        if not 0 <= self.rollout_inputs <= self.batch_size:
            raise ValueError(
                f"rollout_inputs: must be in [0, batch_size] = [0, {self.batch_size}], "
                f"got {self.rollout_inputs}"
            )
        if self.rollout_depth < 1:
            raise ValueError(f"rollout_depth: must be >= 1, got {self.rollout_depth}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every: must be >= 0, got {self.snapshot_every}")
        if any(not (np.isfinite(s) and s > 0) for s in self.validation_sigmas):
            raise ValueError(
                f"validation_sigmas: must be finite and > 0, got {self.validation_sigmas}"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: must be in [0, 1), got {self.ema_decay}")
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps: must be in [0, steps) = [0, {self.steps}), got {self.warmup_steps}"
            )

    def learning_rate(self) -> optax.Schedule:
        """The learning rate as a function of the step."""
        if self.schedule == "cosine":
            return optax.warmup_cosine_decay_schedule(
                init_value=0.0,
                peak_value=self.peak_learning_rate,
                warmup_steps=self.warmup_steps,
                decay_steps=self.steps,
                end_value=self.peak_learning_rate * self.final_learning_rate_fraction,
            )
        peak, warmup, ref = self.peak_learning_rate, self.warmup_steps, self.rsqrt_ref_steps

        def rsqrt(step: jax.Array) -> jax.Array:
            t = jnp.asarray(step, jnp.float32)
            ramp = jnp.minimum(1.0, t / warmup) if warmup else 1.0
            return peak * ramp * jax.lax.rsqrt(jnp.maximum(t / ref, 1.0))

        return rsqrt

    def optimizer(self) -> optax.GradientTransformation:
        schedule = self.learning_rate()
        return optax.chain(
            optax.clip_by_global_norm(self.grad_clip),
            optax.adamw(schedule, b1=self.b1, b2=self.b2, weight_decay=self.weight_decay),
        )


@dataclasses.dataclass
class TrainState:
    params: Any
    ema: Any
    opt_state: Any
    step: int


def batch_arrays(batch: Batch, forecaster: Forecaster) -> dict[str, np.ndarray]:
    """A windows batch as the model's arrays (physical units, channels last).

    ``previous``, ``current``, ``target``: ``[B, H, W, C]`` at ``t - 12h``, ``t``, ``t + 12h``;
    ``forcings``: ``[B, H, W, F]`` at ``(t, t + 12h)``. A batch with ``n >= 3`` input states
    (``t - 12h (n - 1)`` to ``t``) also gives what the model's own rollout to ``x(t)`` is made
    from: ``rollout_start`` ``[B, 2, H, W, C]``, the two oldest states (``t - 12h (n - 1)``
    and ``t - 12h (n - 2)``), and ``rollout_forcings`` ``[B, n - 2, H, W, F]``, the forcings
    of each 12 h step from there to ``t`` (step ``j`` forecasts the state at
    ``tau = t - 12h (n - 3 - j)`` with the forcings at ``(tau - 12h, tau)``).
    """
    task = forecaster.task
    inputs = batch["inputs"]
    steps = next(iter(inputs.values())).shape[1]

    def state(i: int) -> np.ndarray:
        return state_to_channels(task, {k: v[:, i] for k, v in inputs.items()})

    t = np.asarray(batch["time"], dtype="datetime64[ns]")
    lon, lat = forecaster.longitude, forecaster.latitude
    arrays = {
        "previous": state(steps - 2),
        "current": state(steps - 1),
        "target": state_to_channels(task, batch["targets"]),
        "forcings": forcing_channels(task, np.stack([t, t + STEP], -1), lon, lat),
    }
    if steps >= 3:
        arrays["rollout_start"] = np.stack([state(0), state(1)], axis=1)
        # Step j forecasts tau = t - (steps - 3 - j) 12h, the last one (j = steps - 3) x(t).
        arrays["rollout_forcings"] = np.stack(
            [
                forcing_channels(task, np.stack([tau - STEP, tau], -1), lon, lat)
                for tau in (t - (steps - 3 - j) * STEP for j in range(steps - 2))
            ],
            axis=1,
        )
    return arrays


def task_windows(
    data: xr.Dataset,
    task: TaskConfig,
    period: tuple[Any, Any],
    batch_size: int,
    *,
    seed: int,
    input_steps: int = 2,
) -> Windows:
    """Training windows of the task's fields over `period` (loaded in the caller's thread)."""
    return Windows(
        data,
        WindowConfig(
            start=period[0],
            end=period[1],
            variables=task.level_variables + task.surface_variables,
            static_variables=task.static_variables,
            levels=task.levels,
            batch_size=batch_size,
            seed=seed,
            prefetch=0,
            input_steps=input_steps,
        ),
    )


def data_mesh(devices: int | str | None) -> Mesh | None:
    """A one-axis ("data") mesh over `select_devices(devices)`, or None for one device.

    Raises:
      ValueError: the request and how many devices this process sees.
    """
    from weather.model.rollout import select_devices

    chosen = select_devices(devices)
    return Mesh(np.asarray(chosen), ("data",)) if len(chosen) > 1 else None


def _placement(mesh: Mesh | None) -> tuple[Callable[[Any], Any], Callable[[np.ndarray], Any]]:
    """(replicate a pytree, split an array's first axis) over the mesh; plain copies without."""
    if mesh is None:
        return jax.device_put, jax.device_put
    whole = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P("data"))

    def replicate(tree: Any) -> Any:
        return jax.device_put(tree, whole)

    def split(array: np.ndarray) -> Any:
        # From the host array every process holds: each places only its own devices' rows.
        array = np.asarray(array)
        return jax.make_array_from_callback(array.shape, rows, lambda index: array[index])

    return replicate, split


def make_train_step(
    forecaster: Forecaster, config: TrainConfig, mesh: Mesh | None = None
) -> Callable[..., Any]:
    """`train_step` of the forecaster, compiled, donating the parameter, EMA and optimiser
    buffers; over a `mesh` its outputs stay replicated (the batch comes split)."""
    out = None if mesh is None else NamedSharding(mesh, P())
    return jax.jit(train_step(forecaster, config), donate_argnums=(0, 1, 2), out_shardings=out)


def train_step(forecaster: Forecaster, config: TrainConfig) -> Callable[..., Any]:
    """One optimiser step as a pure function (for callers that compile it into more):

    ``(params, ema, opt_state, key, arrays, static, step_number) -> (params, ema, opt_state,
    loss, grad_norm)``, ``arrays`` the `batch_arrays` of one batch (physical units, channels
    last), ``static`` the normalised static fields ``[H, W, S]``, ``step_number`` an int32
    scalar (the EMA's warm-up and the schedule's position).
    """
    optimizer = config.optimizer()

    def step(params, ema, opt_state, key, arrays, static, step_number):
        previous, current = arrays["previous"], arrays["current"]
        if config.rollout_inputs:
            # The deployed model (EMA weights, its own sampler) rolls out from the two oldest
            # states for the first rows; only the loss's parameters are differentiated, so its
            # states are constants. The step that makes x(t) draws with fold_in(key, 11), the
            # one before it with fold_in(key, 12) and so on, so that each depth keeps the draws
            # the shallower depths had.
            k, depth = config.rollout_inputs, config.rollout_depth
            older, newer = arrays["rollout_start"][:k, 0], arrays["rollout_start"][:k, 1]
            for j in range(depth):
                own = forecaster.sample_step(
                    ema,
                    jax.random.split(jax.random.fold_in(key, 11 + depth - 1 - j), k),
                    older,
                    newer,
                    arrays["rollout_forcings"][:k, j],
                    static,
                )
                older, newer = newer, own
            if depth >= 2:
                previous = jnp.concatenate([older, previous[k:]], axis=0)
            current = jnp.concatenate([newer, current[k:]], axis=0)
        if config.input_noise:
            # A key of its own: without input noise the loss sees exactly the key it always did.
            previous, current = forecaster.perturb_inputs(
                jax.random.fold_in(key, 7), previous, current, config.input_noise
            )

        def loss_fn(p):
            return forecaster.loss(
                p,
                key,
                previous,
                current,
                arrays["target"],
                arrays["forcings"],
                static,
            )

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # EMA warm-up (as TensorFlow's num_updates): the decay grows as (1 + t) / (10 + t) up to
        # ema_decay, so early on the average follows the training instead of the random start.
        t = step_number.astype(jnp.float32)
        decay = jnp.minimum(config.ema_decay, (1.0 + t) / (10.0 + t))
        ema = optax.incremental_update(params, ema, 1.0 - decay)
        return params, ema, opt_state, loss, optax.tree.norm(grads)

    return step


_SETUPS: dict[Any, tuple[Forecaster, Callable[..., Any]]] = {}


def _setup(
    model_config: ModelConfig,
    train_config: TrainConfig,
    norm: Normalization,
    lat: np.ndarray,
    lon: np.ndarray,
    mesh: Mesh | None = None,
) -> tuple[Forecaster, Callable[..., Any]]:
    """The forecaster and its compiled step, reused by runs with the same setup (tests, resume)."""
    key = (
        model_config,
        train_config,
        mesh,
        tuple(np.asarray(v).tobytes() for v in norm.to_dict().values()),
        np.asarray(lat).tobytes(),
        np.asarray(lon).tobytes(),
    )
    if key not in _SETUPS:
        if len(_SETUPS) > 4:
            _SETUPS.clear()
        forecaster = Forecaster(model_config, norm, lat, lon)
        _SETUPS[key] = (forecaster, make_train_step(forecaster, train_config, mesh))
    return _SETUPS[key]


def device_batches(
    windows: Windows,
    forecaster: Forecaster,
    first_step: int,
    prefetch: int,
    place: Callable[[np.ndarray], Any] = jax.device_put,
) -> Iterator[dict[str, jax.Array]]:
    """The step's device arrays (`batch_arrays`) of every batch from `first_step` on, forever.

    Epoch and position are functions of the step. With `prefetch` > 0 all the host work (reading
    the windows, stacking them into channels, the copy to the device) runs in a `Prefetcher`
    thread, so the training loop waits in ``next()`` only when the loader falls behind. Done in
    the loop, the stacking and copying alone took 2.6% of the loop's time (U-Net of the shipped
    checkpoint, batch 8, two CPU cores, reading prefetched); here the wait is 0.02%
    (``benchmarks/data_windows.py``). The caller closes a `Prefetcher` it gets back. `place`
    puts each host array on the device(s) (split over a mesh's devices in data-parallel runs).
    """
    per_epoch = windows.batches_per_epoch
    if per_epoch < 1:
        raise ValueError("training split is smaller than one batch")

    def gen() -> Iterator[dict[str, jax.Array]]:
        step = first_step
        while True:
            epoch, index = divmod(step, per_epoch)
            for rows in windows.epoch_batches(epoch)[index:]:
                arrays = batch_arrays(windows.load(rows), forecaster)
                yield {name: place(value) for name, value in arrays.items()}
                step += 1

    return Prefetcher(gen(), depth=prefetch) if prefetch else gen()


def train(
    *,
    run_dir: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_data: xr.Dataset,
    train_period: tuple[Any, Any],
    statistics: xr.Dataset,
    validation_data: xr.Dataset | None = None,
    validation_period: tuple[Any, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    stop_after_seconds: float | None = None,
    init_params: Any | None = None,
    normalization: Normalization | None = None,
    mesh: Mesh | None = None,
) -> Path:
    """Train (or resume) a forecaster; returns the checkpoint path.

    Args:
      run_dir: where the checkpoint, history and loss curve live; an existing checkpoint there is
        resumed (its configs must match).
      model_config, train_config: what to train and how.
      train_data, validation_data: canonical archives.
      train_period, validation_period: (start, end) of each split, inclusive.
      statistics: normalisation statistics (`weather.data.statistics`), from the training period.
      metadata: provenance recorded in the checkpoint.
      progress: show a progress bar.
      stop_after: stop after this many steps of this call (as an interruption would); for tests.
      stop_after_seconds: stop once this call has trained this long (wall clock, s); the run
        resumes from there when called again, so a long training can run in fixed-length sittings.
      init_params: parameters (a state dict, e.g. another checkpoint's ``params``) to start a new
        run from instead of a random initialisation (warm start: raw and EMA parameters both
        start there, the optimiser afresh); ignored when the run directory resumes.
      normalization: per-channel scales to use instead of those of `statistics` (a warm start
        keeps its source's, so that the parameters mean what they meant).
      mesh: train data-parallel over this mesh's devices (`data_mesh`): the batch size must be a
        multiple of their number. Not part of the run's configs: a run may resume on other
        devices.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / "checkpoint.msgpack"
    task = model_config.task
    norm = normalization or Normalization.from_statistics(task, statistics)
    if norm.valid is None:
        norm = norm.with_valid(valid_mask(task, train_data))
    lat = train_data["latitude"].values
    lon = train_data["longitude"].values
    if mesh is not None and train_config.batch_size % mesh.devices.size:
        raise ValueError(
            f"batch_size: {train_config.batch_size} does not split evenly over "
            f"{mesh.devices.size} devices"
        )
    replicate, split = _placement(mesh)
    writer = jax.process_index() == 0  # across hosts, one process writes
    forecaster, step_fn = _setup(model_config, train_config, norm, lat, lon, mesh)
    configs = {
        "model": model_config.to_dict(),
        "train": dataclasses.asdict(train_config),
        "grid": {"latitude": lat.tolist(), "longitude": lon.tolist()},
    }
    key = jax.random.PRNGKey(train_config.seed)
    if init_params is None:
        params = forecaster.init_params(jax.random.fold_in(key, 0))
    else:
        template = forecaster.param_shapes()
        params = jax.device_put(serialization.from_state_dict(template, init_params))
        _check_shapes(template, params)
    optimizer = train_config.optimizer()
    opt_state = optimizer.init(params)
    # A copy: the step donates both buffers, which must therefore be distinct.
    ema = jax.tree_util.tree_map(jnp.copy, params)
    state = TrainState(params=params, ema=ema, opt_state=opt_state, step=0)
    history: list[dict[str, Any]] = []
    elapsed = 0.0
    if ckpt_path.exists():
        saved = load_checkpoint(ckpt_path)
        # A run saved before a training option existed ran with that option's default.
        defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))
        saved_configs = dict(saved["configs"], train={**defaults, **saved["configs"]["train"]})
        if saved_configs != json.loads(json.dumps(configs)):
            raise ValueError(
                f"{ckpt_path}: was trained with other configs; use another run directory"
            )
        tr = saved["train"]
        state = TrainState(
            params=serialization.from_state_dict(params, tr["params"]),
            ema=serialization.from_state_dict(params, saved["params"]),
            opt_state=serialization.from_state_dict(opt_state, tr["opt_state"]),
            step=int(tr["step"]),
        )
        history = saved["metadata"].get("history", [])
        elapsed = float(saved["metadata"].get("train_seconds", 0.0))
    state = TrainState(
        params=replicate(state.params),
        ema=replicate(state.ema),
        opt_state=replicate(state.opt_state),
        step=state.step,
    )
    static = jnp.asarray(static_channels(train_data, task))
    static_n = replicate(forecaster.normalize_static(static))
    windows = task_windows(
        train_data,
        task,
        train_period,
        train_config.batch_size,
        seed=train_config.seed,
        input_steps=2 + train_config.rollout_depth if train_config.rollout_inputs else 2,
    )
    val_eval = _validation(
        forecaster, train_config, validation_data, validation_period, static_n, split
    )

    def save() -> None:
        if not writer:
            return
        meta = dict(metadata or {})
        meta.update(
            history=history,
            train_seconds=elapsed,
            parameters=forecaster.count_params(state.params),
            statistics=dict(statistics.attrs),
            # Of the latest sitting: a run may resume on other devices.
            devices=1 if mesh is None else int(mesh.devices.size),
            processes=jax.process_count(),
        )
        save_checkpoint(
            ckpt_path,
            configs=configs,
            normalization=norm.to_dict(),
            params=serialization.to_state_dict(state.ema),
            metadata=meta,
            train={
                "params": serialization.to_state_dict(state.params),
                "opt_state": serialization.to_state_dict(state.opt_state),
                "step": state.step,
            },
        )

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=train_config.steps, initial=state.step, desc="train", unit="step")
    batches = device_batches(windows, forecaster, state.step, train_config.prefetch, split)
    losses: list[float] = []
    done_here = 0
    started = wallclock.perf_counter()
    try:
        while state.step < train_config.steps:
            if stop_after is not None and done_here >= stop_after:
                break
            if (
                stop_after_seconds is not None
                and wallclock.perf_counter() - started >= stop_after_seconds
            ):
                break
            t0 = wallclock.perf_counter()
            arrays = next(batches)
            step_key = jax.random.fold_in(jax.random.fold_in(key, 1), state.step)
            params, ema, opt_state, loss, gnorm = step_fn(
                state.params,
                state.ema,
                state.opt_state,
                step_key,
                arrays,
                static_n,
                jnp.asarray(state.step, jnp.int32),
            )
            state = TrainState(params=params, ema=ema, opt_state=opt_state, step=state.step + 1)
            losses.append(float(loss))
            elapsed += wallclock.perf_counter() - t0
            done_here += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if state.step % train_config.log_every == 0 or state.step == train_config.steps:
                entry: dict[str, Any] = {
                    "step": state.step,
                    "loss": float(np.mean(losses)),
                    "grad_norm": float(gnorm),
                    "seconds": round(elapsed, 2),
                }
                losses = []
                if val_eval is not None and (
                    state.step % train_config.validate_every == 0
                    or state.step == train_config.steps
                ):
                    entry.update(val_eval(state.ema))
                history.append(entry)
                if writer:
                    with open(run / "history.jsonl", "a") as f:
                        f.write(json.dumps(entry) + "\n")
            if state.step % train_config.checkpoint_every == 0 or state.step == train_config.steps:
                save()
            if (
                writer
                and train_config.snapshot_every
                and state.step % train_config.snapshot_every == 0
            ):
                save_snapshot(run, state.step, configs, norm, state.ema, elapsed, metadata)
    finally:
        if bar is not None:
            bar.close()
        if isinstance(batches, Prefetcher):
            batches.close()
    if state.step == train_config.steps or done_here:
        save()
        if writer:
            plot_history(history, run / "loss.png")
    return ckpt_path


def _check_shapes(template: Any, params: Any) -> None:
    want = dict(jax.tree_util.tree_leaves_with_path(template))
    for path, value in jax.tree_util.tree_leaves_with_path(params):
        expected = want.get(path)
        if expected is None or tuple(expected.shape) != tuple(np.shape(value)):
            raise ValueError(
                f"init_params: parameter {jax.tree_util.keystr(path)} has shape "
                f"{tuple(np.shape(value))}, the model makes "
                f"{None if expected is None else tuple(expected.shape)}"
            )


def save_snapshot(
    run: Path,
    step: int,
    configs: dict[str, Any],
    norm: Normalization,
    ema: Any,
    seconds: float,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """An inference-only checkpoint of the EMA parameters at `step` (the learning curve's), with
    the run's provenance (archives, periods, warm-start source), so that it can be exported,
    shipped or warm-started from like the run's own checkpoint."""
    return save_checkpoint(
        run / "snapshots" / f"step_{step:07d}.msgpack",
        configs=configs,
        normalization=norm.to_dict(),
        params=serialization.to_state_dict(ema),
        metadata={**(provenance or {}), "step": step, "train_seconds": round(seconds, 2)},
    )


def band_label(sigma: float) -> str:
    """The history's key of one validation band, e.g. ``validation_sigma_0.25``."""
    return f"validation_sigma_{sigma:g}"


def _validation(
    forecaster: Forecaster,
    config: TrainConfig,
    data: xr.Dataset | None,
    period: tuple[Any, Any] | None,
    static_n: jnp.ndarray,
    place: Callable[[np.ndarray], Any] = jax.device_put,
) -> Callable[[Any], dict[str, float]] | None:
    """A deterministic validation function of the parameters (fixed windows and noise).

    Returns ``{"validation_loss": L, "validation_sigma_S": L_S, ...}``: the loss with training's
    noise-level distribution, and at each of `config.validation_sigmas`.
    """
    if data is None or period is None:
        return None
    task = forecaster.task
    windows = task_windows(data, task, period, config.batch_size, seed=12345)
    # Evenly spaced windows through the period (its seasons), not just its start.
    order = windows.epoch_batches(0)
    picks = np.linspace(0, len(order) - 1, min(config.validation_batches, len(order))).astype(int)
    batches = [
        {k: place(v) for k, v in batch_arrays(windows.load(order[i]), forecaster).items()}
        for i in picks
    ]
    key = jax.random.PRNGKey(987654321)
    loss_fn = forecaster.jitted_loss

    def mean_loss(params: Any, sigma: float | None) -> float:
        values = [
            float(
                loss_fn(
                    params,
                    jax.random.fold_in(key, i),
                    b["previous"],
                    b["current"],
                    b["target"],
                    b["forcings"],
                    static_n,
                    None if sigma is None else jnp.float32(sigma),
                )
            )
            for i, b in enumerate(batches)
        ]
        return float(np.mean(values))

    def evaluate(params: Any) -> dict[str, float]:
        out = {"validation_loss": mean_loss(params, None)}
        for sigma in config.validation_sigmas:
            out[band_label(sigma)] = mean_loss(params, sigma)
        return out

    return evaluate


def plot_history(history: list[dict[str, Any]], out: Path) -> None:
    """Training (and validation) loss against step, log scale."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], label="training loss")
    val = [(h["step"], h["validation_loss"]) for h in history if "validation_loss" in h]
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "o-", label="validation (EMA params)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("EDM loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(out, dpi=90)
    plt.close(fig)
