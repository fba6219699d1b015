"""Physics ensembles: the simulator itself as a forecast baseline, in the forecast layout.

Two baselines from the analysis archive (`weather.data.reader.open_archive`), both run by the
dinosaur primitive-equation model that simulates the truth (`weather.sim.dynamics`) and both
started by `weather.sim.initialise` from the coarse (5.625 deg) analysis:

- `physics_ensemble`, our stand-in for ECMWF's ENS: the simulator at the resolution the coarse
  analysis supports (T21 L8, 60 min step by default: cheaper than the truth, and imperfect as
  operational models are), with one of three initial perturbations:

  - ``"noise"``: isotropic Gaussian noise on the sphere added to temperature and vorticity at the
    resolved scales (total wavenumbers 1 to the analysis truncation), white in each and
    independent per layer, scaled to an rms temperature (K) and an rms wind component (m/s);
  - ``"lagged"``: member ``i`` starts from the analysis at ``init - i * lag`` and is run forward,
    so at ``init`` it carries a forecast's error of age ``i * lag`` (member 0 is the analysis);
  - ``"bred"``: bred vectors (Toth & Kalnay 1993). From ``init - cycles * interval`` on, a
    perturbed run and a control run start from each analysis; after every interval their
    difference is rescaled to the target rms temperature and added to the next analysis. The
    last bred vector ``b_j`` gives a pair of members, ``2j = init + b_j`` and
    ``2j + 1 = init - b_j``; each pair breeds from its own seed.

- `perfect_model_ensemble`, the near-upper bound on skill: the truth's own simulator (its
  configuration read from the archive's ``simulation_config`` attribute) at its own resolution,
  started from the analysis truncated at the analysis's truncation, with the unresolved scales
  drawn at random, so that members differ only where the analysis is blind. Their target
  variance at each total wavenumber ``l`` is a power law fitted to the resolved spectrum of the
  same initial state (per layer, over ``fit_range``), tapered by the damping the model's own
  hyper-diffusion filter applies over ``taper_hours`` (6 h reproduces the truth's spectrum, flat
  to the filter's cutoff and falling 50x one wavenumber above it). By default (``"balanced"``)
  the drawn small scales are those a control run regenerates from the same analysis, rescaled
  to the target and turned by a random longitude per member: in balance, they survive the
  first hours, where independent Gaussian coefficients (``"gaussian"``) half radiate away as
  gravity waves (z500 spread 80 vs 45 m2 s-2 at 12 h, measured on the T31 test archive).

Calibration (T31 L10 truth archive, 4 init times, 6 members, z500 ensemble spread over the
ensemble-mean rmse at 12 h / 1 / 3 / 5 days): ``"bred"`` at 1.5 K 1.55 / 1.24 / 0.85 / 0.79
(at 1.0 K 1.00 / 0.83 / 0.61 / 0.62), ``"noise"`` at 1.5 K and 3 m/s 1.00 / 0.74 / 0.41 / 0.42,
``"lagged"`` (6 h) 0.49 / 0.44 / 0.37 / 0.41, the perfect model 0.56 / 0.65 / 0.70 / 0.75
(t850 0.68 / 0.67 / 0.69 / 0.76). Hence the defaults: bred vectors of 1.5 K, the spread
closest to the error in the medium range. Like ENS without stochastic physics, the T21 model's
own error (z500 rmse 170 m2 s-2 at 12 h, against 126 for the perfect model) is not sampled.

Both return (or stream into a Zarr store, one init time at a time) the layout of
`weather.baselines` and `weather.forecast`: dims ``member, init_time, lead_time, [level,]
latitude, longitude``, leads every 12 h from 12 h, float32 in catalogue units, on the archive's
grid and levels. Member ``i`` depends only on the seed, the init time and ``i``, never on the
ensemble size. Members are run one after another: on 2 CPU cores ``vmap`` over 4 T21 members
took 0.32 s per member-day against 0.29 for a loop.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from dinosaur import primitive_equations, spherical_harmonic, time_integration

from weather.data.errors import ArchiveError
from weather.data.grid import equiangular_grid
from weather.data.layout import ForecastLayout, ForecastWriter
from weather.data.times import STEP, TimeLike, format_times, parse_lead, to_datetime64
from weather.data.variables import SIMULATED_LEVEL_VARIABLES, SIMULATED_SURFACE_VARIABLES
from weather.sim.dynamics import HeldSuarezModel, SimulationConfig
from weather.sim.initialise import (
    ANALYSIS_TRUNCATION,
    Analysis,
    Initialiser,
    modal_spectrum,
    pressure_at_geopotential,
    total_wavenumbers,
)
from weather.sim.perturbations import (
    PERTURBED_FIELDS,
    difference,
    draw_unresolved,
    perturbed,
    resolved_noise,
    rotate_zonally,
    temperature_rms,
    unresolved_std,
)
from weather.sim.simulate import get_model

METHODS: tuple[str, ...] = ("noise", "lagged", "bred")
DRAWS: tuple[str, ...] = ("balanced", "gaussian")
VARIABLES: tuple[str, ...] = (*SIMULATED_LEVEL_VARIABLES, *SIMULATED_SURFACE_VARIABLES)

ProgressFn = Callable[[int, int], None]
"""``on_progress(done, total)``, called after each member forecast (``total`` = inits x members)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhysicsEnsembleConfig:
    """The imperfect model of `physics_ensemble` and its initial perturbations.

    Attributes:
      resolution, layers, dt_minutes: the model (`SimulationConfig`); the forcing, orography and
        filter are the truth's when the archive records them.
      truncation: total wavenumber the analysis resolves; initial states and perturbations keep
        temperature, vorticity and divergence up to it.
      temperature_noise: rms of the temperature perturbation (K), ``"noise"`` and ``"bred"``.
      wind_noise: rms of each wind component of the vorticity perturbation (m/s), ``"noise"``
        (and the first breeding seed of ``"bred"``).
      lag_hours: ``"lagged"``: hours between the starts of consecutive members; a multiple of
        the archive's time step.
      breeding_cycles, breeding_hours: ``"bred"``: number and length (h) of breeding cycles.
      surface_pressure: ``"analysis"`` (default): the model's surface pressure is reduced to
        the analysis's orography before it is written (`reduce_surface_pressure`), so that it
        verifies against the truth's surface; ``"model"``: on the model's own (T21-filtered)
        orography, which biases it by hundreds of Pa over mountains (CRPS 761-814 Pa against
        48-398 for the diffusion model on the test years before the reduction).
    """

    resolution: str = "T21"
    layers: int = 8
    dt_minutes: float = 60.0
    truncation: int = ANALYSIS_TRUNCATION
    temperature_noise: float = 1.5
    wind_noise: float = 3.0
    lag_hours: int = 6
    breeding_cycles: int = 4
    breeding_hours: int = 12
    surface_pressure: str = "analysis"

    def __post_init__(self) -> None:
        if self.surface_pressure not in ("analysis", "model"):
            raise ValueError(
                f"surface_pressure: must be 'analysis' or 'model', got {self.surface_pressure!r}"
            )
        if self.truncation < 1:
            raise ValueError(f"truncation: must be >= 1, got {self.truncation}")
        for name in ("temperature_noise", "wind_noise"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite amplitude >= 0, got {value}")
        if self.lag_hours <= 0:
            raise ValueError(f"lag_hours: must be positive, got {self.lag_hours}")
        if self.breeding_cycles < 1:
            raise ValueError(f"breeding_cycles: must be >= 1, got {self.breeding_cycles}")
        if self.breeding_hours <= 0 or (self.breeding_hours * 60) % self.dt_minutes:
            raise ValueError(
                f"breeding_hours: {self.breeding_hours} must be a positive multiple of the "
                f"{self.dt_minutes} min step"
            )
        if (self.lag_hours * 60) % self.dt_minutes:
            raise ValueError(
                f"lag_hours: {self.lag_hours} must be a multiple of the {self.dt_minutes} min step"
            )
        # Raises for an unknown resolution or a step that does not divide 12 h.
        self.simulation(None, (500,), (32, 64))

    def simulation(
        self,
        truth: SimulationConfig | None,
        levels: Sequence[int],
        grid: tuple[int, int],
    ) -> SimulationConfig:
        """The model's `SimulationConfig`: the truth's physics at this resolution, 12 h output."""
        return dataclasses.replace(
            truth or SimulationConfig(),
            resolution=self.resolution,
            layers=self.layers,
            dt_minutes=self.dt_minutes,
            output_hours=12,
            spinup_days=0.0,
            levels=tuple(int(p) for p in levels),
            output_grid=grid,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PerfectModelConfig:
    """The unresolved scales of `perfect_model_ensemble`.

    Attributes:
      truncation: total wavenumber the analysis resolves; members share every coefficient up
        to it and differ above.
      fit_range: total wavenumbers (inclusive) whose spectrum the power law is fitted to;
        default ``(ceil(truncation / 2), truncation - 2)``, below the top few wavenumbers that
        the coarse grid damps.
      taper_hours: the target variance is multiplied by the hyper-diffusion filter's damping
        of variance over this time (h), which cuts the spectrum where the model's own does.
      donor_hours: ``"balanced"`` draws: length of the control run (h) whose regenerated
        small scales are the donor.
      draws: ``"balanced"`` (default) or ``"gaussian"`` (see the module docstring).
    """

    truncation: int = ANALYSIS_TRUNCATION
    fit_range: tuple[int, int] | None = None
    taper_hours: float = 6.0
    donor_hours: int = 48
    draws: str = "balanced"

    def __post_init__(self) -> None:
        if self.truncation < 4:
            raise ValueError(f"truncation: must be >= 4, got {self.truncation}")
        lo, hi = self.degrees
        if not 1 <= lo < hi <= self.truncation:
            raise ValueError(
                f"fit_range: ({lo}, {hi}) must satisfy 1 <= lo < hi <= truncation "
                f"({self.truncation})"
            )
        if not self.taper_hours >= 0:
            raise ValueError(f"taper_hours: must be >= 0, got {self.taper_hours}")
        if self.draws not in DRAWS:
            raise ValueError(f"draws: {self.draws!r} is not one of {list(DRAWS)}")
        if self.donor_hours <= 0:
            raise ValueError(f"donor_hours: must be positive, got {self.donor_hours}")

    @property
    def degrees(self) -> tuple[int, int]:
        """The fit range (inclusive), defaults filled in."""
        if self.fit_range is not None:
            return (int(self.fit_range[0]), int(self.fit_range[1]))
        return (math.ceil(self.truncation / 2), self.truncation - 2)


class EnsembleModel:
    """A `HeldSuarezModel` with what an ensemble needs: initialisation and compiled runs.

    Attributes:
      config: the simulation configuration (its ``output_hours`` is the output step, 12 h).
      model: the shared `HeldSuarezModel` (`weather.sim.simulate.get_model`).
      initialiser: analysis on the archive grid -> model state, truncated at ``truncation``.
    """

    def __init__(
        self,
        config: SimulationConfig,
        latitude: np.ndarray,
        longitude: np.ndarray,
        truncation: int,
    ) -> None:
        if config.output_hours != 12:
            raise ValueError(f"output_hours: ensembles output every 12 h, got {config}")
        self.config = config
        self.model: HeldSuarezModel = get_model(config)
        self.grid: spherical_harmonic.Grid = self.model.coords.horizontal
        self.initialiser = Initialiser.build(self.model, latitude, longitude, truncation)

    @property
    def truncation(self) -> int:
        return self.initialiser.truncation

    def initial_state(self, analysis: Analysis) -> primitive_equations.State:
        """The unperturbed model state at ``analysis.time``."""
        return self.initialiser(analysis)

    def advance(
        self, state: primitive_equations.State, n_outputs: int
    ) -> tuple[primitive_equations.State, dict[str, np.ndarray]]:
        """Integrate ``n_outputs`` 12 h steps: (final state, fields every 12 h).

        Fields are on the archive grid, name -> ``[n_outputs, (level,) lat, lon]`` float32 in SI
        units (``geopotential`` m2 s-2, ``temperature`` K, winds m s-1, ``surface_pressure``
        Pa); output ``k`` is valid ``12 (k + 1)`` h after ``state``.
        """
        step = _compiled_advance(self.model)
        outputs = []
        for _ in range(n_outputs):
            state, fields = step(state, self.config.inner_steps)
            outputs.append(fields)
        host = jax.device_get(outputs)
        return state, {k: np.stack([o[k] for o in host]) for k in host[0]}

    def forecast(self, state: primitive_equations.State, n_outputs: int) -> dict[str, np.ndarray]:
        """The fields of `advance` only."""
        return self.advance(state, n_outputs)[1]

    def run(self, state: primitive_equations.State, hours: float) -> primitive_equations.State:
        """The state ``hours`` later (a whole number of model steps)."""
        steps = hours * 60 / self.config.dt_minutes
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"hours: {hours} h is not a whole number of model steps")
        return _compiled_advance(self.model)(state, round(steps))[0]


@functools.lru_cache(maxsize=8)
def _compiled_advance(model: HeldSuarezModel) -> Callable[..., Any]:
    """``(state, steps) -> (state, archive-grid fields)``, jit-compiled once per simulator.

    The number of steps is traced (a loop, not an unrolled scan), so forecasts of any lead,
    lags and breeding cycles share one program: on 2 cores a T21 compilation costs ~10 s, more
    than a 15-day member. Two ensembles on one configuration share it too.
    """

    def advance(state, steps):
        state = jax.lax.fori_loop(0, steps, lambda _, s: model.step_fn(s), state)
        state = time_integration.maybe_fix_sim_time_roundoff(state, model.dt)
        fields = model._diagnostics(state)
        return state, {k: v for k, v in fields.items() if not k.startswith("native/")}

    return jax.jit(advance)


@functools.lru_cache(maxsize=4)
def _ensemble_model(
    config: SimulationConfig, latitude: tuple[float, ...], longitude: tuple[float, ...], trunc: int
) -> EnsembleModel:
    # Kept so that repeated calls (many init times, the service) reuse compiled programs.
    return EnsembleModel(config, np.asarray(latitude), np.asarray(longitude), trunc)


def _member_key(seed: int, init: np.datetime64, member: int) -> jax.Array:
    hours = int((init - np.datetime64("1970-01-01", "ns")) // np.timedelta64(1, "h"))
    key = jax.random.fold_in(jax.random.PRNGKey(seed), hours % 2**31)
    return jax.random.fold_in(key, member)


# -- member initial states ----------------------------------------------------------------------


def physics_member_states(
    model: EnsembleModel,
    analysis_at: Callable[[np.datetime64], Analysis],
    init: np.datetime64,
    members: int,
    *,
    method: str,
    config: PhysicsEnsembleConfig,
    seed: int,
) -> Iterator[primitive_equations.State]:
    """The initial state of each member at ``init``, in member order.

    Args:
      model: the ensemble's model.
      analysis_at: the analysis at a time (raises `ArchiveError` naming a missing time).
      init: initial time.
      members: ensemble size.
      method: ``"noise"``, ``"lagged"`` or ``"bred"`` (module docstring).
      config: amplitudes, lag and breeding settings.
      seed: the ensemble's seed.
    """
    _check_method(method)
    if method == "noise":
        base = model.initial_state(analysis_at(init))
        for i in range(members):
            if config.temperature_noise == 0 and config.wind_noise == 0:
                yield base
                continue
            noise = resolved_noise(
                _member_key(seed, init, i),
                model.model,
                model.truncation,
                config.temperature_noise,
                config.wind_noise,
            )
            yield perturbed(base, noise)
    elif method == "lagged":
        lag = np.timedelta64(config.lag_hours, "h")
        for i in range(members):
            state = model.initial_state(analysis_at(init - i * lag))
            for _ in range(i):
                state = model.run(state, config.lag_hours)
            yield state
    else:
        hours = config.breeding_hours
        interval = np.timedelta64(hours, "h")
        starts = [
            init - (config.breeding_cycles - c) * interval for c in range(config.breeding_cycles)
        ]
        analyses = [model.initial_state(analysis_at(t)) for t in starts]
        controls = [model.run(s, hours) for s in analyses]
        base = model.initial_state(analysis_at(init))
        for pair in range((members + 1) // 2):
            bred = _bred_vector(model, analyses, controls, _member_key(seed, init, pair), config)
            yield perturbed(base, bred)
            if 2 * pair + 1 < members:
                yield perturbed(base, bred, sign=-1.0)


def _bred_vector(
    model: EnsembleModel,
    analyses: list[primitive_equations.State],
    controls: list[primitive_equations.State],
    key: jax.Array,
    config: PhysicsEnsembleConfig,
) -> dict[str, Any]:
    """Breed from a random seed over the cycles; the last rescaled difference (modal fields)."""
    amplitude = config.temperature_noise
    if amplitude == 0:
        return {k: jnp.zeros_like(getattr(analyses[0], k)) for k in PERTURBED_FIELDS}
    vector: dict[str, Any] = resolved_noise(
        key, model.model, model.truncation, amplitude, config.wind_noise
    )
    for analysis, control in zip(analyses, controls, strict=True):
        grown = model.run(perturbed(analysis, vector), config.breeding_hours)
        vector = difference(grown, control)
        size = temperature_rms(model.model, vector["temperature_variation"])
        if not size > 0:
            raise RuntimeError("bred vector: the perturbation vanished; raise temperature_noise")
        keep = jnp.asarray(total_wavenumbers(model.grid) <= model.truncation, jnp.float32)
        # Rescale every field by one factor (it keeps the perturbation's balance), resolved
        # scales only: the analysis can only carry those.
        vector = {
            k: v * (amplitude / size) * (keep if k != "log_surface_pressure" else 1.0)
            for k, v in vector.items()
        }
    return vector


def perfect_model_member_states(
    model: EnsembleModel,
    analysis: Analysis,
    members: int,
    *,
    config: PerfectModelConfig,
    seed: int,
) -> Iterator[primitive_equations.State]:
    """Member initial states: the truncated analysis plus random unresolved scales.

    ``"gaussian"`` draws are independent normal coefficients with `unresolved_std`.
    ``"balanced"`` draws take the small scales (total wavenumber above the truncation) that a
    control run from the same analysis regenerates in ``config.donor_hours``: in balance with
    each other (vorticity, divergence, temperature), as random draws are not, so they do not
    radiate away as gravity waves in the first hours. Their spectrum is rescaled, per layer and
    wavenumber (at most 3x), to the same target as the Gaussian draws (the model has not
    regenerated all of it in two days), and each member gets them turned by its own random
    longitude and sign (rotation about the axis and a sign change keep the balance).
    """
    base = model.initial_state(analysis)
    std = unresolved_std(
        model.model,
        base,
        truncation=config.truncation,
        fit_range=config.degrees,
        taper_hours=config.taper_hours,
    )
    if config.draws == "gaussian":
        for i in range(members):
            yield perturbed(base, draw_unresolved(_member_key(seed, analysis.time, i), std))
        return
    donor = _balanced_donor(model, base, std, config)
    for i in range(members):
        k_angle, k_sign = jax.random.split(_member_key(seed, analysis.time, i))
        angle = float(jax.random.uniform(k_angle, (), minval=0.0, maxval=2 * np.pi))
        sign = 1.0 if bool(jax.random.bernoulli(k_sign)) else -1.0
        rotated = {k: rotate_zonally(model.grid, v, angle) for k, v in donor.items()}
        yield perturbed(base, rotated, sign=sign)


def _balanced_donor(
    model: EnsembleModel,
    base: primitive_equations.State,
    std: dict[str, np.ndarray],
    config: PerfectModelConfig,
) -> dict[str, np.ndarray]:
    """The small scales of a ``donor_hours`` control run, rescaled to the target spectrum."""
    grid = model.grid
    evolved = model.run(base, config.donor_hours)
    total = total_wavenumbers(grid)
    small = (total > model.truncation) & (total <= grid.total_wavenumbers - 2)
    factors = {}
    for name in ("vorticity", "temperature_variation"):
        have = modal_spectrum(grid, np.asarray(getattr(evolved, name)) * small)
        want = np.sum(std[name] ** 2 * grid.mask, axis=-2)
        ratio = np.sqrt(want / np.maximum(have, np.finfo(np.float64).tiny))
        factors[name] = np.where(have > 0, np.minimum(ratio, 3.0), 0.0)[:, None, :]
    # Divergence keeps its balance with the vorticity: same factor.
    factors["divergence"] = factors["vorticity"]
    return {
        name: np.asarray(getattr(evolved, name), np.float64) * small * factor
        for name, factor in factors.items()
    }


# -- entry points -------------------------------------------------------------------------------


def physics_ensemble(
    archive: xr.Dataset,
    init_times: Sequence[TimeLike],
    lead: str | float | np.timedelta64,
    members: int,
    *,
    method: str = "bred",
    seed: int = 0,
    config: PhysicsEnsembleConfig | None = None,
    variables: Sequence[str] | None = None,
    out: str | Path | None = None,
    on_progress: ProgressFn | None = None,
) -> xr.Dataset:
    """The physics ensemble (ECMWF ENS stand-in): a cheaper simulator from perturbed analyses.

    Args:
      archive: canonical analysis archive (`open_archive`) on an equiangular grid without pole
        rows, with temperature, winds, surface pressure and ``geopotential_at_surface``; its
        ``simulation_config`` attribute, when present, gives the forcing to share.
      init_times: initial times (UTC), each an archive time (``"lagged"`` and ``"bred"`` also
        need earlier ones).
      lead: the longest lead, a multiple of 12 h, at most 15 days (hours, ``"15d"``, ISO).
      members: ensemble size (>= 1).
      method: ``"bred"`` (default), ``"noise"`` or ``"lagged"`` (module docstring).
      seed: the ensemble's seed; member ``i`` is the same for any ensemble size.
      config: model and perturbation settings (`PhysicsEnsembleConfig`).
      variables: names to output, among `VARIABLES`; all when None.
      out: a Zarr store to stream into, one init time at a time (must not exist).
      on_progress: called with (member forecasts done, total) after each member.

    Returns:
      Dataset ``[member, init_time, lead_time, (level,) latitude, longitude]`` float32, leads
      12 h to ``lead``; in memory, or opened lazily from ``out``.

    Raises:
      ValueError: naming ``members``, ``lead``, ``method`` or a config field.
      ArchiveError: naming the init time or variable the archive lacks, or its grid.
    """
    config = config or PhysicsEnsembleConfig()
    _check_method(method)
    run = _prepare(archive, init_times, lead, members, variables)
    needed = {t: needed_times(t, method, members, config) for t in run.inits}
    _check_times(archive, needed)
    levels = tuple(int(p) for p in run.levels)
    simulation = config.simulation(_archive_simulation(archive), levels, run.grid)
    model = _ensemble_model(
        simulation, tuple(run.latitude), tuple(run.longitude), config.truncation
    )
    attrs = {
        "title": f"Physics ensemble (baseline): {config.resolution} L{config.layers}, {method}",
        "method": method,
        "seed": seed,
        "perturbation": json.dumps(dataclasses.asdict(config), sort_keys=True),
        "simulation_config": json.dumps(simulation.to_attrs(), sort_keys=True),
    }
    analyses = _AnalysisCache(archive)

    def states(init: np.datetime64) -> Iterator[primitive_equations.State]:
        return physics_member_states(
            model, analyses, init, members, method=method, config=config, seed=seed
        )

    adjust = None
    if config.surface_pressure == "analysis":
        if "geopotential_at_surface" not in archive:
            raise ArchiveError(
                "variable 'geopotential_at_surface' is missing from the archive; the physics "
                "ensemble needs it to put its surface pressure on the analysis's orography "
                "(or use surface_pressure='model')"
            )
        target = np.asarray(archive["geopotential_at_surface"].values, np.float64)
        own = np.asarray(model.model.surface_geopotential()[0], np.float64)
        levels_pa = np.asarray(levels, np.float64) * 100.0

        def adjust(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {
                **fields,
                "surface_pressure": reduce_surface_pressure(
                    fields["surface_pressure"],
                    fields["geopotential"],
                    fields["temperature"],
                    levels_pa,
                    own,
                    target,
                ),
            }

    return _run_ensemble(run, model, states, attrs, out, on_progress, adjust)


def reduce_surface_pressure(
    surface_pressure: np.ndarray,
    geopotential: np.ndarray,
    temperature: np.ndarray,
    levels_pa: np.ndarray,
    model_surface: np.ndarray,
    target_surface: np.ndarray,
) -> np.ndarray:
    """Surface pressure moved from the model's orography to another one, column by column.

    Each column's pressure-level profile (log-p linear between levels, the standard lapse rate
    below the lowest: `weather.sim.initialise.pressure_at_geopotential`) gives the pressures
    ``p*(phi)`` where it reaches the model's and the target's surface geopotential; the model's
    surface pressure is scaled by their ratio, ``p_s p*(phi_target) / p*(phi_model)``, which
    keeps its small departure from the profile (the inverse of how the initialiser puts an
    analysis on the model's orography). Where the two orographies agree nothing changes.

    Args:
      surface_pressure: ``[time, lat, lon]`` Pa on the model's orography.
      geopotential, temperature: ``[time, level, lat, lon]`` (m2 s-2, K) on ``levels_pa``.
      levels_pa: ``[level]`` Pa, ascending.
      model_surface, target_surface: ``[lat, lon]`` surface geopotential (m2 s-2).

    Returns:
      ``[time, lat, lon]`` float32 Pa on the target orography.
    """
    surface = np.asarray(surface_pressure, np.float64)
    out = np.empty(surface.shape, np.float32)
    for k in range(surface.shape[0]):
        p_model = pressure_at_geopotential(
            geopotential[k], temperature[k], levels_pa, model_surface
        )
        p_target = pressure_at_geopotential(
            geopotential[k], temperature[k], levels_pa, target_surface
        )
        out[k] = surface[k] * p_target / p_model
    return out


def perfect_model_ensemble(
    archive: xr.Dataset,
    init_times: Sequence[TimeLike],
    lead: str | float | np.timedelta64,
    members: int,
    *,
    seed: int = 0,
    config: PerfectModelConfig | None = None,
    simulation: SimulationConfig | None = None,
    variables: Sequence[str] | None = None,
    out: str | Path | None = None,
    on_progress: ProgressFn | None = None,
) -> xr.Dataset:
    """The perfect-model ensemble: the truth's simulator, unseen scales drawn at random.

    Args:
      archive: canonical analysis archive, as for `physics_ensemble`; its
        ``simulation_config`` attribute (written by `weather.sim.simulate`) is the truth's
        simulator unless ``simulation`` is given.
      init_times, lead, members, seed, variables, out, on_progress: as for `physics_ensemble`.
      config: truncation and the unresolved spectrum (`PerfectModelConfig`).
      simulation: the truth's configuration, overriding the archive's attribute.

    Returns:
      Dataset ``[member, init_time, lead_time, (level,) latitude, longitude]`` float32.

    Raises:
      ArchiveError: the archive records no simulator and none is given, or as for
        `physics_ensemble`.
    """
    config = config or PerfectModelConfig()
    run = _prepare(archive, init_times, lead, members, variables)
    _check_times(archive, {t: [t] for t in run.inits})
    truth = simulation or _archive_simulation(archive)
    if truth is None:
        raise ArchiveError(
            "attribute 'simulation_config' is missing from the archive: the perfect-model "
            "ensemble needs the truth's simulator; pass simulation=SimulationConfig(...)"
        )
    simulation = dataclasses.replace(
        truth,
        output_hours=12,
        spinup_days=0.0,
        levels=tuple(int(p) for p in run.levels),
        output_grid=run.grid,
    )
    model = _ensemble_model(
        simulation, tuple(run.latitude), tuple(run.longitude), config.truncation
    )
    attrs = {
        "title": f"Perfect-model ensemble (baseline): {truth.resolution} L{truth.layers}",
        "method": "unresolved scales drawn at random",
        "seed": seed,
        "perturbation": json.dumps(
            {**dataclasses.asdict(config), "fit_range": list(config.degrees)}, sort_keys=True
        ),
        "simulation_config": json.dumps(simulation.to_attrs(), sort_keys=True),
    }
    analyses = _AnalysisCache(archive)

    def states(init: np.datetime64) -> Iterator[primitive_equations.State]:
        return perfect_model_member_states(model, analyses(init), members, config=config, seed=seed)

    return _run_ensemble(run, model, states, attrs, out, on_progress)


# -- shared machinery ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Run:
    inits: np.ndarray
    leads: np.ndarray
    members: int
    names: tuple[str, ...]
    levels: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray

    @property
    def grid(self) -> tuple[int, int]:
        return (self.latitude.size, self.longitude.size)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {list(METHODS)}")


def _prepare(
    archive: xr.Dataset,
    init_times: Sequence[TimeLike],
    lead: str | float | np.timedelta64,
    members: int,
    variables: Sequence[str] | None,
) -> _Run:
    if isinstance(members, bool) or not isinstance(members, int | np.integer) or members < 1:
        raise ValueError(f"members: must be an integer >= 1, got {members!r}")
    total = parse_lead(lead)
    leads = STEP * np.arange(1, int(total // STEP) + 1)
    if isinstance(init_times, str | np.datetime64):
        init_times = [init_times]
    inits = np.array([to_datetime64(t, "init_time") for t in init_times], "datetime64[ns]")
    if inits.size == 0:
        raise ValueError("init_times: at least one initial time is needed")
    if np.unique(inits).size != inits.size:
        raise ValueError(f"init_times: must be distinct, got {format_times(inits)}")
    names = tuple(VARIABLES if variables is None else variables)
    for name in names:
        if name not in VARIABLES:
            raise ValueError(f"variables: {name!r} is not simulated; choose from {list(VARIABLES)}")
    if not names:
        raise ValueError("variables: at least one variable is needed")
    for coord in ("time", "level", "latitude", "longitude"):
        if coord not in archive.coords:
            raise ArchiveError(f"coordinate {coord!r} is missing from the archive")
    latitude = np.asarray(archive["latitude"].values, np.float64)
    longitude = np.asarray(archive["longitude"].values, np.float64)
    expected_lat, expected_lon = equiangular_grid(latitude.size, longitude.size)
    for coord, theirs, mine in (
        ("latitude", latitude, expected_lat),
        ("longitude", longitude, expected_lon),
    ):
        if not np.allclose(theirs, mine, atol=1e-6):
            raise ArchiveError(
                f"coordinate {coord!r}: the simulator writes an equiangular grid without pole "
                f"rows ({latitude.size} x {longitude.size}); the archive's differs"
            )
    levels = np.asarray(archive["level"].values)
    return _Run(
        inits=inits,
        leads=leads.astype("timedelta64[ns]"),
        members=int(members),
        names=names,
        levels=levels,
        latitude=latitude,
        longitude=longitude,
    )


def needed_times(
    init: np.datetime64, method: str, members: int, config: PhysicsEnsembleConfig
) -> list[np.datetime64]:
    """The analysis times an ensemble of `method` started at `init` reads: the init alone
    ("noise"), the lagged inits ("lagged"), or the breeding cycles' starts ("bred")."""
    if method == "lagged":
        lag = np.timedelta64(config.lag_hours, "h")
        return [init - i * lag for i in range(members)]
    if method == "bred":
        interval = np.timedelta64(config.breeding_hours, "h")
        return [init - c * interval for c in range(config.breeding_cycles + 1)]
    return [init]


def _check_times(archive: xr.Dataset, needed: dict[np.datetime64, list[np.datetime64]]) -> None:
    index = archive.indexes["time"]
    span = f"{format_times([index.values[0]])[1:-1]} to {format_times([index.values[-1]])[1:-1]}"
    for init, times in needed.items():
        missing = [t for t in times if t not in index]
        if missing:
            label = format_times([init])[1:-1]
            what = (
                "the analysis at this time"
                if missing == [init]
                else f"analyses at {format_times(missing)}"
            )
            raise ArchiveError(
                f"init_time {label}: the ensemble needs {what}, which the archive lacks; it "
                f"spans {span}"
            )


def _archive_simulation(archive: xr.Dataset) -> SimulationConfig | None:
    text = archive.attrs.get("simulation_config")
    if text is None:
        return None
    stored = json.loads(text) if isinstance(text, str) else dict(text)
    fields = {f.name for f in dataclasses.fields(SimulationConfig)}
    return SimulationConfig(**{k: v for k, v in stored.items() if k in fields})


class _AnalysisCache:
    """`Analysis.from_archive` remembered per time (lagged and bred runs reuse analyses)."""

    def __init__(self, archive: xr.Dataset) -> None:
        self.archive = archive
        self._cache: dict[np.datetime64, Analysis] = {}

    def __call__(self, time: np.datetime64) -> Analysis:
        if time not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[time] = Analysis.from_archive(self.archive, time)
        return self._cache[time]


def _layout(run: _Run, attrs: dict[str, Any]) -> ForecastLayout:
    return ForecastLayout.of(
        run.names,
        [n for n in run.names if n in SIMULATED_LEVEL_VARIABLES],
        members=np.arange(run.members),
        init_times=run.inits,
        lead_times=run.leads,
        latitude=run.latitude,
        longitude=run.longitude,
        levels=run.levels,
        attrs=attrs,
    )


def _run_ensemble(
    run: _Run,
    model: EnsembleModel,
    states: Callable[[np.datetime64], Iterator[primitive_equations.State]],
    attrs: dict[str, Any],
    out: str | Path | None,
    on_progress: ProgressFn | None,
    adjust: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> xr.Dataset:
    layout = _layout(run, attrs)
    writer = ForecastWriter(layout, out)
    n_leads = run.leads.size
    total = run.inits.size * run.members
    done = 0
    for i, init in enumerate(run.inits):
        fields = {
            n: np.empty((run.members, 1, *layout.shape(n)[2:]), np.float32) for n in run.names
        }
        for member, state in enumerate(states(init)):
            output = model.forecast(state, n_leads)
            if adjust is not None:
                output = adjust(output)
            for name in run.names:
                value = output[name]
                if not np.isfinite(value).all():
                    raise RuntimeError(
                        f"{name}: member {member} from init_time {format_times([init])[1:-1]} "
                        "blew up (NaN/inf); the model is unstable with these settings"
                    )
                fields[name][member, 0] = value
            done += 1
            if on_progress is not None:
                on_progress(done, total)
        writer.write(fields, init=slice(i, i + 1))
    return writer.dataset()


__all__ = [
    "METHODS",
    "VARIABLES",
    "EnsembleModel",
    "PerfectModelConfig",
    "PhysicsEnsembleConfig",
    "perfect_model_ensemble",
    "perfect_model_member_states",
    "physics_ensemble",
    "physics_member_states",
    "reduce_surface_pressure",
]
