"""GenCast's forcings: time features computed from time and longitude, never read from an archive.

Two phases, each given to the model as a sin/cos pair so that the wrap-around at 1 is smooth:

- year progress, the fraction of the (tropical) year elapsed:
  ``((t - 1970-01-01T00:00Z) / YEAR_SECONDS) mod 1`` with ``YEAR_SECONDS = 365.24219 days``.
  The phase is measured from the Unix epoch, not from each calendar 1 January, so it advances at
  exactly one constant rate (no jump at a leap day) and agrees with GenCast's definition; its zero
  therefore drifts by under a day per century against the calendar, which the model never sees.
- day progress, the local mean solar time as a fraction of the day, per longitude:
  ``(seconds since 00 UTC / 86400 + longitude / 360) mod 1``; 0 is local midnight, 0.5 local noon.

All functions are pure numpy over ``datetime64`` arrays (any unit; converted to whole seconds, UTC,
no time zones) and longitudes in degrees east (any range: they are taken mod 360).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from weather.data.errors import ArchiveError
from weather.data.variables import FORCINGS

SECONDS_PER_DAY = 86_400
# The mean tropical year (equinox to equinox), in days; the year-progress phase uses this period.
TROPICAL_YEAR_DAYS = 365.24219
YEAR_SECONDS = TROPICAL_YEAR_DAYS * SECONDS_PER_DAY

_EPOCH = np.datetime64("1970-01-01T00:00:00", "s")


def _seconds_since_epoch(time: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Whole seconds since 1970-01-01T00:00Z for a datetime64 array (sub-second parts truncated)."""
    t = np.asarray(time)
    if not np.issubdtype(t.dtype, np.datetime64):
        raise ArchiveError(f"time: forcings need datetime64 values, got dtype {t.dtype}")
    if np.isnat(t).any():
        raise ArchiveError("time: forcings cannot be computed for NaT (missing) times")
    # Integer seconds keep the phase exact for centuries; float seconds since 1970 would already
    # lose sub-microsecond precision, harmless, but integers make the tests' exact values exact.
    return (t.astype("datetime64[s]") - _EPOCH).astype(np.int64)


def year_progress(time: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Fraction of the tropical year elapsed since the Unix epoch, in [0, 1).

    Args:
      time: datetime64 array, any shape ``[...]`` (UTC).

    Returns:
      float64 array of the same shape ``[...]``, dimensionless, in [0, 1).
    """
    seconds = _seconds_since_epoch(time)
    return np.mod(seconds / YEAR_SECONDS, 1.0)


def day_progress(time: npt.ArrayLike, longitude: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Local mean solar time as a fraction of the day, per time and longitude, in [0, 1).

    Args:
      time: datetime64 array ``[time]`` (UTC); a scalar is treated as ``[1]``.
      longitude: degrees east ``[longitude]``, any range (taken mod 360).

    Returns:
      float64 array ``[time, longitude]``, dimensionless, in [0, 1): 0 is local midnight.
    """
    seconds = np.atleast_1d(_seconds_since_epoch(time))
    lon = np.atleast_1d(np.asarray(longitude, dtype=np.float64))
    if seconds.ndim != 1:
        raise ArchiveError(f"time: day_progress needs a 1-d time array, got shape {seconds.shape}")
    if lon.ndim != 1:
        raise ArchiveError(f"longitude: day_progress needs a 1-d array, got shape {lon.shape}")
    if not np.isfinite(lon).all():
        raise ArchiveError("longitude: values must be finite")
    # The UTC fraction of the day is exact in integers; only the longitude term is rounded.
    utc_fraction = np.mod(seconds, SECONDS_PER_DAY) / SECONDS_PER_DAY
    return np.mod(utc_fraction[:, None] + lon[None, :] / 360.0, 1.0)


def _sin_cos(progress: npt.NDArray[np.float64]) -> tuple[np.ndarray, np.ndarray]:
    phase = 2.0 * np.pi * progress
    return np.sin(phase).astype(np.float32), np.cos(phase).astype(np.float32)


def forcings(time: npt.ArrayLike, longitude: npt.ArrayLike) -> dict[str, np.ndarray]:
    """All of GenCast's forcings for some times on a longitude grid, as float32.

    Args:
      time: datetime64 array ``[time]`` (UTC).
      longitude: degrees east ``[longitude]``.

    Returns:
      a dict with exactly the keys of ``variables.FORCINGS``:
      ``year_progress_sin``, ``year_progress_cos``: ``[time]``;
      ``day_progress_sin``, ``day_progress_cos``: ``[time, longitude]``; all float32, in [-1, 1].
    """
    t = np.atleast_1d(np.asarray(time))
    year_sin, year_cos = _sin_cos(year_progress(t))
    day_sin, day_cos = _sin_cos(day_progress(t, longitude))
    out = {
        "year_progress_sin": year_sin,
        "year_progress_cos": year_cos,
        "day_progress_sin": day_sin,
        "day_progress_cos": day_cos,
    }
    # The catalogue is the source of truth for the names; fail loudly if the two ever drift apart.
    assert tuple(out) == FORCINGS, (tuple(out), FORCINGS)
    return out
