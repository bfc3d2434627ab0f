"""End-to-end throughput: fixes in over HTTP, on the bus, stored, zone- and crime-checked,
against raw COPY into the same trail table as the ceiling, measured in the same run.

    python -m bench.throughput                # in-process bus: 2,000 tags, 10,000 zones,
                                              # 1,000 crimes
    python -m bench.throughput --bus kafka    # the same on Kafka, one process per role
    python -m bench.throughput --smoke        # a few of each: proves it still works
    python -m bench.throughput --bus kafka --without-checks
                                              # each stretch also with ingest and
                                              # storage alone, for their own ratio

On the in-process bus it starts `tagtrail run` (the whole pipeline in one process, where
a 202 means stored and checked); on Kafka, `tagtrail api` and one `tagtrail worker` per
role on topics of their own, and the run ends when every consumer group has caught up.
Each against a database of its own: the fleet, its zones and crimes are enrolled, then
the fleet simulator posts a stretch of fleet time as fast as the server takes it.
Prints fixes a second end to end, the CPU time each process used meanwhile, the raw
COPY rate of as many fixes into trail_points just before and just after each stretch,
the stretch's ratio to their mean, and the peak memory of each process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import mean

import asyncpg
import httpx
import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.common import bench_database, drop_database, drop_topics, header, stat_cpu_s, wear
from bench.fleet import Fleet, FleetSpec
from bench.pgcopy import COLUMNS, chunks, encode, upload_delays
from bench.simulate import batches, post, take, window
from services.common.auth import Role
from services.common.database import Database
from services.common.settings import LOCAL_ENV_FILE, Settings
from services.ingest.repository import PARTITIONED, Partitions, partition_name
from services.registry import service as registry
from services.registry.schemas import SupplierIn
from services.zones.worker import check_params, episodes_afresh

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The fleet time every run posts, whatever the clock says: a weekday afternoon, when
# the fleet is out and about (its fixes are stamped as the stretch just before the run).
FLEET_TIME = datetime(2026, 3, 11, 13, 30, tzinfo=UTC)
# Consumer groups the fixes must have, all caught up, before a Kafka run is done: the
# store's and the zone checker's, both on points since the twenty-fifth session (on
# stored-points before, as another checkout's may be). The crime matcher's box keeper
# takes stored fixes from the database (`boxed` below).
FIX_TOPICS = ("points", "stored-points")
FIX_GROUPS = 2


async def boxed(conn: asyncpg.Connection) -> None:
    """Waits until the box keeper has done every stored batch (trail_unboxed is empty)."""
    # A poll: the keeper is another process, and says nothing when it is done.
    while await conn.fetchval("select exists (select from trail_unboxed)"):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


Offsets = dict[tuple[str, TopicPartition], int]


async def kafka_committed(bootstrap: str, prefix: str) -> Offsets:
    """Every consumer group's committed offset on each partition of our topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = {}
        for group, *_ in await admin.list_consumer_groups():
            offsets = await admin.list_consumer_group_offsets(group)
            for tp, meta in offsets.items():
                if tp.topic.startswith(prefix):
                    committed[group, tp] = meta.offset
        return committed
    finally:
        await admin.close()


