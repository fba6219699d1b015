"""The conditional denoiser and one 12-hour sampling step: backbone + EDM + task, as pure functions.

`Forecaster` bundles every config needed to rebuild the model (task, backbone, EDM, sampler,
noise, grid) with the normalisation, and exposes pure functions of the parameters:

- `conditioning`: normalised inputs ``x(t-12h), x(t)``, forcings and static fields as channels;
- `denoise`: D(z; σ) of the normalised residual target (Karras et al. 2022, eq. 7);
- `loss`: the EDM training loss, weighted by latitude area and pressure level;
- `sample_step`: one 12 h step in physical units: draw the residual with the sampler and add it.

Shapes: ``B`` batch (members or training windows), ``H`` latitudes, ``W`` longitudes,
``C`` state channels (`TaskConfig.n_state`), ``K`` conditioning channels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from weather.data.grid import cell_area_weights
from weather.data.harmonics import default_max_wavenumber
from weather.model import backbone as backbone_lib
from weather.model import edm as edm_lib
from weather.model import noise as noise_lib
from weather.model import sampler as sampler_lib
from weather.model import spectral
from weather.model.task import Normalization, TaskConfig, loss_weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything but the parameters and the normalisation.

    Attributes:
      task: fields, levels and loss weights.
      backbone: the network's architecture config.
      edm: preconditioning and training-noise distribution.
      sampler: DPM-Solver++ 2S settings used by `sample_step`.
      noise: "spherical" (isotropic white noise from spherical harmonics, as GenCast) or "iid".
      conserve: state variables whose area-weighted global mean each 12 h step keeps exactly
        (its residual's global mean is removed). ``("surface_pressure",)`` conserves the dry
        atmosphere's mass, as the simulated (dry, Held-Suarez) truth does exactly; off by
        default, as in GenCast, whose moist ERA5 atmosphere gains and loses water.
    """

    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    backbone: Any = dataclasses.field(default_factory=backbone_lib.SphereTransformerConfig)
    edm: edm_lib.EDMConfig = dataclasses.field(default_factory=edm_lib.EDMConfig)
    sampler: sampler_lib.SamplerConfig = dataclasses.field(
        default_factory=sampler_lib.SamplerConfig
    )
    noise: str = "spherical"
    conserve: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "conserve", tuple(self.conserve))
        if self.noise not in ("spherical", "iid"):
            raise ValueError(f"noise: must be 'spherical' or 'iid', got {self.noise!r}")
        unknown = [v for v in self.conserve if v not in self.task.surface_variables]
        if unknown:
            raise ValueError(
                f"conserve: {unknown} are not surface variables of the task "
                f"{list(self.task.surface_variables)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.to_dict(),
            "backbone": backbone_lib.config_to_dict(self.backbone),
            "edm": _dataclass_dict(self.edm),
            "sampler": _dataclass_dict(self.sampler),
            "noise": self.noise,
            **({"conserve": list(self.conserve)} if self.conserve else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        return cls(
            task=TaskConfig.from_dict(d["task"]),
            backbone=backbone_lib.config_from_dict(d["backbone"]),
            edm=edm_lib.EDMConfig(**d["edm"]),
            sampler=sampler_lib.SamplerConfig(**_floats(d["sampler"])),
            noise=d["noise"],
            conserve=tuple(d.get("conserve", ())),
        )


def _dataclass_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _floats(d: Mapping[str, Any]) -> dict[str, Any]:
    # JSON has no infinity literal that every reader accepts; Python's json writes Infinity.
    return {
        k: float(v) if isinstance(v, str) and v.lower() in ("inf", "infinity") else v
        for k, v in d.items()
    }


def channel_spread_scales(
    task: TaskConfig, sampler: sampler_lib.SamplerConfig
) -> np.ndarray | None:
    """The sampler's spread scale per state channel ``[C]`` (float64, `TaskConfig.channel_names`
    order), or None where it names no variable or channel (``spread_scale``, a scalar, applies).

    A ``spread_scales`` entry for a channel (``temperature@850``) wins over its variable's
    (``temperature``), which wins over ``spread_scale``.

    Raises:
      ValueError: an entry names neither a state variable nor a state channel of the task.
    """
    if not sampler.spread_scales:
        return None
    channels = task.channel_names()
    variables = [name.partition("@")[0] for name in channels]
    known = set(channels) | set(variables)
    for name, _ in sampler.spread_scales:
        if name not in known:
            raise ValueError(
                f"sampler: spread_scale.{name}: {name!r} is neither a state variable nor a "
                f"channel of this model (variables: {sorted(set(variables))}; channels are "
                "VARIABLE@LEVEL, e.g. temperature@850)"
            )
    scales = dict(sampler.spread_scales)
    return np.asarray(
        [
            scales.get(channel, scales.get(variable, sampler.spread_scale))
            for channel, variable in zip(channels, variables, strict=True)
        ],
        np.float64,
    )


class Forecaster:
    """A model on a grid: pure functions of its parameters.

    Args:
      config: the model's configs.
      normalization: per-channel statistics.
      latitude, longitude: the grid (degrees; latitude ascending, longitude ascending in
        [0, 360) and evenly spaced).
    """

    def __init__(
        self,
        config: ModelConfig,
        normalization: Normalization,
        latitude: np.ndarray,
        longitude: np.ndarray,
    ) -> None:
        self.config = config
        self.task = config.task
        self.normalization = normalization
        self.latitude = np.asarray(latitude, np.float64)
        self.longitude = np.asarray(longitude, np.float64)
        self.shape = (self.latitude.size, self.longitude.size, self.task.n_state)
        self.module: nn.Module = backbone_lib.build_backbone(
            config.backbone, self.latitude, self.longitude, self.task.n_state
        )
        self.noise_fn = noise_lib.make_noise_fn(config.noise, self.latitude, self.longitude)
        self.weights = jnp.asarray(loss_weights(self.task, self.latitude))  # [H, 1, C]
        self._area = jnp.asarray(cell_area_weights(self.latitude), jnp.float32)  # [H], mean 1
        n = normalization
        self._mean = jnp.asarray(n.mean)
        self._std = jnp.asarray(n.std)
        self._diff_std = jnp.asarray(n.diff_std)
        self._static_mean = jnp.asarray(n.static_mean)
        self._static_std = jnp.asarray(n.static_std)
        # Prognostic channels are predicted as 12 h residuals of their input; output-only ones
        # (precipitation, never an input) as values, centred and scaled as inputs are.
        self._is_input = jnp.asarray(self.task.input_mask())
        self._baseline_scale = jnp.where(self._is_input, self._diff_std, self._std)
        self._lower = jnp.asarray(self.task.lower_bounds())
        self._clip = bool(np.isfinite(self.task.lower_bounds()).any())
        # Where each channel is defined ([H, W, C]; None: everywhere): sea-surface temperature
        # is filled with its mean over land as an input, left out of the loss and NaN in outputs.
        self._valid = None if n.valid is None else jnp.asarray(n.valid)
        if n.valid is not None:
            if n.valid.shape != self.shape:
                raise ValueError(
                    f"normalization: its mask of defined points is {n.valid.shape}, the model "
                    f"needs {self.shape} (lat, lon, channel)"
                )
            self.weights = self.weights * jnp.asarray(n.valid)
        self.channel_spread_scales(config.sampler)  # names checked when the model is built
        self.channel_degree_factors(config.sampler)
        self.channel_degree_factors(config.sampler, state=True)
        self.power_cap_filter(config.sampler)

    def channel_spread_scales(self, sampler: sampler_lib.SamplerConfig) -> np.ndarray | None:
        """`channel_spread_scales` of this model's task."""
        return channel_spread_scales(self.task, sampler)

    def channel_degree_factors(
        self, sampler: sampler_lib.SamplerConfig, *, state: bool = False
    ) -> np.ndarray | None:
        """The sampler's ``degree_scales`` (``state``: its ``state_degree_scales``) as factors
        ``[L + 1, C]`` for this grid and task (`weather.model.spectral.channel_degree_factors`;
        None without any)."""
        scales = sampler.state_degree_scales if state else sampler.degree_scales
        if not scales:
            return None
        top = default_max_wavenumber(self.latitude.size, self.longitude.size)
        return spectral.channel_degree_factors(self.task.channel_names(), scales, top)

    def deviation_filter(
        self, sampler: sampler_lib.SamplerConfig, *, state: bool = False
    ) -> Callable[[jax.Array], jax.Array] | None:
        """The sampler's ``degree_scales`` as the ``[M, H, W, C]`` map `sampler.sample`
        applies to each sample's deviation (``state``: its ``state_degree_scales``, the map
        `sample_step` applies to each new state); None without any."""
        factors = self.channel_degree_factors(sampler, state=state)
        if factors is None:
            return None
        return spectral.degree_filter(self.latitude, self.longitude, factors)

    def power_cap_filter(
        self, sampler: sampler_lib.SamplerConfig
    ) -> Callable[[jax.Array], jax.Array] | None:
        """The sampler's ``power_cap`` as the ``[M, H, W, C]`` map `sample_step` applies to
        each new state (`weather.model.spectral.power_cap_filter`); None where it is off.

        Raises:
          ValueError: a cap but no climatological spectrum in the normalisation, or a
            ``power_cap_degree`` above the grid's truncation, naming the field.
        """
        if not sampler.power_cap:
            return None
        top = default_max_wavenumber(self.latitude.size, self.longitude.size)
        climate = self.normalization.degree_power
        if climate is None:
            raise ValueError(
                "sampler: power_cap needs the truth's climatological power per degree, which "
                "this model's normalisation lacks; add it with 'weather export CHECKPOINT OUT "
                "--degree-power-from ARCHIVE'"
            )
        if climate.shape != (top + 1, self.task.n_state):
            raise ValueError(
                f"normalization: degree_power is {climate.shape}, this grid and task need "
                f"{(top + 1, self.task.n_state)} (degree, channel)"
            )
        if sampler.power_cap_degree > top:
            raise ValueError(
                f"sampler: power_cap_degree={sampler.power_cap_degree} is above this grid's "
                f"truncation {top}"
            )
        return spectral.power_cap_filter(
            self.latitude, self.longitude, climate, sampler.power_cap, sampler.power_cap_degree
        )

    # -- parameters ---------------------------------------------------------------------------

    def init_params(self, key: jax.Array) -> Any:
        """Fresh parameters (float32)."""
        h, w, c = self.shape
        x = jnp.zeros((1, h, w, c + self.task.n_conditioning), jnp.float32)
        return jax.jit(self.module.init)(key, x, jnp.zeros((1,), jnp.float32))

    def param_shapes(self) -> Any:
        """The parameters' tree of `jax.ShapeDtypeStruct` (traced, never run or compiled).

        Loading a checkpoint needs only the tree's structure and shapes; `init_params` would
        compile the whole initialiser, which takes over a minute for the U-Net on a CPU.
        """
        h, w, c = self.shape
        x = jax.ShapeDtypeStruct((1, h, w, c + self.task.n_conditioning), jnp.float32)
        noise = jax.ShapeDtypeStruct((1,), jnp.float32)
        return jax.eval_shape(self.module.init, jax.random.PRNGKey(0), x, noise)

    def count_params(self, params: Any) -> int:
        return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))

    @functools.cached_property
    def jitted_loss(self) -> Callable[..., jnp.ndarray]:
        """`loss`, compiled once per forecaster."""
        return jax.jit(self.loss)

    # -- pure functions -------------------------------------------------------------------------

    def normalize_static(self, static: jnp.ndarray) -> jnp.ndarray:
        """``[H, W, S]`` physical -> normalised."""
        return (static - self._static_mean) / self._static_std

    def conditioning(
        self,
        previous: jnp.ndarray,
        current: jnp.ndarray,
        forcings: jnp.ndarray,
        static: jnp.ndarray,
    ) -> jnp.ndarray:
        """Conditioning channels ``[B, H, W, K]``.

        Args:
          previous, current: states at t-12h and t, physical units ``[B, H, W, C]``.
          forcings: ``[B, H, W, F]`` (`weather.model.task.forcing_channels`).
          static: normalised static fields ``[H, W, S]``.
        """
        b = previous.shape[0]
        static_b = jnp.broadcast_to(static, (b, *static.shape))
        seen = self._is_input if self._valid is None else self._is_input & self._valid

        def normalized(x: jnp.ndarray) -> jnp.ndarray:
            # 0 (the mean) where a channel is no input or undefined: a NaN there stays out.
            return jnp.where(seen, (x - self._mean) / self._std, 0.0)

        return jnp.concatenate(
            [normalized(previous), normalized(current), forcings, static_b], axis=-1
        )

    def _raw_fn(self, params: Any, cond: jnp.ndarray) -> Callable[..., jnp.ndarray]:
        """The network F(c_in z, c_noise) with the conditioning channels appended."""

        def raw(scaled: jnp.ndarray, c_noise: jnp.ndarray) -> jnp.ndarray:
            x = jnp.concatenate([scaled, cond], axis=-1)
            c = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), (scaled.shape[0],))
            return cast(jnp.ndarray, self.module.apply(params, x, c))

        return raw

    def denoise(
        self, params: Any, noisy: jnp.ndarray, sigma: jnp.ndarray, cond: jnp.ndarray
    ) -> jnp.ndarray:
        """D(z; σ): the denoised normalised residual ``[B, H, W, C]`` (σ: ``[B]``)."""
        return edm_lib.denoise(self._raw_fn(params, cond), noisy, sigma, self.config.edm.sigma_data)

    def baseline(self, current: jnp.ndarray) -> jnp.ndarray:
        """What the model's normalised output is added to ``[B, H, W, C]``: ``x(t)`` for
        prognostic channels, the climatological mean for output-only ones."""
        return jnp.where(self._is_input, current, self._mean)

    def residual_target(self, current: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
        """Normalised residual ``(x(t+12h) - x(t)) / diff_std`` (output-only channels:
        ``(x(t+12h) - mean) / std``); 0 where a channel is undefined (no loss there)."""
        y = (target - self.baseline(current)) / self._baseline_scale
        return y if self._valid is None else jnp.where(self._valid, y, 0.0)

    def loss(
        self,
        params: Any,
        key: jax.Array,
        previous: jnp.ndarray,
        current: jnp.ndarray,
        target: jnp.ndarray,
        forcings: jnp.ndarray,
        static: jnp.ndarray,
        sigma: jnp.ndarray | float | None = None,
    ) -> jnp.ndarray:
        """EDM loss of one batch (scalar), area- and level-weighted (mean weight 1).

        ``sigma``: a fixed noise level (scalar or ``[B]``) instead of training's drawn ones.
        """
        cond = self.conditioning(previous, current, forcings, static)
        y = self.residual_target(current, target)
        loss, _ = edm_lib.edm_loss(
            self._raw_fn(params, cond), key, y, self.weights, self.config.edm, self.noise_fn, sigma
        )
        return loss

    def perturb_inputs(
        self, key: jax.Array, previous: jnp.ndarray, current: jnp.ndarray, scale: float
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The two input states plus isotropic noise of ``scale`` per-channel stds ``[B, H, W, C]``.

        Training with noisy inputs (a lever against autoregressive drift: the rolled-out model
        sees states that are never exactly on the training data's attractor) perturbs both
        states with independent draws of the backbone's own noise (spherical by default), in
        units of each channel's climatological std, so that every variable is disturbed alike.
        """
        k_prev, k_cur = jax.random.split(key)
        std = self._std * scale
        return (
            previous + std * self.noise_fn(k_prev, previous.shape),
            current + std * self.noise_fn(k_cur, current.shape),
        )

    def sample_step(
        self,
        params: Any,
        keys: jax.Array,
        previous: jnp.ndarray,
        current: jnp.ndarray,
        forcings: jnp.ndarray,
        static: jnp.ndarray,
        sampler: sampler_lib.SamplerConfig | None = None,
    ) -> jnp.ndarray:
        """x(t+12h) for a batch of members, physical units ``[M, H, W, C]`` (clipped at the
        catalogue's lower bounds, NaN where a channel is undefined).

        Members are the backbone's batch (one batched call per denoiser evaluation, which is
        several times faster than vmapping the sampler: attention stays batched). Each member's
        noise comes from its own key in `keys` ``[M]``, folded with the sampler's (member-free)
        per-draw key, so member m's draws do not depend on which other members share the batch.

        Args:
          keys: per-member keys ``[M]`` for this step.
          previous, current: ``[M, H, W, C]`` physical.
          forcings: ``[H, W, F]`` shared by all members, or ``[M, H, W, F]``.
          static: normalised static fields ``[H, W, S]``.
        """
        m = previous.shape[0]
        forc = jnp.broadcast_to(forcings, (m, *forcings.shape[-3:]))
        cond = self.conditioning(previous, current, forc, static)

        def denoise_fn(x: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
            return self.denoise(params, x, jnp.broadcast_to(sigma, (m,)), cond)

        def noise_fn(key: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
            words = jax.random.key_data(key).reshape(-1)

            def member_noise(member_key: jax.Array) -> jnp.ndarray:
                for i in range(words.shape[0]):
                    member_key = jax.random.fold_in(member_key, words[i])
                return self.noise_fn(member_key, tuple(shape[1:]))

            return jax.vmap(member_noise)(keys)

        # The sampler's own key only labels the draws (initial noise, churn at step i); all
        # randomness is per member, through `noise_fn`.
        config = sampler or self.config.sampler
        residual = sampler_lib.sample(
            denoise_fn,
            jax.random.PRNGKey(0),
            (m, *self.shape),
            config,
            noise_fn,
            self.channel_spread_scales(config),  # [C]: channels are last
            self.deviation_filter(config),
        )
        out = self.baseline(current) + residual * self._baseline_scale
        damping = self.deviation_filter(config, state=True)
        if damping is not None:  # the new state's finest scales, as hyperdiffusion would
            out = damping(out)
        capped = self.power_cap_filter(config)
        if capped is not None:  # finest scales held within the climate's power
            out = capped(out)
        out = self.conserved(current, out)
        if self._clip:  # precipitation and humidity are never negative
            out = jnp.maximum(out, self._lower)
        if self._valid is not None:
            out = jnp.where(self._valid, out, jnp.nan)
        return out

    def conserved(self, current: jnp.ndarray, nxt: jnp.ndarray) -> jnp.ndarray:
        """``nxt`` ``[M, H, W, C]`` with the global means of `config.conserve`'s channels set to
        ``current``'s (area-weighted, per member): each step's global-mean tendency removed."""
        if not self.config.conserve:
            return nxt
        area = self._area[:, None]  # [H, 1], mean 1
        names = self.task.channel_names()
        for name in self.config.conserve:
            c = names.index(name)
            drift = jnp.mean((nxt[..., c] - current[..., c]) * area, axis=(-2, -1))  # [M]
            nxt = nxt.at[..., c].add(-drift[:, None, None])
        return nxt
