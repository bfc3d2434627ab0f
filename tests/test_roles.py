"""Every role on every endpoint: no endpoint answers without a token, and each refuses
every role it is not for. A new endpoint fails this test until its roles are declared."""

from __future__ import annotations

import inspect
import re
import uuid
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute

from services.app import ROUTERS, create_app
from services.common.auth import Role
from services.common.database import Database
from services.pipeline import Pipeline
from tests.conftest import enrol, token_for

SUPPLIER = {Role.supplier}
ADMIN = {Role.admin}
MANAGERS = {Role.manager, Role.supervisor, Role.admin}
INVESTIGATOR = {Role.investigator}
AUDITOR = {Role.auditor}

ALLOWED: dict[tuple[str, str], set[Role]] = {
    ("POST", "/v1/fixes"): SUPPLIER,
    ("POST", "/v1/fixes/stream"): SUPPLIER,
    ("POST", "/v1/device-events"): SUPPLIER,
    ("POST", "/v1/suppliers"): ADMIN,
    ("POST", "/v1/tags"): ADMIN,
    ("POST", "/v1/subjects"): ADMIN,
    ("GET", "/v1/subjects"): ADMIN,
    ("POST", "/v1/subjects/{subject_id}/tags"): ADMIN,
    ("POST", "/v1/subjects/{subject_id}/managers"): ADMIN,
    ("PUT", "/v1/managers/{manager_id}/supervisor"): ADMIN,
    ("POST", "/v1/teams"): ADMIN,
    ("PUT", "/v1/managers/{manager_id}/team"): ADMIN,
    ("POST", "/v1/zones"): ADMIN,
    ("PUT", "/v1/zones/{zone_id}"): ADMIN,
    ("GET", "/v1/zones"): ADMIN,
    ("GET", "/v1/zones/{zone_id}/versions"): ADMIN,
    ("GET", "/v1/zones/{zone_id}"): ADMIN,
    ("POST", "/v1/crimes"): ADMIN,
    ("POST", "/v1/crimes/batches"): ADMIN,
    ("GET", "/v1/crimes/{crime_id}"): ADMIN,
    ("GET", "/v1/crimes/{crime_id}/matches"): ADMIN,
    ("POST", "/v1/crimes/{crime_id}/matches/rerun"): ADMIN,
    ("GET", "/v1/alerts"): MANAGERS,
    ("GET", "/v1/teams/{team_id}/alerts"): MANAGERS,
    ("GET", "/v1/alerts/stream"): MANAGERS,
    ("GET", "/v1/alerts/{alert_id}"): MANAGERS,
    ("POST", "/v1/alerts/{alert_id}/ack"): MANAGERS,
    ("POST", "/v1/alerts/{alert_id}/close"): MANAGERS,
    ("GET", "/v1/alerts/{alert_id}/deliveries"): MANAGERS,
    ("POST", "/v1/webhooks"): MANAGERS,
    ("POST", "/v1/email-subscriptions"): MANAGERS,
    ("GET", "/v1/subscriptions"): MANAGERS,
    ("DELETE", "/v1/subscriptions/{subscription_id}"): MANAGERS,
    ("GET", "/v1/deliveries"): ADMIN,
    ("POST", "/v1/deliveries/{delivery_id}/replay"): ADMIN,
    ("POST", "/v1/queries/proximity"): INVESTIGATOR,
    ("POST", "/v1/queries/proximity/bundle"): INVESTIGATOR,
    ("GET", "/v1/crimes/{crime_id}/matches/bundle"): INVESTIGATOR,
    ("GET", "/v1/subjects/{subject_id}/trail"): INVESTIGATOR,
    ("GET", "/v1/subjects/{subject_id}/trail/export"): INVESTIGATOR,
    ("GET", "/v1/audit"): AUDITOR,
    ("GET", "/metrics"): ADMIN,
}
# Orchestrators probe these without credentials; they say only up or down.
OPEN = {("GET", "/healthz"), ("GET", "/readyz")}


def routes(pipeline: Pipeline) -> list[tuple[str, str]]:
    """Every operation the application serves, as its OpenAPI document lists them."""
    paths = create_app(pipeline, manage=False).openapi()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


async def test_every_endpoint_declares_its_roles(memory_pipeline: Pipeline) -> None:
    assert set(routes(memory_pipeline)) == set(ALLOWED) | OPEN


async def test_every_role_on_every_endpoint(
    client: httpx.AsyncClient, db: Database, memory_pipeline: Pipeline
) -> None:
    world = await enrol(client, db, n=1, prefix="ROLES")
    tokens = {
        Role.admin: world.admin,
        Role.manager: world.manager,
        Role.supplier: world.supplier,
        Role.investigator: (await token_for(db, Role.investigator, "inv"))[1],
        Role.auditor: (await token_for(db, Role.auditor, "aud"))[1],
        Role.supervisor: (await token_for(db, Role.supervisor, "sup"))[1],
    }
    assert set(tokens) == set(Role)
    checked = 0
    for method, path in ALLOWED:
        url = re.sub(r"\{[a-z_]+\}", lambda _: str(uuid.uuid4()), path)
        anonymous = await client.request(method, url)
        assert anonymous.status_code == 401, (method, path, anonymous.status_code)
        for role, headers in tokens.items():
            if role in ALLOWED[(method, path)]:
                continue
            r = await client.request(method, url, headers=headers)
            assert r.status_code == 403, (method, path, role, r.status_code, r.text)
            checked += 1
    assert checked > 180


def _runs_on_the_loop(call: Any) -> bool:
    """Whether FastAPI awaits this endpoint or dependency on the event loop, rather than
    running it in its thread pool."""
    function = call if inspect.isroutine(call) else type(call).__call__
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


async def test_no_endpoint_waits_for_a_thread(memory_pipeline: Pipeline) -> None:
    """Every endpoint, and every dependency of each, is a coroutine or an async generator.
    FastAPI runs a plain function (or generator) in its thread pool: a thread woken and
    the GIL handed over and back for every request. `get_runtime` was one, on every
    request, until the twenty-seventh session (docs/benchmarks.md)."""
    app = create_app(memory_pipeline, manage=False)
    threaded: list[tuple[str, str]] = []
    checked = 0

    def visit(dependant: Dependant, path: str) -> None:
        nonlocal checked
        if dependant.call is not None:
            checked += 1
            if not _runs_on_the_loop(dependant.call):
                threaded.append((path, getattr(dependant.call, "__name__", repr(dependant.call))))
        for inner in dependant.dependencies:
            visit(inner, path)

    # The application's own routes, and each service's router's, with the dependencies
    # a router gives all its routes.
    for router in (app.router, *ROUTERS):
        for route in router.routes:
            if isinstance(route, APIRoute):
                visit(route.dependant, route.path)
        for depends in router.dependencies:
            visit(get_dependant(path="", call=depends.dependency), router.prefix)
    assert not threaded
    assert checked > 150


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_are_open(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200
