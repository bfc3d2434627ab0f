"""All SQL of ingest: COPY of fixes into trail_points, partitions, and trail look-ups.

Reads of many subjects' trails at once go a subject at a time: a lateral subquery each,
kept one by `offset 0` (or a `limit`), so each is a range of the (subject, time) index.
Written as plain joins, the planner hashed them instead, reading every fix of the day's
partition (or of every partition) to keep a few hundred: live fixes are newer than its
statistics, so it expects few rows and scans. The cost grew with each day's trail
(docs/benchmarks.md, fourth and fifth sessions); tests/test_database.py holds each plan
to the index.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import ClassVar

import asyncpg
import numpy as np
import numpy.typing as npt

from services.common.geo import degree_margin
from services.common.timeutil import from_epoch
from services.common.trail import Reaches, TrailFix
from services.ingest.batch import FixBatch, codes_of
from services.ingest.pgcopy import STAGING_COLUMNS, TRAIL_COLUMNS, chunks, distinct, encode
from services.ingest.schemas import DeviceEvent, FixMessage


# Reads that come back as numbers in bulk (thousands a batch) send each column as one
# bytea, the values' binary forms end to end (`string_agg(float8send(x), '')`), which
# numpy reads at once: no Python float or int a value, nor a list to build an array
# from, as a float8[] column gives.
def floats(column: bytes | None) -> npt.NDArray[np.float64]:
    """A column of float8send values, concatenated (big-endian doubles)."""
    return np.frombuffer(column or b"", dtype=">f8").astype(np.float64)


def ints(column: bytes | None) -> npt.NDArray[np.int64]:
    """A column of int8send values, concatenated (big-endian 64-bit integers)."""
    return np.frombuffer(column or b"", dtype=">i8").astype(np.int64)


# Tables partitioned by day: the trail, and its boxes.
PARTITIONED = ("trail_points", "trail_boxes")
# A trail box covers what a subject did in this much time: where their fixes in it were,
# and every path that starts from one of them (to the next fix, at most BOX_MAX_GAP on).
# 10 minutes since the twenty-second session (5 before): half the box rows, a µs a fix
# less of PostgreSQL for the box keeper, for 13 % more candidates a proximity search
# (docs/benchmarks.md). Boxes stored with another bucket stay true and are still found:
# a search starts from the bucket of BOX_MAX_GAP before its window, which a shorter
# bucket's start never precedes, and reaches TrailBoxes.SPAN back, which a shorter
# bucket's box never outlasts.
BOX_BUCKET = timedelta(minutes=10)
# Paths between fixes further apart than this are not followed (settings keep the
# matching's segment gap within it).
BOX_MAX_GAP = timedelta(minutes=10)
# Boxes are rounded outwards to this grid (degrees, about 35-55 m): a subject at home
# soon has a box its GPS jitter stays inside, and then their fixes change nothing.
BOX_GRID = 0.0005


def partition_name(day: date, table: str = "trail_points") -> str:
    return f"{table}_p{day:%Y%m%d}"


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


class Partitions:
    """Creates the daily partitions of trail_points and trail_boxes before any fix needs
    them. A fix also widens the boxes of fixes up to BOX_MAX_GAP before it, which can
    be on the day before: that day's partitions are made too."""

    def __init__(self) -> None:
        self._known: set[date] = set()

    async def ensure(self, conn: asyncpg.Connection, days: Iterable[date]) -> None:
        wanted = set(days)
        wanted |= {d - timedelta(days=1) for d in wanted}
        for day in sorted(wanted - self._known):
            for table in PARTITIONED:
                await create_partition(conn, table, day)
            self._known.add(day)

    async def ensure_ahead(self, conn: asyncpg.Connection, today: date, days: int) -> None:
        await self.ensure(conn, (today + timedelta(days=i) for i in range(-1, days + 1)))


async def create_partition(conn: asyncpg.Connection, table: str, day: date) -> None:
    name = partition_name(day, table)
    if await conn.fetchval("select to_regclass($1)", name) is not None:
        return
    start, end = day_bounds(day)
    async with conn.transaction():
        # Workers race to create the same partition; the lock makes one wait.
        await conn.execute("select pg_advisory_xact_lock(hashtext($1))", name)
        await conn.execute(
            f"create table if not exists {name} partition of {table} "
            f"for values from ('{start.isoformat()}') to ('{end.isoformat()}')"
        )


# Fixes vaguer than this (cell-tower guesses) are left out of the boxes: they would
# blow a box up to kilometres. Nothing that places anyone uses them (settings keep the
# matching limit within it).
BOX_MAX_ACCURACY_M = 1000.0

# Widens the trail boxes by a batch of stored fixes. Matching pairs consecutive fixes
# among those accurate enough for it, so which fix follows which depends on that
# threshold; for every threshold at once, the box of a fix's bucket holds the fix and
# each later fix (up to BOX_MAX_GAP on) more accurate than all between them. So a new fix
# widens its own box by those successors, and the boxes of the earlier fixes it is such
# a successor to. Arrival order does not matter: boxes only grow, and a fix that arrives
# late finds its neighbours stored. (Degrees per metre err large: 110 km a degree.)
#
# The pairs are found here, in numpy, from each subject's stored fixes around the batch
# (one index range a subject), not in SQL: a lateral look at each new fix's neighbours
# both ways, with a window over them (BOXES_SQL below), cost PostgreSQL about 25 µs a
# fix; this costs it about 13, and Python 2 (docs/benchmarks.md, fifth session).

