"""All SQL of the zones service: zones, episode states and crimes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from geoalchemy2.functions import ST_AsText
from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.database import any_of
from services.zones.models import (
    Crime,
    CrimeMatchRun,
    DeviceEpisode,
    SubjectActivity,
    Zone,
    ZoneEpisode,
    ZoneSubject,
    ZoneVersion,
)


@dataclass(frozen=True, slots=True)
class ZoneRow:
    id: uuid.UUID
    kind: str
    name: str
    version: int
    wkt: str
    radius_m: float | None
    buffer_m: float
    timezone: str
    schedule: dict[str, Any] | None
    valid_from: datetime | None
    valid_to: datetime | None
    subject_ids: tuple[uuid.UUID, ...]


async def add_zone(
    session: AsyncSession, zone: Zone, subject_ids: Sequence[uuid.UUID], definition: dict[str, Any]
) -> None:
    session.add(zone)
    await session.flush()
    await _set_subjects(session, zone.id, subject_ids)
    session.add(ZoneVersion(zone_id=zone.id, version=zone.version, definition=definition))
    await session.flush()


async def lock_zone(session: AsyncSession, zone_id: uuid.UUID) -> Zone | None:
    return await session.get(Zone, zone_id, with_for_update=True)


async def add_version(
    session: AsyncSession, zone: Zone, subject_ids: Sequence[uuid.UUID], definition: dict[str, Any]
) -> None:
    await session.execute(delete(ZoneSubject).where(ZoneSubject.zone_id == zone.id))
    await _set_subjects(session, zone.id, subject_ids)
    session.add(ZoneVersion(zone_id=zone.id, version=zone.version, definition=definition))
    await session.flush()


async def _set_subjects(
    session: AsyncSession, zone_id: uuid.UUID, subject_ids: Sequence[uuid.UUID]
) -> None:
    session.add_all(ZoneSubject(zone_id=zone_id, subject_id=s) for s in subject_ids)
    await session.flush()


async def versions(session: AsyncSession, zone_id: uuid.UUID) -> Sequence[ZoneVersion]:
    rows = await session.scalars(
        select(ZoneVersion).where(ZoneVersion.zone_id == zone_id).order_by(ZoneVersion.version)
    )
    return rows.all()


async def get_zone(session: AsyncSession, zone_id: uuid.UUID) -> ZoneRow | None:
    rows = await _zone_rows(session, [Zone.id == zone_id])
    return rows[0] if rows else None


async def zones_for_subjects(
    session: AsyncSession, subject_ids: Sequence[uuid.UUID]
) -> list[ZoneRow]:
    applies = select(ZoneSubject.zone_id).where(any_of(ZoneSubject.subject_id, subject_ids))
    return await _zone_rows(session, [Zone.id.in_(applies)])


async def zones_by_id(session: AsyncSession, zone_ids: Sequence[uuid.UUID]) -> list[ZoneRow]:
    return await _zone_rows(session, [any_of(Zone.id, zone_ids)])


async def zone_map(
    conn: asyncpg.Connection,
) -> tuple[int, list[tuple[uuid.UUID, uuid.UUID, int]]]:
    """The zones' generation and, as of it, (subject, zone, current version) for every
    zone and subject it applies to: one snapshot, so the map is the generation's."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        generation = await zone_generation(conn)
        rows = await conn.fetch(
            "select s.subject_id, z.id, z.version"
            " from zone_subjects s join zones z on z.id = s.zone_id"
        )
    return generation, [(r[0], r[1], r[2]) for r in rows]


async def zone_generation(conn: asyncpg.Connection) -> int:
    """A number that moves with every committed change to zones or whom they apply to."""
    return int(await conn.fetchval("select value from zone_generation"))


