"""What both backbones share: the sphere's geometry and padding, noise embedding, conditional
normalisation, attention, and the checks their configs run.

The architectures (`weather.model.transformer`, `weather.model.convnet`) build on this module and
`weather.model.backbone` picks between them; imports run layers -> architectures -> registry.

Grids come in as coordinates (degrees, latitude ascending, longitude evenly spaced over the full
circle, an even number of longitudes) and must cover the globe (`SphereGrid.build`); nothing here
has a boundary at longitude 0/360, and nothing pads with zeros: longitude wraps periodically, and
rows beyond a pole are the rows next to it on the opposite meridian (`pad_sphere`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from weather.data.grid import is_gaussian

ComputeDtype = Literal["float32", "bfloat16"]
PositionEncoding = Literal["xyz", "latitude", "none"]
AttentionImplementation = Literal["auto", "blocked", "xla", "cudnn"]
Activation = Literal["silu", "gelu", "relu"]

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "gelu": nn.gelu,
    "relu": nn.relu,
}

ArrayT = TypeVar("ArrayT", jax.Array, np.ndarray)

_POLE_TOLERANCE_DEG = 1e-6
# How far (in rows) an outermost row may sit from half a row off the pole: latitudes stored as
# float32 are within 3.8e-6 degrees of their values (half an ulp at 90), 1.5e-5 of a 0.25 degree
# row.
_HALF_ROW_TOLERANCE = 1e-3

SUPPORTED_GRIDS = (
    "global grids: equiangular without pole rows (outermost rows half a row from the poles, "
    "e.g. WeatherBench2's 64x32), equiangular with rows on both poles (e.g. 240x121, "
    "1440x721), or Gaussian latitudes"
)


def check_positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{type(config).__name__}.{name} must be a positive int, got {value!r}"
            )


def check_attention(config: Any) -> None:
    check_choice(config, "attention_implementation", ("auto", "blocked", "xla", "cudnn"))
    if config.attention_implementation == "cudnn" and config.compute_dtype != "bfloat16":
        raise ValueError('attention_implementation "cudnn" needs compute_dtype "bfloat16"')


def check_choice(config: object, name: str, choices: tuple[Any, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {choices}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Sphere geometry and padding
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SphereGrid:
    """A validated lat-lon grid, hashable so that it can be a Flax module attribute.

    Attributes:
      latitude: ascending cell-centre latitudes (degrees).
      longitude: cell-centre longitudes (degrees), evenly spaced over the circle.
      south_pole_row / north_pole_row: whether the first / last row sits on the pole (then the
        rows beyond the pole mirror the rows *after* it, since the pole row is its own mirror).

    Supported (`SUPPORTED_GRIDS`): each outermost row on its pole or half a row from it
    (equiangular grids with or without pole rows), or Gaussian latitudes (outermost rows 0.77 of
    a row from the poles, no pole rows). There the rows mirrored over a pole are the grid
    continued over it; a regional grid, or one with a pole row missing (-90 .. 89.75), would
    have its edge mirrored as if it were a pole, so it is refused.
    """

    latitude: tuple[float, ...]
    longitude: tuple[float, ...]
    south_pole_row: bool
    north_pole_row: bool

    @classmethod
    def build(cls, latitude: np.ndarray, longitude: np.ndarray) -> SphereGrid:
        """Validate coordinates (degrees) and record which rows are poles.

        Raises:
          ValueError: naming the grid (`grid_name`) and what is wrong with it.
        """
        lat = np.asarray(latitude, dtype=np.float64)
        lon = np.asarray(longitude, dtype=np.float64)
        where = f"grid {grid_name(lat.size, lon.size)}"
        if lat.ndim != 1 or lat.size < 2:
            raise ValueError(f"{where}: latitude must be 1-D with at least 2 rows, got {lat.shape}")
        if np.any(np.diff(lat) <= 0) or lat[0] < -90 - 1e-9 or lat[-1] > 90 + 1e-9:
            raise ValueError(
                f"{where}: latitude must be strictly ascending within [-90, 90] degrees, got "
                f"{lat[0]} .. {lat[-1]}"
            )
        if lon.ndim != 1 or lon.size < 2 or lon.size % 2:
            raise ValueError(
                f"{where}: longitude must be 1-D with an even number of points (rows continue "
                "over the pole 180 degrees away)"
            )
        step = 360.0 / lon.size
        if not np.allclose(np.diff(lon), step, atol=1e-6 * step):
            raise ValueError(
                f"{where}: longitude must be evenly spaced over the full circle ({lon.size} "
                f"points every {step} degrees)"
            )
        south = abs(lat[0] + 90) < _POLE_TOLERANCE_DEG
        north = abs(lat[-1] - 90) < _POLE_TOLERANCE_DEG

        def half_row_off(gap: float, row: float) -> bool:
            return abs(gap / row - 0.5) < _HALF_ROW_TOLERANCE

        covered = (south or half_row_off(lat[0] + 90, lat[1] - lat[0])) and (
            north or half_row_off(90 - lat[-1], lat[-1] - lat[-2])
        )
        if not covered and not is_gaussian(lat):
            raise ValueError(
                f"{where}: latitudes {lat[0]} .. {lat[-1]} are not a grid the backbones pad over "
                f"the poles; supported are {SUPPORTED_GRIDS} (regrid the archive onto one, e.g. "
                "with `weather data regrid --grid 240x121`)"
            )
        return cls(
            latitude=tuple(float(v) for v in lat),
            longitude=tuple(float(v) for v in lon),
            south_pole_row=bool(south),
            north_pole_row=bool(north),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.latitude), len(self.longitude)

    def unit_vectors(self) -> np.ndarray:
        """[lat, lon, 3] cell-centre positions (x, y, z) on the unit sphere."""
        lat = np.deg2rad(np.asarray(self.latitude))[:, None]
        lon = np.deg2rad(np.asarray(self.longitude))[None, :]
        return np.stack(
            np.broadcast_arrays(np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)),
            axis=-1,
        )


def grid_name(n_lat: int, n_lon: int) -> str:
    """How messages name a grid: rows by columns, and WeatherBench2's NLONxNLAT."""
    return f"{n_lat} x {n_lon} (latitudes x longitudes; {n_lon}x{n_lat} as WeatherBench2 names it)"