# $1 subject ids, $2/$3 each one's first and last new fix, widened by BOX_MAX_GAP; $4/$5
# the least and greatest of those, which the planner sees: only those days' partitions.
# One row of columns (`floats` above), not a record a fix; `offset 0` as the module says.
NEIGHBOURS_SQL = f"""
select string_agg(int8send(s.i - 1), ''), string_agg(float8send(date_part('epoch', t.ts)), ''),
       string_agg(float8send(t.lat), ''), string_agg(float8send(t.lon), ''),
       string_agg(float8send(t.accuracy_m), '')
from unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[])
    with ordinality as s(subject_id, lo, hi, i)
cross join lateral (
    select ts, lat, lon, accuracy_m from trail_points t
    where t.subject_id = s.subject_id and t.ts between s.lo and s.hi
      and t.ts between $4 and $5 and t.accuracy_m <= {BOX_MAX_ACCURACY_M}
    offset 0
) t
"""

# A box that already holds what a batch adds is left alone: no new row version, no
# index entry.
WIDEN_SQL = """
insert into trail_boxes (subject_id, bucket, box)
select subject_id, to_timestamp(bucket), st_makeenvelope(x0, y0, x1, y1, 4326)
from unnest($1::uuid[], $2::float8[], $3::float8[], $4::float8[], $5::float8[], $6::float8[])
    as b(subject_id, bucket, x0, y0, x1, y1)
on conflict (subject_id, bucket) do update
    set box = st_envelope(st_collect(trail_boxes.box, excluded.box))
    where not trail_boxes.box ~ excluded.box
"""


@dataclass(frozen=True, slots=True)
class BoxPoints:
    """Accuracy circles to put in trail boxes: circle i in the box of subject
    `owner[i]` (an index) for the bucket starting at `bucket[i]` (epoch seconds)."""

    owner: npt.NDArray[np.int64]
    bucket: npt.NDArray[np.float64]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    accuracy_m: npt.NDArray[np.float64]


def box_points(
    owner: npt.NDArray[np.int64],
    ts: npt.NDArray[np.float64],
    lat: npt.NDArray[np.float64],
    lon: npt.NDArray[np.float64],
    accuracy_m: npt.NDArray[np.float64],
    new: npt.NDArray[np.bool_],
) -> BoxPoints:
    """What new fixes add to the boxes, given every stored fix (accurate enough for boxes)
    within BOX_MAX_GAP of them, sorted by (owner, ts): each new fix in its own bucket's
    box, and each fix that is a successor of another (later, within BOX_MAX_GAP, more
    accurate than every fix between) in the box of that other's bucket, where either of
    the two is new and the bucket is not the successor's own. Pure."""
    gap = BOX_MAX_GAP.total_seconds()
    bucket_s = BOX_BUCKET.total_seconds()
    bucket = np.floor(ts / bucket_s)
    n = len(ts)
    firsts = [np.flatnonzero(new)]
    seconds = [firsts[0]]
    # A fix's successors are the fix after it, then that one's next more accurate fix,
    # then that one's, and so on while within BOX_MAX_GAP: the running minima of
    # accuracy after it, about three of the ten or so fixes within reach. So each fix's
    # next more accurate fix of its own within reach is found first (-1: none), and
    # then every fix's chain is walked at once. (Looking at every fix k apart for each
    # k cost the box keeper a third more; docs/benchmarks.md, twenty-seventh session.)
    nearer = np.full(n, -1, dtype=np.int64)
    p = np.arange(max(n - 1, 0))
    k = 1
    while len(p):
        q = p + k
        within = (owner[q] == owner[p]) & (ts[q] - ts[p] <= gap)
        found = within & (accuracy_m[q] < accuracy_m[p])
        nearer[p[found]] = q[found]
        k += 1
        p = p[within & ~found]
        p = p[p + k < n]
    i = np.arange(max(n - 1, 0))
    j = i + 1
    reach = (owner[j] == owner[i]) & (ts[j] - ts[i] <= gap)
    i, j = i[reach], j[reach]
    while len(i):
        # A pair within one bucket adds nothing: every fix goes in its own bucket's box
        # as a new one (the new ones here; the others went in when they were new).
        pair = (new[i] | new[j]) & (bucket[j] != bucket[i])
        firsts.append(i[pair])
        seconds.append(j[pair])
        j = nearer[j]
        reach = j >= 0
        i, j = i[reach], j[reach]
        reach = ts[j] - ts[i] <= gap
        i, j = i[reach], j[reach]
    first = np.concatenate(firsts)
    second = np.concatenate(seconds)
    return BoxPoints(
        owner[first],
        bucket[first] * bucket_s,
        lat[second],
        lon[second],
        accuracy_m[second],
    )


@dataclass(frozen=True, slots=True)
class BoxGrowth:
    """Boxes as columns, one per (owner, bucket), rounded outwards to BOX_GRID."""

    owner: npt.NDArray[np.int64]
    bucket: npt.NDArray[np.float64]
    sides: npt.NDArray[np.float64]  # (n, 4): min lon, min lat, max lon, max lat


def boxes_of(points: BoxPoints) -> BoxGrowth:
    """The box of each (owner, bucket) the points fall in: their accuracy circles' extent,
    rounded outwards to the grid. Pure."""
    if len(points.owner) == 0:
        return BoxGrowth(points.owner, points.bucket, np.zeros((0, 4)))
    # By (owner, bucket) as one integer: a sort of one key, not lexsort's two.
    step = BOX_BUCKET.total_seconds()
    slot = np.rint((points.bucket - points.bucket.min()) / step).astype(np.int64)
    order = np.argsort(points.owner * (int(slot.max()) + 1) + slot)
    owner, bucket = points.owner[order], points.bucket[order]
    lat, lon, accuracy_m = points.lat[order], points.lon[order], points.accuracy_m[order]
    dlat = accuracy_m / 110000.0
    dlon = accuracy_m / (110000.0 * np.cos(np.radians(np.minimum(np.abs(lat) + 0.1, 89.9))))
    starts = np.flatnonzero(np.r_[True, (owner[1:] != owner[:-1]) | (bucket[1:] != bucket[:-1])])
    sides = np.column_stack(
        [
            np.floor(np.minimum.reduceat(lon - dlon, starts) / BOX_GRID) * BOX_GRID,
            np.floor(np.minimum.reduceat(lat - dlat, starts) / BOX_GRID) * BOX_GRID,
            (np.floor(np.maximum.reduceat(lon + dlon, starts) / BOX_GRID) + 1) * BOX_GRID,
            (np.floor(np.maximum.reduceat(lat + dlat, starts) / BOX_GRID) + 1) * BOX_GRID,
        ]
    )
    return BoxGrowth(owner[starts], bucket[starts], sides)


