"""benchmarks/compare_evaluations.py against counts and means worked out by hand on synthetic
scores (the layout `weather evaluate` writes: dims model, metric, lead_time[, level])."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

REPO = Path(__file__).resolve().parents[2]
LEADS = np.array([12, 24, 36, 48], dtype="timedelta64[h]").astype("timedelta64[ns]")
LEVELS = [500, 850]


def _scores(crps: dict[str, np.ndarray], spread_skill: dict[str, np.ndarray]) -> xr.Dataset:
    """Per variable: ``[lead]`` (surface) or ``[level, lead]`` values of each metric."""
    fields = {}
    for name in crps:
        stacked = np.stack([crps[name], spread_skill[name]])[None]  # [model, metric, ...]
        dims = ["model", "metric"] + (["level"] if stacked.ndim == 4 else []) + ["lead_time"]
        fields[name] = (dims, stacked)
    return xr.Dataset(
        fields,
        coords={
            "model": ["model"],
            "metric": ["crps", "spread_skill"],
            "level": LEVELS,
            "lead_time": LEADS,
        },
    )


def _write(path: Path, scores: xr.Dataset) -> Path:
    path.mkdir()
    scores.to_netcdf(path / "scores.nc")
    return path


def _run(*dirs: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "benchmarks/compare_evaluations.py", *map(str, dirs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_counts_and_geometric_mean_against_hand_answers(tmp_path):
    ones = {"geopotential": np.ones((2, 4)), "surface_pressure": np.ones(4)}
    base = _write(tmp_path / "base", _scores(ones, ones))
    # geopotential: level 500 (headline) halves its CRPS at two leads and doubles it at two;
    # level 850 (not headline) is 0.9 everywhere; surface pressure (headline) is 1.1 (a loss).
    crps = {
        "geopotential": np.array([[0.5, 0.5, 2.0, 2.0], [0.9, 0.9, 0.9, 0.9]]),
        "surface_pressure": np.full(4, 1.1),
    }
    # Spread/skill from the second lead: 3 of 3 in range at z500, 1 of 3 at z850 (0.79 and 1.21
    # are just outside), 0 of 3 at sp; the first lead never counts.
    spread_skill = {
        "geopotential": np.array([[5.0, 0.8, 1.0, 1.2], [1.0, 0.79, 1.0, 1.21]]),
        "surface_pressure": np.array([1.0, 1.3, 1.3, 1.3]),
    }
    candidate = _write(tmp_path / "candidate", _scores(crps, spread_skill))
    got = _run(base, candidate)["candidates"][str(candidate)]
    # log-mean of (0.5, 0.5, 2, 2, 0.9 x4, 1.1 x4): the halves and doubles cancel.
    want_geomean = float(np.exp((4 * np.log(0.9) + 4 * np.log(1.1)) / 12))
    assert got["crps_ratio_geomean"] == pytest.approx(want_geomean, rel=1e-12)
    assert (got["wins"], got["total"]) == (2 + 4, 12)
    assert (got["headline_wins"], got["headline_total"]) == (2, 8)
    assert (got["spread_skill_in_range"], got["spread_skill_total"]) == (3 + 1, 9)
    assert got["base_spread_skill_in_range"] == 9  # all ones


def test_candidates_scored_at_other_leads_are_refused(tmp_path):
    ones = {"surface_pressure": np.ones(4)}
    base = _write(tmp_path / "base", _scores(ones, ones))
    other = _scores(ones, ones).assign_coords(lead_time=LEADS * 2)
    candidate = _write(tmp_path / "other", other)
    done = subprocess.run(
        [sys.executable, "benchmarks/compare_evaluations.py", str(base), str(candidate)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "lead_time: the candidate was scored at other leads than the base" in done.stderr


def test_runs_joined_by_plus_are_averaged_and_compared_with_each_other(tmp_path):
    """Two seeds of the base (CRPS 1 and 3: mean 2) against a candidate at 1 everywhere; the
    lead bands hold the headline geometric mean of their own leads only."""
    leads = np.array([12, 24 * 6, 24 * 11], dtype="timedelta64[h]").astype("timedelta64[ns]")

    def scores(z500: list[float], sp: list[float], spread_skill: float) -> xr.Dataset:
        crps = {
            "geopotential": np.array([z500, [1.0, 1.0, 1.0]]),  # 500 headline, 850 not
            "surface_pressure": np.array(sp),
        }
        ratio = {k: np.full_like(v, spread_skill) for k, v in crps.items()}
        fields = {}
        for name in crps:
            stacked = np.stack([crps[name], ratio[name]])[None]
            dims = ["model", "metric"] + (["level"] if stacked.ndim == 4 else []) + ["lead_time"]
            fields[name] = (dims, stacked)
        coords = {"model": ["model"], "metric": ["crps", "spread_skill"], "level": LEVELS}
        return xr.Dataset(fields, coords={**coords, "lead_time": leads})

    seed0 = _write(tmp_path / "seed0", scores([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], 0.7))
    seed1 = _write(tmp_path / "seed1", scores([3.0, 3.0, 3.0], [3.0, 3.0, 3.0], 0.9))
    candidate = _write(tmp_path / "cand", scores([1.0, 2.0, 4.0], [1.0, 2.0, 1.0], 1.0))
    got = _run(Path(f"{seed0}+{seed1}"), candidate)
    answer = got["candidates"][str(candidate)]
    # Against the mean 2: z500 0.5 / 1 / 2, sp 0.5 / 1 / 0.5; z850 is 1 in every run: 1 x3.
    want = np.exp(np.mean(np.log([0.5, 1, 2, 1, 1, 1, 0.5, 1, 0.5])))
    assert answer["crps_ratio_geomean"] == pytest.approx(want, rel=1e-12)
    assert (answer["headline_wins"], answer["headline_total"]) == (3, 6)
    bands = answer["headline_geomean_by_days"]
    assert bands["to 5 d"] == pytest.approx(0.5)  # the 12 h lead: z500 and sp both 0.5
    assert bands["5-10 d"] == pytest.approx(1.0)  # day 6: both 1
    assert bands["beyond 10 d"] == pytest.approx(1.0)  # day 11: sqrt(2 x 0.5)
    # The base's spread/skill is the mean of its runs' (0.8: in range at every later lead).
    assert answer["base_spread_skill_in_range"] == 6
    # Chance, measured: the base's second seed against its first, 3 times the CRPS at the six
    # z500 and sp values, equal at the three z850 values.
    assert got["base_runs"]["crps_ratio_geomean"] == pytest.approx(3 ** (6 / 9), rel=1e-12)
    assert got["base_runs"]["wins"] == 0
