"""Alerts as records with a lifecycle, routed to the managers responsible when it
happened, and delivered to webhooks through an outbox that survives failures."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from email import message_from_bytes
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from sqlalchemy import event
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.alerts.delivery import AlertSender
from services.alerts.escalation import Escalator
from services.alerts.schemas import AlertEvent, AlertKind, AlertMessage
from services.alerts.service import (
    Action,
    AlertState,
    Severity,
    retry_delay,
    severity,
    signature,
    transition,
)
from services.alerts.worker import Dispatcher
from services.common.auth import Role
from services.common.database import Database
from services.common.errors import Conflict
from services.common.settings import AlertSettings, SmtpSettings
from services.common.timeutil import utcnow
from services.pipeline import Pipeline
from services.topics import ALERTS
from tests.conftest import World, enrol, eventually, free_port, serve, token_for

# Pure rules -------------------------------------------------------------------------


def test_lifecycle_transitions() -> None:
    assert transition(AlertState.open, Action.acknowledge) is AlertState.acknowledged
    assert transition(AlertState.open, Action.close) is AlertState.closed
    assert transition(AlertState.acknowledged, Action.close) is AlertState.closed
    for state, action in [
        (AlertState.acknowledged, Action.acknowledge),
        (AlertState.closed, Action.acknowledge),
        (AlertState.closed, Action.close),
        (AlertState.superseded, Action.close),
    ]:
        with pytest.raises(Conflict):
            transition(state, action)


def test_severity_by_kind_and_risk() -> None:
    assert severity("exclusion", "confirmed", "medium") is Severity.red
    assert severity("exclusion", "possible", "medium") is Severity.amber
    assert severity("exclusion", "possible", "high") is Severity.red
    assert severity("battery_low", "confirmed", "medium") is Severity.green
    assert severity("battery_low", "confirmed", "low") is Severity.green
    assert severity("tamper", "confirmed", "low") is Severity.amber
    assert severity("crime_match", "match", "medium") is Severity.amber


def test_retry_delays_grow_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    delays = [retry_delay(n, 2, 900, rng).total_seconds() for n in range(1, 15)]
    for n, d in enumerate(delays, start=1):
        full = min(900, 2 * 2 ** (n - 1))
        assert full / 2 <= d <= full


# Through the API -------------------------------------------------------------------


@pytest.fixture
async def world(client: httpx.AsyncClient, db: Database) -> World:
    return await enrol(client, db, n=2, prefix="LIFE")


def opened(
    subject: uuid.UUID, kind: AlertKind = AlertKind.exclusion, ago_min: float = 5
) -> AlertMessage:
    return AlertMessage(
        alert_id=uuid.uuid4(),
        kind=kind,
        event=AlertEvent.opened,
        subject_id=subject,
        zone_id=uuid.uuid4(),
        at=utcnow() - timedelta(minutes=ago_min),
        confidence="confirmed",
        reason="test",
    )


async def file(pipeline: Pipeline, *messages: AlertMessage) -> None:
    await pipeline.runtime.bus.publish(ALERTS, [(str(m.subject_id), m) for m in messages])


async def test_acknowledge_then_close_with_history(
    client: httpx.AsyncClient, world: World, memory_pipeline: Pipeline
) -> None:
    m = opened(world.subjects[0])
    await file(memory_pipeline, m)
    url = f"/v1/alerts/{m.alert_id}"
    got = (await client.get(url, headers=world.manager)).json()
    assert (got["state"], got["severity"]) == ("open", "red")
    r = await client.post(f"{url}/ack", headers=world.manager)
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    assert r.json()["acknowledged_by"] == str(world.manager_id)
    assert (await client.post(f"{url}/ack", headers=world.manager)).status_code == 409
    bad = await client.post(f"{url}/close", json={"outcome": "whatever"}, headers=world.manager)
    assert bad.status_code == 422
    r = await client.post(
        f"{url}/close",
        json={"outcome": "false_alarm", "note": "GPS drift by the river"},
        headers=world.manager,
    )
    assert r.json()["state"] == "closed" and r.json()["outcome"] == "false_alarm"
    assert (
        await client.post(f"{url}/close", json={"outcome": "explained"}, headers=world.manager)
    ).status_code == 409
    # A later update of the episode never reopens what a manager closed.
    await file(
        memory_pipeline, m.model_copy(update={"event": AlertEvent.updated, "ended_at": utcnow()})
    )
    detail = (await client.get(url, headers=world.manager)).json()
    assert detail["state"] == "closed" and detail["ended_at"] is not None
    steps = [(h["from_state"], h["to_state"], h["actor_name"]) for h in detail["history"]]
    assert steps == [
        (None, "open", "tagtrail"),
        ("open", "acknowledged", "manager-LIFE"),
        ("acknowledged", "closed", "manager-LIFE"),
    ]
    assert detail["history"][-1]["note"] == "GPS drift by the river"


async def test_a_batch_of_updates_reads_its_alerts_once(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    dispatcher = Dispatcher(db)
    first = [opened(s, ago_min=m) for m in (5, 6, 7) for s in world.subjects]
    await dispatcher.handle(first)
    statements: list[str] = []

    def executed(*args: Any) -> None:
        statements.append(args[2])

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", executed)
    grown = {"event": AlertEvent.updated, "confidence": "probable", "reason": "grew"}
    try:
        await dispatcher.handle([m.model_copy(update=grown) for m in first])
    finally:
        event.remove(engine, "before_cursor_execute", executed)
    reads = [s for s in statements if "from alerts" in s.lower()]
    # The lock reads every alert of the batch; nothing reads one again.
    assert len(reads) == 1, reads
    # An alert opened and updated in one batch is filed once, updated.
    new = opened(world.subjects[0])
    await dispatcher.handle([new, new.model_copy(update=grown)])
    got = (await client.get(f"/v1/alerts/{new.alert_id}", headers=world.manager)).json()
    assert [h["to_state"] for h in got["history"]] == ["open"]
    for m in [*first, new]:
        got = (await client.get(f"/v1/alerts/{m.alert_id}", headers=world.manager)).json()
        assert (got["confidence"], got["reason"], got["state"]) == ("probable", "grew", "open")


async def test_a_batch_of_new_alerts_takes_as_many_statements_as_one(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    """Opening nine alerts, each with its transition, feed event and two deliveries,
    takes the dispatcher no more statements than opening one."""
    for headers in (world.manager, world.admin):
        r = await client.post(
            "/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=headers
        )
        assert r.status_code == 201
    dispatcher = Dispatcher(db)
    counts: list[int] = []
    batches = [[opened(world.subjects[i % 2], ago_min=i + 1) for i in range(n)] for n in (1, 9)]
    engine = db.engine.sync_engine
    for batch in batches:
        statements: list[str] = []

        def executed(*args: Any) -> None:
            statements.append(args[2])  # noqa: B023 (used before the loop moves on)

        event.listen(engine, "before_cursor_execute", executed)
        try:
            await dispatcher.handle(batch)
        finally:
            event.remove(engine, "before_cursor_execute", executed)
        counts.append(len(statements))
    assert counts[0] == counts[1], counts
    async with db.pool.acquire() as conn:
        for m in [m for batch in batches for m in batch]:
            filed = await conn.fetchval(
                "select count(*) from alert_transitions where alert_id = $1", m.alert_id
            )
            feed = await conn.fetchval(
                "select count(*) from alert_feed where alert_id = $1", m.alert_id
            )
            sent = await conn.fetchval(
                "select count(*) from alert_deliveries where alert_id = $1", m.alert_id
            )
            assert (filed, feed, sent) == (1, 1, 2), m


async def test_each_event_of_a_batch_tells_the_alert_as_it_was_then(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    """Opened and ended in one batch: the feed's "opened" shows the episode going on, its
    "ended" shows it ended, and both are stamped by the database's clock as stored."""
    m = opened(world.subjects[0])
    ended = m.model_copy(update={"event": AlertEvent.updated, "ended_at": utcnow()})
    await Dispatcher(db).handle([m, ended])
    async with db.pool.acquire() as conn:
        feed = await conn.fetch(
            "select event, payload from alert_feed where alert_id = $1 order by seq", m.alert_id
        )
        stored = await conn.fetchrow(
            "select created_at, updated_at from alerts where id = $1", m.alert_id
        )
    bodies = [(r["event"], orjson.loads(r["payload"])["alert"]) for r in feed]
    assert [(e, a["ended_at"] is None) for e, a in bodies] == [("opened", True), ("ended", False)]
    for _, alert in bodies:
        assert alert["created_at"] == stored["created_at"].isoformat().replace("+00:00", "Z")
        assert alert["updated_at"] == stored["updated_at"].isoformat().replace("+00:00", "Z")