# Boxes are widened behind the store, not in its transaction: the store writes a row to
# trail_unboxed with the fixes (each subject's first and last fix time), and the box
# keeper (services/zones/worker.py) widens the boxes for many such rows at once. The
# work a subject costs (its neighbours read, its boxes written) is then shared by all
# its fixes in those rows, not paid again for every batch of a few fixes; in the store's
# transaction it was two fifths of the pipeline's cost (docs/benchmarks.md, tenth and
# eleventh sessions). Until a row's boxes are widened, proximity search takes its
# subjects as candidates (subjects_passing), so no stored fix is ever missed.
MARK_SQL = """
insert into trail_unboxed (first_ts, last_ts, subjects, firsts, lasts, fixes)
values (to_timestamp($1), to_timestamp($2), $3, $4, $5, $6)
"""

# The oldest rows no other keeper holds ($1 at most), locked until the keeper's
# transaction ends, after the boxes are committed and the crime trigger has run; of
# those, the rows before $3 fixes are reached (the first whatever its size; all if $3
# is null), each with how many were claimed. The rest are left for the next round: a
# round's memory goes by its fixes, and a backlog (the keeper down while the store went
# on) holds stored batches of up to a handler's whole batch each (docs/benchmarks.md,
# twenty-ninth session).
CLAIM_SQL = """
with claimed as materialized (
    select id, fixes from trail_unboxed
    where failed_at is null and ($2::bigint is null or id = $2)
    order by id limit $1 for update skip locked
)
select u.id, u.subjects, u.firsts, u.lasts, c.claimed
from (
    select id, sum(fixes) over (order by id) - fixes as before, count(*) over () as claimed
    from claimed
) c
join trail_unboxed u using (id)
where $3::bigint is null or c.before < $3
order by u.id
"""

SET_ASIDE_SQL = "update trail_unboxed set failed_at = now(), error = $2 where id = $1"

DONE_SQL = "delete from trail_unboxed where id = any($1::bigint[])"


async def mark_unboxed(conn: asyncpg.Connection, fixes: FixBatch) -> None:
    """Records, in the transaction storing them, that these fixes' boxes are to be
    widened. Fixes too vague for the boxes need none."""
    subjects, first, last = fixes.first_last(fixes.accuracy_m <= BOX_MAX_ACCURACY_M)
    if subjects:
        await conn.execute(
            MARK_SQL,
            float(first.min()),
            float(last.max()),
            subjects,
            first.tolist(),
            last.tolist(),
            len(fixes),
        )


@dataclass(frozen=True, slots=True)
class Unboxed:
    """Stored fixes whose boxes are to be widened, from the trail_unboxed rows `ids`:
    entry i is subject `subjects[code[i]]`'s fixes from `first[i]` to `last[i]` (seconds
    since 1970). A subject's entries are twice BOX_MAX_GAP apart or more (to within
    microseconds), so the neighbourhoods read for them do not overlap."""

    ids: list[int]
    subjects: list[uuid.UUID]
    code: npt.NDArray[np.int64]
    first: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    # Whether the claim took all it might (as many rows as it could, or as many fixes):
    # more may be waiting.
    full: bool = False

    @classmethod
    def merged(
        cls,
        ids: list[int],
        subjects: Sequence[uuid.UUID],
        first: npt.NDArray[np.float64],
        last: npt.NDArray[np.float64],
        full: bool = False,
    ) -> Unboxed:
        """One entry for each run of a subject's spans (in any order, overlapping or
        not) less than twice BOX_MAX_GAP apart. Pure."""
        distinct, code = codes_of(subjects)
        if not len(code):
            return cls(ids, distinct, code, first, last, full)
        order = np.lexsort((first, code))
        code, first, last = code[order], first[order], last[order]
        # The latest end so far within each subject: its ends shifted past every earlier
        # subject's, so that one running maximum serves all. Rounded by the shift (by
        # microseconds at most), which only decides where runs part: runs a hair nearer
        # than twice BOX_MAX_GAP share nothing but a fix between them, read for both.
        t0 = min(float(first.min()), float(last.min()))
        width = float(last.max()) - t0 + 1.0
        reach = np.maximum.accumulate(last - t0 + code * width) - code * width + t0
        apart = first[1:] > reach[:-1] + 2 * BOX_MAX_GAP.total_seconds()
        starts = np.flatnonzero(np.r_[True, (code[1:] != code[:-1]) | apart])
        # The runs' own ends, exactly: which fixes are new goes by them.
        return cls(
            ids, distinct, code[starts], first[starts], np.maximum.reduceat(last, starts), full
        )

    def spans(self) -> dict[uuid.UUID, list[datetime]]:
        """Each subject's first and last fix time over all its entries."""
        out: dict[uuid.UUID, list[datetime]] = {}
        for c, a, b in zip(
            self.code.tolist(), self.first.tolist(), self.last.tolist(), strict=True
        ):
            lo, hi = from_epoch(a), from_epoch(b)
            span = out.setdefault(self.subjects[c], [lo, hi])
            span[0], span[1] = min(span[0], lo), max(span[1], hi)
        return out


