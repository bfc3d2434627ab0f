"""Zone decisions, as pure functions over a subject's trail: containment of each fix's
accuracy circle, episodes (breaches, possible breaches, curfew gaps) derived from the
time-ordered trail, and reconciliation of those episodes with what was already reported.

Because episodes are a function of the ordered trail alone, the order in which fixes
arrive cannot change the final episodes: a late fix is merged into the trail and the
episodes around it are derived again (see reconcile).
"""

from __future__ import annotations

import uuid
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from itertools import chain, pairwise
from operator import attrgetter, lt
from typing import Any, Generic, Protocol, TypeAlias, TypeVar, cast

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry.base import BaseGeometry

from services.common.geo import LocalFrame, degree_margin
from services.common.trail import Reach, Reaches, TrailFix
from services.zones.schedule import Timetable

ALERT_NAMESPACE = uuid.UUID("5b0f1c8e-7a53-4d4a-9c2e-3a9f7d1e2b60")
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)
# How many supporting fixes an episode keeps as evidence: the first few and the last.
EVIDENCE_HEAD = 5
# Where the zone checker keeps an open run for the checks to come (Checkpoint): as it is
# at the subject's last new fix, and as it was these lags before. A batch's fixes can
# come before some already checked (uploads side by side are stored in the order they
# finish, and a buffered upload comes late), and a check goes on from the latest
# checkpoint before its first new fix.
CHECKPOINT_LAGS = (timedelta(minutes=30), timedelta(minutes=5), timedelta(0))


class Containment(StrEnum):
    inside = "inside"  # the whole accuracy circle is inside the zone
    possibly_inside = "possibly_inside"  # the centre is inside, the circle crosses the edge
    touching = "touching"  # the centre is outside, the circle reaches the zone
    outside = "outside"  # the whole circle is outside


class Confidence(StrEnum):
    confirmed = "confirmed"
    possible = "possible"


class Condition(StrEnum):
    breach = "breach"
    no_data = "no_data"  # no fixes for too long while a curfew was in force


class ZoneKind(StrEnum):
    exclusion = "exclusion"
    inclusion = "inclusion"


@dataclass(frozen=True, slots=True)
class CheckParams:
    """How much evidence a decision needs. Defaults are documented in the README."""

    confirm_fixes: int = 2
    confirm_dwell_s: float = 60.0
    segment_max_gap_s: float = 300.0
    curfew_lookback_s: float = 7200.0
    no_data_after_s: float = 1800.0


