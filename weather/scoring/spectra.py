"""Spherical-harmonic power spectra of fields on a latitude-longitude grid, and ensemble spread
against error per total wavenumber.

The transform is `weather.data.harmonics.SphericalTransform`; ``S_l`` is the power of degree
``l`` (the degree's share of the sphere's mean of ``f^2``). Degree ``l`` has a half wavelength
of about ``20000 km / l``: the planetary waves sit at ``l <= 3``, the large synoptic scales at
4-7, the synoptic eddies at 8-15, the 5.625 deg grid's finest scales above.

Spread against skill per degree (`spread_skill_by_degree`): the ensemble variance and the
ensemble-mean error are both sums over degrees, so

    spread/skill(l) = sqrt((M + 1) / M * var_l / S_l(mean - truth)),
    var_l = M / (M - 1) * mean over members of S_l(x_m - mean),

is the usual spread/skill ratio restricted to one band of scales (1: calibrated there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from weather.data.harmonics import SphericalTransform


def spread_skill_by_degree(
    transform: SphericalTransform,
    ensemble: np.ndarray,
    truth: np.ndarray,
    bands: Sequence[tuple[int, int]],
    *,
    member_axis: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spread, ensemble-mean error and their ratio per band of degrees.

    Args:
      transform: the grid's `SphericalTransform`.
      ensemble: ``[..., lat, lon]`` with ``member_axis`` the members (at least 2).
      truth: the truth, ``ensemble``'s shape without the member axis.
      bands: inclusive ``(first, last)`` degree ranges.

    Returns:
      ``(spread2, error2, ratio)``, each ``[..., band]``: the unbiased ensemble variance
      (``M / (M - 1)`` times the members' mean power about their mean) and the squared error
      of the ensemble mean, both as the band's share of the sphere's mean square (units of
      field^2, not averaged over anything else), and ``sqrt((M + 1) / M * spread2 / error2)``.
    """
    ens = np.moveaxis(np.asarray(ensemble, dtype=np.float64), member_axis, 0)
    members = ens.shape[0]
    if members < 2:
        raise ValueError(f"ensemble: need at least 2 members along axis {member_axis}")
    truth = np.asarray(truth, dtype=np.float64)
    if truth.shape != ens.shape[1:]:
        raise ValueError(f"truth: expected shape {ens.shape[1:]}, got {truth.shape}")
    for first, last in bands:
        if not 0 <= first <= last <= transform.max_degree:
            raise ValueError(f"bands: ({first}, {last}) is not within 0..{transform.max_degree}")
    mean = ens.mean(axis=0)
    spread_power = transform.power(ens - mean).mean(axis=0) * members / (members - 1)
    error_power = transform.power(mean - truth)

    def banded(power: np.ndarray) -> np.ndarray:
        return np.stack([power[..., a : b + 1].sum(axis=-1) for a, b in bands], axis=-1)

    spread2, error2 = banded(spread_power), banded(error_power)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt((members + 1) / members * spread2 / error2)
    return spread2, error2, ratio
