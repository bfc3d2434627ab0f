"""Zone and crime decisions, as pure functions: containment of a fix's accuracy circle,
the exclusion episode state machine, and the ids that make alerts replay-safe."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from shapely import Point, Polygon
from shapely.prepared import PreparedGeometry, prep

from services.common.geo import LocalFrame

ALERT_NAMESPACE = uuid.UUID("5b0f1c8e-7a53-4d4a-9c2e-3a9f7d1e2b60")


class Containment(StrEnum):
    inside = "inside"  # the whole accuracy circle is inside
    possibly_inside = "possibly_inside"  # the circle touches the zone
    outside = "outside"


@dataclass(frozen=True)
class PreparedZone:
    """A zone in a metric frame centred on it, ready for many containment tests."""

    id: uuid.UUID
    subject_id: uuid.UUID
    kind: str
    name: str
    version: int
    frame: LocalFrame
    shape: Polygon
    prepared: PreparedGeometry

    @classmethod
    def build(
        cls,
        id: uuid.UUID,
        subject_id: uuid.UUID,
        kind: str,
        name: str,
        version: int,
        polygon: Polygon,
    ) -> PreparedZone:
        centre = polygon.centroid
        frame = LocalFrame(centre.y, centre.x)
        shape = frame.geometry(polygon)
        return cls(id, subject_id, kind, name, version, frame, shape, prep(shape))


def classify(zone: PreparedZone, lat: float, lon: float, accuracy_m: float) -> Containment:
    p = Point(zone.frame.point(lat, lon))
    if (
        zone.prepared.contains(p)
        and zone.shape.exterior.distance(p) >= accuracy_m
        and all(hole.distance(p) >= accuracy_m for hole in zone.shape.interiors)
    ):
        return Containment.inside
    if zone.shape.distance(p) <= accuracy_m:
        return Containment.possibly_inside
    return Containment.outside


@dataclass(frozen=True, slots=True)
class EpisodeState:
    episode_start: datetime | None = None
    last_inside: datetime | None = None
    last_seen: datetime | None = None


@dataclass(frozen=True, slots=True)
class EpisodeChange:
    opened: bool  # False: closed
    episode_start: datetime
    at: datetime


def step(
    state: EpisodeState, ts: datetime, containment: Containment
) -> tuple[EpisodeState, EpisodeChange | None]:
    """One fix through an exclusion zone's episode machine.

    An episode opens on the first fix whose whole circle is inside, stays open while the
    subject is inside, and closes on the first later fix clearly outside. A fix that only
    possibly touches the zone neither opens nor closes an episode (drift at the boundary).
    """
    last_seen = ts if state.last_seen is None else max(state.last_seen, ts)
    if containment is Containment.inside:
        if state.episode_start is None:
            new = EpisodeState(ts, ts, last_seen)
            return new, EpisodeChange(True, ts, ts)
        last_inside = ts if state.last_inside is None else max(state.last_inside, ts)
        return replace(state, last_inside=last_inside, last_seen=last_seen), None
    if (
        containment is Containment.outside
        and state.episode_start is not None
        and (state.last_inside is None or ts > state.last_inside)
    ):
        return EpisodeState(None, state.last_inside, last_seen), EpisodeChange(
            False, state.episode_start, ts
        )
    return replace(state, last_seen=last_seen), None


def exclusion_alert_id(subject_id: uuid.UUID, zone_id: uuid.UUID, start: datetime) -> uuid.UUID:
    key = f"exclusion|{subject_id}|{zone_id}|{start.astimezone(UTC).isoformat()}"
    return uuid.uuid5(ALERT_NAMESPACE, key)


def crime_alert_id(crime_id: uuid.UUID, subject_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(ALERT_NAMESPACE, f"crime_match|{crime_id}|{subject_id}")


def is_late(
    ts: datetime, received_at: datetime, last_seen: datetime | None, late_after_s: float
) -> bool:
    """Late: taken before fixes already decided on, or received long after it was taken."""
    behind = last_seen is not None and ts < last_seen
    return behind or (received_at - ts).total_seconds() > late_after_s
