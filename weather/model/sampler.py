"""GenCast's sampler: DPM-Solver++(2S) with Karras et al.'s stochastic churn, and the 2M variant.

Noise levels (Karras et al. 2022, eq. 5): for ``i < N``

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,

and ``sigma_N = 0``. Starting from ``x_0 = sigma_0 n``, each step ``i = 0 .. N-1``:

1. Churn (Karras Algorithm 2): ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` if
   ``S_tmin <= sigma_i <= S_tmax`` else 0; ``sigma_hat = sigma_i (1 + gamma_i)``;
   ``x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise eps``.
2. One DPM-Solver++(2S) step (Lu et al. 2022, Algorithm 1, data prediction, midpoint ``r = 1/2``)
   from ``sigma_hat`` to ``sigma_{i+1}``, with ``sigma_s = sqrt(sigma_hat sigma_{i+1})`` (the
   midpoint in log-sigma):

       x_s     = (sigma_s / sigma_hat) x_hat + (1 - sigma_s / sigma_hat) D(x_hat; sigma_hat)
       x_{i+1} = (sigma_{i+1} / sigma_hat) x_hat + (1 - sigma_{i+1} / sigma_hat) D(x_s; sigma_s).

   On the last step (``sigma_N = 0``) this is ``x_N = D(x_s; 0)``, which is undefined; like
   GenCast, the last step instead takes the single evaluation ``x_N = D(x_hat; sigma_hat)``.

Multistep variant (``solver="2m"``; Lu et al. 2022, Algorithm 2, DPM-Solver++(2M)): the same
churn, then one evaluation per step, the second order coming from the previous step's
evaluation instead of a midpoint one. With ``lambda = -log sigma``, ``h_i = log(sigma_hat_i /
sigma_{i+1})`` and ``h_last = log(sigma_hat_{i-1} / sigma_hat_i)`` (the log-sigma distance between
the two evaluations), ``w_i = h_i / (2 h_last)`` and

       D'      = (1 + w_i) D(x_hat_i; sigma_hat_i) - w_i D(x_hat_{i-1}; sigma_hat_{i-1})
       x_{i+1} = (sigma_{i+1} / sigma_hat_i) x_hat_i + (1 - sigma_{i+1} / sigma_hat_i) D',

with ``w_0 = 0`` (no previous evaluation: first order) and, on the last step, ``x_N = D(x_hat;
sigma_hat)`` as for 2S. Cost: ``N`` evaluations, so it reaches a given accuracy with about half
the evaluations of 2S at the same N (measured on the forecaster: ``benchmarks/sampler_skill.py``).

Cost of 2S: ``2N - 1`` denoiser evaluations per sample (39 for GenCast's N = 20). The loop is a
``jax.lax.fori_loop`` whose body holds the denoiser twice (the second evaluation in a
``lax.cond`` that the last step skips; its predicate is never batched, so it stays a real branch
under ``vmap``), so the compiled program does not grow with N.

Randomness: ``key_init, key_steps = split(key)``; the initial noise is ``noise_fn(key_init,
shape)`` and the churn noise of step ``i`` is ``noise_fn(fold_in(key_steps, i), shape)`` (drawn only
on steps with ``gamma_i > 0``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from weather.model.noise import NoiseFn

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``denoise_fn(x, sigma) -> D(x; sigma)``: x of the sample's shape, sigma a scalar array.

Conditioning (previous states, forcings) and parameters are closed over by the caller.
"""


SOLVERS = ("2s", "2m")


def degree_scale_label(name: str, first: int) -> str:
    """How a `SamplerConfig.degree_scales` entry is written: ``degree_scale[.NAME].DEGREE``."""
    return f"degree_scale.{name}.{first}" if name else f"degree_scale.{first}"


