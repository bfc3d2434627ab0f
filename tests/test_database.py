"""The schema: migrations match the models, partitions appear, and hot queries use indexes."""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest
import shapely
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.common import drop_database
from services.app import create_app
from services.cli import alembic_config
from services.common.bus.memory import MemoryBus
from services.common.database import Database, side_by_side
from services.common.geo import WGS84
from services.common.metrics import FIXES_UNBOXED
from services.common.settings import DatabaseSettings, Settings
from services.ingest.batch import FixBatch
from services.ingest.pgcopy import HEADER, TRAIL_COLUMNS, TRAILER, chunks, encode, key_order
from services.ingest.repository import (
    BOX_BUCKET,
    BOX_MAX_GAP,
    BOXES_NEAR_SQL,
    BOXES_SQL,
    CONFLICTS_SQL,
    FIRST_FIXES_SQL,
    NEIGHBOURS_SQL,
    NEWEST_AFTER_SQL,
    REACH_SQL,
    STAGING_SQL,
    STORED_POSITIONS_SQL,
    SUBJECTS_PASSING_SQL,
    TRAILS_IN_SQL,
    TRAILS_SINCE_SQL,
    Partitions,
    TrailBoxes,
    Unboxed,
    _staged,
    box_points,
    boxes_near,
    claim_unboxed,
    days_of,
    finish_unboxed,
    newest_after,
    partition_name,
    reach_around,
    store_fixes,
    stored_positions,
    subjects_passing,
    widen_boxes,
)
from services.ingest.schemas import FixMessage, FixSource
from services.pipeline import Pipeline
from services.topics import DEAD_LETTER
from services.zones.repository import OpenScene, touch_activity
from services.zones.worker import CrimeMatcher, _scenes_met, scene_places


def test_connection_urls_carry_any_password_and_a_socket_directory() -> None:
    """The password (and user and database name) may hold any character, and the host
    may be the directory of the server's socket: the URLs SQLAlchemy, asyncpg and
    Alembic are given read back as the settings say."""
    password = "p@ss:w/rd%?#"
    tcp = DatabaseSettings(host="db.example", port=5433, password=password, name="trail")
    url = make_url(tcp.sqlalchemy_url())
    assert (url.password, url.host, url.port, url.database) == (
        password,
        "db.example",
        5433,
        "trail",
    )
    socket = DatabaseSettings(host="/var/run/pg", port=5433, password=password)
    url = make_url(socket.sqlalchemy_url("other"))
    assert (url.password, url.host, url.database) == (password, None, "other")
    assert url.query == {"host": "/var/run/pg", "port": "5433"}
    assert make_url(socket.asyncpg_dsn()).query["host"] == "/var/run/pg"
    config = alembic_config(socket.sqlalchemy_url())
    assert config.get_main_option("sqlalchemy.url") == socket.sqlalchemy_url()


def test_migrations_match_the_models(settings: Settings, database: str) -> None:
    config = alembic_config(settings.db.sqlalchemy_url(database))
    # Raises when autogenerate would find any difference.
    command.check(config)


async def test_pool_connections_say_whose_they_are_and_come_back_clean(
    settings: Settings, database: str
) -> None:
    """Each connection names its process (application_name), on both pools; and one
    released in the middle of a transaction, or holding a transaction's advisory lock,
    comes back out of it, the lock gone, without the reset round trip asyncpg makes by
    default (database.py, `_keep_session`)."""
    db = await Database.connect(
        settings.db.model_copy(update={"pool_size": 1}), database, name="tagtrail worker x"
    )
    try:
        async with db.pool.acquire() as conn:
            pid = await conn.fetchval("select pg_backend_pid()")
            assert await conn.fetchval("show application_name") == "tagtrail worker x"
            await conn.execute("begin")
            await conn.execute("select pg_advisory_xact_lock(42)")
        async with db.pool.acquire() as conn:
            assert await conn.fetchval("select pg_backend_pid()") == pid  # the same one
            assert not conn.is_in_transaction()
            assert (
                await conn.fetchval(
                    "select count(*) from pg_locks where locktype = 'advisory' and pid = $1", pid
                )
                == 0
            )
            # Its settings are those it opened with.
            assert await conn.fetchval("show jit") == "off"
        async with db.transaction() as session:
            assert await session.scalar(text("show application_name")) == "tagtrail worker x"
    finally:
        await db.close()


async def test_a_connection_the_server_closed_is_replaced_before_a_session_uses_it(
    settings: Settings, database: str
) -> None:
    """After the server has closed a pooled connection (a restart; here
    pg_terminate_backend), the next session gets a new one and its work goes through,
    without a round trip to test each connection before use (database.py,
    `_closed_on_checkout`); and nothing is sent to an open one before the work."""
    db = await Database.connect(
        settings.db.model_copy(update={"pool_size": 1}), database, name="tagtrail worker y"
    )
    try:
        async with db.transaction() as session:
            first = await session.scalar(text("select pg_backend_pid()"))
            pooled = (await (await session.connection()).get_raw_connection()).driver_connection
        async with db.pool.acquire() as conn:
            assert await conn.fetchval("select pg_terminate_backend($1)", first)
        # The server's goodbye reaches the pooled connection as the event loop runs.
        for _ in range(100):
            if pooled.is_closed():
                break
            await asyncio.sleep(0.05)
        assert pooled.is_closed()
        async with db.transaction() as session:
            second = await session.scalar(text("select pg_backend_pid()"))
        assert second != first
        # An open connection is lent as it is: nothing runs on it before the session's
        # own statements (pool_pre_ping ran BEGIN, ";" and ROLLBACK first).
        async with db.transaction() as session:
            raw = (await (await session.connection()).get_raw_connection()).driver_connection
        sent: list[str] = []
        raw.add_query_logger(lambda q: sent.append(q.query))
        async with db.transaction() as session:
            assert await session.scalar(text("select pg_backend_pid()")) == second
        # (asyncpg logs the statements it runs unprepared: here the transaction's.)
        assert sent == ["BEGIN;", "COMMIT;"]
    finally:
        await db.close()


