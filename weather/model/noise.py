"""Unit noise for diffusion on a latitude-longitude grid: isotropic spherical or i.i.d. per pixel.

GenCast (Price et al. 2024) perturbs with noise that is white *on the sphere* rather than on the
grid: i.i.d. pixel noise on a lat-lon grid puts far more independent values per unit area near the
poles than at the equator, so its statistics depend on where you are. Spherical-harmonic white noise
is isotropic by construction:

    eps(lat, lon) = sqrt(4 pi) / (L + 1) * sum_{l <= L} sum_{|m| <= l} a_lm Y_lm(lat, lon),

with ``a_lm ~ N(0, 1)`` i.i.d. and ``Y_lm`` the real, orthonormal spherical harmonics
(``int Y_lm^2 dOmega = 1``). Its angular power spectrum is flat up to the truncation ``L`` and, by
the addition theorem ``sum_m Y_lm(p)^2 = (2l + 1) / (4 pi)``, its variance is exactly
``(4 pi / (L + 1)^2) * sum_l (2l + 1) / (4 pi) = 1`` at *every* point of the sphere. The correlation
of two points a great-circle angle ``d`` apart is

    rho(d) = sum_{l <= L} (2l + 1) P_l(cos d) / (L + 1)^2,

whatever their location or orientation (``P_l`` the Legendre polynomials).

Truncation ``L`` (default): ``min(n_lon // 2 - 1, n_lat - 1)``.

- Longitude: a zonal wavenumber ``m`` is represented exactly on ``n_lon`` equispaced points only
  for ``m < n_lon / 2``; at ``m = n_lon / 2`` the sine vanishes at every grid point, which would
  drop variance and break the unit-variance identity. So ``L <= n_lon // 2 - 1`` is required.
- Latitude: for each ``m`` there are ``L - m + 1`` Legendre functions; they stay linearly
  independent on ``n_lat`` rows only while ``L + 1 <= n_lat``. A larger ``L`` keeps the variance
  exactly 1 (it is a pointwise identity) but aliases degrees into each other, so the default stops
  there. On a Gaussian grid ``L = n_lat - 1`` is also the largest degree its quadrature
  transforms exactly.

For the WB2 5.625 deg grid (32 x 64) this gives ``L = 31``, for 1 deg (181 x 360) ``L = 179``.

Implementation: the fully normalised associated Legendre functions ``Pbar_l^m(sin lat)`` at the
grid's latitudes are tabulated once in float64 numpy with the standard three-term recursion in
degree (stable; no factorials, so no overflow at high degree; ``sin(colat)^m`` underflows to 0
only where the true value is below 1e-300) and kept as a float32 ``[m, l, lat]`` constant
(``(L + 1)^2 * n_lat * 4`` bytes: 23 MB at 1 deg). A draw is a Legendre sum per ``m`` followed by
a matmul with the ``[cos | sin](m lon)`` basis; both are dense einsums that XLA maps onto matrix
units. Entries with ``l < m`` (and the ``m = 0`` sine) are zero in the tables, so the coefficients
drawn for them do not contribute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from weather.data.harmonics import default_max_wavenumber
from weather.data.legendre import normalized_legendre

NoiseFn = Callable[[jax.Array, tuple[int, ...]], jax.Array]
"""``noise_fn(key, shape) -> array of exactly `shape``` with unit-variance noise.

