"""Evaluation: the model and the baselines forecast the same init times, then everything is scored.

Layout under the output directory (every step resumable: rerun the same call and finished work
is kept):

- ``forecasts/<name>/<init>.zarr``: one store per forecaster and init time, in the forecast
  layout (`weather.data.layout`); ``<init>.zarr.done`` marks a finished one, so an interrupted
  forecast is redone from scratch rather than scored half-written;
- ``scores.nc``: dims ``(model, metric, lead_time[, level])``, one data variable per forecast
  variable, scored with `weather.scoring.batch.score_archive` against the analysis archive.

Forecasters: ``model`` (a checkpoint, `run_model`) and the baselines, each a `Baseline` run by
`run_baseline`: ``persistence`` and ``climatology`` (`standard_baselines`), ``physics`` (the T21
physics ensemble, our stand-in for ECMWF's ENS) and ``perfect`` (the perfect-model ensemble),
both from `weather.physics_ensemble` (`physics_baselines`). `scorecard` compares one model's
CRPS with a reference's (GenCast's scorecards: against ENS, here ``physics``).

Conventions: ``crps`` is the fair CRPS for ensembles; a one-member forecast (persistence) has
no fair CRPS, and its ``crps`` is its standard CRPS, which for one member is the mean absolute
error (WeatherBench 2's convention for deterministic forecasts).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from weather.data.errors import ArchiveError
from weather.data.times import STEP, TimeLike, to_datetime64

if TYPE_CHECKING:
    from weather.model.sampler import SamplerOverride
    from weather.physics_ensemble import PerfectModelConfig, PhysicsEnsembleConfig

HEADLINE: tuple[tuple[str, int | None], ...] = (
    ("geopotential", 500),
    ("temperature", 850),
    ("u_component_of_wind", 850),
    ("v_component_of_wind", 850),
    ("temperature", 500),
    ("surface_pressure", None),
)
TABLE_LEADS_HOURS = (12, 24, 72, 120, 168, 240, 360)
SCORECARD_REFERENCE = "physics"
# One chunk per init and lead with all members: how the model's and the baselines' stores are cut.
_STORE_CHUNKS = {"member": -1, "init_time": 1, "lead_time": 1}

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
      sampler: changes to the checkpoint's sampler (e.g. ``SamplerOverride.parse("2s:20")``;
        None: the checkpoint's own).
    """

    out_dir: Path
    lead_hours: int = 360
    members: int = 8
    seed: int = 0
    sampler: SamplerOverride | None = None

    @property
    def leads(self) -> np.ndarray:
        """``[lead]`` timedelta64[ns]: 12 h, 24 h, ... up to the lead."""
        if self.lead_hours <= 0 or self.lead_hours % 12:
            raise ValueError(f"lead_hours: {self.lead_hours} must be a positive multiple of 12")
        return (STEP * np.arange(1, self.lead_hours // 12 + 1)).astype("timedelta64[ns]")


def spaced_inits(
    archive: xr.Dataset,
    count: int,
    spacing_days: float,
    lead_hours: int,
    first: TimeLike | None,
    *,
    history_hours: int = 12,
) -> np.ndarray:
    """``count`` init times ``spacing_days`` apart, each with its history and verification.

    Args:
      archive: the analysis archive (only its time axis is read).
      count: number of init times.
      spacing_days: days between consecutive inits (20 keeps them nearly independent: forecast
        errors decorrelate within about two weeks).
      lead_hours: the forecasts' length, so every valid time is in the archive.
      first: the first init time (default: the archive's first time + ``history_hours``).
      history_hours: hours of analyses before each init the forecasters need (12 h at least:
        the model's t-12h input; more for bred or lagged physics members, `history_hours_needed`).

    Raises:
      ArchiveError: the archive cannot hold that many (naming how many fit).
    """
    times = archive["time"].values.astype("datetime64[ns]")
    history = max(STEP, np.timedelta64(history_hours, "h"))
    start = to_datetime64(first, "first") if first is not None else times[0] + history
    spacing = np.timedelta64(round(spacing_days * 86400), "s")
    inits = start + spacing * np.arange(count)
    last_needed = inits + np.timedelta64(lead_hours, "h")
    have = set(times.tolist())
    fits = [
        (t - STEP).item() in have
        and (t - history).item() in have
        and t.item() in have
        and v.item() in have
        for t, v in zip(inits, last_needed, strict=True)
    ]
    if not all(fits):
        n = int(np.argmin(fits))
        raise ArchiveError(
            f"inits: the archive ({times[0]} .. {times[-1]}) holds only {n} init times spaced "
            f"{spacing_days:g} days with {history / np.timedelta64(1, 'h'):g} h of history and "
            f"{lead_hours} h forecasts from {start}; asked for {count}"
        )
    return inits.astype("datetime64[ns]")


def check_settings(config: EvaluationConfig, checkpoint: str | Path) -> None:
    """Record what the forecasts under ``out_dir`` were made with; refuse to mix settings.

    A rerun resumes by init time, so a rerun with another sampler, ensemble size, seed, lead or
    checkpoint would silently join forecasts made two ways. The first run writes
    ``out_dir/settings.json``; later runs must match it (use another ``out_dir`` otherwise).

    Raises:
      ValueError: naming each setting that differs from the recorded one.
    """
    path = Path(checkpoint)
    wanted = {
        "lead_hours": config.lead_hours,
        "members": config.members,
        "seed": config.seed,
        "sampler": None if config.sampler is None else str(config.sampler),
        "checkpoint": path.name,
        "checkpoint_bytes": path.stat().st_size if path.exists() else None,
    }
    record = config.out_dir / "settings.json"
    if record.exists():
        have = json.loads(record.read_text())
        differ = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
        if differ:
            text = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in differ.items())
            raise ValueError(
                f"out_dir: {config.out_dir} holds forecasts made with other settings ({text}); "
                "use another out_dir or the recorded settings"
            )
        return
    config.out_dir.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(wanted, indent=1) + "\n")
    tmp.replace(record)


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
    from weather.forecast import forecast, load_forecaster
    from weather.model.rollout import Roller

    model = load_forecaster(checkpoint, sampler=config.sampler)
    roller = Roller(model.forecaster)
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
    return _join(parts)


