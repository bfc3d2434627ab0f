"""What every benchmark needs: a database of its own built by the real migrations, the
machine it ran on, and figures printed the same way."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from bench.fleet import Fleet
from services.cli import migrate
from services.common.settings import Settings


async def bench_database(settings: Settings, name: str, fresh: bool) -> None:
    """Creates the database `name` (dropping it first if `fresh`) and migrates it."""
    admin = await asyncpg.connect(settings.db.asyncpg_dsn("postgres"))
    try:
        if fresh:
            await drop_database(settings, name)
        exists = await admin.fetchval("select 1 from pg_database where datname = $1", name)
        if not exists:
            await admin.execute(f"create database {name}")
    finally:
        await admin.close()
    await asyncio.to_thread(migrate, settings.db.sqlalchemy_url(name))


async def wear(
    conn: asyncpg.Connection, fleet: Fleet, supplier_id: uuid.UUID, since: datetime
) -> None:
    """The fleet's tags (of this supplier), its subjects, and each wearing their tag from
    `since`, written straight into the registry's tables."""
    spec = fleet.spec
    tags = [spec.tag_id(i) for i in range(spec.tags)]
    subjects = [spec.subject_id(i) for i in range(spec.tags)]
    await conn.copy_records_to_table(
        "tags", records=[(t, supplier_id) for t in tags], columns=["id", "supplier_id"]
    )
    await conn.copy_records_to_table(
        "subjects",
        records=[
            (s, f"SIM/{spec.seed}/{i:06d}", f"Simulated {i}", "medium")
            for i, s in enumerate(subjects)
        ],
        columns=["id", "reference", "display_name", "risk"],
    )
    await conn.copy_records_to_table(
        "tag_assignments",
        records=[(uuid.uuid4(), t, s, since) for t, s in zip(tags, subjects, strict=True)],
        columns=["id", "tag_id", "subject_id", "valid_from"],
    )


async def drop_database(settings: Settings, name: str) -> None:
    """Drops the database, ending whatever sessions of ours are left in it. A plain drop
    first: `with (force)` refuses, rather than ends, an autovacuum worker busy in it (it
    runs as the superuser, and we are not one), which a plain drop stops and waits out."""
    admin = await asyncpg.connect(settings.db.asyncpg_dsn("postgres"))
    try:
        try:
            await admin.execute(f"drop database if exists {name}")
        except asyncpg.ObjectInUseError:
            await admin.execute(f"drop database if exists {name} with (force)")
    finally:
        await admin.close()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.platform()}"


TICK = os.sysconf("SC_CLK_TCK")


def stat_cpu_s(stat: str) -> tuple[float, float]:
    """From a process's /proc/PID/stat: the CPU time (user and system) it has used, and
    that of its children that have ended and been reaped."""
    # After the name (in parentheses, and it may hold anything): utime, stime, cutime
    # and cstime are fields 14 to 17 of stat, 12 to 15 after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (
        (int(fields[11]) + int(fields[12])) / TICK,
        (int(fields[13]) + int(fields[14])) / TICK,
    )


def header(title: str) -> None:
    print(f"# {title}")
    print(f"date:    {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def latency_line(label: str, seconds: Sequence[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{label}: n={len(ms)} p50={percentile(ms, 50):.1f} ms p95={percentile(ms, 95):.1f} ms "
        f"p99={percentile(ms, 99):.1f} ms max={max(ms):.1f} ms"
    )


async def drop_topics(bootstrap: str, prefix: str) -> None:
    """A run's topics (those whose names start with `prefix`) off the broker."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()
