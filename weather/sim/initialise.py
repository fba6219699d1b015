"""Model states from an analysis: 5.625 deg pressure-level fields to a dinosaur modal state.

The analysis (an archive time: geopotential, temperature and winds on pressure levels, surface
pressure and the analysis's own surface geopotential, on the coarse equiangular grid) becomes
the initial state of a `HeldSuarezModel` of any resolution and number of sigma layers:

1. Horizontal: every field is fitted by spherical harmonics up to the analysis truncation
   ``L`` (total wavenumber, default 21: what a 32 x 64 grid supports without aliasing) by
   area-weighted least squares, and the fit is evaluated on the model's Gaussian grid
   (`SpectralFit`). Conservative (box) regridding would hand the model steps at cell edges,
   which ring in spectral space; the fit is smooth and exact for band-limited fields.
2. Surface pressure: the model's orography differs from the analysis's (spectrally filtered,
   at another resolution), so the surface must sit where the atmosphere puts it. Each analysis
   column's geopotential profile (log-p linear between levels, the 6.5 K/km lapse rate below
   the lowest) gives the pressure ``p*(phi)`` at which it reaches a surface geopotential
   ``phi``. The small, smooth departure ``ln p_s - ln p*(phi_s)`` of the analysis is fitted
   along with the profiles, and on the model grid ``p_s = exp(departure) p*(phi_model)``. Where
   the two orographies agree the analysis's surface pressure comes back; mountains get the
   sharp pressure gradients of the model's own orography from the (smooth) profiles, with no
   fit's ringing.
3. Vertical: temperature and winds are interpolated linearly in log(pressure) from the
   analysis levels to the model's sigma-level pressures ``sigma_k p_s``. Below the lowest
   analysis level temperature follows the 6.5 K/km lapse rate (ERA5's own fill below ground)
   and winds are held; above the top level both are held (an isothermal stratosphere).
4. Spectral: temperature minus the model's reference temperature, vorticity and divergence
   (from the winds with dinosaur's spectral curl and divergence) and log surface pressure are
   transformed to modal coefficients. Temperature, vorticity and divergence keep total
   wavenumbers ``<= L`` only: the analysis says nothing about smaller scales. Log surface
   pressure keeps the model's full resolution, since its small scales are the orography's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
import xarray as xr
from dinosaur import primitive_equations, spherical_harmonic

from weather.data.errors import ArchiveError
from weather.data.grid import cell_area_weights, latitude_bounds
from weather.data.legendre import normalized_legendre
from weather.data.times import TimeLike, to_datetime64
from weather.sim.dynamics import HeldSuarezModel
from weather.sim.pressure import DRY_AIR_GAS_CONSTANT, GRAVITY, STANDARD_LAPSE_RATE

ANALYSIS_TRUNCATION = 21
"""Total wavenumber resolved by a 32 x 64 (5.625 deg) analysis, as on a T21 Gaussian grid."""

_LAPSE_EXPONENT = DRY_AIR_GAS_CONSTANT * STANDARD_LAPSE_RATE / GRAVITY


@dataclasses.dataclass(frozen=True, kw_only=True)
class Analysis:
    """One analysis time as plain arrays (SI units), latitude and longitude ascending.

    Attributes:
      time: valid time (UTC).
      levels: pressure levels [level] in hPa, ascending.
      latitude, longitude: cell centres (degrees) [lat], [lon].
      geopotential: [level, lat, lon] m2 s-2 (below-ground levels filled, as ERA5's are).
      temperature: [level, lat, lon] K.
      u_component_of_wind, v_component_of_wind: [level, lat, lon] m s-1.
      surface_pressure: [lat, lon] Pa.
      geopotential_at_surface: [lat, lon] m2 s-2, the orography the analysis was made with.
    """

    time: np.datetime64
    levels: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    geopotential: np.ndarray
    temperature: np.ndarray
    u_component_of_wind: np.ndarray
    v_component_of_wind: np.ndarray
    surface_pressure: np.ndarray
    geopotential_at_surface: np.ndarray

    @classmethod
    def from_archive(cls, archive: xr.Dataset, time: TimeLike) -> Analysis:
        """The analysis at ``time`` from a canonical archive (`weather.data.reader`).

        Raises:
          ArchiveError: naming the variable the archive lacks, or the time it does not hold.
        """
        t = to_datetime64(time, "init_time")
        needed = (
            "geopotential",
            "temperature",
            "u_component_of_wind",
            "v_component_of_wind",
            "surface_pressure",
            "geopotential_at_surface",
        )
        for name in needed:
            if name not in archive.data_vars:
                raise ArchiveError(
                    f"variable {name!r} is missing from the archive; initialising a model "
                    f"needs {list(needed)}"
                )
        if "time" not in archive.indexes or t not in archive.indexes["time"]:
            raise ArchiveError(
                f"init_time {np.datetime_as_string(t, unit='m')}: the archive has no analysis "
                "at this time"
            )
        at = archive[list(needed)].sel(time=t).compute()
        levels = np.asarray(archive["level"].values, np.float64)
        order = np.argsort(levels)

        def level_field(name: str) -> np.ndarray:
            da = at[name].transpose("level", "latitude", "longitude")
            return np.asarray(da.values, np.float64)[order]

        def surface_field(name: str) -> np.ndarray:
            return np.asarray(at[name].transpose("latitude", "longitude").values, np.float64)

        return cls(
            time=t,
            levels=levels[order],
            latitude=np.asarray(archive["latitude"].values, np.float64),
            longitude=np.asarray(archive["longitude"].values, np.float64),
            geopotential=level_field("geopotential"),
            temperature=level_field("temperature"),
            u_component_of_wind=level_field("u_component_of_wind"),
            v_component_of_wind=level_field("v_component_of_wind"),
            surface_pressure=surface_field("surface_pressure"),
            geopotential_at_surface=surface_field("geopotential_at_surface"),
        )


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SpectralFit:
    """Band-limited interpolation between lat-lon grids by a spherical-harmonic fit.

    A field on the source grid is split into zonal wavenumbers ``m <= L`` (FFT); each zonal
    coefficient, a function of latitude, is fitted by the normalised Legendre functions
    ``Pbar_l^m``, ``m <= l <= L``, in area-weighted least squares, and the fit is evaluated at the
    target latitudes and longitudes. Exact for fields band-limited at ``L`` (up to round-off).

    Attributes:
      max_wavenumber: the truncation ``L``.
      matrices: [m, target_lat, source_lat] float64, fit-and-evaluate per zonal wavenumber.
      phase: [m] complex, the shift between the grids' first longitudes.
      n_source_lon, n_target_lon: numbers of longitudes.
    """

    max_wavenumber: int
    matrices: np.ndarray
    phase: np.ndarray
    n_source_lon: int
    n_target_lon: int

    @classmethod
    def build(
        cls,
        source_lat: np.ndarray,
        source_lon: np.ndarray,
        target_lat: np.ndarray,
        target_lon: np.ndarray,
        max_wavenumber: int,
        cell_averages: bool = False,
    ) -> SpectralFit:
        """The fit from the source grid's cell centres to the target's (degrees, ascending).

        Args:
          source_lat, source_lon, target_lat, target_lon: cell centres (degrees, ascending;
            longitudes equispaced).
          max_wavenumber: the truncation ``L``.
          cell_averages: the source values are area averages over their cells (as a
            conservatively regridded archive's are), not point values. The fit then matches
            the harmonics' cell averages, which undoes the box filter's damping (in longitude
            ``sinc(m dlon / 2)``, 0.83 at ``m = 21`` on a 5.625 deg grid) for band-limited
            fields; the result is evaluated at the target points.

        Raises:
          ValueError: when either grid cannot carry zonal wavenumber ``L`` (needs more than
            ``2 L`` longitudes) or the source has fewer latitudes than ``L + 1``.
        """
        src_lat, tgt_lat = np.asarray(source_lat, np.float64), np.asarray(target_lat, np.float64)
        src_lon, tgt_lon = np.asarray(source_lon, np.float64), np.asarray(target_lon, np.float64)
        n = max_wavenumber + 1
        for what, size in (("source", src_lon.size), ("target", tgt_lon.size)):
            if size <= 2 * max_wavenumber:
                raise ValueError(
                    f"truncation: the {what} grid's {size} longitudes cannot carry zonal "
                    f"wavenumber {max_wavenumber}"
                )
        if src_lat.size < n:
            raise ValueError(
                f"truncation: {src_lat.size} source latitudes cannot determine {n} degrees"
            )
        orders = np.arange(n)
        if cell_averages:
            p_src = _cell_averaged_legendre(max_wavenumber, src_lat)
            half_width = np.pi / src_lon.size
            # sinc(m dlon / 2): the cell average of cos(m lon) and sin(m lon).
            zonal_response = np.sinc(orders * half_width / np.pi)
        else:
            p_src = normalized_legendre(max_wavenumber, np.sin(np.deg2rad(src_lat)))
            zonal_response = np.ones(n)
        p_tgt = normalized_legendre(max_wavenumber, np.sin(np.deg2rad(tgt_lat)))
        weights = cell_area_weights(src_lat)
        matrices = np.zeros((n, tgt_lat.size, src_lat.size))
        for m in range(n):
            a = p_src[m, m:].T  # [source_lat, degree]
            b = p_tgt[m, m:].T  # [target_lat, degree]
            normal = a.T @ (weights[:, None] * a)
            matrices[m] = b @ np.linalg.solve(normal, a.T * weights[None, :]) / zonal_response[m]
        shift = np.deg2rad(tgt_lon[0] - src_lon[0])
        return cls(
            max_wavenumber=max_wavenumber,
            matrices=matrices,
            phase=np.exp(1j * orders * shift),
            n_source_lon=int(src_lon.size),
            n_target_lon=int(tgt_lon.size),
        )

    def __call__(self, field: np.ndarray) -> np.ndarray:
        """``[..., source_lat, source_lon]`` -> ``[..., target_lat, target_lon]`` (float64)."""
        n = self.max_wavenumber + 1
        zonal = np.fft.rfft(np.asarray(field, np.float64), axis=-1)[..., :n] / self.n_source_lon
        fitted = np.einsum("mts,...sm->...tm", self.matrices, zonal) * self.phase
        return np.fft.irfft(fitted * self.n_target_lon, n=self.n_target_lon, axis=-1)


def _cell_averaged_legendre(max_degree: int, latitude: np.ndarray) -> np.ndarray:
    """Area averages of ``Pbar_l^m`` over each latitude cell, ``[m, l, lat]`` float64.

    Cells are bounded half-way between centres and at the poles (`latitude_bounds`); the
    average over ``sin(lat)`` is taken with 8 Gauss-Legendre points per cell, exact to round-off
    for the degrees a coarse grid can fit.
    """
    bounds = np.sin(np.deg2rad(latitude_bounds(latitude)))
    nodes, node_weights = np.polynomial.legendre.leggauss(8)
    lo, hi = bounds[:-1, None], bounds[1:, None]
    points = 0.5 * (hi - lo) * nodes[None, :] + 0.5 * (hi + lo)  # [lat, 8] in sin(lat)
    values = normalized_legendre(max_degree, points.reshape(-1))
    values = values.reshape(*values.shape[:2], *points.shape)
    return np.einsum("mljq,q->mlj", values, node_weights) / 2.0


def pressure_to_sigma(
    fields: dict[str, np.ndarray], levels_pa: np.ndarray, pressure: np.ndarray
) -> dict[str, np.ndarray]:
    """Interpolate column fields from pressure levels to given pressures (log-p linear).

    Outside the analysis column: below the lowest level ``temperature`` follows the standard
    lapse rate, ``T(p) = T_b (p / p_b)^(R gamma / g)``, and every other field is held at its
    lowest-level value; above the top level every field is held at its top value.

    Args:
      fields: name -> ``[level, *horizontal]``; ``temperature`` in K, others anything.
      levels_pa: ``[level]`` pressure levels in Pa, ascending (top first).
      pressure: ``[k, *horizontal]`` target pressures in Pa.

    Returns:
      The same keys, each ``[k, *horizontal]``.
    """
    log_levels = np.log(np.asarray(levels_pa, np.float64))
    n = log_levels.size
    log_p = np.log(pressure)
    # Index of the level above each target (clipped to the outermost pair), interpolation weight
    # clipped to [0, 1] so that targets outside the column take the edge value.
    upper = np.clip(np.searchsorted(log_levels, log_p) - 1, 0, n - 2)
    w = np.clip((log_p - log_levels[upper]) / (log_levels[upper + 1] - log_levels[upper]), 0, 1)
    out = {}
    for name, x in fields.items():
        x = np.asarray(x, np.float64)
        flat = x.reshape(n, -1)
        columns = np.arange(flat.shape[1]).reshape(pressure.shape[1:])
        lo = flat[upper, columns[None]]
        hi = flat[upper + 1, columns[None]]
        value = lo + w * (hi - lo)
        if name == "temperature":
            below = pressure > np.exp(log_levels[-1])
            extrapolated = (
                flat[-1][columns] * (pressure / np.exp(log_levels[-1])) ** _LAPSE_EXPONENT
            )
            value = np.where(below, extrapolated, value)
        out[name] = value
    return out


def pressure_at_geopotential(
    geopotential: np.ndarray,
    temperature: np.ndarray,
    levels_pa: np.ndarray,
    target: np.ndarray,
) -> np.ndarray:
    """The pressure at which each column's geopotential profile reaches ``target`` (Pa).

    Between levels the geopotential is linear in log(pressure) (an isothermal layer). Below the
    lowest level the column continues on the standard lapse rate from that level's temperature
    ``T_b``, ``phi(p) = phi_b + (g / gamma) T_b (1 - (p / p_b)^(R gamma / g))``, inverted
    exactly; above the top level it is isothermal at the top temperature.

    Args:
      geopotential: ``[level, *horizontal]`` m2 s-2, decreasing with pressure.
      temperature: ``[level, *horizontal]`` K.
      levels_pa: ``[level]`` Pa, ascending.
      target: ``[*horizontal]`` m2 s-2 (e.g. the surface geopotential).

    Returns:
      ``[*horizontal]`` pressures in Pa.
    """
    z = np.asarray(geopotential, np.float64)
    log_levels = np.log(np.asarray(levels_pa, np.float64))
    n = log_levels.size
    target = np.asarray(target, np.float64)
    above = np.sum(z > target[None], axis=0)  # levels higher than the target
    k = np.clip(above, 1, n - 1)
    z_hi = np.take_along_axis(z, (k - 1)[None], axis=0)[0]
    z_lo = np.take_along_axis(z, k[None], axis=0)[0]
    fraction = (z_hi - target) / (z_hi - z_lo)
    log_p = log_levels[k - 1] + fraction * (log_levels[k] - log_levels[k - 1])
    t_bottom = np.asarray(temperature, np.float64)[-1]
    ratio = 1.0 - STANDARD_LAPSE_RATE * (target - z[-1]) / (GRAVITY * t_bottom)
    below = log_levels[-1] + np.log(np.maximum(ratio, 1e-6)) / _LAPSE_EXPONENT
    t_top = np.asarray(temperature, np.float64)[0]
    top = log_levels[0] - (target - z[0]) / (DRY_AIR_GAS_CONSTANT * t_top)
    log_p = np.where(above == n, below, np.where(above == 0, top, log_p))
    return np.exp(log_p)


def total_wavenumbers(grid: spherical_harmonic.Grid) -> np.ndarray:
    """Total wavenumber ``l`` of every modal coefficient, ``[M, L]`` int (grid's modal shape)."""
    _, total = grid.modal_axes
    return np.broadcast_to(np.asarray(total)[None, :], grid.modal_shape)


def modal_spectrum(grid: spherical_harmonic.Grid, modal: Any) -> np.ndarray:
    """Sum of squared coefficients per total wavenumber: ``[..., M, L]`` -> ``[..., L]``.

    With dinosaur's basis (``int Y^2 dOmega = 1`` on the unit sphere) this is the variance of
    the field at degree ``l`` times ``4 pi`` (nondimensional units of the field).
    """
    x = np.asarray(modal, np.float64) * grid.mask
    return np.sum(x**2, axis=-2)


@dataclasses.dataclass(frozen=True, eq=False)
class Initialiser:
    """Builds model states of one `HeldSuarezModel` from analyses on one grid.

    Build with :meth:`build`; call ``initialiser(analysis) -> primitive_equations.State``.

    Attributes:
      model: the model whose states are made.
      truncation: analysis truncation ``L`` (total wavenumber) of temperature, vorticity and
        divergence.
      fit: `SpectralFit` from the analysis grid to the model's Gaussian grid.
      latitude, longitude: the analysis grid it was built for (degrees).
    """

    model: HeldSuarezModel
    truncation: int
    fit: SpectralFit
    latitude: np.ndarray
    longitude: np.ndarray

    @classmethod
    def build(
        cls,
        model: HeldSuarezModel,
        latitude: np.ndarray,
        longitude: np.ndarray,
        truncation: int = ANALYSIS_TRUNCATION,
    ) -> Initialiser:
        """An initialiser for analyses on the grid with these cell centres (degrees, ascending).

        Raises:
          ValueError: a truncation outside [1, the model's largest resolved wavenumber].
        """
        resolved = model.coords.horizontal.total_wavenumbers - 2
        if not 1 <= truncation <= resolved:
            raise ValueError(
                f"truncation: {truncation} must lie in [1, {resolved}] for a "
                f"{model.config.resolution} model"
            )
        fit = SpectralFit.build(
            latitude,
            longitude,
            model.native_latitude,
            model.native_longitude,
            truncation,
            cell_averages=True,
        )
        return cls(
            model=model,
            truncation=truncation,
            fit=fit,
            latitude=np.asarray(latitude, np.float64),
            longitude=np.asarray(longitude, np.float64),
        )

    def __call__(self, analysis: Analysis) -> primitive_equations.State:
        """The model state (float32, modal, sim_time at ``analysis.time``).

        Raises:
          ArchiveError: the analysis grid is not the one this initialiser was built for, or
            it has fewer than two pressure levels.
        """
        self._check_grid(analysis)
        model = self.model
        grid = model.coords.horizontal
        levels_pa = np.asarray(analysis.levels, np.float64) * 100.0
        n = levels_pa.size

        # The surface pressure's departure from where the analysis's own geopotential profile
        # meets its own surface: small and smooth, so it fits well (module docstring).
        departure = np.log(analysis.surface_pressure) - np.log(
            pressure_at_geopotential(
                analysis.geopotential,
                analysis.temperature,
                levels_pa,
                analysis.geopotential_at_surface,
            )
        )
        # Winds times cos(latitude): band-limited where the winds are not (at the poles).
        cos_a = np.cos(np.deg2rad(analysis.latitude))[:, None]
        fitted = self.fit(
            np.concatenate(
                [
                    analysis.geopotential,
                    analysis.temperature,
                    analysis.u_component_of_wind * cos_a,
                    analysis.v_component_of_wind * cos_a,
                    departure[None],
                ]
            )
        )
        geopotential, temperature = fitted[:n], fitted[n : 2 * n]
        cos_m = np.cos(np.deg2rad(model.native_latitude))[:, None]
        u, v = fitted[2 * n : 3 * n] / cos_m, fitted[3 * n : 4 * n] / cos_m
        phi_m = model.surface_geopotential()[1]  # [lat, lon] on the native grid
        ps = np.exp(fitted[-1]) * pressure_at_geopotential(
            geopotential, temperature, levels_pa, phi_m
        )

        sigma = np.asarray(model.coords.vertical.centers, np.float64)
        on_sigma = pressure_to_sigma(
            {"temperature": temperature, "u": u, "v": v},
            levels_pa,
            sigma[:, None, None] * ps[None],
        )

        def nodal(x: np.ndarray, scale: float) -> jnp.ndarray:
            # [.., lat, lon] SI -> dinosaur's nodal [.., lon, lat], nondimensional float32.
            return jnp.asarray(np.swapaxes(x / scale, -1, -2), jnp.float32)

        reference = jnp.asarray(model.reference_temperature, jnp.float32)[:, None, None]
        temperature_variation = grid.to_modal(
            nodal(on_sigma["temperature"], model._temperature_scale) - reference
        )
        vorticity, divergence = spherical_harmonic.uv_nodal_to_vor_div_modal(
            grid,
            nodal(on_sigma["u"], model._velocity_scale),
            nodal(on_sigma["v"], model._velocity_scale),
        )
        log_ps = grid.clip_wavenumbers(
            grid.to_modal(nodal(np.log(ps / model._pressure_scale)[None], 1.0))
        )
        keep = jnp.asarray(total_wavenumbers(grid) <= self.truncation, jnp.float32)
        state = primitive_equations.State(
            vorticity=vorticity * keep,
            divergence=divergence * keep,
            temperature_variation=temperature_variation * keep,
            log_surface_pressure=log_ps,
        )
        return model.set_time(state, analysis.time)

    def _check_grid(self, analysis: Analysis) -> None:
        for name, mine in (("latitude", self.latitude), ("longitude", self.longitude)):
            theirs = np.asarray(getattr(analysis, name))
            if theirs.shape != mine.shape or not np.allclose(theirs, mine, atol=1e-6):
                raise ArchiveError(
                    f"coordinate {name!r}: the analysis grid ({theirs.size} points) is not the "
                    f"one the initialiser was built for ({mine.size} points)"
                )
        if np.asarray(analysis.levels).size < 2:
            raise ArchiveError("coordinate 'level': initialising needs at least two levels")


def state_truncated(
    grid: spherical_harmonic.Grid, state: primitive_equations.State, truncation: int
) -> primitive_equations.State:
    """The state with temperature, vorticity and divergence above ``truncation`` set to zero."""
    keep = jnp.asarray(total_wavenumbers(grid) <= truncation, jnp.float32)
    return dataclasses.replace(
        state,
        vorticity=state.vorticity * keep,
        divergence=state.divergence * keep,
        temperature_variation=state.temperature_variation * keep,
    )


__all__ = [
    "ANALYSIS_TRUNCATION",
    "Analysis",
    "Initialiser",
    "SpectralFit",
    "modal_spectrum",
    "pressure_to_sigma",
    "state_truncated",
    "total_wavenumbers",
]