def _degree(value: object, name: str) -> int:
    degree = (
        int(value) if isinstance(value, int | np.integer) and not isinstance(value, bool) else -1
    )
    if degree < 0:
        raise ValueError(
            f"degree_scale.{name}: the first degree must be an int >= 0, got {value!r}"
        )
    return degree


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """DPM-Solver++(2S) with stochastic churn; defaults are GenCast's (Price et al. 2024).

    Attributes:
      num_steps: ``N``, the number of noise levels ``sigma_0 .. sigma_{N-1}`` (>= 2); the sampler
        makes ``N`` steps and ``2N - 1`` denoiser evaluations.
      sigma_max: ``sigma_max``, the first noise level ``sigma_0``.
      sigma_min: ``sigma_min``, the last non-zero noise level ``sigma_{N-1}``.
      rho: ``rho``, the schedule's curvature (Karras eq. 5); larger puts more steps at low noise.
      s_churn: ``S_churn``, total stochasticity; ``gamma_i = min(S_churn / N, sqrt(2) - 1)``.
        0 makes the sampler deterministic given the initial noise (an ODE solver).
      s_tmin: ``S_tmin``, churn only where ``sigma_i >= S_tmin``.
      s_tmax: ``S_tmax``, churn only where ``sigma_i <= S_tmax`` (may be infinite).
      s_noise: ``S_noise``, the churn noise's inflation (> 1 offsets detail lost by an
        imperfect denoiser).
      solver: ``"2s"`` (DPM-Solver++(2S), GenCast's; ``2N - 1`` evaluations) or ``"2m"``
        (DPM-Solver++(2M), multistep; ``N`` evaluations).
      spread_scale: ``tau``, multiplies the sample's deviation from the first evaluation
        ``D(x_hat_0; sigma_hat_0)``, which at ``sigma_hat_0 >> sigma_data`` is the conditional
        mean: ``x_N <- D_0 + tau (x_N - D_0)``. 1 (default, GenCast) leaves the sample alone;
        below 1 deflates the spread of a model whose samples are over-dispersed (as
        multiplicative covariance deflation in ensemble data assimilation), at no extra cost.
      spread_scales: ``(name, tau)`` pairs that override ``spread_scale`` where the model's
        state holds them: ``name`` is a variable (all its levels, e.g. ``"geopotential"``) or
        one channel (``"temperature@850"``, which wins over its variable's entry). Fields
        exchange spread differently (winds under-disperse where geopotential over-disperses),
        so one tau cannot calibrate all of them. The sampler itself only sees the per-channel
        array its caller builds from these (`sample`'s ``spread_scale``); names are checked
        against the model's channels there (`weather.model.denoiser.Forecaster`).
      degree_scales: ``(name, first_degree, factor)`` triples that shape the deviation from
        the first evaluation by spatial scale before tau applies: a channel's deviation is
        analysed into spherical harmonics and its degrees from ``first_degree`` up to the next
        entry's (or the grid's truncation) are multiplied by ``factor``; degrees below its
        first entry are left alone. ``name`` is a channel (``"geopotential@500"``), a variable,
        or ``""`` for every channel; a channel takes the entries of the most specific name that
        has any. The deviation of a model's sample can be over-dispersed at the grid's finest
        scales while its planetary waves are under-dispersed (`benchmarks/spread_by_scale.py`),
        which no per-channel tau can fix. Applied by the caller's ``deviation_filter``
        (`weather.model.spectral`); names and degrees are checked against the model there.
      state_degree_scales: the same triples, applied to each 12 h step's whole new state
        (physical units) rather than the deviation: a factor below 1 damps those degrees of
        the state every step, as a numerical model's hyperdiffusion does. The rolled-out
        model's fields gain spurious variance at the grid's finest scales step after step
        (z500 and t500 at degrees 16-31: 2 times the truth's power at 5 days, 4.5 at 15), which
        the deviation alone does not carry. Applied by the forecaster's sample step.
      power_cap: where > 0, each new 12 h state's power at every degree from
        ``power_cap_degree`` up is held at most ``power_cap`` times the truth's climatological
        power there (per member and channel; `weather.model.spectral.power_cap_filter`, with
        the checkpoint's ``degree_power``): unlike ``state_degree_scales`` it leaves a state
        alone until its finest scales exceed the climate's. 0 (default): off.
      power_cap_degree: the first degree ``power_cap`` acts on (default 16, the finest half of
        the 5.625 deg grid's degrees, where single states' power varies least).
    """

    num_steps: int = 20
    sigma_max: float = 80.0
    sigma_min: float = 0.03
    rho: float = 7.0
    s_churn: float = 2.5
    s_tmin: float = 0.75
    s_tmax: float = float("inf")
    s_noise: float = 1.05
    solver: str = "2s"
    spread_scale: float = 1.0
    spread_scales: tuple[tuple[str, float], ...] = ()
    degree_scales: tuple[tuple[str, int, float], ...] = ()
    state_degree_scales: tuple[tuple[str, int, float], ...] = ()
    power_cap: float = 0.0
    power_cap_degree: int = 16

    def __post_init__(self) -> None:
        if not (math.isfinite(self.power_cap) and self.power_cap >= 0):
            raise ValueError(f"power_cap must be finite and >= 0 (0: off), got {self.power_cap}")
        degree = self.power_cap_degree
        whole = isinstance(degree, int | float | np.integer) and not isinstance(degree, bool)
        if not (whole and math.isfinite(degree) and degree == int(degree) and degree >= 0):
            raise ValueError(f"power_cap_degree must be an int >= 0, got {degree!r}")
        object.__setattr__(self, "power_cap_degree", int(degree))  # text overrides give floats
        if not (math.isfinite(self.spread_scale) and self.spread_scale > 0):
            raise ValueError(f"spread_scale must be finite and > 0, got {self.spread_scale}")
        # JSON (checkpoint metadata) hands back lists; hashable tuples keep the config static.
        pairs = tuple((str(name), float(tau)) for name, tau in self.spread_scales)
        object.__setattr__(self, "spread_scales", pairs)
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise ValueError(f"spread_scales: a name repeats in {names}")
        for name, tau in pairs:
            if not (math.isfinite(tau) and tau > 0):
                raise ValueError(f"spread_scale.{name} must be finite and > 0, got {tau}")
        for field, prefix in (("degree_scales", ""), ("state_degree_scales", "state_")):
            triples = tuple(
                (str(name), _degree(first, name), float(factor))
                for name, first, factor in getattr(self, field)
            )
            object.__setattr__(self, field, triples)
            keys = [(name, first) for name, first, _ in triples]
            if len(set(keys)) != len(keys):
                raise ValueError(f"{field}: a (name, degree) repeats in {keys}")
            for name, first, factor in triples:
                if not (math.isfinite(factor) and factor > 0):
                    raise ValueError(
                        f"{prefix}{degree_scale_label(name, first)} must be finite and > 0, "
                        f"got {factor}"
                    )
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int | np.integer):
            raise ValueError(f"num_steps must be an int, got {self.num_steps!r}")
        if self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {self.num_steps}")
        for name in ("sigma_min", "sigma_max", "rho", "s_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be < sigma_max ({self.sigma_max})")
        if not (math.isfinite(self.s_churn) and self.s_churn >= 0):
            raise ValueError(f"s_churn must be finite and >= 0, got {self.s_churn}")
        if not (math.isfinite(self.s_tmin) and 0 <= self.s_tmin <= self.s_tmax):
            raise ValueError(
                f"need 0 <= s_tmin <= s_tmax with s_tmin finite, got {self.s_tmin}, {self.s_tmax}"
            )


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """Per-step constants [N] (float64 numpy), fixed by the config at trace time."""

    sigma: np.ndarray  # sigma_i
    sigma_next: np.ndarray  # sigma_{i+1}
    sigma_hat: np.ndarray  # sigma_i (1 + gamma_i)
    sigma_mid: np.ndarray  # sqrt(sigma_hat sigma_{i+1})
    churn_std: np.ndarray  # sqrt(sigma_hat^2 - sigma_i^2) S_noise
    multistep_weight: np.ndarray  # w_i of DPM-Solver++(2M); 0 on the first and last steps


