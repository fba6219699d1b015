"""GRIB2 output (weather/data/grib.py): every value read back through cfgrib and xarray equals
the Zarr forecast's within the packing step; every message's parameter, level, ensemble and time
keys read back with ecCodes; what GRIB2 cannot encode is refused by name."""

from __future__ import annotations

import itertools

import eccodes
import numpy as np
import pytest
import xarray as xr

from weather.data.grib import (
    HEIGHT_ABOVE_GROUND,
    ISOBARIC,
    PARAMETERS,
    packing_step,
    without_grib2_code,
    write_grib2,
)
from weather.data.layout import ForecastLayout, ForecastWriter
from weather.data.variables import CATALOGUE

LEVELS = (500, 850)
LEVEL_VARIABLES = ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind")
VARIABLES = (*LEVEL_VARIABLES, "surface_pressure")
# Typical value and spread of each field, so that packing meets realistic ranges.
CLIMATE = {
    "geopotential": (5.0e4, 3.0e3),
    "temperature": (250.0, 15.0),
    "u_component_of_wind": (5.0, 12.0),
    "v_component_of_wind": (0.0, 8.0),
    "surface_pressure": (1.0e5, 1.5e3),
}
INITS = np.array(["2001-01-03T00", "2001-01-04T12"], dtype="datetime64[ns]")
LEADS = np.array([12, 24, 36], dtype="timedelta64[h]")
MEMBERS = np.arange(3)
BITS = 24


def _zarr_forecast(tmp_path, latitude, longitude, *, unwritten_lead=False) -> xr.Dataset:
    """A forecast written by `ForecastWriter` to a Zarr store and opened from it."""
    layout = ForecastLayout.of(
        VARIABLES,
        LEVEL_VARIABLES,
        members=MEMBERS,
        init_times=INITS,
        lead_times=LEADS,
        latitude=latitude,
        longitude=longitude,
        levels=LEVELS,
    )
    writer = ForecastWriter(layout, tmp_path / "f.zarr")
    rng = np.random.default_rng(7)
    leads = slice(0, LEADS.size - 1) if unwritten_lead else slice(None)
    n_leads = len(range(*leads.indices(LEADS.size)))
    fields = {}
    for name in VARIABLES:
        mean, spread = CLIMATE[name]
        shape = (MEMBERS.size, INITS.size, n_leads, *layout.shape(name)[3:])
        fields[name] = (mean + spread * rng.standard_normal(shape)).astype(np.float32)
    writer.write(fields, lead=leads)
    return xr.open_zarr(tmp_path / "f.zarr")


TEXT_KEYS = ("shortName", "units", "packingType", "gridType")


def _messages(path) -> list[dict]:
    keys = (
        "discipline", "parameterCategory", "parameterNumber", "typeOfFirstFixedSurface",
        "scaleFactorOfFirstFixedSurface", "scaledValueOfFirstFixedSurface", "shortName", "units",
        "productDefinitionTemplateNumber", "typeOfEnsembleForecast", "perturbationNumber",
        "numberOfForecastsInEnsemble", "typeOfGeneratingProcess", "dataDate", "dataTime",
        "indicatorOfUnitOfTimeRange", "forecastTime", "packingType", "bitsPerValue",
        "binaryScaleFactor", "decimalScaleFactor", "gridType", "Ni", "Nj", "jScansPositively",
        "editionNumber", "centre",
    )  # fmt: skip
    out = []
    with open(path, "rb") as f:
        while (handle := eccodes.codes_grib_new_from_file(f)) is not None:
            try:
                message = {}
                for key in keys:
                    missing = eccodes.codes_is_missing(handle, key)
                    kind = str if key in TEXT_KEYS else int
                    message[key] = None if missing else eccodes.codes_get(handle, key, kind)
                message["values"] = eccodes.codes_get_values(handle)
                message["latitudes"] = eccodes.codes_get_array(handle, "latitudes")
                message["longitudes"] = eccodes.codes_get_array(handle, "longitudes")
            finally:
                eccodes.codes_release(handle)
            out.append(message)
    return out


