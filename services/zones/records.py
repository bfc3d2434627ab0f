"""Zone and crime records: geometry validation, storage, and their wire shapes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from enum import StrEnum

import orjson
from geoalchemy2 import WKTElement
from shapely import from_wkt, to_geojson
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity
from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.errors import NotFound, Unprocessable
from services.registry import service as registry
from services.zones import repository
from services.zones.matching import merge_results
from services.zones.models import Crime, Zone
from services.zones.repository import ZoneRow
from services.zones.schedule import Schedule, Timetable
from services.zones.schemas import (
    CrimeIn,
    CrimeMessage,
    MatchRunOut,
    ZoneFeature,
    ZoneOut,
)
from services.zones.service import PreparedZone, ZoneKind

# A zone larger than this is a drawing mistake (a county, not a street or a town centre).
MAX_ZONE_AREA_M2 = 500e6
MIN_ZONE_AREA_M2 = 10.0


def geometry_of(feature: ZoneFeature) -> BaseGeometry:
    """The feature's geometry, checked: valid rings and a plausible area in m²."""
    geometry = shape(feature.geometry.model_dump())
    if not geometry.is_valid:
        raise Unprocessable(
            f"the zone geometry is invalid: {explain_validity(geometry)}", field="geometry"
        )
    props = feature.properties
    zone = PreparedZone.build(
        uuid.uuid4(),
        0,
        props.kind,
        props.name,
        geometry,
        radius_m=props.radius_m,
        buffer_m=props.buffer_m,
    )
    area = zone.shape.area
    if area > MAX_ZONE_AREA_M2:
        raise Unprocessable(
            f"the zone covers {area / 1e6:.0f} km²; at most {MAX_ZONE_AREA_M2 / 1e6:.0f} km²",
            field="geometry",
        )
    if area < MIN_ZONE_AREA_M2:
        raise Unprocessable(f"the zone covers only {area:.1f} m²", field="geometry")
    return geometry


async def _check_subjects(session: AsyncSession, feature: ZoneFeature) -> None:
    for subject_id in feature.properties.subject_ids:
        await registry.require_subject(session, subject_id)


def _apply(zone: Zone, feature: ZoneFeature, geometry: BaseGeometry) -> None:
    props = feature.properties
    zone.kind = props.kind.value
    zone.name = props.name
    zone.geom = WKTElement(geometry.wkt, srid=4326)  # type: ignore[assignment]
    zone.radius_m = props.radius_m
    zone.buffer_m = props.buffer_m
    zone.timezone = props.timezone
    zone.schedule = props.schedule.model_dump(mode="json") if props.schedule else None
    zone.valid_from = props.valid_from
    zone.valid_to = props.valid_to


async def create_zone(session: AsyncSession, feature: ZoneFeature) -> ZoneRow:
    geometry = geometry_of(feature)
    await _check_subjects(session, feature)
    zone = Zone(version=1)
    _apply(zone, feature, geometry)
    await repository.add_zone(
        session, zone, feature.properties.subject_ids, feature.model_dump(mode="json")
    )
    row = await repository.get_zone(session, zone.id)
    assert row is not None
    return row


async def replace_zone(session: AsyncSession, zone_id: uuid.UUID, feature: ZoneFeature) -> ZoneRow:
    """A new version of the zone; decisions from now on use it and say so."""
    geometry = geometry_of(feature)
    await _check_subjects(session, feature)
    zone = await repository.lock_zone(session, zone_id)
    if zone is None:
        raise NotFound(f"zone {zone_id} does not exist")
    _apply(zone, feature, geometry)
    zone.version += 1
    zone.updated_at = func.now()  # type: ignore[assignment]
    await repository.add_version(
        session, zone, feature.properties.subject_ids, feature.model_dump(mode="json")
    )
    row = await repository.get_zone(session, zone.id)
    assert row is not None
    return row


def prepare(row: ZoneRow) -> PreparedZone:
    schedule = Schedule.model_validate(row.schedule) if row.schedule else None
    return PreparedZone.build(
        row.id,
        row.version,
        ZoneKind(row.kind),
        row.name,
        from_wkt(row.wkt),
        radius_m=row.radius_m,
        buffer_m=row.buffer_m,
        timetable=Timetable(schedule, row.timezone),
        valid_from=row.valid_from,
        valid_to=row.valid_to,
    )


def to_feature(row: ZoneRow) -> ZoneOut:
    return ZoneOut(
        id=row.id,
        geometry=orjson.loads(to_geojson(from_wkt(row.wkt))),
        properties={
            "subject_ids": [str(s) for s in row.subject_ids],
            "kind": row.kind,
            "name": row.name,
            "radius_m": row.radius_m,
            "buffer_m": row.buffer_m,
            "timezone": row.timezone,
            "schedule": row.schedule,
            "valid_from": row.valid_from.isoformat() if row.valid_from else None,
            "valid_to": row.valid_to.isoformat() if row.valid_to else None,
            "version": row.version,
        },
    )


class Recorded(StrEnum):
    new = "new"
    new_version = "new_version"
    unchanged = "unchanged"


SAME_FIELDS = ("category", "lat", "lon", "starts_at", "ends_at", "description", "free_text")


def _crime_row(c: CrimeIn, version: int) -> Crime:
    return Crime(
        force=c.force,
        reference=c.reference,
        version=version,
        current=True,
        category=c.category.value,
        description=c.description,
        batch_id=c.batch_id,
        free_text=c.free_text,
        lat=c.lat,
        lon=c.lon,
        easting=c.easting,
        northing=c.northing,
        geom=WKTElement(f"POINT({c.lon} {c.lat})", srid=4326),
        starts_at=c.starts_at,
        ends_at=c.ends_at,
    )


def _unchanged(row: Crime, c: CrimeIn) -> bool:
    incoming = {**c.model_dump(include=set(SAME_FIELDS)), "category": c.category.value}
    return all(getattr(row, f) == incoming[f] for f in SAME_FIELDS)


async def record_crimes(
    session: AsyncSession, crimes: Sequence[CrimeIn]
) -> list[tuple[Crime, Recorded]]:
    """Stores crimes. A (force, reference) seen before with other details becomes a new
    version (the old one stops being current); sent again unchanged, it is left as is, so
    re-sending a batch neither doubles crimes nor re-alerts."""
    out: list[tuple[Crime, Recorded]] = []
    for c in crimes:
        known = None
        if c.force and c.reference:
            known = await repository.current_crime(session, c.force, c.reference)
        if known is not None and _unchanged(known, c):
            out.append((known, Recorded.unchanged))
            continue
        if known is not None:
            known.current = False
        row = _crime_row(c, known.version + 1 if known else 1)
        await repository.add_crimes(session, [row])
        out.append((row, Recorded.new_version if known else Recorded.new))
    return out


def crime_message(c: Crime) -> CrimeMessage:
    return CrimeMessage(
        id=c.id,
        category=c.category,  # type: ignore[arg-type]
        lat=c.lat,
        lon=c.lon,
        starts_at=c.starts_at,
        ends_at=c.ends_at,
    )


async def current_matches(session: AsyncSession, crime_id: uuid.UUID) -> MatchRunOut | None:
    """What matching knows now for a crime version: the latest run, with the results of
    the latest run over every wearer updated by the runs since (for subjects with new
    fixes), and the runs they come from."""
    runs = await repository.current_runs(session, crime_id)
    if not runs:
        return None
    latest = MatchRunOut.model_validate(runs[-1])
    return latest.model_copy(
        update={
            "results": merge_results([r.results for r in runs]),
            "based_on": [r.id for r in runs],
        }
    )
