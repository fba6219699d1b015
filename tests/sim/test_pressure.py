"""Sigma-to-pressure interpolation against exact atmospheres."""

import numpy as np
import pytest

from weather.sim.pressure import (
    DRY_AIR_GAS_CONSTANT as R,
)
from weather.sim.pressure import (
    GRAVITY as G,
)
from weather.sim.pressure import (
    STANDARD_LAPSE_RATE as GAMMA,
)
from weather.sim.pressure import sigma_to_pressure

SIGMA = (np.arange(12) + 0.5) / 12


def _lapse_rate_atmosphere(p, ps, ts, phis):
    """Exact T and geopotential of an atmosphere with the standard lapse rate everywhere."""
    t = ts * (p / ps) ** (R * GAMMA / G)
    return t, phis + G / GAMMA * (ts - t)


def test_standard_atmosphere_is_exact_everywhere_including_below_ground():
    ps = np.array([[1000e2, 700e2]])  # a sea-level column and a mountain column
    ts, phis = np.array([[288.0, 268.0]]), np.array([[0.0, 3000 * G]])
    p_model = SIGMA[:, None, None] * ps
    t, phi = _lapse_rate_atmosphere(p_model, ps, ts, phis)
    u = np.broadcast_to(np.linspace(30, 5, 12)[:, None, None], t.shape)
    levels = np.array([30, 250, 500, 850, 925, 1000]) * 100.0
    out = sigma_to_pressure({"temperature": t, "geopotential": phi, "u": u}, SIGMA, ps, levels)
    t_ref, phi_ref = _lapse_rate_atmosphere(levels[:, None, None], ps, ts, phis)
    inside = (levels[:, None, None] >= p_model[0]) & (levels[:, None, None] <= p_model[-1])
    # Between model levels, log-pressure interpolation of a power law: small, bounded error.
    np.testing.assert_allclose(np.asarray(out["temperature"])[inside], t_ref[inside], rtol=2e-3)
    below = levels[:, None, None] > p_model[-1]
    # Below the lowest level the extrapolation is the lapse-rate profile itself: exact.
    np.testing.assert_allclose(np.asarray(out["temperature"])[below], t_ref[below], rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(out["geopotential"])[below], phi_ref[below], rtol=1e-5, atol=1.0
    )
    # Winds are held at the lowest model level below it and at the top above it.
    np.testing.assert_allclose(np.asarray(out["u"])[below], 5.0)
    above = levels[:, None, None] < p_model[0]
    assert above.any()
    np.testing.assert_allclose(np.asarray(out["u"])[above], 30.0)


def test_isothermal_top_extrapolation():
    ps = np.array([[1000e2]])
    t = np.full((12, 1, 1), 220.0)
    # Isothermal hydrostatic geopotential: phi = R T ln(ps / p).
    phi = R * 220.0 * np.log(1 / SIGMA)[:, None, None]
    out = sigma_to_pressure({"temperature": t, "geopotential": phi}, SIGMA, ps, np.array([10e2]))
    assert float(out["geopotential"][0, 0, 0]) == pytest.approx(R * 220 * np.log(100.0), rel=1e-5)
    assert float(out["temperature"][0, 0, 0]) == pytest.approx(220.0)


def test_exact_at_model_levels():
    ps = np.array([[1013e2, 990e2]])
    rng = np.random.default_rng(1)
    fields = {
        "temperature": rng.uniform(200, 300, (12, 1, 2)),
        "geopotential": rng.uniform(0, 1e5, (12, 1, 2)),
    }
    target = SIGMA[3] * 990e2
    out = sigma_to_pressure(fields, SIGMA, ps, np.array([target]))
    np.testing.assert_allclose(
        np.asarray(out["temperature"])[0, 0, 1], fields["temperature"][3, 0, 1], rtol=1e-5
    )
