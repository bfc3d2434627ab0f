"""Production shape: the API and each worker role in its own process, on real Kafka,
started with the real `tagtrail` command."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.database import Database
from services.common.settings import Settings
from services.common.timeutil import utcnow
from tests.conftest import enrol, eventually, fix, free_port, square

ROOT = Path(__file__).resolve().parent.parent
TAGTRAIL = str(Path(sys.executable).parent / "tagtrail")
ZONE_CENTRE = (52.5900, -0.2600)


@pytest.fixture
async def processes(settings: Settings, database: str, db: Database) -> AsyncIterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "TAGTRAIL_DB_NAME": database,
        "TAGTRAIL_KAFKA_TOPIC_PREFIX": f"p{uuid.uuid4().hex[:8]}.",
        "TAGTRAIL_KAFKA_PARTITIONS": "2",
        "TAGTRAIL_PORT": str(port),
        "TAGTRAIL_CHECK_WATCHDOG_INTERVAL_S": "3600",
    }
    commands = [["api"], *(["worker", role] for role in ("store", "zones", "crimes", "dispatch"))]
    procs = []
    for args in commands:
        procs.append(
            await asyncio.create_subprocess_exec(
                TAGTRAIL,
                *args,
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        )
    url = f"http://127.0.0.1:{port}"
    logs: list[list[bytes]] = [[] for _ in procs]

    async def drain(k: int) -> None:
        stream = procs[k].stderr
        assert stream is not None
        while line := await stream.readline():
            logs[k].append(line)

    readers = [asyncio.create_task(drain(k)) for k in range(len(procs))]

    async def ready() -> int:
        for k, p in enumerate(procs):
            if p.returncode is not None:
                err = b"".join(logs[k]).decode()
                raise AssertionError(f"a role exited early:\n{err[-3000:]}")
        # Every worker started (a SIGTERM before that is the default one: killed).
        if not all(any(b"pipeline started" in line for line in log) for log in logs):
            return 0
        try:
            async with httpx.AsyncClient(base_url=url) as http:
                return (await http.get("/readyz")).status_code
        except httpx.TransportError:
            return 0

    try:
        await eventually(ready, lambda status: status == 200, within_s=60)
        yield url
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 30) for p in procs]
        await asyncio.gather(*readers)
        assert codes == [0] * len(procs), codes


async def test_each_role_in_its_own_process(processes: str, db: Database) -> None:
    async with httpx.AsyncClient(base_url=processes, timeout=30) as http:
        world = await enrol(http, db, n=1, prefix="PROC")
        zone = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [square(*ZONE_CENTRE, 120)]},
            "properties": {"subject_id": str(world.subjects[0]), "kind": "exclusion", "name": "z"},
        }
        assert (await http.post("/v1/zones", json=zone, headers=world.admin)).status_code == 201
        start = utcnow() - timedelta(minutes=10)
        away = (ZONE_CENTRE[0] + 0.01, ZONE_CENTRE[1])
        trail = [
            fix(start + timedelta(minutes=i), *p) for i, p in enumerate([away, ZONE_CENTRE, away])
        ]
        r = await http.post(
            "/v1/fixes", json={"tag_id": world.tags[0], "fixes": trail}, headers=world.supplier
        )
        assert r.json()["accepted"] == 3

        async def alerts() -> list[dict[str, Any]]:
            return (await http.get("/v1/alerts", headers=world.manager)).json()["items"]

        items = await eventually(alerts, lambda xs: len(xs) == 1 and xs[0]["ended_at"] is not None)
        assert items[0]["kind"] == "exclusion"
        async with db.pool.acquire() as conn:
            assert await conn.fetchval("select count(*) from trail_points") == 3
