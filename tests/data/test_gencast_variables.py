"""GenCast's variable set end to end on a synthetic WeatherBench2-layout archive with pole rows
(`support.gencast_archive`): the default task is the whole set with solar radiation as a
forcing, training keeps sea-surface temperature's land mask in the checkpoint, forecasts keep
precipitation and humidity non-negative and leave SST undefined over land, and scores are
finite where the truth is defined; all through `weather.cli.main`, as a user would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from support import gencast_archive

from weather.cli import main
from weather.model.checkpoint import load_checkpoint
from weather.model.task import GENCAST_FORCINGS, TaskConfig

LEVEL_VARIABLES = (
    "geopotential",
    "temperature",
    "u_component_of_wind",
    "v_component_of_wind",
    "specific_humidity",
    "vertical_velocity",
)
SURFACE_VARIABLES = (
    "mean_sea_level_pressure",
    "2m_temperature",
    "10m_u_component_of_wind",
    "10m_v_component_of_wind",
    "sea_surface_temperature",
    "total_precipitation_12hr",
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wb2") / "gencast-32x17.zarr"
    gencast_archive().to_zarr(path)
    return path


@pytest.fixture(scope="module")
def trained(archive, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gencast-run")
    train = [
        "train", "--train-archive", str(archive), "--val-archive", str(archive),
        "--run-dir", str(run), "--arch", "unet", "--unet-channels", "8,16", "--noise", "iid",
        "--steps", "2", "--batch-size", "1", "--warmup", "1", "--validate-every", "2",
        "--quiet",
    ]  # fmt: skip
    assert main(train) == 0
    return run / "checkpoint.msgpack"


def test_the_default_task_is_gencasts_with_its_land_mask_kept(trained):
    saved = load_checkpoint(trained)
    task = TaskConfig.from_dict(saved["configs"]["model"]["task"])
    assert task.level_variables == LEVEL_VARIABLES
    assert task.surface_variables == SURFACE_VARIABLES
    assert task.static_variables == ("geopotential_at_surface", "land_sea_mask")
    assert task.forcings == GENCAST_FORCINGS  # solar radiation computed, the stored one unread
    assert np.isfinite(saved["metadata"]["history"][-1]["validation_loss"])
    land = gencast_archive()["land_sea_mask"].values > 0.5
    valid = np.asarray(saved["normalization"]["valid"], bool)
    sst = task.channel_names().index("sea_surface_temperature")
    np.testing.assert_array_equal(valid[..., sst], ~land)
    assert np.delete(valid, sst, axis=-1).all()


def test_forecasts_respect_each_fields_nature_and_score(trained, archive, tmp_path):
    out = tmp_path / "f.zarr"
    predict = [
        "forecast", "--checkpoint", str(trained), "--archive", str(archive), "--init",
        "2016-01-02T12", "--lead", "24", "--members", "2", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(predict) == 0
    fc = xr.open_zarr(out)
    assert set(fc.data_vars) == {*LEVEL_VARIABLES, *SURFACE_VARIABLES}
    land = gencast_archive()["land_sea_mask"].values > 0.5
    sst = fc["sea_surface_temperature"].values  # [member, lead, lat, lon] in some order
    sst = np.moveaxis(
        sst,
        [fc["sea_surface_temperature"].dims.index(d) for d in ("latitude", "longitude")],
        [-2, -1],
    )
    assert np.isnan(sst[..., land]).all() and np.isfinite(sst[..., ~land]).all()
    assert (fc["total_precipitation_12hr"].values >= 0).all()
    assert (fc["specific_humidity"].values >= 0).all()
    for name in set(fc.data_vars) - {"sea_surface_temperature"}:
        assert np.isfinite(fc[name].values).all(), name
    scores_path = tmp_path / "s.nc"
    score = ["score", "--forecast", str(out), "--truth", str(archive), "--out", str(scores_path)]
    assert main(score) == 0
    scores = xr.open_dataset(scores_path)
    for name in ("total_precipitation_12hr", "sea_surface_temperature", "2m_temperature"):
        crps = scores[name].sel(metric="crps")
        assert np.isfinite(crps.values).all() and (crps.values > 0).all(), name


def test_evaluate_scores_the_model_against_persistence_and_climatology(trained, archive, tmp_path):
    # The climatological ensemble draws from whole years: one synthetic year, 12-hourly.
    years = tmp_path / "climate.zarr"
    gencast_archive(days=366, start="2015-01-01", step_hours=12, seed=1).to_zarr(years)
    out = tmp_path / "eval"
    evaluate = [
        "evaluate", "--checkpoint", str(trained), "--archive", str(archive),
        "--climatology-archive", str(years), "--first", "2016-01-02T00", "--inits", "2",
        "--spacing-days", "1", "--lead-days", "1", "--members", "2",
        "--models", "model,persistence,climatology", "--out-dir", str(out), "--quiet",
    ]  # fmt: skip
    assert main(evaluate) == 0
    scores = xr.open_dataset(out / "scores.nc")
    assert set(scores["model"].values) == {"model", "persistence", "climatology"}
    for name in ("total_precipitation_12hr", "sea_surface_temperature", "specific_humidity"):
        crps = scores[name].sel(metric="crps")
        assert np.isfinite(crps.values).all() and (crps.values > 0).all(), name


def test_the_service_serves_the_trained_model_and_scores_every_field(trained, archive, tmp_path):
    import httpx
    from service_support import server_thread

    from service.settings import Settings

    settings = Settings(
        checkpoint=trained,
        archive=archive,
        data_dir=tmp_path / "service",
        max_members=2,
        batch_sizes=[2],
    )
    body = {"init_time": "2016-01-02T12:00:00Z", "lead": 24, "members": 2, "seed": 3}
    with server_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        described = client.get("/archive").json()
        assert set(described["surface_variables"]) == set(SURFACE_VARIABLES)
        job = client.post("/forecast", json=body).json()
        scores = client.get(f"/forecast/{job['id']}/scores", params={"wait": 240})
    assert scores.status_code == 200, scores.text
    rows = scores.json()["rows"]
    assert {r["variable"] for r in rows} == {*LEVEL_VARIABLES, *SURFACE_VARIABLES}
    assert all(r["verified"] and r["crps"] is not None and r["crps"] > 0 for r in rows), rows