async def test_routing_is_fixed_when_it_happened(
    client: httpx.AsyncClient, world: World, db: Database, memory_pipeline: Pipeline
) -> None:
    """A new manager takes over the subject; the old manager keeps the alerts from their
    time, the new one gets the ones after, and nobody else sees any of them."""
    new_id, new = await token_for(db, Role.manager, "new-manager")
    subject = world.subjects[0]
    before = opened(subject, ago_min=120)
    # The old assignment ends an hour ago (a new open-ended one starts then).
    handover = utcnow() - timedelta(hours=1)
    async with db.pool.acquire() as conn:
        await conn.execute(
            "update manager_assignments set valid_to = $1 where subject_id = $2", handover, subject
        )
    r = await client.post(
        f"/v1/subjects/{subject}/managers",
        json={"manager_id": str(new_id), "valid_from": handover.isoformat()},
        headers=world.admin,
    )
    assert r.status_code == 201
    after = opened(subject, ago_min=10)
    await file(memory_pipeline, before, after)
    old_sees = {
        a["id"] for a in (await client.get("/v1/alerts", headers=world.manager)).json()["items"]
    }
    new_sees = {a["id"] for a in (await client.get("/v1/alerts", headers=new)).json()["items"]}
    assert old_sees == {str(before.alert_id)}
    assert new_sees == {str(after.alert_id)}
    assert (
        await client.get(f"/v1/alerts/{after.alert_id}", headers=world.manager)
    ).status_code == 404
    assert (
        await client.post(f"/v1/alerts/{after.alert_id}/ack", headers=world.manager)
    ).status_code == 404


