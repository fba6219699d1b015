"""SphereUNet: a U-Net of sphere-padded convolutions, conditioned on the noise level.

Shapes: x [B, H, W, C] -> [B, H, W, out_channels]; level l (0 finest) has channels[l] features on
a grid of H_l x W_l, H_{l+1} = ceil(H_l / 2), W_{l+1} = W_l / 2.

- Every k x k convolution pads its input on the sphere instead of with zeros
  (`weather.model.layers.pad_sphere`): k // 2 columns wrap around in longitude and k // 2 rows
  continue over each pole on the opposite meridian (row i beyond the pole is row i - 1 before it,
  rolled by W_l / 2). The network therefore has no edge anywhere, and (without the latitude
  channels below breaking it in latitude) commutes with longitude shifts by 2^(levels-1) cells.
- Two constant input channels, sin(lat) and cos(lat), tell the network its latitude; longitude is
  left out so that the network stays equivariant to longitude shifts.
- Residual blocks: x + Conv(act(CGN(Conv(act(CGN(x)))))), CGN the GroupNorm whose scale and
  offset come from the noise embedding (`ConditionalLayerNorm(num_groups=...)`).
- Downsampling: a learned 2 x 2 convolution with stride 2; an odd row count first gets one more
  row continued over the north pole. Upsampling: nearest-neighbour doubling, the extra row
  cropped, then a sphere-padded convolution. Skip connections are concatenated.
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
    """k x k convolution with a sphere halo instead of zero padding; [B, H, W, C] -> [..., F]."""

    features: int
    kernel_size: int
    poles: tuple[bool, bool] = (False, False)
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
    poles: tuple[bool, bool] = (False, False)

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


def level_shapes(grid: SphereGrid, levels: int) -> list[tuple[int, int]]:
    """(rows, columns) of each level, finest first; raises if a level's columns are odd."""
    n_lat, n_lon = grid.shape
    shapes = [(n_lat, n_lon)]
    for _ in range(levels - 1):
        rows, cols = shapes[-1]
        if cols % 4:
            raise ValueError(
                f"longitude count {n_lon} does not allow {levels} levels: every level needs an "
                "even number of columns"
            )
        shapes.append(((rows + 1) // 2, cols // 2))
    return shapes


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
        shapes = level_shapes(self.grid, levels)
        # Only the finest level can have rows on the poles; coarser rows are averages of pairs.
        fine_poles = (self.grid.south_pole_row, self.grid.north_pole_row)

        def poles(level: int) -> tuple[bool, bool]:
            return fine_poles if level == 0 else (False, False)

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
                rows = shapes[level][0]
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
                rows = shapes[level][0]
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
