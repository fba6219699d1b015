"""The inference path against reference answers: `sample_step` with a denoiser of known output,
the rollout against a hand-written loop of `sample_step` calls, invariance under `chunk_steps`
and batch padding, and `BatchRoller.advance` with forecasts joining and leaving the batch.

Tolerances are per channel, in units of float32 rounding of that channel's values
(``EPS * max |x_c|``), so a mistake in any one variable (temperature ~1e2, winds ~1e1, surface
pressure ~1e5) shows; one tolerance for all channels would be set by surface pressure and could
not see an error in the others.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import EPS, assert_close_per_channel, run, setup

from weather.model.rollout import BatchRoller, Roller, RolloutConfig, member_keys
from weather.model.sampler import SamplerOverride
from weather.model.task import forcing_channels

INIT = np.datetime64("2001-01-01T06", "ns")
STEP = np.timedelta64(12, "h")


@pytest.fixture(scope="module")
def model(archive, statistics):  # type: ignore[no-untyped-def]
    return setup(archive, statistics)


def _forcings(times: np.ndarray, fc) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Forcings of steps starting at ``times`` ``[k]``: ``[k, H, W, F]``."""
    pairs = np.stack([times, times + STEP], axis=-1)
    return forcing_channels(fc.task, pairs, fc.longitude, fc.latitude)


def _one_step(fc_stub, model, m: int, config):
    """[m, lon, lat, channel] states 12 h after INIT from ``fc_stub.sample_step`` with member
    keys 0..m-1, the model fixture's two states and the sampler ``config`` (None: the
    model's own)."""
    fc, params, prev, cur, static = model
    return fc_stub.sample_step(
        params,
        member_keys(0, np.arange(m)),
        jnp.broadcast_to(prev, (m, *fc.shape)),
        jnp.broadcast_to(cur, (m, *fc.shape)),
        _forcings(np.array([INIT]), fc)[0],
        fc.normalize_static(static),
        config,
    )


@pytest.mark.parametrize("spec", [None, "2s:20,spread_scale=1", "2m:6", "2s:4,s_churn=2"])
def test_sample_step_turns_a_known_denoiser_output_into_the_physical_state(model, spec):
    """Whatever the sampler, a denoiser that always answers r (normalised residual) makes the
    last step, which lands on sigma = 0, return r; the state is then current + r * diff_std
    in each channel's own units (the std of 12 h differences, not the state's std)."""
    fc, cur = model[0], model[3]
    sampler = None if spec is None else SamplerOverride.parse(spec).apply(fc.config.sampler)
    rng = np.random.default_rng(0)
    r = rng.normal(size=(3, 1, 1, fc.task.n_state)).astype(np.float32)  # per member, channel
    fc_stub = type(fc).__new__(type(fc))
    fc_stub.__dict__.update(fc.__dict__)
    fc_stub.denoise = lambda p, x, sigma, cond: jnp.broadcast_to(jnp.asarray(r), x.shape)
    out = _one_step(fc_stub, model, 3, sampler)
    want = cur + r * fc.normalization.diff_std
    # One multiply and one add in float32: at most one rounding each (2 ulps; measured 0).
    assert_close_per_channel(np.asarray(out), want, 2, "sample_step")
    # The stds are not interchangeable: the state's std would put the output elsewhere.
    wrong = cur + r * fc.normalization.std
    assert np.abs(np.asarray(out) - wrong).max() > 1e3 * EPS * np.abs(wrong).max()


