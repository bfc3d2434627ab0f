"""Ingest decisions: validate each fix on its own, attribute it to the subject wearing the
tag, separate re-sends from new fixes, and put the accepted ones on the bus."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.auth import Principal
from services.common.bus import Bus
from services.common.database import Database
from services.common.metrics import (
    FIXES_ACCEPTED,
    FIXES_DUPLICATE,
    FIXES_REJECTED,
)
from services.common.settings import IngestSettings
from services.ingest import repository
from services.ingest.schemas import (
    DeviceEvent,
    DeviceEventIn,
    EventsResult,
    FixMessage,
    IngestResult,
    Rejection,
    StreamedFix,
)
from services.registry import service as registry
from services.registry.service import TagInfo
from services.topics import DEVICE_EVENTS, POINTS


@dataclass(frozen=True, slots=True)
class Item:
    """One fix as it came in: its position in the request and its raw JSON value."""

    index: int
    raw: Any


# Stands in for a stream line that was not JSON, so it is rejected in its place.
NOT_JSON = object()


def describe(exc: ValidationError) -> tuple[str, str]:
    """The first problem of a validation error, as (field, reason) a person can act on."""
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"]) or "fix"
    return field, err["msg"]


def validate(item: Item, now: datetime, settings: IngestSettings) -> StreamedFix | Rejection:
    """Checks one fix against the schema and the bounds; pure."""
    if item.raw is NOT_JSON:
        return Rejection(index=item.index, field="line", error="is not valid JSON")
    if not isinstance(item.raw, dict):
        return Rejection(index=item.index, field="fix", error="must be a JSON object")
    try:
        fix = StreamedFix.model_validate(item.raw)
    except ValidationError as exc:
        field, reason = describe(exc)
        return Rejection(index=item.index, field=field, error=reason)
    if fix.accuracy_m > settings.max_accuracy_m:
        return Rejection(
            index=item.index,
            field="accuracy_m",
            error=f"must be at most {settings.max_accuracy_m:g} m",
        )
    skew = timedelta(seconds=settings.max_clock_skew_s)
    if fix.ts > now + skew:
        ahead = (fix.ts - now).total_seconds()
        return Rejection(
            index=item.index,
            field="ts",
            error=f"is {ahead:.0f} s in the future (allowed clock skew {skew.total_seconds():g} s)",
        )
    if fix.ts < now - timedelta(days=settings.max_fix_age_days):
        return Rejection(
            index=item.index,
            field="ts",
            error=f"is more than {settings.max_fix_age_days} days old",
        )
    return fix


async def ingest(
    session: AsyncSession,
    db: Database,
    bus: Bus,
    supplier: Principal,
    items: Sequence[Item],
    now: datetime,
    settings: IngestSettings,
) -> IngestResult:
    rejected: list[Rejection] = []
    valid: list[tuple[int, StreamedFix]] = []
    for item in items:
        outcome = validate(item, now, settings)
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
        else:
            valid.append((item.index, outcome))

    tags = await registry.resolve_tags(session, [f.tag_id for _, f in valid])
    attributed: list[FixMessage] = []
    for index, fix in valid:
        subject = attribute(tags, supplier, index, fix.tag_id, fix.ts)
        if isinstance(subject, Rejection):
            rejected.append(subject)
        else:
            attributed.append(FixMessage(subject_id=subject, received_at=now, **fix.model_dump()))

    fresh, duplicates, conflicts = await _separate_resends(db, attributed)
    await bus.publish(POINTS, [(m.tag_id, m) for m in fresh])

    FIXES_ACCEPTED.inc(len(fresh) - conflicts)
    FIXES_DUPLICATE.inc(duplicates)
    for r in rejected:
        FIXES_REJECTED.labels(r.field).inc()
    rejected.sort(key=lambda r: r.index)
    return IngestResult(
        accepted=len(fresh) - conflicts,
        duplicates=duplicates,
        conflicts=conflicts,
        rejected=rejected,
    )


def attribute(
    tags: dict[str, TagInfo], supplier: Principal, index: int, tag_id: str, ts: datetime
) -> uuid.UUID | Rejection:
    """The subject wearing this supplier's tag at ts, or why there is none."""
    info = tags.get(tag_id)
    if info is None:
        return Rejection(index=index, field="tag_id", error="unknown tag")
    if info.supplier_id != supplier.id:
        return Rejection(
            index=index, field="tag_id", error="tag is not registered to this supplier"
        )
    subject_id = info.subject_at(ts)
    if subject_id is None:
        return Rejection(
            index=index, field="ts", error=f"tag {tag_id} is not assigned to a subject at this time"
        )
    return subject_id


async def ingest_events(
    session: AsyncSession,
    bus: Bus,
    supplier: Principal,
    items: Sequence[Item],
    now: datetime,
    settings: IngestSettings,
) -> EventsResult:
    """Device events: validated and attributed like fixes, then put on the bus."""
    rejected: list[Rejection] = []
    valid: list[tuple[int, DeviceEventIn]] = []
    for item in items:
        try:
            event = DeviceEventIn.model_validate(item.raw)
        except ValidationError as exc:
            field, reason = describe(exc)
            rejected.append(Rejection(index=item.index, field=field, error=reason))
            continue
        if event.ts > now + timedelta(seconds=settings.max_clock_skew_s):
            rejected.append(Rejection(index=item.index, field="ts", error="is in the future"))
            continue
        valid.append((item.index, event))
    tags = await registry.resolve_tags(session, [e.tag_id for _, e in valid])
    events: list[DeviceEvent] = []
    for index, event in valid:
        subject = attribute(tags, supplier, index, event.tag_id, event.ts)
        if isinstance(subject, Rejection):
            rejected.append(subject)
        else:
            events.append(DeviceEvent(subject_id=subject, received_at=now, **event.model_dump()))
    await bus.publish(DEVICE_EVENTS, [(e.tag_id, e) for e in events])
    rejected.sort(key=lambda r: r.index)
    return EventsResult(accepted=len(events), rejected=rejected)


def _position(m: FixMessage) -> tuple[float, float, float]:
    return (m.lat, m.lon, m.accuracy_m)


async def _separate_resends(
    db: Database, fixes: list[FixMessage]
) -> tuple[list[FixMessage], int, int]:
    """Drops identical re-sends (in the request or already stored); keeps conflicting ones,
    which the store worker sets aside, and counts them."""
    async with db.pool.acquire() as conn:
        stored = await repository.stored_positions(conn, [(f.tag_id, f.ts) for f in fixes])
    seen: dict[tuple[str, datetime], tuple[float, float, float]] = dict(stored)
    fresh: list[FixMessage] = []
    duplicates = conflicts = 0
    for f in fixes:
        key = (f.tag_id, f.ts)
        known = seen.get(key)
        if known is None:
            seen[key] = _position(f)
        elif known == _position(f):
            duplicates += 1
            continue
        else:
            conflicts += 1
        fresh.append(f)
    return fresh, duplicates, conflicts
