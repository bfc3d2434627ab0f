"""All SQL of the alert store."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.alerts.models import (
    Alert,
    AlertTransition,
    Delivery,
    DeliveryAttempt,
    FeedEvent,
    RelayPosition,
    Subscription,
)
from services.common.database import any_of


async def lock(session: AsyncSession, alert_id: uuid.UUID) -> Alert | None:
    return await session.get(Alert, alert_id, with_for_update=True)


async def lock_all(session: AsyncSession, alert_ids: Iterable[uuid.UUID]) -> list[Alert]:
    """Locks these alerts (those that exist) in one statement, in id order so that two
    lockers cannot wait on each other. While the caller holds the list, `session.get`
    finds each of them in the session without a query; the session keeps only weak
    references, so an alert nobody holds is read again (and the alert before it flushed
    first), which cost the dispatch worker 38 µs a fix at 5,000 fixes a second on Kafka
    (docs/benchmarks.md, seventh session)."""
    return list(
        await session.scalars(
            select(Alert).where(any_of(Alert.id, alert_ids)).order_by(Alert.id).with_for_update()
        )
    )


async def clock(session: AsyncSession) -> datetime:
    """The transaction's time, as `now()` stamps rows in it."""
    now = await session.scalar(select(func.now()))
    assert now is not None
    return now


async def add_transition(session: AsyncSession, transition: AlertTransition) -> None:
    session.add(transition)
    await session.flush()


async def transitions(session: AsyncSession, alert_id: uuid.UUID) -> Sequence[AlertTransition]:
    rows = await session.scalars(
        select(AlertTransition)
        .where(AlertTransition.alert_id == alert_id)
        .order_by(AlertTransition.id)
    )
    return rows.all()


async def subscriptions_for(
    session: AsyncSession, managers: Sequence[uuid.UUID], teams: Sequence[uuid.UUID]
) -> Sequence[Subscription]:
    """Active subscriptions that receive an alert for these managers and teams: theirs,
    and every administrator's (downstream systems)."""
    rows = await session.scalars(
        select(Subscription).where(
            Subscription.active.is_(True),
            or_(
                Subscription.owner_role == "admin",
                any_of(Subscription.owner_id, [*managers, *teams]),
            ),
        )
    )
    return rows.all()


async def get(session: AsyncSession, alert_id: uuid.UUID) -> Alert | None:
    return await session.get(Alert, alert_id)


async def list_alerts(
    session: AsyncSession,
    *,
    managers: Sequence[uuid.UUID] | None,
    subject_id: uuid.UUID | None,
    team_id: uuid.UUID | None = None,
    kind: str | None,
    state: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
) -> Sequence[Alert]:
    query = select(Alert)
    if managers is not None:
        # Who may see an alert was fixed when it happened: the subject's managers then.
        query = query.where(Alert.managers.overlap(list(managers)))
    if team_id is not None:
        query = query.where(Alert.teams.contains([team_id]))
    if subject_id is not None:
        query = query.where(Alert.subject_id == subject_id)
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


async def add_subscription(session: AsyncSession, subscription: Subscription) -> None:
    session.add(subscription)
    await session.flush()


async def get_subscription(
    session: AsyncSession, subscription_id: uuid.UUID
) -> Subscription | None:
    return await session.get(Subscription, subscription_id)


async def list_subscriptions(
    session: AsyncSession, owner_id: uuid.UUID | None
) -> Sequence[Subscription]:
    query = select(Subscription).where(Subscription.active.is_(True))
    if owner_id is not None:
        query = query.where(Subscription.owner_id == owner_id)
    return (await session.scalars(query.order_by(Subscription.created_at))).all()


async def deliveries(
    session: AsyncSession, *, alert_id: uuid.UUID | None = None, state: str | None = None
) -> Sequence[Delivery]:
    query = select(Delivery)
    if alert_id is not None:
        query = query.where(Delivery.alert_id == alert_id)
    if state is not None:
        query = query.where(Delivery.state == state)
    return (await session.scalars(query.order_by(Delivery.created_at).limit(1000))).all()


async def get_delivery(session: AsyncSession, delivery_id: uuid.UUID) -> Delivery | None:
    return await session.get(Delivery, delivery_id, with_for_update=True)


async def claim_due(session: AsyncSession, now: datetime) -> Delivery | None:
    """One delivery that is due, locked so that no other sender takes it meanwhile."""
    return await session.scalar(
        select(Delivery)
        .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


async def add_attempt(session: AsyncSession, attempt: DeliveryAttempt) -> None:
    session.add(attempt)
    await session.flush()


async def feed_after(
    session: AsyncSession,
    seq: int,
    managers: Sequence[uuid.UUID] | None,
    limit: int = 200,
    team_id: uuid.UUID | None = None,
) -> Sequence[FeedEvent]:
    query = select(FeedEvent).where(FeedEvent.seq > seq)
    if managers is not None:
        query = query.where(FeedEvent.managers.overlap(list(managers)))
    if team_id is not None:
        query = query.where(FeedEvent.teams.contains([team_id]))
    return (await session.scalars(query.order_by(FeedEvent.seq).limit(limit))).all()


async def feed_head(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.coalesce(func.max(FeedEvent.seq), 0))) or 0)


async def unacknowledged(
    session: AsyncSession, severity: str, filed_before: datetime
) -> Sequence[Alert]:
    rows = await session.scalars(
        select(Alert)
        .where(
            Alert.state == "open",
            Alert.severity == severity,
            Alert.escalated_at.is_(None),
            Alert.created_at <= filed_before,
        )
        .with_for_update(skip_locked=True)
        .limit(500)
    )
    return rows.all()


async def relay_position(session: AsyncSession, name: str) -> RelayPosition:
    """The relay's position, locked: one relay publishes a stretch of the feed at a time."""
    await session.execute(insert(RelayPosition).values(name=name, seq=0).on_conflict_do_nothing())
    position = await session.get(RelayPosition, name, with_for_update=True)
    assert position is not None
    return position