The convention of the diffusion loss and sampler (:mod:`weather.model.edm`,
:mod:`weather.model.sampler`). ``jax.random.normal`` itself is a valid (pixel) ``NoiseFn``; the
grid noises of :func:`make_noise_fn` find ``[lat, lon]`` in ``shape``.
"""

NoiseKind = Literal["spherical", "iid"]
NOISE_KINDS: tuple[str, ...] = ("spherical", "iid")


def spherical_correlation(distance_rad: np.ndarray, max_wavenumber: int) -> np.ndarray:
    """Analytic correlation ``rho(d) = sum_{l<=L} (2l+1) P_l(cos d) / (L+1)^2`` (float64).

    Args:
      distance_rad: great-circle angles ``d`` in radians, any shape.
      max_wavenumber: the truncation ``L``.
    """
    degrees = np.arange(max_wavenumber + 1)
    coefficients = (2.0 * degrees + 1.0) / (max_wavenumber + 1) ** 2
    return np.polynomial.legendre.legval(np.cos(distance_rad), coefficients)


def _check_longitude(longitude: np.ndarray) -> None:
    if longitude.ndim != 1 or longitude.size < 2:
        raise ValueError(f"longitude must be a 1-D array of >= 2 values, got {longitude.shape}")
    step = 360.0 / longitude.size
    spacing = np.mod(np.diff(longitude), 360.0)
    if not np.allclose(spacing, step, atol=1e-6 * step):
        raise ValueError(
            f"longitude must be equispaced around the full circle (step {step} deg), "
            f"got steps between {spacing.min()} and {spacing.max()}"
        )


def _check_latitude(latitude: np.ndarray) -> None:
    if latitude.ndim != 1 or latitude.size < 1:
        raise ValueError(f"latitude must be a non-empty 1-D array, got shape {latitude.shape}")
    if np.any(np.abs(latitude) > 90.0) or np.unique(latitude).size != latitude.size:
        raise ValueError("latitude must hold distinct values in [-90, 90] degrees")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SphericalNoise:
    """Isotropic unit-variance white noise on a lat-lon grid, from spherical harmonics.

    Build with :meth:`build`; call as ``noise(key, shape) -> [*shape, lat, lon]`` float32. A pytree
    (the tables are its leaves), so it can be passed into ``jax.jit`` as an argument instead of
    being baked into the program as a constant.

    Attributes:
      max_wavenumber: the triangular truncation ``L`` (total wavenumber).
      n_lat, n_lon: the grid's shape.
      legendre: ``[m, l, lat]`` float32, ``Pbar_l^m(sin lat)`` (zero for ``l < m``).
      fourier: ``[2, m, lon]`` float32, ``w_m cos(m lon)`` and ``w_m sin(m lon)`` times the
        overall scale ``sqrt(4 pi) / (L + 1)``, with ``w_0 = 1 / sqrt(2 pi)``,
        ``w_m = 1 / sqrt(pi)`` (the ``m = 0`` sine row is zero).
    """

    max_wavenumber: int
    n_lat: int
    n_lon: int
    legendre: jax.Array
    fourier: jax.Array

    @classmethod
    def build(
        cls,
        latitude: np.ndarray | Sequence[float],
        longitude: np.ndarray | Sequence[float],
        max_wavenumber: int | None = None,
    ) -> SphericalNoise:
        """Noise for the grid with these cell centres (degrees).

        Args:
          latitude: ``[lat]`` distinct values in [-90, 90], any order, any spacing (equiangular
            with or without poles, Gaussian).
          longitude: ``[lon]`` equispaced around the full circle, any starting value.
          max_wavenumber: the truncation ``L``; default :func:`default_max_wavenumber`. Must be
            ``<= n_lon // 2 - 1`` (alias-free in longitude).
        """
        lat = np.asarray(latitude, dtype=np.float64)
        lon = np.asarray(longitude, dtype=np.float64)
        _check_latitude(lat)
        _check_longitude(lon)
        longest = lon.size // 2 - 1
        if max_wavenumber is None:
            max_wavenumber = default_max_wavenumber(lat.size, lon.size)
        if not 0 <= max_wavenumber <= longest:
            raise ValueError(
                f"max_wavenumber must be in [0, {longest}] for {lon.size} longitudes "
                f"(wavenumber n_lon/2 aliases), got {max_wavenumber}"
            )
        legendre = normalized_legendre(max_wavenumber, np.sin(np.deg2rad(lat)))
        orders = np.arange(max_wavenumber + 1)
        weights = np.where(orders == 0, 1.0 / np.sqrt(2.0 * np.pi), 1.0 / np.sqrt(np.pi))
        weights = weights * np.sqrt(4.0 * np.pi) / (max_wavenumber + 1)
        angle = orders[:, None] * np.deg2rad(lon)[None, :]
        fourier = np.stack([np.cos(angle), np.sin(angle)]) * weights[:, None]
        fourier[1, 0] = 0.0
        return cls(
            max_wavenumber=int(max_wavenumber),
            n_lat=int(lat.size),
            n_lon=int(lon.size),
            legendre=jnp.asarray(legendre, dtype=jnp.float32),
            fourier=jnp.asarray(fourier, dtype=jnp.float32),
        )

    @property
    def coefficient_shape(self) -> tuple[int, int, int]:
        """Shape ``[2 (cos, sin), m, l]`` of the coefficients ``a_lm`` of one field."""
        n = self.max_wavenumber + 1
        return (2, n, n)

    def synthesize(self, coefficients: jax.Array) -> jax.Array:
        """Grid values ``[..., lat, lon]`` of ``sqrt(4 pi)/(L+1) sum a_lm Y_lm``.

        Args:
          coefficients: ``[..., 2, m, l]`` (see :attr:`coefficient_shape`); ``[0, m, l]`` is the
            cosine and ``[1, m, l]`` the sine coefficient of degree ``l``, order ``m``. Entries
            with ``l < m`` and the ``m = 0`` sine are ignored.
        """
        dtype = coefficients.dtype
        zonal = jnp.einsum("...cml,mlj->...cmj", coefficients, self.legendre.astype(dtype))
        return jnp.einsum("...cmj,cmk->...jk", zonal, self.fourier.astype(dtype))

    def __call__(self, key: jax.Array, shape: Sequence[int] = ()) -> jax.Array:
        """Independent unit-variance fields ``[*shape, lat, lon]`` float32.

        Args:
          key: a JAX PRNG key.
          shape: leading (batch, channel, ...) dims; each field along them is independent.
        """
        coefficients = jax.random.normal(
            key, (*tuple(shape), *self.coefficient_shape), dtype=jnp.float32
        )
        return self.synthesize(coefficients)


jax.tree_util.register_dataclass(
    SphericalNoise,
    data_fields=["legendre", "fourier"],
    meta_fields=["max_wavenumber", "n_lat", "n_lon"],
)


def iid_noise(key: jax.Array, shape: Sequence[int], n_lat: int, n_lon: int) -> jax.Array:
    """I.i.d. standard normal pixel noise ``[*shape, n_lat, n_lon]`` float32."""
    return jax.random.normal(key, (*tuple(shape), n_lat, n_lon), dtype=jnp.float32)


def make_noise_fn(
    kind: NoiseKind | str,
    latitude: np.ndarray | Sequence[float],
    longitude: np.ndarray | Sequence[float],
    max_wavenumber: int | None = None,
) -> NoiseFn:
    """A :data:`NoiseFn` for the grid: ``(key, shape) -> array of exactly shape``.

    The grid dims are the last two of ``shape`` (``[..., lat, lon]``) or, failing that, the two
    before the last (``[..., lat, lon, channel]``, Flax's channel-last layout); the first reading
    wins where both fit (only possible when ``n_lat == n_lon``). Every other dim indexes
    independent fields.

    Args:
      kind: ``"spherical"`` (:class:`SphericalNoise`, GenCast's choice) or ``"iid"`` (pixel noise).
      latitude, longitude: the grid's cell centres in degrees (see :meth:`SphericalNoise.build`).
      max_wavenumber: truncation ``L`` of the spherical noise (ignored for ``"iid"``).

    Raises:
      ValueError: an unknown ``kind``, an invalid grid, or (when called) a ``shape`` without
        ``[lat, lon]`` in either place.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
    n_lat, n_lon = len(latitude), len(longitude)
    spherical = (
        SphericalNoise.build(latitude, longitude, max_wavenumber) if kind == "spherical" else None
    )

    def fields(key: jax.Array, leading: tuple[int, ...]) -> jax.Array:
        if spherical is None:
            return iid_noise(key, leading, n_lat, n_lon)
        return spherical(key, leading)

    def noise_fn(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        shape = tuple(shape)
        if shape[-2:] == (n_lat, n_lon):
            return fields(key, shape[:-2])
        if shape[-3:-1] == (n_lat, n_lon):
            return jnp.moveaxis(fields(key, (*shape[:-3], shape[-1])), -3, -1)
        raise ValueError(
            f"noise shape {shape} must end with the grid's ({n_lat}, {n_lon}) "
            f"or with ({n_lat}, {n_lon}, channel)"
        )

    return noise_fn
