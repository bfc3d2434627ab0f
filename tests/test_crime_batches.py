"""Police crime batches: CSV intake with every error class, versions, both matching
directions, runs as records, and one alert per (crime version, subject)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from services.common.database import Database
from services.common.geo import distance_m
from services.common.timeutil import utcnow
from services.zones.crime_batch import parse_batch
from tests.conftest import World, boxed, enrol, fix

UK = ZoneInfo("Europe/London")


def row(**over: str) -> str:
    cells = {
        "force": "CAMBS",
        "code": "BIAD",
        "desc": "Burglary in a dwelling",
        "batch": "B-0001",
        "ref": "CC/1",
        "from": "20261120093000",
        "to": "20261120101500",
        "e": "",
        "n": "",
        "lat": "52.58",
        "lon": "-0.25",
        "datum": "WGS84",
        "text": "rear door forced",
    }
    cells.update(over)
    return ",".join(cells.values())


def only_error(line: str) -> tuple[str, str]:
    good, bad = parse_batch(line + "\n")
    assert good == [] and len(bad) == 1
    assert bad[0].row == 1
    return bad[0].field, bad[0].error


ERRORS = [
    ("too few columns", "CAMBS,BIAD,x", "row", "3 columns"),
    ("unknown type code", row(code="ARSON"), "type_code", "not a crime type code"),
    ("empty force", row(force=" "), "force", "empty"),
    ("empty reference", row(ref=""), "reference", "empty"),
    ("bad date", row(**{"from": "2026-11-20 09:30"}), "date_from", "yyyyMMddHHmmss"),
    ("impossible date", row(to="20261332101500"), "date_to", "yyyyMMddHHmmss"),
    ("window over 12 hours", row(to="20261121093000"), "date_to", "longer than 12 hours"),
    ("ends before it starts", row(to="20261120090000"), "date_to", "before starts_at"),
    (
        "in the future",
        row(**{"from": "20991120093000", "to": "20991120101500"}),
        "date_to",
        "future",
    ),
    ("easting without northing", row(e="519400", lat="", lon=""), "northing", "come together"),
    ("easting off the grid", row(e="900000", n="298600"), "easting", "outside the National Grid"),
    ("northing not a number", row(e="519400", n="north"), "northing", "not a number"),
    ("no place at all", row(lat="", lon=""), "location", "neither"),
    ("latitude out of range", row(lat="95"), "latitude", "less than or equal to 90"),
    ("unknown datum", row(datum="ED50"), "datum", "not OSGB36 or WGS84"),
]


@pytest.mark.parametrize(("case", "line", "field", "says"), ERRORS, ids=[e[0] for e in ERRORS])
def test_every_error_class_names_row_field_and_reason(
    case: str, line: str, field: str, says: str
) -> None:
    got_field, error = only_error(line)
    assert got_field == field
    assert says in error


def test_good_rows_are_kept_beside_bad_ones() -> None:
    text = "\n".join([row(ref="A"), row(code="XX", ref="B"), "", row(ref="C")])
    good, bad = parse_batch(text)
    assert [n for n, _ in good] == [1, 4]
    assert [(b.row, b.field) for b in bad] == [(2, "type_code")]


def test_uk_local_times_in_summer_and_winter() -> None:
    ((_, summer),) = parse_batch(row(**{"from": "20260715093000", "to": "20260715101500"}))[0]
    ((_, winter),) = parse_batch(row())[0]
    assert summer.starts_at == datetime(2026, 7, 15, 8, 30, tzinfo=UTC)  # BST
    assert winter.starts_at == datetime(2026, 11, 20, 9, 30, tzinfo=UTC)  # GMT


def test_osgb36_national_grid_is_converted_properly() -> None:
    # Ordnance Survey's worked example (Caister water tower): E 651409.903 N 313177.270 is
    # 52°39'27.2531"N 1°43'4.5177"E on the OSGB36 datum (the Airy ellipsoid). WGS84 lies
    # some 100-150 m from that here: a conversion that skips the datum shift is wrong by
    # that much, and the same place given as OSGB36 latitude/longitude must agree.
    osgb36 = (52 + 39 / 60 + 27.2531 / 3600, 1 + 43 / 60 + 4.5177 / 3600)
    ((_, by_grid),) = parse_batch(row(e="651409.903", n="313177.270", lat="", lon="", datum=""))[0]
    ((_, by_latlon),) = parse_batch(
        row(lat=f"{osgb36[0]:.9f}", lon=f"{osgb36[1]:.9f}", datum="OSGB36")
    )[0]
    assert 100 < distance_m(by_grid.lat, by_grid.lon, *osgb36) < 150
    assert distance_m(by_grid.lat, by_grid.lon, by_latlon.lat, by_latlon.lon) < 0.5
    assert (by_grid.easting, by_grid.northing) == (651409.903, 313177.270)


def test_latitude_longitude_on_the_osgb36_datum_is_shifted_to_wgs84() -> None:
    ((_, crime),) = parse_batch(row(lat="52.5800", lon="-0.2500", datum="OSGB36"))[0]
    shift = distance_m(crime.lat, crime.lon, 52.58, -0.25)
    assert 50 < shift < 150  # the datums differ by about 100 m in eastern England


# Through the API and the pipeline -------------------------------------------------


@pytest.fixture
async def world(client: httpx.AsyncClient, db: Database) -> World:
    return await enrol(client, db, n=2, prefix="CRIME")


def uk(ts: datetime) -> str:
    return ts.astimezone(UK).strftime("%Y%m%d%H%M%S")


async def upload(client: httpx.AsyncClient, world: World, *lines: str) -> dict[str, Any]:
    r = await client.post(
        "/v1/crimes/batches",
        content="\n".join(lines).encode(),
        headers={**world.admin, "Content-Type": "text/csv"},
    )
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def crime_alerts(client: httpx.AsyncClient, world: World) -> list[dict[str, Any]]:
    r = await client.get("/v1/alerts", params={"kind": "crime_match"}, headers=world.manager)
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_a_batch_is_loaded_matched_and_read_back(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    start = (utcnow() - timedelta(hours=3)).replace(second=0, microsecond=0)
    near, far = (52.5800, -0.2497), (52.6500, -0.2500)
    for tag, place in zip(world.tags, (near, far), strict=True):
        fixes = [fix(start + timedelta(minutes=m), *place) for m in range(0, 90)]
        r = await client.post(
            "/v1/fixes", json={"tag_id": tag, "fixes": fixes}, headers=world.supplier
        )
        assert r.json()["accepted"] == 90
    await boxed(db)  # the fixes' crime trigger has run: the crime comes after
    window = {"from": uk(start + timedelta(minutes=30)), "to": uk(start + timedelta(minutes=50))}
    summary = await upload(client, world, row(ref="CC/1", **window), row(code="??", ref="CC/2"))
    assert (summary["rows"], summary["accepted"], summary["new_crimes"]) == (2, 1, 1)
    assert summary["rejected"] == [
        {
            "row": 2,
            "field": "type_code",
            "error": "'??' is not a crime type code (RB, BIAD, AB, BOTD, TOMV, TFP, TFMV)",
        }
    ]
    (crime_id,) = summary["crime_ids"]

    run = (await client.get(f"/v1/crimes/{crime_id}/matches", headers=world.admin)).json()
    assert run["trigger"] == "new_crime"
    assert run["algorithm"] == "crime-match/2"
    assert run["parameters"]["radius_m"] == 100
    assert [m["subject_id"] for m in run["results"]["matched"]] == [str(world.subjects[0])]
    matched = run["results"]["matched"][0]
    assert matched["closest"]["distance_m"] < 30
    assert matched["coverage"] == 1.0
    assert matched["time_within_s"] > 0
    assert matched["evidence"]
    assert [m["subject_id"] for m in run["results"]["ruled_out"]] == [str(world.subjects[1])]

    (alert,) = await crime_alerts(client, world)
    assert alert["crime_id"] == crime_id
    assert "BIAD" in alert["reason"]

    # Sent again unchanged: nothing new. A manual re-run: a new record, no new alert.
    again = await upload(client, world, row(ref="CC/1", **window))
    assert (again["unchanged"], again["new_versions"]) == (1, 0)
    rerun = await client.post(f"/v1/crimes/{crime_id}/matches/rerun", headers=world.admin)
    assert rerun.status_code == 201 and rerun.json()["trigger"] == "manual"
    assert len(await crime_alerts(client, world)) == 1

    # A corrected time window is a new version, matched again: the far subject's tag
    # sent nothing then, so it is unknown; the match is a new alert for the new version.
    later = {"from": uk(start + timedelta(minutes=60)), "to": uk(start + timedelta(minutes=80))}
    revised = await upload(client, world, row(ref="CC/1", **later))
    assert revised["new_versions"] == 1
    (new_id,) = revised["crime_ids"]
    assert new_id != crime_id
    crimes = {
        c["id"]: c
        for c in [
            (await client.get(f"/v1/crimes/{i}", headers=world.admin)).json()
            for i in (crime_id, new_id)
        ]
    }
    assert (crimes[crime_id]["current"], crimes[new_id]["current"]) == (False, True)
    assert crimes[new_id]["version"] == 2
    assert {a["crime_id"] for a in await crime_alerts(client, world)} == {crime_id, new_id}


async def test_both_directions_give_the_same_answer(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    """Crime first then fixes, or fixes first then crime: the same matches."""
    start = (utcnow() - timedelta(hours=5)).replace(second=0, microsecond=0)
    scenes = [(52.5800, -0.2500), (52.6000, -0.2200)]
    # Subject 0 passes scene A by a fix; subject 1 passes scene B only along a path
    # between two fixes 300 m either side.
    paths = {
        world.tags[0]: [
            fix(start + timedelta(minutes=m), 52.5800, -0.2500 + 0.0004) for m in range(40)
        ],
        world.tags[1]: [
            *[fix(start + timedelta(minutes=m), 52.6002, -0.2244) for m in range(0, 20)],
            *[fix(start + timedelta(minutes=m), 52.6002, -0.2156) for m in range(21, 40)],
        ],
    }

    async def load_crimes(tag: str) -> list[str]:
        (lat, lon) = scenes[0] if tag.endswith("A") else scenes[1]
        window = {
            "from": uk(start + timedelta(minutes=10)),
            "to": uk(start + timedelta(minutes=30)),
        }
        summary = await upload(client, world, row(ref=tag, lat=str(lat), lon=str(lon), **window))
        ids: list[str] = summary["crime_ids"]
        return ids

    async def results(crime_ids: list[str]) -> list[tuple[str, float]]:
        out = []
        for cid in crime_ids:
            run = (await client.get(f"/v1/crimes/{cid}/matches", headers=world.admin)).json()
            out += [
                (m["subject_id"], m["closest"]["distance_m"]) for m in run["results"]["matched"]
            ]
        return sorted(out)

    # Crimes first (A, B), then the fixes arrive.
    first = await load_crimes("first-A") + await load_crimes("first-B")
    # Both subjects' fixes in one stream, so one batch comes near both crimes, one
    # subject each: the runs made together must keep each crime's subjects apart.
    lines = [orjson.dumps({"tag_id": tag, **f}) for tag, fixes in paths.items() for f in fixes]
    r = await client.post("/v1/fixes/stream", content=b"\n".join(lines), headers=world.supplier)
    assert r.status_code == 202 and r.json()["accepted"] == 79, r.text
    await boxed(db)
    from_fixes = await results(first)
    runs = [
        (await client.get(f"/v1/crimes/{c}/matches", headers=world.admin)).json() for c in first
    ]
    assert {r["trigger"] for r in runs} == {"new_fixes"}
    # Fixes re-run a crime for their own subjects only: scene A's runs since its first
    # looked at subject 0 alone; what the API gives merges them with that first run,
    # which assessed every wearer.
    async with db.pool.acquire() as conn:
        partial = await conn.fetch(
            "select results from crime_match_runs where crime_id = $1 and trigger = 'new_fixes'",
            uuid.UUID(first[0]),
        )
    assert partial
    for r in partial:
        stored = orjson.loads(r["results"]) if isinstance(r["results"], str) else r["results"]
        seen = {a["subject_id"] for group in stored.values() for a in group}
        assert seen == {str(world.subjects[0])}, seen
    assert runs[0]["parameters"]["scope"] == "subjects with new fixes"
    assert len(runs[0]["based_on"]) == 1 + len(partial)
    merged = {a["subject_id"] for group in runs[0]["results"].values() for a in group}
    assert merged == {str(s) for s in world.subjects}
    # The same places again, now with the fixes stored first.
    second = await load_crimes("second-A") + await load_crimes("second-B")
    from_crimes = await results(second)
    assert from_fixes == from_crimes
    assert sorted(s for s, _ in from_fixes) == sorted(str(s) for s in world.subjects)


async def test_a_path_past_a_scene_between_distant_fixes_is_found_from_the_fix_side(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    """Crime first, then two fixes 2.5 km either side of its scene, four minutes apart
    (driving past it): their trail box meets the scene, so the fixes re-run the crime and
    the path between them matches. Fixes of another subject far from it re-run nothing."""
    start = (utcnow() - timedelta(hours=3)).replace(second=0, microsecond=0)
    scene = (52.5800, -0.2500)
    window = {"from": uk(start + timedelta(minutes=10)), "to": uk(start + timedelta(minutes=30))}
    (crime_id,) = (
        await upload(client, world, row(ref="PAST", lat=str(scene[0]), lon=str(scene[1]), **window))
    )["crime_ids"]
    before = (await client.get(f"/v1/crimes/{crime_id}/matches", headers=world.admin)).json()
    assert before["trigger"] == "new_crime" and before["results"]["matched"] == []
    at = start + timedelta(minutes=20)
    drive = [
        fix(at, scene[0], scene[1] - 0.037),
        fix(at + timedelta(minutes=4), scene[0], scene[1] + 0.037),
    ]
    far = [fix(at + timedelta(minutes=m), 52.75, -0.60) for m in range(3)]
    for tag, fixes in ((world.tags[1], far), (world.tags[0], drive)):
        r = await client.post(
            "/v1/fixes", json={"tag_id": tag, "fixes": fixes}, headers=world.supplier
        )
        assert r.status_code == 202, r.text
    await boxed(db)
    run = (await client.get(f"/v1/crimes/{crime_id}/matches", headers=world.admin)).json()
    assert run["trigger"] == "new_fixes"
    # One partial run, the driver's: the far subject's fixes re-ran nothing.
    assert len(run["based_on"]) == 2
    (matched,) = run["results"]["matched"]
    assert matched["subject_id"] == str(world.subjects[0])
    assert matched["closest"]["via"] == "segment"
