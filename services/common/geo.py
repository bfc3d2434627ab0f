"""Metric geometry helpers: distances in metres on the earth, never in degrees."""

from __future__ import annotations

import math
from functools import lru_cache

import shapely
from pyproj import CRS, Geod, Transformer
from shapely import Geometry

WGS84 = Geod(ellps="WGS84")
# Metres per degree of latitude, rounded down so boxes built from it err on the large side.
_M_PER_DEG_LAT = 110_574.0


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Geodesic distance in metres between two WGS84 positions."""
    _, _, d = WGS84.inv(lon1, lat1, lon2, lat2)
    return float(d)


def degree_margin(lat: float, radius_m: float) -> float:
    """A margin in degrees that surely covers radius_m around a point at this latitude.

    Used only to build index-friendly bounding boxes; the exact test is always geodesic.
    """
    cos_lat = max(math.cos(math.radians(min(abs(lat) + 1.0, 89.0))), 0.01)
    return radius_m / (_M_PER_DEG_LAT * cos_lat) * 1.05


@lru_cache(maxsize=4096)
def _local_transformer(lat0: float, lon0: float) -> Transformer:
    aeqd = CRS.from_proj4(
        f"+proj=aeqd +lat_0={lat0} +lon_0={lon0} +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
    )
    return Transformer.from_crs("EPSG:4326", aeqd, always_xy=True)


class LocalFrame:
    """An azimuthal equidistant projection centred on a place: metres, accurate near it."""

    def __init__(self, lat0: float, lon0: float) -> None:
        # Rounded so nearby zones share one cached transformer.
        self._t = _local_transformer(round(lat0, 3), round(lon0, 3))

    def point(self, lat: float, lon: float) -> tuple[float, float]:
        x, y = self._t.transform(lon, lat)
        return float(x), float(y)

    def geometry(self, geom: Geometry) -> Geometry:
        return shapely.transform(geom, self._t.transform, interleaved=False)
