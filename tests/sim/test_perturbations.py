"""Spectral perturbations against exact identities: amplitudes, power laws, rotations."""

import dataclasses

import jax
import numpy as np
import pytest
from dinosaur import spherical_harmonic

from weather.sim.dynamics import SimulationConfig
from weather.sim.initialise import modal_spectrum, total_wavenumbers
from weather.sim.perturbations import (
    difference,
    draw_unresolved,
    perturbed,
    resolved_noise,
    rotate_zonally,
    temperature_rms,
    unresolved_std,
)
from weather.sim.simulate import get_model


@pytest.fixture(scope="module")
def model():
    return get_model(SimulationConfig(resolution="T21", layers=8, dt_minutes=60, output_hours=12))


def test_noise_has_the_stated_amplitudes(model):
    grid = model.coords.horizontal
    t_rms, wind_ms = [], []
    for k in range(4):
        noise = resolved_noise(jax.random.PRNGKey(k), model, 15, temperature=1.5, wind=3.0)
        t_rms.append(temperature_rms(model, noise["temperature_variation"]))
        u, v = spherical_harmonic.vor_div_to_uv_nodal(
            grid, noise["vorticity"], 0 * noise["vorticity"]
        )
        # quadrature_weights [lon, lat] sum to 4 pi: the mean over the sphere and layers.
        mean_square = float(((u**2 + v**2) * grid.quadrature_weights).sum((-1, -2)).mean())
        mean_square /= 2 * 4 * np.pi  # per wind component
        wind_ms.append(np.sqrt(mean_square) * model._velocity_scale)
        # The rms by Parseval equals the rms on the grid.
        nodal = np.asarray(grid.to_nodal(noise["temperature_variation"]))
        on_grid = np.sqrt(
            float((nodal**2 * grid.quadrature_weights).sum((-1, -2)).mean()) / (4 * np.pi)
        )
        assert t_rms[-1] == pytest.approx(on_grid, rel=1e-4)
    # Monte-Carlo over 4 x 8 x ~250 coefficients: within a few percent.
    assert np.mean(t_rms) == pytest.approx(1.5, rel=0.05)
    assert np.mean(wind_ms) == pytest.approx(3.0, rel=0.05)
    total = total_wavenumbers(grid)
    assert float(np.abs(np.asarray(noise["vorticity"])[..., total > 15]).max()) == 0.0
    assert float(np.abs(np.asarray(noise["vorticity"])[..., total == 0]).max()) == 0.0


def test_unresolved_std_extends_a_power_law_and_tapers_like_the_filter(model):
    grid = model.coords.horizontal
    total = total_wavenumbers(grid)
    degree = np.maximum(total, 1).astype(np.float64)
    # Every coefficient of degree l equal to sqrt(l^-3 / (2l + 1)): E(l) = l^-3 exactly.
    field = np.sqrt(degree**-3.0 / (2 * degree + 1)) * grid.mask * (total >= 1)
    state = model.initial_state(0, np.datetime64("2001-01-01"))
    layers = model.config.layers
    state = dataclasses.replace(
        state,
        vorticity=np.repeat(field[None], layers, 0).astype(np.float32),
        temperature_variation=np.repeat(2 * field[None], layers, 0).astype(np.float32),
    )
    untapered = unresolved_std(model, state, truncation=12, fit_range=(4, 12), taper_hours=0.0)
    spectrum = modal_spectrum(grid, untapered["vorticity"])[0]
    np.testing.assert_allclose(spectrum[13:22], np.arange(13, 22) ** -3.0, rtol=1e-4)
    hot = modal_spectrum(grid, untapered["temperature_variation"])[0]
    np.testing.assert_allclose(hot[13:22], 4 * np.arange(13, 22) ** -3.0, rtol=1e-4)
    assert np.all(spectrum[:13] == 0) and np.all(spectrum[22:] == 0)
    # The taper is the hyper-diffusion filter's variance damping over taper_hours.
    tapered = unresolved_std(model, state, truncation=12, fit_range=(4, 12), taper_hours=6.0)
    ratio = modal_spectrum(grid, tapered["vorticity"])[0, 13:22] / spectrum[13:22]
    cfg = model.config
    k = np.arange(13, 22) / (grid.total_wavenumbers - 1)
    shape = np.where(
        k > cfg.filter_cutoff, ((k - cfg.filter_cutoff) / (1 - cfg.filter_cutoff)) ** 3, 0.0
    )
    expected = np.exp(-6 * 3600 / model.time_scale / cfg.filter_tau * shape)
    np.testing.assert_allclose(ratio, expected, rtol=1e-4)
    assert ratio[0] == pytest.approx(1.0) and ratio[-1] < 0.01
    # Draws have that spectrum on average (Monte-Carlo over layers and coefficients).
    drawn = draw_unresolved(jax.random.PRNGKey(0), untapered)
    mean_power = modal_spectrum(grid, drawn["vorticity"])[:, 13:22].mean(0)
    np.testing.assert_allclose(mean_power, spectrum[13:22], rtol=0.35)
    assert mean_power.sum() == pytest.approx(spectrum[13:22].sum(), rel=0.1)


def test_rotation_is_an_exact_zonal_shift(model):
    grid = model.coords.horizontal
    x = (np.random.default_rng(1).standard_normal(grid.modal_shape) * grid.mask).astype("f4")
    nodal = np.asarray(grid.to_nodal(x))  # [lon, lat]
    step = 2 * np.pi / nodal.shape[0]
    turned = np.asarray(grid.to_nodal(rotate_zonally(grid, x, 5 * step)))
    np.testing.assert_allclose(turned, np.roll(nodal, 5, axis=0), atol=1e-4)
    back = rotate_zonally(grid, rotate_zonally(grid, x, 0.7), -0.7)
    np.testing.assert_allclose(np.asarray(back), x, atol=1e-5)


def test_perturbed_and_difference_are_inverse(model):
    state = model.initial_state(0, np.datetime64("2001-01-01"))
    increments = resolved_noise(jax.random.PRNGKey(3), model, 21, 1.0, 2.0)
    moved = perturbed(state, increments)
    delta = difference(moved, state)
    for name, value in increments.items():
        np.testing.assert_allclose(np.asarray(delta[name]), np.asarray(value), atol=1e-6)
    assert float(np.abs(np.asarray(delta["divergence"])).max()) == 0.0
    assert moved.sim_time == state.sim_time  # the clock is not perturbed
    back = perturbed(moved, increments, sign=-1.0)
    np.testing.assert_allclose(np.asarray(back.vorticity), np.asarray(state.vorticity), atol=1e-6)
