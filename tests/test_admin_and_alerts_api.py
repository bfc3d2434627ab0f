"""Roles, hashed secrets, input validation of the admin API, and managers' caseloads."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import httpx
import pytest

from services.alerts.schemas import AlertEvent, AlertKind, AlertMessage
from services.common.auth import Role
from services.common.database import Database
from services.common.settings import AppSettings
from services.common.timeutil import utcnow
from services.pipeline import Pipeline
from services.topics import ALERTS
from tests.conftest import enrol, square, token_for


async def test_supplier_token_is_shown_once_and_stored_hashed(
    client: httpx.AsyncClient, db: Database
) -> None:
    _, admin = await token_for(db, Role.admin, "root")
    r = await client.post("/v1/suppliers", json={"name": "Acme Tags"}, headers=admin)
    assert r.status_code == 201
    token = r.json()["token"]
    async with db.pool.acquire() as conn:
        rows = await conn.fetch("select token_hash, role from credentials where role = 'supplier'")
        dump = str(await conn.fetch("select * from credentials"))
    assert token not in dump
    assert [(x["token_hash"], x["role"]) for x in rows] == [
        (hashlib.sha256(token.encode()).hexdigest(), "supplier")
    ]


async def test_admin_endpoints_need_the_admin_role(client: httpx.AsyncClient, db: Database) -> None:
    _, manager = await token_for(db, Role.manager, "m")
    _, investigator = await token_for(db, Role.investigator, "i")
    body = {"reference": "X1", "display_name": "X"}
    assert (await client.post("/v1/subjects", json=body)).status_code == 401
    assert (await client.post("/v1/subjects", json=body, headers=manager)).status_code == 403
    assert (await client.post("/v1/subjects", json=body, headers=investigator)).status_code == 403
    assert (await client.get("/v1/alerts", headers=investigator)).status_code == 403


async def test_duplicate_enrolment_is_a_conflict(client: httpx.AsyncClient, db: Database) -> None:
    _, admin = await token_for(db, Role.admin, "root")
    body = {"reference": "DUP", "display_name": "A"}
    assert (await client.post("/v1/subjects", json=body, headers=admin)).status_code == 201
    r = await client.post("/v1/subjects", json=body, headers=admin)
    assert r.status_code == 409
    assert "DUP" in r.json()["error"]


def feature(subject: uuid.UUID, ring: list[list[float]]) -> dict[str, object]:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"subject_id": str(subject), "kind": "exclusion", "name": "z"},
    }


BOWTIE = [[-0.24, 52.57], [-0.23, 52.58], [-0.23, 52.57], [-0.24, 52.58], [-0.24, 52.57]]
OPEN_RING = [[-0.24, 52.57], [-0.23, 52.57], [-0.23, 52.58], [-0.24, 52.58]]
COUNTY = [[-1.0, 52.0], [0.5, 52.0], [0.5, 53.0], [-1.0, 53.0], [-1.0, 52.0]]


@pytest.mark.parametrize(
    ("ring", "status", "says"),
    [
        (BOWTIE, 422, "Self-intersection"),
        (OPEN_RING, 422, "not closed"),
        (COUNTY, 422, "km²"),
        ([[-0.24, 52.57], [-0.23, 95.0], [-0.23, 52.58], [-0.24, 52.57]], 422, "bounds"),
    ],
    ids=["self-intersecting", "unclosed", "too-large", "off-the-globe"],
)
async def test_bad_zone_geometry_is_explained(
    client: httpx.AsyncClient, db: Database, ring: list[list[float]], status: int, says: str
) -> None:
    world = await enrol(client, db, n=1)
    r = await client.post("/v1/zones", json=feature(world.subjects[0], ring), headers=world.admin)
    assert r.status_code == status
    assert says in r.text


async def test_a_zone_round_trips_as_geojson(client: httpx.AsyncClient, db: Database) -> None:
    world = await enrol(client, db, n=1)
    ring = square(52.57, -0.24, 100)
    r = await client.post("/v1/zones", json=feature(world.subjects[0], ring), headers=world.admin)
    assert r.status_code == 201
    got = (await client.get(f"/v1/zones/{r.json()['id']}", headers=world.admin)).json()
    assert got["type"] == "Feature"
    assert got["geometry"]["type"] == "Polygon"
    assert got["geometry"]["coordinates"][0][0] == pytest.approx(ring[0])
    assert got["properties"]["kind"] == "exclusion"


@pytest.mark.parametrize(
    ("days_ago", "hours", "says"),
    [
        (1, 13, "longer than 12 hours"),
        (1, -1, "before starts_at"),
        (-1, 1, "in the future"),
        (365 * 30, 1, "before 2000-01-01"),
    ],
)
async def test_crime_windows_are_bounded(
    client: httpx.AsyncClient, db: Database, days_ago: int, hours: int, says: str
) -> None:
    _, admin = await token_for(db, Role.admin, "root")
    start = utcnow() - timedelta(days=days_ago)
    crime = {
        "category": "TFMV",
        "lat": 52.57,
        "lon": -0.24,
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=hours)).isoformat(),
    }
    r = await client.post("/v1/crimes", json={"crimes": [crime]}, headers=admin)
    assert r.status_code == 422
    assert says in r.text


async def test_a_manager_sees_only_their_caseload(
    client: httpx.AsyncClient, db: Database, memory_pipeline: Pipeline
) -> None:
    mine = await enrol(client, db, n=1, prefix="MINE")
    theirs = await enrol(client, db, n=1, prefix="THEIRS")
    alerts = [
        AlertMessage(
            alert_id=uuid.uuid4(),
            kind=AlertKind.exclusion,
            event=AlertEvent.opened,
            subject_id=world.subjects[0],
            zone_id=uuid.uuid4(),
            at=utcnow(),
        )
        for world in (mine, theirs)
    ]
    await memory_pipeline.runtime.bus.publish(ALERTS, [(str(a.subject_id), a) for a in alerts])
    listed = (await client.get("/v1/alerts", headers=mine.manager)).json()["items"]
    assert [a["id"] for a in listed] == [str(alerts[0].alert_id)]
    other = str(alerts[1].alert_id)
    assert (await client.get(f"/v1/alerts/{other}", headers=mine.manager)).status_code == 404
    filtered = await client.get(
        "/v1/alerts", params={"subject_id": str(theirs.subjects[0])}, headers=mine.manager
    )
    assert filtered.json()["items"] == []
    everything = (await client.get("/v1/alerts", headers=mine.admin)).json()["items"]
    assert len(everything) == 2


async def test_health_readiness_and_metrics(client: httpx.AsyncClient, db: Database) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "bus": True}
    assert (await client.get("/metrics")).status_code == 401
    _, admin = await token_for(db, Role.admin, "prometheus")
    metrics = await client.get("/metrics", headers=admin)
    assert metrics.status_code == 200
    for name in (
        "tagtrail_fixes_accepted_total",
        "tagtrail_consumer_lag",
        "tagtrail_alerts_opened_total",
    ):
        assert name in metrics.text


def test_production_refuses_the_development_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGTRAIL_ENV", "production")
    monkeypatch.setenv("TAGTRAIL_DB_PASSWORD", "tagtrail-dev")
    with pytest.raises(ValueError, match="development default"):
        AppSettings()
    monkeypatch.setenv("TAGTRAIL_DB_PASSWORD", "a-real-secret")
    with pytest.raises(ValueError, match="TAGTRAIL_ALERTS_WEBHOOK_KEY"):
        AppSettings()
    monkeypatch.setenv("TAGTRAIL_ALERTS_WEBHOOK_KEY", "another-real-secret")
    assert AppSettings().env == "production"


async def test_admin_bodies_are_bounded(client: httpx.AsyncClient, db: Database) -> None:
    _, admin = await token_for(db, Role.admin, "root")
    huge = b'{"crimes": [' + b'{"category": "RB"},' * 200_000 + b"{}]}"
    r = await client.post("/v1/crimes", content=huge, headers=admin)
    assert r.status_code == 413
    assert "larger than" in r.json()["error"]


async def test_alert_filters_need_a_time_zone(client: httpx.AsyncClient, db: Database) -> None:
    _, admin = await token_for(db, Role.admin, "root")
    r = await client.get("/v1/alerts", params={"since": "2026-11-25T10:00:00"}, headers=admin)
    assert r.status_code == 422
    r = await client.get("/v1/alerts", params={"since": "2026-11-25T10:00:00Z"}, headers=admin)
    assert r.status_code == 200
