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
Gaussian grids all work (`weather.model.layers.SUPPORTED_GRIDS`). Nothing in either architecture
has a boundary at longitude 0/360, and neither pads with zeros: longitude wraps periodically, and
rows beyond a pole are the rows next to it on the opposite meridian
(`weather.model.layers.pad_sphere`). Each architecture also constrains the grid's size (the
transformer's patch must divide the longitudes, the U-Net's levels halve them); `check_grid`
refuses a grid either cannot run on before any work, and `build_backbone` calls it.

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
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from weather.model.convnet import SphereUNet, SphereUNetConfig, level_layout
from weather.model.layers import SphereGrid
from weather.model.transformer import SphereTransformer, SphereTransformerConfig, patch_layout

__all__ = [
    "BACKBONE_CONFIGS",
    "BackboneConfig",
    "SphereTransformerConfig",
    "SphereUNetConfig",
    "build_backbone",
    "check_grid",
    "config_from_dict",
    "config_to_dict",
]


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


def check_grid(config: BackboneConfig, latitude: np.ndarray, longitude: np.ndarray) -> SphereGrid:
    """The validated grid, if the architecture of `config` runs on it.

    Cheap (no arrays, nothing traced): callers with a long way to go before building the model
    (reading an archive, computing statistics) can refuse a grid first.

    Args:
      config: one of the registered configs.
      latitude, longitude: [lat], [lon] cell centres (degrees), as `build_backbone` takes them.

    Raises:
      ValueError: naming the grid (latitudes x longitudes) and what is supported.
    """
    grid = SphereGrid.build(latitude, longitude)
    if isinstance(config, SphereTransformerConfig):
        patch_layout(grid, config)
    elif isinstance(config, SphereUNetConfig):
        level_layout(grid, config)
    else:
        raise TypeError(f"not a backbone config: {config!r}")
    return grid


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

    Raises:
      ValueError: a grid the architecture does not run on (`check_grid`), or bad out_channels.
    """
    geometry = check_grid(config, latitude, longitude)
    if not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
    if isinstance(config, SphereTransformerConfig):
        return SphereTransformer(config=config, grid=geometry, out_channels=out_channels)
    return SphereUNet(config=config, grid=geometry, out_channels=out_channels)
