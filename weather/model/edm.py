"""EDM diffusion: preconditioning, training noise levels and the denoising loss.

Karras et al. 2022, "Elucidating the design space of diffusion-based generative models" (EDM), as
used by GenCast (Price et al. 2024). The data ``y`` are noised as ``x = y + sigma n`` with unit
noise ``n`` (isotropic on the sphere in GenCast, see :mod:`weather.model.noise`), and the network
``F_theta`` is wrapped into a denoiser (EDM eq. 7)

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F_theta(c_in(sigma) x; c_noise(sigma)),

with (EDM Table 1, "Ours")

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4,

and trained with the loss weight ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma
sigma_data)^2``, which makes ``lambda c_out^2 = 1``: the network's effective regression target
``(y - c_skip x) / c_out`` has unit variance and unit weight at every noise level (EDM eq. 8).

Shapes: ``target``/``x`` are ``[batch, ...]`` (e.g. ``[batch, channel, lat, lon]``); ``sigma`` is
``[batch]`` (one noise level per example) or a scalar, broadcast over the trailing dims.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from weather.model.noise import NoiseFn

RawFn = Callable[[jax.Array, jax.Array], jax.Array]
"""The network ``F_theta(c_in x, c_noise) -> [batch, ...]``; ``c_noise`` has ``sigma``'s shape.

Conditioning (previous states, forcings) and parameters are closed over by the caller, e.g.
``functools.partial(model.apply, params, inputs=...)``.
"""

TrainingNoise = Literal["rho", "lognormal"]
TRAINING_NOISE: tuple[str, ...] = ("rho", "lognormal")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EDMConfig:
    """EDM preconditioning and training-noise hyper-parameters.

    Attributes:
      sigma_data: ``sigma_data``, the standard deviation of the (normalised) data; 1 for
        GenCast's targets, normalised residuals.
      training_noise: how ``sigma`` is drawn for training:
        ``"rho"`` (GenCast): by inverse CDF of the sampling schedule,
        ``sigma = (sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
        ``u ~ U(0, 1)``;
        ``"lognormal"`` (EDM): ``ln sigma ~ N(P_mean, P_std^2)``.
      sigma_min: ``sigma_min`` of the ``"rho"`` distribution (GenCast training: 0.02).
      sigma_max: ``sigma_max`` of the ``"rho"`` distribution (GenCast training: 88).
      rho: ``rho`` of the ``"rho"`` distribution (GenCast: 7).
      p_mean: ``P_mean`` of the ``"lognormal"`` distribution (EDM: -1.2).
      p_std: ``P_std`` of the ``"lognormal"`` distribution (EDM: 1.2).
    """

    sigma_data: float = 1.0
    training_noise: TrainingNoise = "rho"
    sigma_min: float = 0.02
    sigma_max: float = 88.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        if self.training_noise not in TRAINING_NOISE:
            raise ValueError(
                f"training_noise must be one of {TRAINING_NOISE}, got {self.training_noise!r}"
            )
        for name in ("sigma_data", "sigma_min", "sigma_max", "rho", "p_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if not math.isfinite(self.p_mean):
            raise ValueError(f"p_mean must be finite, got {self.p_mean}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be < sigma_max ({self.sigma_max})")


def _expand(sigma: jax.Array, ndim: int) -> jax.Array:
    """``sigma`` [batch] or [] with trailing singleton dims up to ``ndim``."""
    return jnp.reshape(sigma, jnp.shape(sigma) + (1,) * (ndim - jnp.ndim(sigma)))


def preconditioning(
    sigma: jax.Array | float, sigma_data: float = 1.0
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """EDM's ``(c_skip, c_out, c_in, c_noise)`` at noise level ``sigma`` (any shape, > 0)."""
    sigma = jnp.asarray(sigma, dtype=jnp.result_type(sigma, jnp.float32))
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data * jax.lax.rsqrt(total)
    c_in = jax.lax.rsqrt(total)
    c_noise = jnp.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: jax.Array | float, sigma_data: float = 1.0) -> jax.Array:
    """EDM's ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (any shape)."""
    sigma = jnp.asarray(sigma, dtype=jnp.result_type(sigma, jnp.float32))
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_training_sigma(key: jax.Array, shape: tuple[int, ...], config: EDMConfig) -> jax.Array:
    """Training noise levels ``sigma`` of ``shape``, float32, from ``config.training_noise``."""
    if config.training_noise == "lognormal":
        n = jax.random.normal(key, shape, dtype=jnp.float32)
        return jnp.exp(config.p_mean + config.p_std * n)
    u = jax.random.uniform(key, shape, dtype=jnp.float32)
    inv_rho = 1.0 / config.rho
    hi, lo = config.sigma_max**inv_rho, config.sigma_min**inv_rho
    return (hi + u * (lo - hi)) ** config.rho


