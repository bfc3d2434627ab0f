"""Alert messages on the alerts topic, and the alert as the manager API shows it."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AnyHttpUrl, AwareDatetime, BaseModel, ConfigDict, Field, computed_field

from services.alerts.service import CloseOutcome


class AlertKind(StrEnum):
    exclusion = "exclusion"  # inside an exclusion zone while it is in force
    inclusion = "inclusion"  # outside an inclusion zone (a curfew) while it is in force
    no_data = "no_data"  # no fixes for too long while a curfew is in force
    crime_match = "crime_match"
    tamper = "tamper"  # strap opened or cut, until restored
    battery_low = "battery_low"  # until charging starts
    no_fix = "no_fix"  # the tag reports it cannot get a position
    silence = "silence"  # no fix has arrived for too long


class AlertEvent(StrEnum):
    opened = "opened"
    updated = "updated"  # the episode grew, was confirmed, or ended
    superseded = "superseded"  # late fixes showed the trail differently; see superseded_by


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

    model_config = ConfigDict(frozen=True)

    alert_id: uuid.UUID
    kind: AlertKind
    event: AlertEvent
    subject_id: uuid.UUID
    zone_id: uuid.UUID | None = None
    crime_id: uuid.UUID | None = None
    # When it began (fix time), not when we noticed; ended_at when it is over.
    at: AwareDatetime
    ended_at: AwareDatetime | None = None
    confidence: str | None = None
    last_fix_at: AwareDatetime | None = None
    # The fixes the alert rests on, as evidence.
    evidence: list[FixRef] = []
    late: bool = False
    delay_s: float = 0.0
    reason: str = ""
    details: dict[str, Any] = {}
    superseded_by: uuid.UUID | None = None


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: AlertKind
    state: str
    subject_id: uuid.UUID
    zone_id: uuid.UUID | None
    crime_id: uuid.UUID | None
    opened_at: datetime
    ended_at: datetime | None
    confidence: str | None
    last_fix_at: datetime | None
    late: bool
    delay_s: float
    reason: str
    superseded_by: uuid.UUID | None
    details: dict[str, Any]
    evidence: list[dict[str, Any]]
    severity: str
    acknowledged_at: datetime | None
    acknowledged_by: uuid.UUID | None
    escalated_at: datetime | None
    closed_at: datetime | None
    closed_by: uuid.UUID | None
    outcome: str | None
    note: str | None
    created_at: datetime
    updated_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def duration_s(self) -> float | None:
        """How long the episode has lasted so far (or lasted, once ended)."""
        until = self.ended_at or self.last_fix_at
        return None if until is None else max(0.0, (until - self.opened_at).total_seconds())


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_offset: int | None


class CloseIn(BaseModel):
    outcome: CloseOutcome
    note: str | None = Field(default=None, max_length=4000)


class TransitionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    from_state: str | None
    to_state: str
    actor_id: uuid.UUID | None
    actor_name: str
    at: datetime
    outcome: str | None
    note: str | None


class AlertDetail(AlertOut):
    history: list[TransitionOut]


class WebhookIn(BaseModel):
    url: AnyHttpUrl = Field(description="http(s) URL that receives signed POSTs")
    # For a team's inbox rather than the caller's own caseload.
    team_id: uuid.UUID | None = None


class EmailIn(BaseModel):
    address: str = Field(pattern=r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$", max_length=320)
    team_id: uuid.UUID | None = None


class SubscriptionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    owner_id: uuid.UUID
    channel: str
    target: str
    active: bool
    created_at: datetime


class WebhookOut(SubscriptionOut):
    pass


class WebhookCreated(WebhookOut):
    # Shown once; derived from the server's key, never stored.
    secret: str


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    alert_id: uuid.UUID
    subscription_id: uuid.UUID
    event: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class AlertFeedMessage(BaseModel):
    """A filed alert event, on the alert-feed topic for downstream case-management
    systems. seq orders the feed and tells a consumer it has seen a message already."""

    model_config = ConfigDict(frozen=True)

    seq: int
    event: str
    alert: dict[str, Any]
