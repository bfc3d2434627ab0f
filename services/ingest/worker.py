"""The store worker: writes fixes from the points topic into trail_points with COPY."""

from __future__ import annotations

import logging

from services.common.bus import Bus
from services.common.database import Database
from services.common.metrics import FIX_CONFLICTS, FIXES_STORED
from services.common.periodic import Periodic
from services.common.timeutil import utcnow
from services.ingest import repository
from services.ingest.batch import FixBatch
from services.ingest.schemas import DeviceEvent
from services.topics import STORED, STORED_EVENTS

log = logging.getLogger(__name__)

GROUP = "tagtrail-store"
# Partitions kept ready ahead of today, so live fixes never wait on DDL.
DAYS_AHEAD = 7


class StoreWorker:
    def __init__(self, db: Database, bus: Bus) -> None:
        self.db = db
        self.bus = bus
        self.partitions = repository.Partitions()
        self._maintenance = Periodic("partitions", self._keep_ahead, 3600)

    async def start(self) -> None:
        await self._keep_ahead()
        self._maintenance.start()

    async def stop(self) -> None:
        await self._maintenance.stop()

    async def handle(self, batches: list[FixBatch]) -> None:
        fixes = FixBatch.concat(batches)
        async with self.db.pool.acquire() as conn:
            result = await repository.store_fixes(conn, self.partitions, fixes)
        FIXES_STORED.inc(result.inserted)
        FIX_CONFLICTS.inc(result.conflicts)
        if result.conflicts:
            log.warning("%d conflicting duplicate fix(es) set aside", result.conflicts)
        # All of them, not only the ones inserted just now: if we died after the commit
        # last time, this redelivery is the only way the checks hear of them.
        await self.bus.publish_batch(STORED, fixes)

    async def handle_events(self, events: list[DeviceEvent]) -> None:
        async with self.db.pool.acquire() as conn:
            await repository.store_device_events(conn, events)
        await self.bus.publish(STORED_EVENTS, [(e.tag_id, e) for e in events])

    async def _keep_ahead(self) -> None:
        async with self.db.pool.acquire() as conn:
            await self.partitions.ensure_ahead(conn, utcnow().date(), DAYS_AHEAD)
