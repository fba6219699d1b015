"""Autoregressive ensemble rollout: 12 h steps scanned inside compiled chunks, members batched.

- Steps run in `jax.lax.scan` inside one compiled function per chunk of `chunk_steps` steps; only
  the chunk's output leaves the device, so a 15-day rollout never holds all leads in device
  memory and the host sees one transfer per chunk.
- Members are the backbone's batch (one batched call per denoiser evaluation) and, given a mesh,
  sharded over its devices along the ``member`` axis with `jax.sharding`.
- Member ``m``'s randomness is ``fold_in(fold_in(PRNGKey(seed), m), step)``: member ``m`` is the
  same whatever the ensemble size and however members are batched or sharded.
- Shapes are fixed per (members, chunk_steps): a sequence of requests of the same shape never
  recompiles (the last chunk is computed whole and trimmed).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from weather.model import noise as noise_lib
from weather.model.denoiser import Forecaster
from weather.model.sampler import SamplerConfig
from weather.model.task import forcing_channels

STEP = np.timedelta64(12, "h")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    """How to roll out.

    Attributes:
      chunk_steps: 12 h steps per compiled chunk (one device-to-host transfer each).
      initial_perturbation: std of spherical Gaussian noise added to each member's initial states,
        in units of each channel's std of 12 h differences (0: off, as GenCast).
      sampler: overrides the model's sampler (e.g. fewer steps for a faster mode).
    """

    chunk_steps: int = 5
    initial_perturbation: float = 0.0
    sampler: SamplerConfig | None = None

    def __post_init__(self) -> None:
        if self.chunk_steps < 1:
            raise ValueError(f"chunk_steps: must be >= 1, got {self.chunk_steps}")
        if self.initial_perturbation < 0:
            raise ValueError(f"initial_perturbation: must be >= 0, got {self.initial_perturbation}")


def member_keys(seed: int, members: np.ndarray) -> jax.Array:
    """``[M]`` keys, one per member index, independent of how many members are run."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda m: jax.random.fold_in(base, m))(jnp.asarray(members, jnp.uint32))


class Roller:
    """Compiled rollout chunks for one forecaster; reuse it across requests.

    Args:
      forecaster: the model.
      config: chunking, perturbations and sampler.
      mesh: optional device mesh with a ``member`` axis to shard members over.
    """

    def __init__(
        self, forecaster: Forecaster, config: RolloutConfig | None = None, mesh: Mesh | None = None
    ) -> None:
        self.forecaster = forecaster
        self.config = config or RolloutConfig()
        self.mesh = mesh
        self.compilations = 0

    @functools.cached_property
    def _chunk(self) -> Callable[..., Any]:
        fc = self.forecaster
        sampler = self.config.sampler

        def chunk(params, keys, previous, current, step0, forcings, static):
            self.compilations += 1  # runs only while tracing

            def body(carry, xs):
                prev, cur = carry
                step, forc = xs
                step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
                nxt = fc.sample_step(params, step_keys, prev, cur, forc, static, sampler)
                return (cur, nxt), nxt

            steps = step0 + jnp.arange(forcings.shape[0], dtype=jnp.uint32)
            (prev, cur), out = jax.lax.scan(body, (previous, current), (steps, forcings))
            return prev, cur, out

        return jax.jit(chunk, donate_argnums=(2, 3))

    def _shard(self, x: jax.Array) -> jax.Array:
        if self.mesh is None:
            return x
        spec = PartitionSpec("member", *([None] * (x.ndim - 1)))
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    def perturb(self, seed: int, members: np.ndarray, state: np.ndarray) -> jax.Array:
        """Initial states ``[M, H, W, C]`` with optional spherical noise (member-keyed)."""
        fc = self.forecaster
        x = jnp.broadcast_to(jnp.asarray(state, jnp.float32), (len(members), *fc.shape))
        amp = self.config.initial_perturbation
        if amp == 0:
            return x
        keys = member_keys(seed, members)
        spherical = noise_lib.make_noise_fn("spherical", fc.latitude, fc.longitude)

        def one(key: jax.Array) -> jax.Array:
            # A stream of the member's key that the sampler never uses.
            return spherical(jax.random.fold_in(key, 2**31 - 1), fc.shape)  # [H, W, C]

        noise = jax.vmap(one)(keys) * amp * jnp.asarray(fc.normalization.diff_std)
        return x + noise

    def run(
        self,
        params: Any,
        *,
        previous: np.ndarray,
        current: np.ndarray,
        static: np.ndarray,
        init_time: np.datetime64,
        steps: int,
        members: int | np.ndarray,
        seed: int,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_lead_step, states [k, M, H, W, C])`` chunk by chunk, in physical units.

        Args:
          params: the model parameters.
          previous, current: analysis states at init-12h and init, ``[H, W, C]`` physical.
          static: physical static fields ``[H, W, S]``.
          init_time: the initial time (UTC).
          steps: number of 12 h steps.
          members: ensemble size M, or explicit member indices ``[M]``.
          seed: the forecast's seed.
        """
        fc = self.forecaster
        index = np.arange(members) if isinstance(members, int) else np.asarray(members)
        keys = self._shard(member_keys(seed, index))
        pert_prev = self.perturb(seed, index, previous)
        # The same perturbation on both input states keeps their 12 h tendency intact.
        pert_cur = self.perturb(seed, index, current)
        prev, cur = self._shard(pert_prev), self._shard(pert_cur)
        static_n = fc.normalize_static(jnp.asarray(static, jnp.float32))
        k = self.config.chunk_steps
        t0 = np.asarray(init_time, dtype="datetime64[ns]")
        for lo in range(0, steps, k):
            # Forcings at (t, t+12h) of each step; computed on the host, tiny.
            t_in = t0 + STEP * np.arange(lo, lo + k)
            times = np.stack([t_in, t_in + STEP], axis=-1)
            forc = forcing_channels(times, fc.longitude, fc.latitude.size)
            prev, cur, out = self._chunk(
                params, keys, prev, cur, jnp.uint32(lo), jnp.asarray(forc), static_n
            )
            host = np.asarray(jax.device_get(out))  # [k, M, H, W, C]
            yield lo, host[: min(k, steps - lo)]


def member_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D mesh over the given (default: all) devices with axis ``member``."""
    devs = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devs, ("member",))
