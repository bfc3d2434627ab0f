"""Crime matching, as a pure function of a crime and the trails around it.

For each subject who wore a tag during the crime window (widened by a slack), the trail
is assessed in metres in a frame centred on the crime: the closest approach of any fix's
accuracy circle, and of the straight path between consecutive fixes close enough in time
to say something about the path, with the speed it implies; the time that path spends
within the match radius; and the trail's coverage of the window. The outcome is

- matched: the closest approach is within the radius;
- ruled out: not matched, and the trail covers the whole window without a gap;
- inconclusive: not matched, but the trail has gaps over the window;
- unknown: no data over the window at all.

Police stress that the data rules people out as well as in: both are reported.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any

from services.common.geo import LocalFrame
from services.zones.service import TrailFix

ALGORITHM = "crime-match/2"
# Evidence kept per matched subject: the fixes nearest the scene, in time order.
EVIDENCE_FIXES = 10


class Outcome(StrEnum):
    matched = "matched"
    ruled_out = "ruled_out"
    inconclusive = "inconclusive"
    unknown = "unknown"


@dataclass(frozen=True, slots=True)
class MatchParams:
    radius_m: float = 100.0
    slack_s: float = 900.0
    max_accuracy_m: float = 250.0
    segment_max_gap_s: float = 600.0
    gap_s: float = 300.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "algorithm": ALGORITHM,
            "radius_m": self.radius_m,
            "slack_s": self.slack_s,
            "max_accuracy_m": self.max_accuracy_m,
            "segment_max_gap_s": self.segment_max_gap_s,
            "gap_s": self.gap_s,
        }


@dataclass(frozen=True, slots=True)
class CrimeScene:
    id: uuid.UUID
    lat: float
    lon: float
    starts_at: datetime
    ends_at: datetime

    def window(self, params: MatchParams) -> tuple[datetime, datetime]:
        slack = timedelta(seconds=params.slack_s)
        return self.starts_at - slack, self.ends_at + slack


@dataclass(frozen=True, slots=True)
class Approach:
    distance_m: float  # from the crime to the edge of the accuracy circle; 0 if it covers it
    at: datetime
    via: str  # "fix" or "segment"
    speed_mps: float | None
    fixes: tuple[TrailFix, ...]


@dataclass(frozen=True)
class Assessment:
    subject_id: uuid.UUID
    outcome: Outcome
    closest: Approach | None
    time_within_s: float
    coverage: float
    gaps: tuple[tuple[datetime, datetime], ...]
    fixes_in_window: int
    evidence: tuple[TrailFix, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        closest = None
        if self.closest is not None:
            closest = {
                "distance_m": round(self.closest.distance_m, 1),
                "at": self.closest.at.isoformat(),
                "via": self.closest.via,
                "speed_mps": None
                if self.closest.speed_mps is None
                else round(self.closest.speed_mps, 1),
            }
        return {
            "subject_id": str(self.subject_id),
            "outcome": self.outcome.value,
            "closest": closest,
            "time_within_s": round(self.time_within_s, 1),
            "coverage": round(self.coverage, 4),
            "gaps": [{"from": a.isoformat(), "to": b.isoformat()} for a, b in self.gaps],
            "fixes_in_window": self.fixes_in_window,
            "evidence": [fix_dict(f) for f in self.evidence],
        }


def fix_dict(f: TrailFix) -> dict[str, Any]:
    return {
        "tag_id": f.tag_id,
        "ts": f.ts.isoformat(),
        "received_at": f.received_at.isoformat(),
        "lat": f.lat,
        "lon": f.lon,
        "accuracy_m": f.accuracy_m,
    }


def assess(
    scene: CrimeScene, subject_id: uuid.UUID, trail: Sequence[TrailFix], params: MatchParams
) -> Assessment:
    lo, hi = scene.window(params)
    frame = LocalFrame(scene.lat, scene.lon)
    fixes = sorted((f for f in trail if f.accuracy_m <= params.max_accuracy_m), key=lambda f: f.ts)
    xy = {f.ts: frame.point(f.lat, f.lon) for f in fixes}
    # LocalFrame rounds its centre to share transformers; measure from the scene itself.
    cx, cy = frame.point(scene.lat, scene.lon)
    within = [f for f in fixes if lo <= f.ts <= hi]
    approaches: list[Approach] = []
    for f in within:
        x, y = xy[f.ts]
        d = max(0.0, math.hypot(x - cx, y - cy) - f.accuracy_m)
        approaches.append(Approach(d, f.ts, "fix", None, (f,)))
    time_within = 0.0
    for a, b in pairwise(fixes):
        dt = (b.ts - a.ts).total_seconds()
        if dt <= 0 or dt > params.segment_max_gap_s or b.ts < lo or a.ts > hi:
            continue
        ax, ay = xy[a.ts][0] - cx, xy[a.ts][1] - cy
        bx, by = xy[b.ts][0] - cx, xy[b.ts][1] - cy
        # Only the part of the segment inside the window counts.
        t0 = max(0.0, (lo - a.ts).total_seconds() / dt)
        t1 = min(1.0, (hi - a.ts).total_seconds() / dt)
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = 0.0 if length2 == 0 else -(ax * dx + ay * dy) / length2
        t = min(max(t, t0), t1)
        px, py = ax + t * dx, ay + t * dy
        accuracy = a.accuracy_m + t * (b.accuracy_m - a.accuracy_m)
        speed = math.sqrt(length2) / dt
        approaches.append(
            Approach(
                max(0.0, math.hypot(px, py) - accuracy),
                a.ts + timedelta(seconds=t * dt),
                "segment",
                speed,
                (a, b),
            )
        )
        time_within += dt * _fraction_within(ax, ay, dx, dy, t0, t1, params.radius_m)
    gaps = _gaps(lo, hi, [f.ts for f in within], params.gap_s)
    span = (hi - lo).total_seconds()
    coverage = 1.0 - sum((b - a).total_seconds() for a, b in gaps) / span if span > 0 else 0.0
    closest = min(approaches, key=lambda a: (a.distance_m, a.at), default=None)
    if not within and closest is None:
        return Assessment(subject_id, Outcome.unknown, None, 0.0, 0.0, gaps, 0)
    if closest is not None and closest.distance_m <= params.radius_m:
        near = sorted(
            (a for a in approaches if a.via == "fix" and a.distance_m <= params.radius_m),
            key=lambda a: a.distance_m,
        )[:EVIDENCE_FIXES]
        evidence = {f.ts: f for a in (*near, closest) for f in a.fixes}
        return Assessment(
            subject_id,
            Outcome.matched,
            closest,
            time_within,
            coverage,
            gaps,
            len(within),
            tuple(evidence[t] for t in sorted(evidence)),
        )
    outcome = Outcome.ruled_out if not gaps else Outcome.inconclusive
    return Assessment(subject_id, outcome, closest, time_within, coverage, gaps, len(within))


def _fraction_within(
    ax: float, ay: float, dx: float, dy: float, t0: float, t1: float, radius: float
) -> float:
    """The share of the segment, between t0 and t1, whose points lie within radius of
    the origin: solve |a + t d|² ≤ r² for t."""
    if t1 <= t0:
        return 0.0
    qa = dx * dx + dy * dy
    qb = 2 * (ax * dx + ay * dy)
    qc = ax * ax + ay * ay - radius * radius
    if qa == 0:
        return (t1 - t0) if qc <= 0 else 0.0
    disc = qb * qb - 4 * qa * qc
    if disc < 0:
        return 0.0
    root = math.sqrt(disc)
    lo, hi = (-qb - root) / (2 * qa), (-qb + root) / (2 * qa)
    return max(0.0, min(hi, t1) - max(lo, t0))


def _gaps(
    lo: datetime, hi: datetime, times: list[datetime], gap_s: float
) -> tuple[tuple[datetime, datetime], ...]:
    marks = [lo, *times, hi]
    return tuple((a, b) for a, b in pairwise(marks) if (b - a).total_seconds() > gap_s)


@dataclass(frozen=True)
class MatchResults:
    matched: list[Assessment]
    ruled_out: list[Assessment]
    inconclusive: list[Assessment]
    unknown: list[Assessment]

    def as_dict(self) -> dict[str, Any]:
        return {
            "matched": [a.as_dict() for a in self.matched],
            "ruled_out": [a.as_dict() for a in self.ruled_out],
            "inconclusive": [a.as_dict() for a in self.inconclusive],
            "unknown": [a.as_dict() for a in self.unknown],
        }


def match(
    scene: CrimeScene,
    trails: Mapping[uuid.UUID, Sequence[TrailFix]],
    candidates: Sequence[uuid.UUID],
    params: MatchParams,
) -> MatchResults:
    """Assesses every candidate (every subject wearing a tag during the window)."""
    assessed = [assess(scene, s, trails.get(s, ()), params) for s in sorted(candidates)]

    def of(outcome: Outcome) -> list[Assessment]:
        return [a for a in assessed if a.outcome is outcome]

    matched = sorted(of(Outcome.matched), key=lambda a: a.closest.distance_m if a.closest else 0)
    return MatchResults(
        matched, of(Outcome.ruled_out), of(Outcome.inconclusive), of(Outcome.unknown)
    )
