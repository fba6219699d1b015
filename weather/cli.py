"""The `weather` command line. It only parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from weather.data.location import as_source
from weather.data.times import STEP
from weather.defaults import DEFAULT_CHECKPOINT, DEFAULT_DATA_DIR


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate an ERA5-style archive (primitive equations, seasonal Held-Suarez)",
        description="Simulate an ERA5-style Zarr archive with dinosaur's primitive equations. "
        "Interrupt at any time and run the same command again to resume.",
    )
    p.add_argument(
        "--out", type=Path, help="Zarr store to write (default: data/era5sim/SPLIT.zarr)"
    )
    p.add_argument(
        "--split",
        choices=["train", "train-1", "train-2", "val", "test"],
        help="a standard period; 'train' is two independent runs (train-1, train-2), which two "
        "processes can simulate at once",
    )
    p.add_argument("--start", help="first archive time, ISO 8601 (UTC)")
    p.add_argument("--days", type=float, help="simulated days written to the archive")
    p.add_argument("--seed", type=int, help="seed of the run's initial perturbation")
    p.add_argument("--chunk-days", type=int, help="days per write/checkpoint (default 10)")
    p.add_argument("--resolution", default="T31", help="T21, T31, T42 or T85 (default T31)")
    p.add_argument("--layers", type=int, default=10, help="sigma levels (default 10)")
    p.add_argument("--dt-minutes", type=float, default=40.0, help="model time step (default 40)")
    p.add_argument("--spinup-days", type=float, default=300.0, help="spin-up (default 300 days)")
    p.add_argument("--seasonal-amplitude", type=float, default=15.0, help="K (default 15)")
    p.add_argument("--flat", action="store_true", help="no orography (flat planet)")
    p.add_argument("--levels", help="comma-separated pressure levels in hPa (default: WB2's 13)")
    p.add_argument("--native", action="store_true", help="also keep the model-grid fields")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_DATA_DIR / "cache",
        help="spin-up cache (default data/cache)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from weather.data.variables import WB2_LEVELS
    from weather.sim.dynamics import SimulationConfig
    from weather.sim.simulate import RunSpec, read_progress, simulate
    from weather.sim.splits import SPLITS, split_names

    names = split_names(args.split) if args.split else ("custom",)
    if len(names) > 1 and args.out:
        raise SystemExit(f"--out: split {args.split!r} writes {len(names)} stores; drop --out")
    levels = tuple(int(x) for x in args.levels.split(",")) if args.levels else WB2_LEVELS
    config = SimulationConfig(
        resolution=args.resolution,
        layers=args.layers,
        dt_minutes=args.dt_minutes,
        spinup_days=args.spinup_days,
        seasonal_amplitude=args.seasonal_amplitude,
        orography=not args.flat,
        levels=levels,
    )
    for name in names:
        base = SPLITS.get(name) or RunSpec(start=np.datetime64("2000-01-01"), days=30)
        spec = RunSpec(
            start=np.datetime64(args.start) if args.start else base.start,
            days=args.days if args.days is not None else base.days,
            seed=args.seed if args.seed is not None else base.seed,
            chunk_days=args.chunk_days if args.chunk_days is not None else base.chunk_days,
        )
        out = args.out or DEFAULT_DATA_DIR / "era5sim" / f"{name}.zarr"
        simulate(
            out,
            config=config,
            spec=spec,
            native=args.native,
            cache_dir=args.cache_dir,
            progress=not args.quiet,
        )
        print(json.dumps({"store": str(out), "progress": read_progress(out)}, indent=1))
    return 0


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="physical sanity check of an archive (jets, EKE, seasons)")
    p.add_argument("archive", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON only")


def _check(args: argparse.Namespace) -> int:
    from weather.sim.sanity import format_report, sanity_report

    report = sanity_report(args.archive)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


def _add_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats", help="normalisation statistics (mean, std, std of 12 h differences) of a period"
    )
    p.add_argument("archive", type=as_source, help="a path or an fsspec URL")
    p.add_argument("--start", required=True, help="first time of the period (ISO 8601)")
    p.add_argument("--end", required=True, help="last time of the period (ISO 8601)")
    p.add_argument("--variables", help="comma-separated names (default: the archive's fields)")
    p.add_argument("--out", type=Path, required=True, help="NetCDF file to write")


def _stats(args: argparse.Namespace) -> int:
    from weather.data.reader import open_archive
    from weather.data.statistics import compute_statistics, save_statistics

    variables = args.variables.split(",") if args.variables else None
    ds = open_archive(args.archive, variables=variables)
    names = variables or [str(v) for v in ds.data_vars]
    stats = compute_statistics(ds, names, start=args.start, end=args.end, source=str(args.archive))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_statistics(stats, args.out)
    print(f"wrote {args.out}: {', '.join(names)} over {args.start} .. {args.end}")
    return 0


def _add_regrid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "regrid",
        help="regrid an archive conservatively onto an equiangular grid (as WeatherBench2 does)",
        description="Regrid every catalogue variable of an archive onto an equiangular grid, "
        "area-conservatively (global means and constants are kept; missing values, NaN, are "
        "skipped), block by block, and write it to DST (under a temporary name, renamed into "
        "place when complete).",
    )
    p.add_argument(
        "source", metavar="SRC", type=as_source, help="Zarr store or NetCDF file: path or URL"
    )
    p.add_argument(
        "destination",
        metavar="DST",
        type=Path,
        help="archive to write: NetCDF if it ends in .nc, else a Zarr store",
    )
    p.add_argument(
        "--grid",
        required=True,
        metavar="NLONxNLAT",
        help="target grid, longitudes x latitudes: 64x32 (5.625 deg), 240x121 (1.5 deg), "
        "1440x721 (0.25 deg) or any other; an even NLAT has no pole rows, an odd one has rows "
        "on both poles",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    _storage_option(p)


def _regrid(args: argparse.Namespace) -> int:
    from weather.data.location import storage_options
    from weather.data.regrid import parse_grid, regrid_archive

    latitude, longitude = parse_grid(args.grid)
    summary = regrid_archive(
        args.source,
        args.destination,
        latitude,
        longitude,
        overwrite=args.overwrite,
        storage_options=storage_options(args.storage_options),
    )
    print(summary)
    return 0


def _integers(text: str | None, option: str) -> tuple[int, ...] | None:
    """``"500,850"`` -> ``(500, 850)``; None stays None.

    Raises:
      ValueError: naming ``option`` and the item that is not an integer.
    """
    if not text:
        return None
    out = []
    for item in text.split(","):
        try:
            out.append(int(item))
        except ValueError:
            raise ValueError(f"{option}: {item!r} is not an integer (in {text!r})") from None
    return tuple(out)


def _storage_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec options for URL archives, e.g. '{\"anon\": true}' (public S3) or "
        '\'{"token": "anon"}\' (public GCS); default: credentials from the environment',
    )


def _sampler_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sampler",
        "--sampler-steps",
        dest="sampler",
        metavar="[SOLVER:]N[,FIELD=VALUE...]",
        help="sampler, applied to the checkpoint's: N noise levels, the solver 2s (DPM-Solver++ "
        "2S, 2N-1 denoiser calls per step) or 2m (multistep, N calls), and SamplerConfig fields, "
        "e.g. 2s:20 (GenCast's), 2m:10, 2s:5,spread_scale=0.5; spread_scale.NAME=T sets the "
        "spread scale of one variable (all levels) or channel (temperature@850); "
        "degree_scale[.NAME].D=F multiplies the spherical-harmonic degrees from D up of the "
        "sample's deviation (every channel, or NAME's), state_degree_scale[.NAME].D=F those of "
        "each new state; default: the checkpoint's",
    )


def _parsed_sampler(text: str | None) -> Any:
    """``--sampler`` as a `SamplerOverride` (None when not given); parsed here, once."""
    from weather.model.sampler import SamplerOverride

    if not text:
        return None
    try:
        return SamplerOverride.parse(text)
    except ValueError as error:
        raise SystemExit(f"weather: error: --sampler: {error}") from None


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the embedded main job: a scored 15-day ensemble from the shipped checkpoint",
        description="Simulate the embedded analysis archive (the test run's first 17 days, from "
        "the shipped spun-up state), run an ensemble forecast from the shipped checkpoint, score "
        "it and persistence against the simulated truth, and write the archive, forecast, "
        "scores, summary and a figure under --data-dir.",
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR / "demo")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--init", default="1991-01-02T00", help="initial time (default 1991-01-02T00)")
    p.add_argument("--lead-days", type=float, default=15.0, help="forecast length (default 15)")
    p.add_argument("--members", type=int, default=8, help="ensemble size (default 8)")
    _sampler_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _demo(args: argparse.Namespace) -> int:
    from weather.evaluation.demo import DemoConfig, format_summary, run_demo

    config = DemoConfig(
        data_dir=args.data_dir,
        checkpoint=args.checkpoint,
        init_time=args.init,
        lead_days=args.lead_days,
        members=args.members,
        sampler=_parsed_sampler(args.sampler),
        seed=args.seed,
    )
    summary = run_demo(config, progress=not args.quiet)
    print(format_summary(summary))
    print(f"\nwrote {summary['forecast']}, {summary['figure']} and {args.data_dir / 'scores.nc'}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train (or resume) a diffusion forecaster on an archive",
        description="Train a forecaster. Run the same command again to resume from the run "
        "directory's checkpoint.",
    )
    p.add_argument(
        "--train-archive",
        type=as_source,
        nargs="+",
        default=[
            DEFAULT_DATA_DIR / "era5sim/train-1.zarr",
            DEFAULT_DATA_DIR / "era5sim/train-2.zarr",
        ],
        help="one or more archives, joined along time (default: the two training runs)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="read training windows from disk through dask instead of loading the training "
        "fields into memory first (5.6 GB for ten years of 13 levels at 5.625 deg)",
    )
    p.add_argument("--train-period", help="START,END (default: the whole training archive)")
    p.add_argument("--val-archive", type=as_source, default=DEFAULT_DATA_DIR / "era5sim/val.zarr")
    _storage_option(p)
    p.add_argument("--val-period", help="START,END (default: the whole validation archive)")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_DATA_DIR / "runs/default")
    p.add_argument(
        "--statistics",
        type=Path,
        help="normalisation statistics (default: computed over the training period)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        help="warm start: begin a new run from this checkpoint's (EMA) parameters, with its "
        "architecture, task and normalisation (the architecture options must then be left out); "
        "the optimiser starts afresh",
    )
    p.add_argument("--arch", choices=["transformer", "unet"], help="backbone (default transformer)")
    p.add_argument("--d-model", type=int, help="transformer width (default 256)")
    p.add_argument("--layers", type=int, help="transformer blocks (default 8)")
    p.add_argument("--heads", type=int, help="transformer heads (default 8)")
    p.add_argument("--patch", type=int, help="transformer patch size (default 2)")
    p.add_argument(
        "--unet-channels", help="U-Net widths per level, finest first (default 64,128,256)"
    )
    p.add_argument(
        "--variables",
        help="comma-separated fields to model, WeatherBench2 names, level and surface alike "
        "(static ones become static inputs; default: every catalogue variable the archive holds)",
    )
    p.add_argument("--levels", help="comma-separated model levels (default: all archive levels)")
    p.add_argument(
        "--forcings",
        help="comma-separated computed forcings among year_progress, day_progress, "
        "toa_incident_solar_radiation (default: all three; on a simulated archive, whose "
        "atmosphere has no sun, the first two)",
    )
    p.add_argument("--noise", choices=["spherical", "iid"], default="spherical")
    p.add_argument(
        "--training-noise",
        choices=["rho", "lognormal"],
        help="distribution of training noise levels (default: GenCast's rho, or the source's)",
    )
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument(
        "--schedule",
        choices=["cosine", "rsqrt"],
        default="cosine",
        help="learning-rate decay after the warm-up: cosine to --steps, or rsqrt (peak until "
        "--rsqrt-ref steps, then peak / sqrt(step / ref): for runs stopped at any step)",
    )
    p.add_argument("--rsqrt-ref", type=int, default=2000, help="where the rsqrt decay starts")
    p.add_argument(
        "--input-noise",
        type=float,
        default=0.0,
        help="noise on both input states during training, in per-channel stds (default 0)",
    )
    p.add_argument(
        "--rollout-inputs",
        type=int,
        default=0,
        help="rows of each batch whose current state is the model's own 12 h forecast of it "
        "(from the two states before, with the model's sampler): the pushforward lever against "
        "drift (default 0)",
    )
    p.add_argument(
        "--rollout-depth",
        type=int,
        default=1,
        help="with --rollout-inputs, the model's own 12 h steps that make the inputs: 1 "
        "replaces the current state, 2 both input states, as in a rollout; D > 2 rolls out D "
        "steps, so the inputs are those of a 12h x D forecast (default 1)",
    )
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=0,
        help="keep the EMA parameters every N steps in RUN/snapshots/ (learning curve)",
    )
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--validate-every", type=int, default=500)
    p.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this many minutes of this call (checkpointed; run again to resume)",
    )
    p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument(
        "--devices",
        default=None,
        help="data parallel: split each batch over N devices or 'all' (default: one device); "
        "the batch size must be a multiple of their number",
    )
    p.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="several hosts: jax.distributed's coordinator (process 0's address); with "
        "--num-processes and --process-id, then --devices all spans every host's devices",
    )
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--quiet", action="store_true")


def _train(args: argparse.Namespace) -> int:
    from weather.data.location import storage_options
    from weather.model.train import TrainConfig
    from weather.model.training_run import (
        Architecture,
        TrainingRun,
        join_hosts,
        parse_period,
        run_training,
    )

    join_hosts(args.coordinator, args.num_processes, args.process_id)
    channels = args.unet_channels
    architecture = Architecture(
        arch=args.arch,
        d_model=args.d_model,
        layers=args.layers,
        heads=args.heads,
        patch=args.patch,
        unet_channels=_integers(channels, "--unet-channels"),
        variables=tuple(n.strip() for n in args.variables.split(",")) if args.variables else None,
        levels=_integers(args.levels, "--levels"),
        forcings=tuple(n.strip() for n in args.forcings.split(",")) if args.forcings else None,
        noise=args.noise,
        training_noise=args.training_noise,
        compute_dtype=args.compute_dtype,
    )
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        peak_learning_rate=args.lr,
        warmup_steps=min(args.warmup, args.steps // 10),
        schedule=args.schedule,
        rsqrt_ref_steps=args.rsqrt_ref,
        ema_decay=args.ema_decay,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        input_noise=args.input_noise,
        rollout_inputs=args.rollout_inputs,
        rollout_depth=args.rollout_depth,
        snapshot_every=args.snapshot_every,
    )
    try:
        options = storage_options(args.storage_options)
    except ValueError as error:
        raise ValueError(f"--storage-options: {error}") from None
    path = run_training(
        TrainingRun(
            run_dir=args.run_dir,
            train_config=train_config,
            train_archives=args.train_archive,
            train_period=parse_period(args.train_period, "--train-period"),
            validation_archive=args.val_archive,
            validation_period=parse_period(args.val_period, "--val-period"),
            architecture=architecture,
            init_from=args.init_from,
            statistics=args.statistics,
            stream=args.stream,
            storage_options=options,
            devices=args.devices,
            max_minutes=args.max_minutes,
            progress=not args.quiet,
        )
    )
    print(f"checkpoint: {path}")
    return 0


def _add_forecast(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forecast",
        help="run an ensemble forecast from a checkpoint and an analysis archive",
        description="Roll an ensemble out from the analysis at --init and write it to --out "
        "(dims member, init_time, lead_time, level, latitude, longitude): a Zarr store, or a "
        "NetCDF (.nc) or GRIB2 (.grib2) file, CF-compliant.",
    )
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument(
        "--archive",
        type=as_source,
        default=DEFAULT_DATA_DIR / "era5sim/test.zarr",
        help="analysis archive: a path or an fsspec URL (gs://, s3://, https://)",
    )
    _storage_option(p)
    p.add_argument("--init", required=True, help="initial time, ISO 8601 UTC")
    p.add_argument("--lead", default="15d", help="hours, '15d', '36h' or ISO 8601 (default 15d)")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    _sampler_option(p)
    p.add_argument("--chunk-steps", type=int, default=5, help="12 h steps per compiled chunk")
    p.add_argument(
        "--devices",
        default=None,
        help="shard the members over N devices or 'all' (default: one device)",
    )
    p.add_argument(
        "--perturb",
        type=float,
        default=0.0,
        help="initial-condition noise, in stds of 12 h differences (default off)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="Zarr store or file to create; its ending chooses the format unless --format does "
        "(.nc/.nc4: NetCDF, .grib2/.grb2/.grib: GRIB2, anything else: Zarr)",
    )
    p.add_argument(
        "--format", default=None, metavar="zarr|netcdf|grib2", help="output format of --out"
    )
    p.add_argument("--quiet", action="store_true")


def _forecast(args: argparse.Namespace) -> int:

    from weather.data.location import storage_options
    from weather.data.reader import open_archive
    from weather.data.times import parse_lead
    from weather.forecast import forecast, load_forecaster
    from weather.forecast.run import output_format
    from weather.model.rollout import Roller, RolloutConfig, mesh_for

    try:
        fmt = output_format(args.out, args.format)
    except ValueError as error:
        print(f"error: --format: {error}", file=sys.stderr)
        return 2
    model = load_forecaster(args.checkpoint, sampler=_parsed_sampler(args.sampler))
    rollout = RolloutConfig(chunk_steps=args.chunk_steps, initial_perturbation=args.perturb)
    try:
        mesh = mesh_for(args.devices)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    roller = Roller(model.forecaster, rollout, mesh=mesh)
    steps = int(parse_lead(args.lead) // STEP)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="forecast", unit="step")

    def on_chunk(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    try:
        options = storage_options(args.storage_options)
    except ValueError as error:
        print(f"error: --storage-options: {error}", file=sys.stderr)
        return 2
    ds = forecast(
        model,
        open_archive(args.archive, storage_options=options),
        init_time=args.init,
        lead=args.lead,
        members=args.members,
        seed=args.seed,
        roller=roller,
        out=args.out,
        out_format=fmt,
        on_chunk=on_chunk,
    )
    if bar is not None:
        bar.close()
    print(f"wrote {args.out} ({fmt}): {dict(ds.sizes)}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="forecast spaced test inits with the model and the baselines, score them all",
        description="Run the model and the baselines from --inits init times spaced "
        "--spacing-days apart in the analysis archive, score every forecaster against it, and "
        "print the skill table. Forecasts and scores land under --out-dir; rerunning resumes.",
    )
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument(
        "--archive",
        type=as_source,
        default=DEFAULT_DATA_DIR / "era5sim/test.zarr",
        help="analysis archive (inits and truth): a path or an fsspec URL",
    )
    _storage_option(p)
    p.add_argument(
        "--climatology-archive",
        type=as_source,
        nargs="+",
        default=[
            DEFAULT_DATA_DIR / "era5sim/train-1.zarr",
            DEFAULT_DATA_DIR / "era5sim/train-2.zarr",
        ],
        help="training archives whose whole years make the climatological ensemble",
    )
    p.add_argument("--out-dir", type=Path, default=DEFAULT_DATA_DIR / "eval")
    p.add_argument("--inits", type=int, default=30, help="number of init times (default 30)")
    p.add_argument("--spacing-days", type=float, default=20.0, help="days between inits")
    p.add_argument("--first", help="first init time (default: the archive's first + 12 h)")
    p.add_argument("--lead-days", type=float, default=15.0)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    _sampler_option(p)
    p.add_argument(
        "--models",
        default="model,persistence,climatology",
        help="comma-separated forecasters: model, persistence, climatology, physics (the T21 "
        "physics ensemble, an ECMWF ENS stand-in), perfect (the perfect-model ensemble: the "
        "truth's own simulator, from the archive's simulation_config)",
    )
    p.add_argument(
        "--physics-method",
        choices=["bred", "noise", "lagged"],
        default="bred",
        help="initial perturbations of the physics ensemble (default bred vectors)",
    )
    p.add_argument("--quiet", action="store_true")


def _evaluate(args: argparse.Namespace) -> int:
    from weather.data.location import storage_options
    from weather.data.reader import open_archive
    from weather.evaluation import (
        EvaluationConfig,
        check_settings,
        evaluate,
        forecasters_by_name,
        history_hours_needed,
        spaced_inits,
        write_report,
    )

    lead_hours = round(args.lead_days * 24)
    config = EvaluationConfig(
        out_dir=args.out_dir,
        lead_hours=lead_hours,
        members=args.members,
        seed=args.seed,
        sampler=_parsed_sampler(args.sampler),  # fails now, not after the baselines
    )
    try:
        options = storage_options(args.storage_options)
    except ValueError as error:
        raise ValueError(f"--storage-options: {error}") from None
    forecasters = forecasters_by_name(
        [n.strip() for n in args.models.split(",") if n.strip()],
        checkpoint=args.checkpoint,
        sampler=config.sampler,
        climatology_archives=args.climatology_archive,
        physics_method=args.physics_method,
        storage_options=options,
    )
    check_settings(config, args.checkpoint if "model" in forecasters else None)
    archive = open_archive(args.archive, storage_options=options)
    history = history_hours_needed(forecasters, args.members)
    inits = spaced_inits(
        archive, args.inits, args.spacing_days, lead_hours, args.first, history_hours=history
    )
    say = None if args.quiet else (lambda text: print(text, flush=True))
    scores = evaluate(config, forecasters, archive, inits, progress=say)
    print(write_report(scores, args.out_dir))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write an inference-only copy of a training checkpoint (for shipping)",
        description="Copy a training checkpoint's EMA parameters, configs, normalisation and "
        "metadata into a smaller file without the optimiser state.",
    )
    p.add_argument("source", type=Path, help="checkpoint written by 'weather train'")
    p.add_argument("target", type=Path, help="file to write")
    p.add_argument(
        "--sampler",
        metavar="[SOLVER:]N[,FIELD=VALUE...]",
        help="change the checkpoint's default sampler (applied to its current one), e.g. "
        "'2s:5,spread_scale=0.5' or '2s:5,spread_scale.u_component_of_wind=0.7'; recorded in "
        "the metadata",
    )
    p.add_argument(
        "--conserve",
        metavar="VAR[,VAR...]|none",
        help="surface variables whose global mean every 12 h step keeps exactly, e.g. "
        "surface_pressure (the dry atmosphere's mass); 'none' to clear",
    )
    p.add_argument(
        "--degree-power-from",
        metavar="ARCHIVE",
        type=as_source,
        help="store the truth's mean power per spherical-harmonic degree of every channel, "
        "computed from this archive (a training archive, never a scoring one), which the "
        "sampler's power_cap needs",
    )
    p.add_argument(
        "--degree-power-period",
        metavar="START,END",
        help="with --degree-power-from: the period to average over (default: the whole archive)",
    )
    p.add_argument(
        "--degree-power-times",
        type=int,
        default=400,
        help="with --degree-power-from: at most this many evenly spaced times (default 400)",
    )
    _storage_option(p)


def _export(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from weather.model.checkpoint import export_checkpoint, load_checkpoint
    from weather.model.denoiser import ModelConfig, channel_spread_scales
    from weather.model.spectral import check_degree_names

    sampler = conserve = None
    metadata: dict[str, Any] = {}
    saved = load_checkpoint(args.source)
    model = ModelConfig.from_dict(saved["configs"]["model"])
    source_norm = saved["normalization"]
    override = _parsed_sampler(args.sampler)
    if override is not None:
        chosen = override.apply(model.sampler)
        try:
            channel_spread_scales(model.task, chosen)  # names this model's variables?
            check_degree_names(model.task.channel_names(), chosen.degree_scales)
            check_degree_names(model.task.channel_names(), chosen.state_degree_scales)
            spectrum = args.degree_power_from is not None or "degree_power" in source_norm
            if chosen.power_cap and not spectrum:
                raise ValueError(
                    "power_cap needs the truth's climatological power per degree, which this "
                    "checkpoint lacks: add --degree-power-from ARCHIVE (a training archive)"
                )
        except ValueError as error:
            print(f"error: --sampler: {error}", file=sys.stderr)
            return 2
        sampler = json.loads(json.dumps(dataclasses.asdict(chosen)))
        metadata["sampler_set_by"] = f"weather export --sampler {args.sampler}"
    if args.conserve:
        text = args.conserve.strip()
        conserve = [] if text.lower() == "none" else [v.strip() for v in text.split(",")]
        try:
            dataclasses.replace(model, conserve=tuple(conserve))
        except ValueError as error:
            print(f"error: --conserve: {error}", file=sys.stderr)
            return 2
        metadata["conserve_set_by"] = f"weather export --conserve {args.conserve}"
    degree_power = None
    if args.degree_power_from is not None:
        degree_power = _archive_degree_power(args, saved)
        metadata["degree_power_from"] = {
            "archive": str(args.degree_power_from),
            "period": args.degree_power_period or "all",
            "times": args.degree_power_times,
        }
    out = export_checkpoint(
        args.source,
        args.target,
        sampler=sampler,
        conserve=conserve,
        metadata=metadata or None,
        degree_power=degree_power,
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _archive_degree_power(args: argparse.Namespace, saved: dict[str, Any]) -> Any:
    """`mean_degree_power` ``[degree, channel]`` of the checkpoint's channels over up to
    ``--degree-power-times`` evenly spaced times of ``--degree-power-from``."""
    import numpy as np

    from weather.data.location import storage_options
    from weather.data.reader import open_archive
    from weather.forecast.run import check_archive_fits
    from weather.model.denoiser import ModelConfig
    from weather.model.spectral import mean_degree_power
    from weather.model.task import state_to_channels
    from weather.model.training_run import parse_period

    if args.degree_power_times < 1:
        raise ValueError(f"--degree-power-times: must be >= 1, got {args.degree_power_times}")
    task = ModelConfig.from_dict(saved["configs"]["model"]).task
    grid = saved["configs"]["grid"]
    lat, lon = np.asarray(grid["latitude"]), np.asarray(grid["longitude"])
    options = storage_options(args.storage_options)
    archive = open_archive(args.degree_power_from, storage_options=options)
    check_archive_fits(task, lat, lon, archive)
    period = parse_period(args.degree_power_period, "--degree-power-period")
    if period is not None:
        archive = archive.sel(time=slice(*period))
    n = archive.sizes["time"]
    if n == 0:
        raise ValueError(f"--degree-power-period: {args.degree_power_period} holds no times")
    rows = np.unique(np.linspace(0, n - 1, min(n, args.degree_power_times)).round().astype(int))
    names = [*task.level_variables, *task.surface_variables]
    picked = archive[names].isel(time=rows)
    if task.level_variables:
        picked = picked.sel(level=list(task.levels))
    states = state_to_channels(task, {name: picked[name].values for name in names})
    return mean_degree_power(lat, lon, states)


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a forecast archive against the truth (lazy, chunked; local or Dask cluster)",
        description="Fair CRPS, ensemble-mean RMSE and spread/skill per variable, level and lead, "
        "area-weighted and averaged over init times; globally, or per WeatherBench2 region and "
        "lat-lon box (--regions, --box: a region dim). Reads both archives lazily, so an archive "
        "larger than memory scores on one machine; --scheduler runs the same computation on a "
        "Dask cluster.",
    )
    p.add_argument(
        "--forecast", type=as_source, required=True, help="forecast Zarr store (path or URL)"
    )
    p.add_argument(
        "--truth", type=as_source, required=True, help="analysis archive (Zarr/NetCDF, path or URL)"
    )
    _storage_option(p)
    p.add_argument("--out", type=Path, required=True, help="scores file (.nc or .zarr)")
    p.add_argument(
        "--metrics",
        default="crps,rmse,spread_skill",
        help="comma-separated: crps, crps_standard, rmse, spread_skill, acc (the ensemble "
        "mean's anomaly correlation; needs --climatology)",
    )
    p.add_argument(
        "--regions",
        help="comma-separated WeatherBench2 regions to score over: global, tropics (-20..20), "
        "extra-tropics, extra-tropics-north (20..90), extra-tropics-south (-90..-20); edges "
        "inclusive. The scores file then has a region dim (default: global means, no region dim)",
    )
    p.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="LAT_MIN,LAT_MAX,LON_MIN,LON_MAX",
        help="a lat-lon box to score over too (degrees; LON_MIN > LON_MAX crosses 0/360, e.g. "
        "30,70,350,40; write --box=-60,-20,0,90 when LAT_MIN is negative); repeatable; adds a "
        "region dim named box(...)",
    )
    p.add_argument(
        "--climatology",
        type=as_source,
        nargs="+",
        metavar="ARCHIVE",
        help="training archives whose day-of-year and time-of-day mean (61-day window, as "
        "WeatherBench2's) is the reference of acc",
    )
    p.add_argument("--scheduler", help="address of a Dask scheduler (default: local threads)")
    p.add_argument("--quiet", action="store_true")


def _score(args: argparse.Namespace) -> int:
    from weather.data.location import storage_options
    from weather.scoring.batch import NEEDS_CLIMATOLOGY, score_to_file
    from weather.scoring.regions import named_regions, parse_box

    try:
        options = storage_options(args.storage_options)
    except ValueError as error:
        print(f"error: --storage-options: {error}", file=sys.stderr)
        return 2
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    try:
        regions = named_regions(args.regions) if args.regions is not None else []
    except ValueError as error:
        print(f"error: --regions: {error}", file=sys.stderr)
        return 2
    try:
        regions += [parse_box(text) for text in args.box]
    except ValueError as error:
        print(f"error: --box: {error}", file=sys.stderr)
        return 2
    if NEEDS_CLIMATOLOGY & set(metrics) and not args.climatology:
        print(
            f"error: --metrics: {sorted(NEEDS_CLIMATOLOGY & set(metrics))} need --climatology "
            "(the training archives)",
            file=sys.stderr,
        )
        return 2
    score_to_file(
        args.forecast,
        args.truth,
        args.out,
        args.scheduler,
        metrics=metrics,
        progress=not args.quiet,
        storage_options=options,
        regions=regions or None,
        climatology_paths=args.climatology or (),
    )
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weather", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="make and inspect archives")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    _add_simulate(data_sub)
    _add_check(data_sub)
    _add_stats(data_sub)
    _add_regrid(data_sub)
    _add_train(commands)
    _add_forecast(commands)
    _add_score(commands)
    _add_evaluate(commands)
    _add_export(commands)
    _add_demo(commands)
    # Installed packages add their commands (the service adds `serve` and `worker`) through the
    # "weather.commands" entry points: the library never imports its users.
    for plugin in entry_points(group="weather.commands"):
        plugin.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        ("data", "simulate"): _simulate,
        ("data", "check"): _check,
        ("data", "stats"): _stats,
        ("data", "regrid"): _regrid,
        ("demo", ""): _demo,
        ("train", ""): _train,
        ("forecast", ""): _forecast,
        ("score", ""): _score,
        ("evaluate", ""): _evaluate,
        ("export", ""): _export,
    }
    key = (str(args.command), str(getattr(args, "data_command", "")))
    from weather.data.errors import ArchiveError

    try:
        return (getattr(args, "handler", None) or handlers[key])(args)
    except (ArchiveError, ValueError, FileExistsError) as err:
        print(f"weather: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
