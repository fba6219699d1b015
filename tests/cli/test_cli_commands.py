"""Each command's success path through `weather.cli.main`, on tiny settings, checked against
answers computed here: `weather train` (periods, levels, cached statistics, warm-up, the
architecture options, resuming), `weather export`, `weather forecast`, `weather score` and
`weather demo`. (`weather data simulate/check/stats` run in test_cli.py, `weather evaluate` in
test_evaluate.py.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import xarray as xr
from service_support import service_files

from weather.cli import main
from weather.model.checkpoint import load_checkpoint

TRAIN_PERIOD = ("2001-01-01", "2001-01-08")
VAL_PERIOD = ("2001-01-09T12", "2001-01-12T18")
STEPS = 10
INIT = "2001-01-03T00"


def train_args(store: Path, run: Path, *extra: str) -> list[str]:
    """A tiny transformer on the synthetic archive's 850 hPa level (of 500 and 850)."""
    return [
        "train", "--train-archive", str(store), "--train-period", ",".join(TRAIN_PERIOD),
        "--val-archive", str(store), "--val-period", " , ".join(VAL_PERIOD),
        "--run-dir", str(run), "--levels", "850", "--noise", "iid",
        "--arch", "transformer", "--patch", "2", "--d-model", "32", "--layers", "1",
        "--heads", "2", "--steps", str(STEPS), "--batch-size", "2", "--lr", "3e-3",
        "--warmup", "4", "--checkpoint-every", "3", "--validate-every", "5", "--seed", "1",
        "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def store(archive, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli-archive") / "archive.zarr"
    archive.to_zarr(path)
    return path


@dataclasses.dataclass
class Trained:
    run: Path
    calls: list[dict[str, Any]]  # the keyword arguments `weather train` gave `train`, per call
    after_first: dict[str, Any]  # the checkpoint after the interrupted first call
    statistics_bytes: bytes  # statistics.nc after the first call
    first_steps: list[int]  # the step each call's training batches began at
    recomputed: list[str]  # the periods of statistics computed by the second call


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory) -> Trained:
    """`weather train` interrupted after 2 of its steps (as a kill would), then run again."""
    import weather.data.statistics
    import weather.model.train

    run = tmp_path_factory.mktemp("cli-train") / "run"
    original = weather.model.train.train
    original_batches = weather.model.train.device_batches
    calls: list[dict[str, Any]] = []
    first_steps: list[int] = []

    def spy(stop_after: int | None = None, **kwargs: Any) -> Path:
        calls.append(kwargs)
        return original(stop_after=stop_after, **kwargs)

    def batches(windows: Any, forecaster: Any, first_step: int, *args: Any) -> Any:
        first_steps.append(first_step)
        return original_batches(windows, forecaster, first_step, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weather.model.train, "device_batches", batches)
        patch.setattr(weather.model.train, "train", functools.partial(spy, stop_after=2))
        assert main(train_args(store, run)) == 0
        after_first = load_checkpoint(run / "checkpoint.msgpack")
        statistics_bytes = (run / "statistics.nc").read_bytes()

        recomputed: list[str] = []
        compute = weather.data.statistics.compute_statistics

        def recording(*args: Any, **kwargs: Any) -> Any:
            recomputed.append(f"{kwargs.get('start')} .. {kwargs.get('end')}")
            return compute(*args, **kwargs)

        patch.setattr(weather.model.train, "train", spy)
        patch.setattr(weather.data.statistics, "compute_statistics", recording)
        assert main(train_args(store, run)) == 0
    return Trained(run, calls, after_first, statistics_bytes, first_steps, recomputed)


