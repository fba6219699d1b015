"""benchmarks/spread_scales.py against re-fitted spread scales worked out by hand on synthetic
scores (the layout `weather evaluate` writes) and a checkpoint holding only its configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from support import LEVELS, tiny_model_config

from weather.model.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
# Leads 1, 3, 5, 9 days: a window of 2-7 days holds the middle two.
LEADS = (np.array([1, 3, 5, 9]) * 24).astype("timedelta64[h]").astype("timedelta64[ns]")


def _evaluation(path: Path, spread_skill: dict[str, np.ndarray]) -> Path:
    """An out-dir whose ``model`` has these spread/skill values (``[level, lead]`` or
    ``[lead]``) and a CRPS of 1 everywhere."""
    fields = {}
    for name, values in spread_skill.items():
        stacked = np.stack([np.ones_like(values), values])[None]  # [model, metric, ...]
        dims = ["model", "metric"] + (["level"] if stacked.ndim == 4 else []) + ["lead_time"]
        fields[name] = (dims, stacked)
    coords = {"model": ["model"], "metric": ["crps", "spread_skill"], "level": list(LEVELS)}
    path.mkdir()
    xr.Dataset(fields, coords={**coords, "lead_time": LEADS}).to_netcdf(path / "scores.nc")
    return path


def _checkpoint(path: Path, **sampler) -> Path:  # type: ignore[no-untyped-def]
    configs = {"model": tiny_model_config(**sampler).to_dict()}
    return save_checkpoint(path, configs=configs, normalization={}, params={})


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "benchmarks/spread_scales.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_refit_against_hand_answers(tmp_path):
    # tau: 0.45 everywhere but geopotential (0.3) and temperature@850 (0.6).
    checkpoint = _checkpoint(
        tmp_path / "c.msgpack",
        spread_scale=0.45,
        spread_scales=(("geopotential", 0.3), ("temperature@850", 0.6)),
    )
    spread_skill = {
        # z500: 0.64 and 1.0 in the window (geometric mean 0.8: f = 1.25), but its calibrated
        # 1.0 at 1 and 5 days would leave the range at 1.25: f = 1.2 / 1.0, tau 0.3 x 1.2.
        # z850: 0.5 and 0.5 (f = 2), bounded by --max-change 0.3 (1.3 < 1.2 / 0.9): 0.3 x 1.3.
        "geopotential": np.array([[1.0, 0.64, 1.0, 0.7], [0.9, 0.5, 0.5, 0.5]]),
        # t500 inside --keep (0.92 in the window; without it f = 1 / 0.92, tau 0.49): alone.
        # t850 over-dispersed (1.6 and 1.6: f = 0.625, bounded by 1 - 0.3 = 0.7, then its
        # lowest calibrated value 1.0 may fall to 0.8: f >= 0.8): 0.6 x 0.8 = 0.48.
        "temperature": np.array([[1.0, 0.92, 0.92, 1.0], [1.0, 1.6, 1.6, 1.3]]),
        # sp at 2 in the window with nothing calibrated to protect: f = 0.7, 0.45 x 0.7.
        "surface_pressure": np.array([2.0, 2.0, 2.0, 2.0]),
    }
    runs = _evaluation(tmp_path / "eval", spread_skill)
    done = _run(str(runs), "--checkpoint", str(checkpoint), "--window", "2,7")
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    channels = got["channels"]
    assert channels["geopotential@500"]["spread_skill"] == pytest.approx(0.8, rel=1e-12)
    assert channels["geopotential@500"]["new_tau"] == pytest.approx(0.36)
    assert channels["geopotential@850"]["new_tau"] == pytest.approx(0.39)
    assert channels["geopotential@850"]["spread_skill_range"] == [0.5, 0.9]
    assert channels["temperature@500"]["new_tau"] == pytest.approx(0.45)
    assert channels["temperature@850"]["new_tau"] == pytest.approx(0.48)
    assert channels["surface_pressure"]["new_tau"] == pytest.approx(round(0.45 * 0.7, 2))
    assert got["changed"] == 4
    assert got["sampler"] == (
        "spread_scale.geopotential@500=0.36,spread_scale.geopotential@850=0.39,"
        "spread_scale.temperature@850=0.48,spread_scale.surface_pressure=0.32"
    )


def test_power_moves_part_of_the_way(tmp_path):
    """--power 0.5: f = spread_skill ** -0.5, z500's 0.64 everywhere -> f = 1.25 (no lead
    calibrated, so only --max-change bounds it)."""
    checkpoint = _checkpoint(tmp_path / "c.msgpack", spread_scale=0.4)
    flat = np.full((2, 4), 0.64)
    runs = _evaluation(tmp_path / "eval", {"geopotential": flat})
    done = _run(str(runs), "--checkpoint", str(checkpoint), "--power", "0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["channels"]["geopotential@500"]["new_tau"] == 0.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "7"], "--window: '7' is not LOW,HIGH"),
        (["--keep", "1.1,0.9"], "--keep: '1.1,0.9' is not LOW,HIGH with LOW <= HIGH"),
        (["--power", "0"], "--power: 0.0 is not in (0, 2]"),
        (["--max-change", "1"], "--max-change: 1.0 is not in [0, 1)"),
    ],
)
def test_bad_options_are_refused_by_name(tmp_path, args, message):
    done = _run(str(tmp_path), "--checkpoint", str(tmp_path / "none"), *args)
    assert done.returncode == 2
    assert message in done.stderr
