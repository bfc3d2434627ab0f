"""Escalation: an alert nobody has acknowledged in time goes to the supervisors of the
managers responsible, who can then see it, and hear of it on their own channels."""

from __future__ import annotations

from datetime import datetime, timedelta

from services.alerts import repository
from services.alerts.worker import enqueue, history_row
from services.common.database import Database
from services.common.periodic import Periodic
from services.common.settings import AlertSettings
from services.common.timeutil import utcnow
from services.registry import service as registry


class Escalator:
    def __init__(self, db: Database, settings: AlertSettings) -> None:
        self.db = db
        self.settings = settings
        self._loop = Periodic(
            "escalation", lambda: self.escalate(utcnow()), settings.escalation_interval_s
        )

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def escalate(self, now: datetime) -> int:
        """Escalates every alert overdue at `now`; returns how many."""
        done = 0
        async with self.db.transaction() as session:
            for severity, after_s in self.settings.escalate_after_s.items():
                due = now - timedelta(seconds=after_s)
                for alert in await repository.unacknowledged(session, severity, due):
                    supervisors = await registry.supervisors_of(session, alert.managers)
                    added = [s for s in supervisors if s not in alert.managers]
                    alert.escalated_at = now
                    alert.managers = [*alert.managers, *added]
                    note = (
                        f"not acknowledged within {after_s / 60:.0f} min; escalated to "
                        f"{len(added)} supervisor(s)"
                        if added
                        else f"not acknowledged within {after_s / 60:.0f} min; no supervisor set"
                    )
                    await repository.add_transition(
                        session, history_row(alert, alert.state, outcome="escalated", note=note)
                    )
                    await session.flush()
                    await enqueue(session, alert, "escalated")
                    done += 1
        return done
