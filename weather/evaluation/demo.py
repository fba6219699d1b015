"""The embedded main job: a scored 15-day ensemble from the shipped checkpoint, from scratch.

1. The embedded analysis archive: the first days of the standard test run (1991), simulated
   from the spun-up state that ships with the package (``assets/spinup_test_1991-01-01.npz``,
   the test run's state after its 300-day spin-up), so nothing has to spin up and the archive is
   identical, bit for bit, to the start of ``weather data simulate --split test``.
2. An ensemble forecast from the shipped checkpoint (8 members, 15 days by default).
3. Persistence from the same analysis, both scored against the simulated truth at every lead
   (fair CRPS of the ensemble; for the one-member persistence the CRPS is its mean absolute
   error), printed as a table and saved with a figure.

Everything lands under one directory (default ``data/demo``); run again, it reuses what is there.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from weather.data.times import STEP
from weather.evaluation.plots import forecast_figure

if TYPE_CHECKING:
    from weather.model.sampler import SamplerOverride

SPINUP_ASSET = "spinup_test_1991-01-01.npz"
HEADLINE = (("geopotential", 500), ("temperature", 850), ("u_component_of_wind", 850))
REPORT_DAYS = (1, 3, 5, 10, 15)
# Days of the embedded archive: a 15-day forecast from 1991-01-02T00 and its verification.
EMBEDDED_ARCHIVE_DAYS = 17.0


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
      data_dir: where the archive, forecast, scores and figure go.
      checkpoint: the forecaster (default: the shipped one).
      init_time: the forecast's initial time (UTC); the archive holds it and the 12 h before.
      lead_days: forecast length (days, a multiple of 0.5).
      members: ensemble size.
      sampler: changes to the checkpoint's sampler (None: the checkpoint's own).
      seed: the forecast's seed.
      archive_days: days of the embedded archive (from 1991-01-01T00); it must hold the init,
        the 12 h before it and every valid time.
    """

    data_dir: Path
    checkpoint: Path
    init_time: str = "1991-01-02T00"
    lead_days: float = 15.0
    members: int = 8
    sampler: SamplerOverride | None = None
    seed: int = 0
    archive_days: float = EMBEDDED_ARCHIVE_DAYS


def embedded_archive(data_dir: Path, days: float, progress: bool = True) -> Path:
    """Simulate the test run's first ``days`` days into ``data_dir/archive.zarr`` (reused if done).

    The shipped spun-up state is placed in the simulator's spin-up cache under the key that the
    test run's settings give, so `simulate` starts from it instead of spinning up.
    """
    from weather.sim.dynamics import SimulationConfig
    from weather.sim.simulate import simulate, spinup_key
    from weather.sim.splits import SPLITS

    config = SimulationConfig()
    spec = replace(SPLITS["test"], days=float(days))
    cache = data_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / f"spinup-{spinup_key(config, spec)}.npz"
    if not cached.exists():
        asset = resources.files("weather") / "assets" / SPINUP_ASSET
        with resources.as_file(asset) as path:
            shutil.copyfile(path, cached)
    return Path(
        simulate(
            data_dir / "archive.zarr",
            config=config,
            spec=spec,
            cache_dir=cache,
            progress=progress,
        )
    )


