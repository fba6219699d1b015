"""The simulated atmosphere: dinosaur's primitive equations with a seasonal Held-Suarez forcing.

Held & Suarez (1994) relax temperature towards a zonally symmetric radiative equilibrium and damp
low-level winds; with real orography and a seasonal cycle this gives a turbulent, Earth-like
general circulation (jets, storm tracks, migrating between hemispheres with the seasons) that is
cheap enough to simulate for years on a CPU.

The seasonal cycle adds to the equilibrium temperature's bracket a term
``A cos(2 pi (y - y_s)) sin(lat)`` (times ``(p/p0)^kappa`` like the rest), where ``y`` is the
year progress and ``y_s`` the phase of the summer solstice, so the northern hemisphere is warm
and its equator-pole contrast weak around July.

Model time (``State.sim_time``, nondimensional) holds seconds since the start of the current
year-cycle (see :func:`year_phase_seconds`); it is reset from the exact calendar at every output
chunk, which keeps float32 round-off far below one time step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from dinosaur import (
    coordinate_systems,
    held_suarez,
    primitive_equations,
    primitive_equations_states,
    scales,
    sigma_coordinates,
    spherical_harmonic,
    time_integration,
    xarray_utils,
)

from weather.data.grid import ConservativeRegridder, equiangular_grid
from weather.data.variables import WB2_LEVELS
from weather.sim.pressure import GRAVITY, sigma_to_pressure

UNITS = scales.units
TROPICAL_YEAR_SECONDS = 365.24219 * 86400.0
EPOCH = np.datetime64("1970-01-01T00:00:00", "ns")

_RESOLUTIONS: dict[str, Callable[..., spherical_harmonic.Grid]] = {
    "T21": spherical_harmonic.Grid.T21,
    "T31": spherical_harmonic.Grid.T31,
    "T42": spherical_harmonic.Grid.T42,
    "T85": spherical_harmonic.Grid.T85,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Everything that defines the simulated climate and the archive's layout.

    Attributes:
      resolution: spectral truncation of the dynamical core (``T21``, ``T31``, ``T42``, ``T85``).
      layers: number of equidistant sigma levels.
      dt_minutes: model time step (minutes).
      output_hours: archive time step (hours); must divide 24 and be a multiple of the time step.
      spinup_days: days integrated (from rest plus a seeded perturbation) before the archive
        starts; eddy kinetic energy saturates after ~100 days.
      seasonal_amplitude: ``A`` of the seasonal term (K).
      solstice_year_progress: year progress of the warmest northern forcing (0.47 ~ 21 June).
      orography: use Earth's orography (the committed ETOPO-derived asset) or a flat planet.
      levels: pressure levels of the archive (hPa).
      output_grid: (latitudes, longitudes) of the equiangular archive grid, without pole rows.
      filter_tau, filter_order, filter_cutoff: the exponential hyper-diffusion step filter.
    """

    # T31 L10 with a 40 min step: 2.4x cheaper per simulated day than T42 L12 at 30 min (0.69 vs
    # 1.67 s measured in one process), with the same advective Courant number (N dt equal), and
    # still well beyond what the 5.625 deg archive grid resolves (about T21).
    resolution: str = "T31"
    layers: int = 10
    dt_minutes: float = 40.0
    output_hours: int = 6
    spinup_days: float = 300.0
    seasonal_amplitude: float = 15.0
    solstice_year_progress: float = 0.47
    orography: bool = True
    levels: tuple[int, ...] = WB2_LEVELS
    output_grid: tuple[int, int] = (32, 64)
    transform: str = "FastSphericalHarmonics"
    filter_tau: float = 0.0087504
    filter_order: float = 1.5
    filter_cutoff: float = 0.8

    def __post_init__(self) -> None:
        # One representation per value (60 and 60.0 alike), so that stored configurations compare
        # equal however they were spelled.
        for name in (
            "dt_minutes",
            "spinup_days",
            "seasonal_amplitude",
            "solstice_year_progress",
            "filter_tau",
            "filter_order",
            "filter_cutoff",
        ):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("layers", "output_hours"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "levels", tuple(int(p) for p in self.levels))
        object.__setattr__(self, "output_grid", tuple(int(n) for n in self.output_grid))
        if self.resolution not in _RESOLUTIONS:
            raise ValueError(f"resolution: {self.resolution!r} not in {sorted(_RESOLUTIONS)}")
        if self.layers < 4:
            raise ValueError(f"layers: need at least 4 sigma levels, got {self.layers}")
        steps = self.output_hours * 60 / self.dt_minutes
        if self.dt_minutes <= 0 or abs(steps - round(steps)) > 1e-9:
            raise ValueError(
                f"dt_minutes: {self.dt_minutes} must divide output_hours={self.output_hours} h"
            )
        if self.output_hours <= 0 or 24 % self.output_hours:
            raise ValueError(f"output_hours: {self.output_hours} must divide 24")
        if self.spinup_days < 0:
            raise ValueError(f"spinup_days: must be >= 0, got {self.spinup_days}")
        if not self.levels or any(p <= 0 or p > 1100 for p in self.levels):
            raise ValueError(f"levels: pressure levels must lie in (0, 1100] hPa: {self.levels}")
        if list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"levels: must be strictly ascending, got {self.levels}")

    @property
    def inner_steps(self) -> int:
        """Model steps per archive step."""
        return round(self.output_hours * 60 / self.dt_minutes)

    def to_attrs(self) -> dict[str, Any]:
        """JSON-friendly description, stored in the archive's attributes."""
        d = dataclasses.asdict(self)
        d["levels"] = list(self.levels)
        d["output_grid"] = list(self.output_grid)
        return d