def finished_forecasts(out_dir: str | Path, name: str) -> xr.Dataset:
    """Every finished store of forecaster ``name`` under ``out_dir``, joined along ``init_time``.

    For reading an evaluation afterwards (`notebooks/evaluation.ipynb`) without its config:
    stores are ``out_dir/forecasts/<name>/<init>.zarr`` with a ``.done`` marker, opened lazily,
    in init-time order. Dims ``member, init_time, lead_time, [level,] latitude, longitude``.

    Raises:
      ArchiveError: no finished forecast of ``name`` is there.
    """
    folder = Path(out_dir) / "forecasts" / name
    stores = sorted(s for s in folder.glob("*.zarr") if _done(s).exists())
    if not stores:
        raise ArchiveError(f"forecasts of {name!r}: no finished store under {folder}")
    return _join([xr.open_zarr(s, consolidated=False, decode_timedelta=True) for s in stores])


def _join(parts: list[xr.Dataset]) -> xr.Dataset:
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
    for label, field in _headline_fields(scores, metric):
        for model in scores["model"].values:
            row = field.sel(model=model)
            cells = [_fmt(float(row.sel(lead_time=np.timedelta64(h, "h")))) for h in columns]
            lines.append(f"| {label} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scorecard(
    scores: xr.Dataset,
    model: str = "model",
    reference: str = SCORECARD_REFERENCE,
    metric: str = "crps",
) -> xr.Dataset:
    """GenCast's scorecard: ``100 (s_model - s_ref) / s_ref`` of ``metric`` per target and lead.

    Args:
      scores: the evaluation's scores (`score`), dims ``(model, metric, lead_time[, level])``.
      model: the forecaster compared.
      reference: the forecaster compared against (default the physics ensemble, our ENS).
      metric: a score where lower is better (``crps``, ``rmse``).

    Returns:
      Dataset, one data variable per scored variable, dims ``(lead_time[, level])``, in percent:
      negative where ``model`` beats ``reference``; NaN where the reference's score is 0 or
      either score is NaN.

    Raises:
      ValueError: ``model``, ``reference`` or ``metric`` is not in the scores.
    """
    names = [str(m) for m in scores["model"].values]
    for role, name in (("model", model), ("reference", reference)):
        if name not in names:
            raise ValueError(f"{role}: {name!r} is not in the scores (models: {names})")
    metrics = [str(m) for m in scores["metric"].values]
    if metric not in metrics:
        raise ValueError(f"metric: {metric!r} is not in the scores (metrics: {metrics})")
    chosen = scores.sel(metric=metric, drop=True)
    mine = chosen.sel(model=model, drop=True)
    ref = chosen.sel(model=reference, drop=True)
    card = 100.0 * (mine - ref) / ref.where(ref != 0)
    for var in card.data_vars.values():
        var.attrs = {"units": "%", "long_name": f"{metric} difference against {reference}"}
    card.attrs = {"model": model, "reference": reference, "metric": metric}
    return card


