"""Shaping a sample's deviation by spatial scale: the sampler's ``degree_scales``.

`benchmarks/spread_by_scale.py` shows the shipped model's ensembles over-dispersed at the grid's
finest scales (spherical-harmonic degrees 16-31 on the 5.625 deg grid) and under-dispersed in
the planetary and synoptic waves (0-15), for geopotential, surface pressure and the upper-air
fields, while the global spread/skill ratio that one tau per channel calibrates averages the
two. `degree_filter` multiplies each band of degrees of a channel's deviation from the
sampler's first estimate by its own factor:

    d -> d + synthesis((g_c(l) - 1) * analysis(d)),

with the least-squares analysis and the synthesis of `weather.data.harmonics.SphericalTransform`
(float32 tables, dense einsums). Written as a correction to ``d``, the part of ``d`` the
truncation cannot represent (orders ``m >= n_lon / 2``, degrees above ``L``) passes unchanged,
and ``g = 1`` everywhere is the identity up to rounding.

Cost on the 5.625 deg grid (32 x 64, L = 31): two einsums of ``2 * 32 * 32 * 32`` and two of
``2 * 32 * 32 * 64`` multiply-adds per channel and member, under 0.1 % of a denoiser call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from weather.data.harmonics import SphericalTransform
from weather.model.sampler import degree_scale_label


def channel_degree_factors(
    channels: Sequence[str],
    degree_scales: Sequence[tuple[str, int, float]],
    max_degree: int,
) -> np.ndarray | None:
    """The factor of every degree of every channel, ``[L + 1, C]`` float64, or None where
    ``degree_scales`` is empty.

    A channel (``VARIABLE@LEVEL``, or a surface ``VARIABLE``) takes the entries of the most
    specific name that has any: its own, else its variable's, else the ``""`` entries (every
    channel). Within them, each entry's factor holds from its first degree up to the next
    entry's; degrees below the first entry keep 1.

    Raises:
      ValueError: a name that is neither a channel nor a variable of ``channels``, or a first
        degree above ``max_degree`` (the grid cannot hold it), naming the entry.
    """
    if not degree_scales:
        return None
    check_degree_names(channels, degree_scales)
    variables = [name.partition("@")[0] for name in channels]
    entries: dict[str, list[tuple[int, float]]] = {}
    for name, first, factor in degree_scales:
        if first > max_degree:
            raise ValueError(
                f"sampler: {degree_scale_label(name, first)}: degree {first} is above this "
                f"grid's truncation {max_degree}"
            )
        entries.setdefault(name, []).append((first, factor))
    factors = np.ones((max_degree + 1, len(channels)))
    for c, (channel, variable) in enumerate(zip(channels, variables, strict=True)):
        chosen = entries.get(channel) or entries.get(variable) or entries.get("") or []
        for first, factor in sorted(chosen):
            factors[first:, c] = factor  # later (higher) entries overwrite from their degree
    return factors


def check_degree_names(
    channels: Sequence[str], degree_scales: Sequence[tuple[str, int, float]]
) -> None:
    """Raise ValueError naming the first ``degree_scales`` entry whose name is neither ``""``,
    a channel nor a variable of ``channels``."""
    variables = {name.partition("@")[0] for name in channels}
    known = set(channels) | variables | {""}
    for name, first, _ in degree_scales:
        if name not in known:
            raise ValueError(
                f"sampler: {degree_scale_label(name, first)}: {name!r} is neither a state "
                f"variable nor a channel of this model (variables: {sorted(variables)}; "
                "channels are VARIABLE@LEVEL, e.g. temperature@850)"
            )


def degree_filter(
    latitude: np.ndarray, longitude: np.ndarray, factors: np.ndarray
) -> Callable[[jax.Array], jax.Array]:
    """``d [..., H, W, C] -> d`` with degree ``l`` of channel ``c`` multiplied by
    ``factors[l, c]`` (channels last, as the forecaster's samples are).

    Args:
      latitude, longitude: the grid (degrees), as `SphericalTransform.build` takes them.
      factors: ``[L + 1, C]``; ``L`` is the transform's truncation (`channel_degree_factors`
        with the grid's default ``L``).
    """
    factors = np.asarray(factors, np.float64)
    analyse, synthesize = _transforms(latitude, longitude, factors.shape[0] - 1)
    gain = jnp.asarray(factors - 1.0, jnp.float32)  # [l, C]

    def apply(d: jax.Array) -> jax.Array:
        return d + synthesize(analyse(d) * gain.astype(d.dtype))

    return apply


def _transforms(
    latitude: np.ndarray, longitude: np.ndarray, max_degree: int
) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """The float32 analysis ``[..., H, W, C] -> [..., 2, m, l, C]`` and synthesis (its
    inverse for degrees ``<= max_degree``) of `SphericalTransform`, channels last."""
    transform = SphericalTransform.build(latitude, longitude, max_degree=max_degree)
    fourier = jnp.asarray(transform.fourier, jnp.float32)  # [2, m, W]
    table = jnp.asarray(transform.table, jnp.float32)  # [m, l, H]
    legendre = jnp.asarray(transform.legendre, jnp.float32)  # [m, l, H]
    waves = jnp.asarray(transform.waves, jnp.float32)  # [2, m, W]

    def analyse(x: jax.Array) -> jax.Array:
        rows = jnp.einsum("...jkc,smk->...smjc", x, fourier.astype(x.dtype))
        return jnp.einsum("...smjc,mlj->...smlc", rows, table.astype(x.dtype))

    def synthesize(a: jax.Array) -> jax.Array:
        back = jnp.einsum("...smlc,mlj->...smjc", a, legendre.astype(a.dtype))
        return jnp.einsum("...smjc,smk->...jkc", back, waves.astype(a.dtype))

    return analyse, synthesize


def mean_degree_power(
    latitude: np.ndarray, longitude: np.ndarray, states: np.ndarray, max_degree: int | None = None
) -> np.ndarray:
    """The climatological power per degree of each channel, ``[L + 1, C]`` float64.

    Args:
      latitude, longitude: the grid (degrees).
      states: ``[T, H, W, C]`` physical fields (the truth at T times).
      max_degree: the truncation ``L`` (default: the grid's, `default_max_wavenumber`).

    Returns:
      ``S_l`` (`SphericalTransform.power`, units of the field squared) averaged over the T
      times; ``inf`` for a channel with any non-finite value (a field undefined somewhere, such
      as sea-surface temperature over land, has no spectrum, so `power_cap_filter` leaves it
      alone).
    """
    states = np.asarray(states, np.float64)
    if states.ndim != 4 or states.shape[0] < 1:
        raise ValueError(f"states: expected [time, lat, lon, channel], got {states.shape}")
    transform = SphericalTransform.build(latitude, longitude, max_degree)
    out = np.empty((transform.max_degree + 1, states.shape[-1]))
    for c in range(states.shape[-1]):
        field = states[..., c]
        if not np.isfinite(field).all():
            out[:, c] = np.inf
            continue
        out[:, c] = transform.power(field).mean(axis=0)
    return out


def power_cap_filter(
    latitude: np.ndarray,
    longitude: np.ndarray,
    climate_power: np.ndarray,
    cap: float,
    first_degree: int,
) -> Callable[[jax.Array], jax.Array]:
    """``x [..., H, W, C] -> x`` with each degree ``l >= first_degree`` of each channel scaled
    down to at most ``cap`` times its climatological power, and left alone where it is below.

    Per field (member, channel) and degree, ``g_l = min(1, sqrt(cap * S_clim_l / S_l))``
    multiplies the degree's coefficients: the state's power there becomes
    ``min(S_l, cap * S_clim_l)``. The rolled-out model's fields gain spurious power at the
    grid's finest scales step after step (z500 at degrees 16-31: twice the truth's at 5 days,
    4.5 times at 15) while their 12 h states are right (0.98), so a fixed damping
    (``state_degree_scales``) costs the first days what it gives the second week; a cap acts
    only on a state whose spectrum has left the climate, and only by as much.

    Args:
      latitude, longitude: the grid (degrees).
      climate_power: ``[L + 1, C]``, `mean_degree_power` of the truth (``inf``: never capped).
      cap: the largest power allowed, in multiples of the climatological one (> 0).
      first_degree: degrees below it are never touched (their power varies far more from one
        state to the next: degree ``l`` has only ``2l + 1`` coefficients).
    """
    climate = np.asarray(climate_power, np.float64)
    if climate.ndim != 2:
        raise ValueError(f"climate_power: expected [degree, channel], got {climate.shape}")
    if not (np.isfinite(cap) and cap > 0):
        raise ValueError(f"cap must be finite and > 0, got {cap}")
    top = climate.shape[0] - 1
    if not 0 <= first_degree <= top:
        raise ValueError(f"first_degree must be in [0, {top}] for this grid, got {first_degree}")
    analyse, synthesize = _transforms(latitude, longitude, top)
    limit = np.where(np.arange(top + 1)[:, None] >= first_degree, cap * climate, np.inf)
    # In units of 4 pi S (the coefficients' sum of squares), float32: inf stays inf.
    allowed = jnp.asarray(4.0 * np.pi * limit, jnp.float32)  # [l, C]

    def apply(x: jax.Array) -> jax.Array:
        coefficients = analyse(jnp.where(jnp.isfinite(x), x, 0.0))
        power = jnp.sum(coefficients * coefficients, axis=(-4, -3))  # [..., l, C]
        # g - 1 where the power exceeds the limit, else exactly 0 (nothing changes there).
        gain = jnp.where(
            power > allowed,
            jnp.sqrt(allowed / jnp.maximum(power, jnp.finfo(x.dtype).tiny)) - 1.0,
            0.0,
        )
        return x + synthesize(coefficients * gain[..., None, None, :, :])

    return apply