def year_phase_seconds(time: np.datetime64) -> float:
    """Seconds since the start of the current tropical-year cycle counted from the Unix epoch."""
    seconds = (np.asarray(time, dtype="datetime64[ns]") - EPOCH) / np.timedelta64(1, "s")
    return float(np.mod(seconds, TROPICAL_YEAR_SECONDS))


def load_surface_height(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Earth's surface height (m, oceans at 0) averaged conservatively onto a grid.

    Args:
      latitude: cell-centre latitudes (degrees, ascending) [lat].
      longitude: cell-centre longitudes (degrees, ascending in [0, 360)) [lon].

    Returns:
      [lat, lon] heights in metres, from the committed ETOPO20-derived 1-degree asset.
    """
    path = resources.files("weather") / "assets" / "orography_1deg.nc"
    with resources.as_file(path) as p, xr.open_dataset(p, engine="netcdf4") as ds:
        height = ds["surface_height"].values.astype(np.float64)
        regrid = ConservativeRegridder.build(
            ds["latitude"].values, ds["longitude"].values, latitude, longitude
        )
    return regrid(height)


class SeasonalHeldSuarezForcing(held_suarez.HeldSuarezForcingSigma):
    """Held-Suarez forcing whose equilibrium temperature follows the seasons."""

    def __init__(
        self,
        *args: Any,
        seasonal_amplitude: float,
        solstice_year_progress: float,
        year_length: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.seasonal_amplitude = self.physics_specs.nondimensionalize(
            seasonal_amplitude * UNITS.degK
        )
        self.solstice_year_progress = solstice_year_progress
        self.year_length = year_length
        self._sim_time: Any = None

    def equilibrium_temperature(self, nodal_surface_pressure):
        p_over_p0 = self.sigma[:, np.newaxis, np.newaxis] * nodal_surface_pressure / self.p0
        bracket = (
            self.maxT
            - self.dTy * np.sin(self.lat) ** 2
            - self.dThz * jnp.log(p_over_p0) * np.cos(self.lat) ** 2
        )
        if self._sim_time is not None:
            phase = 2 * np.pi * (self._sim_time / self.year_length - self.solstice_year_progress)
            bracket = bracket + self.seasonal_amplitude * jnp.cos(phase) * np.sin(self.lat)
        return jnp.maximum(self.minT, p_over_p0**self.physics_specs.kappa * bracket)

    def explicit_terms(self, state: primitive_equations.State) -> primitive_equations.State:
        # The parent computes the relaxation from `equilibrium_temperature`, which needs the time
        # of year: hand it over for the duration of this (traced) call.
        self._sim_time = state.sim_time
        try:
            tendency = super().explicit_terms(state)
        finally:
            self._sim_time = None
        if state.sim_time is not None:
            # The forcing does not advance time; the dynamics' tendency (1.0) does.
            tendency = dataclasses.replace(tendency, sim_time=jnp.zeros_like(state.sim_time))
        return tendency


class HeldSuarezModel:
    """A configured dinosaur model: initial states, stepping and archive diagnostics.

    All arrays in the model's own (nondimensional, modal) units stay inside; `diagnostics`
    returns SI fields on pressure levels, on both the native Gaussian grid and the archive grid.
    """

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        grid = _RESOLUTIONS[config.resolution](
            spherical_harmonics_impl=getattr(spherical_harmonic, config.transform)
        )
        self.coords = coordinate_systems.CoordinateSystem(
            horizontal=grid,
            vertical=sigma_coordinates.SigmaCoordinates.equidistant(config.layers),
        )
        self.physics_specs = primitive_equations.PrimitiveEquationsSpecs.from_si()
        lon_rad, sin_lat = self.coords.horizontal.nodal_axes
        self.native_latitude = np.rad2deg(np.arcsin(np.asarray(sin_lat, dtype=np.float64)))
        self.native_longitude = np.rad2deg(np.asarray(lon_rad, dtype=np.float64))
        out_lat, out_lon = equiangular_grid(*config.output_grid)
        self.latitude, self.longitude = out_lat, out_lon
        self.regrid = ConservativeRegridder.build(
            self.native_latitude, self.native_longitude, out_lat, out_lon
        )

        if config.orography:
            height = load_surface_height(self.native_latitude, self.native_longitude)
            surface_height = height.T * UNITS.meter  # dinosaur's nodal layout is [lon, lat]
        else:
            surface_height = None
        self._initial_state_fn, aux = primitive_equations_states.isothermal_rest_atmosphere(
            self.coords,
            self.physics_specs,
            p1=3e3 * UNITS.pascal,
            surface_height=surface_height,
        )
        self.reference_temperature = aux[xarray_utils.REF_TEMP_KEY]
        # Smooth the orography spectrally so steep mountains do not ring (Gibbs) at T42.
        orography_filter = functools.partial(
            _exponential_filter, self.coords.horizontal, order=2, cutoff=0.5
        )
        self.modal_orography = primitive_equations.filtered_modal_orography(
            aux[xarray_utils.OROGRAPHY], self.coords, filter_fns=[orography_filter]
        )
        self.nodal_orography = self.coords.horizontal.to_nodal(self.modal_orography)

        self.time_scale = float(self.physics_specs.dimensionalize(1.0, UNITS.second).m)
        self.dt = config.dt_minutes * 60.0 / self.time_scale
        self.forcing = SeasonalHeldSuarezForcing(
            coords=self.coords,
            physics_specs=self.physics_specs,
            reference_temperature=self.reference_temperature,
            seasonal_amplitude=config.seasonal_amplitude,
            solstice_year_progress=config.solstice_year_progress,
            year_length=TROPICAL_YEAR_SECONDS / self.time_scale,
        )
        dynamics = primitive_equations.PrimitiveEquations(
            self.reference_temperature, self.modal_orography, self.coords, self.physics_specs
        )
        equation = time_integration.compose_equations([dynamics, self.forcing])
        step = time_integration.imex_rk_sil3(equation, self.dt)
        hyperdiffusion = time_integration.exponential_step_filter(
            self.coords.horizontal,
            self.dt,
            tau=config.filter_tau,
            order=config.filter_order,
            cutoff=config.filter_cutoff,
        )
        self.step_fn = time_integration.step_with_filters(step, [hyperdiffusion])

        self._pressure_scale = float(self.physics_specs.dimensionalize(1.0, UNITS.pascal).m)
        self._temperature_scale = float(self.physics_specs.dimensionalize(1.0, UNITS.degK).m)
        self._geopotential_scale = float(
            self.physics_specs.dimensionalize(1.0, UNITS.meter**2 / UNITS.second**2).m
        )
        self._velocity_scale = float(
            self.physics_specs.dimensionalize(1.0, UNITS.meter / UNITS.second).m
        )

    # -- states -------------------------------------------------------------------------------

    def initial_state(self, seed: int, time: np.datetime64) -> primitive_equations.State:
        """A resting isothermal atmosphere with a seeded surface-pressure bump and tiny noise."""
        key = jax.random.PRNGKey(seed)
        k_bump, k_noise = jax.random.split(key)
        state = self._initial_state_fn(rng_key=k_bump)
        # 1e-3 K of white noise breaks every symmetry; chaos does the rest within ~40 days.
        noise = (
            1e-3
            / self._temperature_scale
            * jax.random.normal(k_noise, self.coords.nodal_shape, dtype=jnp.float32)
        )
        state = dataclasses.replace(
            state,
            temperature_variation=self.coords.horizontal.to_modal(noise),
        )
        return self.set_time(state, time)

    def set_time(self, state: primitive_equations.State, time: np.datetime64):
        """The state with its clock set from the calendar (seconds into the year cycle)."""
        return dataclasses.replace(
            state, sim_time=jnp.float32(year_phase_seconds(time) / self.time_scale)
        )

    # -- integration --------------------------------------------------------------------------

    @functools.cached_property
    def _advance(self) -> Callable[..., Any]:
        inner = self.config.inner_steps

        def advance(state, n_outputs: int):
            run = time_integration.repeated(self.step_fn, inner)

            def body(s, _):
                s = time_integration.maybe_fix_sim_time_roundoff(run(s), self.dt)
                return s, self._diagnostics(s)

            return jax.lax.scan(body, state, xs=None, length=n_outputs)

        return jax.jit(advance, static_argnums=1)

    def advance(self, state: primitive_equations.State, n_outputs: int):
        """Integrate `n_outputs` archive steps.

        Returns:
          (final state, diagnostics) where each diagnostic has a leading [n_outputs] axis and is
          the state at the end of each archive step (see `_diagnostics`).
        """
        return self._advance(state, n_outputs)

    @functools.cached_property
    def _spin(self) -> Callable[..., Any]:
        def spin(state, n_steps: int):
            run = time_integration.repeated(self.step_fn, n_steps)
            return time_integration.maybe_fix_sim_time_roundoff(run(state), self.dt)

        return jax.jit(spin, static_argnums=1)

    def spin(self, state: primitive_equations.State, n_outputs: int):
        """Integrate `n_outputs` archive steps without diagnostics."""
        return self._spin(state, n_outputs * self.config.inner_steps)

    # -- diagnostics --------------------------------------------------------------------------

    def _diagnostics(self, state: primitive_equations.State) -> dict[str, jnp.ndarray]:
        """SI fields on pressure levels from a modal state.

        Returns a dict with, for the archive grid, ``geopotential``, ``temperature``,
        ``u_component_of_wind``, ``v_component_of_wind`` as [level, lat, lon] and
        ``surface_pressure`` as [lat, lon]; and the same on the native grid under ``native/``.
        """
        h = self.coords.horizontal
        temperature = self.reference_temperature[:, None, None] + h.to_nodal(
            state.temperature_variation
        )
        u, v = spherical_harmonic.vor_div_to_uv_nodal(h, state.vorticity, state.divergence)
        surface_pressure = jnp.exp(h.to_nodal(state.log_surface_pressure))[0]
        geopotential = primitive_equations.get_geopotential_on_sigma(
            temperature,
            nodal_orography=self.nodal_orography,
            sigma=self.coords.vertical,
            gravity_acceleration=self.physics_specs.g,
            ideal_gas_constant=self.physics_specs.R,
        )
        ps = surface_pressure * self._pressure_scale
        column = {
            "temperature": temperature * self._temperature_scale,
            "geopotential": geopotential * self._geopotential_scale,
            "u_component_of_wind": u * self._velocity_scale,
            "v_component_of_wind": v * self._velocity_scale,
        }
        levels_pa = jnp.asarray(np.asarray(self.config.levels, np.float32) * 100.0)
        on_levels = sigma_to_pressure(
            column, jnp.asarray(self.coords.vertical.centers), ps, levels_pa
        )
        native = {k: jnp.swapaxes(x, -1, -2) for k, x in on_levels.items()}  # -> [.., lat, lon]
        native["surface_pressure"] = ps.T
        out = {k: self.regrid(x) for k, x in native.items()}
        out.update({f"native/{k}": x for k, x in native.items()})
        return out

    def surface_geopotential(self) -> tuple[np.ndarray, np.ndarray]:
        """Static geopotential at the surface (m2 s-2): (archive grid, native grid), [lat, lon]."""
        height_m = np.asarray(self.nodal_orography) * float(
            self.physics_specs.dimensionalize(1.0, UNITS.meter).m
        )
        native = (height_m * GRAVITY).T
        return self.regrid(native), native


def _exponential_filter(grid, modal, *, order, cutoff):
    from dinosaur import filtering

    return filtering.exponential_filter(grid, attenuation=16, order=order, cutoff=cutoff)(modal)
