"""Top-of-atmosphere (TOA) incident solar radiation, computed from time and place.

This is ERA5's ``toa_incident_solar_radiation`` (short name ``tisr``, J m-2): the shortwave
energy arriving per unit horizontal area at the top of the atmosphere, accumulated over the
``period`` that ends at the given time (ERA5's period is 1 hour; the model's step is 12 hours).
GraphCast and GenCast give it to their models as a forcing; like the other forcings
(``weather.data.forcings``) it is computed, never read from an archive.

The instantaneous flux (W m-2) is ``S0 * (r0 / r)**2 * max(cos Z, 0)`` with

- ``S0`` the total solar irradiance at 1 AU, ``TSI`` by default;
- ``(r0 / r)**2`` the Earth-Sun distance factor (``r`` in AU);
- ``cos Z = sin(lat) sin(dec) + cos(lat) cos(dec) cos(H)`` the cosine of the solar zenith angle,
  ``dec`` the Sun's declination and ``H`` its local hour angle:
  ``H = 2 pi (UTC seconds of the day / 86400 - 1/2) + EoT + longitude``, with EoT the equation
  of time (apparent minus mean solar time) as an angle.

The Sun's position comes from the U.S. Naval Observatory's "Approximate Solar Coordinates"
(the low-precision formulae of the Astronomical Almanac): mean anomaly and mean longitude linear
in time since J2000.0, a two-term equation of the centre, the mean obliquity of the ecliptic (no
nutation), and a three-term series for the distance. USNO states an accuracy of about 1 arcminute
in the Sun's coordinates within two centuries of 2000. Against the IAU 2006/2000A model (ERFA's
``epv00``, ``pnm06a`` and ``gst06a``, apparent place), every 8.6 h over 1950-2050, we measured at
most 0.3 arcminute in declination, 2.5 s in the equation of time and 1.7e-4 in the distance
factor: together at most 3.2e-4 of the solar constant in the flux (0.43 W m-2), which is the
accuracy of everything here. The time scale is taken as UTC throughout: the 69 s by which TT runs
ahead move the Sun along its orbit by 0.0008 degree, and UT1 stays within 0.9 s of UTC.

The clipping at sunrise and sunset makes the integrand's slope jump, which slows any quadrature
in time, so accumulations are integrated exactly in the hour angle instead: with the declination,
the equation of time and the distance frozen over a short sub-interval, ``max(a + b cos H, 0)``
(``a = sin(lat) sin(dec)``, ``b = cos(lat) cos(dec)``) has a closed-form antiderivative in ``H``,
sunrise and sunset (``cos H = -a / b``) included. The period is split into sub-intervals of at
most ``_SUBINTERVAL_SECONDS``, the slow terms taken at each one's midpoint; the measured error is
given there.

All functions are pure numpy, float64, over ``datetime64`` arrays of any unit (UTC; converted to
microseconds) and 1-D latitudes and longitudes in degrees (longitudes in any range).
"""

from __future__ import annotations

import dataclasses
import datetime

import numpy as np
import numpy.typing as npt

from weather.data.errors import ArchiveError
from weather.data.forcings import SECONDS_PER_DAY

# Mean total solar irradiance at 1 AU, W m-2: 1360.8 +- 0.5 from SORCE/TIM (Kopp & Lean 2011,
# Geophys. Res. Lett. 38, L01706), rounded to 1361 as CMIP6's solar forcing and GraphCast's
# reference value do.
TSI = 1361.0

# ERA5 accumulates `tisr` over the hour that ends at each of its times.
ERA5_PERIOD = np.timedelta64(1, "h")

# J2000.0, the epoch of the USNO formulae: 2000-01-01 12:00 TT, read as UTC (see the module's
# docstring for why the 64 s between the two do not matter).
_J2000 = np.datetime64("2000-01-01T12:00:00", "s")
_EPOCH = np.datetime64("1970-01-01T00:00:00", "s")
_J2000_SECONDS = int((_J2000 - _EPOCH) / np.timedelta64(1, "s"))

_DAY_RADIANS_PER_SECOND = 2.0 * np.pi / SECONDS_PER_DAY

