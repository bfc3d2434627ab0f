"""End-to-end throughput: fixes in over HTTP, on the bus, stored, zone- and crime-checked,
against raw COPY into the same trail table as the ceiling, measured in the same run.

    python -m bench.throughput                # 2,000 tags, 10,000 zones, 1,000 crimes
    python -m bench.throughput --smoke        # a few of each: proves it still works

Starts `tagtrail run` (the whole pipeline in one process on the in-process bus, where
a 202 means stored and checked) against a database of its own, enrols the fleet, its
zones and crimes, then has the fleet simulator post a stretch of fleet time as fast as
the server takes it. Prints fixes a second end to end, the raw COPY rate of the same
number of fixes into trail_points, their ratio, and the peak memory of each process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import socket
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

from bench.common import bench_database, drop_database, header
from bench.fleet import Fleet, FleetSpec
from bench.pgcopy import COLUMNS, chunks, encode, upload_delays
from bench.simulate import batches, post, take
from services.common.auth import Role
from services.common.database import Database
from services.common.settings import Settings
from services.ingest.repository import Partitions
from services.registry import service as registry
from services.registry.schemas import SupplierIn

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mib(pid: int) -> float:
    """The most memory the process has held (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def enrol_fleet(db: Database, fleet: Fleet) -> tuple[str, str]:
    """Supplier, tags, subjects and who wears what, straight into the registry; returns
    the supplier's and an admin's tokens."""
    spec = fleet.spec
    async with db.transaction() as session:
        supplier, token = await registry.create_supplier(session, SupplierIn(name="throughput"))
        _, admin = await registry.create_user_token(session, Role.admin, "bench-admin")
    since = datetime.now(UTC) - timedelta(days=30)
    async with db.pool.acquire() as conn:
        subjects = [spec.subject_id(i) for i in range(spec.tags)]
        tags = [spec.tag_id(i) for i in range(spec.tags)]
        await conn.copy_records_to_table(
            "tags", records=[(t, supplier.id) for t in tags], columns=["id", "supplier_id"]
        )
        await conn.copy_records_to_table(
            "subjects",
            records=[
                (s, f"TP/{i:06d}", f"Throughput {i}", "medium") for i, s in enumerate(subjects)
            ],
            columns=["id", "reference", "display_name", "risk"],
        )
        await conn.copy_records_to_table(
            "tag_assignments",
            records=[(uuid.uuid4(), t, s, since) for t, s in zip(tags, subjects, strict=True)],
            columns=["id", "tag_id", "subject_id", "valid_from"],
        )
    return token, admin


async def add_zones_and_crimes(
    url: str, admin: str, fleet: Fleet, zones: int, crimes: int, start: datetime, minutes: float
) -> None:
    """Exclusion zones (victims' streets, 150 m) at random places in the area, each for
    one subject, and crimes at random places and times within the simulated stretch."""
    rng = random.Random(5)
    spec = fleet.spec
    headers = {"Authorization": f"Bearer {admin}"}
    r_m = spec.metro_radius_km * 1000

    def place() -> tuple[float, float]:
        x, y = rng.uniform(-r_m, r_m), rng.uniform(-r_m, r_m)
        lat, lon = fleet.to_latlon(np.array([x, y]))
        return float(lat), float(lon)

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        sem = asyncio.Semaphore(8)

        async def zone(i: int) -> None:
            lat, lon = place()
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
            at = start + timedelta(minutes=rng.uniform(0, minutes))
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


async def copy_ceiling(db: Database, fixes: int, tags: int) -> float:
    """Raw binary COPY of `fixes` fixes into trail_points (its indexes, no checks, no
    boxes): rows a second. Another fleet, on a day of its own, so nothing collides."""
    fleet = Fleet(FleetSpec(tags=tags, seed=9))
    day = datetime.now(UTC).date() - timedelta(days=40)
    d = fleet.day(day)
    n = min(fixes, len(d))
    keep = np.zeros(len(d), dtype=bool)
    keep[:n] = True
    part = take(d, keep)
    data = encode(
        part,
        [fleet.spec.tag_id(i) for i in range(tags)],
        [fleet.spec.subject_id(i) for i in range(tags)],
        upload_delays(np.random.default_rng(1), n),
    )
    async with db.pool.acquire() as conn:
        await Partitions().ensure(conn, [day])
        t0 = time.perf_counter()
        await conn.copy_to_table(
            "trail_points", source=chunks(data), columns=list(COLUMNS), format="binary"
        )
        return n / (time.perf_counter() - t0)


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


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--tags", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=30.0, help="fleet time to post")
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--crimes", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2000, help="fixes a request")
    parser.add_argument("--smoke", action="store_true", help="20 tags, 10 minutes, 50 zones")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tags, args.minutes, args.zones, args.crimes = 20, 10.0, 50, 10
    settings = Settings()
    name = f"tagtrail_bench_tp_{uuid.uuid4().hex[:8]}"
    header("end-to-end throughput (in-process bus)")
    await bench_database(settings, name, fresh=True)
    db = await Database.connect(settings.db, name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TAGTRAIL_DB_NAME": name, "TAGTRAIL_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv/bin/tagtrail"),
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        fleet = Fleet(FleetSpec(tags=args.tags, seed=4))
        supplier, admin = await enrol_fleet(db, fleet)
        await wait_ready(url, proc)
        start = datetime.now(UTC) - timedelta(minutes=args.minutes + 1)
        t0 = time.perf_counter()
        await add_zones_and_crimes(url, admin, fleet, args.zones, args.crimes, start, args.minutes)
        print(
            f"fleet: {args.tags:,} tags; {args.zones:,} exclusion zones and {args.crimes:,}"
            f" crimes added in {time.perf_counter() - t0:.0f} s"
        )
        bodies = list(batches(fleet, start, args.minutes, args.batch))
        t0 = time.perf_counter()
        sent = await post(url, supplier, iter(bodies), concurrency=args.concurrency)
        took = time.perf_counter() - t0
        async with db.pool.acquire() as conn:
            stored = await conn.fetchval("select count(*) from trail_points")
            alerts = await conn.fetchval("select count(*) from alerts")
        rate = sent.fixes / took
        lat = np.percentile(sent.latencies, [50, 99]) * 1000
        print(
            f"end to end: {sent.fixes:,} fixes in {took:.1f} s = {rate:,.0f} fixes/s"
            f" (accepted {sent.accepted:,}, stored {stored:,}, rejected {sent.rejected},"
            f" failed requests {sent.failures}); {alerts} alerts;"
            f" request p50 {lat[0]:.0f} ms p99 {lat[1]:.0f} ms ({args.batch} fixes each)"
        )
        ceiling = await copy_ceiling(db, sent.fixes, args.tags)
        print(f"raw COPY into trail_points: {ceiling:,.0f} fixes/s; ratio {rate / ceiling:.3f}")
        print(
            f"peak memory: tagtrail run {peak_rss_mib(proc.pid):.0f} MiB,"
            f" this benchmark {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
        ok = sent.failures == 0 and stored == sent.accepted
        if not ok:
            print("FAILED: requests failed, or accepted fixes were not all stored")
        return 0 if ok else 1
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        await db.close()
        await drop_database(settings, name)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
