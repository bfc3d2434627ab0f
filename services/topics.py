"""The bus topics and the message model each carries; keys are tag ids (or subject ids)."""

from __future__ import annotations

from typing import Any

from services.alerts.schemas import AlertFeedMessage, AlertMessage
from services.common.bus import BatchTopic, Topic
from services.common.bus.messages import DeadLetter
from services.ingest.batch import FixBatch, FixPackedMessage
from services.ingest.schemas import DeviceEvent
from services.zones.schemas import CrimeMessage

# Fixes a batch a message, as columns of bytes (services/ingest/batch.py).
POINTS = BatchTopic("points", FixPackedMessage, decoder=FixBatch.decode)
# Fixes once they are in trail_points: what the zone checker works from, so the trail it
# reads back always holds every fix it has been told about. The store publishes every
# fix it took from the points topic; on Kafka these are read from the points topic as
# the store commits it, not written again (BatchTopic.stands_for).
STORED = BatchTopic("stored-points", FixPackedMessage, decoder=FixBatch.decode, stands_for=POINTS)
DEVICE_EVENTS = Topic("device-events", DeviceEvent, packed=True)
STORED_EVENTS = Topic("stored-device-events", DeviceEvent, packed=True)
CRIMES = Topic("crimes", CrimeMessage, packed=True)
ALERTS = Topic("alerts", AlertMessage, packed=True)
# Read by operators and by other systems: one message a record.
DEAD_LETTER = Topic("dead-letter", DeadLetter)
# Filed alert events for downstream systems, relayed from the live feed (Kafka only).
ALERT_FEED = Topic("alert-feed", AlertFeedMessage)

ALL: tuple[Topic[Any], ...] = (
    POINTS,
    STORED,
    DEVICE_EVENTS,
    STORED_EVENTS,
    CRIMES,
    ALERTS,
    DEAD_LETTER,
    ALERT_FEED,
)
