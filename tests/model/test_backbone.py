"""Denoiser backbones: shapes, sphere geometry, equivariance, conditioning, registry, gradients."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weather.data import grid
from weather.model import backbone, convnet, transformer
from weather.model.backbone import (
    SphereTransformerConfig,
    SphereUNetConfig,
    build_backbone,
    config_from_dict,
    config_to_dict,
)
from weather.model.layers import (
    SphereGrid,
    multi_head_attention,
    pad_latitude_over_poles,
    pad_longitude_periodic,
)

TINY_TRANSFORMER = SphereTransformerConfig(
    patch_size=2, d_model=32, num_layers=2, num_heads=4, conditioning_dim=16, noise_frequencies=8
)
TINY_UNET = SphereUNetConfig(
    channels=(8, 16), blocks_per_level=1, num_groups=4, num_heads=2, conditioning_dim=16
)
ONE_LEVEL_UNET = dataclasses.replace(TINY_UNET, channels=(8,), bottleneck_attention_layers=0)
IN_CHANNELS, OUT_CHANNELS = 5, 3


def _grid(kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "equiangular":
        return grid.equiangular_grid(16, 32)
    if kind == "gaussian":
        return grid.gaussian_latitudes(16)[0], grid.equiangular_grid(16, 32)[1]
    if kind == "poles_odd":  # 17 rows including both poles: not divisible by the patch
        return np.linspace(-90.0, 90.0, 17), grid.equiangular_grid(16, 32)[1]
    raise ValueError(kind)


def _inputs(n_lat: int, n_lon: int, batch: int = 2, seed: int = 0) -> tuple[np.ndarray, ...]:
    # numpy, not jax.random: every new shape would compile threefry (seconds on a small CPU).
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, n_lat, n_lon, IN_CHANNELS)).astype(np.float32)
    return x, rng.uniform(-1.0, 1.0, batch).astype(np.float32)


def _random_params(module, x, c, seed: int = 1):
    """Parameters of the module's shapes drawn with numpy (no RNG to compile), fan-in scaled.

    Every weight is non-zero, the zero-initialised output layer included, so outputs are not
    trivially zero.
    """
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, c))
    rng = np.random.default_rng(seed)

    def draw(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
        return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree.map(draw, shapes)


@functools.cache
def _setup(config, kind: str = "equiangular"):
    """(module, random params, jitted apply), shared by the tests that use the same model."""
    lat, lon = _grid(kind)
    module = build_backbone(config, lat, lon, OUT_CHANNELS)
    params = _random_params(module, *_inputs(lat.size, lon.size))
    return module, params, jax.jit(module.apply)


@pytest.fixture(params=["transformer", "unet"])
def model(request):
    """(config, module, random params, jitted apply) on the 16 x 32 equiangular grid."""
    config = TINY_TRANSFORMER if request.param == "transformer" else TINY_UNET
    return (config, *_setup(config))


# -- shapes, dtypes, zero-initialised head ----------------------------------------------------


@pytest.mark.parametrize("kind", ["equiangular", "gaussian", "poles_odd"])
@pytest.mark.parametrize("config", [TINY_TRANSFORMER, TINY_UNET], ids=["transformer", "unet"])
def test_output_shape_and_dtype(config, kind):
    lat, lon = _grid(kind)
    module = build_backbone(config, lat, lon, OUT_CHANNELS)
    x, c = _inputs(lat.size, lon.size)
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), x, c))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    out = jax.eval_shape(module.apply, params, x, c)
    assert out.shape == (2, lat.size, lon.size, OUT_CHANNELS)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize(
    "config",
    [
        SphereTransformerConfig(
            d_model=8, num_layers=1, num_heads=2, conditioning_dim=8, noise_frequencies=2
        ),
        SphereUNetConfig(
            channels=(4,), num_groups=2, bottleneck_attention_layers=0, conditioning_dim=8
        ),
    ],
    ids=["transformer", "unet"],
)
def test_initial_output_is_zero(config):
    # Zero-initialised output layer: F_θ = 0, so the EDM denoiser starts as c_skip·x. Small
    # configs and the rbg key because compiling the initialisers dominates this test.
    lat, lon = grid.equiangular_grid(8, 16)
    module = build_backbone(config, lat, lon, OUT_CHANNELS)
    x, c = _inputs(lat.size, lon.size)
    out, params = jax.jit(module.init_with_output)(jax.random.key(0, impl="rbg"), x, c)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert out.dtype == jnp.float32 and not np.any(np.asarray(out))
    # ... and the rest of the network is not degenerate: the layer under the head is not zero.
    modulation = params["params"]["head_norm"]["modulation"]["kernel"]
    assert np.abs(modulation).max() > 0


def test_bfloat16_compute_keeps_float32_params_and_output():
    lat, lon = _grid("equiangular")
    x, c = _inputs(lat.size, lon.size)
    # Both architectures, abstractly (no compilation): float32 parameters and output.
    for config in (TINY_TRANSFORMER, TINY_UNET):
        module = build_backbone(
            dataclasses.replace(config, compute_dtype="bfloat16"), lat, lon, OUT_CHANNELS
        )
        params = jax.eval_shape(lambda module=module: module.init(jax.random.key(0), x, c))
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
        assert jax.eval_shape(module.apply, params, x, c).dtype == jnp.float32
    # The transformer numerically: bfloat16 matmuls stay close to float32 with the same params.
    _, params, apply = _setup(TINY_TRANSFORMER)
    module = build_backbone(
        dataclasses.replace(TINY_TRANSFORMER, compute_dtype="bfloat16"), lat, lon, OUT_CHANNELS
    )
    out = jax.jit(module.apply)(params, x, c)
    assert out.dtype == jnp.float32
    expected = np.asarray(apply(params, x, c))
    # bfloat16 keeps 8 significant bits: each rounded matmul operand is off by up to 2^-9
    # relative, a product of two by 2^-8, and the two layers and the head add a few such terms.
    # Measured max error / max |output|: 0.46 % here, 0.56-0.77 % on three other inputs; the
    # bound 4 x 2^-8 (1.6 %) leaves twice the worst. The floor shows bfloat16 is really used: in
    # float32 the error would be ~1e-7.
    error = np.abs(np.asarray(out) - expected).max() / np.abs(expected).max()
    assert 2.0**-12 < error < 4 * 2.0**-8, error


# -- sphere geometry ---------------------------------------------------------------------------


def _field_at(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """A smooth, non-symmetric scalar field of position on the sphere, [lat, lon]."""
    lat, lon = np.deg2rad(lat_deg)[:, None], np.deg2rad(lon_deg)[None, :]
    x, y, z = np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat) + 0 * lon
    return x + 2 * y**2 + 3 * z + x * z


@pytest.mark.parametrize("kind", ["equiangular", "gaussian", "poles_odd"])
def test_rows_beyond_a_pole_are_the_field_continued_over_it(kind):
    lat, lon = _grid(kind)
    g = SphereGrid.build(lat, lon)
    # Latitude continued past the poles: the great circle through a pole along a meridian.
    south_pad = -180.0 - lat[int(g.south_pole_row) :][:3][::-1]
    north_pad = 180.0 - lat[: lat.size - int(g.north_pole_row)][-3:][::-1]
    expected = _field_at(np.concatenate([south_pad, lat, north_pad]), lon)
    field = _field_at(lat, lon)[None, :, :, None]
    padded = pad_latitude_over_poles(field, 3, 3, (g.south_pole_row, g.north_pole_row))
    np.testing.assert_allclose(padded[0, :, :, 0], expected, atol=1e-6)


def test_longitude_halo_wraps_around_the_dateline():
    lat, lon = _grid("equiangular")
    field = _field_at(lat, lon)[None, :, :, None]
    step = lon[1] - lon[0]
    ext_lon = np.concatenate([lon[-2:] - 360.0, lon, lon[:3] + 360.0])
    assert ext_lon[2] == lon[0] and np.allclose(np.diff(ext_lon), step)
    padded = pad_longitude_periodic(field, 2, 3)
    np.testing.assert_allclose(padded[0, :, :, 0], _field_at(lat, ext_lon), atol=1e-6)


def test_grid_validation_names_the_problem():
    lat, lon = _grid("equiangular")
    with pytest.raises(ValueError, match="even number"):
        SphereGrid.build(lat, lon[:-1])
    with pytest.raises(ValueError, match="ascending"):
        SphereGrid.build(lat[::-1], lon)
    with pytest.raises(ValueError, match="full circle"):
        SphereGrid.build(lat, lon[: lon.size // 2])
    with pytest.raises(ValueError, match="divisible by patch_size"):
        build_backbone(
            dataclasses.replace(TINY_TRANSFORMER, patch_size=3), lat, lon, OUT_CHANNELS
        ).apply({}, *_inputs(lat.size, lon.size))


def test_latitude_padding_layout():
    config = SphereTransformerConfig(patch_size=4)
    for n_lat, expected in [
        (32, (8, 0, 0)),
        (33, (9, 1, 2)),
        (181, (46, 1, 2)),
        (721, (181, 1, 2)),
    ]:
        lat = np.linspace(-90, 90, n_lat) if n_lat % 2 else grid.equiangular_grid(n_lat, 8)[0]
        rows, cols, south, north = transformer.patch_layout(
            SphereGrid.build(lat, np.arange(8) * 45.0), config
        )
        assert (rows, south, north) == expected and cols == 2


def test_patch_centres_are_continuous_across_the_dateline_and_symmetric():
    lat, lon = _grid("poles_odd")
    centres = transformer.patch_centres(SphereGrid.build(lat, lon), TINY_TRANSFORMER)  # [9, 16, 3]
    np.testing.assert_allclose(np.linalg.norm(centres, axis=-1), 1.0, rtol=1e-12)
    # Neighbouring columns are equally far apart, the last and the first included.
    gaps = np.linalg.norm(centres - np.roll(centres, 1, axis=1), axis=-1)
    np.testing.assert_allclose(gaps, gaps[:, :1].repeat(gaps.shape[1], axis=1), atol=1e-12)
    # Patch rows straddling the poles are centred on their real cells, inside the sphere's caps.
    assert np.all(centres[0, :, 2] < centres[1, :, 2]) and np.all(centres[-1, :, 2] > 0.9)


# -- equivariance and the sphere's topology in the networks ------------------------------------


def test_transformer_commutes_with_longitude_shifts_by_whole_patches():
    # With the latitude-only position encoding, on a grid that needs latitude padding.
    config = dataclasses.replace(TINY_TRANSFORMER, position_encoding="latitude")
    _, params, apply = _setup(config, "poles_odd")
    x, c = _inputs(17, 32)
    shift = config.patch_size
    np.testing.assert_allclose(
        apply(params, np.roll(x, shift, axis=2), c),
        np.roll(apply(params, x, c), shift, axis=2),
        atol=2e-5,
    )


def test_xyz_position_encoding_breaks_longitude_symmetry():
    _, params, apply = _setup(TINY_TRANSFORMER)
    x, c = _inputs(16, 32)
    shift = TINY_TRANSFORMER.patch_size
    diff = apply(params, np.roll(x, shift, axis=2), c) - np.roll(apply(params, x, c), shift, axis=2)
    assert np.abs(diff).max() > 1e-3


@pytest.mark.parametrize(
    ("config", "shift"), [(TINY_UNET, 2), (ONE_LEVEL_UNET, 1)], ids=["two_levels", "one_level"]
)
def test_unet_commutes_with_longitude_shifts(config, shift):
    # Shifts by multiples of the coarsest cell (2^(levels-1) columns) commute exactly.
    _, params, apply = _setup(config)
    x, c = _inputs(16, 32)
    np.testing.assert_allclose(
        apply(params, np.roll(x, shift, axis=2), c),
        np.roll(apply(params, x, c), shift, axis=2),
        atol=2e-5,
    )


@pytest.mark.parametrize("kind", ["equiangular", "poles_odd"])
def test_sphere_conv_neighbourhood_crosses_the_pole_and_the_dateline(kind):
    # A 3 x 3 convolution of ones at the south-west corner cell sums its 9 neighbours on the
    # sphere: two rows on its own side, one row over the pole on the opposite meridian (the row
    # after the pole row when the pole itself is a row), columns wrapping around the dateline.
    lat, lon = _grid(kind)
    g = SphereGrid.build(lat, lon)
    conv = convnet.SphereConv(1, 3, (g.south_pole_row, g.north_pole_row))
    x = np.zeros((1, lat.size, lon.size, 1), np.float32)
    shapes = jax.eval_shape(lambda: conv.init(jax.random.key(0), x))
    params = jax.tree.map(lambda a: np.ones(a.shape, a.dtype), shapes)
    grad = jax.grad(lambda x: conv.apply(params, x)[0, 0, 0, 0])(x)[0, :, :, 0]
    n, half = lon.size, lon.size // 2
    beyond = 1 if g.south_pole_row else 0
    expected = np.zeros((lat.size, n))
    for col in (-1, 0, 1):
        expected[0, col % n] += 1
        expected[1, col % n] += 1
        expected[beyond, (half + col) % n] += 1
    np.testing.assert_array_equal(grad, expected)


# -- noise conditioning, gradients, registry ---------------------------------------------------


def test_noise_level_changes_the_output(model):
    _, _, params, apply = model
    x, _ = _inputs(16, 32)
    low = apply(params, x, np.full(2, -0.8, np.float32))
    high = apply(params, x, np.full(2, 1.0, np.float32))
    assert np.abs(np.asarray(low) - np.asarray(high)).mean() > 1e-3


def test_gradients_are_finite_and_reach_every_parameter(model):
    _, module, params, _ = model
    x, c = _inputs(16, 32)
    grads = jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(module.apply(p, x, c)))))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert np.any(np.asarray(g) != 0), path


def test_config_round_trips_through_json_and_rebuilds_the_same_parameters(model):
    config, _, params, _ = model
    data = json.loads(json.dumps(config_to_dict(config)))
    assert data["name"] == config.name
    rebuilt = config_from_dict(data)
    assert rebuilt == config and hash(rebuilt) == hash(config)
    lat, lon = _grid("equiangular")
    module = build_backbone(rebuilt, lat, lon, OUT_CHANNELS)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *_inputs(16, 32)))
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, params)


def test_registry_rejects_unknown_names_and_fields():
    with pytest.raises(ValueError, match="unknown backbone"):
        config_from_dict({"name": "mesh_transformer"})
    with pytest.raises(ValueError, match="unknown fields"):
        config_from_dict({"name": "sphere_unet", "depth": 3})
    assert set(backbone.BACKBONE_CONFIGS) == {"sphere_transformer", "sphere_unet"}


@pytest.mark.parametrize(
    ("cls", "fields", "message"),
    [
        (SphereTransformerConfig, {"d_model": 30, "num_heads": 4}, "divisible"),
        (SphereTransformerConfig, {"attention_window_rows": 3}, "even"),
        (SphereTransformerConfig, {"compute_dtype": "float16"}, "compute_dtype"),
        (SphereTransformerConfig, {"attention_implementation": "cudnn"}, "bfloat16"),
        (SphereUNetConfig, {"channels": (8, 12), "num_groups": 8}, "num_groups"),
        (SphereUNetConfig, {"kernel_size": 4}, "odd"),
    ],
)
def test_invalid_configs_are_rejected(cls, fields, message):
    with pytest.raises(ValueError, match=message):
        cls(**fields)


# -- attention -------------------------------------------------------------------------------


def _qkv(batch: int, tokens: int, heads: int = 2, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, batch, tokens, heads, dim)).astype(np.float32)


def test_blocked_attention_matches_xla_attention():
    q, k, v = _qkv(3, 24)
    expected = jax.jit(functools.partial(multi_head_attention, implementation="xla"))(q, k, v)
    for implementation in ("blocked", "auto"):
        attend = jax.jit(functools.partial(multi_head_attention, implementation=implementation))
        np.testing.assert_allclose(attend(q, k, v), expected, atol=1e-5)


def test_band_attention_with_one_band_is_global_attention():
    q, k, v = _qkv(2, 4 * 6)  # 4 token rows of 6 columns
    banded = functools.partial(transformer.band_attention, token_rows=4, window_rows=4)
    np.testing.assert_allclose(
        jax.jit(functools.partial(banded, shifted=False))(q, k, v),
        jax.jit(multi_head_attention)(q, k, v),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("shifted", "bands"),
    [(False, [[0, 1], [2, 3], [4, 5]]), (True, [[0], [1, 2], [3, 4], [5]])],
    ids=["aligned", "shifted"],
)
def test_band_attention_stays_within_its_bands(shifted, bands):
    cols = 5
    q, k, v = _qkv(1, 6 * cols)

    @jax.jit
    def attend(k, v):
        return transformer.band_attention(q, k, v, token_rows=6, window_rows=2, shifted=shifted)

    base = attend(k, v)
    for band in bands:
        # Change the keys and values of one band: only that band's outputs move, and the two
        # polar half-bands of a shifted layer never see each other.
        rows = np.zeros(6 * cols, bool)
        for r in band:
            rows[r * cols : (r + 1) * cols] = True
        bump = rows[None, :, None, None].astype(np.float32) * 3
        changed = np.abs(np.asarray(attend(k + bump, v + bump) - base)).max(axis=(0, 2, 3)) > 1e-6
        np.testing.assert_array_equal(changed, rows)


def test_windowed_transformer_runs_on_an_odd_grid():
    lat, lon = _grid("poles_odd")
    config = dataclasses.replace(TINY_TRANSFORMER, attention_window_rows=2, num_layers=2)
    module = build_backbone(config, lat, lon, OUT_CHANNELS)
    x, c = _inputs(lat.size, lon.size)
    params = _random_params(module, x, c)
    out = jax.jit(module.apply)(params, x, c)
    assert out.shape == (2, lat.size, lon.size, OUT_CHANNELS) and np.all(np.isfinite(out))
