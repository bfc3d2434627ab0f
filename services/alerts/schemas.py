"""Alert messages on the alerts topic, and the alert as the manager API shows it."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict


class AlertKind(StrEnum):
    exclusion = "exclusion"
    crime_match = "crime_match"


class AlertEvent(StrEnum):
    opened = "opened"
    closed = "closed"


class FixRef(BaseModel):
    """The fix an alert event rests on, as evidence."""

    tag_id: str
    ts: AwareDatetime
    received_at: AwareDatetime
    lat: float
    lon: float
    accuracy_m: float


class AlertMessage(BaseModel):
    """An event in an alert's life. alert_id derives from what the alert is about, so a
    replayed message lands on the same alert."""

    alert_id: uuid.UUID
    kind: AlertKind
    event: AlertEvent
    subject_id: uuid.UUID
    zone_id: uuid.UUID | None = None
    crime_id: uuid.UUID | None = None
    # When it happened (fix time), not when we noticed.
    at: AwareDatetime
    fix: FixRef | None = None
    late: bool = False
    delay_s: float = 0.0
    details: dict[str, Any] = {}


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: AlertKind
    state: str
    subject_id: uuid.UUID
    zone_id: uuid.UUID | None
    crime_id: uuid.UUID | None
    opened_at: datetime
    closed_at: datetime | None
    late: bool
    delay_s: float
    details: dict[str, Any]
    evidence: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_offset: int | None
