"""Investigators: proximity search and trails, always justified and always audited;
auditors read the audit log, which nobody can change."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from datetime import timedelta
from typing import Any
from xml.etree import ElementTree

import asyncpg
import httpx
import pytest

from services.common.auth import Role
from services.common.database import Database
from services.common.geo import WGS84
from services.common.timeutil import utcnow
from services.trails.retention import Retention
from tests.conftest import World, enrol, fix, token_for

PLACE = (52.5700, -0.2600)


def near(east_m: float, north_m: float = 0.0) -> tuple[float, float]:
    lon, lat, _ = WGS84.fwd(PLACE[1], PLACE[0], 90, east_m)
    lon, lat, _ = WGS84.fwd(lon, lat, 0, north_m)
    return lat, lon


@pytest.fixture
async def world(client: httpx.AsyncClient, db: Database) -> World:
    return await enrol(client, db, n=3, prefix="INV")


@pytest.fixture
async def investigator(db: Database) -> dict[str, str]:
    return (await token_for(db, Role.investigator, "DC Holmes"))[1]


async def load_trails(client: httpx.AsyncClient, world: World) -> Any:
    start = (utcnow() - timedelta(hours=4)).replace(second=0, microsecond=0)
    walker = [fix(start + timedelta(minutes=m), *near(40, 0)) for m in range(60)]
    dasher = [
        *[fix(start + timedelta(minutes=m), *near(-300, 20)) for m in range(0, 30)],
        *[fix(start + timedelta(minutes=m), *near(300, 20)) for m in range(31, 60)],
    ]
    far = [fix(start + timedelta(minutes=m), *near(5000, 0)) for m in range(60)]
    for tag, fixes in zip(world.tags, (walker, dasher, far), strict=True):
        r = await client.post(
            "/v1/fixes", json={"tag_id": tag, "fixes": fixes}, headers=world.supplier
        )
        assert r.json()["accepted"] == len(fixes)
    return start


def query(start: Any, case: str, **over: Any) -> dict[str, Any]:
    return {
        "lat": PLACE[0],
        "lon": PLACE[1],
        "radius_m": 100,
        "start": (start + timedelta(minutes=20)).isoformat(),
        "end": (start + timedelta(minutes=40)).isoformat(),
        "reason": "Burglary at 12 Priestgate, suspects sought",
        "case_reference": case,
        **over,
    }


async def test_who_was_near_a_place_and_when(
    client: httpx.AsyncClient, world: World, investigator: dict[str, str], db: Database
) -> None:
    start = await load_trails(client, world)
    case = f"CASE-{uuid.uuid4().hex[:6]}"
    r = await client.post("/v1/queries/proximity", json=query(start, case), headers=investigator)
    assert r.status_code == 200, r.text
    found = r.json()["subjects"]
    assert [s["subject_id"] for s in found] == [str(world.subjects[1]), str(world.subjects[0])]
    assert found[0]["closest"]["via"] == "segment"  # the dash, 20 m less accuracy
    assert found[1]["closest"]["via"] == "fix" and found[1]["closest"]["distance_m"] < 35
    assert found[1]["coverage"] == 1.0 and found[1]["evidence"]

    # The same place as British National Grid easting/northing gives the same answer.
    from pyproj import Transformer

    e, n = Transformer.from_crs("EPSG:4326", "EPSG:27700", always_xy=True).transform(
        PLACE[1], PLACE[0]
    )
    by_grid = query(start, case, easting=e, northing=n)
    del by_grid["lat"], by_grid["lon"]
    r2 = await client.post("/v1/queries/proximity", json=by_grid, headers=investigator)
    assert [s["subject_id"] for s in r2.json()["subjects"]] == [s["subject_id"] for s in found]

    auditor = (await token_for(db, Role.auditor, "Information Governance"))[1]
    log = (await client.get("/v1/audit", params={"case_reference": case}, headers=auditor)).json()
    assert [(e["action"], e["actor_name"], e["result_size"]) for e in log] == [
        ("proximity", "DC Holmes", 2),
        ("proximity", "DC Holmes", 2),
    ]
    assert log[0]["reason"].startswith("Burglary at 12 Priestgate")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"radius_m": 5000}, "less than or equal to 2000"),
        ({"reason": "because"}, "at least 10 characters"),
        ({"case_reference": ""}, "at least 3 characters"),
        ({"easting": 519400, "northing": 298600}, "not both"),
    ],
)
async def test_proximity_queries_are_bounded_and_justified(
    client: httpx.AsyncClient, investigator: dict[str, str], change: dict[str, Any], says: str
) -> None:
    body = query(utcnow() - timedelta(hours=2), "CASE-X", **change)
    r = await client.post("/v1/queries/proximity", json=body, headers=investigator)
    assert r.status_code == 422
    assert says in r.text


async def test_a_window_over_a_day_is_refused(
    client: httpx.AsyncClient, investigator: dict[str, str]
) -> None:
    start = utcnow() - timedelta(days=3)
    body = query(start, "CASE-Y", end=(start + timedelta(hours=30)).isoformat())
    r = await client.post("/v1/queries/proximity", json=body, headers=investigator)
    assert r.status_code == 422 and "24 hours" in r.text


async def test_a_subjects_trail_with_gaps_marked(
    client: httpx.AsyncClient, world: World, investigator: dict[str, str], db: Database
) -> None:
    start = await load_trails(client, world)
    case = f"CASE-{uuid.uuid4().hex[:6]}"
    params = {
        "start": (start - timedelta(minutes=30)).isoformat(),
        "end": (start + timedelta(minutes=60)).isoformat(),
        "reason": "Movements around the time of the offence",
        "case_reference": case,
    }
    r = await client.get(
        f"/v1/subjects/{world.subjects[1]}/trail", params=params, headers=investigator
    )
    assert r.status_code == 200, r.text
    features = r.json()["features"]
    fixes = [f for f in features if f["properties"]["kind"] == "fix"]
    gaps = [f["properties"] for f in features if f["properties"]["kind"] == "gap"]
    assert len(fixes) == 59
    assert fixes[0]["properties"]["late"] is True  # uploaded hours after it was taken
    assert gaps[0]["from"] == params["start"]  # nothing before the trail starts
    auditor = (await token_for(db, Role.auditor, "IG"))[1]
    log = (await client.get("/v1/audit", params={"case_reference": case}, headers=auditor)).json()
    assert [(e["action"], e["result_size"]) for e in log] == [("trail", 59)]


async def test_roles_on_the_investigator_and_audit_endpoints(
    client: httpx.AsyncClient, world: World, investigator: dict[str, str], db: Database
) -> None:
    auditor = (await token_for(db, Role.auditor, "IG"))[1]
    body = query(utcnow() - timedelta(hours=2), "CASE-R")
    trail = f"/v1/subjects/{world.subjects[0]}/trail"
    trail_params = {
        "start": (utcnow() - timedelta(hours=2)).isoformat(),
        "end": utcnow().isoformat(),
        "reason": "Movements around the time of the offence",
        "case_reference": "CASE-R",
    }
    for who, allowed in (
        (world.admin, False),
        (world.manager, False),
        (world.supplier, False),
        (auditor, False),
        (investigator, True),
    ):
        expected = 200 if allowed else 403
        assert (
            await client.post("/v1/queries/proximity", json=body, headers=who)
        ).status_code == expected
        assert (await client.get(trail, params=trail_params, headers=who)).status_code == expected
    for who, status in (
        (world.admin, 403),
        (world.manager, 403),
        (investigator, 403),
        (world.supplier, 403),
        (auditor, 200),
    ):
        assert (await client.get("/v1/audit", headers=who)).status_code == status
    assert (await client.get("/v1/audit")).status_code == 401


async def test_the_audit_log_cannot_be_changed_by_the_api_database_role(db: Database) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute(
            "insert into audit_log (actor_id, actor_name, role, action, parameters)"
            " values (gen_random_uuid(), 'test', 'admin', 'test', '{}')"
        )
        for statement in (
            "update audit_log set reason = 'x'",
            "delete from audit_log",
            "truncate audit_log",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)


@pytest.mark.parametrize("fmt", ["csv", "gpx", "kml"])
async def test_trail_exports_stream_in_three_formats(
    client: httpx.AsyncClient, world: World, investigator: dict[str, str], db: Database, fmt: str
) -> None:
    start = await load_trails(client, world)
    case = f"CASE-{uuid.uuid4().hex[:6]}"
    params = {
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=60)).isoformat(),
        "reason": "Movements around the time of the offence",
        "case_reference": case,
        "format": fmt,
    }
    r = await client.get(
        f"/v1/subjects/{world.subjects[1]}/trail/export", params=params, headers=investigator
    )
    assert r.status_code == 200, r.text
    assert "attachment" in r.headers["content-disposition"]
    text = r.text
    if fmt == "csv":
        lines = text.strip().split("\n")
        assert lines[0].startswith("tag_id,ts,received_at,lat,lon,accuracy_m,late")
        assert len(lines) == 60  # header + 59 fixes
    elif fmt == "gpx":
        root = ElementTree.fromstring(text)
        ns = {"g": "http://www.topografix.com/GPX/1/1"}
        assert len(root.findall(".//g:trkpt", ns)) == 59
        assert len(root.findall(".//g:trkseg", ns)) == 1  # a 2-minute gap is no break
    else:
        root = ElementTree.fromstring(text)
        assert len(root.findall(".//{http://www.opengis.net/kml/2.2}Placemark")) == 1
    auditor = (await token_for(db, Role.auditor, "IG"))[1]
    log = (await client.get("/v1/audit", params={"case_reference": case}, headers=auditor)).json()
    assert [(e["action"], e["parameters"]["format"]) for e in log] == [("trail_export", fmt)]


async def test_no_one_learns_whether_a_subject_exists_before_the_role_check(
    client: httpx.AsyncClient, world: World
) -> None:
    params = {
        "start": (utcnow() - timedelta(hours=1)).isoformat(),
        "end": utcnow().isoformat(),
        "reason": "Movements around the time of the offence",
        "case_reference": "CASE-Z",
    }
    for subject in (world.subjects[0], uuid.uuid4()):
        url = f"/v1/subjects/{subject}/trail"
        assert (await client.get(url, params=params)).status_code == 401
        assert (await client.get(url, params=params, headers=world.manager)).status_code == 403


def check_bundle(data: bytes) -> dict[str, bytes]:
    """What anyone can do later: every file's SHA-256 matches the manifest."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        files = {name: z.read(name) for name in z.namelist()}
    manifest = files.pop("MANIFEST.sha256").decode().strip().split("\n")
    listed = dict(reversed(line.split("  ", 1)) for line in manifest)
    assert sorted(listed) == sorted(files)
    for name, body in files.items():
        assert hashlib.sha256(body).hexdigest() == listed[name], name
    return files


