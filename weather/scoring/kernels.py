"""Probabilistic scores of an ensemble against a truth, as pure `jax.numpy` kernels.

Every kernel takes an ensemble array with the member axis at ``axis`` (default 0) and a truth
array shaped like the ensemble without that axis (or broadcastable to it), and returns one score
per point: the ensemble's shape with the member axis removed. M is the ensemble size, known from
the shape. No kernel averages over points; callers (`weather.scoring.metrics`) weight and average.

NaN policy: a point where the truth or any member is NaN scores NaN. Nothing is skipped
silently; skipping is a decision the caller makes when averaging (``skipna`` in
`weather.scoring.metrics`). Scores whose unbiased form needs two members (fair CRPS, fair Brier,
fair energy score, ensemble variance) are NaN everywhere for M = 1.

Integer inputs are promoted to float32; float64 inputs stay float64 only when jax runs with x64
enabled.

References: Gneiting & Raftery (2007) for the CRPS and energy score as skill minus half the
spread; Ferro (2014) and Zamo & Naveau (2018) for the fair (ensemble-size unbiased) forms;
Fortin et al. (2014) for the spread/skill ratio's finite-ensemble correction sqrt((M + 1) / M).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def _as_float(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _members_first(ensemble: ArrayLike, truth: ArrayLike, axis: int) -> tuple[jax.Array, jax.Array]:
    """Ensemble as [M, ...] and truth as [1, ...], both floating point."""
    ens = _as_float(ensemble)
    if ens.ndim == 0:
        raise ValueError("ensemble must have a member axis")
    ens = jnp.moveaxis(ens, axis, 0)
    y = _as_float(truth)
    dtype = jnp.promote_types(ens.dtype, y.dtype)
    return ens.astype(dtype), y.astype(dtype)[None]


def _invalid(ens: jax.Array, y: jax.Array) -> jax.Array:
    """Points [...] where the truth or any member of ``ens`` [M, ...] is NaN."""
    return jnp.any(jnp.isnan(ens), axis=0) | jnp.isnan(y[0])


def _nan_where(invalid: jax.Array, score: jax.Array) -> jax.Array:
    return jnp.where(invalid, jnp.nan, score)


def _pairwise_abs_sum(ens: jax.Array) -> jax.Array:
    """sum_{i,j} |x_i - x_j| over the members of ``ens`` [M, ...], in O(M log M).

    For members sorted ascending, x_(1) <= ... <= x_(M), each x_(k) is the larger of a pair k - 1
    times and the smaller M - k times, so the double sum is 2 sum_k (2k - M - 1) x_(k).
    """
    m = ens.shape[0]
    k = jnp.arange(1, m + 1, dtype=ens.dtype)
    coeff = (2 * k - m - 1).reshape((m,) + (1,) * (ens.ndim - 1))
    return 2 * jnp.sum(coeff * jnp.sort(ens, axis=0), axis=0)


@functools.partial(jax.jit, static_argnames=("axis", "fair"))
def crps_components(
    ensemble: ArrayLike, truth: ArrayLike, axis: int = 0, fair: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Skill and spread parts of the ensemble CRPS, so that CRPS = skill - spread / 2.

    skill = (1/M) sum_i |X_i - y| (the mean absolute error of the members);
    spread = mean |X_i - X_j| over pairs: over i != j, sum / (M (M - 1)), when ``fair``, else over
    all i, j, sum / M^2. The pairwise sum is computed by sorting, O(M log M).

    Args:
      ensemble: [..., M (at ``axis``), ...] members.
      truth: the ensemble's shape without the member axis.
      axis: the member axis of ``ensemble``.
      fair: the unbiased spread (NaN for M = 1) or the empirical-distribution one.

    Returns:
      (skill, spread), each shaped like ``truth``; NaN where the truth or any member is NaN.
    """
    ens, y = _members_first(ensemble, truth, axis)
    m = ens.shape[0]
    invalid = _invalid(ens, y)
    skill = jnp.mean(jnp.abs(ens - y), axis=0)
    pairs = _pairwise_abs_sum(ens)
    if fair:
        spread = pairs / (m * (m - 1)) if m > 1 else jnp.full_like(pairs, jnp.nan)
    else:
        spread = pairs / (m * m)
    return _nan_where(invalid, skill), _nan_where(invalid, spread)


