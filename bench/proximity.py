"""Proximity search over a large stored trail: how long an investigator waits.

    python -m bench.proximity            # 7 days x 5,000 tags (about 50 million fixes)
    python -m bench.proximity --smoke    # a few tags for a day: proves it still works

Loads the fleet once into its own database (`tagtrail_bench`, built by the real
migrations) by binary COPY into each day's partition, indexes built as the partition is
attached; a later run with the same fleet reuses it. Then runs proximity searches (100 m,
one hour, at places where somebody was) through the same service function the API calls,
and prints p50/p95/p99 of the whole search and of its stages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import numpy as np

from bench.common import bench_database, drop_database, header, latency_line, wear
from bench.fleet import Fleet, FleetSpec
from bench.pgcopy import COLUMNS, chunks, encode, upload_delays
from services.common.auth import Principal, Role
from services.common.database import Database
from services.common.settings import Settings
from services.ingest import repository as trail_store
from services.ingest.repository import BOXES_SQL, create_partition, partition_name
from services.registry import service as registry
from services.trails import service as trails
from services.trails.schemas import ProximityIn

FIRST_DAY = date(2026, 11, 2)


async def fleet_loaded(conn: asyncpg.Connection) -> dict[str, object] | None:
    comment = await conn.fetchval(
        "select shobj_description(oid, 'pg_database') from pg_database"
        " where datname = current_database()"
    )
    return json.loads(comment) if comment else None


async def enrol(conn: asyncpg.Connection, fleet: Fleet, start: datetime) -> None:
    """The fleet's supplier, tags, subjects and who wears what, as the registry keeps them."""
    spec = fleet.spec
    supplier = uuid.uuid5(uuid.NAMESPACE_URL, f"tagtrail-sim/{spec.seed}/supplier")
    await conn.execute(
        "insert into suppliers (id, name) values ($1, $2)", supplier, f"sim-{spec.seed}"
    )
    await wear(conn, fleet, supplier, start)


async def load_day(conn: asyncpg.Connection, fleet: Fleet, day: date) -> tuple[int, float, float]:
    """One day into its own table, then attached as a partition (which builds its
    indexes) and its trail boxes made. Returns rows, seconds of COPY and seconds of
    indexing and boxing."""
    spec = fleet.spec
    fixes = fleet.day(day)
    delays = upload_delays(np.random.default_rng([spec.seed, day.toordinal(), 7]), len(fixes))
    data = encode(
        fixes,
        [spec.tag_id(i) for i in range(spec.tags)],
        [spec.subject_id(i) for i in range(spec.tags)],
        delays,
    )
    name = partition_name(day)
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    hi = lo + timedelta(days=1)
    await conn.execute(f"drop table if exists {name}")
    await conn.execute(f"create table {name} (like trail_points including defaults)")
    # The check lets ATTACH skip scanning the table to prove every row belongs there.
    await conn.execute(
        f"alter table {name} add constraint {name}_range"
        f" check (ts >= '{lo.isoformat()}' and ts < '{hi.isoformat()}')"
    )
    t0 = time.perf_counter()
    await conn.copy_to_table(name, source=chunks(data), columns=list(COLUMNS), format="binary")
    t1 = time.perf_counter()
    await conn.execute(
        f"alter table trail_points attach partition {name}"
        f" for values from ('{lo.isoformat()}') to ('{hi.isoformat()}')"
    )
    await conn.execute(f"alter table {name} drop constraint {name}_range")
    # Autovacuum would get there on its own; a benchmark should not wait on it. Vacuum
    # marks the pages all-visible, which index-only scans of the trail need.
    await conn.execute(f"vacuum analyze {name}")
    # The trail boxes, by the store's rule in one statement (a test holds the two together).
    for d in (day - timedelta(days=1), day):
        await create_partition(conn, "trail_boxes", d)
    await conn.execute(BOXES_SQL.format(source=name))
    await conn.execute(f"vacuum analyze {partition_name(day, 'trail_boxes')}")
    return len(fixes), t1 - t0, time.perf_counter() - t1


async def load(db: Database, fleet: Fleet, days: int) -> None:
    spec = fleet.spec
    async with db.pool.acquire() as conn:
        await conn.execute(
            "truncate trail_points, tag_assignments, tags, subjects, suppliers cascade"
        )
        for name in await conn.fetch(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
            " join pg_class p on p.oid = i.inhparent where p.relname = 'trail_points'"
        ):
            await conn.execute(f"drop table {name['relname']}")
        await enrol(conn, fleet, datetime(FIRST_DAY.year, 1, 1, tzinfo=UTC))
        await conn.execute("set maintenance_work_mem = '1GB'")
        total = copy_s = index_s = 0.0
        for i in range(days):
            day = FIRST_DAY + timedelta(days=i)
            t0 = time.perf_counter()
            rows, c, x = await load_day(conn, fleet, day)
            total, copy_s, index_s = total + rows, copy_s + c, index_s + x
            made = time.perf_counter() - t0 - c - x
            print(
                f"  {day}: {rows:,} fixes, generated+encoded {made:.1f} s,"
                f" COPY {c:.1f} s ({rows / c:,.0f}/s), indexes+boxes {x:.1f} s",
                flush=True,
            )
        wanted = {"tags": spec.tags, "seed": spec.seed, "days": days, "first": str(FIRST_DAY)}
        await conn.execute(
            f"comment on database {await conn.fetchval('select current_database()')}"
            f" is '{json.dumps(wanted)}'"
        )
        print(
            f"loaded {total:,.0f} fixes: COPY {copy_s:.0f} s ({total / copy_s:,.0f} rows/s),"
            f" indexes+boxes {index_s:.0f} s"
        )


