"""`tagtrail run --demo`, as `make run` starts it: alerts appear within about a minute."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import httpx

from services.common.database import Database
from tests.conftest import eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
TAGTRAIL = str(Path(sys.executable).parent / "tagtrail")


async def test_the_demo_shows_crime_matches_and_an_exclusion_breach(
    database: str, db: Database
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TAGTRAIL_DB_NAME": database,
        "TAGTRAIL_PORT": str(port),
        "TAGTRAIL_CHECK_WATCHDOG_INTERVAL_S": "3600",
    }
    proc = await asyncio.create_subprocess_exec(
        TAGTRAIL,
        "run",
        "--demo",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        banner = ""
        while "manager token" not in banner:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "the demo exited before printing its banner"
            banner += line.decode()
        token = re.search(r"manager token:\s+(\S+)", banner)
        assert token is not None
        assert f"http://127.0.0.1:{port}" in banner
        headers = {"Authorization": f"Bearer {token.group(1)}"}
        # Keep reading what it prints, so a full pipe never stalls it.
        drain = asyncio.create_task(proc.stdout.read())

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def kinds() -> set[str]:
                r = await http.get("/v1/alerts", headers=headers)
                items: list[dict[str, Any]] = r.json()["items"]
                return {a["kind"] for a in items}

            found = await eventually(
                kinds, lambda k: k >= {"crime_match", "exclusion"}, within_s=120
            )
        assert found >= {"crime_match", "exclusion"}
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        if drain is not None:
            await drain
