"""Evaluation: the model and the baselines forecast the same init times, then everything is scored.

Layout under the output directory (every step resumable: rerun the same call and finished work
is kept):

- ``forecasts/<name>/<init>.zarr``: one store per forecaster and init time, in the forecast
  layout (`weather.data.layout`); ``<init>.zarr.done`` marks a finished one, so an interrupted
  forecast is redone from scratch rather than scored half-written;
- ``scores.nc``: dims ``(model, metric, lead_time[, level])``, one data variable per forecast
  variable, scored with `weather.scoring.batch.score_archive` against the analysis archive.

Conventions: ``crps`` is the fair CRPS for ensembles; a one-member forecast (persistence) has
no fair CRPS, and its ``crps`` is its standard CRPS, which for one member is the mean absolute
error (WeatherBench 2's convention for deterministic forecasts).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from weather.data.errors import ArchiveError
from weather.data.times import TimeLike, to_datetime64

STEP = np.timedelta64(12, "h")
HEADLINE: tuple[tuple[str, int | None], ...] = (
    ("geopotential", 500),
    ("temperature", 850),
    ("u_component_of_wind", 850),
    ("v_component_of_wind", 850),
    ("temperature", 500),
    ("surface_pressure", None),
)
TABLE_LEADS_HOURS = (12, 24, 72, 120, 168, 240, 360)

# A baseline: (analysis archive, init times, lead times, members, seed) -> forecast Dataset.
Baseline = Callable[[xr.Dataset, np.ndarray, np.ndarray, int, int], xr.Dataset]


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """What to evaluate.

    Attributes:
      out_dir: where forecasts and scores go.
      lead_hours: forecast length (hours, multiple of 12).
      members: ensemble size of the model and the ensemble baselines.
      seed: seed of every forecaster.
      sampler_steps: the model's sampler noise levels (None: the checkpoint's own).
    """

    out_dir: Path
    lead_hours: int = 360
    members: int = 8
    seed: int = 0
    sampler_steps: int | None = None

    @property
    def leads(self) -> np.ndarray:
        """``[lead]`` timedelta64[ns]: 12 h, 24 h, ... up to the lead."""
        if self.lead_hours <= 0 or self.lead_hours % 12:
            raise ValueError(f"lead_hours: {self.lead_hours} must be a positive multiple of 12")
        return (STEP * np.arange(1, self.lead_hours // 12 + 1)).astype("timedelta64[ns]")


def spaced_inits(
    archive: xr.Dataset, count: int, spacing_days: float, lead_hours: int, first: TimeLike | None
) -> np.ndarray:
    """``count`` init times ``spacing_days`` apart, each with its 12 h history and verification.

    Args:
      archive: the analysis archive (only its time axis is read).
      count: number of init times.
      spacing_days: days between consecutive inits (20 keeps them nearly independent: forecast
        errors decorrelate within about two weeks).
      lead_hours: the forecasts' length, so every valid time is in the archive.
      first: the first init time (default: the archive's first time + 12 h).

    Raises:
      ArchiveError: the archive cannot hold that many (naming how many fit).
    """
    times = archive["time"].values.astype("datetime64[ns]")
    start = to_datetime64(first, "first") if first is not None else times[0] + STEP
    spacing = np.timedelta64(round(spacing_days * 86400), "s")
    inits = start + spacing * np.arange(count)
    last_needed = inits + np.timedelta64(lead_hours, "h")
    have = set(times.tolist())
    fits = [
        (t - STEP).item() in have and t.item() in have and v.item() in have
        for t, v in zip(inits, last_needed, strict=True)
    ]
    if not all(fits):
        n = int(np.argmin(fits)) if not all(fits) else count
        raise ArchiveError(
            f"inits: the archive ({times[0]} .. {times[-1]}) holds only {n} init times spaced "
            f"{spacing_days:g} days with {lead_hours} h forecasts from {start}; asked for {count}"
        )
    return inits.astype("datetime64[ns]")


def _init_name(init: np.datetime64) -> str:
    return np.datetime_as_string(init, unit="h").replace(":", "")


def _store(config: EvaluationConfig, name: str, init: np.datetime64) -> Path:
    return config.out_dir / "forecasts" / name / f"{_init_name(init)}.zarr"


def _done(store: Path) -> Path:
    return store.with_name(store.name + ".done")


def run_model(
    config: EvaluationConfig,
    checkpoint: str | Path,
    archive: xr.Dataset,
    inits: np.ndarray,
    *,
    name: str = "model",
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Forecast every init with the checkpoint's model (one compiled rollout reused for all)."""
    from dataclasses import replace

    from weather.forecast import forecast, load_forecaster
    from weather.model.rollout import Roller, RolloutConfig

    model = load_forecaster(checkpoint)
    sampler = model.forecaster.config.sampler
    if config.sampler_steps:
        sampler = replace(sampler, num_steps=config.sampler_steps)
    roller = Roller(model.forecaster, RolloutConfig(sampler=sampler))
    stores = []
    for i, init in enumerate(inits):
        store = _store(config, name, init)
        if not _done(store).exists():
            if store.exists():
                shutil.rmtree(store)  # interrupted: redo it whole
            store.parent.mkdir(parents=True, exist_ok=True)
            forecast(
                model,
                archive,
                init_time=init,
                lead=np.timedelta64(config.lead_hours, "h"),
                members=config.members,
                seed=config.seed,
                roller=roller,
                out=store,
            )
            _done(store).touch()
        if progress is not None:
            progress(f"{name}: {i + 1}/{len(inits)} inits")
        stores.append(store)
    return stores


def run_baseline(
    config: EvaluationConfig,
    name: str,
    baseline: Baseline,
    archive: xr.Dataset,
    inits: np.ndarray,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Forecast every init with a baseline, one store per init (resumable like `run_model`)."""
    stores = []
    for i, init in enumerate(inits):
        store = _store(config, name, init)
        if not _done(store).exists():
            if store.exists():
                shutil.rmtree(store)
            store.parent.mkdir(parents=True, exist_ok=True)
            ds = baseline(archive, np.asarray([init]), config.leads, config.members, config.seed)
            ds.to_zarr(store, zarr_format=3, consolidated=False, mode="w-")
            _done(store).touch()
        if progress is not None:
            progress(f"{name}: {i + 1}/{len(inits)} inits")
        stores.append(store)
    return stores


def open_forecasts(config: EvaluationConfig, name: str, inits: np.ndarray) -> xr.Dataset:
    """A forecaster's finished stores for ``inits``, joined along ``init_time`` (lazy)."""
    parts = []
    for init in inits:
        store = _store(config, name, init)
        if not _done(store).exists():
            raise ArchiveError(f"forecast {store} is missing or unfinished; run the evaluation")
        parts.append(xr.open_zarr(store, consolidated=False, decode_timedelta=True))
    return xr.concat(
        parts,
        dim="init_time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="override",
    )


def score(
    config: EvaluationConfig,
    names: Sequence[str],
    truth: xr.Dataset,
    inits: np.ndarray,
    metrics: Sequence[str] = ("crps", "rmse", "spread_skill"),
) -> xr.Dataset:
    """Scores of every forecaster, ``(model, metric, lead_time[, level])``, written to scores.nc."""
    from weather.scoring.batch import score_archive

    per_model = []
    for name in names:
        forecast = open_forecasts(config, name, inits)
        wanted = list(metrics)
        single = forecast.sizes["member"] == 1
        if single and "crps" in wanted:
            wanted[wanted.index("crps")] = "crps_standard"
        scores = score_archive(forecast, truth, wanted).compute()
        if single:
            scores = scores.assign_coords(
                metric=[m if m != "crps_standard" else "crps" for m in scores["metric"].values]
            )
        per_model.append(scores.expand_dims(model=[name]))
    joined = xr.concat(per_model, dim="model", join="outer")
    joined.attrs.update(
        inits=len(inits),
        first_init=str(inits[0]),
        last_init=str(inits[-1]),
        members=config.members,
        crps_note="fair CRPS for ensembles; for one member, its mean absolute error",
    )
    path = config.out_dir / "scores.nc"
    tmp = path.with_suffix(".nc.tmp")
    joined.to_netcdf(tmp)
    tmp.replace(path)
    return joined


def skill_table(scores: xr.Dataset, metric: str = "crps") -> str:
    """A Markdown table: one row per (headline target, model), one column per table lead."""
    leads = scores["lead_time"].values
    columns = [h for h in TABLE_LEADS_HOURS if np.timedelta64(h, "h") in leads]
    head = "| target | model | " + " | ".join(_lead_label(h) for h in columns) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 2)]
    for name, level in HEADLINE:
        if name not in scores:
            continue
        field = scores[name].sel(metric=metric)
        if level is not None:
            field = field.sel(level=level)
        label = _target_label(name, level)
        for model in scores["model"].values:
            row = field.sel(model=model)
            cells = [_fmt(float(row.sel(lead_time=np.timedelta64(h, "h")))) for h in columns]
            lines.append(f"| {label} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def whole_years(times: np.ndarray) -> list[int]:
    """Calendar years that ``times`` covers completely at its step (no day missing).

    A year with a gap (e.g. the day between two independent runs) cannot serve every valid time
    of a climatological ensemble, so it is left out.
    """
    from weather.data.times import time_step

    t = np.asarray(times).astype("datetime64[ns]")
    per_day = int(np.timedelta64(1, "D") // time_step(t))
    years, counts = np.unique(t.astype("datetime64[Y]").astype(int) + 1970, return_counts=True)
    out = []
    for year, count in zip(years, counts, strict=True):
        days = (np.datetime64(f"{year + 1}-01-01") - np.datetime64(f"{year}-01-01")).astype(int)
        if count == days * per_day:
            out.append(int(year))
    return out


def _lead_label(hours: int) -> str:
    return f"{hours} h" if hours < 24 else f"{hours // 24} d"


_SHORT = {
    "geopotential": "z",
    "temperature": "t",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "surface_pressure": "sp",
}


def _target_label(name: str, level: int | None) -> str:
    return f"{_SHORT.get(name, name)}{level if level is not None else ''}"


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def standard_baselines(climatology_archive: xr.Dataset | None) -> dict[str, Baseline]:
    """Persistence, and the climatological ensemble when a training archive is given."""
    from weather.baselines import climatology_ensemble, persistence

    out: dict[str, Baseline] = {
        "persistence": lambda a, i, lt, m, s: persistence(a, list(i), list(lt)),
    }
    if climatology_archive is not None:
        years = whole_years(climatology_archive["time"].values)
        if not years:
            raise ArchiveError("climatology archive: holds no whole calendar year")
        clim = climatology_archive

        def climatology(a: xr.Dataset, i: np.ndarray, lt: np.ndarray, m: int, s: int) -> Any:
            return climatology_ensemble(clim, list(i), list(lt), members=m, years=years, seed=s)

        out["climatology"] = climatology
    return out
