"""End to end over real HTTP: fixes in, stored once, one alert per breach and per crime
match, re-posting changes nothing. On the in-process bus and on real Kafka."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.database import Database
from services.common.settings import Settings
from services.common.timeutil import utcnow
from services.pipeline import ALL_ROLES, Pipeline
from services.zones.worker import check_params, episodes_afresh
from tests.conftest import World, enrol, eventually, fix, kafka_settings, serve, square

ZONE_CENTRE = (52.5720, -0.2390)
CRIME_PLACE = (52.5800, -0.2500)


@pytest.fixture(params=["memory", "kafka"])
async def live(
    request: pytest.FixtureRequest, settings: Settings, database: str, db: Database
) -> AsyncIterator[str]:
    """The whole pipeline in one process on the chosen bus, served over real HTTP."""
    bus = request.param
    pipeline_settings = kafka_settings(settings) if bus == "kafka" else settings
    pipeline = Pipeline(pipeline_settings, bus=bus, roles=ALL_ROLES, database=database)
    await pipeline.start()
    try:
        async with serve(pipeline) as url:
            yield url
    finally:
        await pipeline.stop()


async def count(db: Database, sql: str, *args: Any) -> int:
    async with db.pool.acquire() as conn:
        return int(await conn.fetchval(sql, *args))


async def test_fixes_to_alerts_end_to_end(live: str, db: Database) -> None:
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        world = await enrol(http, db, n=2)
        breacher, passer = world.subjects
        zone = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [square(*ZONE_CENTRE, 150)]},
            "properties": {
                "subject_id": str(breacher),
                "kind": "exclusion",
                "name": "Victim's street",
            },
        }
        r = await http.post("/v1/zones", json=zone, headers=world.admin)
        assert r.status_code == 201, r.text

        start = utcnow() - timedelta(minutes=30)
        crime = {
            "category": "BIAD",
            "reference": "E2E/1",
            "lat": CRIME_PLACE[0],
            "lon": CRIME_PLACE[1],
            "starts_at": (start + timedelta(minutes=5)).isoformat(),
            "ends_at": (start + timedelta(minutes=25)).isoformat(),
        }
        r = await http.post("/v1/crimes", json={"crimes": [crime]}, headers=world.admin)
        assert r.status_code == 201, r.text
        crime_id = r.json()[0]["id"]

        # The breacher walks in (three fixes deep inside), out, and nowhere near the crime.
        outside = (ZONE_CENTRE[0] + 0.01, ZONE_CENTRE[1])
        path = [outside, ZONE_CENTRE, ZONE_CENTRE, ZONE_CENTRE, outside, outside]
        breach = [fix(start + timedelta(minutes=i), *p) for i, p in enumerate(path)]
        # The passer walks past the crime scene inside its window, several fixes close by.
        near = (CRIME_PLACE[0] + 0.0003, CRIME_PLACE[1])  # about 33 m away
        passing = [
            fix(start + timedelta(minutes=10 + i), *(near if 1 <= i <= 3 else (52.60, -0.30)))
            for i in range(5)
        ]
        for tag, fixes in ((world.tags[0], breach), (world.tags[1], passing)):
            r = await http.post(
                "/v1/fixes", json={"tag_id": tag, "fixes": fixes}, headers=world.supplier
            )
            assert r.status_code == 202, r.text
            assert r.json()["accepted"] == len(fixes)

        async def alerts() -> list[dict[str, Any]]:
            r = await http.get("/v1/alerts", headers=world.manager)
            assert r.status_code == 200, r.text
            return r.json()["items"]

        def settled(items: list[dict[str, Any]]) -> bool:
            return len(items) >= 2 and any(a["ended_at"] for a in items)

        items = await eventually(alerts, settled)
        assert await count(db, "select count(*) from trail_points") == 11

        by_kind = {a["kind"]: a for a in items}
        assert sorted(by_kind) == ["crime_match", "exclusion"]
        exclusion = by_kind["exclusion"]
        assert exclusion["subject_id"] == str(breacher)
        assert exclusion["opened_at"].startswith(
            (start + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")
        )
        assert exclusion["ended_at"] is not None
        assert exclusion["late"] is True  # uploaded half an hour after it happened
        match = by_kind["crime_match"]
        assert match["subject_id"] == str(passer)
        assert match["crime_id"] == crime_id
        assert match["details"]["closest"]["distance_m"] < 40

        # Re-posting everything changes nothing: no new fixes, no new alerts.
        for tag, fixes in ((world.tags[0], breach), (world.tags[1], passing)):
            r = await http.post(
                "/v1/fixes", json={"tag_id": tag, "fixes": fixes}, headers=world.supplier
            )
            assert r.json() == {
                "accepted": 0,
                "duplicates": len(fixes),
                "conflicts": 0,
                "rejected": [],
            }
        assert await count(db, "select count(*) from trail_points") == 11
        assert len(await alerts()) == 2
        assert await count(db, "select count(*) from alerts") == 2


async def test_a_crime_recorded_after_the_fact_matches_stored_trails(
    live: str, db: Database
) -> None:
    """The other direction: the trail is stored first, the crime arrives later."""
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        world = await enrol(http, db, n=2)
        start = utcnow() - timedelta(hours=2)
        near = (CRIME_PLACE[0], CRIME_PLACE[1] + 0.0008)  # about 54 m east
        far = (CRIME_PLACE[0] + 0.02, CRIME_PLACE[1])  # about 2 km north
        for tag, place in ((world.tags[0], near), (world.tags[1], far)):
            fixes = [fix(start + timedelta(minutes=i), *place) for i in range(10)]
            r = await http.post(
                "/v1/fixes", json={"tag_id": tag, "fixes": fixes}, headers=world.supplier
            )
            assert r.json()["accepted"] == 10
        await eventually(lambda: count(db, "select count(*) from trail_points"), lambda n: n == 20)

        crime = {
            "category": "RB",
            "lat": CRIME_PLACE[0],
            "lon": CRIME_PLACE[1],
            "starts_at": (start + timedelta(minutes=2)).isoformat(),
            "ends_at": (start + timedelta(minutes=4)).isoformat(),
        }
        r = await http.post("/v1/crimes", json={"crimes": [crime]}, headers=world.admin)
        assert r.status_code == 201

        async def matches() -> list[dict[str, Any]]:
            r = await http.get("/v1/alerts", params={"kind": "crime_match"}, headers=world.manager)
            return r.json()["items"]

        items = await eventually(matches, lambda xs: len(xs) >= 1)
        assert [a["subject_id"] for a in items] == [str(world.subjects[0])]
        crime_id = items[0]["crime_id"]
        run = (await http.get(f"/v1/crimes/{crime_id}/matches", headers=world.admin)).json()
        assert run["trigger"] in ("new_crime", "new_fixes")
        assert [m["subject_id"] for m in run["results"]["matched"]] == [str(world.subjects[0])]
        # The other subject was 2 km away, but the trail stops short of the widened window.
        (far,) = run["results"]["inconclusive"]
        assert far["subject_id"] == str(world.subjects[1])
        assert far["closest"]["distance_m"] > 2000
        assert far["gaps"]


async def test_a_backlog_uploaded_out_of_order_raises_exactly_the_right_alerts(
    live: str, db: Database, settings: Settings
) -> None:
    """A tag out of signal for hours uploads its buffer in pieces, in the wrong order:
    the alerts left standing are the episodes the whole trail shows, derived afresh."""
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        world = await enrol(http, db, n=1, prefix="BACKLOG")
        shop = (52.5900, -0.2800)
        zone = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [square(*shop, 120)]},
            "properties": {
                "subject_id": str(world.subjects[0]),
                "kind": "exclusion",
                "name": "Shop",
            },
        }
        assert (await http.post("/v1/zones", json=zone, headers=world.admin)).status_code == 201
        start = utcnow() - timedelta(hours=3)
        away = (shop[0] + 0.01, shop[1])
        # Two visits of five minutes, an hour apart, one fix a minute.
        path = [away] * 10 + [shop] * 5 + [away] * 60 + [shop] * 5 + [away] * 10
        trail = [fix(start + timedelta(minutes=i), *p) for i, p in enumerate(path)]
        pieces = [trail[i : i + 6] for i in range(0, len(trail), 6)]
        random.Random(11).shuffle(pieces)
        for piece in pieces:
            r = await http.post(
                "/v1/fixes", json={"tag_id": world.tags[0], "fixes": piece}, headers=world.supplier
            )
            assert r.json()["accepted"] == len(piece)

        async def current() -> list[dict[str, Any]]:
            r = await http.get("/v1/alerts", headers=world.manager)
            return sorted(r.json()["items"], key=lambda a: a["opened_at"])

        def settled(items: list[dict[str, Any]]) -> bool:
            return len(items) == 2 and all(
                a["ended_at"] and a["confidence"] == "confirmed" for a in items
            )

        await eventually(lambda: count(db, "select count(*) from trail_points"), lambda n: n == 90)
        items = await eventually(current, settled)
        for a, first_inside in zip(items, (10, 75), strict=True):
            opened = start + timedelta(minutes=first_inside)
            assert a["opened_at"].startswith(opened.strftime("%Y-%m-%dT%H:%M"))
            ended = opened + timedelta(minutes=5)
            assert a["ended_at"].startswith(ended.strftime("%Y-%m-%dT%H:%M"))
            assert a["late"] is True
            assert a["kind"] == "exclusion"
            assert len(a["evidence"]) == 5
        r = await http.get("/v1/alerts", params={"state": "superseded"}, headers=world.manager)
        assert all(s["superseded_by"] in {a["id"] for a in items} for s in r.json()["items"])
        afresh = await episodes_afresh(
            db, check_params(settings.check), start - timedelta(hours=1), utcnow()
        )
        mine = {str(e.id) for e in afresh if str(e.subject_id) == str(world.subjects[0])}
        assert mine == {a["id"] for a in items}


async def test_filed_alerts_reach_downstream_systems_on_the_kafka_alert_feed(
    settings: Settings, database: str, db: Database
) -> None:
    s = kafka_settings(settings)
    pipeline = Pipeline(s, bus="kafka", roles=ALL_ROLES, database=database)
    await pipeline.start()
    consumer = AIOKafkaConsumer(
        s.kafka.topic_prefix + "alert-feed",
        bootstrap_servers=s.kafka.bootstrap,
        group_id="downstream-case-management",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with serve(pipeline) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            world = await enrol(http, db, n=1, prefix="FEED")
            zone = {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [square(*ZONE_CENTRE, 150)]},
                "properties": {
                    "subject_id": str(world.subjects[0]),
                    "kind": "exclusion",
                    "name": "z",
                },
            }
            assert (await http.post("/v1/zones", json=zone, headers=world.admin)).status_code == 201
            start = utcnow() - timedelta(minutes=10)
            away = (ZONE_CENTRE[0] + 0.01, ZONE_CENTRE[1])
            trail = [
                fix(start + timedelta(minutes=i), *p)
                for i, p in enumerate([away, ZONE_CENTRE, ZONE_CENTRE])
            ]
            r = await http.post(
                "/v1/fixes", json={"tag_id": world.tags[0], "fixes": trail}, headers=world.supplier
            )
            assert r.json()["accepted"] == 3
            message = await asyncio.wait_for(consumer.getone(), 30)
        feed = orjson.loads(message.value)
        assert feed["event"] == "opened"
        assert feed["alert"]["kind"] == "exclusion"
        assert feed["alert"]["subject_id"] == str(world.subjects[0])
        assert feed["seq"] >= 1
    finally:
        await consumer.stop()
        await pipeline.stop()


async def exclusion_zone(
    http: httpx.AsyncClient, world: World, place: tuple[float, float]
) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
    """An exclusion zone 240 m square about `place` for the world's first subject; and
    how to read its exclusion alerts standing."""
    zone = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [square(*place, 120)]},
        "properties": {"subject_id": str(world.subjects[0]), "kind": "exclusion", "name": "Shop"},
    }
    assert (await http.post("/v1/zones", json=zone, headers=world.admin)).status_code == 201

    async def alerts() -> list[dict[str, Any]]:
        r = await http.get("/v1/alerts", headers=world.manager)
        return [a for a in r.json()["items"] if a["kind"] == "exclusion"]

    return alerts


async def store_directly(db: Database, world: World, ts: datetime, lat: float, lon: float) -> None:
    """A fix of the world's first tag written straight into the trail, as the store (or
    another process) writes one the zone checker has not yet been told of."""
    async with db.pool.acquire() as conn:
        await conn.execute(
            "insert into trail_points (tag_id, ts, received_at, subject_id, lat, lon,"
            " accuracy_m, source, geom) values ($1, $2, now(), $3, $4, $5, 8, 'gps',"
            " st_setsrid(st_makepoint($5, $4), 4326))",
            world.tags[0],
            ts,
            world.subjects[0],
            lat,
            lon,
        )


async def test_an_open_breach_carried_from_batch_to_batch_counts_fixes_stored_by_others(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    """The zone checker carries a breach still open from one batch to the next rather
    than read its hours of fixes back each time (service.Checkpoint). A fix among them
    stored by another process (on Kafka, a consumer that held the subject's partition
    for a while) makes it read them back: the breach it reports is the one the whole
    trail shows."""
    http = client
    world = await enrol(http, db, n=1, prefix="CARRY")
    shop = (52.6100, -0.3000)
    breach = await exclusion_zone(http, world, shop)
    start = (utcnow() - timedelta(hours=1)).replace(microsecond=0)

    async def post_and_wait(minute: int) -> dict[str, Any]:
        at = start + timedelta(minutes=minute)
        r = await http.post(
            "/v1/fixes",
            json={"tag_id": world.tags[0], "fixes": [fix(at, *shop)]},
            headers=world.supplier,
        )
        assert r.json()["accepted"] == 1
        items = await eventually(
            breach,
            lambda items: len(items) == 1 and datetime.fromisoformat(items[0]["last_fix_at"]) == at,
        )
        return items[0]

    # Live, a fix a batch: from the second on, the run is carried on.
    for minute in range(10):
        alert = await post_and_wait(minute)
    assert alert["reason"].endswith("10 supporting in all")
    # Stored by someone else, between fixes the checkpoint summarises.
    late = start + timedelta(minutes=4, seconds=30)
    await store_directly(db, world, late, *shop)
    alert = await post_and_wait(10)
    assert alert["reason"].endswith("12 supporting in all")
    afresh = await episodes_afresh(
        db, check_params(settings.check), start - timedelta(hours=1), utcnow()
    )
    (episode,) = [e for e in afresh if e.subject_id == world.subjects[0]]
    assert str(episode.id) == alert["id"] and episode.reason == alert["reason"]


async def test_a_breach_ended_by_fixes_stored_but_not_yet_checked_is_updated_not_lost(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    """The store runs ahead of the zone checker. A breach is open; the tag's buffered
    upload from a gap, which shows the subject leaving, is stored but not yet checked
    when the fix after the gap is. That check finds the breach ending before its new
    fix: the same breach, ended earlier. It is updated to end there and stands, as the
    whole trail shows; superseded, no later check could derive it again (the
    throughput benchmark lost breaches so: docs/benchmarks.md, eighteenth session)."""
    http = client
    world = await enrol(http, db, n=1, prefix="AHEAD")
    shop = (52.6200, -0.3100)
    away = (52.6300, -0.3100)  # about 1.1 km north
    breach = await exclusion_zone(http, world, shop)
    start = (utcnow() - timedelta(hours=1)).replace(microsecond=0)

    async def post(minute: int, place: tuple[float, float]) -> None:
        r = await http.post(
            "/v1/fixes",
            json={
                "tag_id": world.tags[0],
                "fixes": [fix(start + timedelta(minutes=minute), *place)],
            },
            headers=world.supplier,
        )
        assert r.json()["accepted"] == 1

    for minute in range(5):
        await post(minute, shop)
    last_in = start + timedelta(minutes=4)
    await eventually(
        breach,
        lambda items: (
            len(items) == 1 and datetime.fromisoformat(items[0]["last_fix_at"]) == last_in
        ),
    )
    # The upload from the gap, stored and not yet checked: in the shop, then away.
    for minute, place in ((5, shop), (6, away), (7, away)):
        await store_directly(db, world, start + timedelta(minutes=minute), *place)
    await post(20, away)
    ended = start + timedelta(minutes=6)
    (alert,) = await eventually(
        breach,
        lambda items: len(items) == 1 and items[0]["ended_at"] is not None,
    )
    assert datetime.fromisoformat(alert["ended_at"]) == ended
    assert datetime.fromisoformat(alert["last_fix_at"]) == start + timedelta(minutes=5)
    afresh = await episodes_afresh(
        db, check_params(settings.check), start - timedelta(hours=1), utcnow()
    )
    (episode,) = [e for e in afresh if e.subject_id == world.subjects[0]]
    assert str(episode.id) == alert["id"] and episode.end == ended


async def test_the_zone_checker_reading_the_points_again_files_nothing_new(
    settings: Settings, database: str, db: Database
) -> None:
    """On Kafka the zone checker's group reads the points topic (as the store commits
    it). A version before read stored-points, so after an upgrade the group reads the
    points from their start and checks every fix again: that must change no alert and
    file no transition (README, "The stored fixes on Kafka")."""
    isolated = kafka_settings(settings)

    async def transitions() -> int:
        return await count(db, "select count(*) from alert_transitions")

    pipeline = Pipeline(isolated, bus="kafka", roles=ALL_ROLES, database=database)
    await pipeline.start()
    try:
        async with serve(pipeline) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            world = await enrol(http, db, n=1)
            await exclusion_zone(http, world, ZONE_CENTRE)
            start = utcnow() - timedelta(minutes=30)
            outside = (ZONE_CENTRE[0] + 0.01, ZONE_CENTRE[1])
            # Two breaches, uploaded in three requests (three batches at least).
            path = [outside, *[ZONE_CENTRE] * 3, outside, outside, *[ZONE_CENTRE] * 3, outside]
            fixes = [fix(start + timedelta(minutes=i), *p) for i, p in enumerate(path)]
            for part in (fixes[:4], fixes[4:7], fixes[7:]):
                r = await http.post(
                    "/v1/fixes",
                    json={"tag_id": world.tags[0], "fixes": part},
                    headers=world.supplier,
                )
                assert r.status_code == 202, r.text
            ended = "select count(*) from alerts where ended_at is not null"
            await eventually(lambda: count(db, ended), lambda n: n == 2)
    finally:
        await pipeline.stop()
    before = await transitions()
    alerts = "select id, opened_at, ended_at, state, superseded_by from alerts order by id"
    async with db.pool.acquire() as conn:
        standing = [tuple(r) for r in await conn.fetch(alerts)]

    # The zone checker's group back to the start of the points topic.
    group = "tagtrail-zones.stored-points"
    points = isolated.kafka.topic_prefix + "points"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=isolated.kafka.bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [TopicPartition(points, p) for p in range(isolated.kafka.partitions)]
        ends = await consumer.end_offsets(parts)
        consumer.assign(parts)
        await consumer.commit({tp: 0 for tp in parts})
    finally:
        await consumer.stop()

    again = Pipeline(isolated, bus="kafka", roles=ALL_ROLES, database=database)
    await again.start()
    try:
        checker = AIOKafkaConsumer(bootstrap_servers=isolated.kafka.bootstrap, group_id=group)
        await checker.start()
        try:

            async def read_again() -> bool:
                done = [(await checker.committed(tp)) or 0 for tp in parts]
                return all(d >= ends[tp] for d, tp in zip(done, parts, strict=True))

            await eventually(read_again, bool)
        finally:
            await checker.stop()
        await asyncio.sleep(1.0)
    finally:
        await again.stop()
    assert sum(ends.values()) > 0
    assert await transitions() == before
    async with db.pool.acquire() as conn:
        assert [tuple(r) for r in await conn.fetch(alerts)] == standing