# Webhooks with a real receiver ------------------------------------------------------


class Receiver:
    """A local HTTP receiver that fails a set number of times, then accepts."""

    def __init__(self, failures: int = 0, hang_s: float = 0.0) -> None:
        self.failures = failures
        self.hang_s = hang_s
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        self.requests.append((headers, body))
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if self.failures > 0:
            self.failures -= 1
            return JSONResponse({"error": "try later"}, status_code=500)
        self.accepted.append((headers, body))
        return JSONResponse({"ok": True})


@contextlib.asynccontextmanager
async def running(receiver: Receiver) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            receiver.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has no "listening" event
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.should_exit = True
        await task


def fast(**over: Any) -> AlertSettings:
    return AlertSettings().model_copy(update={"retry_base_s": 0.05, "retry_cap_s": 0.2, **over})


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute the HMAC over "<t>.<body>" and compare."""
    parts = dict(p.split("=", 1) for p in headers["x-tagtrail-signature"].split(","))
    return parts["v1"] == signature(secret, int(parts["t"]), body)


async def test_a_receiver_failing_three_times_gets_each_alert_once_signed(
    client: httpx.AsyncClient, world: World, memory_pipeline: Pipeline, db: Database
) -> None:
    receiver = Receiver(failures=3)
    async with running(receiver) as url:
        r = await client.post("/v1/webhooks", json={"url": url}, headers=world.manager)
        assert r.status_code == 201
        secret = r.json()["secret"]
        m = opened(world.subjects[0])
        await file(memory_pipeline, m)
        sender = AlertSender(db, fast(), SmtpSettings())
        await sender.start()
        try:
            await eventually(lambda: _value(len(receiver.accepted)), lambda n: n >= 1, within_s=20)
            await asyncio.sleep(0.5)  # nothing more may come
        finally:
            await sender.stop()
    assert len(receiver.requests) == 4
    assert len(receiver.accepted) == 1
    headers, body = receiver.accepted[0]
    assert verify(secret, headers, body)
    assert not verify("not-the-secret", headers, body)
    assert str(m.alert_id) in body.decode()
    assert len({h["idempotency-key"] for h, _ in receiver.requests}) == 1
    deliveries = (
        await client.get(f"/v1/alerts/{m.alert_id}/deliveries", headers=world.manager)
    ).json()
    assert [(d["state"], d["attempts"]) for d in deliveries] == [("delivered", 4)]


async def test_a_sender_killed_mid_delivery_resumes_without_loss(
    client: httpx.AsyncClient, world: World, memory_pipeline: Pipeline, db: Database
) -> None:
    receiver = Receiver(hang_s=2.0)
    async with running(receiver) as url:
        await client.post("/v1/webhooks", json={"url": url}, headers=world.admin)
        m = opened(world.subjects[1])
        await file(memory_pipeline, m)
        first = AlertSender(db, fast(), SmtpSettings())
        await first.start()
        await eventually(lambda: _value(len(receiver.requests)), lambda n: n == 1)
        await first.stop()  # killed while the receiver is still answering
        async with db.pool.acquire() as conn:
            assert await conn.fetchval("select state from alert_deliveries") == "pending"
        receiver.hang_s = 0
        second = AlertSender(db, fast(), SmtpSettings())
        await second.start()
        try:
            await eventually(lambda: _value(len(receiver.accepted)), lambda n: n >= 1)
        finally:
            await second.stop()
    keys = {h["idempotency-key"] for h, _ in receiver.requests}
    assert len(keys) == 1  # the receiver can tell the second try is the same delivery
    async with db.pool.acquire() as conn:
        assert (
            await conn.fetchval("select count(*) from alert_deliveries where state = 'delivered'")
            == 1
        )


async def test_dead_deliveries_are_listed_and_replayed(
    client: httpx.AsyncClient, world: World, memory_pipeline: Pipeline, db: Database
) -> None:
    receiver = Receiver(failures=1000)
    async with running(receiver) as url:
        await client.post("/v1/webhooks", json={"url": url}, headers=world.manager)
        await file(memory_pipeline, opened(world.subjects[0]))
        sender = AlertSender(db, fast(max_attempts=3), SmtpSettings())
        await sender.start()
        try:
            dead = await eventually(
                lambda: _json(client.get("/v1/deliveries", headers=world.admin)),
                lambda xs: len(xs) == 1,
            )
            assert dead[0]["attempts"] == 3 and "500" in dead[0]["last_error"]
            assert (await client.get("/v1/deliveries", headers=world.manager)).status_code == 403
            receiver.failures = 0
            r = await client.post(f"/v1/deliveries/{dead[0]['id']}/replay", headers=world.admin)
            assert r.json()["state"] == "pending"
            await eventually(lambda: _value(len(receiver.accepted)), lambda n: n == 1)
        finally:
            await sender.stop()


async def _value(x: Any) -> Any:
    return x


async def _json(request: Any) -> Any:
    return (await request).json()


# The live feed -----------------------------------------------------------------------


async def read_events(
    url: str, headers: dict[str, str], count: int, last_id: str | None = None
) -> list[dict[str, str]]:
    """Reads `count` events from the stream, then hangs up."""
    events: list[dict[str, str]] = []
    if last_id is not None:
        headers = {**headers, "Last-Event-ID": last_id}
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("GET", f"{url}/v1/alerts/stream", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict[str, str] = {}
        async for line in response.aiter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                    if len(events) == count:
                        return events
                current = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(": ")
            current[field] = value
    return events


async def test_the_live_feed_resumes_with_last_event_id_and_keeps_to_the_caseload(
    world: World, memory_pipeline: Pipeline, db: Database
) -> None:
    other_id, other = await token_for(db, Role.manager, "someone-else")
    async with serve(memory_pipeline) as url:
        first = opened(world.subjects[0])
        reader = asyncio.create_task(read_events(url, world.manager, 1))
        stranger = asyncio.create_task(read_events(url, other, 1))
        await asyncio.sleep(0.5)  # both connected
        await file(memory_pipeline, first)
        (event,) = await asyncio.wait_for(reader, 10)
        assert event["event"] == "opened"
        assert str(first.alert_id) in event["data"]
        # Disconnected. Two more happen meanwhile; resuming from the last id gets both.
        missed = [opened(world.subjects[0]), opened(world.subjects[1], AlertKind.tamper)]
        await file(memory_pipeline, *missed)
        try:
            resumed = await asyncio.wait_for(read_events(url, world.manager, 2, event["id"]), 10)
            # Each once; in the order filed, which for two subjects need not be the
            # order published (the dispatcher works on several subjects at once).
            assert [sum(e["data"].count(str(m.alert_id)) for e in resumed) for m in missed] == [
                1,
                1,
            ]
            assert all(int(e["id"]) > int(event["id"]) for e in resumed)
            # The other manager, with no caseload here, heard nothing.
            await asyncio.sleep(1.0)
            assert not stranger.done()
        finally:
            stranger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stranger
    # Every event sent is in the audit log, against whom it was sent to; none to the other.
    async with db.pool.acquire() as conn:
        sent = await conn.fetch(
            "select actor_id, result_size, parameters from audit_log"
            " where action = 'stream /v1/alerts/stream' and actor_id = any($1::uuid[])",
            [world.manager_id, other_id],
        )
    assert {r["actor_id"] for r in sent} == {world.manager_id}
    ranges = [orjson.loads(r["parameters"]) for r in sent]
    for e in [event, *resumed]:
        assert any(a["first_seq"] <= int(e["id"]) <= a["last_seq"] for a in ranges), e["id"]


# E-mail against a real local SMTP server ------------------------------------------------


class Mailbox:
    """An aiosmtpd handler that keeps what it is sent."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