def run_demo(config: DemoConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole demo; returns the summary that the CLI prints (also saved as JSON)."""
    from weather.baselines import persistence
    from weather.data.reader import open_archive
    from weather.data.times import to_datetime64
    from weather.forecast import forecast, load_forecaster
    from weather.scoring.metrics import align_truth, crps, spread_skill_ratio

    out = config.data_dir
    out.mkdir(parents=True, exist_ok=True)
    init = to_datetime64(config.init_time, "init_time")
    start = to_datetime64("1991-01-01", "start")
    last = start + np.timedelta64(round(config.archive_days * 86400), "s") - np.timedelta64(6, "h")
    valid_end = init + np.timedelta64(round(config.lead_days * 86400), "s")
    if init - STEP < start or valid_end > last:
        raise ValueError(
            f"init_time: {config.init_time} with a {config.lead_days:g}-day lead needs "
            f"{init - STEP} .. {valid_end}, but the embedded archive holds "
            f"{start} .. {last} (archive_days={config.archive_days:g})"
        )
    store = embedded_archive(out, config.archive_days, progress=progress)
    truth = open_archive(store)

    model = load_forecaster(config.checkpoint, sampler=config.sampler)
    target = out / "forecast.zarr"
    if target.exists():
        shutil.rmtree(target)  # the demo's own output; a rerun makes it afresh
    bar = _bar(progress, int(config.lead_days * 2))
    ens = forecast(
        model,
        truth,
        init_time=init,
        lead=f"{config.lead_days * 24:g}h",
        members=config.members,
        seed=config.seed,
        out=target,
        on_chunk=(lambda done, total: bar.update(done - bar.n)) if bar is not None else None,
    )
    if bar is not None:
        bar.close()
    variables = sorted({name for name, _ in HEADLINE})
    base = persistence(truth, [init], list(ens["lead_time"].values), variables=variables)
    verifying = align_truth(ens[variables], truth[variables], missing="raise")
    scores = xr.Dataset(
        {
            "crps_model": _headline(crps(ens[variables], verifying)),
            "crps_persistence": _headline(crps(base, verifying, fair=False)),
            # One init time: a single case's calibration, noisy, but the first thing a
            # forecaster asks of an ensemble after its error.
            "spread_skill_model": _headline(spread_skill_ratio(ens[variables], verifying)),
        }
    ).compute()
    scores.to_netcdf(out / "scores.nc")
    figure = forecast_figure(ens, truth, out / "forecast.png")
    summary = _summary(scores, config, model.metadata)
    summary.update(
        {"archive": str(store), "forecast": str(target), "figure": str(figure)},
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _headline(per_variable: xr.Dataset) -> xr.DataArray:
    """Stack the headline (variable, level) pairs into one DataArray ``[target, lead_time]``."""
    rows = [
        per_variable[name]
        .sel(level=level)
        .drop_vars("level")
        .expand_dims(target=[f"{name}@{level}"])
        for name, level in HEADLINE
    ]
    return xr.concat(rows, dim="target")


def _summary(scores: xr.Dataset, config: DemoConfig, metadata: dict[str, Any]) -> dict[str, Any]:
    leads_days = scores["lead_time"].values / np.timedelta64(1, "D")
    table: dict[str, Any] = {}
    for target in scores["target"].values:
        rows = {}
        for day in REPORT_DAYS:
            hit = np.flatnonzero(np.isclose(leads_days, day))
            if hit.size:
                i = int(hit[0])
                rows[f"{day}d"] = {
                    name: round(float(scores[key].sel(target=target)[i]), 3)
                    for name, key in (
                        ("model", "crps_model"),
                        ("persistence", "crps_persistence"),
                        ("spread_skill", "spread_skill_model"),
                    )
                }
        table[str(target)] = rows
    return {
        "init_time": config.init_time,
        "members": config.members,
        "lead_days": config.lead_days,
        "checkpoint": str(config.checkpoint),
        "trained_on": metadata.get("train_archive"),
        "crps": table,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The CRPS table as text (units of each variable: m2 s-2, K, m s-1), with the model's
    spread/skill ratio (1 for a calibrated ensemble)."""
    lines = [
        f"{summary['members']}-member forecast from {summary['init_time']} "
        f"({summary['lead_days']:g} days), fair CRPS against the simulated truth "
        "(persistence: its mean absolute error), and the model's spread/skill",
        f"{'target':<28}{'lead':>6}{'model':>12}{'persistence':>14}{'spread/skill':>14}",
    ]
    for target, rows in summary["crps"].items():
        for lead, row in rows.items():
            lines.append(
                f"{target:<28}{lead:>6}{row['model']:>12.3f}{row['persistence']:>14.3f}"
                f"{row['spread_skill']:>14.2f}"
            )
    return "\n".join(lines)


def _bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="forecast", unit="step")
