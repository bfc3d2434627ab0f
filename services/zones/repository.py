"""All SQL of the zones service: zones, episode states and crimes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from geoalchemy2.functions import ST_AsText
from sqlalchemy import ColumnElement, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.geo import degree_margin
from services.zones.models import Crime, Zone, ZoneState
from services.zones.service import EpisodeState


@dataclass(frozen=True, slots=True)
class ZoneRow:
    id: uuid.UUID
    subject_id: uuid.UUID
    kind: str
    name: str
    version: int
    wkt: str


async def add_zone(session: AsyncSession, zone: Zone) -> Zone:
    session.add(zone)
    await session.flush()
    return zone


async def get_zone(session: AsyncSession, zone_id: uuid.UUID) -> ZoneRow | None:
    rows = await _zone_rows(session, Zone.id == zone_id)
    return rows[0] if rows else None


async def zones_for_subjects(
    session: AsyncSession, subject_ids: Sequence[uuid.UUID], kind: str | None = None
) -> list[ZoneRow]:
    conditions: list[ColumnElement[bool]] = [Zone.subject_id.in_(subject_ids)]
    if kind is not None:
        conditions.append(Zone.kind == kind)
    return await _zone_rows(session, *conditions)


async def _zone_rows(session: AsyncSession, *conditions: ColumnElement[bool]) -> list[ZoneRow]:
    rows = await session.execute(
        select(
            Zone.id, Zone.subject_id, Zone.kind, Zone.name, Zone.version, ST_AsText(Zone.geom)
        ).where(*conditions)
    )
    return [ZoneRow(*r) for r in rows]


async def load_states(
    session: AsyncSession, keys: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> dict[tuple[uuid.UUID, uuid.UUID], EpisodeState]:
    if not keys:
        return {}
    rows = await session.scalars(
        select(ZoneState).where(tuple_(ZoneState.subject_id, ZoneState.zone_id).in_(keys))
    )
    return {
        (s.subject_id, s.zone_id): EpisodeState(s.episode_start, s.last_inside, s.last_seen)
        for s in rows
    }


async def save_states(
    session: AsyncSession, states: dict[tuple[uuid.UUID, uuid.UUID], EpisodeState]
) -> None:
    if not states:
        return
    stmt = insert(ZoneState).values(
        [
            {
                "subject_id": subject_id,
                "zone_id": zone_id,
                "episode_start": s.episode_start,
                "last_inside": s.last_inside,
                "last_seen": s.last_seen,
            }
            for (subject_id, zone_id), s in states.items()
        ]
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[ZoneState.subject_id, ZoneState.zone_id],
            set_={
                "episode_start": stmt.excluded.episode_start,
                "last_inside": stmt.excluded.last_inside,
                "last_seen": stmt.excluded.last_seen,
            },
        )
    )


async def add_crimes(session: AsyncSession, crimes: Sequence[Crime]) -> None:
    session.add_all(crimes)
    await session.flush()


async def get_crime(session: AsyncSession, crime_id: uuid.UUID) -> Crime | None:
    return await session.get(Crime, crime_id)


@dataclass(frozen=True, slots=True)
class CrimeHit:
    index: int  # position of the fix in the batch
    crime_id: uuid.UUID
    distance_m: float


async def crimes_near_fixes(
    conn: asyncpg.Connection,
    fixes: Sequence[tuple[float, float, datetime, float]],
    radius_m: float,
    max_accuracy_m: float,
) -> list[CrimeHit]:
    """Crimes whose window covers a fix's time and whose place its accuracy circle comes
    within radius_m of. fixes: (lat, lon, ts, accuracy_m)."""
    usable = [(i, f) for i, f in enumerate(fixes) if f[3] <= max_accuracy_m]
    if not usable:
        return []
    rows = await conn.fetch(
        """
        select f.i, c.id, d.m
        from unnest($1::int[], $2::float8[], $3::float8[], $4::timestamptz[], $5::float8[],
                    $6::float8[]) as f(i, lat, lon, ts, acc, margin)
        join crimes c
          on c.starts_at <= f.ts and c.ends_at >= f.ts
         and c.geom && st_expand(st_setsrid(st_makepoint(f.lon, f.lat), 4326), f.margin)
        cross join lateral (
            select st_distance(c.geom::geography,
                               st_setsrid(st_makepoint(f.lon, f.lat), 4326)::geography) as m
        ) d
        where d.m - f.acc <= $7
        """,
        [i for i, _ in usable],
        [f[0] for _, f in usable],
        [f[1] for _, f in usable],
        [f[2] for _, f in usable],
        [f[3] for _, f in usable],
        [degree_margin(f[0], radius_m + f[3]) for _, f in usable],
        radius_m,
    )
    return [CrimeHit(r["i"], r["id"], r["m"]) for r in rows]
