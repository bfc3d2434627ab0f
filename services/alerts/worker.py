"""The alert dispatcher: files alert events from the bus into the alert store, and puts
what receivers must hear about into the delivery outbox in the same transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from services.alerts import repository
from services.alerts.models import Alert, AlertTransition, Delivery, FeedEvent
from services.alerts.schemas import AlertEvent, AlertKind, AlertMessage, AlertOut
from services.alerts.service import AlertState, severity
from services.common.database import Database
from services.common.metrics import ALERTS_OPENED
from services.common.timeutil import utcnow
from services.registry import service as registry

GROUP = "tagtrail-dispatch"
SYSTEM = "tagtrail"


def payload(alert: Alert, event: str) -> dict[str, Any]:
    """What a receiver gets: the event and the alert as the API shows it."""
    return {"event": event, "alert": AlertOut.model_validate(alert).model_dump(mode="json")}


async def enqueue(session: AsyncSession, alert: Alert, event: str) -> None:
    """The event on the live feed, and outbox rows for every subscription that should
    hear of it, in the transaction that made the change."""
    now = utcnow()
    body = payload(alert, event)
    await repository.add_feed(
        session,
        FeedEvent(
            alert_id=alert.id,
            event=event,
            managers=alert.managers,
            teams=alert.teams,
            payload=body,
        ),
    )
    subscriptions = await repository.subscriptions_for(session, alert.managers, alert.teams)
    await repository.add_deliveries(
        session,
        [
            Delivery(
                alert_id=alert.id,
                subscription_id=s.id,
                event=event,
                payload=body,
                state="pending",
                attempts=0,
                next_attempt_at=now,
            )
            for s in subscriptions
        ],
    )


async def record(
    session: AsyncSession,
    alert: Alert,
    before: str | None,
    actor: uuid.UUID | None = None,
    actor_name: str = SYSTEM,
    outcome: str | None = None,
    note: str | None = None,
) -> None:
    await repository.add_transition(
        session,
        AlertTransition(
            alert_id=alert.id,
            from_state=before,
            to_state=alert.state,
            actor_id=actor,
            actor_name=actor_name,
            outcome=outcome,
            note=note,
        ),
    )


async def file(session: AsyncSession, m: AlertMessage, alert: Alert | None) -> str | None:
    """Applies one alert event to its alert, locked by the caller (None: not filed yet);
    returns the event receivers must hear of, if any.

    Idempotent: the alert id is the key. A zone alert's events carry the whole episode
    as it now stands, so applying one twice, or replaying them in order, ends in the
    same row. A manager's acknowledgement or closing is never undone by an update.
    """
    if m.event is AlertEvent.superseded:
        if alert is None or alert.state == AlertState.superseded:
            return None
        before = alert.state
        alert.state = AlertState.superseded
        alert.superseded_by = m.superseded_by
        alert.updated_at = func.now()  # type: ignore[assignment]
        await record(session, alert, before)
        return "superseded"
    evidence = [f.model_dump(mode="json") for f in m.evidence]
    if alert is None:
        managers, risk = await registry.responsible_at(session, m.subject_id, m.at)
        alert = Alert(
            id=m.alert_id,
            kind=m.kind.value,
            state=AlertState.open,
            subject_id=m.subject_id,
            zone_id=m.zone_id,
            crime_id=m.crime_id,
            opened_at=m.at,
            ended_at=m.ended_at,
            confidence=m.confidence,
            last_fix_at=m.last_fix_at,
            late=m.late,
            delay_s=m.delay_s,
            reason=m.reason,
            details={**m.details, "risk": risk},
            evidence=evidence,
            severity=severity(m.kind.value, m.confidence, risk),
            managers=managers,
            teams=await registry.teams_of(session, managers),
        )
        await repository.add(session, alert)
        await record(session, alert, None)
        ALERTS_OPENED.labels(m.kind.value).inc()
        return "opened"
    if m.kind is AlertKind.crime_match:
        return None  # a match keeps what it was first filed with
    was_ended = alert.ended_at is not None
    alert.ended_at = m.ended_at
    alert.confidence = m.confidence
    alert.last_fix_at = m.last_fix_at
    alert.reason = m.reason
    alert.details = {**m.details, "risk": alert.details.get("risk", "medium")}
    alert.evidence = evidence
    alert.severity = severity(m.kind.value, m.confidence, alert.details["risk"])
    alert.updated_at = func.now()  # type: ignore[assignment]
    if alert.state == AlertState.superseded:
        # Later evidence brought the episode back as it was.
        alert.state, alert.superseded_by = AlertState.open, None
        await record(session, alert, AlertState.superseded)
        return "opened"
    if not was_ended and alert.ended_at is not None:
        return "ended"
    return None


class Dispatcher:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def handle(self, messages: list[AlertMessage]) -> None:
        async with self.db.transaction() as session:
            alerts = {
                a.id: a
                for a in await repository.lock_all(session, sorted({m.alert_id for m in messages}))
            }
            for m in messages:
                event = await file(session, m, alerts.get(m.alert_id))
                if event is not None:
                    # As stored (the database's clock stamps it): what receivers get.
                    await session.flush()
                    alert = await session.get(Alert, m.alert_id, populate_existing=True)
                    assert alert is not None
                    # A new one, for a later event of the same alert in this batch.
                    alerts[m.alert_id] = alert
                    await enqueue(session, alert, event)
