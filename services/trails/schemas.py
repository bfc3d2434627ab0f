"""Investigators' query bodies and answers, and audit entries."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

MAX_WINDOW = timedelta(hours=24)
MAX_RADIUS_M = 2000.0


class Justification(BaseModel):
    """Every read of location data says why, and for which case."""

    reason: str = Field(min_length=10, max_length=2000)
    case_reference: str = Field(min_length=3, max_length=100)


class ProximityIn(Justification):
    model_config = ConfigDict(allow_inf_nan=False)

    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    # OSGB36 National Grid, instead of lat/lon.
    easting: float | None = Field(default=None, ge=0, le=700_000)
    northing: float | None = Field(default=None, ge=0, le=1_300_000)
    radius_m: float = Field(gt=0, le=MAX_RADIUS_M)
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _place_and_window(self) -> ProximityIn:
        has_latlon = self.lat is not None and self.lon is not None
        has_grid = self.easting is not None and self.northing is not None
        if has_latlon == has_grid:
            raise ValueError("give the place as lat/lon or as easting/northing, not both")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.end - self.start > MAX_WINDOW:
            raise ValueError("the window is longer than 24 hours")
        return self


class ProximityOut(BaseModel):
    query: dict[str, Any]
    algorithm: str
    subjects: list[dict[str, Any]]


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor_id: uuid.UUID
    actor_name: str
    role: str
    action: str
    parameters: dict[str, Any]
    reason: str | None
    case_reference: str | None
    result_size: int | None
