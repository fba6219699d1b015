"""The notebooks run top to bottom on small inputs; any cell error fails the test."""

import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
import xarray as xr
from nbclient import NotebookClient
from support import synthetic_archive

from weather.baselines import EnsembleForecaster, Persistence, persistence
from weather.data.layout import annotate_forecast
from weather.data.reader import open_archive
from weather.evaluation import EvaluationConfig, evaluate, spaced_inits
from weather.scoring import align_truth

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _execute(name: str, workdir: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": workdir}}
    )
    client.execute(env=dict(os.environ))
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return notebook


@pytest.mark.parametrize("name", ["archive_overview.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    store = tmp_path / "archive.zarr"
    synthetic_archive().to_zarr(store, zarr_format=3, consolidated=False)
    monkeypatch.setenv("WEATHER_ARCHIVE", str(store))
    _execute(name, tmp_path)
    assert (tmp_path / "archive_overview.png").exists()


class _SyntheticEnsemble:
    """An ensemble baseline around the truth: its mean misses the truth by Gaussian noise of
    ``error`` times the variable's standard deviation (per level) times sqrt(lead in days), and
    members scatter about the mean by ``spread`` times that; ``spread == error`` is calibrated
    (flat rank histograms, spread/skill near 1), ``spread < error`` under-dispersive."""

    def __init__(self, error: float, spread: float) -> None:
        self.error, self.spread = error, spread

    def history(self, members: int) -> np.timedelta64:
        return np.timedelta64(0, "h")

    def forecast(
        self,
        archive: xr.Dataset,
        init_time: np.datetime64,
        leads: np.ndarray,
        members: int,
        seed: int,
        out: Path | None = None,
    ) -> xr.Dataset:
        error, spread = self.error, self.spread
        layout = persistence(archive, [init_time], list(leads))  # the forecast layout, 1 member
        rng = np.random.default_rng(seed)
        growth = xr.DataArray(np.sqrt(leads / np.timedelta64(1, "D")), dims="lead_time")
        fields = {}
        for name, field in layout.data_vars.items():
            truth = align_truth(field, archive[name]).drop_vars("valid_time").load()
            scale = archive[name].std(("time", "latitude", "longitude")).load() * growth
            miss = xr.DataArray(rng.standard_normal(truth.shape), dims=truth.dims)
            noise = xr.DataArray(rng.standard_normal((members, *truth.shape)), dims=field.dims)
            value = truth + scale * (error * miss + spread * noise)
            fields[name] = value.transpose(*field.dims).astype(np.float32)
        ds = xr.Dataset(fields).assign_coords(member=np.arange(members))
        annotate_forecast(ds)
        ds = ds.chunk({"member": -1, "init_time": 1, "lead_time": 1})  # as the model's stores
        if out is not None:
            ds.to_zarr(out, zarr_format=3, consolidated=False, mode="w-")
        return ds


def test_evaluation_notebook_executes(tmp_path, monkeypatch):
    """A tiny evaluation as `weather evaluate` lays it out: two inits, ten days, persistence and
    two synthetic four-member ensembles named model (calibrated) and physics (larger errors,
    under-dispersive), scored by the real code."""
    store = tmp_path / "archive.zarr"
    synthetic_archive().to_zarr(store, zarr_format=3, consolidated=False)
    truth = open_archive(store)
    config = EvaluationConfig(out_dir=tmp_path / "eval", lead_hours=240, members=4)
    inits = spaced_inits(truth, 2, 0.5, config.lead_hours, None)
    forecasters: dict[str, EnsembleForecaster] = {
        "model": _SyntheticEnsemble(0.1, 0.1),
        "physics": _SyntheticEnsemble(0.2, 0.1),
        "persistence": Persistence(),
    }
    assert all(isinstance(f, EnsembleForecaster) for f in forecasters.values())
    evaluate(config, forecasters, truth, inits)
    monkeypatch.setenv("WEATHER_EVALUATION_DIR", str(config.out_dir))
    monkeypatch.setenv("WEATHER_ARCHIVE", str(store))

    notebook = _execute("evaluation.ipynb", tmp_path)
    printed = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "scorecard of model against physics" in printed
    for png in ("crps_vs_lead", "scorecard", "spread_skill", "rank_histograms", "members_z500"):
        assert (tmp_path / f"{png}.png").stat().st_size > 0, png
