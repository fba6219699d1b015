"""Tests of the training windows: exact times, split bounds, shuffling, batching, prefetching."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from weather.data import forcings, windows
from weather.data.errors import ArchiveError
from weather.data.windows import Prefetcher, WindowConfig, Windows

START = np.datetime64("2000-01-01T00", "ns")
HOUR = np.timedelta64(1, "h")
VARIABLES = ("temperature", "u_component_of_wind", "surface_pressure")
STATIC = ("geopotential_at_surface",)


def random_archive(
    *,
    n_times: int = 40,
    step_hours: int = 6,
    levels: tuple[int, ...] = (250, 500, 850),
    n_lat: int = 4,
    n_lon: int = 8,
    seed: int = 0,
) -> xr.Dataset:
    """A small canonical archive of float32 noise (every value distinct, so mix-ups show)."""
    rng = np.random.default_rng(seed)
    time = START + np.arange(n_times) * np.timedelta64(step_hours, "h")
    coords = {
        "time": time,
        "level": list(levels),
        "latitude": np.linspace(-67.5, 67.5, n_lat),
        "longitude": np.arange(n_lon) * (360.0 / n_lon),
    }
    level_shape = (n_times, len(levels), n_lat, n_lon)
    return xr.Dataset(
        {
            "temperature": (
                ("time", "level", "latitude", "longitude"),
                (250 + 10 * rng.standard_normal(level_shape)).astype(np.float32),
            ),
            "u_component_of_wind": (
                ("time", "level", "latitude", "longitude"),
                (10 * rng.standard_normal(level_shape)).astype(np.float32),
            ),
            "surface_pressure": (
                ("time", "latitude", "longitude"),
                (1e5 + 1e3 * rng.standard_normal((n_times, n_lat, n_lon))).astype(np.float32),
            ),
            "geopotential_at_surface": (
                ("latitude", "longitude"),
                (1e3 * rng.standard_normal((n_lat, n_lon))).astype(np.float32),
            ),
        },
        coords=coords,
    )


def config(**overrides: object) -> WindowConfig:
    kwargs: dict = {
        "start": START,
        "end": START + 9 * 24 * HOUR,
        "variables": VARIABLES,
        "static_variables": STATIC,
        "batch_size": 3,
        "seed": 0,
        "drop_remainder": False,
        "prefetch": 2,
    } | overrides
    return WindowConfig(**kwargs)


def brute_force_anchors(
    time: np.ndarray, start: np.datetime64, end: np.datetime64
) -> list[np.datetime64]:
    present = set(time.tolist())
    return [
        t
        for t in time
        if start <= t - 12 * HOUR
        and t + 12 * HOUR <= end
        and (t - 12 * HOUR).item() in present
        and (t + 12 * HOUR).item() in present
    ]


def epoch_of(source: Windows, **kwargs: object) -> list[windows.Batch]:
    with source.iterate(**kwargs) as batches:  # type: ignore[arg-type]
        return list(batches)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "weather-prefetch"]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    assert prefetch_threads() == []


# --- time axis -------------------------------------------------------------------------------


@pytest.mark.parametrize("step_hours", [1, 3, 6, 12])
def test_anchors_match_brute_force_for_every_step(step_hours: int) -> None:
    time = START + np.arange(60) * step_hours * HOUR
    start, end = START + 7 * HOUR, START + 50 * HOUR
    anchors = windows.window_anchors(time, start=start, end=end)
    np.testing.assert_array_equal(anchors, brute_force_anchors(time, start, end))
    idx = windows.window_indices(time, start=start, end=end)
    np.testing.assert_array_equal(time[idx[:, 0]], anchors - 12 * HOUR)
    np.testing.assert_array_equal(time[idx[:, 2]], anchors + 12 * HOUR)


def test_split_bounds_are_inclusive() -> None:
    time = START + np.arange(20) * 6 * HOUR
    anchors = windows.window_anchors(time, start=START, end=START + 24 * HOUR)
    np.testing.assert_array_equal(anchors, START + np.array([12]) * HOUR)
    anchors = windows.window_anchors(time, start=START, end=START + 30 * HOUR)
    np.testing.assert_array_equal(anchors, START + np.array([12, 18]) * HOUR)


def test_gaps_exclude_every_window_that_needs_a_missing_time() -> None:
    full = START + np.arange(40) * 6 * HOUR
    time = np.delete(full, [4, 5, 20])
    end = full[-1]
    anchors = windows.window_anchors(time, start=START, end=end)
    np.testing.assert_array_equal(anchors, brute_force_anchors(time, START, end))
    for missing in full[[4, 5, 20]]:
        assert not np.isin(anchors, [missing - 12 * HOUR, missing, missing + 12 * HOUR]).any()
    assert len(anchors) == 36 - 2 - 7


def test_lead_pairs_are_12_hours_apart_inside_the_split() -> None:
    time = START + np.arange(12) * 3 * HOUR
    pairs = windows.lead_pairs(time, start=START + 3 * HOUR, end=START + 27 * HOUR)
    assert (time[pairs[:, 1]] - time[pairs[:, 0]] == 12 * HOUR).all()
    np.testing.assert_array_equal(pairs[:, 0], [1, 2, 3, 4, 5])


@pytest.mark.parametrize(
    ("time", "match"),
    [
        (START + np.arange(10) * 5 * HOUR, "step of 5 h, which does not divide 12 h"),
        (START + np.arange(10) * 24 * HOUR, "step of 24 h, which does not divide"),
        (START + np.array([0, 4, 10]) * HOUR, "irregular"),
        (START + np.array([0, 12, 6]) * HOUR, "strictly increasing"),
        (START + np.array([0, 6, 6]) * HOUR, "strictly increasing"),
        (START + np.array([0]) * HOUR, "a step needs at least 2"),
        (np.arange(5.0), "datetime64"),
    ],
)
def test_bad_time_axes_are_rejected(time: np.ndarray, match: str) -> None:
    with pytest.raises(ArchiveError, match=match):
        windows.window_indices(time, start=START, end=START + 100 * HOUR)


def test_a_3_hour_step_with_regular_gaps_is_still_usable() -> None:
    # Times 0, 6, 9, 12, ...: the step is 3 h and spacings are multiples of it.
    time = START + np.array([0, 6, 9, 12, 18, 21, 24]) * HOUR
    anchors = windows.window_anchors(time, start=START, end=START + 24 * HOUR)
    np.testing.assert_array_equal(anchors, START + np.array([12]) * HOUR)


# --- windows and batches ---------------------------------------------------------------------


def test_batches_hold_the_archive_values_at_the_three_times() -> None:
    ds = random_archive()
    source = Windows(ds, config())
    seen = []
    for batch in epoch_of(source):
        for b, t in enumerate(batch["time"]):
            seen.append(t)
            for name in VARIABLES:
                np.testing.assert_array_equal(
                    batch["inputs"][name][b, 0], ds[name].sel(time=t - 12 * HOUR).values
                )
                np.testing.assert_array_equal(
                    batch["inputs"][name][b, 1], ds[name].sel(time=t).values
                )
                np.testing.assert_array_equal(
                    batch["targets"][name][b], ds[name].sel(time=t + 12 * HOUR).values
                )
            expected = forcings.forcings(t + np.array([-12, 0, 12]) * HOUR, ds["longitude"].values)
            for key, value in expected.items():
                np.testing.assert_array_equal(batch["forcings"][key][b], value)
    assert sorted(seen) == list(source.anchors)


def test_windows_over_a_gappy_archive_skip_the_gaps_and_stay_exact() -> None:
    full = random_archive(n_times=40)
    ds = full.isel(time=np.delete(np.arange(40), [9, 10, 25]))
    source = Windows(ds, config(end=full["time"].values[-1]))
    np.testing.assert_array_equal(
        source.anchors, brute_force_anchors(ds["time"].values, START, full["time"].values[-1])
    )
    for batch in epoch_of(source):
        for b, t in enumerate(batch["time"]):
            np.testing.assert_array_equal(
                batch["inputs"]["temperature"][b, 0], full["temperature"].sel(time=t - 12 * HOUR)
            )
            np.testing.assert_array_equal(
                batch["targets"]["temperature"][b], full["temperature"].sel(time=t + 12 * HOUR)
            )


@pytest.mark.parametrize("input_steps", [1, 2, 3, 4])
def test_windows_of_any_input_steps_match_brute_force_over_gaps(input_steps: int) -> None:
    full = START + np.arange(40) * 6 * HOUR
    time = np.delete(full, [4, 5, 20])
    start, end = START + 6 * HOUR, full[-2]
    present = set(time.tolist())
    offsets = np.arange(-(input_steps - 1), 2) * 12 * HOUR  # t - 12h (n - 1), ..., t, t + 12h
    expected = [
        [int(np.flatnonzero(time == t + o)[0]) for o in offsets]
        for t in time
        if all((t + o).item() in present and start <= t + o <= end for o in offsets)
    ]
    idx = windows.window_indices(time, start=start, end=end, input_steps=input_steps)
    np.testing.assert_array_equal(idx, np.asarray(expected).reshape(-1, input_steps + 1))


def test_three_input_steps_add_the_state_24_hours_before_the_anchor() -> None:
    ds = random_archive(n_times=30)
    source = Windows(ds, config(input_steps=3))
    plain = Windows(ds, config())
    # One window fewer per leading edge: the first anchor needs t - 24h too.
    np.testing.assert_array_equal(source.anchors, plain.anchors[plain.anchors >= START + 24 * HOUR])
    batch = source.load(np.arange(len(source))[:3])
    for b, t in enumerate(batch["time"]):
        for i, hours in enumerate((-24, -12, 0)):
            np.testing.assert_array_equal(
                batch["inputs"]["temperature"][b, i], ds["temperature"].sel(time=t + hours * HOUR)
            )
        np.testing.assert_array_equal(
            batch["targets"]["temperature"][b], ds["temperature"].sel(time=t + 12 * HOUR)
        )
        expected = forcings.forcings(t + np.array([-24, -12, 0, 12]) * HOUR, ds["longitude"].values)
        for key, value in expected.items():
            np.testing.assert_array_equal(batch["forcings"][key][b], value)
    with pytest.raises(ValueError, match="input_steps must be >= 1"):
        config(input_steps=0)


def test_batch_layout_shapes_and_dtypes() -> None:
    ds = random_archive(levels=(100, 250, 500, 850), n_lat=4, n_lon=8)
    source = Windows(ds, config(batch_size=5, drop_remainder=True))
    batch = source.load(np.arange(5))
    assert set(batch) == {"inputs", "targets", "forcings", "static", "time"}
    assert batch["inputs"]["temperature"].shape == (5, 2, 4, 4, 8)
    assert batch["inputs"]["surface_pressure"].shape == (5, 2, 4, 8)
    assert batch["targets"]["temperature"].shape == (5, 4, 4, 8)
    assert batch["targets"]["surface_pressure"].shape == (5, 4, 8)
    assert batch["forcings"]["year_progress_sin"].shape == (5, 3)
    assert batch["forcings"]["day_progress_cos"].shape == (5, 3, 8)
    assert batch["static"]["geopotential_at_surface"].shape == (4, 8)
    assert batch["time"].shape == (5,)
    assert batch["time"].dtype == np.dtype("datetime64[ns]")
    arrays = [*batch["inputs"].values(), *batch["targets"].values(), *batch["static"].values()]
    arrays += list(batch["forcings"].values())
    assert all(a.dtype == np.float32 for a in arrays)
    np.testing.assert_array_equal(
        batch["static"]["geopotential_at_surface"], ds["geopotential_at_surface"].values
    )
    assert not batch["static"]["geopotential_at_surface"].flags.writeable


def test_load_keeps_the_requested_order_and_reads_sorted_times_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ds = random_archive()
    source = Windows(ds, config())
    reads: list[np.ndarray] = []
    isel = xr.Dataset.isel

    def counting_isel(self: xr.Dataset, *args: object, **kwargs: object) -> xr.Dataset:
        reads.append(np.asarray(kwargs["time"]))
        return isel(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(xr.Dataset, "isel", counting_isel)
    rows = np.array([7, 1, 8, 2])  # windows 7 and 8 overlap in two of their times
    batch = source.load(rows)
    assert len(reads) == 1
    assert (np.diff(reads[0]) > 0).all()
    np.testing.assert_array_equal(reads[0], np.unique(source.indices[rows]))
    np.testing.assert_array_equal(batch["time"], source.anchors[rows])


def test_dims_are_put_in_canonical_order() -> None:
    ds = random_archive()
    shuffled = ds.transpose("longitude", "time", "latitude", "level")
    a = Windows(ds, config()).load([0, 5])
    b = Windows(shuffled, config()).load([0, 5])
    for name in VARIABLES:
        np.testing.assert_array_equal(a["inputs"][name], b["inputs"][name])


def test_levels_are_selected_in_the_requested_order() -> None:
    ds = random_archive()
    batch = Windows(ds, config(levels=(850, 250))).load([3])
    t = batch["time"][0]
    np.testing.assert_array_equal(
        batch["targets"]["temperature"][0],
        ds["temperature"].sel(time=t + 12 * HOUR, level=[850, 250]).values,
    )


@pytest.mark.parametrize("backing", ["dask", "zarr-lazy", "zarr-dask"])
def test_lazy_backings_give_the_same_batches(backing: str, tmp_path: Path) -> None:
    ds = random_archive()
    if backing == "dask":
        other = ds.chunk({"time": 7, "level": 2})
    else:
        path = tmp_path / "archive.zarr"
        ds.chunk({"time": 1}).to_zarr(path, consolidated=False)
        chunks = None if backing == "zarr-lazy" else {}
        other = xr.open_zarr(path, chunks=chunks, consolidated=False)
    expected = epoch_of(Windows(ds, config()))
    got = epoch_of(Windows(other, config()))
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a["time"], b["time"])
        for name in VARIABLES:
            np.testing.assert_array_equal(a["inputs"][name], b["inputs"][name])
            np.testing.assert_array_equal(a["targets"][name], b["targets"][name])


# --- splits, shuffling, epochs ---------------------------------------------------------------


def test_no_window_crosses_a_split_boundary() -> None:
    ds = random_archive(n_times=60)
    boundary = START + 123 * HOUR  # between two archive times
    train = Windows(ds, config(start=START, end=boundary))
    valid = Windows(ds, config(start=boundary, end=ds["time"].values[-1]))
    last = ds["time"].values[-1]
    for source, (lo, hi) in [(train, (START, boundary)), (valid, (boundary, last))]:
        for batch in epoch_of(source):
            assert (batch["time"] - 12 * HOUR >= lo).all()
            assert (batch["time"] + 12 * HOUR <= hi).all()
    train_times = set(ds["time"].values[train.indices.ravel()].tolist())
    valid_times = set(ds["time"].values[valid.indices.ravel()].tolist())
    assert train_times.isdisjoint(valid_times)
    expected = brute_force_anchors(ds["time"].values, START, boundary)
    np.testing.assert_array_equal(train.anchors, expected)


def test_every_anchor_once_per_epoch_and_seeds_reorder_them() -> None:
    ds = random_archive()
    orders = {}
    for seed in (0, 1):
        batches = epoch_of(Windows(ds, config(seed=seed)))
        times = np.concatenate([b["time"] for b in batches])
        assert len(times) == len(set(times.tolist()))
        np.testing.assert_array_equal(np.sort(times), Windows(ds, config()).anchors)
        orders[seed] = times
    assert not np.array_equal(orders[0], orders[1])


def test_same_seed_gives_the_same_batches() -> None:
    ds = random_archive()
    a = epoch_of(Windows(ds, config(seed=5)), epochs=2)
    b = epoch_of(Windows(ds, config(seed=5, prefetch=0)), epochs=2)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["time"], y["time"])
        np.testing.assert_array_equal(x["inputs"]["temperature"], y["inputs"]["temperature"])


def test_epochs_are_distinct_permutations() -> None:
    source = Windows(random_archive(), config(batch_size=4, drop_remainder=True))
    n = len(source)
    assert source.batches_per_epoch == n // 4
    batches = epoch_of(source, epochs=2)
    assert len(batches) == 2 * (n // 4)
    times = [
        np.concatenate([b["time"] for b in half]) for half in (batches[: n // 4], batches[n // 4 :])
    ]
    for epoch_times in times:
        assert len(set(epoch_times.tolist())) == len(epoch_times) == (n // 4) * 4
    assert not np.array_equal(times[0], times[1])
    np.testing.assert_array_equal(source.epoch_order(1), source.epoch_order(1))
    assert sorted(source.epoch_order(1)) == list(range(n))


def test_remainder_is_kept_or_dropped() -> None:
    ds = random_archive()
    kept = epoch_of(Windows(ds, config(batch_size=4, drop_remainder=False)))
    dropped = epoch_of(Windows(ds, config(batch_size=4, drop_remainder=True)))
    n = len(Windows(ds, config()))
    assert n % 4 != 0, "the test needs a remainder"
    assert [len(b["time"]) for b in kept] == [4] * (n // 4) + [n % 4]
    assert [len(b["time"]) for b in dropped] == [4] * (n // 4)


def test_endless_epochs_can_be_stopped() -> None:
    source = Windows(random_archive(), config(batch_size=8, drop_remainder=True))
    with source.iterate(epochs=None) as batches:
        taken = list(itertools.islice(batches, 3 * source.batches_per_epoch + 1))
    assert len(taken) == 3 * source.batches_per_epoch + 1


# --- the prefetcher --------------------------------------------------------------------------


def test_prefetcher_preserves_order_and_stops_its_thread() -> None:
    with Prefetcher(iter(range(100)), depth=3) as items:
        assert list(items) == list(range(100))
        assert prefetch_threads() == []  # exhaustion closes it


def test_prefetcher_close_mid_way_joins_the_blocked_thread() -> None:
    items = Prefetcher(itertools.count(), depth=2)
    assert next(items) == 0
    assert len(prefetch_threads()) == 1
    items.close()
    assert prefetch_threads() == []
    with pytest.raises(StopIteration):
        next(items)
    items.close()  # idempotent


def test_prefetcher_closed_from_another_thread_releases_a_waiting_consumer() -> None:
    """A consumer waiting for an item that the source is still producing is released by
    close() from another thread, before the source ever yields (events, not sleeps)."""
    asked, gate = threading.Event(), threading.Event()

    def held() -> Iterator[int]:
        asked.set()  # the producer runs: the consumer is inside next(), which started it
        gate.wait(60)
        yield 0

    items = Prefetcher(held(), depth=1)
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.extend(items))
    consumer.start()
    assert asked.wait(60)
    closer = threading.Thread(target=items.close)
    closer.start()
    consumer.join(timeout=30)
    # Released while the source still holds its first item.
    assert not consumer.is_alive() and not gate.is_set() and got == []
    gate.set()  # now the producer can finish, and close() join it
    closer.join(timeout=30)
    assert not closer.is_alive() and prefetch_threads() == []


def test_prefetcher_reraises_the_sources_error_in_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("disk on fire")

    for depth in (0, 2):
        items = Prefetcher(failing(), depth=depth)
        assert next(items) == 1
        with pytest.raises(RuntimeError, match="disk on fire"):
            next(items)
        with pytest.raises(StopIteration):
            next(items)


def test_loading_errors_reach_the_training_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    source = Windows(random_archive(), config())

    def broken(rows: object) -> windows.Batch:
        raise OSError("chunk 3 unreadable")

    monkeypatch.setattr(source, "load", broken)
    with source.iterate() as batches, pytest.raises(OSError, match="chunk 3 unreadable"):
        next(batches)


# --- configuration and archive errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"prefetch": -1}, "prefetch"),
        ({"end": START - HOUR}, "after its end"),
        ({"variables": ()}, "at least one"),
        ({"variables": ("temperature", "temperature")}, "repeat"),
        ({"levels": (500, 500)}, "distinct levels"),
        ({"start": "tomorrow-ish"}, "start 'tomorrow-ish' is not a date-time"),
        ({"start": 12.0}, "not a date-time"),
    ],
)
def test_bad_configs_are_rejected(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config(**overrides)


def test_config_normalises_times() -> None:
    a = config(start="2000-01-01", end="2000-01-10T00")
    b = config(start=START, end=np.datetime64("2000-01-10", "D"))
    assert a == b
    assert a.start == START


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"variables": ("specific_humidity",)}, "variable 'specific_humidity' is not in"),
        ({"variables": ("geopotential_at_surface",), "static_variables": ()}, "time-varying"),
        ({"variables": ("temperature",), "static_variables": ("surface_pressure",)}, "static"),
        ({"levels": (300,)}, r"lacks \[300\] hPa"),
        ({"start": "2001-01-01", "end": "2001-02-01"}, "no complete 12 h window"),
        ({"end": START + 18 * HOUR}, "no complete 12 h window"),
        ({"end": START + 36 * HOUR, "batch_size": 4, "drop_remainder": True}, "fewer than one"),
    ],
)
def test_unusable_archives_or_splits_are_rejected(overrides: dict, match: str) -> None:
    with pytest.raises(ArchiveError, match=match):
        Windows(random_archive(), config(**overrides))


def test_an_archive_with_a_bad_step_is_rejected() -> None:
    with pytest.raises(ArchiveError, match="step of 5 h"):
        Windows(random_archive(step_hours=5), config())


def test_in_memory_fields_are_not_copied_when_all_levels_are_read(archive):
    from weather.data.windows import WindowConfig, Windows

    ds = archive.load()
    levels = tuple(int(x) for x in ds["level"].values)
    windows = Windows(ds, WindowConfig(start="2001-01-01", end="2001-01-05", levels=levels))
    assert np.shares_memory(windows._dynamic["temperature"].values, ds["temperature"].values)
