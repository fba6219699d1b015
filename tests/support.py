"""What tests build (a real module, not conftest): a small synthetic canonical archive, a tiny
simulated one, a tiny forecaster config, per-channel float32 comparison, and spherical
harmonics from scipy (the reference answers of the spectral code)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.special import sph_harm_y

from weather.data.grid import equiangular_grid

LEVELS = (500, 850)


def synthetic_archive(
    n_lat: int = 16, n_lon: int = 32, days: float = 12, start: str = "2001-01-01", seed: int = 0
) -> xr.Dataset:
    """A canonical 6-hourly archive of travelling waves plus noise, in physical units."""
    rng = np.random.default_rng(seed)
    lat, lon = equiangular_grid(n_lat, n_lon)
    n_t = int(days * 4)
    time = np.datetime64(start, "ns") + np.timedelta64(6, "h") * np.arange(n_t)
    t = np.arange(n_t)[:, None, None] * 0.25  # days
    phi, lam = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    wave = np.cos(3 * lam - 0.6 * t) * np.cos(phi) ** 2 + 0.5 * np.sin(2 * lam + 0.3 * t) * np.cos(
        phi
    )
    noise = lambda: 0.1 * rng.standard_normal((n_t, n_lat, n_lon))  # noqa: E731
    base = {
        "geopotential": (np.array([5.5e4, 1.4e4]), np.array([800.0, 500.0])),
        "temperature": (np.array([255.0, 280.0]), np.array([8.0, 10.0])),
        "u_component_of_wind": (np.array([15.0, 5.0]), np.array([10.0, 6.0])),
        "v_component_of_wind": (np.array([0.0, 0.0]), np.array([8.0, 5.0])),
    }
    data = {}
    for name, (mean, amp) in base.items():
        field = [mean[i] + amp[i] * (wave + noise()) * (1 + 0.2 * i) for i in range(len(LEVELS))]
        data[name] = (("time", "level", "latitude", "longitude"), np.stack(field, 1).astype("f4"))
    sp = 1.0e5 + 800.0 * (wave + noise())
    data["surface_pressure"] = (("time", "latitude", "longitude"), sp.astype("f4"))
    zs = 9.8 * 500 * np.clip(np.cos(phi[0]) * np.sin(2 * lam[0]), 0, None)
    data["geopotential_at_surface"] = (("latitude", "longitude"), zs.astype("f4"))
    ds = xr.Dataset(
        data,
        coords={
            "time": time,
            "level": np.asarray(LEVELS, np.int64),
            "latitude": lat,
            "longitude": lon,
        },
    )
    units = {
        "geopotential": "m2 s-2",
        "temperature": "K",
        "u_component_of_wind": "m s-1",
        "v_component_of_wind": "m s-1",
        "surface_pressure": "Pa",
        "geopotential_at_surface": "m2 s-2",
    }
    for name, u in units.items():
        ds[name].attrs["units"] = u
    return ds


def gencast_archive(
    n_lat: int = 17,
    n_lon: int = 32,
    days: float = 6,
    start: str = "2016-01-01",
    seed: int = 0,
    step_hours: int = 6,
) -> xr.Dataset:
    """A WeatherBench2-layout archive with GenCast's variable set on a grid with pole rows
    (``n_lat`` odd, latitude ascending from -90 as WB2's 240x121), 6-hourly, in physical units:
    six level variables on `LEVELS`, six surface ones (sea-surface temperature NaN over land,
    12 h precipitation >= 0 and zero over a third of the globe), the stored solar radiation that
    models compute instead, and the two static fields. Travelling waves plus noise, so that
    12 h differences are not zero (``step_hours`` apart)."""
    from weather.data import solar
    from weather.data.variables import CATALOGUE

    rng = np.random.default_rng(seed)
    lat = np.linspace(-90.0, 90.0, n_lat)
    lon = np.arange(n_lon) * 360.0 / n_lon
    n_t = int(days * 24 / step_hours)
    time = np.datetime64(start, "ns") + np.timedelta64(step_hours, "h") * np.arange(n_t)
    t = np.arange(n_t)[:, None, None] * step_hours / 24  # days
    phi, lam = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    wave = np.cos(3 * lam - 0.6 * t) * np.cos(phi) ** 2 + 0.5 * np.sin(2 * lam + 0.3 * t) * np.cos(
        phi
    )

    def field(mean: float, amp: float) -> np.ndarray:  # [time, lat, lon]
        return mean + amp * (wave + 0.1 * rng.standard_normal((n_t, n_lat, n_lon)))

    levels = {  # name: (mean, amplitude) at 500 and 850 hPa
        "geopotential": ((5.5e4, 800.0), (1.4e4, 500.0)),
        "temperature": ((255.0, 8.0), (280.0, 10.0)),
        "u_component_of_wind": ((15.0, 10.0), (5.0, 6.0)),
        "v_component_of_wind": ((0.0, 8.0), (0.0, 5.0)),
        "vertical_velocity": ((0.0, 0.2), (0.0, 0.3)),
        "specific_humidity": ((1e-3, 4e-4), (5e-3, 2e-3)),
    }
    dims = ("time", "level", "latitude", "longitude")
    data = {
        name: (dims, np.stack([field(*p) for p in per_level], 1).astype("f4"))
        for name, per_level in levels.items()
    }
    land = (np.cos(phi[0]) * np.sin(2 * lam[0]) > 0.3) & (np.abs(lat)[:, None] < 80)
    surface = {
        "mean_sea_level_pressure": field(1.013e5, 900.0),
        "2m_temperature": field(285.0, 12.0),
        "10m_u_component_of_wind": field(2.0, 5.0),
        "10m_v_component_of_wind": field(0.0, 4.0),
        "sea_surface_temperature": np.where(land, np.nan, field(290.0, 3.0)),
        "total_precipitation_12hr": np.maximum(field(2e-3, 3e-3), 0.0),
        "toa_incident_solar_radiation": solar.toa_incident_solar_radiation(time, lat, lon),
    }
    for name, value in surface.items():
        data[name] = (dims[:1] + dims[2:], value.astype("f4"))
    zs = 9.8 * 2000 * np.where(land, np.cos(phi[0]) * np.sin(2 * lam[0]), 0.0)
    data["geopotential_at_surface"] = (dims[2:], zs.astype("f4"))
    data["land_sea_mask"] = (dims[2:], land.astype("f4"))
    ds = xr.Dataset(
        data,
        coords={
            "time": time,
            "level": np.asarray(LEVELS, np.int64),
            "latitude": lat,
            "longitude": lon,
        },
    )
    for name in ds.data_vars:
        ds[name].attrs["units"] = CATALOGUE[str(name)].units
    return ds


SIMULATED_TRUTH = dict(resolution="T21", layers=8, dt_minutes=60, output_hours=12, spinup_days=0)
SIMULATED_START = np.datetime64("2001-03-01T00", "ns")


def simulated_archive(start: np.datetime64, times: int = 12) -> xr.Dataset:
    """A tiny simulated archive (T21 L8, 60 min step, 12-hourly, 32 x 64, 13 levels) from ``start``.

    Two days after the Held-Suarez equilibrium temperature at rest plus small bumps: a jet's worth
    of temperature gradient and no wind, which adjusts and turns baroclinically unstable, so
    perturbations grow within days. Raw (not through the reader); its ``simulation_config``
    attribute records the truth's simulator, as `weather data simulate` does.
    """
    import dataclasses
    import json

    from weather.baselines.physics import EnsembleModel
    from weather.data.grid import equiangular_grid
    from weather.data.variables import CATALOGUE
    from weather.sim.dynamics import SimulationConfig
    from weather.sim.initialise import total_wavenumbers

    config = SimulationConfig(**SIMULATED_TRUTH)
    latitude, longitude = equiangular_grid(32, 64)
    ensemble_model = EnsembleModel(config, latitude, longitude, 21)
    model = ensemble_model.model
    grid = model.coords.horizontal
    state = model.initial_state(0, start - np.timedelta64(2, "D"))
    ps = np.exp(grid.to_nodal(state.log_surface_pressure))
    t_eq = model.forcing.equilibrium_temperature(ps) - model.reference_temperature[:, None, None]
    keep = (total_wavenumbers(grid) <= 21) & grid.mask
    rng = np.random.default_rng(0)
    bumps = 0.2 * rng.standard_normal((config.layers, *grid.modal_shape)) * keep
    state = dataclasses.replace(
        state, temperature_variation=(grid.to_modal(t_eq) + bumps).astype(np.float32)
    )
    _, fields = ensemble_model.advance(ensemble_model.run(state, 48), times)
    dims = ("time", "level", "latitude", "longitude")
    data = {
        name: (dims if fields[name].ndim == 4 else ("time", *dims[2:]), fields[name])
        for name in (
            "geopotential",
            "temperature",
            "u_component_of_wind",
            "v_component_of_wind",
            "surface_pressure",
        )
    }
    data["geopotential_at_surface"] = (dims[2:], model.surface_geopotential()[0])
    ds = xr.Dataset(
        data,
        coords={
            "time": start + np.timedelta64(12, "h") * np.arange(times),
            "level": np.asarray(config.levels),
            "latitude": model.latitude,
            "longitude": model.longitude,
        },
        attrs={"simulation_config": json.dumps(config.to_attrs())},
    )
    for name in ds.data_vars:
        ds[name].attrs["units"] = CATALOGUE[str(name)].units
    return ds


def tiny_model_config(**sampler):  # type: ignore[no-untyped-def]
    from weather.model.backbone import SphereTransformerConfig
    from weather.model.denoiser import ModelConfig
    from weather.model.sampler import SamplerConfig
    from weather.model.task import TaskConfig

    return ModelConfig(
        task=TaskConfig(levels=LEVELS),
        backbone=SphereTransformerConfig(
            patch_size=2,
            d_model=32,
            num_layers=1,
            num_heads=2,
            mlp_ratio=2,
            conditioning_dim=32,
            noise_frequencies=8,
        ),
        sampler=SamplerConfig(**{"num_steps": 4, **sampler}),
    )


EPS = float(np.finfo(np.float32).eps)  # 1.19e-7: one unit in the last place at 1.0


def assert_close_per_channel(got: np.ndarray, want: np.ndarray, ulps: float, what: str) -> None:
    """|got - want| <= ulps * EPS * max|want_c| in every channel c (last axis)."""
    scale = np.abs(want).reshape(-1, want.shape[-1]).max(axis=0)
    worst = np.abs(got - want).reshape(-1, want.shape[-1]).max(axis=0)
    bad = worst > ulps * EPS * scale
    assert not bad.any(), f"{what}: channels {np.flatnonzero(bad)} off by {worst / scale} x max"


# -- a tiny forecaster and its rollout, shared by the model, forecast, service and tools tests --


def perturbed_params(forecaster, seed: int = 0):  # type: ignore[no-untyped-def]
    """Initial parameters moved off the zero-initialised head, so the network matters."""
    import jax

    params = forecaster.init_params(jax.random.PRNGKey(seed))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def setup(archive, statistics):  # type: ignore[no-untyped-def]
    from weather.model.denoiser import Forecaster
    from weather.model.task import Normalization, state_to_channels

    config = tiny_model_config()
    norm = Normalization.from_statistics(config.task, statistics)
    fc = Forecaster(config, norm, archive.latitude.values, archive.longitude.values)
    names = config.task.level_variables + config.task.surface_variables
    states = state_to_channels(config.task, {n: archive[n].values[:2] for n in names})
    static = archive["geopotential_at_surface"].values[..., None]
    return fc, perturbed_params(fc), states[0], states[1], static


def run(roller, params, prev, cur, static, members, steps=3, seed=0):  # type: ignore[no-untyped-def]
    chunks = list(
        roller.run(
            params,
            previous=prev,
            current=cur,
            static=static,
            init_time=np.datetime64("2001-01-01T06"),
            steps=steps,
            members=members,
            seed=seed,
        )
    )
    assert [lo for lo, _ in chunks] == list(range(0, steps, roller.config.chunk_steps))
    return np.concatenate([c for _, c in chunks], axis=0)  # [steps, M, H, W, C]


def real_harmonic(
    latitude: np.ndarray, longitude: np.ndarray, degree: int, order: int
) -> np.ndarray:
    """The real orthonormal Y_lm ``[lat, lon]`` on a grid (degrees) from scipy's complex ones:
    the cosine harmonic for ``order > 0``, the sine for ``order < 0``."""
    colat, azimuth = np.meshgrid(
        np.deg2rad(90.0 - np.asarray(latitude)), np.deg2rad(np.asarray(longitude)), indexing="ij"
    )
    y = sph_harm_y(degree, abs(order), colat, azimuth)
    if order == 0:
        return np.asarray(y.real)
    # sqrt(2) Re / Im of Y_l^|m| are the orthonormal cos / sin harmonics, up to the
    # Condon-Shortley sign (-1)^m, which squares away in every power the tests compare.
    return np.sqrt(2.0) * (y.real if order > 0 else y.imag)