def denoise(
    raw_fn: RawFn, x_noisy: jax.Array, sigma: jax.Array | float, sigma_data: float = 1.0
) -> jax.Array:
    """``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` (EDM eq. 7).

    Args:
      raw_fn: the network ``F_theta(scaled_x, c_noise)`` (see :data:`RawFn`).
      x_noisy: ``x = y + sigma n``, ``[batch, ...]``.
      sigma: ``[batch]`` or scalar noise levels, broadcast over ``x``'s trailing dims.
      sigma_data: ``sigma_data``.

    Returns:
      the denoised estimate of ``y``, shape and dtype of ``x_noisy``.
    """
    sigma = jnp.asarray(sigma, dtype=x_noisy.dtype)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
    ndim = x_noisy.ndim
    raw = raw_fn(_expand(c_in, ndim) * x_noisy, c_noise)
    return _expand(c_skip, ndim) * x_noisy + _expand(c_out, ndim) * raw


def edm_loss(
    raw_fn: RawFn,
    key: jax.Array,
    target: jax.Array,
    weights: jax.Array | float,
    config: EDMConfig,
    noise_fn: NoiseFn,
    sigma: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The EDM denoising loss ``mean(lambda(sigma) w (D(y + sigma n; sigma) - y)^2)``.

    One ``sigma`` per batch element from ``config.training_noise`` (or the given ``sigma``);
    ``n = noise_fn(key, y.shape)``.

    Args:
      raw_fn: the network ``F_theta`` (see :data:`RawFn`).
      key: a JAX PRNG key (split into one for ``sigma`` and one for ``n``).
      target: clean data ``y``, ``[batch, ...]``, e.g. ``[batch, channel, lat, lon]``.
      weights: per-element loss weights broadcastable to ``target`` (e.g. cell-area weights
        ``[lat, 1]`` times per-level weights ``[channel, 1, 1]``); with mean 1 the loss is a
        weighted mean.
      config: the EDM configuration.
      noise_fn: unit noise of a given shape (:data:`weather.model.noise.NoiseFn`).
      sigma: a fixed noise level (scalar or ``[batch]``) instead of drawn ones: the loss of one
        noise-level band, as the learning curve reports it. The key still splits the same way,
        so the noise ``n`` is the same as with drawn levels.

    Returns:
      ``(loss, aux)``: the scalar loss (float32) and ``{"sigma": [batch], "loss_per_example":
      [batch]}``, so that ``jax.value_and_grad(..., has_aux=True)`` works directly.
    """
    key_sigma, key_noise = jax.random.split(key)
    if sigma is None:
        sigma = sample_training_sigma(key_sigma, target.shape[:1], config)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, target.dtype), target.shape[:1])
    noise = noise_fn(key_noise, target.shape).astype(target.dtype)
    x_noisy = target + _expand(sigma, target.ndim) * noise
    denoised = denoise(raw_fn, x_noisy, sigma, config.sigma_data)
    weighted = (
        _expand(loss_weight(sigma, config.sigma_data), target.ndim)
        * jnp.asarray(weights, dtype=target.dtype)
        * (denoised - target) ** 2
    )
    weighted = jnp.broadcast_to(weighted, target.shape)
    per_example = jnp.mean(weighted.reshape(target.shape[0], -1), axis=1)
    return jnp.mean(per_example), {"sigma": sigma, "loss_per_example": per_example}
