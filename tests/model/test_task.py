"""Channel layout, normalisation and weights of the task."""

import dataclasses

import numpy as np
import pytest
import xarray as xr

from weather.data import forcings as forcings_lib
from weather.data import solar
from weather.data.errors import ArchiveError
from weather.data.grid import equiangular_grid
from weather.model.task import (
    GENCAST_FORCINGS,
    Normalization,
    TaskConfig,
    channel_weights,
    channels_to_state,
    check_archive,
    choose_task,
    forcing_channels,
    loss_weights,
    state_to_channels,
    static_channels,
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
    lat = np.array([-45.0, 0.0, 30.0, 60.0])
    f = forcing_channels(TaskConfig(), t[None], lon, lat)
    assert f.shape == (1, 4, 3, 8)
    ref = forcings_lib.forcings(t, lon)
    for i in range(2):
        np.testing.assert_allclose(f[0, 0, :, 4 * i], ref["year_progress_sin"][i], rtol=1e-6)
        np.testing.assert_allclose(f[0, 2, :, 4 * i + 2], ref["day_progress_sin"][i], atol=1e-6)
    # At 12 UTC, local noon is at 0E: day progress 0.5 there.
    assert f[0, 0, 0, 7] == pytest.approx(np.cos(np.pi), abs=1e-6)


def test_solar_radiation_is_the_12_hour_integral_in_units_of_tsi_times_12_hours():
    """With GenCast's forcings each time gets 5 channels: the 4 time features as before, then
    the TOA incident solar radiation of the 12 h ending at it, over TSI x 12 h."""
    t = np.array(["2001-06-21T00", "2001-06-21T12"], dtype="datetime64[ns]")
    lon = np.array([0.0, 90.0, 180.0, 270.0])
    lat = np.array([-89.0, -30.0, 0.0, 45.0, 90.0])
    task = TaskConfig(forcings=GENCAST_FORCINGS)
    f = forcing_channels(task, t[None], lon, lat)
    assert task.n_forcing == f.shape[-1] == 10
    time_only = forcing_channels(TaskConfig(), t[None], lon, lat)
    np.testing.assert_array_equal(f[..., [0, 1, 2, 3, 5, 6, 7, 8]], time_only)
    energy = solar.toa_incident_solar_radiation(t, lat, lon, period=np.timedelta64(12, "h"))
    for i in range(2):
        want = energy[i] / (solar.TSI * 43200.0)
        np.testing.assert_allclose(f[0, ..., 5 * i + 4], want, rtol=1e-6)  # float32 rounding
    # At the June solstice the north pole is lit all day: 12 h at cos Z = sin(23.44 deg) and
    # the aphelion distance factor 0.967 give 0.967 x 0.398 = 0.385 of TSI x 12 h; the south
    # pole gets nothing.
    np.testing.assert_allclose(f[0, 4, :, 4], 0.3847, atol=2e-3)
    np.testing.assert_array_equal(f[0, 0, :, [4, 9]], 0.0)


def test_forcing_channels_of_a_batch_of_steps_are_those_of_each_step():
    """Times ``[k, B, 2]`` (as the rollout asks: k steps of B members) give ``[k, B, lat, lon,
    F]``, each entry the forcings of its own pair of times."""
    base = np.datetime64("2001-06-01T00", "ns")
    step = np.timedelta64(12, "h")
    t0 = base + step * np.arange(6).reshape(2, 3) + np.timedelta64(1, "h") * np.arange(3)
    pairs = np.stack([t0, t0 + step], axis=-1)  # [2, 3, 2]
    lon = np.array([0.0, 120.0, 240.0, 300.0])
    lat = np.array([-30.0, 60.0])
    for task in (TaskConfig(), TaskConfig(forcings=GENCAST_FORCINGS)):
        f = forcing_channels(task, pairs, lon, lat)
        assert f.shape == (2, 3, 2, 4, task.n_forcing)
        for i in range(2):
            for j in range(3):
                one = forcing_channels(task, pairs[i, j][None], lon, lat)[0]
                np.testing.assert_array_equal(f[i, j], one)


def test_a_task_refuses_unknown_or_reordered_forcings():
    with pytest.raises(ValueError, match=r"forcings: \['sunshine'\] unknown"):
        TaskConfig(forcings=("year_progress", "sunshine"))
    with pytest.raises(ValueError, match=r"forcings: .* in the order"):
        TaskConfig(forcings=("day_progress", "year_progress"))
    with pytest.raises(ValueError, match=r"forcings: .* distinct"):
        TaskConfig(forcings=("day_progress", "day_progress"))


def test_conditioning_channels_count_both_states_forcings_and_statics():
    # 2 level variables x 2 levels + 1 surface = 5 per state: 2 x 5 + 8 forcings + statics.
    task = TaskConfig(
        level_variables=("geopotential", "temperature"),
        surface_variables=("surface_pressure",),
        static_variables=("geopotential_at_surface", "land_sea_mask"),
        levels=(500, 850),
    )
    assert (task.n_state, task.n_static, task.n_conditioning) == (5, 2, 20)
    assert dataclasses.replace(task, static_variables=()).n_conditioning == 18
    # Solar radiation adds one channel at each of the two times.
    assert dataclasses.replace(task, forcings=GENCAST_FORCINGS).n_conditioning == 22


def test_config_round_trip_and_validation():
    assert TaskConfig.from_dict(TASK.to_dict()) == TASK
    with pytest.raises(ValueError, match="ascending"):
        TaskConfig(levels=(850, 500))


def _archive(names: list[str], levels: list[int] = [500, 850]) -> xr.Dataset:  # noqa: B006
    """An empty-valued canonical archive holding ``names`` (level ones on ``levels``)."""
    from weather.data.variables import CATALOGUE

    data = {}
    for name in names:
        dims = ("time", "level", "latitude", "longitude")
        if not CATALOGUE[name].has_levels:
            dims = (
                ("latitude", "longitude")
                if CATALOGUE[name].role == "static"
                else dims[:1] + dims[2:]
            )
        shape = {"time": 2, "level": len(levels), "latitude": 3, "longitude": 4}
        data[name] = (dims, np.zeros([shape[d] for d in dims], np.float32))
    return xr.Dataset(data, coords={"level": levels})


def test_the_default_task_is_what_the_archive_holds_in_catalogue_order(archive):
    # The simulated archive gives exactly the default task, channel layout included.
    simulated = archive.assign_attrs(simulation_config="{}")
    default = TaskConfig(levels=tuple(int(x) for x in archive["level"].values))
    assert choose_task(simulated) == default
    # Any other archive gets GenCast's forcings, solar radiation included, unless told.
    assert choose_task(archive) == dataclasses.replace(default, forcings=GENCAST_FORCINGS)
    chosen = choose_task(archive, forcings=["toa_incident_solar_radiation", "year_progress"])
    assert chosen.forcings == ("year_progress", "toa_incident_solar_radiation")
    for bad in (["sunshine"], ["day_progress", "day_progress"]):
        with pytest.raises(ValueError, match="--forcings"):
            choose_task(archive, forcings=bad)
    # A stored forcing or diagnostic is not modelled: TISR is computed, never read.
    stored = archive.assign(toa_incident_solar_radiation=archive["surface_pressure"])
    assert choose_task(stored) == choose_task(archive)
    with pytest.raises(ValueError, match="are forcings, computed"):
        choose_task(stored, variables=["toa_incident_solar_radiation", "temperature"])
    # Whatever the archive's order, the catalogue's: GenCast-like fields with a mask and no winds.
    ds = _archive(["2m_temperature", "land_sea_mask", "specific_humidity", "geopotential"])
    task = choose_task(ds)
    assert task.level_variables == ("geopotential", "specific_humidity")
    assert task.surface_variables == ("2m_temperature",)
    assert task.static_variables == ("land_sea_mask",)
    assert task.levels == (500, 850)


def test_variables_and_levels_choose_a_subset():
    ds = _archive(["geopotential", "temperature", "surface_pressure", "geopotential_at_surface"])
    task = choose_task(ds, variables=["surface_pressure", "temperature"], levels=[850])
    assert (task.level_variables, task.surface_variables) == (
        ("temperature",),
        ("surface_pressure",),
    )
    assert task.static_variables == () and task.levels == (850,)
    # The catalogue's order, not the option's: a task's channel layout depends on its set only.
    task = choose_task(ds, variables=["temperature", "geopotential"])
    assert task.level_variables == ("geopotential", "temperature")
    # A surface-only task needs no levels, and asks for none.
    task = choose_task(ds, variables=["surface_pressure", "geopotential_at_surface"])
    assert (task.level_variables, task.levels) == ((), ())
    assert task.static_variables == ("geopotential_at_surface",)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"variables": ["geopotential", "2m_temperature"]},
            ArchiveError,
            r"era5\.nc lacks \['2m_temperature'\] \(asked by --variables\); it holds "
            r"\['geopotential', 'temperature'\]",
        ),
        (
            {"levels": [500, 700]},
            ArchiveError,
            r"era5\.nc lacks levels \[700\] hPa \(asked by --levels\); it holds \[500, 850\]",
        ),
        ({"variables": ["z500"]}, ValueError, r"--variables: \['z500'\] not in the catalogue"),
        ({"variables": ["day_progress_sin"]}, ValueError, r"are forcings, computed"),
        ({"variables": ["temperature", "temperature"]}, ValueError, r"--variables: a name repeats"),
        ({"levels": [500, 500]}, ValueError, r"--levels: a level repeats"),
    ],
)
def test_choices_the_archive_cannot_serve_are_refused_naming_both_sides(kwargs, error, match):
    ds = _archive(["geopotential", "temperature"])
    with pytest.raises(error, match=match):
        choose_task(ds, source="era5.nc", **kwargs)


