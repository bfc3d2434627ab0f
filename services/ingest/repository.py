"""All SQL of ingest: COPY of fixes into trail_points, partitions, and trail look-ups."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import asyncpg

from services.common.geo import degree_margin
from services.ingest.schemas import DeviceEvent, FixMessage

STAGING_COLUMNS = (
    "tag_id",
    "ts",
    "received_at",
    "subject_id",
    "lat",
    "lon",
    "accuracy_m",
    "speed_mps",
    "heading_deg",
    "source",
    "sats",
    "hdop",
)


def partition_name(day: date) -> str:
    return f"trail_points_p{day:%Y%m%d}"


class Partitions:
    """Creates daily partitions of trail_points before any fix needs them."""

    def __init__(self) -> None:
        self._known: set[date] = set()

    async def ensure(self, conn: asyncpg.Connection, days: Iterable[date]) -> None:
        missing = sorted(set(days) - self._known)
        for day in missing:
            name = partition_name(day)
            if await conn.fetchval("select to_regclass($1)", name) is None:
                start = datetime.combine(day, time(), UTC)
                end = start + timedelta(days=1)
                async with conn.transaction():
                    # Workers race to create the same partition; the lock makes one wait.
                    await conn.execute("select pg_advisory_xact_lock(hashtext($1))", name)
                    await conn.execute(
                        f"create table if not exists {name} partition of trail_points "
                        f"for values from ('{start.isoformat()}') to ('{end.isoformat()}')"
                    )
            self._known.add(day)

    async def ensure_ahead(self, conn: asyncpg.Connection, today: date, days: int) -> None:
        await self.ensure(conn, (today + timedelta(days=i) for i in range(-1, days + 1)))


@dataclass(frozen=True, slots=True)
class StoreResult:
    inserted: int
    conflicts: int


async def store_fixes(
    conn: asyncpg.Connection, partitions: Partitions, fixes: Sequence[FixMessage]
) -> StoreResult:
    """Writes fixes idempotently: a known (tag, ts) is skipped when identical and set aside
    in fix_conflicts when its position differs. One transaction for the whole batch."""
    await partitions.ensure(conn, {f.ts.astimezone(UTC).date() for f in fixes})
    records = [
        (
            f.tag_id,
            f.ts,
            f.received_at,
            f.subject_id,
            f.lat,
            f.lon,
            f.accuracy_m,
            f.speed_mps,
            f.heading_deg,
            f.source.value,
            f.sats,
            f.hdop,
        )
        for f in fixes
    ]
    async with conn.transaction():
        await conn.execute(
            """
            create temp table if not exists fix_staging (
                tag_id text, ts timestamptz, received_at timestamptz, subject_id uuid,
                lat float8, lon float8, accuracy_m float8, speed_mps float8,
                heading_deg float8, source text, sats int2, hdop float8
            ) on commit delete rows
            """
        )
        await conn.copy_records_to_table("fix_staging", records=records, columns=STAGING_COLUMNS)
        inserted = await conn.fetchval(
            """
            with ins as (
                insert into trail_points (tag_id, ts, received_at, subject_id, lat, lon,
                    accuracy_m, speed_mps, heading_deg, source, sats, hdop, geom)
                select tag_id, ts, received_at, subject_id, lat, lon, accuracy_m, speed_mps,
                    heading_deg, source, sats, hdop, st_setsrid(st_makepoint(lon, lat), 4326)
                from fix_staging
                on conflict (tag_id, ts) do nothing
                returning 1
            )
            select count(*) from ins
            """
        )
        conflicts = await conn.fetchval(
            """
            with c as (
                insert into fix_conflicts (tag_id, ts, received_at, subject_id, lat, lon,
                    accuracy_m, stored_lat, stored_lon, stored_accuracy_m)
                select distinct on (s.tag_id, s.ts, s.lat, s.lon, s.accuracy_m)
                    s.tag_id, s.ts, s.received_at, s.subject_id, s.lat, s.lon, s.accuracy_m,
                    t.lat, t.lon, t.accuracy_m
                from fix_staging s
                join trail_points t on t.tag_id = s.tag_id and t.ts = s.ts
                where (s.lat, s.lon, s.accuracy_m) is distinct from (t.lat, t.lon, t.accuracy_m)
                on conflict on constraint uq_fix_conflicts_fix
                    do update set occurrences = fix_conflicts.occurrences + 1
                returning 1
            )
            select count(*) from c
            """
        )
    return StoreResult(int(inserted), int(conflicts))


async def stored_positions(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, datetime]]
) -> dict[tuple[str, datetime], tuple[float, float, float]]:
    """The stored (lat, lon, accuracy) of whichever of these (tag, ts) are already stored."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """
        select t.tag_id, t.ts, t.lat, t.lon, t.accuracy_m
        from unnest($1::text[], $2::timestamptz[]) as k(tag_id, ts)
        join trail_points t on t.tag_id = k.tag_id and t.ts = k.ts
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["tag_id"], r["ts"]): (r["lat"], r["lon"], r["accuracy_m"]) for r in rows}