async def _zone_rows(session: AsyncSession, conditions: list[ColumnElement[bool]]) -> list[ZoneRow]:
    subjects = (
        select(func.array_agg(ZoneSubject.subject_id))
        .where(ZoneSubject.zone_id == Zone.id)
        .scalar_subquery()
    )
    rows = await session.execute(
        select(
            Zone.id,
            Zone.kind,
            Zone.name,
            Zone.version,
            ST_AsText(Zone.geom),
            Zone.radius_m,
            Zone.buffer_m,
            Zone.timezone,
            Zone.schedule,
            Zone.valid_from,
            Zone.valid_to,
            subjects,
        ).where(*conditions)
    )
    out = []
    for zid, kind, name, version, wkt, radius, buffer, tz, schedule, vfrom, vto, subs in rows:
        out.append(
            ZoneRow(
                zid,
                kind,
                name,
                version,
                wkt,
                radius,
                buffer,
                tz,
                schedule,
                vfrom,
                vto,
                tuple(subs or ()),
            )
        )
    return out


# $1 subjects, $2 since. Straight through asyncpg: the zone checker reads these for
# every subject of every batch, and the ORM's objects cost it two to three times the
# time (8 against 3 ms a batch of 2,000 subjects, measured).
REPORTED_SQL = """
select id, subject_id, zone_id, condition, start, "end", confidence, last_fix
from zone_episodes
where subject_id = any($1::uuid[]) and state = 'current' and ("end" is null or "end" >= $2)
"""


@dataclass(frozen=True, slots=True)
class ReportedRow:
    """A zone episode as last reported, as the zone checker reads it back."""

    id: uuid.UUID
    subject_id: uuid.UUID
    zone_id: uuid.UUID
    condition: str
    start: datetime
    end: datetime | None
    confidence: str
    last_fix: datetime | None


async def reported_episodes(
    conn: asyncpg.Connection, subject_ids: Sequence[uuid.UUID], since: datetime
) -> list[ReportedRow]:
    """Episodes not superseded that were still going on at `since`, or began after it."""
    return [ReportedRow(*r) for r in await conn.fetch(REPORTED_SQL, subject_ids, since)]


async def save_episodes(session: AsyncSession, episodes: Sequence[dict[str, Any]]) -> None:
    if not episodes:
        return
    # The rows as parameters of one statement (SQLAlchemy's bulk insert, compiled once
    # and cached), not as values built into it: a statement of N rows' values was
    # compiled afresh each batch, 1.4 µs a fix in the zone checker's samples on Kafka
    # (docs/benchmarks.md, nineteenth session).
    stmt = insert(ZoneEpisode)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[ZoneEpisode.id],
            set_={
                c: stmt.excluded[c]
                for c in (
                    "zone_version",
                    "end",
                    "confidence",
                    "last_fix",
                    "state",
                    "superseded_by",
                    "reason",
                )
            },
        ),
        list(episodes),
    )


async def add_crimes(session: AsyncSession, crimes: Sequence[Crime]) -> None:
    session.add_all(crimes)
    await session.flush()


async def get_crime(session: AsyncSession, crime_id: uuid.UUID) -> Crime | None:
    return await session.get(Crime, crime_id)


async def get_crimes(session: AsyncSession, crime_ids: Sequence[uuid.UUID]) -> list[Crime]:
    rows = await session.scalars(
        select(Crime).where(any_of(Crime.id, crime_ids)).order_by(Crime.id)
    )
    return list(rows.all())


async def add_runs(session: AsyncSession, runs: Sequence[CrimeMatchRun]) -> None:
    session.add_all(runs)
    await session.flush()


async def current_crime(session: AsyncSession, force: str, reference: str) -> Crime | None:
    return await session.scalar(
        select(Crime)
        .where(Crime.force == force, Crime.reference == reference, Crime.current.is_(True))
        .with_for_update()
    )


@dataclass(frozen=True, slots=True)
class OpenScene:
    id: uuid.UUID
    lat: float
    lon: float
    starts_at: datetime
    ends_at: datetime


