"""Conservative regridding of archives against hand-computed answers, and `weather data regrid`."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from support import synthetic_archive

from weather.cli import main
from weather.data import grid
from weather.data.errors import ArchiveError
from weather.data.reader import open_archive
from weather.data.regrid import (
    MIN_VALID_FRACTION,
    parse_grid,
    regrid_dataset,
    write_archive,
)

U64 = np.finfo(np.float64).eps / 2  # unit roundoff of float64
U32 = np.finfo(np.float32).eps / 2


def gaussian(n_lon: int, n_lat: int) -> tuple[np.ndarray, np.ndarray]:
    return grid.gaussian_latitudes(n_lat)[0], 360.0 / n_lon * np.arange(n_lon)


def band_areas(latitude: np.ndarray) -> np.ndarray:
    """Areas (in sin latitude) of equiangular rows by hand: centre +- half the spacing, pole rows
    cut at the pole; Gaussian rows: their quadrature weights."""
    if not grid.is_equiangular(latitude):
        return grid.gaussian_latitudes(latitude.size)[1]
    half = 0.5 * (latitude[1] - latitude[0])
    top, bottom = np.clip(latitude + half, -90, 90), np.clip(latitude - half, -90, 90)
    return np.sin(np.deg2rad(top)) - np.sin(np.deg2rad(bottom))


def global_mean(values: np.ndarray, latitude: np.ndarray) -> np.ndarray:
    """Area-weighted mean over the last two axes [lat, lon] of an evenly spaced longitude grid."""
    w = band_areas(latitude)[:, None]
    return (np.asarray(values, np.float64) * w).sum((-2, -1)) / (w.sum() * values.shape[-1])


def dataset(latitude, longitude, values, name="temperature", dims=None) -> xr.Dataset:
    dims = (
        dims
        or {
            2: ("latitude", "longitude"),
            3: ("time", "latitude", "longitude"),
            4: ("time", "level", "latitude", "longitude"),
        }[np.ndim(values)]
    )
    coords = {"latitude": latitude, "longitude": longitude}
    for d, n in zip(dims, np.shape(values), strict=True):
        if d not in coords:
            coords[d] = np.arange(n)
    return xr.Dataset({name: (dims, values, {"units": "K"})}, coords=coords)


def smooth_random(latitude, longitude, shape=(), seed=0) -> np.ndarray:
    """Waves plus noise around 280, [*shape, lat, lon] float64."""
    rng = np.random.default_rng(seed)
    phi, lam = np.deg2rad(latitude)[:, None], np.deg2rad(longitude)[None, :]
    wave = 30 * np.cos(phi) ** 2 + 10 * np.sin(3 * lam) * np.cos(phi)
    return 280 + wave + rng.normal(size=(*shape, latitude.size, longitude.size))


GRIDS = {
    "64x32": parse_grid("64x32"),
    "240x121": parse_grid("240x121"),
    "gaussian 128x64": gaussian(128, 64),
}


@pytest.mark.parametrize(
    ("source", "target"),
    [("64x32", "240x121"), ("240x121", "64x32"), ("gaussian 128x64", "64x32")],
)
def test_global_means_are_unchanged(source, target):
    """The area-weighted global mean of each field (2 times x 2 levels) is the source's.

    float64: each regridded value sums at most n_lat + n_lon source products and each mean
    N <= 30000 terms (pairwise, log2 N levels), so the rounding bound is about
    (n_lat + n_lon + 2 log2 N) u = (121 + 240 + 30) u < 400 u of the largest value (measured:
    at most 1.6 u). float32 (the archives' type): each stored value is rounded once more, by at
    most u32 of itself, so the means differ by at most u32 of the largest value (measured:
    0.013 u32).
    """
    src_lat, src_lon = GRIDS[source]
    dst_lat, dst_lon = GRIDS[target]
    values = smooth_random(src_lat, src_lon, (2, 2))
    ds = dataset(src_lat, src_lon, values)
    ds["t32"] = ds["temperature"].astype(np.float32)
    out = regrid_dataset(ds, dst_lat, dst_lon)
    scale = np.abs(values).max()
    before, after = global_mean(values, src_lat), global_mean(out["temperature"].values, dst_lat)
    np.testing.assert_allclose(after, before, rtol=0, atol=400 * U64 * scale)
    assert out["t32"].dtype == np.float32
    before32 = global_mean(ds["t32"].values, src_lat)
    np.testing.assert_allclose(
        global_mean(out["t32"].values, dst_lat), before32, rtol=0, atol=(U32 + 400 * U64) * scale
    )


def nested_mean(x: np.ndarray, i: int, j: int, valid: np.ndarray | None = None) -> float:
    """By hand: 24x12 (15 deg, no pole rows) into 8x4 (45 deg): target row i covers source rows
    3i..3i+2 (bounds -90 + 15 k and -90 + 45 i coincide), target column j (centred on 45 j)
    the source columns 3j-1, 3j, 3j+1 (centred on 15 k), all of equal width 15 deg. Each source
    cell weighs its area, sin(upper bound) - sin(lower bound) times the width."""
    valid = np.ones(x.shape, bool) if valid is None else valid
    total = weight = 0.0
    for a in range(3 * i, 3 * i + 3):
        area = np.sin(np.deg2rad(-90 + 15 * (a + 1))) - np.sin(np.deg2rad(-90 + 15 * a))
        for b in (3 * j - 1, 3 * j, 3 * j + 1):
            if valid[a, b % 24]:
                total += area * x[a, b % 24]
                weight += area
    return total / weight if weight else np.nan


def test_nested_target_cells_are_the_area_weighted_means_of_their_source_cells():
    """24x12 -> 8x4 nests 3 x 3 source cells in each target cell (2:1 would not nest in
    longitude: both grids start with a cell centred on 0). Tolerance: a few float64 roundings
    of values ~300, 16 u x 300 (measured: 1.7 u x 300)."""
    src_lat, src_lon = parse_grid("24x12")
    x = np.random.default_rng(1).uniform(250, 300, (12, 24))
    out = regrid_dataset(dataset(src_lat, src_lon, x), *parse_grid("8x4"))["temperature"]
    expected = [[nested_mean(x, i, j) for j in range(8)] for i in range(4)]
    np.testing.assert_allclose(out.values, expected, rtol=0, atol=16 * U64 * 300)
    np.testing.assert_array_equal(out["latitude"], [-67.5, -22.5, 22.5, 67.5])


SPECS = [
    ("64x32", "240x121"),
    ("240x121", "64x32"),
    ("gaussian 128x64", "240x121"),
    ("36x19", "8x4"),
]


@pytest.mark.parametrize(("source", "target"), SPECS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_constant_field_stays_exactly_that_constant(source, target, dtype):
    src_lat, src_lon = GRIDS[source] if source in GRIDS else parse_grid(source)
    dst_lat, dst_lon = GRIDS[target] if target in GRIDS else parse_grid(target)
    constant = dtype(0.1) if dtype == np.float64 else dtype(287.15)
    x = np.full((2, src_lat.size, src_lon.size), constant, dtype)
    out = regrid_dataset(dataset(src_lat, src_lon, x), dst_lat, dst_lon)["temperature"]
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.values, np.full(out.shape, constant, dtype))
    # Also with missing values elsewhere: the valid cells' mean of a constant is the constant.
    x[:, : src_lat.size // 4] = np.nan
    out = regrid_dataset(dataset(src_lat, src_lon, x), dst_lat, dst_lon)["temperature"]
    finite = out.values[np.isfinite(out.values)]
    assert finite.size > out.size // 2
    np.testing.assert_array_equal(finite, constant)


def test_missing_values_are_skipped_and_cells_without_any_are_missing():
    """A land mask of NaN on 24x12 -> 8x4 (nested, see `nested_mean`): a target cell over land
    only is NaN, one partly over land is the mean of its valid cells weighed by their areas (not
    diluted by the land's area), the others are untouched."""
    src_lat, src_lon = parse_grid("24x12")
    x = np.random.default_rng(2).uniform(270, 300, (12, 24))
    land = np.zeros(x.shape, bool)
    land[3:6, 2:5] = True  # all of target cell (1, 1)
    land[6, 8] = land[7, 8] = land[6, 9] = True  # 3 of the 9 cells of target cell (2, 3)
    masked = np.where(land, np.nan, x)
    out = regrid_dataset(dataset(src_lat, src_lon, masked), *parse_grid("8x4"))["temperature"]
    assert np.isnan(out.values[1, 1])
    assert np.isfinite(np.delete(out.values.ravel(), 8 + 1)).all()
    partial = nested_mean(x, 2, 3, valid=~land)
    assert abs(partial - nested_mean(x, 2, 3)) > 0.1  # the land cells would change it
    np.testing.assert_allclose(out.values[2, 3], partial, rtol=0, atol=16 * U64 * 300)
    expected = [[nested_mean(x, i, j) for j in range(8)] for i in range(4)]
    others = np.ones((4, 8), bool)
    others[1, 1] = others[2, 3] = False
    np.testing.assert_allclose(out.values[others], np.array(expected)[others], atol=16 * U64 * 300)


def test_a_masked_polar_cap_leaves_only_the_pole_rows_it_covers_missing():
    """NaN south of 60S on 24x12 (rows 0-1: -90 to -60) -> 36x19 (10 deg, pole rows): the
    target rows -90 (cap to -85), -80 and -70 (to -65) lie in the cap and are NaN; the row -60
    (-65 to -55) is half over the cap and takes the only valid row it touches, -52.5."""
    src_lat, src_lon = parse_grid("24x12")
    rows = np.broadcast_to(np.arange(12.0)[:, None], (12, 24)).copy()  # row index as value
    rows[:2] = np.nan
    out = regrid_dataset(dataset(src_lat, src_lon, rows), *parse_grid("36x19"))["temperature"]
    assert np.isnan(out.values[:3]).all() and np.isfinite(out.values[3:]).all()
    np.testing.assert_array_equal(out.values[3], 2.0)


def test_a_rounding_sliver_of_overlap_does_not_count_as_valid():
    """A Gaussian 128x64 grid's equator bound is 1.3e-14 deg off 0, so its last southern row
    overlaps the 64x32 row just north of the equator by 2.3e-15 of that row. With the northern
    hemisphere missing, that row must be NaN, not the southern row's value (as it would be with
    no threshold)."""
    src_lat, src_lon = gaussian(128, 64)
    x = smooth_random(src_lat, src_lon)
    x[32:] = np.nan
    ds = dataset(src_lat, src_lon, x)
    out = regrid_dataset(ds, *parse_grid("64x32"))["temperature"].values
    assert np.isnan(out[16:]).all() and np.isfinite(out[:16]).all()
    # Without the threshold: target column j (5.625 deg) covers a quarter of source column
    # 2j - 1, all of 2j and a quarter of 2j + 1 (2.8125 deg) of the sliver's row, 31.
    unguarded = regrid_dataset(ds, *parse_grid("64x32"), min_valid_fraction=0.0)
    row = x[31]
    spread = 0.25 * np.roll(row, 1) + 0.5 * row + 0.25 * np.roll(row, -1)
    np.testing.assert_allclose(
        unguarded["temperature"].values[16], spread[::2], atol=16 * U64 * 300
    )
    assert 1e-15 < MIN_VALID_FRACTION < 1e-6


def test_latitude_order_and_longitude_convention_do_not_matter():
    """North-to-south latitudes and -180..180 longitudes give the canonical grid's answer (up to
    the order of the sums: a few u of values ~300; measured: identical)."""
    lat, lon = parse_grid("24x12")
    x = smooth_random(lat, lon, (2,))
    canonical = regrid_dataset(dataset(lat, lon, x), *parse_grid("36x19"))
    flipped = dataset(lat[::-1], np.where(lon >= 180, lon - 360, lon), x[:, ::-1])
    flipped = flipped.sortby("longitude")
    out = regrid_dataset(flipped, *parse_grid("36x19"))
    np.testing.assert_array_equal(out["latitude"], canonical["latitude"])
    np.testing.assert_allclose(out["temperature"], canonical["temperature"], atol=16 * U64 * 300)


def test_dask_input_stays_lazy_in_blocks_of_times(monkeypatch):
    """A dask-backed field is regridded block by block (here two times of source a block), then
    stored in chunks of up to the same bytes of result (here all six times at 8x4); onto a finer
    grid the blocks are sized by the result."""
    from weather.data import regrid

    blocks = []

    def recording(x, **kwargs):
        blocks.append(x.shape)
        return block(x, **kwargs)

    block = regrid._regrid_block
    monkeypatch.setattr(regrid, "_regrid_block", recording)
    lat, lon = parse_grid("24x12")
    ds = dataset(lat, lon, smooth_random(lat, lon, (6,)))
    eager = regrid_dataset(ds, *parse_grid("8x4"))
    blocks.clear()
    two_times = 2 * 8 * lat.size * lon.size  # float64 bytes of two source times
    lazy = regrid_dataset(ds.chunk(time=1, latitude=5), *parse_grid("8x4"), block_bytes=two_times)
    assert blocks == [] and lazy["temperature"].chunks == ((6,), (4,), (8,))
    np.testing.assert_array_equal(lazy["temperature"].values, eager["temperature"].values)
    assert blocks == [(2, 12, 24)] * 3
    # Onto a finer grid the result is the larger: blocks of two result times.
    blocks.clear()
    two_times = 2 * 8 * 19 * 36
    lazy = regrid_dataset(ds.chunk(time=3), *parse_grid("36x19"), block_bytes=two_times)
    assert lazy["temperature"].chunks == ((2, 2, 2), (19,), (36,))
    lazy.compute()
    assert blocks == [(2, 12, 24)] * 3


def test_other_variables_attributes_and_encodings_are_kept():
    lat, lon = parse_grid("24x12")
    ds = dataset(lat, lon, smooth_random(lat, lon, (3,)))
    ds["temperature"].encoding = {"dtype": "float32", "chunks": (1, 12, 24), "zlib": True}
    ds["co2"] = ("time", [410.0, 411.0, 412.0], {"units": "ppm"})
    ds["land_sea_mask"] = (("latitude", "longitude"), np.ones((12, 24), np.int8))
    ds["land_sea_mask"].encoding = {"dtype": "int8"}
    ds["latitude"].attrs = {"units": "degrees_north", "bounds": "lat_bnds"}
    ds.attrs["title"] = "test"
    out = regrid_dataset(ds, *parse_grid("8x4"))
    xr.testing.assert_identical(out["co2"], ds["co2"])
    assert out["temperature"].attrs == {"units": "K"}
    assert out["temperature"].encoding == {"dtype": "float32", "zlib": True}
    assert out["land_sea_mask"].dtype == np.float32 and "dtype" not in out["land_sea_mask"].encoding
    np.testing.assert_array_equal(out["land_sea_mask"], 1.0)
    assert out["latitude"].attrs == {"units": "degrees_north"}
    assert out.attrs == {"title": "test", "regridded_from": "24x12 equiangular"}
    assert list(out.data_vars) == ["temperature", "co2", "land_sea_mask"]


def test_unusable_grids_are_refused_naming_the_coordinate():
    lat, lon = parse_grid("24x12")
    ds = dataset(lat, lon, smooth_random(lat, lon))
    with pytest.raises(ArchiveError, match=r"'latitude'.*not global"):
        regrid_dataset(ds.isel(latitude=slice(2, 10)), *parse_grid("8x4"))
    with pytest.raises(ArchiveError, match=r"'longitude'.*not evenly spaced"):
        regrid_dataset(ds.isel(longitude=slice(0, 12)), *parse_grid("8x4"))
    ds["zonal"] = ("latitude", np.zeros(12))
    with pytest.raises(ArchiveError, match=r"'zonal'.*only one"):
        regrid_dataset(ds, *parse_grid("8x4"))


def test_parse_grid_gives_weatherbench2_grids():
    lat, lon = parse_grid("240x121")
    assert (lat[0], lat[-1], lat.size) == (-90.0, 90.0, 121)
    np.testing.assert_allclose(np.diff(lat), 1.5, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lon, 1.5 * np.arange(240), rtol=0, atol=1e-12)
    lat, lon = parse_grid("1440x721")
    assert (lat[0], lat[360], lat[-1], lon[1], lon.size) == (-90.0, 0.0, 90.0, 0.25, 1440)
    for got, want in zip(parse_grid("64x32"), grid.equiangular_grid(32, 64), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("spec", ["64", "0x32", "axb", "64x1", "64x0", "-64x32", "64x32x2", ""])
def test_parse_grid_refuses_other_specs_naming_the_option(spec):
    with pytest.raises(ValueError, match=r"--grid.*NLONxNLAT"):
        parse_grid(spec)


def test_a_failed_write_leaves_no_destination(tmp_path):
    import dask.array as da

    def fail(block):
        raise RuntimeError("disk full")

    lat, lon = parse_grid("8x4")
    values = da.zeros((2, 4, 8), chunks=(1, 4, 8)).map_blocks(fail, dtype=float)
    for name in ("out.zarr", "out.nc"):
        with pytest.raises(RuntimeError, match="disk full"):
            write_archive(dataset(lat, lon, values), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_cli_regrids_a_store_refuses_to_overwrite_and_names_a_missing_source(tmp_path, capsys):
    source, dst = tmp_path / "src.zarr", tmp_path / "dst.zarr"
    synthetic_archive(n_lat=16, n_lon=32, days=1).to_zarr(source, zarr_format=3, consolidated=False)
    assert main(["data", "regrid", str(source), str(dst), "--grid", "8x5"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "(32x16 equiangular) ->" in printed[0]
    assert "(8x5 equiangular with pole rows): geopotential" in printed[0]
    archive, out = open_archive(source), open_archive(dst)
    np.testing.assert_array_equal(out["latitude"], [-90, -45, 0, 45, 90])
    np.testing.assert_array_equal(out["longitude"], 45 * np.arange(8))
    assert list(out.data_vars) == list(archive.data_vars)
    np.testing.assert_array_equal(out["time"], archive["time"])
    expected = regrid_dataset(archive, *parse_grid("8x5"))
    xr.testing.assert_allclose(out.load(), expected.load(), rtol=0, atol=0)

    before = {p: p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert main(["data", "regrid", str(source), str(dst), "--grid", "16x9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--overwrite" in err[0]
    assert {p: p.read_bytes() for p in dst.rglob("*") if p.is_file()} == before

    assert main(["data", "regrid", str(source), str(dst), "--grid", "16x9", "--overwrite"]) == 0
    capsys.readouterr()
    assert open_archive(dst).sizes["latitude"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.zarr", "src.zarr"]

    nc = tmp_path / "dst.nc"
    assert main(["data", "regrid", str(source), str(nc), "--grid", "8x5"]) == 0
    capsys.readouterr()
    xr.testing.assert_allclose(open_archive(nc).load(), expected.load(), rtol=0, atol=0)

    missing = tmp_path / "none.zarr"
    assert main(["data", "regrid", str(missing), str(tmp_path / "x.zarr"), "--grid", "8x5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.zarr" in err[0] and "does not exist" in err[0]
    assert main(["data", "regrid", str(source), str(tmp_path / "x.zarr"), "--grid", "8"]) == 2
    assert "--grid" in capsys.readouterr().err
