"""The standard train / validation / test periods of the simulated archive.

Each split is its own simulation with its own seed, so no weather of the test years is ever seen
in training: after the spin-up the runs share the climate but not the weather.
"""

from __future__ import annotations

import numpy as np

from weather.sim.simulate import RunSpec

SPLITS: dict[str, RunSpec] = {
    # Ten training years as two independent five-year runs, so that two processes (one per core)
    # simulate them at once. A one-day gap separates them: no training window (t - 12 h, t,
    # t + 12 h) can straddle the seam between two unrelated atmospheres.
    "train-1": RunSpec(start=np.datetime64("1979-01-01"), days=1826, seed=1, chunk_days=10),
    "train-2": RunSpec(start=np.datetime64("1984-01-02"), days=1826, seed=4, chunk_days=10),
    "val": RunSpec(start=np.datetime64("1990-01-01"), days=365, seed=2, chunk_days=10),
    "test": RunSpec(start=np.datetime64("1991-01-01"), days=730, seed=3, chunk_days=10),
}

# Names that stand for several runs, each with its own store ``<name>.zarr``.
SPLIT_GROUPS: dict[str, tuple[str, ...]] = {"train": ("train-1", "train-2")}


def split_names(name: str) -> tuple[str, ...]:
    """The runs behind a split name: ``train`` -> (``train-1``, ``train-2``); others -> itself."""
    if name in SPLIT_GROUPS:
        return SPLIT_GROUPS[name]
    if name not in SPLITS:
        raise ValueError(f"split: {name!r} is not one of {sorted([*SPLITS, *SPLIT_GROUPS])}")
    return (name,)
