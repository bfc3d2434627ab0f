"""Device conditions as episodes, derived from a subject's ordered device events: a strap
tamper until the strap is restored, a low battery until charging starts, a run of no-fix
reports; and silence, when no fix has come for too long. Pure, like the zone decisions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from services.zones.service import ALERT_NAMESPACE, Confidence


class DeviceCondition(StrEnum):
    tamper = "tamper"
    battery_low = "battery_low"
    no_fix = "no_fix"
    silence = "silence"


# Event kind that opens a condition -> event kinds that end it.
ENDS: dict[DeviceCondition, frozenset[str]] = {
    DeviceCondition.tamper: frozenset({"strap_restored"}),
    DeviceCondition.battery_low: frozenset({"charging_started"}),
    DeviceCondition.no_fix: frozenset(),
}


@dataclass(frozen=True, slots=True)
class DeviceEventFact:
    tag_id: str
    ts: datetime
    kind: str
    received_at: datetime
    detail: str | None = None


@dataclass(frozen=True)
class ConditionEpisode:
    subject_id: uuid.UUID
    condition: DeviceCondition
    start: datetime
    end: datetime | None
    last_fix: datetime | None  # the last event (or fix) that supports it
    reason: str
    confidence: Confidence = Confidence.confirmed

    @property
    def id(self) -> uuid.UUID:
        return condition_id(self.subject_id, self.condition, self.start)


def condition_id(subject_id: uuid.UUID, condition: DeviceCondition, start: datetime) -> uuid.UUID:
    key = f"device|{subject_id}|{condition.value}|{start.astimezone(UTC).isoformat()}"
    return uuid.uuid5(ALERT_NAMESPACE, key)


def evaluate_events(
    subject_id: uuid.UUID,
    events: Sequence[DeviceEventFact],
    no_fix_merge: timedelta = timedelta(hours=1),
) -> list[ConditionEpisode]:
    """One episode per condition for as long as it lasts, however many times the device
    repeats itself. no_fix reports closer together than no_fix_merge are one episode."""
    ordered = sorted(events, key=lambda e: (e.ts, e.kind))
    out: list[ConditionEpisode] = []
    for condition, enders in ENDS.items():
        start: datetime | None = None
        last: datetime | None = None
        count = 0
        for e in ordered:
            if e.kind == condition.value:
                if condition is DeviceCondition.no_fix and last and e.ts - last > no_fix_merge:
                    out.append(_episode(subject_id, condition, start, last, last, count))
                    start = None
                if start is None:
                    start, count = e.ts, 0
                last, count = e.ts, count + 1
            elif e.kind in enders and start is not None:
                out.append(_episode(subject_id, condition, start, e.ts, last, count))
                start, last = None, None
        if start is not None:
            end = last if condition is DeviceCondition.no_fix else None
            out.append(_episode(subject_id, condition, start, end, last, count))
    out.sort(key=lambda e: (e.start, e.condition))
    return out


def _episode(
    subject_id: uuid.UUID,
    condition: DeviceCondition,
    start: datetime | None,
    end: datetime | None,
    last: datetime | None,
    count: int,
) -> ConditionEpisode:
    assert start is not None
    reason = f"{count} {condition.value} report(s) from the tag from {start.isoformat()}"
    return ConditionEpisode(subject_id, condition, start, end, last, reason)


def silence(
    subject_id: uuid.UUID,
    last_fix: datetime | None,
    since: datetime,
    now: datetime,
    silent_after: timedelta,
) -> ConditionEpisode | None:
    """No fix for silent_after: an episode from the last fix (or from `since`, when the
    tag has never sent one) that lasts until a fix comes."""
    start = last_fix or since
    if now - start < silent_after:
        return None
    minutes = (now - start).total_seconds() / 60
    reason = f"no fix for {minutes:.0f} min (silence alert after {silent_after})"
    return ConditionEpisode(subject_id, DeviceCondition.silence, start, None, last_fix, reason)
