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

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any

import numpy as np

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
    within = [f for f in fixes if lo <= f.ts <= hi]
    gaps = _gaps(lo, hi, [f.ts for f in within], params.gap_s)
    span = (hi - lo).total_seconds()
    coverage = 1.0 - sum((b - a).total_seconds() for a, b in gaps) / span if span > 0 else 0.0
    paths = _Paths(frame, scene, fixes, lo, hi, params) if fixes else None
    closest = paths.closest() if paths else None
    if not within and closest is None:
        return Assessment(subject_id, Outcome.unknown, None, 0.0, 0.0, gaps, 0)
    assert paths is not None
    time_within = paths.time_within(params.radius_m)
    if closest is not None and closest.distance_m <= params.radius_m:
        near = paths.fixes_within(params.radius_m, EVIDENCE_FIXES)
        evidence = {f.ts: f for f in (*near, *closest.fixes)}
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


class _Paths:
    """A trail in metres around the scene, every fix and every path between consecutive
    fixes at once (numpy): how near each came, and when. Only the part of a path inside
    the window counts, and only paths between fixes no more than segment_max_gap_s apart."""

    def __init__(
        self,
        frame: LocalFrame,
        scene: CrimeScene,
        fixes: list[TrailFix],
        lo: datetime,
        hi: datetime,
        params: MatchParams,
    ) -> None:
        n = len(fixes)
        self.fixes = fixes
        lat = np.fromiter((f.lat for f in fixes), np.float64, n)
        lon = np.fromiter((f.lon for f in fixes), np.float64, n)
        x, y = frame.points(lat, lon)
        # LocalFrame rounds its centre to share transformers; measure from the scene itself.
        cx, cy = frame.point(scene.lat, scene.lon)
        x, y = x - cx, y - cy
        acc = np.fromiter((f.accuracy_m for f in fixes), np.float64, n)
        # Seconds from the start of the window: small numbers, exact to the microsecond.
        t = np.fromiter(((f.ts - lo).total_seconds() for f in fixes), np.float64, n)
        end = (hi - lo).total_seconds()
        self.fix_in = (t >= 0) & (t <= end)
        self.fix_d = np.maximum(0.0, np.hypot(x, y) - acc)
        dt = np.diff(t)
        self.seg = np.flatnonzero(
            (dt > 0) & (dt <= params.segment_max_gap_s) & (t[1:] >= 0) & (t[:-1] <= end)
        )
        i = self.seg
        dt = dt[i]
        ax, ay = x[i], y[i]
        dx, dy = x[i + 1] - ax, y[i + 1] - ay
        self.t0 = np.maximum(0.0, -t[i] / dt)
        self.t1 = np.minimum(1.0, (end - t[i]) / dt)
        length2 = dx * dx + dy * dy
        moving = length2 > 0
        nearest = np.divide(-(ax * dx + ay * dy), length2, out=np.zeros_like(dx), where=moving)
        self.seg_t = np.minimum(np.maximum(nearest, self.t0), self.t1)
        px, py = ax + self.seg_t * dx, ay + self.seg_t * dy
        accuracy = acc[i] + self.seg_t * (acc[i + 1] - acc[i])
        self.seg_d = np.maximum(0.0, np.hypot(px, py) - accuracy)
        self.seg_speed = np.sqrt(length2) / dt
        self.seg_dt = dt
        self._a = (ax, ay, dx, dy)

    def closest(self) -> Approach | None:
        """The nearest approach, the earliest of equals."""
        best: tuple[float, datetime, Approach] | None = None
        fixes_in = np.flatnonzero(self.fix_in)
        if len(fixes_in):
            k = fixes_in[np.argmin(self.fix_d[fixes_in])]
            f = self.fixes[k]
            best = (
                float(self.fix_d[k]),
                f.ts,
                Approach(float(self.fix_d[k]), f.ts, "fix", None, (f,)),
            )
        if len(self.seg):
            j = int(np.argmin(self.seg_d))
            a, b = self.fixes[self.seg[j]], self.fixes[self.seg[j] + 1]
            d = float(self.seg_d[j])
            at = a.ts + timedelta(seconds=float(self.seg_t[j] * self.seg_dt[j]))
            if best is None or (d, at) < best[:2]:
                best = (d, at, Approach(d, at, "segment", float(self.seg_speed[j]), (a, b)))
        return best[2] if best else None

    def fixes_within(self, radius_m: float, limit: int) -> list[TrailFix]:
        """The fixes in the window nearest the scene, up to `limit`, within the radius."""
        k = np.flatnonzero(self.fix_in & (self.fix_d <= radius_m))
        k = k[np.argsort(self.fix_d[k], kind="stable")][:limit]
        return [self.fixes[i] for i in k]

    def time_within(self, radius_m: float) -> float:
        """Seconds the paths spent within the radius: solve |a + t d|² ≤ r² for t."""
        ax, ay, dx, dy = self._a
        qa = dx * dx + dy * dy
        qb = 2 * (ax * dx + ay * dy)
        qc = ax * ax + ay * ay - radius_m * radius_m
        open_ = self.t1 > self.t0
        still = qa == 0
        disc = qb * qb - 4 * qa * qc
        with np.errstate(divide="ignore", invalid="ignore"):
            root = np.sqrt(np.maximum(disc, 0.0))
            lo = (-qb - root) / (2 * qa)
            hi = (-qb + root) / (2 * qa)
        moving_share = np.maximum(0.0, np.minimum(hi, self.t1) - np.maximum(lo, self.t0))
        share = np.where(
            still, np.where(qc <= 0, self.t1 - self.t0, 0.0), np.where(disc < 0, 0.0, moving_share)
        )
        return float(np.sum(np.where(open_, share, 0.0) * self.seg_dt))


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


OUTCOMES = tuple(o.value for o in Outcome)


def merge_results(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs' results (as stored, oldest first) as one: each subject as the latest run
    that assessed them found them. Matched closest first, the rest by subject."""
    latest: dict[str, tuple[str, dict[str, Any]]] = {}
    for results in runs:
        for outcome in OUTCOMES:
            for a in results.get(outcome, []):
                latest[a["subject_id"]] = (outcome, a)
    out: dict[str, list[dict[str, Any]]] = {o: [] for o in OUTCOMES}
    for outcome, a in sorted(latest.values(), key=lambda item: item[1]["subject_id"]):
        out[outcome].append(a)
    out[Outcome.matched.value].sort(key=lambda a: a["closest"]["distance_m"])
    return out
