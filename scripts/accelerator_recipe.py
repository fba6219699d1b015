"""The accelerator recipe: simulate, train and validate on a GPU machine in one call (~10 min).

Nothing travels but this repository: on the accelerator the script simulates its own training
years (many independent runs of the truth's simulator at once, vmapped), warm-starts from the
shipped checkpoint, trains for a fixed wall time with the whole training set resident on the
device (windows gathered inside the compiled step, so the host never feeds the accelerator),
then scores the new parameters and their source on a validation run simulated with a seed of
its own, and writes everything into ``--out``:

- ``checkpoint.msgpack``: inference-only (EMA parameters, every config, the source's
  normalisation), loadable by `weather.forecast.load_forecaster` and shippable as it is;
- ``validation.json``: validation loss (training's noise levels and per noise-level band),
  one-step (12 h) fair CRPS and spread/skill with GenCast's sampler, and fair CRPS and
  spread/skill at 5 days (and 15 when the validation run is long enough) with spread scale 1,
  for the new parameters and the source, on the same validation inits and noise;
- ``benchmark.json``: device, simulated days per second, training steps and samples per second,
  denoiser calls per second at batch 8 and the training batch, the phases' wall times;
- ``history.jsonl`` (training loss every ``--log-every`` steps) and ``recipe.json`` (settings).

Seeds: training runs use ``1000 + r``, validation ``2000`` (one more run of the same length,
simulated in the same batch): never the standard splits' (train 1 and 4, validation 2, test 3).
Dates: training runs start spread through the year, in 1960; validation on 1961-03-01.

On a GPU machine without this project's environment (see DESIGN.md), first make the wheels of
the pure-Python dependencies it lacks on a machine with a registry
(``scripts/accelerator_wheels.sh``, into ``data/wheels``, about 14 MB) and carry them along; the
recipe installs them offline (``--wheels``) when an import fails. Usage::

    python scripts/accelerator_recipe.py --out $OUT/recipe --minutes 9     # on the GPU
    python scripts/accelerator_recipe.py --tiny --out /tmp/recipe           # CPU check, ~1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAIN_SEED0 = 1000
VALIDATION_SEED = 2000


def ensure_imports(wheels: Path | None) -> None:
    """Import what the recipe needs; install missing wheels offline from ``wheels`` first."""
    sys.path.insert(0, str(REPO))
    try:
        import dinosaur  # noqa: F401
        import flax  # noqa: F401
        import optax  # noqa: F401
        import xarray  # noqa: F401
    except ImportError as error:
        if wheels is None or not wheels.is_dir():
            raise SystemExit(
                f"accelerator_recipe: {error}; make the wheels with "
                "scripts/accelerator_wheels.sh and pass --wheels DIR"
            ) from None
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-index",
                "--no-deps",
                "--quiet",
                "--find-links",
                str(wheels),
                *sorted(p.name for p in wheels.glob("*.whl")),
            ],
            check=True,
            cwd=wheels,
        )


@dataclasses.dataclass
class Simulated:
    """Runs of the simulator in the model's channel layout.

    Attributes:
      states: ``[R, T, H, W, C]`` float32 physical units, 6-hourly.
      times: ``[R, T]`` datetime64[ns].
      static: ``[H, W, S]`` physical static fields.
    """

    states: np.ndarray
    times: np.ndarray
    static: np.ndarray


def simulate_runs(
    config: Any,
    task: Any,
    seeds: list[int],
    starts: list[np.datetime64],
    spinup_days: float,
    days: float,
    log: Any,
    budget_s: float | None = None,
) -> tuple[Simulated, dict[str, float]]:
    """Spin up and run ``len(seeds)`` independent simulations at once (vmapped over runs).

    With ``budget_s``, the recorded days are cut (never the spin-up) when the first block's
    speed says that the whole would not fit in it.
    """
    import dataclasses as dc

    import jax
    import jax.numpy as jnp

    from weather.model.task import state_to_channels
    from weather.sim.dynamics import HeldSuarezModel

    model = HeldSuarezModel(config)
    step = np.timedelta64(config.output_hours, "h")
    per_day = 24 // config.output_hours
    spin_outputs = max(round(spinup_days * per_day), 0)
    outputs = round(days * per_day)
    begins = [s - step * (spin_outputs + 1) for s in starts]
    states = [model.initial_state(seed, begin) for seed, begin in zip(seeds, begins, strict=True)]
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)

    def with_time(state: Any, times: list[np.datetime64]) -> Any:
        phases = [model.set_time(states[0], t).sim_time for t in times]
        return dc.replace(state, sim_time=jnp.stack(phases))

    spin = jax.jit(jax.vmap(lambda s: model._spin(s, 10 * per_day * config.inner_steps)))
    advance = jax.jit(jax.vmap(lambda s: model._advance(s, 10 * per_day)))
    t0 = time.perf_counter()
    done = 0
    while done < spin_outputs:
        n = min(10 * per_day, spin_outputs - done)
        batch = with_time(batch, [b + step * done for b in begins])
        t_block = time.perf_counter()
        if n == 10 * per_day:
            batch = jax.block_until_ready(spin(batch))
        else:
            one = jax.jit(jax.vmap(lambda s, n=n: model._spin(s, n * config.inner_steps)))
            batch = jax.block_until_ready(one(batch))
        if done == 0 and budget_s is not None and n == 10 * per_day:
            # The first block includes compilation: a pessimistic estimate, on purpose.
            per_output = (time.perf_counter() - t_block) / n
            affordable = int(budget_s / per_output) - spin_outputs
            if affordable < outputs:
                outputs = max(affordable, 4 * per_day)
                log(f"budget: recording {outputs / per_day:g} days per run instead of {days:g}")
        done += n
    spin_s = time.perf_counter() - t0
    log(f"spin-up: {len(seeds)} runs x {spinup_days:g} days in {spin_s:.1f} s")
    fields: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    done = 0
    while done < outputs:
        n = min(10 * per_day, outputs - done)
        batch = with_time(batch, [s + step * (done - 1) for s in starts])
        run = (
            advance if n == 10 * per_day else jax.jit(jax.vmap(lambda s, n=n: model._advance(s, n)))
        )
        batch, diags = run(batch)
        host = jax.device_get({k: v for k, v in diags.items() if not k.startswith("native/")})
        for name, value in host.items():
            fields.setdefault(name, []).append(np.asarray(value, np.float32))
        done += n
    run_s = time.perf_counter() - t0
    days = outputs / per_day
    log(f"simulated: {len(seeds)} runs x {days:g} days in {run_s:.1f} s")
    joined = {k: np.concatenate(v, axis=1) for k, v in fields.items()}  # [R, T, ...]
    states_c = state_to_channels(task, joined)  # [R, T, H, W, C]
    if not np.isfinite(states_c).all():
        raise RuntimeError("the simulation blew up (NaN/inf); use a shorter dt")
    times = np.stack([s + step * np.arange(outputs) for s in starts]).astype("datetime64[ns]")
    static = np.asarray(model.surface_geopotential()[0], np.float32)[..., None]
    speed = {
        "spinup_s": round(spin_s, 2),
        "run_s": round(run_s, 2),
        "simulated_days_per_s": round(len(seeds) * days / max(run_s, 1e-9), 2),
    }
    return Simulated(states_c, times, static), speed


def per_time_forcings(times: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """``[..., W, 4]`` year sin/cos and day sin/cos at each time (`forcing_channels` order)."""
    from weather.data import forcings as forcings_lib

    flat = forcings_lib.forcings(times.reshape(-1), longitude)
    w = longitude.size
    out = np.stack(
        [
            np.broadcast_to(
                flat["year_progress_sin"][:, None], (flat["year_progress_sin"].size, w)
            ),
            np.broadcast_to(
                flat["year_progress_cos"][:, None], (flat["year_progress_cos"].size, w)
            ),
            flat["day_progress_sin"],
            flat["day_progress_cos"],
        ],
        axis=-1,
    )
    return out.reshape(*times.shape, w, 4).astype(np.float32)


def window_index(sim: Simulated) -> np.ndarray:
    """``[N, 2]`` (run, anchor) of every window (t - 12 h, t, t + 12 h) of 6-hourly runs."""
    r, t = sim.times.shape
    anchors = np.arange(2, t - 2)
    return np.stack(np.meshgrid(np.arange(r), anchors, indexing="ij"), -1).reshape(-1, 2)


def make_gathering_step(forecaster: Any, config: Any, sim: Simulated) -> tuple[Any, Any]:
    """The training step with the data on the device: ``(params, ema, opt, key, rows, static,
    step) -> ...``, ``rows`` ``[B, 2]`` (run, anchor) indices; and the arrays it closes over."""
    import jax
    import jax.numpy as jnp

    from weather.model.train import train_step

    inner = train_step(forecaster, config)
    data = jax.device_put(sim.states)  # [R, T, H, W, C]
    forcing = jax.device_put(per_time_forcings(sim.times, forecaster.longitude))  # [R, T, W, 4]
    h = forecaster.latitude.size

    def arrays(rows: jax.Array) -> dict[str, jax.Array]:
        r, t = rows[:, 0], rows[:, 1]
        forc = jnp.concatenate([forcing[r, t], forcing[r, t + 2]], axis=-1)  # [B, W, 8]
        return {
            "previous": data[r, t - 2],
            "current": data[r, t],
            "target": data[r, t + 2],
            "forcings": jnp.broadcast_to(forc[:, None], (rows.shape[0], h, *forc.shape[1:])),
        }

    def step(params, ema, opt_state, key, rows, static, step_number):  # type: ignore[no-untyped-def]
        return inner(params, ema, opt_state, key, arrays(rows), static, step_number)

    return jax.jit(step, donate_argnums=(0, 1, 2)), arrays


def validation_scores(
    model: Any, sim: Simulated, args: argparse.Namespace, arrays: Any
) -> dict[str, Any]:
    """Validation loss (overall and per band) and ensemble skill of one parameter set."""
    import jax
    import jax.numpy as jnp

    from weather.model.rollout import Roller, RolloutConfig
    from weather.model.sampler import SamplerOverride
    from weather.model.train import TrainConfig, band_label
    from weather.scoring import kernels

    fc = model.forecaster
    static_n = fc.normalize_static(jnp.asarray(sim.static))
    rows = window_index(sim)
    picks = rows[np.linspace(0, len(rows) - 1, args.val_windows).astype(int)]
    key = jax.random.PRNGKey(987654321)
    out: dict[str, Any] = {}
    batches = [picks[i : i + args.batch_size] for i in range(0, len(picks), args.batch_size)]

    def loss(sigma: float | None) -> float:
        values = []
        for i, b in enumerate(batches):
            a = arrays(jnp.asarray(b))
            values.append(
                float(
                    fc.jitted_loss(
                        model.params,
                        jax.random.fold_in(key, i),
                        a["previous"],
                        a["current"],
                        a["target"],
                        a["forcings"],
                        static_n,
                        None if sigma is None else jnp.float32(sigma),
                    )
                )
            )
        return float(np.mean(values))

    out["validation_loss"] = round(loss(None), 5)
    for sigma in TrainConfig().validation_sigmas:
        out[band_label(sigma)] = round(loss(sigma), 5)
    weights = np.asarray(fc.weights)[:, 0, 0]  # [H] area x mean level weight: area only below
    area = weights / weights.mean()
    names = fc.task.channel_names()
    targets = {"z500": "geopotential@500", "t850": "temperature@850", "sp": "surface_pressure"}
    channels = {k: names.index(v) for k, v in targets.items() if v in names}
    t_axis = sim.times.shape[1]
    for kind, spec, steps in (
        ("12h", args.short_sampler, 1),
        ("long", args.long_sampler, args.long_steps),
    ):
        if 2 + steps * 2 >= t_axis:
            continue
        roller = Roller(
            fc,
            RolloutConfig(
                chunk_steps=steps, sampler=SamplerOverride.parse(spec).apply(fc.config.sampler)
            ),
        )
        anchors = np.linspace(2, t_axis - 1 - 2 * steps, args.val_inits).astype(int)
        crps: dict[str, list[np.ndarray]] = {k: [] for k in channels}
        mse: dict[str, list[np.ndarray]] = {k: [] for k in channels}
        var: dict[str, list[np.ndarray]] = {k: [] for k in channels}
        for i, anchor in enumerate(anchors):
            r = i % sim.states.shape[0]
            _, states = next(
                roller.run(
                    model.params,
                    previous=sim.states[r, anchor - 2],
                    current=sim.states[r, anchor],
                    static=sim.static,
                    init_time=sim.times[r, anchor],
                    steps=steps,
                    members=args.members,
                    seed=i,
                )
            )  # [k, M, H, W, C]
            truth = sim.states[r, anchor + 2 : anchor + 2 * steps + 1 : 2]  # [k, H, W, C]
            for name, c in channels.items():
                ens = np.moveaxis(states[..., c], 1, 0)  # [M, k, H, W]
                score = np.asarray(kernels.crps_fair(ens, truth[..., c]))
                crps[name].append((score * area[:, None]).mean(axis=(-2, -1)))
                mean = ens.mean(axis=0)
                mse[name].append((((mean - truth[..., c]) ** 2) * area[:, None]).mean((-2, -1)))
                var[name].append((ens.var(axis=0, ddof=1) * area[:, None]).mean((-2, -1)))
        m = args.members
        leads = [0] if kind == "12h" else [i for i in (9, 29) if i < steps]
        for name in channels:
            c_mean = np.mean(crps[name], axis=0)
            ratio = np.sqrt((m + 1) / m * np.mean(var[name], axis=0) / np.mean(mse[name], axis=0))
            for lead in leads:
                tag = "12h" if kind == "12h" else f"{(lead + 1) // 2}d"
                out.setdefault(f"crps_{tag}", {})[name] = round(float(c_mean[lead]), 5)
                out.setdefault(f"spread_skill_{tag}", {})[name] = round(float(ratio[lead]), 4)
    return out


def denoiser_rate(forecaster: Any, params: Any, batch: int, repeats: int) -> float:
    """Denoiser calls per second (members x calls) at a batch size, after compilation."""
    import jax
    import jax.numpy as jnp

    h, w, c = forecaster.shape
    noisy = jnp.zeros((batch, h, w, c), jnp.float32)
    cond = jnp.zeros((batch, h, w, forecaster.task.n_conditioning), jnp.float32)
    sigma = jnp.ones((batch,), jnp.float32)
    call = jax.jit(forecaster.denoise)
    jax.block_until_ready(call(params, noisy, sigma, cond))
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = call(params, noisy, sigma, cond)
    jax.block_until_ready(out)
    return batch * repeats / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/accelerator"))
    p.add_argument("--wheels", type=Path, default=REPO / "data" / "wheels")
    p.add_argument("--init-from", type=Path, default=REPO / "weather/assets/checkpoint.msgpack")
    p.add_argument("--minutes", type=float, default=9.0, help="wall-time budget of everything")
    p.add_argument("--runs", type=int, default=32, help="independent training simulations")
    p.add_argument("--spinup-days", type=float, default=120.0)
    p.add_argument("--days", type=float, default=90.0, help="recorded days per run")
    p.add_argument("--resolution", default="T31")
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--dt-minutes", type=float, default=40.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--input-noise", type=float, default=0.0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--val-windows", type=int, default=256)
    p.add_argument("--val-inits", type=int, default=16)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--long-steps", type=int, default=30, help="12 h steps of the long rollouts")
    p.add_argument("--short-sampler", default="2s:20,spread_scale=1")
    p.add_argument("--long-sampler", default="2s:5,spread_scale=1")
    p.add_argument("--tiny", action="store_true", help="minutes of CPU: tiny everything")
    args = p.parse_args()
    if args.tiny:
        args.resolution, args.layers, args.dt_minutes = "T21", 8, 60.0
        args.runs, args.spinup_days, args.days = 2, 1.0, 4.0
        args.batch_size, args.val_windows, args.val_inits, args.members = 2, 4, 1, 2
        args.long_steps, args.log_every = 3, 1
        args.short_sampler, args.long_sampler = "2s:2,spread_scale=1", "2s:2,spread_scale=1"
    started = time.perf_counter()
    deadline = started + args.minutes * 60
    ensure_imports(args.wheels)

    import jax
    import jax.numpy as jnp
    from flax import serialization

    from weather.forecast import LoadedModel, load_forecaster
    from weather.model.checkpoint import load_checkpoint, save_checkpoint
    from weather.model.train import TrainConfig
    from weather.sim.dynamics import SimulationConfig

    args.out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(text: str) -> None:
        line = f"[{time.perf_counter() - started:7.1f} s] {text}"
        lines.append(line)
        print(line, flush=True)

    device = jax.devices()[0]
    log(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s)")
    source = load_forecaster(args.init_from)
    saved = load_checkpoint(args.init_from)
    fc = source.forecaster
    sim_config = SimulationConfig(
        resolution=args.resolution,
        layers=args.layers,
        dt_minutes=args.dt_minutes,
        spinup_days=args.spinup_days,
        levels=fc.task.levels,
        output_grid=(fc.latitude.size, fc.longitude.size),
    )
    year = np.timedelta64(365, "D")
    starts = [
        np.datetime64("1960-01-01T00", "ns") + (year * r) // args.runs for r in range(args.runs)
    ]
    # The validation run is one more member of the same vmapped batch (one compilation), with
    # its own seed and start.
    both, sim_speed = simulate_runs(
        sim_config,
        fc.task,
        [TRAIN_SEED0 + r for r in range(args.runs)] + [VALIDATION_SEED],
        [*starts, np.datetime64("1961-03-01T00", "ns")],
        args.spinup_days,
        args.days,
        log,
        budget_s=0.35 * args.minutes * 60,
    )
    train_sim = Simulated(both.states[:-1], both.times[:-1], both.static)
    val_sim = Simulated(both.states[-1:], both.times[-1:], both.static)
    config = TrainConfig(
        steps=10**7,
        batch_size=args.batch_size,
        peak_learning_rate=args.lr,
        warmup_steps=min(100, 10**7 - 1),
        schedule="rsqrt",
        rsqrt_ref_steps=2000,
        input_noise=args.input_noise,
    )
    step_fn, _ = make_gathering_step(fc, config, train_sim)
    _, val_arrays = make_gathering_step(fc, config, val_sim)
    static_n = fc.normalize_static(jnp.asarray(train_sim.static))
    # Copies: the step donates its inputs, and the source's parameters are scored afterwards.
    params = jax.tree_util.tree_map(jnp.copy, source.params)
    ema = jax.tree_util.tree_map(jnp.copy, params)
    opt_state = config.optimizer().init(params)
    rows = window_index(train_sim)
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(config.seed)
    # Validation and saving need about a fifth of the budget (measured on the tiny CPU run).
    train_until = started + (deadline - started) * (0.8 if not args.tiny else 1.0)
    history = []
    step = 0
    t_train = time.perf_counter()
    losses: list[Any] = []
    compile_s = None
    while True:
        batch = jnp.asarray(rows[rng.integers(0, len(rows), args.batch_size)])
        params, ema, opt_state, loss, _ = step_fn(
            params,
            ema,
            opt_state,
            jax.random.fold_in(key, step),
            batch,
            static_n,
            jnp.asarray(step, jnp.int32),
        )
        losses.append(loss)
        step += 1
        if compile_s is None:
            jax.block_until_ready(loss)
            compile_s = time.perf_counter() - t_train
            t_train = time.perf_counter()
        if step % args.log_every == 0:
            entry = {"step": step, "loss": float(np.mean(jax.device_get(losses)))}
            losses = []
            history.append(entry)
            if args.tiny or step % (10 * args.log_every) == 0:
                log(f"step {step}: loss {entry['loss']:.4f}")
            if time.perf_counter() >= train_until or (args.tiny and step >= 3):
                break
    jax.block_until_ready(ema)
    train_s = time.perf_counter() - t_train
    log(
        f"trained {step} steps of {args.batch_size} in {train_s:.1f} s (+{compile_s:.1f} s compile)"
    )
    configs = saved["configs"]
    meta = {
        **{k: v for k, v in saved["metadata"].items() if k != "history"},
        "recipe": "scripts/accelerator_recipe.py",
        "recipe_device": device.device_kind,
        "recipe_steps": step,
        "recipe_batch_size": args.batch_size,
        "recipe_train_seconds": round(train_s, 1),
        "warm_start": str(args.init_from),
        "training_data": f"{args.runs} simulated runs x {args.days:g} days "
        f"({args.resolution} L{args.layers}, seeds {TRAIN_SEED0}..{TRAIN_SEED0 + args.runs - 1})",
    }
    ckpt = save_checkpoint(
        args.out / "checkpoint.msgpack",
        configs=configs,
        normalization=saved["normalization"],
        params=serialization.to_state_dict(jax.device_get(ema)),
        metadata=meta,
    )
    trained = LoadedModel(fc, ema, meta, str(ckpt))
    validation = {
        "trained": validation_scores(trained, val_sim, args, val_arrays),
        "source": validation_scores(source, val_sim, args, val_arrays),
    }
    log(f"validation: {json.dumps(validation)}")
    benchmark = {
        "device": device.device_kind,
        "platform": device.platform,
        "simulation": sim_speed,
        "train_steps": step,
        "train_steps_per_s": round(step / max(train_s, 1e-9), 3),
        "train_samples_per_s": round(step * args.batch_size / max(train_s, 1e-9), 1),
        "train_compile_s": round(compile_s or 0.0, 1),
        "denoiser_calls_per_s": {
            str(b): round(denoiser_rate(fc, ema, b, 3 if args.tiny else 20), 1)
            for b in sorted({8, args.batch_size})
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    (args.out / "validation.json").write_text(json.dumps(validation, indent=1))
    (args.out / "benchmark.json").write_text(json.dumps(benchmark, indent=1))
    (args.out / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (args.out / "recipe.json").write_text(json.dumps(vars(args), default=str, indent=1))
    (args.out / "log.txt").write_text("\n".join(lines) + "\n")
    print(json.dumps({"validation": validation, "benchmark": benchmark}))


if __name__ == "__main__":
    main()
