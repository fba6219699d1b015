"""The one forecast writer (weather/data/layout.py): Zarr and memory hold the same forecast,
regions land where they are written, stores are never overwritten and are chunked per init
time and lead."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from weather.data.layout import ForecastLayout, ForecastWriter

LEVELS = (500, 850)


def _layout(**overrides):
    kwargs = dict(
        members=np.arange(3),
        init_times=np.array(["2000-01-01T00", "2000-01-02T00"], dtype="datetime64[ns]"),
        lead_times=np.arange(1, 5) * np.timedelta64(12, "h"),
        latitude=np.linspace(-80.0, 80.0, 5),
        longitude=np.arange(0.0, 360.0, 45.0),
        levels=LEVELS,
        attrs={"title": "test"},
    )
    kwargs.update(overrides)
    return ForecastLayout.of(
        ("temperature", "surface_pressure"), ("temperature", "geopotential"), **kwargs
    )


def _fields(layout, rng, init, lead):
    n_init = len(range(*init.indices(layout.init_times.size)))
    n_lead = len(range(*lead.indices(layout.lead_times.size)))
    return {
        n: rng.standard_normal((layout.members.size, n_init, n_lead, *layout.shape(n)[3:])).astype(
            np.float32
        )
        for n in layout.variables
    }


def test_zarr_and_memory_hold_the_same_regions(tmp_path):
    layout = _layout()
    rng = np.random.default_rng(0)
    in_memory = ForecastWriter(layout)
    on_disk = ForecastWriter(layout, tmp_path / "f.zarr")
    # Init 0 in two chunks of leads, init 1 whole; lead 3 of init 0 never written.
    regions = [(slice(0, 1), slice(0, 2)), (slice(0, 1), slice(2, 3)), (slice(1, 2), slice(None))]
    expected = {n: np.full(layout.shape(n), np.nan, np.float32) for n in layout.variables}
    for init, lead in regions:
        fields = _fields(layout, rng, init, lead)
        in_memory.write(fields, init=init, lead=lead)
        on_disk.write(fields, init=init, lead=lead)
        for n, v in fields.items():
            expected[n][:, init, lead] = v
    a, b = in_memory.dataset(), on_disk.dataset().load()
    xr.testing.assert_identical(a, b[list(a.data_vars)])
    for n in layout.variables:
        np.testing.assert_array_equal(a[n].values, expected[n])
    assert np.isnan(a["temperature"].values[:, 0, 3]).all()
    assert a["temperature"].dims == (
        "member",
        "init_time",
        "lead_time",
        "level",
        "latitude",
        "longitude",
    )
    assert a["surface_pressure"].dims == (
        "member",
        "init_time",
        "lead_time",
        "latitude",
        "longitude",
    )
    assert a["temperature"].attrs["units"] == "K"
    assert a["member"].attrs["standard_name"] == "realization"
    assert a.attrs == {"title": "test"}


def test_store_chunks_one_init_and_one_lead(tmp_path):
    ForecastWriter(_layout(), tmp_path / "f.zarr")
    group = zarr.open_group(tmp_path / "f.zarr", mode="r")
    assert group["temperature"].chunks == (3, 1, 1, 2, 5, 8)
    assert group["surface_pressure"].chunks == (3, 1, 1, 5, 8)


def test_never_overwrites_and_reopens_on_request(tmp_path):
    layout = _layout()
    store = tmp_path / "f.zarr"
    first = ForecastWriter(layout, store)
    fields = _fields(layout, np.random.default_rng(1), slice(0, 1), slice(0, 1))
    first.write(fields, init=slice(0, 1), lead=slice(0, 1))
    with pytest.raises(FileExistsError, match="never overwrite"):
        ForecastWriter(layout, store)
    ForecastWriter(layout, store, exist_ok=True)  # a resumed job: what was written stays
    again = ForecastWriter.reopen(store).dataset()
    np.testing.assert_array_equal(again["temperature"].values[:, :1, :1], fields["temperature"])


def test_unknown_variable_is_named(tmp_path):
    layout = _layout()
    for writer in (ForecastWriter(layout), ForecastWriter(layout, tmp_path / "f.zarr")):
        with pytest.raises(KeyError, match="geopotential"):
            writer.write({"geopotential": np.zeros((3, 1, 1, 2, 5, 8), np.float32)})


def test_level_coordinate_only_with_level_variables():
    surface_only = ForecastLayout.of(
        ("surface_pressure",),
        ("temperature",),
        members=[0],
        init_times=np.array(["2000-01-01"], dtype="datetime64[ns]"),
        lead_times=[np.timedelta64(12, "h")],
        latitude=[0.0],
        longitude=[0.0],
        levels=LEVELS,
    )
    assert "level" not in ForecastWriter(surface_only).dataset().coords
    with pytest.raises(ValueError, match="levels"):
        _layout(levels=None)
