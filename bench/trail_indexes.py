"""What each index of trail_points costs the store's COPY, in PostgreSQL's CPU a fix.

    python -m bench.trail_indexes            # 2,000 tags: 240,000 fixes of history in
                                             # the day's partition, then 720,000 more in
                                             # COPYs of 8,000, as the store writes them
    python -m bench.trail_indexes --smoke    # a few of each: proves it still works

The table as migrated has two indexes beside its rows: the primary key (tag_id, ts),
which makes a re-sent fix harmless, and (subject_id, ts) with the trail's columns
included, which every trail read goes by. Each variant is measured on a day partition
of its own, in a database of its own built by the real migrations: as migrated, without
the covering index, without the primary key (each put back afterwards), in the order
A B C C B A so that the machine's drift falls on every variant alike. Printed: the
connection's own CPU time a fix (its backend process's, read from /proc: PostgreSQL
must run on this machine) and the fixes a second it took them in.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np

from bench.common import bench_database, drop_database, header, stat_cpu_s
from bench.fleet import Fleet, FleetSpec
from bench.pgcopy import COLUMNS, chunks, encode, upload_delays
from bench.simulate import take
from services.common.settings import Settings
from services.ingest.repository import Partitions

# Each variant: what takes the index away, and what puts it back as the migrations made it.
VARIANTS: dict[str, tuple[Sequence[str], Sequence[str]]] = {
    "as migrated (both indexes)": ((), ()),
    "without (subject_id, ts) include (...)": (
        ("drop index ix_trail_points_subject_ts",),
        (
            "create index ix_trail_points_subject_ts on trail_points (subject_id, ts)"
            " include (tag_id, received_at, lat, lon, accuracy_m)",
        ),
    ),
    "without the primary key (tag_id, ts)": (
        ("alter table trail_points drop constraint pk_trail_points",),
        ("alter table trail_points add constraint pk_trail_points primary key (tag_id, ts)",),
    ),
}


def backend_cpu_s(pid: int) -> float:
    """CPU time (user and system) the PostgreSQL backend `pid` has used; NaN when it
    is not a process of this machine."""
    try:
        return stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())[0]
    except OSError:
        return float("nan")


async def copy_rows(conn: asyncpg.Connection, data: bytes) -> None:
    await conn.copy_to_table(
        "trail_points", source=chunks(data), columns=list(COLUMNS), format="binary"
    )


async def measure(
    conn: asyncpg.Connection,
    fleet: Fleet,
    day_offset: int,
    history: int,
    fixes: int,
    batch: int,
    per_tag: int = 0,
) -> tuple[float, float]:
    """History then the measured fixes into a day partition of their own; returns the
    backend's CPU µs a fix and the fixes a second of the measured COPYs. The measured
    fixes go in the fleet's time order (0), or, with `per_tag`, in windows of that many
    fixes a tag, each window's rows in the primary key's order, as the store writes a
    batch: a COPY of them then holds about that many fixes of each tag in it."""
    tags = [fleet.spec.tag_id(i) for i in range(fleet.spec.tags)]
    subjects: list[uuid.UUID] = [fleet.spec.subject_id(i) for i in range(fleet.spec.tags)]
    day = datetime.now(UTC).date() - timedelta(days=day_offset)
    d = fleet.day(day)
    rng = np.random.default_rng(day_offset)

    end = min(history + fixes, len(d))
    if per_tag:
        order = np.arange(len(d))
        window = per_tag * fleet.spec.tags
        for a in range(history, end, window):
            w = slice(a, min(a + window, end))
            order[w] = order[w][np.lexsort((d.ts[w], d.tag[w]))]
        d = take(d, order)

    def rows(lo: int, hi: int) -> bytes:
        keep = np.zeros(len(d), dtype=bool)
        keep[lo:hi] = True
        return encode(take(d, keep), tags, subjects, upload_delays(rng, int(keep.sum())))

    await Partitions().ensure(conn, [day])
    await copy_rows(conn, rows(0, history))
    parts = [rows(a, min(a + batch, end)) for a in range(history, end, batch)]
    pid = await conn.fetchval("select pg_backend_pid()")
    cpu0, t0 = backend_cpu_s(pid), time.perf_counter()
    for data in parts:
        # A transaction a batch, as the store's.
        async with conn.transaction():
            await copy_rows(conn, data)
    took, used = time.perf_counter() - t0, backend_cpu_s(pid) - cpu0
    n = end - history
    return used / n * 1e6, n / took


def figure(label: str, us: float, rate: float) -> str:
    return f"{label:40s} PostgreSQL {us:5.2f} µs a fix, {rate:9,.0f} fixes/s"


async def in_turn(
    labels: Sequence[str], one: Callable[[int, str], Awaitable[tuple[float, float]]]
) -> dict[str, list[tuple[float, float]]]:
    """Each variant measured in the order A B C C B A (`one(i, label)`, the i-th
    measurement, gives its µs a fix and fixes a second), each figure printed as it
    comes; every variant's runs."""
    figures: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
    for i, label in enumerate([*labels, *reversed(labels)]):
        us, rate = await one(i, label)
        figures[label].append((us, rate))
        print(figure(label, us, rate))
    return figures


def print_medians(figures: Mapping[str, Sequence[tuple[float, float]]]) -> None:
    """Each variant's median CPU a fix and rate, of its (µs a fix, fixes a second) runs."""
    print("medians:")
    for label, runs in figures.items():
        us = float(np.median([u for u, _ in runs]))
        rate = float(np.median([r for _, r in runs]))
        print("  " + figure(label, us, rate))


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trail_indexes", description=__doc__)
    parser.add_argument("--tags", type=int, default=2000)
    parser.add_argument("--history", type=int, default=240_000, help="fixes already there")
    parser.add_argument("--fixes", type=int, default=720_000, help="fixes measured")
    parser.add_argument("--batch", type=int, default=8000, help="fixes a COPY")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tags, args.history, args.fixes, args.batch = 20, 2000, 4000, 1000
    settings = Settings()
    name = f"tagtrail_bench_ix_{uuid.uuid4().hex[:8]}"
    header("the trail's indexes, in the store's COPY")
    print(
        f"{args.tags:,} tags; {args.history:,} fixes of history in the partition, then"
        f" {args.fixes:,} in COPYs of {args.batch:,}, each in a transaction of its own"
    )
    fleet = Fleet(FleetSpec(tags=args.tags, seed=3))
    await bench_database(settings, name, fresh=True)
    conn = await asyncpg.connect(settings.db.asyncpg_dsn(name))

    async def one(i: int, variant: str) -> tuple[float, float]:
        take_away, put_back = VARIANTS[variant]
        for statement in take_away:
            await conn.execute(statement)
        result = await measure(conn, fleet, 60 + i, args.history, args.fixes, args.batch)
        for statement in put_back:
            await conn.execute(statement)
        return result

    try:
        figures = await in_turn(list(VARIANTS), one)
    finally:
        await conn.close()
        await drop_database(settings, name)
    print_medians(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
