"""What a batch's make-up costs the store's COPY: PostgreSQL's CPU a fix by fixes a COPY
and by how many of them share a tag.

    python -m bench.copy_batches              # 2,000 tags: COPYs of 2,000 fixes holding
                                              # 1 or about 8 fixes a tag, and of 16,000
                                              # holding about 8
    python -m bench.copy_batches --collate-c  # the same with trail_points.tag_id in the
                                              # "C" collation (a what-if, not migrated)
    python -m bench.copy_batches --smoke      # a few of each: proves it still works

A live fleet reports each tag about once a minute, so a batch of a minute's fixes holds
one fix of each tag; the throughput benchmark posts hours of fleet time in seconds, and
a tag that reconnects uploads its buffered hours at once, so a batch can hold many
fixes of one tag. Each variant is measured as bench/trail_indexes.py measures an index
(its helper does the work): its fixes after a history in a day partition of their own,
a transaction a COPY, each batch's rows in the primary key's order as the store writes
them, in the order A B C C B A. Printed: the connection's own CPU time a fix (its
backend process's, from /proc: PostgreSQL must run on this machine) and the fixes a
second it took them in.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import asyncpg

from bench.common import bench_database, drop_database, header
from bench.fleet import Fleet, FleetSpec
from bench.trail_indexes import in_turn, measure, print_medians
from services.common.settings import Settings

# (fixes a COPY, fixes of a tag in it)
VARIANTS = ((2000, 1), (2000, 8), (16000, 8))


def label(batch: int, per_tag: int) -> str:
    return f"COPYs of {batch:,}, {'1 fix' if per_tag == 1 else f'about {per_tag} fixes'} a tag"


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.copy_batches", description=__doc__)
    parser.add_argument("--tags", type=int, default=2000)
    parser.add_argument("--history", type=int, default=240_000, help="fixes already there")
    parser.add_argument("--fixes", type=int, default=360_000, help="fixes measured a variant")
    parser.add_argument(
        "--collate-c",
        action="store_true",
        help='trail_points.tag_id in the "C" collation (byte order, no strcoll)',
    )
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    variants = VARIANTS
    if args.smoke:
        args.tags, args.history, args.fixes = 20, 2000, 4000
        variants = ((20, 1), (20, 8), (160, 8))
    settings = Settings()
    name = f"tagtrail_bench_cb_{uuid.uuid4().hex[:8]}"
    header("the make-up of a batch, in the store's COPY")
    print(
        f"{args.tags:,} tags; {args.history:,} fixes of history in the partition, then"
        f" {args.fixes:,} a variant, each COPY in a transaction of its own;"
        f" tag_id collation: {'C' if args.collate_c else 'the database default'}"
    )
    fleet = Fleet(FleetSpec(tags=args.tags, seed=3))
    await bench_database(settings, name, fresh=True)
    conn = await asyncpg.connect(settings.db.asyncpg_dsn(name))
    shapes = {label(*v): v for v in variants}

    async def one(i: int, variant: str) -> tuple[float, float]:
        batch, per_tag = shapes[variant]
        return await measure(conn, fleet, 60 + i, args.history, args.fixes, batch, per_tag=per_tag)

    try:
        if args.collate_c:
            await conn.execute(
                'alter table trail_points alter column tag_id type varchar(64) collate "C"'
            )
        figures = await in_turn(list(shapes), one)
    finally:
        await conn.close()
        await drop_database(settings, name)
    print_medians(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
