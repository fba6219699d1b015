"""What the server forecasts from (``GET /archive``): the analysis archive's usable init times
and the model's fields, for a client (the web page) to offer them."""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service.deps import ERRORS, Owner, service, settings_of
from weather.data.times import MAX_LEAD, STEP

router = APIRouter()


class ArchiveInfo(BaseModel):
    first_init: datetime.datetime | None = Field(
        description="earliest init time a forecast can start from (UTC); None: none can"
    )
    last_init: datetime.datetime | None = Field(description="latest such init time (UTC)")
    step_hours: float | None = Field(
        description="hours between usable init times (None if they are not evenly spaced)"
    )
    init_times: int = Field(description="how many init times are usable")
    level_variables: list[str] = Field(description="variables on pressure levels")
    surface_variables: list[str] = Field(description="variables at the surface")
    levels: list[int] = Field(description="pressure levels (hPa, ascending)")
    max_members: int = Field(description="most ensemble members per job")
    max_lead_hours: int = Field(description="longest lead (hours, a multiple of 12)")


def _utc(t: np.datetime64) -> datetime.datetime:
    return t.astype("datetime64[us]").item().replace(tzinfo=datetime.UTC)


def usable_inits(times: np.ndarray) -> np.ndarray:
    """The archive's times ``[time]`` (datetime64[ns], ascending) that have the time 12 h
    before too: a forecast starts from both states."""
    return times[np.isin(times - STEP, times)]


@router.get(
    "/archive",
    response_model=ArchiveInfo,
    summary="The init times and fields this server forecasts",
    responses=ERRORS,
)
def get_archive(request: Request, owner: Owner) -> dict[str, Any]:
    """The analysis archive's usable init times (first, last, spacing; the archive's time axis
    is re-read when it grows, see `POST /forecast`) and the model's variables and levels."""
    catalog = service(request).catalog
    inits = usable_inits(catalog.times())
    gaps = np.unique(np.diff(inits)) if inits.size > 1 else np.array([], "timedelta64[ns]")
    task = catalog.info.task
    return {
        "first_init": _utc(inits[0]) if inits.size else None,
        "last_init": _utc(inits[-1]) if inits.size else None,
        "step_hours": float(gaps[0] / np.timedelta64(1, "h")) if gaps.size == 1 else None,
        "init_times": int(inits.size),
        "level_variables": list(task.level_variables),
        "surface_variables": list(task.surface_variables),
        "levels": sorted(int(v) for v in task.levels),
        "max_members": settings_of(request).max_members,
        "max_lead_hours": int(MAX_LEAD // np.timedelta64(1, "h")),
    }
