"""All SQL of the alert store."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.alerts.models import Alert
from services.alerts.schemas import AlertEvent, AlertKind, AlertMessage


async def apply(session: AsyncSession, message: AlertMessage) -> bool:
    """Applies one alert event; returns True when it opened a new alert.

    Idempotent: the alert id is the key. A zone alert's events carry the whole episode as
    it now stands, so applying one twice, or replaying them in order, ends in the same row.
    A crime match keeps what it was first filed with.
    """
    if message.event is AlertEvent.superseded:
        await session.execute(
            update(Alert)
            .where(Alert.id == message.alert_id)
            .values(state="superseded", superseded_by=message.superseded_by, updated_at=func.now())
        )
        return False
    values = {
        "id": message.alert_id,
        "kind": message.kind.value,
        "state": "open",
        "subject_id": message.subject_id,
        "zone_id": message.zone_id,
        "crime_id": message.crime_id,
        "opened_at": message.at,
        "ended_at": message.ended_at,
        "confidence": message.confidence,
        "last_fix_at": message.last_fix_at,
        "late": message.late,
        "delay_s": message.delay_s,
        "reason": message.reason,
        "details": message.details,
        "evidence": [f.model_dump(mode="json") for f in message.evidence],
    }
    stmt = insert(Alert).values(**values)
    if message.kind is AlertKind.crime_match:
        upsert = stmt.on_conflict_do_nothing(index_elements=[Alert.id])
    else:
        upsert = stmt.on_conflict_do_update(
            index_elements=[Alert.id],
            set_={
                **{
                    c: stmt.excluded[c]
                    for c in (
                        "ended_at",
                        "confidence",
                        "last_fix_at",
                        "reason",
                        "details",
                        "evidence",
                    )
                },
                "state": "open",
                "superseded_by": None,
                "updated_at": func.now(),
            },
        )
    # xmax is 0 only on a row this statement inserted (not on one it updated).
    inserted = await session.scalar(upsert.returning(literal_column("xmax = 0")))
    return bool(inserted)


async def get(session: AsyncSession, alert_id: uuid.UUID) -> Alert | None:
    return await session.get(Alert, alert_id)


async def list_alerts(
    session: AsyncSession,
    *,
    subject_ids: Sequence[uuid.UUID] | None,
    kind: str | None,
    state: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
) -> Sequence[Alert]:
    query = select(Alert)
    if subject_ids is not None:
        query = query.where(Alert.subject_id.in_(subject_ids))
    if kind is not None:
        query = query.where(Alert.kind == kind)
    if state is not None:
        query = query.where(Alert.state == state)
    else:
        query = query.where(Alert.state != "superseded")
    if since is not None:
        query = query.where(Alert.opened_at >= since)
    rows = await session.scalars(
        query.order_by(Alert.opened_at.desc(), Alert.id).limit(limit).offset(offset)
    )
    return rows.all()
