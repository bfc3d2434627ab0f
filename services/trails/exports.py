"""Trail exports as CSV, GPX and KML, produced as a stream of chunks. Gaps longer than
the threshold start a new track segment (GPX) or line (KML): never bridged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from enum import StrEnum
from xml.sax.saxutils import escape

from services.ingest.repository import TrailPoint


class Format(StrEnum):
    csv = "csv"
    gpx = "gpx"
    kml = "kml"


MEDIA_TYPES = {
    Format.csv: "text/csv",
    Format.gpx: "application/gpx+xml",
    Format.kml: "application/vnd.google-earth.kml+xml",
}
CSV_HEADER = "tag_id,ts,received_at,lat,lon,accuracy_m,late,gap_before_s\n"


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


async def render(
    points: AsyncIterator[TrailPoint],
    fmt: Format,
    title: str,
    gap_s: float,
    late_after_s: float,
) -> AsyncIterator[bytes]:
    previous: datetime | None = None
    if fmt is Format.csv:
        yield CSV_HEADER.encode()
    elif fmt is Format.gpx:
        yield (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<gpx version="1.1" creator="tagtrail" xmlns="http://www.topografix.com/GPX/1/1">\n'
            f"<trk><name>{escape(title)}</name><trkseg>\n"
        ).encode()
    else:
        yield (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<kml xmlns="http://www.opengis.net/kml/2.2"><Document>\n'
            f"<name>{escape(title)}</name>\n"
        ).encode()
    open_line = False
    async for p in points:
        gap = (p.ts - previous).total_seconds() if previous else None
        late = (p.received_at - p.ts).total_seconds() > late_after_s
        broken = gap is not None and gap > gap_s
        if fmt is Format.csv:
            row = (
                f"{p.tag_id},{_iso(p.ts)},{_iso(p.received_at)},{p.lat},{p.lon},"
                f"{p.accuracy_m},{str(late).lower()},{'' if gap is None else round(gap, 1)}\n"
            )
            yield row.encode()
        elif fmt is Format.gpx:
            if broken:
                yield b"</trkseg><trkseg>\n"
            yield (
                f'<trkpt lat="{p.lat}" lon="{p.lon}"><time>{_iso(p.ts)}</time>'
                f"<hdop>{p.accuracy_m}</hdop></trkpt>\n"
            ).encode()
        else:
            if broken and open_line:
                yield b"</coordinates></LineString></Placemark>\n"
                open_line = False
            if not open_line:
                name = f"<name>from {_iso(p.ts)}</name>"
                yield f"<Placemark>{name}<LineString><coordinates>\n".encode()
                open_line = True
            yield f"{p.lon},{p.lat} ".encode()
        previous = p.ts
    if fmt is Format.gpx:
        yield b"</trkseg></trk>\n</gpx>\n"
    elif fmt is Format.kml:
        if open_line:
            yield b"</coordinates></LineString></Placemark>\n"
        yield b"</Document></kml>\n"
