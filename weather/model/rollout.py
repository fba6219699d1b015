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

from weather.data.times import STEP
from weather.model import noise as noise_lib
from weather.model.denoiser import Forecaster
from weather.model.sampler import SamplerConfig
from weather.model.task import forcing_channels


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


@dataclasses.dataclass(frozen=True)
class MemberStart:
    """How a forecast's members start: what a rollout (or a worker's lane) carries at step 0.

    Attributes:
      keys: ``[M]`` member keys (`member_keys`).
      previous, current: ``[M, H, W, C]`` physical initial states at init-12h and init, each
        with the member's initial perturbation (if any).
    """

    keys: jax.Array
    previous: jax.Array
    current: jax.Array


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
        """The compiled chunk, shared by `run` and `BatchRoller.advance`.

        ``(params, keys [B], previous [B, H, W, C], current, step0, forcings [k, (B,) H, W, F],
        static) -> (previous, current, states [k, B, H, W, C])`` (normalized states): ``step0``
        is the lead step of ``current``, one for all members (a scalar) or each its own ``[B]``;
        member ``b`` draws its step ``s`` from ``fold_in(keys[b], s)``.
        """
        fc = self.forecaster
        sampler = self.config.sampler

        def chunk(params, keys, previous, current, step0, forcings, static):
            self.compilations += 1  # runs only while tracing

            def body(carry, xs):
                prev, cur = carry
                steps, forc = xs  # [B] uint32, [(B,) H, W, F]
                step_keys = jax.vmap(jax.random.fold_in)(keys, steps)
                nxt = fc.sample_step(params, step_keys, prev, cur, forc, static, sampler)
                return (cur, nxt), nxt

            k, b = forcings.shape[0], keys.shape[0]
            offsets = jnp.arange(k, dtype=jnp.uint32)[:, None]
            steps = jnp.broadcast_to(step0 + offsets, (k, b))  # [k, B]
            (prev, cur), out = jax.lax.scan(body, (previous, current), (steps, forcings))
            return prev, cur, out

        # The carries are donated: each chunk's outputs feed the next.
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

    def start(
        self, seed: int, members: np.ndarray, previous: np.ndarray, current: np.ndarray
    ) -> MemberStart:
        """The members' keys and initial states, as `run` starts them (see `MemberStart`).

        Args:
          seed: the forecast's seed.
          members: member indices ``[M]``.
          previous, current: analysis states at init-12h and init, ``[H, W, C]`` physical.
        """
        # The same perturbation on both input states keeps their 12 h tendency intact.
        return MemberStart(
            keys=member_keys(seed, members),
            previous=self.perturb(seed, members, previous),
            current=self.perturb(seed, members, current),
        )

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
        wanted = index.size
        if self.mesh is not None and index.size % self.mesh.devices.size:
            # Members are split evenly over the devices: pad with members of further indices
            # (their keys are their own, so no real member changes), dropped from the output.
            extra = self.mesh.devices.size - index.size % self.mesh.devices.size
            index = np.concatenate([index, index.max() + 1 + np.arange(extra)])
        start = self.start(seed, index, previous, current)
        keys = self._shard(start.keys)
        prev, cur = self._shard(start.previous), self._shard(start.current)
        static_n = fc.normalize_static(jnp.asarray(static, jnp.float32))
        k = self.config.chunk_steps
        t0 = np.asarray(init_time, dtype="datetime64[ns]")
        for lo in range(0, steps, k):
            # Forcings at (t, t+12h) of each step; computed on the host, tiny.
            t_in = t0 + STEP * np.arange(lo, lo + k)
            times = np.stack([t_in, t_in + STEP], axis=-1)
            forc = forcing_channels(fc.task, times, fc.longitude, fc.latitude)
            prev, cur, out = self._chunk(
                params, keys, prev, cur, jnp.uint32(lo), jnp.asarray(forc), static_n
            )
            host = np.asarray(jax.device_get(out))  # [k, M, H, W, C]
            yield lo, host[: min(k, steps - lo), :wanted]