def test_train_builds_the_model_and_schedule_from_the_options(trained):
    from weather.model.backbone import SphereTransformerConfig
    from weather.model.denoiser import ModelConfig
    from weather.model.task import GENCAST_FORCINGS, TaskConfig
    from weather.model.train import TrainConfig

    configs = load_checkpoint(trained.run / "checkpoint.msgpack")["configs"]
    model = ModelConfig(
        # The test store is not our simulator's: GenCast's forcings, solar radiation included.
        task=TaskConfig(levels=(850,), forcings=GENCAST_FORCINGS),
        backbone=SphereTransformerConfig(patch_size=2, d_model=32, num_layers=1, num_heads=2),
        noise="iid",
    )
    assert configs["model"] == json.loads(json.dumps(model.to_dict()))
    schedule = TrainConfig(
        steps=STEPS,
        batch_size=2,
        peak_learning_rate=3e-3,
        warmup_steps=1,  # --warmup 4, capped at a tenth of the 10 steps
        seed=1,
        checkpoint_every=3,
        validate_every=5,
    )
    assert configs["train"] == json.loads(json.dumps(dataclasses.asdict(schedule)))


def test_train_statistics_cover_the_train_period_and_the_chosen_levels(trained, archive):
    from weather.data.statistics import compute_statistics, load_statistics

    names = [str(v) for v in archive.data_vars]
    subset = archive.sel(level=[850])
    want = compute_statistics(subset, names, start=TRAIN_PERIOD[0], end=TRAIN_PERIOD[1])
    got = load_statistics(trained.run / "statistics.nc")
    np.testing.assert_array_equal(got["level"].values, [850])
    # Float64 sums over the same numbers, in chunks of time there and at once here: as the
    # chunked and eager statistics of test_statistics.py, equal to 1e-12.
    xr.testing.assert_allclose(got.drop_attrs(), want.drop_attrs(), rtol=1e-12)
    whole = compute_statistics(subset, names, start="2001-01-01", end="2001-01-12T18")
    assert float(abs(whole["temperature_std"] - got["temperature_std"]).max()) > 1e-3  # telling


def test_train_hands_both_periods_and_archives_to_training(trained, archive):
    first = trained.calls[0]
    assert first["train_period"] == TRAIN_PERIOD
    assert first["validation_period"] == VAL_PERIOD
    np.testing.assert_array_equal(first["validation_data"]["time"].values, archive["time"].values)
    # Loaded into memory (no --stream), only the model's level.
    np.testing.assert_array_equal(first["train_data"]["level"].values, [850])
    assert first["train_data"]["temperature"].chunks is None
    assert first["mesh"] is None and first["init_params"] is None
    meta = load_checkpoint(trained.run / "checkpoint.msgpack")["metadata"]
    assert meta["train_period"] == list(TRAIN_PERIOD)
    history = [
        json.loads(line) for line in (trained.run / "history.jsonl").read_text().splitlines()
    ]
    # Logged (with validation) at the last step only: --log-every is not an option (50).
    assert [h["step"] for h in history] == [STEPS]
    assert np.isfinite(history[0]["validation_loss"])


