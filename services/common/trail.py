"""A stored fix as the checks read it back: the one shape every trail reader returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.common.geo import degree_margin


@dataclass(frozen=True, slots=True)
class TrailFix:
    tag_id: str
    ts: datetime
    received_at: datetime
    lat: float
    lon: float
    accuracy_m: float


@dataclass(frozen=True, slots=True)
class Reach:
    """The bounding box (degrees) of some fixes, with the largest accuracy radius among
    them: every accuracy circle and every straight path between the fixes lies within
    the box widened by that radius."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float
    accuracy_m: float

    @classmethod
    def of(cls, fixes: Sequence[TrailFix]) -> Reach:
        lats = [f.lat for f in fixes]
        lons = [f.lon for f in fixes]
        return cls(min(lons), min(lats), max(lons), max(lats), max(f.accuracy_m for f in fixes))

    def box(self) -> tuple[float, float, float, float]:
        """The box widened by the accuracy radius: (min lon, min lat, max lon, max lat)."""
        margin = degree_margin(max(abs(self.min_lat), abs(self.max_lat)), self.accuracy_m)
        return (
            self.min_lon - margin,
            self.min_lat - margin,
            self.max_lon + margin,
            self.max_lat + margin,
        )

    def clear_of(self, extent: tuple[float, float, float, float]) -> bool:
        """Whether the widened box misses `extent` (min lon, min lat, max lon, max lat)."""
        x0, y0, x1, y1 = self.box()
        return x0 > extent[2] or x1 < extent[0] or y0 > extent[3] or y1 < extent[1]
