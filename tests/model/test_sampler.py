"""The DPM-Solver++(2S) sampler against exact answers for Gaussian data.

For data ``y ~ N(mu, S)`` the ideal denoiser is linear, ``D(x; sigma) = mu + S (S + sigma^2 I)^-1
(x - mu)``, so the whole sampler is a linear map of Gaussian noise and, in each eigendirection of
``S`` (eigenvalue ``lambda``), its output variance follows a scalar recurrence that is computed
below in float64, independently of the JAX code. The tests check

1. Monte Carlo samples of the JAX sampler against that exact output distribution (implementation);
2. the exact output distribution against ``N(mu, S)`` (the solver's accuracy at N steps), and that
   it converges to ``N(mu, S)`` as N grows.
"""

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weather.data import grid
from weather.model import noise, sampler

DIM = 6
N_SAMPLES = 4000
EIGENVALUES = np.geomspace(0.05, 4.0, DIM)


@pytest.fixture(scope="module")
def gaussian():
    """Mean ``mu`` [d], eigenvectors ``Q`` [d, d] and covariance ``S = Q diag(lambda) Q^T``."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    mu = rng.normal(size=DIM)
    return mu, q, (q * EIGENVALUES) @ q.T


def _ideal_denoiser(mu: np.ndarray, q: np.ndarray):
    mu_ = jnp.asarray(mu, dtype=jnp.float32)
    q_ = jnp.asarray(q, dtype=jnp.float32)
    lam = jnp.asarray(EIGENVALUES, dtype=jnp.float32)

    def denoise_fn(x, sigma):
        # Posterior mean of N(mu, S) given x = y + sigma n, in S's eigenbasis.
        return mu_ + ((x - mu_) @ q_ * (lam / (lam + sigma**2))) @ q_.T

    return denoise_fn


def _ideal_samples(
    mu: np.ndarray,
    q: np.ndarray,
    config: sampler.SamplerConfig,
    seed: int,
    n: int,
    spread_scale: np.ndarray | None = None,
    deviation_filter: Callable[[jax.Array], jax.Array] | None = None,
) -> np.ndarray:
    """[n, DIM] samples of the ideal denoiser's data with ``config``, one per key split from
    ``seed``."""
    one = functools.partial(
        sampler.sample,
        _ideal_denoiser(mu, q),
        shape=(DIM,),
        config=config,
        noise_fn=jax.random.normal,
        spread_scale=spread_scale,
        deviation_filter=deviation_filter,
    )
    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), n)))


def _exact_variance_ratio(config: sampler.SamplerConfig, lam: np.ndarray) -> np.ndarray:
    """Var of the sampler's output / lambda, per eigenvalue, by the scalar recurrence (float64).

    Also the factor by which the initial mean offset ``-mu`` survives is the same product of
    gains without the noise, far below float32 resolution after the first steps.
    """
    if config.solver == "2m":
        return np.array([_exact_variance_ratio_2m(config, v) for v in np.atleast_1d(lam)])
    levels = np.asarray(sampler.noise_levels(config), dtype=np.float64)
    levels[0], levels[-2] = config.sigma_max, config.sigma_min
    gamma = min(config.s_churn / config.num_steps, math.sqrt(2) - 1)
    variance = levels[0] ** 2 * np.ones_like(lam)
    for sigma, sigma_next in itertools.pairwise(levels):
        sigma_hat = sigma * (1 + gamma) if config.s_tmin <= sigma <= config.s_tmax else sigma
        variance = variance + (sigma_hat**2 - sigma**2) * config.s_noise**2
        gain_hat = lam / (lam + sigma_hat**2)  # D(x_hat) = gain_hat x_hat (mu = 0)
        if sigma_next == 0:
            gain = gain_hat
        else:
            sigma_mid = math.sqrt(sigma_hat * sigma_next)
            r_mid, r_next = sigma_mid / sigma_hat, sigma_next / sigma_hat
            gain_mid = r_mid + (1 - r_mid) * gain_hat
            gain = r_next + (1 - r_next) * lam / (lam + sigma_mid**2) * gain_mid
        variance = gain**2 * variance
    return variance / lam


def _exact_variance_ratio_2m(config: sampler.SamplerConfig, lam: float) -> float:
    """As `_exact_variance_ratio` for DPM-Solver++(2M), for one eigenvalue ``lam``.

    The multistep update mixes the current and the previous churned state, so the recurrence
    carries the 2 x 2 covariance of ``(x_i, x_hat_{i-1})``: ``x_hat_i = x_i + c_i eps_i`` and
    ``x_{i+1} = (r + (1 - r)(1 + w) g_i) x_hat_i - (1 - r) w g_{i-1} x_hat_{i-1}`` with
    ``r = sigma_{i+1} / sigma_hat_i``, ``g = lam / (lam + sigma_hat^2)`` the ideal denoiser's gain
    and ``w`` the multistep weight, computed here from its definition (not the module's table).
    """
    levels = np.asarray(sampler.noise_levels(config), dtype=np.float64)
    levels[0], levels[-2] = config.sigma_max, config.sigma_min
    n = config.num_steps
    gamma = min(config.s_churn / n, math.sqrt(2) - 1)
    sigma, sigma_next = levels[:-1], levels[1:]
    churning = (config.s_tmin <= sigma) & (sigma <= config.s_tmax)
    sigma_hat = np.where(churning, sigma * (1 + gamma), sigma)
    cov = np.diag([levels[0] ** 2, 0.0])
    gain_last = 0.0
    for i in range(n):
        cov = cov + np.diag([(sigma_hat[i] ** 2 - sigma[i] ** 2) * config.s_noise**2, 0.0])
        gain = lam / (lam + sigma_hat[i] ** 2)
        if 0 < i < n - 1:
            w = math.log(sigma_hat[i] / sigma_next[i]) / (
                2 * math.log(sigma_hat[i - 1] / sigma_hat[i])
            )
        else:
            w = 0.0
        r = sigma_next[i] / sigma_hat[i]
        step = np.array([[r + (1 - r) * (1 + w) * gain, -(1 - r) * w * gain_last], [1.0, 0.0]])
        cov = step @ cov @ step.T
        gain_last = gain
    return float(cov[0, 0] / lam)


CONFIGS = {
    "gencast-20": sampler.SamplerConfig(),
    "ode-20": sampler.SamplerConfig(s_churn=0.0),
    "gencast-10": sampler.SamplerConfig(num_steps=10),
    "ode-10": sampler.SamplerConfig(num_steps=10, s_churn=0.0),
    "2m-20": sampler.SamplerConfig(solver="2m"),
    "2m-10": sampler.SamplerConfig(num_steps=10, solver="2m"),
    "ode-2m-10": sampler.SamplerConfig(num_steps=10, s_churn=0.0, solver="2m"),
}
# Largest relative error of the exact output variance at these steps (measured: 6.0 %, 5.4 %,
# 7.7 %, 15 %). With churn, S_noise = 1.05 over-disperses (+6 %) and roughly cancels the ODE
# discretisation's under-dispersion; without it 10 steps lose 15 % of the smallest variance.
# The multistep solver (measured: 24 %, 46 %, 19 %) over-disperses with churn: its second-order
# term extrapolates D from the previous step's evaluation, which saw the state before this
# step's churn noise. Whether that costs skill on the forecaster is measured, not assumed
# (benchmarks/sampler_skill.py).
SOLVER_TOLERANCE = {
    "gencast-20": 0.07,
    "ode-20": 0.06,
    "gencast-10": 0.08,
    "ode-10": 0.16,
    "2m-20": 0.25,
    "2m-10": 0.47,
    "ode-2m-10": 0.2,
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_samples_of_gaussian_data_have_the_exact_output_distribution(name, gaussian):
    mu, q, _ = gaussian
    config = CONFIGS[name]
    x = _ideal_samples(mu, q, config, seed=1, n=N_SAMPLES).astype(np.float64)
    assert np.all(np.isfinite(x))

    ratio = _exact_variance_ratio(config, EIGENVALUES)
    expected = (q * (ratio * EIGENVALUES)) @ q.T
    mean_se = np.sqrt(np.diag(expected) / N_SAMPLES)
    assert np.all(np.abs(x.mean(axis=0) - mu) < 4 * mean_se)
    # Std of a sample covariance entry: sqrt((C_ii C_jj + C_ij^2) / n).
    cov_se = np.sqrt((np.outer(np.diag(expected), np.diag(expected)) + expected**2) / N_SAMPLES)
    assert np.all(np.abs(np.cov(x.T) - expected) < 4.5 * cov_se)
    # And the exact output distribution is N(mu, S) up to the solver's error at this N.
    assert np.max(np.abs(ratio - 1)) < SOLVER_TOLERANCE[name]


@pytest.mark.parametrize("solver", ["2s", "2m"])
def test_exact_output_variance_converges_with_steps(solver):
    # Without churn the error shrinks with N towards the only one left at N -> infinity: the last
    # step returns D(x; sigma_min), the posterior mean, whose variance is lambda^2/(lambda+s^2).
    limit = EIGENVALUES / (EIGENVALUES + 0.03**2)
    errors = [
        np.max(
            np.abs(
                _exact_variance_ratio(
                    sampler.SamplerConfig(num_steps=n, s_churn=0.0, solver=solver), EIGENVALUES
                )
                - limit
            )
        )
        for n in (5, 10, 20, 50, 200)
    ]
    assert all(a > b for a, b in itertools.pairwise(errors))
    assert errors[-1] < 2e-3
    # With S_noise = 1 the churned sampler converges to the same limit: 2S at second order, 2M
    # only at first (its extrapolated D predates the churn; error 0.039, 0.0077, 0.0018 at N =
    # 50, 200, 800), so 2M needs more levels for the same accuracy.
    n = 200 if solver == "2s" else 800
    config = sampler.SamplerConfig(num_steps=n, s_noise=1.0, solver=solver)
    np.testing.assert_allclose(_exact_variance_ratio(config, EIGENVALUES), limit, atol=2e-3)


def test_noise_levels():
    config = sampler.SamplerConfig()
    levels = np.asarray(sampler.noise_levels(config))
    assert levels.shape == (21,) and levels.dtype == np.float32
    assert (
        levels[0] == pytest.approx(80.0) and levels[19] == pytest.approx(0.03) and levels[20] == 0
    )
    assert np.all(np.diff(levels) < 0)
    # Equal steps in sigma^(1/rho).
    np.testing.assert_allclose(
        np.diff(levels[:-1].astype(np.float64) ** (1 / 7)),
        -(80 ** (1 / 7) - 0.03 ** (1 / 7)) / 19,
        rtol=1e-4,
    )
    two = np.asarray(sampler.noise_levels(sampler.SamplerConfig(num_steps=2)))
    np.testing.assert_allclose(two, [80.0, 0.03, 0.0], rtol=1e-6)


def test_denoiser_calls_determinism_and_keys():
    calls = []

    def denoise_fn(x, sigma):
        jax.debug.callback(lambda s: calls.append(float(s)), sigma, ordered=True)
        return x / (1 + sigma**2)

    config = sampler.SamplerConfig(num_steps=4)
    draw = jax.jit(
        functools.partial(
            sampler.sample, denoise_fn, shape=(3,), config=config, noise_fn=jax.random.normal
        )
    )
    first = draw(jax.random.key(0))
    jax.effects_barrier()
    # 2N - 1 evaluations: at sigma_hat_i and sqrt(sigma_hat_i sigma_{i+1}) for i < N - 1, then
    # once at sigma_hat_{N-1} = sigma_min (below S_tmin: no churn). gamma = sqrt(2) - 1 here.
    levels = np.asarray(sampler.noise_levels(config), dtype=np.float64)
    sigma_hat = np.where(levels[:-1] >= 0.75, levels[:-1] * np.sqrt(2), levels[:-1])
    expected = [*np.stack([sigma_hat[:-1], np.sqrt(sigma_hat[:-1] * levels[1:-1])], 1).ravel()]
    np.testing.assert_allclose(calls, [*expected, sigma_hat[-1]], rtol=1e-5)
    np.testing.assert_array_equal(first, draw(jax.random.key(0)))
    assert not np.allclose(first, draw(jax.random.key(1)))


def test_multistep_calls_once_per_level():
    calls = []

    def denoise_fn(x, sigma):
        jax.debug.callback(lambda s: calls.append(float(s)), sigma, ordered=True)
        return x / (1 + sigma**2)

    config = sampler.SamplerConfig(num_steps=5, solver="2m")
    draw = jax.jit(
        functools.partial(
            sampler.sample, denoise_fn, shape=(3,), config=config, noise_fn=jax.random.normal
        )
    )
    first = draw(jax.random.key(0))
    jax.effects_barrier()
    # N evaluations, one at each sigma_hat_i.
    levels = np.asarray(sampler.noise_levels(config), dtype=np.float64)[:-1]
    gamma = min(2.5 / 5, np.sqrt(2) - 1)
    np.testing.assert_allclose(calls, np.where(levels >= 0.75, levels * (1 + gamma), levels), 1e-5)
    np.testing.assert_array_equal(first, draw(jax.random.key(0)))


def test_multistep_is_second_order():
    # Without churn, doubling N cuts 2M's error to the N -> infinity limit by about 4 (first
    # order would give 2); checked between N = 50, 100, 200 where the asymptotics hold.
    limit = EIGENVALUES / (EIGENVALUES + 0.03**2)
    errors = [
        np.max(
            np.abs(
                _exact_variance_ratio(
                    sampler.SamplerConfig(num_steps=n, s_churn=0.0, solver="2m"), EIGENVALUES
                )
                - limit
            )
        )
        for n in (50, 100, 200)
    ]
    for a, b in itertools.pairwise(errors):
        assert 3.0 < a / b < 5.0


def test_batched_fields_with_spherical_noise():
    lat, lon = grid.equiangular_grid(32, 64)
    noise_fn = noise.make_noise_fn("spherical", lat, lon)
    config = sampler.SamplerConfig(num_steps=4)

    @jax.jit
    def draw(key):
        return sampler.sample(
            lambda x, sigma: x / (1 + sigma**2), key, (2, 3, 32, 64), config, noise_fn
        )

    x = draw(jax.random.key(0))
    assert x.shape == (2, 3, 32, 64) and x.dtype == jnp.float32
    assert np.all(np.isfinite(x))
    # Unit-variance white data: the samples' variance is the scalar recurrence's at lambda = 1.
    ratio = _exact_variance_ratio(config, np.array([1.0]))[0]
    assert float(jnp.var(x)) == pytest.approx(ratio, rel=0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_steps": 1},
        {"num_steps": 20.0},
        {"num_steps": True},
        {"sigma_min": 0.0},
        {"sigma_min": 90.0},
        {"sigma_max": float("inf")},
        {"rho": 0.0},
        {"s_churn": -1.0},
        {"s_tmin": 2.0, "s_tmax": 1.0},
        {"s_tmin": float("inf")},
        {"s_noise": 0.0},
        {"solver": "euler"},
        {"spread_scale": 0.0},
    ],
)
def test_invalid_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        sampler.SamplerConfig(**kwargs)


def test_sampler_override_parses_once_and_applies_to_any_base():
    base = sampler.SamplerConfig(s_churn=1.0)
    parse = sampler.SamplerOverride.parse
    assert parse("2m:10").apply(base) == sampler.SamplerConfig(
        s_churn=1.0, solver="2m", num_steps=10
    )
    assert parse("6").apply(base) == sampler.SamplerConfig(s_churn=1.0, num_steps=6)
    mixed = parse("2m:8, spread_scale=0.5,s_churn=0")
    assert mixed.apply(base) == (
        sampler.SamplerConfig(solver="2m", num_steps=8, spread_scale=0.5, s_churn=0.0)
    )
    assert str(mixed) == "2m:8, spread_scale=0.5,s_churn=0"  # what forecasts record
    assert parse("spread_scale=0.7").apply(base).spread_scale == 0.7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2m:ten", "SOLVER:N"),
        ("euler:10", "solver must be one of"),
        ("2s:1", "num_steps must be >= 2"),
        ("2s:5,temperature=0.5", "FIELD=VALUE with FIELD one of"),
        ("2s:5,s_noise=x", "s_noise='x' is not a number"),
        ("2s:5,spread_scale=0", "spread_scale must be finite and > 0"),
        ("2s:5,spread_scale.=0.5", "spread_scale.NAME"),
        ("2s:5,spread_scale.geopotential=x", "spread_scale.geopotential='x' is not a number"),
        ("2s:5,spread_scale.geopotential=-1", "spread_scale.geopotential must be finite"),
        ("2s:5,spread_scale.temperature@850=inf", "spread_scale.temperature@850 must be"),
        ("2s:5,degree_scale.x=0.5", "degree_scale"),
        ("2s:5,degree_scale.geopotential.-3=0.5", "degree_scale"),
        ("2s:5,degree_scale.geopotential.16=0", r"degree_scale\.geopotential\.16 must be"),
        ("2s:5,degree_scale.16=nan", r"degree_scale\.16 must be finite"),
        ("2s:5,power_cap=-1", r"power_cap must be finite and >= 0 \(0: off\)"),
        ("2s:5,power_cap=inf", "power_cap must be finite"),
        ("2s:5,power_cap_degree=2.5", "power_cap_degree must be an int >= 0, got 2.5"),
        ("2s:5,power_cap_degree=-1", "power_cap_degree must be an int >= 0"),
    ],
)
def test_sampler_override_refuses_bad_text_when_parsed(text, message):
    with pytest.raises(ValueError, match=message):
        sampler.SamplerOverride.parse(text)  # at the edge, before any model is loaded


def test_per_name_spread_scales_parse_and_merge_into_the_base():
    parse = sampler.SamplerOverride.parse
    base = sampler.SamplerConfig(spread_scale=0.45, spread_scales=(("geopotential", 0.3),))
    got = parse("spread_scale.temperature@850=0.6, spread_scale.u_component_of_wind=0.7").apply(
        base
    )
    # Names the text gives are added or replaced; the base's others and its scalar are kept.
    assert got.spread_scale == 0.45
    assert dict(got.spread_scales) == {
        "geopotential": 0.3,
        "temperature@850": 0.6,
        "u_component_of_wind": 0.7,
    }
    assert dict(parse("2s:5,spread_scale.geopotential=0.5").apply(base).spread_scales) == {
        "geopotential": 0.5
    }
    # One scale set in the text means everywhere: the base's names go, the text's own stay.
    assert parse("2s:20,spread_scale=1").apply(base) == sampler.SamplerConfig()
    both = parse("spread_scale=0.5,spread_scale.temperature=0.6").apply(base)
    assert (both.spread_scale, both.spread_scales) == (0.5, (("temperature", 0.6),))
    # As stored in a checkpoint's JSON: lists come back as the same hashable config.
    stored = sampler.SamplerConfig(spread_scales=[["geopotential", 0.3]])  # type: ignore[arg-type]
    assert stored == sampler.SamplerConfig(spread_scales=(("geopotential", 0.3),))
    assert hash(stored) == hash(sampler.SamplerConfig(spread_scales=(("geopotential", 0.3),)))
    with pytest.raises(ValueError, match="a name repeats"):
        sampler.SamplerConfig(spread_scales=(("geopotential", 0.3), ("geopotential", 0.4)))


def test_degree_scales_parse_and_merge_into_the_base():
    parse = sampler.SamplerOverride.parse
    base = sampler.SamplerConfig(
        spread_scale=0.45, degree_scales=(("geopotential", 16, 0.7), ("", 0, 1.1))
    )
    got = parse("degree_scale.geopotential.16=0.6,degree_scale.temperature@850.4=1.3").apply(base)
    # Keyed by (name, first degree): the text replaces or adds, the base's others stay.
    assert {(n, d): f for n, d, f in got.degree_scales} == {
        ("geopotential", 16): 0.6,
        ("", 0): 1.1,
        ("temperature@850", 4): 1.3,
    }
    assert got.spread_scale == 0.45
    # One spread scale everywhere clears them, as it clears the per-name spread scales.
    assert parse("2s:20,spread_scale=1").apply(base) == sampler.SamplerConfig()
    # As stored in a checkpoint's JSON: lists come back as the same hashable config.
    stored = sampler.SamplerConfig(degree_scales=[["", 16, 0.7]])  # type: ignore[arg-type]
    assert stored == sampler.SamplerConfig(degree_scales=(("", 16, 0.7),))
    assert hash(stored) == hash(sampler.SamplerConfig(degree_scales=(("", 16, 0.7),)))
    with pytest.raises(ValueError, match=r"a \(name, degree\) repeats"):
        sampler.SamplerConfig(degree_scales=(("", 16, 0.7), ("", 16, 0.5)))
    with pytest.raises(ValueError, match="first degree must be an int >= 0"):
        sampler.SamplerConfig(degree_scales=(("", 1.5, 0.7),))  # type: ignore[arg-type]
    # State degree scales: their own key, merged the same way, kept by a new spread scale.
    damped = parse("state_degree_scale.16=0.95,state_degree_scale.temperature.20=0.9").apply(got)
    assert damped.state_degree_scales == (("", 16, 0.95), ("temperature", 20, 0.9))
    assert damped.degree_scales == got.degree_scales
    again = parse("spread_scale=0.5,state_degree_scale.16=0.9").apply(damped)
    assert again.state_degree_scales == (("", 16, 0.9), ("temperature", 20, 0.9))
    assert again.degree_scales == ()
    with pytest.raises(ValueError, match=r"state_degree_scale\.16 must be finite"):
        parse("state_degree_scale.16=0")
    # The power cap: two numbers, the degree an int however the text wrote it; a new spread
    # scale keeps it (it shapes the fields, not the spread).
    capped = parse("power_cap=1.5,power_cap_degree=20").apply(damped)
    assert (capped.power_cap, capped.power_cap_degree) == (1.5, 20)
    assert type(capped.power_cap_degree) is int
    assert parse("spread_scale=0.5").apply(capped).power_cap == 1.5
    assert sampler.SamplerConfig().power_cap == 0  # off unless asked


@pytest.mark.parametrize("solver", ["2s", "2m"])
def test_the_deviation_filter_acts_on_the_deviation_from_the_first_estimate(solver, gaussian):
    # x_N = D_0 + tau * F(x_N(1) - D_0) for the same key, F any linear map: here a fixed
    # mixing matrix, so that a filter applied to the whole sample, or after tau, would show.
    mu, q, _ = gaussian
    mixing = jnp.asarray(np.random.default_rng(7).normal(size=(DIM, DIM)) / 3, jnp.float32)

    def draw(tau, deviation_filter=None):
        config = sampler.SamplerConfig(num_steps=6, solver=solver, spread_scale=tau)
        return _ideal_samples(mu, q, config, 11, 64, deviation_filter=deviation_filter)

    full, tiny = draw(1.0), draw(1e-6)  # tiny: D_0 up to 1e-6 of the deviation
    got = draw(0.5, lambda d: d @ mixing.T)
    want = tiny + 0.5 * (full - tiny) @ np.asarray(mixing).T
    np.testing.assert_allclose(got, want, atol=1e-4)  # float32, |x| < 6, as the test above
    # With tau = 1 the filter alone still applies (GenCast's exact path is not taken).
    np.testing.assert_allclose(draw(1.0, lambda d: 0.5 * d), tiny + 0.5 * (full - tiny), atol=1e-4)


@pytest.mark.parametrize("solver", ["2s", "2m"])
def test_spread_scale_per_element_equals_each_scalar_scale_on_its_elements(solver, gaussian):
    # The same key with tau = [t_0 .. t_{d-1}] gives, in element i, what the scalar t_i gives
    # there: the deflation acts element by element around the same first estimate.
    mu, q, _ = gaussian
    taus = np.linspace(0.2, 1.3, DIM)

    def draw(config, tau=None):
        return _ideal_samples(mu, q, config, seed=5, n=64, spread_scale=tau)

    base = sampler.SamplerConfig(num_steps=6, solver=solver, spread_scale=0.9)
    mixed = draw(base, taus)
    for i, tau in enumerate(taus):
        alone = draw(dataclasses.replace(base, spread_scale=float(tau)))
        # float32 rounding of the same arithmetic (|x| < 6): a few ulps.
        np.testing.assert_allclose(mixed[:, i], alone[:, i], atol=1e-5)
    with pytest.raises(ValueError, match="finite and > 0 everywhere"):
        draw(base, np.array([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("solver", ["2s", "2m"])
def test_spread_scale_shrinks_towards_the_first_estimate(solver, gaussian):
    # x_N(tau) = D_0 + tau (x_N(1) - D_0) for the same key, where D_0, the denoiser at
    # sigma_hat_0 = 113, is the conditional mean: a tiny tau leaves D_0, which is mu here.
    mu, q, _ = gaussian

    def draw(tau):
        config = sampler.SamplerConfig(num_steps=6, solver=solver, spread_scale=tau)
        return _ideal_samples(mu, q, config, seed=3, n=256)

    full, half, tiny = draw(1.0), draw(0.5), draw(1e-6)
    np.testing.assert_allclose(half, tiny + 0.5 * (full - tiny), atol=1e-4)
    # |D_0 - mu| = lambda / (lambda + sigma_hat_0^2) |x_hat_0 - mu| < 4 / 12800 * 5 * 113.
    assert np.max(np.abs(tiny - mu)) < 0.2
    np.testing.assert_allclose(np.var(half, axis=0), 0.25 * np.var(full, axis=0), rtol=0.05)


def test_the_schedule_churns_only_inside_its_window_and_ends_exactly():
    """sigma_hat = sigma (1 + gamma) for S_tmin <= sigma <= S_tmax and sigma elsewhere (both
    bounds inclusive), and the float64 levels start and end exactly on sigma_max and sigma_min
    (the rho-spacing formula rounds there)."""
    # sigma_max = 88: (88^(1/7))^7 != 88 in float64, so the exact end is not a rounding accident.
    config = sampler.SamplerConfig(
        num_steps=10, s_churn=2.0, s_tmin=0.1, s_tmax=5.0, sigma_max=88.0, sigma_min=0.03
    )
    levels = sampler._noise_levels_np(config)
    assert levels[0] == config.sigma_max and levels[-2] == config.sigma_min and levels[-1] == 0
    schedule = sampler._schedule(config)
    gamma = min(config.s_churn / config.num_steps, math.sqrt(2) - 1)
    inside = (schedule.sigma >= 0.1) & (schedule.sigma <= 5.0)
    assert inside.any() and not inside.all()
    np.testing.assert_allclose(
        schedule.sigma_hat, np.where(inside, schedule.sigma * (1 + gamma), schedule.sigma)
    )
    # The window's upper bound is inclusive: a level exactly on S_tmax churns.
    on_bound = dataclasses.replace(config, s_tmax=float(schedule.sigma[3]))
    assert sampler._schedule(on_bound).sigma_hat[3] == schedule.sigma[3] * (1 + gamma)


def test_sampler_override_is_immutable():
    override = sampler.SamplerOverride.parse("2s:10")
    with pytest.raises(dataclasses.FrozenInstanceError):
        override.text = "2s:5"  # type: ignore[misc]