def _noise_levels_np(config: SamplerConfig) -> np.ndarray:
    n = config.num_steps
    inv_rho = 1.0 / config.rho
    hi, lo = config.sigma_max**inv_rho, config.sigma_min**inv_rho
    levels = (hi + np.arange(n) / (n - 1) * (lo - hi)) ** config.rho
    levels[0], levels[-1] = config.sigma_max, config.sigma_min  # exact despite rounding
    return np.append(levels, 0.0)


def _schedule(config: SamplerConfig) -> _Schedule:
    levels = _noise_levels_np(config)
    sigma, sigma_next = levels[:-1], levels[1:]
    gamma_max = min(config.s_churn / config.num_steps, math.sqrt(2.0) - 1.0)
    churning = (config.s_tmin <= sigma) & (sigma <= config.s_tmax)
    sigma_hat = sigma * (1.0 + np.where(churning, gamma_max, 0.0))
    weight = np.zeros_like(sigma)
    h = np.log(sigma_hat[1:-1] / sigma_next[1:-1])  # steps 1 .. N-2 (the last one is D itself)
    h_last = np.log(sigma_hat[:-2] / sigma_hat[1:-1])
    weight[1:-1] = h / (2.0 * h_last)
    return _Schedule(
        sigma=sigma,
        sigma_next=sigma_next,
        sigma_hat=sigma_hat,
        sigma_mid=np.sqrt(sigma_hat * sigma_next),
        churn_std=np.sqrt(sigma_hat**2 - sigma**2) * config.s_noise,
        multistep_weight=weight,
    )


