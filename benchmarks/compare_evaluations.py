"""Candidates against a base on the same init times: the validation decision as one JSON object.

Usage (the per-channel spread scale of issue 13: README, "Long-lead skill")::

    python benchmarks/compare_evaluations.py data/val-A data/val-B data/val-C ...

Each argument is a ``weather evaluate --models model`` out-dir (its ``scores.nc``) made with
the same archive, inits, members and seed; the first is the base. For each candidate, over its
``model``'s fair CRPS at every (variable, level, lead) both hold:

- ``crps_ratio_geomean``: the geometric mean of candidate / base (below 1: better on average;
  a ratio, so that surface pressure's Pa do not outweigh temperature's K);
- ``wins`` / ``total``: how many values the candidate has lower; ``headline_wins`` /
  ``headline_total`` the same over the six headline targets (`weather.evaluation.report.HEADLINE`);
- ``spread_skill_in_range`` / ``spread_skill_total``: how many of its spread/skill values from
  the second lead on (1 day for 12 h steps) lie in [0.8, 1.2], issue 13's calibration goal;
  ``base_spread_skill_in_range`` the base's count;
- ``headline_geomean_by_days``: the geometric mean over the headline targets within lead bands
  (to 5 days, 5-10, beyond 10), since a change often helps the first days and hurts the last.

Chance: a candidate run with another ``--seed`` differs from its base by chance alone, and on 8
inits x 8 members that chance is as large as the differences between models (the same network
and sampler with seeds 0 and 1: geometric mean 0.989, 136 of 180 headline values "lower").
So an argument may join several out-dirs of one model made with different seeds by ``+``
(``data/val-A+data/val-A-seed1``): their CRPS and spread/skill are averaged over the runs
(equal inits and members, so the mean CRPS is the CRPS over all of them); when the base joins
two or more, ``base_runs`` compares its second run with its first, the size of chance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from weather.evaluation.report import HEADLINE

CALIBRATED = (0.8, 1.2)
# Lead bands of `headline_geomean_by_days`: (after, up to and including) days.
BANDS = {"to 5 d": (0.0, 5.0), "5-10 d": (5.0, 10.0), "beyond 10 d": (10.0, np.inf)}


def _fields(scores: xr.Dataset, metric: str) -> dict[tuple[str, int | None], np.ndarray]:
    """``{(variable, level or None): values[lead]}`` of the ``model`` forecaster's metric."""
    out: dict[tuple[str, int | None], np.ndarray] = {}
    model = scores.sel(model="model", metric=metric)
    for name, field in model.data_vars.items():
        if "level" in field.dims:
            for level in field["level"].values:
                out[(str(name), int(level))] = np.asarray(field.sel(level=level), np.float64)
        else:
            out[(str(name), None)] = np.asarray(field, np.float64)
    return out


def _in_range(spread_skill: dict[Any, np.ndarray]) -> tuple[int, int]:
    later = np.concatenate([v[1:] for v in spread_skill.values()])
    later = later[np.isfinite(later)]
    inside = (later >= CALIBRATED[0]) & (later <= CALIBRATED[1])
    return int(inside.sum()), int(later.size)


def compare(base: xr.Dataset, candidate: xr.Dataset) -> dict[str, Any]:
    """The comparison of one candidate's scores with the base's (see the module docstring).

    Raises:
      ValueError: the two were not scored at the same lead times.
    """
    if not np.array_equal(base["lead_time"].values, candidate["lead_time"].values):
        raise ValueError("lead_time: the candidate was scored at other leads than the base")
    crps_base, crps = _fields(base, "crps"), _fields(candidate, "crps")
    ratios, headline = [], []
    for key in sorted(crps_base.keys() & crps.keys(), key=str):
        ratio = crps[key] / crps_base[key]
        ok = np.isfinite(ratio)
        ratios.append(ratio[ok])
        if key in HEADLINE:
            headline.append(ratio[ok])
    every = np.concatenate(ratios)
    top = np.concatenate(headline) if headline else np.zeros(0)
    inside, total = _in_range(_fields(candidate, "spread_skill"))
    days = base["lead_time"].values / np.timedelta64(1, "D")
    by_days = {}
    for band, (low, high) in BANDS.items():
        chosen = (days > low) & (days <= high)
        logs = [np.log(crps[k][chosen] / crps_base[k][chosen]) for k in HEADLINE if k in crps]
        values = np.concatenate(logs) if logs else np.zeros(0)
        values = values[np.isfinite(values)]
        if values.size:
            by_days[band] = float(np.exp(values.mean()))
    return {
        "crps_ratio_geomean": float(np.exp(np.mean(np.log(every)))),
        "wins": int((every < 1).sum()),
        "total": int(every.size),
        "headline_wins": int((top < 1).sum()),
        "headline_total": int(top.size),
        "spread_skill_in_range": inside,
        "spread_skill_total": total,
        "base_spread_skill_in_range": _in_range(_fields(base, "spread_skill"))[0],
        "headline_geomean_by_days": by_days,
    }


def open_runs(argument: str) -> list[xr.Dataset]:
    """The scores of the out-dirs that ``argument`` joins with ``+``.

    Raises:
      ValueError: runs scored at other leads than the first of them.
    """
    runs = [xr.open_dataset(Path(part) / "scores.nc") for part in argument.split("+")]
    for part, run in zip(argument.split("+")[1:], runs[1:], strict=True):
        if not np.array_equal(runs[0]["lead_time"].values, run["lead_time"].values):
            raise ValueError(f"lead_time: {part} was scored at other leads than the runs it joins")
    return runs


def mean_of_runs(runs: list[xr.Dataset]) -> xr.Dataset:
    """Every score averaged over the runs (one model, other seeds)."""
    return xr.concat(runs, dim="run", join="exact").mean("run", keep_attrs=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the base's evaluate out-dir (several seeds: A+B)")
    parser.add_argument("candidates", nargs="+", help="candidates' out-dirs (several seeds: A+B)")
    args = parser.parse_args(argv)
    base_runs = open_runs(args.base)
    base = mean_of_runs(base_runs)
    report: dict[str, Any] = {
        "base": args.base,
        "candidates": {
            argument: compare(base, mean_of_runs(open_runs(argument)))
            for argument in args.candidates
        },
    }
    if len(base_runs) > 1:
        report["base_runs"] = compare(base_runs[0], base_runs[1])
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