def test_train_again_reuses_the_statistics_and_resumes(trained, store, tmp_path):
    assert int(trained.after_first["train"]["step"]) == 2
    assert trained.recomputed == []  # the second call read statistics.nc instead
    assert (trained.run / "statistics.nc").read_bytes() == trained.statistics_bytes
    resumed = load_checkpoint(trained.run / "checkpoint.msgpack")
    assert int(resumed["train"]["step"]) == STEPS
    assert trained.first_steps == [0, 2]  # the second call went on from step 2
    # The same training without the interruption, reading the first run's statistics file.
    straight = tmp_path / "straight"
    stats = ["--statistics", str(trained.run / "statistics.nc")]
    assert main(train_args(store, straight, *stats)) == 0
    assert not (straight / "statistics.nc").exists()
    want = load_checkpoint(straight / "checkpoint.msgpack")
    # The same compiled steps on the same batches: bit for bit (as test_train.py's resume).
    for a, b in zip(
        jax.tree_util.tree_leaves(want["train"]),
        jax.tree_util.tree_leaves(resumed["train"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_export_drops_the_training_state_of_a_trained_run(trained, tmp_path):
    out = tmp_path / "ship.msgpack"
    assert main(["export", str(trained.run / "checkpoint.msgpack"), str(out)]) == 0
    source = load_checkpoint(trained.run / "checkpoint.msgpack")
    shipped = load_checkpoint(out)
    assert "train" not in shipped
    assert shipped["metadata"]["exported_from_step"] == STEPS
    assert shipped["configs"] == source["configs"]
    for a, b in zip(
        jax.tree_util.tree_leaves(shipped["params"]),
        jax.tree_util.tree_leaves(source["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_export_adds_the_climatological_spectrum_the_power_cap_needs(
    trained, store, tmp_path, capsys
):
    from weather.data.reader import open_archive
    from weather.forecast import load_forecaster
    from weather.model.spectral import mean_degree_power
    from weather.model.task import state_to_channels

    source = trained.run / "checkpoint.msgpack"
    out = tmp_path / "capped.msgpack"
    # Without a spectrum the cap is refused before anything is written.
    assert main(["export", str(source), str(out), "--sampler", "power_cap=1.5"]) == 2
    assert "power_cap needs the truth's climatological power" in capsys.readouterr().err
    assert not out.exists()
    args = ["export", str(source), str(out), "--sampler", "power_cap=1.5,power_cap_degree=2"]
    args += ["--degree-power-from", str(store), "--degree-power-times", "3"]
    assert main(args) == 0
    saved = load_checkpoint(out)
    model = load_forecaster(out).forecaster
    assert (model.config.sampler.power_cap, model.config.sampler.power_cap_degree) == (1.5, 2)
    # The reference: the same three evenly spaced times (first, middle, last), by hand.
    archive = open_archive(store)
    n = archive.sizes["time"]
    picked = archive.isel(time=[0, round((n - 1) / 2), n - 1])
    task = model.task
    fields = {v: picked[v].sel(level=list(task.levels)).values for v in task.level_variables}
    fields.update({v: picked[v].values for v in task.surface_variables})
    want = mean_degree_power(model.latitude, model.longitude, state_to_channels(task, fields))
    # Stored as float32: relative rounding 6e-8.
    np.testing.assert_allclose(saved["normalization"]["degree_power"], want, rtol=1e-6)
    assert saved["metadata"]["degree_power_from"]["times"] == 3
    assert model.power_cap_filter(model.config.sampler) is not None
    # An archive without the model's variables is refused, naming what it lacks.
    bad = tmp_path / "bad.msgpack"
    lacking = tmp_path / "lacking.zarr"
    archive.drop_vars(task.surface_variables[0]).to_zarr(lacking)
    args = ["export", str(source), str(bad), "--degree-power-from", str(lacking)]
    assert main(args) == 2 and not bad.exists()
    assert task.surface_variables[0] in capsys.readouterr().err


@pytest.fixture(scope="module")
def forecast_store(tmp_path_factory, archive, statistics) -> Path:
    """`weather forecast` of the tiny service model: 3 members, 24 h, a 2-level 2M sampler."""
    files = service_files(tmp_path_factory, archive, statistics)
    out = tmp_path_factory.mktemp("cli-forecast") / "f.zarr"
    args = f"forecast --checkpoint {files.checkpoint} --archive {files.archive} --init {INIT}"
    args += f" --lead 24h --members 3 --seed 3 --sampler 2m:2 --chunk-steps 2 --out {out} --quiet"
    assert main(args.split()) == 0
    return out


def test_forecast_writes_the_ensemble_of_the_library_call(
    forecast_store, tmp_path_factory, archive, statistics
):
    from weather.forecast import forecast, load_forecaster
    from weather.model.rollout import RolloutConfig

    got = xr.open_zarr(forecast_store, consolidated=False)
    assert got["temperature"].dims == (
        "member", "init_time", "lead_time", "level", "latitude", "longitude"
    )  # fmt: skip
    assert got["surface_pressure"].dims == (
        "member", "init_time", "lead_time", "latitude", "longitude"
    )  # fmt: skip
    np.testing.assert_array_equal(got["member"].values, [0, 1, 2])
    np.testing.assert_array_equal(got["init_time"].values, [np.datetime64(INIT, "ns")])
    np.testing.assert_array_equal(got["lead_time"].values, np.array([12, 24], "m8[h]"))
    np.testing.assert_array_equal(got["level"].values, [500, 850])
    np.testing.assert_array_equal(got["latitude"].values, archive["latitude"].values)
    sampler = json.loads(got.attrs["sampler"])
    assert (sampler["solver"], sampler["num_steps"], got.attrs["seed"]) == ("2m", 2, 3)
    for name in got.data_vars:
        values = got[name].values
        assert np.isfinite(values).all(), name
        assert (values[0] != values[1]).any(), f"{name}: members 0 and 1 are the same"
    # The library's forecast with the same checkpoint, seed, sampler and chunks.
    files = service_files(tmp_path_factory, archive, statistics)
    model = load_forecaster(files.checkpoint)
    chosen = dataclasses.replace(model.forecaster.config.sampler, solver="2m", num_steps=2)
    want = forecast(
        model,
        archive,
        init_time=INIT,
        lead=24,
        members=3,
        seed=3,
        rollout=RolloutConfig(chunk_steps=2, sampler=chosen),
    )
    for name in want.data_vars:
        # The same compiled program on the same float32 inputs: bit for bit.
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=str(name))


def _area_mean(field: np.ndarray, latitude: np.ndarray) -> float:
    """Mean of ``field[H, W]`` weighted by cos(latitude): the cell areas of an equiangular grid."""
    w = np.cos(np.deg2rad(latitude))[:, None] * np.ones(field.shape)
    return float((w * field).sum() / w.sum())


def _brute_force_scores(
    forecast: np.ndarray, truth: np.ndarray, latitude: np.ndarray
) -> tuple[float, float, float]:
    """Fair CRPS, ensemble-mean RMSE and spread/skill of ``forecast[M, H, W]`` against
    ``truth[H, W]`` by their definitions, in float64, area-weighted."""
    x, y = forecast.astype(np.float64), truth.astype(np.float64)
    m = x.shape[0]
    skill = np.mean([np.abs(x[i] - y) for i in range(m)], axis=0)
    pairs = sum(np.abs(x[i] - x[j]) for i in range(m) for j in range(m))
    crps = _area_mean(skill - pairs / (2 * m * (m - 1)), latitude)
    mse = _area_mean((x.mean(axis=0) - y) ** 2, latitude)
    variance = _area_mean(x.var(axis=0, ddof=1), latitude)
    return crps, mse**0.5, float(np.sqrt((m + 1) / m * variance / mse))


def test_score_matches_the_scores_computed_by_hand(forecast_store, archive, tmp_path):
    out = tmp_path / "scores.nc"
    store = tmp_path / "truth.zarr"
    archive.to_zarr(store)
    args = f"score --forecast {forecast_store} --truth {store} --out {out} --quiet"
    assert main(args.split()) == 0
    scores = xr.open_dataset(out)
    assert list(scores["metric"].values) == ["crps", "rmse", "spread_skill"]
    fc = xr.open_zarr(forecast_store, consolidated=False)
    init = np.datetime64(INIT, "ns")
    for name, level in (("temperature", 850), ("geopotential", 500), ("surface_pressure", None)):
        for lead in fc["lead_time"].values:
            pick = {} if level is None else {"level": level}
            ens = fc[name].sel(lead_time=lead, **pick).isel(init_time=0).values
            truth = archive[name].sel(time=init + lead, **pick).values
            want = _brute_force_scores(ens, truth, archive["latitude"].values)
            got = scores[name].sel(lead_time=lead, **pick).values
            # float32 kernels against float64 here: differences of members and truth are exact
            # in float32 (Sterbenz: within a factor 2), sums over 512 points and the ensemble
            # mean are not (z500's mean of ~5.5e4 rounds by ~4e-3 against errors of hundreds).
            # Measured: CRPS 3e-8, RMSE and spread/skill up to 1.8e-6 relative; 1e-5 leaves 5x.
            np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"{name} {lead}")


def test_demo_forecasts_from_the_shipped_checkpoint_and_scores_it(tmp_path, capsys):
    """The embedded archive (17 simulated days, ~25 s of the ~40 s) and a 1-day, 2-member,
    2-level forecast from the shipped checkpoint, from another init than the default."""
    out = tmp_path / "demo"
    args = f"demo --data-dir {out} --init 1991-01-01T12 --lead-days 1 --members 2"
    assert main(f"{args} --sampler 2m:2 --seed 5 --quiet".split()) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["init_time"], summary["members"], summary["lead_days"]) == (
        "1991-01-01T12", 2, 1.0
    )  # fmt: skip
    fc = xr.open_zarr(out / "forecast.zarr", consolidated=False)
    init = np.datetime64("1991-01-01T12", "ns")
    np.testing.assert_array_equal(fc["init_time"].values, [init])
    np.testing.assert_array_equal(fc["lead_time"].values, np.array([12, 24], "m8[h]"))
    assert fc.sizes["member"] == 2 and fc.attrs["seed"] == 5
    sampler = json.loads(fc.attrs["sampler"])
    assert (sampler["solver"], sampler["num_steps"]) == ("2m", 2)
    truth = xr.open_zarr(out / "archive.zarr", consolidated=False)
    scores = xr.open_dataset(out / "scores.nc")
    day = np.timedelta64(1, "D")
    lat = truth["latitude"].values
    for name, level in (("geopotential", 500), ("temperature", 850)):
        target = f"{name}@{level}"
        y = truth[name].sel(level=level, time=init + day).values
        ens = fc[name].sel(level=level, lead_time=day).isel(init_time=0).values
        model, _, spread_skill = _brute_force_scores(ens, y, lat)
        # Persistence's CRPS is its area-weighted mean absolute error.
        before = truth[name].sel(level=level, time=init).values.astype(np.float64)
        persistence = _area_mean(np.abs(before - y), lat)
        got = scores.sel(target=target, lead_time=day)
        # The demo scores in float64 (another summation order than here): measured at most
        # 6e-10 relative (u850 at 1 d); 1e-7 leaves room for other CPUs' kernels.
        for key, want in (("crps_model", model), ("crps_persistence", persistence)):
            np.testing.assert_allclose(float(got[key]), want, rtol=1e-7, err_msg=f"{target} {key}")
        # Spread/skill from float32 members: as in `weather score` above (measured up to 1.8e-6).
        np.testing.assert_allclose(float(got["spread_skill_model"]), spread_skill, rtol=1e-5)
        row = summary["crps"][target]["1d"]
        assert row == {
            "model": round(float(got["crps_model"]), 3),
            "persistence": round(float(got["crps_persistence"]), 3),
            "spread_skill": round(float(got["spread_skill_model"]), 3),
        }
        assert f"{target:<28}{'1d':>6}{row['model']:>12.3f}" in printed
    assert (out / "forecast.png").stat().st_size > 1000


def test_train_models_the_variables_asked_for_and_refuses_what_the_archive_lacks(
    store, tmp_path, capsys
):
    from weather.model.task import TaskConfig

    run = tmp_path / "run"
    args = train_args(
        store,
        run,
        "--variables",
        "surface_pressure, temperature",
        "--forcings",
        "day_progress,year_progress",
    )
    args[args.index("--steps") + 1] = "1"
    assert main(args) == 0
    task = load_checkpoint(run / "checkpoint.msgpack")["configs"]["model"]["task"]
    want = TaskConfig(
        level_variables=("temperature",),
        surface_variables=("surface_pressure",),
        static_variables=(),
        levels=(850,),
        forcings=("year_progress", "day_progress"),
    )
    assert TaskConfig.from_dict(task) == want
    capsys.readouterr()
    missing = train_args(store, tmp_path / "other", "--variables", "temperature,2m_temperature")
    assert main(missing) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # One line naming the option, what is missing and what the archive holds; nothing written.
    assert len(err) == 1 and "lacks ['2m_temperature'] (asked by --variables)" in err[0]
    assert "it holds ['geopotential', 'temperature'" in err[0]
    assert not (tmp_path / "other").exists()
    assert main(train_args(store, tmp_path / "other", "--levels", "850,x")) == 2
    assert "--levels: 'x' is not an integer" in capsys.readouterr().err