def test_per_variable_spread_scales_reach_their_channels_in_sample_step(model):
    """``spread_scale.VARIABLE`` and ``spread_scale.VARIABLE@LEVEL`` deflate exactly their
    channels: with the same keys, channel c of the mixed sample equals the sample drawn with
    channel c's scale everywhere (the deflation is per element around the same first
    estimate, so scalar runs are the reference)."""
    fc = model[0]
    names = fc.task.channel_names()
    variable = fc.task.level_variables[0]
    level = fc.task.levels[-1]
    override = (
        f"2s:3,spread_scale=0.5,spread_scale.{variable}=0.8,spread_scale.{variable}@{level}=0.2"
    )
    mixed = SamplerOverride.parse(override).apply(fc.config.sampler)
    want_tau = [
        0.2 if n == f"{variable}@{level}" else 0.8 if n.startswith(f"{variable}@") else 0.5
        for n in names
    ]
    np.testing.assert_array_equal(fc.channel_spread_scales(mixed), want_tau)

    # A denoiser whose answer depends on its input (the ideal one for N(0, 1) data), so that
    # the sample deviates from the first estimate and the scale shows.
    fc_stub = type(fc).__new__(type(fc))
    fc_stub.__dict__.update(fc.__dict__)
    fc_stub.denoise = lambda p, x, sigma, cond: x / (1 + sigma[:, None, None, None] ** 2)

    def draw(config):
        return np.asarray(_one_step(fc_stub, model, 2, config))

    got = draw(mixed)
    plain = SamplerOverride.parse("2s:3").apply(fc.config.sampler)
    for tau in sorted(set(want_tau)):
        alone = draw(dataclasses.replace(plain, spread_scale=tau))
        channels = [c for c, t in enumerate(want_tau) if t == tau]
        # The same float32 arithmetic on the same draws, then scaled by diff_std and added to
        # the state: within 4 ulps of each channel's magnitude.
        assert_close_per_channel(got[..., channels], alone[..., channels], 4, f"tau={tau}")
        assert np.abs(alone - got).max() > 0  # the scales differ somewhere
    with pytest.raises(ValueError, match=r"spread_scale\.vorticity: 'vorticity' is neither"):
        fc.channel_spread_scales(
            SamplerOverride.parse("spread_scale.vorticity=0.5").apply(fc.config.sampler)
        )


def test_degree_scales_shape_the_deviation_of_their_channels_in_sample_step(model):
    """``degree_scale.VARIABLE.D`` multiplies the degrees of that variable's deviation from the
    first estimate, before tau: with the same keys, the physical state is ``tiny + tau *
    F(full - tiny)`` where ``full`` is the sample without deflation, ``tiny`` the first
    estimate (tau 1e-6) and ``F`` the degree filter (here by the float64 numpy transform);
    channels without entries are deflated as before."""
    from weather.data.harmonics import SphericalTransform

    fc = model[0]
    names = fc.task.channel_names()
    variable = fc.task.level_variables[0]
    text = f"2s:3,spread_scale=0.5,degree_scale.{variable}.0=1.4,degree_scale.{variable}.5=0.6"
    shaped = SamplerOverride.parse(text).apply(fc.config.sampler)
    fc_stub = type(fc).__new__(type(fc))
    fc_stub.__dict__.update(fc.__dict__)
    fc_stub.denoise = lambda p, x, sigma, cond: x / (1 + sigma[:, None, None, None] ** 2)
    plain = SamplerOverride.parse("2s:3").apply(fc.config.sampler)

    def draw(config):
        return np.asarray(_one_step(fc_stub, model, 2, config), np.float64)

    got = draw(shaped)
    full = draw(dataclasses.replace(plain, spread_scale=1.0))
    tiny = draw(dataclasses.replace(plain, spread_scale=1e-6))
    transform = SphericalTransform.build(fc.latitude, fc.longitude)
    degree = np.arange(transform.max_degree + 1)
    gain = np.where(degree < 5, 1.4, 0.6) - 1.0
    deviation = np.moveaxis(full - tiny, -1, 1)  # [M, C, H, W]
    coefficients = transform.coefficients(deviation) * gain
    shaped_deviation = np.moveaxis(deviation + transform.synthesize(coefficients), 1, -1)
    want = tiny + 0.5 * (full - tiny)
    mine = [c for c, n in enumerate(names) if n.startswith(f"{variable}@")]
    others = [c for c, n in enumerate(names) if not n.startswith(f"{variable}@")]
    want[..., mine] = tiny[..., mine] + 0.5 * shaped_deviation[..., mine]
    # The three draws round differently in float32: measured 0.6 (shaped) and 1.2 (others)
    # ulps of each channel's magnitude; tau 1e-6 leaves 1e-6 of the deviation.
    assert_close_per_channel(got[..., mine], want[..., mine], 4, "shaped")
    assert_close_per_channel(got[..., others], want[..., others], 4, "others")
    # And the shaping shows: the plain deflation differs in those channels.
    plain_half = tiny + 0.5 * (full - tiny)
    assert (
        np.abs(got[..., mine] - plain_half[..., mine]).max()
        > 100 * EPS * np.abs(plain_half[..., mine]).max()
    )
    with pytest.raises(ValueError, match=r"degree_scale\.vorticity\.3: 'vorticity' is neither"):
        fc.channel_degree_factors(
            SamplerOverride.parse("degree_scale.vorticity.3=0.5").apply(fc.config.sampler)
        )