def _cfgrib(path, type_of_level: str) -> xr.Dataset:
    """One hypercube of the file through cfgrib, renamed to the forecast layout's dims."""
    ds = xr.open_dataset(
        path,
        engine="cfgrib",
        backend_kwargs={"indexpath": "", "filter_by_keys": {"typeOfLevel": type_of_level}},
        decode_timedelta=True,
    )
    names = {"number": "member", "time": "init_time", "step": "lead_time"}
    names |= {"isobaricInhPa": "level"} if "isobaricInhPa" in ds.dims else {}
    return ds.rename(names)


GRIDS = {
    # The WB2 64x32 layout in miniature: latitudes ascending, longitudes from 0.
    "ascending": (np.linspace(-78.75, 78.75, 8), np.arange(0.0, 360.0, 22.5)),
    # ARCO-ERA5's order: latitudes descending (90 .. -90, poles included).
    "descending": (np.linspace(90.0, -90.0, 9), np.arange(0.0, 360.0, 30.0)),
}


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_every_value_reads_back_through_cfgrib_within_the_packing_step(tmp_path, grid):
    latitude, longitude = GRIDS[grid]
    zarr_forecast = _zarr_forecast(tmp_path, latitude, longitude)
    path = tmp_path / "f.grib2"
    n = write_grib2(zarr_forecast, path)
    per_state = len(LEVEL_VARIABLES) * len(LEVELS) + 1
    assert n == INITS.size * MEMBERS.size * LEADS.size * per_state
    want = zarr_forecast.load()
    isobaric, surface = _cfgrib(path, "isobaricInhPa"), _cfgrib(path, "surface")
    assert set(isobaric.data_vars) == {CATALOGUE[v].short_name for v in LEVEL_VARIABLES}
    assert set(surface.data_vars) == {"sp"}
    for got in (isobaric, surface):
        np.testing.assert_array_equal(got["member"].values, MEMBERS)
        np.testing.assert_array_equal(got["init_time"].values, INITS)
        np.testing.assert_array_equal(got["lead_time"].values, LEADS.astype("m8[ns]"))
        np.testing.assert_array_equal(got["latitude"].values, latitude)
        np.testing.assert_array_equal(got["longitude"].values, longitude)
        np.testing.assert_array_equal(got["valid_time"].values, want["valid_time"].values)
    np.testing.assert_array_equal(np.sort(isobaric["level"].values), LEVELS)
    for name in VARIABLES:
        got = (isobaric if name in LEVEL_VARIABLES else surface)[CATALOGUE[name].short_name]
        assert got.attrs["units"] == CATALOGUE[name].units.replace("m2", "m**2").replace(
            "s-2", "s**-2"
        ).replace("s-1", "s**-1"), name
        expected = want[name]
        got = got.transpose(*expected.dims)
        if "level" in expected.dims:
            got = got.sel(level=expected["level"].values)
        x = expected.values.astype(np.float64)
        # Per field (member, init, lead, level): simple packing is exact to within its step
        # 2**E < 2 * range / (2**24 - 1) (module docstring); cfgrib then hands back float32,
        # which adds up to half a float32 spacing of the largest value.
        fields = x.reshape(-1, latitude.size * longitude.size)
        steps = np.array([packing_step(f, BITS) for f in fields])
        spread = fields.max(axis=1) - fields.min(axis=1)
        assert (steps < 2 * spread / (2**BITS - 1)).all()
        rounding = np.spacing(np.abs(fields).max(axis=1).astype(np.float32)).astype(np.float64)
        error = np.abs(got.values.astype(np.float64) - x).reshape(fields.shape).max(axis=1)
        assert (error <= steps + rounding).all(), (name, (error / (steps + rounding)).max())


