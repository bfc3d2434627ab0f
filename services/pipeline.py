"""Assembles a process: database, bus, and whichever worker roles it runs."""

from __future__ import annotations

import logging
from collections.abc import Collection
from enum import StrEnum

from services.alerts.delivery import AlertSender
from services.alerts.escalation import Escalator
from services.alerts.relay import FeedRelay
from services.alerts.worker import GROUP as DISPATCH_GROUP
from services.alerts.worker import Dispatcher
from services.common.bus import Bus
from services.common.bus.kafka import KafkaBus
from services.common.bus.memory import MemoryBus
from services.common.database import Database
from services.common.deadletters import GROUP as DEAD_LETTER_GROUP
from services.common.deadletters import DeadLetterStore
from services.common.runtime import Runtime
from services.common.settings import Settings
from services.ingest.worker import GROUP as STORE_GROUP
from services.ingest.worker import StoreWorker
from services.topics import (
    ALERTS,
    ALL,
    CRIMES,
    DEAD_LETTER,
    DEVICE_EVENTS,
    POINTS,
    STORED,
    STORED_EVENTS,
)
from services.trails.retention import Retention
from services.zones.watch import GROUP as CONDITIONS_GROUP
from services.zones.watch import DeviceWatch
from services.zones.worker import CRIMES_GROUP, ZONES_GROUP, CrimeMatcher, ZoneChecker

log = logging.getLogger(__name__)


class Role(StrEnum):
    store = "store"
    zones = "zones"
    crimes = "crimes"
    dispatch = "dispatch"


ALL_ROLES = frozenset(Role)


def make_bus(settings: Settings, kind: str) -> Bus:
    if kind == "kafka":
        return KafkaBus(settings.kafka, DEAD_LETTER, ALL, lanes=settings.bus.lanes)
    return MemoryBus(DEAD_LETTER, lanes=settings.bus.lanes)


class Pipeline:
    """The resources and workers of one process; start() then stop()."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus: str,
        roles: Collection[Role] = (),
        database: str | None = None,
        group_suffix: str = "",
        name: str = "tagtrail",
    ) -> None:
        self.settings = settings
        self.bus_kind = bus
        self.roles = frozenset(roles)
        self.database = database
        # Lets tests run isolated consumer groups on one shared broker.
        self.group_suffix = group_suffix
        # The database connections' application_name: which process they serve.
        self.name = name
        self._runtime: Runtime | None = None
        self._store: StoreWorker | None = None
        self._watch: DeviceWatch | None = None
        self._sender: AlertSender | None = None
        self._escalator: Escalator | None = None
        self._relay: FeedRelay | None = None
        self._retention: Retention | None = None
        self._matcher: CrimeMatcher | None = None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the pipeline is not started")
        return self._runtime

    async def start(self) -> Runtime:
        db = await Database.connect(self.settings.db, self.database, name=self.name)
        bus = make_bus(self.settings, self.bus_kind)
        batch = self.settings.bus.batch_cap(self.bus_kind)
        sfx = self.group_suffix
        if Role.store in self.roles:
            self._store = StoreWorker(db, bus)
            await self._store.start()
            self._retention = Retention(db, self.settings.retention)
            bus.subscribe(STORE_GROUP + sfx, POINTS, self._store.handle, max_batch=batch)
            bus.subscribe(
                STORE_GROUP + sfx, DEVICE_EVENTS, self._store.handle_events, max_batch=batch
            )
            letters = DeadLetterStore(db)
            bus.subscribe(DEAD_LETTER_GROUP + sfx, DEAD_LETTER, letters.handle, max_batch=batch)
        if Role.zones in self.roles:
            checker = ZoneChecker(db, bus, self.settings.check)
            await checker.start()
            bus.subscribe(
                ZONES_GROUP + sfx, STORED, checker.handle, max_batch=batch, after=STORE_GROUP + sfx
            )
            self._watch = DeviceWatch(db, bus, self.settings.check)
            bus.subscribe(
                CONDITIONS_GROUP + sfx, STORED_EVENTS, self._watch.handle, max_batch=batch
            )
        if Role.crimes in self.roles:
            matcher = self._matcher = CrimeMatcher(db, bus, self.settings.check)
            bus.subscribe(CRIMES_GROUP + sfx, CRIMES, matcher.handle_crimes, max_batch=50)
        if Role.dispatch in self.roles:
            dispatcher = Dispatcher(db)
            bus.subscribe(DISPATCH_GROUP + sfx, ALERTS, dispatcher.handle, max_batch=batch)
            self._sender = AlertSender(db, self.settings.alerts, self.settings.smtp)
            self._escalator = Escalator(db, self.settings.alerts)
            if self.bus_kind == "kafka":
                self._relay = FeedRelay(db, bus)
        try:
            await bus.start()
        except BaseException:
            await db.close()
            raise
        self._runtime = Runtime(self.settings, db, bus)
        if self._watch is not None:
            await self._watch.start()
        if self._sender is not None:
            await self._sender.start()
        if self._escalator is not None:
            await self._escalator.start()
        if self._relay is not None:
            await self._relay.start()
        if self._retention is not None:
            await self._retention.start()
        if self._matcher is not None:
            self._matcher.start()
        log.info("pipeline started: bus=%s roles=%s", self.bus_kind, sorted(self.roles))
        return self._runtime

    async def stop(self) -> None:
        if self._runtime is None:
            return
        if self._watch is not None:
            await self._watch.stop()
        if self._sender is not None:
            await self._sender.stop()
        if self._escalator is not None:
            await self._escalator.stop()
        if self._relay is not None:
            await self._relay.stop()
        if self._retention is not None:
            await self._retention.stop()
        if self._matcher is not None:
            await self._matcher.stop()
        await self._runtime.bus.stop()
        if self._store is not None:
            await self._store.stop()
        await self._runtime.db.close()
        self._runtime = None