async def claim_unboxed(
    conn: asyncpg.Connection, limit: int, only: int | None = None, max_fixes: int | None = None
) -> Unboxed:
    """The oldest trail_unboxed rows (up to `limit`; or row `only`, if it is still
    waiting) that no other transaction holds and none has set aside, locked by this
    connection's transaction, as far as they hold fewer than `max_fixes` fixes before
    each (the first whatever its size; None: no cap, the keeper's setting is the cap)."""
    rows = await conn.fetch(CLAIM_SQL, limit, only, max_fixes)
    subjects = [s for r in rows for s in r["subjects"]]
    first = np.array([t for r in rows for t in r["firsts"]], dtype=np.float64)
    last = np.array([t for r in rows for t in r["lasts"]], dtype=np.float64)
    claimed = rows[0]["claimed"] if rows else 0
    full = claimed == limit or len(rows) < claimed
    return Unboxed.merged([r["id"] for r in rows], subjects, first, last, full)


async def unboxed_backlog(conn: asyncpg.Connection) -> int:
    """How many stored fixes wait for the box keeper."""
    return int(await conn.fetchval("select coalesce(sum(fixes), 0) from trail_unboxed"))


async def set_aside_unboxed(conn: asyncpg.Connection, row: int, error: str) -> None:
    await conn.execute(SET_ASIDE_SQL, row, error[:4000])


async def finish_unboxed(conn: asyncpg.Connection, unboxed: Unboxed) -> None:
    await conn.execute(DONE_SQL, unboxed.ids)


async def widen_boxes(conn: asyncpg.Connection, unboxed: Unboxed) -> None:
    """Widens the trail boxes by these stored fixes."""
    if not len(unboxed.code):
        return
    gap = BOX_MAX_GAP.total_seconds()
    los = [from_epoch(t - gap) for t in unboxed.first.tolist()]
    his = [from_epoch(t + gap) for t in unboxed.last.tolist()]
    entry_subjects = [unboxed.subjects[c] for c in unboxed.code.tolist()]
    row = await conn.fetchrow(NEIGHBOURS_SQL, entry_subjects, los, his, min(los), max(his))
    entry = ints(row[0])
    ts, lat, lon, accuracy_m = (floats(v) for v in row[1:])
    # The rows come as the scans went, nearly always an entry at a time in time order;
    # sorted (stably, as lexsort) only if not.
    step, later = np.diff(entry), np.diff(ts)
    if not ((step > 0) | ((step == 0) & (later >= 0))).all():
        order = np.lexsort((ts, entry))
        entry = entry[order]
        ts, lat, lon, accuracy_m = (a[order] for a in (ts, lat, lon, accuracy_m))
    # Stored fixes amid the new ones count as new too: a superset, and boxes only grow.
    new = (ts >= unboxed.first[entry]) & (ts <= unboxed.last[entry])
    points = box_points(entry, ts, lat, lon, accuracy_m, new)
    # Pairs are found within an entry; boxes are a subject's, whichever entry.
    grown = boxes_of(
        BoxPoints(
            unboxed.code[points.owner],
            points.bucket,
            points.lat,
            points.lon,
            points.accuracy_m,
        )
    )
    if len(grown.owner):
        await conn.execute(
            WIDEN_SQL,
            [unboxed.subjects[i] for i in grown.owner.tolist()],
            grown.bucket.tolist(),
            *(side.tolist() for side in grown.sides.T),
        )


# The same widening in one statement, by stored fixes in {source} (a table, or a
# subquery with an alias, with subject_id, ts, lat, lon, accuracy_m): for bulk loads a
# day at a time (bench/proximity.py), where a lateral look both ways from each fix is
# the simpler way. A test holds it to widen_boxes, box for box.
_FIXES = f"(select * from {{source}} where accuracy_m <= {BOX_MAX_ACCURACY_M})"
_GAP = f"interval '{BOX_MAX_GAP.total_seconds():.0f} seconds'"


def _bin(ts: str) -> str:
    return f"date_bin('{BOX_BUCKET.total_seconds():.0f} seconds', {ts}, timestamptz '2000-01-01Z')"


BOXES_SQL = f"""
insert into trail_boxes (subject_id, bucket, box)
select subject_id, bucket, st_makeenvelope(
        floor(min(lon - dlon) / {BOX_GRID}) * {BOX_GRID},
        floor(min(lat - dlat) / {BOX_GRID}) * {BOX_GRID},
        (floor(max(lon + dlon) / {BOX_GRID}) + 1) * {BOX_GRID},
        (floor(max(lat + dlat) / {BOX_GRID}) + 1) * {BOX_GRID}, 4326)
from (
    select subject_id, {_bin("f.ts")} as bucket, lat, lon, accuracy_m from {_FIXES} f
    union all
    select f.subject_id, {_bin("f.ts")}, n.lat, n.lon, n.accuracy_m
    from {_FIXES} f cross join lateral (
        select lat, lon, accuracy_m from (
            select lat, lon, accuracy_m, min(accuracy_m) over (
                order by ts rows between unbounded preceding and 1 preceding) as between_min
            from trail_points t
            where t.subject_id = f.subject_id and t.ts > f.ts and t.ts <= f.ts + {_GAP}
              and t.accuracy_m <= {BOX_MAX_ACCURACY_M}
        ) later where between_min is null or accuracy_m < between_min
    ) n
    union all
    select f.subject_id, {_bin("p.ts")}, f.lat, f.lon, f.accuracy_m
    from {_FIXES} f cross join lateral (
        select ts from (
            select ts, min(accuracy_m) over (
                order by ts desc rows between unbounded preceding and 1 preceding) as between_min
            from trail_points t
            where t.subject_id = f.subject_id and t.ts < f.ts and t.ts >= f.ts - {_GAP}
              and t.accuracy_m <= {BOX_MAX_ACCURACY_M}
        ) earlier where between_min is null or between_min > f.accuracy_m
    ) p
) points
cross join lateral (
    select accuracy_m / 110000.0 as dlat,
        accuracy_m / (110000.0 * cos(radians(least(abs(lat) + 0.1, 89.9)))) as dlon
) e
group by subject_id, bucket
on conflict (subject_id, bucket) do update
    set box = st_envelope(st_collect(trail_boxes.box, excluded.box))
    where not trail_boxes.box ~ excluded.box
"""


