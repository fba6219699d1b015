"""Time axes: parsing times, checking an archive's time axis, and formatting times for messages.

Every time in the data layer is a naive UTC ``datetime64[ns]``.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from weather.data.errors import ArchiveError

# The model's step (GenCast's): inputs at t-12h and t, target at t+12h; the only place it is
# written down.
STEP = np.timedelta64(12, "h").astype("timedelta64[ns]")

# The longest forecast lead: GenCast's 15 days.
MAX_LEAD = np.timedelta64(15, "D")

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
    if STEP % step != np.timedelta64(0):
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


def parse_lead(lead: str | float | int | np.timedelta64) -> np.timedelta64:
    """A lead time from hours (number), ``"15d"``/``"36h"``, or ISO 8601 (``"P15D"``, ``"PT36H"``).

    Raises:
      ValueError: naming the lead and why (not a duration, not a positive multiple of 12 h, or
        beyond 15 days).
    """
    shown = _shown(lead)
    if isinstance(lead, np.timedelta64):
        td = lead.astype("timedelta64[ns]")
    elif isinstance(lead, int | float):
        td = _hours(lead, shown)
    else:
        text = str(lead).strip()
        compact = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([dDhH]?)", text)
        if compact:
            # Plain numbers are hours; "15d" and "36h" are days and hours.
            td = _hours(
                float(compact.group(1)) * (24 if compact.group(2) in ("d", "D") else 1), shown
            )
        elif text.upper().startswith("P"):
            try:
                td = pd.Timedelta(text.upper()).to_timedelta64()
            except (ValueError, OverflowError) as error:
                raise ValueError(f"lead {shown}: not an ISO 8601 duration ({error})") from None
        else:
            raise ValueError(
                f"lead {shown}: not a duration (give hours, '15d', '36h' or ISO 'P15D')"
            )
    if td <= np.timedelta64(0) or td % STEP != np.timedelta64(0):
        raise ValueError(f"lead {shown}: must be a positive multiple of 12 h")
    if td > MAX_LEAD:
        raise ValueError(f"lead {shown}: at most 15 days")
    return td


def _shown(lead: object) -> str:
    """A lead as an error message shows it: short, whatever the client sent."""
    if isinstance(lead, int) and not isinstance(lead, bool) and lead.bit_length() > 64:
        return f"(an integer of about {int(lead.bit_length() / 3.32)} digits)"
    text = repr(lead)
    return text if len(text) <= 40 else text[:37] + "..."


def _hours(hours: float | int, shown: str) -> np.timedelta64:
    """``hours`` as a timedelta64[ns]; numbers beyond any lead get the range message, not an
    overflow from the conversion."""
    try:
        value = float(hours)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or abs(value) > 1e6:
        raise ValueError(f"lead {shown}: must be a finite number of hours, at most 360 (15 days)")
    return np.timedelta64(round(value * 3600), "s").astype("timedelta64[ns]")