async def test_the_api_answers_503_while_the_database_refuses_it(settings: Settings) -> None:
    """A request whose database connection is lost or refused is told to come back
    (503), not that it failed (500): here the database takes no connections (a
    connection limit of 0) and the process's own were ended, and authentication, which
    reads on asyncpg's pool, is the first to find out."""
    name = f"tagtrail_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(settings.db.asyncpg_dsn("postgres"))
    await admin.execute(f"create database {name}")
    pipeline = Pipeline(settings, bus="memory", database=name, name="tagtrail api")
    try:
        await pipeline.start()
        app = create_app(pipeline, manage=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tagtrail") as c:
            inside = await asyncpg.connect(settings.db.asyncpg_dsn(name))
            try:
                await inside.execute(f"alter database {name} connection limit 0")
                await inside.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = current_database() and pid <> pg_backend_pid()"
                )
                await asyncio.sleep(0.2)
                r = await c.post(
                    "/v1/fixes/stream", content=b"{}", headers={"Authorization": "Bearer tt_x"}
                )
            finally:
                await inside.execute(f"alter database {name} connection limit -1")
                await inside.close()
        assert r.status_code == 503, r.text
        assert r.json() == {"error": "database unavailable"}
    finally:
        await pipeline.stop()
        await admin.execute(f"drop database if exists {name} with (force)")
        await admin.close()


async def test_partitions_are_created_ahead_and_on_demand(db: Database) -> None:
    partitions = Partitions()
    today = date(2026, 11, 25)
    async with db.pool.acquire() as conn:
        await partitions.ensure_ahead(conn, today, 7)
        await partitions.ensure(conn, [date(2025, 12, 1)])  # an old buffered upload
        names = {
            r["relname"]
            for r in await conn.fetch(
                "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                "where i.inhparent = 'trail_points'::regclass"
            )
        }
    expected = {partition_name(today + timedelta(days=d)) for d in range(-1, 8)}
    assert expected | {partition_name(date(2025, 12, 1))} <= names


