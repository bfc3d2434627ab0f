"""Zone (GeoJSON) and crime bodies, and the crime message on the crimes topic."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from services.zones.schedule import DEFAULT_TIMEZONE, Schedule, check_timezone
from services.zones.service import ZoneKind

MAX_VERTICES = 10_000
MAX_CRIME_WINDOW = timedelta(hours=12)
CRIME_CLOCK_SKEW = timedelta(minutes=10)
EARLIEST_CRIME = datetime(2000, 1, 1, tzinfo=UTC)


Position = tuple[float, float]


def _check_ring(ring: list[Position], where: str) -> None:
    if len(ring) < 4:
        raise ValueError(f"{where} needs at least 4 positions (closed)")
    if ring[0] != ring[-1]:
        raise ValueError(f"{where} is not closed: its first and last positions differ")
    for lon, lat in ring:
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ValueError(f"{where} has a position outside lon/lat bounds")


def _check_polygon(rings: list[list[Position]], where: str) -> int:
    for n, ring in enumerate(rings):
        _check_ring(ring, f"{where}ring {n}")
    return sum(len(r) for r in rings)


class PolygonGeometry(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    type: Literal["Polygon"]
    coordinates: list[list[Position]] = Field(min_length=1, max_length=100)

    @field_validator("coordinates")
    @classmethod
    def _rings(cls, rings: list[list[Position]]) -> list[list[Position]]:
        if _check_polygon(rings, "") > MAX_VERTICES:
            raise ValueError(f"at most {MAX_VERTICES} positions")
        return rings


class MultiPolygonGeometry(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    type: Literal["MultiPolygon"]
    coordinates: list[list[list[Position]]] = Field(min_length=1, max_length=100)

    @field_validator("coordinates")
    @classmethod
    def _polygons(cls, polygons: list[list[list[Position]]]) -> list[list[list[Position]]]:
        total = sum(_check_polygon(p, f"polygon {n} ") for n, p in enumerate(polygons))
        if total > MAX_VERTICES:
            raise ValueError(f"at most {MAX_VERTICES} positions")
        return polygons


class PointGeometry(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    type: Literal["Point"]
    coordinates: Position

    @field_validator("coordinates")
    @classmethod
    def _bounds(cls, position: Position) -> Position:
        lon, lat = position
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ValueError("the position is outside lon/lat bounds")
        return position


ZoneGeometry = Annotated[
    PolygonGeometry | MultiPolygonGeometry | PointGeometry, Field(discriminator="type")
]


class ZoneProperties(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    # One subject (a victim's street) or several (a town centre shared by a caseload).
    subject_ids: list[uuid.UUID] = Field(default_factory=list, max_length=1000)
    subject_id: uuid.UUID | None = None
    kind: ZoneKind
    name: str = Field(min_length=1, max_length=200)
    radius_m: float | None = Field(default=None, gt=0, le=5000)
    buffer_m: float = Field(default=0.0, ge=0, le=1000)
    valid_from: AwareDatetime | None = None
    valid_to: AwareDatetime | None = None
    timezone: str = DEFAULT_TIMEZONE
    schedule: Schedule | None = None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, name: str) -> str:
        return check_timezone(name)

    @model_validator(mode="after")
    def _consistent(self) -> ZoneProperties:
        if self.subject_id is not None and self.subject_id not in self.subject_ids:
            self.subject_ids = [self.subject_id, *self.subject_ids]
        self.subject_id = None
        if not self.subject_ids:
            raise ValueError("a zone needs subject_id or subject_ids")
        if len(set(self.subject_ids)) != len(self.subject_ids):
            raise ValueError("subject_ids has duplicates")
        if self.valid_from and self.valid_to and self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        return self


class ZoneFeature(BaseModel):
    """A zone as a GeoJSON Feature (RFC 7946: lon, lat order, WGS84)."""

    type: Literal["Feature"]
    geometry: ZoneGeometry
    properties: ZoneProperties

    @model_validator(mode="after")
    def _radius(self) -> ZoneFeature:
        is_point = isinstance(self.geometry, PointGeometry)
        if is_point and self.properties.radius_m is None:
            raise ValueError("a Point zone needs properties.radius_m")
        if not is_point and self.properties.radius_m is not None:
            raise ValueError("radius_m is only for Point zones")
        return self


class ZoneOut(BaseModel):
    type: Literal["Feature"] = "Feature"
    id: uuid.UUID
    geometry: dict[str, Any]
    properties: dict[str, Any]


class ZoneVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    zone_id: uuid.UUID
    version: int
    definition: dict[str, Any]
    created_at: datetime


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
    # (force, reference) identifies a crime across re-sends: changed details make a new
    # version. Without both, every submission is a crime of its own.
    force: str | None = Field(default=None, min_length=1, max_length=64)
    reference: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=200)
    batch_id: str | None = Field(default=None, max_length=64)
    free_text: str | None = Field(default=None, max_length=2000)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    # OSGB36 National Grid, when the force gave the place that way.
    easting: float | None = None
    northing: float | None = None
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
    version: int
    current: bool
    created_at: datetime


class CrimeRowError(BaseModel):
    row: int  # 1-based line of the CSV
    field: str
    error: str


class CrimeBatchResult(BaseModel):
    rows: int
    accepted: int
    new_crimes: int
    new_versions: int
    unchanged: int
    rejected: list[CrimeRowError]
    crime_ids: list[uuid.UUID]


class CrimesIn(BaseModel):
    crimes: list[CrimeIn] = Field(min_length=1, max_length=1000)


class MatchRunOut(BaseModel):
    """A matching run: why it ran, with which algorithm and parameters, how long it took,
    and every subject it assessed (matched, ruled out, inconclusive, unknown)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    crime_id: uuid.UUID
    trigger: str
    algorithm: str
    parameters: dict[str, Any]
    started_at: datetime
    duration_ms: float
    results: dict[str, Any]
    # The runs these results come from, oldest first (see GET /v1/crimes/{id}/matches).
    based_on: list[uuid.UUID] = Field(default_factory=list)


class CrimeMessage(BaseModel):
    """A recorded crime on the crimes topic: its trail search runs on arrival."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    category: CrimeCategory
    lat: float
    lon: float
    starts_at: AwareDatetime
    ends_at: AwareDatetime
