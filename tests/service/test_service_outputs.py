"""The result formats as users' tools read them: GET /forecast/{id}/result as GRIB2 holds every
value of the zipped Zarr result (read back with cfgrib), the zipped Zarr store opens silently
with ``xarray.open_zarr`` and follows CF like the NetCDF result; an unknown format and a variable
without a GRIB2 code are refused by name.

The job is finished by hand (as in `test_service_faults.py`), so no model runs.
"""

from __future__ import annotations

import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import httpx
import numpy as np
import pytest
import xarray as xr
import zarr
from service_support import INIT, server_thread, service_files, tiny_settings

from service.catalog import model_info
from service.results import JobFiles, Subset
from service.schemas import JobRequest
from service.settings import Settings
from service.sql_store import open_store
from service.store import JobState
from weather.data import grib
from weather.data.variables import CATALOGUE


@pytest.fixture(scope="module")
def settings(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    files = service_files(tmp_path_factory, archive, statistics)
    return tiny_settings(
        files,
        tmp_path_factory.mktemp("service-outputs"),
        worker=False,
    )


@pytest.fixture(scope="module")
def client(settings):  # type: ignore[no-untyped-def]
    with server_thread(settings) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def finished_job(settings: Settings, client: httpx.Client, **request: Any) -> str:
    """A job submitted over HTTP whose two leads are written by hand (random, finite)."""
    body = {"init_time": INIT, "lead": 24, "members": 2, "seed": 3, **request}
    r = client.post("/forecast", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    info = model_info(settings)
    store = open_store(settings.database)
    try:
        worker = f"test-{uuid.uuid4().hex[:6]}"
        (job,) = store.claim(
            worker, info.key, max_members=8, limit=1, now=time.time(), timeout=30, max_attempts=3
        )
        run = JobRequest.model_validate(job.request)
        subset = Subset.of(info, run)
        files = JobFiles(settings.data_dir, job_id)
        files.create(info, run, subset)
        shape = (2, run.members, info.latitude.size, info.longitude.size, info.task.n_state)
        states = np.random.default_rng(0).normal(280.0, 5.0, shape).astype(np.float32)
        files.write_leads(info, subset, 0, states)
        files.write_scores(
            {"job_id": job_id, "members": run.members, "domain": "globe", "rows": []}
        )
        assert store.progress(job_id, worker, 2, now=time.time())
        assert store.finish(job_id, worker, JobState.SUCCEEDED, now=time.time(), expires_at=1e12)
    finally:
        store.close()
    return job_id


def fetch(client: httpx.Client, job_id: str, fmt: str | None, path: Path) -> Path:
    params = {"format": fmt} if fmt else {}
    r = client.get(f"/forecast/{job_id}/result", params=params)
    assert r.status_code == 200, r.text
    path.write_bytes(r.content)
    return path


def open_zipped_zarr(path: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        # Stricter than the suite's filter, which lets zarr's note on consolidated metadata by:
        # opening our store must print nothing at all.
        warnings.simplefilter("error")
        return xr.open_zarr(zarr.storage.ZipStore(path, mode="r")).load()


def test_grib2_result_holds_every_value_of_the_zarr_result(settings, client, tmp_path):
    job_id = finished_job(settings, client, format="grib2")
    r = client.get(f"/forecast/{job_id}/result")  # the request's own format
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-grib"
    assert f"forecast-{job_id}.grib2" in r.headers["content-disposition"]
    (tmp_path / "f.grib2").write_bytes(r.content)
    want = open_zipped_zarr(fetch(client, job_id, "zarr", tmp_path / "f.zarr.zip"))
    by_level = {}
    for kind in ("isobaricInhPa", "surface"):
        by_level[kind] = xr.open_dataset(
            tmp_path / "f.grib2",
            engine="cfgrib",
            backend_kwargs={"indexpath": "", "filter_by_keys": {"typeOfLevel": kind}},
            decode_timedelta=True,
        ).load()
    for name in want.data_vars:
        field = want[name]
        kind = "isobaricInhPa" if "level" in field.dims else "surface"
        got = by_level[kind][CATALOGUE[str(name)].short_name]
        got = got.rename(number="member", step="lead_time").expand_dims(init_time=1)
        if "level" in field.dims:
            got = got.rename(isobaricInhPa="level").sel(level=field["level"].values)
        got = got.transpose(*field.dims)
        np.testing.assert_array_equal(got["member"].values, field["member"].values)
        np.testing.assert_array_equal(got["lead_time"].values, field["lead_time"].values)
        np.testing.assert_array_equal(got["latitude"].values, field["latitude"].values)
        np.testing.assert_array_equal(got["longitude"].values, field["longitude"].values)
        # Per field, within 24-bit simple packing's step (weather/data/grib.py) plus cfgrib's
        # float32 rounding of the decoded value.
        x = field.values.astype(np.float64).reshape(-1, field.latitude.size * field.longitude.size)
        step = np.array([grib.packing_step(f, 24) for f in x])
        rounding = np.spacing(np.abs(x).max(axis=1).astype(np.float32))
        error = np.abs(got.values.reshape(x.shape) - x).max(axis=1)
        assert (error <= step + rounding).all(), name


def test_zarr_and_netcdf_results_follow_cf(settings, client, tmp_path):
    job_id = finished_job(settings, client)
    from_zarr = open_zipped_zarr(fetch(client, job_id, "zarr", tmp_path / "f.zarr.zip"))
    netcdf = fetch(client, job_id, "netcdf", tmp_path / "f.nc")
    with xr.open_dataset(netcdf, decode_timedelta=True) as from_netcdf:
        for ds in (from_zarr, from_netcdf):
            assert ds.attrs["Conventions"] == "CF-1.8"
            assert ds.cf.standard_names["forecast_reference_time"] == ["init_time"]
            assert ds.cf.standard_names["forecast_period"] == ["lead_time"]
            assert ds.cf.standard_names["realization"] == ["member"]
            assert ds.cf.standard_names["time"] == ["valid_time"]
            assert ds["lead_time"].encoding["units"] == "hours"
            assert ds["init_time"].encoding["units"] == "hours since 1970-01-01"
            for name in ds.data_vars:
                assert ds[name].attrs["units"] == CATALOGUE[str(name)].units, name


def test_unknown_format_and_variables_without_grib_codes_are_named(settings, client, monkeypatch):
    job_id = finished_job(settings, client, variables=["temperature"])
    r = client.get(f"/forecast/{job_id}/result", params={"format": "grib1"})
    assert r.status_code == 422 and "format" in r.text, r.text
    # No catalogue variable lacks a code today: take temperature's away (the server runs in
    # this process).
    monkeypatch.delitem(grib.PARAMETERS, "temperature")
    r = client.get(f"/forecast/{job_id}/result", params={"format": "grib2"})
    assert r.status_code == 400, r.text
    assert "grib2" in r.json()["detail"] and "temperature" in r.json()["detail"]
    monkeypatch.undo()
    assert client.get(f"/forecast/{job_id}/result", params={"format": "grib2"}).status_code == 200
