"""Bus handlers of the zones service: the zone checker and the crime matcher."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg
import numpy as np

from services.alerts.schemas import AlertEvent, AlertKind, AlertMessage, FixRef
from services.common.bus import Bus
from services.common.bus.base import is_transient
from services.common.database import Database, side_by_side
from services.common.geo import degree_margins
from services.common.metrics import BATCHES_BOXED, FIXES_UNBOXED
from services.common.periodic import Periodic
from services.common.settings import CheckSettings
from services.common.timeutil import from_epoch, utcnow
from services.ingest import repository as trail_store
from services.ingest.batch import FixBatch
from services.ingest.repository import TrailBoxes
from services.registry import service as registry
from services.topics import ALERTS
from services.zones import records, repository, service
from services.zones.matching import (
    ALGORITHM,
    Assessment,
    CrimeScene,
    MatchParams,
    MatchResults,
    match,
)
from services.zones.models import Crime, CrimeMatchRun
from services.zones.schemas import CrimeMessage
from services.zones.service import (
    CHECKPOINT_LAGS,
    FOREVER,
    Change,
    ChangeKind,
    CheckParams,
    Checkpoint,
    Condition,
    Confidence,
    Episode,
    Placements,
    PreparedZone,
    Reported,
    SubjectZones,
    TrailFix,
    ZoneKind,
    carried_on,
    check_zone,
    episode_row,
    evaluate,
    leads_clear,
    read_back_from,
    still_kept,
    to_check,
    unsettled,
)

log = logging.getLogger(__name__)

ZONES_GROUP = "tagtrail-zones"
# Subjects whose open runs the zone checker carries from batch to batch (Checkpoint),
# at most: a few kB each.
MAX_CHECKPOINT_SUBJECTS = 50_000
# Checkpoints kept a subject and zone, the latest.
MAX_CHECKPOINTS = 4
CRIMES_GROUP = "tagtrail-crimes"


def fix_ref(f: TrailFix) -> FixRef:
    return FixRef(
        tag_id=f.tag_id,
        ts=f.ts,
        received_at=f.received_at,
        lat=f.lat,
        lon=f.lon,
        accuracy_m=f.accuracy_m,
    )


def check_params(settings: CheckSettings) -> CheckParams:
    return CheckParams(
        confirm_fixes=settings.confirm_fixes,
        confirm_dwell_s=settings.confirm_dwell_s,
        segment_max_gap_s=settings.segment_max_gap_s,
        curfew_lookback_s=settings.curfew_lookback_s,
        no_data_after_s=settings.no_data_after_s,
    )


AFRESH_SUBJECTS = 200


async def episodes_afresh(
    db: Database, params: CheckParams, start: datetime, end: datetime
) -> list[Episode]:
    """Every zone episode of every subject's stored trail between start and end, derived
    from the whole of it at once: what the zone checker's episodes, decided batch by
    batch as fixes came (and superseded as late ones changed them), must add up to.
    For audits and the throughput benchmark, not the live path (it reads every trail).
    It reads and prepares the zones itself rather than through ZoneChecker's cached map,
    so a fault in that cache cannot hide from the comparison."""
    async with db.pool.acquire() as conn:
        _, applies = await repository.zone_map(conn)
    async with db.sessions() as session:
        rows = await repository.zones_by_id(session, list({z for _, z, _ in applies}))
    prepared = {row.id: records.prepare(row) for row in rows}
    zones: dict[uuid.UUID, list[PreparedZone]] = defaultdict(list)
    for subject_id, zone_id, _ in applies:
        if zone_id in prepared:
            zones[subject_id].append(prepared[zone_id])
    subjects = list(zones)
    episodes: list[Episode] = []
    # A few hundred subjects' trails at a time, not the whole fleet's at once.
    for i in range(0, len(subjects), AFRESH_SUBJECTS):
        some = subjects[i : i + AFRESH_SUBJECTS]
        async with db.pool.acquire() as conn:
            trails = await trail_store.trails_between(conn, some, start, end)
        episodes += [
            e
            for subject_id in some
            for zone in zones[subject_id]
            for e in evaluate(zone, subject_id, trails.get(subject_id, []), params)
        ]
    return episodes


ALERT_KINDS = {
    (ZoneKind.exclusion, Condition.breach): AlertKind.exclusion,
    (ZoneKind.inclusion, Condition.breach): AlertKind.inclusion,
    (ZoneKind.inclusion, Condition.no_data): AlertKind.no_data,
}


class ZoneChecker:
    """Follows each subject through their zones. For every batch of stored fixes it reads
    back the subject's trail around them, derives the episodes again, and tells the alert
    store what changed: new episodes, grown or ended ones, and ones that late fixes have
    superseded. Per-subject state is the stored trail plus the episodes reported so far,
    both in PostGIS, so a restart carries on where it left off. In memory it keeps only
    what saves reading back: fixes placed against zones, and runs still open
    (service.Checkpoint), each checked against the stored trail before it is used."""

    def __init__(self, db: Database, bus: Bus, settings: CheckSettings) -> None:
        self.db = db
        self.bus = bus
        self.settings = settings
        self.params = check_params(settings)
        self._prepared: dict[tuple[uuid.UUID, int], PreparedZone] = {}
        self._versions: dict[uuid.UUID, int] = {}
        # Which zones apply to whom, as of the zones' generation (None: not read yet).
        self._generation: int | None = None
        self._applying: dict[uuid.UUID, SubjectZones] = {}
        # Batches are handled a few at once (bus lanes): one of them reads the map again
        # while the others wait for it, rather than check against the old one.
        self._refreshing = asyncio.Lock()
        # Fixes placed against zones, kept for the batches that read them back again.
        self._placements = Placements()
        # Runs still open, by subject and zone, carried on by the next batch rather than
        # read back from their start (service.Checkpoint).
        self._checkpoints: dict[uuid.UUID, dict[uuid.UUID, list[Checkpoint]]] = {}

    async def start(self) -> None:
        """Reads which zones apply to whom and prepares them, so the first batches do
        not pay for it."""
        async with self.db.pool.acquire() as conn:
            await self._zones(conn, [])

    async def _zones(
        self, conn: asyncpg.Connection, subjects: list[uuid.UUID]
    ) -> dict[uuid.UUID, SubjectZones]:
        """Each subject's zones, prepared. Which zones apply to whom is kept in memory
        and read again only when the zones' generation has moved (a trigger bumps it
        with every change, in the changing transaction); a zone is read and prepared
        once a version."""
        generation = await repository.zone_generation(conn)
        if generation != self._generation:
            async with self._refreshing:
                if generation != self._generation:
                    await self._read_map(conn)
        return {s: self._applying[s] for s in subjects if s in self._applying}

    async def _read_map(self, conn: asyncpg.Connection) -> None:
        """Reads which zones apply to whom, with the generation it is of, and prepares
        the zones not prepared yet. The generation is set last: a batch that finds it
        current finds the map that goes with it."""
        generation, applies = await repository.zone_map(conn)
        missing = {z for _, z, v in applies if (z, v) not in self._prepared}
        if missing:
            async with self.db.sessions() as session:
                for row in await repository.zones_by_id(session, list(missing)):
                    old = self._versions.get(row.id)
                    if old is not None:
                        self._prepared.pop((row.id, old), None)
                    self._versions[row.id] = row.version
                    self._prepared[(row.id, row.version)] = records.prepare(row)
        applying: dict[uuid.UUID, list[PreparedZone]] = defaultdict(list)
        for subject_id, zone_id, version in applies:
            # A zone changed again since the map was read is checked by the version
            # just prepared; the generation moved too, so the next batch reads the
            # map again.
            zone = self._prepared.get((zone_id, version)) or self._prepared.get(
                (zone_id, self._versions.get(zone_id, version))
            )
            if zone is not None:
                applying[subject_id].append(zone)
        self._applying = {s: SubjectZones.of(zones) for s, zones in applying.items()}
        self._generation = generation

    async def handle(self, batches: list[FixBatch]) -> None:
        fixes = FixBatch.concat(batches)
        # Each subject's first and last new fix, as seconds since 1970: made datetimes
        # only for the few subjects that need them (a datetime each is dear, for every
        # subject of every batch); and its rows, sliced only for those checked.
        runs = fixes.runs()
        subjects, first, last = runs.subjects, runs.first, runs.last
        place = {s: i for i, s in enumerate(subjects)}
        first_new: dict[uuid.UUID, datetime] = {}

        def first_of(s: uuid.UUID) -> datetime:
            """The subject's first new fix."""
            if s not in first_new:
                first_new[s] = from_epoch(float(first[place[s]]))
            return first_new[s]

        # The statements that do not wait on each other go side by side, each on a
        # connection of its own, taken only for it: a batch waits for the slowest of
        # them, not for their sum, while the other lanes' batches keep both cores busy.
        async with side_by_side() as tasks:
            tasks.create_task(self.db.on_own(repository.touch_activity, subjects, last.tolist()))
            async with self.db.pool.acquire() as conn:
                zones = await self._zones(conn, subjects)
            if zones:
                # Where each subject's trail went around the new fixes, as far as a path
                # from them reaches: most subjects are nowhere near any of their zones.
                zoned = np.fromiter((s in zones for s in subjects), bool, len(subjects))
                reaching = tasks.create_task(
                    self.db.on_own(
                        trail_store.reach_around,
                        [s for s in subjects if s in zones],
                        first[zoned],
                        last[zoned],
                        self.params.segment_max_gap_s,
                    )
                )
                context = timedelta(seconds=self.settings.context_s)
                earliest = from_epoch(float(first[zoned].min())) - context
                reading = tasks.create_task(
                    self.db.on_own(repository.reported_episodes, list(zones), earliest)
                )
                # Whether the fixes summarised by each subject and zone's latest
                # checkpoint before the first new fix are still all those stored.
                candidates = [
                    cp
                    for s in zones
                    if s in self._checkpoints
                    for kept in self._checkpoints[s].values()
                    if (cp := carried_on(kept, first_of(s))) is not None
                ]
                # (No connection taken when there is nothing to count.)
                counting = (
                    tasks.create_task(
                        self.db.on_own(
                            trail_store.count_between,
                            [(cp.subject_id, cp.run.start, cp.through) for cp in candidates],
                        )
                    )
                    if candidates
                    else None
                )
        if not zones:
            return
        reach, episodes = reaching.result(), reading.result()
        counts = counting.result() if counting is not None else []

        def marks_of(s: uuid.UUID) -> list[datetime]:
            """Where the subject's open runs are kept for the batches to come."""
            last_new = from_epoch(float(last[place[s]]))
            return [last_new - lag for lag in CHECKPOINT_LAGS]

        reported: dict[tuple[uuid.UUID, uuid.UUID], dict[uuid.UUID, Reported]] = defaultdict(dict)
        theirs: dict[uuid.UUID, list[Reported]] = defaultdict(list)
        async with self.db.transaction() as session:
            for ep in episodes:
                r = Reported(
                    ep.id, ep.condition, ep.start, ep.end, Confidence(ep.confidence), ep.last_fix
                )
                reported[(ep.subject_id, ep.zone_id)][ep.id] = r
                theirs[ep.subject_id].append(r)
            checks = to_check(
                zones,
                reach,
                {k for k, eps in reported.items() if unsettled(eps, first_of(k[0]))},
            )
            if not checks:
                return
            carried = self._carried(checks, candidates, counts, reported)
            # What the trail must be read back for: every episode but those carried.
            for s, cps in carried.items():
                ids = {cp.episode_id for cp in cps.values()}
                theirs[s] = [r for r in theirs[s] if r.id not in ids]
            # Exclusion zones alone: a read-back as far as a path reaches, unless the fix
            # leading it lies near a zone (service.leads_clear); then, as for the
            # others, the whole context. A carried run needs only the fixes after those
            # it summarises.
            near = timedelta(seconds=self.params.segment_max_gap_s)
            since = {
                s: min(
                    [
                        read_back_from(
                            first_of(s),
                            near if all(z.kind is ZoneKind.exclusion for z in zs) else context,
                            theirs[s],
                        ),
                        *(cp.through for cp in carried.get(s, {}).values()),
                    ]
                )
                for s, zs in checks.items()
            }
            async with self.db.pool.acquire() as conn:
                trails = await trail_store.trails_since(conn, list(since.items()))
                further = {
                    s: back
                    for s, zs in checks.items()
                    if not leads_clear(
                        [z for z in zs if z.id not in carried.get(s, {})],
                        trails.get(s, []),
                        since[s],
                    )
                    and (back := read_back_from(first_of(s), context, theirs[s])) < since[s]
                }
                if further:
                    trails.update(await trail_store.trails_since(conn, list(further.items())))
                    since.update(further)
            # Every pair's new fixes placed at once, not a call a pair.
            self._placements.prime(
                (zone, s, trails.get(s, [])) for s, zs in checks.items() for zone in zs
            )
            alerts: list[AlertMessage] = []
            rows: list[dict[str, Any]] = []
            for subject_id, subject_zones in checks.items():
                trail = trails.get(subject_id, [])
                mine = fixes.trail_fixes(runs.rows(place[subject_id]))
                new = {(f.tag_id, f.ts) for f in mine}
                seen_before = max(
                    (f.ts for f in trail if (f.tag_id, f.ts) not in new), default=None
                )
                for zone in subject_zones:
                    changes, checkpoints = check_zone(
                        zone,
                        subject_id,
                        trail,
                        reported[(subject_id, zone.id)],
                        since[subject_id],
                        first_of(subject_id),
                        self.params,
                        self._placements,
                        carried.get(subject_id, {}).get(zone.id),
                        marks_of(subject_id),
                    )
                    self._keep(subject_id, zone.id, checkpoints, first_of(subject_id))
                    for change in changes:
                        alerts.append(self._message(zone, subject_id, change, mine, seen_before))
                        rows.append(_episode_row(subject_id, zone, change, reported))
            # The alerts go out before the episodes are saved: if we die in between, the
            # redelivered fixes derive the same episodes and ids again, which the alert
            # store absorbs; the other order could lose an alert.
            await self.bus.publish(ALERTS, [(str(a.subject_id), a) for a in alerts])
            await repository.save_episodes(session, rows)

    def _carried(
        self,
        checks: Mapping[uuid.UUID, list[PreparedZone]],
        candidates: list[Checkpoint],
        counts: list[int],
        reported: Mapping[tuple[uuid.UUID, uuid.UUID], Mapping[uuid.UUID, Reported]],
    ) -> dict[uuid.UUID, dict[uuid.UUID, Checkpoint]]:
        """The checkpoints this batch can go on from, by subject and zone, of those every
        new fix comes after (`candidates`, service.carried_on): the stored fixes they
        summarise are still all there are (`counts`), the zone is as it was, and the
        episode they carry is still reported, not superseded: a late fix before the run's
        start that moved it would have superseded it (another process may have taken the
        subject over, and over again, in between). The episode may have ended since, at
        fixes after the checkpoint: those are read."""
        out: dict[uuid.UUID, dict[uuid.UUID, Checkpoint]] = {}
        for cp, stored in zip(candidates, counts, strict=True):
            zone = next((z for z in checks.get(cp.subject_id, []) if z.id == cp.zone_id), None)
            episode = reported.get((cp.subject_id, cp.zone_id), {}).get(cp.episode_id)
            if (
                zone is not None
                and stored == cp.counted
                and cp.of_zone(zone)
                and episode is not None
            ):
                out.setdefault(cp.subject_id, {})[cp.zone_id] = cp
        return out

    def _keep(
        self,
        subject_id: uuid.UUID,
        zone_id: uuid.UUID,
        checkpoints: list[Checkpoint],
        first_new: datetime,
    ) -> None:
        """Keeps the runs a check left open for the batches to come, with those kept
        before that the new fixes all follow (the others hold fewer fixes than are
        stored), the latest MAX_CHECKPOINTS; or forgets them all when the check found
        no run open at any of its marks. At most MAX_CHECKPOINT_SUBJECTS subjects' are kept, those
        kept longest ago going first."""
        theirs = self._checkpoints.pop(subject_id, {})
        kept = still_kept(theirs.pop(zone_id, []), checkpoints, first_new, MAX_CHECKPOINTS)
        if kept:
            theirs[zone_id] = kept
        if theirs:
            self._checkpoints[subject_id] = theirs
        while len(self._checkpoints) > MAX_CHECKPOINT_SUBJECTS:
            del self._checkpoints[next(iter(self._checkpoints))]

    def _message(
        self,
        zone: PreparedZone,
        subject_id: uuid.UUID,
        change: Change[Episode],
        new_fixes: list[TrailFix],
        seen_before: datetime | None,
    ) -> AlertMessage:
        e = change.episode
        if e is None:
            return AlertMessage(
                alert_id=change.id,
                kind=AlertKind.exclusion
                if zone.kind is ZoneKind.exclusion
                else AlertKind.inclusion,
                event=AlertEvent.superseded,
                subject_id=subject_id,
                zone_id=zone.id,
                at=seen_before or new_fixes[0].ts,
                superseded_by=change.superseded_by,
            )
        # Late: the fixes that made or changed this episode were received long after they
        # were taken, or the episode lies behind fixes already decided on.
        relevant = [f for f in new_fixes if e.start <= f.ts <= (e.end or FOREVER)] or new_fixes
        delay = max((f.received_at - f.ts).total_seconds() for f in relevant)
        late = delay > self.settings.late_after_s or (
            seen_before is not None and e.start < seen_before
        )
        return AlertMessage(
            alert_id=e.id,
            kind=ALERT_KINDS[(zone.kind, e.condition)],
            event=AlertEvent.opened if change.kind is ChangeKind.opened else AlertEvent.updated,
            subject_id=subject_id,
            zone_id=zone.id,
            at=e.start,
            ended_at=e.end,
            confidence=e.confidence.value,
            last_fix_at=e.last_fix,
            evidence=[fix_ref(f) for f in e.evidence],
            late=late,
            delay_s=max(0.0, delay),
            reason=e.reason,
            details={
                "zone_name": zone.name,
                "zone_version": zone.version,
                "zone_kind": zone.kind.value,
                "condition": e.condition.value,
                **e.details,
            },
        )


