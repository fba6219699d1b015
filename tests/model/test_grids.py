"""Both backbones on every kind of global grid an ERA5 archive comes on, and refusals of the rest.

Grids are named as WeatherBench2 names them, NLONxNLAT: equiangular without pole rows (64x32 in
WeatherBench2; here 16x8), equiangular with rows on both poles and an odd row count (240x121,
1440x721, 120x61; here 16x9 and 32x17), Gaussian (here 8 Gauss-Legendre latitudes), and an odd
count without pole rows (no archive's, but what the U-Net's coarse levels of a 24- or 720-row
grid become). Archives store latitudes north to south or south to north; the reader hands the
model ascending latitudes (`weather.data.reader`), and the Forecaster test below goes through it
from a north-to-south store.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
from support import synthetic_archive, tiny_model_config

from weather import cli
from weather.data.grid import equiangular_grid, gaussian_latitudes
from weather.data.reader import open_archive
from weather.data.statistics import compute_statistics
from weather.model import convnet, train
from weather.model.backbone import (
    SphereTransformerConfig,
    SphereUNetConfig,
    build_backbone,
    check_grid,
)
from weather.model.denoiser import Forecaster
from weather.model.layers import SphereGrid, pad_latitude_over_poles, pad_sphere
from weather.model.task import Normalization, static_channels


def _longitudes(n: int) -> np.ndarray:
    return 360.0 / n * np.arange(n)


GRIDS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "16x8": equiangular_grid(8, 16),
    "16x9_poles": (np.linspace(-90.0, 90.0, 9), _longitudes(16)),
    "32x17_poles": (np.linspace(-90.0, 90.0, 17), _longitudes(32)),
    "16x8_gaussian": (gaussian_latitudes(8)[0], _longitudes(16)),
    "16x7_odd": equiangular_grid(7, 16),
}
# Real archives' grids (numpy-only tests): WeatherBench2's, CDS's 0.25 deg, a 3 deg one, the
# simulated truth's Gaussian T21 grid.
REAL_GRIDS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "64x32": equiangular_grid(32, 64),
    "240x121": (np.linspace(-90.0, 90.0, 121), _longitudes(240)),
    "1440x721": (np.linspace(-90.0, 90.0, 721), _longitudes(1440)),
    "120x61": (np.linspace(-90.0, 90.0, 61), _longitudes(120)),
    "64x32_gaussian": (gaussian_latitudes(32)[0], _longitudes(64)),
}

TRANSFORMER = SphereTransformerConfig(
    patch_size=2,
    d_model=16,
    num_layers=1,
    num_heads=2,
    mlp_ratio=2,
    conditioning_dim=8,
    noise_frequencies=4,
    position_frequencies=2,
    # Latitude only: the network is then exactly equivariant to shifts by whole patches.
    position_encoding="latitude",
)
# Three levels: 17 rows become 9 and 5, two odd row counts paired over the north pole.
UNET = SphereUNetConfig(
    channels=(4, 8, 8),
    blocks_per_level=1,
    num_groups=2,
    num_heads=2,
    conditioning_dim=8,
    noise_frequencies=4,
)
CONFIGS = {"transformer": TRANSFORMER, "unet": UNET}
# Longitude shifts each architecture commutes with exactly: whole patches (tokens are permuted,
# attention does not see their order), whole cells of the U-Net's coarsest level, 2^(levels-1)
# columns (every stride-2 downsampling keeps its alignment).
GUARANTEED_SHIFT = {"transformer": TRANSFORMER.patch_size, "unet": 2 ** (len(UNET.channels) - 1)}
IN_CHANNELS, OUT_CHANNELS = 3, 2


def _random_params(module: nn.Module, x: np.ndarray, c: np.ndarray) -> Any:
    """Parameters of the module's shapes for inputs like x [B, H, W, C] and c [B]
    (`_draw_like`), traced but never compiled."""
    return _draw_like(jax.eval_shape(lambda: module.init(jax.random.key(0), x, c)))


def _draw_like(shapes: Any) -> Any:
    """Parameters of these shapes drawn with numpy, fan-in scaled and all non-zero (the
    zero-initialised head included), so that outputs are not trivially zero."""
    rng = np.random.default_rng(1)

    def draw(leaf: Any) -> np.ndarray:
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
        return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree.map(draw, shapes)


# -- the networks on each grid -----------------------------------------------------------------


@pytest.mark.parametrize("arch", CONFIGS)
@pytest.mark.parametrize("grid", GRIDS)
def test_backbone_runs_on_the_grid_and_commutes_with_its_guaranteed_longitude_shift(grid, arch):
    lat, lon = GRIDS[grid]
    module = build_backbone(CONFIGS[arch], lat, lon, OUT_CHANNELS)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, lat.size, lon.size, IN_CHANNELS)).astype(np.float32)
    shift = GUARANTEED_SHIFT[arch]
    # One batch: the input, shifted by the guaranteed shift and by one column (not guaranteed
    # for either network: the transformer's patches and the U-Net's strides are two wide).
    batch = np.concatenate([x, np.roll(x, shift, axis=2), np.roll(x, 1, axis=2)])
    c = np.full(3, 0.3, np.float32)
    params = _random_params(module, batch, c)
    out = np.asarray(jax.jit(module.apply)(params, batch, c))
    assert out.shape == (3, lat.size, lon.size, OUT_CHANNELS)
    assert np.all(np.isfinite(out))
    scale = np.abs(out[0]).max()
    assert scale > 0.1  # random parameters and unit inputs: measured 1.8-4.1
    # Float32 rounding only (the same sums in another order): measured 1.2e-7 to 7.9e-7 of the
    # largest output (under 7 ulps) over these grids and three inputs. 1e-5 leaves a margin of
    # ten and is five orders below what a shift by one column changes (measured 0.77-1.5).
    equivariance_error = np.abs(out[1] - np.roll(out[0], shift, axis=1)).max() / scale
    assert equivariance_error < 1e-5, equivariance_error
    one_column_difference = np.abs(out[2] - np.roll(out[0], 1, axis=1)).max() / scale
    assert one_column_difference > 1e-2, one_column_difference


# -- the halo over the poles -------------------------------------------------------------------


def _brute_force_halo(field: np.ndarray, lat: np.ndarray, lon: np.ndarray, pad: int) -> np.ndarray:
    """[lat + 2 pad, lon + 2 pad] `field` [lat, lon] with `pad` rows continued over each pole
    and `pad` columns around the dateline, found cell by cell from coordinates.

    Beyond a pole lie the cells nearest it on the opposite meridian, nearest first; a row on the
    pole is the pole itself on every meridian, so it is not there again.
    """
    n_lat, n_lon = field.shape

    def column(longitude: float) -> int:
        (index,) = np.flatnonzero(np.abs((longitude - lon + 180.0) % 360.0 - 180.0) < 1e-6)
        return int(index)

    def beyond(distance_from_pole: np.ndarray) -> list[int]:
        off_pole = [i for i in np.argsort(distance_from_pole) if distance_from_pole[i] > 1e-9]
        return off_pole[:pad]

    south = beyond(lat + 90.0)[::-1]  # outermost first
    north = beyond(90.0 - lat)
    step = lon[1] - lon[0]
    columns = lon[0] + step * np.arange(-pad, n_lon + pad)
    out = np.empty((n_lat + 2 * pad, n_lon + 2 * pad), field.dtype)
    for j, longitude in enumerate(columns):
        out[:pad, j] = field[south, column(longitude + 180.0)]
        out[pad : pad + n_lat, j] = field[:, column(longitude)]
        out[pad + n_lat :, j] = field[north, column(longitude + 180.0)]
    return out


@pytest.mark.parametrize("grid", GRIDS)
def test_pad_sphere_is_the_brute_force_halo(grid):
    lat, lon = GRIDS[grid]
    g = SphereGrid.build(lat, lon)
    # Pole rows are recognised where they exist (never on a Gaussian grid).
    assert (g.south_pole_row, g.north_pole_row) == (("poles" in grid),) * 2
    # Distinct integers: equality says each cell came from exactly the right place.
    field = np.arange(lat.size * lon.size, dtype=np.float32).reshape(lat.size, lon.size)
    padded = pad_sphere(field[None, :, :, None], 2, 2, (g.south_pole_row, g.north_pole_row))
    np.testing.assert_array_equal(padded[0, :, :, 0], _brute_force_halo(field, lat, lon, 2))


def _unfolded_latitude(vectors: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """[rows, lon] latitude (degrees) of unit vectors [rows, lon, 3] along each column's meridian
    continued over the poles: beyond 90 on the far side of the north pole, below -90 beyond the
    south pole (unwrapped down the rows)."""
    lam = np.deg2rad(longitude)[None, :]
    along = vectors[..., 0] * np.cos(lam) + vectors[..., 1] * np.sin(lam)
    return np.rad2deg(np.unwrap(np.arctan2(vectors[..., 2], along), axis=0))


@pytest.mark.parametrize("grid", [*GRIDS, *REAL_GRIDS])
def test_unet_halo_at_every_level_continues_the_rows_over_the_poles(grid):
    """Each U-Net level's halo holds the cells whose mirror images lie nearest to where the
    level's rows continue over each pole, checked on the cells' positions carried down the
    levels the way the network pairs rows (numpy, no network)."""
    lat, lon = {**GRIDS, **REAL_GRIDS}[grid]
    g = SphereGrid.build(lat, lon)
    # As many levels as the longitudes allow, up to the five 1440x721 allows.
    levels = min(5, max(n for n in range(1, 6) if lon.size % 2**n == 0))
    config = dataclasses.replace(UNET, channels=(4,) * levels)
    layout = convnet.level_layout(g, config)
    assert layout[0].poles == (g.south_pole_row, g.north_pole_row)
    vectors = g.unit_vectors()[None]
    longitude = np.asarray(lon)
    for level in layout:
        rows = _unfolded_latitude(vectors[0], longitude)
        np.testing.assert_allclose(
            rows, np.broadcast_to(np.asarray(level.latitude)[:, None], rows.shape), atol=1e-9
        )
        psi = rows[:, 0]
        halo = _unfolded_latitude(
            pad_latitude_over_poles(vectors, 1, 1, level.poles)[0], longitude
        )[:, 0]
        if psi.size >= 2:
            # Beyond the north pole at psi_last + spacing; the south pole as a north pole.
            for edge_rows, halo_row in ((psi, halo[-1]), (-psi[::-1], -halo[0])):
                wanted = 2 * edge_rows[-1] - edge_rows[-2]
                mirrors = 180.0 - edge_rows  # every row's image over the pole
                assert halo_row > edge_rows[-1], (level, halo_row)
                assert abs(halo_row - wanted) <= np.abs(mirrors - wanted).min() + 1e-9, level
                # Exact on every equiangular grid's own rows, and at every level of one with an
                # even row count and no pole rows (each level is again such a grid).
                if ("gaussian" not in grid and level is layout[0]) or grid in ("16x8", "64x32"):
                    assert abs(halo_row - wanted) < 1e-9, level
        if vectors.shape[1] % 2:  # the network's pairing: one more row over the north pole
            vectors = pad_latitude_over_poles(vectors, 0, 1, level.poles)
        # Rows paired along one meridian (every other column): their centre is the normalised sum.
        vectors = vectors[:, 0::2, 0::2] + vectors[:, 1::2, 0::2]
        vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
        longitude = longitude[0::2]


@pytest.mark.parametrize("grid", ["16x9_poles", "32x17_poles"])
def test_unet_convolutions_mirror_as_their_level_layout_says(grid):
    lat, lon = GRIDS[grid]
    module = build_backbone(UNET, lat, lon, OUT_CHANNELS)
    layout = {level.rows: level.poles for level in convnet.level_layout(module.grid, UNET)}
    seen: dict[int, set[tuple[int, int]]] = {}

    def record(next_fun, args, kwargs, context):  # type: ignore[no-untyped-def]
        if isinstance(context.module, convnet.SphereConv) and context.method_name == "__call__":
            seen.setdefault(args[0].shape[1], set()).add(context.module.poles)
        return next_fun(*args, **kwargs)

    x = np.zeros((1, lat.size, lon.size, IN_CHANNELS), np.float32)
    c = np.zeros(1, np.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: module.init(jax.random.key(0), x, c))
    assert seen == {rows: {poles} for rows, poles in layout.items()}


# -- a Forecaster on each grid ---------------------------------------------------------------


def _archive_on(tmp_path, lat: np.ndarray, lon: np.ndarray):  # type: ignore[no-untyped-def]
    """`synthetic_archive`'s fields relabelled onto the grid (their waves were drawn on another
    grid's latitudes: numbers of the right size, which is all one training step needs), stored
    north to south when the grid has pole rows (as CDS's 1440x721) and read back."""
    ds = synthetic_archive(n_lat=lat.size, n_lon=lon.size, days=2).assign_coords(
        latitude=lat, longitude=lon
    )
    if lat[-1] == 90.0:
        ds = ds.isel(latitude=slice(None, None, -1))
    ds.to_zarr(tmp_path / "archive.zarr")
    return open_archive(tmp_path / "archive.zarr").load()


# The Forecaster's own grid-dependent parts (spherical noise tables, area and loss weights, the
# forcings' solar geometry) do not depend on the backbone, and each backbone meets every grid in
# the tests above; so every grid with the transformer, and the U-Net on one grid with pole rows
# (its odd row count paired over the pole), at about 6 and 13 s of compiling each.
@pytest.mark.parametrize(
    ("grid", "arch"),
    [
        ("16x8", "transformer"),
        ("16x9_poles", "transformer"),
        ("32x17_poles", "transformer"),
        ("16x8_gaussian", "transformer"),
        ("32x17_poles", "unet"),
    ],
)
def test_forecaster_trains_and_samples_12h_on_the_grid(tmp_path, grid, arch):
    lat, lon = GRIDS[grid]
    archive = _archive_on(tmp_path, lat, lon)
    np.testing.assert_array_equal(archive["latitude"].values, lat)  # what the model receives
    names = [str(v) for v in archive.data_vars]
    stats = compute_statistics(
        archive, names, start=archive.time.values[0], end=archive.time.values[-1]
    )
    model = tiny_model_config(num_steps=2)  # the transformer, xyz position encoding
    if arch == "unet":
        model = dataclasses.replace(model, backbone=dataclasses.replace(UNET, channels=(4, 8)))
    forecaster = Forecaster(model, Normalization.from_statistics(model.task, stats), lat, lon)
    period = (archive.time.values[0], archive.time.values[-1])
    windows = train.task_windows(archive, model.task, period, 2, seed=0)
    arrays = train.batch_arrays(windows.load(windows.epoch_batches(0)[0]), forecaster)
    static = forecaster.normalize_static(static_channels(archive, model.task))
    # Random parameters, every one non-zero (no initialiser to compile); rbg keys, because
    # threefry's compilation alone takes seconds on a CPU.
    params = _draw_like(forecaster.param_shapes())
    key = functools.partial(jax.random.key, impl="rbg")
    # A training step's gradient (the optimiser's update does not depend on the grid).
    loss, grads = jax.jit(jax.value_and_grad(forecaster.loss))(
        params,
        key(1),
        arrays["previous"],
        arrays["current"],
        arrays["target"],
        arrays["forcings"],
        static,
    )
    assert np.isfinite(float(loss)) and float(loss) > 0.0
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(np.square(g).sum()) for g in leaves) > 0.0
    forecast = jax.jit(forecaster.sample_step)(
        params,
        jax.random.split(key(2), 1),
        arrays["previous"][:1],
        arrays["current"][:1],
        arrays["forcings"][0],
        static,
    )
    assert forecast.shape == (1, lat.size, lon.size, model.task.n_state)
    assert np.all(np.isfinite(np.asarray(forecast)))
    # A 12 h step of an untrained network is the current state plus a residual of about its
    # diff_std per channel, not a blow-up: measured at most 3.2-5.5 diff_stds (the largest of
    # 1000-4000 values); 20 catches a blow-up and leaves room for other draws.
    change = (
        np.abs(np.asarray(forecast) - arrays["current"][:1]) / forecaster.normalization.diff_std
    )
    assert change.max() < 20.0, change.max()


