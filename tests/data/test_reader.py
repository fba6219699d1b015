"""Tests for weather.data.reader.

Each layout that users really have (WeatherBench2, ARCO-ERA5, CDS netCDF, cfgrib, -180..180
longitudes with short dim names) is built from one canonical reference, written as Zarr v3,
Zarr v2 and NetCDF, and must read back to exactly the reference arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from weather.data import reader
from weather.data import variables as catalogue
from weather.data.errors import ArchiveError

TIMES = pd.date_range("2020-01-01", periods=6, freq="6h").to_numpy().astype("datetime64[ns]")
LEVELS = np.array([500, 850, 1000], dtype=np.int64)
LONGITUDES = np.arange(16) * 22.5
EQUIANGULAR = np.linspace(-78.75, 78.75, 8)  # no pole rows (WB2's coarse grids)
WITH_POLES = np.linspace(-90.0, 90.0, 9)  # pole rows (ARCO-ERA5)
GAUSSIAN = np.degrees(np.arcsin(np.polynomial.legendre.leggauss(8)[0]))

LEVEL_VARIABLES = (
    "geopotential",
    "temperature",
    "u_component_of_wind",
    "v_component_of_wind",
    "specific_humidity",
)
SURFACE_VARIABLES = (
    "surface_pressure",
    "mean_sea_level_pressure",
    "2m_temperature",
    "10m_u_component_of_wind",
    "10m_v_component_of_wind",
)
STATIC_VARIABLES = ("geopotential_at_surface", "land_sea_mask")
# How CDS/cfgrib spell the canonical units.
CDS_UNITS = {"m2 s-2": "m**2 s**-2", "m s-1": "m s**-1", "kg kg-1": "kg kg**-1", "1": "(0 - 1)"}


def reference(
    latitude: np.ndarray = EQUIANGULAR, members: int = 0, static: bool = True
) -> xr.Dataset:
    """The canonical answer, built directly: distinct random float32 values on canonical dims."""
    rng = np.random.default_rng(0)
    sizes = {"member": members, "time": 6, "level": 3, "latitude": latitude.size, "longitude": 16}
    lead = ("member", "time") if members else ("time",)

    def field(dims: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray]:
        return dims, rng.standard_normal([sizes[d] for d in dims]).astype(np.float32)

    data = {n: field((*lead, "level", "latitude", "longitude")) for n in LEVEL_VARIABLES}
    data |= {n: field((*lead, "latitude", "longitude")) for n in SURFACE_VARIABLES}
    if static:
        data |= {n: field(("latitude", "longitude")) for n in STATIC_VARIABLES}
    coords: dict[str, np.ndarray] = {
        "time": TIMES,
        "level": LEVELS,
        "latitude": latitude,
        "longitude": LONGITUDES,
    }
    if members:
        coords["member"] = np.arange(members)
    ds = xr.Dataset(data, coords)
    for name in ds.data_vars:
        ds[name].attrs["units"] = catalogue.CATALOGUE[str(name)].units
    return ds


def _short_names(ds: xr.Dataset) -> xr.Dataset:
    """Catalogue names to CDS short names, units spelt as CDS does."""
    ds = ds.rename({n: catalogue.CATALOGUE[str(n)].short_name for n in ds.data_vars})
    ds = ds.rename({"z_surface": "z"}) if "z_surface" in ds else ds
    for name in ds.data_vars:
        ds[name].attrs["units"] = CDS_UNITS.get(ds[name].attrs["units"], ds[name].attrs["units"])
    return ds


def wb2_layout() -> tuple[xr.Dataset, xr.Dataset]:
    """WeatherBench2: canonical names and dims, no attributes at all."""
    ref = reference()
    raw = ref.copy()
    for name in raw.variables:
        raw[name].attrs = {}
    return raw, ref


def arco_layout() -> tuple[xr.Dataset, xr.Dataset]:
    """ARCO-ERA5: latitude 90..-90 with pole rows, plus fields outside the catalogue."""
    ref = reference(WITH_POLES)
    raw = ref.isel(latitude=slice(None, None, -1))
    raw["sea_ice_cover"] = raw["2m_temperature"] * 0.0
    return raw, ref


def cds_layout() -> tuple[xr.Dataset, xr.Dataset]:
    """CDS netCDF (2024 API): short names, valid_time, pressure_level, ensemble `number`,
    descending Gaussian latitudes, the land-sea mask along time and member."""
    ref = reference(GAUSSIAN, members=2, static=False)
    ref["land_sea_mask"] = (("latitude", "longitude"), np.eye(8, 16, dtype=np.float32))
    ref["land_sea_mask"].attrs["units"] = "1"
    raw = ref.copy()
    raw["land_sea_mask"] = raw["land_sea_mask"].expand_dims(member=2, time=6)
    raw = _short_names(raw).isel(latitude=slice(None, None, -1))
    raw = raw.rename(member="number", time="valid_time", level="pressure_level")
    raw["number"].attrs["standard_name"] = "realization"
    return raw.assign_coords(expver=("valid_time", np.ones(6, dtype=np.int64))), ref


def cfgrib_layout() -> tuple[xr.Dataset, xr.Dataset]:
    """cfgrib: initial `time` plus `step` dims, a 2-D valid_time, isobaricInhPa, `number`."""
    ref = reference(WITH_POLES, members=2)
    raw = _short_names(ref.drop_vars(STATIC_VARIABLES)).isel(latitude=slice(None, None, -1))
    inits, steps = TIMES[[0, 3]], pd.to_timedelta([0, 6, 12], unit="h").to_numpy()
    raw = raw.drop_vars("time").assign_coords(
        init=("time", np.repeat(inits, 3)), step=("time", np.tile(steps, 2))
    )
    raw = raw.set_index(time=["init", "step"]).unstack("time").rename(init="time")
    raw = raw.assign_coords(valid_time=raw["time"] + raw["step"], surface=0.0)
    raw = raw.rename(member="number", level="isobaricInhPa")
    raw["number"].attrs["standard_name"] = "realization"
    return raw, ref.drop_vars(STATIC_VARIABLES)


def dateline_layout() -> tuple[xr.Dataset, xr.Dataset]:
    """Longitudes -180..157.5, `lat`/`lon` dims, every variable in its own dim order."""
    ref = reference(GAUSSIAN)
    raw = ref.roll(longitude=8, roll_coords=True)
    lon = raw["longitude"].values
    raw = raw.assign_coords(longitude=np.where(lon >= 180, lon - 360, lon))
    assert np.all(np.diff(raw["longitude"].values) > 0)  # -180..157.5, as such archives store it
    raw = raw.rename(latitude="lat", longitude="lon")
    raw = raw.transpose("lon", "lat", "level", "time")
    raw["2m_temperature"] = raw["2m_temperature"].transpose("lat", "time", "lon")
    return raw, ref


def invariants_layout() -> tuple[xr.Dataset, xr.Dataset]:
    """CDS invariants: `z` without a level is the surface geopotential; one valid_time."""
    ref = reference(EQUIANGULAR)[list(STATIC_VARIABLES)]
    raw = _short_names(ref).expand_dims(valid_time=TIMES[:1])
    return raw, ref


LAYOUTS: dict[str, Callable[[], tuple[xr.Dataset, xr.Dataset]]] = {
    "wb2": wb2_layout,
    "arco": arco_layout,
    "cds": cds_layout,
    "cfgrib": cfgrib_layout,
    "dateline": dateline_layout,
    "invariants": invariants_layout,
}


def write(ds: xr.Dataset, directory: Path, fmt: str) -> Path:
    """Writes `ds` as the named format; Zarr v3 without consolidated metadata, v2 with it."""
    if fmt == "zarr3":
        ds.to_zarr(directory / "a.zarr", zarr_format=3, consolidated=False)
        return directory / "a.zarr"
    if fmt == "zarr2":
        ds.to_zarr(directory / "a.zarr", zarr_format=2, consolidated=True)
        return directory / "a.zarr"
    ds.to_netcdf(directory / "a.nc")
    return directory / "a.nc"


def assert_canonical(got: xr.Dataset, ref: xr.Dataset) -> None:
    """`got` holds exactly the reference arrays, with canonical dims, dtypes and attributes."""
    assert sorted(got.data_vars) == sorted(ref.data_vars)
    assert sorted(got.coords) == sorted(ref.coords)
    for name, coord in ref.coords.items():
        assert got[name].dtype == coord.dtype, name
        np.testing.assert_array_equal(got[name].values, coord.values)
    for name, expected in ref.data_vars.items():
        var = catalogue.CATALOGUE[str(name)]
        assert got[name].dims == expected.dims, name
        assert got[name].dtype == np.float32, name
        assert got[name].attrs["units"] == var.units
        assert got[name].attrs["standard_name"] == var.standard_name
        np.testing.assert_array_equal(got[name].values, expected.values, err_msg=str(name))
    assert got["latitude"].attrs["units"] == "degrees_north"
    assert got["longitude"].attrs["units"] == "degrees_east"


@pytest.mark.parametrize("fmt", ["zarr3", "zarr2", "netcdf", "memory"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_reads_to_the_canonical_arrays(layout: str, fmt: str, tmp_path: Path):
    raw, ref = LAYOUTS[layout]()
    untouched = raw.copy(deep=True)
    source = raw if fmt == "memory" else write(raw, tmp_path, fmt)
    got = reader.open_archive(source)
    if fmt != "memory":
        assert all(isinstance(v.data, dsa.Array) for v in got.data_vars.values())
    assert_canonical(got, ref)
    xr.testing.assert_identical(raw, untouched)  # the caller's Dataset is left as it was


def test_the_canonical_form_is_a_fixed_point_and_round_trips(tmp_path: Path):
    raw, _ = arco_layout()
    stored = write(raw.chunk(time=1), tmp_path, "zarr2")
    canonical = reader.open_archive(stored, chunks={"time": 2})  # two stored chunks per dask chunk
    assert canonical["temperature"].chunks[0] == (2, 2, 2)
    xr.testing.assert_identical(reader.canonicalize(canonical), canonical)
    # No stale on-disk encoding survives to break writing the canonical form again.
    canonical.to_zarr(tmp_path / "again.zarr", zarr_format=3, consolidated=False)
    xr.testing.assert_identical(
        reader.open_archive(tmp_path / "again.zarr").load(), canonical.load()
    )


def test_an_archive_larger_than_memory_opens_lazily_in_its_stored_chunks(tmp_path: Path):
    # ARCO-ERA5's layout: 0.25 deg, 90..-90, 37 levels, 150 MB stored chunks; 1000 hourly times
    # make 154 GB. Only metadata is written (compute=False), and opening must read no more.
    shape, stored = (1000, 37, 721, 1440), (1, 37, 721, 1440)
    data = dsa.zeros(shape, chunks=stored, dtype=np.float32)
    coords = {
        "time": TIMES[0] + np.arange(shape[0]) * np.timedelta64(1, "h"),
        "level": np.arange(37) * 25 + 100,
        "latitude": np.linspace(90.0, -90.0, 721),
        "longitude": np.arange(1440) * 0.25,
    }
    huge = xr.Dataset({"temperature": (LEVEL_DIMS, data)}, coords)
    huge.to_zarr(tmp_path / "huge.zarr", zarr_format=3, consolidated=False, compute=False)
    got = reader.open_archive(tmp_path / "huge.zarr")
    assert got["temperature"].nbytes > 150e9
    # dask's "auto" would split each 150 MB stored chunk; the reader keeps them whole.
    assert got["temperature"].chunks == tuple(
        (s,) * (n // s) for n, s in zip(shape, stored, strict=True)
    )
    np.testing.assert_array_equal(got["latitude"], np.linspace(-90.0, 90.0, 721))
    window = reader.select_window(got, "2020-01-01", "2020-01-01T12", check_finite=False)
    assert window.sizes["time"] == 13


def test_cfgrib_analysis_time_is_the_valid_time():
    ref = reference()
    raw = ref.assign_coords(time=TIMES - np.timedelta64(6, "h"), step=np.timedelta64(6, "h"))
    raw = raw.assign_coords(valid_time=("time", TIMES))
    assert_canonical(reader.canonicalize(raw), ref)


def _unreadable(shape: tuple[int, ...]) -> dsa.Array:
    """A dask array that fails the test if anything computes it."""

    def explode() -> np.ndarray:
        raise AssertionError("the reader computed data it should have left lazy")

    return dsa.from_delayed(dask.delayed(explode)(), shape, dtype=np.float32)


def test_canonicalize_never_computes_data():
    raw, _ = dateline_layout()
    for name, da in raw.data_vars.items():
        units = "degC" if name == "2m_temperature" else "K"
        raw[name] = (da.dims, _unreadable(da.shape), {"units": units} if units == "degC" else {})
    got = reader.canonicalize(raw)
    assert got["2m_temperature"].dims == ("time", "latitude", "longitude")
    assert all(isinstance(v.data, dsa.Array) for v in got.data_vars.values())


def test_units_are_converted_to_the_catalogue_units():
    ref = reference()
    raw = ref.copy(deep=True)
    conversions = {  # name: (units, value in those units from the canonical value)
        "temperature": ("degC", lambda x: x - 273.15),
        "2m_temperature": ("K", lambda x: x),
        "surface_pressure": ("hPa", lambda x: x / 100.0),
        "mean_sea_level_pressure": ("mbar", lambda x: x / 100.0),
        "geopotential": ("gpm", lambda x: x / 9.80665),
        "geopotential_at_surface": ("m", lambda x: x / 9.80665),
        "specific_humidity": ("g kg**-1", lambda x: x * 1000.0),
        "u_component_of_wind": ("m/s", lambda x: x),
        "land_sea_mask": ("%", lambda x: x * 100.0),
    }
    for name, (units, to_units) in conversions.items():
        raw[name] = to_units(ref[name].astype(np.float64)).assign_attrs(units=units)
    raw = raw.assign_coords(level=("level", LEVELS * 100, {"units": "Pa"}))
    got = reader.canonicalize(raw)
    assert got["level"].dtype == np.int64
    np.testing.assert_array_equal(got["level"], LEVELS)
    for name in conversions:
        assert got[name].dtype == np.float32
        assert got[name].attrs["units"] == catalogue.CATALOGUE[name].units
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_fractional_levels_stay_float():
    raw = reference().assign_coords(level=[500.5, 850.0, 1000.0])
    got = reader.canonicalize(raw)
    assert got["level"].dtype == np.float64


def test_variables_and_levels_are_selected_by_canonical_or_short_name(tmp_path: Path):
    raw, ref = cds_layout()
    path = write(raw, tmp_path, "zarr3")
    got = reader.open_archive(path, variables=["t", "2m_temperature"], levels=[1000, 500])
    assert list(got.data_vars) == ["temperature", "2m_temperature"]
    np.testing.assert_array_equal(got["level"], [500, 1000])
    np.testing.assert_array_equal(got["temperature"], ref["temperature"].sel(level=[500, 1000]))


def test_single_level_squeezed_by_cfgrib_gets_its_level_back():
    ref = reference()[["temperature"]].isel(level=[1])
    raw = ref.isel(level=0).rename(level="isobaricInhPa")
    assert raw["temperature"].dims == ("time", "latitude", "longitude")
    got = reader.canonicalize(raw)
    assert_canonical(got, ref)


LEVEL_DIMS = ("time", "level", "latitude", "longitude")


def _with(ds: xr.Dataset, name: str, dims: tuple[str, ...], units: str = "K") -> xr.Dataset:
    """`ds` with variable `name` replaced by zeros on `dims` (new dims get size 2)."""
    shape = [ds.sizes.get(d, 2) for d in dims]
    return ds.assign({name: (dims, np.zeros(shape, np.float32), {"units": units})})


# Each unusable archive (a change to a good one) and the message that must name the culprit.
BAD_ARCHIVES: dict[str, tuple[Callable[[xr.Dataset], xr.Dataset], str]] = {
    "latitude out of range": (
        lambda ds: ds.assign_coords(latitude=ds["latitude"] + 100),
        r"'latitude' has values outside \[-90, 90\]",
    ),
    "duplicated latitude": (
        lambda ds: ds.assign_coords(latitude=np.r_[EQUIANGULAR[:-1], EQUIANGULAR[0]]),
        r"'latitude' has duplicated values: \[-78.75\]",
    ),
    "duplicated longitude after wrapping": (
        lambda ds: ds.assign_coords(longitude=np.r_[LONGITUDES[:-1], -LONGITUDES[15]]),
        r"'longitude' has duplicated values: \[22.5\]",
    ),
    "no latitude values": (lambda ds: ds.drop_vars("latitude"), "'latitude' is missing"),
    "no longitude values": (lambda ds: ds.drop_vars("longitude"), "'longitude' is missing"),
    "no level values": (lambda ds: ds.drop_vars("level"), "'level' is missing"),
    "no time values": (lambda ds: ds.drop_vars("time"), "'time' is missing"),
    "numeric time": (
        lambda ds: ds.assign_coords(time=np.arange(6.0)),
        "'time' has dtype float64, not datetime64",
    ),
    "unknown dim": (
        lambda ds: _with(ds, "temperature", ("time", "height", "latitude", "longitude")),
        r"'temperature' has unknown dim\(s\) \['height'\]",
    ),
    "level field without levels": (
        lambda ds: _with(ds, "temperature", ("time", "latitude", "longitude")),
        r"'temperature' lacks dim\(s\) \['level'\]",
    ),
    "surface field on levels": (
        lambda ds: _with(ds, "2m_temperature", LEVEL_DIMS),
        "'2m_temperature' is a surface field but has a 'level' dim",
    ),
    "unknown units": (
        lambda ds: _with(ds, "temperature", LEVEL_DIMS, "ft"),
        "'temperature' has units 'ft', which the reader cannot convert to 'K'",
    ),
    "units of another quantity": (
        lambda ds: _with(ds, "temperature", LEVEL_DIMS, "Pa"),
        "'temperature' has units 'Pa', which are not units of 'K'",
    ),
    "level in metres": (
        lambda ds: ds.assign_coords(level=("level", LEVELS, {"units": "m"})),
        "'level' has units 'm'",
    ),
    "short and long name": (
        lambda ds: ds.assign(t=ds["temperature"]),
        r"\['temperature'\] appear twice",
    ),
    "lat and latitude": (
        lambda ds: ds.rename(latitude="lat").assign_coords(latitude=("lat", EQUIANGULAR)),
        "'latitude' is ambiguous",
    ),
    "no catalogue variable": (
        lambda ds: xr.Dataset({"rh": ds["temperature"]}),
        r"no catalogue variable: it has \['rh'\]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_unusable_archives_are_rejected_naming_the_culprit(case: str):
    change, message = BAD_ARCHIVES[case]
    with pytest.raises(ArchiveError, match=message):
        reader.canonicalize(change(reference()))


def test_an_ensemble_variable_without_members_is_rejected():
    raw = reference(members=2)
    raw["2m_temperature"] = raw["2m_temperature"].isel(member=0, drop=True)
    with pytest.raises(ArchiveError, match=r"'2m_temperature' lacks dim\(s\) \['member'\]"):
        reader.canonicalize(raw)


def test_missing_variables_and_levels_list_what_exists(tmp_path: Path):
    raw = reference()[["temperature", "surface_pressure"]]
    with pytest.raises(ArchiveError, match=r"'t2m' is missing: .*\['surface_pressure', 'tem"):
        reader.open_archive(raw, variables=["t2m"])
    with pytest.raises(ArchiveError, match="'relative_humidity' is not in the catalogue"):
        reader.open_archive(raw, variables=["relative_humidity"])
    with pytest.raises(ArchiveError, match=r"'level' lacks \[700\] hPa: .*\[500, 850, 1000\]"):
        reader.open_archive(raw, levels=[700, 850])
    with pytest.raises(ArchiveError, match="'level' is missing"):
        reader.open_archive(raw, variables=["sp"], levels=[850])
    with pytest.raises(ArchiveError, match="does not exist"):
        reader.open_archive(tmp_path / "absent.zarr")
    (tmp_path / "notes.txt").write_text("not an archive")
    with pytest.raises(ArchiveError, match=r"notes\.txt' cannot be read as Zarr, NetCDF or GRIB"):
        reader.open_archive(tmp_path / "notes.txt")
    with pytest.raises(ArchiveError, match="is a directory but not a Zarr store"):
        reader.open_archive(tmp_path)


def test_a_broken_variable_that_is_not_asked_for_does_not_block_the_others():
    raw = _with(reference(), "temperature", LEVEL_DIMS, "ft")
    got = reader.canonicalize(raw, variables=["surface_pressure"])
    assert list(got.data_vars) == ["surface_pressure"]


def _timed(times: np.ndarray) -> xr.Dataset:
    ds = reference()[["2m_temperature", "land_sea_mask"]].isel(time=np.arange(times.size) % 6)
    return ds.assign_coords(time=times.astype("datetime64[ns]"))


def test_select_window_returns_the_requested_times():
    ds = reference()
    window = reader.select_window(ds, "2020-01-01T06", "2020-01-01T18")
    xr.testing.assert_identical(window, ds.isel(time=[1, 2, 3]))
    twelve = reader.select_window(ds, "2020-01-01", "2020-01-02", step=np.timedelta64(12, "h"))
    np.testing.assert_array_equal(twelve["time"], TIMES[[0, 2, 4]])
    hourly = _timed(np.datetime64("2020-01-01") + np.arange(25) * np.timedelta64(1, "h"))
    assert reader.time_step(hourly) == np.timedelta64(1, "h")
    window = reader.select_window(
        hourly,
        pd.Timestamp("2020-01-01"),
        np.datetime64("2020-01-02"),
        step=np.timedelta64(12, "h"),
    )
    assert window.sizes["time"] == 3


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        ([0, 6, 6, 12], r"'time' has duplicated values: \[2020-01-01T06:00\]"),
        ([0, 12, 6, 18], r"'time' is not increasing: \[2020-01-01T12:00\] is followed by"),
        ([0, 5, 10, 15], "'time' has a step of 5 h, which does not divide 12 h"),
        ([0, 6, 15, 21], "'time' is irregular: a difference of 9 h"),
        ([0, 6, 18, 24], r"lacks 1 time\(s\) of the window .*: \[2020-01-01T12:00\]"),
    ],
)
def test_select_window_rejects_unusable_time_axes(hours: list[int], message: str):
    ds = _timed(np.datetime64("2020-01-01T00", "ns") + np.array(hours) * np.timedelta64(1, "h"))
    with pytest.raises(ArchiveError, match=message):
        reader.select_window(ds, "2020-01-01T00", "2020-01-02T00")


def test_select_window_rejects_bad_requests():
    ds = reference()
    with pytest.raises(ArchiveError, match="window step 9 h is not a positive multiple"):
        reader.select_window(ds, "2020-01-01", "2020-01-01T18", step=np.timedelta64(9, "h"))
    with pytest.raises(ArchiveError, match="is before its start"):
        reader.select_window(ds, "2020-01-01T12", "2020-01-01")
    with pytest.raises(ArchiveError, match="not a whole number of 12 h steps"):
        reader.select_window(ds, "2020-01-01", "2020-01-01T18", step=np.timedelta64(12, "h"))
    with pytest.raises(ArchiveError, match=r"lacks 4 time\(s\).*the archive spans"):
        reader.select_window(ds, "2020-01-03", "2020-01-03T18")
    with pytest.raises(ArchiveError, match="'time' is missing"):
        reader.select_window(ds[["land_sea_mask"]], "2020-01-01", "2020-01-01")


def test_select_window_names_the_first_non_finite_value():
    ds = reference().copy(deep=True)
    ds["temperature"][4, 1, 2, 3] = np.nan
    ds["temperature"][5, 0, 0, 0] = np.inf
    message = r"'temperature' has NaN .* 2 time\(s\), first at \[2020-01-02T00:00\]"
    with pytest.raises(ArchiveError, match=message):
        reader.select_window(ds, "2020-01-01", "2020-01-02T06")
    # NaN outside the window is no concern of this window.
    reader.select_window(ds, "2020-01-01", "2020-01-01T18")
    reader.select_window(ds, "2020-01-01", "2020-01-02T06", check_finite=False)
    ds["land_sea_mask"][0, 0] = -np.inf
    with pytest.raises(ArchiveError, match=r"'land_sea_mask' \(static\) has NaN"):
        reader.select_window(ds, "2020-01-01", "2020-01-01T18")


def test_the_finite_check_computes_the_window_only():
    ds = reference()[["2m_temperature"]]
    good = dsa.from_array(ds["2m_temperature"].values[1:], chunks=(1, 8, 16))
    lazy = dsa.concatenate([_unreadable((1, 8, 16)), good])
    ds["2m_temperature"] = (ds["2m_temperature"].dims, lazy)
    window = reader.select_window(ds, "2020-01-01T06", "2020-01-02T06")
    np.testing.assert_array_equal(window["2m_temperature"], reference()["2m_temperature"][1:])


def test_open_archives_joins_runs_in_time_with_a_gap_no_window_straddles(tmp_path: Path):
    from support import synthetic_archive

    from weather.data.windows import window_indices

    first = synthetic_archive(days=3, start="2001-01-01", seed=1)
    second = synthetic_archive(days=3, start="2001-01-05", seed=2)  # one day after the first ends
    paths = []
    for i, ds in enumerate((second, first)):  # any order in, time order out
        path = tmp_path / f"part{i}.zarr"
        ds.to_zarr(path, consolidated=True)
        paths.append(path)
    joined = reader.open_archives(paths)
    expected = xr.concat([first, second], dim="time", data_vars="minimal")
    np.testing.assert_array_equal(joined["time"].values, expected["time"].values)
    for name in ("temperature", "surface_pressure", "geopotential_at_surface"):
        np.testing.assert_array_equal(joined[name].values, expected[name].values)
    assert "time" not in joined["geopotential_at_surface"].dims
    windows = window_indices(joined["time"].values, start="2001-01-01", end="2001-01-08T18")
    per_part = 2 * len(window_indices(first["time"].values, start="2001", end="2002"))
    assert len(windows) == per_part  # the gap removes every window across the seam


def test_open_archives_rejects_overlap_and_grid_mismatch(tmp_path: Path):
    from support import synthetic_archive

    a = synthetic_archive(days=3, start="2001-01-01")
    b = synthetic_archive(days=3, start="2001-01-02")
    with pytest.raises(ArchiveError, match="overlaps"):
        reader.open_archives([a, b])
    c = synthetic_archive(n_lat=8, n_lon=16, days=3, start="2001-02-01")
    with pytest.raises(ArchiveError, match="'latitude'"):
        reader.open_archives([a, c])
    with pytest.raises(ArchiveError, match="at least one"):
        reader.open_archives([])


def test_load_in_place_equals_load_and_returns_numpy(tmp_path: Path):
    from support import synthetic_archive

    parts = []
    for i, start in enumerate(("2001-01-01", "2001-01-05")):
        path = tmp_path / f"p{i}.zarr"
        synthetic_archive(days=3, start=start, seed=i).to_zarr(path, consolidated=True)
        parts.append(path)
    lazy = reader.open_archives(parts)
    loaded = reader.load_in_place(lazy)
    xr.testing.assert_identical(loaded, lazy.load())
    assert all(isinstance(v.data, np.ndarray) for v in loaded.variables.values())


def test_precipitation_in_metres_is_kept_and_in_millimetres_converted():
    """ "m" is both precipitation's own unit and a geopotential height (converted with g):
    a field already in its catalogue units is left alone whatever the table would do."""
    ref = reference()
    rain = (ref["2m_temperature"] * 0 + 2e-3).astype(np.float32)  # 2 mm in m
    for units, values in (("m", rain), ("mm", rain * 1000.0)):
        raw = ref.assign(
            total_precipitation_12hr=values.assign_attrs(units=units),
            toa_incident_solar_radiation=(rain * 1e9).assign_attrs(units="J m**-2"),
        )
        got = reader.canonicalize(raw)
        np.testing.assert_allclose(got["total_precipitation_12hr"], rain, rtol=1e-6)
        assert got["total_precipitation_12hr"].attrs["units"] == "m"
        assert got["toa_incident_solar_radiation"].attrs["units"] == "J m-2"


def _hourly_precipitation(hours: np.ndarray, *, lazy: bool = False) -> xr.Dataset:
    """ERA5's hourly ``tp`` (m) as the CDS names it, and ``t2m``, on a 2 x 3 grid at the hours."""
    rng = np.random.default_rng(1)
    values = rng.uniform(0.0, 1e-3, (hours.size, 2, 3)).astype(np.float32)
    data: np.ndarray | dsa.Array = dsa.from_array(values, chunks=(7, 2, 3)) if lazy else values
    times = np.datetime64("2020-01-01T00", "ns") + hours * np.timedelta64(1, "h")
    dims = ("time", "latitude", "longitude")
    return xr.Dataset(
        {"tp": (dims, data, {"units": "m"}), "t2m": (dims, values + 280.0, {"units": "K"})},
        {"time": times, "latitude": [-45.0, 45.0], "longitude": [0.0, 120.0, 240.0]},
    )


