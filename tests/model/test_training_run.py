"""A training run from archives (`weather.model.training_run`): the model each option set
builds, the refusals (named options, before any archive is read) and a warm start's provenance,
normalisation and configs. The plain run's options through `weather train` are checked in
tests/cli/test_cli_commands.py."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr
from support import tiny_model_config

from weather.model.backbone import SphereTransformerConfig, SphereUNetConfig
from weather.model.checkpoint import load_checkpoint
from weather.model.denoiser import ModelConfig
from weather.model.train import TrainConfig, train
from weather.model.training_run import (
    Architecture,
    TrainingRun,
    join_hosts,
    parse_period,
    run_training,
    warm_start_metadata,
)

PERIOD = ("2001-01-01", "2001-01-09")


def _holding(levels: list[int], names: tuple[str, ...] | None = None) -> xr.Dataset:
    """A canonical archive's variables and levels (no times: the model is chosen from these)."""
    from weather.data.variables import (
        CATALOGUE,
        SIMULATED_LEVEL_VARIABLES,
        SIMULATED_STATIC_VARIABLES,
        SIMULATED_SURFACE_VARIABLES,
    )

    if names is None:
        names = SIMULATED_LEVEL_VARIABLES + SIMULATED_SURFACE_VARIABLES + SIMULATED_STATIC_VARIABLES
    data = {}
    for name in names:
        dims = ("level",) if CATALOGUE[name].has_levels else ()
        data[name] = (dims, np.zeros(len(levels) if dims else ()))
    return xr.Dataset(data, coords={"level": levels})


ONE_STEP = TrainConfig(steps=1, batch_size=2, warmup_steps=0, validate_every=1, prefetch=0)


def test_the_default_architecture_is_the_documented_transformer_on_every_archive_level():
    model = Architecture().model_config(_holding([500, 850]))
    assert model.task.levels == (500, 850)
    assert model.noise == "spherical"
    assert model.edm.training_noise == "rho"
    backbone = model.backbone
    assert isinstance(backbone, SphereTransformerConfig)
    assert (backbone.patch_size, backbone.d_model, backbone.num_layers, backbone.num_heads) == (
        2,
        256,
        8,
        8,
    )
    assert backbone.compute_dtype == "float32"


def test_named_options_reach_the_model():
    model = Architecture(
        arch="unet",
        unet_channels=(8, 16),
        levels=(850,),
        noise="iid",
        training_noise="lognormal",
        compute_dtype="bfloat16",
    ).model_config(_holding([500, 850]))
    assert model.task.levels == (850,)
    assert (model.noise, model.edm.training_noise) == ("iid", "lognormal")
    assert isinstance(model.backbone, SphereUNetConfig)
    assert (model.backbone.channels, model.backbone.compute_dtype) == ((8, 16), "bfloat16")
    assert isinstance(
        Architecture(arch="unet").model_config(_holding([850])).backbone, SphereUNetConfig
    )
    assert Architecture(arch="unet").model_config(_holding([850])).backbone.channels == (
        64,
        128,
        256,
    )
    with pytest.raises(ValueError, match="--arch: 'gnn' is not one of transformer, unet"):
        Architecture(arch="gnn").model_config(_holding([850]))


def test_variables_choose_the_task_and_the_archive_must_hold_them():
    holding = _holding([500, 850], ("temperature", "surface_pressure", "land_sea_mask"))
    task = Architecture(variables=("surface_pressure", "temperature")).model_config(holding).task
    assert (task.level_variables, task.surface_variables) == (
        ("temperature",),
        ("surface_pressure",),
    )
    assert task.static_variables == () and task.levels == (500, 850)
    with pytest.raises(
        ValueError, match=r"era5\.nc lacks \['geopotential'\] \(asked by --variables\)"
    ):
        Architecture(variables=("geopotential",)).model_config(holding, "era5.nc")


def test_periods_and_hosts_are_refused_with_the_option_named():
    assert parse_period(" 2001-01-01 , 2001-01-08T12", "--train-period") == (
        "2001-01-01",
        "2001-01-08T12",
    )
    assert parse_period(None, "--train-period") is None
    for bad in ("2001-01-01", "2001-01-01,", "a,b,c"):
        with pytest.raises(ValueError, match=r"--val-period: .* is not START,END"):
            parse_period(bad, "--val-period")
    join_hosts(None, None, None)  # one host: nothing to join
    with pytest.raises(ValueError, match="--num-processes and --process-id need --coordinator"):
        join_hosts(None, 2, None)
    with pytest.raises(ValueError, match="--coordinator needs --num-processes and --process-id"):
        join_hosts("127.0.0.1:1234", 2, None)
    with pytest.raises(ValueError, match=r"--process-id: 2 is not in \[0, 2\)"):
        join_hosts("127.0.0.1:1234", 2, 2)


