"""Retention: drops expired trail partitions whole, deletes expired device events,
crimes and matching runs, and writes what it removed to the audit log."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from services.common.database import Database
from services.common.periodic import Periodic
from services.common.settings import RetentionSettings
from services.common.timeutil import utcnow
from services.ingest import repository as trail_store
from services.trails import repository
from services.trails.models import AuditEntry
from services.zones import repository as zones

SYSTEM_ID = uuid.uuid5(uuid.NAMESPACE_URL, "tagtrail:retention")


class Retention:
    def __init__(self, db: Database, settings: RetentionSettings) -> None:
        self.db = db
        self.settings = settings
        self._loop = Periodic("retention", lambda: self.run(utcnow()), settings.interval_s)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def run(self, now: datetime) -> dict[str, Any]:
        fixes_cutoff = now - timedelta(days=self.settings.fixes_days)
        crimes_cutoff = now - timedelta(days=self.settings.crimes_days)
        runs_cutoff = now - timedelta(days=self.settings.match_runs_days)
        async with self.db.transaction() as session:
            async with self.db.pool.acquire() as conn, conn.transaction():
                partitions = await trail_store.drop_partitions_before(conn, fixes_cutoff.date())
                events = await trail_store.delete_device_events_before(conn, fixes_cutoff)
            runs = await zones.delete_runs_before(session, runs_cutoff)
            crimes = await zones.delete_crimes_ended_before(session, crimes_cutoff)
            removed: dict[str, Any] = {
                "trail_partitions": partitions,
                "device_events": events,
                "crimes": crimes,
                "match_runs": runs,
                "cutoffs": {
                    "fixes": fixes_cutoff.isoformat(),
                    "crimes": crimes_cutoff.isoformat(),
                    "match_runs": runs_cutoff.isoformat(),
                },
            }
            if partitions or events or crimes or runs:
                await repository.add(
                    session,
                    AuditEntry(
                        actor_id=SYSTEM_ID,
                        actor_name="tagtrail retention",
                        role="system",
                        action="retention",
                        parameters=removed,
                        reason="retention period expired",
                        result_size=len(partitions) + events + crimes + runs,
                    ),
                )
        return removed