def test_nothing_to_predict_is_refused():
    with pytest.raises(ArchiveError, match="nothing to predict"):
        choose_task(_archive(["land_sea_mask"]), source="mask.nc")
    rain = _archive(["total_precipitation_12hr", "land_sea_mask", "2m_temperature"])
    with pytest.raises(ArchiveError, match=r"nothing to predict from: \['total_precip"):
        choose_task(rain, variables=["total_precipitation_12hr", "land_sea_mask"])
    # With a prognostic field beside it, precipitation is an output of the task.
    assert choose_task(rain).surface_variables == ("2m_temperature", "total_precipitation_12hr")


def test_check_archive_names_every_missing_variable_and_level():
    task = TaskConfig(levels=(500, 850, 1000))
    ds = _archive(["geopotential", "temperature", "surface_pressure"], levels=[500, 850])
    with pytest.raises(ArchiveError) as info:
        check_archive(task, ds, "era5.zarr")
    message = str(info.value)
    assert message.startswith(
        "era5.zarr lacks the model's variables ['u_component_of_wind', "
        "'v_component_of_wind', 'geopotential_at_surface']"
    )
    assert "levels [1000] hPa (it holds [500, 850])" in message
    check_archive(
        TaskConfig(levels=(500, 850), static_variables=()),
        _archive(
            [
                "geopotential",
                "temperature",
                "u_component_of_wind",
                "v_component_of_wind",
                "surface_pressure",
            ]
        ),
    )


def test_static_channels_stack_the_tasks_static_fields_last_in_order(archive):
    ds = archive.assign(land_sea_mask=archive["geopotential_at_surface"] * 0 + 0.25)
    task = TaskConfig(levels=(850,), static_variables=("land_sea_mask", "geopotential_at_surface"))
    static = static_channels(ds, task)
    assert static.shape == (*ds["geopotential_at_surface"].shape, 2) and static.dtype == np.float32
    np.testing.assert_array_equal(static[..., 0], 0.25)
    np.testing.assert_array_equal(static[..., 1], ds["geopotential_at_surface"].values)
    assert static_channels(ds, TaskConfig(levels=(850,), static_variables=())).shape[-1] == 0
