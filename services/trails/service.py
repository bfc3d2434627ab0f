"""Investigators' queries: who was near a place at a time, and a subject's trail, each
read written to the audit log with who asked, why, and for which case."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.auth import Principal
from services.common.database import Database
from services.common.deps import CurrentUser, RuntimeDep
from services.common.geo import grid_to_wgs84
from services.common.settings import CheckSettings
from services.ingest import repository as trail_store
from services.trails import repository
from services.trails.models import AuditEntry
from services.trails.schemas import Justification, ProximityIn, ProximityOut
from services.zones.matching import ALGORITHM, CrimeScene, MatchParams, assess

# Gaps longer than this in an exported trail are marked as gaps, never bridged.
TRAIL_GAP_S = 300.0
MAX_TRAIL_WINDOW = timedelta(days=31)


async def audit(
    session: AsyncSession,
    who: Principal,
    action: str,
    parameters: dict[str, Any],
    why: Justification | None,
    result_size: int | None,
) -> None:
    await repository.add(
        session,
        AuditEntry(
            actor_id=who.id,
            actor_name=who.name,
            role=who.role.value,
            action=action,
            parameters=parameters,
            reason=why.reason if why else None,
            case_reference=why.case_reference if why else None,
            result_size=result_size,
        ),
    )


async def proximity(
    session: AsyncSession, db: Database, settings: CheckSettings, who: Principal, q: ProximityIn
) -> ProximityOut:
    """Every subject whose trail (fixes and the paths between them, accuracy counted)
    came within the radius during the window, closest first."""
    if q.lat is not None and q.lon is not None:
        lat, lon = q.lat, q.lon
    else:
        assert q.easting is not None and q.northing is not None
        lat, lon = grid_to_wgs84(q.easting, q.northing)
    params = MatchParams(
        radius_m=q.radius_m,
        slack_s=0.0,
        max_accuracy_m=settings.crime_max_accuracy_m,
        segment_max_gap_s=settings.crime_segment_max_gap_s,
        gap_s=settings.crime_gap_s,
    )
    reach = timedelta(seconds=params.segment_max_gap_s)
    scene = CrimeScene(uuid.uuid4(), lat, lon, q.start, q.end)
    async with db.pool.acquire() as conn:
        # The trail boxes say who may have passed (their fixes, or a path between two of
        # them); their trails then say exactly who did.
        subjects = await trail_store.subjects_passing(conn, lat, lon, q.radius_m, q.start, q.end)
        trails = await trail_store.trails_between(conn, subjects, q.start - reach, q.end + reach)
    found = []
    for subject_id in subjects:
        a = assess(scene, subject_id, trails.get(subject_id, []), params)
        if a.closest is not None and a.closest.distance_m <= q.radius_m:
            found.append(a)
    found.sort(key=lambda a: (a.closest.distance_m if a.closest else 0.0, a.subject_id))
    query = {
        "lat": lat,
        "lon": lon,
        "easting": q.easting,
        "northing": q.northing,
        "radius_m": q.radius_m,
        "start": q.start.isoformat(),
        "end": q.end.isoformat(),
        **params.as_dict(),
    }
    await audit(session, who, "proximity", query, q, len(found))
    return ProximityOut(query=query, algorithm=ALGORITHM, subjects=[a.as_dict() for a in found])


async def trail_geojson(
    session: AsyncSession,
    db: Database,
    settings: CheckSettings,
    who: Principal,
    subject_id: uuid.UUID,
    start: datetime,
    end: datetime,
    why: Justification,
) -> dict[str, Any]:
    """The subject's fixes as GeoJSON points (accuracy, received time, late flag), with
    every gap longer than TRAIL_GAP_S marked as a gap feature, never bridged."""
    async with db.pool.acquire() as conn:
        points = (await trail_store.trails_between(conn, [subject_id], start, end)).get(
            subject_id, []
        )
    features: list[dict[str, Any]] = []
    for p in points:
        delay = (p.received_at - p.ts).total_seconds()
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [p.lon, p.lat]},
                "properties": {
                    "kind": "fix",
                    "tag_id": p.tag_id,
                    "ts": p.ts.isoformat(),
                    "received_at": p.received_at.isoformat(),
                    "accuracy_m": p.accuracy_m,
                    "late": delay > settings.late_after_s,
                },
            }
        )
    marks = [start, *(p.ts for p in points), end]
    for a, b in pairwise(marks):
        if (b - a).total_seconds() > TRAIL_GAP_S:
            features.append(
                {
                    "type": "Feature",
                    "geometry": None,
                    "properties": {"kind": "gap", "from": a.isoformat(), "to": b.isoformat()},
                }
            )
    parameters = {"subject_id": str(subject_id), "start": start.isoformat(), "end": end.isoformat()}
    await audit(session, who, "trail", parameters, why, len(points))
    return {"type": "FeatureCollection", "features": features, "query": parameters}


async def record_request(
    request: Request, who: CurrentUser, runtime: RuntimeDep
) -> AsyncIterator[None]:
    """A router dependency: once a request has succeeded, writes who did what to the
    audit log (administrative changes, and reads of alerts, which carry location
    evidence). A refused or failed request is not recorded as done."""
    yield
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    parameters: dict[str, Any] = {**request.path_params, **dict(request.query_params)}
    async with runtime.db.transaction() as session:
        await audit(session, who, f"{request.method} {path}", parameters, None, None)