# The store's staging table, one a connection, emptied by every commit.
STAGING_SQL = """
create temp table if not exists fix_staging (
    tag_id text, ts timestamptz, received_at timestamptz, subject_id uuid,
    lat float8, lon float8, accuracy_m float8, speed_mps float8,
    heading_deg float8, source text, sats int2, hdop float8
) on commit delete rows
"""

# Staged fixes whose (tag, ts) is stored with another position, set aside; $1/$2 the
# batch's first and last fix time.
CONFLICTS_SQL = """
with c as (
    insert into fix_conflicts (tag_id, ts, received_at, subject_id, lat, lon,
        accuracy_m, stored_lat, stored_lon, stored_accuracy_m)
    select distinct on (s.tag_id, s.ts, s.lat, s.lon, s.accuracy_m)
        s.tag_id, s.ts, s.received_at, s.subject_id, s.lat, s.lon, s.accuracy_m,
        t.lat, t.lon, t.accuracy_m
    from fix_staging s
    -- As STORED_POSITIONS_SQL: a probe of the primary key a fix, in the
    -- batch's days' partitions only (a plain join hashed every partition of
    -- the trail, a whole year's of it in production).
    cross join lateral (
        select lat, lon, accuracy_m from trail_points t
        where t.tag_id = s.tag_id and t.ts = s.ts and t.ts between $1 and $2
        limit 1
    ) t
    where (s.lat, s.lon, s.accuracy_m) is distinct from (t.lat, t.lon, t.accuracy_m)
    on conflict on constraint uq_fix_conflicts_fix
        do update set occurrences = fix_conflicts.occurrences + 1
    returning 1
)
select count(*) from c
"""


# The staged fixes not stored yet, stored.
INSERT_STAGED_SQL = """
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


PG_EPOCH_DAY = date(2000, 1, 1)
DAY_US = 86_400_000_000


def _staged(f: FixMessage) -> tuple[object, ...]:
    """A fix as a row of the staging table."""
    return (
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


@dataclass(frozen=True, slots=True)
class StoreResult:
    inserted: int
    conflicts: int


def days_of(ts: npt.NDArray[np.int64]) -> set[date]:
    """The UTC days of these times (microseconds since 2000-01-01 UTC, as TrailRows)."""
    return {PG_EPOCH_DAY + timedelta(days=d) for d in distinct(ts // DAY_US).tolist()}


async def store_fixes(
    conn: asyncpg.Connection, partitions: Partitions, fixes: FixBatch
) -> StoreResult:
    """Writes fixes idempotently: a known (tag, ts) is skipped when identical and set aside
    in fix_conflicts when its position differs. One transaction for the whole batch."""
    rows = fixes.rows()
    await partitions.ensure(conn, days_of(rows.ts))
    async with conn.transaction():
        try:
            # Straight into the trail: nearly always every fix is new (ingest has set
            # re-sends aside). Binary COPY, built from columns (services/ingest/pgcopy.py),
            # is the fastest way in (19 µs of PostgreSQL a fix in the benchmark, against
            # 29 through a staging table and an insert that skips known fixes:
            # docs/benchmarks.md, sixth session). A savepoint, so that a fix already
            # stored undoes only this.
            async with conn.transaction():
                await conn.copy_to_table(
                    "trail_points",
                    source=chunks(encode(rows)),
                    columns=TRAIL_COLUMNS,
                    format="binary",
                )
            inserted = len(fixes)
        except asyncpg.UniqueViolationError:
            # One of them is stored already (a re-send that raced its twin, or a
            # conflicting one): each fix on its own, through the staging table.
            await conn.execute(STAGING_SQL)
            await conn.copy_records_to_table(
                "fix_staging",
                records=[_staged(f) for f in fixes.messages()],
                columns=STAGING_COLUMNS,
            )
            inserted = await conn.fetchval(INSERT_STAGED_SQL)
        # Their boxes are widened behind the store, by the box keeper.
        await mark_unboxed(conn, fixes)
        # Only a fix the insert skipped can conflict with a stored one (or with another
        # in the batch); nearly always every fix is new, and the look-up is not needed.
        if inserted == len(fixes):
            return StoreResult(int(inserted), 0)
        conflicts = await conn.fetchval(
            CONFLICTS_SQL,
            from_epoch(fixes.ts.min()),
            from_epoch(fixes.ts.max()),
        )
    return StoreResult(int(inserted), int(conflicts))


# $1 tag ids, $2 fix times as seconds since 1970, $3/$4 the first and last of them. The
# times travel as float8, not timestamptz: asyncpg encodes a float in 0.3 µs and a
# datetime in 1.2 to 1.4 (client CPU, best of 20, 2,000 values), and this statement
# carries every fix of every request (docs/benchmarks.md, eighth session). It is exact:
# a time taken to the microsecond, as a float of epoch seconds (`datetime.timestamp`),
# errs by at most half its unit in the last place, 0.24 µs until 2106, and
# `to_timestamp` shifts it to 2000 exactly and rounds its microseconds to the nearest,
# erring by at most 0.25 µs more: under half a microsecond, so it gives the very time.
# One probe of the primary key a key, in the days' partitions the planner keeps by
# $3/$4. As a plain join the planner read every fix of the day between $3 and $4
# instead: live fixes are newer than the statistics know, so it expects none there
# and scans. It found the whole day's trail that way, 330 ms a request with two hours
# stored, and more as the day went on (docs/benchmarks.md, fourth session). The limit
# keeps the lateral a lateral.
STORED_POSITIONS_SQL = """
select k.tag_id, k.ts, t.lat, t.lon, t.accuracy_m
from (
    select tag_id, to_timestamp(s) as ts from unnest($1::text[], $2::float8[]) as u(tag_id, s)
) k
cross join lateral (
    select lat, lon, accuracy_m from trail_points t
    where t.tag_id = k.tag_id and t.ts = k.ts and t.ts between $3 and $4
    limit 1
) t
"""


async def stored_positions(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, float]]
) -> dict[tuple[str, float], tuple[float, float, float]]:
    """The stored (lat, lon, accuracy) of whichever of these (tag, ts) are already stored;
    times as seconds since 1970 (exact to the microsecond, as FixBatch has them)."""
    if not keys:
        return {}
    tag_ids, times = zip(*keys, strict=True)
    rows = await conn.fetch(
        STORED_POSITIONS_SQL,
        tag_ids,
        times,
        from_epoch(min(times)),
        from_epoch(max(times)),
    )
    return {(r[0], r[1].timestamp()): (r[2], r[3], r[4]) for r in rows}


# $1 tag ids, $2 a time each as seconds since 1970 (as STORED_POSITIONS_SQL): each tag's
# newest stored fix time after its time, for the tags that have one. One probe of the
# primary key a tag and partition after the time (run-time pruning keeps the partitions
# before it out): with live fixes, today's and the empty days kept ready ahead.
NEWEST_AFTER_SQL = """
select u.tag_id, n.ts
from unnest($1::text[], $2::float8[]) as u(tag_id, s)
cross join lateral (
    select t.ts from trail_points t
    where t.tag_id = u.tag_id and t.ts > to_timestamp(u.s)
    order by t.ts desc
    limit 1
) n
"""


async def newest_after(
    conn: asyncpg.Connection, tag_ids: Sequence[str], after: Sequence[float]
) -> dict[str, float]:
    """The newest stored fix time (seconds since 1970) of each tag later than its time
    here, for the tags that have one."""
    if not tag_ids:
        return {}
    rows = await conn.fetch(NEWEST_AFTER_SQL, tag_ids, after)
    return {r[0]: r[1].timestamp() for r in rows}


# $1 lat, $2 lon, $3/$4 bucket range, $5 box margin (degrees), $6 TrailBoxes.SPAN.
# The second half: a subject with stored fixes whose boxes the box keeper has yet to
# widen is a candidate wherever the place, if those fixes' span meets the buckets'
# times (a span ending before $3 changed no box searched; one starting after $4 plus
# SPAN neither). The rows are a few stored batches, unless the keeper is behind.
SUBJECTS_PASSING_SQL = """
select subject_id
from trail_boxes
where bucket between $3 and $4
  and box && st_expand(st_setsrid(st_makepoint($2, $1), 4326), $5)
