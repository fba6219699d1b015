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
  ``base_spread_skill_in_range`` the base's count.
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


def _fields(scores: xr.Dataset, metric: str) -> dict[tuple[str, int | None], np.ndarray]:
    """``{(variable, level or None): values[lead]}`` of the ``model`` forecaster's metric."""
    out = {}
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
    return {
        "crps_ratio_geomean": float(np.exp(np.mean(np.log(every)))),
        "wins": int((every < 1).sum()),
        "total": int(every.size),
        "headline_wins": int((top < 1).sum()),
        "headline_total": int(top.size),
        "spread_skill_in_range": inside,
        "spread_skill_total": total,
        "base_spread_skill_in_range": _in_range(_fields(base, "spread_skill"))[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the base's evaluate out-dir")
    parser.add_argument("candidates", type=Path, nargs="+", help="candidates' out-dirs")
    args = parser.parse_args(argv)
    base = xr.open_dataset(args.base / "scores.nc")
    report = {
        "base": str(args.base),
        "candidates": {
            str(path): compare(base, xr.open_dataset(path / "scores.nc"))
            for path in args.candidates
        },
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
