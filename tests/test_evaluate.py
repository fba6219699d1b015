"""Evaluation: spaced inits, resumable forecasts of the model and baselines, scores, the table."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import tiny_model_config

from weather.baselines import persistence
from weather.data.errors import ArchiveError
from weather.evaluate import (
    EvaluationConfig,
    run_baseline,
    run_model,
    score,
    skill_table,
    spaced_inits,
    standard_baselines,
    whole_years,
)
from weather.model.train import TrainConfig, train


@pytest.fixture(scope="module")
def checkpoint(archive, statistics, tmp_path_factory):  # type: ignore[no-untyped-def]
    run = tmp_path_factory.mktemp("eval-run")
    return train(
        run_dir=run,
        model_config=tiny_model_config(),
        train_config=TrainConfig(steps=1, batch_size=1, warmup_steps=0, log_every=1),
        train_data=archive,
        train_period=(archive["time"].values[0], archive["time"].values[-1]),
        statistics=statistics,
        progress=False,
    )


def test_spaced_inits_have_history_and_verification(archive):
    inits = spaced_inits(archive, 3, 2.0, 48, None)
    t0 = archive["time"].values[0]
    np.testing.assert_array_equal(
        inits, t0 + np.timedelta64(12, "h") + np.timedelta64(2, "D") * np.arange(3)
    )
    with pytest.raises(ArchiveError, match="holds only"):
        spaced_inits(archive, 30, 2.0, 48, None)


def test_whole_years_leave_out_years_with_gaps():
    full = pd.date_range("2001-01-01", "2002-12-31T18", freq="6h").values
    gappy = full[~((full >= np.datetime64("2002-03-01")) & (full < np.datetime64("2002-03-02")))]
    assert whole_years(full) == [2001, 2002]
    assert whole_years(gappy) == [2001]
    leap = pd.date_range("2004-01-01", "2004-12-31T18", freq="6h").values
    assert whole_years(leap) == [2004]


def test_evaluation_scores_model_and_baselines_and_resumes(archive, checkpoint, tmp_path):
    config = EvaluationConfig(out_dir=tmp_path, lead_hours=24, members=2)
    inits = spaced_inits(archive, 2, 3.0, 24, None)
    stores = run_model(config, checkpoint, archive, inits)
    baselines = standard_baselines(None)
    run_baseline(config, "persistence", baselines["persistence"], archive, inits)
    scores = score(config, ["model", "persistence"], archive, inits)
    assert list(scores["model"].values) == ["model", "persistence"]
    assert scores.attrs["inits"] == 2

    # Persistence's "crps" is its mean absolute error, area weighted, averaged over inits.
    base = persistence(archive, inits, config.leads)
    truth = archive["temperature"].sel(level=500)
    errors = []
    for init in inits:
        valid = init + np.timedelta64(24, "h")
        error = np.abs(truth.sel(time=valid) - truth.sel(time=init))
        errors.append(float(error.weighted(np.cos(np.deg2rad(archive["latitude"]))).mean()))
    got = scores["temperature"].sel(
        model="persistence", metric="crps", level=500, lead_time=np.timedelta64(24, "h")
    )
    np.testing.assert_allclose(float(got), np.mean(errors), rtol=1e-4)
    assert base.sizes["member"] == 1
    assert np.isfinite(scores["temperature"].sel(model="model", metric="crps")).all()
    assert np.isnan(scores["temperature"].sel(model="persistence", metric="spread_skill")).all()

    # Rerun: finished stores are kept; an unfinished one (no marker) is redone.
    before = [s.stat().st_mtime_ns for s in stores]
    first_run = xr.open_zarr(stores[1], consolidated=False).load()
    done = stores[1].with_name(stores[1].name + ".done")
    done.unlink()
    again = run_model(config, checkpoint, archive, inits)
    assert again[0].stat().st_mtime_ns == before[0]
    assert done.exists()
    assert again[1].stat().st_mtime_ns != before[1]
    xr.testing.assert_identical(xr.open_zarr(again[1], consolidated=False).load(), first_run)

    table = skill_table(scores)
    assert "| t500 | model |" in table and "| t500 | persistence |" in table
    assert table.splitlines()[0].endswith("| 12 h | 1 d |")
