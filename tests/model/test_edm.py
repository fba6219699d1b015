"""EDM preconditioning and loss against exact identities and analytic distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from weather.data import grid
from weather.model import edm, noise

SIGMAS = np.geomspace(1e-3, 1e3, 25)
N_SIGMA = 8192  # shared by the distribution and loss tests so their random draws compile once


@pytest.mark.parametrize("sigma_data", [0.5, 1.0, 2.0])
def test_preconditioning_identities(sigma_data):
    with jax.enable_x64(True):
        sigma = jnp.asarray(SIGMAS)
        c_skip, c_out, c_in, c_noise = (
            np.asarray(c) for c in edm.preconditioning(sigma, sigma_data)
        )
        weight = np.asarray(edm.loss_weight(sigma, sigma_data))
    assert c_skip.dtype == np.float64
    np.testing.assert_allclose(c_skip + SIGMAS**2 * c_in**2, 1.0, rtol=1e-14)
    np.testing.assert_allclose(c_skip, sigma_data**2 * c_in**2, rtol=1e-14)
    np.testing.assert_allclose(c_out**2, SIGMAS**2 * sigma_data**2 * c_in**2, rtol=1e-14)
    np.testing.assert_allclose(c_noise, np.log(SIGMAS) / 4, rtol=1e-14)
    # Unit effective weight: lambda(sigma) c_out(sigma)^2 = 1 at every noise level (EDM eq. 8).
    np.testing.assert_allclose(weight * c_out**2, 1.0, rtol=1e-14)


def test_preconditioning_is_float32_by_default():
    assert all(c.dtype == jnp.float32 for c in edm.preconditioning(0.5))
    assert edm.loss_weight(np.float32(0.5)).dtype == jnp.float32


def _random_net(seed: int, size: int):
    """A bounded network |F| <= 3: tanh of a random linear map plus the noise embedding."""
    w = jnp.asarray(np.random.default_rng(seed).normal(size=(size, size)), dtype=jnp.float32)

    def raw_fn(x, c_noise):
        return 3.0 * jnp.tanh(x @ w + c_noise[..., None])

    return raw_fn


def test_denoiser_tends_to_identity_as_sigma_vanishes():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16)), dtype=jnp.float32)
    raw_fn = _random_net(0, 16)
    for sigma, tol in [(1e-2, 3.2e-2), (1e-4, 3.2e-4)]:
        denoised = edm.denoise(raw_fn, x, jnp.full((4,), sigma))
        # |D - x| <= (1 - c_skip)|x| + c_out |F| <= sigma^2 |x| + 3 sigma.
        assert 0 < float(jnp.max(jnp.abs(denoised - x))) <= tol


def test_weighted_loss_is_unit_weight_regression_on_the_effective_target():
    # lambda (D - y)^2 = (F - F_target)^2 with F_target = (y - c_skip x) / c_out (EDM eq. 8).
    rng = np.random.default_rng(2)
    y, n, f = (rng.normal(size=(len(SIGMAS), 8)) for _ in range(3))
    sigma_data = 0.7
    with jax.enable_x64(True):
        sigma = jnp.asarray(SIGMAS)
        x = y + SIGMAS[:, None] * n
        c_skip, c_out, _, _ = (np.asarray(c)[:, None] for c in edm.preconditioning(sigma, 0.7))
        denoised = np.asarray(
            edm.denoise(lambda _x, _c: jnp.asarray(f), jnp.asarray(x), sigma, 0.7)
        )
        weight = np.asarray(edm.loss_weight(sigma, sigma_data))[:, None]
    effective_target = (y - c_skip * x) / c_out
    np.testing.assert_allclose(weight * (denoised - y) ** 2, (f - effective_target) ** 2, rtol=1e-9)


def test_denoise_broadcasts_one_sigma_per_example():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 2, 5)), dtype=jnp.float32)
    sigma = jnp.asarray([0.1, 1.0, 30.0], dtype=jnp.float32)

    def raw_fn(scaled_x, c_noise):
        return jnp.sin(scaled_x) * jnp.reshape(c_noise, (*c_noise.shape, 1, 1))

    batched = edm.denoise(raw_fn, x, sigma)
    singles = [edm.denoise(raw_fn, x[i : i + 1], sigma[i : i + 1]) for i in range(3)]
    np.testing.assert_allclose(batched, jnp.concatenate(singles), rtol=1e-6)
    assert batched.dtype == jnp.float32


def test_denoise_feeds_the_network_c_in_x_and_c_noise():
    # A network that returns its own inputs: F(s, c) = s + c, so D = c_skip x + c_out (c_in x +
    # c_noise) exactly. Pins what reaches the network (a wrong scaling of x, or sigma passed
    # instead of c_noise, changes D by O(1) at these sigmas).
    x = np.random.default_rng(6).normal(size=(5, 7))
    sigma_data = 0.8
    with jax.enable_x64(True):
        sigma = jnp.asarray([0.01, 0.3, 1.0, 4.0, 80.0])
        c_skip, c_out, c_in, c_noise = (
            np.asarray(c)[:, None] for c in edm.preconditioning(sigma, sigma_data)
        )
        seen = []

        def raw_fn(scaled_x, c):
            seen.append(c.shape)
            return scaled_x + c[:, None]

        denoised = np.asarray(edm.denoise(raw_fn, jnp.asarray(x), sigma, sigma_data))
    np.testing.assert_allclose(denoised, c_skip * x + c_out * (c_in * x + c_noise), rtol=1e-14)
    assert seen == [(5,)]  # c_noise keeps sigma's [batch] shape


def test_config_defaults_are_gencast_and_edm_values():
    # GenCast trains with the rho distribution on [0.02, 88], rho 7 (Price et al. 2024, its
    # supplement); EDM's log-normal is N(-1.2, 1.2^2) (Karras et al. 2022, Table 1).
    config = edm.EDMConfig()
    assert (config.sigma_data, config.training_noise) == (1.0, "rho")
    assert (config.sigma_min, config.sigma_max, config.rho) == (0.02, 88.0, 7.0)
    assert (config.p_mean, config.p_std) == (-1.2, 1.2)
    # The functions' sigma_data defaults to the config's (GenCast's normalised residuals: 1).
    for default, explicit in [
        (edm.preconditioning(0.3), edm.preconditioning(0.3, 1.0)),
        ((edm.loss_weight(0.3),), (edm.loss_weight(0.3, 1.0),)),
        (
            (edm.denoise(lambda x, c: jnp.sin(x) + c, jnp.ones(2), 0.3),),
            (edm.denoise(lambda x, c: jnp.sin(x) + c, jnp.ones(2), 0.3, 1.0),),
        ),
    ]:
        np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))


def _training_cdf(config: edm.EDMConfig):
    if config.training_noise == "lognormal":
        return stats.norm(loc=config.p_mean, scale=config.p_std).cdf, np.log
    inv = 1.0 / config.rho
    hi, lo = config.sigma_max**inv, config.sigma_min**inv
    # sigma decreases with u, so P(sigma <= s) = 1 - u(s).
    return (lambda s: 1.0 - (s**inv - hi) / (lo - hi)), (lambda s: s)


@pytest.mark.parametrize("training_noise", ["rho", "lognormal"])
def test_training_sigma_matches_the_analytic_distribution(training_noise):
    config = edm.EDMConfig(training_noise=training_noise)
    sigma = np.asarray(edm.sample_training_sigma(jax.random.key(0), (N_SIGMA,), config))
    assert sigma.dtype == np.float32 and np.all(sigma > 0)
    cdf, transform = _training_cdf(config)
    result = stats.kstest(transform(sigma.astype(np.float64)), cdf)
    # Kolmogorov-Smirnov: at n = 8192 the 0.1 % critical value of D is 1.95 / sqrt(n) = 0.022.
    assert result.statistic < 1.95 / np.sqrt(N_SIGMA)
    if training_noise == "rho":
        assert config.sigma_min <= sigma.min() and sigma.max() <= config.sigma_max


@pytest.mark.parametrize("training_noise", ["rho", "lognormal"])
def test_loss_of_the_bayes_optimal_denoiser_is_exactly_one_in_expectation(training_noise):
    # For y ~ N(0, sigma_data^2), D = c_skip x (F = 0) is the posterior mean, and
    # c_skip x - y ~ N(0, c_out^2): lambda (D - y)^2 is chi-square(1) at every sigma, so the
    # loss has mean 1 whatever the sigma distribution (and for weights of mean 1).
    sigma_data = 0.5
    config = edm.EDMConfig(training_noise=training_noise, sigma_data=sigma_data)
    key_target, key_loss = jax.random.split(jax.random.key(7))
    target = sigma_data * jax.random.normal(key_target, (N_SIGMA, 4))
    weights = jnp.asarray([0.5, 1.5, 0.8, 1.2])
    loss, aux = edm.edm_loss(
        lambda x, c: jnp.zeros_like(x), key_loss, target, weights, config, jax.random.normal
    )
    assert aux["sigma"].shape == (N_SIGMA,) and aux["loss_per_example"].shape == (N_SIGMA,)
    # Var of a weighted chi-square(1) mean: 2 mean(w^2) / n.
    se = np.sqrt(2 * np.mean(np.asarray(weights) ** 2) / target.size)
    assert abs(float(loss) - 1.0) < 5 * se


def test_loss_at_a_fixed_sigma_is_the_band_loss_by_hand():
    """edm_loss(sigma=s) = mean(lambda(s) w (D(y + s n; s) - y)^2) with n drawn as for training."""
    config = edm.EDMConfig()
    rng = np.random.default_rng(11)
    target = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    weights = jnp.asarray([0.5, 1.5, 0.8, 1.2, 1.0], jnp.float32)
    raw_fn = _random_net(4, 5)
    key = jax.random.key(5)
    for sigma in (0.05, 1.0, 25.0):
        loss, aux = edm.edm_loss(
            raw_fn, key, target, weights, config, jax.random.normal, sigma=sigma
        )
        n = jax.random.normal(jax.random.split(key)[1], target.shape)
        denoised = edm.denoise(raw_fn, target + sigma * n, jnp.full((3,), sigma))
        by_hand = np.mean(
            np.asarray(edm.loss_weight(sigma)) * np.asarray(weights) * (denoised - target) ** 2
        )
        np.testing.assert_allclose(float(loss), by_hand, rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(aux["sigma"]), np.float32(sigma))


def test_loss_trains_a_network_under_jit_with_spherical_noise():
    lat, lon = grid.equiangular_grid(32, 64)
    noise_fn = noise.make_noise_fn("spherical", lat, lon)
    weights = jnp.asarray(grid.cell_area_weights(lat)[:, None], dtype=jnp.float32)
    target = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 32, 64)), dtype=jnp.float32)
    config = edm.EDMConfig()

    def loss_fn(scale, key):
        def raw_fn(x, c_noise):
            return scale * x * jnp.reshape(c_noise, (-1, 1, 1, 1))

        return edm.edm_loss(raw_fn, key, target, weights, config, noise_fn)

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, aux), grad = grad_fn(jnp.float32(0.1), jax.random.key(0))
    assert loss.shape == () and loss.dtype == jnp.float32 and np.isfinite(loss)
    assert np.isfinite(grad) and grad != 0
    assert aux["sigma"].shape == (2,)
    np.testing.assert_allclose(aux["loss_per_example"].mean(), loss, rtol=1e-6)
    (loss_again, _), _ = grad_fn(jnp.float32(0.1), jax.random.key(0))
    assert loss_again == loss


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma_data": 0.0},
        {"training_noise": "uniform"},
        {"sigma_min": 90.0},
        {"sigma_min": 5.0, "sigma_max": 5.0},  # an empty range, not one level
        {"rho": -1.0},
        {"p_std": 0.0},
        {"p_mean": float("nan")},
        {"sigma_max": float("inf")},
    ],
)
def test_invalid_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        edm.EDMConfig(**kwargs)


def test_config_is_frozen_and_keyword_only():
    config = edm.EDMConfig()
    with pytest.raises(AttributeError):
        config.rho = 5.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        edm.EDMConfig(1.0)  # type: ignore[misc]
    assert config == edm.EDMConfig() and hash(config) == hash(edm.EDMConfig())
