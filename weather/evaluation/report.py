"""Reporting an evaluation: skill tables, the scorecard against a reference, the goals.

Reads the scores `weather.evaluation.run.score` writes (``(model, metric, lead_time[, level])``,
and per region ``(model, metric, region, lead_time[, level])``) and prints Markdown; the figures
are `weather.evaluation.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

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


def region_tables(
    regional: xr.Dataset, metric: str = "crps", skip: Sequence[str] = ("global",)
) -> str:
    """`skill_table` of ``metric`` for each region of ``regional`` but ``skip``, each under a
    line naming the region and its extent (the ``region`` coordinate's ``definitions``).

    Args:
      regional: scores with dims ``(model, metric, region, lead_time[, level])``.
    """
    definitions = dict(
        part.split(": ", 1)
        for part in str(regional["region"].attrs.get("definitions", "")).split("; ")
        if ": " in part
    )
    label = "fair CRPS (variable's units)" if metric == "crps" else metric
    blocks = []
    for region in [str(r) for r in regional["region"].values]:
        if region in skip:
            continue
        extent = f" ({definitions[region]})" if region in definitions else ""
        table = skill_table(regional.sel(region=region, drop=True), metric)
        blocks.append(f"{label} over {region}{extent}\n\n{table}")
    return "\n\n".join(blocks)


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


__all__ = [
    "HEADLINE",
    "SCORECARD_REFERENCE",
    "TABLE_LEADS_HOURS",
    "ensemble_scores",
    "goals_report",
    "pooled_spread_skill",
    "region_tables",
    "scorecard",
    "scorecard_reference",
    "scorecard_table",
    "skill_table",
    "target_label",
]
