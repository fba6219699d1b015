"""SphereUNet: a U-Net of sphere-padded convolutions, conditioned on the noise level.

Shapes: x [B, H, W, C] -> [B, H, W, out_channels]; level l (0 finest) has channels[l] features on
a grid of H_l x W_l, H_{l+1} = ceil(H_l / 2), W_{l+1} = W_l / 2.

- Every k x k convolution pads its input on the sphere instead of with zeros
  (`weather.model.layers.pad_sphere`): k // 2 columns wrap around in longitude and k // 2 rows
  continue over each pole on the opposite meridian (row i beyond the pole is row i - 1 before it,
  rolled by W_l / 2, or row i when the edge row is on the pole). The network therefore has no
  edge anywhere, and (without the latitude channels below breaking it in latitude) commutes with
  longitude shifts by 2^(levels-1) cells.
- Coarse rows and the poles (`level_layout`): a coarse row pairs two finer rows, so its centre
  is their midpoint. On a grid of an even number of rows without pole rows, every level is again
  such a grid and its halo is exact. An odd row count (every grid with pole rows: 121, 721) pairs
  its last row with the row continued over the north pole, and no pairing of an odd count is
  symmetric about the poles: there the coarse rows sit a quarter of a coarse row off, the edge
  cell holds the pole, and no row mirrors exactly. Each level's halo therefore takes, at each
  pole, the rows whose mirror images lie nearest to where the level's rows continue (about half
  a row off at worst), computed from the rows' centres; mirroring the edge cell itself, as a grid
  without pole rows does, would put its pole back next to it, 1.5 rows out of place.
- Two constant input channels, sin(lat) and cos(lat), tell the network its latitude; longitude is
  left out so that the network stays equivariant to longitude shifts.
- Residual blocks: x + Conv(act(CGN(Conv(act(CGN(x)))))), CGN the GroupNorm whose scale and
  offset come from the noise embedding (`ConditionalLayerNorm(num_groups=...)`).
- Downsampling: a learned 2 x 2 convolution with stride 2; an odd row count first gets one more
  row continued over the north pole (the level's halo row). Upsampling: nearest-neighbour
  doubling, the extra row cropped, then a sphere-padded convolution. Skip connections are
  concatenated.
- Bottleneck: `bottleneck_attention_layers` pre-norm global self-attention + MLP blocks over the
  H_L x W_L cells of the coarsest level (128 tokens at 5.625 deg with three levels).
- Head: CGN, activation, and a zero-initialised sphere-padded convolution to out_channels.

Scaling: every level's longitude count must be even (the pole halo rolls by half of it), so 360
longitudes allow three levels (bottleneck 46 x 90 = 4140 cells at 1 deg) and 1440 allow five
(46 x 90 again at 0.25 deg), where global attention is affordable on an accelerator. Cost per call
is about 2 k^2 H W sum_l c_l^2 (5 b + 2) / 4^l FLOPs for b blocks per level: 6.6 GFLOP at
5.625 deg with the defaults, 230 GFLOP at 1 deg.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from weather.model.layers import (
    AttentionImplementation,
    ComputeDtype,
    ConditionalLayerNorm,
    NoiseEmbedding,
    SphereGrid,
    check_attention,
    check_choice,
    check_inputs,
    check_positive,
    grid_name,
    multi_head_attention,
    pad_latitude_over_poles,
    pad_sphere,
)


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
        check_positive(
            self, "blocks_per_level", "kernel_size", "num_groups", "num_heads", "noise_frequencies"
        )
        check_positive(self, "conditioning_dim")
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
        check_attention(self)
        check_choice(self, "compute_dtype", ("float32", "bfloat16"))


_ACTIVATION = nn.silu


class SphereConv(nn.Module):
    """k x k convolution with a sphere halo instead of zero padding; [B, H, W, C] -> [..., F].

    poles: (south, north) edge rows the halo skips at each pole (`pad_latitude_over_poles`).
    """

    features: int
    kernel_size: int
    poles: tuple[int, int] = (False, False)
    dtype: jnp.dtype = jnp.dtype(jnp.float32)
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        r = self.kernel_size // 2
        width = x.shape[2]
        x = pad_sphere(x.astype(self.dtype), r, r, self.poles)
        kernel_init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        # The halo is all the padding needed; the one extra zero column (whose output is cropped)
        # is there because XLA's CPU convolution runs about 2.5x slower with no padding at all.
        out = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            padding=((0, 0), (0, 1)),
            dtype=self.dtype,
            kernel_init=kernel_init,
        )(x)
        return out[:, :, :width]


class ResidualBlock(nn.Module):
    """x + Conv(act(CGN(Conv(act(CGN(x)))))) with a 1 x 1 projection when widths differ."""

    features: int
    config: SphereUNetConfig
    poles: tuple[int, int] = (False, False)

    @nn.compact
    def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.compute_dtype)
        h = ConditionalLayerNorm(num_groups=cfg.num_groups, name="norm_0")(x, embedding)
        h = SphereConv(self.features, cfg.kernel_size, self.poles, dtype, name="conv_0")(
            _ACTIVATION(h)
        )
        h = ConditionalLayerNorm(num_groups=cfg.num_groups, name="norm_1")(h, embedding)
        h = SphereConv(self.features, cfg.kernel_size, self.poles, dtype, name="conv_1")(
            _ACTIVATION(h)
        )
        if x.shape[-1] != self.features:
            x = nn.Dense(self.features, dtype=dtype, name="skip")(x.astype(dtype))
        return x.astype(jnp.float32) + h.astype(jnp.float32)


class AttentionBlock(nn.Module):
    """Pre-norm global self-attention and MLP over all cells of a [B, H, W, C] map."""

    config: SphereUNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.compute_dtype)
        b, hh, ww, c = x.shape
        tokens = x.reshape(b, hh * ww, c)
        h = ConditionalLayerNorm(name="attention_norm")(tokens, embedding).astype(dtype)
        qkv = nn.Dense(3 * c, dtype=dtype, name="qkv")(h)
        q, k, v = jnp.split(qkv.reshape(b, hh * ww, 3 * cfg.num_heads, -1), 3, axis=2)
        attended = multi_head_attention(q, k, v, cfg.attention_implementation)
        attended = attended.reshape(b, hh * ww, c)
        tokens = tokens + nn.Dense(c, dtype=dtype, name="attention_out")(attended).astype(
            jnp.float32
        )
        h = ConditionalLayerNorm(name="mlp_norm")(tokens, embedding).astype(dtype)
        h = nn.Dense(4 * c, dtype=dtype, name="mlp_hidden")(h)
        h = nn.Dense(c, dtype=dtype, name="mlp_out")(_ACTIVATION(h))
        tokens = tokens + h.astype(jnp.float32)
        return tokens.reshape(b, hh, ww, c)


@dataclasses.dataclass(frozen=True)
class Level:
    """One resolution level of the U-Net.

    Attributes:
      rows, columns: its grid, H_l x W_l.
      poles: (south, north) edge rows its halo skips at each pole before mirroring
        (`pad_latitude_over_poles`): at the finest level 1 for a pole row and 0 otherwise.
      latitude: [rows] centres of its rows (degrees) along a meridian continued over the poles,
        so that a row pairing a north pole row with the row beyond it lies above 90.
    """

    rows: int
    columns: int
    poles: tuple[int, int]
    latitude: tuple[float, ...]


def _nearest_mirror(latitude: np.ndarray, halo: int) -> int:
    """Edge rows k to skip at the north pole so that the halo continues `latitude` ([rows],
    ascending, degrees) best: row k + 1 from the edge, mirrored to 180 - its latitude, nearest to
    the edge row plus one edge spacing. Where two are equally near (an edge row a quarter of a
    row off the pole lies halfway between two mirror images), k = 1: the edge cell then holds
    the pole, so it is treated as a pole row and not put back next to itself. k is at most
    rows - halo, so that `halo` rows (and the one row an odd count appends) remain to mirror.
    """
    if latitude.size < 2:
        return 0
    spacing = latitude[-1] - latitude[-2]
    wanted = latitude[-1] + spacing
    candidates = range(latitude.size - max(halo, 1) + 1)
    # Rounded to a millionth of a row, so that ties are ties despite the midpoints' rounding.
    return min(
        candidates,
        key=lambda k: (round(abs(180.0 - latitude[-1 - k] - wanted) / spacing, 6), abs(k - 1)),
    )


def level_layout(grid: SphereGrid, config: SphereUNetConfig) -> tuple[Level, ...]:
    """The U-Net's levels on `grid`, finest first, and what each level's halo mirrors.

    Level l + 1 pairs the rows of level l (after appending the row continued over the north pole
    to an odd count) and halves the columns.

    Raises:
      ValueError: naming the grid and what it supports, when a level's columns would be odd or
        a level has fewer rows than its convolutions' halo.
    """
    n_lat, n_lon = grid.shape
    levels = len(config.channels)
    halo = config.kernel_size // 2
    if n_lon % 2**levels:
        raise ValueError(
            f"grid {grid_name(n_lat, n_lon)}: the U-Net's {levels} levels (channels "
            f"{config.channels}) halve the longitudes {levels - 1} times and every level needs an "
            f"even count, so the longitude count must be a multiple of {2**levels}; use fewer "
            "levels or another grid"
        )
    latitude = np.asarray(grid.latitude)
    out = []
    for level in range(levels):
        if latitude.size < halo:
            raise ValueError(
                f"grid {grid_name(n_lat, n_lon)}: the U-Net's level {level} has {latitude.size} "
                f"rows, fewer than its {config.kernel_size} x {config.kernel_size} convolutions' "
                f"halo of {halo} rows over each pole; use fewer levels, a smaller kernel_size or "
                "more latitudes"
            )
        mirrored = -latitude[::-1]  # the south pole as a north pole
        poles = (_nearest_mirror(mirrored, halo), _nearest_mirror(latitude, halo))
        out.append(Level(latitude.size, n_lon // 2**level, poles, tuple(latitude.tolist())))
        if latitude.size % 2:
            latitude = np.append(latitude, 180.0 - latitude[-1 - poles[1]])
        latitude = 0.5 * (latitude[0::2] + latitude[1::2])
    return tuple(out)


class SphereUNet(nn.Module):
    """U-Net denoiser backbone; build it with `weather.model.backbone.build_backbone`.

    Call: x [B, H, W, C] float32, c_noise [B] float32 -> [B, H, W, out_channels] float32.
    """

    config: SphereUNetConfig
    grid: SphereGrid
    out_channels: int

    @nn.compact
    def __call__(self, x: jax.Array, c_noise: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.compute_dtype)
        n_lat, n_lon = self.grid.shape
        check_inputs(x, c_noise, self.grid)
        levels = len(cfg.channels)
        layout = level_layout(self.grid, cfg)

        def poles(level: int) -> tuple[int, int]:
            return layout[level].poles

        embedding = NoiseEmbedding(cfg.conditioning_dim, cfg.noise_frequencies, name="noise")(
            c_noise
        )

        lat = np.deg2rad(np.asarray(self.grid.latitude, dtype=np.float32))
        lat_features = np.stack([np.sin(lat), np.cos(lat)], axis=-1)[None, :, None, :]
        lat_channels = jnp.broadcast_to(jnp.asarray(lat_features), (x.shape[0], n_lat, n_lon, 2))
        h = jnp.concatenate([x.astype(jnp.float32), lat_channels], axis=-1)
        h = SphereConv(cfg.channels[0], cfg.kernel_size, poles(0), dtype, name="stem")(h)

        skips = []
        for level, features in enumerate(cfg.channels):
            for i in range(cfg.blocks_per_level):
                h = ResidualBlock(features, cfg, poles(level), name=f"down_{level}_{i}")(
                    h, embedding
                )
                skips.append(h)
            if level + 1 < levels:
                rows = layout[level].rows
                if rows % 2:
                    h = pad_latitude_over_poles(h, 0, 1, poles(level))
                h = nn.Conv(
                    cfg.channels[level + 1],
                    (2, 2),
                    strides=(2, 2),
                    padding="VALID",
                    dtype=dtype,
                    name=f"downsample_{level}",
                )(h.astype(dtype)).astype(jnp.float32)

        bottom = levels - 1
        for i in range(cfg.bottleneck_attention_layers):
            h = AttentionBlock(cfg, name=f"attention_{i}")(h, embedding)
        h = ResidualBlock(cfg.channels[-1], cfg, poles(bottom), name="middle")(h, embedding)

        for level in reversed(range(levels)):
            features = cfg.channels[level]
            if level < bottom:
                rows = layout[level].rows
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)[:, :rows]
                h = SphereConv(features, cfg.kernel_size, poles(level), dtype, name=f"up_{level}")(
                    h
                ).astype(jnp.float32)
            for i in range(cfg.blocks_per_level):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = ResidualBlock(features, cfg, poles(level), name=f"up_{level}_{i}")(h, embedding)

        h = ConditionalLayerNorm(num_groups=cfg.num_groups, name="head_norm")(h, embedding)
        out = SphereConv(
            self.out_channels, cfg.kernel_size, poles(0), dtype, zero_init=True, name="head"
        )(_ACTIVATION(h))
        return out.astype(jnp.float32)
