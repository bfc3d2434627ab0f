"""The alert dispatcher: files alert events from the bus into the alert store, and puts
what receivers must hear about into the delivery outbox in the same transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.alerts import repository
from services.alerts.models import Alert, AlertTransition, Delivery, FeedEvent, Subscription
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


def receives(subscription: Subscription, alert: Alert) -> bool:
    """Whether this subscription hears of this alert (as `subscriptions_for` selects)."""
    return subscription.owner_role == "admin" or (
        subscription.owner_id in alert.managers or subscription.owner_id in alert.teams
    )


async def enqueue_all(
    session: AsyncSession, events: Sequence[tuple[Alert, str, dict[str, Any]]]
) -> None:
    """Each (alert, event, payload) on the live feed, and outbox rows for every
    subscription that should hear of it, in the transaction that made the change; the
    subscriptions read once for them all."""
    if not events:
        return
    now = utcnow()
    subscriptions = await repository.subscriptions_for(
        session,
        list({m for alert, _, _ in events for m in alert.managers}),
        list({t for alert, _, _ in events for t in alert.teams}),
    )
    for alert, event, body in events:
        session.add(
            FeedEvent(
                alert_id=alert.id,
                event=event,
                managers=alert.managers,
                teams=alert.teams,
                payload=body,
            )
        )
        session.add_all(
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
            if receives(s, alert)
        )
    await session.flush()


async def enqueue(session: AsyncSession, alert: Alert, event: str) -> None:
    """The event on the live feed, and outbox rows for every subscription that should
    hear of it, in the transaction that made the change."""
    await enqueue_all(session, [(alert, event, payload(alert, event))])


def history_row(
    alert: Alert,
    before: str | None,
    actor: uuid.UUID | None = None,
    actor_name: str = SYSTEM,
    outcome: str | None = None,
    note: str | None = None,
) -> AlertTransition:
    """The history row of an alert's change from `before` to the state it is now in."""
    return AlertTransition(
        alert_id=alert.id,
        from_state=before,
        to_state=alert.state,
        actor_id=actor,
        actor_name=actor_name,
        outcome=outcome,
        note=note,
    )


def evidence_of(m: AlertMessage) -> list[dict[str, Any]]:
    return [f.model_dump(mode="json") for f in m.evidence]


class Filing:
    """One batch of alert events applied to their alerts in memory, to be written in a
    few statements: the alerts locked and read in one, new ones and changes flushed
    together, then their transitions, feed events and deliveries together. Statement by
    statement through the ORM, the dispatcher made about twenty round trips for an alert
    opened and cost 1.4 µs a fix at 46,000 fixes a second (docs/benchmarks.md, sixteenth
    session).

    `now` is the transaction's clock, which `now()` in the database would give, so an
    event's payload is the alert as it is stored, taken when the event happens: a later
    event of the same alert in the batch does not change what an earlier one said."""

    def __init__(
        self,
        alerts: dict[uuid.UUID, Alert],
        responsible: dict[tuple[uuid.UUID, datetime], registry.Responsible],
        now: datetime,
    ) -> None:
        self.alerts = alerts
        self.responsible = responsible
        self.now = now
        self.added: list[Alert] = []
        self.transitions: list[AlertTransition] = []
        self.events: list[tuple[Alert, str, dict[str, Any]]] = []

    def file(self, m: AlertMessage) -> None:
        """Applies one alert event to its alert, and notes the event receivers must hear
        of, if any.

        Idempotent: the alert id is the key. A zone alert's events carry the whole
        episode as it now stands, so applying one twice, or replaying them in order, ends
        in the same row. A manager's acknowledgement or closing is never undone by an
        update.
        """
        alert = self.alerts.get(m.alert_id)
        event = self._apply(m, alert) if alert is not None else self._open(m)
        if event is not None:
            alert = self.alerts[m.alert_id]
            self.events.append((alert, event, payload(alert, event)))

    def _open(self, m: AlertMessage) -> str | None:
        if m.event is AlertEvent.superseded:
            return None
        who = self.responsible[(m.subject_id, m.at)]
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
            details={**m.details, "risk": who.risk},
            evidence=evidence_of(m),
            severity=severity(m.kind.value, m.confidence, who.risk),
            managers=who.managers,
            teams=who.teams,
            created_at=self.now,
            updated_at=self.now,
        )
        self.alerts[alert.id] = alert
        self.added.append(alert)
        self._record(alert, None)
        ALERTS_OPENED.labels(m.kind.value).inc()
        return "opened"

    def _apply(self, m: AlertMessage, alert: Alert) -> str | None:
        if m.event is AlertEvent.superseded:
            if alert.state == AlertState.superseded:
                return None
            before = alert.state
            alert.state = AlertState.superseded
            alert.superseded_by = m.superseded_by
            alert.updated_at = self.now
            self._record(alert, before)
            return "superseded"
        if m.kind is AlertKind.crime_match:
            return None  # a match keeps what it was first filed with
        was_ended = alert.ended_at is not None
        alert.ended_at = m.ended_at
        alert.confidence = m.confidence
        alert.last_fix_at = m.last_fix_at
        alert.reason = m.reason
        alert.details = {**m.details, "risk": alert.details.get("risk", "medium")}
        alert.evidence = evidence_of(m)
        alert.severity = severity(m.kind.value, m.confidence, alert.details["risk"])
        alert.updated_at = self.now
        if alert.state == AlertState.superseded:
            # Later evidence brought the episode back as it was.
            alert.state, alert.superseded_by = AlertState.open, None
            self._record(alert, AlertState.superseded)
            return "opened"
        if not was_ended and alert.ended_at is not None:
            return "ended"
        return None

    def _record(self, alert: Alert, before: str | None) -> None:
        self.transitions.append(history_row(alert, before))


class Dispatcher:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def handle(self, messages: list[AlertMessage]) -> None:
        async with self.db.transaction() as session:
            alerts = {
                a.id: a
                for a in await repository.lock_all(session, sorted({m.alert_id for m in messages}))
            }
            # Who answers for the alerts not filed yet, for all of them at once.
            responsible = await registry.responsible_at(
                session,
                {
                    (m.subject_id, m.at)
                    for m in messages
                    if m.alert_id not in alerts and m.event is not AlertEvent.superseded
                },
            )
            filing = Filing(alerts, responsible, await repository.clock(session))
            for m in messages:
                filing.file(m)
            session.add_all(filing.added)
            await session.flush()  # the alerts, before what refers to them
            session.add_all(filing.transitions)
            await enqueue_all(session, filing.events)
