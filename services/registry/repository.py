"""All SQL of the registry."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime

import asyncpg
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.database import any_of
from services.registry.models import (
    ManagerAssignment,
    Subject,
    Supplier,
    Tag,
    TagAssignment,
    Team,
    User,
)


async def get_supplier(session: AsyncSession, supplier_id: uuid.UUID) -> Supplier | None:
    return await session.get(Supplier, supplier_id)


async def get_subject(session: AsyncSession, subject_id: uuid.UUID) -> Subject | None:
    return await session.get(Subject, subject_id)


async def get_tag(session: AsyncSession, tag_id: str) -> Tag | None:
    return await session.get(Tag, tag_id)


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


async def find_user(session: AsyncSession, name: str, role: str) -> User | None:
    return await session.scalar(select(User).where(User.name == name, User.role == role))


async def list_subjects(session: AsyncSession, limit: int, offset: int) -> Sequence[Subject]:
    rows = await session.scalars(
        select(Subject).order_by(Subject.reference).limit(limit).offset(offset)
    )
    return rows.all()


async def tags_with_assignments(
    conn: asyncpg.Connection, tag_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """(tag, supplier, subject, from, to) for every wearing of these tags, or one row with
    no wearing for a tag never fitted. Raw asyncpg: ingest asks this for every request."""
    return await conn.fetch(
        """
        select t.id, t.supplier_id, a.subject_id, a.valid_from, a.valid_to
        from tags t left join tag_assignments a on a.tag_id = t.id
        where t.id = any($1::text[])
        """,
        tag_ids,
    )


async def tag_generation(conn: asyncpg.Connection) -> int:
    """A number that moves with every committed change to tags or who wears them."""
    return int(await conn.fetchval("select value from tag_generation"))


async def subjects_managed_at(
    session: AsyncSession, manager_id: uuid.UUID, at: datetime
) -> Sequence[uuid.UUID]:
    rows = await session.scalars(
        select(ManagerAssignment.subject_id).where(
            ManagerAssignment.manager_id == manager_id,
            ManagerAssignment.valid_from <= at,
            or_(ManagerAssignment.valid_to.is_(None), ManagerAssignment.valid_to > at),
        )
    )
    return rows.all()


async def wearing_at(session: AsyncSession, at: datetime) -> dict[uuid.UUID, datetime]:
    """Subjects wearing a tag at `at`, with when their current tag went on."""
    rows = await session.execute(
        select(TagAssignment.subject_id, func.min(TagAssignment.valid_from))
        .where(
            TagAssignment.valid_from <= at,
            or_(TagAssignment.valid_to.is_(None), TagAssignment.valid_to > at),
        )
        .group_by(TagAssignment.subject_id)
    )
    return {s: since for s, since in rows}


async def wearing_between(
    session: AsyncSession,
    start: datetime,
    end: datetime,
) -> Sequence[uuid.UUID]:
    """Subjects who wore a tag at any moment between start and end."""
    query = select(TagAssignment.subject_id).where(
        TagAssignment.valid_from <= end,
        or_(TagAssignment.valid_to.is_(None), TagAssignment.valid_to > start),
    )
    rows = await session.scalars(query.distinct())
    return rows.all()


async def wearings_of(
    session: AsyncSession, subject_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[datetime, datetime | None]]]:
    """Every (from, to) during which each of these subjects wore a tag."""
    rows = await session.execute(
        select(TagAssignment.subject_id, TagAssignment.valid_from, TagAssignment.valid_to).where(
            any_of(TagAssignment.subject_id, subject_ids)
        )
    )
    out: dict[uuid.UUID, list[tuple[datetime, datetime | None]]] = {}
    for subject_id, valid_from, valid_to in rows:
        out.setdefault(subject_id, []).append((valid_from, valid_to))
    return out


async def manager_assignments_of(
    session: AsyncSession, subject_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[uuid.UUID, datetime, datetime | None]]]:
    """Every (manager, from, to) of each of these subjects' manager assignments."""
    rows = await session.execute(
        select(
            ManagerAssignment.subject_id,
            ManagerAssignment.manager_id,
            ManagerAssignment.valid_from,
            ManagerAssignment.valid_to,
        ).where(any_of(ManagerAssignment.subject_id, subject_ids))
    )
    out: dict[uuid.UUID, list[tuple[uuid.UUID, datetime, datetime | None]]] = {}
    for subject_id, manager_id, valid_from, valid_to in rows:
        out.setdefault(subject_id, []).append((manager_id, valid_from, valid_to))
    return out


async def risks_of(
    session: AsyncSession, subject_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, str]:
    rows = await session.execute(
        select(Subject.id, Subject.risk).where(any_of(Subject.id, subject_ids))
    )
    return {subject_id: risk for subject_id, risk in rows}


async def teams_by_user(
    session: AsyncSession, user_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID]:
    """The team of each of these users that has one."""
    rows = await session.execute(select(User.id, User.team_id).where(any_of(User.id, user_ids)))
    return {user_id: team_id for user_id, team_id in rows if team_id is not None}


async def supervisors_of(
    session: AsyncSession, manager_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(User.supervisor_id).where(
            any_of(User.id, manager_ids), User.supervisor_id.is_not(None)
        )
    )
    return [s for s in rows.all() if s is not None]


async def supervised_by(session: AsyncSession, supervisor_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await session.scalars(select(User.id).where(User.supervisor_id == supervisor_id))
    return list(rows.all())


async def get_team(session: AsyncSession, team_id: uuid.UUID) -> Team | None:
    return await session.get(Team, team_id)