# $1 lat, $2 lon, $3 radius (m), $4/$5 time window, $6 box margin (degrees), $7 max accuracy.
FIXES_NEAR_SQL = """
select subject_id, tag_id, ts, received_at, lat, lon, accuracy_m, d from (
    select subject_id, tag_id, ts, received_at, lat, lon, accuracy_m,
        st_distance(geom::geography, st_setsrid(st_makepoint($2, $1), 4326)::geography) as d
    from trail_points
    where ts between $4 and $5
      and accuracy_m <= $7
      and geom && st_expand(st_setsrid(st_makepoint($2, $1), 4326), $6)
) near
where d - accuracy_m <= $3
order by subject_id, ts
"""


@dataclass(frozen=True, slots=True)
class NearbyFix:
    subject_id: uuid.UUID
    tag_id: str
    ts: datetime
    received_at: datetime
    lat: float
    lon: float
    accuracy_m: float
    distance_m: float


async def fixes_near(
    conn: asyncpg.Connection,
    lat: float,
    lon: float,
    radius_m: float,
    start: datetime,
    end: datetime,
    max_accuracy_m: float,
) -> list[NearbyFix]:
    """Fixes whose accuracy circle comes within radius_m of (lat, lon) between start and end.

    Fixes less accurate than max_accuracy_m are too vague to place anyone anywhere.

    The bounding box lets the GiST index do the work; the geodesic test is exact.
    """
    margin = degree_margin(lat, radius_m + max_accuracy_m)
    rows = await conn.fetch(
        FIXES_NEAR_SQL,
        lat,
        lon,
        radius_m,
        start,
        end,
        margin,
        max_accuracy_m,
    )
    return [
        NearbyFix(
            r["subject_id"],
            r["tag_id"],
            r["ts"],
            r["received_at"],
            r["lat"],
            r["lon"],
            r["accuracy_m"],
            r["d"],
        )
        for r in rows
    ]


async def store_device_events(conn: asyncpg.Connection, events: Sequence[DeviceEvent]) -> int:
    """Writes device events; a re-sent event (same tag, time and kind) is skipped."""
    rows = await conn.fetch(
        """
        insert into device_events (tag_id, ts, kind, received_at, subject_id, battery_pct, detail)
        select * from unnest($1::text[], $2::timestamptz[], $3::text[], $4::timestamptz[],
                             $5::uuid[], $6::float8[], $7::text[])
        on conflict do nothing
        returning 1
        """,
        [e.tag_id for e in events],
        [e.ts for e in events],
        [e.kind.value for e in events],
        [e.received_at for e in events],
        [e.subject_id for e in events],
        [e.battery_pct for e in events],
        [e.detail for e in events],
    )
    return len(rows)


@dataclass(frozen=True, slots=True)
class TrailPoint:
    subject_id: uuid.UUID
    tag_id: str
    ts: datetime
    received_at: datetime
    lat: float
    lon: float
    accuracy_m: float


async def trails_since(
    conn: asyncpg.Connection, since: Sequence[tuple[uuid.UUID, datetime]]
) -> dict[uuid.UUID, list[TrailPoint]]:
    """Each subject's trail from `since` on, in time order, together with the one fix
    just before `since` (so a caller can tell whether something began earlier)."""
    rows = await conn.fetch(
        """
        select t.subject_id, t.tag_id, t.ts, t.received_at, t.lat, t.lon, t.accuracy_m
        from unnest($1::uuid[], $2::timestamptz[]) as r(subject_id, since)
        join trail_points t on t.subject_id = r.subject_id and t.ts >= r.since
        union all
        select p.subject_id, p.tag_id, p.ts, p.received_at, p.lat, p.lon, p.accuracy_m
        from unnest($1::uuid[], $2::timestamptz[]) as r(subject_id, since)
        cross join lateral (
            select subject_id, tag_id, ts, received_at, lat, lon, accuracy_m
            from trail_points
            where subject_id = r.subject_id and ts < r.since
            order by ts desc
            limit 1
        ) p
        order by 1, 3
        """,
        [s for s, _ in since],
        [t for _, t in since],
    )
    out: dict[uuid.UUID, list[TrailPoint]] = {}
    for r in rows:
        out.setdefault(r["subject_id"], []).append(TrailPoint(*r.values()))
    return out


