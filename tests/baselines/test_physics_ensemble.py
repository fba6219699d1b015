"""Physics and perfect-model ensembles: determinism, spread, resolved scales, layout, errors.

The truth is a tiny simulated archive (T21 L8, 60 min step, 12-hourly; `simulated_truth` in
support.py) from a baroclinically unstable start, so perturbations grow within days. The
physics ensemble's default model is the same configuration, and the perfect-model tests use an
analysis truncation of 15, so every ensemble shares one compiled model.
"""

import dataclasses
import json

import numpy as np
import pytest
import xarray as xr
from support import SIMULATED_START, SIMULATED_TRUTH

from weather.baselines import persistence
from weather.baselines.physics import (
    EnsembleModel,
    PerfectModelConfig,
    PhysicsEnsembleConfig,
    perfect_model_ensemble,
    perfect_model_member_states,
    physics_ensemble,
    reduce_surface_pressure,
)
from weather.data.errors import ArchiveError
from weather.data.grid import equiangular_grid
from weather.data.reader import open_archive
from weather.sim.dynamics import SimulationConfig
from weather.sim.initialise import Analysis, modal_spectrum, total_wavenumbers
from weather.sim.perturbations import unresolved_std

START = SIMULATED_START
INIT = START + np.timedelta64(72, "h")  # 3 days of history for lagged and bred members
LEAD = "2d"
SETTINGS = PhysicsEnsembleConfig(lag_hours=12, breeding_cycles=2)
PERFECT = PerfectModelConfig(truncation=15, donor_hours=12)


def _truth_config() -> SimulationConfig:
    return SimulationConfig(**SIMULATED_TRUTH)


def _model(truncation: int) -> EnsembleModel:
    latitude, longitude = equiangular_grid(32, 64)
    return EnsembleModel(_truth_config(), latitude, longitude, truncation)


@pytest.fixture(scope="module")
def archive(simulated_truth: xr.Dataset) -> xr.Dataset:
    """6 days, 12-hourly, after 2 days from the Held-Suarez equilibrium temperature at rest."""
    return open_archive(simulated_truth)


@pytest.fixture(scope="module")
def ensembles(archive):
    """Three members of each method (lead 2 days), computed once."""
    return {
        method: physics_ensemble(archive, [INIT], LEAD, 3, method=method, seed=5, config=SETTINGS)
        for method in ("noise", "lagged", "bred")
    }


def _spread(fc: xr.Dataset, name: str, level: int) -> np.ndarray:
    """Ensemble standard deviation per lead, area-weighted (cos latitude) rms over the globe."""
    x = fc[name].sel(level=level).isel(init_time=0).values  # [member, lead, lat, lon]
    w = np.cos(np.deg2rad(fc["latitude"].values))[:, None]
    return np.sqrt((x.var(0, ddof=1) * w).mean((-1, -2)) / w.mean())


def test_zero_perturbation_single_member_is_the_deterministic_run(archive):
    quiet = dataclasses.replace(SETTINGS, temperature_noise=0.0, wind_noise=0.0)
    fc = physics_ensemble(archive, [INIT], LEAD, 1, method="noise", config=quiet)
    # The reference: the model run from the analysis, unperturbed.
    model = _model(21)
    fields = model.forecast(model.initial_state(Analysis.from_archive(archive, INIT)), 4)
    for name in fc.data_vars:
        np.testing.assert_array_equal(fc[name].values[0, 0], fields[name], err_msg=name)
    # The unperturbed forecast is a forecast: close to the truth at 12 h, not equal to it.
    truth = archive["temperature"].sel(time=INIT + np.timedelta64(12, "h")).values
    error = np.abs(fc["temperature"].values[0, 0, 0] - truth)
    assert 0 < error.mean() < 2.0


@pytest.mark.parametrize("method", ["noise", "lagged", "bred"])
def test_members_differ_and_the_spread_grows(ensembles, method):
    fc = ensembles[method]
    assert fc.sizes["member"] == 3 and fc.attrs["method"] == method
    assert np.isfinite(fc["temperature"].values).all()
    z500 = _spread(fc, "geopotential", 500)
    t850 = _spread(fc, "temperature", 850)
    assert np.all(z500 > 0) and np.all(t850 > 0)
    if method != "lagged":  # lagged members start from different analyses: no growth promised
        assert z500[-1] > 1.1 * z500[0], z500
        assert t850[-1] > 1.1 * t850[0], t850


