"""Perturbations of dinosaur modal states: noise, spectra, unresolved scales, rotations.

The spectral arithmetic behind `weather.baselines.physics`. Modal fields are ``[layer, M, L]``
in dinosaur's layout (rows ``2m``, ``2m + 1``: cosine and sine of zonal wavenumber ``m``;
columns: total wavenumber ``l``) and nondimensional units; with its basis
(``int Y^2 dOmega = 1`` on the unit sphere) Parseval reads
``mean over the sphere of f^2 = sum of squared coefficients / (4 pi)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from dinosaur import primitive_equations, spherical_harmonic

from weather.sim.dynamics import HeldSuarezModel
from weather.sim.initialise import modal_spectrum, total_wavenumbers


def resolved_noise(
    key: jax.Array,
    model: HeldSuarezModel,
    truncation: int,
    temperature: float,
    wind: float,
) -> dict[str, jnp.ndarray]:
    """Isotropic Gaussian perturbations at the resolved scales, modal ``[layer, M, L]``.

    Coefficients of total wavenumber ``1 <= l <= truncation`` are i.i.d. normal: white noise on
    the sphere, independent per layer. With dinosaur's basis (``int Y^2 dOmega = 1`` on the unit
    sphere) a field of ``K`` such coefficients of variance ``s^2`` has pointwise variance
    ``K s^2 / (4 pi)``, and a vorticity field the mean squared wind
    ``s^2 sum 1 / (l (l + 1)) / (4 pi)`` (the sum over its coefficients).

    Args:
      key: PRNG key.
      model: the model (grid, layers, units).
      truncation: the largest total wavenumber perturbed.
      temperature: rms temperature perturbation (K).
      wind: rms of each wind component of the vorticity perturbation (m s-1).

    Returns:
      ``temperature_variation`` and ``vorticity`` increments (nondimensional).
    """
    grid = model.coords.horizontal
    total = total_wavenumbers(grid)
    keep = grid.mask & (total >= 1) & (total <= truncation)
    count = int(keep.sum())
    inverse_laplacian = np.where(keep, 1.0 / np.maximum(total * (total + 1), 1), 0.0)
    s_temperature = temperature / model._temperature_scale * np.sqrt(4 * np.pi / count)
    s_vorticity = wind / model._velocity_scale * np.sqrt(8 * np.pi / inverse_laplacian.sum())
    shape = (model.config.layers, *grid.modal_shape)
    k_temperature, k_vorticity = jax.random.split(key)
    mask = jnp.asarray(keep, jnp.float32)
    return {
        "temperature_variation": s_temperature
        * mask
        * jax.random.normal(k_temperature, shape, jnp.float32),
        "vorticity": s_vorticity * mask * jax.random.normal(k_vorticity, shape, jnp.float32),
    }


PERTURBED_FIELDS = ("vorticity", "divergence", "temperature_variation", "log_surface_pressure")


def perturbed(
    state: primitive_equations.State, increments: dict[str, Any], sign: float = 1.0
) -> primitive_equations.State:
    """``state + sign * increments`` for the modal fields named in ``increments``."""
    return dataclasses.replace(
        state, **{k: getattr(state, k) + sign * v for k, v in increments.items()}
    )


def difference(a: primitive_equations.State, b: primitive_equations.State) -> dict[str, Any]:
    """``a - b`` for every modal field of `PERTURBED_FIELDS`."""
    return {k: getattr(a, k) - getattr(b, k) for k in PERTURBED_FIELDS}


def temperature_rms(model: HeldSuarezModel, modal_temperature: Any) -> float:
    """Area- and layer-mean rms of a modal temperature field ``[layer, M, L]`` (K), by Parseval."""
    power = modal_spectrum(model.coords.horizontal, modal_temperature).sum()
    rms = np.sqrt(power / (4 * np.pi * model.config.layers))
    return float(rms) * model._temperature_scale


def unresolved_std(
    model: HeldSuarezModel,
    state: primitive_equations.State,
    *,
    truncation: int,
    fit_range: tuple[int, int],
    taper_hours: float,
) -> dict[str, np.ndarray]:
    """Standard deviation of each unresolved coefficient: field -> ``[layer, M, L]``.

    Per layer, ``log E(l) = a + b log l`` is fitted over ``fit_range`` (inclusive) to the state's
    spectrum ``E(l)`` (`modal_spectrum`), the slope capped at +1 so a noisy fit cannot blow up,
    and the variance of each of the ``2 l + 1`` coefficients of degree ``l`` above the
    truncation is ``E_fit(l) taper(l) / (2 l + 1)`` with ``taper`` the model filter's damping of
    variance over ``taper_hours``. Zero at and below the truncation, above the model's
    largest resolved wavenumber, and for divergence and log surface pressure (absent keys).
    """
    grid = model.coords.horizontal
    total = total_wavenumbers(grid)
    largest = grid.total_wavenumbers - 2  # dinosaur clips the top wavenumber
    target = grid.mask & (total > truncation) & (total <= largest)
    degrees = np.arange(fit_range[0], fit_range[1] + 1)
    cfg = model.config
    k = total[0] / total.max()
    shape = np.where(
        k > cfg.filter_cutoff,
        ((k - cfg.filter_cutoff) / (1 - cfg.filter_cutoff)) ** (2 * cfg.filter_order),
        0.0,
    )
    taper = np.exp(-taper_hours * 3600 / model.time_scale / cfg.filter_tau * shape)
    l_all = np.maximum(total[0], 1).astype(np.float64)
    out = {}
    for name in ("vorticity", "temperature_variation"):
        spectrum = modal_spectrum(grid, getattr(state, name))  # [layer, L]
        tiny = np.finfo(np.float64).tiny
        log_e = np.log(spectrum[:, degrees] + tiny)
        slope, intercept = np.polyfit(np.log(degrees), log_e.T, 1)
        slope = np.minimum(slope, 1.0)
        intercept = np.mean(log_e - slope[:, None] * np.log(degrees)[None], axis=1)
        fitted = np.exp(intercept[:, None] + slope[:, None] * np.log(l_all)[None])
        variance = fitted * taper[None] / (2 * l_all[None] + 1)
        out[name] = np.sqrt(variance)[:, None, :] * target[None]
    return out


def draw_unresolved(key: jax.Array, std: dict[str, np.ndarray]) -> dict[str, jnp.ndarray]:
    """Independent normal increments with the given per-coefficient standard deviations."""
    keys = jax.random.split(key, len(std))
    return {
        name: jnp.asarray(s, jnp.float32) * jax.random.normal(k, s.shape, jnp.float32)
        for k, (name, s) in zip(keys, sorted(std.items()), strict=True)
    }


def rotate_zonally(grid: spherical_harmonic.Grid, modal: Any, angle: float) -> jnp.ndarray:
    """A modal field ``[..., M, L]`` turned eastward about the polar axis by ``angle`` (rad).

    Exact in spectral space: the cosine and sine coefficients of zonal wavenumber ``m`` (rows
    ``2m`` and ``2m + 1`` of dinosaur's layout) rotate by the angle ``m * angle``.
    """
    x = np.asarray(modal, np.float64)
    m = np.abs(np.asarray(grid.modal_axes[0]))[0::2]
    cos, sin = np.cos(m * angle)[:, None], np.sin(m * angle)[:, None]
    first, second = x[..., 0::2, :], x[..., 1::2, :]
    out = np.empty_like(x)
    out[..., 0::2, :] = first * cos - second * sin
    out[..., 1::2, :] = first * sin + second * cos
    return jnp.asarray(out, jnp.float32)


__all__ = [
    "PERTURBED_FIELDS",
    "difference",
    "draw_unresolved",
    "perturbed",
    "resolved_noise",
    "rotate_zonally",
    "temperature_rms",
    "unresolved_std",
]
