"""Tests of the time features against exact values and independent formulas."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from weather.data import forcings
from weather.data.errors import ArchiveError
from weather.data.variables import FORCINGS


def _t(*stamps: str) -> np.ndarray:
    return np.array(stamps, dtype="datetime64[ns]")


def test_year_progress_is_zero_at_the_epoch() -> None:
    assert forcings.year_progress(_t("1970-01-01T00:00"))[0] == 0.0


def test_year_progress_after_whole_and_half_tropical_years() -> None:
    # 365.24219 days = 31556925.216 s; whole seconds land 0.216 s before the exact year.
    half = np.datetime64("1970-01-01", "s") + np.timedelta64(15_778_462, "s")
    one = np.datetime64("1970-01-01", "s") + np.timedelta64(31_556_925, "s")
    np.testing.assert_allclose(forcings.year_progress(half), 0.5, atol=1e-7)
    np.testing.assert_allclose(forcings.year_progress(one), 1.0 - 0.216 / forcings.YEAR_SECONDS)
    # 100 tropical years later, the phase wraps back to (nearly) zero: the period is exact.
    hundred = np.datetime64("1970-01-01", "s") + np.timedelta64(3_155_692_521, "s")
    np.testing.assert_allclose(forcings.year_progress(hundred), 1.0 - 0.6 / forcings.YEAR_SECONDS)


def test_year_progress_matches_a_float_reference_and_is_monotone_within_a_year() -> None:
    times = np.arange(
        np.datetime64("2000-01-01T00", "ns"),
        np.datetime64("2000-12-31T00", "ns"),
        np.timedelta64(6, "h"),
    )
    expected = ((times - np.datetime64("1970-01-01", "ns")) / np.timedelta64(1, "s")) % (
        365.24219 * 86400
    )
    np.testing.assert_allclose(
        forcings.year_progress(times), expected / (365.24219 * 86400), rtol=0, atol=1e-12
    )
    progress = forcings.year_progress(times)
    assert ((progress >= 0) & (progress < 1)).all()
    # One wrap at most in a calendar year (the tropical-year phase crosses zero once).
    assert (np.diff(progress) < 0).sum() <= 1


def test_day_progress_exact_values() -> None:
    lon = np.array([0.0, 90.0, 180.0, 270.0])
    p = forcings.day_progress(_t("2020-06-01T00:00", "2020-06-01T12:00", "2020-06-01T06:00"), lon)
    assert p.shape == (3, 4)
    np.testing.assert_array_equal(p[0], [0.0, 0.25, 0.5, 0.75])
    # 12 UTC at 180 E is local midnight again: (0.5 + 0.5) mod 1 = 0.
    np.testing.assert_array_equal(p[1], [0.5, 0.75, 0.0, 0.25])
    np.testing.assert_array_equal(p[2], [0.25, 0.5, 0.75, 0.0])


def test_day_progress_ignores_the_date_and_wraps_longitude() -> None:
    lon = np.array([-90.0, 270.0, 630.0])
    a = forcings.day_progress(_t("1999-03-04T06:00"), lon)
    b = forcings.day_progress(_t("2031-11-30T06:00"), lon)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, [[0.0, 0.0, 0.0]], atol=1e-12)


def test_day_progress_against_python_datetime() -> None:
    rng = np.random.default_rng(0)
    seconds = rng.integers(0, 2_000_000_000, size=50)
    times = np.datetime64("1970-01-01", "s") + seconds.astype("timedelta64[s]")
    lon = rng.uniform(0.0, 360.0, size=7)
    got = forcings.day_progress(times, lon)
    for i, s in enumerate(seconds):
        d = dt.datetime.fromtimestamp(int(s), tz=dt.UTC)
        utc = (d.hour * 3600 + d.minute * 60 + d.second) / 86400
        np.testing.assert_allclose(got[i], (utc + lon / 360.0) % 1.0, rtol=0, atol=1e-12)


def test_forcings_keys_shapes_dtypes_and_values() -> None:
    times = _t("1970-01-01T00:00", "1970-01-01T12:00")
    lon = np.array([0.0, 90.0, 180.0])
    f = forcings.forcings(times, lon)
    assert tuple(f) == FORCINGS
    assert f["year_progress_sin"].shape == (2,)
    assert f["year_progress_cos"].shape == (2,)
    assert f["day_progress_sin"].shape == (2, 3)
    assert f["day_progress_cos"].shape == (2, 3)
    assert all(v.dtype == np.float32 for v in f.values())
    assert f["year_progress_sin"][0] == 0.0
    assert f["year_progress_cos"][0] == 1.0
    np.testing.assert_allclose(f["day_progress_sin"][0], [0.0, 1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(f["day_progress_cos"][0], [1.0, 0.0, -1.0], atol=1e-7)
    np.testing.assert_allclose(f["day_progress_sin"][1], [0.0, -1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(f["day_progress_cos"][1], [-1.0, 0.0, 1.0], atol=1e-7)
    # sin^2 + cos^2 = 1 everywhere.
    np.testing.assert_allclose(f["day_progress_sin"] ** 2 + f["day_progress_cos"] ** 2, 1, 1e-6)


def test_any_datetime_unit_gives_the_same_answer() -> None:
    lon = np.array([10.0, 200.0])
    ns = forcings.forcings(_t("2001-02-03T04:00"), lon)
    minutes = forcings.forcings(np.array(["2001-02-03T04:00"], dtype="datetime64[m]"), lon)
    for name in FORCINGS:
        np.testing.assert_array_equal(ns[name], minutes[name])


@pytest.mark.parametrize(
    "time",
    [np.array([1.0, 2.0]), np.array(["NaT"], dtype="datetime64[ns]")],
    ids=["not-datetime", "nat"],
)
def test_bad_times_are_rejected(time: np.ndarray) -> None:
    with pytest.raises(ArchiveError, match="time"):
        forcings.forcings(time, np.array([0.0]))


def test_bad_longitudes_are_rejected() -> None:
    with pytest.raises(ArchiveError, match="longitude"):
        forcings.day_progress(_t("2000-01-01"), np.array([0.0, np.nan]))
    with pytest.raises(ArchiveError, match="longitude"):
        forcings.day_progress(_t("2000-01-01"), np.zeros((2, 2)))