async def places(
    db: Database, fleet: Fleet, days: int, n: int, seed: int = 42
) -> list[tuple[float, float, datetime]]:
    """Where and when to search: where a random tag was at a random minute (crime scenes
    are where people are), so most searches find somebody."""
    rng = random.Random(seed)
    out: list[tuple[float, float, datetime]] = []
    async with db.pool.acquire() as conn:
        while len(out) < n:
            i = rng.randrange(fleet.spec.tags)
            at = datetime.combine(FIRST_DAY, datetime.min.time(), UTC) + timedelta(
                seconds=rng.uniform(3600, days * 86400 - 3600)
            )
            row = await conn.fetchrow(
                "select lat, lon, ts from trail_points where tag_id = $1 and ts >= $2"
                " order by ts limit 1",
                fleet.spec.tag_id(i),
                at,
            )
            if row is not None:
                out.append((row["lat"], row["lon"], row["ts"]))
    return out


async def run_queries(
    db: Database, settings: Settings, fleet: Fleet, days: int, n: int, radius_m: float, seed: int
) -> None:
    async with db.transaction() as session:
        user, _ = await registry.create_user_token(session, Role.investigator, "bench")
    who = Principal(user.id, Role.investigator, "bench")
    targets = await places(db, fleet, days, n, seed)
    total, near_s, found, candidates = [], [], [], []
    for lat, lon, ts in targets:
        q = ProximityIn(
            lat=lat,
            lon=lon,
            radius_m=radius_m,
            start=ts - timedelta(minutes=30),
            end=ts + timedelta(minutes=30),
            reason="benchmark of proximity search",
            case_reference="BENCH-1",
        )
        t0 = time.perf_counter()
        async with db.transaction() as session:
            answer = await trails.proximity(session, db, settings.check, who, q)
        total.append(time.perf_counter() - t0)
        found.append(len(answer.subjects))
        # The first stage alone: the trail boxes' index says who may have passed.
        async with db.pool.acquire() as conn:
            t0 = time.perf_counter()
            near = await trail_store.subjects_passing(conn, lat, lon, radius_m, q.start, q.end)
            near_s.append(time.perf_counter() - t0)
        candidates.append(len(near))
    print(f"searches: {n} x {radius_m:.0f} m, 1 hour, at places where somebody was")
    # Each search is where somebody was: finding nobody would be a wrong answer.
    print(
        f"subjects found per search: mean {np.mean(found):.1f}, min {min(found)}, max {max(found)}"
    )
    print(f"candidate subjects per search (index stage): mean {np.mean(candidates):.1f}")
    print(latency_line("whole search (as the API runs it, audit included)", total))
    print(latency_line("index stage (subjects_passing, trail boxes)", near_s))


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proximity", description=__doc__)
    parser.add_argument("--tags", type=int, default=5000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--radius", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=42, help="which places to search")
    parser.add_argument("--database", default="tagtrail_bench")
    parser.add_argument(
        "--reload", action="store_true", help="a new database, the fleet loaded again"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="20 tags, 1 day, 20 searches, throw-away database"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.tags, args.days, args.queries = 20, 1, 20
        args.database = f"tagtrail_bench_smoke_{uuid.uuid4().hex[:8]}"
    settings = Settings()
    header("proximity search")
    fleet = Fleet(FleetSpec(tags=args.tags))
    await bench_database(settings, args.database, fresh=args.smoke or args.reload)
    db = await Database.connect(settings.db, args.database)
    try:
        async with db.pool.acquire() as conn:
            present = await fleet_loaded(conn)
        wanted = {"tags": args.tags, "seed": 1, "days": args.days, "first": str(FIRST_DAY)}
        if args.reload or present != wanted:
            print(f"loading {args.days} days of {args.tags:,} tags into {args.database}")
            await load(db, fleet, args.days)
        async with db.pool.acquire() as conn:
            rows = await conn.fetchval(
                "select sum(reltuples)::bigint from pg_class c join pg_inherits i"
                " on c.oid = i.inhrelid where i.inhparent = 'trail_points'::regclass"
            )
        print(f"stored fixes: {rows:,} (planner estimate)")
        await run_queries(db, settings, fleet, args.days, args.queries, args.radius, args.seed)
    finally:
        await db.close()
        if args.smoke:
            await drop_database(settings, args.database)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