def _episode_row(
    subject_id: uuid.UUID,
    zone: PreparedZone,
    change: Change[Episode],
    reported: dict[tuple[uuid.UUID, uuid.UUID], dict[uuid.UUID, Reported]],
) -> dict[str, Any]:
    before = reported[(subject_id, zone.id)].get(change.id)
    return {
        **episode_row(subject_id, change, before),
        "zone_id": zone.id,
        "zone_version": zone.version,
    }


class Trigger(StrEnum):
    new_crime = "new_crime"
    new_fixes = "new_fixes"
    manual = "manual"


def match_params(settings: CheckSettings, category: str) -> MatchParams:
    return MatchParams(
        radius_m=settings.crime_radius_by_category.get(category, settings.crime_radius_m),
        slack_s=settings.crime_slack_s,
        max_accuracy_m=settings.crime_max_accuracy_m,
        segment_max_gap_s=settings.crime_segment_max_gap_s,
        gap_s=settings.crime_gap_s,
    )


async def run_matching(
    db: Database,
    bus: Bus,
    settings: CheckSettings,
    crime_id: uuid.UUID,
    trigger: Trigger,
) -> CrimeMatchRun | None:
    """One matching run for one crime version: assess every subject who wore a tag in the
    widened window, keep the run as a record, and alert each matched subject's managers
    once per (crime version, subject)."""
    started = utcnow()
    clock = time.perf_counter()
    async with db.transaction() as session:
        crime = await repository.get_crime(session, crime_id)
        if crime is None:
            return None
        params = match_params(settings, crime.category)
        scene = CrimeScene(crime.id, crime.lat, crime.lon, crime.starts_at, crime.ends_at)
        lo, hi = scene.window(params)
        candidates = await registry.wearing_between(session, lo, hi)
        reach = timedelta(seconds=params.segment_max_gap_s)
        async with db.pool.acquire() as conn:
            trails = await trail_store.trails_between(conn, candidates, lo - reach, hi + reach)
        results = match(scene, trails, candidates, params)
        run = _record(crime, trigger, params, "every wearer", started, clock, results)
        alerts = [
            _match_alert(crime.id, crime.category, a, params, settings) for a in results.matched
        ]
        # Alerts first: a rerun after a crash derives the same ids, which the store absorbs.
        await bus.publish(ALERTS, [(str(a.subject_id), a) for a in alerts])
        await repository.add_run(session, run)
    return run


