"""The zone model through the API: shapes, shared zones, schedules, versions; and zone
decisions through the whole pipeline: curfews, late backlogs out of order."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import httpx
import pytest

from services.app import create_app
from services.common.database import Database
from services.common.settings import Settings
from services.common.timeutil import utcnow
from services.pipeline import ALL_ROLES, Pipeline
from services.zones import repository as zone_repository
from tests.conftest import World, enrol, fix, square

HOME = (52.5650, -0.2700)


@pytest.fixture
async def world(client: httpx.AsyncClient, db: Database) -> World:
    return await enrol(client, db, n=3)


def feature(geometry: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {"kind": "exclusion", "name": "zone", **properties},
    }


def polygon(lat: float, lon: float, half_m: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [square(lat, lon, half_m)]}


async def test_shared_multipolygon_and_point_zones(client: httpx.AsyncClient, world: World) -> None:
    shared = feature(
        {
            "type": "MultiPolygon",
            "coordinates": [[square(52.57, -0.24, 200)], [square(52.58, -0.25, 100)]],
        },
        subject_ids=[str(s) for s in world.subjects],
        name="Town centre",
    )
    r = await client.post("/v1/zones", json=shared, headers=world.admin)
    assert r.status_code == 201, r.text
    assert sorted(r.json()["properties"]["subject_ids"]) == sorted(str(s) for s in world.subjects)
    point = feature(
        {"type": "Point", "coordinates": [-0.26, 52.56]},
        subject_id=str(world.subjects[0]),
        radius_m=150,
        buffer_m=10,
    )
    r = await client.post("/v1/zones", json=point, headers=world.admin)
    assert r.status_code == 201, r.text
    listed = await client.get(
        "/v1/zones", params={"subject_id": str(world.subjects[0])}, headers=world.admin
    )
    assert sorted(z["properties"]["name"] for z in listed.json()) == ["Town centre", "zone"]
    listed = await client.get(
        "/v1/zones", params={"subject_id": str(world.subjects[1])}, headers=world.admin
    )
    assert [z["properties"]["name"] for z in listed.json()] == ["Town centre"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"radius_m": 50}, "only for Point zones"),
        ({"schedule": {"weekly": []}}, "at least 1 item"),
        (
            {"schedule": {"weekly": [{"days": ["someday"], "start": "19:00", "end": "07:00"}]}},
            "days",
        ),
        ({"valid_from": "2026-12-01T00:00:00Z", "valid_to": "2026-11-01T00:00:00Z"}, "valid_to"),
        ({"subject_id": None}, "subject_id or subject_ids"),
    ],
)
async def test_bad_zone_properties_are_explained(
    client: httpx.AsyncClient, world: World, change: dict[str, Any], says: str
) -> None:
    body = feature(polygon(*HOME, 50), subject_id=str(world.subjects[0]))
    body["properties"].update(change)
    r = await client.post("/v1/zones", json=body, headers=world.admin)
    assert r.status_code == 422
    assert says in r.text


async def test_zone_versions(client: httpx.AsyncClient, world: World, db: Database) -> None:
    async def generation() -> int:
        async with db.pool.acquire() as conn:
            return await zone_repository.zone_generation(conn)

    # Zone checkers keep which zones apply to whom until the zones' generation moves:
    # every change moves it, reading does not.
    before = await generation()
    body = feature(polygon(*HOME, 50), subject_id=str(world.subjects[0]))
    zone_id = (await client.post("/v1/zones", json=body, headers=world.admin)).json()["id"]
    created = await generation()
    assert created > before
    await client.get(f"/v1/zones/{zone_id}", headers=world.admin)
    assert await generation() == created
    body["properties"]["buffer_m"] = 25
    body["properties"]["subject_ids"] = [str(world.subjects[1])]
    r = await client.put(f"/v1/zones/{zone_id}", json=body, headers=world.admin)
    assert r.status_code == 200
    assert await generation() > created
    assert r.json()["properties"]["version"] == 2
    versions = (await client.get(f"/v1/zones/{zone_id}/versions", headers=world.admin)).json()
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["definition"]["properties"]["buffer_m"] == 0
    assert versions[1]["definition"]["properties"]["buffer_m"] == 25


async def alerts(client: httpx.AsyncClient, world: World, **params: str) -> list[dict[str, Any]]:
    r = await client.get("/v1/alerts", params=params, headers=world.manager)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_a_curfew_breach_and_a_curfew_without_data(
    client: httpx.AsyncClient, world: World
) -> None:
    """Home 19:00-07:00 London time. Subject 0 is out when it starts; subject 1's tag goes
    quiet for hours in the middle of the night."""
    schedule = {
        "weekly": [
            {
                "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "start": "19:00",
                "end": "07:00",
            }
        ]
    }
    body = feature(
        polygon(*HOME, 60),
        kind="inclusion",
        name="Home curfew",
        subject_ids=[str(world.subjects[0]), str(world.subjects[1])],
        schedule=schedule,
    )
    r = await client.post("/v1/zones", json=body, headers=world.admin)
    assert r.status_code == 201, r.text
    # Two nights ago (a winter date: London time is UTC).
    night = (utcnow() - timedelta(days=2)).replace(hour=19, minute=0, second=0, microsecond=0)
    away = (HOME[0] + 0.01, HOME[1])
    out_at_start = [
        fix(night - timedelta(minutes=15), *away),
        fix(night + timedelta(minutes=5), *away),
        fix(night + timedelta(minutes=6), *away),
        fix(night + timedelta(minutes=20), *away),
        fix(night + timedelta(minutes=35), *away),
        fix(night + timedelta(minutes=50), *HOME),
        *[fix(night + timedelta(minutes=m), *HOME) for m in range(60, 13 * 60, 20)],
    ]
    quiet = [fix(night + timedelta(minutes=m), *HOME) for m in (-10, 10, 20)] + [
        fix(night + timedelta(hours=5, minutes=m), *HOME) for m in range(0, 8 * 60, 20)
    ]
    for tag, fixes in ((world.tags[0], out_at_start), (world.tags[1], quiet)):
        r = await client.post(
            "/v1/fixes", json={"tag_id": tag, "fixes": fixes}, headers=world.supplier
        )
        assert r.json()["accepted"] == len(fixes), r.text

    found = await alerts(client, world)
    by_subject = {a["subject_id"]: a for a in found}
    assert len(found) == 2, found
    breach = by_subject[str(world.subjects[0])]
    assert breach["kind"] == "inclusion"
    assert breach["opened_at"] == night.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert breach["confidence"] == "confirmed"
    assert "outside when the curfew began" in breach["reason"]
    assert breach["late"] is True
    gap = by_subject[str(world.subjects[1])]
    assert gap["kind"] == "no_data"
    assert gap["opened_at"].startswith((night + timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M"))


async def test_episode_state_survives_a_restart(
    settings: Settings, database: str, db: Database
) -> None:
    """The zone checker is stopped in the middle of a breach and a new one carries on:
    still one alert, updated and then ended."""
    centre = (52.6000, -0.2900)
    start = utcnow() - timedelta(hours=1)
    away = (centre[0] + 0.01, centre[1])
    first = [fix(start + timedelta(minutes=i), *p) for i, p in enumerate([away, centre, centre])]
    second = [fix(start + timedelta(minutes=3 + i), *p) for i, p in enumerate([centre, away])]

    async def run(
        fixes: list[dict[str, Any]], world: World | None
    ) -> tuple[World, list[dict[str, Any]]]:
        pipeline = Pipeline(settings, bus="memory", roles=ALL_ROLES, database=database)
        await pipeline.start()
        try:
            app = create_app(pipeline, manage=False)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://tagtrail"
            ) as http:
                if world is None:
                    world = await enrol(http, db, n=1, prefix="RESTART")
                    body = feature(polygon(*centre, 100), subject_id=str(world.subjects[0]))
                    assert (
                        await http.post("/v1/zones", json=body, headers=world.admin)
                    ).status_code == 201
                r = await http.post(
                    "/v1/fixes",
                    json={"tag_id": world.tags[0], "fixes": fixes},
                    headers=world.supplier,
                )
                assert r.json()["accepted"] == len(fixes)
                return world, await alerts(http, world)
        finally:
            await pipeline.stop()

    world, before = await run(first, None)
    assert len(before) == 1 and before[0]["ended_at"] is None
    _, after = await run(second, world)
    assert [a["id"] for a in after] == [before[0]["id"]]
    assert after[0]["ended_at"] is not None
    assert after[0]["duration_s"] == 180.0
