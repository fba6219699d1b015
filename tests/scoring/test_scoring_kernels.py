"""Scoring kernels against brute force, closed forms and identities between scores."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from weather.scoring import kernels


@pytest.fixture
def x64():  # type: ignore[no-untyped-def]
    with jax.enable_x64(True):
        yield


def _pairwise_abs(x: np.ndarray) -> np.ndarray:
    """sum_{i,j} |x_i - x_j| over axis 0, by the double loop."""
    m = x.shape[0]
    return sum(np.abs(x[i] - x[j]) for i, j in itertools.product(range(m), range(m)))


def _crps_brute(x: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    m = x.shape[0]
    skill = np.mean(np.abs(x - y), axis=0)
    return skill - _pairwise_abs(x) / (2 * m * (m - 1) if fair else 2 * m * m)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("m", [2, 3, 5, 50])
def test_fast_crps_equals_brute_force_double_sum(m):
    rng = np.random.default_rng(m)
    x = rng.normal(size=(m, 3, 7))
    y = rng.normal(size=(3, 7))
    fair = kernels.crps_fair(x, y)
    assert fair.dtype == np.float64
    np.testing.assert_allclose(fair, _crps_brute(x, y, fair=True), rtol=1e-12)
    np.testing.assert_allclose(
        kernels.crps_standard(x, y), _crps_brute(x, y, fair=False), rtol=1e-12
    )
    # The member axis anywhere gives the same numbers.
    moved = np.moveaxis(x, 0, 2)
    np.testing.assert_allclose(kernels.crps_fair(moved, y, axis=-1), fair, rtol=1e-12)
    skill, spread = kernels.crps_components(x, y)
    np.testing.assert_allclose(skill - spread / 2, fair, rtol=1e-12)
    np.testing.assert_allclose(skill, np.mean(np.abs(x - y), axis=0), rtol=1e-12)


def test_fast_crps_in_float32_is_close_to_float64_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 64)), rng.normal(size=64)
    np.testing.assert_allclose(
        kernels.crps_fair(x.astype("f4"), y.astype("f4")), _crps_brute(x, y, True), atol=2e-6
    )


def test_one_member_standard_crps_is_the_absolute_error_and_fair_forms_are_nan():
    x = np.array([[1.0, -2.0, 3.5]])
    y = np.array([0.5, 0.0, 3.5])
    np.testing.assert_allclose(kernels.crps_standard(x, y), np.abs(x[0] - y))
    assert np.all(np.isnan(kernels.crps_fair(x, y)))
    assert np.all(np.isnan(kernels.brier_fair(x, y, 0.0)))
    assert np.all(np.isnan(kernels.ensemble_variance(x)))
    assert np.all(np.isnan(kernels.energy_score(x, y, feature_axes=(1,))))
    np.testing.assert_allclose(
        kernels.energy_score(x, y, feature_axes=(1,), fair=False), np.linalg.norm(x[0] - y)
    )


@pytest.mark.parametrize("m", [2, 4])
def test_fair_crps_is_unbiased_for_an_ensemble_from_the_truth_distribution(m):
    # y, X_i iid N(0, 1): E|X - y| = E|X - X'| = 2 / sqrt(pi), so E_y CRPS(N(0, 1), y) =
    # E|X - y| - E|X - X'| / 2 = 1 / sqrt(pi); the empirical-distribution CRPS keeps only
    # (M - 1) / M of the spread term, so its expectation is (1 + 1/M) / sqrt(pi).
    n = 100_000
    rng = np.random.default_rng(m)
    x, y = rng.normal(size=(m, n)), rng.normal(size=n)
    expected = 1 / np.sqrt(np.pi)
    for score, target in (
        (kernels.crps_fair(x, y), expected),
        (kernels.crps_standard(x, y), (1 + 1 / m) * expected),
    ):
        values = np.asarray(score, dtype=np.float64)
        standard_error = values.std() / np.sqrt(n)
        assert abs(values.mean() - target) < 4 * standard_error
    bias = float(np.mean(kernels.crps_standard(x, y))) - expected
    assert bias > 0.1 / m  # the standard estimator is visibly biased at small M


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("m", [2, 5, 8])
def test_brier_score_integrated_over_thresholds_equals_crps(m):
    # Both Brier scores are piecewise constant in the threshold between the sorted values of the
    # members and the truth, so a midpoint sum over those intervals integrates them exactly.
    rng = np.random.default_rng(m)
    for _ in range(4):
        x, y = rng.normal(size=m), rng.normal()
        breaks = np.sort(np.append(x, y))
        mids, widths = 0.5 * (breaks[1:] + breaks[:-1]), np.diff(breaks)
        ens = np.broadcast_to(x[:, None], (m, mids.size))
        truth = np.full(mids.size, y)
        for brier, crps in (
            (kernels.brier_standard, kernels.crps_standard),
            (kernels.brier_fair, kernels.crps_fair),
        ):
            integral = np.sum(np.asarray(brier(ens, truth, mids)) * widths)
            assert integral == pytest.approx(float(crps(x[:, None], [y])[0]), rel=1e-12)


def test_brier_scores_by_hand():
    x = np.array([0.0, 1.0, 2.0, 3.0])[:, None]
    # p = 2/4 members above 1.5; the truth is above: (0.5 - 1)^2 = 0.25; fair subtracts
    # p (1 - p) / (M - 1) = 0.25 / 3.
    assert float(kernels.brier_standard(x, [2.0], 1.5)[0]) == pytest.approx(0.25)
    assert float(kernels.brier_fair(x, [2.0], 1.5)[0]) == pytest.approx(0.25 - 0.25 / 3)
    # Thresholds per point, broadcast against the truth.
    np.testing.assert_allclose(
        kernels.brier_standard(np.tile(x, (1, 2)), [2.0, 2.0], [1.5, 5.0]), [0.25, 0.0]
    )


def test_ensemble_mean_variance_and_spread_skill_pieces():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 10)), rng.normal(size=10)
    np.testing.assert_allclose(kernels.ensemble_mean(x), x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(kernels.ensemble_variance(x), x.var(0, ddof=1), rtol=1e-5)
    se, var = kernels.spread_skill_components(x, y)
    np.testing.assert_allclose(se, (x.mean(0) - y) ** 2, rtol=1e-5)
    np.testing.assert_allclose(var, x.var(0, ddof=1), rtol=1e-5)
    ratio = kernels.spread_skill_ratio(2.0, 8.0, 3)
    assert float(ratio) == pytest.approx(np.sqrt(4 / 3) * 0.5)
    with pytest.raises(ValueError, match="ensemble_size"):
        kernels.spread_skill_ratio(1.0, 1.0, 0)


def test_spread_skill_ratio_is_one_for_a_calibrated_ensemble_only_with_the_correction():
    m, n = 5, 100_000
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(m, n)), rng.normal(size=n)
    se, var = kernels.spread_skill_components(x, y)
    ratio = float(kernels.spread_skill_ratio(var.mean(), se.mean(), m))
    assert ratio == pytest.approx(1.0, abs=0.02)
    uncorrected = ratio * np.sqrt(m / (m + 1))
    assert uncorrected == pytest.approx(np.sqrt(m / (m + 1)), abs=0.02)  # about 0.91
    assert uncorrected < 0.94


def _chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(np.sum((counts - expected) ** 2 / expected))


def test_rank_histogram_is_flat_for_a_calibrated_ensemble_and_u_shaped_when_underdispersed():
    m, n = 9, 20_000
    key = jax.random.key(7)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(m, n)), rng.normal(size=n)
    counts = np.asarray(kernels.rank_histogram_counts(x, y, key))
    assert counts.shape == (m + 1,) and counts.sum() == n
    assert _chi_square(counts) < 27.9  # chi-square, 9 degrees of freedom, p = 0.001
    narrow = np.asarray(kernels.rank_histogram_counts(0.5 * x, y, key))
    assert _chi_square(narrow) > 1000
    assert min(narrow[0], narrow[-1]) > 3 * narrow[m // 2]


def test_truth_rank_counts_members_below_and_breaks_ties_at_random():
    x = np.array([1.0, 2.0, 3.0])[:, None] * np.ones(4)
    ranks = kernels.truth_rank(x, np.array([0.0, 1.5, 2.5, 4.0]), jax.random.key(0))
    np.testing.assert_array_equal(ranks, [0, 1, 2, 3])
    # Every member equal to the truth (a dry day for precipitation): ranks uniform on 0..M.
    m, n = 4, 10_000
    ties = kernels.truth_rank(np.zeros((m, n)), np.zeros(n), jax.random.key(1))
    counts = np.bincount(np.asarray(ties).astype(int), minlength=m + 1)
    assert counts.size == m + 1 and _chi_square(counts) < 18.5  # 4 dof, p = 0.001
    again = kernels.truth_rank(np.zeros((m, n)), np.zeros(n), jax.random.key(1))
    np.testing.assert_array_equal(ties, again)  # reproducible with the key


def _energy_brute(x: np.ndarray, y: np.ndarray, w: np.ndarray, fair: bool) -> np.ndarray:
    """x [M, P, F], y [P, F], w [F]."""
    m = x.shape[0]

    def norm(v: np.ndarray) -> np.ndarray:
        return np.sqrt(np.sum(w * v**2, axis=-1))

    skill = np.mean([norm(x[i] - y) for i in range(m)], axis=0)
    pairs = sum(norm(x[i] - x[j]) for i, j in itertools.product(range(m), range(m)))
    return skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


@pytest.mark.usefixtures("x64")
def test_energy_score_equals_brute_force_over_feature_axes():
    rng = np.random.default_rng(3)
    m, p, f1, f2 = 4, 3, 2, 5
    x = rng.normal(size=(f1, m, p, f2))  # members on axis 1, features on axes 0 and 3
    y = rng.normal(size=(f1, p, f2))
    w = rng.uniform(0.5, 1.5, size=(f1, f2))
    flat_x = np.transpose(x, (1, 2, 0, 3)).reshape(m, p, f1 * f2)
    flat_y = np.transpose(y, (1, 0, 2)).reshape(p, f1 * f2)
    for fair in (True, False):
        got = kernels.energy_score(x, y, axis=1, feature_axes=(0, 3), weights=w, fair=fair)
        assert got.shape == (p,)
        np.testing.assert_allclose(got, _energy_brute(flat_x, flat_y, w.reshape(-1), fair))
    with pytest.raises(ValueError, match="feature_axes"):
        kernels.energy_score(x, y, axis=1, feature_axes=(1, 3))


@pytest.mark.usefixtures("x64")
def test_energy_score_of_one_feature_is_the_crps():
    # With ||v|| = |v| and the same 1/2 in front of the spread term, ES_fair = CRPS_fair and
    # ES = CRPS exactly (Gneiting & Raftery 2007, section 4.3).
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 5, 1)), rng.normal(size=(5, 1))
    es = kernels.energy_score(x, y, feature_axes=(-1,))
    np.testing.assert_allclose(es, kernels.crps_fair(x, y)[:, 0], rtol=1e-12)
    np.testing.assert_allclose(
        kernels.energy_score(x, y, feature_axes=(-1,), fair=False),
        kernels.crps_standard(x, y)[:, 0],
        rtol=1e-12,
    )


def test_nan_in_a_member_or_the_truth_makes_that_point_nan_and_only_that_point():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(5, 4)), rng.normal(size=4)
    x[2, 0] = np.nan  # one member at point 0
    y[1] = np.nan  # the truth at point 1
    key = jax.random.key(0)
    per_point = {
        "crps_fair": kernels.crps_fair(x, y),
        "crps_standard": kernels.crps_standard(x, y),
        "skill": kernels.crps_components(x, y)[0],
        "spread": kernels.crps_components(x, y)[1],
        "squared_error": kernels.spread_skill_components(x, y)[0],
        "variance": kernels.spread_skill_components(x, y)[1],
        "rank": kernels.truth_rank(x, y, key),
        "brier_fair": kernels.brier_fair(x, y, 0.0),
        "brier_standard": kernels.brier_standard(x, y, 0.0),
        "energy": kernels.energy_score(x[..., None], y[..., None], feature_axes=(-1,)),
    }
    clean = slice(2, None)
    reference = kernels.crps_fair(x[:, clean], y[clean])
    for name, score in per_point.items():
        score = np.asarray(score)
        assert np.isnan(score[:2]).all(), name
        assert np.isfinite(score[clean]).all(), name
    np.testing.assert_allclose(per_point["crps_fair"][clean], reference)
    # A NaN anywhere in the vector makes the energy score NaN.
    assert np.isnan(kernels.energy_score(x, y, axis=0, feature_axes=(1,)))
    counts = kernels.rank_histogram_counts(x, y, key)
    assert np.isnan(counts).all()
    assert float(kernels.rank_histogram_counts(x, y, key, skipna=True).sum()) == 2


def test_a_point_missing_in_both_a_member_and_the_truth_is_missing():
    # Missing in the ensemble OR the truth: both at once is still missing (not "exactly one").
    x, y = np.ones((3, 2)), np.zeros(2)
    x[1, 0], y[0] = np.nan, np.nan
    # Ranks and exceedance counts compare values (a NaN compares False, giving a finite
    # answer), so these rely on the missing-point mask rather than on NaN arithmetic.
    for score in (
        kernels.crps_fair(x, y),
        kernels.truth_rank(x, y, jax.random.key(0)),
        kernels.brier_fair(x, y, 0.5),
        kernels.brier_standard(x, y, 0.5),
    ):
        assert np.isnan(score[0]) and np.isfinite(score[1])


def test_defaults_and_refusals_of_the_kernel_signatures():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(4, 3, 2)), rng.normal(size=(3, 2))
    # The energy score's vector is the last axis unless told otherwise.
    np.testing.assert_array_equal(
        kernels.energy_score(x, y), kernels.energy_score(x, y, feature_axes=(-1,))
    )
    with pytest.raises(ValueError, match="member axis"):
        kernels.crps_fair(np.float32(1.0), np.float32(1.0))
