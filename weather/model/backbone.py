"""The denoiser backbone: one small interface, two lat-lon architectures, a registry of configs.

A backbone is a Flax module built by `build_backbone(config, latitude, longitude, out_channels)`
and called as `module.apply(params, x, c_noise)`:

- `x`: [batch, lat, lon, in_channels] float32, the channels the denoiser wrapper concatenates
  (EDM's c_in-scaled noisy target, the two normalised input states, forcings, static fields);
- `c_noise`: [batch] float32, EDM's noise conditioning c_noise(σ) = ln(σ) / 4 (Karras et al. 2022,
  Table 1), which reaches every block through conditional normalisation;
- returns [batch, lat, lon, out_channels] float32, EDM's raw network output F_θ. Both architectures
  zero-initialise their output layer, so at initialisation F_θ = 0 and the preconditioned denoiser
  D_θ = c_skip·x + c_out·F_θ starts as c_skip·x.

The grid comes in as coordinates (degrees, latitude ascending, longitude evenly spaced over the
full circle, an even number of longitudes), so equiangular grids with or without pole rows and
Gaussian grids all work. Nothing in either architecture has a boundary at longitude 0/360, and
neither pads with zeros: longitude wraps periodically, and rows beyond a pole are the rows next to
it on the opposite meridian (`pad_sphere`).

Architectures (configs are frozen dataclasses; `config_to_dict` / `config_from_dict` round-trip
them through `{"name": ..., **fields}` for checkpoints):

- `SphereTransformerConfig` (name "sphere_transformer", `weather.model.transformer`): p x p patches,
  a position encoding of each patch centre's 3-D unit vector, pre-norm transformer blocks with
  global (or latitude-band) self-attention.
- `SphereUNetConfig` (name "sphere_unet", `weather.model.convnet`): a U-Net of residual blocks whose
  3 x 3 convolutions pad the sphere, with a global-attention bottleneck.

Parameters are float32; `compute_dtype="bfloat16"` runs the matmuls and convolutions in bfloat16
(accelerators) while normalisation, softmax and the output stay float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


# --------------------------------------------------------------------------------------------
# Configs and registry
# --------------------------------------------------------------------------------------------


def _check_positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{type(config).__name__}.{name} must be a positive int, got {value!r}"
            )


def _check_attention(config: Any) -> None:
    _check_choice(config, "attention_implementation", ("auto", "blocked", "xla", "cudnn"))
    if config.attention_implementation == "cudnn" and config.compute_dtype != "bfloat16":
        raise ValueError('attention_implementation "cudnn" needs compute_dtype "bfloat16"')


def _check_choice(config: object, name: str, choices: tuple[Any, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SphereTransformerConfig:
    """A patch transformer on the lat-lon grid (see `weather.model.transformer`).

    Attributes:
      patch_size: p, the side of the square patch in grid cells; tokens = ceil(lat/p) * lon/p.
        Latitude is padded over the poles up to a multiple of p (or of p * attention_window_rows).
      d_model: token width d.
      num_layers: L, transformer blocks.
      num_heads: attention heads (d_model must be divisible by it).
      mlp_ratio: hidden width of each block's MLP, in multiples of d_model.
      position_encoding: "xyz" encodes each patch centre's unit vector (x, y, z) on the sphere
        (continuous across the dateline and over the poles); "latitude" only z = sin(lat), which
        makes the network exactly equivariant to longitude shifts by whole patches (static fields
        in the input then tell it where it is); "none" drops the encoding.
      position_frequencies: octaves K of the Fourier features sin/cos(2^k π u), k < K, of each
        coordinate u, fed with u itself through a two-layer MLP.
      noise_frequencies: sinusoidal features of c_noise, log-spaced angular frequencies from
        1 to 100 (c_noise = ln(σ)/4 spans about [-0.9, 1.1] for σ in [0.03, 80]).
      conditioning_dim: width of the noise embedding MLP whose output sets every conditional
        layer norm's scale and offset.
      attention_window_rows: None for global attention over all tokens; r for attention within
        latitude bands of r token rows spanning the full longitude circle, the bands shifted by r/2
        on every other layer so that information crosses band edges (cost O(N·r·lon/p) instead
        of O(N²)).
      attention_implementation: "auto" (a batch-blocked einsum attention on CPUs, XLA's
        jax.nn.dot_product_attention elsewhere), or one of "blocked", "xla", "cudnn" (the fused
        flash kernel on NVIDIA GPUs, with compute_dtype "bfloat16"); see `multi_head_attention`.
      activation: nonlinearity of the MLPs (SiLU costs less than GELU's tanh on a CPU).
      compute_dtype: dtype of the matmul inputs; parameters stay float32.
    """

    name: ClassVar[str] = "sphere_transformer"

    patch_size: int = 2
    d_model: int = 256
    num_layers: int = 8
    num_heads: int = 8
    mlp_ratio: int = 4
    position_encoding: PositionEncoding = "xyz"
    position_frequencies: int = 6
    noise_frequencies: int = 32
    conditioning_dim: int = 256
    attention_window_rows: int | None = None
    attention_implementation: AttentionImplementation = "auto"
    activation: Activation = "silu"
    compute_dtype: ComputeDtype = "float32"

    def __post_init__(self) -> None:
        _check_positive(
            self,
            "patch_size",
            "d_model",
            "num_layers",
            "num_heads",
            "mlp_ratio",
            "noise_frequencies",
            "conditioning_dim",
        )
        if not isinstance(self.position_frequencies, int) or self.position_frequencies < 0:
            raise ValueError(
                "position_frequencies must be a non-negative int, "
                f"got {self.position_frequencies!r}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.attention_window_rows is not None:
            _check_positive(self, "attention_window_rows")
            if self.attention_window_rows % 2:
                raise ValueError(
                    "attention_window_rows must be even (bands shift by half a band), "
                    f"got {self.attention_window_rows}"
                )
        _check_choice(self, "position_encoding", ("xyz", "latitude", "none"))
        _check_attention(self)
        _check_choice(self, "activation", tuple(ACTIVATIONS))
        _check_choice(self, "compute_dtype", ("float32", "bfloat16"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SphereUNetConfig:
    """A U-Net of residual blocks with sphere-padded convolutions (see `weather.model.convnet`).

    Attributes:
      channels: width of each resolution level, finest first; len(channels) levels, each coarser
        one halving latitude (ceil) and longitude. lon / 2^(levels-1) must be even.
      blocks_per_level: residual blocks per level on the way down (one more on the way up).
      kernel_size: odd side of the square convolution kernels.
      num_groups: groups of every GroupNorm (must divide every level's width).
      bottleneck_attention_layers: global self-attention blocks at the coarsest level (a
        receptive field of the whole sphere at little cost); 0 for a pure convnet.
      num_heads: heads of those attention blocks.
      attention_implementation: as the transformer's.
      noise_frequencies: sinusoidal features of c_noise (as the transformer's).
      conditioning_dim: width of the noise embedding MLP.
      compute_dtype: dtype of the convolution and matmul inputs; parameters stay float32.
    """

    name: ClassVar[str] = "sphere_unet"

    channels: tuple[int, ...] = (64, 128, 256)
    blocks_per_level: int = 2
    kernel_size: int = 3
    num_groups: int = 8
    bottleneck_attention_layers: int = 1
    num_heads: int = 4
    attention_implementation: AttentionImplementation = "auto"
    noise_frequencies: int = 32
    conditioning_dim: int = 256
    compute_dtype: ComputeDtype = "float32"

    def __post_init__(self) -> None:
        # Lists (from JSON) become tuples so that configs stay hashable and compare equal.
        object.__setattr__(self, "channels", tuple(self.channels))
        if not self.channels or any(not isinstance(c, int) or c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive ints, got {self.channels!r}")
        _check_positive(
            self, "blocks_per_level", "kernel_size", "num_groups", "num_heads", "noise_frequencies"
        )
        _check_positive(self, "conditioning_dim")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if any(c % self.num_groups for c in self.channels):
            raise ValueError(
                f"num_groups ({self.num_groups}) must divide every level's width {self.channels}"
            )
        if not isinstance(self.bottleneck_attention_layers, int) or (
            self.bottleneck_attention_layers < 0
        ):
            raise ValueError(
                "bottleneck_attention_layers must be a non-negative int, "
                f"got {self.bottleneck_attention_layers!r}"
            )
        if self.bottleneck_attention_layers and self.channels[-1] % self.num_heads:
            raise ValueError(
                f"the coarsest width ({self.channels[-1]}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        _check_attention(self)
        _check_choice(self, "compute_dtype", ("float32", "bfloat16"))


BackboneConfig = SphereTransformerConfig | SphereUNetConfig

BACKBONE_CONFIGS: Mapping[str, type[SphereTransformerConfig] | type[SphereUNetConfig]] = {
    SphereTransformerConfig.name: SphereTransformerConfig,
    SphereUNetConfig.name: SphereUNetConfig,
}


def config_to_dict(config: BackboneConfig) -> dict[str, Any]:
    """`{"name": ..., **fields}`, JSON-serialisable (tuples become lists)."""
    fields = {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in dataclasses.fields(config)
    }
    return {"name": config.name, **fields}


def config_from_dict(data: Mapping[str, Any]) -> BackboneConfig:
    """Inverse of `config_to_dict`; unknown names or fields raise ValueError."""
    fields = dict(data)
    name = fields.pop("name", None)
    if name not in BACKBONE_CONFIGS:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONE_CONFIGS)}")
    cls = BACKBONE_CONFIGS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := set(fields) - known:
        raise ValueError(f"unknown fields for backbone {name!r}: {sorted(unknown)}")
    return cls(**fields)


def build_backbone(
    config: BackboneConfig,
    latitude: np.ndarray,
    longitude: np.ndarray,
    out_channels: int,
) -> nn.Module:
    """The backbone module for `config` on the grid with these cell centres (degrees).

    Args:
      config: one of the registered configs.
      latitude: [lat] ascending cell-centre latitudes (equiangular with or without pole rows, or
        Gaussian).
      longitude: [lon] cell-centre longitudes, evenly spaced over 360 degrees, lon even.
      out_channels: channels of the output.

    Returns:
      A module called as `module.apply(params, x, c_noise)` with x [batch, lat, lon, in_channels]
      and c_noise [batch], returning [batch, lat, lon, out_channels] float32. `module.init(key, x,
      c_noise)` makes the float32 parameters for a given in_channels.
    """
    geometry = SphereGrid.build(latitude, longitude)
    if not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
    # Imported here: the architecture modules import this module's configs and layers.
    if isinstance(config, SphereTransformerConfig):
        from weather.model.transformer import SphereTransformer

        return SphereTransformer(config=config, grid=geometry, out_channels=out_channels)
    if isinstance(config, SphereUNetConfig):
        from weather.model.convnet import SphereUNet

        return SphereUNet(config=config, grid=geometry, out_channels=out_channels)
    raise TypeError(f"not a backbone config: {config!r}")


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
    """

    latitude: tuple[float, ...]
    longitude: tuple[float, ...]
    south_pole_row: bool
    north_pole_row: bool

    @classmethod
    def build(cls, latitude: np.ndarray, longitude: np.ndarray) -> SphereGrid:
        """Validate coordinates (degrees) and record which rows are poles."""
        lat = np.asarray(latitude, dtype=np.float64)
        lon = np.asarray(longitude, dtype=np.float64)
        if lat.ndim != 1 or lat.size < 2:
            raise ValueError(f"latitude must be 1-D with at least 2 rows, got shape {lat.shape}")
        if np.any(np.diff(lat) <= 0) or lat[0] < -90 - 1e-9 or lat[-1] > 90 + 1e-9:
            raise ValueError("latitude must be strictly ascending within [-90, 90] degrees")
        if lon.ndim != 1 or lon.size < 2 or lon.size % 2:
            raise ValueError(
                "longitude must be 1-D with an even number of points (rows continue over the "
                f"pole 180 degrees away), got shape {lon.shape}"
            )
        step = 360.0 / lon.size
        if not np.allclose(np.diff(lon), step, atol=1e-6 * step):
            raise ValueError(
                f"longitude must be evenly spaced over the full circle ({lon.size} points every "
                f"{step} degrees)"
            )
        return cls(
            latitude=tuple(float(v) for v in lat),
            longitude=tuple(float(v) for v in lon),
            south_pole_row=bool(abs(lat[0] + 90) < _POLE_TOLERANCE_DEG),
            north_pole_row=bool(abs(lat[-1] - 90) < _POLE_TOLERANCE_DEG),
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


def check_inputs(x: jax.Array, c_noise: jax.Array, grid: SphereGrid) -> None:
    """Raise ValueError unless x is [batch, lat, lon, channels] on `grid` and c_noise is [batch]."""
    n_lat, n_lon = grid.shape
    if x.ndim != 4 or x.shape[1:3] != (n_lat, n_lon):
        raise ValueError(f"x must be [batch, {n_lat}, {n_lon}, channels], got {x.shape}")
    if c_noise.shape != x.shape[:1]:
        raise ValueError(f"c_noise must be [batch] = {x.shape[:1]}, got {c_noise.shape}")


def pad_latitude_over_poles(
    x: ArrayT, south: int, north: int, grid_poles: tuple[bool, bool] = (False, False)
) -> ArrayT:
    """Add `south` rows before row 0 and `north` rows after the last row, continuing over the poles.

    x: [batch, lat, lon, channels], latitude ascending, lon even and evenly spaced. The row k
    places beyond a pole is the row k places before it (k-1 if that pole is itself a row, given by
    `grid_poles` = (south_pole_row, north_pole_row)) rolled by half the longitudes: the meridian
    through the pole continues on the opposite side. Exact for scalar fields; the sign flip of
    vector components over the pole is left for the network to learn. Works on numpy arrays too
    (for constant fields such as cell positions).
    """
    xp: Any = np if isinstance(x, np.ndarray) else jnp
    n_lat, n_lon = x.shape[1], x.shape[2]
    parts = []
    if south:
        first = 1 if grid_poles[0] else 0
        if first + south > n_lat:
            raise ValueError(f"cannot pad {south} rows over the south pole of {n_lat} rows")
        rows = x[:, first : first + south][:, ::-1]
        parts.append(xp.roll(rows, n_lon // 2, axis=2))
    parts.append(x)
    if north:
        last = n_lat - (2 if grid_poles[1] else 1)
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
    x: jax.Array, lat_pad: int, lon_pad: int, grid_poles: tuple[bool, bool] = (False, False)
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
