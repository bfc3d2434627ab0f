"""All SQL of the alert store."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.alerts.models import Alert
from services.alerts.schemas import AlertEvent, AlertMessage


async def apply(session: AsyncSession, message: AlertMessage) -> bool:
    """Applies one alert event; returns True when it opened a new alert.

    Idempotent: the alert id is the key, an "opened" for a known alert changes nothing,
    and a "closed" only ever sets the close time once.
    """
    evidence = [message.fix.model_dump(mode="json")] if message.fix else []
    if message.event is AlertEvent.opened:
        stmt = (
            insert(Alert)
            .values(
                id=message.alert_id,
                kind=message.kind.value,
                state="open",
                subject_id=message.subject_id,
                zone_id=message.zone_id,
                crime_id=message.crime_id,
                opened_at=message.at,
                late=message.late,
                delay_s=message.delay_s,
                details=message.details,
                evidence=evidence,
            )
            .on_conflict_do_nothing(index_elements=[Alert.id])
            .returning(Alert.id)
        )
        return (await session.scalar(stmt)) is not None
    # A close can arrive for an alert whose opening we never stored only if the open was
    # dead-lettered; then there is nothing to close, and the dead letter says why.
    alert = await session.get(Alert, message.alert_id, with_for_update=True)
    if alert is not None and alert.closed_at is None:
        alert.closed_at = message.at
        alert.evidence = [*alert.evidence, *evidence]
        alert.details = {**alert.details, "episode_closed_by": evidence}
        alert.updated_at = func.now()  # type: ignore[assignment]
    return False


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
    if since is not None:
        query = query.where(Alert.opened_at >= since)
    rows = await session.scalars(
        query.order_by(Alert.opened_at.desc(), Alert.id).limit(limit).offset(offset)
    )
    return rows.all()
