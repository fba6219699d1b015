"""The notebooks run top to bottom on a small archive; any cell error fails the test."""

import os
from pathlib import Path

import nbformat
import pytest
from conftest import synthetic_archive
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["archive_overview.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    store = tmp_path / "archive.zarr"
    synthetic_archive().to_zarr(store, zarr_format=3, consolidated=False)
    monkeypatch.setenv("WEATHER_ARCHIVE", str(store))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute(env=dict(os.environ))
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert (tmp_path / "archive_overview.png").exists()