def test_state_degree_scales_damp_the_new_state_in_sample_step(model):
    """``state_degree_scale.VARIABLE.D`` multiplies degrees ``>= D`` of that variable's new
    physical state, the deviation's shaping and deflation unchanged: the damped step equals
    ``F`` applied to the undamped step (same keys), ``F`` by the float64 numpy transform."""
    from weather.data.harmonics import SphericalTransform

    fc = model[0]
    names = fc.task.channel_names()
    variable = fc.task.level_variables[1]
    plain = SamplerOverride.parse("2s:3,spread_scale=0.5").apply(fc.config.sampler)
    damped = SamplerOverride.parse(f"state_degree_scale.{variable}.6=0.8").apply(plain)
    undamped = np.asarray(_one_step(*model[:1], model, 2, plain), np.float64)
    got = np.asarray(_one_step(*model[:1], model, 2, damped), np.float64)
    transform = SphericalTransform.build(fc.latitude, fc.longitude)
    gain = np.where(np.arange(transform.max_degree + 1) >= 6, 0.8, 1.0) - 1.0
    state = np.moveaxis(undamped, -1, 1)  # [M, C, H, W]
    want = np.moveaxis(state + transform.synthesize(transform.coefficients(state) * gain), 1, -1)
    mine = [c for c, n in enumerate(names) if n.startswith(f"{variable}@")]
    others = [c for c, n in enumerate(names) if not n.startswith(f"{variable}@")]
    # float32 states filtered by float32 einsums against float64: measured 0.9 ulps.
    assert_close_per_channel(got[..., mine], want[..., mine], 8, "damped")
    np.testing.assert_array_equal(got[..., others], undamped[..., others])
    assert (
        np.abs(got[..., mine] - undamped[..., mine]).max()
        > 1e3 * EPS * np.abs(undamped[..., mine]).max()
    )