union
select u.subject_id
from trail_unboxed t
cross join lateral unnest(t.subjects, t.firsts, t.lasts) as u(subject_id, first, last)
where t.first_ts <= $4 + $6 and t.last_ts >= $3
  and u.first <= date_part('epoch', $4 + $6) and u.last >= date_part('epoch', $3)
"""


async def subjects_passing(
    conn: asyncpg.Connection,
    lat: float,
    lon: float,
    reach_m: float,
    start: datetime,
    end: datetime,
) -> list[uuid.UUID]:
    """Subjects whose trail, fixes or the paths between them, accuracy counted, may have
    come within reach_m of (lat, lon) between start and end: everyone who did, and some
    who did not (boxes are coarse), for an exact test on their trails. A path that ends
    in the window can start up to BOX_MAX_GAP before it: its box is that fix's bucket's."""
    earliest = (start - BOX_MAX_GAP).timestamp()
    first = from_epoch(earliest - earliest % BOX_BUCKET.total_seconds())
    rows = await conn.fetch(
        SUBJECTS_PASSING_SQL, lat, lon, first, end, degree_margin(lat, reach_m), TrailBoxes.SPAN
    )
    return sorted(r["subject_id"] for r in rows)


@dataclass(frozen=True, slots=True)
class TrailBoxes:
    """Trail boxes as columns: box i is of subject `subjects[owner[i]]`; that subject's
    fixes in the bucket and the paths from them, accuracy counted, lie inside
    (min lon, min lat, max lon, max lat), at times from the bucket's start to `SPAN`
    later."""

    subjects: list[uuid.UUID]
    owner: npt.NDArray[np.int64]
    buckets: npt.NDArray[np.float64]  # the buckets' starts, seconds since the epoch
    boxes: npt.NDArray[np.float64]  # (n, 4)

    # How far past its bucket's start a box's paths can reach in time.
    SPAN: ClassVar[timedelta] = BOX_BUCKET + BOX_MAX_GAP
    # How far before a new fix the first box it can have changed starts.
    BEFORE: ClassVar[timedelta] = BOX_MAX_GAP + BOX_BUCKET


# $1-$3 each place's longitude, latitude and margin (degrees), $4/$5 the first and last
# bucket start to look at for it; $6/$7 the batch's own first and last, which the
# planner sees: only those days' partitions. One search of the GiST index over
# (box, bucket) a place. `&&` compares boxes rounded outwards to float4, so it finds
# every box that meets the place's square, and maybe a hair more.
BOXES_NEAR_SQL = """
select b.subject_id, date_part('epoch', b.bucket), st_xmin(b.box), st_ymin(b.box),
       st_xmax(b.box), st_ymax(b.box)
from unnest($1::float8[], $2::float8[], $3::float8[], $4::timestamptz[], $5::timestamptz[])
    as p(lon, lat, m, lo, hi)
