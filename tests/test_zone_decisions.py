"""The pure zone decisions: containment of accuracy circles, episodes derived from the
ordered trail, schedules across clock changes, curfews, and reconciliation with what was
already reported, whatever order fixes arrive in."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, time, timedelta
from itertools import pairwise

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely import LineString, MultiPolygon, Point, Polygon

from services.common.geo import WGS84, LocalFrame
from services.common.trail import Reach, Reaches
from services.zones import service
from services.zones.schedule import DatedException, LocalWindow, Schedule, Timetable, WeeklyWindow
from services.zones.service import (
    CHECKPOINT_LAGS,
    Change,
    ChangeKind,
    CheckParams,
    Checkpoint,
    Condition,
    Confidence,
    Containment,
    Episode,
    Placements,
    PreparedZone,
    Reported,
    SubjectZones,
    TrailFix,
    ZoneKind,
    carried_on,
    check_zone,
    classify,
    crime_alert_id,
    episode_id,
    evaluate,
    leads_clear,
    read_back_from,
    reconcile,
    still_kept,
    to_check,
    unsettled,
)
from tests.conftest import square

CENTRE = (52.5720, -0.2390)
SUBJECT = uuid.UUID(int=1)
ZONE_ID = uuid.UUID(int=2)
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
LONDON_WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def zone(
    kind: ZoneKind = ZoneKind.exclusion, half_m: float = 100.0, **kwargs: object
) -> PreparedZone:
    return PreparedZone.build(
        ZONE_ID,
        1,
        kind,
        "test",
        Polygon(square(*CENTRE, half_m)),
        **kwargs,  # type: ignore[arg-type]
    )


def at_offset(east_m: float, north_m: float = 0.0) -> tuple[float, float]:
    lon, lat, _ = WGS84.fwd(CENTRE[1], CENTRE[0], 90, east_m)
    lon, lat, _ = WGS84.fwd(lon, lat, 0, north_m)
    return lat, lon


def fix(
    minute: float,
    east_m: float,
    accuracy_m: float = 10.0,
    north_m: float = 0.0,
    late_min: float = 0,
) -> TrailFix:
    lat, lon = at_offset(east_m, north_m)
    ts = T0 + timedelta(minutes=minute)
    return TrailFix("TAG", ts, ts + timedelta(minutes=late_min), lat, lon, accuracy_m)


INSIDE, EDGE_INSIDE, JUST_OUTSIDE, FAR = 0.0, 95.0, 115.0, 400.0


# Containment -----------------------------------------------------------------------


def test_containment_is_decided_by_the_whole_accuracy_circle_in_metres() -> None:
    z = zone()
    assert classify(z, fix(0, INSIDE)) is Containment.inside
    assert classify(z, fix(0, 70, accuracy_m=20)) is Containment.inside  # 30 m from the edge
    assert classify(z, fix(0, 70, accuracy_m=40)) is Containment.possibly_inside
    assert classify(z, fix(0, JUST_OUTSIDE, accuracy_m=20)) is Containment.touching
    assert classify(z, fix(0, JUST_OUTSIDE, accuracy_m=10)) is Containment.outside


def test_point_zones_buffers_and_multipolygons() -> None:
    lat, lon = CENTRE
    circle = PreparedZone.build(ZONE_ID, 1, ZoneKind.exclusion, "c", Point(lon, lat), radius_m=50)
    assert classify(circle, fix(0, 30, accuracy_m=5)) is Containment.inside
    assert classify(circle, fix(0, 70, accuracy_m=5)) is Containment.outside
    buffered = zone(half_m=100, buffer_m=50)
    assert classify(buffered, fix(0, 130, accuracy_m=5)) is Containment.inside
    far_square = Polygon(square(lat + 0.02, lon, 50))
    multi = PreparedZone.build(
        ZONE_ID,
        1,
        ZoneKind.exclusion,
        "m",
        MultiPolygon([Polygon(square(lat, lon, 50)), far_square]),
    )
    assert classify(multi, fix(0, 0, accuracy_m=5)) is Containment.inside
    assert classify(multi, fix(0, 0, accuracy_m=5, north_m=2224)) is Containment.inside
    assert classify(multi, fix(0, 0, accuracy_m=5, north_m=1100)) is Containment.outside


def test_containment_of_many_fixes_at_once_is_the_distance_from_each() -> None:
    """classify_all skips distances it can tell are beyond the accuracy (by the zone's
    bounds, then GEOS's within-distance test); each answer is still the one the
    distances give, fixes on the edge and at exactly their accuracy from it included."""
    rng = random.Random(11)
    lat, lon = CENTRE
    shapes = [
        (Polygon(square(lat, lon, 100)), {}),
        (Point(lon, lat), {"radius_m": 60.0}),
        (Polygon(square(lat, lon, 40)), {"buffer_m": 25.0}),
    ]
    for geometry, kwargs in shapes:
        z = PreparedZone.build(ZONE_ID, 1, ZoneKind.exclusion, "z", geometry, **kwargs)  # type: ignore[arg-type]
        fixes = [
            fix(
                0,
                rng.uniform(-300, 300),
                rng.choice([3.0, 10.0, 50.0, 300.0]),
                rng.uniform(-300, 300),
            )
            for _ in range(400)
        ]
        x, y = z.frame.points(np.array([f.lat for f in fixes]), np.array([f.lon for f in fixes]))
        # And fixes at exactly their accuracy from the edge, either side.
        edge = shapely.distance(z.boundary, shapely.points(x, y))
        exact = [
            TrailFix(f.tag_id, f.ts, f.received_at, f.lat, f.lon, float(d))
            for f, d in zip(fixes[:50], edge[:50], strict=True)
        ]
        fixes += exact
        x, y = z.frame.points(np.array([f.lat for f in fixes]), np.array([f.lon for f in fixes]))
        points = shapely.points(x, y)
        expected = []
        for f, p in zip(fixes, points, strict=True):
            if z.shape.contains(p):
                inside_by = z.boundary.distance(p)
                expected.append(
                    Containment.inside if inside_by >= f.accuracy_m else Containment.possibly_inside
                )
            else:
                away = z.shape.distance(p)
                expected.append(
                    Containment.touching if away <= f.accuracy_m else Containment.outside
                )
        found = service.classify_all(z, fixes)
        assert found == expected
        assert len(set(found)) == 4


# Exclusion episodes ----------------------------------------------------------------


def test_two_consecutive_fixes_wholly_inside_confirm_a_breach_and_leaving_ends_it() -> None:
    trail = [fix(0, FAR), fix(1, INSIDE), fix(2, INSIDE), fix(3, INSIDE), fix(4, FAR), fix(5, FAR)]
    (e,) = evaluate(zone(), SUBJECT, trail)
    assert e.confidence is Confidence.confirmed
    assert (e.start, e.end, e.last_fix) == (trail[1].ts, trail[4].ts, trail[3].ts)
    assert [f.ts for f in e.evidence] == [trail[1].ts, trail[2].ts, trail[3].ts]
    assert "2 consecutive" not in e.reason and "3 consecutive fix(es) wholly inside" in e.reason


def test_one_fix_inside_is_a_possible_breach_not_a_confirmed_one() -> None:
    (e,) = evaluate(zone(), SUBJECT, [fix(0, FAR), fix(1, INSIDE), fix(2, FAR)])
    assert e.confidence is Confidence.possible


def test_fixes_only_possibly_inside_give_a_possible_breach() -> None:
    trail = [fix(0, FAR), fix(1, EDGE_INSIDE, 20), fix(2, EDGE_INSIDE, 20), fix(3, FAR)]
    (e,) = evaluate(zone(), SUBJECT, trail)
    assert e.confidence is Confidence.possible


def test_drift_outside_the_boundary_never_confirms_and_never_alerts() -> None:
    """A subject standing 15 m outside the boundary, with 20 m accuracy fixes."""
    rng = random.Random(4)
    trail = [fix(i, JUST_OUTSIDE + rng.uniform(-2, 2), accuracy_m=20) for i in range(240)]
    assert evaluate(zone(), SUBJECT, trail) == []


def test_drift_fixes_at_the_edge_neither_split_nor_end_a_breach() -> None:
    trail = [fix(0, INSIDE), fix(1, INSIDE), fix(2, JUST_OUTSIDE, 20), fix(3, INSIDE), fix(4, FAR)]
    (e,) = evaluate(zone(), SUBJECT, trail)
    assert (e.start, e.end) == (trail[0].ts, trail[4].ts)


def test_an_open_breach_has_no_end_yet() -> None:
    (e,) = evaluate(zone(), SUBJECT, [fix(0, FAR), fix(1, INSIDE), fix(2, INSIDE)])
    assert e.end is None and e.confidence is Confidence.confirmed


def test_a_dash_through_a_small_zone_between_fixes_is_a_possible_breach() -> None:
    small = zone(half_m=30)
    trail = [fix(0, -200), fix(2, 200)]
    (e,) = evaluate(small, SUBJECT, trail)
    assert e.confidence is Confidence.possible
    assert (e.start, e.end) == (trail[0].ts, trail[1].ts)
    assert e.details["segment"] is True
    assert e.details["implied_speed_mps"] == round(400 / 120, 1)
    # Too far apart in time to say anything about the path between them.
    assert evaluate(small, SUBJECT, [fix(0, -200), fix(30, 200)]) == []


def test_validity_period_limits_the_zone() -> None:
    z = zone(valid_from=T0 + timedelta(minutes=10))
    assert evaluate(z, SUBJECT, [fix(0, INSIDE), fix(1, INSIDE), fix(2, FAR)]) == []
    (e,) = evaluate(z, SUBJECT, [fix(11, INSIDE), fix(12, INSIDE), fix(13, FAR)])
    assert e.confidence is Confidence.confirmed


# Schedules -------------------------------------------------------------------------


def weekly(start: str, end: str, days: list[str] | None = None, **kw: object) -> Schedule:
    return Schedule(
        weekly=[
            WeeklyWindow(
                days=days or LONDON_WEEKDAYS,
                start=time.fromisoformat(start),
                end=time.fromisoformat(end),
            )
        ],  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_window_crossing_midnight_in_winter() -> None:
    t = Timetable(weekly("19:00", "07:00"))
    assert t.windows(utc(2026, 11, 25, 12), utc(2026, 11, 26, 12)) == [
        (utc(2026, 11, 25, 19), utc(2026, 11, 26, 7))
    ]


def test_a_curfew_on_the_night_the_clocks_go_forward() -> None:
    # 2026-03-29 01:00 GMT the clocks go to 02:00 BST: 19:00 GMT to 07:00 BST is 11 hours.
    t = Timetable(weekly("19:00", "07:00"))
    (night,) = t.windows(utc(2026, 3, 28, 12), utc(2026, 3, 29, 12))
    assert night == (utc(2026, 3, 28, 19), utc(2026, 3, 29, 6))
    assert night[1] - night[0] == timedelta(hours=11)


def test_a_curfew_on_the_night_the_clocks_go_back() -> None:
    # 2026-10-25 02:00 BST the clocks go back to 01:00 GMT: 19:00 BST to 07:00 GMT is 13 h.
    t = Timetable(weekly("19:00", "07:00"))
    (night,) = t.windows(utc(2026, 10, 24, 12), utc(2026, 10, 25, 12))
    assert night == (utc(2026, 10, 24, 18), utc(2026, 10, 25, 7))
    assert night[1] - night[0] == timedelta(hours=13)


def test_a_window_starting_in_the_spring_gap_starts_when_the_clocks_jump() -> None:
    t = Timetable(weekly("01:30", "03:00"))
    (w,) = t.windows(utc(2026, 3, 29, 0), utc(2026, 3, 29, 4))
    assert w == (utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 2))


def test_weekdays_and_dated_exceptions() -> None:
    schedule = weekly(
        "20:00",
        "06:00",
        days=["fri"],
        exceptions=[
            DatedException(
                date=datetime(2026, 12, 4).date(),
                windows=[LocalWindow(start=time(22), end=time(23))],
            )
        ],
    )
    t = Timetable(schedule)
    nights = t.windows(utc(2026, 11, 23), utc(2026, 12, 13))
    assert nights == [
        (utc(2026, 11, 27, 20), utc(2026, 11, 28, 6)),
        (utc(2026, 12, 4, 22), utc(2026, 12, 4, 23)),
        (utc(2026, 12, 11, 20), utc(2026, 12, 12, 6)),
    ]


def test_a_scheduled_exclusion_only_counts_while_in_force() -> None:
    # In force 10:05-10:30 UTC (winter: London = UTC).
    z = zone(timetable=Timetable(weekly("10:05", "10:30")))
    trail = [fix(m, INSIDE) for m in range(0, 40)]
    (e,) = evaluate(z, SUBJECT, trail)
    assert (e.start, e.end) == (T0 + timedelta(minutes=5), T0 + timedelta(minutes=30))


# Curfews ---------------------------------------------------------------------------


def curfew() -> PreparedZone:
    # Home, 19:00 to 07:00 London time.
    return zone(kind=ZoneKind.inclusion, timetable=Timetable(weekly("19:00", "07:00")))


def curfew_fix(ts: datetime, east_m: float, accuracy_m: float = 10.0) -> TrailFix:
    lat, lon = at_offset(east_m)
    return TrailFix("TAG", ts, ts, lat, lon, accuracy_m)


def test_outside_when_the_curfew_starts_is_a_breach_from_the_start() -> None:
    start = utc(2026, 11, 25, 19)
    trail = [
        curfew_fix(start - timedelta(minutes=10), FAR),
        curfew_fix(start + timedelta(minutes=5), FAR),
        curfew_fix(start + timedelta(minutes=40), INSIDE),
    ]
    episodes = [e for e in evaluate(curfew(), SUBJECT, trail) if e.condition is Condition.breach]
    (e,) = episodes
    assert e.start == start
    assert e.end == trail[2].ts
    assert e.confidence is Confidence.confirmed
    assert "outside when the curfew began" in e.reason


def test_home_before_the_curfew_starts_is_no_breach() -> None:
    start = utc(2026, 11, 25, 19)
    trail = [curfew_fix(start + timedelta(minutes=m), INSIDE) for m in range(-30, 12 * 60 + 30, 10)]
    assert evaluate(curfew(), SUBJECT, trail) == []


def test_no_fixes_during_a_curfew_is_its_own_condition_not_compliance() -> None:
    start = utc(2026, 11, 25, 19)
    trail = [
        curfew_fix(start - timedelta(minutes=5), INSIDE),
        curfew_fix(start + timedelta(minutes=30), INSIDE),
        # Silence from 19:30 until 23:00.
        curfew_fix(start + timedelta(hours=4), INSIDE),
        *[curfew_fix(start + timedelta(hours=4, minutes=m), INSIDE) for m in range(10, 481, 10)],
    ]
    (gap,) = evaluate(curfew(), SUBJECT, trail)
    assert gap.condition is Condition.no_data
    assert (gap.start, gap.end) == (trail[1].ts, trail[2].ts)


# Reconciliation and arrival order ---------------------------------------------------


def apply(
    reported: dict[uuid.UUID, Reported], changes: list[Change], current: list[Episode]
) -> None:
    by_id = {e.id: e for e in current}
    for c in changes:
        if c.kind is ChangeKind.superseded:
            del reported[c.id]
        else:
            reported[c.id] = Reported.of(by_id[c.id])


def test_a_late_earlier_fix_moves_the_start_and_supersedes_the_first_alert() -> None:
    z = zone()
    first = [fix(5, INSIDE), fix(6, INSIDE), fix(7, FAR)]
    reported: dict[uuid.UUID, Reported] = {}
    current = evaluate(z, SUBJECT, first)
    apply(reported, reconcile(reported, current, (T0, T0 + timedelta(hours=1))), current)
    (old,) = reported
    late = [*first, fix(4, INSIDE, late_min=30)]
    current = evaluate(z, SUBJECT, late)
    changes = reconcile(reported, current, (T0, T0 + timedelta(hours=1)))
    kinds = sorted(c.kind for c in changes)
    assert kinds == [ChangeKind.opened, ChangeKind.superseded]
    superseded = next(c for c in changes if c.kind is ChangeKind.superseded)
    assert superseded.id == old and superseded.superseded_by == current[0].id


def test_ids_derive_from_what_they_are_about() -> None:
    a = episode_id(SUBJECT, ZONE_ID, Condition.breach, T0)
    assert a == episode_id(SUBJECT, ZONE_ID, Condition.breach, T0.astimezone())
    assert a != episode_id(SUBJECT, ZONE_ID, Condition.no_data, T0)
    assert crime_alert_id(ZONE_ID, SUBJECT) != crime_alert_id(SUBJECT, ZONE_ID)


places = st.sampled_from([INSIDE, EDGE_INSIDE, JUST_OUTSIDE, FAR, -FAR])
accuracies = st.sampled_from([5.0, 10.0, 20.0, 40.0])
trails = st.lists(st.tuples(places, accuracies), min_size=1, max_size=40).map(
    lambda xs: [fix(i * 1.5, east, acc) for i, (east, acc) in enumerate(xs)]
)


@settings(max_examples=200, deadline=None)
@given(trails, st.randoms(use_true_random=False), st.integers(min_value=1, max_value=6))
def test_any_arrival_order_ends_in_the_same_episodes(
    trail: list[TrailFix], rnd: random.Random, batches: int
) -> None:
    z = zone(half_m=60)
    shuffled = trail[:]
    rnd.shuffle(shuffled)
    cuts = (
        sorted(rnd.sample(range(1, len(shuffled)), min(batches - 1, len(shuffled) - 1)))
        if len(shuffled) > 1
        else []
    )
    pieces = [shuffled[i:j] for i, j in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    known: list[TrailFix] = []
    reported: dict[uuid.UUID, Reported] = {}
    span = (T0 - timedelta(days=1), T0 + timedelta(days=1))
    for piece in pieces:
        known += piece
        current = evaluate(z, SUBJECT, known)
        apply(reported, reconcile(reported, current, span), current)
    final = evaluate(z, SUBJECT, trail)
    assert reported == {e.id: Reported.of(e) for e in final}
    # And a replay of everything changes nothing.
    assert reconcile(reported, evaluate(z, SUBJECT, trail + trail), span) == []


def _episodes_a_fix_at_a_time(
    z: PreparedZone, trail: list[TrailFix], params: CheckParams
) -> list[Episode]:
    """The episodes of an unscheduled exclusion zone, the plain way: every fix in turn,
    every pair of consecutive fixes in turn, gaps measured exactly. What evaluate does
    in arrays, jumping between supporting fixes, must give the same."""
    roles = service._ROLES[z.kind]
    role = [roles[c] for c in service.classify_all(z, trail)]
    out: list[Episode] = []
    run: service._Run | None = None
    for f, r in zip(trail, role, strict=True):
        if r in (service._Role.strong, service._Role.weak):
            run = run or service._Run(f.ts, f"first supporting fix at {f.ts.isoformat()}")
            run.add(f, r)
        elif r is service._Role.clear:
            episode = run.episode(z, SUBJECT, f.ts, params) if run else None
            out += [episode] if episode else []
            run = None
        elif run is not None:
            run.interrupt()
    episode = run.episode(z, SUBJECT, None, params) if run else None
    out += [episode] if episode else []
    for (a, ra), (b, rb) in pairwise(zip(trail, role, strict=True)):
        ends = {ra, rb}
        if (b.ts - a.ts).total_seconds() > params.segment_max_gap_s or ends & {
            service._Role.strong,
            service._Role.weak,
        }:
            continue
        path = LineString([z.frame.point(a.lat, a.lon), z.frame.point(b.lat, b.lon)])
        crossing = path.intersection(z.shape)
        if not crossing.is_empty and crossing.length > 0:
            out.append(
                Episode(
                    SUBJECT,
                    z.id,
                    z.version,
                    z.kind,
                    Condition.breach,
                    a.ts,
                    b.ts,
                    Confidence.possible,
                    b.ts,
                    (a, b),
                    f"the straight path between fixes at {a.ts.isoformat()} and "
                    f"{b.ts.isoformat()} crosses {crossing.length:.0f} m of the zone",
                    {
                        "implied_speed_mps": round(path.length / (b.ts - a.ts).total_seconds(), 1),
                        "segment": True,
                    },
                )
            )
    return sorted(out, key=lambda e: (e.start, e.condition))


def test_episodes_in_arrays_are_those_found_a_fix_and_a_pair_at_a_time() -> None:
    """Random walks in and out of and past zones, with gaps between fixes at the
    segment limit to the microsecond, on either side of it and far over it: evaluate
    (placing fixes at once, runs found by jumping between supporting fixes, paths
    tested as arrays) finds exactly the episodes a plain loop over fixes and pairs
    finds."""
    rng = random.Random(11)
    zones = [zone(half_m=30.0), zone(half_m=80.0), zone(radius_m=40.0)]
    segments = runs = 0
    for _ in range(200):
        # A limit of whole seconds is exact in floats of epoch seconds; one of 300.3 s
        # is not, and a gap of exactly that is then measured again.
        params = CheckParams(segment_max_gap_s=rng.choice([300.0, 300.3]))
        limit = timedelta(seconds=params.segment_max_gap_s)
        steps = [
            timedelta(seconds=60),
            limit,
            limit,
            limit - timedelta(microseconds=1),
            limit + timedelta(microseconds=1),
            timedelta(seconds=1234, microseconds=567),
        ]
        z = rng.choice(zones)
        east, north = rng.uniform(-600, 600), rng.uniform(-600, 600)
        ts = T0 + timedelta(microseconds=rng.randrange(1_000_000))
        trail = []
        for _ in range(rng.randint(2, 80)):
            pull = 0.4 if rng.random() < 0.4 else 0.0
            east += rng.uniform(-150, 150) - pull * east
            north += rng.uniform(-150, 150) - pull * north
            ts += rng.choice(steps)
            lat, lon = at_offset(east, north)
            trail.append(TrailFix("T", ts, ts, lat, lon, rng.choice([5.0, 20.0, 60.0, 200.0])))
        found = evaluate(z, SUBJECT, trail, params)
        assert found == _episodes_a_fix_at_a_time(z, trail, params)
        assert evaluate(z, SUBJECT, trail, params, Placements()) == found
        segments += sum(1 for e in found if e.details.get("segment"))
        runs += sum(1 for e in found if not e.details.get("segment"))
    assert segments > 20 and runs > 50  # both kinds were found, many times


def test_fixes_placed_for_many_pairs_at_once_are_placed_as_one_pair_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The zone checker places a batch's fixes for every pair it checks at once
    (Placements.prime): zones of several shapes, some sharing a frame and some not,
    trails partly placed before, fixes on the edges and far off. Each place is the one
    placed for that pair alone, to the bit, and place() then computes nothing."""
    rng = random.Random(5)
    zones, centres = [], []
    for k in range(12):
        # Some 30 m apart (one frame), some tens of kilometres (frames of their own).
        lat = CENTRE[0] + rng.choice([0.0, 0.0003, 0.25, -0.4])
        lon = CENTRE[1] + rng.choice([0.0, 0.0004, 0.3])
        shape = Point(lon, lat) if k % 3 == 2 else Polygon(square(lat, lon, 100.0))
        centres.append((lat, lon))
        zones.append(
            PreparedZone.build(
                uuid.UUID(int=100 + k),
                1,
                rng.choice(list(ZoneKind)),
                f"z{k}",
                shape,
                radius_m=60.0 if k % 3 == 2 else None,
                buffer_m=rng.choice([0.0, 25.0]),
            )
        )
    assert len({z.frame.centre for z in zones}) > 2
    pairs = []
    for k, (z, (lat0, lon0)) in enumerate(zip(zones, centres, strict=True)):
        trail = []
        for i in range(rng.randint(1, 40)):
            east, north = rng.uniform(-250, 250), rng.uniform(-250, 250)
            if rng.random() < 0.2:
                east, north = rng.choice([-160.0, -125.0, -100.0, 100.0, 125.0, 160.0]), 0.0
            lon, lat, _ = WGS84.fwd(lon0, lat0, 90, east)
            lon, lat, _ = WGS84.fwd(lon, lat, 0, north)
            ts = T0 + timedelta(minutes=i)
            trail.append(TrailFix("T", ts, ts, lat, lon, rng.choice([3.0, 20.0, 60.0, 400.0])))
        pairs.append((z, uuid.UUID(int=k % 5), trail))
    # One subject's trail handed to several zones, the same list each time, as the zone
    # checker hands it; and another trail of that subject's between them.
    shared = pairs[0][2]
    pairs += [(z, uuid.UUID(int=99), shared) for z in zones[1:4]]
    pairs += [(zones[4], uuid.UUID(int=99), pairs[4][2])]
    pairs += [(z, uuid.UUID(int=99), shared) for z in zones[5:8]]
    kept = Placements()
    for z, subject, trail in pairs[::2]:
        kept.place(z, subject, trail[: len(trail) // 2])  # some placed before
    kept.prime(pairs)
    with monkeypatch.context() as m:
        m.setattr(service, "_place", lambda *_: pytest.fail("placed again"))
        primed = [kept.place(z, s, trail) for z, s, trail in pairs]
    assert primed == [Placements().place(z, s, trail) for z, s, trail in pairs]
    codes = [p[0] for placed in primed for p in placed]
    assert {0, 1, 2, 3} <= set(codes)  # every containment came up


def test_trails_far_from_an_exclusion_zone_are_skipped_without_changing_any_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shortcut for trails nowhere near an exclusion zone gives exactly what the
    full evaluation gives, near the edge of its reach as well as far away."""
    rng = random.Random(11)
    zones = [zone(), zone(half_m=30.0, buffer_m=40.0), zone(radius_m=None)]
    checked = skipped = 0
    for _ in range(300):
        z = rng.choice(zones)
        east, north = rng.uniform(-600, 600), rng.uniform(-600, 600)
        fixes = []
        for k in range(rng.randint(1, 8)):
            east += rng.uniform(-250, 250)
            north += rng.uniform(-250, 250)
            lat, lon = at_offset(east, north)
            ts = T0 + timedelta(minutes=k)
            fixes.append(TrailFix("T", ts, ts, lat, lon, rng.choice([5.0, 40.0, 200.0])))
        fast = evaluate(z, SUBJECT, fixes)
        with monkeypatch.context() as m:
            m.setattr(service, "_far_from", lambda *_: False)
            full = evaluate(z, SUBJECT, fixes)
        assert fast == full
        checked += 1
        skipped += service._far_from(z, fixes)
    assert checked == 300 and 30 < skipped < 270  # both paths were exercised


def _read_back(trail: list[TrailFix], since: datetime) -> list[TrailFix]:
    """The trail from `since` on, led by the one fix before it, as trails_since reads."""
    return [f for f in trail if f.ts < since][-1:] + [f for f in trail if f.ts >= since]


def _checker(
    z: PreparedZone,
    batches: list[list[TrailFix]],
    shortcut: bool,
    params: CheckParams,
    placements: Placements | None = None,
    near: bool = False,
    short: list[bool] | None = None,
    processes: int = 0,
    carried: list[bool] | None = None,
    ahead: int = 0,
) -> tuple[list[tuple[ChangeKind, uuid.UUID, Reported | None]], int]:
    """The zone checker's steps for one subject and zone, as the worker takes them, over
    a sequence of batches: what it says, and how many batches it did not read back for.
    `placements`: fixes placed before, kept between batches as the worker keeps them;
    `near`: an exclusion zone's read-back only as far as a path reaches, unless its
    leading fix is near the zone (as the worker reads back), rather than always two
    hours; `short` gets, a batch read back, whether that read-back was the short one.
    `processes`: checkers keeping the runs left open as checkpoints (as the worker
    does), taking the batches in turns at random, as Kafka consumers do across
    rebalances, each validating its own checkpoints against the shared store; `carried`
    gets, a batch read back, whether a checkpoint was carried on. `ahead`: the store
    runs ahead of the checker, as it does in the pipeline: when a batch is checked, the
    fixes of up to this many batches after it (at random) are stored already."""
    context = timedelta(hours=2)
    gap = timedelta(seconds=params.segment_max_gap_s)
    stored: dict[datetime, TrailFix] = {}
    episodes: dict[uuid.UUID, Reported] = {}
    said: list[tuple[ChangeKind, uuid.UUID, Reported | None]] = []
    skipped = 0
    memories: list[dict[uuid.UUID, list[Checkpoint]]] = [{} for _ in range(processes)]
    turns = random.Random(len(batches))
    for i, batch in enumerate(batches):
        # (No draw when nothing is stored ahead: the other tests' turns stay as they were.)
        for later in batches[i : i + 1 + (turns.randint(0, ahead) if ahead else 0)]:
            stored.update((f.ts, f) for f in later)
        trail_now = [stored[t] for t in sorted(stored)]
        lo, hi = min(f.ts for f in batch), max(f.ts for f in batch)
        reported = {k: r for k, r in episodes.items() if r.end is None or r.end >= lo - context}
        since = read_back_from(lo, context, reported.values())
        reach = Reach.of([f for f in trail_now if lo - gap <= f.ts <= hi + gap])
        pending = {(SUBJECT, z.id)} if unsettled(reported, lo) else set()
        if shortcut and not to_check(
            {SUBJECT: SubjectZones.of([z])}, Reaches.of({SUBJECT: reach}), pending
        ):
            skipped += 1
            continue
        memory = turns.choice(memories) if memories else {}
        cp = carried_on(memory.get(z.id, []), lo)
        if not (
            cp is not None
            and cp.of_zone(z)
            and sum(cp.run.start <= t <= cp.through for t in stored) == cp.counted
            and cp.episode_id in reported
        ):
            cp = None
        if carried is not None and memories:
            carried.append(cp is not None)
        others = [r for r in reported.values() if cp is None or r.id != cp.episode_id]
        through = [cp.through] if cp is not None else []
        since = min([read_back_from(lo, context, others), *through])
        trail = _read_back(trail_now, since)
        if near and z.kind is ZoneKind.exclusion:
            since = min([read_back_from(lo, gap, others), *through])
            trail = _read_back(trail_now, since)
            clear = cp is not None or leads_clear([z], trail, since)
            if short is not None:
                short.append(clear)
            if not clear:
                since = read_back_from(lo, context, others)
                trail = _read_back(trail_now, since)
        changes, checkpoints = check_zone(
            z,
            SUBJECT,
            trail,
            reported,
            since,
            lo,
            params,
            placements,
            cp,
            [hi - lag for lag in CHECKPOINT_LAGS],
        )
        if kept := still_kept(memory.pop(z.id, []), checkpoints, lo, 4):
            memory[z.id] = kept
        for change in changes:
            if change.episode is None:
                del episodes[change.id]
                said.append((change.kind, change.id, None))
            else:
                episodes[change.id] = Reported.of(change.episode)
                said.append((change.kind, change.id, episodes[change.id]))
    return said, skipped


def test_subjects_nowhere_near_an_exclusion_zone_are_not_read_back_and_nothing_is_missed() -> None:
    """The checker's shortcut (no trail read back when the new fixes, and every fix a
    path from them reaches, are clear of the zone and nothing reported is open) says
    exactly what the full check says, batch by batch, for random walks that pass near
    and through the zone, delivered live, late and newest first, with resends."""
    rng = random.Random(7)
    params = CheckParams()
    zones = [zone(), zone(half_m=30.0, buffer_m=40.0), zone(radius_m=60.0)]
    said_total = skipped_total = batches_total = 0
    for _ in range(120):
        z = rng.choice(zones)
        east, north = rng.uniform(-1500, 1500), rng.uniform(-1500, 1500)
        fixes = []
        ts = T0
        for _ in range(rng.randint(20, 90)):
            # Walk, with a pull towards the zone now and then, and gaps in the signal.
            pull = 0.3 if rng.random() < 0.5 else 0.0
            east += rng.uniform(-120, 120) - pull * east
            north += rng.uniform(-120, 120) - pull * north
            ts += timedelta(seconds=rng.choice([60, 60, 60, 120, 400]))
            lat, lon = at_offset(east, north)
            fixes.append(TrailFix("T", ts, ts, lat, lon, rng.choice([5.0, 15.0, 40.0, 250.0])))
        batches: list[list[TrailFix]] = []
        held: list[TrailFix] = []
        for f in fixes:
            if rng.random() < 0.15:
                held.append(f)  # buffered on the tag
                continue
            batches.append([f])
            if held and rng.random() < 0.3:
                batches.append(held[::-1])  # the buffer, newest first
                held = []
            if rng.random() < 0.05:
                batches.append([rng.choice(fixes)])  # a resend
        if held:
            batches.append(held)
        full, none_skipped = _checker(z, batches, False, params)
        fast, skipped = _checker(z, batches, True, params)
        assert fast == full
        # Fixes placed once and kept between batches: the same, batch by batch.
        kept = Placements()
        assert _checker(z, batches, True, params, kept) == (fast, skipped)
        assert _checker(z, batches, False, params, kept) == (full, 0)
        assert none_skipped == 0
        said_total += len(full)
        skipped_total += skipped
        batches_total += len(batches)
    # Both paths were exercised: episodes were said, and many batches were not read back.
    assert said_total > 50
    assert 0.1 * batches_total < skipped_total < 0.9 * batches_total


def _hugging(rng: random.Random, z: PreparedZone) -> list[list[TrailFix]]:
    """A walk that lingers about the edge of a zone 100 m across, in and out of it and
    touching it for long stretches, fixes a minute apart with gaps; delivered live, late
    and newest first, with resends."""
    fixes = []
    ts = T0
    angle, radius = rng.uniform(0, 6.3), rng.uniform(60, 400)
    for _ in range(rng.randint(40, 160)):
        angle += rng.uniform(-0.3, 0.3)
        radius = min(max(radius + rng.uniform(-40, 40) - 0.2 * (radius - 110), 0.0), 600.0)
        ts += timedelta(seconds=rng.choice([60, 60, 60, 60, 120, 400, 3000]))
        lat, lon = at_offset(radius * math.cos(angle), radius * math.sin(angle))
        fixes.append(TrailFix("T", ts, ts, lat, lon, rng.choice([5.0, 15.0, 40.0, 80.0])))
    batches: list[list[TrailFix]] = []
    held: list[TrailFix] = []
    for f in fixes:
        if rng.random() < 0.15:
            held.append(f)
            continue
        batches.append([f])
        if held and rng.random() < 0.3:
            batches.append(held[::-1])
            held = []
        if rng.random() < 0.05:
            batches.append([rng.choice(fixes)])
    if held:
        batches.append(held)
    return batches


def test_a_short_read_back_says_what_two_hours_of_trail_say() -> None:
    """For an exclusion zone the checker reads back only as far as a path reaches, and
    the whole context only when the fix leading that read-back is not wholly outside the
    zone (a run can go on through hours of fixes touching the boundary). Batch by batch
    it says exactly what reading back two hours says, for walks that linger about the
    zone's edge, and most read-backs stay short. An episode that ended before the new
    fixes is not announced again."""
    rng = random.Random(17)
    params = CheckParams()
    zones = [zone(), zone(half_m=30.0, buffer_m=40.0), zone(radius_m=60.0)]
    said_total = 0
    short: list[bool] = []
    carried: list[bool] = []
    for _ in range(150):
        z = rng.choice(zones)
        batches = _hugging(rng, z)
        full, _ = _checker(z, batches, True, params)
        assert _checker(z, batches, True, params, near=True, short=short)[0] == full
        assert _checker(z, batches, True, params, Placements(), near=True)[0] == full
        # Open runs carried on from checkpoints, by one checker or by three taking
        # the batches in turns: the same.
        for processes in (1, 3):
            assert (
                _checker(z, batches, True, params, near=True, processes=processes, carried=carried)[
                    0
                ]
                == full
            )
        # An episode is announced once, unless superseded in between.
        standing: set[uuid.UUID] = set()
        for kind, episode_id_, _ in full:
            assert not (kind is ChangeKind.opened and episode_id_ in standing)
            if kind is ChangeKind.superseded:
                standing.discard(episode_id_)
            else:
                standing.add(episode_id_)
        said_total += len(full)
    assert said_total > 200
    assert 0.3 * len(short) < sum(short) < 0.95 * len(short)
    # Checkpoints were carried on, and were often not (a late fix among the fixes they
    # summarise, another checker's turn, or nothing open).
    assert 0.2 * len(carried) < sum(carried) < 0.8 * len(carried)


def _standing(
    said: list[tuple[ChangeKind, uuid.UUID, Reported | None]],
) -> dict[uuid.UUID, Reported]:
    """The episodes left standing by what a checker said, as last said."""
    standing: dict[uuid.UUID, Reported] = {}
    for _, episode_id_, reported in said:
        if reported is None:
            standing.pop(episode_id_, None)
        else:
            standing[episode_id_] = reported
    return standing


def test_episodes_decided_while_the_store_runs_ahead_are_those_of_the_whole_trail() -> None:
    """The store runs ahead of the checker: a batch's check may read fixes that batches
    still to come bring, such as a tag's buffered upload that ends an open breach
    earlier than the fix after the gap did. Whatever the checker says batch by batch,
    the episodes left standing once every batch is checked are those the whole trail
    shows, derived afresh, with or without checkpoints (the throughput benchmark found
    breaches superseded for good when this was not so: docs/benchmarks.md, eighteenth
    session)."""
    rng = random.Random(18)
    params = CheckParams()
    zones = [zone(), zone(half_m=30.0, buffer_m=40.0), zone(radius_m=60.0)]
    compared = 0
    for _ in range(150):
        z = rng.choice(zones)
        batches = _hugging(rng, z)
        whole = sorted({f.ts: f for b in batches for f in b}.values(), key=lambda f: f.ts)
        afresh = {e.id: Reported.of(e) for e in evaluate(z, SUBJECT, whole, params)}
        for processes in (0, 1, 3):
            said, _ = _checker(z, batches, True, params, near=True, processes=processes, ahead=3)
            assert _standing(said) == afresh
        compared += len(afresh)
    assert compared > 100


def test_a_run_carried_through_hours_of_touching_fixes_reads_back_the_context() -> None:
    """One possibly-inside fix, three hours of fixes touching the boundary, then fixes
    inside: the fix leading a short read-back touches the zone, so the checker reads
    back the whole context, as it did before, and opens the breach where that shows it
    (docs/benchmarks.md, fourteenth session)."""
    z = zone()
    possibly = TrailFix("T", T0, T0, *at_offset(95.0, 0.0), 20.0)
    assert classify(z, possibly) is Containment.possibly_inside
    touching = [
        TrailFix("T", T0 + timedelta(minutes=m), T0, *at_offset(110.0, 0.0), 30.0)
        for m in range(1, 181)
    ]
    assert classify(z, touching[0]) is Containment.touching
    inside = [
        TrailFix("T", T0 + timedelta(minutes=m), T0, *at_offset(0.0, 0.0), 5.0) for m in (181, 182)
    ]
    batches = [[possibly], *([f] for f in touching), *([f] for f in inside)]
    short: list[bool] = []
    near, _ = _checker(z, batches, True, CheckParams(), near=True, short=short)
    assert near == _checker(z, batches, True, CheckParams())[0]
    assert short[-1] is False
    opened = [r for kind, _, r in near if kind is ChangeKind.opened]
    assert opened and opened[-1] is not None
    assert opened[-1].start == inside[0].ts


def test_a_carried_run_ends_at_a_fix_far_from_the_zone() -> None:
    """A run carried on from a checkpoint ends at the first fix outside, when the subject
    is next seen far from the zone, as the full check ends it."""
    z = zone()
    inside = [
        TrailFix("T", T0 + timedelta(minutes=m), T0, *at_offset(0.0, 0.0), 5.0) for m in range(10)
    ]
    far = [
        TrailFix("T", T0 + timedelta(minutes=m), T0, *at_offset(5000.0, 0.0), 5.0) for m in (20, 21)
    ]
    batches = [[f] for f in inside + far]
    carried: list[bool] = []
    said, _ = _checker(z, batches, True, CheckParams(), near=True, processes=1, carried=carried)
    assert said == _checker(z, batches, True, CheckParams())[0]
    assert carried[-2] is True  # the first far fix went on from a checkpoint
    last = said[-1][2]
    assert last is not None and last.start == inside[0].ts and last.end == far[0].ts


def test_to_check_keeps_exactly_the_exclusion_zones_a_reach_meets() -> None:
    """For many subjects at once, in one pass over arrays, to_check keeps the exclusion
    zones whose extent a subject's reach meets (as Reach.clear_of tells, touching
    counts), those with an unsettled episode, every inclusion zone, and every zone of a
    subject with no reach; and leaves out subjects with none of them."""
    rng = random.Random(3)

    def placed(i: int, kind: ZoneKind) -> PreparedZone:
        lat, lon = at_offset(rng.uniform(-3000, 3000), rng.uniform(-3000, 3000))
        return PreparedZone.build(
            uuid.UUID(int=100 + i),
            1,
            kind,
            f"z{i}",
            Point(lon, lat),
            radius_m=rng.choice([50.0, 150.0, 400.0]),
        )

    subjects = [uuid.UUID(int=10_000 + k) for k in range(200)]
    zones: dict[uuid.UUID, SubjectZones] = {}
    reach: dict[uuid.UUID, Reach] = {}
    n = 0
    for s in subjects:
        kinds = [ZoneKind.exclusion] * rng.randint(0, 6) + [ZoneKind.inclusion] * (
            rng.random() < 0.1
        )
        zones[s] = SubjectZones.of(placed((n := n + 1), kind) for kind in kinds)
        if rng.random() < 0.95:
            e, no = rng.uniform(-3500, 3500), rng.uniform(-3500, 3500)
            (lat0, lon0) = at_offset(e, no)
            (lat1, lon1) = at_offset(e + rng.uniform(0, 600), no + 300)
            reach[s] = Reach(lon0, lat0, lon1, lat1, rng.choice([5.0, 80.0, 500.0]))
    unsettled = {(s, z.id) for s in subjects[::7] for z in zones[s].exclusion[:1]}
    found = to_check(zones, Reaches.of(reach), unsettled)
    expected = {}
    for s in subjects:
        kept = [
            z
            for z in zones[s].zones
            if s not in reach
            or z.kind is not ZoneKind.exclusion
            or not reach[s].clear_of(z.extent)
            or (s, z.id) in unsettled
        ]
        if kept:
            expected[s] = kept
    assert found == expected
    met = sum(1 for s in reach for z in zones[s].exclusion if not reach[s].clear_of(z.extent))
    # Every case came up: zones met, and missed, subjects left out, and kept in full.
    assert met > 30 and len(found) < len(subjects) - 20
    assert any(s not in reach and zones[s].zones for s in subjects)


@pytest.mark.parametrize("lat, lon", [(52.549, -0.251), (51.45, -2.65), (54.96, -1.55)])
def test_a_frame_centred_kilometres_away_still_measures_the_ellipsoid(
    lat: float, lon: float
) -> None:
    """Zones share a frame centred on the nearest tenth of a degree: up to 7 km from a
    zone, whose distances must still be those on the ellipsoid to well under a
    millimetre in a kilometre."""
    frame = LocalFrame(lat, lon)
    for bearing in range(0, 360, 30):
        lon2, lat2, _ = WGS84.fwd(lon, lat, bearing, 1000.0)
        (x1, y1), (x2, y2) = frame.point(lat, lon), frame.point(lat2, lon2)
        assert math.hypot(x2 - x1, y2 - y1) == pytest.approx(1000.0, abs=0.001)


def test_placements_kept_between_batches_answer_as_placing_afresh_and_stay_bounded() -> None:
    """Fixes placed against zones and kept (for many subjects and two versions of a
    zone, the oldest pairs dropped past the bound) give the very containments and frame
    positions that placing every fix afresh gives."""
    rng = random.Random(5)
    versions = [
        zone(),
        PreparedZone.build(ZONE_ID, 2, ZoneKind.exclusion, "test", Polygon(square(*CENTRE, 40.0))),
    ]
    kept = Placements(max_fixes=300)
    subjects = [uuid.UUID(int=50 + k) for k in range(12)]
    trails: dict[uuid.UUID, list[TrailFix]] = {s: [] for s in subjects}
    for step in range(200):
        s = rng.choice(subjects)
        lat, lon = at_offset(rng.uniform(-300, 300), rng.uniform(-300, 300))
        ts = T0 + timedelta(minutes=step)
        trails[s] = [
            *trails[s][-rng.randint(0, 60) :],
            TrailFix("T", ts, ts, lat, lon, rng.choice([5.0, 40.0, 250.0])),
        ]
        z = rng.choice(versions)
        if rng.random() < 0.2:
            # Another fix at the same time as the last (a second tag): a new placing.
            east, north = rng.uniform(-300, 300), rng.uniform(-300, 300)
            trails[s].append(TrailFix("U", ts, ts, *at_offset(east, north), 15.0))
        fixes = trails[s]
        x, y = service._project(z, fixes)
        where = service.classify_all(z, fixes, (x, y))
        codes = [service._CONTAINMENTS.index(c) for c in where]
        times = [f.ts.timestamp() for f in fixes]
        afresh = list(zip(codes, x.tolist(), y.tolist(), times, strict=True))
        assert kept.place(z, s, fixes) == afresh
        # A pair keeps its trail's fixes, and those of the trail before until as many.
        assert len(kept) <= max(300, 2 * len(fixes))
    assert len(kept) > 100
