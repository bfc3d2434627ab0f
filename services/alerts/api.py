"""Alerts API for offender managers: their caseload's alerts, acknowledging and closing
them, webhook subscriptions and delivery status. A manager sees only the alerts of
subjects they were responsible for when it happened, enforced in every query."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, status
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime
from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from services.alerts import repository
from services.alerts.models import Alert, Subscription
from services.alerts.schemas import (
    AlertDetail,
    AlertKind,
    AlertOut,
    AlertPage,
    CloseIn,
    DeliveryOut,
    EmailIn,
    SubscriptionOut,
    TransitionOut,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
)
from services.alerts.service import Action, AlertState, signing_secret, transition
from services.alerts.worker import enqueue, history_row
from services.common.auth import Principal, Role
from services.common.deps import Admin, Caseload, RuntimeDep, SessionDep
from services.common.errors import NotFound, Unprocessable
from services.registry import service as registry
from services.trails import service as audit_service

# Every successful request here is written to the audit log.
router = APIRouter(
    prefix="/v1", tags=["alerts"], dependencies=[Depends(audit_service.record_request)]
)

# How often an open stream looks for new events, and how often it says it is alive.
STREAM_POLL_S = 0.5
STREAM_HEARTBEAT_S = 15.0


async def _visible_to(session: AsyncSession, user: Principal) -> list[uuid.UUID] | None:
    """The managers whose caseloads bound this user's view; None means all (admins).
    A supervisor sees the caseloads of the managers they supervise, and their own alerts
    (those escalated to them)."""
    if user.role is Role.admin:
        return None
    if user.role is Role.supervisor:
        return [user.id, *await registry.supervised_by(session, user.id)]
    return [user.id]


async def _team_member(session: AsyncSession, team_id: uuid.UUID, user: Principal) -> None:
    """Admins, and the team's own members, may use a team's inbox."""
    if user.role is not Role.admin and await registry.team_of(session, user.id) != team_id:
        raise NotFound(f"team {team_id} does not exist")


async def _owner(
    session: AsyncSession, user: Principal, team_id: uuid.UUID | None
) -> tuple[uuid.UUID, str]:
    if team_id is None:
        return user.id, user.role.value
    await _team_member(session, team_id, user)
    return team_id, "team"


def _page(rows: Sequence[Alert], limit: int, offset: int) -> AlertPage:
    items = [AlertOut.model_validate(a) for a in rows]
    return AlertPage(items=items, next_offset=offset + limit if len(items) == limit else None)


async def _alert_for(
    session: AsyncSession, alert_id: uuid.UUID, user: Principal, lock: bool = False
) -> Alert:
    alert = await (repository.lock if lock else repository.get)(session, alert_id)
    # Someone else's alert is "not found": its existence is itself information.
    if alert is None:
        raise NotFound(f"alert {alert_id} does not exist")
    viewer = await _visible_to(session, user)
    visible = viewer is None or not set(viewer).isdisjoint(alert.managers)
    if not visible and alert.teams:
        visible = await registry.team_of(session, user.id) in alert.teams
    if not visible:
        raise NotFound(f"alert {alert_id} does not exist")
    return alert


@router.get("/alerts")
async def list_alerts(
    session: SessionDep,
    user: Caseload,
    kind: AlertKind | None = None,
    # Superseded alerts (late fixes showed the trail differently) are left out unless
    # asked for by state=superseded; each names the alert that replaced it.
    state: Annotated[str | None, Query(pattern="^(open|acknowledged|closed|superseded)$")] = None,
    subject_id: uuid.UUID | None = None,
    since: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AlertPage:
    rows = await repository.list_alerts(
        session,
        managers=await _visible_to(session, user),
        subject_id=subject_id,
        kind=kind.value if kind else None,
        state=state,
        since=since,
        limit=limit,
        offset=offset,
    )
    return _page(rows, limit, offset)


@router.get("/teams/{team_id}/alerts")
async def team_inbox(
    team_id: uuid.UUID,
    session: SessionDep,
    user: Caseload,
    state: Annotated[str | None, Query(pattern="^(open|acknowledged|closed|superseded)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AlertPage:
    """A team's inbox: every alert of its managers' caseloads, for the team to share."""
    await _team_member(session, team_id, user)
    rows = await repository.list_alerts(
        session,
        managers=None,
        subject_id=None,
        team_id=team_id,
        kind=None,
        state=state,
        since=None,
        limit=limit,
        offset=offset,
    )
    return _page(rows, limit, offset)


@router.get("/alerts/stream")
async def stream(
    runtime: RuntimeDep,
    user: Caseload,
    last_event_id: Annotated[str | None, Header()] = None,
    team_id: uuid.UUID | None = None,
) -> StreamingResponse:
    """Server-Sent Events: each alert event of the caller's caseload (or, with team_id,
    of their team's inbox) as it is filed, with its feed sequence as the event id.
    Reconnect with Last-Event-ID to resume exactly where you were; without it the stream
    starts from now."""
    if last_event_id is not None and not last_event_id.isdigit():
        raise Unprocessable("Last-Event-ID must be an event id from this stream")
    async with runtime.db.transaction() as session:
        viewer = await _visible_to(session, user)
        if team_id is not None:
            await _team_member(session, team_id, user)
            viewer = None

    async def events() -> AsyncIterator[bytes]:
        async with runtime.db.transaction() as session:
            seq = int(last_event_id) if last_event_id else await repository.feed_head(session)
        yield b"retry: 2000\n\n"
        quiet = 0.0
        while True:
            async with runtime.db.transaction() as session:
                batch = await repository.feed_after(session, seq, viewer, team_id=team_id)
                if batch:
                    # Each alert event carries location evidence: what was sent, and to
                    # whom, is audited before it is sent.
                    sent: dict[str, Any] = {"first_seq": batch[0].seq, "last_seq": batch[-1].seq}
                    if team_id is not None:
                        sent["team_id"] = str(team_id)
                    await audit_service.audit(
                        session, user, "stream /v1/alerts/stream", sent, None, len(batch)
                    )
            for e in batch:
                seq = e.seq
                data = orjson.dumps(e.payload)
                yield f"id: {e.seq}\nevent: {e.event}\n".encode() + b"data: " + data + b"\n\n"
            if batch:
                quiet = 0.0
                continue
            await asyncio.sleep(STREAM_POLL_S)
            quiet += STREAM_POLL_S
            if quiet >= STREAM_HEARTBEAT_S:
                quiet = 0.0
                yield b": keep-alive\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/alerts/{alert_id}")
async def get_alert(alert_id: uuid.UUID, session: SessionDep, user: Caseload) -> AlertDetail:
    """The alert with its evidence and every transition it went through."""
    alert = await _alert_for(session, alert_id, user)
    history = [
        TransitionOut.model_validate(t) for t in await repository.transitions(session, alert_id)
    ]
    return AlertDetail(**AlertOut.model_validate(alert).model_dump(), history=history)


async def _act(
    session: AsyncSession,
    alert_id: uuid.UUID,
    user: Principal,
    action: Action,
    body: CloseIn | None = None,
) -> AlertOut:
    alert = await _alert_for(session, alert_id, user, lock=True)
    before = alert.state
    alert.state = transition(AlertState(alert.state), action)
    now = func.now()
    if action is Action.acknowledge:
        alert.acknowledged_at, alert.acknowledged_by = now, user.id  # type: ignore[assignment]
    else:
        assert body is not None
        alert.closed_at, alert.closed_by = now, user.id  # type: ignore[assignment]
        alert.outcome, alert.note = body.outcome.value, body.note
    alert.updated_at = now  # type: ignore[assignment]
    outcome = body.outcome.value if body else None
    await repository.add_transition(
        session,
        history_row(alert, before, user.id, user.name, outcome, body.note if body else None),
    )
    await session.flush()
    await session.refresh(alert)
    await enqueue(session, alert, alert.state)
    await session.commit()
    return AlertOut.model_validate(alert)


@router.post("/alerts/{alert_id}/ack")
async def acknowledge(alert_id: uuid.UUID, session: SessionDep, user: Caseload) -> AlertOut:
    return await _act(session, alert_id, user, Action.acknowledge)


@router.post("/alerts/{alert_id}/close")
async def close(
    alert_id: uuid.UUID, body: CloseIn, session: SessionDep, user: Caseload
) -> AlertOut:
    return await _act(session, alert_id, user, Action.close, body)


@router.get("/alerts/{alert_id}/deliveries")
async def alert_deliveries(
    alert_id: uuid.UUID, session: SessionDep, user: Caseload
) -> list[DeliveryOut]:
    await _alert_for(session, alert_id, user)
    rows = await repository.deliveries(session, alert_id=alert_id)
    if user.role is not Role.admin:
        own = {s.id for s in await repository.list_subscriptions(session, user.id)}
        rows = [d for d in rows if d.subscription_id in own]
    return [DeliveryOut.model_validate(d) for d in rows]


@router.post("/webhooks", status_code=status.HTTP_201_CREATED)
async def subscribe(
    body: WebhookIn, runtime: RuntimeDep, session: SessionDep, user: Caseload
) -> WebhookCreated:
    """A manager's webhook receives their caseload's alerts; an admin's receives all."""
    if len(str(body.url)) > 2000:
        raise Unprocessable("the URL is longer than 2000 characters", field="url")
    owner, role = await _owner(session, user, body.team_id)
    sub = Subscription(owner_id=owner, owner_role=role, channel="webhook", target=str(body.url))
    await repository.add_subscription(session, sub)
    await session.commit()
    key = runtime.settings.alerts.webhook_key.get_secret_value().encode()
    return WebhookCreated(
        **WebhookOut.model_validate(sub).model_dump(), secret=signing_secret(key, str(sub.id))
    )


