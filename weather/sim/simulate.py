"""Run the simulated atmosphere and stream it into an ERA5-style Zarr archive.

The archive is laid out like WeatherBench2's 5.625 degree data (dims ``time, level, latitude,
longitude``; names ``geopotential``, ``temperature``, ...; latitude ascending, longitude in
[0, 360)), with the static ``geopotential_at_surface``. With ``native=True`` the same fields on the
model's Gaussian grid go into the store's ``native`` group.

Safety and resumption:
- the store's structure (every array, the full time axis) is written once, up front, into a
  temporary directory that is renamed into place, so a half-made store never appears;
- data is written in chunks of whole Zarr chunks; after each chunk the model state and the number
  of finished chunks are saved together in one file, replaced atomically. An interrupted run
  resumes from the last finished chunk and rewrites anything after it, giving bit-for-bit the
  result of an uninterrupted run. Times not yet simulated read as NaN (the Zarr fill value) and the
  sidecar file ``<store>.progress.json`` says how far it got;
- the spun-up initial state is cached by a hash of everything that determines it, so runs that
  share a configuration, seed and start date skip the spin-up.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time as wallclock
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import xarray as xr
import zarr

from weather.data.atomic import replacing, write_bytes
from weather.data.errors import ArchiveError
from weather.data.variables import CATALOGUE, SIMULATED_LEVEL_VARIABLES
from weather.sim.dynamics import HeldSuarezModel, SimulationConfig

# Sidecar files beside the store (`<store>.state.npz`, `<store>.progress.json`): zarr warns about
# foreign objects inside a store, and other tools might trip on them.
STATE_SUFFIX = ".state.npz"
PROGRESS_SUFFIX = ".progress.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One simulated period.

    Attributes:
      start: first archive time (UTC).
      days: simulated days written to the archive.
      seed: seeds the initial perturbation; different seeds give independent climates' weather.
      chunk_days: days per write (and per resumable checkpoint); a whole number of days.
    """

    start: np.datetime64
    days: float
    seed: int = 0
    chunk_days: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", np.asarray(self.start, dtype="datetime64[ns]")[()])
        object.__setattr__(self, "days", float(self.days))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "chunk_days", int(self.chunk_days))
        if self.days <= 0:
            raise ValueError(f"days: must be positive, got {self.days}")
        if self.chunk_days < 1:
            raise ValueError(f"chunk_days: must be >= 1, got {self.chunk_days}")


def _save_state(path: Path, state: Any, meta: dict[str, Any]) -> None:
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)}
    # numpy appends ".npz" to any other name.
    with replacing(path, ".tmp.npz", sync=True) as tmp:
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]


def _load_state(path: Path, template: Any) -> tuple[Any, dict[str, Any]]:
    treedef = jax.tree_util.tree_structure(template)
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        leaves = [data[f"leaf_{i}"] for i in range(len(jax.tree_util.tree_leaves(template)))]
    return jax.tree_util.tree_unflatten(treedef, leaves), meta


@functools.lru_cache(maxsize=4)
def get_model(config: SimulationConfig) -> HeldSuarezModel:
    """A model per configuration, kept so that repeated runs reuse its compiled steps."""
    return HeldSuarezModel(config)