@dataclass(frozen=True)
class PreparedZone:
    """A zone version in a metric frame centred on it, ready for many containment tests."""

    id: uuid.UUID
    version: int
    kind: ZoneKind
    name: str
    frame: LocalFrame
    shape: BaseGeometry
    boundary: BaseGeometry
    # The shape's bounds in the frame (min x, min y, max x, max y, metres).
    bounds: tuple[float, float, float, float]
    # Its extent in degrees (min lon, min lat, max lon, max lat), radius and buffer
    # included, erring large: a trail wholly outside it cannot touch the zone.
    extent: tuple[float, float, float, float]
    timetable: Timetable
    valid_from: datetime | None = None
    valid_to: datetime | None = None

    @classmethod
    def build(
        cls,
        id: uuid.UUID,
        version: int,
        kind: ZoneKind,
        name: str,
        geometry: BaseGeometry,
        *,
        radius_m: float | None = None,
        buffer_m: float = 0.0,
        timetable: Timetable | None = None,
        valid_from: datetime | None = None,
        valid_to: datetime | None = None,
    ) -> PreparedZone:
        centre = geometry.centroid
        frame = LocalFrame(centre.y, centre.x)
        shape = frame.geometry(geometry)
        if radius_m:
            shape = shape.buffer(radius_m, quad_segs=16)
        if buffer_m:
            shape = shape.buffer(buffer_m, quad_segs=16)
        boundary = shape.boundary
        x0, y0, x1, y1 = geometry.bounds
        margin = degree_margin(max(abs(y0), abs(y1)), (radius_m or 0.0) + buffer_m + 1.0)
        extent = (x0 - margin, y0 - margin, x1 + margin, y1 + margin)
        # Prepared (spatial index inside GEOS) for the many tests against each.
        shapely.prepare(shape)
        shapely.prepare(boundary)
        return cls(
            id,
            version,
            kind,
            name,
            frame,
            shape,
            boundary,
            shape.bounds,
            extent,
            timetable or Timetable(None),
            valid_from,
            valid_to,
        )

    @property
    def scheduled(self) -> bool:
        return self.timetable.schedule is not None

    def windows(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """Intervals in which the zone is in force, clipped to its validity."""
        lo = max(start, self.valid_from) if self.valid_from else start
        hi = min(end, self.valid_to) if self.valid_to else end
        if lo >= hi:
            return []
        if not self.scheduled:
            return [(self.valid_from or lo, self.valid_to or FOREVER)]
        out = []
        for opens, closes in self.timetable.windows(lo, hi):
            opens = max(opens, self.valid_from) if self.valid_from else opens
            closes = min(closes, self.valid_to) if self.valid_to else closes
            if opens < closes:
                out.append((opens, closes))
        return out


def classify(zone: PreparedZone, fix: TrailFix) -> Containment:
    return classify_all(zone, [fix])[0]


FloatArray = npt.NDArray[np.float64]

_CONTAINMENTS = (
    Containment.outside,
    Containment.touching,
    Containment.possibly_inside,
    Containment.inside,
)


def _project(zone: PreparedZone, fixes: Sequence[TrailFix]) -> tuple[FloatArray, FloatArray]:
    n = len(fixes)
    return zone.frame.points(
        np.fromiter((f.lat for f in fixes), np.float64, n),
        np.fromiter((f.lon for f in fixes), np.float64, n),
    )


def classify_all(
    zone: PreparedZone,
    fixes: Sequence[TrailFix],
    xy: tuple[FloatArray, FloatArray] | None = None,
) -> list[Containment]:
    """Each fix against the zone, all at once (shapely 2 over numpy arrays): inside with
    all its accuracy circle, possibly inside, touching it with the circle, or outside.
    `xy`: the fixes already in the zone's frame."""
    if not fixes:
        return []
    x, y = xy if xy is not None else _project(zone, fixes)
    return [_CONTAINMENTS[c] for c in _containment_codes(zone, fixes, x, y).tolist()]


def _containment_codes(
    zone: PreparedZone, fixes: Sequence[TrailFix], x: FloatArray, y: FloatArray
) -> npt.NDArray[np.int64]:
    """classify_all as indices into _CONTAINMENTS."""
    accuracy = np.fromiter((f.accuracy_m for f in fixes), np.float64, len(fixes))
    return _codes(zone.shape, zone.boundary, np.array(zone.bounds), x, y, accuracy)


Shapes: TypeAlias = BaseGeometry | npt.NDArray[np.object_]


def _codes(
    shape: Shapes,
    boundary: Shapes,
    bounds: FloatArray,
    x: FloatArray,
    y: FloatArray,
    accuracy: FloatArray,
) -> npt.NDArray[np.int64]:
    """Each point's containment (an index into _CONTAINMENTS) in a zone: one zone for
    all (its shape, boundary and bounds), or one a point (arrays of them, `bounds` a
    row a point). shapely's functions work element-wise either way, so a point gets
    the same answer, to the bit, alone or among others, against one zone or many."""
    n = len(x)
    inside = shapely.contains_xy(shape, x, y)
    # Only the distance each case needs (to the edge from inside, to the zone from
    # out), and only where it can be within the accuracy: the zone's bounds are a
    # first test for fixes outside (most are far from it), then GEOS's within-distance
    # test (twice as fast as a distance, on a prepared shape), widened a hair so that
    # the distance alone decides every case near the line.
    x0, y0, x1, y1 = bounds.T
    off = np.hypot(
        np.maximum(np.maximum(x0 - x, x - x1), 0), np.maximum(np.maximum(y0 - y, y - y1), 0)
    )
    reach = accuracy * (1 + 1e-9) + 1e-9
    edge = np.full(n, np.inf)
    away = np.full(n, np.inf)
    for distances, geometry, which in (
        (edge, boundary, np.flatnonzero(inside)),
        (away, shape, np.flatnonzero(~inside & (off <= reach))),
    ):
        if len(which):
            some = geometry[which] if isinstance(geometry, np.ndarray) else geometry
            points = shapely.points(x[which], y[which])
            close = shapely.dwithin(some, points, reach[which])
            near = some[close] if isinstance(some, np.ndarray) else some
            distances[which[close]] = shapely.distance(near, points[close])
    return np.where(inside, np.where(edge >= accuracy, 3, 2), np.where(away <= accuracy, 1, 0))


# A fix as far as its place against a zone goes: when, where, and how accurately.
_FixKey = tuple[datetime, float, float, float]
_fix_key = attrgetter("ts", "lat", "lon", "accuracy_m")
# Its place: containment (an index into _CONTAINMENTS), its position in the zone's
# frame, and its time in seconds since the epoch (as a float: to tell the gaps between
# fixes in one step; near a limit, the exact time decides).
_Placed = tuple[int, float, float, float]


def _place(zone: PreparedZone, fixes: Sequence[TrailFix]) -> list[_Placed]:
    """Each fix's containment, position in the zone's frame, and time."""
    x, y = _project(zone, fixes)
    codes = _containment_codes(zone, fixes, x, y)
    times = [f.ts.timestamp() for f in fixes]
    return list(zip(codes.tolist(), x.tolist(), y.tolist(), times, strict=True))


class Placements:
    """Each (subject, zone version)'s fixes as last placed against the zone. The zone
    checker derives a subject's episodes again from the trail read back around every
    batch (two hours of it), and at 5,000 fixes a second projecting and classifying
    those same fixes again was a tenth of its time (docs/benchmarks.md, seventh
    session); only the new ones need it. Both are element-wise, so a fix placed alone
    or with others is placed alike, to the bit. What a pair keeps is its last trail's
    fixes (and those of the trail before, until they are as many again); the pairs used
    longest ago go first when the fixes kept pass `max_fixes` (100,000 fixes took 32
    MB, measured). A 121-fix trail near a zone, one fix new: evaluate took 122 µs
    against 379 placing every fix (best of 15, eighth session)."""

    def __init__(self, max_fixes: int = 100_000) -> None:
        self.max_fixes = max_fixes
        self._pairs: dict[tuple[uuid.UUID, uuid.UUID, int], dict[_FixKey, _Placed]] = {}
        self._fixes = 0

    def __len__(self) -> int:
        return self._fixes

    def prime(self, pairs: Iterable[tuple[PreparedZone, uuid.UUID, Sequence[TrailFix]]]) -> None:
        """Places every fix of these (zone, subject, trail) not kept yet, all at once,
        for place() to find. Placing costs about 40 µs a call whatever the number of
        fixes (41 for one fix, 57 for ten: numpy and GEOS calls on tiny arrays), and a
        batch checks many pairs with a fix or two new each; here they share a
        projection a frame and one call of each kind. Element-wise, so each place is
        the one place() would compute, to the bit."""
        work: list[tuple[tuple[uuid.UUID, uuid.UUID, int], _FixKey, TrailFix, PreparedZone]] = []
        for zone, subject_id, fixes in pairs:
            pair = (subject_id, zone.id, zone.version)
            known = self._pairs.get(pair, {})
            seen: set[_FixKey] = set()
            for f in fixes:
                key = _fix_key(f)
                if key not in known and key not in seen:
                    seen.add(key)
                    work.append((pair, key, f, zone))
        if not work:
            return
        n = len(work)
        lat = np.fromiter((f.lat for _, _, f, _ in work), np.float64, n)
        lon = np.fromiter((f.lon for _, _, f, _ in work), np.float64, n)
        x, y = np.empty(n), np.empty(n)
        # Zones near one another share a frame (LocalFrame): one projection a frame.
        frames: dict[tuple[float, float], list[int]] = defaultdict(list)
        for i, (*_, zone) in enumerate(work):
            frames[zone.frame.centre].append(i)
        for rows in frames.values():
            at = np.array(rows)
            x[at], y[at] = work[rows[0]][3].frame.points(lat[at], lon[at])
        codes = _codes(
            np.array([z.shape for *_, z in work], dtype=object),
            np.array([z.boundary for *_, z in work], dtype=object),
            np.array([z.bounds for *_, z in work], dtype=np.float64),
            x,
            y,
            np.fromiter((f.accuracy_m for _, _, f, _ in work), np.float64, n),
        )
        for (pair, key, f, _), code, px, py in zip(
            work, codes.tolist(), x.tolist(), y.tolist(), strict=True
        ):
            self._pairs.setdefault(pair, {})[key] = (code, px, py, f.ts.timestamp())
        self._fixes += n
        self._evict()

    def place(
        self, zone: PreparedZone, subject_id: uuid.UUID, fixes: Sequence[TrailFix]
    ) -> list[_Placed]:
        """Each fix's place (as _place), computing only those not kept."""
        pair = (subject_id, zone.id, zone.version)
        # Taken out and put back last: dicts keep insertion order, so the first pair
        # is the one used longest ago.
        known = self._pairs.pop(pair, {})
        self._fixes -= len(known)
        keys = list(map(_fix_key, fixes))
        found: list[_Placed | None] = list(map(known.get, keys))
        new = [i for i, p in enumerate(found) if p is None]
        if new:
            for i, p in zip(new, _place(zone, [fixes[i] for i in new]), strict=True):
                known[keys[i]] = found[i] = p
        placed = cast(list[_Placed], found)  # each one missing is placed now
        if len(known) > 2 * len(keys):
            # The trail has moved on: keep what this one holds.
            known = dict(zip(keys, placed, strict=True))
        self._pairs[pair] = known
        self._fixes += len(known)
        self._evict()
        return placed

    def _evict(self) -> None:
        """Drops the pairs used longest ago until at most max_fixes are kept (the last
        pair stays whatever its size)."""
        while self._fixes > self.max_fixes and len(self._pairs) > 1:
            self._fixes -= len(self._pairs.pop(next(iter(self._pairs))))


class _Role(StrEnum):
    strong = "strong"  # the fix alone shows the condition
    weak = "weak"  # the fix is consistent with it
    neutral = "neutral"  # says nothing either way (drift at the edge)
    clear = "clear"  # the fix shows the condition is over


_ROLES: dict[ZoneKind, dict[Containment, _Role]] = {
    ZoneKind.exclusion: {
        Containment.inside: _Role.strong,
        Containment.possibly_inside: _Role.weak,
        Containment.touching: _Role.neutral,
        Containment.outside: _Role.clear,
    },
    ZoneKind.inclusion: {
        Containment.outside: _Role.strong,
        Containment.touching: _Role.weak,
        Containment.possibly_inside: _Role.neutral,
        Containment.inside: _Role.clear,
    },
}


# The same, indexed by containment code (as _CONTAINMENTS): no Enum hashing a fix.
_ROLE_TABLE: dict[ZoneKind, tuple[_Role, ...]] = {
    kind: tuple(roles[c] for c in _CONTAINMENTS) for kind, roles in _ROLES.items()
}
# Whether a fix supports an episode (strong or weak), by containment code.
_SUPPORTING: dict[ZoneKind, npt.NDArray[np.bool_]] = {
    kind: np.array([r in (_Role.strong, _Role.weak) for r in table])
    for kind, table in _ROLE_TABLE.items()
}
# Whether a fix can end a path checked for a crossing, by containment code: neither
# strong nor weak.
_PATH_ENDS: dict[ZoneKind, npt.NDArray[np.bool_]] = {
    kind: np.array([r not in (_Role.strong, _Role.weak) for r in table])
    for kind, table in _ROLE_TABLE.items()
}


@dataclass(frozen=True)
class Episode:
    """One breach (or one curfew gap): however many fixes it spans, one alert."""

    subject_id: uuid.UUID
    zone_id: uuid.UUID
    zone_version: int
    zone_kind: ZoneKind
    condition: Condition
    start: datetime
    end: datetime | None  # None: still going on as far as the trail shows
    confidence: Confidence
    last_fix: datetime | None
    evidence: tuple[TrailFix, ...]
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    # Worked out once an episode: a check asks for it several times (reconciling,
    # messages, rows), and a uuid5 with its text is dear (about 3 µs).
    @cached_property
    def id(self) -> uuid.UUID:
        return episode_id(self.subject_id, self.zone_id, self.condition, self.start)


def episode_id(
    subject_id: uuid.UUID, zone_id: uuid.UUID, condition: Condition, start: datetime
) -> uuid.UUID:
    key = f"zone|{subject_id}|{zone_id}|{condition.value}|{start.astimezone(UTC).isoformat()}"
    return uuid.uuid5(ALERT_NAMESPACE, key)


@dataclass
class _Run:
    start: datetime
    reason_start: str
    # The supporting fixes: the first EVIDENCE_HEAD, the last, and how many in all. The
    # run is carried from batch to batch (Checkpoint) and never needs the others.
    head: list[TrailFix] = field(default_factory=list)
    last: TrailFix | None = None
    count: int = 0
    strong_streak: int = 0
    streak_from: datetime | None = None
    best_streak: int = 0
    best_dwell_s: float = 0.0
    any_strong: bool = False
    weak_count: int = 0

    def add(self, fix: TrailFix, role: _Role) -> None:
        if self.count < EVIDENCE_HEAD:
            self.head.append(fix)
        self.last = fix
        self.count += 1
        if role is _Role.strong:
            self.any_strong = True
            if self.strong_streak == 0:
                self.streak_from = fix.ts
            self.strong_streak += 1
            assert self.streak_from is not None
            self.best_streak = max(self.best_streak, self.strong_streak)
            self.best_dwell_s = max(self.best_dwell_s, (fix.ts - self.streak_from).total_seconds())
        else:
            self.weak_count += 1
            self.strong_streak = 0

    def copy(self) -> _Run:
        return replace(self, head=list(self.head))

    def interrupt(self) -> None:
        self.strong_streak = 0

    def episode(
        self,
        zone: PreparedZone,
        subject_id: uuid.UUID,
        end: datetime | None,
        params: CheckParams,
    ) -> Episode | None:
        if self.best_streak >= params.confirm_fixes or (
            self.best_streak >= 2 and self.best_dwell_s >= params.confirm_dwell_s
        ):
            confidence = Confidence.confirmed
        elif self.any_strong or self.weak_count >= params.confirm_fixes:
            confidence = Confidence.possible
        else:
            return None
        where = "inside" if zone.kind is ZoneKind.exclusion else "outside"
        reason = (
            f"{self.reason_start}; {self.best_streak} consecutive fix(es) wholly {where} "
            f"over {self.best_dwell_s:.0f} s, {self.count} supporting in all"
        )
        evidence = tuple(self.head)
        if self.count > EVIDENCE_HEAD and self.last is not None:
            evidence += (self.last,)
        return Episode(
            subject_id=subject_id,
            zone_id=zone.id,
            zone_version=zone.version,
            zone_kind=zone.kind,
            condition=Condition.breach,
            start=self.start,
            end=end,
            confidence=confidence,
            last_fix=self.last.ts if self.last is not None else None,
            evidence=evidence,
            reason=reason,
        )


@dataclass(frozen=True)
class Checkpoint:
    """A run of fixes in an exclusion zone in force at all times, as it stood once a
    check had taken the fixes up to `through` (one of CHECKPOINT_LAGS before the
    subject's last new fix), so that a later check goes on from the fixes after that
    one instead of reading the trail back to the run's start, which may be hours of
    fixes, with every batch.

    `counted` is how many stored fixes the subject has from the run's start to
    `through`. Stored fixes are never changed, so while that count holds and every new
    fix comes after `through`, the fixes the run summarises are the ones it was made
    from, whichever process stored them and whatever happened in between; a late fix
    among them changes the count (or comes at or before `through`) and the trail is read
    back in full again."""

    subject_id: uuid.UUID
    zone_id: uuid.UUID
    zone_version: int
    run: _Run
    through: datetime
    counted: int

    @property
    def episode_id(self) -> uuid.UUID:
        return episode_id(self.subject_id, self.zone_id, Condition.breach, self.run.start)

    def of_zone(self, zone: PreparedZone) -> bool:
        """Whether this checkpoint was made in this zone as it now stands (a new version
        may be another shape, or a curfew)."""
        return zone.id == self.zone_id and zone.version == self.zone_version and _checkpointed(zone)


def carried_on(kept: Sequence[Checkpoint], first_new: datetime) -> Checkpoint | None:
    """Of a subject's checkpoints in a zone (in time order), the one a check whose first
    new fix is `first_new` would go on from: the latest before it."""
    return next((c for c in reversed(kept) if c.through < first_new), None)


def still_kept(
    kept: Sequence[Checkpoint], made: Sequence[Checkpoint], first_new: datetime, most: int
) -> list[Checkpoint]:
    """The checkpoints to keep after a check whose first new fix was `first_new` made
    `made`: those kept before that the new fixes all follow (the others now summarise
    fewer fixes than are stored), and the new; the latest `most`, in time order. None,
    when the check found no run open at any of its marks."""
    if not made:
        return []
    by_through = {c.through: c for c in kept if c.through < first_new}
    by_through.update((c.through, c) for c in made)
    return [by_through[t] for t in sorted(by_through)][-most:]


def _checkpointed(zone: PreparedZone) -> bool:
    """Whether a zone's open runs are carried as checkpoints: exclusion zones in force
    at all times. A curfew's runs are cut by its windows, and an inclusion zone reads
    back a look-back before them: those read the trail back."""
    return zone.kind is ZoneKind.exclusion and not zone.scheduled


def evaluate(
    zone: PreparedZone,
    subject_id: uuid.UUID,
    trail: Sequence[TrailFix],
    params: CheckParams = CheckParams(),
    placements: Placements | None = None,
) -> list[Episode]:
    """Every episode the trail shows for this zone, derived from the trail alone.
    `placements`: fixes placed against zones before, kept to be placed once."""
    return _evaluate(zone, subject_id, trail, params, placements, None)[0]


def _evaluate(
    zone: PreparedZone,
    subject_id: uuid.UUID,
    trail: Sequence[TrailFix],
    params: CheckParams,
    placements: Placements | None,
    carried: Checkpoint | None,
    marks: Sequence[datetime] = (),
) -> tuple[list[Episode], list[tuple[datetime, _Run]]]:
    """As evaluate, going on from the run `carried` (if any) at the fixes after its
    `through`; with, when the zone is checkpointed, the run open once the fixes up to each
    of `marks` (in time order) are taken, for those after `through` with a run open, as
    (the last such fix, the run)."""
    fixes, times = _ordered(trail)
    if not fixes or (
        zone.kind is ZoneKind.exclusion and carried is None and _far_from(zone, fixes)
    ):
        return [], []
    lookback = timedelta(seconds=params.curfew_lookback_s)
    last_known = times[-1]
    placed = (
        _place(zone, fixes) if placements is None else placements.place(zone, subject_id, fixes)
    )
    # Columns: containment code, x, y, time (as _Placed).
    where = np.fromiter(chain.from_iterable(placed), np.float64, 4 * len(placed)).reshape(-1, 4)
    codes = where[:, 0].astype(np.int64)
    table = _ROLE_TABLE[zone.kind]
    roles = [table[c] for c in codes.tolist()]
    supporting = np.flatnonzero(_SUPPORTING[zone.kind][codes]).tolist()
    episodes: list[Episode] = []
    open_at: list[tuple[datetime, _Run]] = []
    for opens, closes in zone.windows(times[0] - lookback, last_known + timedelta(seconds=1)):
        # The fixes in [opens, closes), and those in the lookback before it: slices,
        # the trail being in time order.
        lo, hi = bisect_left(times, opens), bisect_left(times, closes)
        before = bisect_left(times, opens - lookback)
        ended = closes <= last_known
        # A carried run goes on at the first fix after those it summarises.
        after = bisect_right(times, carried.through) if carried is not None else 0
        resume = (
            (carried.run.copy(), max(lo, after))
            if carried is not None and opens <= carried.through < closes
            else None
        )
        # Each mark as the index of the first fix after it, if a fix that the carried
        # run does not already summarise is at or before it.
        indices = (
            [
                k
                for m in marks
                if opens <= m < closes and (k := bisect_right(times, m)) > max(lo, after)
            ]
            if _checkpointed(zone)
            else []
        )
        found, runs = _runs(
            zone,
            subject_id,
            fixes,
            roles,
            supporting,
            (lo, hi),
            before < lo,
            (opens, closes),
            ended,
            params,
            resume,
            indices,
        )
        episodes += found
        open_at += [(times[k - 1], r) for k, r in zip(indices, runs, strict=True) if r is not None]
        if zone.kind is ZoneKind.inclusion and zone.scheduled and ended:
            episodes += _gaps(zone, subject_id, fixes[lo:hi], opens, closes, params)
        if zone.kind is ZoneKind.exclusion:
            episodes += _segments(zone, subject_id, fixes, where, lo, hi, params)
    episodes.sort(key=lambda e: (e.start, e.condition))
    return episodes, open_at


def _far_from(zone: PreparedZone, fixes: Sequence[TrailFix]) -> bool:
    """Whether the trail, accuracy circles and the paths between fixes (all inside its
    bounding box) stays clear of the zone's extent. For an exclusion zone such a trail
    shows nothing at all: every fix outside, nothing crossing. Most zones, most of the
    time, are nowhere near: this saves projecting the trail into each."""
    return Reach.of(fixes).clear_of(zone.extent)


def _ordered(trail: Sequence[TrailFix]) -> tuple[list[TrailFix], list[datetime]]:
    """The trail in time order, one fix an instant, and its times."""
    times = [f.ts for f in trail]
    if all(map(lt, times, times[1:])):
        # As trails are read back: in order already.
        return list(trail), times
    by_time: dict[datetime, TrailFix] = {}
    for f in trail:
        # One position per instant: a tag swap can give one subject two fixes at once;
        # the more accurate one speaks for that instant.
        known = by_time.get(f.ts)
        if known is None or f.accuracy_m < known.accuracy_m:
            by_time[f.ts] = f
    times = sorted(by_time)
    return [by_time[t] for t in times], times


def _runs(
    zone: PreparedZone,
    subject_id: uuid.UUID,
    fixes: list[TrailFix],
    roles: list[_Role],
    supporting: list[int],
    span: tuple[int, int],
    lookback: bool,
    window: tuple[datetime, datetime],
    ended: bool,
    params: CheckParams,
    resume: tuple[_Run, int] | None = None,
    marks: Sequence[int] = (),
) -> tuple[list[Episode], list[_Run | None]]:
    """The runs of supporting fixes among fixes[lo:hi] (`span`) in the window (opens,
    closes): `roles` says each fix's role and `supporting` lists, in order, the
    indices of the strong and weak ones; `lookback`: whether the fix before lo is in
    the curfew's lookback. `resume`: a run open before the fix at the index given, to go
    on from there. With (a copy of) the run open once the fixes before each index of
    `marks` (ascending) are taken, a run or None a mark."""
    (lo, hi), (opens, closes) = span, window
    out: list[Episode] = []
    run: _Run | None = None
    at_marks: list[_Run | None] = []
    i = lo
    if resume is not None:
        run, i = resume
    elif zone.kind is ZoneKind.inclusion and zone.scheduled and lookback:
        # Outside when the curfew starts is a breach from the start, not from a crossing.
        role = roles[lo - 1]
        if role in (_Role.strong, _Role.weak):
            run = _Run(opens, f"outside when the curfew began at {opens.isoformat()}")
            run.add(fixes[lo - 1], role)
    while i < hi:
        while len(at_marks) < len(marks) and i >= marks[len(at_marks)]:
            at_marks.append(run.copy() if run is not None else None)
        if run is None:
            # Nothing happens until a supporting fix: straight to the next one.
            k = bisect_left(supporting, i)
            if k == len(supporting) or supporting[k] >= hi:
                break
            i = supporting[k]
            # No run is open over the fixes passed.
            while len(at_marks) < len(marks) and i >= marks[len(at_marks)]:
                at_marks.append(None)
        f, role = fixes[i], roles[i]
        if role in (_Role.strong, _Role.weak):
            if run is None:
                run = _Run(f.ts, f"first supporting fix at {f.ts.isoformat()}")
            run.add(f, role)
        elif role is _Role.clear:
            if run is not None:
                episode = run.episode(zone, subject_id, f.ts, params)
                if episode is not None:
                    out.append(episode)
                run = None
        elif run is not None:
            run.interrupt()
        i += 1
    if run is not None:
        episode = run.episode(zone, subject_id, closes if ended else None, params)
        if episode is not None:
            out.append(episode)
    while len(at_marks) < len(marks):
        at_marks.append(None if ended or run is None else run.copy())
    return out, at_marks


# The float seconds between two fixes' times err by well under this; a gap within it
# of the limit is measured again exactly.
_GAP_DOUBT_S = 1e-5


def _segments(
    zone: PreparedZone,
    subject_id: uuid.UUID,
    fixes: list[TrailFix],
    placed: FloatArray,
    lo: int,
    hi: int,
    params: CheckParams,
) -> list[Episode]:
    """A dash through a zone between two fixes outside it: the straight path between
    consecutive fixes close in time (among fixes[lo:hi]; `placed`, their places as
    columns of _Placed) is checked too, and a crossing is a possible breach. One pass
    over arrays: at 5,000 fixes a second the zone checker spent 6.5 % of its time here,
    a pair at a time (docs/benchmarks.md, eighth session)."""
    out: list[Episode] = []
    if hi - lo < 2:
        return out
    where = placed[lo:hi]
    # A strong end is covered by a run of fixes inside; a weak one says enough.
    open_end = _PATH_ENDS[zone.kind][where[:, 0].astype(np.int64)]
    gap = np.diff(where[:, 3])
    limit = params.segment_max_gap_s
    close = gap <= limit
    for k in np.flatnonzero(np.abs(gap - limit) <= _GAP_DOUBT_S):
        close[k] = (fixes[lo + k + 1].ts - fixes[lo + k].ts).total_seconds() <= limit
    # Only a path whose box meets the zone's can cross it.
    x, y = where[:, 1], where[:, 2]
    x0, y0, x1, y1 = zone.bounds
    near = (
        (np.minimum(x[:-1], x[1:]) <= x1)
        & (np.maximum(x[:-1], x[1:]) >= x0)
        & (np.minimum(y[:-1], y[1:]) <= y1)
        & (np.maximum(y[:-1], y[1:]) >= y0)
    )
    starts = np.flatnonzero(close & near & open_end[:-1] & open_end[1:])
    if not len(starts):
        return out
    ends = np.stack([where[starts, 1:3], where[starts + 1, 1:3]], axis=1)
    paths = shapely.linestrings(ends)
    # Most paths go nowhere near: one vectorised test, then the few that cross.
    for k in np.flatnonzero(shapely.intersects(zone.shape, paths)):
        a, b = fixes[lo + starts[k]], fixes[lo + starts[k] + 1]
        gap_s = (b.ts - a.ts).total_seconds()
        path = paths[k]
        crossing = path.intersection(zone.shape)
        if crossing.is_empty or crossing.length == 0:
            continue
        speed = path.length / gap_s if gap_s > 0 else float("inf")
        out.append(
            Episode(
                subject_id=subject_id,
                zone_id=zone.id,
                zone_version=zone.version,
                zone_kind=zone.kind,
                condition=Condition.breach,
                start=a.ts,
                end=b.ts,
                confidence=Confidence.possible,
                last_fix=b.ts,
                evidence=(a, b),
                reason=(
                    f"the straight path between fixes at {a.ts.isoformat()} and "
                    f"{b.ts.isoformat()} crosses {crossing.length:.0f} m of the zone"
                ),
                details={"implied_speed_mps": round(speed, 1), "segment": True},
            )
        )
    return out


def _gaps(
    zone: PreparedZone,
    subject_id: uuid.UUID,
    fixes: list[TrailFix],
    opens: datetime,
    closes: datetime,
    params: CheckParams,
) -> list[Episode]:
    """Silence during a curfew is its own condition, never taken as compliance."""
    out: list[Episode] = []
    marks = [opens, *(f.ts for f in fixes), closes]
    for a, b in pairwise(marks):
        silent = (b - a).total_seconds()
        if silent > params.no_data_after_s:
            out.append(
                Episode(
                    subject_id=subject_id,
                    zone_id=zone.id,
                    zone_version=zone.version,
                    zone_kind=zone.kind,
                    condition=Condition.no_data,
                    start=a,
                    end=b,
                    confidence=Confidence.confirmed,
                    last_fix=None,
                    evidence=(),
                    reason=f"no fixes for {silent / 60:.0f} min while the curfew was in force",
                )
            )
    return out


class ChangeKind(StrEnum):
    opened = "opened"
    updated = "updated"
    superseded = "superseded"


class EpisodeLike(Protocol):
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def condition(self) -> StrEnum: ...
    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime | None: ...
    @property
    def confidence(self) -> Confidence: ...
    @property
    def last_fix(self) -> datetime | None: ...


E = TypeVar("E", bound=EpisodeLike)
S = TypeVar("S", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Reported:
    """What was last said about an episode."""

    id: uuid.UUID
    condition: str
    start: datetime
    end: datetime | None
    confidence: Confidence
    last_fix: datetime | None

    @classmethod
    def of(cls, e: EpisodeLike) -> Reported:
        return cls(e.id, str(e.condition), e.start, e.end, e.confidence, e.last_fix)


@dataclass(frozen=True, slots=True)
class Change(Generic[E]):
    kind: ChangeKind
    id: uuid.UUID
    episode: E | None = None
    superseded_by: uuid.UUID | None = None


def reconcile(
    reported: Mapping[uuid.UUID, Reported],
    current: Sequence[E],
    span: tuple[datetime, datetime],
) -> list[Change[E]]:
    """What to tell the alert store so it matches the episodes just derived.

    `span` is the stretch of trail the episodes were derived from; an episode reported
    earlier that starts inside it and is no longer derived has been superseded (a late
    fix moved its start, split it or merged it with another)."""
    changes: list[Change[E]] = []
    current_ids = {e.id for e in current}
    for e in current:
        before = reported.get(e.id)
        if before is None:
            changes.append(Change(ChangeKind.opened, e.id, e))
        elif before != Reported.of(e):
            changes.append(Change(ChangeKind.updated, e.id, e))
    lo, hi = span
    for r in reported.values():
        if r.id in current_ids or not (lo <= r.start <= hi):
            continue
        heir = next(
            (
                e.id
                for e in current
                if str(e.condition) == r.condition
                and e.start <= (r.end or FOREVER)
                and (e.end or FOREVER) >= r.start
            ),
            None,
        )
        changes.append(Change(ChangeKind.superseded, r.id, superseded_by=heir))
    return changes


def check_zone(
    zone: PreparedZone,
    subject_id: uuid.UUID,
    trail: Sequence[TrailFix],
    reported: Mapping[uuid.UUID, Reported],
    since: datetime,
    first_new: datetime,
    params: CheckParams,
    placements: Placements | None = None,
    carried: Checkpoint | None = None,
    marks: Sequence[datetime] = (),
) -> tuple[list[Change[Episode]], list[Checkpoint]]:
    """What changed for one subject in one zone: the episodes of the trail read back from
    `since` (led by the one fix before it), reconciled with those reported; with the
    run open at the last fix up to each of `marks`, in time order, as checkpoints for
    the checks to come (see CHECKPOINT_LAGS).

    `carried`: the checkpoint the last check left, known to stand for the stored fixes up
    to its `through` (Checkpoint), which the trail then need only reach.

    Only episodes going on at or after the first new fix are reconciled. One that ended
    before it is as it was decided (see `unsettled`), and the read-back, reaching back
    to the start of an episode still open, often holds some: derived again, they were
    announced again as opened whenever they had ended before the episodes read back.
    But one reported as going on that now ends before the first new fix, ended by fixes
    stored and not yet checked, is reconciled: it is updated, not superseded."""
    found, open_at = _evaluate(zone, subject_id, trail, params, placements, carried, marks)
    carried_from = carried.run.start if carried is not None else None
    # An episode at the very first fix read back, when that fix is from before the
    # window, may have begun earlier still: not ours to call, unless carried.
    unknown = trail[0].ts if trail and trail[0].ts < since else None
    going_on = {k: r for k, r in reported.items() if r.end is None or r.end >= first_new}
    # An episode reported as going on at the first new fix that the trail now shows
    # ending before it is the same episode, ended earlier by fixes stored but not yet
    # checked (the store runs ahead: a tag's buffered upload from the gap before the new
    # fixes): it is updated, not superseded, as nothing checked later could derive it
    # whole again (docs/benchmarks.md, eighteenth session).
    current = [
        e
        for e in found
        if (e.start != unknown or e.start == carried_from)
        and (e.end is None or e.end >= first_new or e.id in going_on)
    ]
    # The carried run's episode is derived whole, from its start: if it is derived no
    # more (its run ended short of one), it is superseded, as a whole read-back says.
    lo = since if carried_from is None else min(since, carried_from)
    changes = reconcile(going_on, current, (lo, FOREVER))
    checkpoints: list[Checkpoint] = []
    for through, run in open_at:
        if run.start == unknown and run.start != carried_from:
            continue
        if checkpoints and checkpoints[-1].through == through:
            continue  # two marks, one fix
        if carried is not None and run.start == carried_from:
            counted = carried.counted + sum(carried.through < f.ts <= through for f in trail)
        else:
            counted = sum(run.start <= f.ts <= through for f in trail)
        checkpoints.append(Checkpoint(subject_id, zone.id, zone.version, run, through, counted))
    return changes, checkpoints


@dataclass(frozen=True)
class SubjectZones:
    """A subject's zones, with the extents of its exclusion zones as one array (min lon,
    min lat, max lon, max lat a row), for to_check."""

    zones: tuple[PreparedZone, ...]
    exclusion: tuple[PreparedZone, ...]
    extents: FloatArray

    @classmethod
    def of(cls, zones: Iterable[PreparedZone]) -> SubjectZones:
        zones = tuple(zones)
        exclusion = tuple(z for z in zones if z.kind is ZoneKind.exclusion)
        extents = np.array([z.extent for z in exclusion], dtype=np.float64).reshape(-1, 4)
        return cls(zones, exclusion, extents)


def to_check(
    zones: Mapping[uuid.UUID, SubjectZones],
    reach: Reaches,
    unsettled: Collection[tuple[uuid.UUID, uuid.UUID]],
) -> dict[uuid.UUID, list[PreparedZone]]:
    """Which of each subject's zones must be checked again, known without reading the
    trail back; subjects with none are left out.

    Left out: an exclusion zone with no reported episode still open or ending at or
    after the subject's first new fix (`unsettled` pairs have one), when the new fixes
    and every stored fix within a path's reach of them (`reach`: the fixes from
    segment_max_gap_s before the first new fix to as long after the last) stay clear
    of it. New fixes outside with certainty, on paths that cannot touch the zone, can
    only interrupt runs of fixes inside, never make one; every run the trail held
    before was decided when its own fixes came, so it is among the reported episodes;
    and one that ended before every new fix is as it was. A randomized test holds this
    to the full check, batch by batch.

    Every (subject, exclusion zone) pair is tested in one pass over arrays: a batch
    holds about a fix a subject at live rates, so this runs for each subject's few
    zones about once a fix."""
    row = {s: i for i, s in enumerate(reach.subjects)}
    tested = [(s, row[s]) for s, z in zones.items() if s in row and z.exclusion]
    live: dict[uuid.UUID, set[uuid.UUID]] = {}
    for s, z in unsettled:
        live.setdefault(s, set()).add(z)
    if tested:
        counts = np.array([len(zones[s].exclusion) for s, _ in tested])
        boxes = reach.boxes()[np.repeat([i for _, i in tested], counts)]
        extents = np.concatenate([zones[s].extents for s, _ in tested])
        meets = (
            (boxes[:, 0] <= extents[:, 2])
            & (boxes[:, 2] >= extents[:, 0])
            & (boxes[:, 1] <= extents[:, 3])
            & (boxes[:, 3] >= extents[:, 1])
        )
        starts = np.cumsum(counts) - counts
        for k in np.flatnonzero(meets).tolist():
            j = int(np.searchsorted(starts, k, side="right")) - 1
            s = tested[j][0]
            live.setdefault(s, set()).add(zones[s].exclusion[k - starts[j]].id)
    out: dict[uuid.UUID, list[PreparedZone]] = {}
    for s, subject_zones in zones.items():
        ids = live.get(s)
        if s in row and not ids and len(subject_zones.exclusion) == len(subject_zones.zones):
            continue  # the common case: nothing to check
        checked = [
            z
            for z in subject_zones.zones
            if s not in row or z.kind is not ZoneKind.exclusion or (ids and z.id in ids)
        ]
        if checked:
            out[s] = checked
    return out


def unsettled(reported: Mapping[uuid.UUID, Reported], first_new: datetime) -> bool:
    """Whether new fixes from `first_new` on could change a reported episode: one is
    still open, or ends at or after that fix. An episode that ended before every new
    fix stays as it is: its run was closed by a fix the new ones all follow (or by its
    window's end), and runs and paths are decided by the fixes in time order up to
    their end. A late fix within or before it has a time at or before its end, so it
    still forces the check."""
    return any(r.end is None or r.end >= first_new for r in reported.values())


def read_back_from(
    first_new: datetime, context: timedelta, reported: Iterable[Reported]
) -> datetime:
    """Where a subject's trail is read back from: `context` before its first new fix, or
    earlier, at the start of any reported episode still open or ending at or after that
    point, so that every such episode is derived whole again."""
    since = first_new - context
    while True:
        earlier = min(
            (r.start for r in reported if (r.end is None or r.end >= since) and r.start < since),
            default=None,
        )
        if earlier is None:
            return since
        since = earlier


def leads_clear(zones: Iterable[PreparedZone], trail: Sequence[TrailFix], since: datetime) -> bool:
    """Whether a trail read back from `since` (led by the one stored fix before it, as
    trails are read back) is enough to derive every episode its new fixes can be part of,
    in each of these zones, as the whole trail would: when nothing was stored before it,
    or when they are exclusion zones and the leading fix lies wholly outside every one.

    A run of fixes in an exclusion zone ends only at a fix wholly outside it; fixes
    touching the boundary merely break its streak, for any length of time. So a run the
    new fixes join began after the last such fix before them, and whatever came before
    that fix was decided when its own fixes came. A path between fixes is checked only
    for fixes at most segment_max_gap_s apart, which a read-back from that far before
    the first new fix holds. Inclusion zones and curfews look further back (a curfew's
    look-back), and a leading fix near the zone says nothing: those read back the whole
    context (`TAGTRAIL_CHECK_CONTEXT_S`)."""
    if not trail or trail[0].ts >= since:
        return True
    lead = trail[0]
    return all(
        z.kind is ZoneKind.exclusion and classify(z, lead) is Containment.outside for z in zones
    )


def episode_row(
    subject_id: uuid.UUID, change: Change[Any], before: Reported | None
) -> dict[str, Any]:
    """What to store about an episode after a change: the episode as it now stands, or,
    when superseded, what was last reported about it, marked superseded."""
    e = change.episode
    if e is None:
        assert before is not None
        return {
            "id": change.id,
            "subject_id": subject_id,
            "condition": before.condition,
            "start": before.start,
            "end": before.end,
            "confidence": before.confidence.value,
            "last_fix": before.last_fix,
            "state": "superseded",
            "superseded_by": change.superseded_by,
            "reason": "superseded by later evidence",
        }
    return {
        "id": e.id,
        "subject_id": subject_id,
        "condition": str(e.condition),
        "start": e.start,
        "end": e.end,
        "confidence": e.confidence.value,
        "last_fix": e.last_fix,
        "state": "current",
        "superseded_by": None,
        "reason": e.reason,
    }


def crime_alert_id(crime_id: uuid.UUID, subject_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(ALERT_NAMESPACE, f"crime_match|{crime_id}|{subject_id}")
