"""The one forecast writer (weather/data/layout.py): Zarr and memory hold the same forecast,
regions land where they are written, stores are never overwritten and are chunked per init
time and lead; Zarr, memory and NetCDF follow CF, and stores open silently (consolidated
metadata that stays true after region writes)."""

from __future__ import annotations

import json
import warnings

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import netCDF4
import numpy as np
import pytest
import xarray as xr
import zarr

from weather.data.layout import ForecastLayout, ForecastWriter, annotate_forecast, write_netcdf

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
    assert a.attrs == {"title": "test", "Conventions": "CF-1.8"}


def test_store_chunks_one_init_and_one_lead(tmp_path):
    ForecastWriter(_layout(), tmp_path / "f.zarr")
    group = zarr.open_group(tmp_path / "f.zarr", mode="r")
    assert group["temperature"].chunks == (3, 1, 1, 2, 5, 8)
    assert group["surface_pressure"].chunks == (3, 1, 1, 5, 8)
    # Chunked like the fields: a reader asking for one init and lead per chunk splits none.
    assert group["valid_time"].chunks == (1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xr.open_zarr(tmp_path / "f.zarr", chunks={"member": -1, "init_time": 1, "lead_time": 1})


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


def _written(tmp_path):
    """The same forecast in memory, in a Zarr store (every region written) and in NetCDF."""
    layout = _layout()
    fields = _fields(layout, np.random.default_rng(2), slice(None), slice(None))
    in_memory, on_disk = ForecastWriter(layout), ForecastWriter(layout, tmp_path / "f.zarr")
    for writer in (in_memory, on_disk):
        writer.write(fields)
    write_netcdf(on_disk.dataset(), tmp_path / "f.nc")
    return in_memory.dataset(), xr.open_zarr(tmp_path / "f.zarr"), tmp_path / "f.nc"


def _raw_attrs(tmp_path) -> dict[str, dict[str, dict]]:
    """Every variable's attributes as a CF reader sees them in each file (times undecoded)."""
    group = zarr.open_group(tmp_path / "f.zarr", mode="r", use_consolidated=False)
    raw = {"zarr": {n: dict(a.attrs) for n, a in group.arrays()}}
    with netCDF4.Dataset(tmp_path / "f.nc") as nc:
        raw["netcdf"] = {
            n: {k: v.getncattr(k) for k in v.ncattrs()} for n, v in nc.variables.items()
        }
        raw["netcdf"][""] = {k: nc.getncattr(k) for k in nc.ncattrs()}
    raw["zarr"][""] = dict(group.attrs)
    return raw


def test_forecasts_follow_cf_in_memory_zarr_and_netcdf(tmp_path):
    in_memory, from_zarr, netcdf = _written(tmp_path)
    with xr.open_dataset(netcdf, decode_timedelta=True) as from_netcdf:
        for ds in (in_memory, from_zarr, from_netcdf.load()):
            assert ds.attrs["Conventions"] == "CF-1.8"
            # CF readers find the coordinates by standard name; our dims keep their names.
            names = {
                "forecast_reference_time": "init_time",
                "forecast_period": "lead_time",
                "realization": "member",
                "time": "valid_time",
                "latitude": "latitude",
                "longitude": "longitude",
                "air_pressure": "level",
            }
            for standard_name, name in names.items():
                assert ds.cf.standard_names[standard_name] == [name]
            assert ds.cf.axes == {
                "X": ["longitude"],
                "Y": ["latitude"],
                "Z": ["level"],
                "T": ["valid_time"],
            }
            assert ds["valid_time"].dims == ("init_time", "lead_time")
            np.testing.assert_array_equal(
                ds["valid_time"].values,
                ds["init_time"].values[:, None] + ds["lead_time"].values[None, :],
            )
            assert ds["temperature"].attrs["standard_name"] == "air_temperature"
    # Units on everything, the times in hours, as a CF reader sees the files.
    for where, variables in _raw_attrs(tmp_path).items():
        assert variables[""]["Conventions"] == "CF-1.8", where
        assert variables["init_time"]["units"] == "hours since 1970-01-01", where
        assert variables["valid_time"]["units"] == "hours since 1970-01-01", where
        assert variables["lead_time"]["units"] == "hours", where
        assert variables["init_time"]["calendar"] == "proleptic_gregorian", where
        units = {n: a.get("units") for n, a in variables.items() if n}
        assert units == {
            "member": "1",
            "init_time": "hours since 1970-01-01",
            "lead_time": "hours",
            "valid_time": "hours since 1970-01-01",
            "level": "hPa",
            "latitude": "degrees_north",
            "longitude": "degrees_east",
            "temperature": "K",
            "surface_pressure": "Pa",
        }, where
        for name in ("latitude", "longitude"):  # CF: coordinates hold no missing values
            assert "_FillValue" not in variables[name], (where, name)
        for name in ("temperature", "surface_pressure"):
            assert variables[name]["coordinates"] == "valid_time", (where, name)


def test_time_units_are_as_coarse_as_the_times_allow(tmp_path):
    """Hours where the times are whole hours (leads of whole days too, where xarray alone would
    write days); minutes otherwise, so that every time is stored exactly as an integer."""
    layout = _layout(
        init_times=np.array(["2000-01-01T00:30"], dtype="datetime64[ns]"),
        lead_times=np.arange(1, 3) * np.timedelta64(24, "h"),
    )
    ForecastWriter(layout, tmp_path / "f.zarr")
    write_netcdf(ForecastWriter(layout).dataset(), tmp_path / "f.nc")
    for where, variables in _raw_attrs(tmp_path).items():
        assert variables["lead_time"]["units"] == "hours", where
        assert variables["init_time"]["units"] == "minutes since 1970-01-01", where
        assert variables["valid_time"]["units"] == "minutes since 1970-01-01", where
    with netCDF4.Dataset(tmp_path / "f.nc") as nc:
        assert nc["lead_time"][:].tolist() == [24, 48]
        assert nc["init_time"][:].dtype == np.int64


def test_annotate_forecast_adds_the_cf_coordinates():
    ds = _layout().coords().drop_vars("valid_time")
    ds.attrs.clear()
    ds["temperature"] = (("init_time", "lead_time"), np.zeros((2, 4), np.float32))
    annotate_forecast(ds)
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert ds["valid_time"].attrs["standard_name"] == "time"
    assert ds["temperature"].attrs["units"] == "K"


def test_stores_open_silently_with_consolidated_metadata_that_stays_true(tmp_path):
    layout = _layout()
    store = tmp_path / "f.zarr"
    writer = ForecastWriter(layout, store)
    fields = _fields(layout, np.random.default_rng(3), slice(1, 2), slice(2, 4))
    ForecastWriter.reopen(store).write(fields, init=slice(1, 2), lead=slice(2, 4))
    with warnings.catch_warnings():
        # Stricter than the suite's filter, which lets zarr's note on consolidated metadata by.
        warnings.simplefilter("error")
        opened = xr.open_zarr(store)
        np.testing.assert_array_equal(
            opened["temperature"].values[:, 1:2, 2:], fields["temperature"]
        )
    # The consolidated copy is the metadata of every array as it stands after the writes.
    root = json.loads((store / "zarr.json").read_text())
    consolidated = root["consolidated_metadata"]["metadata"]
    for name in (*layout.variables, "member", "init_time", "lead_time", "valid_time", "level"):
        own = json.loads((store / name / "zarr.json").read_text())
        assert consolidated[name] == own, name
    assert set(consolidated) == {p.name for p in store.iterdir() if p.is_dir()}
    xr.testing.assert_identical(opened, writer.dataset())
