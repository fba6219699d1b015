"""Tests of the TOA solar radiation against an accurate ephemeris, closed forms, identities and a
brute-force integral of the flux."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from weather.data import solar
from weather.data.errors import ArchiveError
from weather.data.grid import cell_area_weights, gaussian_latitudes

S0 = solar.TSI
OMEGA = 2.0 * np.pi / 86_400  # radians of hour angle per second
HOUR = np.timedelta64(1, "h")

# The 2024 equinoxes and solstices, UTC, as USNO's "Earth's Seasons and Apsides" lists them.
MARCH_EQUINOX = np.datetime64("2024-03-20T03:06", "s")
JUNE_SOLSTICE = np.datetime64("2024-06-20T20:51", "s")
SEPTEMBER_EQUINOX = np.datetime64("2024-09-22T12:44", "s")
DECEMBER_SOLSTICE = np.datetime64("2024-12-21T09:20", "s")

# The approximation's error against IAU 2006/2000A (ERFA), the largest of 100 years of samples
# (solar.py's docstring): declination, equation of time, Earth-Sun distance.
DECLINATION_TOLERANCE = np.deg2rad(0.3 / 60)
EQUATION_OF_TIME_TOLERANCE_S = 2.5
DISTANCE_TOLERANCE_AU = 9e-5  # the distance factor's 1.7e-4, halved

# The integrator's error, measured against a 1 s trapezoid (solar.py, _SUBINTERVAL_SECONDS):
# at most 169 J m-2 over 1 h and 179 J m-2 over 12 h, anywhere.
INTEGRATOR_TOLERANCE = {1: 170.0, 12: 180.0}


def _t(*stamps: str) -> np.ndarray:
    return np.array(stamps, dtype="datetime64[ns]")


def _noon_longitude(time: np.datetime64) -> float:
    """Degrees east where the Sun is at apparent noon (hour angle 0) at ``time``."""
    seconds_of_day = (time - time.astype("datetime64[D]")) / np.timedelta64(1, "s")
    eot = solar.sun_position(time).equation_of_time[0]
    return float(-360.0 * (seconds_of_day / 86_400 - 0.5) - eot / 240.0)


def _trapezoid(end: np.datetime64, hours: int, step_s: int, lat, lon) -> np.ndarray:
    """Brute force: the trapezoid rule over ``toa_incident_flux`` every ``step_s`` seconds."""
    n = hours * 3600 // step_s
    times = np.datetime64(end, "s") - np.arange(n, -1, -1) * np.timedelta64(step_s, "s")
    weights = np.full(n + 1, float(step_s))
    weights[[0, -1]] /= 2
    return np.tensordot(weights, solar.toa_incident_flux(times, lat, lon), axes=1)


def test_sun_position_against_an_accurate_ephemeris() -> None:
    seasons = np.array([MARCH_EQUINOX, JUNE_SOLSTICE, SEPTEMBER_EQUINOX, DECEMBER_SOLSTICE])
    # Apparent declinations at those instants from ERFA (IAU 2006/2000A), degrees: zero at the
    # equinoxes by definition, the true obliquity of date at the solstices.
    expected = np.deg2rad([-0.00002, 23.43823, 0.00005, -23.43840])
    np.testing.assert_allclose(
        solar.sun_position(seasons).declination, expected, rtol=0, atol=DECLINATION_TOLERANCE
    )
    # The equation of time near its two extremes, from ERFA (apparent minus mean solar time):
    # -14 min 12 s in February, +16 min 27 s in November.
    eot = solar.sun_position(_t("2024-02-11T12:00", "2024-11-03T12:00")).equation_of_time
    np.testing.assert_allclose(eot, [-851.6, 987.0], rtol=0, atol=EQUATION_OF_TIME_TOLERANCE_S)
    # Perihelion and aphelion 2024 (USNO), distances from ERFA.
    distance = solar.sun_position(_t("2024-01-03T00:39", "2024-07-05T05:06")).distance
    np.testing.assert_allclose(distance, [0.983307, 1.016725], rtol=0, atol=DISTANCE_TOLERANCE_AU)


def test_annual_mean_distance_factor_is_keplers() -> None:
    # On a Kepler orbit the time mean of (a / r)^2 is 1 / sqrt(1 - e^2); e = 0.0167086 (J2000).
    # The USNO series, truncated at e^2 with coefficients rounded to 1e-5 AU, may miss it by
    # 2e-5 at most; measured 7e-7.
    anomalistic_year_s = 365.259636 * 86_400
    offsets = np.arange(20_000) * (anomalistic_year_s / 20_000)
    times = np.datetime64("2024-01-03", "s") + offsets.astype("timedelta64[s]")
    mean = solar.sun_position(times).distance_factor.mean()
    np.testing.assert_allclose(mean, 1.0 / np.sqrt(1.0 - 0.0167086**2), rtol=0, atol=2e-5)


@pytest.mark.parametrize(
    "time",
    [MARCH_EQUINOX, JUNE_SOLSTICE, np.datetime64("2024-01-03T10:17"), np.datetime64("2031-11-03")],
)
def test_global_mean_flux_is_a_quarter_of_the_irradiance(time: np.datetime64) -> None:
    # The sphere intercepts pi R^2 of the beam and has area 4 pi R^2, at any instant.
    lat, weights = gaussian_latitudes(180)
    lon = np.arange(360) * 1.0
    flux = solar.toa_incident_flux(time, lat, lon)[0]
    mean = weights @ flux.mean(axis=1) / weights.sum()
    expected = S0 * solar.sun_position(time).distance_factor[0] / 4
    # Longitude: the periodic trapezoid rule errs by at most J h^2 / 8 per slope jump J; a row
    # has two, J = S0 d cos(lat) cos(dec) sin(sunset angle) <= S0 d cos(lat), so the global mean
    # errs by at most S0 d h^2 / 32, i.e. h^2 / 8 of the expected value (3.8e-5 for h = 1 deg).
    # Latitude: Gauss-Legendre on 180 rows, measured 5e-7 (with 4096 longitudes); allow 1e-6.
    h = np.deg2rad(1.0)
    np.testing.assert_allclose(mean, expected, rtol=h**2 / 8 + 1e-6)


def test_era5_grid_in_one_call_keeps_the_global_mean() -> None:
    lat = np.linspace(-90.0, 90.0, 721)
    lon = np.arange(1440) * 0.25
    tisr = solar.toa_incident_solar_radiation(JUNE_SOLSTICE, lat, lon)
    assert tisr.shape == (1, 721, 1440)
    assert tisr.dtype == np.float64
    assert (tisr >= 0).all()
    mean = cell_area_weights(lat) @ tisr[0].mean(axis=1) / lat.size
    # d changes by 2e-7 in the hour: linear, so its midpoint value gives the integral.
    d = solar.sun_position(JUNE_SOLSTICE - np.timedelta64(30, "m")).distance_factor[0]
    # Longitude as above with h = 0.25 deg (2.4e-6); latitude (cell areas on a 0.25 deg grid)
    # measured 4e-7; allow 1e-6 for it.
    h = np.deg2rad(0.25)
    np.testing.assert_allclose(mean, S0 * d * 3600 / 4, rtol=h**2 / 8 + 1e-6)


def test_polar_night_and_polar_day() -> None:
    # Every hour of the day of the December solstice: no sun at 80N, sun all day at 80S.
    times = DECEMBER_SOLSTICE - np.arange(24) * HOUR
    lon = np.arange(0.0, 360.0, 30.0)
    flux = solar.toa_incident_flux(times, [80.0, -80.0], lon)
    assert (flux[:, 0] == 0).all()
    assert (flux[:, 1] > 0).all()
    daily = solar.toa_incident_solar_radiation(
        DECEMBER_SOLSTICE + 12 * HOUR, [80.0], lon, period=24 * HOUR
    )
    assert (daily == 0).all()
    # Where the Sun never sets (80S), the day's total is S0 d a x 86400 (a = sin(lat) sin(dec))
    # plus the b cos H part of cos Z (b = cos(lat) cos(dec)), which a whole turn would cancel.
    # In 24 h, though, the hour angle sweeps 2 pi (1 + eps), eps the equation of time's drift,
    # while d changes by a fraction kappa: that leaves at most (b / a)(2 pi |eps| + |kappa|) /
    # (2 pi) of the total. The declination's curvature adds 1.3e-5, as at the pole below.
    daily = solar.toa_incident_solar_radiation(
        DECEMBER_SOLSTICE + 12 * HOUR, [-80.0], lon, period=24 * HOUR
    )[0, 0]
    sun = solar.sun_position(DECEMBER_SOLSTICE + np.array([-12, 0, 12]) * HOUR)
    lat, dec, d = np.deg2rad(-80.0), sun.declination[1], sun.distance_factor[1]
    eps = np.ptp(sun.equation_of_time) / 86_400
    kappa = np.ptp(sun.distance_factor) / d
    a, b = np.sin(lat) * np.sin(dec), np.cos(lat) * np.cos(dec)
    rtol = b / a * (2 * np.pi * eps + kappa) / (2 * np.pi) + 1.3e-5
    np.testing.assert_allclose(daily, S0 * d * a * 86_400, rtol=rtol)
    # At the pole in summer the Sun circles at the height of the declination all day.
    times = JUNE_SOLSTICE - np.arange(24) * HOUR
    sun = solar.sun_position(times)
    pole = solar.toa_incident_flux(times, [90.0], lon)[:, 0, :]
    np.testing.assert_allclose(
        pole, (S0 * sun.distance_factor * np.sin(sun.declination))[:, None] * np.ones(lon.size)
    )


def test_daily_mean_at_the_equator_at_an_equinox_is_s0_d_over_pi() -> None:
    # With declination 0 the equator has half a day of sun at cos Z = cos H: the daily mean is
    # S0 d / pi. Half an apparent solar day, though, which the equation of time's drift makes
    # 86400 (1 - dEoT/dt) s long (18 s shorter than 24 h at the March equinox, -2.1e-4).
    lon = _noon_longitude(MARCH_EQUINOX)
    daily = solar.toa_incident_solar_radiation(
        MARCH_EQUINOX + 12 * HOUR, [0.0], [lon], period=24 * HOUR
    )
    sun = solar.sun_position(np.array([MARCH_EQUINOX - 12 * HOUR, MARCH_EQUINOX + 12 * HOUR]))
    drift = np.diff(sun.equation_of_time)[0] / 86_400
    d = solar.sun_position(MARCH_EQUINOX).distance_factor[0]
    # The day is centred on apparent noon at the equinox, so the linear changes of d and dec
    # cancel; what is left: cos(dec) >= cos(0.25 deg) = 1 - 1e-5, and the integrator's
    # 2 x 180 J m-2 in 24 h (1e-5 of the day's total).
    np.testing.assert_allclose(daily[0, 0, 0] / 86_400, S0 * d / np.pi * (1 - drift), rtol=2e-5)


def test_daily_total_at_the_pole_at_the_june_solstice() -> None:
    # At the pole cos Z = sin(dec): the day's total is S0 d sin(dec) x 86400, taken at the
    # window's centre (the linear changes cancel). Near the solstice sin(dec) = sin(eps)
    # cos(L - 90 deg), whose mean over a day T falls short of the centre's by (Omega T)^2 / 24
    # with Omega <= 2 pi / 365.24 x (1 + 2e) per day: 1.3e-5 (measured 1.1e-5).
    daily = solar.toa_incident_solar_radiation(
        JUNE_SOLSTICE + 12 * HOUR, [90.0], [0.0, 123.0], period=24 * HOUR
    )
    sun = solar.sun_position(JUNE_SOLSTICE)
    expected = S0 * sun.distance_factor[0] * np.sin(sun.declination[0]) * 86_400
    curvature = (2 * np.pi / 365.24 * 1.034) ** 2 / 24
    np.testing.assert_allclose(daily[0, 0], expected, rtol=curvature)
    assert (daily[0, 0] < expected).all()  # the curvature's sign


def test_equinox_daily_totals_are_symmetric_between_hemispheres() -> None:
    # Latitudes -phi and phi see the same Sun when dec = 0. Over a day centred on the instant
    # dec crosses 0, at the longitude of apparent noon then, dec is odd about noon and so is the
    # first-order difference; measured 2e-6, the integrator's 2 x 180 J m-2 allow 2e-5.
    before, after = solar.sun_position(_t("2024-03-20T02:00", "2024-03-20T04:00")).declination
    crossing = np.datetime64("2024-03-20T02:00", "s") + np.timedelta64(
        round(7200 * before / (before - after)), "s"
    )
    lat = np.array([10.0, 30.0, 50.0, 66.0, 80.0])
    daily = solar.toa_incident_solar_radiation(
        crossing + 12 * HOUR,
        np.concatenate([-lat[::-1], lat]),
        [_noon_longitude(crossing)],
        period=24 * HOUR,
    )[0, :, 0]
    np.testing.assert_allclose(daily[lat.size :], daily[: lat.size][::-1], rtol=2e-5)


def test_annual_totals_are_symmetric_between_hemispheres() -> None:
    # Kepler's second law makes d dt proportional to the Sun's ecliptic longitude, and
    # dec(L + pi) = -dec(L): over a tropical year from the equinox, latitudes phi and -phi get
    # the same total. The USNO series keep that to O(e^3) = 5e-6; measured 7e-6, allow 2e-5.
    lat = np.array([20.0, 45.0, 70.0])
    lat = np.concatenate([-lat[::-1], lat])
    lon = [0.0, 100.0]
    six_hours = 6 * HOUR
    ends = MARCH_EQUINOX + np.arange(1, 1461) * six_hours  # 365 days
    year = solar.toa_incident_solar_radiation(ends, lat, lon, period=six_hours).sum(axis=0)
    rest = np.timedelta64(round(0.24219 * 86_400), "s")  # to a whole tropical year
    year += solar.toa_incident_solar_radiation(ends[-1] + rest, lat, lon, period=rest)[0]
    np.testing.assert_allclose(year[3:], year[:3][::-1], rtol=2e-5)


@pytest.mark.parametrize("hours", [1, 12])
def test_accumulation_matches_a_brute_force_integral_of_the_flux(hours: int) -> None:
    lat = np.array([-90.0, -66.6, -45.0, -10.0, 0.0, 23.4, 60.0, 89.0, 90.0])
    lon = np.array([0.0, 77.7, 190.0, 300.0])
    # Near an equinox (the declination moves fastest) and at an arbitrary time.
    ends = [SEPTEMBER_EQUINOX + 7 * HOUR, np.datetime64("2023-05-17T05:23:11", "s")]
    for end in ends:
        got = solar.toa_incident_solar_radiation(end, lat, lon, period=hours * HOUR)[0]
        reference = _trapezoid(end, hours, 10, lat, lon)
        # The 10 s trapezoid itself errs by at most J h^2 / 8 at each of <= 2 slope jumps
        # (J <= S0 d omega = 0.103 W m-2 s-1: 2.6 J m-2) plus T h^2 max|f''| / 12 on the smooth
        # parts (|f''| <= S0 d omega^2: 2.7 J m-2 over 12 h).
        reference_error = 2 * 0.103 * 10**2 / 8 + hours * 3600 * 10**2 * 7.5e-6 / 12
        np.testing.assert_allclose(
            got, reference, rtol=0, atol=INTEGRATOR_TOLERANCE[hours] + reference_error
        )


def test_twelve_hourly_accumulations_add_up_to_the_twelve_hour_one() -> None:
    lat = np.linspace(-90.0, 90.0, 13)
    lon = np.array([0.0, 45.0, 200.0])
    end = np.datetime64("2024-04-02T12:00", "s")
    hourly = solar.toa_incident_solar_radiation(end - np.arange(12) * HOUR, lat, lon)
    twelve = solar.toa_incident_solar_radiation(end, lat, lon, period=12 * HOUR)[0]
    # With 1 h sub-intervals both sum the very same pieces: only rounding differs.
    np.testing.assert_allclose(hourly.sum(axis=0), twelve, rtol=1e-10, atol=1e-6)


def test_fifteen_degrees_of_longitude_is_one_hour() -> None:
    lat = np.linspace(-85.0, 85.0, 18)
    lon = np.arange(0.0, 360.0, 20.0)
    t = _t("2024-05-05T05:05")
    later = solar.toa_incident_flux(t + HOUR, lat, lon)
    east = solar.toa_incident_flux(t, lat, lon + 15.0)
    # Not exact: in the hour dec, the equation of time and d move. |d cos Z / d dec| <= 1 and
    # |d cos Z / d H| <= 1 bound the flux's change by S0 (d |ddec| + d omega |dEoT| + |dd|).
    sun = solar.sun_position(np.concatenate([t, t + HOUR]))
    moved = S0 * (
        sun.distance_factor.max() * (np.ptp(sun.declination) + OMEGA * np.ptp(sun.equation_of_time))
        + np.ptp(sun.distance_factor)
    )
    np.testing.assert_allclose(later, east, rtol=0, atol=moved)
    assert np.abs(later - east).max() > 0.1 * moved  # the bound is not loose by orders
    # Accumulations: every instant of the period is shifted the same way.
    later = solar.toa_incident_solar_radiation(t + HOUR, lat, lon)
    east = solar.toa_incident_solar_radiation(t, lat, lon + 15.0)
    np.testing.assert_allclose(later, east, rtol=0, atol=3600 * moved)


def test_longitude_range_does_not_matter() -> None:
    lat = np.array([-45.0, 0.0, 45.0])
    centred = np.arange(-180.0, 180.0, 7.5)
    shifted = np.mod(centred, 360.0)
    times = _t("2024-02-29T18:00", "2024-08-31T06:00")
    for compute in (solar.toa_incident_flux, solar.toa_incident_solar_radiation):
        np.testing.assert_allclose(
            compute(times, lat, centred), compute(times, lat, shifted), rtol=1e-12, atol=1e-6
        )


def test_era5_magnitude_at_noon_on_the_equator() -> None:
    # The hour centred on apparent noon at the equator, 3 days after the March equinox: cos Z
    # = cos(dec) cos H averages sin(pi / 24) / (pi / 24) over the hour, so the total is
    # S0 d cos(dec) (86400 / pi) sin(pi / 24) ~ 4.9e6 J m-2, ERA5's familiar tropical maximum.
    noon = MARCH_EQUINOX + 3 * np.timedelta64(1, "D")
    lon = _noon_longitude(noon)
    tisr = solar.toa_incident_solar_radiation(noon + np.timedelta64(30, "m"), [0.0], [lon])[0, 0, 0]
    sun = solar.sun_position(noon)
    expected = (S0 * sun.distance_factor[0] * np.cos(sun.declination[0]) * 86_400 / np.pi) * np.sin(
        np.pi / 24
    )
    # The integrator's 170 J m-2 (3.5e-5); dec moves by 0.017 deg in the hour, linearly.
    np.testing.assert_allclose(tisr, expected, rtol=4e-5)
    assert 4.85e6 < tisr < 4.95e6


def test_any_datetime_unit_and_a_scalar_time_give_the_same_answer() -> None:
    lat, lon = [10.0, -60.0], [20.0, 250.0]
    ns = solar.toa_incident_solar_radiation(_t("2001-02-03T04:00"), lat, lon)
    minutes = solar.toa_incident_solar_radiation(
        np.array(["2001-02-03T04:00"], dtype="datetime64[m]"), lat, lon
    )
    scalar = solar.toa_incident_solar_radiation(np.datetime64("2001-02-03T04"), lat, lon)
    np.testing.assert_array_equal(ns, minutes)
    np.testing.assert_array_equal(ns, scalar)
    assert ns.shape == (1, 2, 2)


def test_chunks_over_time_join_seamlessly(monkeypatch: pytest.MonkeyPatch) -> None:
    lat, lon = np.linspace(-80.0, 80.0, 5), np.arange(0.0, 360.0, 60.0)
    times = _t("2024-01-01T00:00") + np.arange(7) * HOUR * 5
    flux = solar.toa_incident_flux(times, lat, lon)
    tisr = solar.toa_incident_solar_radiation(times, lat, lon, period=12 * HOUR)
    monkeypatch.setattr(solar, "_CHUNK_ELEMENTS", 2 * lat.size * lon.size)  # 2 times a chunk
    np.testing.assert_array_equal(solar.toa_incident_flux(times, lat, lon), flux)
    np.testing.assert_array_equal(
        solar.toa_incident_solar_radiation(times, lat, lon, period=12 * HOUR), tisr
    )


def test_periods_as_datetime_timedelta_and_the_solar_constant_scale() -> None:
    lat, lon = [0.0, 50.0], [0.0, 90.0]
    t = _t("2024-06-01T12:00")
    hour = solar.toa_incident_solar_radiation(t, lat, lon)
    np.testing.assert_array_equal(
        solar.toa_incident_solar_radiation(t, lat, lon, period=dt.timedelta(hours=1)), hour
    )
    np.testing.assert_allclose(
        solar.toa_incident_solar_radiation(t, lat, lon, solar_constant=S0 / 2), hour / 2
    )


@pytest.mark.parametrize(
    "time",
    [np.array([1.0, 2.0]), np.array(["NaT"], dtype="datetime64[ns]")],
    ids=["not-datetime", "nat"],
)
def test_bad_times_are_rejected(time: np.ndarray) -> None:
    for compute in (solar.toa_incident_flux, solar.toa_incident_solar_radiation):
        with pytest.raises(ArchiveError, match=r"^time: "):
            compute(time, [0.0], [0.0])
    with pytest.raises(ArchiveError, match=r"^time: "):
        solar.sun_position(time)


@pytest.mark.parametrize(
    ("period", "reason"),
    [
        (np.timedelta64(0, "h"), "must be positive"),
        (np.timedelta64(-1, "h"), "must be positive"),
        (np.timedelta64("NaT"), "NaT"),
        (np.timedelta64(1, "M"), "fixed-length"),
        (np.timedelta64(3), "needs a unit"),
        (3600, "timedelta64"),
    ],
)
def test_bad_periods_are_rejected(period: object, reason: str) -> None:
    with pytest.raises(ValueError, match=rf"^period: .*{reason}"):
        solar.toa_incident_solar_radiation(_t("2024-01-01"), [0.0], [0.0], period=period)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("latitude", "longitude", "match"),
    [
        ([90.5], [0.0], r"^latitude: .*\[-90, 90\].*90\.5"),
        ([-91.0], [0.0], r"^latitude: .*\[-90, 90\]"),
        ([np.nan], [0.0], "^latitude: .*finite"),
        (np.zeros((2, 2)), [0.0], "^latitude: .*1-D"),
        ([0.0], np.zeros((2, 2)), "^longitude: .*1-D"),
        ([0.0], [np.inf], "^longitude: .*finite"),
    ],
)
def test_bad_coordinates_are_rejected(latitude, longitude, match: str) -> None:
    for compute in (solar.toa_incident_flux, solar.toa_incident_solar_radiation):
        with pytest.raises(ValueError, match=match):
            compute(_t("2024-01-01"), latitude, longitude)


def test_bad_time_shape_and_solar_constant_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"^time: .*1-D"):
        solar.toa_incident_flux(np.zeros((2, 2), dtype="datetime64[h]"), [0.0], [0.0])
    with pytest.raises(ValueError, match=r"^solar_constant: .*positive"):
        solar.toa_incident_flux(_t("2024-01-01"), [0.0], [0.0], solar_constant=-1.0)