async def rerun_for_fixes(
    db: Database,
    bus: Bus,
    settings: CheckSettings,
    near: Mapping[uuid.UUID, Collection[uuid.UUID]],
) -> list[CrimeMatchRun]:
    """For each crime, a run over the subjects whose new fixes came near it (`near`):
    the same assessment as run_matching's for those subjects, with every crime's reads
    done together, one query each. Each run's record says its scope; GET .../matches
    merges it with the last run over every wearer."""
    if not near:
        return []
    started = utcnow()
    clock = time.perf_counter()
    async with db.transaction() as session:
        plans = []
        for crime in await repository.get_crimes(session, list(near)):
            params = match_params(settings, crime.category)
            scene = CrimeScene(crime.id, crime.lat, crime.lon, crime.starts_at, crime.ends_at)
            plans.append((crime, params, scene, sorted(near[crime.id])))
        windows = [
            (s, *scene.window(params)) for _, params, scene, subjects in plans for s in subjects
        ]
        wearing = iter(await registry.wearing_in(session, windows))
        wanted: list[list[uuid.UUID]] = [
            [s for s in subjects if next(wearing)] for *_, subjects in plans
        ]
        reads = []
        for (_, params, scene, _), candidates in zip(plans, wanted, strict=True):
            lo, hi = scene.window(params)
            reach = timedelta(seconds=params.segment_max_gap_s)
            reads += [(s, lo - reach, hi + reach) for s in candidates]
        async with db.pool.acquire() as conn:
            found = iter(await trail_store.trails_in(conn, reads))
        runs: list[CrimeMatchRun] = []
        alerts: list[AlertMessage] = []
        for (crime, params, scene, _), candidates in zip(plans, wanted, strict=True):
            trails = {s: next(found) for s in candidates}
            results = match(scene, trails, candidates, params)
            runs.append(
                _record(
                    crime,
                    Trigger.new_fixes,
                    params,
                    "subjects with new fixes",
                    started,
                    clock,
                    results,
                )
            )
            alerts += [
                _match_alert(crime.id, crime.category, a, params, settings) for a in results.matched
            ]
        # Alerts first: a rerun after a crash derives the same ids, which the store absorbs.
        await bus.publish(ALERTS, [(str(a.subject_id), a) for a in alerts])
        await repository.add_runs(session, runs)
    return runs