def crps_fair(ensemble: ArrayLike, truth: ArrayLike, axis: int = 0) -> jax.Array:
    """Fair (ensemble-size unbiased) CRPS per point.

    CRPS_fair = (1/M) sum_i |X_i - y| - 1 / (2 M (M - 1)) sum_{i != j} |X_i - X_j|.
    Its expectation over ensembles drawn from a distribution F equals CRPS(F, y) for any M >= 2.
    Undefined for M = 1: returns NaN everywhere. NaN where the truth or any member is NaN.
    """
    skill, spread = crps_components(ensemble, truth, axis=axis, fair=True)
    return skill - 0.5 * spread


def crps_standard(ensemble: ArrayLike, truth: ArrayLike, axis: int = 0) -> jax.Array:
    """CRPS of the ensemble's empirical distribution per point.

    CRPS = (1/M) sum_i |X_i - y| - 1 / (2 M^2) sum_{i, j} |X_i - X_j|; the absolute error for
    M = 1. Biased high for small M (by E|X - X'| / (2M)). NaN where the truth or any member is NaN.
    """
    skill, spread = crps_components(ensemble, truth, axis=axis, fair=False)
    return skill - 0.5 * spread


@functools.partial(jax.jit, static_argnames=("axis",))
def ensemble_mean(ensemble: ArrayLike, axis: int = 0) -> jax.Array:
    """Mean over members; NaN where any member is NaN."""
    return jnp.mean(_as_float(ensemble), axis=axis)


@functools.partial(jax.jit, static_argnames=("axis",))
def ensemble_variance(ensemble: ArrayLike, axis: int = 0) -> jax.Array:
    """Unbiased variance over members (ddof = 1); NaN for M = 1 and where any member is NaN."""
    ens = jnp.moveaxis(_as_float(ensemble), axis, 0)
    m = ens.shape[0]
    if m < 2:
        return jnp.full(ens.shape[1:], jnp.nan, ens.dtype)
    return jnp.var(ens, axis=0, ddof=1)


@functools.partial(jax.jit, static_argnames=("axis",))
def spread_skill_components(
    ensemble: ArrayLike, truth: ArrayLike, axis: int = 0
) -> tuple[jax.Array, jax.Array]:
    """Per-point pieces of the spread/skill ratio, to be averaged before taking the ratio.

    Returns:
      (squared_error, variance): (mean_i X_i - y)^2 and the unbiased ensemble variance, each shaped
      like ``truth``; NaN where the truth or any member is NaN (variance NaN for M = 1).
    """
    ens, y = _members_first(ensemble, truth, axis)
    invalid = _invalid(ens, y)
    squared_error = (jnp.mean(ens, axis=0) - y[0]) ** 2
    variance = ensemble_variance(ens, axis=0)
    return _nan_where(invalid, squared_error), _nan_where(invalid, variance)


def spread_skill_ratio(
    mean_variance: ArrayLike, mean_squared_error: ArrayLike, ensemble_size: int
) -> jax.Array:
    """Spread/skill ratio from averaged pieces, with the finite-ensemble correction.

    ratio = sqrt((M + 1) / M) * sqrt(mean variance) / sqrt(mean squared error of the ensemble
    mean). For truth and members exchangeable (a perfectly calibrated ensemble), E[(mean - y)^2]
    = (M + 1) / M * E[variance], so the corrected ratio is 1 in expectation for any M.

    Args:
      mean_variance: the (area-, time-) averaged unbiased ensemble variance.
      mean_squared_error: the same average of the squared error of the ensemble mean.
      ensemble_size: M.
    """
    if ensemble_size < 1:
        raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
    correction = math.sqrt((ensemble_size + 1) / ensemble_size)
    return correction * jnp.sqrt(_as_float(mean_variance) / _as_float(mean_squared_error))