async def test_a_proximity_result_as_an_evidence_bundle(
    client: httpx.AsyncClient, world: World, investigator: dict[str, str]
) -> None:
    start = await load_trails(client, world)
    case = f"CASE-{uuid.uuid4().hex[:6]}"
    r = await client.post(
        "/v1/queries/proximity/bundle", json=query(start, case), headers=investigator
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    files = check_bundle(r.content)
    meta = json.loads(files["query.json"])
    assert meta["kind"] == "proximity"
    assert meta["algorithm"] == "crime-match/2"
    assert meta["produced_by"]["name"] == "DC Holmes"
    assert meta["query"]["case_reference"] == case
    assert meta["query"]["radius_m"] == 100
    geo = json.loads(files["results.geojson"])
    assert {f["properties"]["subject_id"] for f in geo["features"]} == {
        str(world.subjects[0]),
        str(world.subjects[1]),
    }
    assert files["results.csv"].decode().startswith("subject_id,outcome,closest_m")


async def test_a_crime_match_as_an_evidence_bundle(
    client: httpx.AsyncClient, world: World, investigator: dict[str, str]
) -> None:
    start = await load_trails(client, world)
    crime = {
        "category": "BIAD",
        "force": "CAMBS",
        "reference": f"EV/{uuid.uuid4().hex[:6]}",
        "lat": PLACE[0],
        "lon": PLACE[1],
        "starts_at": (start + timedelta(minutes=20)).isoformat(),
        "ends_at": (start + timedelta(minutes=40)).isoformat(),
    }
    (made,) = (
        await client.post("/v1/crimes", json={"crimes": [crime]}, headers=world.admin)
    ).json()
    params = {"reason": "Disclosure for the burglary file", "case_reference": crime["reference"]}
    r = await client.get(
        f"/v1/crimes/{made['id']}/matches/bundle", params=params, headers=investigator
    )
    assert r.status_code == 200, r.text
    files = check_bundle(r.content)
    meta = json.loads(files["query.json"])
    assert meta["kind"] == "crime_match" and meta["query"]["crime_id"] == made["id"]
    outcomes = {a["subject_id"]: a["outcome"] for a in json.loads(files["results.json"])}
    assert outcomes[str(world.subjects[0])] == "matched"
    assert outcomes[str(world.subjects[2])] == "ruled_out"


async def test_retention_drops_old_partitions_and_crimes_and_says_so(
    client: httpx.AsyncClient, world: World, db: Database, settings: Any
) -> None:
    now = utcnow()
    old, recent = now - timedelta(days=20), now - timedelta(days=2)
    for ts in (old, recent):
        r = await client.post(
            "/v1/fixes",
            json={"tag_id": world.tags[0], "fixes": [fix(ts)]},
            headers=world.supplier,
        )
        assert r.json()["accepted"] == 1
    crime = {
        "category": "RB",
        "lat": PLACE[0],
        "lon": PLACE[1],
        "starts_at": (old - timedelta(hours=1)).isoformat(),
        "ends_at": old.isoformat(),
    }
    (made,) = (
        await client.post("/v1/crimes", json={"crimes": [crime]}, headers=world.admin)
    ).json()
    retention = Retention(
        db, settings.retention.model_copy(update={"fixes_days": 10, "crimes_days": 10})
    )
    removed = await retention.run(now)
    # Other tests may have left older partitions in this database; all go, none newer.
    for table in ("trail_points", "trail_boxes"):  # the trail and its boxes go together
        assert f"{table}_p{old:%Y%m%d}" in removed["trail_partitions"]
        cutoff = f"{table}_p{now - timedelta(days=10):%Y%m%d}"
        ours = [n for n in removed["trail_partitions"] if n.startswith(f"{table}_p")]
        assert all(name < cutoff for name in ours)
    assert removed["crimes"] == 1
    async with db.pool.acquire() as conn:
        left = await conn.fetch("select ts from trail_points order by ts")
        assert [r["ts"] for r in left] == [recent.replace(microsecond=recent.microsecond)]
        assert (
            await conn.fetchval("select count(*) from crimes where id = $1", uuid.UUID(made["id"]))
            == 0
        )
        assert await conn.fetchval("select count(*) from crime_match_runs") == 0
    auditor = (await token_for(db, Role.auditor, "IG"))[1]
    log = (await client.get("/v1/audit", params={"action": "retention"}, headers=auditor)).json()
    assert log[0]["parameters"]["trail_partitions"] == removed["trail_partitions"]
    assert log[0]["actor_name"] == "tagtrail retention"
    # Nothing left to remove: nothing happens, nothing is written.
    again = await retention.run(now)
    assert again["trail_partitions"] == [] and again["crimes"] == 0


async def test_administrative_changes_and_alert_reads_are_audited(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    marker = f"AUD-{uuid.uuid4().hex[:6]}"
    r = await client.post(
        "/v1/subjects", json={"reference": marker, "display_name": "Audited"}, headers=world.admin
    )
    assert r.status_code == 201
    refused = await client.post(
        "/v1/subjects",
        json={"reference": marker + "x", "display_name": "No"},
        headers=world.manager,
    )
    assert refused.status_code == 403
    await client.get("/v1/alerts", params={"kind": "exclusion"}, headers=world.manager)
    auditor = (await token_for(db, Role.auditor, "IG"))[1]
    by_admin = (
        await client.get("/v1/audit", params={"action": "POST /v1/subjects"}, headers=auditor)
    ).json()
    assert any(e["actor_name"] == "admin-INV" for e in by_admin)
    reads = (
        await client.get("/v1/audit", params={"action": "GET /v1/alerts"}, headers=auditor)
    ).json()
    assert reads[0]["actor_name"] == "manager-INV" and reads[0]["parameters"] == {
        "kind": "exclusion"
    }
    # The refused attempt by the manager is not recorded as a change.
    assert not any(e["actor_name"] == "manager-INV" for e in by_admin)
