"""Spread against skill per band of degrees, on ensembles built from single harmonics."""

from __future__ import annotations

import numpy as np
import pytest
from support import real_harmonic

from weather.data.harmonics import SphericalTransform
from weather.scoring.spectra import spread_skill_by_degree

# WeatherBench2's 5.625 deg grid: 32 rows without poles, 64 columns from 0 E; the rows are
# given north to south and the columns start at 2.8 E to check that neither order nor the first
# longitude matters.
LAT = np.linspace(87.1875, -87.1875, 32)
LON = np.arange(64) * 5.625 + 2.8125


@pytest.fixture(scope="module")
def transform() -> SphericalTransform:
    return SphericalTransform.build(LAT, LON)


def test_spread_skill_by_degree_hand_answer(transform):
    # Two members A + c B and A - c B about a truth of 0, A = Y_20 and B = Y_5,-3: the mean is
    # A (error power 1 / (4 pi), degree 2), the deviations +-c B (unbiased variance
    # 2 c^2 / (4 pi), degree 5).
    c = 0.7
    a, b = real_harmonic(LAT, LON, 2, 0), real_harmonic(LAT, LON, 5, -3)
    ensemble = np.stack([a + c * b, a - c * b])[None]  # member axis 1 of [1, 2, lat, lon]
    truth = np.zeros((1, 32, 64))
    spread2, error2, ratio = spread_skill_by_degree(
        transform, ensemble, truth, [(0, 3), (4, 7), (0, 31)], member_axis=1
    )
    four_pi = 4.0 * np.pi
    np.testing.assert_allclose(
        spread2[0], [0.0, 2 * c * c / four_pi, 2 * c * c / four_pi], atol=1e-12
    )
    np.testing.assert_allclose(error2[0], [1 / four_pi, 0.0, 1 / four_pi], atol=1e-12)
    # Over all degrees: sqrt((M + 1) / M * spread2 / error2) = sqrt(1.5 * 2 c^2) = sqrt(3) c.
    np.testing.assert_allclose(ratio[0, 2], np.sqrt(3.0) * c, rtol=1e-10)
    # Bands holding only the error / only the spread: ratio ~0 / huge (rounding leaves ~1e-33).
    assert ratio[0, 0] < 1e-6 and ratio[0, 1] > 1e6
    with pytest.raises(ValueError, match="need at least 2 members"):
        spread_skill_by_degree(transform, ensemble[:, :1], truth, [(0, 3)], member_axis=1)
    with pytest.raises(ValueError, match=r"bands: \(4, 40\)"):
        spread_skill_by_degree(transform, ensemble, truth, [(4, 40)], member_axis=1)
