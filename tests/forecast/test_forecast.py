"""The inference entry point: layout of the forecast, streaming to Zarr, input checks."""

import numpy as np
import pytest
import xarray as xr
from support import setup

from weather.data.errors import ArchiveError
from weather.data.times import parse_lead
from weather.forecast import LoadedModel, forecast
from weather.model.rollout import Roller, RolloutConfig


@pytest.fixture(scope="module")
def loaded(archive, statistics):  # type: ignore[no-untyped-def]
    fc, params, *_ = setup(archive, statistics)
    return LoadedModel(fc, params, {}, "tiny.msgpack")


def test_forecast_layout_and_streamed_zarr_equal_in_memory(loaded, archive, tmp_path):
    roller = Roller(loaded.forecaster, RolloutConfig(chunk_steps=2))
    kw = dict(init_time="2001-01-02T00", lead="36h", members=3, seed=4, roller=roller)
    mem = forecast(loaded, archive, **kw)
    seen = []
    zarr = forecast(
        loaded,
        archive,
        out=tmp_path / "f.zarr",
        on_chunk=lambda done, total: seen.append((done, total)),
        **kw,
    )
    assert seen == [(2, 3), (3, 3)]
    assert mem["temperature"].dims == (
        "member",
        "init_time",
        "lead_time",
        "level",
        "latitude",
        "longitude",
    )
    assert mem["surface_pressure"].dims == (
        "member",
        "init_time",
        "lead_time",
        "latitude",
        "longitude",
    )
    assert mem.sizes == {
        "member": 3,
        "init_time": 1,
        "lead_time": 3,
        "level": 2,
        "latitude": 16,
        "longitude": 32,
    }
    np.testing.assert_array_equal(
        mem["lead_time"].values, np.array([12, 24, 36], "timedelta64[h]").astype("m8[ns]")
    )
    assert mem["member"].attrs["standard_name"] == "realization"
    assert mem["temperature"].attrs["units"] == "K"
    assert np.isfinite(mem["temperature"]).all()
    # Physical units: the 12 h change of t850 from the archive's init state is a residual of
    # the scale of 12 h differences (diff_std). Measured: rms 2.27 K against diff_std 2.56 K
    # (ratio 0.89: the perturbed network's outputs are of unit variance, the EDM scaling's
    # sigma_data = 1). Scaled by the state's std instead (7.19 K) the ratio would be 2.5; left in
    # normalised units about 110; the residual dropped, 0.
    change = mem["temperature"].sel(level=850).isel(lead_time=0) - archive["temperature"].sel(
        level=850, time="2001-01-02T00"
    )
    channel = loaded.forecaster.task.channel_names().index("temperature@850")
    diff_std = float(loaded.forecaster.normalization.diff_std[channel])
    assert 0.5 < float(np.sqrt((change**2).mean())) / diff_std < 1.6
    xr.testing.assert_allclose(zarr.load(), mem)
    with pytest.raises(FileExistsError):
        forecast(loaded, archive, out=tmp_path / "f.zarr", **kw)


@pytest.mark.parametrize(
    ("text", "hours"),
    [("15d", 360), ("P15D", 360), ("PT36H", 36), ("36h", 36), (48, 48), ("12", 12)],
)
def test_lead_parsing(text, hours):
    assert parse_lead(text) == np.timedelta64(hours, "h")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("16d", "at most 15 days"),
        ("18h", "multiple of 12 h"),
        ("soon", "not a duration"),
        (0, "positive"),
    ],
)
def test_bad_leads_are_named(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_lead(text)


def test_init_time_outside_the_archive_names_the_range(loaded, archive):
    with pytest.raises(ArchiveError, match="2001-01-01T00:00 to 2001-01-12T18:00"):
        forecast(loaded, archive, init_time="2001-01-01T00", lead=12, members=1)
    with pytest.raises(ArchiveError, match="temperature"):
        forecast(
            loaded, archive.drop_vars("temperature"), init_time="2001-01-02", lead=12, members=1
        )
    with pytest.raises(ArchiveError, match=r"lacks the model.s levels \[850\] hPa"):
        forecast(loaded, archive.sel(level=[500]), init_time="2001-01-02", lead=12, members=1)
    with pytest.raises(ValueError, match="members"):
        forecast(loaded, archive, init_time="2001-01-02", lead=12, members=0)


def test_loading_checks_parameter_shapes_without_compiling(tmp_path):
    import jax

    from weather.defaults import DEFAULT_CHECKPOINT
    from weather.forecast import load_forecaster
    from weather.model.checkpoint import load_checkpoint, save_checkpoint

    saved = load_checkpoint(DEFAULT_CHECKPOINT)
    model = load_forecaster(DEFAULT_CHECKPOINT)
    stem = saved["params"]["params"]["stem"]["Conv_0"]["kernel"]
    np.testing.assert_array_equal(model.params["params"]["stem"]["Conv_0"]["kernel"], stem)
    assert model.forecaster.count_params(model.params) == sum(
        np.size(x) for x in jax.tree_util.tree_leaves(saved["params"])
    )

    saved["params"]["params"]["stem"]["Conv_0"]["kernel"] = stem[:, :, :-1]
    bad = save_checkpoint(
        tmp_path / "bad.msgpack",
        configs=saved["configs"],
        normalization=saved["normalization"],
        params=saved["params"],
    )
    with pytest.raises(ValueError, match=r"\['stem'\]\['Conv_0'\]\['kernel'\] has shape"):
        load_forecaster(bad)
