"""Skill against cost of the sampler: fair CRPS per denoiser call; prints one JSON object.

Usage (the curve in the README; resumable: rerun the same command and finished forecasts are
kept in ``--out-dir``)::

    python benchmarks/sampler_skill.py --archive data/era5sim/test.zarr \\
        --configs "2s:20 2s:8 2s:5 2m:10 2m:6" --inits 3 --lead-days 5 --members 8

Each configuration (space-separated; ``[SOLVER:]N[,FIELD=VALUE...]`` as
`weather.model.sampler.SamplerOverride` reads it) is applied to the shipped checkpoint's sampler
(GenCast's churn and noise levels otherwise), so ``2s:20`` is GenCast's own
sampler (39 denoiser calls per 12 h step) and ``2m:10`` the multistep solver with 10 calls. For
the same init times, members and seed, every configuration forecasts and is scored against the
archive's truth at every lead:

- ``crps``: fair CRPS, area-weighted, averaged over the init times, per headline target and lead
  (units of the variable: m2 s-2, K, m s-1, Pa);
- ``crps_change_pct``: 100 (crps - crps_ref) / crps_ref against the first configuration;
- ``spread_skill``: sqrt((M+1)/M) sqrt(mean ensemble variance) / RMSE of the ensemble mean, the
  variance and squared error averaged over area and inits first;
- ``seconds_per_forecast``: wall time of one forecast after compilation (median over inits),
  ``compile_s`` apart, and ``calls_per_step``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def calls_per_step(sampler: Any) -> int:
    """Denoiser calls per 12 h step of a `SamplerConfig`."""
    return 2 * sampler.num_steps - 1 if sampler.solver == "2s" else sampler.num_steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    p.add_argument("--archive", type=Path, default=Path("data/era5sim/test.zarr"))
    p.add_argument(
        "--configs",
        default="2s:20 2s:8 2s:5 2m:10 2m:6",
        help="space-separated samplers, the first the reference",
    )
    p.add_argument("--inits", type=int, default=5)
    p.add_argument("--spacing-days", type=float, default=60.0)
    p.add_argument("--first", default=None, help="first init time (default: the first usable)")
    p.add_argument("--lead-days", type=float, default=5.0)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("data/benchmarks/sampler_skill"))
    args = p.parse_args()

    from weather.data.reader import open_archive
    from weather.defaults import DEFAULT_CHECKPOINT
    from weather.evaluation import HEADLINE, ensemble_scores, spaced_inits
    from weather.forecast import forecast, load_forecaster
    from weather.model.rollout import Roller, RolloutConfig
    from weather.model.sampler import SamplerOverride

    model = load_forecaster(args.checkpoint or DEFAULT_CHECKPOINT)
    configs = args.configs.split()
    samplers = {c: SamplerOverride.parse(c).apply(model.forecaster.config.sampler) for c in configs}
    archive = open_archive(args.archive)
    lead_hours = round(args.lead_days * 24)
    steps = lead_hours // 12
    inits = spaced_inits(archive, args.inits, args.spacing_days, lead_hours, args.first)
    targets = [t for t in HEADLINE if t[0] in archive]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    done_file = args.out_dir / "results.jsonl"
    done: dict[tuple[str, int, str], dict[str, Any]] = {}
    if done_file.exists():
        for line in done_file.read_text().splitlines():
            row = json.loads(line)
            if row["members"] == args.members and row["lead_steps"] == steps:
                config = row.get("config", f"{row['solver']}:{row['num_steps']}")
                done[(config, row["init"])] = row

    started = time.perf_counter()
    # Inits outside, configurations inside: a run stopped early still compares every
    # configuration on the same init times.
    rollers: dict[str, Roller] = {}
    for init in inits:
        for config in configs:
            name = str(np.datetime_as_string(init, unit="h"))
            if (config, name) in done:
                continue
            if config not in rollers:
                rollers[config] = Roller(
                    model.forecaster, RolloutConfig(chunk_steps=steps, sampler=samplers[config])
                )
            roller = rollers[config]
            first = roller.compilations == 0  # this forecast's time includes compiling
            t0 = time.perf_counter()
            ens = forecast(
                model,
                archive,
                init_time=init,
                lead=f"{lead_hours}h",
                members=args.members,
                seed=args.seed,
                roller=roller,
            )
            seconds = time.perf_counter() - t0
            row = {
                "config": config,
                "solver": samplers[config].solver,
                "num_steps": samplers[config].num_steps,
                "init": name,
                "members": args.members,
                "lead_steps": steps,
                "seconds": seconds,
                "compiled": first,
                "scores": ensemble_scores(ens, archive, targets),
            }
            with done_file.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            done[(config, name)] = row

    names = [
        name
        for name in (str(np.datetime_as_string(i, unit="h")) for i in inits)
        if all((config, name) in done for config in configs)
    ]
    results: dict[str, Any] = {}
    reference: dict[str, np.ndarray] | None = None
    for config in configs:
        rows = [done[(config, i)] for i in names]
        entry: dict[str, Any] = {
            "calls_per_step": calls_per_step(samplers[config]),
            # Forecasts that did not compile (all of them if several runs resumed this one).
            "seconds_per_forecast": round(
                float(np.median([r["seconds"] for r in rows if not r["compiled"]] or [np.nan])), 2
            ),
            "first_forecast_s_with_compile": round(
                float(
                    max(r["seconds"] for r in rows if r["compiled"])
                    if any(r["compiled"] for r in rows)
                    else np.nan
                ),
                1,
            ),
            "crps": {},
            "crps_change_pct": {},
            "spread_skill": {},
        }
        crps_now: dict[str, np.ndarray] = {}
        for label in rows[0]["scores"]:
            c = np.mean([r["scores"][label]["crps"] for r in rows], axis=0)
            mse = np.mean([r["scores"][label]["mse"] for r in rows], axis=0)
            var = np.mean([r["scores"][label]["variance"] for r in rows], axis=0)
            m = args.members
            crps_now[label] = c
            entry["crps"][label] = [round(float(x), 4) for x in c]
            entry["spread_skill"][label] = [
                round(float(x), 3) for x in np.sqrt((m + 1) / m * var / mse)
            ]
            if reference is not None:
                entry["crps_change_pct"][label] = [
                    round(float(x), 2) for x in 100 * (c - reference[label]) / reference[label]
                ]
        if reference is None:
            reference = crps_now
        results[config] = entry

    print(
        json.dumps(
            {
                "checkpoint": os.path.basename(model.path),
                "archive": str(args.archive),
                "inits": names,
                "members": args.members,
                "lead_hours": [12 * (i + 1) for i in range(steps)],
                "reference": configs[0],
                "configs": results,
                "wall_s": round(time.perf_counter() - started, 1),
                "load_average_1min": round(os.getloadavg()[0], 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
