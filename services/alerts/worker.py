"""The alert dispatcher: takes alert events off the bus into the alert store."""

from __future__ import annotations

from services.alerts import repository
from services.alerts.schemas import AlertMessage
from services.common.database import Database
from services.common.metrics import ALERTS_OPENED

GROUP = "tagtrail-dispatch"


class Dispatcher:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def handle(self, messages: list[AlertMessage]) -> None:
        opened: list[AlertMessage] = []
        async with self.db.transaction() as session:
            for m in messages:
                if await repository.apply(session, m):
                    opened.append(m)
        for m in opened:
            ALERTS_OPENED.labels(m.kind.value).inc()
