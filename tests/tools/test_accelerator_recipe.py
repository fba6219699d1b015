"""The accelerator recipe end to end on the CPU with tiny settings (`--tiny`): it simulates its own
runs, trains from a checkpoint with the data on the device, and writes a loadable checkpoint, the
validation of both parameter sets and the benchmark, all into one folder."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from support import perturbed_params

from weather.forecast import load_forecaster
from weather.model.backbone import SphereTransformerConfig
from weather.model.checkpoint import load_checkpoint, save_checkpoint
from weather.model.denoiser import Forecaster, ModelConfig
from weather.model.task import Normalization

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "weather" / "assets" / "checkpoint.msgpack"


def tiny_checkpoint(path: Path) -> Path:
    """The shipped task, grid and normalisation with a tiny transformer (fast to compile)."""
    saved = load_checkpoint(SHIPPED)
    config = ModelConfig.from_dict(saved["configs"]["model"])
    config = dataclasses.replace(
        config,
        noise="iid",
        backbone=SphereTransformerConfig(
            patch_size=4,
            d_model=16,
            num_layers=1,
            num_heads=2,
            mlp_ratio=2,
            conditioning_dim=16,
            noise_frequencies=4,
        ),
    )
    grid = saved["configs"]["grid"]
    norm = Normalization.from_dict(saved["normalization"])
    forecaster = Forecaster(
        config, norm, np.asarray(grid["latitude"]), np.asarray(grid["longitude"])
    )
    return save_checkpoint(
        path,
        configs={"model": config.to_dict(), "grid": grid},
        normalization=saved["normalization"],
        params=perturbed_params(forecaster),
        metadata={"note": "tiny test model"},
    )


def test_the_recipe_simulates_trains_validates_and_writes_one_folder(tmp_path):
    source = tiny_checkpoint(tmp_path / "tiny.msgpack")
    out = tmp_path / "recipe"
    done = subprocess.run(
        [
            sys.executable,
            "scripts/accelerator_recipe.py",
            "--tiny",
            "--init-from",
            str(source),
            "--out",
            str(out),
            "--wheels",
            str(tmp_path / "no-wheels"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    names = {p.name for p in out.iterdir()}
    assert {
        "checkpoint.msgpack",
        "validation.json",
        "benchmark.json",
        "history.jsonl",
        "recipe.json",
        "log.txt",
    } <= names
    # The checkpoint is a shippable inference checkpoint: the source's configs, its EMA moved.
    trained = load_forecaster(out / "checkpoint.msgpack")
    before = load_forecaster(source)
    assert trained.forecaster.config == before.forecaster.config
    moved = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            jax.tree_util.tree_leaves(trained.params),
            jax.tree_util.tree_leaves(before.params),
            strict=True,
        )
    ]
    assert max(moved) > 0
    meta = load_checkpoint(out / "checkpoint.msgpack")["metadata"]
    assert meta["recipe_steps"] == 3 and "1000..1001" in meta["training_data"]
    validation = json.loads((out / "validation.json").read_text())
    for which in ("trained", "source"):
        scores = validation[which]
        assert np.isfinite(scores["validation_loss"]) and scores["validation_loss"] > 0
        assert set(scores["crps_12h"]) == {"z500", "t850", "sp"}
        assert all(v > 0 for v in scores["crps_12h"].values())
        assert all(v > 0 for v in scores["spread_skill_12h"].values())
    assert validation["trained"] != validation["source"]
    bench = json.loads((out / "benchmark.json").read_text())
    assert bench["train_steps"] == 3 and bench["platform"] == "cpu"
    assert bench["simulation"]["simulated_days_per_s"] > 0
    assert set(bench["denoiser_calls_per_s"]) == {"2", "8"}
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3]