# The longest sub-interval over which the declination, equation of time and distance are held at
# their midpoint values. Measured against a 1 s trapezoid of `toa_incident_flux` at 35 end times
# (2023-2024, equinoxes and solstices included) x 49 latitudes (poles included) x 5 longitudes:
# with 1 h, at most 169 J m-2 (3.5e-5 of S0 x 1 h) for 1 h periods and 179 J m-2 (3.0e-6 of
# S0 x 12 h) for 12 h periods. The worst points are where the Sun grazes the horizon for hours
# (the poles near an equinox), where the frozen declination moves the kink in time. The error
# falls as the square of the sub-interval (30 min: 45 J m-2) at a cost proportional to its
# inverse; 1 h already keeps it nine times below the ephemeris's own error (0.43 W m-2 x 1 h =
# 1.5e3 J m-2).
_SUBINTERVAL_SECONDS = 3600.0

# Work arrays of at most this many elements (8 MiB in float64) per chunk of times: a 1440 x 721
# grid goes one time at a time, a small grid many times at once.
_CHUNK_ELEMENTS = 1 << 20


@dataclasses.dataclass(frozen=True)
class SunPosition:
    """The Sun as seen from the Earth's centre, per time.

    Attributes:
      declination: ``[time]``, radians, positive when the Sun is north of the equator.
      equation_of_time: ``[time]``, seconds: apparent minus mean solar time (positive when a
        sundial is ahead of the clock, as in early November).
      distance: ``[time]``, Earth-Sun distance in astronomical units.
    """

    declination: npt.NDArray[np.float64]
    equation_of_time: npt.NDArray[np.float64]
    distance: npt.NDArray[np.float64]

    @property
    def distance_factor(self) -> npt.NDArray[np.float64]:
        """``[time]``, ``(1 AU / distance)**2``: irradiance relative to its value at 1 AU."""
        return 1.0 / self.distance**2


