"""Zone and crime records: geometry validation, storage, and their wire shapes."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from geoalchemy2 import WKTElement
from shapely import Polygon, from_wkt, to_geojson
from shapely.validation import explain_validity
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.errors import Unprocessable
from services.common.geo import LocalFrame
from services.registry import service as registry
from services.zones import repository
from services.zones.models import Crime, Zone
from services.zones.repository import ZoneRow
from services.zones.schemas import CrimeIn, CrimeMessage, ZoneFeature, ZoneOut

# A zone larger than this is a drawing mistake (a county, not a street or a town centre).
MAX_ZONE_AREA_M2 = 500e6
MIN_ZONE_AREA_M2 = 10.0


def validate_polygon(feature: ZoneFeature) -> Polygon:
    rings = feature.geometry.coordinates
    polygon = Polygon(rings[0], rings[1:])
    if not polygon.is_valid:
        raise Unprocessable(
            f"the zone geometry is invalid: {explain_validity(polygon)}", field="geometry"
        )
    centre = polygon.centroid
    area = LocalFrame(centre.y, centre.x).geometry(polygon).area
    if area > MAX_ZONE_AREA_M2:
        raise Unprocessable(
            f"the zone covers {area / 1e6:.0f} km²; at most {MAX_ZONE_AREA_M2 / 1e6:.0f} km²",
            field="geometry",
        )
    if area < MIN_ZONE_AREA_M2:
        raise Unprocessable(f"the zone covers only {area:.1f} m²", field="geometry")
    return polygon


async def create_zone(session: AsyncSession, feature: ZoneFeature) -> ZoneRow:
    polygon = validate_polygon(feature)
    await registry.require_subject(session, feature.properties.subject_id)
    zone = await repository.add_zone(
        session,
        Zone(
            subject_id=feature.properties.subject_id,
            kind=feature.properties.kind.value,
            name=feature.properties.name,
            geom=WKTElement(polygon.wkt, srid=4326),
            version=1,
        ),
    )
    return ZoneRow(zone.id, zone.subject_id, zone.kind, zone.name, zone.version, polygon.wkt)


def to_feature(row: ZoneRow) -> ZoneOut:
    return ZoneOut(
        id=row.id,
        geometry=orjson.loads(to_geojson(from_wkt(row.wkt))),
        properties={
            "subject_id": str(row.subject_id),
            "kind": row.kind,
            "name": row.name,
            "version": row.version,
        },
    )


async def record_crimes(session: AsyncSession, crimes: Sequence[CrimeIn]) -> list[Crime]:
    rows = [
        Crime(
            category=c.category.value,
            reference=c.reference,
            lat=c.lat,
            lon=c.lon,
            geom=WKTElement(f"POINT({c.lon} {c.lat})", srid=4326),
            starts_at=c.starts_at,
            ends_at=c.ends_at,
        )
        for c in crimes
    ]
    await repository.add_crimes(session, rows)
    return rows


def crime_message(c: Crime) -> CrimeMessage:
    return CrimeMessage(
        id=c.id,
        category=c.category,  # type: ignore[arg-type]
        lat=c.lat,
        lon=c.lon,
        starts_at=c.starts_at,
        ends_at=c.ends_at,
    )