def scorecard_reference(
    scores: xr.Dataset,
    model: str = "model",
    preferred: str = SCORECARD_REFERENCE,
    metric: str = "crps",
) -> tuple[str, str]:
    """The scorecard's reference and a sentence saying which it is and why.

    ``preferred`` when the scores hold it; otherwise the other forecaster with the lowest
    ``metric`` in the most headline (target, lead) cells (ties: the first in the scores), so a
    scorecard still compares against the strongest baseline present.

    Raises:
      ValueError: no forecaster other than ``model`` has a finite ``metric``.
    """
    names = [str(m) for m in scores["model"].values]
    if preferred in names and preferred != model:
        return preferred, f"scorecard of {model} against {preferred}"
    chosen = scores.sel(metric=metric)
    cells = [
        chosen[name].sel(level=level) if level is not None else chosen[name]
        for name, level in HEADLINE
        if name in scores and (level is None or level in scores[name]["level"].values)
    ]
    others = [n for n in names if n != model]
    wins = dict.fromkeys(others, 0)
    total = 0
    for field in cells if others else []:
        values = field.sel(model=others).transpose("model", ...).values.reshape(len(others), -1)
        finite = np.isfinite(values)
        for column in np.flatnonzero(finite.any(0)):
            best = np.nanargmin(np.where(finite[:, column], values[:, column], np.nan))
            wins[others[best]] += 1
            total += 1
    if not total:
        raise ValueError(f"scorecard: no forecaster other than {model!r} has a finite {metric}")
    best_name = max(others, key=lambda n: wins[n])
    return best_name, (
        f"{preferred!r} is not in the scores: scorecard of {model} against {best_name}, the best "
        f"other forecaster here (lowest {metric} in {wins[best_name]} of {total} headline "
        "target/lead cells)"
    )