@pytest.mark.parametrize("lazy", [False, True])
def test_hourly_precipitation_is_summed_over_the_12_hours_ending_at_each_time(lazy: bool):
    hours = np.setdiff1d(np.arange(48), [30, 31])  # a two-hour gap in the archive
    raw = _hourly_precipitation(hours, lazy=lazy)
    got = reader.canonicalize(raw)
    assert set(got.data_vars) == {"total_precipitation_12hr", "2m_temperature"}
    total = got["total_precipitation_12hr"]
    assert isinstance(total.data, dsa.Array) == lazy
    assert total.attrs["units"] == "m"
    hourly = dict(zip(hours.tolist(), raw["tp"].values, strict=True))
    # Only the times with all 12 hours ending there: not the archive's first 11 hours, nor the
    # 11 after the gap (32-42), whose sums would reach into it.
    complete = [h for h in hours.tolist() if all(h - k in hourly for k in range(12))]
    assert complete == [*range(11, 30), *range(43, 48)]
    expected_times = np.datetime64("2020-01-01T00", "ns") + np.array(complete) * np.timedelta64(
        1, "h"
    )
    np.testing.assert_array_equal(got["time"].values, expected_times)
    values = total.values
    for i, hour in enumerate(complete):
        expected = np.sum([hourly[hour - k].astype(np.float64) for k in range(12)], axis=0)
        # float32 sums of 12 values below 1e-3: rounding stays near 12 * 2**-24 relative.
        np.testing.assert_allclose(values[i], expected, rtol=1e-6, err_msg=str(hour))
    # The other variables travel with the same times; read without precipitation, keep all.
    np.testing.assert_array_equal(
        got["2m_temperature"].values, raw["t2m"].sel(time=expected_times).values
    )
    alone = reader.canonicalize(raw, variables=["2m_temperature"])
    np.testing.assert_array_equal(alone["time"].values, raw["time"].values)