async def test_an_smtp_server_that_is_down_then_up_gets_the_alert_once(
    client: httpx.AsyncClient, world: World, memory_pipeline: Pipeline, db: Database
) -> None:
    port = free_port()
    r = await client.post(
        "/v1/email-subscriptions", json={"address": "duty@probation.example"}, headers=world.manager
    )
    assert r.status_code == 201 and r.json()["channel"] == "email"
    m = opened(world.subjects[0])
    await file(memory_pipeline, m)
    smtp = SmtpSettings(host="127.0.0.1", port=port)
    sender = AlertSender(db, fast(), smtp)
    await sender.start()
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    try:

        async def attempts() -> int:
            async with db.pool.acquire() as conn:
                return int(
                    await conn.fetchval("select coalesce(max(attempts), 0) from alert_deliveries")
                )

        await eventually(attempts, lambda n: n >= 2)  # refused: nobody listens yet
        controller.start()
        await eventually(lambda: _value(len(mailbox.messages)), lambda n: n >= 1)
        await asyncio.sleep(0.5)
    finally:
        await sender.stop()
        controller.stop()
    (raw,) = mailbox.messages
    mail = message_from_bytes(raw)
    assert mail["To"] == "duty@probation.example"
    assert "exclusion alert opened" in mail["Subject"] and "RED" in mail["Subject"]
    assert str(m.alert_id) in mail.get_payload()
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow("select id, state from alert_deliveries")
    assert row["state"] == "delivered"
    assert mail["Message-ID"] == f"<{row['id']}@tagtrail>"


