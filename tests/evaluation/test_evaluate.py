"""Evaluation: spaced inits, resumable forecasts of the model and baselines, scores, the tables."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from support import SIMULATED_START, tiny_model_config

from weather.baselines import (
    DiffusionModel,
    PerfectModel,
    Persistence,
    PhysicsEnsemble,
    persistence,
    whole_years,
)
from weather.cli import main
from weather.data.errors import ArchiveError
from weather.evaluation import (
    FORECASTERS,
    EvaluationConfig,
    check_settings,
    finished_forecasts,
    forecasters_by_name,
    goals_report,
    history_hours_needed,
    run_forecaster,
    score,
    scorecard,
    scorecard_reference,
    scorecard_table,
    skill_table,
    spaced_inits,
)
from weather.model.sampler import SamplerOverride
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
    # Bred physics members need 48 h of analyses before each init: the first init moves on.
    later = spaced_inits(archive, 3, 2.0, 48, None, history_hours=48)
    np.testing.assert_array_equal(later, inits + np.timedelta64(36, "h"))
    with pytest.raises(ArchiveError, match=r"holds only 0 init times.*48 h of history"):
        spaced_inits(archive, 1, 2.0, 48, t0 + np.timedelta64(12, "h"), history_hours=48)


def test_history_hours_follow_the_physics_perturbations(tmp_path):
    model = DiffusionModel(tmp_path / "never-loaded.msgpack")  # history needs no parameters
    plain = {"model": model, "persistence": Persistence(), "perfect": PerfectModel()}
    assert history_hours_needed(plain, 8) == 12
    assert history_hours_needed({"physics": PhysicsEnsemble()}, 8) == 48  # 4 cycles of 12 h
    lagged = {"physics": PhysicsEnsemble(method="lagged")}
    assert history_hours_needed(lagged, 3) == 12  # members 6 h apart
    assert history_hours_needed(lagged, 8) == 42
    assert history_hours_needed({"physics": PhysicsEnsemble(method="noise")}, 8) == 12


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
    model = DiffusionModel(checkpoint)
    stores = run_forecaster(config, "model", model, archive, inits)
    run_forecaster(config, "persistence", Persistence(), archive, inits)
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
    again = run_forecaster(config, "model", model, archive, inits)
    assert again[0].stat().st_mtime_ns == before[0]
    assert done.exists()
    assert again[1].stat().st_mtime_ns != before[1]
    xr.testing.assert_identical(xr.open_zarr(again[1], consolidated=False).load(), first_run)

    table = skill_table(scores)
    assert "| t500 | model |" in table and "| t500 | persistence |" in table
    assert table.splitlines()[0].endswith("| 12 h | 1 d |")


def test_forecasters_scored_one_call_at_a_time_share_one_scores_file(archive, checkpoint, tmp_path):
    """A forecaster scored later on the same inits joins the earlier ones in scores.nc (and the
    regional file) with the scores a joint call gives; other inits replace them."""
    config = EvaluationConfig(out_dir=tmp_path, lead_hours=24, members=2)
    inits = spaced_inits(archive, 2, 3.0, 24, None)
    run_forecaster(config, "model", DiffusionModel(checkpoint), archive, inits)
    run_forecaster(config, "persistence", Persistence(), archive, inits)
    joint = score(config, ["model", "persistence"], archive, inits)
    joint_regional = xr.open_dataset(tmp_path / "scores_by_region.nc").load()

    score(config, ["model"], archive, inits)
    later = score(config, ["persistence"], archive, inits)
    assert list(later["model"].values) == ["model", "persistence"]
    xr.testing.assert_allclose(later, joint)
    with xr.open_dataset(tmp_path / "scores.nc") as stored:
        xr.testing.assert_allclose(stored.load(), joint)
    with xr.open_dataset(tmp_path / "scores_by_region.nc") as stored:
        xr.testing.assert_allclose(stored.load(), joint_regional)
    again = score(config, ["model"], archive, inits)  # scored again: replaced, order kept
    assert list(again["model"].values) == ["model", "persistence"]
    xr.testing.assert_allclose(again, joint)

    # The first init alone (one half of a split evaluation): the two-init scores go.
    half = score(config, ["model"], archive, inits[:1])
    assert list(half["model"].values) == ["model"]
    assert half.attrs["inits"] == 1
    with xr.open_dataset(tmp_path / "scores.nc") as stored:
        assert list(stored["model"].values) == ["model"]


def _synthetic_scores() -> xr.Dataset:
    """Scores of three models: temperature (lead x level) and surface pressure (lead)."""
    leads = np.array([12, 24], "timedelta64[h]").astype("timedelta64[ns]")
    # [model, metric, lead, level]; model: model, physics, persistence; metric: crps, rmse.
    temperature = np.array(
        [
            [[[1.0, 2.0], [1.5, 3.0]], [[9.0, 9.0], [9.0, 9.0]]],
            [[[2.0, 2.0], [1.0, 4.0]], [[3.0, 6.0], [9.0, 9.0]]],
            [[[2.5, 1.0], [2.0, 5.0]], [[9.0, 9.0], [9.0, 9.0]]],
        ]
    )
    surface = np.array([[[90.0, 120.0], [1, 1]], [[100.0, 0.0], [1, 1]], [[80.0, 130.0], [1, 1]]])
    return xr.Dataset(
        {
            "temperature": (("model", "metric", "lead_time", "level"), temperature),
            "surface_pressure": (("model", "metric", "lead_time"), surface),
        },
        coords={
            "model": ["model", "physics", "persistence"],
            "metric": ["crps", "rmse"],
            "lead_time": leads,
            "level": [500, 850],
        },
    )


def test_scorecard_is_the_percentage_crps_difference():
    scores = _synthetic_scores()
    card = scorecard(scores)
    # 100 (model - physics) / physics, by hand: [lead, level] and [lead].
    np.testing.assert_allclose(card["temperature"].values, [[-50.0, 0.0], [50.0, -25.0]])
    # A zero reference score gives NaN, not inf.
    np.testing.assert_allclose(card["surface_pressure"].values, [-10.0, np.nan])
    assert card["temperature"].dims == ("lead_time", "level")
    assert card["temperature"].attrs["units"] == "%"
    assert card.attrs == {"model": "model", "reference": "physics", "metric": "crps"}
    rmse = scorecard(scores, "physics", "model", metric="rmse")
    np.testing.assert_allclose(rmse["temperature"].values, [[-200 / 3, -100 / 3], [0.0, 0.0]])
    assert scorecard_table(card).splitlines() == [
        "| target | 12 h | 1 d |",
        "| --- | --- | --- |",
        "| t850 | +0.0 | -25.0 |",
        "| t500 | -50.0 | +50.0 |",
        "| sp | -10.0 | - |",
    ]
    with pytest.raises(ValueError, match="reference: 'ens'"):
        scorecard(scores, reference="ens")
    with pytest.raises(ValueError, match="metric: 'mae'"):
        scorecard(scores, metric="mae")


def test_leads_are_named_as_runs():
    from weather.evaluation.report import _leads_text

    assert _leads_text([12, 24, 36, 72, 156, 168, 180]) == "12 h to 36 h, 3 d, 156 h to 180 h"
    assert _leads_text([168]) == "7 d"


def test_goals_report_measures_each_goal_of_the_evaluation():
    leads = (np.array([12, 24, 36, 48], "timedelta64[h]")).astype("timedelta64[ns]")
    names = ["model", "climatology", "persistence", "physics", "perfect"]
    z = [[10, 20, 30, 40], [50, 50, 50, 35], [15, 40, 60, 80], [12, 18, 33, 45], [5, 10, 15, 20]]
    t = [[1, 2, 3, 4], [5, 5, 5, 5], [2, 3, 4, 5], [1, 1, 1, 1], [0.5, 1, 1.5, 2]]
    spread_skill = {"geopotential": [0.5, 0.9, 1.1, 1.3], "temperature": [1.0, 1.0, 1.0, 1.0]}

    def field(crps: list[list[float]], name: str) -> np.ndarray:
        # [model, metric, lead, level]: the same numbers at both levels.
        ratio = np.tile(spread_skill[name], (len(names), 1))
        both = np.stack([np.asarray(crps, float), ratio], axis=1)
        return np.repeat(both[..., None], 2, axis=-1)

    dims = ("model", "metric", "lead_time", "level")
    scores = xr.Dataset(
        {
            "geopotential": (dims, field(z, "geopotential")),
            "temperature": (dims, field(t, "temperature")),
        },
        coords={
            "model": names,
            "metric": ["crps", "spread_skill"],
            "lead_time": leads,
            "level": [500, 850],
        },
    )
    lines = goals_report(scores).splitlines()
    assert lines == [
        "- z500 CRPS below climatology: no, not at 2 d (3 of 4 leads, 12 h to 2 d)",
        "- t850 CRPS below climatology: yes, at every lead (4 of 4 leads, 12 h to 2 d)",
        "- z500 CRPS below persistence: yes, at every lead (4 of 4 leads, 12 h to 2 d)",
        "- t850 CRPS below persistence: yes, at every lead (4 of 4 leads, 12 h to 2 d)",
        "- z500 spread/skill beyond 1 d: 1.10 to 1.30, within [0.8, 1.2] at 1 of 2 leads",
        "- t850 spread/skill beyond 1 d: 1.00 to 1.00, within [0.8, 1.2] at 2 of 2 leads",
        "- t500 spread/skill beyond 1 d: 1.00 to 1.00, within [0.8, 1.2] at 2 of 2 leads",
        # z: better at 12, 36, 48 h on both levels; t: never (equal at 12 h is not better).
        "- physics ensemble beaten on 6 of 16 (variable, level, lead) targets (38 %; GenCast "
        "against ENS: 97 %)",
        "- z500 CRPS over the perfect-model bound: 12 h 2.00, 1 d 2.00",
        "- t850 CRPS over the perfect-model bound: 12 h 2.00, 1 d 2.00",
        "- t500 CRPS over the perfect-model bound: 12 h 2.00, 1 d 2.00",
    ]
    partial = goals_report(scores.sel(model=["model", "persistence"])).splitlines()
    assert partial[0] == "- below climatology: not scored (climatology was not run)"
    assert partial[-2:] == [
        "- against the physics ensemble: not scored (physics was not run)",
        "- perfect-model bound: not scored (perfect was not run)",
    ]
    with pytest.raises(ValueError, match="model: 'gencast' is not in the scores"):
        goals_report(scores, "gencast")


def test_scorecard_reference_falls_back_to_the_best_other_baseline():
    scores = _synthetic_scores()
    assert scorecard_reference(scores) == ("physics", "scorecard of model against physics")
    without = scores.sel(model=["model", "persistence"])
    climatology = without.sel(model=["persistence"]).assign_coords(model=["climatology"]) * 0.5
    climatology["surface_pressure"][:] = 1e3  # worse than persistence at sp, better elsewhere
    name, note = scorecard_reference(xr.concat([without, climatology], dim="model"))
    # Headline cells: t850 and t500 at two leads, sp at two: climatology wins 4 of 6.
    assert name == "climatology"
    assert "'physics' is not in the scores" in note and "4 of 6" in note
    with pytest.raises(ValueError, match="no forecaster other than 'model'"):
        scorecard_reference(scores.sel(model=["model"]))


def test_evaluate_command_runs_the_physics_and_perfect_model_ensembles(
    simulated_truth, tmp_path, capsys
):
    """`weather evaluate` on a tiny simulated truth (T21 L8, 12-hourly; the physics ensemble's
    own configuration, so all share one compiled model): bred members need 48 h of history,
    and the perfect model reads the truth's simulator from the archive. At the default
    analysis truncation (21) a T21 truth has no unresolved scales, so its perfect-model members
    coincide: this checks the wiring, `tests/baselines/test_physics_ensemble.py` the ensembles."""
    store = tmp_path / "truth.zarr"
    truth = simulated_truth.isel(time=slice(0, 7))  # 3 days: 48 h of history, a 1-day forecast
    truth.to_zarr(store, zarr_format=3, consolidated=False)
    out = tmp_path / "eval"
    args = f"evaluate --archive {store} --out-dir {out} --models persistence,physics,perfect"
    assert main(f"{args} --inits 1 --lead-days 1 --members 2 --quiet".split()) == 0
    printed = capsys.readouterr().out
    assert "| z500 | physics |" in printed and "| z500 | perfect |" in printed
    scores = xr.open_dataset(out / "scores.nc")
    assert list(scores["model"].values) == ["persistence", "physics", "perfect"]
    assert scores["geopotential"].dims == ("model", "metric", "lead_time", "level")
    init = SIMULATED_START + np.timedelta64(48, "h")  # the first with 48 h of analyses before
    assert (out / "forecasts" / "physics" / "2001-03-03T00.zarr.done").exists()
    physics = finished_forecasts(out, "physics")
    assert physics.sizes["member"] == 2
    np.testing.assert_array_equal(physics["init_time"].values, [init])
    z500 = scores["geopotential"].sel(level=500)
    for name in ("physics", "perfect"):
        assert np.isfinite(z500.sel(model=name, metric=["crps", "rmse"])).all(), name
    assert (z500.sel(model="physics", metric="spread_skill") > 0).all()
    # Both are forecasts: better than persistence a day ahead, and not the truth itself.
    crps = z500.sel(metric="crps", lead_time=np.timedelta64(24, "h"))
    assert 0 < crps.sel(model="perfect") < crps.sel(model="persistence")
    assert 0 < crps.sel(model="physics") < crps.sel(model="persistence")


def test_an_evaluation_directory_keeps_one_set_of_settings(checkpoint, tmp_path):
    """Resuming joins stores by init time, so settings that change the forecasts must match."""
    config = EvaluationConfig(out_dir=tmp_path / "eval", lead_hours=24, members=2)
    check_settings(config, checkpoint)
    check_settings(config, checkpoint)  # the same again: resumes
    other = EvaluationConfig(
        out_dir=config.out_dir,
        lead_hours=24,
        members=4,
        sampler=SamplerOverride.parse("2s:5,spread_scale=0.6"),
    )
    with pytest.raises(ValueError, match=r"members 2 -> 4, sampler None -> '2s:5,spread_sc"):
        check_settings(other, checkpoint)


def test_baselines_alone_leave_the_model_settings_to_the_first_run_with_the_model(
    checkpoint, tmp_path
):
    """The checkpoint and sampler make only the model's forecasts: baselines scored first in an
    out-dir must not bind the model added later, but the model, once there, binds reruns."""
    config = EvaluationConfig(out_dir=tmp_path / "eval", lead_hours=24, members=2)
    record = config.out_dir / "settings.json"
    check_settings(config, None)
    assert json.loads(record.read_text()) == {"lead_hours": 24, "members": 2, "seed": 0}
    tuned = EvaluationConfig(
        out_dir=config.out_dir,
        lead_hours=24,
        members=2,
        sampler=SamplerOverride.parse("2s:5,spread_scale=0.6"),
    )
    check_settings(tuned, checkpoint)
    assert json.loads(record.read_text())["sampler"] == "2s:5,spread_scale=0.6"
    assert json.loads(record.read_text())["checkpoint"] == Path(checkpoint).name
    check_settings(config, None)  # more baselines: the model's settings do not concern them
    with pytest.raises(ValueError, match=r"sampler '2s:5,spread_scale=0.6' -> None"):
        check_settings(config, checkpoint)
    with pytest.raises(ValueError, match=r"members 2 -> 4"):
        check_settings(EvaluationConfig(out_dir=config.out_dir, lead_hours=24, members=4), None)


def test_forecasters_are_built_by_name_in_the_order_given(archive, checkpoint, tmp_path):
    override = SamplerOverride.parse("2s:3")
    built = forecasters_by_name(
        ["physics", "model", "persistence", "perfect"],
        checkpoint=checkpoint,
        sampler=override,
        physics_method="lagged",
    )
    assert list(built) == ["physics", "model", "persistence", "perfect"]
    kinds = (PhysicsEnsemble, DiffusionModel, Persistence, PerfectModel)
    assert all(isinstance(f, k) for f, k in zip(built.values(), kinds, strict=True))
    physics, model = built["physics"], built["model"]
    assert isinstance(physics, PhysicsEnsemble) and physics.method == "lagged"
    assert isinstance(model, DiffusionModel) and model.sampler == override
    assert set(FORECASTERS) - set(built) == {"climatology"}
    # Climatology opens its archives (here eight days: no whole year to draw from).
    store = tmp_path / "training.zarr"
    archive.to_zarr(store, zarr_format=3, consolidated=False)
    with pytest.raises(ArchiveError, match="holds no whole calendar year"):
        forecasters_by_name(["climatology"], checkpoint=checkpoint, climatology_archives=[store])
    with pytest.raises(ValueError, match=r"--models: unknown \['ecmwf', 'gfs'\]; choose from"):
        forecasters_by_name(["model", "gfs", "ecmwf"], checkpoint=checkpoint)


def test_evaluate_command_rejects_a_bad_sampler_before_forecasting(tmp_path):
    args = f"evaluate --archive {tmp_path / 'none.zarr'} --out-dir {tmp_path} --sampler 2x:5"
    with pytest.raises(SystemExit, match=r"--sampler: .*solver must be one of"):
        main(args.split())
    assert not (tmp_path / "settings.json").exists()


def test_evaluate_command_prints_the_goals_and_draws_the_scorecard(
    archive, checkpoint, tmp_path, capsys
):
    store = tmp_path / "analysis.zarr"
    archive.to_zarr(store, zarr_format=3, consolidated=False)
    out = tmp_path / "eval"
    args = f"evaluate --checkpoint {checkpoint} --archive {store} --out-dir {out}"
    code = main(f"{args} --models model,persistence --inits 1 --lead-days 1 --members 2".split())
    assert code == 0
    printed = capsys.readouterr().out
    # No physics ensemble here: the scorecard falls back to the best other forecaster.
    assert "'physics' is not in the scores: scorecard of model against persistence" in printed
    assert "- t850 CRPS below persistence: " in printed
    assert "- below climatology: not scored (climatology was not run)" in printed
    assert "spread/skill (1 is calibrated" in printed
    for figure in ("scorecard", "crps", "spread_skill"):
        assert (out / f"{figure}.png").stat().st_size > 1000, figure
    assert json.loads((out / "settings.json").read_text())["members"] == 2


def test_scores_per_region_and_their_tables(archive, tmp_path):
    """`score` also averages over WeatherBench2's regions (scores_by_region.nc); the global
    scores stay as they were, and the report adds a table per region."""
    from weather.evaluation.run import write_report

    config = EvaluationConfig(out_dir=tmp_path, lead_hours=24, members=1)
    inits = spaced_inits(archive, 2, 3.0, 24, None)
    run_forecaster(config, "persistence", Persistence(), archive, inits)
    scores = score(config, ["persistence"], archive, inits)
    assert "region" not in scores.dims
    regional = xr.open_dataset(tmp_path / "scores_by_region.nc").load()
    assert regional["region"].values.tolist() == [
        "global",
        "tropics",
        "extra-tropics-north",
        "extra-tropics-south",
    ]
    assert regional["temperature"].dims == ("model", "metric", "region", "lead_time", "level")
    xr.testing.assert_identical(
        regional["temperature"].sel(region="global", drop=True), scores["temperature"]
    )
    # Persistence's CRPS over the tropics is its mean absolute error on the rows within 20
    # degrees of the equator, weighted by the whole grid's cell areas (sin of the row edges).
    lat = archive["latitude"].values
    edges = np.deg2rad(np.concatenate([[-90.0], (lat[1:] + lat[:-1]) / 2, [90.0]]))
    weights = np.diff(np.sin(edges)) * (np.abs(lat) <= 20)
    truth = archive["temperature"].sel(level=850).astype(np.float64)
    lead = np.timedelta64(24, "h")
    errors = [
        np.abs(truth.sel(time=i + lead) - truth.sel(time=i)).mean("longitude").values
        @ weights
        / weights.sum()
        for i in inits
    ]
    got = regional["temperature"].sel(
        model="persistence", metric="crps", region="tropics", level=850, lead_time=lead
    )
    # The float32 kernel's |forecast - truth| is exact (Sterbenz: temperatures within a factor
    # 2), the means are float64 in another order: measured 2e-16 relative.
    np.testing.assert_allclose(float(got), np.mean(errors), rtol=1e-12)

    # A single forecast has no spread/skill, which the figure cannot draw: give it one.
    drawable = scores.copy(deep=True)
    for var in drawable.data_vars.values():
        var.loc[{"metric": "spread_skill"}] = 1.0
    text = write_report(drawable, tmp_path)
    tropics = text.index("fair CRPS (variable's units) over tropics (latitude -20..20, every")
    table = text[tropics:].split("\n\n")[1].splitlines()
    assert table[0] == "| target | model | 12 h | 1 d |"
    t850 = float(table[3].split("|")[4])
    assert table[3].startswith("| t850 | persistence |") and t850 == pytest.approx(float(got), 1e-2)
    assert "over extra-tropics-south (latitude -90..-20, every longitude)" in text
    assert "over global" not in text
    # Without regions: no regional file (an older one is removed) and no regional tables.
    score(config, ["persistence"], archive, inits, regions=())
    assert not (tmp_path / "scores_by_region.nc").exists()
    assert "over tropics" not in write_report(drawable, tmp_path)


def test_stores_written_before_valid_time_join_with_new_ones(tmp_path):
    """A resumed evaluation joins stores of earlier versions (no ``valid_time`` coordinate)
    with new ones; the joined forecasts get one ``valid_time = init_time + lead_time``."""
    leads = np.array([12, 24], "timedelta64[h]").astype("timedelta64[ns]")
    folder = tmp_path / "forecasts" / "model"
    folder.mkdir(parents=True)
    for day, with_valid_time in ((1, False), (2, True)):
        init = np.datetime64(f"2001-01-0{day}T00", "ns")
        ds = xr.Dataset(
            {"temperature": (("member", "init_time", "lead_time"), np.full((1, 1, 2), day, "f4"))},
            coords={"member": [0], "init_time": [init], "lead_time": leads},
        )
        if with_valid_time:
            ds.coords["valid_time"] = ds["init_time"] + ds["lead_time"]
        store = folder / f"2001-01-0{day}T00.zarr"
        ds.to_zarr(store, consolidated=False)
        (folder / f"{store.name}.done").touch()
    joined = finished_forecasts(tmp_path, "model")
    np.testing.assert_array_equal(joined["temperature"].values[0], [[1, 1], [2, 2]])
    want = joined["init_time"].values[:, None] + leads[None, :]
    np.testing.assert_array_equal(joined["valid_time"].values, want)
    assert joined["valid_time"].attrs["standard_name"] == "time"