def spinup_key(config: SimulationConfig, spec: RunSpec) -> str:
    """Hash of everything that determines the spun-up state at `spec.start`."""
    payload = json.dumps(
        {"config": config.to_attrs(), "seed": spec.seed, "start": str(spec.start), "v": 1},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _archive_times(config: SimulationConfig, spec: RunSpec) -> np.ndarray:
    step = np.timedelta64(config.output_hours, "h")
    n = round(spec.days * 24 / config.output_hours)
    return spec.start + step * np.arange(n)


def _template(model: HeldSuarezModel, times: np.ndarray, native: bool) -> dict[str, xr.Dataset]:
    """Lazy, full-size datasets that define the store's structure (nothing is computed)."""
    import dask.array as da

    cfg = model.config
    per_day = 24 // cfg.output_hours
    levels = np.asarray(cfg.levels, dtype=np.int64)
    zs, zs_native = model.surface_geopotential()
    grids = {"": (model.latitude, model.longitude, zs)}
    if native:
        grids["native"] = (model.native_latitude, model.native_longitude, zs_native)
    out = {}
    for group, (lat, lon, surface_geopotential) in grids.items():
        shape3 = (times.size, levels.size, lat.size, lon.size)
        chunks3 = (per_day, levels.size, lat.size, lon.size)
        data_vars: dict[str, Any] = {}
        for name in SIMULATED_LEVEL_VARIABLES:
            data_vars[name] = (
                ("time", "level", "latitude", "longitude"),
                da.full(shape3, np.nan, dtype=np.float32, chunks=chunks3),
            )
        data_vars["surface_pressure"] = (
            ("time", "latitude", "longitude"),
            da.full(
                (times.size, lat.size, lon.size),
                np.nan,
                dtype=np.float32,
                chunks=(per_day, lat.size, lon.size),
            ),
        )
        data_vars["geopotential_at_surface"] = (
            ("latitude", "longitude"),
            np.asarray(surface_geopotential, dtype=np.float32),
        )
        ds = xr.Dataset(
            data_vars,
            coords={"time": times, "level": levels, "latitude": lat, "longitude": lon},
        )
        for key, var in ds.data_vars.items():
            entry = CATALOGUE[str(key)]
            var.attrs = {"units": entry.units, "long_name": entry.long_name}
            if entry.standard_name:
                var.attrs["standard_name"] = entry.standard_name
        ds["latitude"].attrs = {"units": "degrees_north", "standard_name": "latitude"}
        ds["longitude"].attrs = {"units": "degrees_east", "standard_name": "longitude"}
        ds["level"].attrs = {"units": "hPa", "long_name": "pressure level"}
        ds["time"].attrs = {"standard_name": "time"}
        out[group] = ds
    return out


def _store_attrs(config: SimulationConfig, spec: RunSpec) -> dict[str, Any]:
    return {
        "title": "Simulated ERA5-style archive (primitive equations, seasonal Held-Suarez)",
        "source": "weather.sim: dinosaur primitive equations with Held-Suarez forcing, seasonal "
        "cycle and ETOPO20-derived orography",
        "simulation_config": json.dumps(config.to_attrs(), sort_keys=True),
        "simulation_seed": spec.seed,
        "simulation_start": str(spec.start),
        "simulation_days": spec.days,
        "simulation_chunk_days": spec.chunk_days,
        "below_ground": "levels below the surface extrapolated from the lowest model level with "
        "a 6.5 K/km lapse rate (temperature, geopotential); winds held at the lowest level",
        "regridding": "first-order conservative from the Gaussian grid",
        "format_version": FORMAT_VERSION,
    }


def _create_store(
    path: Path, model: HeldSuarezModel, config: SimulationConfig, spec: RunSpec, native: bool
) -> None:
    times = _archive_times(model.config, spec)
    templates = _template(model, times, native)
    with replacing(path, ".creating") as tmp:
        for group, ds in templates.items():
            ds.attrs = _store_attrs(config, spec)
            encoding = {
                "time": {
                    "units": "hours since 1970-01-01",
                    "calendar": "proleptic_gregorian",
                    "dtype": "int64",
                },
            }
            ds.to_zarr(
                tmp,
                group=group or None,
                mode="a" if group else "w",
                compute=False,
                zarr_format=3,
                consolidated=False,
                encoding=encoding,
            )
        # The structure never changes after this (region writes only touch chunks), so
        # consolidated metadata stays valid and lets plain `xarray.open_zarr` open the store in
        # one read.
        with warnings.catch_warnings():
            # zarr warns that consolidated metadata is not in the v3 spec yet; xarray and
            # zarr-python both read it, and readers without it fall back to listing the store.
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(str(tmp))


def read_progress(path: str | Path) -> dict[str, Any] | None:
    """The progress record of a simulated store, or None if it has none."""
    p = _sidecar(Path(path), PROGRESS_SUFFIX)
    if not p.exists():
        return None
    return json.loads(p.read_text())


def simulate(
    out: str | Path,
    *,
    config: SimulationConfig,
    spec: RunSpec,
    native: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Path:
    """Simulate `spec.days` days into the Zarr store `out`, resuming if it already exists.

    Args:
      out: store path (a directory). An existing store must have been made with the same
        configuration and run spec; it is never overwritten.
      config: the simulated climate and archive layout.
      spec: period, seed and write granularity.
      native: also store the model-grid fields in the ``native`` group.
      cache_dir: where spun-up states are cached (None: no cache).
      progress: show a progress bar (simulated days per second).
      stop_after_chunks: stop (cleanly, as if interrupted) after this many chunks; for tests.
      on_chunk: called with (chunks done, chunks total) after each chunk.

    Returns:
      The store path.
    """
    path = Path(out)
    model = get_model(config)
    attrs = _store_attrs(config, spec)
    if path.exists():
        existing = xr.open_zarr(path, decode_times=False).attrs
        for key in (
            "simulation_config",
            "simulation_seed",
            "simulation_start",
            "simulation_days",
            "simulation_chunk_days",
        ):
            if _parsed(existing.get(key)) != _parsed(attrs[key]):
                raise ArchiveError(
                    f"{path}: exists with a different {key} ({existing.get(key)!r} != "
                    f"{attrs[key]!r}); choose another output path to keep what is stored"
                )
        if native and "native" not in _groups(path):
            raise ArchiveError(f"{path}: exists without the native group; rerun without --native")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_store(path, model, config, spec, native)
    native = native or "native" in _groups(path)

    times = _archive_times(config, spec)
    per_chunk = spec.chunk_days * 24 // config.output_hours
    n_chunks = -(-times.size // per_chunk)
    state_path = _sidecar(path, STATE_SUFFIX)
    template = model.initial_state(spec.seed, spec.start)
    if state_path.exists():
        state, meta = _load_state(state_path, template)
        done = int(meta["chunks_done"])
    else:
        state = _spun_up_state(model, spec, cache_dir, progress)
        done = 0
    bar = _progress_bar(progress, total=spec.days, initial=done * spec.chunk_days)
    try:
        for chunk in range(done, n_chunks):
            if stop_after_chunks is not None and chunk - done >= stop_after_chunks:
                break
            lo, hi = chunk * per_chunk, min((chunk + 1) * per_chunk, times.size)
            state = model.set_time(state, times[lo] - np.timedelta64(config.output_hours, "h"))
            state, diags = model.advance(state, hi - lo)
            diags = jax.device_get(diags)
            _check_finite(diags, times[lo:hi])
            _write_region(path, diags, lo, hi, native)
            _save_state(state_path, state, {"chunks_done": chunk + 1})
            _write_progress(path, chunk + 1, n_chunks, times, hi)
            if bar is not None:
                bar.update((hi - lo) * config.output_hours / 24)
            if on_chunk is not None:
                on_chunk(chunk + 1, n_chunks)
    finally:
        if bar is not None:
            bar.close()
    return path


def _check_finite(diags: dict[str, np.ndarray], times: np.ndarray) -> None:
    """Refuse to store a blown-up simulation (nothing of the chunk is written)."""
    for name, x in diags.items():
        bad = ~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
        if bad.any():
            raise ArchiveError(
                f"{name}: the simulation produced NaN/inf at {times[int(np.argmax(bad))]}; "
                "the model is unstable with these settings (shorter dt_minutes or a stronger "
                "filter); the store keeps everything before this chunk"
            )


def _parsed(value: Any) -> Any:
    """A stored attribute as a value (JSON text parsed), so 60 and 60.0 compare equal."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _groups(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.is_dir() and (p / "zarr.json").exists()}


def _write_region(path: Path, diags: dict[str, np.ndarray], lo: int, hi: int, native: bool) -> None:
    for group in ("", "native") if native else ("",):
        prefix = f"{group}/" if group else ""
        data_vars = {}
        for name in (*SIMULATED_LEVEL_VARIABLES, "surface_pressure"):
            dims = ("time", "level", "latitude", "longitude")
            x = np.asarray(diags[prefix + name], dtype=np.float32)
            data_vars[name] = (dims if x.ndim == 4 else ("time", "latitude", "longitude"), x)
        ds = xr.Dataset(data_vars)
        ds.to_zarr(
            path,
            group=group or None,
            region={"time": slice(lo, hi)},
            consolidated=False,
            zarr_format=3,
        )


def _write_progress(path: Path, done: int, total: int, times: np.ndarray, written: int) -> None:
    record = {
        "chunks_done": done,
        "chunks_total": total,
        "times_written": int(written),
        "times_total": int(times.size),
        "complete": done == total,
        "last_time": str(times[written - 1]),
        "updated": wallclock.strftime("%Y-%m-%dT%H:%M:%SZ", wallclock.gmtime()),
    }
    write_bytes(_sidecar(path, PROGRESS_SUFFIX), json.dumps(record, indent=1).encode())


def _spun_up_state(
    model: HeldSuarezModel, spec: RunSpec, cache_dir: str | Path | None, progress: bool
) -> Any:
    """The state one archive step before `spec.start`, after the configured spin-up."""
    cfg = model.config
    cache = Path(cache_dir) / f"spinup-{spinup_key(cfg, spec)}.npz" if cache_dir else None
    template = model.initial_state(spec.seed, spec.start)
    if cache is not None and cache.exists():
        state, _ = _load_state(cache, template)
        return state
    per_day = 24 // cfg.output_hours
    total = max(round(cfg.spinup_days * per_day) - 1, 0)
    begin = spec.start - np.timedelta64(cfg.output_hours, "h") * (total + 1)
    state = model.initial_state(spec.seed, begin)
    bar = _progress_bar(progress, total=cfg.spinup_days, initial=0, desc="spin-up")
    block = 10 * per_day
    doneb = 0
    while doneb < total:
        n = min(block, total - doneb)
        state = model.set_time(state, begin + np.timedelta64(cfg.output_hours, "h") * doneb)
        # Block so that the progress bar reports computed, not merely dispatched, days.
        state = jax.block_until_ready(model.spin(state, n))
        doneb += n
        if bar is not None:
            bar.update(n / per_day)
    if bar is not None:
        bar.close()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        _save_state(cache, state, {"spinup_days": cfg.spinup_days})
    return state


def _progress_bar(enabled: bool, *, total: float, initial: float, desc: str = "simulate"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="day", unit_scale=False)
