"""The ingest request path alone: the CPU a fix that taking a request of fixes costs the
process that takes it (the API on Kafka, and a share of `tagtrail run`), from the
request's body, an NDJSON stream, to its fixes durable on the bus: reading its lines
as the stream route does, the clean path's checks and attribution, the re-send look-up,
the batch's encoding and the publish. (Until the twenty-sixth session the lines were
parsed outside what was measured; figures from before then leave that out.)

    python -m bench.ingest_path                  # in-process bus, this checkout
    python -m bench.ingest_path --bus kafka      # publishing to the local broker
    python -m bench.ingest_path --code A --code B --rounds 4   # checkouts side by side
    python -m bench.ingest_path --smoke          # a few of each: proves it still works

End to end, a change of a few per cent in this path cannot be told from the machine's
drift and the other processes' (docs/benchmarks.md). Here one process does the work a
request at a time, and its own CPU time (user and system) is what is measured: no HTTP,
no workers (on the in-process bus a group that takes each batch and does nothing stands
in for them);
the cycle collector runs by the clock, as in every tagtrail process.

The fleet of bench/fleet.py (2,000 tags) is enrolled in a database of its own, built by
the real migrations; its fixes over --minutes of fleet time are made into requests as
the simulator posts them (2,000 fixes each, late bursts out of order). Each checkout's
code is measured in a process of its own (its directory first on the path), in turn
(A B, then B A, ...), over the same requests, with what ingest keeps in memory (tags,
horizons) met afresh; the first --warm requests are not measured. Nothing stores the
fixes, so the trail stays empty: a late fix is looked up and found new, as a late fix
mostly is. On Kafka each measurement publishes to topics of its own, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import pickle
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent


async def _child(args: argparse.Namespace) -> None:
    """One measurement, in the code first on the path: prints its figures as JSON."""
    from services.common import collector
    from services.common.auth import Principal, Role
    from services.common.bus.kafka import KafkaBus
    from services.common.bus.memory import MemoryBus
    from services.common.database import Database
    from services.common.settings import Settings
    from services.common.timeutil import utcnow
    from services.ingest import service
    from services.ingest.horizons import FixHorizons
    from services.ingest.service import IngestMemory

    # What the stream route hands ingest (in a checkout from before the twenty-sixth
    # session, its lines parsed one by one).
    route_reading: Any
    try:
        route_reading = importlib.import_module("services.ingest.ndjson").Stream
    except ModuleNotFoundError:
        route_reading = importlib.import_module("services.ingest.api").stream_items
    from services.registry.service import TagDirectory
    from services.topics import ALL, DEAD_LETTER, POINTS

    # The cycle collector as a tagtrail process has it (services/common/collector.py).
    collector.tune()
    settings = Settings()
    bodies: list[bytes] = pickle.loads(await asyncio.to_thread(Path(args.child).read_bytes))
    db = await Database.connect(settings.db, args.database, name="tagtrail benchmark")
    bus: Any
    if args.bus == "kafka":
        prefix = f"{args.database}.{uuid.uuid4().hex[:8]}."
        kafka = settings.kafka.model_copy(update={"topic_prefix": prefix})
        bus = KafkaBus(kafka, DEAD_LETTER, ALL, lanes=settings.bus.lanes)
    else:
        bus = MemoryBus(DEAD_LETTER, lanes=settings.bus.lanes)

        async def drain(batches: list[Any]) -> None:
            return None

        # (Whatever the checkout's cap: the drain takes any batch alike.)
        bus.subscribe("bench-drain", POINTS, drain, max_batch=16_000)
    await bus.start()
    collector.freeze()
    clock = collector.Collector()
    clock.start()
    ttl = settings.ingest.horizon_ttl_s
    # As the API makes it; a checkout from before the twenty-sixth session makes its own.
    new = getattr(IngestMemory, "new", None)
    memory = new(ttl) if new else IngestMemory(TagDirectory(), FixHorizons(ttl))
    supplier = Principal(uuid.UUID(args.supplier), Role.supplier, "bench")
    fixes = accepted = 0
    cpu = wall = 0.0
    try:
        for k, body in enumerate(bodies):
            c0, w0 = time.process_time(), time.perf_counter()
            lines = body.split(b"\n")
            items = route_reading(lines)
            result = await service.ingest(
                db, bus, memory, supplier, items, utcnow(), settings.ingest
            )
            if k >= args.warm:
                cpu += time.process_time() - c0
                wall += time.perf_counter() - w0
                fixes += len(lines)
                accepted += result.accepted
    finally:
        await clock.stop()
        await bus.stop()
        await db.close()
    print(orjson.dumps({"fixes": fixes, "accepted": accepted, "cpu": cpu, "wall": wall}).decode())


def _measure(code: Path, requests: Path, args: argparse.Namespace, supplier: str) -> dict[str, Any]:
    """A child process's figures, its code from `code`."""
    from bench import checkouts
    from bench.throughput import local_services

    # As bench/throughput.py serves another checkout: this environment, which made the
    # database, over where this checkout's local services run.
    argv = [str(requests), "--database", args.database, "--supplier", supplier]
    argv += ["--bus", args.bus, "--warm", str(args.warm)]
    return checkouts.measure(Path(__file__), code, argv, {**local_services(), **os.environ})