def test_member_i_is_the_same_for_any_ensemble_size_and_streams_to_zarr(
    archive, ensembles, tmp_path
):
    calls = []
    out = tmp_path / "bred.zarr"
    fc = physics_ensemble(
        archive,
        [INIT],
        LEAD,
        2,
        method="bred",
        seed=5,
        config=SETTINGS,
        out=out,
        on_progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 2), (2, 2)]
    assert fc["temperature"].chunks is not None  # opened lazily from the store
    larger = ensembles["bred"]
    for name in larger.data_vars:
        np.testing.assert_array_equal(fc[name].values, larger[name].values[:2], err_msg=name)
    # Bred members come in +/- pairs around the analysis.
    first = larger["temperature"].values[:2, 0, 0] - larger["temperature"].values[2:3, 0, 0]
    assert np.abs(first).max() > 0
    with pytest.raises(FileExistsError, match="out"):
        physics_ensemble(archive, [INIT], LEAD, 2, method="bred", config=SETTINGS, out=out)
    other_seed = physics_ensemble(
        archive, [INIT], "12h", 1, method="noise", seed=6, config=SETTINGS
    )
    same_seed = physics_ensemble(archive, [INIT], "12h", 1, method="noise", seed=5, config=SETTINGS)
    noise = ensembles["noise"]["temperature"].values[:1, :, :1]
    np.testing.assert_array_equal(same_seed["temperature"].values, noise)
    assert not np.array_equal(other_seed["temperature"].values, noise)


@pytest.mark.parametrize("draws", ["balanced", "gaussian"])
def test_perfect_model_members_share_the_resolved_scales_only(archive, draws):
    config = dataclasses.replace(PERFECT, draws=draws)
    model = _model(15)
    analysis = Analysis.from_archive(archive, INIT)
    states = list(perfect_model_member_states(model, analysis, 3, config=config, seed=1))
    grid = model.grid
    total = total_wavenumbers(grid)
    resolved, unresolved = total <= 15, (total > 15) & (total <= 21) & grid.mask
    for name in ("vorticity", "temperature_variation"):
        fields = np.stack([np.asarray(getattr(s, name)) for s in states])
        assert np.array_equal(fields[0][..., resolved], fields[1][..., resolved]), name
        assert np.array_equal(fields[0][..., resolved], fields[2][..., resolved]), name
        small = fields[..., unresolved]
        assert np.all(np.abs(small[0] - small[1]).max(-1) > 0), name  # every layer differs
        # The drawn spectrum follows the target: within a factor 3 in power on average.
        std = unresolved_std(
            model.model,
            states[0],
            truncation=15,
            fit_range=config.degrees,
            taper_hours=config.taper_hours,
        )
        target = (std[name] ** 2 * grid.mask).sum(-2)
        drawn = modal_spectrum(grid, fields[0] * unresolved)
        ratio = drawn[:, 16:22].sum() / target[:, 16:22].sum()
        assert 1 / 3 < ratio < 3, (name, ratio)
    assert np.array_equal(
        np.asarray(states[0].log_surface_pressure), np.asarray(states[1].log_surface_pressure)
    )


def test_perfect_model_ensemble_from_the_archive(archive):
    fc = perfect_model_ensemble(archive, [INIT], LEAD, 2, seed=3, config=PERFECT)
    assert json.loads(fc.attrs["simulation_config"])["resolution"] == "T21"
    assert fc.attrs["seed"] == 3 and np.isfinite(fc["temperature"].values).all()
    z500 = _spread(fc, "geopotential", 500)
    assert np.all(z500 > 0) and z500[-1] > z500[0], z500


def test_layout_matches_persistence(archive, ensembles):
    fc = ensembles["noise"]
    reference = persistence(archive, [INIT], fc["lead_time"].values)
    assert list(fc.data_vars) == list(reference.data_vars)
    assert set(fc.coords) == set(reference.coords)
    for name in reference.variables:
        assert fc[name].dims == reference[name].dims, name
        assert fc[name].dtype == reference[name].dtype, name
        assert fc[name].attrs == reference[name].attrs, name
    for name in ("init_time", "lead_time", "level", "latitude", "longitude"):
        np.testing.assert_array_equal(fc[name].values, reference[name].values)
    np.testing.assert_array_equal(fc["member"].values, [0, 1, 2])
    assert fc["lead_time"].values[0] == np.timedelta64(12, "h")
    assert fc["lead_time"].values[-1] == np.timedelta64(48, "h")


