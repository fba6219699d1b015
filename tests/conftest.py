"""Shared fixtures, built by `support`: the synthetic archive, the simulated truth, statistics."""

from __future__ import annotations

import pytest
import xarray as xr
from support import SIMULATED_START, simulated_archive, synthetic_archive


@pytest.fixture(scope="session")
def simulated_truth() -> xr.Dataset:
    """`simulated_archive` from `SIMULATED_START`, 12 times (6 days), made once per session.

    Shared because it costs about half a minute on 2 cores (mostly compiling the T21 model,
    which the physics ensembles then reuse).
    """
    return simulated_archive(SIMULATED_START)


@pytest.fixture(scope="session")
def archive() -> xr.Dataset:
    return synthetic_archive()


@pytest.fixture(scope="session")
def statistics(archive):  # type: ignore[no-untyped-def]
    from weather.data.statistics import compute_statistics

    names = [str(v) for v in archive.data_vars]
    return compute_statistics(
        archive, names, start=archive.time.values[0], end=archive.time.values[-1]
    )
