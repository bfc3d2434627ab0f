"""The fleet simulator: the fleet of bench/fleet.py reported to a running tagtrail over
HTTP the way a tag supplier's platform does it, NDJSON batches on /v1/fixes/stream with
many tags' fixes in each, most within seconds of being taken, and the fixes of tags that
lost their phone link held back and sent in one late burst, out of order with the rest.

    python -m bench.simulate --url http://127.0.0.1:8000 --token tt_... --enrol-token tt_...

With --enrol-token (an admin's), the fleet's supplier, tags and subjects are enrolled
first through the API (the supplier token printed is the one to post with), so it can
also load demo data into any tagtrail. Fleet time runs from --start (default: now minus
--minutes, so nothing is in the future) as fast as --rate allows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import orjson

from bench.fleet import DayOfFixes, Fleet, FleetSpec


@dataclass
class Sent:
    fixes: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    requests: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list)
    # Why requests failed: the error's type, or the status and the start of the answer.
    reasons: Counter[str] = field(default_factory=Counter)


def window(
    fleet: Fleet, start: datetime, end: datetime, lag: timedelta = timedelta(0)
) -> DayOfFixes:
    """The fleet's fixes between start and end, in time order. With a lag, what the
    fleet did that much earlier, stamped as if it happened between start and end (a
    benchmark replays the same fleet time whenever it runs)."""
    if lag:
        d = window(fleet, start - lag, end - lag)
        return replace(d, ts=d.ts + lag.total_seconds())
    parts = []
    day = start.date()
    while datetime.combine(day, datetime.min.time(), UTC) < end:
        d = fleet.day(day)
        keep = (d.ts >= start.timestamp()) & (d.ts < end.timestamp())
        parts.append(d if keep.all() else take(d, keep))
        day += timedelta(days=1)
    return DayOfFixes(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in DayOfFixes.__dataclass_fields__)
    )


def take(d: DayOfFixes, keep: np.ndarray) -> DayOfFixes:  # type: ignore[type-arg]
    return DayOfFixes(*(getattr(d, f)[keep] for f in DayOfFixes.__dataclass_fields__))


def batches(
    fleet: Fleet,
    start: datetime,
    minutes: float,
    batch_fixes: int = 2000,
    offline_share: float = 0.03,
    seed: int = 3,
    lag: timedelta = timedelta(0),
) -> Iterator[list[bytes]]:
    """NDJSON lines in the order the supplier sends them, `batch_fixes` a request. Every
    ten minutes of fleet time, `offline_share` of the tags lose their link: that block's
    fixes of theirs go in a burst at the end of the next block, newest first. `lag` as
    for window()."""
    rng = np.random.default_rng(seed)
    end = start + timedelta(minutes=minutes)
    d = window(fleet, start, end, lag)
    block = 600.0
    first = start.timestamp()
    held: list[int] = []
    pending: list[int] = []
    for b0 in np.arange(first, end.timestamp(), block):
        offline = rng.random(fleet.spec.tags) < offline_share
        idx = np.flatnonzero((d.ts >= b0) & (d.ts < b0 + block))
        late = offline[d.tag[idx]]
        now = list(idx[~late])
        burst, held = held, list(idx[late][::-1])
        pending.extend(now + burst)
        while len(pending) >= batch_fixes:
            yield [_line(fleet, d, i) for i in pending[:batch_fixes]]
            pending = pending[batch_fixes:]
    pending.extend(held)
    for i in range(0, len(pending), batch_fixes):
        yield [_line(fleet, d, k) for k in pending[i : i + batch_fixes]]


def _line(fleet: Fleet, d: DayOfFixes, i: int) -> bytes:
    # A copy of its own size: orjson (3.12 on) hands back its whole write buffer, 4 KiB
    # however short the line, and a whole day's lines, held at once by the throughput
    # benchmark, took 11.7 GB rather than 0.7 (docs/benchmarks.md, twenty-fourth session).
    return bytes(
        memoryview(
            orjson.dumps(
                {
                    "tag_id": fleet.spec.tag_id(int(d.tag[i])),
                    "ts": datetime.fromtimestamp(float(d.ts[i]), UTC).isoformat(),
                    "lat": round(float(d.lat[i]), 7),
                    "lon": round(float(d.lon[i]), 7),
                    "accuracy_m": float(d.accuracy_m[i]),
                    "speed_mps": float(d.speed_mps[i]),
                }
            )
        )
    )


async def post(
    url: str,
    token: str,
    bodies: Iterator[list[bytes]],
    concurrency: int = 4,
    rate: float | None = None,
) -> Sent:
    """Posts every batch, `concurrency` requests at once, at most `rate` fixes a second."""
    sent = Sent()
    queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue(maxsize=concurrency * 2)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
    began = time.perf_counter()

    # A client of one kept-open connection for each request in flight: one client
    # pooling them spent 2.5 times the CPU a request (2.8 ms against 1.1 for 2,000
    # fixes, posted to a server that only reads them), most of it its pool's
    # bookkeeping, which visits every connection for every request (docs/benchmarks.md,
    # twenty-third session). The benchmark shares the cores with the servers it
    # measures. One TLS context for them all: each client would load the certificates.
    tls = httpx.create_ssl_context()

    async def worker() -> None:
        async with httpx.AsyncClient(
            timeout=120, verify=tls, limits=httpx.Limits(max_connections=1)
        ) as client:
            while (lines := await queue.get()) is not None:
                await send(client, lines)

    async def send(client: httpx.AsyncClient, lines: list[bytes]) -> None:
        t0 = time.perf_counter()
        try:
            r = await client.post(
                f"{url}/v1/fixes/stream", content=b"\n".join(lines), headers=headers
            )
        except httpx.HTTPError as exc:
            sent.failures += 1
            sent.reasons[type(exc).__name__] += 1
            return
        sent.latencies.append(time.perf_counter() - t0)
        sent.requests += 1
        if r.status_code != 202:
            sent.failures += 1
            sent.reasons[f"{r.status_code} {r.text[:200]}"] += 1
            return
        answer = r.json()
        sent.accepted += answer["accepted"]
        sent.duplicates += answer["duplicates"]
        sent.rejected += len(answer["rejected"])

    # In a task group: a worker that fails on anything else (an answer that is not what
    # the API says it sends) fails the whole post, rather than leaving the queue full and
    # this loop waiting on it for ever.
    async with asyncio.TaskGroup() as workers:
        for _ in range(concurrency):
            workers.create_task(worker())
        for lines in bodies:
            sent.fixes += len(lines)
            if rate:
                ahead = sent.fixes / rate - (time.perf_counter() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await queue.put(lines)
        for _ in range(concurrency):
            await queue.put(None)
    return sent


async def enrol(url: str, admin_token: str, fleet: Fleet) -> str:
    """The fleet's supplier, tags and subjects through the API; returns the supplier's
    token."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    spec = fleet.spec
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        r = await client.post("/v1/suppliers", json={"name": f"simulator-{spec.seed}"})
        r.raise_for_status()
        supplier = r.json()
        since = (datetime.now(UTC) - timedelta(days=400)).isoformat()
        for i in range(spec.tags):
            tag = spec.tag_id(i)
            r = await client.post("/v1/tags", json={"tag_id": tag, "supplier_id": supplier["id"]})
            r.raise_for_status()
            r = await client.post(
                "/v1/subjects",
                json={"reference": f"SIM/{spec.seed}/{i:06d}", "display_name": f"Sim {i}"},
            )
            r.raise_for_status()
            r = await client.post(
                f"/v1/subjects/{r.json()['id']}/tags", json={"tag_id": tag, "valid_from": since}
            )
            r.raise_for_status()
    return str(supplier["token"])


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", help="a supplier token (or use --enrol-token)")
    parser.add_argument("--enrol-token", help="an admin token: enrol the fleet first")
    parser.add_argument("--tags", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--start", type=datetime.fromisoformat, default=None)
    parser.add_argument("--rate", type=float, default=None, help="fixes a second at most")
    parser.add_argument("--batch", type=int, default=2000, help="fixes a request")
    args = parser.parse_args(argv)
    fleet = Fleet(FleetSpec(tags=args.tags, seed=args.seed))
    token = args.token
    if args.enrol_token:
        token = await enrol(args.url, args.enrol_token, fleet)
        print(f"enrolled {args.tags} tags; supplier token: {token}")
    if not token:
        parser.error("give --token or --enrol-token")
    start = args.start or datetime.now(UTC) - timedelta(minutes=args.minutes, seconds=5)
    t0 = time.perf_counter()
    sent = await post(
        args.url, token, batches(fleet, start, args.minutes, args.batch), rate=args.rate
    )
    took = time.perf_counter() - t0
    print(
        f"posted {sent.fixes:,} fixes in {sent.requests} requests, {took:.1f} s"
        f" ({sent.fixes / took:,.0f} fixes/s): accepted {sent.accepted:,},"
        f" duplicates {sent.duplicates}, rejected {sent.rejected}, failed requests"
        f" {sent.failures}"
    )
    return 0 if sent.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
