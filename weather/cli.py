"""The `weather` command line. It only parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_DATA_DIR = Path("data")


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
    p.add_argument("--split", choices=["train", "val", "test"], help="a standard period")
    p.add_argument("--start", help="first archive time, ISO 8601 (UTC)")
    p.add_argument("--days", type=float, help="simulated days written to the archive")
    p.add_argument("--seed", type=int, help="seed of the run's initial perturbation")
    p.add_argument("--chunk-days", type=int, help="days per write/checkpoint (default 10)")
    p.add_argument("--resolution", default="T42", help="T21, T31, T42 or T85 (default T42)")
    p.add_argument("--layers", type=int, default=12, help="sigma levels (default 12)")
    p.add_argument("--dt-minutes", type=float, default=30.0, help="model time step (default 30)")
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
    from weather.sim.splits import SPLITS

    base = SPLITS[args.split] if args.split else RunSpec(start=np.datetime64("2000-01-01"), days=30)
    spec = RunSpec(
        start=np.datetime64(args.start) if args.start else base.start,
        days=args.days if args.days is not None else base.days,
        seed=args.seed if args.seed is not None else base.seed,
        chunk_days=args.chunk_days if args.chunk_days is not None else base.chunk_days,
    )
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
    out = args.out or DEFAULT_DATA_DIR / "era5sim" / f"{args.split or 'custom'}.zarr"
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
    p.add_argument("archive", type=Path)
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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the embedded main job: simulate a short archive, check it, and plot it",
        description="Simulate a short ERA5-style archive (T21, 60 days after a 120-day spin-up), "
        "read it back through the archive reader, print its physical sanity check, compute its "
        "normalisation statistics and write an overview PNG, all under --data-dir.",
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR / "demo")
    p.add_argument("--days", type=float, default=60.0, help="simulated days (default 60)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from weather.data.reader import open_archive
    from weather.data.statistics import compute_statistics, save_statistics
    from weather.plots import archive_overview
    from weather.sim.dynamics import SimulationConfig
    from weather.sim.sanity import format_report, sanity_report
    from weather.sim.simulate import RunSpec, simulate

    out = args.data_dir
    config = SimulationConfig(resolution="T21", layers=8, spinup_days=120)
    spec = RunSpec(start=np.datetime64("2000-01-01"), days=args.days, seed=0, chunk_days=10)
    store = simulate(
        out / "archive.zarr",
        config=config,
        spec=spec,
        cache_dir=out / "cache",
        progress=not args.quiet,
    )
    ds = open_archive(store)
    print(f"\narchive {store}:")
    print(ds)
    print("\nphysical sanity check:")
    print(format_report(sanity_report(ds)))
    names = [str(v) for v in ds.data_vars]
    stats = compute_statistics(
        ds, names, start=ds["time"].values[0], end=ds["time"].values[-1], source=str(store)
    )
    save_statistics(stats, out / "statistics.nc")
    png = archive_overview(ds, -1, out / "overview.png")
    print(f"\nwrote {out / 'statistics.nc'} and {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weather", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="make and inspect archives")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    _add_simulate(data_sub)
    _add_check(data_sub)
    _add_stats(data_sub)
    _add_demo(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        ("data", "simulate"): _simulate,
        ("data", "check"): _check,
        ("data", "stats"): _stats,
        ("demo", ""): _demo,
    }
    key = (str(args.command), str(getattr(args, "data_command", "")))
    from weather.data.errors import ArchiveError

    try:
        return handlers[key](args)
    except (ArchiveError, ValueError) as err:
        print(f"weather: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
