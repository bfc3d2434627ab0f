"""All SQL of the read side: the audit log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.trails.models import AuditEntry


async def add(session: AsyncSession, entry: AuditEntry) -> None:
    session.add(entry)
    await session.flush()


async def entries(
    session: AsyncSession,
    *,
    actor_id: uuid.UUID | None,
    action: str | None,
    case_reference: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
) -> Sequence[AuditEntry]:
    query = select(AuditEntry)
    if actor_id is not None:
        query = query.where(AuditEntry.actor_id == actor_id)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if case_reference is not None:
        query = query.where(AuditEntry.case_reference == case_reference)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    rows = await session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit).offset(offset))
    return rows.all()