cross join lateral (
    select subject_id, bucket, box from trail_boxes b
    where b.box && st_makeenvelope(p.lon - p.m, p.lat - p.m, p.lon + p.m, p.lat + p.m, 4326)
      and b.bucket between p.lo and p.hi
      and b.bucket between $6 and $7
    offset 0
) b
"""


_SEARCH_PAD = timedelta(seconds=1)
_SEARCH_PAD_DEG = 1e-7  # about a centimetre


@dataclass(frozen=True, slots=True)
class Place:
    """A point to look for trail boxes near: within `margin` degrees of it either way,
    at times from `first` to `last`."""

    lat: float
    lon: float
    margin: float
    first: datetime
    last: datetime


async def boxes_near(
    conn: asyncpg.Connection,
    spans: Mapping[uuid.UUID, Sequence[datetime]],
    places: Sequence[Place],
) -> TrailBoxes:
    """Of the trail boxes a batch of new stored fixes can have changed (for each subject's
    first and last new fix in `spans`: from BOX_MAX_GAP before the first, where a path into
    it starts, in its start's box, to the last), those whose square meets a place's, at a
    time in its window: a box's times run from its bucket's start to TrailBoxes.SPAN
    later.

    Looked for from the places, a search of the box index each, not read for every
    subject of the batch: a batch has thousands of subjects and the crimes open at its
    time are a handful (docs/benchmarks.md, ninth session)."""
    subjects = list(spans)
    if not places or not subjects:
        return TrailBoxes(subjects, np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))
    # The search is a hair wider than asked, in space and time, so that PostgreSQL's
    # arithmetic (in another order) cannot drop a box the caller's own test, in its
    # own arithmetic, keeps; what is kept is decided here and there, not by the search.
    start = min(lo for lo, _ in spans.values()) - TrailBoxes.BEFORE - _SEARCH_PAD
    end = max(hi for _, hi in spans.values()) + _SEARCH_PAD
    rows = await conn.fetch(
        BOXES_NEAR_SQL,
        [p.lon for p in places],
        [p.lat for p in places],
        [p.margin + _SEARCH_PAD_DEG for p in places],
        [max(p.first - TrailBoxes.SPAN, start) - _SEARCH_PAD for p in places],
        [min(p.last, end) + _SEARCH_PAD for p in places],
        start,
        end,
    )
    index_of = {s: i for i, s in enumerate(subjects)}
    before = TrailBoxes.BEFORE.total_seconds()
    found: dict[tuple[int, float], list[float]] = {}
    for subject_id, bucket, *sides in rows:
        i = index_of.get(subject_id)
        if i is None:  # a subject with no new fix in this batch
            continue
        lo, hi = spans[subject_id]
        if lo.timestamp() - before <= bucket <= hi.timestamp():
            found[(i, bucket)] = sides
    return TrailBoxes(
        subjects,
        np.array([i for i, _ in found], dtype=np.int64),
        np.array([b for _, b in found], dtype=np.float64),
        np.array(list(found.values()), dtype=np.float64).reshape(-1, 4),
    )


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


def _by_subject(rows: Sequence[asyncpg.Record]) -> dict[uuid.UUID, list[TrailFix]]:
    """Rows of (subject_id, tag_id, ts, received_at, lat, lon, accuracy_m), grouped."""
    out: dict[uuid.UUID, list[TrailFix]] = {}
    for subject_id, *fix in rows:
        out.setdefault(subject_id, []).append(TrailFix(*fix))
    return out


# $1/$2 (subject, since) as arrays; $3 the earliest since.
TRAILS_SINCE_SQL = """
select r.subject_id, t.tag_id, t.ts, t.received_at, t.lat, t.lon, t.accuracy_m
from unnest($1::uuid[], $2::timestamptz[]) as r(subject_id, since)
cross join lateral (
    select tag_id, ts, received_at, lat, lon, accuracy_m from trail_points t
    where t.subject_id = r.subject_id and t.ts >= r.since
      -- The earliest over all, which the planner sees: only partitions from it.
      and t.ts >= $3
    offset 0
) t
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
"""


async def trails_since(
    conn: asyncpg.Connection, since: Sequence[tuple[uuid.UUID, datetime]]
) -> dict[uuid.UUID, list[TrailFix]]:
    """Each subject's trail from `since` on, in time order, together with the one fix
    just before `since` (so a caller can tell whether something began earlier)."""
    if not since:
        return {}
    rows = await conn.fetch(
        TRAILS_SINCE_SQL,
        [s for s, _ in since],
        [t for _, t in since],
        min(t for _, t in since),
    )
    return _by_subject(rows)


# $1-$3 (subject, from, through) as arrays; $4 the earliest from. A count a row, in
# order: from the index on (subject_id, ts) alone.
COUNT_BETWEEN_SQL = """
select (
    select count(*) from trail_points t
    where t.subject_id = r.subject_id and t.ts between r.lo and r.hi
      -- The earliest over all, which the planner sees: only partitions from it.
      and t.ts >= $4
)
from unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[]) with ordinality
    as r(subject_id, lo, hi, i)
order by r.i
"""


async def count_between(
    conn: asyncpg.Connection, spans: Sequence[tuple[uuid.UUID, datetime, datetime]]
) -> list[int]:
    """How many fixes are stored for each (subject, from, through), both ends included."""
    if not spans:
        return []
    rows = await conn.fetch(
        COUNT_BETWEEN_SQL,
        [s for s, _, _ in spans],
        [lo for _, lo, _ in spans],
        [hi for _, _, hi in spans],
        min(lo for _, lo, _ in spans),
    )
    return [n for (n,) in rows]


# $1-$3 (subject, first, last) as arrays, the times as seconds since 1970 (float8, as
# STORED_POSITIONS_SQL: exact to the microsecond, and a datetime costs asyncpg four
# times a float to encode, for every subject of every batch); $4 the pad (s); $5/$6
# the least first and greatest last.
# One row of columns (`floats`): each subject's place in $1, then its reach.
REACH_SQL = """
select string_agg(int8send(i), ''), string_agg(float8send(x0), ''),
       string_agg(float8send(y0), ''), string_agg(float8send(x1), ''),
       string_agg(float8send(y1), ''), string_agg(float8send(accuracy_m), '')