def _record(
    crime: Crime,
    trigger: Trigger,
    params: MatchParams,
    scope: str,
    started: datetime,
    clock: float,
    results: MatchResults,
) -> CrimeMatchRun:
    return CrimeMatchRun(
        crime_id=crime.id,
        trigger=trigger.value,
        algorithm=ALGORITHM,
        parameters={**params.as_dict(), "scope": scope},
        started_at=started,
        # For runs made together (new fixes), the time taken by them all.
        duration_ms=round((time.perf_counter() - clock) * 1000, 2),
        results=results.as_dict(),
    )


def _match_alert(
    crime_id: uuid.UUID,
    category: str,
    a: Assessment,
    params: MatchParams,
    settings: CheckSettings,
) -> AlertMessage:
    assert a.closest is not None
    explanation = a.as_dict()
    delay = max(((f.received_at - f.ts).total_seconds() for f in a.evidence), default=0.0)
    closest = explanation["closest"]
    return AlertMessage(
        alert_id=service.crime_alert_id(crime_id, a.subject_id),
        kind=AlertKind.crime_match,
        event=AlertEvent.opened,
        subject_id=a.subject_id,
        crime_id=crime_id,
        at=a.closest.at,
        last_fix_at=a.evidence[-1].ts if a.evidence else None,
        confidence="match",
        evidence=[fix_ref(f) for f in a.evidence],
        late=delay > settings.late_after_s,
        delay_s=max(0.0, delay),
        reason=(
            f"came within {closest['distance_m']} m of a {category} scene at "
            f"{closest['at']} ({closest['via']}), {explanation['time_within_s']} s within "
            f"{params.radius_m:g} m; the trail covers {explanation['coverage']:.0%} of the window"
        ),
        details={**params.as_dict(), "category": category, **explanation},
    )