async def main(argv: list[str] | None = None) -> int:
    # Not at the top: a measurement's own process runs another checkout's code.
    from bench import checkouts

    parser = argparse.ArgumentParser(prog="python -m bench.ingest_path", description=__doc__)
    parser.add_argument("--tags", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=180.0, help="fleet time made requests")
    parser.add_argument("--batch", type=int, default=2000, help="fixes a request")
    parser.add_argument("--warm", type=int, default=20, help="first requests not measured")
    parser.add_argument("--bus", choices=["memory", "kafka"], default="memory")
    checkouts.add_options(parser, "ingest")
    args = parser.parse_args(argv)

    from bench.common import bench_database, drop_database, drop_topics, header, wear
    from bench.fleet import Fleet, FleetSpec
    from bench.simulate import batches
    from services.common.database import Database
    from services.common.settings import Settings
    from services.registry import service as registry
    from services.registry.schemas import SupplierIn

    if args.smoke:
        args.tags, args.minutes, args.batch, args.warm = 20, 10.0, 50, 1
    turns = checkouts.in_turn(args.code, ROOT, args.rounds)
    settings = Settings()
    args.database = f"tagtrail_bench_ip_{uuid.uuid4().hex[:8]}"
    header(f"the ingest request path ({'in-process bus' if args.bus == 'memory' else 'Kafka'})")
    fleet = Fleet(FleetSpec(tags=args.tags, seed=4))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=args.minutes + 1)
    requests = list(batches(fleet, start, args.minutes, args.batch))
    bodies = [b"\n".join(lines) for lines in requests]
    print(
        f"{args.tags:,} tags; {sum(map(len, requests)):,} fixes in"
        f" {len(bodies):,} requests ({args.minutes:g} minutes of fleet time), the first"
        f" {args.warm} unmeasured; {args.bus} bus"
    )
    await bench_database(settings, args.database, fresh=True)
    figures: dict[Path, list[dict[str, Any]]] = {c: [] for c in turns}
    try:
        db = await Database.connect(settings.db, args.database, name="tagtrail benchmark")
        try:
            async with db.transaction() as session:
                supplier, _ = await registry.create_supplier(session, SupplierIn(name="bench"))
            async with db.pool.acquire() as conn:
                await wear(conn, fleet, supplier.id, start - timedelta(days=1))
        finally:
            await db.close()
        with tempfile.NamedTemporaryFile(suffix=".requests") as saved:
            pickle.dump(bodies, saved)
            saved.flush()
            for k, code in enumerate(turns):
                f = await asyncio.to_thread(
                    _measure, code, Path(saved.name), args, str(supplier.id)
                )
                figures[code].append(f)
                print(f"[{k + 1} of {len(turns)}: {code}] " + line(f))
    finally:
        await drop_database(settings, args.database)
        if args.bus == "kafka":
            await drop_topics(settings.kafka.bootstrap, args.database + ".")
    if len(turns) > 1:
        print("medians:")
        for code, runs in figures.items():
            us = float(np.median([r["cpu"] / r["fixes"] * 1e6 for r in runs]))
            print(f"  {code}: {us:.3f} µs of CPU a fix")
    return 0 if all(r["accepted"] == r["fixes"] for rs in figures.values() for r in rs) else 1


def line(f: dict[str, Any]) -> str:
    return (
        f"{f['fixes']:,} fixes ({f['accepted']:,} accepted): {f['cpu'] / f['fixes'] * 1e6:.3f} µs"
        f" of CPU a fix, {f['wall'] / f['fixes'] * 1e6:.3f} µs of wall time"
    )


def _child_args(argv: list[str]) -> argparse.Namespace:
    """A measurement's own process's arguments (from _measure)."""
    parser = argparse.ArgumentParser()
    for name in ("--child", "--database", "--supplier", "--bus"):
        parser.add_argument(name, required=True)
    parser.add_argument("--warm", type=int, required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    if "--child" in sys.argv:
        # Run by its path: the first entry is bench/, whose modules are not the code's,
        # and no module of bench/ is imported here: the code's bench/ may lack them.
        del sys.path[0]
        asyncio.run(_child(_child_args(sys.argv[1:])))
        raise SystemExit(0)
    raise SystemExit(asyncio.run(main()))
