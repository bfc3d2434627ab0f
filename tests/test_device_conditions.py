"""Device conditions and silence: one alert per episode, ended when the condition is."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.common.database import Database
from services.common.timeutil import utcnow
from services.pipeline import Pipeline
from services.zones.conditions import DeviceCondition, DeviceEventFact, evaluate_events, silence
from services.zones.watch import DeviceWatch
from tests.conftest import World, enrol, fix

SUBJECT = uuid.UUID(int=9)
T0 = datetime(2026, 11, 25, 10, tzinfo=UTC)


def event(minute: float, kind: str) -> DeviceEventFact:
    ts = T0 + timedelta(minutes=minute)
    return DeviceEventFact("TAG", ts, kind, ts)


def test_repeated_reports_are_one_episode_until_the_condition_ends() -> None:
    events = [
        event(0, "tamper"),
        event(1, "tamper"),
        event(2, "battery_low"),
        event(5, "tamper"),
        event(9, "strap_restored"),
        event(30, "charging_started"),
        event(40, "tamper"),
    ]
    episodes = [(e.condition, e.start, e.end) for e in evaluate_events(SUBJECT, events)]
    assert episodes == [
        (DeviceCondition.tamper, T0, T0 + timedelta(minutes=9)),
        (DeviceCondition.battery_low, T0 + timedelta(minutes=2), T0 + timedelta(minutes=30)),
        (DeviceCondition.tamper, T0 + timedelta(minutes=40), None),
    ]


def test_no_fix_reports_an_hour_apart_are_separate_episodes() -> None:
    events = [event(0, "no_fix"), event(20, "no_fix"), event(200, "no_fix")]
    spans = [(e.start, e.end) for e in evaluate_events(SUBJECT, events)]
    assert spans == [
        (T0, T0 + timedelta(minutes=20)),
        (T0 + timedelta(minutes=200), T0 + timedelta(minutes=200)),
    ]


def test_arrival_order_does_not_matter() -> None:
    events = [event(0, "tamper"), event(3, "strap_restored"), event(4, "tamper")]
    assert evaluate_events(SUBJECT, events) == evaluate_events(SUBJECT, events[::-1])


def test_silence() -> None:
    after = timedelta(minutes=30)
    assert silence(SUBJECT, T0, T0, T0 + timedelta(minutes=29), after) is None
    quiet = silence(SUBJECT, T0, T0, T0 + timedelta(minutes=31), after)
    assert quiet is not None and quiet.start == T0 and quiet.end is None
    never = silence(SUBJECT, None, T0, T0 + timedelta(hours=1), after)
    assert never is not None and never.start == T0


@pytest.fixture
async def world(client: httpx.AsyncClient, db: Database) -> World:
    return await enrol(client, db, n=1, prefix="DEV")


async def alerts(client: httpx.AsyncClient, world: World) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await client.get("/v1/alerts", headers=world.manager)).json()[
        "items"
    ]
    return items


async def test_a_tamper_opens_one_alert_and_restoring_the_strap_ends_it(
    client: httpx.AsyncClient, world: World
) -> None:
    now = utcnow()

    async def send(*events: tuple[float, str]) -> None:
        body = {
            "events": [
                {"tag_id": world.tags[0], "ts": (now - timedelta(minutes=m)).isoformat(), "kind": k}
                for m, k in events
            ]
        }
        r = await client.post("/v1/device-events", json=body, headers=world.supplier)
        assert r.json()["accepted"] == len(events)

    await send((10, "tamper"), (9, "tamper"))
    await send((8, "tamper"))
    (alert,) = await alerts(client, world)
    assert alert["kind"] == "tamper" and alert["ended_at"] is None
    await send((2, "strap_restored"))
    (alert,) = await alerts(client, world)
    assert alert["ended_at"] is not None
    assert "3 tamper report(s)" in alert["reason"]


async def test_silence_opens_once_and_ends_at_the_next_fix(
    client: httpx.AsyncClient, world: World, memory_pipeline: Pipeline
) -> None:
    runtime = memory_pipeline.runtime
    watch = DeviceWatch(runtime.db, runtime.bus, runtime.settings.check)
    last = utcnow() - timedelta(hours=2)
    r = await client.post(
        "/v1/fixes", json={"tag_id": world.tags[0], "fixes": [fix(last)]}, headers=world.supplier
    )
    assert r.json()["accepted"] == 1
    await watch.check_silence(utcnow())
    await watch.check_silence(utcnow() + timedelta(minutes=5))  # still silent: no second alert
    (alert,) = await alerts(client, world)
    assert alert["kind"] == "silence"
    assert alert["opened_at"].startswith(last.strftime("%Y-%m-%dT%H:%M"))
    back = utcnow() - timedelta(minutes=1)
    await client.post(
        "/v1/fixes", json={"tag_id": world.tags[0], "fixes": [fix(back)]}, headers=world.supplier
    )
    await watch.check_silence(utcnow())
    (alert,) = await alerts(client, world)
    assert alert["ended_at"].startswith(back.strftime("%Y-%m-%dT%H:%M"))
