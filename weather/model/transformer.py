"""SphereTransformer: a patch transformer on the lat-lon grid, conditioned on the noise level.

Shapes (B batch, H x W grid, p patch, Hp = ceil(H / p) token rows, Wp = W / p token columns,
N = Hp * Wp tokens, d = d_model):

1. Latitude padding. H is padded to Hp * p rows by rows continued over the poles (half of the
   missing rows beyond the south pole, the rest beyond the north pole; `pad_latitude_over_poles`),
   so any row count works: 33 rows at p = 2 become 34, 181 at p = 4 become 184, 721 at p = 8
   become 728 (with band attention, Hp is also rounded up to a multiple of the band). The padded
   rows are cropped again after the head. W must be divisible by p.
2. Patch embedding: [B, H, W, C] -> [B, N, p*p*C] -> dense -> [B, N, d]. Patches are aligned with
   longitude column 0, so shifting the input by whole patches in longitude permutes tokens.
3. Position encoding: each patch centre (the normalised mean unit vector of its real cells) as
   Fourier features of (x, y, z) through an MLP, added to the tokens. Being a smooth function of
   the position on the sphere, it has no seam at the dateline and no singularity at the poles.
4. L pre-norm blocks: x += Attn(CLN(x)); x += MLP(CLN(x)), CLN being the conditional layer norm
   from the noise embedding, the MLP d -> mlp_ratio*d -> d (SiLU by default).
5. Head: CLN, then a zero-initialised dense to p*p*out_channels, un-patchified and cropped.

Cost per block and batch element: 24 N d^2 FLOPs in the dense layers plus 4 N^2 d in global
attention. At 5.625 deg (32 x 64, p = 2, N = 512, d = 256) that is 0.81 + 0.27 GFLOP a block,
attention a quarter. Global attention grows as N^2: at 1 deg (181 x 360, p = 4, N = 4140) it is
still cheap on a GPU; at 0.25 deg (721 x 1440, p = 8, N = 16380, d = 512) it is about 5x the dense
layers (0.55 TFLOP a block), which flash attention on an H100 handles but latitude-band attention
(`attention_window_rows` = r, cost 4 N (r Wp) d) cuts by Hp / r. Bands cover whole latitude
circles, so no band has an edge at the dateline; every other block shifts the bands by r/2 rows
(the half-bands at the two poles then attend on their own), so that information crosses band
edges.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from weather.data.grid import cell_area_weights
from weather.model.layers import (
    ACTIVATIONS,
    Activation,
    AttentionImplementation,
    ComputeDtype,
    ConditionalLayerNorm,
    NoiseEmbedding,
    PositionEncoding,
    SphereGrid,
    check_attention,
    check_choice,
    check_inputs,
    check_positive,
    grid_name,
    multi_head_attention,
    pad_latitude_over_poles,
)


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
        check_positive(
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
            check_positive(self, "attention_window_rows")
            if self.attention_window_rows % 2:
                raise ValueError(
                    "attention_window_rows must be even (bands shift by half a band), "
                    f"got {self.attention_window_rows}"
                )
        check_choice(self, "position_encoding", ("xyz", "latitude", "none"))
        check_attention(self)
        check_choice(self, "activation", tuple(ACTIVATIONS))
        check_choice(self, "compute_dtype", ("float32", "bfloat16"))


def patch_layout(grid: SphereGrid, config: SphereTransformerConfig) -> tuple[int, int, int, int]:
    """(token rows Hp, token columns Wp, rows padded south, rows padded north) for this grid.

    Raises:
      ValueError: naming the grid and what the config supports, when patch_size does not divide
        the longitude count or the rows are too few to pad over the poles.
    """
    n_lat, n_lon = grid.shape
    p = config.patch_size
    if n_lon % p:
        raise ValueError(
            f"grid {grid_name(n_lat, n_lon)}: the longitude count {n_lon} must be divisible by "
            f"patch_size {p} (the transformer's patch side); choose a patch size that divides it, "
            "or another grid"
        )
    rows_multiple = p * (config.attention_window_rows or 1)
    padded = math.ceil(n_lat / rows_multiple) * rows_multiple
    south = (padded - n_lat) // 2
    north = padded - n_lat - south
    if max(south, north) > n_lat - 2:
        window = (
            f" x attention_window_rows {config.attention_window_rows}"
            if config.attention_window_rows
            else ""
        )
        raise ValueError(
            f"grid {grid_name(n_lat, n_lon)}: the transformer pads the latitudes to a multiple "
            f"of patch_size {p}{window} = {rows_multiple} ({padded} rows), which needs at least "
            f"{max(south, north) + 2} rows; choose a smaller patch or window, or more latitudes"
        )
    return padded // p, n_lon // p, south, north


def patch_centres(grid: SphereGrid, config: SphereTransformerConfig) -> np.ndarray:
    """[Hp, Wp, 3] unit vectors of the patch centres: area-weighted means of their real cells.

    A patch straddling a pole is centred on its real cells (not on the pole, where the real cells
    and their mirror images over it would average to). Token rows made only of padding (possible
    with `attention_window_rows`) sit at the mean of the cells their contents copy.
    """
    hp, wp, south, north = patch_layout(grid, config)
    p = config.patch_size
    weighted = cell_area_weights(np.asarray(grid.latitude))[:, None, None] * grid.unit_vectors()
    real = np.pad(weighted, ((south, north), (0, 0), (0, 0)))
    poles = (grid.south_pole_row, grid.north_pole_row)
    mirrored = pad_latitude_over_poles(weighted[None], south, north, poles)[0]
    sums = real.reshape(hp, p, wp, p, 3).sum(axis=(1, 3))
    sums_mirrored = mirrored.reshape(hp, p, wp, p, 3).sum(axis=(1, 3))
    padding_only = np.all(real.reshape(hp, p, wp, p, 3) == 0, axis=(1, 3, 4))[:, :, None]
    sums = np.where(padding_only, sums_mirrored, sums)
    return sums / np.linalg.norm(sums, axis=-1, keepdims=True)


def position_features(centres: np.ndarray, mode: str, octaves: int) -> np.ndarray:
    """[..., F] Fourier features of the coordinates (x, y, z) or z alone, per `mode`."""
    coords = centres if mode == "xyz" else centres[..., 2:]
    feats = [coords]
    for k in range(octaves):
        feats += [np.sin(2**k * np.pi * coords), np.cos(2**k * np.pi * coords)]
    return np.concatenate(feats, axis=-1).astype(np.float32)


def band_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    token_rows: int,
    window_rows: int,
    shifted: bool,
    implementation: AttentionImplementation = "auto",
) -> jax.Array:
    """Attention within latitude bands of `window_rows` token rows spanning all longitudes.

    q, k, v: [B, N, heads, head_dim] with N = token_rows * Wp tokens in row-major (lat, lon)
    order, token_rows divisible by window_rows. Unshifted bands are rows [0, r), [r, 2r), ...;
    shifted bands are [0, r/2), [r/2, 3r/2), ..., [Hp - r/2, Hp): the two polar half-bands
    attend within themselves, never to each other.
    """
    b, n, heads, dh = q.shape
    wp = n // token_rows
    r = window_rows

    def banded(t: jax.Array, rows: int) -> jax.Array:  # [B, rows*Wp, h, dh] -> [B*nb, r*Wp, h, dh]
        return t.reshape(b * (rows // r), r * wp, heads, dh)

    if not shifted:
        out = multi_head_attention(
            banded(q, token_rows), banded(k, token_rows), banded(v, token_rows), implementation
        )
        return out.reshape(b, n, heads, dh)
    half = (r // 2) * wp
    pieces = [multi_head_attention(q[:, :half], k[:, :half], v[:, :half], implementation)]
    if token_rows > r:
        mid = slice(half, n - half)
        rows = token_rows - r
        out = multi_head_attention(
            banded(q[:, mid], rows),
            banded(k[:, mid], rows),
            banded(v[:, mid], rows),
            implementation,
        )
        pieces.append(out.reshape(b, n - 2 * half, heads, dh))
    pieces.append(multi_head_attention(q[:, -half:], k[:, -half:], v[:, -half:], implementation))
    return jnp.concatenate(pieces, axis=1)


class TransformerBlock(nn.Module):
    """Pre-norm block: x += Attn(CLN(x)); x += MLP(CLN(x)). x: [B, N, d] float32."""

    config: SphereTransformerConfig
    token_rows: int
    shifted: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.compute_dtype)
        b, n, d = x.shape
        heads = cfg.num_heads

        h = ConditionalLayerNorm(name="attention_norm")(x, embedding).astype(dtype)
        qkv = nn.Dense(3 * d, dtype=dtype, name="qkv")(h)
        q, k, v = jnp.split(qkv.reshape(b, n, 3 * heads, d // heads), 3, axis=2)
        if cfg.attention_window_rows is None:
            attended = multi_head_attention(q, k, v, cfg.attention_implementation)
        else:
            attended = band_attention(
                q,
                k,
                v,
                self.token_rows,
                cfg.attention_window_rows,
                self.shifted,
                cfg.attention_implementation,
            )
        out = nn.Dense(d, dtype=dtype, name="attention_out")(attended.reshape(b, n, d))
        x = x + out.astype(jnp.float32)

        h = ConditionalLayerNorm(name="mlp_norm")(x, embedding).astype(dtype)
        h = nn.Dense(cfg.mlp_ratio * d, dtype=dtype, name="mlp_hidden")(h)
        h = ACTIVATIONS[cfg.activation](h)
        out = nn.Dense(d, dtype=dtype, name="mlp_out")(h)
        return x + out.astype(jnp.float32)


class SphereTransformer(nn.Module):
    """Patch transformer denoiser backbone; build it with `weather.model.backbone.build_backbone`.

    Call: x [B, H, W, C] float32, c_noise [B] float32 -> [B, H, W, out_channels] float32.
    """

    config: SphereTransformerConfig
    grid: SphereGrid
    out_channels: int

    @nn.compact
    def __call__(self, x: jax.Array, c_noise: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.compute_dtype)
        n_lat = self.grid.shape[0]
        check_inputs(x, c_noise, self.grid)
        b, c = x.shape[0], x.shape[-1]
        p = cfg.patch_size
        hp, wp, south, north = patch_layout(self.grid, cfg)
        poles = (self.grid.south_pole_row, self.grid.north_pole_row)

        embedding = NoiseEmbedding(cfg.conditioning_dim, cfg.noise_frequencies, name="noise")(
            c_noise
        )

        x = pad_latitude_over_poles(x.astype(jnp.float32), south, north, poles)
        patches = x.reshape(b, hp, p, wp, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, hp * wp, p * p * c).astype(dtype)
        tokens = nn.Dense(cfg.d_model, dtype=dtype, name="patch_embedding")(patches)
        tokens = tokens.astype(jnp.float32)

        if cfg.position_encoding != "none":
            feats = position_features(
                patch_centres(self.grid, cfg), cfg.position_encoding, cfg.position_frequencies
            ).reshape(hp * wp, -1)
            pos = nn.Dense(cfg.d_model, name="position_hidden")(jnp.asarray(feats))
            pos = nn.Dense(cfg.d_model, name="position_out")(nn.gelu(pos))
            tokens = tokens + pos[None]

        for i in range(cfg.num_layers):
            tokens = TransformerBlock(cfg, hp, shifted=i % 2 == 1, name=f"block_{i}")(
                tokens, embedding
            )

        h = ConditionalLayerNorm(name="head_norm")(tokens, embedding).astype(dtype)
        out = nn.Dense(
            p * p * self.out_channels, dtype=dtype, kernel_init=nn.initializers.zeros, name="head"
        )(h)
        out = out.astype(jnp.float32).reshape(b, hp, wp, p, p, self.out_channels)
        out = out.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp * p, wp * p, self.out_channels)
        return out[:, south : south + n_lat]
