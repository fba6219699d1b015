"""Points, maps and meteograms read from a job's forecast at fetch time (`service.routes.views`):
an in-process server with API keys and an in-process worker (the tiny model). The numbers are
checked against the job's own Zarr store; a running job is held by an event before a given
sampling call (as in `test_service_gated.py`), so what it has done is exact on any machine."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from service_support import (
    INIT,
    KEYS,
    digest,
    hold_before_call,
    server_thread,
    service_files,
    tiny_settings,
    wait_for,
)

from service.settings import Settings as ServiceSettings
from service.sql_store import open_store
from service.worker import Worker

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    return service_files(tmp_path_factory, archive, statistics)


@pytest.fixture(scope="module")
def served(files, tmp_path_factory) -> Iterator[tuple[str, ServiceSettings]]:  # type: ignore[no-untyped-def]
    settings = tiny_settings(
        files,
        tmp_path_factory.mktemp("service-views") / "data",
        compilation_cache_dir=files.jax_cache,
        api_keys=[digest(KEYS["alice"]), digest(KEYS["bob"])],
        worker=False,
        warmup=False,
        poll_s=0.1,
    )
    with server_thread(settings) as url:
        worker = Worker(settings, open_store(settings.database, schema=settings.database_schema))
        worker.start()
        try:
            yield url, settings
        finally:
            worker.stop()
            worker.store.close()


def client(url: str, who: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS[who]}"}, timeout=60)


@pytest.fixture(scope="module")
def alice(served) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with client(served[0], "alice") as c:
        yield c


def stored(settings: ServiceSettings, job_id: str) -> xr.Dataset:
    """The job's Zarr store as its worker wrote it (one init time)."""
    path = settings.data_dir / "jobs" / job_id / "forecast.zarr"
    with xr.open_zarr(path, consolidated=False) as ds:
        return ds.isel(init_time=0).load()


@pytest.fixture(scope="module")
def finished(alice, served) -> tuple[str, xr.Dataset]:  # type: ignore[no-untyped-def]
    """A succeeded job: 3 members, 36 h, temperature (500, 850 hPa) and surface pressure."""
    body = {
        "init_time": INIT,
        "lead": 36,
        "members": 3,
        "seed": 3,
        "variables": ["temperature", "surface_pressure"],
    }
    job = alice.post("/forecast", json=body).json()
    assert wait_for(alice, job["id"], {"succeeded", "failed"})["status"] == "succeeded"
    return job["id"], stored(served[1], job["id"])


def nearest(grid: np.ndarray, value: float, periodic: bool = False) -> int:
    """Brute force: the index of the closest grid value (longitudes the short way round)."""
    gaps = [abs(g - value) for g in grid]
    if periodic:
        gaps = [min(d % 360, 360 - d % 360) for d in gaps]
    return int(np.argmin(gaps))


PLACES = [(47.3, 8.5), (-33.9, 151.2), (10.0, -8.0), (90.0, 0.0)]


def members_at(ds: xr.Dataset, name: str, level: int | None, lat: float, lon: float) -> np.ndarray:
    i = nearest(ds.latitude.values, lat)
    j = nearest(ds.longitude.values, lon, periodic=True)
    x = ds[name] if level is None else ds[name].sel(level=level)
    return x.isel(latitude=i, longitude=j).transpose("member", "lead_time").values  # [M, S]