def test_power_cap_holds_the_new_states_finest_scales_within_the_climate(model):
    """``power_cap=K`` scales degree ``l >= power_cap_degree`` of each member's new state by
    ``min(1, sqrt(K S_clim / S_l))``: against the float64 numpy transform applied to the
    uncapped step (same keys), with a climate that one member exceeds and one does not."""
    from weather.data.harmonics import SphericalTransform
    from weather.model.denoiser import Forecaster

    fc = model[0]
    plain = SamplerOverride.parse("2s:3,spread_scale=0.5").apply(fc.config.sampler)
    uncapped = np.asarray(_one_step(fc, model, 2, plain), np.float64)
    transform = SphericalTransform.build(fc.latitude, fc.longitude)
    state = np.moveaxis(uncapped, -1, 1)  # [M, C, H, W]
    power = transform.power(state)  # [M, C, l]
    # Between the two members' powers (geometric mean), so that the cap binds for the larger.
    climate = np.sqrt(power[0] * power[1]).T  # [l, C]
    capped_model = Forecaster(
        dataclasses.replace(
            fc.config, sampler=SamplerOverride.parse("power_cap=1,power_cap_degree=4").apply(plain)
        ),
        dataclasses.replace(fc.normalization, degree_power=climate.astype(np.float32)),
        fc.latitude,
        fc.longitude,
    )
    got = np.asarray(_one_step(capped_model, (capped_model, *model[1:]), 2, None), np.float64)
    limit = np.moveaxis(np.broadcast_to(climate, (2, *climate.shape)), -1, 1)  # [M, C, l]
    gain = np.where(
        np.arange(transform.max_degree + 1) >= 4, np.minimum(1, np.sqrt(limit / power)), 1
    )
    want = np.moveaxis(
        state + transform.synthesize(transform.coefficients(state) * (gain - 1)[:, :, None, None]),
        1,
        -1,
    )
    # float32 states filtered by float32 einsums against float64: measured 0.8 ulps.
    assert_close_per_channel(got, want, 8, "capped")
    # The cap bound somewhere, and it shows in the state.
    top = np.arange(transform.max_degree + 1) >= 4
    assert np.any(power[..., top] > limit[..., top] * 1.01)
    assert np.abs(got - uncapped).max() > 100 * EPS * np.abs(uncapped).max()
    with pytest.raises(ValueError, match="power_cap needs the truth's climatological power"):
        Forecaster(
            dataclasses.replace(
                fc.config, sampler=SamplerOverride.parse("power_cap=2").apply(plain)
            ),
            fc.normalization,
            fc.latitude,
            fc.longitude,
        )
    with pytest.raises(ValueError, match=r"power_cap_degree=99 is above this grid's truncation"):
        capped_model.power_cap_filter(
            SamplerOverride.parse("power_cap=2,power_cap_degree=99").apply(plain)
        )


def test_the_rollout_is_a_loop_of_sample_steps(model):
    """Roller.run equals calling sample_step step by step with member m's key folded with
    the step, the forcings of each step's times, and the previous two states."""
    fc, params, prev, cur, static = model
    members, steps, seed = 3, 4, 5
    got = run(
        Roller(fc, RolloutConfig(chunk_steps=3)),
        params,
        prev,
        cur,
        static,
        members,
        steps=steps,
        seed=seed,
    )
    keys = member_keys(seed, np.arange(members))
    step_fn = jax.jit(fc.sample_step)
    static_n = fc.normalize_static(jnp.asarray(static, jnp.float32))
    a = jnp.broadcast_to(jnp.asarray(prev), (members, *fc.shape))
    b = jnp.broadcast_to(jnp.asarray(cur), (members, *fc.shape))
    want = []
    for s in range(steps):
        step_keys = jax.vmap(lambda k, s=s: jax.random.fold_in(k, s))(keys)
        forc = _forcings(np.array([INIT + s * STEP]), fc)[0]
        a, b = b, step_fn(params, step_keys, a, b, forc, static_n)
        want.append(np.asarray(b))
    # The scanned chunk and the separate calls are compiled apart: rounding may differ by a
    # few ulps per step and grows through the steps (measured: 0 on this CPU).
    assert_close_per_channel(got, np.stack(want), 16 * steps, "rollout vs loop")


def test_chunk_steps_do_not_change_the_forecast(model):
    fc, params, prev, cur, static = model
    runs = {
        k: run(Roller(fc, RolloutConfig(chunk_steps=k)), params, prev, cur, static, 2, steps=5)
        for k in (1, 2, 5)
    }
    for k in (2, 5):
        # The same computation in other chunks (measured bit-identical here): ulps per step.
        assert_close_per_channel(runs[k], runs[1], 16 * 5, f"chunk_steps={k}")