def test_hourly_precipitation_stays_lazy():
    raw = _hourly_precipitation(np.arange(24))
    raw["tp"] = (raw["tp"].dims, _unreadable(raw["tp"].shape), {"units": "m"})
    assert isinstance(reader.canonicalize(raw)["total_precipitation_12hr"].data, dsa.Array)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("six-hourly", r"'tp'.*needs hourly times; this archive's are 6 h apart"),
        ("both", r"'total_precipitation_12hr'.*appear twice"),
        ("no time", r"'tp' has no time axis"),
        ("duplicated", r"'time' has duplicated values: \[2020-01-01T05:00\]"),
        ("too short", r"'tp': the archive holds no 12 consecutive hours"),
    ],
)
def test_hourly_precipitation_that_cannot_be_summed_is_refused(case: str, message: str):
    raw = _hourly_precipitation(np.arange(24))
    if case == "six-hourly":
        raw = raw.isel(time=slice(None, None, 6))
    elif case == "both":
        raw["total_precipitation_12hr"] = raw["tp"]
    elif case == "no time":
        raw = raw.isel(time=0, drop=True)
    elif case == "too short":
        raw = raw.isel(time=slice(0, 11))
    else:
        raw = raw.isel(time=[0, 5, 5, 6])
    with pytest.raises(ArchiveError, match=message):
        reader.canonicalize(raw)