def scorecard_table(card: xr.Dataset) -> str:
    """`scorecard` as Markdown: one row per headline target, one column per table lead (%)."""
    leads = card["lead_time"].values
    columns = [h for h in TABLE_LEADS_HOURS if np.timedelta64(h, "h") in leads]
    head = "| target | " + " | ".join(_lead_label(h) for h in columns) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 1)]
    for name, level in HEADLINE:
        if name not in card:
            continue
        field = card[name] if level is None else card[name].sel(level=level)
        cells = [float(field.sel(lead_time=np.timedelta64(h, "h"))) for h in columns]
        text = [f"{c:+.1f}" if np.isfinite(c) else "-" for c in cells]
        lines.append(f"| {target_label(name, level)} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def _headline_fields(scores: xr.Dataset, metric: str) -> list[tuple[str, xr.DataArray]]:
    """``(label, field[model, lead_time])`` of every headline target the scores hold."""
    fields = []
    for name, level in HEADLINE:
        if name not in scores or (level is not None and level not in scores[name]["level"]):
            continue
        field = scores[name].sel(metric=metric)
        fields.append(
            (target_label(name, level), field if level is None else field.sel(level=level))
        )
    return fields


def _hours_label(hours: int) -> str:
    return _lead_label(hours) if hours < 24 or hours % 24 == 0 else f"{hours} h"


def _leads_text(hours: Sequence[int], step: int = 12) -> str:
    """Leads as runs: ``[12, 24, 36, 72]`` -> ``"12 h to 36 h, 3 d"``."""
    runs: list[list[int]] = []
    for h in hours:
        if runs and h - runs[-1][-1] == step:
            runs[-1].append(h)
        else:
            runs.append([h])
    return ", ".join(
        _hours_label(r[0]) if len(r) == 1 else f"{_hours_label(r[0])} to {_hours_label(r[-1])}"
        for r in runs
    )


def goals_report(
    scores: xr.Dataset,
    model: str = "model",
    *,
    calibrated: tuple[float, float] = (0.8, 1.2),
    calibrated_after_hours: int = 24,
) -> str:
    """The evaluation's goals, measured: a Markdown list, one line per goal.

    - ``model``'s CRPS below climatology and below persistence at every lead, for z500 and t850
      (the leads where it is not are named);
    - its spread/skill within ``calibrated`` beyond ``calibrated_after_hours``, per headline
      target (the range it spans);
    - the share of all scored (variable, level, lead) targets where it beats the physics
      ensemble (GenCast beat ECMWF's ENS on 97 %);
    - its CRPS over the perfect-model ensemble's, per headline target at the table's leads
      (1: as good as the bound; the excess over 1 is the distance to it).

    Forecasters missing from the scores are skipped with a line that says so.
    """
    names = [str(m) for m in scores["model"].values]
    if model not in names:
        raise ValueError(f"model: {model!r} is not in the scores (models: {names})")
    lines: list[str] = []
    crps = dict(_headline_fields(scores, "crps"))
    hours = (scores["lead_time"].values // np.timedelta64(1, "h")).astype(int)
    for baseline in ("climatology", "persistence"):
        if baseline not in names:
            lines.append(f"- below {baseline}: not scored ({baseline} was not run)")
            continue
        for label in ("z500", "t850"):
            if label not in crps:
                continue
            mine = crps[label].sel(model=model).values
            theirs = crps[label].sel(model=baseline).values
            worse = [int(h) for h, a, b in zip(hours, mine, theirs, strict=True) if not a < b]
            verdict = "at every lead" if not worse else f"not at {_leads_text(worse)}"
            lines.append(
                f"- {label} CRPS below {baseline}: {'yes' if not worse else 'no'}, {verdict} "
                f"({len(hours) - len(worse)} of {len(hours)} leads, 12 h to {hours[-1] // 24} d)"
            )
    lo, hi = calibrated
    late = hours > calibrated_after_hours
    for label, field in _headline_fields(scores, "spread_skill"):
        values = field.sel(model=model).values[late]
        if not np.isfinite(values).any():
            lines.append(
                f"- {label} spread/skill beyond {_lead_label(calibrated_after_hours)}: no such "
                "leads scored"
            )
            continue
        inside = int(np.sum((values >= lo) & (values <= hi)))
        lines.append(
            f"- {label} spread/skill beyond {_lead_label(calibrated_after_hours)}: "
            f"{np.nanmin(values):.2f} to {np.nanmax(values):.2f}, within [{lo}, {hi}] at "
            f"{inside} of {values.size} leads"
        )
    if "physics" in names:
        chosen = scores.sel(metric="crps")
        wins = total = 0
        for var in chosen.data_vars.values():
            mine, ref = var.sel(model=model).values, var.sel(model="physics").values
            ok = np.isfinite(mine) & np.isfinite(ref)
            wins += int(np.sum(mine[ok] < ref[ok]))
            total += int(ok.sum())
        share = 100.0 * wins / max(total, 1)
        lines.append(
            f"- physics ensemble beaten on {wins} of {total} (variable, level, lead) targets "
            f"({share:.0f} %; GenCast against ENS: 97 %)"
        )
    else:
        lines.append("- against the physics ensemble: not scored (physics was not run)")
    if "perfect" in names:
        columns = [h for h in TABLE_LEADS_HOURS if h in set(hours.tolist())]
        for label, field in crps.items():
            ratio = [
                float(field.sel(model=model, lead_time=np.timedelta64(h, "h")))
                / float(field.sel(model="perfect", lead_time=np.timedelta64(h, "h")))
                for h in columns
            ]
            cells = ", ".join(
                f"{_lead_label(h)} {r:.2f}" for h, r in zip(columns, ratio, strict=True)
            )
            lines.append(f"- {label} CRPS over the perfect-model bound: {cells}")
    else:
        lines.append("- perfect-model bound: not scored (perfect was not run)")
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


def target_label(name: str, level: int | None) -> str:
    """Short label of a target: ``z500``, ``t850``, ``sp`` (WeatherBench style)."""
    return f"{_SHORT.get(name, name)}{level if level is not None else ''}"


def ensemble_scores(
    forecast: xr.Dataset, truth: xr.Dataset, targets: Sequence[tuple[str, int | None]]
) -> dict[str, dict[str, list[float]]]:
    """Per target label, per lead of one forecast (one init): fair CRPS, ensemble-mean MSE and
    mean ensemble variance (area-weighted means; the variance with the (M+1)/M correction undone,
    so that averaging MSE and variance over inits before the ratio gives spread/skill).
    """
    from weather.scoring.metrics import align_truth, crps, ensemble_mean_rmse, spread_skill_ratio

    out: dict[str, dict[str, list[float]]] = {}
    members = forecast.sizes["member"]
    for name, level in targets:
        f = forecast[name] if level is None else forecast[name].sel(level=level)
        t = align_truth(f, truth[name] if level is None else truth[name].sel(level=level))
        c = np.asarray(crps(f, t).values).reshape(-1)
        rmse = np.asarray(ensemble_mean_rmse(f, t).values).reshape(-1)
        ratio = np.asarray(spread_skill_ratio(f, t).values).reshape(-1)
        variance = (ratio * rmse) ** 2 * members / (members + 1)
        out[target_label(name, level)] = {
            "crps": c.tolist(),
            "mse": (rmse**2).tolist(),
            "variance": variance.tolist(),
        }
    return out


def pooled_spread_skill(
    mse: np.ndarray, variance: np.ndarray, members: int, axis: int = 0
) -> np.ndarray:
    """Spread/skill from per-init MSE and variance: ``sqrt((M+1)/M mean(var) / mean(mse))``."""
    return np.sqrt((members + 1) / members * np.mean(variance, axis=axis) / np.mean(mse, axis=axis))


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


def physics_baselines(
    *,
    method: str = "bred",
    physics: PhysicsEnsembleConfig | None = None,
    perfect: PerfectModelConfig | None = None,
) -> dict[str, Baseline]:
    """The physics ensemble (``physics``, ECMWF ENS stand-in) and the perfect model (``perfect``).

    Args:
      method: the physics ensemble's initial perturbations (`weather.physics_ensemble.METHODS`).
      physics: its model and perturbation settings (default `PhysicsEnsembleConfig()`: T21 L8).
      perfect: the perfect-model ensemble's unresolved scales (default `PerfectModelConfig()`);
        it runs the truth's own simulator, read from the archive's ``simulation_config``.

    Each baseline forecasts leads 12 h, 24 h, ... up to the evaluation's last lead (contiguous,
    as `EvaluationConfig.leads` makes them), in memory, chunked like the model's stores.
    """

    def longest(leads: np.ndarray) -> np.timedelta64:
        leads = np.asarray(leads).astype("timedelta64[ns]")
        expected = (STEP * np.arange(1, leads.size + 1)).astype("timedelta64[ns]")
        if not np.array_equal(leads, expected):
            raise ValueError("lead_times: the physics ensembles forecast every 12 h from 12 h")
        return leads[-1]

    # Imported when run: the simulator (jax, dinosaur) is not needed to list the baselines.
    def physics_run(a: xr.Dataset, i: np.ndarray, lt: np.ndarray, m: int, s: int) -> xr.Dataset:
        from weather.physics_ensemble import physics_ensemble

        ds = physics_ensemble(a, list(i), longest(lt), m, method=method, seed=s, config=physics)
        return ds.chunk(_STORE_CHUNKS)

    def perfect_run(a: xr.Dataset, i: np.ndarray, lt: np.ndarray, m: int, s: int) -> xr.Dataset:
        from weather.physics_ensemble import perfect_model_ensemble

        ds = perfect_model_ensemble(a, list(i), longest(lt), m, seed=s, config=perfect)
        return ds.chunk(_STORE_CHUNKS)

    return {"physics": physics_run, "perfect": perfect_run}


def history_hours_needed(
    names: Sequence[str],
    members: int,
    *,
    method: str = "bred",
    physics: PhysicsEnsembleConfig | None = None,
) -> int:
    """Hours of analyses before each init that the named forecasters need (for `spaced_inits`).

    12 h for the model (its t-12h input) and the other baselines; the physics ensemble's bred
    vectors need ``breeding_cycles * breeding_hours`` (48 h by default) and its lagged members
    ``(members - 1) * lag_hours``.
    """
    hours = 12
    if "physics" in names:
        from weather.physics_ensemble import PhysicsEnsembleConfig, needed_times

        init = np.datetime64(0, "h")
        needed = needed_times(init, method, members, physics or PhysicsEnsembleConfig())
        hours = max(hours, int((init - min(needed)) // np.timedelta64(1, "h")))
    return hours