def member_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D mesh over the given (default: all) devices with axis ``member``."""
    devs = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devs, ("member",))


def select_devices(spec: int | str | None) -> list[Any]:
    """The devices to shard over: ``"all"``, a count N (the first N), or None (one device).

    Raises:
      ValueError: naming the request and how many devices this process sees.
    """
    available = jax.devices()
    if spec is None:
        return available[:1]
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return list(available)
        try:
            spec = int(text)
        except ValueError:
            raise ValueError(f"devices: {spec!r} is not a count or 'all'") from None
    if spec < 1 or spec > len(available):
        raise ValueError(
            f"devices: asked for {spec}, this process sees {len(available)} "
            f"({available[0].platform}); on a CPU, XLA_FLAGS="
            "--xla_force_host_platform_device_count=N makes N"
        )
    return list(available[:spec])


def mesh_for(spec: int | str | None) -> Mesh | None:
    """`member_mesh` over `select_devices(spec)`, or None for a single device."""
    devices = select_devices(spec)
    return member_mesh(devices) if len(devices) > 1 else None


class BatchRoller(Roller):
    """A `Roller` that also advances members of several forecasts in one compiled call.

    A service's worker holds members of several jobs at once, with different init times, seeds
    and lead steps. Here every member carries its own key (``member_keys(seed, m)`` of its job),
    its own step counter and its own forcings, so member ``m`` of a job draws exactly what
    `Roller.run` draws for it, whatever else shares the batch. The batch is padded to the smallest
    of a few fixed sizes, so the chunk compiles once per size and never per request.

    Args:
      forecaster, config, mesh: as for `Roller` (``config.chunk_steps`` steps per call).
      batch_sizes: the padded batch sizes, ascending; the largest bounds the members per call.
    """

    def __init__(
        self,
        forecaster: Forecaster,
        config: RolloutConfig | None = None,
        mesh: Mesh | None = None,
        batch_sizes: tuple[int, ...] = (8, 16, 32),
    ) -> None:
        super().__init__(forecaster, config, mesh)
        if not batch_sizes or list(batch_sizes) != sorted(set(batch_sizes)) or batch_sizes[0] < 1:
            raise ValueError(f"batch_sizes: must be positive and ascending, got {batch_sizes}")
        if mesh is not None and any(b % mesh.devices.size for b in batch_sizes):
            raise ValueError(
                f"batch_sizes: each of {batch_sizes} must divide among the mesh's "
                f"{mesh.devices.size} devices"
            )
        self.batch_sizes = tuple(batch_sizes)

    @property
    def max_members(self) -> int:
        """Most members one call advances."""
        return self.batch_sizes[-1]

    def padded_size(self, members: int) -> int:
        """The batch size that ``members`` members are padded to."""
        for size in self.batch_sizes:
            if members <= size:
                return size
        raise ValueError(f"members: {members} exceed the largest batch size {self.max_members}")

    def advance(
        self,
        params: Any,
        *,
        keys: np.ndarray | jax.Array,
        previous: np.ndarray,
        current: np.ndarray,
        steps: np.ndarray,
        init_times: np.ndarray,
        static: np.ndarray,
    ) -> np.ndarray:
        """Advance N members (of any forecasts) by ``chunk_steps`` steps in one compiled call.

        Args:
          params: the model parameters.
          keys: ``[N]`` member keys (`member_keys` of each member's forecast).
          previous, current: ``[N, H, W, C]`` physical states at lead steps ``s - 1`` and ``s``.
          steps: ``[N]`` lead step ``s`` of each member's ``current`` (0 at the analysis).
          init_times: ``[N]`` datetime64 init time of each member's forecast (UTC).
          static: physical static fields ``[H, W, S]``.

        Returns:
          ``[k, N, H, W, C]`` physical states at lead steps ``s + 1 .. s + k`` of each member.
        """
        fc = self.forecaster
        n = len(steps)
        if n < 1:
            raise ValueError("advance: needs at least one member")
        size = self.padded_size(n)
        pad = size - n
        k = self.config.chunk_steps
        step0 = np.asarray(steps, np.int64)
        t0 = np.asarray(init_times, dtype="datetime64[ns]")
        key_data = np.asarray(jax.random.key_data(jnp.asarray(keys)))

        def padded(x: np.ndarray) -> np.ndarray:
            # Padding repeats member 0: finite inputs whose outputs are dropped.
            return np.concatenate([x, np.repeat(x[:1], pad, axis=0)]) if pad else x

        # Forcings at (t, t+12h) of each member's steps: [k, B, H, W, F], computed on the host.
        t_in = padded(t0)[None, :] + STEP * (padded(step0)[None, :] + np.arange(k)[:, None])
        forc = forcing_channels(
            fc.task, np.stack([t_in, t_in + STEP], axis=-1), fc.longitude, fc.latitude
        )
        _, _, out = self._chunk(
            params,
            self._shard(jnp.asarray(padded(key_data))),
            self._shard(jnp.asarray(padded(np.asarray(previous, np.float32)))),
            self._shard(jnp.asarray(padded(np.asarray(current, np.float32)))),
            self._shard(jnp.asarray(padded(step0).astype(np.uint32))),
            jnp.asarray(forc),
            fc.normalize_static(jnp.asarray(static, jnp.float32)),
        )
        return np.asarray(jax.device_get(out))[:, :n]