def test_initial_perturbations_are_centred_on_the_analysis_in_every_channel(model):
    """64 members perturbed by 0.5 diff_std: the member mean is within 5 standard errors
    (0.5 diff_std / sqrt(64) each) of the analysis at every grid point of every channel, and
    their spread is 0.5 diff_std (to 20 %: 64 members, spatially correlated noise)."""
    fc, _, _, cur, _ = model
    roller = Roller(fc, RolloutConfig(chunk_steps=1, initial_perturbation=0.5))
    x = np.asarray(roller.perturb(0, np.arange(64), cur))
    d = fc.normalization.diff_std
    np.testing.assert_allclose(x.std(axis=0).mean(axis=(0, 1)) / d, 0.5, rtol=0.2)
    error = np.abs(x.mean(axis=0) - cur).max(axis=(0, 1)) / d
    assert (error < 5 * 0.5 / 8).all(), error
    # And the analysis itself is not a perturbed member: the spread is there in every channel.
    assert (np.abs(x[0] - cur).max(axis=(0, 1)) / d > 0.5).all()


def test_batch_roller_advance_with_forecasts_joining_and_leaving(model):
    """Forecast A (2 members, seed 1) runs alone, then with forecast B (3 members, seed 2, a
    later init) joining at its first step, then B alone: every member's trajectory equals its
    own forecast run by `Roller.run`."""
    fc, params, prev, cur, static = model
    k = 2
    roller = BatchRoller(fc, RolloutConfig(chunk_steps=k), batch_sizes=(4, 8))
    init_b = INIT + 2 * STEP
    want_a = run(Roller(fc, RolloutConfig(chunk_steps=k)), params, prev, cur, static, 2, 4, 1)
    want_b = np.concatenate(
        [
            out
            for _, out in Roller(fc, RolloutConfig(chunk_steps=k)).run(
                params,
                previous=prev,
                current=cur,
                static=static,
                init_time=init_b,
                steps=4,
                members=3,
                seed=2,
            )
        ]
    )
    keys_a, keys_b = member_keys(1, np.arange(2)), member_keys(2, np.arange(3))

    def advance(keys, previous, current, steps, inits):  # type: ignore[no-untyped-def]
        return roller.advance(
            params,
            keys=keys,
            previous=previous,
            current=current,
            steps=np.asarray(steps),
            init_times=np.asarray(inits, dtype="datetime64[ns]"),
            static=static,
        )

    # A alone (padded from 2 to 4): its steps 1-2.
    first = advance(keys_a, np.stack([prev] * 2), np.stack([cur] * 2), [0, 0], [INIT] * 2)
    # A (at step 2) and B (at step 0) together (5 members, padded to 8).
    both = advance(
        jnp.concatenate([keys_a, keys_b]),
        np.concatenate([first[0], np.stack([prev] * 3)]),
        np.concatenate([first[1], np.stack([cur] * 3)]),
        [2, 2, 0, 0, 0],
        [INIT] * 2 + [init_b] * 3,
    )
    # B alone (at step 2), A having finished.
    last = advance(keys_b, both[0, 2:], both[1, 2:], [2] * 3, [init_b] * 3)
    got_a = np.concatenate([first, both[:, :2]])
    got_b = np.concatenate([both[:, 2:], last])
    assert first.shape == (k, 2, *fc.shape) and both.shape == (k, 5, *fc.shape)
    # Other batch sizes may round differently (batched matmuls): ulps per step, as above
    # (measured: 0 here, batches of 4 and 8 against 2 and 3).
    assert_close_per_channel(got_a, want_a, 16 * 4, "forecast A")
    assert_close_per_channel(got_b, want_b, 16 * 4, "forecast B")
    # Each member really is its own: A's members differ from each other and from B's.
    assert np.abs(got_a[:, 0] - got_a[:, 1]).max() > 0
    # 2, 5 and 3 members padded to the fixed sizes 4, 8 and 4: the chunk compiled once per
    # size, never per request.
    assert roller.compilations == 2