# -- grids refused before any work -----------------------------------------------------------

_POLES_3 = np.array([-90.0, 0.0, 90.0])
REFUSALS = {
    "transformer_patch_does_not_divide_longitudes": (
        dataclasses.replace(TRANSFORMER, patch_size=8),
        np.linspace(-90.0, 90.0, 9),
        _longitudes(20),
        r"9 x 20 .*divisible by patch_size 8",
    ),
    "transformer_too_few_rows_to_pad": (
        dataclasses.replace(TRANSFORMER, patch_size=8),
        _POLES_3,
        _longitudes(16),
        r"3 x 16 .*needs at least 5 rows",
    ),
    "unet_longitudes_not_halved_per_level": (
        UNET,
        np.linspace(-90.0, 90.0, 9),
        _longitudes(20),
        r"9 x 20 .*multiple of 8",
    ),
    "unet_level_with_fewer_rows_than_the_halo": (
        dataclasses.replace(UNET, channels=(4, 4, 4, 4), kernel_size=5),
        equiangular_grid(8, 16)[0],
        _longitudes(16),
        r"8 x 16 .*level 3 has 1 rows",
    ),
    "regional_grid": (UNET, np.linspace(-30.0, 30.0, 9), _longitudes(16), r"9 x 16 .*supported"),
    "north_pole_row_missing": (
        TRANSFORMER,
        np.arange(-90.0, 89.0, 22.5),
        _longitudes(16),
        r"8 x 16 .*supported",
    ),
    "descending_latitudes": (
        TRANSFORMER,
        np.linspace(90.0, -90.0, 9),
        _longitudes(16),
        r"9 x 16 .*ascending",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_grids_a_backbone_cannot_run_on_are_refused_when_the_model_is_built(case, statistics):
    config, lat, lon, message = REFUSALS[case]
    with pytest.raises(ValueError, match=message):
        check_grid(config, lat, lon)
    model = dataclasses.replace(tiny_model_config(), backbone=config)
    norm = Normalization.from_statistics(model.task, statistics)
    # The Forecaster refuses in its constructor, before any parameter or noise table exists.
    with pytest.raises(ValueError, match=message):
        Forecaster(model, norm, lat, lon)


def test_weather_train_refuses_such_a_grid_in_one_line(tmp_path, capsys):
    ds = synthetic_archive(n_lat=8, n_lon=20, days=2)
    ds.to_zarr(tmp_path / "train.zarr")
    code = cli.main(
        [
            "train", "--train-archive", str(tmp_path / "train.zarr"),
            "--val-archive", str(tmp_path / "none.zarr"), "--run-dir", str(tmp_path / "run"),
            "--patch", "8", "--d-model", "8", "--layers", "1", "--heads", "2",
            "--steps", "1", "--batch-size", "1", "--quiet",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("weather: error: grid 8 x 20 "), err
    assert "divisible by patch_size 8" in err[0]
    # Refused before the statistics pass (long on ERA5) writes anything into the run.
    assert not (tmp_path / "run" / "statistics.nc").exists()
