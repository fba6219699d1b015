"""Real spherical-harmonic analysis and synthesis of fields on a latitude-longitude grid.

A field ``f(lat, lon)`` is written in the real orthonormal spherical harmonics,

    f = sum_{l <= L} sum_{|m| <= l} a_lm Y_lm,    int Y_lm^2 dOmega = 1,

(``Y_l0 = Pbar_l^0 / sqrt(2 pi)``, ``Y_lm = Pbar_l^m [cos | sin](m lon) / sqrt(pi)``, the fully
normalised Legendre functions of `weather.data.legendre`), and its power per total wavenumber
(degree) is ``S_l = sum_m a_lm^2 / (4 pi)``: the degree-l part's share of the sphere's mean of
``f^2`` (Parseval). Degree ``l`` has a half wavelength of about ``20000 km / l``.

Analysis: projecting each latitude row onto ``cos(m lon)`` and ``sin(m lon)`` gives the
amplitudes of every order ``m < n_lon / 2`` (exact on equispaced longitudes); for each ``m`` the
degrees ``m <= l <= L`` follow from the row values by area-weighted (``cos lat``) least squares
against ``Pbar_l^m`` at the rows' latitudes. Exact for a field of degree ``<= L`` whenever the
system has full rank (``L + 1 <= n_lat``, as for the default ``L``); content above ``L`` aliases
into it, as on any finite grid. Any latitudes (equiangular with or without poles, Gaussian) and
equispaced longitudes work; the tables are computed once per grid in float64 numpy and are plain
arrays, so that jax code can use them too (`weather.model.spectral`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from weather.data.legendre import normalized_legendre


def default_max_wavenumber(n_lat: int, n_lon: int) -> int:
    """The default truncation ``L = min(n_lon // 2 - 1, n_lat - 1)``: orders ``m < n_lon / 2``
    are exact on ``n_lon`` equispaced longitudes (at ``n_lon / 2`` the sine vanishes on every
    point), and the ``L - m + 1`` degrees of an order stay independent on ``n_lat`` rows only
    while ``L + 1 <= n_lat`` (see `weather.model.noise`)."""
    return min(n_lon // 2 - 1, n_lat - 1)


@dataclasses.dataclass(frozen=True)
class SphericalTransform:
    """The transform of one grid: `coefficients`, `synthesize`, `power`.

    Attributes:
      max_degree: the truncation ``L``.
      fourier: ``[2 (cos, sin), m, lon]`` float64, the projections onto ``cos(m lon)`` and
        ``sin(m lon)`` (``1 / n_lon`` for ``m = 0``, ``2 / n_lon`` above; exact for equispaced
        longitudes whatever the first one).
      table: ``[m, l, lat]`` float64, the weighted least-squares inverse of the Legendre
        functions for each order (zero for ``l < m``), including the ``sqrt(2 pi)`` (``m = 0``)
        and ``sqrt(pi)`` normalisation of the real harmonics.
      waves: ``[2, m, lon]`` float64, ``cos(m lon)`` and ``sin(m lon)`` (synthesis).
      legendre: ``[m, l, lat]`` float64, ``Pbar_l^m(sin lat) / sqrt(2 pi)`` (``m = 0``) or
        ``/ sqrt(pi)``: the latitude half of each harmonic (synthesis).
    """

    max_degree: int
    fourier: np.ndarray
    table: np.ndarray
    waves: np.ndarray
    legendre: np.ndarray

    @classmethod
    def build(
        cls,
        latitude: np.ndarray | Sequence[float],
        longitude: np.ndarray | Sequence[float],
        max_degree: int | None = None,
    ) -> SphericalTransform:
        """The transform for the grid with these cell centres (degrees).

        Args:
          latitude: ``[lat]`` distinct values in [-90, 90].
          longitude: ``[lon]`` equispaced around the full circle.
          max_degree: the truncation ``L`` (default: `default_max_wavenumber`,
            ``min(n_lon // 2 - 1, n_lat - 1)``); at most ``n_lat - 1`` (beyond it the
            degrees of one order are not independent on the rows) and ``n_lon // 2 - 1``.
        """
        lat = np.asarray(latitude, dtype=np.float64)
        lon = np.asarray(longitude, dtype=np.float64)
        if lat.ndim != 1 or lat.size < 2 or np.unique(lat).size != lat.size:
            raise ValueError("latitude: need at least two distinct values")
        if np.any(np.abs(lat) > 90.0):
            raise ValueError("latitude: values must lie in [-90, 90] degrees")
        if lon.ndim != 1 or lon.size < 4:
            raise ValueError("longitude: need at least four equispaced values")
        steps = np.diff(lon)
        if not np.allclose(steps, 360.0 / lon.size, rtol=0.0, atol=1e-6):
            raise ValueError("longitude: values must be equispaced around the full circle")
        if max_degree is None:
            max_degree = default_max_wavenumber(lat.size, lon.size)
        limit = min(lat.size - 1, lon.size // 2 - 1)
        if not 0 <= max_degree <= limit:
            raise ValueError(
                f"max_degree must be in [0, {limit}] for {lat.size} latitudes and "
                f"{lon.size} longitudes, got {max_degree}"
            )
        legendre = normalized_legendre(max_degree, np.sin(np.deg2rad(lat)))  # [m, l, lat]
        weights = np.cos(np.deg2rad(lat))
        n = max_degree + 1
        table = np.zeros((n, n, lat.size))
        for m in range(n):
            basis = legendre[m, m:, :]  # [l, lat]
            # Weighted least squares: minimise sum_j w_j (c_j - sum_l b_l P_lj)^2.
            normal = (basis * weights) @ basis.T
            table[m, m:, :] = np.linalg.solve(normal, basis * weights)
        orders = np.arange(n)
        norm = np.asarray(np.where(orders == 0, np.sqrt(2.0 * np.pi), np.sqrt(np.pi)))
        angle = orders[:, None] * np.deg2rad(lon)[None, :]
        scale = np.where(orders == 0, 1.0, 2.0)[:, None] / lon.size
        waves = np.stack([np.cos(angle), np.sin(angle)])
        return cls(
            max_degree=int(max_degree),
            fourier=waves * scale,
            table=table * norm[:, None, None],
            waves=waves,
            legendre=legendre / norm[:, None, None],
        )

    def coefficients(self, field: np.ndarray) -> np.ndarray:
        """Real spherical-harmonic coefficients ``[..., 2 (cos, sin), m, l]`` of
        ``field[..., lat, lon]`` (orthonormal harmonics; zero for ``l < m`` and the ``m = 0`` sine).
        """
        field = np.asarray(field, dtype=np.float64)
        n_lat, n_lon = self.table.shape[-1], self.fourier.shape[-1]
        if field.ndim < 2 or field.shape[-2:] != (n_lat, n_lon):
            raise ValueError(
                f"field: expected [..., {n_lat}, {n_lon}] (lat, lon), got {field.shape}"
            )
        # Each row as sum_m c_m cos(m lon) + s_m sin(m lon), then each order's degrees.
        cos_sin = np.einsum("...jk,cmk->...cmj", field, self.fourier)
        return np.einsum("...cmj,mlj->...cml", cos_sin, self.table)

    def synthesize(self, coefficients: np.ndarray) -> np.ndarray:
        """Grid values ``[..., lat, lon]`` of ``sum a_lm Y_lm`` from coefficients
        ``[..., 2, m, l]`` (`coefficients`' layout; ``l < m`` and the ``m = 0`` sine ignored)."""
        a = np.asarray(coefficients, dtype=np.float64)
        rows = np.einsum("...cml,mlj->...cmj", a, self.legendre)
        return np.einsum("...cmj,cmk->...jk", rows, self.waves)

    def power(self, field: np.ndarray) -> np.ndarray:
        """Power per degree ``[..., degree]`` of ``field[..., lat, lon]``: ``S_l = sum_m a_lm^2 /
        (4 pi)``, the degree's share of the sphere's mean of ``field^2`` (units of field^2)."""
        a = self.coefficients(field)
        return np.sum(a * a, axis=(-3, -2)) / (4.0 * np.pi)
