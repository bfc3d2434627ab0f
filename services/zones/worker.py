"""Bus handlers of the zones service: the zone checker and the crime matcher."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from shapely import Polygon, from_wkt

from services.alerts.schemas import AlertEvent, AlertKind, AlertMessage, FixRef
from services.common.bus import Bus
from services.common.database import Database
from services.common.settings import CheckSettings
from services.ingest import repository as trails
from services.ingest.schemas import FixMessage
from services.topics import ALERTS
from services.zones import repository, service
from services.zones.schemas import CrimeMessage, ZoneKind
from services.zones.service import EpisodeState, PreparedZone

ZONES_GROUP = "tagtrail-zones"
CRIMES_GROUP = "tagtrail-crimes"
CRIME_MATCHER_VERSION = "crime-match/1"


def fix_ref(f: FixMessage) -> FixRef:
    return FixRef(
        tag_id=f.tag_id,
        ts=f.ts,
        received_at=f.received_at,
        lat=f.lat,
        lon=f.lon,
        accuracy_m=f.accuracy_m,
    )


class ZoneChecker:
    """Follows each subject through their exclusion zones, fix by fix in fix-time order,
    and opens one alert per episode inside."""

    def __init__(self, db: Database, bus: Bus, settings: CheckSettings) -> None:
        self.db = db
        self.bus = bus
        self.settings = settings
        self._prepared: dict[tuple[uuid.UUID, int], PreparedZone] = {}

    def _prepare(self, row: repository.ZoneRow) -> PreparedZone:
        key = (row.id, row.version)
        zone = self._prepared.get(key)
        if zone is None:
            polygon = from_wkt(row.wkt)
            assert isinstance(polygon, Polygon)
            zone = PreparedZone.build(
                row.id, row.subject_id, row.kind, row.name, row.version, polygon
            )
            self._prepared[key] = zone
        return zone

    async def handle(self, fixes: list[FixMessage]) -> None:
        by_subject: dict[uuid.UUID, list[FixMessage]] = defaultdict(list)
        for f in fixes:
            by_subject[f.subject_id].append(f)
        async with self.db.transaction() as session:
            rows = await repository.zones_for_subjects(
                session, list(by_subject), kind=ZoneKind.exclusion.value
            )
            if not rows:
                return
            zones: dict[uuid.UUID, list[PreparedZone]] = defaultdict(list)
            for row in rows:
                zones[row.subject_id].append(self._prepare(row))
            keys = [(z.subject_id, z.id) for zs in zones.values() for z in zs]
            states = await repository.load_states(session, keys)
            changed: dict[tuple[uuid.UUID, uuid.UUID], EpisodeState] = {}
            alerts: list[AlertMessage] = []
            for subject_id, subject_zones in zones.items():
                trail = sorted(by_subject[subject_id], key=lambda f: f.ts)
                for zone in subject_zones:
                    key = (subject_id, zone.id)
                    state = states.get(key, EpisodeState())
                    for f in trail:
                        containment = service.classify(zone, f.lat, f.lon, f.accuracy_m)
                        late = service.is_late(
                            f.ts, f.received_at, state.last_seen, self.settings.late_after_s
                        )
                        state, change = service.step(state, f.ts, containment)
                        if change is not None:
                            alerts.append(self._alert(zone, f, change, late, containment))
                    changed[key] = state
            # The alerts go out before the state is saved: if we die in between, the
            # redelivered fixes raise the same alert ids again, which the alert store
            # absorbs; the other order could lose an alert.
            await self.bus.publish(ALERTS, [(str(a.subject_id), a) for a in alerts])
            await repository.save_states(session, changed)

    def _alert(
        self,
        zone: PreparedZone,
        f: FixMessage,
        change: service.EpisodeChange,
        late: bool,
        containment: service.Containment,
    ) -> AlertMessage:
        return AlertMessage(
            alert_id=service.exclusion_alert_id(zone.subject_id, zone.id, change.episode_start),
            kind=AlertKind.exclusion,
            event=AlertEvent.opened if change.opened else AlertEvent.closed,
            subject_id=zone.subject_id,
            zone_id=zone.id,
            at=change.at,
            fix=fix_ref(f),
            late=late,
            delay_s=max(0.0, (f.received_at - f.ts).total_seconds()),
            details={
                "zone_name": zone.name,
                "zone_version": zone.version,
                "containment": containment.value,
                "episode_start": change.episode_start.isoformat(),
            },
        )


class CrimeMatcher:
    """Matches fixes to crimes both ways: new fixes against crimes whose window covers
    them, and a new crime against the stored trails. Both give the same alert id for the
    same (crime, subject), so the two paths can never double an alert."""

    def __init__(self, db: Database, bus: Bus, settings: CheckSettings) -> None:
        self.db = db
        self.bus = bus
        self.settings = settings

    def _params(self) -> dict[str, Any]:
        return {
            "algorithm": CRIME_MATCHER_VERSION,
            "radius_m": self.settings.crime_radius_m,
            "max_accuracy_m": self.settings.crime_max_accuracy_m,
        }

    async def handle_fixes(self, fixes: list[FixMessage]) -> None:
        async with self.db.pool.acquire() as conn:
            hits = await repository.crimes_near_fixes(
                conn,
                [(f.lat, f.lon, f.ts, f.accuracy_m) for f in fixes],
                self.settings.crime_radius_m,
                self.settings.crime_max_accuracy_m,
            )
        best: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, FixMessage]] = {}
        for hit in hits:
            f = fixes[hit.index]
            key = (hit.crime_id, f.subject_id)
            if key not in best or hit.distance_m < best[key][0]:
                best[key] = (hit.distance_m, f)
        alerts = [
            self._alert(crime_id, f, distance, "new_fixes")
            for (crime_id, _), (distance, f) in best.items()
        ]
        await self.bus.publish(ALERTS, [(str(a.subject_id), a) for a in alerts])

    async def handle_crimes(self, crimes: list[CrimeMessage]) -> None:
        alerts: list[AlertMessage] = []
        for crime in crimes:
            async with self.db.pool.acquire() as conn:
                near = await trails.fixes_near(
                    conn,
                    crime.lat,
                    crime.lon,
                    self.settings.crime_radius_m,
                    crime.starts_at,
                    crime.ends_at,
                    self.settings.crime_max_accuracy_m,
                )
            closest: dict[uuid.UUID, trails.NearbyFix] = {}
            for n in near:
                if n.subject_id not in closest or n.distance_m < closest[n.subject_id].distance_m:
                    closest[n.subject_id] = n
            for n in closest.values():
                fix = FixRef(
                    tag_id=n.tag_id,
                    ts=n.ts,
                    received_at=n.received_at,
                    lat=n.lat,
                    lon=n.lon,
                    accuracy_m=n.accuracy_m,
                )
                alerts.append(self._match(crime.id, n.subject_id, fix, n.distance_m, "new_crime"))
        await self.bus.publish(ALERTS, [(str(a.subject_id), a) for a in alerts])

    def _alert(
        self, crime_id: uuid.UUID, f: FixMessage, distance_m: float, trigger: str
    ) -> AlertMessage:
        return self._match(crime_id, f.subject_id, fix_ref(f), distance_m, trigger)

    def _match(
        self,
        crime_id: uuid.UUID,
        subject_id: uuid.UUID,
        fix: FixRef,
        distance_m: float,
        trigger: str,
    ) -> AlertMessage:
        delay = max(0.0, (fix.received_at - fix.ts).total_seconds())
        return AlertMessage(
            alert_id=service.crime_alert_id(crime_id, subject_id),
            kind=AlertKind.crime_match,
            event=AlertEvent.opened,
            subject_id=subject_id,
            crime_id=crime_id,
            at=fix.ts,
            fix=fix,
            late=delay > self.settings.late_after_s,
            delay_s=delay,
            details={
                **self._params(),
                "trigger": trigger,
                "distance_m": round(distance_m, 1),
                "accuracy_m": fix.accuracy_m,
            },
        )
