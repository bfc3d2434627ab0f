"""The pure zone decisions: containment of accuracy circles and the episode machine."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from shapely import Polygon

from services.common.geo import WGS84
from services.zones.service import (
    Containment,
    EpisodeState,
    PreparedZone,
    classify,
    crime_alert_id,
    exclusion_alert_id,
    is_late,
    step,
)
from tests.conftest import square

CENTRE = (52.5720, -0.2390)
SUBJECT = uuid.UUID(int=1)
ZONE_ID = uuid.UUID(int=2)
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def zone(half_m: float = 100.0) -> PreparedZone:
    return PreparedZone.build(
        ZONE_ID, SUBJECT, "exclusion", "test", 1, Polygon(square(*CENTRE, half_m))
    )


def east_of_centre(metres: float) -> tuple[float, float]:
    lon, lat, _ = WGS84.fwd(CENTRE[1], CENTRE[0], 90, metres)
    return lat, lon


def test_a_circle_wholly_inside_is_inside() -> None:
    assert classify(zone(), *CENTRE, 10) is Containment.inside
    # 70 m east of centre, 30 m from the eastern edge: a 20 m circle fits, a 40 m one does not.
    lat, lon = east_of_centre(70)
    assert classify(zone(), lat, lon, 20) is Containment.inside
    assert classify(zone(), lat, lon, 40) is Containment.possibly_inside


def test_distances_are_metres_not_degrees() -> None:
    # 15 m outside the eastern edge: 20 m accuracy touches the zone, 10 m does not.
    lat, lon = east_of_centre(115)
    assert classify(zone(), lat, lon, 20) is Containment.possibly_inside
    assert classify(zone(), lat, lon, 10) is Containment.outside


def test_an_episode_opens_once_and_closes_on_leaving() -> None:
    state = EpisodeState()
    events = []
    sequence = [
        Containment.outside,
        Containment.inside,
        Containment.inside,
        Containment.inside,
        Containment.outside,
        Containment.outside,
    ]
    for i, c in enumerate(sequence):
        state, change = step(state, T0 + timedelta(minutes=i), c)
        if change:
            events.append(change)
    assert [(e.opened, e.episode_start, e.at) for e in events] == [
        (True, T0 + timedelta(minutes=1), T0 + timedelta(minutes=1)),
        (False, T0 + timedelta(minutes=1), T0 + timedelta(minutes=4)),
    ]


def test_drift_at_the_boundary_neither_opens_nor_closes() -> None:
    state = EpisodeState()
    for i in range(10):
        state, change = step(state, T0 + timedelta(minutes=i), Containment.possibly_inside)
        assert change is None
    state, change = step(state, T0 + timedelta(minutes=10), Containment.inside)
    assert change is not None and change.opened
    state, change = step(state, T0 + timedelta(minutes=11), Containment.possibly_inside)
    assert change is None and state.episode_start is not None


def test_an_outside_fix_older_than_the_last_inside_does_not_close() -> None:
    state, _ = step(EpisodeState(), T0 + timedelta(minutes=5), Containment.inside)
    state, change = step(state, T0 + timedelta(minutes=2), Containment.outside)
    assert change is None
    assert state.episode_start == T0 + timedelta(minutes=5)


def test_lateness() -> None:
    assert is_late(T0, T0 + timedelta(minutes=10), None, 300)
    assert not is_late(T0, T0 + timedelta(seconds=20), None, 300)
    assert is_late(T0, T0 + timedelta(seconds=20), T0 + timedelta(minutes=1), 300)


def test_alert_ids_derive_from_what_they_are_about() -> None:
    a = exclusion_alert_id(SUBJECT, ZONE_ID, T0)
    assert a == exclusion_alert_id(SUBJECT, ZONE_ID, T0.astimezone())
    assert a != exclusion_alert_id(SUBJECT, ZONE_ID, T0 + timedelta(seconds=1))
    assert crime_alert_id(ZONE_ID, SUBJECT) == crime_alert_id(ZONE_ID, SUBJECT)
    assert crime_alert_id(ZONE_ID, SUBJECT) != crime_alert_id(SUBJECT, ZONE_ID)


containments = st.lists(st.sampled_from(list(Containment)), min_size=1, max_size=60)


def run(state: EpisodeState, trail: list[tuple[datetime, Containment]]):
    opened, closed = [], []
    for ts, c in trail:
        state, change = step(state, ts, c)
        if change is not None:
            (opened if change.opened else closed).append(
                exclusion_alert_id(SUBJECT, ZONE_ID, change.episode_start)
            )
    return state, opened, closed


@settings(max_examples=300, deadline=None)
@given(containments)
def test_in_time_order_one_alert_per_run_of_inside_fixes(seq: list[Containment]) -> None:
    trail = [(T0 + timedelta(minutes=i), c) for i, c in enumerate(seq)]
    _, opened, closed = run(EpisodeState(), trail)
    # Expected episodes: runs that start at an inside fix and end at an outside fix,
    # with possibly-inside fixes ignored.
    expected, inside = 0, False
    for c in seq:
        if c is Containment.inside and not inside:
            expected, inside = expected + 1, True
        elif c is Containment.outside:
            inside = False
    assert len(opened) == expected
    assert len(set(opened)) == len(opened)
    assert len(closed) in (expected, expected - 1)


@settings(max_examples=300, deadline=None)
@given(containments)
def test_a_replay_raises_no_alert_that_was_not_raised_before(seq: list[Containment]) -> None:
    trail = [(T0 + timedelta(minutes=i), c) for i, c in enumerate(seq)]
    state, opened, _ = run(EpisodeState(), trail)
    _, replayed, _ = run(state, trail)
    assert set(replayed) <= set(opened)