async def scenes_between(
    conn: asyncpg.Connection, start: datetime, end: datetime, slack_s: float
) -> list[OpenScene]:
    """Current crimes whose window, widened by slack_s, meets start..end."""
    rows = await conn.fetch(
        """
        select id, lat, lon, starts_at, ends_at
        from crimes
        where current
          and ends_at >= $1::timestamptz - make_interval(secs => $3)
          and starts_at <= $2::timestamptz + make_interval(secs => $3)
        """,
        start,
        end,
        slack_s,
    )
    return [OpenScene(*r) for r in rows]


async def add_run(session: AsyncSession, run: CrimeMatchRun) -> None:
    session.add(run)
    await session.flush()


async def current_runs(session: AsyncSession, crime_id: uuid.UUID) -> list[CrimeMatchRun]:
    """The runs that make up what is known now, oldest first: the latest run over every
    wearer, and the runs since over some subjects (new fixes), which update it."""
    full = await session.scalar(
        select(CrimeMatchRun)
        .where(CrimeMatchRun.crime_id == crime_id, CrimeMatchRun.trigger != "new_fixes")
        .order_by(CrimeMatchRun.started_at.desc())
        .limit(1)
    )
    since = select(CrimeMatchRun).where(CrimeMatchRun.crime_id == crime_id)
    if full is not None:
        since = since.where(CrimeMatchRun.started_at > full.started_at)
    later = await session.scalars(since.order_by(CrimeMatchRun.started_at))
    return [*([full] if full else []), *later.all()]


async def touch_activity(
    conn: asyncpg.Connection, subjects: Sequence[uuid.UUID], last_fix: Sequence[float]
) -> None:
    """Each subject's latest fix time (seconds since 1970, as fix batches carry them:
    float8 costs asyncpg a quarter of what a datetime does to encode, and to_timestamp
    gives the very microsecond), never moved back. In subject order, so two checkers
    touching overlapping subjects take their row locks in the same order."""
    if not subjects:
        return
    # By the UUIDs' integers: the same order, without a Python-level comparison of two
    # UUIDs each step (0.4 ms against 2.3 for 2,000 subjects).
    order = sorted(range(len(subjects)), key=lambda i: subjects[i].int)
    await conn.execute(
        """
        insert into subject_activity (subject_id, last_fix)
        select subject_id, to_timestamp(s) from unnest($1::uuid[], $2::float8[]) as u(subject_id, s)
        on conflict (subject_id)
        do update set last_fix = greatest(subject_activity.last_fix, excluded.last_fix)
        """,
        [subjects[i] for i in order],
        [last_fix[i] for i in order],
    )


async def activity(
    session: AsyncSession, subject_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, datetime]:
    rows = await session.execute(
        select(SubjectActivity.subject_id, SubjectActivity.last_fix).where(
            any_of(SubjectActivity.subject_id, subject_ids)
        )
    )
    return {s: t for s, t in rows}


async def reported_device_episodes(
    session: AsyncSession, subject_ids: Sequence[uuid.UUID], since: datetime | None = None
) -> list[DeviceEpisode]:
    query = select(DeviceEpisode).where(
        any_of(DeviceEpisode.subject_id, subject_ids), DeviceEpisode.state == "current"
    )
    if since is not None:
        query = query.where(or_(DeviceEpisode.end.is_(None), DeviceEpisode.end >= since))
    return list((await session.scalars(query)).all())


async def save_device_episodes(session: AsyncSession, episodes: Sequence[dict[str, Any]]) -> None:
    if not episodes:
        return
    stmt = insert(DeviceEpisode).values(list(episodes))
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[DeviceEpisode.id],
            set_={
                c: stmt.excluded[c] for c in ("end", "last_fix", "state", "superseded_by", "reason")
            },
        )
    )


async def delete_crimes_ended_before(session: AsyncSession, cutoff: datetime) -> int:
    """Deletes crimes (every version) whose window ended before cutoff; their matching
    runs go with them."""
    result = await session.execute(delete(Crime).where(Crime.ends_at < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def delete_runs_before(session: AsyncSession, cutoff: datetime) -> int:
    result = await session.execute(delete(CrimeMatchRun).where(CrimeMatchRun.started_at < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
