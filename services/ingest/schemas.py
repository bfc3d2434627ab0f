"""Device-facing bodies and the fix message on the points topic."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field


def _rfc3339_text(value: Any) -> Any:
    # Numbers would be read as epoch seconds; devices must say what they mean, with an offset.
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 date-time string with a UTC offset")
    return value


def _in_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# A time in UTC's own tzinfo, as asyncpg gives times back. A fix's time is compared with
# stored ones and sent to PostgreSQL several times on its way; with the tzinfo pydantic
# gives (its own, even for Z), each comparison asks both sides for their offset and each
# encoding converts it, 0.4 to 0.8 µs a time against 0.05 (docs/benchmarks.md, sixth
# session). Converted once here, for 0.4 µs.
UtcTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_in_utc)]


class FixSource(StrEnum):
    gps = "gps"
    wifi = "wifi"
    cell = "cell"
    rf = "rf"


# A fix's bounds, the same for a device's fix and for the message on the points topic.
TagId = Annotated[str, Field(min_length=1, max_length=64)]
Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]
AccuracyM = Annotated[float, Field(gt=0)]
SpeedMps = Annotated[float | None, Field(ge=0, le=150)]
HeadingDeg = Annotated[float | None, Field(ge=0, lt=360)]
Satellites = Annotated[int | None, Field(ge=0, le=64)]
Hdop = Annotated[float | None, Field(ge=0, le=100)]


class Fix(BaseModel):
    """One position from a tag, with its horizontal accuracy (a circle, not a point)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    ts: Timestamp
    lat: Latitude
    lon: Longitude
    accuracy_m: AccuracyM
    speed_mps: SpeedMps = None
    heading_deg: HeadingDeg = None
    source: FixSource = FixSource.gps
    sats: Satellites = None
    hdop: Hdop = None


class StreamedFix(Fix):
    """One line of the NDJSON stream: a fix that names its own tag."""

    tag_id: TagId


class Rejection(BaseModel):
    index: int
    field: str
    error: str


class IngestResult(BaseModel):
    accepted: int
    duplicates: int
    # Same tag and time as a stored fix but another position: kept aside, not overwritten.
    conflicts: int = 0
    rejected: list[Rejection] = []


class EventsResult(BaseModel):
    accepted: int
    rejected: list[Rejection] = []


# Held to a device fix's bounds too: ingest admits a clean request's fixes by validating
# them as messages straight away (services/ingest/service.py).
class FixMessage(BaseModel):
    """A validated fix on the points topic, attributed to the subject wearing the tag,
    within the bounds of a device's fix."""

    # Frozen: on the in-process bus every group shares the one object.
    model_config = ConfigDict(allow_inf_nan=False, frozen=True)

    tag_id: TagId
    subject_id: uuid.UUID
    ts: UtcTime
    received_at: UtcTime
    lat: Latitude
    lon: Longitude
    accuracy_m: AccuracyM
    speed_mps: SpeedMps = None
    heading_deg: HeadingDeg = None
    source: FixSource = FixSource.gps
    sats: Satellites = None
    hdop: Hdop = None


class DeviceEventKind(StrEnum):
    tamper = "tamper"
    strap_restored = "strap_restored"
    battery_low = "battery_low"
    charging_started = "charging_started"
    charging_stopped = "charging_stopped"
    no_fix = "no_fix"


class DeviceEventIn(BaseModel):
    """A device condition reported by the tag (strap, battery, charging, no fix)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    tag_id: str = Field(min_length=1, max_length=64)
    ts: Timestamp
    kind: DeviceEventKind
    battery_pct: float | None = Field(default=None, ge=0, le=100)
    detail: str | None = Field(default=None, max_length=500)


class DeviceEvent(DeviceEventIn):
    """A device event on the device-events topic, attributed like a fix."""

    model_config = ConfigDict(frozen=True)

    subject_id: uuid.UUID
    received_at: UtcTime
