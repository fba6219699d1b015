"""Channel layout, normalisation and weights of the task."""

import numpy as np
import pytest

from weather.data import forcings as forcings_lib
from weather.data.errors import ArchiveError
from weather.data.grid import equiangular_grid
from weather.model.task import (
    Normalization,
    TaskConfig,
    channel_weights,
    channels_to_state,
    forcing_channels,
    loss_weights,
    state_to_channels,
)

TASK = TaskConfig(levels=(500, 850))


def test_channels_round_trip_and_order(archive):
    fields = {
        n: archive[n].isel(time=slice(0, 3)).values
        for n in TASK.level_variables + TASK.surface_variables
    }
    x = state_to_channels(TASK, fields)
    assert x.shape == (3, 16, 32, TASK.n_state) and TASK.n_state == 9
    assert TASK.channel_names()[:3] == ["geopotential@500", "geopotential@850", "temperature@500"]
    np.testing.assert_array_equal(x[..., 1], fields["geopotential"][:, 1])
    np.testing.assert_array_equal(x[..., -1], fields["surface_pressure"])
    back = channels_to_state(TASK, x)
    for name, value in fields.items():
        np.testing.assert_array_equal(back[name], value)


def test_normalization_picks_the_statistics(statistics):
    norm = Normalization.from_statistics(TASK, statistics)
    assert norm.mean[2] == pytest.approx(float(statistics["temperature_mean"].sel(level=500)))
    assert norm.diff_std[-1] == pytest.approx(float(statistics["surface_pressure_diff_std"]))
    assert norm.static_std[0] == pytest.approx(float(statistics["geopotential_at_surface_std"]))
    again = Normalization.from_dict(norm.to_dict())
    np.testing.assert_array_equal(again.std, norm.std)


def test_normalization_names_what_is_missing(statistics):
    with pytest.raises(ArchiveError, match="level 300"):
        Normalization.from_statistics(TaskConfig(levels=(300, 500)), statistics)
    with pytest.raises(ArchiveError, match="specific_humidity"):
        Normalization.from_statistics(
            TaskConfig(levels=(500,), level_variables=("specific_humidity",)), statistics
        )


def test_weights_follow_the_pressure_formula():
    """A level's weight is its pressure over the levels' mean pressure (GenCast); surface
    variables weigh `surface_weight`; the loss weights are area x channel weight over their
    means (so that they average 1)."""
    task = TaskConfig(levels=(250, 500, 850), surface_weight=0.3)
    w = channel_weights(task)
    per_level = np.array([250, 500, 850]) / (1600 / 3)
    want = np.concatenate(
        [np.tile(per_level, len(task.level_variables)), [0.3] * len(task.surface_variables)]
    )
    np.testing.assert_allclose(w, want, rtol=1e-6)  # float32 of exact ratios
    lat, _ = equiangular_grid(16, 32)
    half = np.deg2rad(180 / 16 / 2)
    band = np.sin(np.deg2rad(lat) + half) - np.sin(np.deg2rad(lat) - half)
    lw = loss_weights(task, lat)
    assert lw.shape == (16, 1, task.n_state)
    expected = (band / band.mean())[:, None, None] * (want / want.mean())[None, None, :]
    np.testing.assert_allclose(lw, expected, rtol=1e-6)


def test_forcing_channels_match_the_forcings_module():
    t = np.array(["2001-06-01T00", "2001-06-01T12"], dtype="datetime64[ns]")
    lon = np.array([0.0, 90.0, 180.0])
    f = forcing_channels(t[None], lon, n_lat=4)
    assert f.shape == (1, 4, 3, 8)
    ref = forcings_lib.forcings(t, lon)
    for i in range(2):
        np.testing.assert_allclose(f[0, 0, :, 4 * i], ref["year_progress_sin"][i], rtol=1e-6)
        np.testing.assert_allclose(f[0, 2, :, 4 * i + 2], ref["day_progress_sin"][i], atol=1e-6)
    # At 12 UTC, local noon is at 0E: day progress 0.5 there.
    assert f[0, 0, 0, 7] == pytest.approx(np.cos(np.pi), abs=1e-6)


def test_config_round_trip_and_validation():
    assert TaskConfig.from_dict(TASK.to_dict()) == TASK
    with pytest.raises(ValueError, match="ascending"):
        TaskConfig(levels=(850, 500))