@router.post("/email-subscriptions", status_code=status.HTTP_201_CREATED)
async def subscribe_email(body: EmailIn, session: SessionDep, user: Caseload) -> SubscriptionOut:
    """Alerts by e-mail: a manager's caseload, or every alert for an admin's (team) box."""
    owner, role = await _owner(session, user, body.team_id)
    sub = Subscription(owner_id=owner, owner_role=role, channel="email", target=body.address)
    await repository.add_subscription(session, sub)
    await session.commit()
    return SubscriptionOut.model_validate(sub)


@router.get("/subscriptions")
async def subscriptions(session: SessionDep, user: Caseload) -> list[SubscriptionOut]:
    owner = None if user.role is Role.admin else user.id
    rows = await repository.list_subscriptions(session, owner)
    return [SubscriptionOut.model_validate(s) for s in rows]


@router.delete("/subscriptions/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT)
async def unsubscribe(subscription_id: uuid.UUID, session: SessionDep, user: Caseload) -> None:
    sub = await repository.get_subscription(session, subscription_id)
    if sub is None or (user.role is not Role.admin and sub.owner_id != user.id):
        raise NotFound(f"subscription {subscription_id} does not exist")
    sub.active = False
    await session.commit()


@router.get("/deliveries")
async def list_deliveries(
    session: SessionDep,
    _: Admin,
    state: Annotated[str, Query(pattern="^(pending|delivered|dead)$")] = "dead",
) -> list[DeliveryOut]:
    """Deliveries by state; dead ones wait here for an admin to replay them."""
    return [
        DeliveryOut.model_validate(d) for d in await repository.deliveries(session, state=state)
    ]


@router.post("/deliveries/{delivery_id}/replay")
async def replay(delivery_id: uuid.UUID, session: SessionDep, _: Admin) -> DeliveryOut:
    delivery = await repository.get_delivery(session, delivery_id)
    if delivery is None:
        raise NotFound(f"delivery {delivery_id} does not exist")
    delivery.state, delivery.attempts, delivery.next_attempt_at = "pending", 0, func.now()  # type: ignore[assignment]
    await session.flush()
    await session.refresh(delivery)
    await session.commit()
    return DeliveryOut.model_validate(delivery)
