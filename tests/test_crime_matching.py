"""Golden test of crime matching: trails and crimes with known answers, checked exactly."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from services.common.geo import WGS84, degree_margin
from services.common.timeutil import local_to_utc
from services.ingest.repository import TrailBoxes
from services.zones.matching import CrimeScene, MatchParams, Outcome, assess, match
from services.zones.repository import OpenScene
from services.zones.service import TrailFix
from services.zones.worker import _scenes_met

SCENE = (52.5800, -0.2500)
LONDON = ZoneInfo("Europe/London")
PARAMS = MatchParams(
    radius_m=100, slack_s=900, max_accuracy_m=250, segment_max_gap_s=600, gap_s=300
)


def place(east_m: float, north_m: float = 0.0) -> tuple[float, float]:
    lon, lat, _ = WGS84.fwd(SCENE[1], SCENE[0], 90, east_m)
    lon, lat, _ = WGS84.fwd(lon, lat, 0, north_m)
    return lat, lon


def trail(
    start: datetime,
    minutes: range,
    east: float,
    north: float = 0.0,
    acc: float = 10.0,
    step_east: float = 0.0,
) -> list[TrailFix]:
    out = []
    for i, m in enumerate(minutes):
        lat, lon = place(east + i * step_east, north)
        ts = start + timedelta(minutes=m)
        out.append(TrailFix("T", ts, ts, lat, lon, acc))
    return out


def subject(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def crime_at(start: datetime, minutes: int = 20) -> CrimeScene:
    return CrimeScene(uuid.UUID(int=999), *SCENE, start, start + timedelta(minutes=minutes))


# Window: 10:00-10:20 UTC, widened by 15 min: 09:45-10:35.
T = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
WHOLE = range(-20, 41)  # 09:40 to 10:40, one fix a minute: covers the widened window


def golden() -> dict[uuid.UUID, list[TrailFix]]:
    swap = T + timedelta(minutes=10)
    return {
        # Walks past at 30 m.
        subject(1): trail(T, WHOLE, 30, 0),
        # Fixes 300 m either side, the straight path between them 20 m from the scene.
        subject(2): [
            *trail(T, range(-20, 5), -300, 20),
            *trail(T, range(6, 41), 300, 20),
        ],
        # 120 m away with 25 m accuracy: the circle reaches 95 m. Matched.
        subject(3): trail(T, WHOLE, 120, 0, acc=25),
        # 120 m away with 15 m accuracy: 105 m, just out, all window long. Ruled out.
        subject(4): trail(T, WHOLE, 0, 120, acc=15),
        # Far away all window long. Ruled out.
        subject(5): trail(T, WHOLE, 5000, 0),
        # Far away with an hour's gap over the window: cannot be ruled out.
        subject(6): [*trail(T, range(-60, -30), 5000, 0), *trail(T, range(30, 60), 5000, 0)],
        # subject 7 wore a tag but sent nothing: unknown.
        # A tag swapped mid-window: subject 8 wore it far away until 10:10, subject 9 from
        # then on, and walked past the scene.
        subject(8): [f for f in trail(T, WHOLE, 4000, 0) if f.ts < swap],
        subject(9): [f for f in trail(T, WHOLE, 10, 10) if f.ts >= swap],
        # A cell fix on top of the scene, 500 m vague: proves nothing. Far otherwise.
        subject(10): [
            *trail(T, range(-20, 5), 3000),
            *trail(T, range(5, 6), 0, acc=500),
            *trail(T, range(6, 41), 3000),
        ],
    }


def test_golden_outcomes() -> None:
    trails = golden()
    results = match(crime_at(T), trails, [subject(n) for n in range(1, 11)], PARAMS)
    assert sorted(a.subject_id.int for a in results.matched) == [1, 2, 3, 9]
    assert sorted(a.subject_id.int for a in results.ruled_out) == [4, 5, 10]
    assert sorted(a.subject_id.int for a in results.inconclusive) == [6, 8]
    assert [a.subject_id.int for a in results.unknown] == [7]


def test_closest_approach_through_fixes_and_segments() -> None:
    trails = golden()
    by_fix = assess(crime_at(T), subject(1), trails[subject(1)], PARAMS)
    assert by_fix.closest is not None and by_fix.closest.via == "fix"
    assert by_fix.closest.distance_m == pytest.approx(20, abs=0.5)  # 30 m less 10 m accuracy
    assert by_fix.coverage == 1.0 and by_fix.gaps == ()
    by_path = assess(crime_at(T), subject(2), trails[subject(2)], PARAMS)
    assert by_path.closest is not None and by_path.closest.via == "segment"
    assert by_path.closest.distance_m == pytest.approx(10, abs=0.5)  # 20 m less 10 m
    assert by_path.closest.speed_mps == pytest.approx(600 / 120, abs=0.05)
    assert by_path.closest.at == T + timedelta(minutes=5)
    # The straight path crosses the 100 m circle over about 2*sqrt(100²-20²) = 196 m of
    # its 600 m: about a third of its 120 s.
    assert by_path.time_within_s == pytest.approx(120 * 196 / 600, abs=1)
    # The path spans a minute-long gap in the fixes, not a coverage gap.
    assert by_path.gaps == ()


def test_accuracy_edge() -> None:
    trails = golden()
    inside = assess(crime_at(T), subject(3), trails[subject(3)], PARAMS)
    outside = assess(crime_at(T), subject(4), trails[subject(4)], PARAMS)
    assert inside.closest is not None and inside.closest.distance_m == pytest.approx(95, abs=0.5)
    assert outside.closest is not None and outside.closest.distance_m == pytest.approx(105, abs=0.5)
    assert (inside.outcome, outside.outcome) == (Outcome.matched, Outcome.ruled_out)


def test_evidence_is_a_snapshot_of_the_supporting_fixes() -> None:
    a = assess(crime_at(T), subject(9), golden()[subject(9)], PARAMS)
    assert a.evidence and all(f.ts >= T + timedelta(minutes=10) for f in a.evidence)
    assert len(a.evidence) <= 11


@pytest.mark.parametrize(
    ("local", "utc_hour"),
    [("2026-07-15 14:00", 13), ("2026-11-25 14:00", 14)],
    ids=["BST", "GMT"],
)
def test_crimes_in_summer_and_winter_time(local: str, utc_hour: int) -> None:
    """A crime at 14:00 UK time is 13:00 UTC in summer and 14:00 UTC in winter; a
    subject there at 13:xx UTC matches the first and not the second."""
    start = local_to_utc(datetime.fromisoformat(local), LONDON)
    assert start.hour == utc_hour
    day = start.replace(hour=13, minute=0)
    there = trail(day, range(0, 15), 0, 0)  # 13:00-13:14 UTC at the scene
    away = trail(day, range(15, 120), 8000, 0)
    a = assess(crime_at(start, minutes=10), subject(1), [*there, *away], PARAMS)
    expected = Outcome.matched if utc_hour == 13 else Outcome.ruled_out
    assert a.outcome is expected


def test_the_crime_trigger_finds_each_scene_a_box_meets_as_a_scene_by_scene_pass_does() -> None:
    """The trigger's one pass over (box, scene) pairs against the plain test of every box
    for each scene, on random scenes and boxes with many near misses."""
    rng = random.Random(7)
    t = datetime(2026, 3, 11, 13, 0, tzinfo=UTC).timestamp()
    subjects = [uuid.uuid4() for _ in range(40)]
    for _ in range(30):
        scenes = []
        for _ in range(rng.randint(1, 60)):
            start = t + rng.uniform(-7200, 7200)
            scenes.append(
                OpenScene(
                    uuid.uuid4(),
                    SCENE[0] + rng.uniform(-0.05, 0.05),
                    SCENE[1] + rng.uniform(-0.08, 0.08),
                    datetime.fromtimestamp(start, UTC),
                    datetime.fromtimestamp(start + rng.uniform(0, 3600), UTC),
                )
            )
        n = rng.randint(0, 400)
        x0 = np.array([SCENE[1] + rng.uniform(-0.09, 0.09) for _ in range(n)])
        y0 = np.array([SCENE[0] + rng.uniform(-0.06, 0.06) for _ in range(n)])
        w = np.array([rng.choice([0.0, 0.0005, 0.002, 0.02]) for _ in range(n)])
        boxes = TrailBoxes(
            subjects,
            np.array([rng.randrange(len(subjects)) for _ in range(n)], dtype=np.int64),
            np.array([t + 300 * rng.randint(-30, 30) for _ in range(n)], dtype=np.float64),
            np.column_stack([x0, y0, x0 + w, y0 + w / 2]).reshape(n, 4),
        )
        radius, slack = rng.choice([100.0, 500.0]), rng.choice([0.0, 900.0])
        expected: dict[uuid.UUID, set[uuid.UUID]] = {}
        b, t0 = boxes.boxes, boxes.buckets
        t1 = t0 + TrailBoxes.SPAN.total_seconds()
        for s in scenes:
            m = degree_margin(s.lat, radius)
            hit = (
                (t0 <= s.ends_at.timestamp() + slack)
                & (t1 >= s.starts_at.timestamp() - slack)
                & (b[:, 0] - m <= s.lon)
                & (b[:, 2] + m >= s.lon)
                & (b[:, 1] - m <= s.lat)
                & (b[:, 3] + m >= s.lat)
            )
            if hit.any():
                expected[s.id] = {subjects[i] for i in np.unique(boxes.owner[hit])}
        assert _scenes_met(scenes, boxes, radius, slack) == expected