from (
    select r.i - 1 as i, min(t.lon) as x0, min(t.lat) as y0, max(t.lon) as x1,
           max(t.lat) as y1, max(t.accuracy_m) as accuracy_m
    from unnest($1::uuid[], $2::float8[], $3::float8[])
        with ordinality as r(subject_id, lo, hi, i)
    cross join lateral (
        select lon, lat, accuracy_m from trail_points t
        where t.subject_id = r.subject_id
          and t.ts >= to_timestamp(r.lo) - make_interval(secs => $4)
          and t.ts <= to_timestamp(r.hi) + make_interval(secs => $4)
          -- The same bounds over all, which the planner sees: only those days'
          -- partitions.
          and t.ts between $5::timestamptz - make_interval(secs => $4)
                       and $6::timestamptz + make_interval(secs => $4)
        offset 0
    ) t
    group by r.i
) reach
"""


async def reach_around(
    conn: asyncpg.Connection,
    subjects: Sequence[uuid.UUID],
    first: npt.NDArray[np.float64],
    last: npt.NDArray[np.float64],
    pad_s: float,
) -> Reaches:
    """For each subject, with its first and last new fix time (seconds since 1970): the
    reach of its stored fixes from pad_s before `first` to pad_s after `last`,
    aggregated in the database (an index-only scan; no row comes back but the box).
    Subjects with none are left out."""
    if not subjects:
        return Reaches([], np.zeros((0, 4)), np.zeros(0))
    row = await conn.fetchrow(
        REACH_SQL,
        subjects,
        first.tolist(),
        last.tolist(),
        pad_s,
        from_epoch(float(first.min())),
        from_epoch(float(last.max())),
    )
    which = ints(row[0])
    return Reaches(
        [subjects[i] for i in which.tolist()],
        np.column_stack([floats(v) for v in row[1:5]]).reshape(-1, 4),
        floats(row[5]),
    )


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


# $1/$2 (subject, since) as arrays; $3 the earliest since.
FIRST_FIXES_SQL = """
select r.subject_id, t.ts
from unnest($1::uuid[], $2::timestamptz[]) as r(subject_id, since)
cross join lateral (
    select ts from trail_points t
    where t.subject_id = r.subject_id and t.ts > r.since and t.ts > $3
    order by ts
    limit 1
) t
"""


async def first_fixes_after(
    conn: asyncpg.Connection, since: Sequence[tuple[uuid.UUID, datetime]]
) -> dict[uuid.UUID, datetime]:
    """Each subject's first fix after a moment (when a silence ended)."""
    if not since:
        return {}
    rows = await conn.fetch(
        FIRST_FIXES_SQL,
        [s for s, _ in since],
        [t for _, t in since],
        min(t for _, t in since),
    )
    return {r["subject_id"]: r["ts"] for r in rows}


async def trails_between(
    conn: asyncpg.Connection, subject_ids: Sequence[uuid.UUID], start: datetime, end: datetime
) -> dict[uuid.UUID, list[TrailFix]]:
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
    return _by_subject(rows)


# $1-$3 (subject, start, end) as arrays; $4/$5 the least start and greatest end.
TRAILS_IN_SQL = """
select w.k, t.tag_id, t.ts, t.received_at, t.lat, t.lon, t.accuracy_m
from unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[])
     with ordinality as w(subject_id, lo, hi, k)
cross join lateral (
    select tag_id, ts, received_at, lat, lon, accuracy_m from trail_points t
    where t.subject_id = w.subject_id and t.ts between w.lo and w.hi
      and t.ts between $4 and $5
    offset 0
) t
order by w.k, t.ts
"""


async def trails_in(
    conn: asyncpg.Connection, windows: Sequence[tuple[uuid.UUID, datetime, datetime]]
) -> list[list[TrailFix]]:
    """For each (subject, start, end), the subject's trail between start and end in time
    order: as trails_between, for many windows in one query."""
    out: list[list[TrailFix]] = [[] for _ in windows]
    if not windows:
        return out
    rows = await conn.fetch(
        TRAILS_IN_SQL,
        [s for s, _, _ in windows],
        [lo for _, lo, _ in windows],
        [hi for _, _, hi in windows],
        min(lo for _, lo, _ in windows),
        max(hi for _, _, hi in windows),
    )
    for k, *fix in rows:
        out[k - 1].append(TrailFix(*fix))
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
    """Drops whole daily partitions of trail_points and trail_boxes that end on or before
    cutoff (their indexes go with them: no row-by-row delete, no bloat). Returns their
    names."""
    dropped = []
    for table in PARTITIONED:
        rows = await conn.fetch(
            """
            select c.relname
            from pg_inherits i join pg_class c on c.oid = i.inhrelid
            where i.inhparent = $1::regclass
            order by c.relname
            """,
            table,
        )
        for r in rows:
            name = r["relname"]
            try:
                day = datetime.strptime(name.removeprefix(f"{table}_p"), "%Y%m%d").date()
            except ValueError:
                continue  # not one of ours
            if day < cutoff:
                await conn.execute(f'drop table "{name}"')
                dropped.append(name)
    return dropped


async def delete_device_events_before(conn: asyncpg.Connection, cutoff: datetime) -> int:
    result = await conn.execute("delete from device_events where ts < $1", cutoff)
    return int(result.split()[-1])
