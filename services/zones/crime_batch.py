"""The police crime batch (CSV) used for UK electronic-monitoring crime matching.

Thirteen columns, no header: police force, crime type code, crime type description,
batch id, crime reference, date-time from, date-time to (both yyyyMMddHHmmss, UK local
time), easting, northing, latitude, longitude, datum, free text. A place comes as OSGB36
National Grid easting/northing, or as latitude/longitude (WGS84 unless the datum says
OSGB36). Each bad row is reported with its row number, field and reason; good rows are
kept. Pure: text in, crimes and errors out.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from services.common.geo import to_wgs84
from services.common.timeutil import local_to_utc
from services.zones.schemas import CrimeCategory, CrimeIn, CrimeRowError

COLUMNS = (
    "force",
    "type_code",
    "type_description",
    "batch_id",
    "reference",
    "date_from",
    "date_to",
    "easting",
    "northing",
    "latitude",
    "longitude",
    "datum",
    "free_text",
)
UK = ZoneInfo("Europe/London")
# The National Grid's false origin puts all of Great Britain in these bounds.
MAX_EASTING, MAX_NORTHING = 700_000.0, 1_300_000.0
# CrimeIn's fields, named as the batch's columns in error reports.
FIELD_NAMES = {
    "category": "type_code",
    "starts_at": "date_from",
    "ends_at": "date_to",
    "lat": "latitude",
    "lon": "longitude",
    "description": "type_description",
}


class RowProblem(Exception):
    def __init__(self, field: str, error: str) -> None:
        super().__init__(error)
        self.field = field
        self.error = error


def _number(value: str, field: str) -> float | None:
    if not value.strip():
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise RowProblem(field, f"{value!r} is not a number") from exc


def _when(value: str, field: str) -> datetime:
    try:
        wall = datetime.strptime(value.strip(), "%Y%m%d%H%M%S")
    except ValueError as exc:
        raise RowProblem(field, f"{value!r} is not a yyyyMMddHHmmss date-time") from exc
    return local_to_utc(wall, UK)


def _place(cells: dict[str, str]) -> tuple[float, float, float | None, float | None]:
    easting = _number(cells["easting"], "easting")
    northing = _number(cells["northing"], "northing")
    if (easting is None) != (northing is None):
        missing = "northing" if northing is None else "easting"
        raise RowProblem(missing, "easting and northing come together")
    if easting is not None and northing is not None:
        if not (0 <= easting <= MAX_EASTING):
            raise RowProblem("easting", f"{easting:g} is outside the National Grid")
        if not (0 <= northing <= MAX_NORTHING):
            raise RowProblem("northing", f"{northing:g} is outside the National Grid")
        lon, lat = to_wgs84("EPSG:27700").transform(easting, northing)
        return lat, lon, easting, northing
    lat = _number(cells["latitude"], "latitude")
    lon = _number(cells["longitude"], "longitude")
    if lat is None or lon is None:
        raise RowProblem("location", "neither easting/northing nor latitude/longitude given")
    datum = cells["datum"].strip().upper().replace(" ", "")
    if datum in ("OSGB36", "OSGB1936"):
        lon, lat = to_wgs84("EPSG:4277").transform(lon, lat)
    elif datum not in ("", "WGS84", "ETRS89"):
        raise RowProblem("datum", f"{cells['datum']!r} is not OSGB36 or WGS84")
    return lat, lon, None, None


def parse_row(cells: list[str]) -> CrimeIn:
    if len(cells) != len(COLUMNS):
        raise RowProblem("row", f"has {len(cells)} columns; a crime batch row has 13")
    named = dict(zip(COLUMNS, cells, strict=True))
    code = named["type_code"].strip().upper()
    if code not in CrimeCategory.__members__:
        allowed = ", ".join(CrimeCategory.__members__)
        raise RowProblem("type_code", f"{code!r} is not a crime type code ({allowed})")
    for field in ("force", "reference"):
        if not named[field].strip():
            raise RowProblem(field, "is empty")
    lat, lon, easting, northing = _place(named)
    try:
        return CrimeIn(
            category=CrimeCategory[code],
            force=named["force"].strip(),
            reference=named["reference"].strip(),
            description=named["type_description"].strip() or None,
            batch_id=named["batch_id"].strip() or None,
            free_text=named["free_text"].strip() or None,
            lat=lat,
            lon=lon,
            easting=easting,
            northing=northing,
            starts_at=_when(named["date_from"], "date_from"),
            ends_at=_when(named["date_to"], "date_to"),
        )
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or "date_to"
        raise RowProblem(
            FIELD_NAMES.get(loc, loc), str(err["msg"]).removeprefix("Value error, ")
        ) from exc


def parse_batch(text: str) -> tuple[list[tuple[int, CrimeIn]], list[CrimeRowError]]:
    good: list[tuple[int, CrimeIn]] = []
    bad: list[CrimeRowError] = []
    for number, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not any(c.strip() for c in cells):
            continue
        try:
            good.append((number, parse_row(cells)))
        except RowProblem as problem:
            bad.append(CrimeRowError(row=number, field=problem.field, error=problem.error))
    return good, bad
