"""A stored fix as the checks read it back: the one shape every trail reader returns."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from services.common.geo import degree_margin, degree_margins


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


@dataclass(frozen=True, slots=True)
class Reaches:
    """The Reach of each of many subjects' fixes, as columns: row i is subject
    `subjects[i]`'s bounding box (min lon, min lat, max lon, max lat) and largest
    accuracy radius."""

    subjects: list[uuid.UUID]
    sides: npt.NDArray[np.float64]  # (n, 4)
    accuracy_m: npt.NDArray[np.float64]

    @classmethod
    def of(cls, reach: Mapping[uuid.UUID, Reach]) -> Reaches:
        subjects = list(reach)
        return cls(
            subjects,
            np.array(
                [(r.min_lon, r.min_lat, r.max_lon, r.max_lat) for r in reach.values()],
                dtype=np.float64,
            ).reshape(-1, 4),
            np.array([r.accuracy_m for r in reach.values()], dtype=np.float64),
        )

    def boxes(self) -> npt.NDArray[np.float64]:
        """Each row's box widened by its accuracy radius, as Reach.box widens one."""
        s = self.sides
        margin = degree_margins(np.maximum(np.abs(s[:, 1]), np.abs(s[:, 3])), self.accuracy_m)
        return s + np.outer(margin, [-1.0, -1.0, 1.0, 1.0])