async def kafka_caught_up(
    bootstrap: str,
    prefix: str,
    since: Offsets | None = None,
    groups: int = FIX_GROUPS,
) -> bool:
    """Whether every consumer group on our topics has committed up to the end, and at
    least `groups` of them on the fixes' topics. Given the offsets at the start of a
    stretch (`since`), only groups that have committed on a topic since count for it:
    another checkout's workers can have left a group's offsets on a topic this
    checkout's do not read (ninth session on: the crime matcher's on stored-points)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        now = await kafka_committed(bootstrap, prefix)
        moved = {
            (group, tp.topic)
            for (group, tp), offset in now.items()
            if since is None or since.get((group, tp)) != offset
        }
        committed: dict[TopicPartition, int] = {}
        groups_on: dict[str, set[str]] = {}
        for (group, tp), offset in now.items():
            if (group, tp.topic) in moved:
                committed[tp] = min(committed.get(tp, offset), offset)
                groups_on.setdefault(tp.topic.removeprefix(prefix), set()).add(group)
        if sum(len(groups_on.get(t, ())) for t in FIX_TOPICS) < groups:
            return False
        ends = await consumer.end_offsets(list(committed))
        return all(committed[tp] >= end for tp, end in ends.items())
    finally:
        await consumer.stop()


def peak_rss_mib(pid: int) -> float:
    """The most memory the process has held (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# PostgreSQL's processes by what they do, from their titles ("postgres: walwriter",
# "postgres: autovacuum worker tagtrail", a connection's "postgres: user db host state").
PG_ROLES = ("checkpointer", "background writer", "walwriter", "autovacuum")


def pg_role(pid: int) -> str:
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return "connections"
    rest = title.removeprefix("postgres: ")
    if rest == title:
        return "postmaster"  # its command line is the server's own
    return next((r for r in PG_ROLES if rest.startswith(r)), "connections")


def cpu_seconds(
    procs: dict[str, int], connections: dict[int, float] | None = None
) -> dict[str, float]:
    """CPU time (user and system) used so far by each named process, by every
    PostgreSQL process together, by Kafka's JVM, and by this benchmark; and PostgreSQL's
    by role ("PostgreSQL: connections", "PostgreSQL: walwriter", ...), where "ended"
    is what its processes that have ended used (autovacuum workers come and go), as the
    postmaster, their parent, counts it. Each PostgreSQL connection's own, by pid, into
    `connections` when given."""
    out = dict.fromkeys([*procs, "PostgreSQL", "Kafka", "benchmark"], 0.0)
    names = {pid: name for name, pid in procs.items()} | {os.getpid(): "benchmark"}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        pid = int(stat.parent.name)
        name = names.get(pid) or {"postgres": "PostgreSQL", "java": "Kafka"}.get(comm)
        if name is None:
            continue
        used, ended = stat_cpu_s(text)
        out[name] += used
        if name == "PostgreSQL":
            role = pg_role(pid)
            if role == "postmaster":
                out[name] += ended
                out["PostgreSQL: ended"] = out.get("PostgreSQL: ended", 0.0) + ended
            key = f"PostgreSQL: {role}"
            out[key] = out.get(key, 0.0) + used
            if role == "connections" and connections is not None:
                connections[pid] = used
    return out


async def by_client(
    db: Database, before: dict[int, float], after: dict[int, float]
) -> dict[str, float]:
    """What PostgreSQL's connections used between two readings, by the process they
    serve (their application_name: `tagtrail api`, `tagtrail worker zones`, ...).
    Connections opened meanwhile count whole; those closed meanwhile are left out (the
    postmaster counts them as ended)."""
    async with db.pool.acquire() as conn:
        names = dict(await conn.fetch("select pid, application_name from pg_stat_activity"))
    out: dict[str, float] = {}
    for pid, used in after.items():
        client = names.get(pid) or "others"
        out[client] = out.get(client, 0.0) + used - before.get(pid, 0.0)
    return out


async def enrol_fleet(db: Database, fleet: Fleet, since: datetime) -> tuple[str, str]:
    """Supplier, tags, subjects and who wears what (tags fitted at `since`, just before
    the stretch the simulator posts, so no tag is silent before it), straight into the
    registry; returns the supplier's and an admin's tokens."""
    async with db.transaction() as session:
        supplier, token = await registry.create_supplier(session, SupplierIn(name="throughput"))
        _, admin = await registry.create_user_token(session, Role.admin, "bench-admin")
    async with db.pool.acquire() as conn:
        await wear(conn, fleet, supplier.id, since)
    return token, admin


async def add_zones_and_crimes(
    url: str,
    admin: str,
    fleet: Fleet,
    zones: int,
    crimes: int,
    start: datetime,
    minutes: float,
    lag: timedelta,
) -> None:
    """Exclusion zones (victims' streets, 150 m) at random places in the area, each for
    one subject, one in twenty of them on that subject's way during the stretch (where
    they will be moving, so breaches come while fixes flow: what fix-to-alert delay is
    measured on); and open crimes at random places over the last week (as a force's
    recorded burglaries, robberies and thefts are: live fixes fall in the windows of a
    few, late uploads in those of a few more), one in ten within the simulated stretch."""
    rng = random.Random(5)
    spec = fleet.spec
    headers = {"Authorization": f"Bearer {admin}"}
    r_m = spec.metro_radius_km * 1000
    stretch = window(fleet, start, start + timedelta(minutes=minutes), lag)
    moving = stretch.speed_mps > 1.0

    def place() -> tuple[float, float]:
        x, y = rng.uniform(-r_m, r_m), rng.uniform(-r_m, r_m)
        lat, lon = fleet.to_latlon(np.array([x, y]))
        return float(lat), float(lon)

    def on_the_way(tag: int) -> tuple[float, float]:
        fixes = np.flatnonzero(moving & (stretch.tag == tag))
        if not len(fixes):
            return place()
        k = int(fixes[rng.randrange(len(fixes))])
        return float(stretch.lat[k]), float(stretch.lon[k])

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        sem = asyncio.Semaphore(8)

        async def zone(i: int) -> None:
            lat, lon = on_the_way(i % spec.tags) if i % 20 == 0 else place()
            body = {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {
                    "kind": "exclusion",
                    "name": f"zone {i}",
                    "radius_m": 150,
                    "subject_id": str(spec.subject_id(i % spec.tags)),
                },
            }
            async with sem:
                r = await client.post("/v1/zones", json=body)
            r.raise_for_status()

        await asyncio.gather(*(zone(i) for i in range(zones)))
        categories = ["BIAD", "RB", "TFP", "TOMV", "BOTD"]
        made = []
        for i in range(crimes):
            lat, lon = place()
            if i % 10 == 0:
                at = start + timedelta(minutes=rng.uniform(0, minutes))
            else:
                at = start - timedelta(minutes=rng.uniform(0, 7 * 1440))
            made.append(
                {
                    "category": rng.choice(categories),
                    "force": "BENCH",
                    "reference": f"TP-{i}",
                    "lat": lat,
                    "lon": lon,
                    "starts_at": (at - timedelta(minutes=20)).isoformat(),
                    "ends_at": min(at, datetime.now(UTC) - timedelta(seconds=1)).isoformat(),
                }
            )
        for i in range(0, len(made), 500):
            r = await client.post("/v1/crimes", json={"crimes": made[i : i + 500]})
            r.raise_for_status()


async def verify_matches(url: str, admin: str, db: Database, start: datetime) -> tuple[int, int]:
    """Whether matching from the fix side (runs the fixes made) found what a full run over
    every wearer finds, for every crime whose window meets the posted stretch: their
    matched subjects, before and after a manual re-run. Returns (matches, disagreements)."""
    async with db.pool.acquire() as conn:
        ids = await conn.fetch(
            "select id from crimes where current and ends_at >= $1 order by id",
            start - timedelta(hours=1),
        )
    matches = disagreements = 0
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        for (crime_id,) in ids:

            def matched(run: dict[str, object]) -> set[str]:
                results = run["results"]
                assert isinstance(results, dict)
                return {m["subject_id"] for m in results["matched"]}

            before = (await client.get(f"/v1/crimes/{crime_id}/matches")).json()
            again = (await client.post(f"/v1/crimes/{crime_id}/matches/rerun")).json()
            matches += len(matched(again))
            disagreements += len(matched(before) ^ matched(again))
    return matches, disagreements


async def verify_zones(db: Database, settings: Settings, start: datetime) -> tuple[int, int]:
    """Whether the zone episodes the checker decided batch by batch as the fixes came
    (the alerts standing, not superseded by later ones) are those the whole stored
    trail shows, derived afresh. Returns (standing, disagreements)."""
    derived = {
        e.id
        for e in await episodes_afresh(
            db, check_params(settings.check), start, datetime.now(UTC) + timedelta(hours=1)
        )
    }
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "select id from alerts where zone_id is not null and state <> 'superseded'"
        )
    standing = {r["id"] for r in rows}
    return len(standing), len(standing ^ derived)