def _scenes_met(
    scenes: list[repository.OpenScene], boxes: TrailBoxes, radius_m: float, slack_s: float
) -> dict[uuid.UUID, set[uuid.UUID]]:
    """For each scene some box meets (within radius_m, at a time in the scene's window
    widened by slack_s), the subjects of those boxes.

    In one pass over the (box, scene) pairs whose longitudes are within the widest margin
    (from the scenes sorted by longitude), not a pass over every box for each scene: a
    tenth of the crime worker's time at 5,000 fixes a second on Kafka (docs/benchmarks.md,
    seventh session). Each pair gets the same test, in the same arithmetic."""
    if not scenes or len(boxes.owner) == 0:
        return {}
    lat = np.array([s.lat for s in scenes])
    lon = np.array([s.lon for s in scenes])
    first = np.array([s.starts_at.timestamp() for s in scenes]) - slack_s
    last = np.array([s.ends_at.timestamp() for s in scenes]) + slack_s
    margin = degree_margins(lat, np.float64(radius_m))
    widest = margin.max()
    b = boxes.boxes
    order = np.argsort(lon, kind="stable")
    sorted_lon = lon[order]
    lo = np.searchsorted(sorted_lon, b[:, 0] - widest, "left")
    hi = np.searchsorted(sorted_lon, b[:, 2] + widest, "right")
    counts = np.maximum(hi - lo, 0)
    box = np.repeat(np.arange(len(b)), counts)
    step = np.arange(len(box)) - np.repeat(np.cumsum(counts) - counts, counts)
    scene = order[np.repeat(lo, counts) + step]
    t0 = boxes.buckets[box]
    t1 = t0 + TrailBoxes.SPAN.total_seconds()
    m = margin[scene]
    sides = b[box]
    hit = (
        (t0 <= last[scene])
        & (t1 >= first[scene])
        & (sides[:, 0] - m <= lon[scene])
        & (sides[:, 2] + m >= lon[scene])
        & (sides[:, 1] - m <= lat[scene])
        & (sides[:, 3] + m >= lat[scene])
    )
    out: dict[uuid.UUID, set[uuid.UUID]] = {}
    for i, owner in set(zip(scene[hit].tolist(), boxes.owner[box[hit]].tolist(), strict=True)):
        out.setdefault(scenes[i].id, set()).add(boxes.subjects[owner])
    return out


