"""Time axes: parsing times, checking an archive's time axis, and formatting times for messages.

Every time in the data layer is a naive UTC ``datetime64[ns]``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from weather.data.errors import ArchiveError

# GenCast's step: inputs at t-12h and t, target at t+12h.
LEAD = np.timedelta64(12, "h").astype("timedelta64[ns]")

# ISO 8601 strings, datetime64 scalars, datetime.date / datetime.datetime (so pd.Timestamp).
TimeLike = str | np.datetime64 | datetime.date


def to_datetime64(value: TimeLike, what: str = "time") -> np.datetime64:
    """``value`` as a naive UTC ``datetime64[ns]`` scalar.

    Time-zone-aware values are converted to UTC. Numbers are refused rather than read as
    nanoseconds since 1970.

    Raises:
      ArchiveError: naming ``what`` when the value is not a date-time.
    """
    if not isinstance(value, str | np.datetime64 | datetime.date):
        raise ArchiveError(f"{what} {value!r} is not a date-time")
    try:
        timestamp = pd.Timestamp(value)
    except (ValueError, TypeError) as error:
        raise ArchiveError(f"{what} {value!r} is not a date-time ({error})") from None
    if pd.isna(timestamp):
        raise ArchiveError(f"{what} is NaT, not a date-time")
    if timestamp.tzinfo is not None:
        timestamp = timestamp.tz_convert("UTC").tz_localize(None)
    return timestamp.as_unit("ns").to_datetime64()


def format_hours(delta: np.timedelta64) -> str:
    """A time difference as ``'6 h'``."""
    return f"{delta / np.timedelta64(1, 'h'):g} h"


def format_times(times: Iterable[Any]) -> str:
    """Short, readable values for messages (the first 10 only)."""
    items = list(times)
    text = ", ".join(
        str(np.datetime_as_string(t, unit="m")) if isinstance(t, np.datetime64) else str(t)
        for t in items[:10]
    )
    return f"[{text}{', ...' if len(items) > 10 else ''}]"


def time_step(time: npt.ArrayLike) -> np.timedelta64:
    """The step of a time axis, after checking that the task can use it.

    Gaps (missing times) only make some differences larger, so the smallest difference is the
    step; every difference must be a whole number of steps, and the step must divide 12 h.

    Args:
      time: ``[time]`` datetime64.

    Returns:
      The step as ``timedelta64[ns]``.

    Raises:
      ArchiveError: not 1-d datetime64, fewer than two times, duplicated or decreasing times, a
        step that does not divide 12 h, or differences that are not multiples of one step.
    """
    t = np.asarray(time)
    if t.ndim != 1 or not np.issubdtype(t.dtype, np.datetime64):
        raise ArchiveError(
            f"coordinate 'time' must be 1-d datetime64; it has dtype {t.dtype}, shape {t.shape}"
        )
    t = t.astype("datetime64[ns]")
    if t.size < 2:
        raise ArchiveError(f"coordinate 'time' has {t.size} value(s); a step needs at least 2")
    unique, counts = np.unique(t, return_counts=True)
    if np.any(counts > 1):
        raise ArchiveError(
            f"coordinate 'time' has duplicated values: {format_times(unique[counts > 1])}"
        )
    diffs = np.diff(t)
    if np.any(diffs < np.timedelta64(0)):
        i = int(np.argmax(diffs < np.timedelta64(0)))
        raise ArchiveError(
            f"coordinate 'time' is not increasing: {format_times([t[i]])} is followed "
            f"by {format_times([t[i + 1]])}"
        )
    step = diffs.min()
    if LEAD % step != np.timedelta64(0):
        raise ArchiveError(
            f"coordinate 'time' has a step of {format_hours(step)}, which does not divide "
            "12 h; the task can use steps of 1, 2, 3, 4, 6 or 12 h"
        )
    irregular = diffs[diffs % step != np.timedelta64(0)]
    if irregular.size:
        raise ArchiveError(
            f"coordinate 'time' is irregular: a difference of {format_hours(irregular[0])}"
            f" is not a multiple of the smallest step {format_hours(step)}"
        )
    return np.timedelta64(step, "ns")