@dataclass(frozen=True, slots=True)
class DeviceEventRow:
    subject_id: uuid.UUID
    tag_id: str
    ts: datetime
    kind: str
    received_at: datetime
    detail: str | None


async def device_events_since(
    conn: asyncpg.Connection, since: Sequence[tuple[uuid.UUID, datetime]]
) -> dict[uuid.UUID, list[DeviceEventRow]]:
    rows = await conn.fetch(
        """
        select e.subject_id, e.tag_id, e.ts, e.kind, e.received_at, e.detail
        from unnest($1::uuid[], $2::timestamptz[]) as r(subject_id, since)
        join device_events e on e.subject_id = r.subject_id and e.ts >= r.since
        order by e.subject_id, e.ts
        """,
        [s for s, _ in since],
        [t for _, t in since],
    )
    out: dict[uuid.UUID, list[DeviceEventRow]] = {}
    for r in rows:
        out.setdefault(r["subject_id"], []).append(DeviceEventRow(*r.values()))
    return out


async def first_fixes_after(
    conn: asyncpg.Connection, since: Sequence[tuple[uuid.UUID, datetime]]
) -> dict[uuid.UUID, datetime]:
    """Each subject's first fix after a moment (when a silence ended)."""
    rows = await conn.fetch(
        """
        select r.subject_id, min(t.ts) as ts
        from unnest($1::uuid[], $2::timestamptz[]) as r(subject_id, since)
        join trail_points t on t.subject_id = r.subject_id and t.ts > r.since
        group by r.subject_id
        """,
        [s for s, _ in since],
        [t for _, t in since],
    )
    return {r["subject_id"]: r["ts"] for r in rows}


async def trails_between(
    conn: asyncpg.Connection, subject_ids: Sequence[uuid.UUID], start: datetime, end: datetime
) -> dict[uuid.UUID, list[TrailPoint]]:
    """The trails of these subjects between start and end, in time order."""
    rows = await conn.fetch(
        """
        select subject_id, tag_id, ts, received_at, lat, lon, accuracy_m
        from trail_points
        where subject_id = any($1::uuid[]) and ts between $2 and $3
        order by subject_id, ts
        """,
        list(subject_ids),
        start,
        end,
    )
    out: dict[uuid.UUID, list[TrailPoint]] = {}
    for r in rows:
        out.setdefault(r["subject_id"], []).append(TrailPoint(*r.values()))
    return out


async def stream_trail(
    db_pool: asyncpg.Pool, subject_id: uuid.UUID, start: datetime, end: datetime
) -> AsyncIterator[TrailPoint]:
    """A subject's trail in time order, read with a server-side cursor: a year of fixes
    never sits in memory at once."""
    async with db_pool.acquire() as conn, conn.transaction():
        cursor = conn.cursor(
            """
            select subject_id, tag_id, ts, received_at, lat, lon, accuracy_m
            from trail_points
            where subject_id = $1 and ts between $2 and $3
            order by ts
            """,
            subject_id,
            start,
            end,
            prefetch=2000,
        )
        async for r in cursor:
            yield TrailPoint(*r.values())


async def drop_partitions_before(conn: asyncpg.Connection, cutoff: date) -> list[str]:
    """Drops whole daily partitions of trail_points that end on or before cutoff (their
    indexes go with them: no row-by-row delete, no bloat). Returns their names."""
    rows = await conn.fetch(
        """
        select c.relname
        from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = 'trail_points'::regclass
        order by c.relname
        """
    )
    dropped = []
    for r in rows:
        name = r["relname"]
        try:
            day = datetime.strptime(name.removeprefix("trail_points_p"), "%Y%m%d").date()
        except ValueError:
            continue  # not one of ours
        if day < cutoff:
            await conn.execute(f'drop table "{name}"')
            dropped.append(name)
    return dropped


async def delete_device_events_before(conn: asyncpg.Connection, cutoff: datetime) -> int:
    result = await conn.execute("delete from device_events where ts < $1", cutoff)
    return int(result.split()[-1])
