"""Checkpoint files: exact round trip, refusal of anything else."""

import dataclasses

import numpy as np
import pytest

from weather.model.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    params = {
        "params": {
            "dense": {"kernel": rng.normal(size=(3, 4)).astype("f4"), "bias": np.zeros(4, "f4")}
        }
    }
    norm = {"mean": rng.normal(size=5).astype("f4")}
    configs = {"model": {"a": [1, 2], "b": "x"}, "grid": {"latitude": [1.5, 2.5]}}
    path = save_checkpoint(
        tmp_path / "c.msgpack",
        configs=configs,
        normalization=norm,
        params=params,
        metadata={"note": "hi"},
        train={"step": 7},
    )
    saved = load_checkpoint(path)
    assert saved["configs"] == configs
    assert saved["metadata"] == {"note": "hi"}
    assert saved["train"]["step"] == 7
    np.testing.assert_array_equal(
        saved["params"]["params"]["dense"]["kernel"], params["params"]["dense"]["kernel"]
    )
    np.testing.assert_array_equal(saved["normalization"]["mean"], norm["mean"])
    assert not list(tmp_path.glob("*.tmp"))


def test_garbage_and_missing_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_checkpoint(tmp_path / "nope.msgpack")
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x00\x01not msgpack at all")
    with pytest.raises(ValueError, match=r"bad\.msgpack"):
        load_checkpoint(bad)


def test_export_keeps_what_inference_needs_and_drops_the_training_state(tmp_path):
    from weather.model.checkpoint import export_checkpoint

    rng = np.random.default_rng(1)
    ema = {"params": {"w": rng.normal(size=(64, 64)).astype("f4")}}
    raw = {"params": {"w": rng.normal(size=(64, 64)).astype("f4")}}
    source = save_checkpoint(
        tmp_path / "run.msgpack",
        configs={"model": {"a": 1}},
        normalization={"mean": np.ones(3, "f4")},
        params=ema,
        metadata={"history": [1, 2]},
        train={"params": raw, "opt_state": {"mu": raw, "nu": raw}, "step": 42},
    )
    out = export_checkpoint(source, tmp_path / "ship.msgpack", metadata={"note": "shipped"})
    saved = load_checkpoint(out)
    assert "train" not in saved
    assert saved["configs"] == {"model": {"a": 1}}
    assert saved["metadata"] == {"history": [1, 2], "note": "shipped", "exported_from_step": 42}
    np.testing.assert_array_equal(saved["params"]["params"]["w"], ema["params"]["w"])
    assert out.stat().st_size < source.stat().st_size / 3


def test_export_can_change_the_default_sampler_and_keeps_provenance(tmp_path):
    from weather.cli import main
    from weather.defaults import DEFAULT_CHECKPOINT
    from weather.forecast import load_forecaster

    out = tmp_path / "fast.msgpack"
    assert main(["export", str(DEFAULT_CHECKPOINT), str(out), "--sampler", "2s:5,s_noise=1"]) == 0
    before, after = load_checkpoint(DEFAULT_CHECKPOINT), load_checkpoint(out)
    base = load_forecaster(DEFAULT_CHECKPOINT).forecaster.config.sampler
    # Applied to the checkpoint's own sampler: what the text does not name is kept.
    assert load_forecaster(out).forecaster.config.sampler == dataclasses.replace(
        base, num_steps=5, s_noise=1.0
    )
    assert after["metadata"]["sampler_set_by"] == "weather export --sampler 2s:5,s_noise=1"
    # Re-exporting an exported file keeps where it came from and everything but the sampler.
    assert after["metadata"].get("exported_from_step") == before["metadata"].get(
        "exported_from_step"
    )
    assert {k: v for k, v in after["configs"]["model"].items() if k != "sampler"} == {
        k: v for k, v in before["configs"]["model"].items() if k != "sampler"
    }
    np.testing.assert_array_equal(
        after["params"]["params"]["head"]["Conv_0"]["kernel"],
        before["params"]["params"]["head"]["Conv_0"]["kernel"],
    )
    with pytest.raises(SystemExit, match="--sampler: sampler: '2s:x' is not SOLVER:N"):
        main(["export", str(DEFAULT_CHECKPOINT), str(out), "--sampler", "2s:x"])


def test_export_sets_spread_scales_per_variable_and_channel(tmp_path, capsys):
    from weather.cli import main
    from weather.defaults import DEFAULT_CHECKPOINT
    from weather.forecast import load_forecaster

    out = tmp_path / "scaled.msgpack"
    # Setting spread_scale replaces whatever per-name scales the shipped checkpoint carries.
    text = "2s:5,spread_scale=0.5,spread_scale.geopotential=0.3,spread_scale.temperature@850=0.6"
    assert main(["export", str(DEFAULT_CHECKPOINT), str(out), "--sampler", text]) == 0
    model = load_forecaster(out).forecaster
    assert dict(model.config.sampler.spread_scales) == {
        "geopotential": 0.3,
        "temperature@850": 0.6,
    }
    scales = model.channel_spread_scales(model.config.sampler)
    tau = dict(zip(model.task.channel_names(), scales, strict=True))
    assert (tau["geopotential@500"], tau["temperature@850"], tau["temperature@500"]) == (
        0.3,
        0.6,
        0.5,
    )
    # Naming one channel only changes that entry.
    again = tmp_path / "again.msgpack"
    assert (
        main(["export", str(out), str(again), "--sampler", "spread_scale.temperature@850=0.7"]) == 0
    )
    assert dict(load_forecaster(again).forecaster.config.sampler.spread_scales) == {
        "geopotential": 0.3,
        "temperature@850": 0.7,
    }
    # A name the model does not have is refused before anything is written.
    bad = tmp_path / "bad.msgpack"
    code = main(["export", str(out), str(bad), "--sampler", "spread_scale.vorticity=0.5"])
    assert code == 2 and not bad.exists()
    assert "--sampler: sampler: spread_scale.vorticity: 'vorticity' is neither" in (
        capsys.readouterr().err
    )


def test_export_can_set_and_clear_what_the_model_conserves(tmp_path, capsys):
    from weather.cli import main
    from weather.defaults import DEFAULT_CHECKPOINT
    from weather.forecast import load_forecaster

    held, free = tmp_path / "held.msgpack", tmp_path / "free.msgpack"
    assert (
        main(["export", str(DEFAULT_CHECKPOINT), str(held), "--conserve", "surface_pressure"]) == 0
    )
    assert load_forecaster(held).forecaster.config.conserve == ("surface_pressure",)
    saved = load_checkpoint(held)
    assert saved["metadata"]["conserve_set_by"] == "weather export --conserve surface_pressure"
    assert main(["export", str(held), str(free), "--conserve", "none"]) == 0
    assert load_forecaster(free).forecaster.config.conserve == ()
    assert "conserve" not in load_checkpoint(free)["configs"]["model"]
    assert main(["export", str(held), str(free), "--conserve", "temperature"]) == 2
    assert "conserve" in capsys.readouterr().err