def noise_levels(config: SamplerConfig) -> jax.Array:
    """The noise levels ``[sigma_0 = sigma_max, ..., sigma_{N-1} = sigma_min, sigma_N = 0]``.

    Returns:
      ``[N + 1]`` float32, strictly decreasing.
    """
    return jnp.asarray(_noise_levels_np(config), dtype=jnp.float32)


def sample(
    denoise_fn: DenoiseFn,
    key: jax.Array,
    shape: tuple[int, ...],
    config: SamplerConfig,
    noise_fn: NoiseFn,
    spread_scale: np.ndarray | None = None,
    deviation_filter: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Draw one sample ``x_N`` (of ``shape``) by DPM-Solver++(2S or 2M) with churn.

    Jit-able (``shape``, ``config`` and the two functions are static). Uses ``2N - 1`` (2S) or
    ``N`` (2M) denoiser evaluations; see the module docstring for the algorithms and the use of
    ``key``.

    Args:
      denoise_fn: ``D(x; sigma)`` (see :data:`DenoiseFn`), e.g. :func:`weather.model.edm.denoise`
        around the network with its conditioning closed over.
      key: a JAX PRNG key.
      shape: the sample's shape, e.g. ``[member, channel, lat, lon]`` or
        ``[member, lat, lon, channel]`` (whatever ``noise_fn`` and ``denoise_fn`` accept).
      config: the sampler configuration.
      noise_fn: unit noise ``(key, shape) -> [*shape]`` (:data:`weather.model.noise.NoiseFn`);
        its dtype is the sample's (float32 for the grid noises).
      spread_scale: tau per element, a numpy array that broadcasts against ``shape`` (e.g.
        ``[channel]`` for channels-last samples); None: ``config.spread_scale`` everywhere.
        Static: fixed at trace time like ``config``.
      deviation_filter: a linear map applied to the sample's deviation from the first estimate
        before tau, ``x_N <- D_0 + tau * filter(x_N - D_0)`` (`config.degree_scales` as built
        by `weather.model.spectral.degree_filter`); None: the identity.

    Returns:
      the sample, ``shape``, in ``noise_fn``'s dtype.
    """
    shape = tuple(shape)
    schedule = _schedule(config)
    key_init, key_steps = jax.random.split(key)
    x = noise_fn(key_init, shape)
    dtype = x.dtype
    x = x * jnp.asarray(schedule.sigma[0], dtype)
    sigma_hat = jnp.asarray(schedule.sigma_hat, dtype)
    sigma_mid = jnp.asarray(schedule.sigma_mid, dtype)
    sigma_next = jnp.asarray(schedule.sigma_next, dtype)
    churn_std = jnp.asarray(schedule.churn_std, dtype)

    def churn(i: jax.Array, x: jax.Array) -> jax.Array:
        eps = noise_fn(jax.random.fold_in(key_steps, i), shape).astype(dtype)
        return x + churn_std[i] * eps

    tau = np.asarray(config.spread_scale if spread_scale is None else spread_scale, np.float64)
    if not np.all(np.isfinite(tau) & (tau > 0)):
        raise ValueError(f"spread_scale must be finite and > 0 everywhere, got {tau}")
    # GenCast's sampler: no first estimate carried.
    exact = bool(np.all(tau == 1.0)) and deviation_filter is None
    shape_deviation = deviation_filter or (lambda d: d)

    def deflated(x: jax.Array, mean: jax.Array) -> jax.Array:
        return mean + jnp.asarray(tau, dtype) * shape_deviation(x - mean)

    def keep_first(i: jax.Array, d_hat: jax.Array, mean: jax.Array) -> jax.Array:
        return jnp.where(i == 0, d_hat, mean)

    if config.solver == "2m":
        weight = jnp.asarray(schedule.multistep_weight, dtype)

        def multistep(i: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            x, d_last, mean = carry
            x_hat = jax.lax.cond(churn_std[i] > 0, churn, lambda _, x: x, i, x)
            d_hat = denoise_fn(x_hat, sigma_hat[i]).astype(dtype)
            d = (1 + weight[i]) * d_hat - weight[i] * d_last
            ratio_next = sigma_next[i] / sigma_hat[i]
            return ratio_next * x_hat + (1 - ratio_next) * d, d_hat, keep_first(i, d_hat, mean)

        zero = jnp.zeros_like(x)
        x, _, mean = jax.lax.fori_loop(0, config.num_steps, multistep, (x, zero, zero))
        return x if exact else deflated(x, mean)

    def step(i: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x_hat = jax.lax.cond(churn_std[i] > 0, churn, lambda _, x: x, i, x)
        d_hat = denoise_fn(x_hat, sigma_hat[i]).astype(dtype)

        def second_order() -> jax.Array:
            ratio_mid = sigma_mid[i] / sigma_hat[i]
            x_mid = ratio_mid * x_hat + (1 - ratio_mid) * d_hat
            d_mid = denoise_fn(x_mid, sigma_mid[i]).astype(dtype)
            ratio_next = sigma_next[i] / sigma_hat[i]
            return ratio_next * x_hat + (1 - ratio_next) * d_mid

        return jax.lax.cond(sigma_next[i] > 0, second_order, lambda: d_hat), d_hat

    if exact:
        # GenCast's sampler exactly (no carried mean).
        return jax.lax.fori_loop(0, config.num_steps, lambda i, x: step(i, x)[0], x)

    def step_keeping_mean(
        i: jax.Array, carry: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, ...]:
        x, mean = carry
        x_next, d_hat = step(i, x)
        return x_next, keep_first(i, d_hat, mean)

    x, mean = jax.lax.fori_loop(0, config.num_steps, step_keeping_mean, (x, jnp.zeros_like(x)))
    return deflated(x, mean)


def _parse_degree_key(key: str) -> tuple[str, int] | None:
    """``degree_scale.DEGREE`` -> ``("", DEGREE)``, ``degree_scale.NAME.DEGREE`` -> ``(NAME,
    DEGREE)``; None for any other key."""
    rest = key.removeprefix("degree_scale.")
    if rest == key:
        return None
    name, _, degree = rest.rpartition(".")
    return (name, int(degree)) if degree.isdigit() else None


@dataclasses.dataclass(frozen=True)
class SamplerOverride:
    """Changes to a checkpoint's sampler, parsed once where the user gives them (a command
    line option, a setting) and applied where a model is loaded.

    Attributes:
      changes: ``(field, value)`` pairs of `SamplerConfig`, in the order given.
      text: the ``[SOLVER:]N[,FIELD=VALUE...]`` text they were parsed from (``str`` of the
        override; recorded in forecasts and evaluation settings).
    """

    changes: tuple[tuple[str, Any], ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> SamplerOverride:
        """``"[SOLVER:]N[,FIELD=VALUE...]"``; errors name the bad part.

        Examples: ``"2s:20"`` (GenCast's), ``"2m:10"``, ``"6"`` (the base's solver),
        ``"2s:5,spread_scale=0.6"``, ``"2s:8,s_churn=0"``,
        ``"2s:5,spread_scale=0.45,spread_scale.u_component_of_wind=0.6"``; fields are
        `SamplerConfig`'s numbers, and ``spread_scale.NAME`` one entry of its ``spread_scales``.

        Raises:
          ValueError: the text is not of that form, or its values are invalid (checked against
            the default `SamplerConfig`).
        """
        head, *rest = [part.strip() for part in text.split(",")]
        changes: dict[str, Any] = {}
        if "=" in head:
            rest.insert(0, head)
        else:
            solver, sep, steps = head.rpartition(":")
            try:
                changes["num_steps"] = int(steps)
            except ValueError:
                raise ValueError(
                    f"sampler: {head!r} is not SOLVER:N or N (N the number of noise levels, "
                    f"e.g. 2s:20, 2m:10); solvers: {', '.join(SOLVERS)}"
                ) from None
            if sep:
                changes["solver"] = solver
        numbers = {
            f.name
            for f in dataclasses.fields(SamplerConfig)
            if f.name
            not in ("solver", "num_steps", "spread_scales", "degree_scales", "state_degree_scales")
        }
        scales: dict[str, float] = {}
        degrees: dict[tuple[str, int], float] = {}
        state_degrees: dict[tuple[str, int], float] = {}
        for item in rest:
            name, sep, value = item.partition("=")
            name, value = name.strip(), value.strip()
            per_name = name.startswith("spread_scale.") and len(name) > len("spread_scale.")
            by_degree = _parse_degree_key(name)
            by_state_degree = _parse_degree_key(name.removeprefix("state_"))
            by_state_degree = by_state_degree if name.startswith("state_") else None
            if not sep or not (per_name or by_degree or by_state_degree or name in numbers):
                raise ValueError(
                    f"sampler: {item!r} is not FIELD=VALUE with FIELD one of {sorted(numbers)}, "
                    "spread_scale.NAME (NAME a variable or a channel such as temperature@850) "
                    "or [state_]degree_scale[.NAME].DEGREE (an int)"
                )
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"sampler: {name}={value!r} is not a number") from None
            if per_name:
                scales[name.removeprefix("spread_scale.")] = number
            elif by_degree:
                degrees[by_degree] = number
            elif by_state_degree:
                state_degrees[by_state_degree] = number
            else:
                changes[name] = number
        if scales:
            changes["spread_scales"] = tuple(scales.items())
        if degrees:
            changes["degree_scales"] = tuple((n, d, f) for (n, d), f in degrees.items())
        if state_degrees:
            changes["state_degree_scales"] = tuple((n, d, f) for (n, d), f in state_degrees.items())
        override = cls(tuple(changes.items()), text)
        override.apply(SamplerConfig())  # the values, now rather than when a model is loaded
        return override

    def apply(self, base: SamplerConfig) -> SamplerConfig:
        """``base`` with these changes (validated: `SamplerConfig` raises on bad values).

        Per-name spread scales are merged into ``base``'s: a name given here replaces its
        entry, the others are kept, as every field the text does not name is; but a text that
        sets ``spread_scale`` itself means one scale everywhere, so it clears ``base``'s names
        (``"2s:20,spread_scale=1"`` is GenCast's sampler whatever the checkpoint carried).
        Degree scales (of the deviation and of the state) merge the same way, keyed by (name,
        first degree); the same ``spread_scale`` clears the base's deviation degree scales (they
        shape the spread), not its state ones (they shape the fields).
        """
        changes = dict(self.changes)
        everywhere = "spread_scale" in changes
        kept = () if everywhere else base.spread_scales
        if "spread_scales" in changes or everywhere:
            changes["spread_scales"] = tuple(
                {**dict(kept), **dict(changes.get("spread_scales", ()))}.items()
            )
        kept_degrees = () if everywhere else base.degree_scales
        if "degree_scales" in changes or everywhere:
            merged = {(n, d): f for n, d, f in kept_degrees}
            merged.update({(n, d): f for n, d, f in changes.get("degree_scales", ())})
            changes["degree_scales"] = tuple((n, d, f) for (n, d), f in merged.items())
        if "state_degree_scales" in changes:
            merged = {(n, d): f for n, d, f in base.state_degree_scales}
            merged.update({(n, d): f for n, d, f in changes["state_degree_scales"]})
            changes["state_degree_scales"] = tuple((n, d, f) for (n, d), f in merged.items())
        return dataclasses.replace(base, **changes)

    def __str__(self) -> str:
        return self.text