def test_every_message_has_the_parameter_level_ensemble_and_time_codes(tmp_path):
    latitude, longitude = GRIDS["descending"]
    zarr_forecast = _zarr_forecast(tmp_path, latitude, longitude)
    path = tmp_path / "f.grib2"
    write_grib2(zarr_forecast, path)
    messages = _messages(path)
    want = zarr_forecast.load()
    # Loops: init, member, lead, then the fields (variable, level) in the dataset's order.
    fields = [
        (n, lv) for n in want.data_vars for lv in (LEVELS if n in LEVEL_VARIABLES else [None])
    ]
    order = list(itertools.product(range(INITS.size), MEMBERS, range(LEADS.size), fields))
    assert len(messages) == len(order)
    expected_codes = {
        "geopotential": (0, 3, 4, "z", "m**2 s**-2"),
        "temperature": (0, 0, 0, "t", "K"),
        "u_component_of_wind": (0, 2, 2, "u", "m s**-1"),
        "v_component_of_wind": (0, 2, 3, "v", "m s**-1"),
        "surface_pressure": (0, 3, 0, "sp", "Pa"),
    }
    for message, (i, member, s, (name, level)) in zip(messages, order, strict=True):
        discipline, category, number, short_name, units = expected_codes[str(name)]
        assert (message["discipline"], message["parameterCategory"]) == (discipline, category)
        assert (message["parameterNumber"], message["shortName"]) == (number, short_name)
        assert message["units"] == units
        if level is None:  # ground or water surface: no value
            assert message["typeOfFirstFixedSurface"] == 1
            assert message["scaledValueOfFirstFixedSurface"] is None
        else:  # isobaric surface, the level in Pa
            assert message["typeOfFirstFixedSurface"] == 100
            assert message["scaleFactorOfFirstFixedSurface"] == 0
            assert message["scaledValueOfFirstFixedSurface"] == 100 * level
        assert message["editionNumber"] == 2
        assert message["productDefinitionTemplateNumber"] == 1  # individual ensemble forecast
        assert message["typeOfGeneratingProcess"] == 4  # ensemble forecast
        assert message["typeOfEnsembleForecast"] == 3  # positively perturbed
        assert message["perturbationNumber"] == member
        assert message["numberOfForecastsInEnsemble"] == MEMBERS.size
        init = INITS[i].astype("datetime64[m]").item()
        assert message["dataDate"] == int(init.strftime("%Y%m%d"))
        assert message["dataTime"] == int(init.strftime("%H%M"))
        assert message["indicatorOfUnitOfTimeRange"] == 1  # hours
        assert message["forecastTime"] == int(LEADS[s] / np.timedelta64(1, "h"))
        assert (message["packingType"], message["bitsPerValue"]) == ("grid_simple", BITS)
        assert message["decimalScaleFactor"] == 0
        assert (message["gridType"], message["Ni"], message["Nj"]) == ("regular_ll", 12, 9)
        assert message["jScansPositively"] == 0  # latitudes descend, as stored
        assert message["centre"] == 255  # no WMO originating centre
        field = want[name].isel(member=member, init_time=i, lead_time=s)
        if level is not None:
            field = field.sel(level=level)
        x = field.values.astype(np.float64).ravel()
        np.testing.assert_array_equal(message["latitudes"], np.repeat(latitude, longitude.size))
        np.testing.assert_array_equal(message["longitudes"], np.tile(longitude, latitude.size))
        # The file's own binary scale E: every value within its step 2**E, and that step
        # within the bound derived in the module docstring.
        step = 2.0 ** message["binaryScaleFactor"]
        assert step < 2 * (x.max() - x.min()) / (2**BITS - 1)
        assert np.abs(message["values"] - x).max() <= step


