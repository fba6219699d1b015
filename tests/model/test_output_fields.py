"""Fields that are not plain prognostic states: output-only precipitation (a target, never an
input), non-negative fields (clipped outputs) and sea-surface temperature (undefined over land:
filled as an input, out of the loss, NaN as an output), against values worked out by hand."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import tiny_model_config

from weather.model.denoiser import Forecaster
from weather.model.rollout import member_keys
from weather.model.task import Normalization, TaskConfig, valid_mask

H, W = 8, 16
LAT = np.linspace(-78.75, 78.75, H)  # equiangular, no pole rows
LON = np.arange(W) * 360.0 / W
TASK = TaskConfig(
    level_variables=("temperature", "specific_humidity"),
    surface_variables=("2m_temperature", "sea_surface_temperature", "total_precipitation_12hr"),
    static_variables=(),
    levels=(500, 850),
)
# Channels: t@500, t@850, q@500, q@850, t2m, sst, tp12.
T500, Q500, Q850, SST, TP = 0, 2, 3, 5, 6


def _normalization(valid: np.ndarray | None) -> Normalization:
    c = TASK.n_state
    return Normalization(
        mean=np.asarray([250, 280, 1e-3, 5e-3, 285, 290, 1e-3], np.float32),
        std=np.asarray([10, 12, 5e-4, 2e-3, 15, 8, 2e-3], np.float32),
        diff_std=np.asarray([2, 3, 3e-4, 1e-3, 4, 0.5, 3e-3], np.float32),
        static_mean=np.zeros(0, np.float32),
        static_std=np.ones(0, np.float32),
        valid=valid if valid is None else valid.reshape(H, W, c),
    )


def _land() -> np.ndarray:
    land = np.zeros((H, W), bool)
    land[2:5, 3:9] = True
    return land


def _forecaster() -> Forecaster:
    valid = np.ones((H, W, TASK.n_state), bool)
    valid[..., SST] = ~_land()
    config = dataclasses.replace(tiny_model_config(), task=TASK)
    return Forecaster(config, _normalization(valid), LAT, LON)


def _states(seed: int) -> np.ndarray:
    norm = _normalization(None)
    rng = np.random.default_rng(seed)
    x = norm.mean + norm.std * rng.normal(size=(2, H, W, TASK.n_state))
    x[..., SST][:, _land()] = np.nan  # as ERA5 stores it
    return x.astype(np.float32)


def test_the_task_reads_each_fields_role_bound_and_definition_from_the_catalogue():
    np.testing.assert_array_equal(TASK.input_mask(), [1, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(TASK.undefined_somewhere(), [0, 0, 0, 0, 0, 1, 0])
    lower = TASK.lower_bounds()
    np.testing.assert_array_equal(lower[[Q500, Q850, TP]], 0.0)
    assert np.isneginf(np.delete(lower, [Q500, Q850, TP])).all()
    # The simulated default has none of them: every channel an unbounded input.
    assert TaskConfig().input_mask().all() and not TaskConfig().undefined_somewhere().any()


def test_conditioning_leaves_out_output_only_and_undefined_values():
    fc = _forecaster()
    prev, cur = _states(0)
    prev[..., TP] = np.nan  # never read: precipitation is not an input
    cond = np.asarray(
        fc.conditioning(prev[None], cur[None], jnp.zeros((1, H, W, 0)), jnp.zeros((H, W, 0)))
    )
    norm = _normalization(None)
    c = TASK.n_state
    for i, x in enumerate((prev, cur)):
        got = cond[0, ..., i * c : (i + 1) * c]
        want = (x - norm.mean) / norm.std
        want[..., TP] = 0.0
        want[..., SST][_land()] = 0.0  # the mean, in normalised units
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # float32 of one division
    assert np.isfinite(cond).all()


def test_targets_are_residuals_values_or_nothing_by_field():
    fc = _forecaster()
    cur, target = _states(1)
    y = np.asarray(fc.residual_target(jnp.asarray(cur[None]), jnp.asarray(target[None])))[0]
    norm = _normalization(None)
    want = (target - cur) / norm.diff_std
    # Precipitation: its value, centred and scaled like an input (no residual of an input).
    want[..., TP] = (target[..., TP] - norm.mean[TP]) / norm.std[TP]
    want[..., SST][_land()] = 0.0
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)  # float32 rounding
    assert np.isfinite(y).all()


def test_the_loss_does_not_see_sea_surface_temperature_over_land():
    fc = _forecaster()
    params = fc.init_params(jax.random.key(0))
    prev, cur = _states(2)
    target = _states(3)[0]
    args = (jnp.zeros((1, H, W, TASK.n_forcing)), jnp.zeros((H, W, 0)))
    key = jax.random.key(4)
    loss = fc.loss(params, key, prev[None], cur[None], target[None], *args)
    assert np.isfinite(float(loss))
    # Any value over land, in any of the three states, gives the same loss.
    other = [x.copy() for x in (prev, cur, target)]
    for x in other:
        x[..., SST][_land()] = 1e4
    again = fc.loss(params, key, *(x[None] for x in other), *args)
    assert float(again) == float(loss)
    # Over the sea it does matter.
    target[..., SST][~_land()] += 5.0
    assert float(fc.loss(params, key, prev[None], cur[None], target[None], *args)) != float(loss)
    # Nor does the model's answer there count: the weights are zero over land for that channel.
    weights = np.broadcast_to(np.asarray(fc.weights), (H, W, TASK.n_state))
    assert (weights[..., SST][_land()] == 0).all() and (weights[..., SST][~_land()] > 0).all()
    np.testing.assert_array_equal(weights[..., T500], np.asarray(fc.weights)[:, :, T500])


def test_a_sample_is_the_baseline_plus_the_scaled_answer_clipped_and_masked():
    """A denoiser that always answers r gives x(t) + r diff_std for prognostic channels,
    mean + r std for precipitation, both clipped at 0 where the catalogue bounds them, and
    NaN for sea-surface temperature over land."""
    fc = _forecaster()
    prev, cur = _states(5)
    rng = np.random.default_rng(6)
    r = rng.normal(size=(2, H, W, TASK.n_state)).astype(np.float32) * 3.0
    stub = type(fc).__new__(type(fc))
    stub.__dict__.update(fc.__dict__)
    stub.denoise = lambda p, x, sigma, cond: jnp.broadcast_to(jnp.asarray(r), x.shape)
    params = fc.init_params(jax.random.key(0))
    out = np.asarray(
        stub.sample_step(
            params,
            member_keys(0, np.arange(2)),
            jnp.broadcast_to(prev, (2, H, W, TASK.n_state)),
            jnp.broadcast_to(cur, (2, H, W, TASK.n_state)),
            jnp.zeros((H, W, TASK.n_forcing)),
            jnp.zeros((H, W, 0)),
        )
    )
    norm = _normalization(None)
    want = cur + r * norm.diff_std
    want[..., TP] = norm.mean[TP] + r[..., TP] * norm.std[TP]
    want[..., [Q500, Q850, TP]] = np.maximum(want[..., [Q500, Q850, TP]], 0.0)
    want[..., SST][:, _land()] = np.nan
    # One multiply and one add in float32 (a few ulps of the largest value, 290 K).
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-4)
    # The clipping is exercised: r of -3 stds makes some precipitation negative before it.
    assert (norm.mean[TP] + r[..., TP] * norm.std[TP] < 0).any()
    assert (out[..., TP] >= 0).all() and (out[..., [Q500, Q850]] >= 0).all()


def test_the_mask_of_defined_points_comes_from_the_archive_and_round_trips():
    import xarray as xr

    land = _land()
    sst = np.where(land, np.nan, 290.0)[None].repeat(2, 0)
    fields = {
        "temperature": (("time", "level", "latitude", "longitude"), np.zeros((2, 2, H, W))),
        "specific_humidity": (("time", "level", "latitude", "longitude"), np.zeros((2, 2, H, W))),
        "2m_temperature": (("time", "latitude", "longitude"), np.zeros((2, H, W))),
        "sea_surface_temperature": (("time", "latitude", "longitude"), sst),
        "total_precipitation_12hr": (("time", "latitude", "longitude"), np.zeros((2, H, W))),
    }
    archive = xr.Dataset(fields, coords={"level": [500, 850]})
    valid = valid_mask(TASK, archive)
    assert valid is not None and valid.shape == (H, W, TASK.n_state)
    np.testing.assert_array_equal(valid[..., SST], ~land)
    assert np.delete(valid, SST, axis=-1).all()
    assert valid_mask(TaskConfig(levels=(500, 850)), archive) is None
    norm = _normalization(valid)
    back = Normalization.from_dict(norm.to_dict())
    np.testing.assert_array_equal(back.valid, valid)
    # A normalisation saved before the mask existed loads without one.
    old = {k: v for k, v in norm.to_dict().items() if k != "valid"}
    assert Normalization.from_dict(old).valid is None
    with pytest.raises(ValueError, match="mask of defined points"):
        config = dataclasses.replace(tiny_model_config(), task=TASK)
        Forecaster(config, norm.with_valid(valid[:4]), LAT, LON)