@functools.partial(jax.jit, static_argnames=("axis",))
def truth_rank(ensemble: ArrayLike, truth: ArrayLike, key: jax.Array, axis: int = 0) -> jax.Array:
    """Rank of the truth among the members, 0..M, per point (float, NaN at invalid points).

    The rank is the number of members below the truth; members equal to the truth (ties) are
    split at random: the truth ranks uniformly among them, drawn with ``key``. So for a
    calibrated ensemble the ranks are uniform on 0..M even for discrete variables. The draws
    depend only on ``key`` and the array's shape, so results are reproducible.

    Args:
      ensemble: [..., M (at ``axis``), ...] members.
      truth: the ensemble's shape without the member axis.
      key: a `jax.random` key for breaking ties.
      axis: the member axis of ``ensemble``.

    Returns:
      Ranks shaped like the points; NaN where the truth or any member is NaN.
    """
    ens, y = _members_first(ensemble, truth, axis)
    invalid = _invalid(ens, y)
    below = jnp.sum(ens < y, axis=0)
    ties = jnp.sum(ens == y, axis=0)
    shape = jnp.broadcast_shapes(below.shape, ties.shape)
    offset = jax.random.randint(key, shape, 0, ties + 1)
    return _nan_where(invalid, (below + offset).astype(ens.dtype))


def rank_histogram_counts(
    ensemble: ArrayLike,
    truth: ArrayLike,
    key: jax.Array,
    axis: int = 0,
    skipna: bool = False,
) -> jax.Array:
    """Counts [M + 1] of the truth's rank (see `truth_rank`) over all points.

    Points where the truth or any member is NaN make every count NaN, unless ``skipna``, which
    leaves them out of the counts.
    """
    m = jnp.shape(ensemble)[axis]
    ranks = truth_rank(ensemble, truth, key, axis=axis)
    return _count_ranks(ranks, m, skipna)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _count_ranks(ranks: jax.Array, m: int, skipna: bool) -> jax.Array:
    ranks = ranks.reshape(-1)
    counts = jnp.sum(ranks[:, None] == jnp.arange(m + 1, dtype=ranks.dtype), axis=0)
    counts = counts.astype(ranks.dtype)
    if skipna:
        return counts
    return _nan_where(jnp.any(jnp.isnan(ranks)), counts)


def _brier_parts(
    ensemble: ArrayLike, truth: ArrayLike, threshold: ArrayLike, axis: int
) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    ens, y = _members_first(ensemble, truth, axis)
    t = _as_float(threshold).astype(ens.dtype)
    invalid = _invalid(ens, y)
    p = jnp.mean((ens > t).astype(ens.dtype), axis=0)
    o = (y[0] > t).astype(ens.dtype)
    return p, o, invalid, ens.shape[0]


@functools.partial(jax.jit, static_argnames=("axis",))
def brier_standard(
    ensemble: ArrayLike, truth: ArrayLike, threshold: ArrayLike, axis: int = 0
) -> jax.Array:
    """Brier score of the event x > threshold, with p = k / M the fraction of members above.

    BS = (p - o)^2 with o = 1 if the truth exceeds the threshold, else 0. Integrated over all
    thresholds it equals `crps_standard`. ``threshold`` broadcasts against ``truth`` (a scalar,
    or e.g. a per-point climatological quantile). NaN where the truth or any member is NaN.
    """
    p, o, invalid, _ = _brier_parts(ensemble, truth, threshold, axis)
    return _nan_where(invalid, (p - o) ** 2)


@functools.partial(jax.jit, static_argnames=("axis",))
def brier_fair(
    ensemble: ArrayLike, truth: ArrayLike, threshold: ArrayLike, axis: int = 0
) -> jax.Array:
    """Fair (ensemble-size unbiased) Brier score of the event x > threshold.

    BS_fair = (p - o)^2 - p (1 - p) / (M - 1), with p = k / M. Integrated over all thresholds it
    equals `crps_fair`. NaN everywhere for M = 1, and where the truth or any member is NaN.
    """
    p, o, invalid, m = _brier_parts(ensemble, truth, threshold, axis)
    if m < 2:
        return jnp.full(jnp.broadcast_shapes(p.shape, o.shape), jnp.nan, p.dtype)
    return _nan_where(invalid, (p - o) ** 2 - p * (1 - p) / (m - 1))


