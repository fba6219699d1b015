"""The standard train / validation / test periods of the simulated archive.

Each split is its own simulation with its own seed, so no weather of the test years is ever seen
in training: after the spin-up the runs share the climate but not the weather.
"""

from __future__ import annotations

import numpy as np

from weather.sim.simulate import RunSpec

SPLITS: dict[str, RunSpec] = {
    "train": RunSpec(start=np.datetime64("1979-01-01"), days=3652, seed=1, chunk_days=10),
    "val": RunSpec(start=np.datetime64("1990-01-01"), days=365, seed=2, chunk_days=10),
    "test": RunSpec(start=np.datetime64("1991-01-01"), days=730, seed=3, chunk_days=10),
}
