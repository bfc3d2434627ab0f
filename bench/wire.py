"""Fixes on the wire: the CPU a fix of writing the points topics' messages and of reading
them back, as the API and the store write them and the store and the zone checker read
them on Kafka.

    python -m bench.wire                              # this checkout
    python -m bench.wire --code A --code B --rounds 4 # checkouts side by side
    python -m bench.wire --smoke                      # a few of each: proves it still works

The fleet of bench/fleet.py (2,000 tags) over --minutes of fleet time, made into
requests as the simulator posts them (2,000 fixes each, late bursts out of order), each
request's fixes a batch as ingest makes it, split as a publish splits it: a message a
partition of the points topic (TAGTRAIL_KAFKA_PARTITIONS, by the bus's own partitioner),
at most 2,000 fixes each. Each checkout's code, in a process of its own (its directory
first on the path), encodes every message (`FixBatch.encode`), decodes every payload
(`FixBatch.decode`) and joins the decoded messages as a consumer's handler takes them
(`FixBatch.concat`, runs of up to 32,000 fixes; since the twenty-sixth session), and
prints its own CPU time (user and system) a fix for each, and the bytes a fix on the
wire. No database and no broker: what is measured is the
encoding alone, which end to end is a few per cent of the pipeline and lost in the
machine's drift (docs/benchmarks.md, twenty-first session).
"""

from __future__ import annotations

import argparse
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
# A handler's batch on Kafka (TAGTRAIL_BUS_MAX_BATCH's default there).
JOIN_FIXES = 32_000


def _child(saved: str) -> None:
    """One measurement, in the code first on the path: prints its figures as JSON."""
    from services.common import collector
    from services.ingest.batch import FixBatch

    collector.tune()
    parts: list[dict[str, Any]] = pickle.loads(Path(saved).read_bytes())
    batches = [FixBatch(**p) for p in parts]
    collector.freeze()
    fixes = sum(len(b) for b in batches)
    c0 = time.process_time()
    payloads = [b.encode() for b in batches]
    c1 = time.process_time()
    decoded = [FixBatch.decode(p) for p in payloads]
    c2 = time.process_time()
    # Joined as a consumer's handler takes them: runs of messages of up to JOIN_FIXES.
    run: list[Any] = []
    size = 0
    for batch in decoded:
        if run and size + len(batch) > JOIN_FIXES:
            FixBatch.concat(run)
            run, size = [], 0
        run.append(batch)
        size += len(batch)
    FixBatch.concat(run)
    c3 = time.process_time()
    same = all(
        np.array_equal(a.lat, b.lat) and a.tag_ids() == b.tag_ids()
        for a, b in zip(batches, decoded, strict=True)
    )
    print(
        orjson.dumps(
            {
                "fixes": fixes,
                "messages": len(payloads),
                "bytes": sum(map(len, payloads)),
                "encode": c1 - c0,
                "decode": c2 - c1,
                "join": c3 - c2,
                "same": same,
            }
        ).decode()
    )


def requests_as_parts(
    lines: list[list[bytes]], partitions: int, max_rows: int
) -> list[dict[str, Any]]:
    """Each request's fixes as ingest makes them a batch (columns: tags and subjects
    listed once, a subject a tag), split a message a partition as a publish splits it;
    the parts as FixBatch's fields (plain lists and numpy arrays, which every checkout's
    FixBatch takes)."""
    from asyncpg.pgproto.pgproto import UUID as PgUUID

    from services.common.bus.base import lane_parts
    from services.common.bus.kafka import KeyPartitioner
    from services.ingest.pgcopy import SOURCES
    from services.ingest.schemas import FixSource

    everyone = list(range(partitions))
    partitioner = KeyPartitioner()
    gps = SOURCES.index(FixSource.gps)
    received = datetime.now(UTC).timestamp()
    parts: list[dict[str, Any]] = []
    for request in lines:
        fixes = [orjson.loads(line) for line in request]
        tags = sorted({f["tag_id"] for f in fixes})
        code = {t: i for i, t in enumerate(tags)}
        tag = np.array([code[f["tag_id"]] for f in fixes], dtype=np.int64)
        columns = {
            "tags": tags,
            "tag": tag,
            # As ingest holds them: asyncpg's UUIDs, read from the registry (until the
            # twenty-eighth session, uuid.UUID's, which ingest never holds).
            "subjects": [PgUUID(uuid.uuid5(uuid.NAMESPACE_URL, t).bytes) for t in tags],
            "subject": tag,
            "ts": np.array([datetime.fromisoformat(f["ts"]).timestamp() for f in fixes]),
            "received_at": np.full(len(fixes), received),
            "lat": np.array([f["lat"] for f in fixes], dtype=np.float64),
            "lon": np.array([f["lon"] for f in fixes], dtype=np.float64),
            "accuracy_m": np.array([f["accuracy_m"] for f in fixes], dtype=np.float64),
            "speed_mps": np.array([f.get("speed_mps", np.nan) for f in fixes], dtype=float),
            "heading_deg": np.full(len(fixes), np.nan),
            "source": np.full(len(fixes), gps, dtype=np.int64),
            "sats": np.full(len(fixes), -1, dtype=np.int64),
            "hdop": np.full(len(fixes), np.nan),
        }
        lane = np.array(partitioner.lanes([t.encode() for t in tags], everyone))[tag]
        for rows in lane_parts(lane, max_rows):
            parts.append(
                {k: v[rows] if isinstance(v, np.ndarray) else v for k, v in columns.items()}
            )
    return parts


