"""The device-facing API: every rejection rule, partial acceptance, re-sends and conflicts."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson
import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID

from services.common.auth import Principal, Role, hash_token
from services.common.database import Database
from services.common.settings import IngestSettings, Settings
from services.common.timeutil import from_epoch, utcnow
from services.ingest.batch import FixBatch, _uuid_codes, codes_of
from services.ingest.horizons import FixHorizons
from services.ingest.ndjson import Stream, stream_items
from services.ingest.repository import Partitions, store_fixes
from services.ingest.schemas import FixMessage, FixSource, Rejection, StreamedFix
from services.ingest.service import (
    NOT_JSON,
    Bounds,
    Item,
    RequestColumns,
    admit,
    admit_columns,
    plain_times,
    utc_times,
    validate,
    validate_all,
)
from services.registry.service import TagDirectory, resolve_tags
from tests.conftest import World, enrol, fix


@pytest.fixture
async def world(client: httpx.AsyncClient, db: Database) -> World:
    return await enrol(client, db, n=2)


async def post(client: httpx.AsyncClient, world: World, fixes: list[Any], tag: str | None = None):
    return await client.post(
        "/v1/fixes", json={"tag_id": tag or world.tags[0], "fixes": fixes}, headers=world.supplier
    )


async def stored(db: Database) -> int:
    async with db.pool.acquire() as conn:
        return int(await conn.fetchval("select count(*) from trail_points"))


def now_minus(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


BAD_FIXES: list[tuple[str, dict[str, Any], str, str]] = [
    ("lat above 90", {"lat": 90.5}, "lat", "less than or equal to 90"),
    ("lat below -90", {"lat": -91}, "lat", "greater than or equal to -90"),
    ("lon above 180", {"lon": 180.1}, "lon", "less than or equal to 180"),
    ("lat as text", {"lat": "north"}, "lat", "valid number"),
    ("zero accuracy", {"accuracy_m": 0}, "accuracy_m", "greater than 0"),
    ("negative accuracy", {"accuracy_m": -3}, "accuracy_m", "greater than 0"),
    ("accuracy too large", {"accuracy_m": 20_000}, "accuracy_m", "at most"),
    ("negative speed", {"speed_mps": -1}, "speed_mps", "greater than or equal to 0"),
    ("heading 360", {"heading_deg": 360}, "heading_deg", "less than 360"),
    ("unknown source", {"source": "psychic"}, "source", "'gps', 'wifi', 'cell' or 'rf'"),
    ("sats above 64", {"sats": 99}, "sats", "less than or equal to 64"),
    ("hdop negative", {"hdop": -0.5}, "hdop", "greater than or equal to 0"),
    ("ts without offset", {"ts": "2026-11-25T10:00:00"}, "ts", "timezone"),
    ("ts as epoch number", {"ts": 1764064800}, "ts", "RFC 3339"),
    ("ts not a date", {"ts": "yesterday"}, "ts", "datetime"),
]


@pytest.mark.parametrize(
    ("case", "change", "field", "reason"), BAD_FIXES, ids=[c[0] for c in BAD_FIXES]
)
async def test_a_bad_fix_is_rejected_by_field_and_its_neighbours_kept(
    client: httpx.AsyncClient,
    world: World,
    db: Database,
    case: str,
    change: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    good1, good2 = fix(now_minus(120)), fix(now_minus(60))
    bad = {**fix(now_minus(90)), **change}
    r = await post(client, world, [good1, bad, good2])
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert len(body["rejected"]) == 1
    rejection = body["rejected"][0]
    assert rejection["index"] == 1
    assert rejection["field"] == field
    assert reason in rejection["error"]
    assert await stored(db) == 2


async def test_missing_fields_are_named(client: httpx.AsyncClient, world: World) -> None:
    r = await post(client, world, [{"ts": now_minus(5).isoformat(), "lat": 52.0, "lon": 0.1}])
    assert r.json()["rejected"] == [{"index": 0, "field": "accuracy_m", "error": "Field required"}]


async def test_a_fix_that_is_not_an_object_is_rejected(
    client: httpx.AsyncClient, world: World
) -> None:
    r = await post(client, world, [fix(now_minus(5)), [52.1, 0.2]])
    assert r.json()["accepted"] == 1
    assert r.json()["rejected"] == [{"index": 1, "field": "fix", "error": "must be a JSON object"}]


async def test_future_timestamps_beyond_clock_skew_are_rejected(
    client: httpx.AsyncClient, world: World
) -> None:
    slightly_ahead = utcnow() + timedelta(seconds=30)  # inside the 120 s skew
    far_ahead = utcnow() + timedelta(minutes=10)
    r = await post(client, world, [fix(slightly_ahead), fix(far_ahead)])
    body = r.json()
    assert body["accepted"] == 1
    assert body["rejected"][0]["index"] == 1
    assert body["rejected"][0]["field"] == "ts"
    assert "in the future" in body["rejected"][0]["error"]


async def test_old_buffered_fixes_are_welcome_but_ancient_ones_are_not(
    client: httpx.AsyncClient, world: World
) -> None:
    # Enrolment began 30 days ago: a week-old buffered fix is fine.
    week_old = utcnow() - timedelta(days=7)
    ancient = utcnow() - timedelta(days=400)
    r = await post(client, world, [fix(week_old), fix(ancient)])
    body = r.json()
    assert body["accepted"] == 1
    assert body["rejected"] == [{"index": 1, "field": "ts", "error": "is more than 365 days old"}]


async def test_timestamps_with_any_offset_are_one_instant(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    instant = now_minus(300).replace(microsecond=0)
    in_paris = instant.astimezone(timezone(timedelta(hours=1)))
    r = await post(client, world, [fix(instant), fix(in_paris)])
    assert r.json()["accepted"] == 1
    assert r.json()["duplicates"] == 1
    async with db.pool.acquire() as conn:
        ts = await conn.fetchval("select ts from trail_points")
    assert ts == instant.astimezone(UTC)


async def test_unknown_tag_is_rejected(client: httpx.AsyncClient, world: World) -> None:
    r = await post(client, world, [fix(now_minus(5))], tag="NOT-ENROLLED")
    assert r.json()["rejected"] == [{"index": 0, "field": "tag_id", "error": "unknown tag"}]


async def test_another_suppliers_tag_is_rejected(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    other = await enrol(client, db, n=1, prefix="OTHER")
    r = await post(client, world, [fix(now_minus(5))], tag=other.tags[0])
    assert r.json()["accepted"] == 0
    assert r.json()["rejected"] == [
        {"index": 0, "field": "tag_id", "error": "tag is not registered to this supplier"}
    ]


async def test_a_tag_unassigned_at_fix_time_is_rejected(
    client: httpx.AsyncClient, world: World
) -> None:
    # The tags were put on their subjects 30 days ago; 40 days ago nobody wore them.
    before = utcnow() - timedelta(days=40)
    r = await post(client, world, [fix(before), fix(now_minus(5))])
    body = r.json()
    assert body["accepted"] == 1
    assert body["rejected"][0]["index"] == 0
    assert body["rejected"][0]["field"] == "ts"
    assert "not assigned to a subject" in body["rejected"][0]["error"]


async def test_fixes_are_attributed_to_the_subject_wearing_the_tag_at_fix_time(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    """A tag moved from one subject to another: each fix belongs to who wore it then."""
    tag = "SWAP-TAG"
    r = await client.post(
        "/v1/tags", json={"tag_id": tag, "supplier_id": str(world.supplier_id)}, headers=world.admin
    )
    assert r.status_code == 201
    swap = utcnow() - timedelta(hours=1)
    first, second = world.subjects
    for subject, start, end in ((first, swap - timedelta(days=1), swap), (second, swap, None)):
        body = {"tag_id": tag, "valid_from": start.isoformat()}
        if end is not None:
            body["valid_to"] = end.isoformat()
        r = await client.post(f"/v1/subjects/{subject}/tags", json=body, headers=world.admin)
        assert r.status_code == 201, r.text
    r = await post(
        client, world, [fix(swap - timedelta(minutes=5)), fix(swap + timedelta(minutes=5))], tag=tag
    )
    assert r.json()["accepted"] == 2
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "select subject_id from trail_points where tag_id = $1 order by ts", tag
        )
    assert [r["subject_id"] for r in rows] == [first, second]


async def test_overlapping_wearers_of_one_tag_are_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    since = (utcnow() - timedelta(days=1)).isoformat()
    r = await client.post(
        f"/v1/subjects/{world.subjects[1]}/tags",
        json={"tag_id": world.tags[0], "valid_from": since},
        headers=world.admin,
    )
    assert r.status_code == 409
    assert "already worn" in r.json()["error"]


async def test_resending_a_batch_changes_nothing(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    batch = [fix(now_minus(300 - i * 60), lat=52.57 + i * 0.001) for i in range(4)]
    first = (await post(client, world, batch)).json()
    again = (await post(client, world, batch)).json()
    assert first == {"accepted": 4, "duplicates": 0, "conflicts": 0, "rejected": []}
    assert again == {"accepted": 0, "duplicates": 4, "conflicts": 0, "rejected": []}
    assert await stored(db) == 4


async def test_a_conflicting_duplicate_is_kept_aside_not_overwritten(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    ts = now_minus(600)
    await post(client, world, [fix(ts, lat=52.5700)])
    r = await post(client, world, [fix(ts, lat=52.5800)])
    assert r.json()["conflicts"] == 1
    assert r.json()["accepted"] == 0
    async with db.pool.acquire() as conn:
        kept = await conn.fetchval("select lat from trail_points")
        aside = await conn.fetchrow("select lat, stored_lat from fix_conflicts")
    assert kept == 52.5700
    assert (aside["lat"], aside["stored_lat"]) == (52.5800, 52.5700)


async def test_a_revoked_token_is_refused_at_once(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    body = {"tag_id": world.tags[0], "fixes": [fix(now_minus(5))]}
    assert (await client.post("/v1/fixes", json=body, headers=world.supplier)).status_code == 202
    token = world.supplier["Authorization"].removeprefix("Bearer ")
    async with db.pool.acquire() as conn:
        revoked = await conn.execute(
            "update credentials set revoked_at = now() where token_hash = $1", hash_token(token)
        )
    assert revoked == "UPDATE 1"
    r = await client.post("/v1/fixes", json=body, headers=world.supplier)
    assert r.status_code == 401 and "revoked" in r.text


async def test_too_many_fixes_in_one_batch_is_413(client: httpx.AsyncClient, world: World) -> None:
    too_many = [fix(now_minus(i)) for i in range(5001)]
    r = await post(client, world, too_many)
    assert r.status_code == 413
    assert "5001 fixes" in r.json()["error"]


async def test_an_oversized_body_is_413(client: httpx.AsyncClient, world: World) -> None:
    big = b'{"tag_id": "x", "fixes": [], "pad": "' + b"a" * (6 * 1024 * 1024) + b'"}'
    r = await client.post("/v1/fixes", content=big, headers=world.supplier)
    assert r.status_code == 413


async def test_a_body_that_is_not_json_is_422(client: httpx.AsyncClient, world: World) -> None:
    r = await client.post("/v1/fixes", content=b"{not json", headers=world.supplier)
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["error"]


async def test_a_batch_without_tag_id_is_422(client: httpx.AsyncClient, world: World) -> None:
    r = await client.post("/v1/fixes", json={"fixes": []}, headers=world.supplier)
    assert r.status_code == 422
    assert r.json()["details"] == {"field": "tag_id"}


async def test_ndjson_stream_for_many_tags(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    lines = [
        orjson.dumps({"tag_id": world.tags[0], **fix(now_minus(60))}),
        b"",
        orjson.dumps({"tag_id": world.tags[1], **fix(now_minus(60))}),
        b"{broken",
        orjson.dumps({**fix(now_minus(30))}),
        orjson.dumps({"tag_id": world.tags[1], **fix(now_minus(30), lat=95)}),
    ]
    r = await client.post("/v1/fixes/stream", content=b"\n".join(lines), headers=world.supplier)
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 2
    assert [(x["index"], x["field"]) for x in body["rejected"]] == [
        (3, "line"),
        (4, "tag_id"),
        (5, "lat"),
    ]
    assert await stored(db) == 2


async def test_a_stream_with_a_value_nested_deep_is_answered_line_by_line(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    """An extra field nested a thousand deep, which the stream's one-call reading gives
    up on, goes the full way: the fix is kept (orjson reads it); nested deeper than JSON
    is read anywhere here, the line is rejected as not JSON, its neighbours kept."""
    good = fix(now_minus(60), tag_id=world.tags[0])
    lines = [
        orjson.dumps(good)[:-1] + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}",
        orjson.dumps({**good, "ts": now_minus(30).isoformat()})[:-1]
        + b',"x":'
        + b"[" * 10**5
        + b"]" * 10**5
        + b"}",
        orjson.dumps({**good, "ts": now_minus(20).isoformat()}),
    ]
    r = await client.post("/v1/fixes/stream", content=b"\n".join(lines), headers=world.supplier)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 2
    assert [(x["index"], x["field"]) for x in r.json()["rejected"]] == [(1, "line")]
    assert await stored(db) == 2


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # Every line JSON, the last blank (as a stream ends): read in one pass.
        ([b'{"a": 1}', b"[2]", b""], [(0, {"a": 1}), (1, [2])]),
        ([b'{"a": 1}\r', b" 3 ", b"  "], [(0, {"a": 1}), (1, 3)]),
        # A blank line among them: each keeps its own line's index.
        ([b'{"a": 1}', b"", b'{"b": 2}'], [(0, {"a": 1}), (2, {"b": 2})]),
        ([b'{"a": 1}', b" \r", b"4", b""], [(0, {"a": 1}), (2, 4)]),
        # A line that is not JSON stands in its place.
        ([b"1", b"{broken", b"2"], [(0, 1), (1, NOT_JSON), (2, 2)]),
        ([b""], []),
    ],
)
def test_a_stream_line_is_indexed_by_its_line(
    lines: list[bytes], expected: list[tuple[int, Any]]
) -> None:
    assert [(i.index, i.raw) for i in stream_items(lines)] == expected


async def test_ingest_needs_a_supplier_token(client: httpx.AsyncClient, world: World) -> None:
    body = {"tag_id": world.tags[0], "fixes": [fix(now_minus(5))]}
    assert (await client.post("/v1/fixes", json=body)).status_code == 401
    bogus = {"Authorization": "Bearer tt_not-a-real-token"}
    assert (await client.post("/v1/fixes", json=body, headers=bogus)).status_code == 401
    r = await client.post("/v1/fixes", json=body, headers=world.manager)
    assert r.status_code == 403


async def test_device_events_are_validated_and_stored(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    events = [
        {"tag_id": world.tags[0], "ts": now_minus(20).isoformat(), "kind": "tamper"},
        {"tag_id": world.tags[0], "ts": now_minus(10).isoformat(), "kind": "exploded"},
        {
            "tag_id": world.tags[1],
            "ts": now_minus(10).isoformat(),
            "kind": "battery_low",
            "battery_pct": 9,
        },
    ]
    r = await client.post("/v1/device-events", json={"events": events}, headers=world.supplier)
    assert r.status_code == 202
    assert r.json()["accepted"] == 2
    assert r.json()["rejected"][0]["index"] == 1
    assert r.json()["rejected"][0]["field"] == "kind"
    async with db.pool.acquire() as conn:
        kinds = await conn.fetch("select kind from device_events order by kind")
    assert [k["kind"] for k in kinds] == ["battery_low", "tamper"]


def test_a_request_is_validated_in_one_call_with_the_answers_of_one_call_a_fix() -> None:
    """validate_all checks a request's fixes in one call when they are all valid, and
    each on its own when one is not: either way, each answer is what validating that
    fix alone gives, a fix past the bounds and one that is not JSON included."""
    settings = Settings().ingest
    now = utcnow()
    bounds = Bounds.at(now, settings)
    good = [Item(i, {"tag_id": "T1", **fix(now - timedelta(minutes=i))}) for i in range(5)]
    too_vague = Item(5, {"tag_id": "T1", **fix(now, accuracy_m=20_000)})
    ahead = Item(6, {"tag_id": "T1", **fix(now + timedelta(hours=1))})
    offset = Item(7, {"tag_id": "T1", **fix(now), "ts": "2026-11-25T11:00:00+01:00"})
    bad = [Item(8, {"tag_id": "T1", **fix(now), "lat": 91}), Item(9, NOT_JSON), Item(10, [1])]
    for items in ([*good, too_vague, ahead, offset], [*good, *bad, too_vague, ahead]):
        alone = [validate(item, bounds, StreamedFix) for item in items]
        assert validate_all(items, bounds, StreamedFix) == alone
        assert any(isinstance(a, StreamedFix) for a in alone)
        assert any(isinstance(a, Rejection) for a in alone)


async def _admitted_fix_by_fix(
    conn: asyncpg.Connection, supplier: Principal, items: list[Item], now: datetime
) -> list[FixMessage]:
    """The messages the full path makes: each fix validated as a device's fix,
    attributed, then made a message."""
    admitted, rejected = await admit(
        conn, TagDirectory(), supplier, items, now, Settings().ingest, StreamedFix
    )
    assert rejected == []
    return [
        FixMessage.model_validate({**item.raw, "subject_id": subject, "received_at": now})
        for item, _, subject in admitted
    ]


async def admit_clean(
    conn: asyncpg.Connection,
    tags: TagDirectory,
    supplier: Principal,
    items: list[Item],
    now: datetime,
    settings: IngestSettings,
) -> FixBatch | None:
    """The clean path of the items' JSON values, as ingest takes a JSON batch's fixes."""
    columns = RequestColumns.of_values([item.raw for item in items])
    if columns is None:
        return None
    return await admit_columns(conn, tags, supplier, columns, now, settings)


def _written(rng: random.Random, ts: datetime) -> str:
    """A time as a supplier may write it: in UTC or at an offset, to whole seconds or to
    one to six decimals."""
    offset = timezone(timedelta(minutes=rng.choice([0, 0, 60, -330, 840])))
    local = ts.astimezone(offset)
    digits = rng.choice([0, 1, 3, 6])
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{local.microsecond:06d}"[:digits]
    return text + (
        "Z"
        if offset.utcoffset(None) == timedelta(0) and rng.random() < 0.5
        else local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:]
    )


def _same_columns(a: RequestColumns, b: RequestColumns) -> bool:
    """Column for column, to the bit (a NaN a NaN, -0.0 not 0.0)."""
    return all(
        (x.dtype == y.dtype and x.tobytes() == y.tobytes()) if isinstance(x, np.ndarray) else x == y
        for x, y in ((getattr(a, f), getattr(b, f)) for f in RequestColumns.__slots__)
    )


def test_a_stream_is_read_into_the_columns_its_lines_values_make() -> None:
    """A stream read at once by msgspec (Stream.at_once) gives, to the bit, the columns
    its lines parsed one by one (orjson) and read from their values give; and whatever
    line it would not read plainly leaves the whole stream to be read a line at a time:
    a value of another JSON kind, a field a fix does not have (a stream of which the
    clean path still reads from its lines' values), a blank or broken line among the
    others, a line that holds two fixes or none."""
    rng = random.Random(5)

    def number() -> float | int:
        return rng.choice(
            [rng.uniform(-90, 90), rng.randint(-90, 90), -0.0, 0, 1e-7, 51.123456789012345]
        )

    for _ in range(40):
        values = []
        for _ in range(rng.randint(1, 60)):
            raw: dict[str, Any] = {
                "tag_id": rng.choice(["T-1", "T-2", "é" * 64, "x"]),
                "ts": rng.choice(["2026-11-29T08:00:00Z", "2026-11-29T08:00:00.5+00:00"]),
                "lat": number(),
                "lon": number(),
                "accuracy_m": rng.choice([8, 12.5, 1e3]),
            }
            for name, value in [
                ("speed_mps", number()),
                ("heading_deg", number()),
                ("hdop", number()),
                ("sats", rng.randint(0, 64)),
                ("source", rng.choice(["gps", "wifi", "cell", "rf"])),
                ("extra", {"nested": [1, "two", None]}),
            ]:
                if rng.random() < (0.4 if name != "extra" else 0.02):
                    raw[name] = value if rng.random() < 0.8 or name == "source" else None
            values.append(raw)
        lines = [orjson.dumps(v) for v in values]
        if rng.random() < 0.3:  # a key given twice: its last value counts
            lines[0] = lines[0][:-1] + b',"lat":-12.5}'
        ending = rng.choice([b"\n", b"\r\n"])
        body = ending.join(lines) + rng.choice([ending, b""])
        stream = Stream(body.split(b"\n"))
        parsed = RequestColumns.of_values([item.raw for item in stream_items(body.split(b"\n"))])
        assert parsed is not None
        read = stream.at_once()
        if any("extra" in v for v in values):  # a field a fix does not have
            assert read is None
        else:
            assert read is not None and _same_columns(read, parsed)
        columns = stream.columns()
        assert columns is not None and _same_columns(columns, parsed)
    good = orjson.dumps(fix("2026-11-29T08:00:00Z", tag_id="T-1"))
    for case, line in [
        ("lat true", good.replace(b'"lat":52.5725', b'"lat":true')),
        ("lat as text", good.replace(b'"lat":52.5725', b'"lat":"52.5"')),
        ("lat null", good.replace(b'"lat":52.5725', b'"lat":null')),
        ("lat missing", good.replace(b'"lat":52.5725,', b"")),
        ("tag id empty", good.replace(b'"tag_id":"T-1"', b'"tag_id":""')),
        ("tag id a number", good.replace(b'"tag_id":"T-1"', b'"tag_id":7')),
        ("tag id of 65 characters", good.replace(b'"T-1"', b'"' + b"T" * 65 + b'"')),
        ("ts a number", good.replace(b'"2026-11-29T08:00:00Z"', b"1764403200")),
        ("sats 7.0", good[:-1] + b',"sats":7.0}'),
        ("sats 65", good[:-1] + b',"sats":65}'),
        ("source null", good[:-1] + b',"source":null}'),
        ("source unknown", good[:-1] + b',"source":"psychic"}'),
        ("an array", b"[" + good + b"]"),
        ("null", b"null"),
        ("not JSON", good[:-1]),
        ("two fixes on a line", good + b"," + good),
        ("a blank line", b"  "),
        ("a field a fix does not have", good[:-1] + b',"battery_pct":80}'),
        ("a string not UTF-8", good.replace(b'"T-1"', b'"T-\xff"')),
        ("an unknown key not UTF-8", good[:-1] + b',"s\xffats":3}'),
        ("an extra field nested deep", good[:-1] + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}"),
        ("too deep for JSON", good[:-1] + b',"x":' + b"[" * 10**5 + b"]" * 10**5 + b"}"),
    ]:
        lines = (b"\n".join([good, line, good]) + b"\n").split(b"\n")
        assert Stream(lines).at_once() is None, case
        # Read a line at a time instead, as the values make them (if they do).
        parsed = RequestColumns.of_values([item.raw for item in stream_items(lines)])
        columns = Stream(lines).columns()
        assert (columns is None and parsed is None) or (
            columns is not None and parsed is not None and _same_columns(columns, parsed)
        ), case
    # Two fixes on a line and a line of none: as many items as lines, still refused.
    assert Stream([good + b"," + good, b""]).at_once() is None
    assert Stream([b""]).at_once() is None
    assert Stream([b""]).columns() is None


def test_a_stream_mutated_byte_by_byte_is_read_as_its_lines_values_read() -> None:
    """Streams of fixes mutated a byte at a time (inserted, replaced, deleted: JSON's
    punctuation, digits, letters, control characters, bytes that are not UTF-8):
    Stream.at_once never raises, and whatever it reads, its lines' values read the same,
    to the bit; Stream.columns reads exactly what they read. (It found that msgspec
    skipped an unknown field's bytes unread, taking lines orjson refuses, and raised on
    a string not UTF-8.)"""
    rng = random.Random(21)
    goods = [
        orjson.dumps(fix("2026-11-29T08:00:00Z", tag_id="T-1", speed_mps=None, sats=3)),
        orjson.dumps(fix("2026-11-29T08:00:00Z", tag_id="T-1", x=[1, {"a": "b"}])),
        b'{"tag_id":"T-2","ts":"2026-11-29T08:00:00.5+00:00","lat":-1e1,"lon":0,'
        b'"accuracy_m":1E2,"hdop":null,"source":"wifi"}',
    ]
    alphabet = b'{}[]",:0123456789.eE+-tfnul\\ \t\r\n\x00\x0c\x1f\x7f\xff\xc3\xa9\xed\xa0\x80az/'
    read = 0
    for _ in range(4000):
        line = bytearray(rng.choice(goods))
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(line) + 1)
            op = rng.random()
            if op < 0.4 and line:
                line[min(k, len(line) - 1)] = rng.choice(alphabet)
            elif op < 0.7:
                line[k:k] = bytes([rng.choice(alphabet)])
            elif line:
                del line[min(k, len(line) - 1)]
        lines = (bytes(line) + b"\n" + goods[0]).split(b"\n")
        parsed = RequestColumns.of_values([item.raw for item in stream_items(lines)])
        at_once = Stream(lines).at_once()
        if at_once is not None:
            read += 1
            assert parsed is not None and _same_columns(at_once, parsed), bytes(line)
        columns = Stream(lines).columns()
        assert (columns is None) == (parsed is None), bytes(line)
    assert read > 100


def test_times_read_at_once_are_read_as_the_standard_library_reads_them() -> None:
    """utc_times reads a request's UTC times as columns of characters: to the bit what
    `datetime.fromisoformat(...).timestamp()` gives, over five centuries' calendar
    (1900 no leap year, 2000 one), and every length of fraction; and it reads no list
    with one time written otherwise or that is no time, which plain_times then reads
    one by one, as before."""
    rng = random.Random(11)
    for k in range(60):
        # Half the lists written alike (each time as long as the others), half not; a
        # third of them on one day, as a request's nearly always are.
        alike, one_day = k % 2 == 0, rng.randrange(200_000) if k % 3 == 0 else None
        digits, suffix = rng.choice([0, 1, 2, 3, 4, 5, 6]), rng.choice(["Z", "+00:00"])
        texts = []
        for _ in range(rng.randint(1, 300)):
            # (Within 285 years of 1970: there a time in µs is a float exactly.)
            t = datetime(1700, 1, 1, tzinfo=UTC) + timedelta(
                days=rng.randrange(200_000) if one_day is None else one_day,
                microseconds=rng.randrange(86_400 * 10**6),
            )
            if not alike:
                digits, suffix = rng.choice([0, 1, 2, 3, 4, 5, 6]), rng.choice(["Z", "+00:00"])
            # (Not strftime: its %Y writes year 999 with three digits.)
            text = f"{t.year:04d}-{t:%m-%dT%H:%M:%S}"
            if digits:
                text += "." + f"{t.microsecond:06d}"[:digits]
            texts.append(text + suffix)
        seconds = utc_times(texts)
        assert seconds is not None
        expected = [datetime.fromisoformat(t).timestamp() for t in texts]
        assert seconds.tolist() == expected
    # Alike in length but not in layout (Z after a fraction, +00:00 without one).
    mixed = ["2024-02-29T23:59:59.1234Z", "2024-02-29T23:59:58+00:00"]
    assert (seconds := utc_times(mixed)) is not None
    assert seconds.tolist() == [datetime.fromisoformat(t).timestamp() for t in mixed]
    good = "2024-02-29T23:59:59.123456Z"
    for case in [
        "2023-02-29T10:00:00Z",  # no leap day that year
        "2024-04-31T10:00:00Z",
        "2024-13-01T10:00:00Z",
        "2024-00-10T10:00:00Z",
        "2024-01-00T10:00:00Z",
        "0000-01-01T10:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T10:60:00Z",
        "2024-01-01T10:00:60Z",
        "2024-01-01T10:00:00.Z",
        "2024-01-01T10:00:00.1234567Z",
        "2024-01-01T10:00:00,5Z",
        "2024-01-01t10:00:00Z",
        "2024-01-01T10:00:00z",
        "2024-01-01 10:00:00Z",
        "2024-01-01T10:00Z",
        "2024-1-01T10:00:00Z",
        "2024-01-01T10:00:00-00:00",
        "2024-01-01T10:00:00+01:00",
        "2024-01-01T10:00:00+0000",
        "2024-01-01T1\uff10:00:00Z",  # a full-width digit
        "2024-01-01T10:00:0/Z",
        f"{good}\n{good}",
        "",
    ]:
        # Among others written otherwise, and alone or twice (every time alike).
        for texts in ([good, case, good], [case], [case, case]):
            assert utc_times(texts) is None, case
            one_by_one = []
            for text in texts:
                try:
                    one_by_one.append(datetime.fromisoformat(text).timestamp())
                except ValueError:
                    break
            read = plain_times(texts)
            if read is not None:
                assert read.tolist() == one_by_one, case


@pytest.mark.parametrize("max_tags", [100_000, 1], ids=["kept", "numbers dropped"])
async def test_a_clean_request_is_admitted_in_one_validation_as_the_full_path_admits_it(
    client: httpx.AsyncClient, world: World, db: Database, max_tags: int
) -> None:
    """admit_clean (every fix validated once, as a message) makes the very messages the
    full path makes, times in UTC's own tzinfo, for random clean requests; and leaves
    to the full path any request with one fix it would reject, or with a time it does not
    read plainly. Also when the directory can keep one tag's number only, and drops
    them all nearly every request."""
    rng = random.Random(4)
    supplier = Principal(world.supplier_id, Role.supplier, "supplier-T")
    other = await enrol(client, db, n=1, prefix="U")
    r = await client.post(
        "/v1/tags",
        json={"tag_id": "T-BARE", "supplier_id": str(world.supplier_id)},
        headers=world.admin,
    )
    assert r.status_code == 201, r.text
    tags = TagDirectory(max_tags=max_tags)
    now = utcnow()
    async with db.pool.acquire() as conn:
        for _ in range(30):
            raws = []
            for k in range(rng.randint(1, 40)):
                ts = now - timedelta(seconds=rng.uniform(0, 86400 * 29), microseconds=k)
                raw: dict[str, Any] = fix(
                    _written(rng, ts),
                    lat=rng.choice([rng.uniform(-90, 90), rng.randint(-90, 90)]),
                    lon=rng.choice([rng.uniform(-180, 180), rng.randint(-180, 180)]),
                    accuracy_m=rng.choice([0.5, 8, 35.25, 10_000]),
                    tag_id=rng.choice(world.tags),
                )
                for name, value in [
                    ("speed_mps", rng.choice([3.5, 0, 150])),
                    ("heading_deg", rng.choice([359.9, 0])),
                    ("sats", rng.choice([7, 0, 64])),
                    ("hdop", rng.choice([1.2, 100])),
                    ("source", "wifi"),
                    ("extra", "x"),
                ]:
                    if rng.random() < 0.5:
                        raw[name] = value if rng.random() < 0.8 else None
                if raw.get("source") is None:
                    raw.pop("source", None)
                raws.append(raw)
            items = [Item(i, r) for i, r in enumerate(raws)]
            quick = await admit_clean(conn, tags, supplier, items, now, Settings().ingest)
            assert quick is not None
            assert quick.messages() == await _admitted_fix_by_fix(conn, supplier, items, now)
        good = fix(now_minus(60), tag_id=world.tags[0])
        for case, bad in [
            ("lat above 90", {**good, "lat": 90.5}),
            ("accuracy over the limit", {**good, "accuracy_m": 20_000}),
            ("heading 360", {**good, "heading_deg": 360}),
            ("unknown source", {**good, "source": "psychic"}),
            ("unknown tag", {**good, "tag_id": "NO-SUCH-TAG"}),
            ("another supplier's tag", {**good, "tag_id": other.tags[0]}),
            ("a tag never worn", {**good, "tag_id": "T-BARE"}),
            ("tag id a number", {**good, "tag_id": 7}),
            ("ts in the future", {**good, "ts": (now + timedelta(hours=1)).isoformat()}),
            ("ts over a year old", {**good, "ts": (now - timedelta(days=400)).isoformat()}),
            ("ts before the tag was worn", {**good, "ts": (now - timedelta(days=60)).isoformat()}),
            ("ts 30 February", {**good, "ts": "2026-02-30T10:00:00Z"}),
            ("ts as epoch number", {**good, "ts": 1764064800}),
            ("ts lower-case z", {**good, "ts": now_minus(60).strftime("%Y-%m-%dt%H:%M:%Sz")}),
            ("ts of two lines", {**good, "ts": f"{good['ts']}\n{good['ts']}"}),
            (
                "ts to the nanosecond",
                {**good, "ts": now_minus(60).strftime("%Y-%m-%dT%H:%M:%S.%f123Z")},
            ),
            ("not an object", [good]),
            ("not JSON", NOT_JSON),
            # Not always rejected by the full path, but not plainly of their kind: the
            # full path decides (pydantic reads "51.5" as a number, a bool not).
            ("lat as text", {**good, "lat": "51.5"}),
            ("lat null", {**good, "lat": None}),
            ("lat missing", {k: v for k, v in good.items() if k != "lat"}),
            ("speed true", {**good, "speed_mps": True}),
            ("speed below 0", {**good, "speed_mps": -0.5}),
            ("speed above 150", {**good, "speed_mps": 150.5}),
            ("hdop above 100", {**good, "hdop": 100.5}),
            ("sats 65", {**good, "sats": 65}),
            ("sats as 7.0", {**good, "sats": 7.0}),
            ("sats below 0", {**good, "sats": -1}),
            ("accuracy 0", {**good, "accuracy_m": 0}),
            ("accuracy a huge integer", {**good, "accuracy_m": 10**400}),
            ("source null", {**good, "source": None}),
            ("tag id empty", {**good, "tag_id": ""}),
            ("tag id of 65 characters", {**good, "tag_id": "T" * 65}),
        ]:
            items = [Item(0, good), Item(1, bad), Item(2, good)]
            found = await admit_clean(conn, tags, supplier, items, now, Settings().ingest)
            assert found is None, case


async def test_a_tag_worn_by_two_subjects_in_turn_is_attributed_as_the_full_path_does(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    """A request's fixes of a tag are attributed a tag at a time, to the subject who wore
    it throughout them, before or after it changed hands; a request whose fixes of it
    fall on both sides of the change goes the full way, fix by fix, each to its own
    wearer."""
    supplier = Principal(world.supplier_id, Role.supplier, "supplier-T")
    tag, before, after = world.tags[0], world.subjects[0], world.subjects[1]
    now = utcnow()
    switch = now - timedelta(hours=1)
    async with db.pool.acquire() as conn:
        await conn.execute(
            "update tag_assignments set valid_to = $2 where tag_id = any($1::text[])",
            world.tags[:2],
            switch,
        )
    r = await client.post(
        f"/v1/subjects/{after}/tags",
        json={"tag_id": tag, "valid_from": switch.isoformat()},
        headers=world.admin,
    )
    assert r.status_code == 201, r.text
    tags = TagDirectory()

    def request(*ages_s: float) -> list[Item]:
        return [Item(i, fix(now_minus(age), tag_id=tag)) for i, age in enumerate(ages_s)]

    async with db.pool.acquire() as conn:
        for ages, wearer in [((600, 60), after), ((7200, 5400), before), ((3599, 60), after)]:
            items = request(*ages)
            quick = await admit_clean(conn, tags, supplier, items, now, Settings().ingest)
            assert quick is not None
            assert quick.messages() == await _admitted_fix_by_fix(conn, supplier, items, now)
            assert {m.subject_id for m in quick.messages()} == {wearer}
        items = request(60, 7200, 600)
        assert await admit_clean(conn, tags, supplier, items, now, Settings().ingest) is None
        assert [m.subject_id for m in await _admitted_fix_by_fix(conn, supplier, items, now)] == [
            after,
            before,
            after,
        ]


def test_batches_joined_number_their_subjects_as_by_value() -> None:
    """Joined batches number their subjects by each UUID's 128-bit number
    (`_uuid_codes`), as numbering them by value does: the same subjects in the same
    order, the same codes, whichever objects (each message decoded makes its own), and
    whichever kind of UUID (asyncpg's, as ingest holds them, or the standard one),
    mixed in any order."""
    rng = random.Random(12)
    pool = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(30)]
    kinds = [lambda u: uuid.UUID(int=u.int), lambda u: PgUUID(u.bytes)]
    for k in range(60):
        mixed = k % 3 == 0
        kind = rng.choice(kinds)
        values = [
            (rng.choice(kinds) if mixed else kind)(rng.choice(pool))
            for _ in range(rng.randint(1, 200))
        ]
        by_number, codes = _uuid_codes(values)
        by_value, expected = codes_of(values)
        assert by_number == by_value and codes.tolist() == expected.tolist()


def test_a_batch_grouped_by_subject_keeps_each_ones_fixes_in_order_and_their_span() -> None:
    """FixBatch.groups and spans: each subject's fixes in the batch's order, and their
    first and last time, however the batch interleaves subjects and times; and a batch
    goes to and from its wire form, and through take and concat, unchanged."""
    rng = random.Random(2)
    subjects = [uuid.UUID(int=k) for k in range(1, 6)]
    now = utcnow()
    fixes = [
        FixMessage(
            tag_id=rng.choice(["T", "U", "V"]),
            subject_id=rng.choice(subjects),
            ts=now - timedelta(seconds=rng.randrange(3600), microseconds=rng.randrange(10**6)),
            received_at=now,
            lat=rng.uniform(-90, 90),
            lon=rng.uniform(-180, 180),
            accuracy_m=rng.uniform(0.1, 10_000),
            speed_mps=rng.choice([None, 0.0, 3.25]),
            heading_deg=rng.choice([None, 0.0, 359.5]),
            source=rng.choice(list(FixSource)),
            sats=rng.choice([None, 0, 64]),
            hdop=rng.choice([None, 0.0, 1.5]),
        )
        for _ in range(300)
    ]
    batch = FixBatch.of(fixes)
    runs = batch.runs()
    groups = {s: [fixes[i] for i in runs.rows(k).tolist()] for k, s in enumerate(runs.subjects)}
    assert groups == {s: [f for f in fixes if f.subject_id == s] for s in subjects}
    spans = {s: [min(f.ts for f in fs), max(f.ts for f in fs)] for s, fs in groups.items()}
    subjects_of, first, last = batch.first_last()
    assert subjects_of == runs.subjects
    assert {
        s: [from_epoch(a), from_epoch(b)]
        for s, a, b in zip(subjects_of, first.tolist(), last.tolist(), strict=True)
    } == spans
    # Of some rows alone, as of a batch of those rows.
    some = np.array([i for i, f in enumerate(fixes) if f.accuracy_m < 5_000])
    assert [a.tolist() for a in batch.first_last(some)[1:]] == [
        a.tolist() for a in batch.take(some).first_last()[1:]
    ]
    assert batch.first_last(some)[0] == batch.take(some).first_last()[0]
    assert batch.messages() == fixes
    assert FixBatch.decode(batch.encode()).messages() == fixes
    halves = [batch.take(np.arange(0, 150)), batch.take(np.arange(150, 300))]
    assert FixBatch.concat(halves).messages() == fixes


async def test_the_tag_directory_answers_as_the_registry_does_after_every_change(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    """Tags kept in memory between requests give what reading them afresh gives, after a
    tag is taken off its subject and put on another, after a new tag is enrolled, and
    for a tag that does not exist; and the registry's number moves with each change."""
    directory = TagDirectory()
    wanted = [*world.tags, "NO-SUCH-TAG"]

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        async with db.pool.acquire() as conn:
            return await directory.resolve(conn, wanted), await resolve_tags(conn, wanted)

    async def generation() -> int:
        async with db.pool.acquire() as conn:
            return int(await conn.fetchval("select value from tag_generation"))

    kept, fresh = await both()
    assert kept == fresh and set(kept) == set(world.tags)
    before = await generation()
    # Tag 0 moves from subject 0 to subject 1 (whose own tag comes off first).
    now = utcnow()
    async with db.pool.acquire() as conn:
        await conn.execute(
            "update tag_assignments set valid_to = $2 where tag_id = any($1::text[])",
            world.tags[:2],
            now,
        )
    assert await generation() > before
    r = await client.post(
        f"/v1/subjects/{world.subjects[1]}/tags",
        json={"tag_id": world.tags[0], "valid_from": now.isoformat()},
        headers=world.admin,
    )
    assert r.status_code == 201, r.text
    kept, fresh = await both()
    assert kept == fresh
    assert kept[world.tags[0]].subject_at(now + timedelta(seconds=1)) == world.subjects[1]
    # A tag enrolled since is found too.
    r = await client.post(
        "/v1/tags",
        json={"tag_id": "T-NEW", "supplier_id": str(world.supplier_id)},
        headers=world.admin,
    )
    assert r.status_code == 201, r.text
    wanted.append("T-NEW")
    kept, fresh = await both()
    assert kept == fresh and "T-NEW" in kept


async def test_the_tag_directory_reads_again_what_another_request_dropped_meanwhile(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    """Requests read tags side by side. When one's new tags make the directory drop
    every number (it keeps one here) while another waits for its tags from the
    registry, the waiting one reads them again under the new numbers: each answers
    as the registry does, and every number left names the tag it was given for."""
    more = await enrol(client, db, n=2, prefix="V")
    directory = TagDirectory(max_tags=1)
    wanted = [world.tags, more.tags, [world.tags[0], more.tags[1]]]

    async def read(tag_ids: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        async with db.pool.acquire() as conn:
            kept = await directory.resolve(conn, tag_ids)
            return kept, await resolve_tags(conn, tag_ids)

    for _ in range(3):
        for kept, fresh in await asyncio.gather(*(read(t) for t in wanted)):
            assert kept == fresh and len(kept) == 2
        assert directory.codes.epoch > 0
        for code, name in enumerate(directory.codes.names):
            info = directory._infos[code]
            assert info is None or info.tag_id == name


def _fixes(tag: str, subject: uuid.UUID, times: list[datetime]) -> FixBatch:
    return FixBatch.of(
        [
            FixMessage(
                tag_id=tag,
                subject_id=subject,
                ts=t,
                received_at=t,
                lat=52.57,
                lon=-0.24,
                accuracy_m=10.0,
            )
            for t in times
        ]
    )


@pytest.mark.parametrize(
    ("per_tag", "max_tags"),
    [(1_000, 100_000), (2, 100_000), (1_000, 2)],
    ids=["every time kept", "times pushed out", "numbers dropped"],
)
async def test_only_fixes_ingest_cannot_vouch_for_are_looked_up(
    db: Database, per_tag: int, max_tags: int
) -> None:
    """Random requests for a few tags, each of fixes in order, late (out of order, new), or
    re-sends of stored ones, each request stored after it is judged: every fix already in
    the trail is among those looked up (the only ones a re-send can be found among). While
    no tag's times have been pushed out of what is kept of it, a new fix of a tag met
    before is not looked up, however late, if it is after the tag's horizon when met. A
    tag whose trail holds later fixes than the process has seen (stored through another
    process) gets its horizon from the trail. When the tags' numbers are dropped (two
    kept here), what was kept by them is forgotten: only stored fixes must be looked up."""
    rng = random.Random(7)
    start = utcnow().replace(microsecond=0) - timedelta(hours=3)
    tags = {f"HZ-{i}": uuid.uuid4() for i in range(4)}
    horizons = FixHorizons(ttl_s=3600, per_tag=per_tag, max_tags=max_tags)
    trusting = per_tag > 100 and max_tags > len(tags)
    stored_keys: set[tuple[str, float]] = set()
    met: dict[str, float] = {}  # each tag's horizon when met
    newest: dict[str, float] = {}
    skipped = 0
    async with db.pool.acquire() as conn:
        # HZ-0's trail already runs to start + 2 h, stored by another process.
        other = _fixes("HZ-0", tags["HZ-0"], [start + timedelta(hours=2)])
        await store_fixes(conn, Partitions(), other)
        stored_keys.add(("HZ-0", float(other.ts[0])))
        for step in range(60):
            tag = rng.choice(sorted(tags))
            kind = rng.choice(["in order", "late", "re-send"])
            last = newest.get(tag, start.timestamp())
            if kind == "in order":
                times = [last + 60 * (k + 1) for k in range(rng.randint(1, 4))]
            elif kind == "late":
                times = [last - rng.randint(1, 50) * 60 - 7]
            else:
                mine = sorted(t for g, t in stored_keys if g == tag)
                times = rng.sample(mine, min(len(mine), 2)) or [last + 60]
            batch = _fixes(tag, tags[tag], [datetime.fromtimestamp(t, UTC) for t in times])
            unsure = (await horizons.unsure(conn, batch)).tolist()
            for t, u in zip(times, unsure, strict=True):
                if (tag, t) in stored_keys:
                    assert u, (step, kind, tag, t)
                elif tag in met and t > met[tag] and trusting:
                    assert not u, (step, kind, tag, t)
                    skipped += 1
                elif not u:
                    skipped += 1
            if tag not in met:
                assert all(unsure)
                mine = [t for g, t in stored_keys if g == tag]
                met[tag] = max([*times, *mine])
            fresh = [t for t in times if (tag, t) not in stored_keys]
            if fresh:
                await store_fixes(
                    conn,
                    Partitions(),
                    _fixes(tag, tags[tag], [datetime.fromtimestamp(t, UTC) for t in fresh]),
                )
            stored_keys.update((tag, t) for t in times)
            newest[tag] = max(newest.get(tag, -1.0), *times)
    assert skipped > 10
    assert met["HZ-0"] == (start + timedelta(hours=2)).timestamp()


@pytest.mark.parametrize("per_tag", [1, 3, 1_000])
async def test_a_fix_taken_before_is_looked_up_whatever_the_requests_hold(
    db: Database, per_tag: int
) -> None:
    """Requests of several tags at once, their fixes interleaved and shuffled, some tags
    with more fixes in one request than ingest keeps a tag, some fixes taken before
    (re-sends, within a request's tags or alone): every fix taken before is looked up.
    Keeping more than any tag is sent, no fix new to a met tag is looked up, however
    far it overtakes others."""
    rng = random.Random(11)
    start = utcnow().replace(microsecond=0) - timedelta(hours=3)
    tags = [f"HR-{i}" for i in range(5)]
    subject = uuid.uuid4()
    horizons = FixHorizons(ttl_s=3600, per_tag=per_tag)
    taken: set[tuple[str, float]] = set()
    fresh_looked_up = 0
    async with db.pool.acquire() as conn:
        # Every tag met first, with nothing stored: its horizon the request's newest fix.
        for tag in tags:
            await horizons.unsure(conn, _fixes(tag, subject, [start]))
            taken.add((tag, start.timestamp()))
        for _ in range(40):
            sent: list[tuple[str, float]] = []
            for tag in rng.sample(tags, rng.randint(1, len(tags))):
                new = {
                    start.timestamp() + 60 * rng.randint(1, 500) + 0.5
                    for _ in range(rng.randint(1, 6))
                }
                sent += [(tag, t) for t in sorted(new) if (tag, t) not in taken]
                again = sorted(t for g, t in taken if g == tag)
                sent += [(tag, t) for t in rng.sample(again, min(len(again), rng.randint(0, 2)))]
            rng.shuffle(sent)
            batch = FixBatch.concat(
                [_fixes(g, subject, [datetime.fromtimestamp(t, UTC)]) for g, t in sent]
            )
            unsure = (await horizons.unsure(conn, batch)).tolist()
            for key, u in zip(sent, unsure, strict=True):
                if key in taken:
                    assert u, key
                elif u:
                    fresh_looked_up += 1
            taken.update(sent)
    if per_tag == 1_000:
        assert fresh_looked_up == 0
    else:
        assert fresh_looked_up > 0  # times were pushed out, horizons raised


async def test_a_tag_forgotten_while_a_request_looks_up_another_is_looked_up(
    db: Database,
) -> None:
    """A request with a tag met before and one new to the process waits for the new
    one's horizon; if everything is forgotten meanwhile (another request found the TTL
    gone), the tag met before has no horizon left, and all its fixes are looked up."""
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    subject = uuid.uuid4()
    horizons = FixHorizons(ttl_s=3600)
    async with db.pool.acquire() as conn:
        assert (await horizons.unsure(conn, _fixes("HZ-A", subject, [start]))).all()
        later = [start + timedelta(minutes=1)]
        assert not (await horizons.unsure(conn, _fixes("HZ-A", subject, later))).any()
        both = FixBatch.concat(
            [
                _fixes("HZ-A", subject, [start + timedelta(minutes=2)]),
                _fixes("HZ-B", subject, [start + timedelta(minutes=2)]),
            ]
        )

        async def forget() -> None:
            await asyncio.sleep(0)  # once the request waits for HZ-B's horizon
            horizons.forget()

        unsure, _ = await asyncio.gather(horizons.unsure(conn, both), forget())
    assert unsure.tolist() == [True, True]


async def test_what_ingest_remembers_is_forgotten_after_its_ttl(db: Database) -> None:
    """With no time to trust it, every fix is looked up every request."""
    subject = uuid.uuid4()
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    trusting, forgetful = FixHorizons(ttl_s=3600), FixHorizons(ttl_s=0)
    async with db.pool.acquire() as conn:
        for minute in range(3):
            batch = _fixes("HZ-T", subject, [start + timedelta(minutes=minute)])
            assert (await forgetful.unsure(conn, batch)).all()
            assert (await trusting.unsure(conn, batch)).all() == (minute == 0)