# How far back the ceiling's day lies: a day of its own, which no stretch reaches.
CEILING_AGE = timedelta(days=40)


class Ceiling:
    """Raw binary COPY of a stretch's worth of fixes into trail_points (its indexes, no
    checks, no boxes): rows a second. Another fleet, on a day of its own, made into the
    COPY stream once; each measurement makes the day's partitions, COPYs into them and
    drops them again, so every one meets the same table, and leaves no rows behind for
    autovacuum to visit during the next stretch.

    Measured just before and just after each stretch, on the machine as it is then:
    measured once after the run's checks, minutes from the stretches, it swung by a
    third and more between runs of the same code (docs/benchmarks.md, thirtieth
    session), and the ratio with it."""

    def __init__(self, fixes: int, tags: int) -> None:
        fleet = Fleet(FleetSpec(tags=tags, seed=9))
        self.day = datetime.now(UTC).date() - CEILING_AGE
        d = fleet.day(self.day)
        self.fixes = min(fixes, len(d))
        keep = np.zeros(len(d), dtype=bool)
        keep[: self.fixes] = True
        self._data = encode(
            take(d, keep),
            [fleet.spec.tag_id(i) for i in range(tags)],
            [fleet.spec.subject_id(i) for i in range(tags)],
            upload_delays(np.random.default_rng(1), self.fixes),
        )

    async def measure(self, db: Database) -> float:
        # Partitions.ensure makes the day before too (a fix's boxes can reach back).
        days = [self.day - timedelta(days=1), self.day]
        tables = [partition_name(day, table) for day in days for table in PARTITIONED]
        async with db.pool.acquire() as conn:
            for table in tables:
                if await conn.fetchval("select to_regclass($1)", table) is not None:
                    raise RuntimeError(f"{table} exists: the ceiling's day must be its own")
            await Partitions().ensure(conn, [self.day])
            try:
                t0 = time.perf_counter()
                await conn.copy_to_table(
                    "trail_points",
                    source=chunks(self._data),
                    columns=list(COLUMNS),
                    format="binary",
                )
                return self.fixes / (time.perf_counter() - t0)
            finally:
                # (If exists: retention, in the store, may have dropped a day this old.)
                for table in tables:
                    await conn.execute(f"drop table if exists {table}")


# Before each measurement the machine is given time to settle (the workers preparing
# their zones after a restart, autovacuum after a stretch's rows): until the tagtrail
# processes and PostgreSQL together use less than QUIET_CORE of a core over a second,
# or `patience` seconds go by. Idle on a quiet machine, the five processes on Kafka use
# about 0.05 of a core, `tagtrail run` 0.01 to 0.02 (thirty-first session; four to five
# times that right after a run, and `tagtrail run` 0.17 at such a moment in the
# thirtieth). Kafka's broker is not waited for: idle, it uses 0.04 to 0.25 of a core
# whatever is done (thirtieth and thirty-first sessions).
QUIET_CORE = 0.3


async def settle(procs: dict[str, asyncio.subprocess.Process], patience: float) -> None:
    if patience <= 0:
        return
    pids = {c: p.pid for c, p in procs.items()}
    watched = [*pids, "PostgreSQL"]
    deadline = time.perf_counter() + patience
    before = cpu_seconds(pids)
    while time.perf_counter() < deadline:
        await asyncio.sleep(1.0)
        now = cpu_seconds(pids)
        if sum(now[k] - before.get(k, 0.0) for k in watched) < QUIET_CORE:
            return
        before = now
    print(f"(the machine was still busy after {patience:.0f} s; measuring anyway)")