def test_the_training_target_is_the_residual_in_diff_std_units(model):
    """`residual_target` is ``(x(t+12h) - x(t)) / diff_std`` per channel, the exact inverse of
    what `sample_step` does with a denoised residual (``current + r * diff_std``)."""
    fc, _, prev, cur, _ = model
    r = np.asarray(fc.residual_target(jnp.asarray(prev), jnp.asarray(cur)))
    d = fc.normalization.diff_std
    # One subtraction and one division in float32: at most 2 roundings (ulps of the result).
    assert_close_per_channel(r, (cur - prev) / d, 2, "residual_target")
    # cur - prev spans every sign, so a remainder or a product in place of the quotient shows.
    assert (r < 0).any() and (r > 0).any()
    assert_close_per_channel(prev + r * d, cur, 4, "residual round trip")


def test_input_noise_is_centred_on_the_inputs_with_the_asked_std(model):
    """`perturb_inputs(scale)` adds noise of ``scale`` x each channel's std to both states,
    independently: over 64 copies of one pair, the mean is within 5 standard errors
    (``scale std / 8``) of the inputs at every point of every channel, the spread is
    ``scale std`` (to 20 %: 64 copies of spatially correlated noise, as the initial
    perturbations' test) and the two states' noises differ."""
    fc, _, prev, cur, _ = model
    scale = 0.1
    copies = 64
    out_prev, out_cur = (
        np.asarray(x)
        for x in fc.perturb_inputs(
            jax.random.key(3),
            jnp.broadcast_to(jnp.asarray(prev), (copies, *prev.shape)),
            jnp.broadcast_to(jnp.asarray(cur), (copies, *cur.shape)),
            scale,
        )
    )
    std = fc.normalization.std
    for name, out, clean in (("previous", out_prev, prev), ("current", out_cur, cur)):
        noise = (out - clean) / (scale * std)
        np.testing.assert_allclose(noise.std(axis=0).mean(axis=(0, 1)), 1.0, rtol=0.2)
        error = np.abs(noise.mean(axis=0)).max(axis=(0, 1))
        assert (error < 5 / np.sqrt(copies)).all(), (name, error)
    assert not np.allclose(out_prev - prev, out_cur - cur)


def test_conditioning_is_the_normalised_inputs_forcings_and_static(model):
    """The conditioning channels, by hand: both states as ``(x - mean) / std`` per channel, then
    the forcings as given, then the static fields as ``(s - static_mean) / static_std``."""
    fc, _, prev, cur, static = model
    n = fc.normalization
    forcings = _forcings(np.array([INIT]), fc)
    static_n = np.asarray(fc.normalize_static(jnp.asarray(static)))
    # One subtraction and one division in float32 (2 roundings); the result is O(1) anomalies,
    # so the tolerance is taken against each channel's largest value.
    assert_close_per_channel(
        static_n, (static - n.static_mean) / n.static_std, 2, "normalize_static"
    )
    cond = np.asarray(fc.conditioning(prev[None], cur[None], forcings, static_n))[0]
    c = fc.task.n_state
    assert cond.shape[-1] == fc.task.n_conditioning
    assert_close_per_channel(cond[..., :c], (prev - n.mean) / n.std, 2, "previous")
    assert_close_per_channel(cond[..., c : 2 * c], (cur - n.mean) / n.std, 2, "current")
    np.testing.assert_array_equal(cond[..., 2 * c : -static.shape[-1]], forcings[0])
    np.testing.assert_array_equal(cond[..., -static.shape[-1] :], static_n)


def test_param_shapes_are_the_initialised_parameters_shapes(model):
    """Checkpoints load into `param_shapes` (traced, never compiled): it must be exactly the
    tree `init_params` makes."""
    fc, params, *_ = model
    shapes = fc.param_shapes()
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
    for want, got in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(shapes), strict=True
    ):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