def test_a_warm_start_refuses_architecture_options_before_reading_any_archive(tmp_path):
    missing = tmp_path / "no-such-archive.zarr"  # reading it would raise an ArchiveError
    run = TrainingRun(
        run_dir=tmp_path / "run",
        train_config=ONE_STEP,
        train_archives=[missing],
        init_from=tmp_path / "source.msgpack",
        architecture=Architecture(d_model=32, levels=(850,), training_noise="lognormal"),
    )
    with pytest.raises(ValueError, match=r"leave out --d-model, --levels$"):
        run_training(run)
    (tmp_path / "source.msgpack").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"^--init-from: .*source\.msgpack"):
        run_training(TrainingRun(**{**run.__dict__, "architecture": Architecture()}))
    assert not (tmp_path / "run").exists()


def test_warm_start_metadata_counts_the_sources_own_history():
    trained = {"train": {"step": 5}, "metadata": {"step": 5, "train_seconds": 10.0}}
    assert warm_start_metadata(Path("a.msgpack"), trained) == {
        "warm_start": "a.msgpack",
        "warm_start_step": 5,
        "warm_start_seconds": 10.0,
    }
    # An exported checkpoint that was itself warm-started: its steps plus its source's.
    exported = {
        "metadata": {
            "exported_from_step": 7,
            "train_seconds": 20.0,
            "warm_start_step": 3,
            "warm_start_seconds": 4.5,
        }
    }
    assert warm_start_metadata(Path("b.msgpack"), exported) == {
        "warm_start": "b.msgpack",
        "warm_start_step": 10,
        "warm_start_seconds": 24.5,
    }


def test_a_warm_start_keeps_the_sources_model_and_normalisation(tmp_path, archive, statistics):
    """From archives on disk: the source's configs (but the training noise asked for), its
    normalisation rather than the new period's statistics, its parameters as step 0, and its
    history in the metadata; statistics are still computed over the new period and cached."""
    source_path = train(
        run_dir=tmp_path / "source",
        model_config=tiny_model_config(),
        train_config=ONE_STEP,
        train_data=archive,
        train_period=PERIOD,
        statistics=statistics,
        progress=False,
    )
    source = load_checkpoint(source_path)
    store = tmp_path / "archive.zarr"
    archive.to_zarr(store)
    frozen = TrainConfig(
        steps=1, batch_size=2, warmup_steps=0, peak_learning_rate=0.0, validate_every=1, prefetch=0
    )
    path = run_training(
        TrainingRun(
            run_dir=tmp_path / "warm",
            train_config=frozen,
            train_archives=[store],
            train_period=("2001-01-03", "2001-01-09"),
            validation_archive=tmp_path / "absent.zarr",  # skipped: it does not exist
            init_from=source_path,
            architecture=Architecture(training_noise="lognormal"),
            progress=False,
        )
    )
    warm = load_checkpoint(path)
    want = ModelConfig.from_dict(source["configs"]["model"])
    got = ModelConfig.from_dict(warm["configs"]["model"])
    assert got.edm.training_noise == "lognormal" != want.edm.training_noise
    assert (got.task, got.backbone, got.sampler) == (want.task, want.backbone, want.sampler)
    for key in ("mean", "std", "diff_std"):
        np.testing.assert_array_equal(warm["normalization"][key], source["normalization"][key])
    meta = warm["metadata"]
    assert (meta["warm_start"], meta["warm_start_step"]) == (str(source_path), 1)
    assert meta["train_period"][0].startswith("2001-01-03")
    assert meta["val_archive"] == str(tmp_path / "absent.zarr")
    assert (tmp_path / "warm" / "statistics.nc").exists()
    # Learning rate 0: the EMA parameters are still the source's after the step.
    for a, b in zip(
        jax.tree_util.tree_leaves(source["params"]),
        jax.tree_util.tree_leaves(warm["params"]),
        strict=True,
    ):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