def scene_places(
    scenes: list[repository.OpenScene], radius_m: float, slack_s: float
) -> list[trail_store.Place]:
    """Where and when to look for trail boxes near each scene: as far as _scenes_met's
    test reaches."""
    margins = degree_margins(np.array([s.lat for s in scenes]), np.float64(radius_m))
    slack = timedelta(seconds=slack_s)
    return [
        trail_store.Place(s.lat, s.lon, m, s.starts_at - slack, s.ends_at + slack)
        for s, m in zip(scenes, margins.tolist(), strict=True)
    ]


class CrimeMatcher:
    """Runs crime matching from both directions: a new crime (or version) is matched
    against the stored trails; stored fixes near a crime whose widened window covers them
    re-run that crime's matching. Both run the same function over the same stored data,
    so they cannot disagree, and one (crime version, subject) is one alert.

    It is also the box keeper: fixes reach it not on the bus but as trail_unboxed rows,
    which the store writes with them. It widens their trail boxes many stored batches at
    a time, then runs the crime trigger over the new boxes, then deletes the rows, in
    the transaction that claimed them: a crash anywhere leaves the rows for the next
    keeper, and doing it again changes no box and repeats no alert."""

    def __init__(self, db: Database, bus: Bus, settings: CheckSettings) -> None:
        self.db = db
        self.bus = bus
        self.settings = settings
        self._keeper = Periodic("box keeper", self.keep_boxes, settings.box_interval_s)
        # The stored batches of the round that failed last, to try one at a time.
        self._suspects: list[int] = []
        self._claimed: list[int] = []

    def start(self) -> None:
        self._keeper.start()

    async def stop(self) -> None:
        await self._keeper.stop()

    async def handle_crimes(self, crimes: list[CrimeMessage]) -> None:
        for crime in crimes:
            await run_matching(self.db, self.bus, self.settings, crime.id, Trigger.new_crime)

    async def keep_boxes(self) -> bool:
        """Widens the boxes of the oldest stored batches not yet done and runs the crime
        trigger for them. True when there may be more waiting.

        A round that fails for a reason a retry does not cure is tried again a stored
        batch at a time; one that fails on its own is set aside (its row's failed_at
        and error; logged), so that no bad batch holds up the rest. Its subjects stay
        proximity-search candidates until someone clears the row's failed_at."""
        only = self._suspects[0] if self._suspects else None
        try:
            done = await self._round(1 if only is not None else self.settings.box_claim, only)
        except Exception as exc:
            claimed, self._claimed = self._claimed, []
            if is_transient(exc) or not claimed:
                raise
            if len(claimed) > 1:
                log.warning(
                    "box keeper: a round of %d stored batches failed (%r); trying each alone",
                    len(claimed),
                    exc,
                )
                self._suspects = claimed
                return True
            async with self.db.pool.acquire() as conn:
                await trail_store.set_aside_unboxed(
                    conn, claimed[0], f"{type(exc).__name__}: {exc}"
                )
            log.error("box keeper: stored batch %d set aside: %r", claimed[0], exc, exc_info=exc)
            if only is not None:
                self._suspects.pop(0)
            return True
        if only is not None:
            self._suspects.pop(0)
            return True
        return done

    async def _round(self, limit: int, only: int | None) -> bool:
        self._claimed = []
        async with self.db.pool.acquire() as claim, claim.transaction():
            FIXES_UNBOXED.set(await trail_store.unboxed_backlog(claim))
            unboxed = await trail_store.claim_unboxed(
                claim, limit, only, self.settings.box_claim_fixes
            )
            if not unboxed.ids:
                return False
            self._claimed = unboxed.ids
            # Committed before the trigger looks for them, on another connection.
            async with self.db.pool.acquire() as conn, conn.transaction():
                await trail_store.widen_boxes(conn, unboxed)
            await self.trigger(unboxed)
            await trail_store.finish_unboxed(claim, unboxed)
        self._claimed = []
        BATCHES_BOXED.inc(len(unboxed.ids))
        return unboxed.full

    async def trigger(self, unboxed: trail_store.Unboxed) -> None:
        """Re-runs the matching of open crimes near these fixes, for their subjects."""
        spans = unboxed.spans()
        if not spans:
            return
        radius = max(
            [self.settings.crime_radius_m, *self.settings.crime_radius_by_category.values()]
        )
        slack = self.settings.crime_slack_s
        first = min(lo for lo, _ in spans.values()) - TrailBoxes.BEFORE
        last = max(hi for _, hi in spans.values()) + TrailBoxes.SPAN
        async with self.db.pool.acquire() as conn:
            # Live fixes rarely fall in an open crime's window (crimes are recorded
            # after the event): most rounds stop here, before any work a subject.
            scenes = await repository.scenes_between(conn, first, last, slack)
            if not scenes:
                return
            # The trail boxes the new fixes widened near the scenes: every fix, and
            # every path to or from one, accuracy counted, lies in one. A crime none of
            # them comes within its radius of has no new match.
            boxes = await trail_store.boxes_near(conn, spans, scene_places(scenes, radius, slack))
        near = _scenes_met(scenes, boxes, radius, slack)
        # Only the subjects whose fixes came near are looked at again: nobody else's
        # trail changed. (Re-running every wearer for every batch near a crime made
        # matching cost crimes x wearers per batch; see docs/benchmarks.md.)
        await rerun_for_fixes(self.db, self.bus, self.settings, near)
