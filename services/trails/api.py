"""Investigators' API (proximity search, trails) and the auditors' audit log."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import AwareDatetime

from services.common.deps import Auditor, Investigator, RuntimeDep, SessionDep
from services.common.errors import NotFound, Unprocessable
from services.common.timeutil import utcnow
from services.ingest import repository as trail_store
from services.registry import service as registry
from services.trails import repository, service
from services.trails.evidence import bundle
from services.trails.exports import MEDIA_TYPES, Format, render
from services.trails.schemas import AuditOut, Justification, ProximityIn, ProximityOut
from services.zones import records

router = APIRouter(prefix="/v1", tags=["investigators"])


@router.post("/queries/proximity")
async def proximity(
    body: ProximityIn, runtime: RuntimeDep, session: SessionDep, who: Investigator
) -> ProximityOut:
    """Who was within radius_m of a place between start and end: every subject whose
    trail came that close, closest first, with the evidence. Audited."""
    out = await service.proximity(session, runtime.db, runtime.settings.check, who, body)
    await session.commit()
    return out


@dataclass(frozen=True)
class TrailRequest:
    """A trail read: which subject, which window, and why."""

    subject_id: uuid.UUID
    start: datetime
    end: datetime
    why: Justification


async def trail_request(
    _: Investigator,  # first: nobody learns which subjects exist before the role check
    subject_id: uuid.UUID,
    session: SessionDep,
    start: Annotated[AwareDatetime, Query()],
    end: Annotated[AwareDatetime, Query()],
    reason: Annotated[str, Query(min_length=10, max_length=2000)],
    case_reference: Annotated[str, Query(min_length=3, max_length=100)],
) -> TrailRequest:
    if end <= start or end - start > service.MAX_TRAIL_WINDOW:
        raise Unprocessable("the window must end after it starts and span at most 31 days")
    await registry.require_subject(session, subject_id)
    why = Justification(reason=reason, case_reference=case_reference)
    return TrailRequest(subject_id, start, end, why)


TrailDep = Annotated[TrailRequest, Depends(trail_request)]


@router.post("/queries/proximity/bundle")
async def proximity_bundle(
    body: ProximityIn, runtime: RuntimeDep, session: SessionDep, who: Investigator
) -> Response:
    """The same search as an evidence bundle (zip with a SHA-256 manifest). Audited."""
    out = await service.proximity(session, runtime.db, runtime.settings.check, who, body)
    await session.commit()
    data = bundle(
        "proximity",
        {**out.query, "reason": body.reason, "case_reference": body.case_reference},
        out.algorithm,
        out.subjects,
        {"id": str(who.id), "name": who.name, "role": who.role.value},
        utcnow(),
    )
    return _zip(data, f"proximity-{body.case_reference}")


@router.get("/crimes/{crime_id}/matches/bundle")
async def crime_bundle(
    crime_id: uuid.UUID,
    session: SessionDep,
    who: Investigator,
    reason: Annotated[str, Query(min_length=10, max_length=2000)],
    case_reference: Annotated[str, Query(min_length=3, max_length=100)],
) -> Response:
    """What matching knows now of a crime (as GET /v1/crimes/{id}/matches) as an
    evidence bundle, naming every run it comes from. Audited."""
    run = await records.current_matches(session, crime_id)
    if run is None:
        raise NotFound(f"no matching run for crime {crime_id} yet")
    why = Justification(reason=reason, case_reference=case_reference)
    assessed = [a for group in run.results.values() for a in group]
    await service.audit(
        session,
        who,
        "crime_bundle",
        {"crime_id": str(crime_id), "run_ids": [str(r) for r in run.based_on]},
        why,
        len(run.results.get("matched", [])),
    )
    await session.commit()
    data = bundle(
        "crime_match",
        {
            "crime_id": str(crime_id),
            "run_id": str(run.id),
            "based_on_runs": [str(r) for r in run.based_on],
            "trigger": run.trigger,
            "run_started_at": run.started_at.isoformat(),
            **run.parameters,
            "reason": reason,
            "case_reference": case_reference,
        },
        run.algorithm,
        assessed,
        {"id": str(who.id), "name": who.name, "role": who.role.value},
        utcnow(),
    )
    return _zip(data, f"crime-{crime_id}")


def _zip(data: bytes, stem: str) -> Response:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{safe}.zip"'},
    )


@router.get("/subjects/{subject_id}/trail")
async def trail(
    t: TrailDep, runtime: RuntimeDep, session: SessionDep, who: Investigator
) -> dict[str, Any]:
    """A subject's trail as GeoJSON, gaps marked. Audited."""
    out = await service.trail_geojson(
        session, runtime.db, runtime.settings.check, who, t.subject_id, t.start, t.end, t.why
    )
    await session.commit()
    return out


@router.get("/subjects/{subject_id}/trail/export")
async def export_trail(
    t: TrailDep,
    runtime: RuntimeDep,
    session: SessionDep,
    who: Investigator,
    format: Annotated[Format, Query()] = Format.csv,
) -> StreamingResponse:
    """The trail as CSV, GPX or KML, streamed. Audited before the first byte goes out."""
    subject_id, start, end, why = t.subject_id, t.start, t.end, t.why
    parameters = {
        "subject_id": str(subject_id),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "format": format.value,
    }
    await service.audit(session, who, "trail_export", parameters, why, None)
    await session.commit()
    points = trail_store.stream_trail(runtime.db.pool, subject_id, start, end)
    body = render(
        points,
        format,
        f"tagtrail {subject_id} {start.isoformat()} to {end.isoformat()} ({why.case_reference})",
        service.TRAIL_GAP_S,
        runtime.settings.check.late_after_s,
    )
    filename = f"trail-{subject_id}-{start:%Y%m%dT%H%M}.{format.value}"
    return StreamingResponse(
        body,
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/audit")
async def audit_log(
    session: SessionDep,
    _: Auditor,
    actor_id: uuid.UUID | None = None,
    action: str | None = None,
    case_reference: str | None = None,
    since: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[AuditOut]:
    rows = await repository.entries(
        session,
        actor_id=actor_id,
        action=action,
        case_reference=case_reference,
        since=since,
        limit=limit,
        offset=offset,
    )
    return [AuditOut.model_validate(r) for r in rows]
