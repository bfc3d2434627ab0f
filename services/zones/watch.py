"""Device conditions: the handler for stored device events, and the silence watchdog."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from services.alerts.schemas import AlertEvent, AlertKind, AlertMessage
from services.common.bus import Bus
from services.common.database import Database
from services.common.periodic import Periodic
from services.common.settings import CheckSettings
from services.common.timeutil import utcnow
from services.ingest import repository as trail_store
from services.ingest.schemas import DeviceEvent
from services.registry import service as registry
from services.topics import ALERTS
from services.zones import repository
from services.zones.conditions import (
    ConditionEpisode,
    DeviceCondition,
    DeviceEventFact,
    evaluate_events,
    silence,
)
from services.zones.service import (
    FOREVER,
    Change,
    ChangeKind,
    Confidence,
    Reported,
    episode_row,
    reconcile,
)

log = logging.getLogger(__name__)

GROUP = "tagtrail-conditions"
# How far back a device event's neighbours are read to place it.
CONTEXT = timedelta(hours=24)


def _reported(rows: list[Any]) -> dict[uuid.UUID, dict[uuid.UUID, Reported]]:
    out: dict[uuid.UUID, dict[uuid.UUID, Reported]] = defaultdict(dict)
    for r in rows:
        out[r.subject_id][r.id] = Reported(
            r.id, r.condition, r.start, r.end, Confidence.confirmed, r.last_fix
        )
    return out


def _row(
    subject_id: uuid.UUID, change: Change[ConditionEpisode], before: Reported | None
) -> dict[str, Any]:
    row = episode_row(subject_id, change, before)
    del row["confidence"]  # device conditions are facts the tag reports, not judged
    return row


def _message(
    subject_id: uuid.UUID,
    change: Change[ConditionEpisode],
    before: Reported | None,
    delay_s: float,
    late_after_s: float,
) -> AlertMessage:
    e = change.episode
    if e is None:
        assert before is not None
        return AlertMessage(
            alert_id=change.id,
            kind=AlertKind(before.condition),
            event=AlertEvent.superseded,
            subject_id=subject_id,
            at=before.start,
            superseded_by=change.superseded_by,
        )
    return AlertMessage(
        alert_id=e.id,
        kind=AlertKind(e.condition.value),
        event=AlertEvent.opened if change.kind is ChangeKind.opened else AlertEvent.updated,
        subject_id=subject_id,
        at=e.start,
        ended_at=e.end,
        confidence=e.confidence.value,
        last_fix_at=e.last_fix,
        late=delay_s > late_after_s,
        delay_s=max(0.0, delay_s),
        reason=e.reason,
        details={"condition": e.condition.value},
    )


class DeviceWatch:
    """Turns device events into condition alerts, one per episode, and watches for
    subjects whose tags have gone quiet."""

    def __init__(self, db: Database, bus: Bus, settings: CheckSettings) -> None:
        self.db = db
        self.bus = bus
        self.settings = settings
        self._loop = Periodic(
            "silence-watchdog",
            lambda: self.check_silence(utcnow()),
            settings.watchdog_interval_s,
        )

    async def handle(self, events: list[DeviceEvent]) -> None:
        batch: dict[uuid.UUID, list[DeviceEvent]] = defaultdict(list)
        for e in events:
            batch[e.subject_id].append(e)
        since = {s: min(e.ts for e in es) - CONTEXT for s, es in batch.items()}
        async with self.db.transaction() as session:
            rows = await repository.reported_device_episodes(
                session, list(batch), min(since.values())
            )
            rows = [r for r in rows if r.condition != DeviceCondition.silence.value]
            reported = _reported(rows)
            for r in rows:
                since[r.subject_id] = min(since[r.subject_id], r.start)
            async with self.db.pool.acquire() as conn:
                stored = await trail_store.device_events_since(conn, list(since.items()))
            alerts: list[AlertMessage] = []
            saves: list[dict[str, Any]] = []
            for subject_id, new in batch.items():
                facts = [
                    DeviceEventFact(e.tag_id, e.ts, e.kind, e.received_at, e.detail)
                    for e in stored.get(subject_id, [])
                ]
                current = evaluate_events(subject_id, facts)
                delay = max((e.received_at - e.ts).total_seconds() for e in new)
                mine = reported[subject_id]
                for change in reconcile(mine, current, (since[subject_id], FOREVER)):
                    before = mine.get(change.id)
                    alerts.append(
                        _message(subject_id, change, before, delay, self.settings.late_after_s)
                    )
                    saves.append(_row(subject_id, change, before))
            await self.bus.publish(ALERTS, [(str(a.subject_id), a) for a in alerts])
            await repository.save_device_episodes(session, saves)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def check_silence(self, now: datetime) -> None:
        """Opens a silence alert for each subject wearing a tag that has sent no fix for
        too long, and ends it at the first fix that comes after."""
        silent_after = timedelta(seconds=self.settings.silence_after_s)
        async with self.db.transaction() as session:
            wearing = await registry.wearing_at(session, now)
            if not wearing:
                return
            last = await repository.activity(session, list(wearing))
            rows = [
                r
                for r in await repository.reported_device_episodes(session, list(wearing))
                if r.condition == DeviceCondition.silence.value and r.end is None
            ]
            reported = _reported(rows)
            changes: list[tuple[uuid.UUID, Change[ConditionEpisode]]] = []
            ended = [
                (r.subject_id, r.start)
                for r in rows
                if r.subject_id in last and last[r.subject_id] > (r.last_fix or r.start)
            ]
            async with self.db.pool.acquire() as conn:
                firsts = await trail_store.first_fixes_after(conn, ended)
            for r in rows:
                if r.subject_id in firsts:
                    done = ConditionEpisode(
                        r.subject_id,
                        DeviceCondition.silence,
                        r.start,
                        firsts[r.subject_id],
                        r.last_fix,
                        f"no fix from {r.start.isoformat()} to {firsts[r.subject_id].isoformat()}",
                    )
                    changes.append((r.subject_id, Change(ChangeKind.updated, done.id, done)))
            open_ids = {r.id for r in rows if r.subject_id not in firsts}
            for subject_id, since in wearing.items():
                quiet = silence(subject_id, last.get(subject_id), since, now, silent_after)
                if quiet is not None and quiet.id not in open_ids:
                    changes.append((subject_id, Change(ChangeKind.opened, quiet.id, quiet)))
            alerts = [
                _message(s, c, reported[s].get(c.id), 0.0, self.settings.late_after_s)
                for s, c in changes
            ]
            await self.bus.publish(ALERTS, [(str(a.subject_id), a) for a in alerts])
            await repository.save_device_episodes(
                session, [_row(s, c, reported[s].get(c.id)) for s, c in changes]
            )
