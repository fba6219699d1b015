"""Fully normalised associated Legendre functions, the latitude half of spherical harmonics.

Shared by the model's spherical noise (`weather.model.noise`) and the simulator's spectral
initialisation (`weather.sim.initialise`); plain float64 numpy, tabulated once per grid.
"""

from __future__ import annotations

import numpy as np


def normalized_legendre(max_degree: int, x: np.ndarray) -> np.ndarray:
    """Fully normalised associated Legendre functions, float64 ``[m, l, point]``.

    ``Pbar_l^m(x)`` for ``0 <= m <= l <= max_degree`` (zero where ``l < m``), normalised so that
    ``int_{-1}^{1} Pbar_l^m(x)^2 dx = 1``, without the Condon-Shortley phase. With them the real
    orthonormal spherical harmonics are ``Pbar_l^0 / sqrt(2 pi)`` and
    ``Pbar_l^m [cos | sin](m lon) / sqrt(pi)`` for ``m > 0``.

    Args:
      max_degree: the truncation ``L`` (>= 0).
      x: points in [-1, 1] (``sin(latitude)``), any 1-D array ``[point]``.
    """
    if max_degree < 0:
        raise ValueError(f"max_degree must be >= 0, got {max_degree}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or np.any(np.abs(x) > 1.0):
        raise ValueError("x must be a 1-D array of values in [-1, 1]")
    n = max_degree + 1
    table = np.zeros((n, n, x.size))
    sin_colat = np.sqrt(np.clip(1.0 - x * x, 0.0, None))
    # Sectoral terms: Pbar_m^m = sqrt((2m + 1) / (2m)) sin(colat) Pbar_{m-1}^{m-1}.
    table[0, 0] = np.sqrt(0.5)
    for m in range(1, n):
        table[m, m] = np.sqrt((2 * m + 1) / (2 * m)) * sin_colat * table[m - 1, m - 1]
    m_all = np.arange(n)
    # First off-diagonal: Pbar_{m+1}^m = sqrt(2m + 3) x Pbar_m^m.
    table[m_all[:-1], m_all[:-1] + 1] = (
        np.sqrt(2.0 * m_all[:-1] + 3.0)[:, None] * x * table[m_all[:-1], m_all[:-1]]
    )
    # Three-term recursion in degree, all orders m < l - 1 at once:
    # Pbar_l^m = a_lm (x Pbar_{l-1}^m - b_lm Pbar_{l-2}^m).
    for degree in range(2, n):
        orders = m_all[: degree - 1]
        a = np.sqrt((4.0 * degree**2 - 1.0) / (degree**2 - orders**2))
        b = np.sqrt(((degree - 1.0) ** 2 - orders**2) / (4.0 * (degree - 1.0) ** 2 - 1.0))
        table[orders, degree] = a[:, None] * (
            x * table[orders, degree - 1] - b[:, None] * table[orders, degree - 2]
        )
    return table


__all__ = ["normalized_legendre"]