def energy_score(
    ensemble: ArrayLike,
    truth: ArrayLike,
    axis: int = 0,
    feature_axes: Sequence[int] = (-1,),
    weights: ArrayLike | None = None,
    fair: bool = True,
) -> jax.Array:
    """Energy score of an ensemble of vectors: the multivariate generalisation of the CRPS.

    ES = (1/M) sum_i ||X_i - y|| - 1 / (2 M (M - 1)) sum_{i != j} ||X_i - X_j|| when ``fair``
    (NaN for M = 1), else with 1 / (2 M^2) over all pairs. With one feature and unit weight it
    equals the CRPS exactly (`crps_fair` or `crps_standard`). The pairwise sum is O(M^2) vector
    norms, computed one member at a time, so memory stays O(M x features).

    Args:
      ensemble: members with the member axis at ``axis`` and the vector's components along
        ``feature_axes`` (axes of ``ensemble``; e.g. variable, latitude, longitude).
      truth: the ensemble's shape without the member axis.
      axis: the member axis of ``ensemble``.
      feature_axes: axes of ``ensemble`` that form the vector (not including ``axis``).
      weights: optional non-negative weights broadcastable to the feature shape (the sizes of
        ``feature_axes`` in the order given): ||v|| = sqrt(sum_f w_f v_f^2). Default: all 1.
      fair: the unbiased form or the empirical-distribution one.

    Returns:
      One score per remaining point: ``ensemble``'s shape without the member and feature axes;
      NaN where the truth or any member is NaN at any feature.
    """
    return _energy_score(ensemble, truth, axis, tuple(feature_axes), weights, fair)


@functools.partial(jax.jit, static_argnums=(2, 3, 5))
def _energy_score(
    ensemble: ArrayLike,
    truth: ArrayLike,
    axis: int,
    feature_axes: tuple[int, ...],
    weights: ArrayLike | None,
    fair: bool,
) -> jax.Array:
    ens = _as_float(ensemble)
    nd = ens.ndim
    axis = axis % nd
    features = tuple(a % nd for a in feature_axes)
    if axis in features or len(set(features)) != len(features):
        raise ValueError(f"feature_axes {feature_axes} must be distinct and exclude axis {axis}")
    y = jnp.expand_dims(_as_float(truth), axis)
    y = jnp.broadcast_to(y, (*ens.shape[:axis], 1, *ens.shape[axis + 1 :]))
    nf = len(features)
    ens = jnp.moveaxis(ens, (axis, *features), (0, *range(nd - nf, nd)))
    y = jnp.moveaxis(y, (axis, *features), (0, *range(nd - nf, nd)))
    feature_shape = ens.shape[nd - nf :]
    ens = ens.reshape((*ens.shape[: nd - nf], -1))
    y = y.reshape((*y.shape[: nd - nf], -1)).astype(ens.dtype)
    if weights is None:
        w = jnp.ones((1,), ens.dtype)
    else:
        w = jnp.broadcast_to(_as_float(weights), feature_shape).reshape(-1).astype(ens.dtype)

    def norm(v: jax.Array) -> jax.Array:
        return jnp.sqrt(jnp.sum(w * v * v, axis=-1))

    m = ens.shape[0]
    invalid = jnp.any(jnp.isnan(ens), axis=(0, -1)) | jnp.any(jnp.isnan(y), axis=(0, -1))
    skill = jnp.mean(norm(ens - y), axis=0)
    pairs = jnp.sum(jax.lax.map(lambda x_i: jnp.sum(norm(ens - x_i), axis=0), ens), axis=0)
    if fair:
        if m < 2:
            return jnp.full(skill.shape, jnp.nan, skill.dtype)
        score = skill - pairs / (2 * m * (m - 1))
    else:
        score = skill - pairs / (2 * m * m)
    return _nan_where(invalid, score)