async def test_unacknowledged_alerts_escalate_to_the_supervisor(
    client: httpx.AsyncClient, world: World, memory_pipeline: Pipeline, db: Database
) -> None:
    boss_id, boss = await token_for(db, Role.supervisor, "team-leader")
    r = await client.put(
        f"/v1/managers/{world.manager_id}/supervisor",
        json={"supervisor_id": str(boss_id)},
        headers=world.admin,
    )
    assert r.status_code == 200, r.text
    ignored, handled = opened(world.subjects[0]), opened(world.subjects[1])
    await file(memory_pipeline, ignored, handled)
    await client.post(f"/v1/alerts/{handled.alert_id}/ack", headers=world.manager)
    escalator = Escalator(db, memory_pipeline.settings.alerts)
    assert await escalator.escalate(utcnow() + timedelta(minutes=5)) == 0  # not yet due
    assert await escalator.escalate(utcnow() + timedelta(minutes=20)) == 1  # red: 15 min
    assert await escalator.escalate(utcnow() + timedelta(minutes=40)) == 0  # only once
    seen = (await client.get("/v1/alerts", headers=boss, params={"state": "open"})).json()
    assert [a["id"] for a in seen["items"]] == [str(ignored.alert_id)]
    assert seen["items"][0]["escalated_at"] is not None
    detail = (await client.get(f"/v1/alerts/{ignored.alert_id}", headers=boss)).json()
    assert detail["history"][-1]["outcome"] == "escalated"
    assert "escalated to 1 supervisor" in detail["history"][-1]["note"]
    # The supervisor can now act on it.
    assert (
        await client.post(f"/v1/alerts/{ignored.alert_id}/ack", headers=boss)
    ).status_code == 200


