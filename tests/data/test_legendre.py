"""Normalised associated Legendre functions against exact quadrature and the addition theorem."""

import numpy as np
import pytest

from weather.data.legendre import normalized_legendre


@pytest.mark.parametrize("n", [8, 32, 47])
def test_legendre_table_is_orthonormal_under_gauss_quadrature(n):
    # Pbar_l^m Pbar_l'^m is a polynomial of degree l + l' <= 2n - 2, which n-point Gauss-Legendre
    # quadrature integrates exactly: the Gram matrix per order m is the identity on l >= m.
    x, w = np.polynomial.legendre.leggauss(n)
    table = normalized_legendre(n - 1, x)
    for m in range(n):
        gram = (table[m] * w) @ table[m].T
        expected = np.zeros((n, n))
        expected[m:, m:] = np.eye(n - m)
        np.testing.assert_allclose(gram, expected, atol=1e-12)


def test_legendre_addition_theorem_at_high_degree_and_poles():
    # sum_m eps_m Pbar_l^m(x)^2 = (2l + 1) / 2 (eps_0 = 1, eps_m = 2) at 1 degree, L = 179,
    # pole rows included: no overflow, no NaN, no lost precision.
    lat = np.linspace(-90.0, 90.0, 181)
    table = normalized_legendre(179, np.sin(np.deg2rad(lat)))
    assert np.all(np.isfinite(table))
    eps = np.where(np.arange(180) == 0, 1.0, 2.0)
    total = np.einsum("m,mlj->lj", eps, table**2)
    expected = (2.0 * np.arange(180) + 1.0)[:, None] / 2.0 * np.ones_like(lat)
    np.testing.assert_allclose(total, expected, rtol=1e-12)