async def spy(folder: Path, name: str, pid: int) -> asyncio.subprocess.Process:
    """py-spy sampling a process until SIGINT, its stacks collapsed into folder/name.txt
    (py-spy runs from PyPI through uv, outside the project's dependencies)."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    find = await asyncio.create_subprocess_exec(
        "bash", str(ROOT / "deploy/local/uv.sh"), stdout=asyncio.subprocess.PIPE
    )
    uv = (await find.communicate())[0].decode().strip()
    out = folder / f"{name.replace(' ', '-')}.txt"
    return await asyncio.create_subprocess_exec(
        uv,
        "tool",
        "run",
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "250",
        "--output",
        str(out),
        "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop(procs: dict[str, asyncio.subprocess.Process]) -> None:
    for p in procs.values():
        if p.returncode is None:
            p.terminate()
    for p in procs.values():
        await asyncio.wait_for(p.wait(), 30)


async def wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(600):
            if proc.returncode is not None:
                raise RuntimeError("the server exited while starting")
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the server did not become ready")


# The statements of one database, from pg_stat_statements (the local cluster loads it:
# deploy/local/postgres.sh): their counts are reset when a stretch begins and read when
# it ends, so they are the stretch's own. PostgreSQL's CPU a fix drifts with the
# machine's moment; the statements' shares of it drift less (docs/benchmarks.md, ninth
# session).
STATEMENTS_RESET_SQL = """
select pg_stat_statements_reset(0, (select oid from pg_database where datname = $1), 0)
"""
STATEMENTS_SQL = """
select calls, total_exec_time, regexp_replace(query, '\\s+', ' ', 'g')
from pg_stat_statements
where dbid = (select oid from pg_database where datname = $1)
order by total_exec_time desc
limit $2
"""


async def statements(dsn: str, database: str, reset: bool) -> list[asyncpg.Record]:
    """The database's costliest statements so far (or, with reset, none, their counts
    reset); nothing where pg_stat_statements is not loaded."""
    conn = await asyncpg.connect(dsn)
    try:
        if reset:
            await conn.execute(STATEMENTS_RESET_SQL, database)
            return []
        return await conn.fetch(STATEMENTS_SQL, database, 8)
    except (
        asyncpg.UndefinedTableError,  # no extension in the database
        asyncpg.UndefinedFunctionError,
        asyncpg.ObjectNotInPrerequisiteStateError,  # the extension, but not loaded
    ):
        return []
    finally:
        await conn.close()


def local_services() -> dict[str, str]:
    """Where this checkout's local PostgreSQL and Kafka run (`.local/services.env`, which
    `make db` and `make kafka` write), as environment variables."""
    if not LOCAL_ENV_FILE.exists():
        return {}
    lines = LOCAL_ENV_FILE.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


@dataclass(frozen=True)
class Wal:
    """The cluster's write-ahead log so far (pg_stat_wal): records, full-page images
    (a page's first change after a checkpoint) and bytes."""

    records: int
    fpi: int
    bytes: int

    def __sub__(self, other: Wal) -> Wal:
        return Wal(self.records - other.records, self.fpi - other.fpi, self.bytes - other.bytes)


async def wal_so_far(db: Database) -> Wal:
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow("select wal_records, wal_fpi, wal_bytes from pg_stat_wal")
    return Wal(int(row[0]), int(row[1]), int(row[2]))


@dataclass(frozen=True)
class Stretch:
    """What one measured stretch came to."""

    fixes: int
    rate: float  # fixes a second, end to end
    server_us: float  # tagtrail's CPU a fix, every process of it
    postgres_us: float
    # The CPU a fix of everything measured (tagtrail, PostgreSQL, the broker, this
    # benchmark), and the share of the cores it kept busy.
    total_us: float
    busy: float
    ok: bool  # every request answered, every accepted fix stored, no dead letter
    peaks: dict[str, float]  # each process's peak resident memory (MiB) since it started


@dataclass(frozen=True)
class Turn:
    """Who serves a stretch: a checkout's code, at an offered load (requests in flight),
    with the checks or with ingest and storage alone (`--without-checks`)."""

    code: Path
    load: int
    checks: bool = True

    def describe(self, loads: list[int], both: bool) -> str:
        """The stretch's checkout, and what else varies between the run's stretches."""
        return (
            f"{self.code}"
            + (f", {self.load} requests in flight" if len(loads) > 1 else "")
            + ("" if not both else ", with checks" if self.checks else ", without checks")
        )


async def measure(
    url: str,
    supplier: str,
    db: Database,
    fleet: Fleet,
    procs: dict[str, asyncio.subprocess.Process],
    start: datetime,
    lag: timedelta,
    args: argparse.Namespace,
    profile: Path | None,
    label: str,
    concurrency: int,
    checks: bool = True,
) -> Stretch:
    """Posts a stretch of fleet time from `start` to the running service, as fast as it
    takes it (or at --rate), and prints what it came to. Without `checks`, only the API
    and the store serve it (on Kafka): done when the store is."""
    async with db.pool.acquire() as conn:
        history_fixes = await conn.fetchval("select count(*) from trail_points")
    bodies = list(batches(fleet, start, args.minutes, args.batch, lag=lag))
    pids = {c: p.pid for c, p in procs.items()}
    async with db.pool.acquire() as conn:
        measured_from = await conn.fetchval("select now()")
    await statements(args.statements_dsn, args.database, reset=True)
    since = (
        await kafka_committed(args.kafka_bootstrap, args.topic_prefix)
        if args.bus == "kafka"
        else None
    )
    wal0 = await wal_so_far(db)
    backends0: dict[int, float] = {}
    cpu0 = cpu_seconds(pids, backends0)
    t0 = time.perf_counter()
    spies = [await spy(profile, c, p.pid) for c, p in procs.items()] if profile else []
    sent = await post(url, supplier, iter(bodies), concurrency=concurrency, rate=args.rate)
    async with db.pool.acquire() as conn:
        # Kafka's offsets first, the count of the trail (a scan of all of it, which
        # cost PostgreSQL 4 to 12 µs a fix of the stretch when it ran every poll, tenth
        # session) only once every group has caught up.
        groups = FIX_GROUPS if checks else 1
        while args.bus == "kafka":
            if await kafka_caught_up(args.kafka_bootstrap, args.topic_prefix, since, groups):
                stored = await conn.fetchval("select count(*) from trail_points")
                if stored - history_fixes >= sent.accepted:
                    break
            await asyncio.sleep(0.25)
        # The box keeper's work (boxes and the crime trigger, behind the store) is the
        # stretch's too.
        if checks:
            await boxed(conn)
        took = time.perf_counter() - t0
        backends1: dict[int, float] = {}
        cpu1 = cpu_seconds(pids, backends1)
        clients = await by_client(db, backends0, backends1)
        wal = (await wal_so_far(db)) - wal0
        costliest = await statements(args.statements_dsn, args.database, reset=False)
        for spying in spies:
            spying.send_signal(signal.SIGINT)
            await spying.wait()
        stored = await conn.fetchval("select count(*) from trail_points") - history_fixes
        dead = await conn.fetchval("select count(*) from dead_letters")
        measured_until = await conn.fetchval("select now()")
        kinds = await conn.fetch(
            "select kind, count(*) from alerts where created_at between $1 and $2"
            " group by 1 order by 1",
            measured_from,
            measured_until,
        )
        alerts = ", ".join(f"{n} {kind}" for kind, n in kinds) or "0"
    rate = sent.fixes / took
    lat = np.percentile(sent.latencies, [50, 99]) * 1000
    print(
        f"end to end: {sent.fixes:,} fixes in {took:.1f} s = {rate:,.0f} fixes/s"
        f" (accepted {sent.accepted:,}, stored {stored:,}, rejected {sent.rejected},"
        f" failed requests {sent.failures}, dead letters {dead}); alerts: {alerts};"
        f" request p50 {lat[0]:.0f} ms p99 {lat[1]:.0f} ms ({args.batch} fixes each){label}"
    )
    for reason, n in sent.reasons.most_common():
        print(f"failed requests: {n} x {reason} (the servers' logs: {args.logs})")
    used = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    print(
        f"CPU while fixes flowed ({took:.1f} s x {os.cpu_count()} cores ="
        f" {took * (os.cpu_count() or 1):.1f} s): "
        + ", ".join(
            f"{k} {v:.1f} s ({v / sent.fixes * 1e6:.1f} µs a fix)"
            for k, v in used.items()
            if v > 0 and not k.startswith("PostgreSQL: ")
        )
    )
    print(
        "PostgreSQL's by role (µs a fix): "
        + ", ".join(
            f"{k.removeprefix('PostgreSQL: ')} {v / sent.fixes * 1e6:.1f}"
            for k, v in sorted(used.items(), key=lambda kv: -kv[1])
            if k.startswith("PostgreSQL: ") and v > 0
        )
        + f"; WAL a fix: {wal.records / sent.fixes:.1f} records,"
        f" {wal.fpi / sent.fixes:.2f} full pages, {wal.bytes / sent.fixes:,.0f} bytes"
    )
    print(
        "PostgreSQL's connections by the process they serve (µs a fix): "
        + ", ".join(
            f"{k} {v / sent.fixes * 1e6:.1f}"
            for k, v in sorted(clients.items(), key=lambda kv: -kv[1])
            if v > 0
        )
    )
    if costliest:
        print("PostgreSQL's costliest statements meanwhile (execution, µs a fix; calls):")
        for calls, ms, query in costliest:
            print(f"  {ms * 1e3 / sent.fixes:6.1f}  {calls:6,}  {query[:100]}")
    # Fix to alert: from when the fix that settled an alert reached the API to when
    # the alert was filed, both by the server's clock. The settling fix: the latest of
    # the alert's evidence that had arrived by then (later updates add later fixes).
    async with db.pool.acquire() as conn:
        delays = await conn.fetch(
            """
            select a.kind,
                   extract(epoch from a.created_at
                                      - max((e->>'received_at')::timestamptz)) as s
            from alerts a cross join lateral jsonb_array_elements(a.evidence) e
            where (e->>'received_at')::timestamptz <= a.created_at
              and a.created_at between $1 and $2
            group by a.id, a.kind, a.created_at
            """,
            measured_from,
            measured_until,
        )
    if delays:
        ms = np.percentile([float(r["s"]) for r in delays], [50, 99]) * 1000
        top = max(float(r["s"]) for r in delays) * 1000
        # Each kind too: crime matches come through the box keeper, zone breaches
        # straight from the stored-points topic (eleventh session on).
        kinds = sorted({r["kind"] for r in delays})
        each = "; ".join(
            f"{kind} n={len(d)} p50 {np.percentile(d, 50) * 1000:.0f} ms max {max(d) * 1000:.0f} ms"
            for kind in kinds
            for d in [[float(r["s"]) for r in delays if r["kind"] == kind]]
        )
        print(
            f"fix to alert: n={len(delays)} ({len(kinds)} kinds)"
            f" p50 {ms[0]:.0f} ms p99 {ms[1]:.0f} ms max {top:.0f} ms ({each})"
        )

    server = sum(v for k, v in used.items() if k in procs)
    everything = sum(v for k, v in used.items() if not k.startswith("PostgreSQL: "))
    return Stretch(
        fixes=sent.fixes,
        rate=rate,
        server_us=server / sent.fixes * 1e6,
        postgres_us=used["PostgreSQL"] / sent.fixes * 1e6,
        total_us=everything / sent.fixes * 1e6,
        busy=everything / (took * (os.cpu_count() or 1)),
        ok=sent.failures == 0 and stored == sent.accepted and dead == 0,
        peaks={c: peak_rss_mib(p.pid) for c, p in procs.items()},
    )


def budget(stretch: Stretch, ceiling: float, target: float = 0.5) -> str:
    """What the target ratio would leave for each fix: the CPU time a fix that the
    machine's cores could spend at `target` times the ceiling, kept as busy as in this
    stretch (and wholly busy), against what the stretch spent."""
    cores = os.cpu_count() or 1
    rate = target * ceiling
    return (
        f"at {target} of that ceiling ({rate:,.0f} fixes/s) the {cores} cores allow"
        f" {cores * stretch.busy / rate * 1e6:.1f} µs of CPU a fix in all, kept"
        f" {stretch.busy:.0%} busy as here ({cores / rate * 1e6:.1f} wholly busy);"
        f" this stretch spent {stretch.total_us:.1f}"
    )


async def catch_up(db: Database, args: argparse.Namespace, since: Offsets) -> float:
    """After a stretch served without the checks, the checks' processes (started again)
    through its fixes, unmeasured, as through the history: the zone checker's group on
    from where it stopped (`since`: every group's offsets when the stretch was done) and
    the box keeper's backlog. Seconds it took."""
    t0 = time.perf_counter()
    async with db.pool.acquire() as conn:
        # A poll, as `boxed`: the workers are other processes.
        while not await kafka_caught_up(args.kafka_bootstrap, args.topic_prefix, since, 1):  # noqa: ASYNC110
            await asyncio.sleep(0.25)
        await boxed(conn)
    return time.perf_counter() - t0


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--tags", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=30.0, help="fleet time to post")
    parser.add_argument(
        "--history",
        type=float,
        default=120.0,
        help="fleet time posted before the measured stretch, unmeasured (minutes)",
    )
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--crimes", type=int, default=1000)
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="requests in flight at once (default 32: at 8 a third of the two cores stood"
        " idle on the in-process bus, and 32 made 18 %% more fixes a second than 16,"
        " docs/benchmarks.md; repeat to compare offered loads within one run: each"
        " checkout serves a stretch at each, in turn)",
    )
    parser.add_argument("--batch", type=int, default=2000, help="fixes a request")
    parser.add_argument("--bus", choices=["memory", "kafka"], default="memory")
    parser.add_argument(
        "--rate", type=float, default=None, help="post at most this many fixes a second"
    )
    parser.add_argument(
        "--profile", type=Path, help="sample each process with py-spy while fixes flow, into DIR"
    )
    parser.add_argument(
        "--code",
        type=Path,
        action="append",
        help="a checkout whose tagtrail serves the stretches (repeat to compare: each is"
        " measured in turn, against the same database; default this one)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="stretches a checkout, in alternating order (A B, then B A, ...)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the run's database (and on Kafka its topics) afterwards, to look into",
    )
    parser.add_argument(
        "--without-checks",
        action="store_true",
        help="on Kafka, each checkout also serves stretches with the API and the store"
        " alone (no zone checker, box keeper, crime matcher or dispatcher), for the"
        " ratio of ingest and storage on their own; the checks then go through those"
        " fixes unmeasured before the next stretch",
    )
    parser.add_argument("--smoke", action="store_true", help="20 tags, 10 minutes, 50 zones")
    args = parser.parse_args(argv)
    if args.without_checks and args.bus != "kafka":
        parser.error("--without-checks needs --bus kafka (in one process, a 202 is checked)")
    codes: list[Path] = [c.absolute() for c in args.code or [ROOT]]
    loads: list[int] = args.concurrency or [32]
    both = (True, False) if args.without_checks else (True,)
    variants = [Turn(c, n, checks) for c in codes for n in loads for checks in both]
    # Round r runs the variants (checkout and offered load) in order, or reversed when r
    # is odd, so that a machine getting faster or slower through the run favours none.
    turns = [v for r in range(args.rounds) for v in (variants if r % 2 == 0 else variants[::-1])]
    if args.smoke:
        args.tags, args.minutes, args.zones, args.crimes = 20, 10.0, 50, 10
        args.history = min(args.history, 10.0)
    settings = Settings()
    name = f"tagtrail_bench_tp_{uuid.uuid4().hex[:8]}"
    header(f"end-to-end throughput ({'in-process bus' if args.bus == 'memory' else 'Kafka'})")
    await bench_database(settings, name, fresh=True)
    db = await Database.connect(settings.db, name, name="tagtrail benchmark")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    args.kafka_bootstrap, args.topic_prefix = settings.kafka.bootstrap, prefix
    args.statements_dsn, args.database = settings.db.asyncpg_dsn("postgres"), name
    args.logs = Path(tempfile.mkdtemp(prefix=f"{name}-logs-"))
    print(f"servers' logs: {args.logs}")
    env = {
        **os.environ,
        "TAGTRAIL_DB_NAME": name,
        "TAGTRAIL_PORT": str(port),
        "TAGTRAIL_KAFKA_TOPIC_PREFIX": prefix,
        # The stretch is posted as fast as the server takes it, so at first every tag's
        # latest fix is as old as the stretch is long, and the device watch would call
        # every tag silent. None is: its limit is set past the stretch.
        "TAGTRAIL_CHECK_SILENCE_AFTER_S": str(max(1800, (args.history + args.minutes + 5) * 60)),
    }
    commands = (
        [["run"]]
        if args.bus == "memory"
        else [["api"], *(["worker", role] for role in ("store", "zones", "crimes", "dispatch"))]
    )

    async def launch(
        code: Path = codes[0], checks: bool = True
    ) -> dict[str, asyncio.subprocess.Process]:
        # Another checkout's code, through this one's environment: its directory comes
        # first on the path, and it is told where this one's local services run (it may
        # have no .local of its own). The checkouts must share the database schema.
        here = {**local_services(), **env, "PYTHONPATH": str(code)} if code != ROOT else env
        procs = {}
        for c in commands if checks else commands[:2]:
            # Each process's log, kept for a run's life (a stretch's processes append).
            with (args.logs / f"{'-'.join(c)}.log").open("ab") as log:
                procs[" ".join(c)] = await asyncio.create_subprocess_exec(
                    str(ROOT / ".venv/bin/tagtrail"),
                    *c,
                    env=here,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                )
        return procs

    procs = await launch()
    ok = False
    try:
        fleet = Fleet(FleetSpec(tags=args.tags, seed=4))
        stretch = timedelta(minutes=args.minutes)
        start = datetime.now(UTC) - stretch * len(turns) - timedelta(minutes=1)
        # Whenever it runs, the benchmark posts the same fleet time, stamped as the last
        # half hour: the fleet moves by the time of day, so runs are comparable.
        lag = start - FLEET_TIME
        history = timedelta(minutes=args.history)
        supplier, admin = await enrol_fleet(db, fleet, start - history - timedelta(minutes=1))
        await wait_ready(url, next(iter(procs.values())))
        t0 = time.perf_counter()
        await add_zones_and_crimes(
            url, admin, fleet, args.zones, args.crimes, start, args.minutes * len(turns), lag
        )
        print(
            f"fleet: {args.tags:,} tags; {args.zones:,} exclusion zones and {args.crimes:,}"
            f" crimes added in {time.perf_counter() - t0:.0f} s"
        )
        # Every crime's own run done, then the service started again, as a running one
        # finds itself: its zones prepared long ago (a checker prepares every zone when
        # it starts, and a new zone when its first fix comes).
        async with db.pool.acquire() as conn:
            while True:
                done = await conn.fetchval("select count(distinct crime_id) from crime_match_runs")
                if done >= args.crimes:
                    break
                await asyncio.sleep(0.25)
        # The fleet's fixes before the stretch, unmeasured: a service in use has each
        # subject's last hours stored (the zone checker reads back CHECK_CONTEXT_S of
        # trail around new fixes, 2 hours by default), and the open episodes they made.
        # Without them every read-back finds an empty trail, and fixes look cheaper than
        # they are (docs/benchmarks.md, fourth session).
        if history:
            t0 = time.perf_counter()
            early = batches(fleet, start - history, args.history, args.batch, lag=lag)
            before = await post(url, supplier, early, concurrency=loads[0])
            if before.failures:
                raise RuntimeError(f"{before.failures} requests of the history failed")
            print(
                f"history: {before.fixes:,} fixes ({args.history:g} minutes of fleet time"
                f" before the stretch) posted in {time.perf_counter() - t0:.0f} s, unmeasured"
            )
            # On Kafka, the history is through every group before the stretch begins
            # (without history no group has committed yet, so there is nothing to wait on).
            async with db.pool.acquire() as conn:
                while args.bus == "kafka":
                    stored = await conn.fetchval("select count(*) from trail_points")
                    if stored >= before.accepted and await kafka_caught_up(
                        settings.kafka.bootstrap, prefix
                    ):
                        break
                    await asyncio.sleep(0.25)
                await boxed(conn)
        figures: list[Stretch] = []

        async def restart(turn: Turn, behind: bool) -> dict[str, asyncio.subprocess.Process]:
            """The turn's processes; and if the checks are `behind` (the turn before went
            without them; each with them catches up), before it measures, the checks
            caught up."""
            await stop(procs)
            # Taken with nothing running: the store's group is at the end and stays
            # there, so only the zone checker's moves until caught up.
            since = await kafka_committed(args.kafka_bootstrap, prefix) if behind else None
            started = await launch(turn.code, turn.checks)
            await wait_ready(url, next(iter(started.values())))
            if since is not None:
                took = await catch_up(db, args, since)
                # A backlog, as after an outage of the checks: what it costs in memory.
                peaks = ", ".join(f"{c} {peak_rss_mib(p.pid):.0f} MiB" for c, p in started.items())
                print(
                    f"the checks through the stretch without them: {took:.1f} s, unmeasured;"
                    f" peak memory: {peaks}"
                )
            return started

        # As many fixes as the first stretch posts (the others post about as many).
        ceiling = Ceiling(len(window(fleet, start, start + stretch, lag).ts), args.tags)
        ceilings: list[tuple[float, float]] = []
        # A smoke run's figures mean nothing: it waits for nobody (at least a second a
        # wait, three waits a stretch, added a quarter to the smoke tests' time).
        patience = 0.0 if args.smoke else 30.0
        for k, turn in enumerate(turns):
            procs = await restart(turn, turn.checks and k > 0 and not turns[k - 1].checks)
            await settle(procs, patience)
            before_it = await ceiling.measure(db)
            await settle(procs, patience)
            label = (
                ""
                if len(turns) == 1
                else f" [stretch {k + 1} of {len(turns)}: {turn.describe(loads, len(both) > 1)}]"
            )
            profile = args.profile / f"stretch{k + 1}" if args.profile and k else args.profile
            figures.append(
                await measure(
                    url,
                    supplier,
                    db,
                    fleet,
                    procs,
                    start + stretch * k,
                    lag,
                    args,
                    profile,
                    label,
                    turn.load,
                    turn.checks,
                )
            )
            await settle(procs, patience)
            after_it = await ceiling.measure(db)
            ceilings.append((before_it, after_it))
            around = mean((before_it, after_it))
            print(
                f"raw COPY into trail_points just before and after it: {before_it:,.0f} and"
                f" {after_it:,.0f} fixes/s; ratio {figures[-1].rate / around:.3f} (of their"
                f" mean){label}"
            )
            if not args.rate:  # (posted at a set rate, the cores' use says nothing)
                print(budget(figures[-1], around))
        if not turns[-1].checks:
            # The run's checks below need every fix checked.
            procs = await restart(replace(turns[-1], checks=True), behind=True)
        ratios = [f.rate / mean(c) for f, c in zip(figures, ceilings, strict=True)]
        if len(variants) > 1:
            for v in variants:
                theirs = [f for f, t in zip(figures, turns, strict=True) if t == v]
                their_ratios = [r for r, t in zip(ratios, turns, strict=True) if t == v]
                print(
                    f"{v.describe(loads, len(both) > 1)}: fixes/s "
                    + ", ".join(f"{f.rate:,.0f}" for f in theirs)
                    + f" (median {np.median([f.rate for f in theirs]):,.0f}); tagtrail's CPU a"
                    f" fix {np.median([f.server_us for f in theirs]):.1f} µs, PostgreSQL's"
                    f" {np.median([f.postgres_us for f in theirs]):.1f} µs (medians);"
                    f" ratio {np.median(their_ratios):.3f} (median)"
                )
        found, wrong = await verify_matches(url, admin, db, start)
        print(
            f"crime matches found as the fixes came: {found}; a full re-run of every crime"
            f" in the stretch disagrees on {wrong}"
        )
        episodes, differ = await verify_zones(db, settings, start - history)
        print(
            f"zone episodes standing (history and stretch): {episodes}; derived afresh"
            f" from the whole stored trail, they differ on {differ}"
        )
        copies = [c for pair in ceilings for c in pair]
        print(
            f"raw COPY into trail_points ({ceiling.fixes:,} fixes, just before and after each"
            f" stretch): {min(copies):,.0f} to {max(copies):,.0f} fixes/s; ratio of each"
            f" stretch to their mean: {', '.join(f'{r:.3f}' for r in ratios)}"
        )
        # Each process's, as the last stretch with the checks ended (after a catch-up,
        # the same processes', so the catch-up's too).
        last = next(f for f, t in zip(figures[::-1], turns[::-1], strict=True) if t.checks)
        peaks = ", ".join(f"tagtrail {c} {mib:.0f} MiB" for c, mib in last.peaks.items())
        mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory: {peaks}, this benchmark {mine:.0f} MiB")
        ok = all(f.ok for f in figures) and wrong == 0 and differ == 0
        if not ok:
            print(
                "FAILED: requests failed, accepted fixes were not all stored, a handler"
                " failed (dead letters), matching from the fix side missed what the"
                " crime side finds, or the zone episodes decided as fixes came are not"
                " those of the whole trail"
            )
        return 0 if ok else 1
    finally:
        await stop(procs)
        await db.close()
        if args.keep:
            print(f"database kept: {name}")
        else:
            await drop_database(settings, name)
            if args.bus == "kafka":
                await drop_topics(args.kafka_bootstrap, prefix)
        # The servers' logs are for a run that failed, or one kept to look into.
        if ok and not args.keep:
            shutil.rmtree(args.logs, ignore_errors=True)
        else:
            print(f"servers' logs kept: {args.logs}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