async def test_a_supervisor_oversees_only_the_managers_they_supervise(
    client: httpx.AsyncClient, world: World, memory_pipeline: Pipeline, db: Database
) -> None:
    sup_id, sup = await token_for(db, Role.supervisor, "senior-po")
    _, other_sup = await token_for(db, Role.supervisor, "other-senior-po")
    m = opened(world.subjects[0])
    await file(memory_pipeline, m)
    # Not yet supervising: nothing to see, and the alert itself is "not found".
    assert (await client.get("/v1/alerts", headers=sup)).json()["items"] == []
    assert (await client.get(f"/v1/alerts/{m.alert_id}", headers=sup)).status_code == 404
    # A manager cannot be made a supervisor, nor a manager supervise another.
    r = await client.put(
        f"/v1/managers/{world.manager_id}/supervisor",
        json={"supervisor_id": str(world.manager_id)},
        headers=world.admin,
    )
    assert r.status_code == 404 and "supervisor role" in r.json()["error"]
    r = await client.put(
        f"/v1/managers/{world.manager_id}/supervisor",
        json={"supervisor_id": str(sup_id)},
        headers=world.admin,
    )
    assert r.status_code == 200, r.text
    seen = (await client.get("/v1/alerts", headers=sup)).json()["items"]
    assert [a["id"] for a in seen] == [str(m.alert_id)]
    r = await client.post(f"/v1/alerts/{m.alert_id}/ack", headers=sup)
    assert r.status_code == 200 and r.json()["acknowledged_by"] == str(sup_id)
    # Another supervisor's team is not theirs.
    assert (await client.get("/v1/alerts", headers=other_sup)).json()["items"] == []
    assert (await client.get(f"/v1/alerts/{m.alert_id}", headers=other_sup)).status_code == 404


async def test_a_team_inbox_gets_its_managers_alerts(
    client: httpx.AsyncClient, world: World, memory_pipeline: Pipeline, db: Database
) -> None:
    colleague_id, colleague = await token_for(db, Role.manager, "colleague")
    _, outsider = await token_for(db, Role.manager, "outsider")
    team = (
        await client.post("/v1/teams", json={"name": "Peterborough IOM"}, headers=world.admin)
    ).json()
    for manager in (world.manager_id, colleague_id):
        r = await client.put(
            f"/v1/managers/{manager}/team", json={"team_id": team["id"]}, headers=world.admin
        )
        assert r.status_code == 200 and r.json()["team_id"] == team["id"]
    r = await client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/never", "team_id": team["id"]},
        headers=colleague,
    )
    assert r.status_code == 201
    refused = await client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/x", "team_id": team["id"]},
        headers=outsider,
    )
    assert refused.status_code == 404
    m = opened(world.subjects[0])
    await file(memory_pipeline, m)
    inbox = (await client.get(f"/v1/teams/{team['id']}/alerts", headers=colleague)).json()["items"]
    assert [a["id"] for a in inbox] == [str(m.alert_id)]
    # The colleague's own caseload list stays their own; the inbox is where they share.
    assert (await client.get("/v1/alerts", headers=colleague)).json()["items"] == []
    assert (await client.get(f"/v1/teams/{team['id']}/alerts", headers=outsider)).status_code == 404
    async with db.pool.acquire() as conn:
        owners = await conn.fetch(
            "select s.owner_role from alert_deliveries d"
            " join subscriptions s on s.id = d.subscription_id"
        )
    assert [o["owner_role"] for o in owners] == ["team"]
