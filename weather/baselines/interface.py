"""One interface for every forecaster that evaluation runs: the diffusion model and the baselines.

A forecaster says how much analysis history it reads before each init time (`history`) and
makes one init time's ensemble (`forecast`), in the forecast layout (`weather.data.layout`),
optionally into a Zarr store. `weather.evaluation` runs them all alike.

- `Persistence`, `Climatology`: drawn from archives (`weather.baselines.statistical`);
- `PhysicsEnsemble`, `PerfectModel`: the simulator's ensembles (`weather.baselines.physics`);
- `DiffusionModel`: a checkpoint (`weather.forecast`), compiled once and reused across inits.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from weather.data.errors import ArchiveError
from weather.data.times import STEP

if TYPE_CHECKING:
    from weather.baselines.physics import PerfectModelConfig, PhysicsEnsembleConfig
    from weather.model.sampler import SamplerOverride

# Chunks of stores written from an in-memory forecast: one init time and one lead each, as the
# streaming writer makes them.
STORE_CHUNKS = {"member": -1, "init_time": 1, "lead_time": 1}


@runtime_checkable
class EnsembleForecaster(Protocol):
    """What evaluation asks of a forecaster."""

    def history(self, members: int) -> np.timedelta64:
        """How far before each init time it reads analyses (timedelta64)."""
        ...

    def forecast(
        self,
        archive: xr.Dataset,
        init_time: np.datetime64,
        lead_times: np.ndarray,
        members: int,
        seed: int,
        out: Path | None = None,
    ) -> xr.Dataset:
        """One init time's ensemble ``[member, init_time=1, lead_time, (level,) lat, lon]``.

        Args:
          archive: the analysis archive (canonical, `weather.data.reader.open_archive`).
          init_time: the initial time (UTC).
          lead_times: ``[S]`` timedelta64 leads, 12 h, 24 h, ... (contiguous from 12 h).
          members: ensemble size (forecasters with a fixed size, persistence, ignore it).
          seed: the forecast's seed.
          out: a Zarr store to write (must not exist), or None to return it in memory.
        """
        ...


def _write(ds: xr.Dataset, out: Path | None) -> xr.Dataset:
    if out is None:
        return ds
    ds.chunk(STORE_CHUNKS).to_zarr(out, zarr_format=3, consolidated=False, mode="w-")
    return xr.open_zarr(out, consolidated=False)


def _longest(lead_times: np.ndarray) -> np.timedelta64:
    """The last lead, after checking the leads are 12 h, 24 h, ... (what the model and the
    simulators make)."""
    leads = np.asarray(lead_times).astype("timedelta64[ns]")
    expected = (STEP * np.arange(1, leads.size + 1)).astype("timedelta64[ns]")
    if not np.array_equal(leads, expected):
        raise ValueError("lead_times: forecasts run every 12 h from 12 h")
    return leads[-1]


@dataclasses.dataclass(frozen=True)
class Persistence:
    """The analysis at the init time for every lead (one member, whatever ``members``)."""

    def history(self, members: int) -> np.timedelta64:
        return np.timedelta64(0, "h")

    def forecast(
        self,
        archive: xr.Dataset,
        init_time: np.datetime64,
        lead_times: np.ndarray,
        members: int,
        seed: int,
        out: Path | None = None,
    ) -> xr.Dataset:
        from weather.baselines.statistical import persistence

        return _write(persistence(archive, [init_time], list(lead_times)), out)


@dataclasses.dataclass(frozen=True, eq=False)
class Climatology:
    """Members drawn from whole years of training archives at the valid time's time of year
    (`weather.baselines.statistical.climatology_ensemble`).

    Attributes:
      archive: the training archives (canonical, joined along time).
      years: the whole calendar years drawn from (`Climatology.of` finds them).
    """

    archive: xr.Dataset
    years: tuple[int, ...]

    @classmethod
    def of(cls, archive: xr.Dataset) -> Climatology:
        """Draw from every whole calendar year that ``archive`` holds.

        Raises:
          ArchiveError: it holds none.
        """
        from weather.baselines.statistical import whole_years

        years = whole_years(archive["time"].values)
        if not years:
            raise ArchiveError("climatology archive: holds no whole calendar year")
        return cls(archive, tuple(years))

    def history(self, members: int) -> np.timedelta64:
        return np.timedelta64(0, "h")

    def forecast(
        self,
        archive: xr.Dataset,
        init_time: np.datetime64,
        lead_times: np.ndarray,
        members: int,
        seed: int,
        out: Path | None = None,
    ) -> xr.Dataset:
        from weather.baselines.statistical import climatology_ensemble

        ds = climatology_ensemble(
            self.archive,
            [init_time],
            list(lead_times),
            members=members,
            years=self.years,
            seed=seed,
        )
        return _write(ds, out)


@dataclasses.dataclass(frozen=True)
class PhysicsEnsemble:
    """The T21 physics ensemble from perturbed analyses (`weather.baselines.physics`), our
    stand-in for ECMWF's ENS.

    Attributes:
      method: initial perturbations (`weather.baselines.physics.METHODS`).
      config: model and perturbation settings (None: `PhysicsEnsembleConfig()`, T21 L8).
    """

    method: str = "bred"
    config: PhysicsEnsembleConfig | None = None

    def history(self, members: int) -> np.timedelta64:
        # Bred vectors start breeding_cycles * breeding_hours before the init, lagged members
        # (members - 1) * lag_hours before it.
        from weather.baselines.physics import PhysicsEnsembleConfig, needed_times

        init = np.datetime64(0, "h")
        needed = needed_times(init, self.method, members, self.config or PhysicsEnsembleConfig())
        return init - min(needed)

    def forecast(
        self,
        archive: xr.Dataset,
        init_time: np.datetime64,
        lead_times: np.ndarray,
        members: int,
        seed: int,
        out: Path | None = None,
    ) -> xr.Dataset:
        from weather.baselines.physics import physics_ensemble

        return physics_ensemble(
            archive,
            [init_time],
            _longest(lead_times),
            members,
            method=self.method,
            seed=seed,
            config=self.config,
            out=out,
        )


@dataclasses.dataclass(frozen=True)
class PerfectModel:
    """The perfect-model ensemble: the truth's own simulator (read from the archive's
    ``simulation_config``), the scales the analysis lacks drawn at random.

    Attributes:
      config: truncation and unresolved spectrum (None: `PerfectModelConfig()`).
    """

    config: PerfectModelConfig | None = None

    def history(self, members: int) -> np.timedelta64:
        return np.timedelta64(0, "h")

    def forecast(
        self,
        archive: xr.Dataset,
        init_time: np.datetime64,
        lead_times: np.ndarray,
        members: int,
        seed: int,
        out: Path | None = None,
    ) -> xr.Dataset:
        from weather.baselines.physics import perfect_model_ensemble

        return perfect_model_ensemble(
            archive,
            [init_time],
            _longest(lead_times),
            members,
            seed=seed,
            config=self.config,
            out=out,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionModel:
    """The diffusion model of a checkpoint, loaded and compiled once, reused for every init.

    Attributes:
      checkpoint: the checkpoint file.
      sampler: changes to its sampler (None: its own).
    """

    checkpoint: Path
    sampler: SamplerOverride | None = None

    @functools.cached_property
    def _loaded(self) -> tuple[Any, Any]:
        from weather.forecast import load_forecaster
        from weather.model.rollout import Roller

        model = load_forecaster(self.checkpoint, sampler=self.sampler)
        return model, Roller(model.forecaster)

    def history(self, members: int) -> np.timedelta64:
        return STEP  # its input at init - 12 h

    def forecast(
        self,
        archive: xr.Dataset,
        init_time: np.datetime64,
        lead_times: np.ndarray,
        members: int,
        seed: int,
        out: Path | None = None,
    ) -> xr.Dataset:
        from weather.forecast import forecast

        model, roller = self._loaded
        return forecast(
            model,
            archive,
            init_time=init_time,
            lead=_longest(lead_times),
            members=members,
            seed=seed,
            roller=roller,
            out=out,
        )


__all__ = [
    "STORE_CHUNKS",
    "Climatology",
    "DiffusionModel",
    "EnsembleForecaster",
    "PerfectModel",
    "Persistence",
    "PhysicsEnsemble",
]