async def test_near_place_and_time_uses_the_indexes(db: Database) -> None:
    """ "Who was near X between T1 and T2" over 40,000 fixes must not scan them all: the
    trail boxes' spatial index finds who may have passed, then their trails by subject."""
    day = datetime(2026, 11, 20, tzinfo=UTC)
    subjects = [uuid.uuid4() for _ in range(400)]
    fixes = [
        FixMessage(
            tag_id=f"IDX-{i % 400}",
            subject_id=subjects[i % 400],
            ts=day + timedelta(seconds=60 * (i // 400)),
            received_at=day,
            lat=52.5 + (i % 400) * 0.002,
            lon=-0.3 + (i // 400) * 0.0002,
            accuracy_m=10.0,
        )
        for i in range(40_000)
    ]
    async with db.pool.acquire() as conn:
        result = await store_fixes(conn, Partitions(), FixBatch.of(fixes))
        assert result.inserted == 40_000
        await _box(conn)
        await conn.execute("analyze trail_points")
        await conn.execute("analyze trail_boxes")
        start = day + timedelta(hours=1)
        args = (
            52.55,
            -0.29,
            start - BOX_MAX_GAP,
            start + timedelta(hours=1),
            0.005,
            TrailBoxes.SPAN,
        )
        plan = "\n".join(r[0] for r in await conn.fetch("explain " + SUBJECTS_PASSING_SQL, *args))
        # Neither the trail nor its boxes are scanned (trail_unboxed is a few rows).
        assert "Seq Scan on trail_boxes" not in plan and "trail_points" not in plan, plan
        # Box and bucket both in the index: only the hour's boxes are read.
        assert "box_bucket_idx" in plan and "bucket >=" in plan.split("Index Cond")[1], plan
        found = await subjects_passing(conn, 52.55, -0.29, 350.0, start, start + timedelta(hours=1))
        assert 0 < len(found) < 10
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "explain select * from trail_points where subject_id = any($1::uuid[])"
                " and ts between $2 and $3",
                found,
                start,
                start + timedelta(hours=1),
            )
        )
        assert "Seq Scan" not in plan and "subject_id" in plan, plan


async def test_batch_reads_probe_an_index_however_much_trail_is_stored(
    db: Database,
) -> None:
    """Ingest asks, for every request, which of its fixes are stored already. Live fixes
    are newer than anything the statistics have seen, and as a plain join the planner
    scanned the day's whole trail for them (330 ms a request two hours into a day, more
    as it went on): it must probe the primary key, a key at a time. Likewise every
    read of many subjects' trails a batch makes."""
    day = datetime(2026, 11, 21, 11, tzinfo=UTC)
    subjects = [uuid.uuid4() for _ in range(200)]
    fixes = [
        FixMessage(
            tag_id=f"RS-{i % 200}",
            subject_id=subjects[i % 200],
            ts=day + timedelta(minutes=i // 200),
            received_at=day,
            lat=51.5 + (i % 200) * 0.001,
            lon=-0.1,
            accuracy_m=10.0,
        )
        for i in range(24_000)
    ]
    async with db.pool.acquire() as conn:
        assert (await store_fixes(conn, Partitions(), FixBatch.of(fixes))).inserted == 24_000
        await _box(conn)
        await conn.execute("analyze trail_points, trail_boxes")
        # The next minute's fixes, newer than anything stored: a live request.
        after = day + timedelta(hours=2)
        live = [(f"RS-{i}", after.timestamp()) for i in range(200)]
        args: tuple[Any, ...] = ([k for k, _ in live], [after.timestamp()] * 200, after, after)
        plan = "\n".join(r[0] for r in await conn.fetch("explain " + STORED_POSITIONS_SQL, *args))
        assert "Seq Scan" not in plan and "pkey" in plan, plan
        resent = ("RS-3", fixes[3].ts.timestamp())
        assert await stored_positions(conn, live) == {}
        # A tag's newest stored fix after a time, for a tag new to ingest: the key's
        # newest entry in the partitions from that time on only.
        args = ([k for k, _ in live], [day.timestamp()] * 200)
        plan = "\n".join(
            r[0] for r in await conn.fetch("explain analyze " + NEWEST_AFTER_SQL, *args)
        )
        assert "Seq Scan" not in plan and "pkey" in plan, plan
        newest = (day + timedelta(minutes=119)).timestamp()
        assert await newest_after(conn, *args) == {k: newest for k, _ in live}
        assert await newest_after(conn, [k for k, _ in live], [newest] * 200) == {}
        assert await stored_positions(conn, [*live, resent]) == {resent: (51.503, -0.1, 10.0)}
        # The store's look-up of conflicting duplicates likewise (as a plain join it
        # hashed every partition of the trail).
        async with conn.transaction():
            await conn.execute(STAGING_SQL)
            plan = "\n".join(
                r[0] for r in await conn.fetch("explain " + CONFLICTS_SQL, after, after)
            )
            assert "Seq Scan on trail_points" not in plan and "pkey" in plan, plan
        # Every read of many subjects' trails around a batch: a range of the (subject,
        # time) index a subject, whether the batch is live or an hour back. (As plain
        # joins, each was hashed over the day's partition, or every partition.)
        for lo in (after, day + timedelta(minutes=60)):
            hi = lo + timedelta(minutes=4)
            n = len(subjects)
            statements = {
                NEIGHBOURS_SQL: (subjects, [lo] * n, [hi] * n, lo, hi),
                REACH_SQL: (subjects, [lo.timestamp()] * n, [hi.timestamp()] * n, 300.0, lo, hi),
                TRAILS_SINCE_SQL: (subjects, [lo - timedelta(hours=2)] * n, lo),
                TRAILS_IN_SQL: (subjects, [lo] * n, [hi] * n, lo, hi),
                FIRST_FIXES_SQL: (subjects, [lo] * n, lo),
            }
            # (Empty partitions, of days ahead, are scanned: there is nothing in them.)
            stored = [partition_name(day.date(), t) for t in ("trail_points", "trail_boxes")]
            for sql, args in statements.items():
                plan = "\n".join(r[0] for r in await conn.fetch("explain " + sql, *args))
                assert "Hash Join" not in plan and "Cond: ((subject_id = " in plan, plan
                assert not any(f"Seq Scan on {name}" in plan for name in stored), plan
            # The crime trigger's boxes near open scenes: a search of the box index a
            # scene.
            places = ([-0.1] * 3, [51.5] * 3, [0.002] * 3, [lo] * 3, [hi] * 3, lo, hi)
            plan = "\n".join(r[0] for r in await conn.fetch("explain " + BOXES_NEAR_SQL, *places))
            assert "box_bucket_idx" in plan and "Seq Scan" not in plan, plan


def _wandering(rng: random.Random, subject: uuid.UUID, tag: str) -> list[FixMessage]:
    """400 fixes of one subject, at uneven intervals and of uneven accuracy, across a
    midnight (two days' partitions)."""
    t = datetime(2026, 11, 20, 23, 0, tzinfo=UTC)
    lat, lon, fixes = 51.5 + rng.uniform(-0.1, 0.1), -0.12, []
    for _ in range(400):
        t += timedelta(seconds=rng.choice([5, 30, 60, 60, 60, 300, 599, 600, 900]))
        lat += rng.uniform(-0.01, 0.01)
        lon += rng.uniform(-0.01, 0.01)
        fixes.append(
            FixMessage(
                tag_id=tag,
                subject_id=subject,
                ts=t,
                received_at=t,
                lat=lat,
                lon=lon,
                accuracy_m=rng.choice([3.0, 12.0, 12.0, 40.0, 250.0, 800.0, 1500.0]),
            )
        )
    return fixes


async def _arrive(
    rng: random.Random, conn: asyncpg.Connection, fixes: list[FixMessage], shuffled: bool
) -> None:
    """Stores the fixes in batches of random size, some of them twice."""
    arrivals = fixes[:]
    if shuffled:
        rng.shuffle(arrivals)
    arrivals += fixes[:50]  # resent: changes nothing
    partitions = Partitions()
    while arrivals:
        size = rng.randint(1, 40)
        await store_fixes(conn, partitions, FixBatch.of(arrivals[:size]))
        arrivals = arrivals[size:]
        # The box keeper takes the stored batches waiting now and then, a few at a time.
        if rng.random() < 0.3:
            await _box(conn, rng.randint(1, 6))
    await _box(conn)


async def _box(conn: asyncpg.Connection, limit: int | None = None) -> None:
    """Widens the boxes of the stored batches waiting, as the box keeper does: up to
    `limit` of them, or all."""
    while True:
        async with conn.transaction():
            unboxed = await claim_unboxed(conn, limit or 1000)
            await widen_boxes(conn, unboxed)
            await finish_unboxed(conn, unboxed)
        if limit or not unboxed.ids:
            return


async def test_fixes_go_straight_into_the_trail_and_a_stored_one_sends_the_batch_round(
    db: Database,
) -> None:
    """The store COPYs a batch straight into trail_points, the point as EWKB. A batch
    with a fix already stored (a re-send that raced its twin) cannot: it goes through
    the staging table instead, each fix on its own, the conflicting one set aside.
    Either way every stored point is the fix's own position, in WGS84."""
    day = datetime(2026, 11, 21, 9, tzinfo=UTC)
    subject = uuid.uuid4()

    def at(minute: int, lat: float = 51.5) -> FixMessage:
        return FixMessage(
            tag_id="ST-1",
            subject_id=subject,
            ts=day + timedelta(minutes=minute),
            received_at=day,
            lat=lat + minute * 1e-4,
            lon=-0.12 - minute * 1e-4,
            accuracy_m=10.0,
        )

    partitions = Partitions()
    async with db.pool.acquire() as conn:
        straight = await store_fixes(conn, partitions, FixBatch.of([at(m) for m in range(10)]))
        # Minute 9 again as it was, minute 8 moved: neither is stored a second time.
        round_ = await store_fixes(
            conn, partitions, FixBatch.of([at(9), at(8, lat=51.6), *(at(m) for m in range(10, 15))])
        )
        rows = await conn.fetch(
            "select lat, lon, st_x(geom) x, st_y(geom) y, st_srid(geom) srid"
            " from trail_points where subject_id = $1",
            subject,
        )
        set_aside = await conn.fetchval("select count(*) from fix_conflicts")
    assert (straight.inserted, straight.conflicts) == (10, 0)
    assert (round_.inserted, round_.conflicts) == (5, 1)
    assert set_aside == 1
    assert len(rows) == 15
    assert all((r["x"], r["y"], r["srid"]) == (r["lon"], r["lat"], 4326) for r in rows)


async def _copy_encoded(conn: asyncpg.Connection, table: str, fixes: list[FixMessage]) -> None:
    """The fixes into `table` as the store writes them: one binary COPY, built from
    columns (services/ingest/pgcopy.py)."""
    await conn.copy_to_table(
        table,
        source=chunks(encode(FixBatch.of(fixes).rows())),
        columns=TRAIL_COLUMNS,
        format="binary",
    )


async def test_rows_encoded_from_columns_are_those_asyncpg_writes_value_by_value(
    db: Database,
) -> None:
    """The store's COPY stream, built from columns with numpy, holds exactly the rows
    asyncpg writes from the same fixes a value at a time: tags of every length and in
    any script, every source, each optional value there or not, times to the
    microsecond from 1970 to 2100, the point at the fix's position."""
    rng = random.Random(8)
    tags = ["T", "TAG-0001", "étiquette-ü", "标签-7", "x" * 64]
    fixes = []
    for _ in range(600):
        ts = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            microseconds=rng.randrange(130 * 365 * 86400 * 10**6)
        )
        fixes.append(
            FixMessage(
                tag_id=rng.choice(tags),
                subject_id=uuid.UUID(int=rng.getrandbits(128)),
                ts=ts,
                received_at=ts + timedelta(microseconds=rng.randrange(10**10)),
                lat=rng.uniform(-90, 90),
                lon=rng.uniform(-180, 180),
                accuracy_m=rng.choice([0.001, 7.5, rng.uniform(0, 5000)]),
                speed_mps=rng.choice([None, 0.0, rng.uniform(0, 150)]),
                heading_deg=rng.choice([None, rng.uniform(0, 359.99)]),
                source=rng.choice(list(FixSource)),
                sats=rng.choice([None, 0, 64, rng.randrange(65)]),
                hdop=rng.choice([None, rng.uniform(0, 100)]),
            )
        )
    async with db.pool.acquire() as conn:
        for table in ("by_value", "by_column"):
            await conn.execute(f"create temp table {table} (like trail_points)")
        await conn.copy_records_to_table(
            "by_value",
            records=[
                # The point as shapely writes it: EWKB, little-endian, with its SRID.
                (*_staged(f), shapely.to_wkb(point, include_srid=True, byte_order=1))
                for f in fixes
                for point in [shapely.set_srid(shapely.points(f.lon, f.lat), 4326)]
            ],
            columns=TRAIL_COLUMNS,
        )
        await _copy_encoded(conn, "by_column", fixes)
        counts = await conn.fetchrow(
            "select (select count(*) from by_value), (select count(*) from by_column),"
            " (select count(*) from (table by_value except table by_column) d),"
            " (select count(*) from (table by_column except table by_value) d),"
            " (select count(distinct (hdop is null, sats is null, source)) from by_column)"
        )
    assert tuple(counts) == (600, 600, 0, 0, counts[4]) and counts[4] > 10
    assert encode(FixBatch.of([]).rows()) == HEADER + TRAILER


def test_rows_are_ordered_by_one_key_as_by_two() -> None:
    """key_order sorts a batch by tag and time in one key when its times span under
    2^40 µs, and by two (lexsort) otherwise: either way the primary key's order, rows of
    the same tag and time in the order given."""
    rng = np.random.default_rng(40)
    for span in (1, 3_600 * 10**6, 1 << 40, (1 << 40) + 1, 1 << 45, 10**17):
        tags = np.array([b"T-%d" % k for k in rng.permutation(300)], dtype=np.bytes_)
        tag = rng.integers(0, len(tags), 5_000)
        ts = 8 * 10**17 + rng.integers(0, span, 5_000)
        ts[:50] = ts[50:100]  # some (tag, time) given twice
        tag[:50] = tag[50:100]
        by_two = np.lexsort((ts, np.argsort(np.argsort(tags, kind="stable"))[tag]))
        assert np.array_equal(key_order(tags, tag, ts), by_two), span
    assert (
        len(key_order(np.array([], dtype=np.bytes_), np.zeros(0, np.int64), np.zeros(0, np.int64)))
        == 0
    )


async def test_copy_writes_a_layouts_rows_in_the_primary_keys_order(db: Database) -> None:
    """Rows of one layout go into the COPY stream by tag id (byte order), then fix
    time, whatever order the batch holds them in: each index then takes a tag's rows
    one after another (docs/benchmarks.md, fifteenth session)."""
    rng = random.Random(15)
    tags = ["TAG-b", "TAG-A", "TAG-é", "TAG-a", "TAG-Z"]  # equal lengths in UTF-8 but one
    start = datetime(2026, 11, 28, 9, tzinfo=UTC)
    fixes = [
        FixMessage(
            tag_id=tag,
            subject_id=uuid.UUID(int=rng.getrandbits(128)),
            ts=start + timedelta(seconds=rng.randrange(86400)),
            received_at=start + timedelta(days=1),
            lat=51.5,
            lon=-0.1,
            accuracy_m=5.0,
        )
        for tag in rng.choices(tags, k=300)
    ]
    async with db.pool.acquire() as conn:
        await conn.execute("create temp table copied (like trail_points)")
        await _copy_encoded(conn, "copied", fixes)
        # A temporary table keeps a single COPY's rows in the stream's order.
        as_sent = await conn.fetch(
            "select octet_length(tag_id) as n, tag_id, ts from copied order by ctid"
        )
    assert len(as_sent) == 300
    for n in {r["n"] for r in as_sent}:
        layout = [(r["tag_id"], r["ts"]) for r in as_sent if r["n"] == n]
        assert layout == sorted(layout, key=lambda k: (k[0].encode(), k[1]))
    assert {r["n"] for r in as_sent} == {5, 6}


async def test_times_sent_as_epoch_seconds_come_back_to_the_microsecond(db: Database) -> None:
    """The re-send look-up sends fix times as float8 seconds since 1970 and turns them
    back with to_timestamp: for times to the microsecond from 1970 to 2105, and at the
    ends of seconds, every one is the very time it was."""
    rng = random.Random(6)
    start = datetime(1970, 1, 1, tzinfo=UTC)
    times = [
        start + timedelta(microseconds=rng.randrange(135 * 365 * 86400 * 10**6))
        for _ in range(20_000)
    ]
    times += [t.replace(microsecond=m) for t in times[:200] for m in (0, 1, 499999, 999999)]
    async with db.pool.acquire() as conn:
        wrong = await conn.fetchval(
            "select count(*) from unnest($1::float8[], $2::timestamptz[]) as u(s, t)"
            " where to_timestamp(s) is distinct from t",
            [t.timestamp() for t in times],
            times,
        )
    assert wrong == 0


async def test_statements_side_by_side_give_their_results_or_the_first_failure_as_itself(
    db: Database,
) -> None:
    """The zone checker runs its independent reads side by side, each on a connection of
    its own. Their results come back; a failure comes as the error itself, not in an
    ExceptionGroup (the bus decides by its type whether a retry cures it), and the
    statements still running are cancelled and their connections given back."""

    async def backend(conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("select pg_backend_pid()"))

    async def sleep(conn: asyncpg.Connection, seconds: float) -> int:
        await conn.execute("select pg_sleep($1)", seconds)
        return await backend(conn)

    async def divide(conn: asyncpg.Connection, by: int) -> int:
        return int(await conn.fetchval("select 1 / $1::int", by))

    async with side_by_side() as tasks:
        # The first holds its connection until the second has begun: two backends.
        first = tasks.create_task(db.on_own(sleep, 0.2))
        pid = tasks.create_task(db.on_own(backend))
        quotient = tasks.create_task(db.on_own(divide, 1))
    assert quotient.result() == 1
    assert first.result() != pid.result()

    with pytest.raises(asyncpg.DivisionByZeroError):
        async with side_by_side() as tasks:
            sleeping = tasks.create_task(db.on_own(sleep, 60))
            tasks.create_task(db.on_own(divide, 0))
    assert sleeping.cancelled()
    async with db.pool.acquire() as conn:
        for _ in range(50):
            left = await conn.fetchval(
                "select count(*) from pg_stat_activity"
                " where query = 'select pg_sleep($1)' and state = 'active'"
            )
            if left == 0:
                break
            await asyncio.sleep(0.1)
    assert left == 0
    # Both connections went back to the pool in working order.
    pids = await asyncio.gather(*(db.on_own(backend) for _ in range(2)))
    assert all(isinstance(p, int) for p in pids)


async def test_the_zone_checkers_reads_by_epoch_seconds_keep_every_microsecond(
    db: Database,
) -> None:
    """The zone checker sends each subject's first and last new fix as float8 seconds
    since 1970. The reach around them takes in a fix exactly the pad away and none a
    microsecond further; a subject's last fix is stored to the microsecond and never
    moved back."""
    t0 = datetime(2026, 11, 21, 11, 0, 0, 123457, tzinfo=UTC)
    subject, other = uuid.uuid4(), uuid.uuid4()
    pad = timedelta(seconds=300)
    offsets = [
        -pad - timedelta(microseconds=1),
        -pad,
        timedelta(0),
        pad,
        pad + timedelta(microseconds=1),
    ]
    fixes = [
        FixMessage(
            tag_id="RA-1",
            subject_id=subject,
            ts=t0 + d,
            received_at=t0,
            lat=51.5 + k * 0.001,
            lon=-0.1 - k * 0.001,
            accuracy_m=5.0 + k,
        )
        for k, d in enumerate(offsets)
    ]
    async with db.pool.acquire() as conn:
        await store_fixes(conn, Partitions(), FixBatch.of(fixes))
        first = last = np.array([t0.timestamp()])
        reach = await reach_around(conn, [subject], first, last, pad.total_seconds())
        assert reach.subjects == [subject]
        # The three fixes within the pad: k = 1, 2, 3.
        inside = fixes[1:4]
        assert reach.sides.tolist() == [
            [
                min(f.lon for f in inside),
                min(f.lat for f in inside),
                max(f.lon for f in inside),
                max(f.lat for f in inside),
            ]
        ]
        assert reach.accuracy_m.tolist() == [8.0]
        assert (await reach_around(conn, [other], first, last, 300.0)).subjects == []
        later = t0 + timedelta(minutes=5, microseconds=1)
        await touch_activity(conn, [subject, other], [later.timestamp(), t0.timestamp()])
        await touch_activity(conn, [subject], [t0.timestamp()])  # older: not moved back
        stored = dict(await conn.fetch("select subject_id, last_fix from subject_activity"))
    assert stored == {subject: later, other: t0}


def test_the_days_of_a_batch_are_those_of_its_times_in_utc() -> None:
    """A batch's days (for its partitions) from its times as COPY rows hold them: the
    last microsecond of a day and the first of the next, before 2000 too, and a buffered
    upload over several days."""
    times = [
        datetime(2026, 11, 26, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 11, 27, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 11, 20, 12, tzinfo=timezone(timedelta(hours=-5))),
    ]
    fixes = [
        FixMessage(
            tag_id="T",
            subject_id=uuid.UUID(int=1),
            ts=t,
            received_at=t,
            lat=51.5,
            lon=-0.1,
            accuracy_m=5.0,
        )
        for t in times
    ]
    assert days_of(FixBatch.of(fixes).rows().ts) == {
        date(2026, 11, 26),
        date(2026, 11, 27),
        date(1999, 12, 31),
        date(2026, 11, 20),
    }


def test_no_stored_fix_or_one_makes_only_its_own_box_point() -> None:
    """The box keeper's round over subjects with no fix stored within reach (every one
    vaguer than boxes take, or dropped since) finds no points, and a lone fix only its
    own."""
    for n in (0, 1):
        at = np.zeros(n)
        points = box_points(np.zeros(n, dtype=np.int64), at, at, at, at + 5.0, at == 0)
        assert len(points.owner) == n


async def test_trail_boxes_hold_every_path_whatever_order_fixes_arrive_in(db: Database) -> None:
    """The invariant proximity search stands on: for two fixes no more than BOX_MAX_GAP
    apart that are consecutive among those accurate enough for matching, whatever that
    threshold, the box of the first one's bucket holds both accuracy circles (and so the
    path between them), however the fixes were batched and ordered on arrival (late
    uploads, resends)."""
    rng = random.Random(7)
    subject = uuid.uuid4()
    fixes = _wandering(rng, subject, "BOX-1")
    async with db.pool.acquire() as conn:
        await _arrive(rng, conn, fixes, shuffled=True)
        boxes = {
            r["bucket"]: r
            for r in await conn.fetch(
                "select bucket, st_xmin(box) x0, st_ymin(box) y0, st_xmax(box) x1,"
                " st_ymax(box) y1 from trail_boxes where subject_id = $1",
                subject,
            )
        }
    bucket_s = BOX_BUCKET.total_seconds()
    checked = 0
    for threshold in (10.0, 50.0, 250.0, 1000.0):
        usable = [f for f in fixes if f.accuracy_m <= threshold]
        for a, b in itertools.pairwise(usable):
            if b.ts - a.ts > BOX_MAX_GAP:
                continue
            bucket = datetime.fromtimestamp(a.ts.timestamp() // bucket_s * bucket_s, UTC)
            box = boxes[bucket]
            for f in (a, b):
                # The whole accuracy circle: its north, east, south and west edges.
                lons, lats, _ = WGS84.fwd(
                    [f.lon] * 4, [f.lat] * 4, [0, 90, 180, 270], [f.accuracy_m] * 4
                )
                for x, y in zip(lons, lats, strict=True):
                    assert box["x0"] <= x <= box["x1"] and box["y0"] <= y <= box["y1"], (
                        threshold,
                        a,
                        b,
                    )
            checked += 1
    assert checked > 600


async def test_the_crime_trigger_finds_near_its_scenes_the_boxes_it_would_find_among_all(
    db: Database,
) -> None:
    """boxes_near looks for trail boxes from the open scenes, through the box index,
    instead of reading every box a batch can have changed: for random batches (each
    subject's first and last new fix) and scenes near and far, in time and space, the
    scenes met must be those met by every box of the batch's subjects in its window."""
    rng = random.Random(5)
    subjects = [uuid.uuid4() for _ in range(6)]
    trails = {s: _wandering(rng, s, f"NEAR-{i}") for i, s in enumerate(subjects)}
    async with db.pool.acquire() as conn:
        await _arrive(
            rng, conn, sorted(itertools.chain(*trails.values()), key=lambda f: f.ts), False
        )
        rows = await conn.fetch(
            "select subject_id, date_part('epoch', bucket), st_xmin(box), st_ymin(box),"
            " st_xmax(box), st_ymax(box) from trail_boxes where subject_id = any($1)",
            subjects,
        )
        met = 0
        for _ in range(60):
            spans, new = {}, {}
            for s in rng.sample(subjects, rng.randint(1, len(subjects))):
                a = rng.randrange(len(trails[s]))
                new[s] = trails[s][a : a + rng.randint(1, 8)]
                spans[s] = [new[s][0].ts, new[s][-1].ts]
            scenes = []
            for _ in range(rng.randint(1, 12)):
                # Mostly about where and when a subject of the batch was; some anywhere.
                s = rng.choice(list(spans)) if rng.random() < 0.8 else rng.choice(subjects)
                f = rng.choice(new.get(s, trails[s]))
                start = f.ts + timedelta(seconds=rng.uniform(-2400, 600))
                far = rng.choice([0.003, 0.01, 0.05])
                scenes.append(
                    OpenScene(
                        uuid.uuid4(),
                        f.lat + rng.uniform(-far, far),
                        f.lon + rng.uniform(-far, far) * 1.6,
                        start,
                        start + timedelta(seconds=rng.uniform(0, 1800)),
                    )
                )
            radius, slack = rng.choice([100.0, 500.0]), rng.choice([0.0, 900.0])
            everyone = list(spans)
            kept = [
                (everyone.index(r[0]), r[1], r[2:])
                for r in rows
                if r[0] in spans
                and spans[r[0]][0].timestamp() - TrailBoxes.BEFORE.total_seconds()
                <= r[1]
                <= spans[r[0]][1].timestamp()
            ]
            all_boxes = TrailBoxes(
                everyone,
                np.array([k[0] for k in kept], dtype=np.int64),
                np.array([k[1] for k in kept], dtype=np.float64),
                np.array([list(k[2]) for k in kept], dtype=np.float64).reshape(-1, 4),
            )
            expected = _scenes_met(scenes, all_boxes, radius, slack)
            near = await boxes_near(conn, spans, scene_places(scenes, radius, slack))
            assert _scenes_met(scenes, near, radius, slack) == expected
            assert len(near.owner) <= len(all_boxes.owner)
            met += len(expected)
    assert met > 40


async def test_the_bulk_box_statement_makes_the_boxes_the_store_makes(db: Database) -> None:
    """BOXES_SQL (bulk loads, bench/proximity.py) and the store's widen_boxes apply one
    rule two ways: over a whole trail at once the one must make the boxes the other made
    batch by batch as the fixes came in order. (Out of order, the store's can be larger:
    two fixes are consecutive until the one between them arrives, and boxes only grow.)"""
    rng = random.Random(11)
    subjects = [uuid.uuid4() for _ in range(3)]
    fixes = [f for i, s in enumerate(subjects) for f in _wandering(rng, s, f"BULK-{i}")]
    box_sql = (
        "select subject_id, bucket, st_xmin(box), st_ymin(box), st_xmax(box), st_ymax(box)"
        " from trail_boxes where subject_id = any($1) order by 1, 2"
    )
    async with db.pool.acquire() as conn:
        await _arrive(rng, conn, sorted(fixes, key=lambda f: f.ts), shuffled=False)
        stored = await conn.fetch(box_sql, subjects)
        await conn.execute("truncate trail_boxes")
        await conn.execute(BOXES_SQL.format(source="trail_points"))
        bulk = await conn.fetch(box_sql, subjects)
    assert len(stored) > 100
    assert [tuple(r[:2]) for r in bulk] == [tuple(r[:2]) for r in stored]
    for a, b in zip(bulk, stored, strict=True):
        assert list(a[2:]) == pytest.approx(list(b[2:]), abs=1e-9), (a, b)


async def test_upgrading_a_stored_trail_gives_it_boxes(settings: Settings) -> None:
    """A database with trail stored before trail_boxes existed: the migration makes the
    boxes, and proximity search finds the subject, including by a path between fixes."""
    name = f"tagtrail_upgrade_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(settings.db.asyncpg_dsn("postgres"))
    await admin.execute(f"create database {name}")
    try:
        config = alembic_config(settings.db.sqlalchemy_url(name))
        await asyncio.to_thread(command.upgrade, config, "0002")
        subject = uuid.uuid4()
        day = datetime(2026, 11, 20, tzinfo=UTC)
        conn = await asyncpg.connect(settings.db.asyncpg_dsn(name))
        try:
            await conn.execute(
                f"create table {partition_name(day.date())} partition of trail_points"
                f" for values from ('{day.isoformat()}') to ('{day + timedelta(days=1)}')"
            )
            # Two fixes 8 minutes apart either side of a place, 1.2 km apart.
            for ts, lon in (
                (day + timedelta(hours=12), -0.13),
                (day + timedelta(hours=12, minutes=8), -0.11),
            ):
                await conn.execute(
                    "insert into trail_points (tag_id, ts, received_at, subject_id, lat, lon,"
                    " accuracy_m, source, geom) values ('UP-1', $1, $1, $2, 51.5, $3, 10, 'gps',"
                    " st_setsrid(st_makepoint($3, 51.5), 4326))",
                    ts,
                    subject,
                    lon,
                )
            await asyncio.to_thread(command.upgrade, config, "head")
            found = await subjects_passing(
                conn,
                51.5,
                -0.12,
                50.0,
                day + timedelta(hours=12, minutes=3),
                day + timedelta(hours=12, minutes=5),
            )
            assert found == [subject]
            assert (
                await subjects_passing(
                    conn, 51.6, -0.12, 50.0, day + timedelta(hours=12), day + timedelta(hours=13)
                )
                == []
            )
        finally:
            await conn.close()
    finally:
        await admin.close()
        await drop_database(settings, name)


def test_waiting_batches_merge_into_runs_a_subject_of_their_spans() -> None:
    """The box keeper merges the spans of the stored batches it takes: every span lies
    in exactly one run of its subject, a subject's runs are more than twice BOX_MAX_GAP
    apart (their neighbourhoods do not overlap), and a run starts at a span's first fix
    and ends at a span's last, exactly (which fixes count as new goes by them)."""
    rng = random.Random(3)
    gap2 = 2 * BOX_MAX_GAP.total_seconds()
    merged = parted = 0
    for _ in range(300):
        subjects = [uuid.uuid4() for _ in range(rng.randint(1, 4))]
        spans = []
        for _ in range(rng.randint(1, 30)):
            a = 1.79e9 + rng.uniform(0, 3 * 86_400)
            spans.append(
                (rng.choice(subjects), a, a + rng.choice([0, 60, 1200, 7200]) * rng.random())
            )
        unboxed = Unboxed.merged(
            [7],
            [s for s, _, _ in spans],
            np.array([a for _, a, _ in spans]),
            np.array([b for _, _, b in spans]),
        )
        runs = [
            (unboxed.subjects[c], a, b)
            for c, a, b in zip(
                unboxed.code.tolist(), unboxed.first.tolist(), unboxed.last.tolist(), strict=True
            )
        ]
        for s, a, b in spans:
            assert len([r for r in runs if r[0] == s and r[1] <= a and b <= r[2]]) == 1
        for subject in set(s for s, _, _ in spans):
            mine = sorted((a, b) for s, a, b in runs if s == subject)
            for (_, end), (start, _) in itertools.pairwise(mine):
                assert start - end > gap2
                parted += 1
            for a, b in mine:
                assert a in {x for s, x, _ in spans if s == subject}
                assert b in {y for s, _, y in spans if s == subject}
            theirs = [(a, b) for s, a, b in spans if s == subject]
            assert unboxed.spans()[subject] == [
                datetime.fromtimestamp(min(a for a, _ in theirs), UTC),
                datetime.fromtimestamp(max(b for _, b in theirs), UTC),
            ]
        merged += len(spans) - len(runs)
    assert merged > 200 and parted > 200


async def test_stored_fixes_are_candidates_until_their_boxes_are_widened(db: Database) -> None:
    """The store leaves the boxes to the box keeper: until it has widened them, a stored
    fix's subject is a candidate for every place near its time, and after, for the places
    its boxes meet; either way never missed."""
    day = datetime(2026, 11, 20, 12, tzinfo=UTC)
    subject = uuid.uuid4()
    fixes = [
        FixMessage(
            tag_id="UNBOXED-1",
            subject_id=subject,
            ts=day + timedelta(minutes=m),
            received_at=day,
            lat=51.5,
            lon=-0.12 + m * 0.001,
            accuracy_m=10.0,
        )
        for m in range(20)
    ]
    hour = (day, day + timedelta(hours=1))
    later = (day + timedelta(hours=3), day + timedelta(hours=4))
    async with db.pool.acquire() as conn:
        await store_fixes(conn, Partitions(), FixBatch.of(fixes))
        boxes = "select count(*) from trail_boxes where subject_id = $1"
        assert await conn.fetchval(boxes, subject) == 0
        assert await subjects_passing(conn, 51.5, -0.11, 50.0, *hour) == [subject]
        assert await subjects_passing(conn, 53.0, 1.0, 50.0, *hour) == [subject]
        assert await subjects_passing(conn, 51.5, -0.11, 50.0, *later) == []
        await _box(conn)
        assert await conn.fetchval("select count(*) from trail_unboxed") == 0
        assert await conn.fetchval(boxes, subject) == timedelta(minutes=20) // BOX_BUCKET
        assert await subjects_passing(conn, 51.5, -0.11, 50.0, *hour) == [subject]
        assert await subjects_passing(conn, 53.0, 1.0, 50.0, *hour) == []
        assert await subjects_passing(conn, 51.5, -0.11, 50.0, *later) == []


async def test_boxes_stored_with_a_shorter_bucket_are_still_found(db: Database) -> None:
    """A box from before the buckets grew (5 minutes, now 10) holds its bucket's fixes and
    their paths up to BOX_MAX_GAP on: a search whose window meets any of that time finds
    its subject, whichever minute it starts in."""
    assert BOX_BUCKET > timedelta(minutes=5)
    subject = uuid.uuid4()
    day = datetime(2026, 11, 20, tzinfo=UTC)
    bucket = day + timedelta(hours=10, minutes=5)  # a 5-minute bucket, not a 10-minute one
    async with db.pool.acquire() as conn:
        await Partitions().ensure(conn, [day.date()])
        await conn.execute(
            "insert into trail_boxes (subject_id, bucket, box)"
            " values ($1, $2, st_makeenvelope(-0.121, 51.499, -0.119, 51.501, 4326))",
            subject,
            bucket,
        )
        # Its last fix at most 5 minutes in, its last path at most BOX_MAX_GAP after.
        reach = timedelta(minutes=5) + BOX_MAX_GAP
        for minute in range(int(reach / timedelta(minutes=1))):
            start = bucket + timedelta(minutes=minute)
            found = await subjects_passing(
                conn, 51.5, -0.12, 50.0, start, start + timedelta(seconds=30)
            )
            assert found == [subject], start
        before = bucket - timedelta(minutes=1)
        assert (
            await subjects_passing(conn, 51.5, -0.12, 50.0, before - timedelta(minutes=5), before)
            == []
        )


KEEPER_DAY = datetime(2026, 11, 20, 12, tzinfo=UTC)


async def _stored_batches(db: Database, prefix: str, n: int) -> list[uuid.UUID]:
    """n subjects, each with five fixes from KEEPER_DAY stored as a batch of its own (a
    trail_unboxed row each)."""
    subjects = [uuid.uuid4() for _ in range(n)]
    async with db.pool.acquire() as conn:
        for i, s in enumerate(subjects):
            fixes = [
                FixMessage(
                    tag_id=f"{prefix}-{i}",
                    subject_id=s,
                    ts=KEEPER_DAY + timedelta(minutes=m),
                    received_at=KEEPER_DAY,
                    lat=51.5 + i * 0.01,
                    lon=-0.12,
                    accuracy_m=10.0,
                )
                for m in range(5)
            ]
            await store_fixes(conn, Partitions(), FixBatch.of(fixes))
    return subjects


async def test_the_box_keeper_keeps_a_batch_until_its_crime_trigger_has_run(
    db: Database, settings: Settings
) -> None:
    """A stored batch's row goes only once its boxes are widened and the crime trigger
    has run for it: a trigger that fails (a crash, a lost database) leaves every row for
    the next round. Two keepers at once take different rows."""
    subjects = await _stored_batches(db, "KEEP", 6)
    check = settings.check.model_copy(update={"box_claim": 3})
    keeper = CrimeMatcher(db, MemoryBus(DEAD_LETTER), check)
    seen: list[list[uuid.UUID]] = []
    both = asyncio.Barrier(2)

    async def failing(unboxed: Unboxed) -> None:
        raise ConnectionError("the database went away")

    async def together(unboxed: Unboxed) -> None:
        seen.append(list(unboxed.spans()))
        await asyncio.wait_for(both.wait(), 10)

    async def waiting() -> int:
        return int(await db.pool.fetchval("select count(*) from trail_unboxed"))

    keeper.trigger = failing  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await keeper.keep_boxes()
    assert await waiting() == 6
    assert FIXES_UNBOXED._value.get() == 30  # what operators see: 30 fixes waiting
    keeper.trigger = together  # type: ignore[method-assign]
    # Both keepers in their trigger at once, each holding its own three rows.
    assert await asyncio.gather(keeper.keep_boxes(), keeper.keep_boxes()) == [True, True]
    assert await waiting() == 0
    assert len(seen) == 2 and sorted(seen[0] + seen[1]) == sorted(subjects)
    assert await keeper.keep_boxes() is False
    assert FIXES_UNBOXED._value.get() == 0
    boxes = "select count(distinct subject_id) from trail_boxes where subject_id = any($1)"
    assert await db.pool.fetchval(boxes, subjects) == 6


async def test_a_round_of_the_box_keeper_takes_stored_batches_up_to_a_number_of_fixes(
    db: Database,
) -> None:
    """A claim takes the oldest stored batches as far as they hold fewer fixes than its
    cap before each, the first whatever its size; the rest wait, unlocked at the end of
    the round, for the next. Whether more may be waiting is `full`: as many batches as
    it might, or fixes enough to stop at."""
    subjects = await _stored_batches(db, "CAP", 5)  # five fixes each
    rounds = []
    async with db.pool.acquire() as conn:
        for limit, max_fixes in [(10, 10), (10, 1), (1, 100), (10, 100), (10, 100)]:
            async with conn.transaction():
                unboxed = await claim_unboxed(conn, limit, max_fixes=max_fixes)
                await finish_unboxed(conn, unboxed)
            rounds.append((sorted(unboxed.spans()), unboxed.full))
    assert rounds == [
        (sorted(subjects[:2]), True),  # 0 and 5 fixes before them, 10 before the third
        ([subjects[2]], True),  # the first whatever its size
        ([subjects[3]], True),  # as many as the limit
        ([subjects[4]], False),  # all there were
        ([], False),
    ]
    # Two at once: one round holds its own batches claimed, kept or not.
    await _stored_batches(db, "CAP2", 3)
    async with db.pool.acquire() as one, db.pool.acquire() as other:
        async with one.transaction(), other.transaction():
            first = await claim_unboxed(one, 2, max_fixes=1)
            second = await claim_unboxed(other, 10, max_fixes=100)
    assert (len(first.ids), first.full) == (1, True) and (len(second.ids), second.full) == (
        1,
        False,
    )


async def test_the_box_keeper_goes_again_at_once_after_a_round_cut_short_by_fixes(
    db: Database, settings: Settings
) -> None:
    """A round stops at TAGTRAIL_CHECK_BOX_CLAIM_FIXES, says more may be waiting, and
    the next takes the rest."""
    subjects = await _stored_batches(db, "CUT", 3)  # five fixes each
    check = settings.check.model_copy(update={"box_claim": 10, "box_claim_fixes": 6})
    keeper = CrimeMatcher(db, MemoryBus(DEAD_LETTER), check)
    triggered: list[list[uuid.UUID]] = []

    async def trigger(unboxed: Unboxed) -> None:
        triggered.append(sorted(unboxed.spans()))

    keeper.trigger = trigger  # type: ignore[method-assign]
    assert [await keeper.keep_boxes() for _ in range(3)] == [True, False, False]
    assert triggered == [sorted(subjects[:2]), [subjects[2]]]


async def test_a_stored_batch_the_keeper_cannot_do_is_set_aside_and_holds_up_no_other(
    db: Database, settings: Settings
) -> None:
    """A round that fails for good (not a lost connection) is tried again a stored batch
    at a time: the batch that fails alone is set aside with its error, the others are
    done, and the set-aside batch's subject stays a proximity-search candidate. Cleared
    by hand, it is done like any other."""
    subjects = await _stored_batches(db, "ASIDE", 3)
    keeper = CrimeMatcher(db, MemoryBus(DEAD_LETTER), settings.check)
    bad = subjects[1]
    triggered: list[uuid.UUID] = []

    async def trigger(unboxed: Unboxed) -> None:
        if bad in unboxed.spans():
            raise ValueError("a crime this code cannot match")
        triggered.extend(unboxed.spans())

    keeper.trigger = trigger  # type: ignore[method-assign]
    # The round of three fails, then one round a batch, then nothing is left to claim.
    rounds = [await keeper.keep_boxes() for _ in range(6)]
    assert rounds == [True, True, True, True, False, False]
    rows = await db.pool.fetch("select subjects, failed_at, error from trail_unboxed")
    assert [(r["subjects"], r["error"]) for r in rows] == [
        ([bad], "ValueError: a crime this code cannot match")
    ]
    assert rows[0]["failed_at"] is not None
    assert sorted(triggered) == sorted(s for s in subjects if s != bad)
    async with db.pool.acquire() as conn:
        hour = (KEEPER_DAY, KEEPER_DAY + timedelta(hours=1))
        assert bad in await subjects_passing(conn, 53.0, 1.0, 50.0, *hour)
        await conn.execute("update trail_unboxed set failed_at = null, error = null")
    keeper.trigger = lambda unboxed: asyncio.sleep(0)  # type: ignore[method-assign]
    assert await keeper.keep_boxes() is False  # a round of one, not full
    assert await db.pool.fetchval("select count(*) from trail_unboxed") == 0
