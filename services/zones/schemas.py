"""Zone (GeoJSON) and crime bodies, and the crime message on the crimes topic."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_VERTICES = 10_000
MAX_CRIME_WINDOW = timedelta(hours=12)
CRIME_CLOCK_SKEW = timedelta(minutes=10)
EARLIEST_CRIME = datetime(2000, 1, 1, tzinfo=UTC)


class ZoneKind(StrEnum):
    exclusion = "exclusion"
    inclusion = "inclusion"


class ZoneProperties(BaseModel):
    subject_id: uuid.UUID
    kind: ZoneKind
    name: str = Field(min_length=1, max_length=200)


class PolygonGeometry(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    type: Literal["Polygon"]
    coordinates: list[list[tuple[float, float]]] = Field(min_length=1, max_length=100)

    @field_validator("coordinates")
    @classmethod
    def _rings(cls, rings: list[list[tuple[float, float]]]) -> list[list[tuple[float, float]]]:
        total = 0
        for n, ring in enumerate(rings):
            if len(ring) < 4:
                raise ValueError(f"ring {n} needs at least 4 positions (closed)")
            if ring[0] != ring[-1]:
                raise ValueError(f"ring {n} is not closed: its first and last positions differ")
            for lon, lat in ring:
                if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                    raise ValueError(f"ring {n} has a position outside lon/lat bounds")
            total += len(ring)
        if total > MAX_VERTICES:
            raise ValueError(f"at most {MAX_VERTICES} positions")
        return rings


class ZoneFeature(BaseModel):
    """A zone as a GeoJSON Feature (RFC 7946: lon, lat order, WGS84)."""

    type: Literal["Feature"]
    geometry: PolygonGeometry
    properties: ZoneProperties


class ZoneOut(BaseModel):
    type: Literal["Feature"] = "Feature"
    id: uuid.UUID
    geometry: dict[str, Any]
    properties: dict[str, Any]


class CrimeCategory(StrEnum):
    """Crime type codes of the UK police crime batches."""

    RB = "RB"  # robbery
    BIAD = "BIAD"  # burglary in a dwelling
    AB = "AB"  # aggravated burglary
    BOTD = "BOTD"  # burglary in a building other than a dwelling
    TOMV = "TOMV"  # theft of a motor vehicle
    TFP = "TFP"  # theft from the person
    TFMV = "TFMV"  # theft from a motor vehicle


class CrimeIn(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    category: CrimeCategory
    reference: str | None = Field(default=None, max_length=100)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    starts_at: AwareDatetime
    ends_at: AwareDatetime

    @model_validator(mode="after")
    def _window(self) -> CrimeIn:
        if self.ends_at < self.starts_at:
            raise ValueError("ends_at is before starts_at")
        if self.ends_at - self.starts_at > MAX_CRIME_WINDOW:
            raise ValueError("the crime window is longer than 12 hours")
        # Crimes are recorded after they happen; a window in the future is a typo.
        if self.starts_at > datetime.now(UTC) + CRIME_CLOCK_SKEW:
            raise ValueError("starts_at is in the future")
        if self.starts_at < EARLIEST_CRIME:
            raise ValueError(f"starts_at is before {EARLIEST_CRIME:%Y-%m-%d}")
        return self


class CrimeOut(CrimeIn):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    created_at: datetime


class CrimesIn(BaseModel):
    crimes: list[CrimeIn] = Field(min_length=1, max_length=1000)


class CrimeMessage(BaseModel):
    """A recorded crime on the crimes topic: its trail search runs on arrival."""

    id: uuid.UUID
    category: CrimeCategory
    lat: float
    lon: float
    starts_at: AwareDatetime
    ends_at: AwareDatetime