def _seconds(time: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Whole seconds since 1970-01-01T00:00Z ``[time]`` and their fraction in [0, 1) ``[time]``.

    Whole seconds keep the time of day exact for centuries; the fraction keeps sub-second times
    (to the microsecond) rather than truncating them.
    """
    t = np.asarray(time)
    if not np.issubdtype(t.dtype, np.datetime64):
        raise ArchiveError(f"time: solar radiation needs datetime64 values, got dtype {t.dtype}")
    t = np.atleast_1d(t)
    if t.ndim != 1:
        raise ValueError(f"time: must be a 1-D array (or a scalar), got shape {t.shape}")
    if np.isnat(t).any():
        raise ArchiveError("time: solar radiation cannot be computed for NaT (missing) times")
    micro = (t.astype("datetime64[us]") - _EPOCH).astype(np.int64)
    whole, fraction = np.divmod(micro, 1_000_000)
    return whole, fraction / 1e6


def _coordinate(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name}: must be a 1-D array of degrees, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: values must be finite")
    return array


def _latitude(latitude: npt.ArrayLike) -> npt.NDArray[np.float64]:
    lat = _coordinate(latitude, "latitude")
    if (np.abs(lat) > 90.0).any():
        worst = lat[np.argmax(np.abs(lat))]
        raise ValueError(f"latitude: values must lie in [-90, 90] degrees, got {worst:g}")
    return lat


def _period_seconds(period: np.timedelta64 | datetime.timedelta) -> float:
    p = np.timedelta64(period) if isinstance(period, datetime.timedelta) else np.asarray(period)
    if not np.issubdtype(np.asarray(p).dtype, np.timedelta64) or np.ndim(p) != 0:
        raise ValueError(f"period: must be a timedelta64 scalar, got {period!r}")
    if np.isnat(p):
        raise ValueError("period: must be a time difference, got NaT")
    if np.datetime_data(np.asarray(p).dtype)[0] == "generic":
        raise ValueError(f"period: needs a unit, such as np.timedelta64(1, 'h'), got {period!r}")
    try:
        seconds = float(p / np.timedelta64(1, "us")) / 1e6
    except TypeError:  # months and years have no fixed length
        raise ValueError(
            f"period: needs a fixed-length unit (weeks or shorter), got {period!r}"
        ) from None
    if seconds <= 0.0:
        raise ValueError(f"period: must be positive, got {period!r}")
    return seconds


def _solar_constant(solar_constant: float) -> float:
    value = float(solar_constant)
    if not (np.isfinite(value) and value > 0.0):
        raise ValueError(f"solar_constant: must be a positive number of W m-2, got {value!r}")
    return value


def _sun(
    whole: npt.NDArray[np.int64], offset: npt.NDArray[np.float64]
) -> tuple[SunPosition, npt.NDArray[np.float64]]:
    """The Sun at ``whole + offset`` seconds since 1970 ``[time]``, and its hour angle at
    Greenwich ``[time]`` in radians."""
    # Days since J2000.0: whole seconds subtract exactly; float64 then keeps 1e-9 day for millennia.
    days = ((whole - _J2000_SECONDS) + offset) / SECONDS_PER_DAY
    # USNO, degrees: mean anomaly g, mean longitude q, apparent ecliptic longitude L (with the
    # equation of the centre), mean obliquity e. Reducing mod 360 keeps the sines' arguments small.
    g = np.deg2rad(np.mod(357.529 + 0.98560028 * days, 360.0))
    q = np.deg2rad(np.mod(280.459 + 0.98564736 * days, 360.0))
    ecliptic_longitude = q + np.deg2rad(1.915 * np.sin(g) + 0.020 * np.sin(2.0 * g))
    obliquity = np.deg2rad(23.439 - 0.00000036 * days)
    right_ascension = np.arctan2(
        np.cos(obliquity) * np.sin(ecliptic_longitude), np.cos(ecliptic_longitude)
    )
    declination = np.arcsin(np.sin(obliquity) * np.sin(ecliptic_longitude))
    # The equation of time is the mean Sun's right ascension (q) minus the true Sun's, wrapped
    # to (-pi, pi]; 2 pi radians of hour angle are 86400 s.
    eot = np.pi - np.mod(np.pi - (q - right_ascension), 2.0 * np.pi)
    distance = 1.00014 - 0.01671 * np.cos(g) - 0.00014 * np.cos(2.0 * g)
    sun = SunPosition(
        declination=declination,
        equation_of_time=eot / _DAY_RADIANS_PER_SECOND,
        distance=distance,
    )
    # Mean solar time at Greenwich is the UTC time of day; the hour angle is 0 at apparent noon.
    time_of_day = np.mod(whole, SECONDS_PER_DAY) + offset
    hour_angle = _DAY_RADIANS_PER_SECOND * time_of_day - np.pi + eot
    return sun, hour_angle


def sun_position(time: npt.ArrayLike) -> SunPosition:
    """Declination, equation of time and Earth-Sun distance (USNO approximation).

    Args:
      time: datetime64 array ``[time]`` (UTC); a scalar is treated as ``[1]``.

    Returns:
      a ``SunPosition`` of ``[time]`` arrays (radians, seconds, AU).
    """
    whole, fraction = _seconds(time)
    sun, _ = _sun(whole, fraction)
    return sun


def _chunks(n_time: int, n_points: int) -> list[slice]:
    size = max(1, _CHUNK_ELEMENTS // max(1, n_points))
    return [slice(start, start + size) for start in range(0, n_time, size)]


def toa_incident_flux(
    time: npt.ArrayLike,
    latitude: npt.ArrayLike,
    longitude: npt.ArrayLike,
    *,
    solar_constant: float = TSI,
) -> npt.NDArray[np.float64]:
    """Instantaneous TOA incident solar flux on a horizontal surface.

    Args:
      time: datetime64 array ``[time]`` (UTC, any unit); a scalar is treated as ``[1]``.
      latitude: degrees north ``[lat]``, in [-90, 90].
      longitude: degrees east ``[lon]``, any range.
      solar_constant: total solar irradiance at 1 AU, W m-2.

    Returns:
      float64 array ``[time, lat, lon]``, W m-2, ``>= 0``.

    Raises:
      ArchiveError: ``time`` is not datetime64 or holds NaT.
      ValueError: a coordinate is not 1-D or not finite, a latitude is outside [-90, 90], or
        ``solar_constant`` is not positive.
    """
    whole, fraction = _seconds(time)
    lat = np.deg2rad(_latitude(latitude))
    lon = np.deg2rad(_coordinate(longitude, "longitude"))
    s0 = _solar_constant(solar_constant)
    sin_lat, cos_lat = np.sin(lat)[None, :, None], np.cos(lat)[None, :, None]
    out = np.empty((whole.size, lat.size, lon.size))
    for chunk in _chunks(whole.size, lat.size * lon.size):
        sun, hour_angle = _sun(whole[chunk], fraction[chunk])
        dec = sun.declination[:, None, None]
        cos_hour_angle = np.cos(hour_angle[:, None, None] + lon)
        cos_zenith = sin_lat * np.sin(dec) + cos_lat * np.cos(dec) * cos_hour_angle
        irradiance = s0 * sun.distance_factor[:, None, None]
        out[chunk] = irradiance * np.maximum(cos_zenith, 0.0)
    return out


def _lit_angle_integral(
    first: npt.NDArray[np.float64],
    sweep: float,
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    half_day: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """``integral from first to first + sweep of max(a + b cos s, 0) ds``, by broadcasting.

    ``half_day`` is the sunset hour angle ``arccos(-a / b)`` in [0, pi]: the integrand is positive
    exactly where ``|s| < half_day`` (mod 2 pi), where its antiderivative is
    ``a s + b sin s``. Within a turn ``[-pi, pi)`` the antiderivative is therefore that of the
    hour angle clipped to the daylight ``[-half_day, half_day]``; each whole turn adds the daily
    total ``2 (a half_day + b sin half_day)``.
    """
    turns_first = np.floor((first + np.pi) / (2.0 * np.pi))
    turns_last = np.floor((first + sweep + np.pi) / (2.0 * np.pi))
    lit_first = np.clip(first - 2.0 * np.pi * turns_first, -half_day, half_day)
    lit_last = np.clip(first + sweep - 2.0 * np.pi * turns_last, -half_day, half_day)
    per_turn = 2.0 * (a * half_day + b * np.sin(half_day))
    return (
        (turns_last - turns_first) * per_turn
        + a * (lit_last - lit_first)
        + b * (np.sin(lit_last) - np.sin(lit_first))
    )


def toa_incident_solar_radiation(
    time: npt.ArrayLike,
    latitude: npt.ArrayLike,
    longitude: npt.ArrayLike,
    *,
    period: np.timedelta64 | datetime.timedelta = ERA5_PERIOD,
    solar_constant: float = TSI,
) -> npt.NDArray[np.float64]:
    """TOA incident solar radiation accumulated over the ``period`` ending at each time.

    ERA5's ``tisr`` at ``t`` is this with ``period = 1 h``: the integral of
    ``toa_incident_flux`` over ``(t - period, t]``.

    Args:
      time: datetime64 array ``[time]`` (UTC, any unit), the ends of the periods; a scalar is
        treated as ``[1]``.
      latitude: degrees north ``[lat]``, in [-90, 90].
      longitude: degrees east ``[lon]``, any range.
      period: the accumulation period, positive (a ``timedelta64`` or ``datetime.timedelta``).
      solar_constant: total solar irradiance at 1 AU, W m-2.

    Returns:
      float64 array ``[time, lat, lon]``, J m-2, ``>= 0``.

    Raises:
      ArchiveError: ``time`` is not datetime64 or holds NaT.
      ValueError: a coordinate is not 1-D or not finite, a latitude is outside [-90, 90],
        ``period`` is not a positive time difference, or ``solar_constant`` is not positive.
    """
    whole, fraction = _seconds(time)
    lat = np.deg2rad(_latitude(latitude))
    lon = np.deg2rad(_coordinate(longitude, "longitude"))
    seconds = _period_seconds(period)
    s0 = _solar_constant(solar_constant)
    n_sub = int(np.ceil(seconds / _SUBINTERVAL_SECONDS))
    step = seconds / n_sub
    sweep = step * _DAY_RADIANS_PER_SECOND
    sin_lat, cos_lat = np.sin(lat)[None, :, None], np.cos(lat)[None, :, None]
    out = np.zeros((whole.size, lat.size, lon.size))
    for chunk in _chunks(whole.size, lat.size * lon.size):
        for k in range(n_sub):
            start = fraction[chunk] - seconds + k * step
            sun, hour_angle = _sun(whole[chunk], start + 0.5 * step)
            dec = sun.declination[:, None, None]
            a = sin_lat * np.sin(dec)
            b = cos_lat * np.cos(dec)
            # b > 0 everywhere: cos(dec) > 0.9, and cos(lat) is 6e-17 even at a pole, where -a/b
            # (about 1e16) clips to a Sun that is up all day or never.
            half_day = np.arccos(np.clip(-a / b, -1.0, 1.0))
            # Hour angle at the sub-interval's start, with the midpoint's equation of time.
            first = (hour_angle - 0.5 * sweep)[:, None, None] + lon
            swept = _lit_angle_integral(first, sweep, a, b, half_day)
            # dt = dH / (2 pi / 86400): radians of hour angle back to seconds. At night the two
            # antiderivatives cancel only to rounding (-1e-9 J m-2 seen): the integral is >= 0.
            irradiance = s0 * sun.distance_factor[:, None, None]
            out[chunk] += irradiance * np.maximum(swept, 0.0) / _DAY_RADIANS_PER_SECOND
    return out