def test_bad_input_names_the_field(archive):
    with pytest.raises(ArchiveError, match=r"init_time 2001-04-01T00:00"):
        physics_ensemble(archive, ["2001-04-01"], "1d", 1)
    with pytest.raises(ValueError, match=r"lead '13h'.*multiple of 12 h"):
        physics_ensemble(archive, [INIT], "13h", 1)
    with pytest.raises(ValueError, match=r"method: 'breeding'"):
        physics_ensemble(archive, [INIT], "1d", 1, method="breeding")
    with pytest.raises(ValueError, match="members"):
        physics_ensemble(archive, [INIT], "1d", 0)
    with pytest.raises(ValueError, match="variables: 'relative_humidity'"):
        physics_ensemble(archive, [INIT], "1d", 1, variables=["relative_humidity"])
    # Lagged members need analyses before the first archive time.
    with pytest.raises(ArchiveError, match=r"init_time 2001-03-01T12:00.*2001-03-01T00:00"):
        physics_ensemble(
            archive, [START + np.timedelta64(12, "h")], "1d", 3, method="lagged", config=SETTINGS
        )
    with pytest.raises(ArchiveError, match="simulation_config"):
        perfect_model_ensemble(
            archive.assign_attrs(simulation_config=None).drop_attrs(), [INIT], "1d", 1
        )
    with pytest.raises(ValueError, match="temperature_noise"):
        PhysicsEnsembleConfig(temperature_noise=-1.0)
    with pytest.raises(ValueError, match="draws"):
        PerfectModelConfig(draws="uniform")


def test_surface_pressure_reduction_is_exact_for_an_isothermal_column():
    """In an isothermal atmosphere phi(p) = R T ln(p_ref / p), linear in ln p, so the profile's
    interpolation is exact: a surface 1 % above the profile's pressure at the model's height
    comes back 1 % above its pressure at the target's height, and unchanged where the two
    orographies agree."""
    from weather.sim.pressure import DRY_AIR_GAS_CONSTANT

    rt = DRY_AIR_GAS_CONSTANT * 250.0
    p_ref = 101325.0
    levels = np.asarray([300.0, 500.0, 700.0, 850.0, 1000.0]) * 100.0
    phi = (rt * np.log(p_ref / levels))[None, :, None, None] * np.ones((2, 1, 2, 3))
    temperature = np.full_like(phi, 250.0)
    model_surface = np.asarray([[3000.0, 9000.0, 20000.0], [1000.0, 5000.0, 15000.0]])
    target_surface = np.asarray([[3000.0, 20000.0, 9000.0], [12000.0, 1000.0, 15000.0]])
    surface = 1.01 * p_ref * np.exp(-model_surface / rt) * np.ones((2, 1, 1))
    reduced = reduce_surface_pressure(
        surface, phi, temperature, levels, model_surface, target_surface
    )
    expected = 1.01 * p_ref * np.exp(-target_surface / rt)
    # float32 output: 6e-8 relative rounding.
    np.testing.assert_allclose(reduced, np.broadcast_to(expected, reduced.shape), rtol=2e-7)
    same = reduce_surface_pressure(surface, phi, temperature, levels, model_surface, model_surface)
    np.testing.assert_allclose(same, surface, rtol=2e-7)


def test_the_physics_ensemble_reports_surface_pressure_on_the_analysis_orography(archive):
    """The default reduces the model's surface pressure to the analysis's orography; the
    config keeps the model's own on request, and the two differ only by that reduction. (A T31
    model on the T21 test truth, so that the two orographies differ.)"""
    from weather.baselines.physics import _archive_simulation

    config = dataclasses.replace(SETTINGS, resolution="T31", dt_minutes=30.0)
    both = {
        where: physics_ensemble(
            archive,
            [INIT],
            "12h",
            1,
            method="noise",
            seed=5,
            config=dataclasses.replace(config, surface_pressure=where),
        )
        for where in ("analysis", "model")
    }
    np.testing.assert_array_equal(
        both["analysis"]["temperature"].values, both["model"]["temperature"].values
    )
    levels = tuple(int(p) for p in archive["level"].values)
    grid = (archive["latitude"].size, archive["longitude"].size)
    model = EnsembleModel(
        config.simulation(_archive_simulation(archive), levels, grid),
        archive["latitude"].values,
        archive["longitude"].values,
        config.truncation,
    )
    own = model.model.surface_geopotential()[0]
    # The truth's orography (T21, coarse-grained) is not the model's (T31).
    assert np.abs(own - archive["geopotential_at_surface"].values).max() > 100.0
    fc = both["model"].isel(member=0, init_time=0)
    expected = reduce_surface_pressure(
        fc["surface_pressure"].values,
        fc["geopotential"].values,
        fc["temperature"].values,
        archive["level"].values * 100.0,
        own,
        archive["geopotential_at_surface"].values,
    )
    got = both["analysis"]["surface_pressure"].isel(member=0, init_time=0).values
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # ... and the reduction matters: more than 1 hPa somewhere.
    assert np.abs(got - fc["surface_pressure"].values).max() > 100.0
    with pytest.raises(ValueError, match="surface_pressure"):
        PhysicsEnsembleConfig(surface_pressure="sea level")
