"""Metric geometry helpers: distances in metres on the earth, never in degrees."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import shapely
from pyproj import Geod, Transformer
from pyproj.transformer import TransformerGroup
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
    return float(degree_margins(np.float64(lat), np.float64(radius_m)))


def degree_margins(
    lat: npt.NDArray[np.float64] | np.float64, radius_m: npt.NDArray[np.float64] | np.float64
) -> npt.NDArray[np.float64]:
    """degree_margin of many points at once (and the one rule for both, so a box built
    one point at a time and one built in arrays agree to the bit)."""
    cos_lat = np.maximum(np.cos(np.radians(np.minimum(np.abs(lat) + 1.0, 89.0))), 0.01)
    return np.asarray(radius_m / (_M_PER_DEG_LAT * cos_lat) * 1.05, dtype=np.float64)


@lru_cache(maxsize=4096)
def _local_transformer(lat0: float, lon0: float) -> Transformer:
    # The operation spelt out as a PROJ pipeline (degrees to radians, then the
    # projection): the same numbers as Transformer.from_crs gives, without its search
    # of the PROJ database for candidate operations, which costs 12 ms a place against
    # 0.07 ms (measured; see docs/benchmarks.md). Every search is at a new place.
    return Transformer.from_pipeline(
        "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad"
        f" +step +proj=aeqd +lat_0={lat0} +lon_0={lon0} +x_0=0 +y_0=0 +ellps=WGS84"
    )


class LocalFrame:
    """An azimuthal equidistant projection centred on a place: metres, accurate near it."""

    def __init__(self, lat0: float, lon0: float) -> None:
        # Centred on the nearest tenth of a degree, so zones within a few kilometres
        # share one transformer: each costs about 13 kB, and 10,000 zones each with their
        # own took 130 MB of the zone checker's memory. Distances from a centre up to
        # 7 km away err by a factor of at most 1 + (7 km / 6,371 km)^2 / 6, about
        # 2 x 10^-7: 0.2 mm in a kilometre.
        self.centre = (round(lat0, 1), round(lon0, 1))
        self._t = _local_transformer(*self.centre)

    def point(self, lat: float, lon: float) -> tuple[float, float]:
        x, y = self._t.transform(lon, lat)
        return float(x), float(y)

    def points(
        self, lat: npt.NDArray[np.float64], lon: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        x, y = self._t.transform(lon, lat)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def geometry(self, geom: Geometry) -> Geometry:
        return shapely.transform(geom, self._t.transform, interleaved=False)


@lru_cache(maxsize=4)
def to_wgs84(source: str) -> Transformer:
    """The most accurate transformation from `source` to WGS84 this machine can run.

    For the British National Grid (EPSG:27700) or OSGB36 (EPSG:4277): OSTN15 when its
    grid is installed in PROJ's data directory (centimetres); otherwise EPSG's best
    Helmert fit for Great Britain, good to a few metres (pyproj's wheels do not ship the
    grid). A "ballpark" operation, which skips the datum shift and is some 100 m off in
    England, is never used.
    """
    with warnings.catch_warnings():
        # pyproj warns that the OSTN15 grid is missing; that is expected, and said above.
        warnings.simplefilter("ignore", UserWarning)
        group = TransformerGroup(source, "EPSG:4326", always_xy=True)
    usable = [t for t in group.transformers if "Ballpark" not in t.description]
    if not usable:
        raise RuntimeError(f"no datum transformation from {source} to WGS84 is available")
    return usable[0]


def grid_to_wgs84(easting: float, northing: float) -> tuple[float, float]:
    """British National Grid easting/northing to WGS84 (lat, lon)."""
    lon, lat = to_wgs84("EPSG:27700").transform(easting, northing)
    return float(lat), float(lon)
