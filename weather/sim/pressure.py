"""Sigma levels to pressure levels, with ERA5-like treatment above the top and below ground.

Inside the model column (between the top and bottom sigma-level centres) every field is linearly
interpolated in log(pressure). Outside it:

- above the top centre: temperature and wind are held at the top value and geopotential follows
  an isothermal hypsometric profile, ``phi = phi_top + R T_top ln(p_top / p)``;
- below the bottom centre (including levels below the ground, where ``p > surface pressure``):
  temperature follows the standard lapse rate ``gamma = 6.5 K/km`` from the lowest model level,
  ``T(p) = T_L (p / p_L)^(R gamma / g)``, geopotential follows hydrostatically,
  ``phi(p) = phi_L + (g / gamma)(T_L - T(p))``, and wind is held at the lowest-level value.

This mirrors how ERA5's pressure-level products fill levels below the surface (extrapolation
from the lowest model level with a standard atmosphere lapse rate), so the archive has no holes and
below-ground values vary smoothly instead of being masked.
"""

from __future__ import annotations

import jax.numpy as jnp

from weather.data.constants import GRAVITY

DRY_AIR_GAS_CONSTANT = 287.05  # J kg-1 K-1
STANDARD_LAPSE_RATE = 0.0065  # K m-1


def sigma_to_pressure(
    fields: dict[str, jnp.ndarray],
    sigma: jnp.ndarray,
    surface_pressure: jnp.ndarray,
    pressure_levels: jnp.ndarray,
) -> dict[str, jnp.ndarray]:
    """Interpolate column fields from sigma-level centres to pressure levels.

    Args:
      fields: ``temperature`` (K), ``geopotential`` (m2 s-2) and any wind-like fields (held
        constant outside the column), each ``[sigma, *horizontal]``.
      sigma: sigma-level centres ``[sigma]``, ascending (top first).
      surface_pressure: ``[*horizontal]`` in Pa.
      pressure_levels: target levels ``[level]`` in Pa, any order.

    Returns:
      The same keys, each ``[level, *horizontal]``.
    """
    n = sigma.shape[0]
    extra = (1,) * surface_pressure.ndim
    log_p = jnp.log(sigma.reshape((n, *extra)) * surface_pressure)  # [sigma, ...]
    target = jnp.log(pressure_levels).reshape((-1, *extra))  # [level, 1...]
    # Number of model levels above each target: 0 -> above the column, n -> below it.
    above = jnp.sum(log_p[None] < target[:, None], axis=1)  # [level, ...]
    lower = jnp.clip(above - 1, 0, n - 2)
    upper = lower + 1
    lp_lo = jnp.take_along_axis(log_p, lower, axis=0)
    lp_hi = jnp.take_along_axis(log_p, upper, axis=0)
    w = (target - lp_lo) / (lp_hi - lp_lo)

    def interior(x: jnp.ndarray) -> jnp.ndarray:
        lo = jnp.take_along_axis(x, lower, axis=0)
        hi = jnp.take_along_axis(x, upper, axis=0)
        return lo + w * (hi - lo)

    is_above = above == 0
    is_below = above == n
    out = {}
    t_top, t_bot = fields["temperature"][0], fields["temperature"][-1]
    phi_top, phi_bot = fields["geopotential"][0], fields["geopotential"][-1]
    p_top, p_bot = jnp.exp(log_p[0]), jnp.exp(log_p[-1])
    p = jnp.exp(target)
    exponent = DRY_AIR_GAS_CONSTANT * STANDARD_LAPSE_RATE / GRAVITY
    t_below = t_bot * (p / p_bot) ** exponent
    for name, x in fields.items():
        value = interior(x)
        if name == "temperature":
            value = jnp.where(is_above, t_top, jnp.where(is_below, t_below, value))
        elif name == "geopotential":
            phi_above = phi_top + DRY_AIR_GAS_CONSTANT * t_top * jnp.log(p_top / p)
            phi_below = phi_bot + GRAVITY / STANDARD_LAPSE_RATE * (t_bot - t_below)
            value = jnp.where(is_above, phi_above, jnp.where(is_below, phi_below, value))
        else:
            value = jnp.where(is_above, x[0], jnp.where(is_below, x[-1], value))
        out[name] = value
    return out
