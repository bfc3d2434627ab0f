"""Zones and crimes API: administrators draw zones and record crimes."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from services.common.deps import Admin, RuntimeDep, SessionDep
from services.common.errors import NotFound
from services.topics import CRIMES
from services.zones import records, repository
from services.zones.schemas import CrimeOut, CrimesIn, ZoneFeature, ZoneOut, ZoneVersionOut

router = APIRouter(prefix="/v1", tags=["zones"])


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


@router.post("/crimes", status_code=status.HTTP_201_CREATED)
async def create_crimes(
    body: CrimesIn, runtime: RuntimeDep, session: SessionDep, _: Admin
) -> list[CrimeOut]:
    """Records crimes; each is then matched against the stored trails."""
    crimes = await records.record_crimes(session, body.crimes)
    await session.commit()
    # After the commit: the matcher must find the crime it is told about.
    await runtime.bus.publish(CRIMES, [(str(c.id), records.crime_message(c)) for c in crimes])
    return [CrimeOut.model_validate(c) for c in crimes]


@router.get("/crimes/{crime_id}")
async def get_crime(crime_id: uuid.UUID, session: SessionDep, _: Admin) -> CrimeOut:
    crime = await repository.get_crime(session, crime_id)
    if crime is None:
        raise NotFound(f"crime {crime_id} does not exist")
    return CrimeOut.model_validate(crime)