def main(argv: list[str] | None = None) -> int:
    # Not at the top: a measurement's own process runs another checkout's code.
    from bench import checkouts

    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__)
    parser.add_argument("--tags", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=180.0, help="fleet time made requests")
    parser.add_argument("--batch", type=int, default=2000, help="fixes a request")
    checkouts.add_options(parser, "encoding")
    args = parser.parse_args(argv)

    from bench.common import header
    from bench.fleet import Fleet, FleetSpec
    from bench.simulate import batches
    from services.common.settings import Settings
    from services.topics import POINTS

    if args.smoke:
        args.tags, args.minutes, args.batch = 20, 10.0, 50
    turns = checkouts.in_turn(args.code, ROOT, args.rounds)
    partitions = Settings().kafka.partitions
    header("fixes on the wire (the points topics' messages)")
    fleet = Fleet(FleetSpec(tags=args.tags, seed=4))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=args.minutes + 1)
    lines = list(batches(fleet, start, args.minutes, args.batch))
    parts = requests_as_parts(lines, partitions, POINTS.max_rows)
    print(
        f"{args.tags:,} tags; {sum(map(len, lines)):,} fixes in {len(lines):,} requests"
        f" ({args.minutes:g} minutes of fleet time), {len(parts):,} messages over"
        f" {partitions} partitions"
    )
    figures: dict[Path, list[dict[str, Any]]] = {c: [] for c in turns}
    with tempfile.NamedTemporaryFile(suffix=".parts") as saved:
        pickle.dump(parts, saved)
        saved.flush()
        for k, code in enumerate(turns):
            f = checkouts.measure(Path(__file__), code, [saved.name], os.environ)
            figures[code].append(f)
            print(f"[{k + 1} of {len(turns)}: {code}] " + line(f))
    if len(turns) > 1:
        print("medians (µs of CPU a fix):")
        for code, runs in figures.items():
            enc = float(np.median([r["encode"] / r["fixes"] * 1e6 for r in runs]))
            dec = float(np.median([r["decode"] / r["fixes"] * 1e6 for r in runs]))
            join = float(np.median([r.get("join", np.nan) / r["fixes"] * 1e6 for r in runs]))
            print(f"  {code}: encode {enc:.3f}, decode {dec:.3f}, join {join:.3f}")
    return 0 if all(r["same"] for rs in figures.values() for r in rs) else 1


def line(f: dict[str, Any]) -> str:
    n = f["fixes"]
    return (
        f"{n:,} fixes in {f['messages']:,} messages, {f['bytes'] / n:.0f} bytes a fix:"
        f" encode {f['encode'] / n * 1e6:.3f} µs a fix, decode {f['decode'] / n * 1e6:.3f},"
        f" join {f.get('join', np.nan) / n * 1e6:.3f}"
        + ("" if f["same"] else "; DECODED FIXES DIFFER")
    )


if __name__ == "__main__":
    if "--child" in sys.argv:
        # Run by its path: the first entry is bench/, whose modules are not the code's,
        # and no module of bench/ is imported here: the code's bench/ may lack them.
        del sys.path[0]
        _child(sys.argv[sys.argv.index("--child") + 1])
        raise SystemExit(0)
    raise SystemExit(main())
