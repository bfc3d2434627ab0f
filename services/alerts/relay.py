"""The alert-feed relay: publishes the live feed, in order, on the Kafka alert-feed
topic for downstream case-management systems. The feed row is written in the same
transaction as the alert, and the relay's position moves only after Kafka has the
messages, so nothing is lost; after a crash a stretch may be published again, which
consumers recognise by seq."""

from __future__ import annotations

from services.alerts import repository
from services.alerts.schemas import AlertFeedMessage
from services.common.bus import Bus
from services.common.database import Database
from services.common.periodic import Periodic
from services.topics import ALERT_FEED

NAME = "kafka-alert-feed"


class FeedRelay:
    def __init__(self, db: Database, bus: Bus, interval_s: float = 1.0) -> None:
        self.db = db
        self.bus = bus
        self._loop = Periodic("alert-feed-relay", self.relay, interval_s, first_wait=False)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def relay(self, limit: int = 500) -> int:
        """Publishes the next stretch of the feed; returns how many events."""
        async with self.db.transaction() as session:
            position = await repository.relay_position(session, NAME)
            events = await repository.feed_after(session, position.seq, None, limit)
            if not events:
                return 0
            await self.bus.publish(
                ALERT_FEED,
                [
                    (
                        str(e.payload.get("alert", {}).get("subject_id", e.alert_id)),
                        AlertFeedMessage(seq=e.seq, event=e.event, alert=e.payload["alert"]),
                    )
                    for e in events
                ],
            )
            position.seq = events[-1].seq
        return len(events)