def test_every_grib_code_names_a_catalogue_variable_on_its_kind_of_surface(tmp_path):
    """Each entry of the table, encoded alone: ecCodes names it as the table says, with the
    catalogue's units, and level variables (and only they) sit on isobaric surfaces."""
    for name, parameter in PARAMETERS.items():
        entry = CATALOGUE[name]
        assert entry.has_levels == (parameter.surface == ISOBARIC), name
        levels = (500,) if entry.has_levels else None
        layout = ForecastLayout.of(
            (name,),
            (name,) if entry.has_levels else (),
            members=[0],
            init_times=INITS[:1],
            lead_times=LEADS[:1],
            latitude=[10.0, 0.0],
            longitude=[0.0, 90.0],
            levels=levels,
        )
        writer = ForecastWriter(layout)
        writer.write({name: np.ones(layout.shape(name), np.float32)})
        path = tmp_path / f"{name}.grib2"
        assert write_grib2(writer.dataset(), path) == 1
        [message] = _messages(path)
        assert message["shortName"] == parameter.short_name, name
        units = message["units"].replace("**", "").replace("(0 - 1)", "1")
        assert units == entry.units, name
        if parameter.surface == HEIGHT_ABOVE_GROUND:
            assert message["scaledValueOfFirstFixedSurface"] == parameter.height, name
        np.testing.assert_array_equal(message["values"], 1.0)  # a constant field, exact


def test_unwritten_leads_are_missing_values(tmp_path):
    latitude, longitude = GRIDS["ascending"]
    zarr_forecast = _zarr_forecast(tmp_path, latitude, longitude, unwritten_lead=True)
    path = tmp_path / "f.grib2"
    write_grib2(zarr_forecast, path)
    got = _cfgrib(path, "surface")["sp"].transpose(*zarr_forecast["surface_pressure"].dims)
    assert np.isnan(got.values[:, :, -1]).all()
    assert np.isfinite(got.values[:, :, :-1]).all()


def test_a_region_across_the_meridian_keeps_its_longitudes_eastward(tmp_path):
    """A box from 300 to 60 degrees east (as the service cuts it): the grid runs eastward from
    its western edge. (cfgrib labels such grids wrongly, ecmwf/cfgrib#402: ecCodes' own
    longitudes are the check.)"""
    longitude = np.array([300.0, 330.0, 0.0, 30.0, 60.0])
    zarr_forecast = _zarr_forecast(tmp_path, np.array([30.0, 0.0]), longitude)
    path = tmp_path / "f.grib2"
    write_grib2(zarr_forecast, path)
    first = _messages(path)[0]
    np.testing.assert_array_equal(first["longitudes"] % 360.0, np.tile(longitude, 2))
    x = zarr_forecast["geopotential"].isel(member=0, init_time=0, lead_time=0, level=0).values
    assert np.abs(first["values"] - x.ravel()).max() <= 2.0 ** first["binaryScaleFactor"]


def test_what_grib2_cannot_encode_is_named_before_a_file_is_made(tmp_path):
    latitude, longitude = GRIDS["ascending"]
    ds = _zarr_forecast(tmp_path, latitude, longitude).load()
    path = tmp_path / "f.grib2"
    cases = {
        "total_precipitation": ds.assign(total_precipitation=ds["surface_pressure"]),
        "latitude": ds.assign_coords(latitude=np.sin(np.linspace(-1.4, 1.4, latitude.size)) * 90),
        "lead_time": ds.assign_coords(lead_time=LEADS.astype("m8[m]") + np.timedelta64(30, "m")),
        "member": ds.assign_coords(member=[0, 1, 300]),
        "bits_per_value": ds,
    }
    for what, bad in cases.items():
        bits = 40 if what == "bits_per_value" else BITS
        with pytest.raises(ValueError, match=what):
            write_grib2(bad, path, bits_per_value=bits)
        assert not path.exists(), what
    assert without_grib2_code(["temperature", "total_precipitation"]) == ["total_precipitation"]