def check_inputs(x: jax.Array, c_noise: jax.Array, grid: SphereGrid) -> None:
    """Raise ValueError unless x is [batch, lat, lon, channels] on `grid` and c_noise is [batch]."""
    n_lat, n_lon = grid.shape
    if x.ndim != 4 or x.shape[1:3] != (n_lat, n_lon):
        raise ValueError(f"x must be [batch, {n_lat}, {n_lon}, channels], got {x.shape}")
    if c_noise.shape != x.shape[:1]:
        raise ValueError(f"c_noise must be [batch] = {x.shape[:1]}, got {c_noise.shape}")


def pad_latitude_over_poles(
    x: ArrayT, south: int, north: int, grid_poles: tuple[int, int] = (False, False)
) -> ArrayT:
    """Add `south` rows before row 0 and `north` rows after the last row, continuing over the poles.

    x: [batch, lat, lon, channels], latitude ascending, lon even and evenly spaced. The row k
    places beyond a pole is the row k places before it, rolled by half the longitudes: the
    meridian through the pole continues on the opposite side. `grid_poles` = (south, north) says
    how many edge rows each pole skips first: 1 (True) where the edge row lies on the pole (it is
    its own mirror), 0 (False) where the pole lies beyond it; the U-Net's coarse levels, whose
    rows need not sit symmetrically about a pole, may skip more (`weather.model.convnet`).
    Exact for scalar fields; the sign flip of vector components over the pole is left for the
    network to learn. Works on numpy arrays too (for constant fields such as cell positions).
    """
    xp: Any = np if isinstance(x, np.ndarray) else jnp
    n_lat, n_lon = x.shape[1], x.shape[2]
    parts = []
    if south:
        first = int(grid_poles[0])
        if first + south > n_lat:
            raise ValueError(f"cannot pad {south} rows over the south pole of {n_lat} rows")
        rows = x[:, first : first + south][:, ::-1]
        parts.append(xp.roll(rows, n_lon // 2, axis=2))
    parts.append(x)
    if north:
        last = n_lat - 1 - int(grid_poles[1])
        if last - north + 1 < 0:
            raise ValueError(f"cannot pad {north} rows over the north pole of {n_lat} rows")
        rows = x[:, last - north + 1 : last + 1][:, ::-1]
        parts.append(xp.roll(rows, n_lon // 2, axis=2))
    return xp.concatenate(parts, axis=1) if len(parts) > 1 else x


def pad_longitude_periodic(x: jax.Array, west: int, east: int) -> jax.Array:
    """Wrap `west` columns from the east end before column 0 and `east` from the west end after.

    x: [batch, lat, lon, channels].
    """
    parts = []
    if west:
        parts.append(x[:, :, x.shape[2] - west :])
    parts.append(x)
    if east:
        parts.append(x[:, :, :east])
    return jnp.concatenate(parts, axis=2) if len(parts) > 1 else x


def pad_sphere(
    x: jax.Array, lat_pad: int, lon_pad: int, grid_poles: tuple[int, int] = (False, False)
) -> jax.Array:
    """Halo of `lat_pad` rows over each pole and `lon_pad` periodic columns on each side.

    x: [batch, lat, lon, channels] -> [batch, lat + 2 lat_pad, lon + 2 lon_pad, channels]; what a
    'same' convolution needs in place of zero padding.
    """
    x = pad_latitude_over_poles(x, lat_pad, lat_pad, grid_poles)
    return pad_longitude_periodic(x, lon_pad, lon_pad)


# --------------------------------------------------------------------------------------------
# Noise-level conditioning
# --------------------------------------------------------------------------------------------


def sinusoidal_noise_features(c_noise: jax.Array, num_frequencies: int) -> jax.Array:
    """[batch] c_noise -> [batch, 2 * num_frequencies] sin/cos at log-spaced frequencies 1..100."""
    omega = jnp.exp(jnp.linspace(0.0, np.log(100.0), num_frequencies, dtype=jnp.float32))
    angles = c_noise.astype(jnp.float32)[:, None] * omega[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class NoiseEmbedding(nn.Module):
    """GenCast's noise-level encoding: sinusoidal features of c_noise through a two-layer MLP.

    [batch] -> [batch, features], float32.
    """

    features: int
    num_frequencies: int

    @nn.compact
    def __call__(self, c_noise: jax.Array) -> jax.Array:
        h = sinusoidal_noise_features(c_noise, self.num_frequencies)
        h = nn.Dense(self.features, name="hidden")(h)
        h = nn.silu(h)
        return nn.Dense(self.features, name="out")(h)


class ConditionalLayerNorm(nn.Module):
    """LayerNorm whose scale and offset come from the noise embedding (GenCast's conditional LN).

    x: [batch, ..., features]; embedding: [batch, conditioning_dim]. Returns
    LN(x) * (1 + scale(e)) + offset(e) in float32, scale and offset per batch element and feature.
    With `num_groups`, normalises over groups of features and all non-batch axes instead
    (GroupNorm, for convolutional feature maps [batch, lat, lon, features]).
    """

    num_groups: int | None = None
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        features = x.shape[-1]
        if self.num_groups is None:
            mean = jnp.mean(x, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
            normed = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        else:
            grouped = x.reshape(*x.shape[:-1], self.num_groups, features // self.num_groups)
            axes = (*range(1, x.ndim - 1), x.ndim)
            mean = jnp.mean(grouped, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
            normed = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        modulation = nn.Dense(2 * features, name="modulation")(embedding.astype(jnp.float32))
        scale, offset = jnp.split(modulation, 2, axis=-1)
        broadcast = (x.shape[0],) + (1,) * (x.ndim - 2) + (features,)
        return normed * (1.0 + scale.reshape(broadcast)) + offset.reshape(broadcast)


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------


def _blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Softmax attention one batch element at a time, so that its logits stay in cache.

    On a CPU the batched form (XLA's dot_product_attention) writes all [batch, heads, N, N]
    logits to memory and reads them back three times, which runs at 0.1-0.2 of the matmul rate
    at N = 512, 8 heads, batch 8; this loop reaches about 0.5. The softmax is normalised after
    the value product (an [N, head_dim] division instead of [N, N]).

    Under `jax.vmap` the loop body is batched over the mapped axis, which brings the batched
    form back: give the backbone ensemble members as its batch axis rather than vmapping a
    batch-1 call (8 members of the default transformer: 1.55 s as a batch, 2.2 s vmapped).
    """
    scale = q.shape[-1] ** -0.5

    def one(qkv: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        q1, k1, v1 = (t.swapaxes(0, 1) for t in qkv)  # [heads, tokens, head_dim]
        logits = jnp.einsum(
            "hnd,hmd->hnm",
            q1 * jnp.asarray(scale, q1.dtype),
            k1,
            preferred_element_type=jnp.float32,
        )
        logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
        weights = jnp.exp(logits)
        out = jnp.einsum(
            "hnm,hmd->hnd", weights.astype(v1.dtype), v1, preferred_element_type=jnp.float32
        )
        out = out / jnp.sum(weights, axis=-1, keepdims=True)
        return out.swapaxes(0, 1).astype(q1.dtype)

    return jax.lax.map(one, (q, k, v))


def multi_head_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    implementation: AttentionImplementation = "auto",
) -> jax.Array:
    """Softmax attention over the token axis; q, k, v: [batch, tokens, heads, head_dim].

    implementation: "blocked" loops over batch elements (`_blocked_attention`, fastest on CPUs);
    "xla" and "cudnn" are jax.nn.dot_product_attention's (cuDNN is the fused flash kernel on
    NVIDIA GPUs, bfloat16 or float16 only); "auto" takes "blocked" on a CPU and "xla" elsewhere.
    Logits and softmax are float32 in every case.

    XLA's cost analysis counts a loop body once, so it undercounts "blocked" by the batch size;
    count FLOPs on the "xla" form, which does the same arithmetic.
    """
    if implementation == "blocked":
        return _blocked_attention(q, k, v)
    if implementation in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    if implementation != "auto":
        raise ValueError(f"unknown attention implementation {implementation!r}")
    return jax.lax.platform_dependent(
        q,
        k,
        v,
        cpu=_blocked_attention,
        default=lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
    )