def test_points_json_are_the_stored_members_at_the_nearest_grid_point_with_numpy_summaries(
    alice, finished
):
    job_id, ds = finished
    r = alice.get(
        f"/forecast/{job_id}/points",
        params={
            "latitude": ",".join(str(p[0]) for p in PLACES),
            "longitude": [str(p[1]) for p in PLACES],
            "variables": "temperature,surface_pressure",
            "levels": "850",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-forecast-complete"] == "true" and r.headers["x-leads-done"] == "36"
    result = r.json()
    assert result["complete"] and result["method"] == "nearest grid point"
    assert result["lead_hours"] == [12, 24, 36] and result["members"] == [0, 1, 2]
    assert result["valid_times"][0] == "2001-01-03T12:00:00Z"
    assert result["quantiles"] == [0.1, 0.5, 0.9]
    assert len(result["points"]) == len(PLACES)
    for (lat, lon), point in zip(PLACES, result["points"], strict=True):
        assert (point["latitude"], point["longitude"]) == (lat, lon)
        assert point["grid_latitude"] == ds.latitude.values[nearest(ds.latitude.values, lat)]
        j = nearest(ds.longitude.values, lon, periodic=True)
        assert point["grid_longitude"] == ds.longitude.values[j]
        assert set(point["series"]) == {"temperature_850hPa", "surface_pressure"}
        for column, (name, level) in {
            "temperature_850hPa": ("temperature", 850),
            "surface_pressure": ("surface_pressure", None),
        }.items():
            series = point["series"][column]
            x = members_at(ds, name, level, lat, lon)
            assert (series["variable"], series["level"]) == (name, level)
            assert series["units"] == ds[name].attrs["units"]
            # Members exactly as stored (float32 carried through float64 JSON).
            np.testing.assert_array_equal(np.asarray(series["members"], np.float32), x)
            x64 = x.astype(np.float64)
            np.testing.assert_allclose(series["mean"], x64.mean(0), rtol=1e-12)
            np.testing.assert_allclose(series["spread"], x64.std(0, ddof=1), rtol=1e-12)
            for q in (0.1, 0.5, 0.9):
                want = np.quantile(x64, q, axis=0)
                np.testing.assert_allclose(series["quantiles"][f"{q:g}"], want, rtol=1e-12)
    # The longitude -8 is 352 east: its nearest point is 348.75, not 0.
    assert result["points"][2]["grid_longitude"] == 348.75


def test_points_csv_has_open_meteo_like_columns_and_the_same_numbers(alice, finished):
    job_id, ds = finished
    r = alice.get(
        f"/forecast/{job_id}/points",
        params={
            "latitude": "47.3,-33.9",
            "longitude": "8.5,151.2",
            "variables": ["surface_pressure", "temperature"],
            "levels": "500",
            "quantiles": "0.25,0.75",
            "format": "csv",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["x-forecast-complete"] == "true"
    rows = list(csv.reader(io.StringIO(r.text)))
    header, body = rows[0], rows[1:]
    stats = ["mean", "spread", "p25", "p75", "member00", "member01", "member02"]
    assert header == [
        "location_id",
        "latitude",
        "longitude",
        "grid_latitude",
        "grid_longitude",
        "time",
        "lead_hours",
        *(f"surface_pressure_{s} (Pa)" for s in stats),
        *(f"temperature_500hPa_{s} (K)" for s in stats),
    ]
    assert len(body) == 2 * 3  # places x leads
    assert [row[5] for row in body[:3]] == [
        "2001-01-03T12:00:00Z",
        "2001-01-04T00:00:00Z",
        "2001-01-04T12:00:00Z",
    ]
    for row in body:
        place, lead = int(row[0]), int(row[6]) // 12 - 1
        lat, lon = [(47.3, 8.5), (-33.9, 151.2)][place]
        assert (float(row[1]), float(row[2])) == (lat, lon)
        for k, (name, level) in enumerate((("surface_pressure", None), ("temperature", 500))):
            x = members_at(ds, name, level, lat, lon)[:, lead]
            cells = row[7 + 7 * k : 7 + 7 * (k + 1)]
            np.testing.assert_array_equal(np.asarray(cells[4:], np.float32), x)
            x64 = x.astype(np.float64)
            want = [x64.mean(), x64.std(ddof=1), *np.quantile(x64, [0.25, 0.75])]
            np.testing.assert_allclose(np.asarray(cells[:4], np.float64), want, rtol=1e-8)


@pytest.mark.parametrize(
    ("route", "params", "status", "param"),
    [
        ("points", {"latitude": "91", "longitude": "0"}, 422, "latitude"),
        ("points", {"latitude": "0", "longitude": "361"}, 422, "longitude"),
        ("points", {"latitude": "north", "longitude": "0"}, 422, "latitude"),
        ("points", {"latitude": "nan", "longitude": "0"}, 422, "latitude"),
        ("points", {"latitude": "1,2", "longitude": "0"}, 422, "longitude"),
        ("points", {"longitude": "0"}, 422, "latitude"),
        ("points", {"latitude": "0", "longitude": "0", "variables": "humidity"}, 422, "variables"),
        ("points", {"latitude": "0", "longitude": "0", "levels": "300"}, 422, "levels"),
        ("points", {"latitude": "0", "longitude": "0", "levels": "low"}, 422, "levels"),
        ("points", {"latitude": "0", "longitude": "0", "quantiles": "1.5"}, 422, "quantiles"),
        ("points", {"latitude": "0", "longitude": "0", "format": "xml"}, 422, "format"),
        ("map.png", {"variable": "humidity"}, 422, "variable"),
        ("map.png", {"variable": "temperature", "level": 300}, 422, "level"),
        ("map.png", {"variable": "surface_pressure", "level": 500}, 422, "level"),
        ("map.png", {"lead": 48}, 422, "lead"),
        ("map.png", {"lead": 13}, 422, "lead"),
        ("map.png", {"lead": "soon"}, 422, "lead"),
        ("map.png", {"field": "median"}, 422, "field"),
        ("map.png", {"field": "member"}, 422, "member"),
        ("map.png", {"field": "member", "member": 3}, 422, "member"),
        ("map.png", {"field": "member", "member": -1}, 422, "member"),
        ("map.png", {"field": "spread", "member": 1}, 422, "member"),
        ("map.png", {"member": "9" * 4000}, 422, "member"),
        ("map.png", {"level": "9" * 4000}, 422, "level"),
        ("map.png", {"lead": "9" * 4000}, 422, "lead"),
        ("points", {"latitude": "1e400", "longitude": "0"}, 422, "latitude"),
        ("meteogram.png", {"lat": 95, "lon": 0}, 422, "lat"),
        ("meteogram.png", {"lat": 0, "lon": -200}, 422, "lon"),
        ("meteogram.png", {"lat": "nan", "lon": 0}, 422, "lat"),
        ("meteogram.png", {"lon": 0}, 422, "lat"),
        ("meteogram.png", {"lat": 0, "lon": 0, "variable": "humidity"}, 422, "variable"),
    ],
)
def test_a_parameter_the_server_cannot_use_is_a_4xx_naming_it(
    alice, finished, route, params, status, param
):
    job_id, _ = finished
    r = alice.get(f"/forecast/{job_id}/{route}", params=params)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["query", param], detail
    assert detail[0]["msg"]


def test_another_keys_job_is_404_on_every_view(alice, finished, served):
    job_id, _ = finished
    with client(served[0], "bob") as bob:
        for route, params in (
            ("points", {"latitude": "0", "longitude": "0"}),
            ("map.png", {}),
            ("meteogram.png", {"lat": 0, "lon": 0}),
        ):
            assert bob.get(f"/forecast/{job_id}/{route}", params=params).status_code == 404
            assert httpx.get(f"{served[0]}/forecast/{job_id}/{route}").status_code == 401
            assert alice.get(f"/forecast/{job_id}/{route}", params=params).status_code == 200


def png(r: httpx.Response) -> np.ndarray:
    """The image's pixels, once the answer is checked to be a PNG."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content[:8] == PNG
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 250
    return np.asarray(image.convert("RGB"))


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or bool((a != b).any(axis=-1).mean() > 0.01)


def test_maps_are_pngs_whose_pixels_follow_the_field_the_member_and_the_lead(alice, finished):
    job_id, _ = finished

    def draw(**params: Any) -> np.ndarray:
        return png(alice.get(f"/forecast/{job_id}/map.png", params=params))

    mean = draw(variable="temperature", level=850, lead=36)
    assert not differ(draw(variable="temperature", level=850), mean)  # default: the latest
    assert not differ(draw(variable="temperature", level=850, lead="P1DT12H"), mean)
    member0 = draw(variable="temperature", level=850, lead=36, field="member", member=0)
    member1 = draw(variable="temperature", level=850, lead="36h", member=1)
    spread = draw(variable="temperature", level=850, lead=36, field="spread")
    early = draw(variable="temperature", level=850, lead=12)
    other_level = draw(variable="temperature", level=500, lead=36)
    surface = draw(variable="surface_pressure", lead=36)
    pictures = [mean, member0, member1, spread, early, other_level, surface]
    for a in range(len(pictures)):
        for b in range(a + 1, len(pictures)):
            assert differ(pictures[a], pictures[b]), (a, b)


def test_meteograms_are_pngs_whose_pixels_follow_the_place_and_variable(alice, finished):
    job_id, _ = finished

    def draw(**params: Any) -> np.ndarray:
        return png(alice.get(f"/forecast/{job_id}/meteogram.png", params=params))

    zurich = draw(lat=47.3, lon=8.5, variable="temperature", level=850)
    sydney = draw(lat=-33.9, lon=151.2, variable="temperature", level=850)
    pressure = draw(lat=47.3, lon=8.5, variable="surface_pressure")
    assert differ(zurich, sydney) and differ(zurich, pressure)
    # Defaults: the job's first variable at 500 hPa.
    default = draw(lat=47.3, lon=8.5)
    assert not differ(default, draw(lat=47.3, lon=8.5, variable="temperature", level=500))


def test_a_region_job_answers_inside_its_box_and_names_the_coordinate_outside(alice, served):
    body = {
        "init_time": INIT,
        "lead": 12,
        "members": 2,
        "seed": 4,
        "variables": ["temperature"],
        "levels": [850],
        "region": {"lat_min": 20, "lat_max": 60, "lon_min": 340, "lon_max": 30},
    }
    job = alice.post("/forecast", json=body).json()
    assert wait_for(alice, job["id"], {"succeeded", "failed"})["status"] == "succeeded"
    ds = stored(served[1], job["id"])
    inside = alice.get(f"/forecast/{job['id']}/points", params={"latitude": 40, "longitude": -3})
    assert inside.status_code == 200, inside.text
    (point,) = inside.json()["points"]
    x = members_at(ds, "temperature", 850, 40, -3)
    np.testing.assert_array_equal(
        np.asarray(point["series"]["temperature_850hPa"]["members"], np.float32), x
    )
    for params, param in (
        ({"latitude": 0, "longitude": 0}, "latitude"),
        ({"latitude": 40, "longitude": 90}, "longitude"),
    ):
        r = alice.get(f"/forecast/{job['id']}/points", params=params)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", param]
    r = alice.get(f"/forecast/{job['id']}/meteogram.png", params={"lat": -40, "lon": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "lat"]
    png(alice.get(f"/forecast/{job['id']}/map.png"))
    png(alice.get(f"/forecast/{job['id']}/meteogram.png", params={"lat": 40, "lon": 355}))


def test_a_running_job_serves_only_the_leads_done(alice, served, monkeypatch):
    """The worker is held before its third sampling call from now: the job has exactly two of
    its ten leads, and every view serves those; a later lead is a 409 naming ``lead``."""
    held, release = hold_before_call(monkeypatch, 3)
    body = {"init_time": INIT, "lead": "P5D", "members": 2, "seed": 5, "variables": ["temperature"]}
    job = alice.post("/forecast", json=body).json()
    try:
        assert held.wait(120), "the worker never reached its third call"
        # Queued behind the held worker: no lead yet, so the views answer 202 with its status.
        queued = alice.post("/forecast", json={**body, "seed": 6}).json()
        for route, params in (
            ("points", {"latitude": 0, "longitude": 0}),
            ("map.png", {}),
            ("meteogram.png", {"lat": 0, "lon": 0}),
        ):
            r = alice.get(f"/forecast/{queued['id']}/{route}", params=params)
            assert r.status_code == 202 and r.json()["status"] == "queued", r.text

        status = alice.get(f"/forecast/{job['id']}").json()
        assert status["status"] == "running" and status["progress"]["steps_done"] == 2, status
        r = alice.get(
            f"/forecast/{job['id']}/points",
            params={"latitude": 47.3, "longitude": 8.5, "format": "json"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-forecast-complete"] == "false" and r.headers["x-leads-done"] == "24"
        result = r.json()
        assert not result["complete"] and result["lead_hours"] == [12, 24]
        series = result["points"][0]["series"]["temperature_500hPa"]
        assert np.asarray(series["members"]).shape == (2, 2) and len(series["mean"]) == 2
        rows = alice.get(
            f"/forecast/{job['id']}/points",
            params={"latitude": 47.3, "longitude": 8.5, "format": "csv"},
        ).text.splitlines()
        assert [row.split(",")[6] for row in rows[1:]] == ["12", "24"]
        png(alice.get(f"/forecast/{job['id']}/map.png", params={"lead": 24}))
        png(alice.get(f"/forecast/{job['id']}/meteogram.png", params={"lat": 0, "lon": 0}))
        not_yet = alice.get(f"/forecast/{job['id']}/map.png", params={"lead": 36})
        assert not_yet.status_code == 409 and not_yet.headers["retry-after"] == "1"
        assert not_yet.json()["detail"][0]["loc"] == ["query", "lead"]
        assert "not done yet" in not_yet.json()["detail"][0]["msg"]
        beyond = alice.get(f"/forecast/{job['id']}/map.png", params={"lead": 132})
        assert beyond.status_code == 422 and "beyond" in beyond.json()["detail"][0]["msg"]
        for job_id in (job["id"], queued["id"]):
            assert alice.delete(f"/forecast/{job_id}").status_code == 200
    finally:
        release.set()
    wait_for(alice, job["id"], {"cancelled"})


QUERY_VALUES = (
    st.sampled_from(["", ",", "0", "-0", "12", "36", "850", "1e400", "nan", "-inf", "9" * 5000])
    | st.sampled_from(["temperature", "surface_pressure", "mean", "spread", "member", "csv"])
    | st.integers(-400, 400).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(str)
    | st.text(st.characters(codec="utf-8"), max_size=12)
)
VIEWS = {
    "points": ["latitude", "longitude", "variables", "levels", "quantiles", "format"],
    "map.png": ["variable", "level", "lead", "field", "member"],
    "meteogram.png": ["lat", "lon", "variable", "level"],
}


def test_arbitrary_queries_never_fail_the_server(alice, finished):
    """No 5xx for any query (hostile numbers, huge integers, any text): a 4xx says why."""
    job_id, _ = finished

    @settings(max_examples=40, deadline=None, database=None)
    @given(
        route=st.sampled_from(sorted(VIEWS)),
        data=st.data(),
    )
    def fetch(route: str, data: st.DataObject) -> None:
        names = data.draw(st.lists(st.sampled_from(VIEWS[route]), max_size=4, unique=True))
        query = {name: data.draw(st.lists(QUERY_VALUES, min_size=1, max_size=2)) for name in names}
        r = alice.get(f"/forecast/{job_id}/{route}", params=query)
        assert r.status_code < 500, (r.status_code, r.url, r.text)
        if r.status_code >= 400:
            assert r.json()["detail"], r.text

    fetch()
