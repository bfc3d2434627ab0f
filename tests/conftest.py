"""Fixtures: a fresh PostGIS database through the real migrations, pipelines on the
in-process bus and on the real Kafka broker that `make test` starts."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import pytest_asyncio
import uvicorn
from starlette.types import ASGIApp

from bench.common import drop_database
from services.app import create_app
from services.cli import migrate
from services.common.auth import Role
from services.common.database import Database
from services.common.settings import Settings
from services.common.timeutil import utcnow
from services.pipeline import ALL_ROLES, Pipeline
from services.registry import service as registry

T = TypeVar("T")

TABLES = (
    "alerts, credentials, crimes, dead_letters, device_events, fix_conflicts, manager_assignments, "
    "tag_assignments, tags, subjects, suppliers, users, zone_episodes, zone_versions, "
    "device_episodes, subject_activity, zone_subjects, zones, crime_match_runs, trail_points, "
    "trail_unboxed, "
    "alert_transitions, subscriptions, alert_deliveries, alert_delivery_attempts, "
    "alert_feed, alert_relay_positions, teams"
)


def quiet_settings() -> Settings:
    """Settings for tests: the silence watchdog and the pipeline's own webhook sender
    only act when a test drives them; the box keeper looks for stored fixes often."""
    s = Settings()
    s.check = s.check.model_copy(update={"watchdog_interval_s": 3600.0, "box_interval_s": 0.05})
    s.alerts = s.alerts.model_copy(
        update={"poll_interval_s": 3600.0, "escalation_interval_s": 3600.0}
    )
    return s


@pytest.fixture(scope="session")
def settings() -> Settings:
    return quiet_settings()


@pytest_asyncio.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[str]:
    """A database of our own for this run, built by the real Alembic migrations."""
    name = f"tagtrail_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(settings.db.asyncpg_dsn("postgres"))
    try:
        await admin.execute(f"create database {name}")
    finally:
        await admin.close()
    await asyncio.to_thread(migrate, settings.db.sqlalchemy_url(name))
    yield name
    await drop_database(settings, name)


@pytest_asyncio.fixture
async def db(settings: Settings, database: str) -> AsyncIterator[Database]:
    """A clean database for each test (every table emptied first)."""
    handle = await Database.connect(settings.db, database)
    async with handle.pool.acquire() as conn:
        await conn.execute(f"truncate {TABLES} cascade")
    yield handle
    await handle.close()


def kafka_settings(settings: Settings) -> Settings:
    """Settings whose topics are this test's alone, on the shared local broker."""
    isolated = quiet_settings()
    isolated.kafka = settings.kafka.model_copy(
        update={"topic_prefix": f"t{uuid.uuid4().hex[:8]}.", "partitions": 4}
    )
    return isolated


@pytest_asyncio.fixture
async def memory_pipeline(
    settings: Settings, database: str, db: Database
) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(settings, bus="memory", roles=ALL_ROLES, database=database)
    await pipeline.start()
    yield pipeline
    await pipeline.stop()


@pytest_asyncio.fixture
async def client(memory_pipeline: Pipeline) -> AsyncIterator[httpx.AsyncClient]:
    """The API on the in-process bus, driven in-process through ASGI."""
    app = create_app(memory_pipeline, manage=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tagtrail") as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve(pipeline: Pipeline) -> AsyncIterator[str]:
    """Serves the API over real HTTP on a free loopback port; yields its base URL."""
    async with serve_app(create_app(pipeline, manage=False)) as url:
        yield url


@asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[str]:
    """Serves an ASGI app over real HTTP on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())

    async def started() -> None:
        while not server.started:  # noqa: ASYNC110 - uvicorn has no "listening" event
            await asyncio.sleep(0.02)

    await asyncio.wait_for(started(), 10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def eventually(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], within_s: float = 30.0
) -> T:
    """Polls probe until ok(result); fails with the last result after within_s seconds."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = await probe()
        if ok(result):
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within_s} s; last: {result!r}")
        await asyncio.sleep(0.1)


async def boxed(db: Database) -> None:
    """Waits until the box keeper has widened the boxes of every stored batch and run the
    crime trigger for them (it deletes a batch's row after both)."""
    await eventually(
        lambda: db.pool.fetchval("select count(*) from trail_unboxed"), lambda n: n == 0
    )


@dataclass
class World:
    """What a test needs to drive the pipeline: enrolled tags on subjects, and tokens."""

    admin: dict[str, str]
    supplier: dict[str, str]
    manager: dict[str, str]
    manager_id: uuid.UUID
    supplier_id: uuid.UUID
    tags: list[str]
    subjects: list[uuid.UUID]


async def token_for(db: Database, role: Role, name: str) -> tuple[uuid.UUID, dict[str, str]]:
    async with db.transaction() as session:
        user, token = await registry.create_user_token(session, role, name)
    return user.id, {"Authorization": f"Bearer {token}"}


async def enrol(http: httpx.AsyncClient, db: Database, n: int = 2, prefix: str = "T") -> World:
    """Enrols a supplier, n tags worn by n subjects, and one manager for them all, via the API."""
    _, admin = await token_for(db, Role.admin, f"admin-{prefix}")
    manager_id, manager = await token_for(db, Role.manager, f"manager-{prefix}")
    r = await http.post("/v1/suppliers", json={"name": f"supplier-{prefix}"}, headers=admin)
    assert r.status_code == 201, r.text
    supplier_id = uuid.UUID(r.json()["id"])
    supplier = {"Authorization": f"Bearer {r.json()['token']}"}
    since = (utcnow() - timedelta(days=30)).isoformat()
    tags, subjects = [], []
    for i in range(n):
        tag_id = f"{prefix}-TAG-{i:03d}"
        r = await http.post(
            "/v1/tags", json={"tag_id": tag_id, "supplier_id": str(supplier_id)}, headers=admin
        )
        assert r.status_code == 201, r.text
        r = await http.post(
            "/v1/subjects",
            json={"reference": f"{prefix}-S{i:03d}", "display_name": f"Subject {i}"},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        subject_id = uuid.UUID(r.json()["id"])
        r = await http.post(
            f"/v1/subjects/{subject_id}/tags",
            json={"tag_id": tag_id, "valid_from": since},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        r = await http.post(
            f"/v1/subjects/{subject_id}/managers",
            json={"manager_id": str(manager_id), "valid_from": since},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        tags.append(tag_id)
        subjects.append(subject_id)
    return World(admin, supplier, manager, manager_id, supplier_id, tags, subjects)


def fix(
    ts: Any, lat: float = 52.5725, lon: float = -0.2430, accuracy_m: float = 8.0, **extra: Any
) -> dict[str, Any]:
    return {
        "ts": ts if isinstance(ts, str) else ts.isoformat(),
        "lat": lat,
        "lon": lon,
        "accuracy_m": accuracy_m,
        **extra,
    }


def square(lat: float, lon: float, half_m: float) -> list[list[float]]:
    """A closed lon/lat ring: a square of side 2*half_m centred on (lat, lon)."""
    dlat = half_m / 111_320
    dlon = half_m / (111_320 * 0.6081)  # cos(52.57°)
    return [
        [lon - dlon, lat - dlat],
        [lon + dlon, lat - dlat],
        [lon + dlon, lat + dlat],
        [lon - dlon, lat + dlat],
        [lon - dlon, lat - dlat],
    ]
