"""Zones and crimes API: administrators draw zones and record crimes."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from services.common.deps import Admin, RuntimeDep, SessionDep
from services.common.errors import NotFound, PayloadTooLarge
from services.common.limits import read_body
from services.topics import CRIMES
from services.trails import service as audit_service
from services.zones import records, repository
from services.zones.crime_batch import parse_batch
from services.zones.models import Crime
from services.zones.schemas import (
    CrimeBatchResult,
    CrimeIn,
    CrimeOut,
    CrimesIn,
    MatchRunOut,
    ZoneFeature,
    ZoneOut,
    ZoneVersionOut,
)
from services.zones.worker import Trigger, run_matching

# Every successful request here is written to the audit log.
router = APIRouter(
    prefix="/v1", tags=["zones"], dependencies=[Depends(audit_service.record_request)]
)

MAX_BATCH_BYTES = 16 * 1024 * 1024
MAX_BATCH_ROWS = 50_000


@router.post("/zones", status_code=status.HTTP_201_CREATED)
async def create_zone(body: ZoneFeature, session: SessionDep, _: Admin) -> ZoneOut:
    row = await records.create_zone(session, body)
    await session.commit()
    return records.to_feature(row)


@router.put("/zones/{zone_id}")
async def replace_zone(
    zone_id: uuid.UUID, body: ZoneFeature, session: SessionDep, _: Admin
) -> ZoneOut:
    """A new version of the zone: alerts from now on record the version they used."""
    row = await records.replace_zone(session, zone_id, body)
    await session.commit()
    return records.to_feature(row)


@router.get("/zones")
async def list_zones(
    session: SessionDep, _: Admin, subject_id: Annotated[uuid.UUID, Query()]
) -> list[ZoneOut]:
    rows = await repository.zones_for_subjects(session, [subject_id])
    return [records.to_feature(r) for r in rows]


@router.get("/zones/{zone_id}/versions")
async def zone_versions(zone_id: uuid.UUID, session: SessionDep, _: Admin) -> list[ZoneVersionOut]:
    rows = await repository.versions(session, zone_id)
    if not rows:
        raise NotFound(f"zone {zone_id} does not exist")
    return [ZoneVersionOut.model_validate(v) for v in rows]


@router.get("/zones/{zone_id}")
async def get_zone(zone_id: uuid.UUID, session: SessionDep, _: Admin) -> ZoneOut:
    row = await repository.get_zone(session, zone_id)
    if row is None:
        raise NotFound(f"zone {zone_id} does not exist")
    return records.to_feature(row)


async def _record(
    runtime: RuntimeDep, session: SessionDep, crimes: list[CrimeIn]
) -> list[tuple[Crime, records.Recorded]]:
    recorded = await records.record_crimes(session, crimes)
    await session.commit()
    # After the commit: the matcher must find the crime it is told about. Unchanged
    # re-sends were matched when they first came.
    fresh = [c for c, how in recorded if how is not records.Recorded.unchanged]
    await runtime.bus.publish(CRIMES, [(str(c.id), records.crime_message(c)) for c in fresh])
    return recorded


@router.post("/crimes", status_code=status.HTTP_201_CREATED)
async def create_crimes(
    body: CrimesIn, runtime: RuntimeDep, session: SessionDep, _: Admin
) -> list[CrimeOut]:
    """Records crimes; each new crime or version is then matched against stored trails."""
    recorded = await _record(runtime, session, body.crimes)
    return [CrimeOut.model_validate(c) for c, _ in recorded]


@router.post("/crimes/batches")
async def upload_crime_batch(
    request: Request, runtime: RuntimeDep, session: SessionDep, _: Admin
) -> CrimeBatchResult:
    """A police crime batch as CSV (13 columns, no header). Bad rows are reported by row
    number, field and reason; the good ones are recorded and matched."""
    body = await read_body(request, MAX_BATCH_BYTES)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = body.decode("cp1252", errors="replace")
    good, bad = parse_batch(text)
    if len(good) + len(bad) > MAX_BATCH_ROWS:
        raise PayloadTooLarge(f"more than {MAX_BATCH_ROWS} rows in one batch")
    recorded = await _record(runtime, session, [c for _, c in good]) if good else []
    counts = {how: sum(1 for _, h in recorded if h is how) for how in records.Recorded}
    return CrimeBatchResult(
        rows=len(good) + len(bad),
        accepted=len(good),
        new_crimes=counts[records.Recorded.new],
        new_versions=counts[records.Recorded.new_version],
        unchanged=counts[records.Recorded.unchanged],
        rejected=bad,
        crime_ids=[c.id for c, _ in recorded],
    )


@router.get("/crimes/{crime_id}")
async def get_crime(crime_id: uuid.UUID, session: SessionDep, _: Admin) -> CrimeOut:
    crime = await repository.get_crime(session, crime_id)
    if crime is None:
        raise NotFound(f"crime {crime_id} does not exist")
    return CrimeOut.model_validate(crime)


@router.get("/crimes/{crime_id}/matches")
async def crime_matches(crime_id: uuid.UUID, session: SessionDep, _: Admin) -> MatchRunOut:
    """What matching knows now for this crime version: the latest run, its results those
    of the latest run over every wearer updated by the runs since for subjects whose
    new fixes came near (`based_on` lists them all, oldest first)."""
    out = await records.current_matches(session, crime_id)
    if out is None:
        raise NotFound(f"no matching run for crime {crime_id} yet")
    return out


@router.post("/crimes/{crime_id}/matches/rerun", status_code=status.HTTP_201_CREATED)
async def rerun_matches(crime_id: uuid.UUID, runtime: RuntimeDep, _: Admin) -> MatchRunOut:
    """Runs matching again now (a manual re-run is recorded as such)."""
    run = await run_matching(
        runtime.db, runtime.bus, runtime.settings.check, crime_id, Trigger.manual
    )
    if run is None:
        raise NotFound(f"crime {crime_id} does not exist")
    return MatchRunOut.model_validate(run)
