"""The bus contract, on the in-process bus and on real Kafka: per-key order, dead letters
for what a handler cannot process (the rest of the batch still goes through), retries of
transient failures, and publish returning only when the message is durable."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from zlib import crc32

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from pydantic import BaseModel

from services.common.bus import BatchTopic, Bus, BusUnavailable, Envelope, Topic, kafka
from services.common.bus.kafka import KafkaBus, KeyPartitioner
from services.common.bus.memory import MemoryBus
from services.common.bus.messages import DeadLetter
from services.common.database import Database
from services.common.settings import BusSettings, Settings
from services.common.timeutil import utcnow
from services.ingest.batch import FixBatch, FixPackedMessage
from services.ingest.schemas import FixMessage
from services.pipeline import Pipeline
from tests.conftest import enrol, eventually, fix, kafka_settings, square


class Reading(BaseModel):
    key: str
    n: int


READINGS = Topic("readings", Reading, packed=True)
DEAD = Topic("dead-letter", DeadLetter)


class Recorder:
    def __init__(self, fail_on: int | None = None, transient_failures: int = 0) -> None:
        self.seen: list[Reading] = []
        self.letters: list[DeadLetter] = []
        self.fail_on = fail_on
        self.transient_failures = transient_failures
        self.calls = 0

    async def handle(self, batch: list[Reading]) -> None:
        self.calls += 1
        if self.transient_failures:
            self.transient_failures -= 1
            raise ConnectionResetError("database went away")
        if any(r.n == self.fail_on for r in batch):
            raise ValueError("cannot handle this reading")
        self.seen.extend(batch)

    async def dead(self, batch: list[DeadLetter]) -> None:
        self.letters.extend(batch)


# Consumers a group has in the process: every test runs with more than one.
LANES = 3


def make_bus(kind: str, settings: Settings) -> Bus:
    if kind == "kafka":
        return KafkaBus(kafka_settings(settings).kafka, DEAD, [READINGS, DEAD], lanes=LANES)
    return MemoryBus(DEAD, lanes=LANES)


async def lanes_of(bus: Bus, keys: list[str]) -> dict[str, int]:
    """Which of the readers' lanes each key's messages go to: on the in-process bus by
    the key's hash, on Kafka by the consumer the broker gave the key's partition."""
    if isinstance(bus, MemoryBus):
        return {k: crc32(k.encode()) % bus.lanes for k in keys}
    assert isinstance(bus, KafkaBus)
    readers = [c for c in bus._consumers if c.subscription() == {bus.physical(READINGS)}]
    await eventually(
        lambda: _value(sum(len(c.assignment()) for c in readers)),
        lambda n: n == bus.settings.partitions,
    )
    parts = list(range(bus.settings.partitions))
    owner = {tp.partition: i for i, c in enumerate(readers) for tp in c.assignment()}
    return {k: owner[KeyPartitioner()(k.encode(), parts, parts)] for k in keys}


@pytest.fixture(params=["memory", "kafka"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def started(bus: Bus, recorder: Recorder) -> Bus:
    bus.subscribe("test-readers", READINGS, recorder.handle, max_batch=100)
    bus.subscribe("test-dead", DEAD, recorder.dead)
    await bus.start()
    return bus


@pytest.fixture
async def recorder_bus(kind: str, settings: Settings) -> AsyncIterator[tuple[Recorder, Bus]]:
    recorder = Recorder(fail_on=13)
    bus = await started(make_bus(kind, settings), recorder)
    yield recorder, bus
    await bus.stop()


async def test_order_per_key_is_kept(
    recorder_bus: tuple[Recorder, Bus], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, bus = recorder_bus
    # Small packs on Kafka, so that a key's messages span many records and batches.
    monkeypatch.setattr(kafka, "PACK_BYTES", 2000)
    messages = [(f"tag-{i % 3}", Reading(key=f"tag-{i % 3}", n=i)) for i in range(60) if i != 13]
    for start in range(0, len(messages), 7):
        await bus.publish(READINGS, messages[start : start + 7])
    # And one publish larger than a Kafka record batch holds, a key's records in several.
    many = [(f"tag-{i % 3}", Reading(key=f"tag-{i % 3}", n=i)) for i in range(60, 4060)]
    await bus.publish(READINGS, many)
    messages += many
    await eventually(lambda: _value(len(recorder.seen)), lambda n: n == len(messages))
    for key in ("tag-0", "tag-1", "tag-2"):
        ns = [r.n for r in recorder.seen if r.key == key]
        assert ns == sorted(ns)


async def test_a_poison_message_is_dead_lettered_and_its_batch_survives(
    recorder_bus: tuple[Recorder, Bus],
) -> None:
    recorder, bus = recorder_bus
    await bus.publish(READINGS, [("k", Reading(key="k", n=n)) for n in (11, 12, 13, 14)])
    await eventually(lambda: _value(len(recorder.letters)), lambda n: n == 1)
    await eventually(lambda: _value(len(recorder.seen)), lambda n: n == 3)
    assert sorted(r.n for r in recorder.seen) == [11, 12, 14]
    letter = recorder.letters[0]
    assert letter.group.startswith("test-readers")
    assert '"n":13' in letter.payload
    assert letter.error == "ValueError: cannot handle this reading"


async def test_an_undecodable_message_is_dead_lettered(recorder_bus: tuple[Recorder, Bus]) -> None:
    recorder, bus = recorder_bus
    # In one publish: on Kafka, one record (a pack) holds both.
    await bus.publish_raw(
        READINGS,
        [Envelope(b"k", b'{"key": "k", "n": "lots"}'), Envelope(b"k", b'{"key": "k", "n": 1}')],
    )
    await eventually(lambda: _value(len(recorder.letters)), lambda n: n == 1)
    await eventually(lambda: _value(len(recorder.seen)), lambda n: n == 1)
    assert recorder.letters[0].error.startswith("undecodable")


async def test_a_batch_held_up_in_one_lane_does_not_hold_up_another(
    kind: str, settings: Settings
) -> None:
    """While one batch waits (on PostgreSQL, say), the group's other lanes go on: a
    message for another lane is handled before the held one is let go."""
    release = asyncio.Event()
    seen: list[str] = []

    async def handle(batch: list[Reading]) -> None:
        for r in batch:
            if r.n == 0:
                await release.wait()
            seen.append(r.key)

    bus = make_bus(kind, settings)
    bus.subscribe("test-lanes", READINGS, handle)
    bus.subscribe("test-dead", DEAD, Recorder().dead)
    await bus.start()
    try:
        keys = [f"tag-{i}" for i in range(40)]
        lane = await lanes_of(bus, keys)
        held = keys[0]
        other = next(k for k in keys if lane[k] != lane[held])
        # The in-process bus's publish returns once handled: the held one is left running.
        publishing = asyncio.create_task(bus.publish(READINGS, [(held, Reading(key=held, n=0))]))
        await asyncio.sleep(0.2)
        await bus.publish(READINGS, [(other, Reading(key=other, n=1))])
        await eventually(lambda: _value(list(seen)), lambda s: other in s)
        assert held not in seen
        release.set()
        await publishing
        await eventually(lambda: _value(list(seen)), lambda s: held in s)
    finally:
        release.set()
        await bus.stop()


async def test_transient_failures_are_retried_not_dead_lettered(
    kind: str, settings: Settings
) -> None:
    recorder = Recorder(transient_failures=2)
    bus = await started(make_bus(kind, settings), recorder)
    try:
        await bus.publish(READINGS, [("k", Reading(key="k", n=1))])
        await eventually(lambda: _value(len(recorder.seen)), lambda n: n == 1)
        assert recorder.calls == 3
        assert recorder.letters == []
    finally:
        await bus.stop()


async def test_memory_publish_returns_after_the_handlers_finish(settings: Settings) -> None:
    """The in-process bus has no log, so 'durable' means 'handled'."""
    done: list[int] = []

    async def slow(batch: list[Reading]) -> None:
        await asyncio.sleep(0.2)
        done.extend(r.n for r in batch)

    bus = MemoryBus(DEAD)
    bus.subscribe("slow", READINGS, slow)
    await bus.start()
    try:
        await bus.publish(READINGS, [("k", Reading(key="k", n=7))])
        assert done == [7]
    finally:
        await bus.stop()


async def _value(x: Any) -> Any:
    return x


async def test_the_pipeline_keeps_dead_letters_in_the_database(
    memory_pipeline: Pipeline, db: Database
) -> None:
    from services.topics import POINTS

    await memory_pipeline.runtime.bus.publish_raw(POINTS, [Envelope(b"T1", b'{"tag_id": "T1"}')])
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow("select group_name, topic, key, error from dead_letters")
    assert row is not None
    assert (row["topic"], row["key"]) == ("points", "T1")
    assert row["error"].startswith("undecodable")


async def test_ingest_answers_503_and_accepts_nothing_when_the_bus_is_down(
    client: httpx.AsyncClient, memory_pipeline: Pipeline, db: Database
) -> None:
    world = await enrol(client, db, n=1)
    await memory_pipeline.runtime.bus.stop()
    body = {"tag_id": world.tags[0], "fixes": [fix(utcnow() - timedelta(minutes=1))]}
    r = await client.post("/v1/fixes", json=body, headers=world.supplier)
    assert r.status_code == 503
    assert "retry" in r.json()["error"] or "not running" in r.json()["error"]
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from trail_points") == 0


def test_the_kept_partitions_are_the_default_partitioners() -> None:
    """Keeping each key's partition changes no answer: the same partition as aiokafka's
    (and Java's) murmur2 for every key and partition count, first time and again."""
    keep = KeyPartitioner()
    for n in (1, 3, 8, 16):
        parts = list(range(n))
        keys = [f"TAG-{i:05d}".encode() for i in range(300)]
        expected = [DefaultPartitioner()(key, parts, parts) for key in keys]
        # Some keys met one at a time first, then all of them at once, twice.
        assert [keep(key, parts, parts) for key in keys[::7]] == expected[::7]
        assert keep.lanes(keys, parts) == expected
        assert keep.lanes(keys, parts) == expected
        assert [keep(key, parts, parts) for key in keys] == expected


async def test_more_waiting_requests_than_connections_all_get_through(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    """On the in-process bus an ingest request waits until its fixes are stored and
    checked, and the handlers need connections; waiting requests must not hold them all
    (they once did, and 16 at once deadlocked `tagtrail run` until the pool timed out)."""
    world = await enrol(client, db, n=1)
    # A zone, so that the zone checker opens a transaction for each batch.
    zone = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [square(52.58, -0.25, 150)]},
        "properties": {"subject_id": str(world.subjects[0]), "kind": "exclusion", "name": "Z"},
    }
    r = await client.post("/v1/zones", json=zone, headers=world.admin)
    assert r.status_code == 201, r.text
    many = 3 * settings.db.pool_size
    start = utcnow() - timedelta(hours=1)

    async def post(i: int) -> int:
        body = {"tag_id": world.tags[0], "fixes": [fix(start + timedelta(seconds=i))]}
        r = await client.post("/v1/fixes", json=body, headers=world.supplier)
        return r.status_code

    async with asyncio.timeout(20):
        codes = await asyncio.gather(*(post(i) for i in range(many)))
    assert codes == [202] * many
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from trail_points") == many


def test_lanes_must_leave_the_dispatcher_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGTRAIL_DB_POOL_SIZE", "6")
    monkeypatch.setenv("TAGTRAIL_BUS_LANES", "3")
    with pytest.raises(ValueError, match="TAGTRAIL_DB_POOL_SIZE"):
        Settings()
    monkeypatch.setenv("TAGTRAIL_BUS_LANES", "2")
    Settings()


async def test_kafka_reads_plain_records_beside_packed_ones(settings: Settings) -> None:
    """tagtrail packs a publish's messages for a partition into one record; a record
    another producer wrote, one message and no pack header, is read as well."""
    recorder = Recorder()
    bus = await started(make_bus("kafka", settings), recorder)
    assert isinstance(bus, KafkaBus)
    producer = AIOKafkaProducer(bootstrap_servers=bus.settings.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(bus.physical(READINGS), b'{"key": "k", "n": 1}', key=b"k")
        await bus.publish(READINGS, [("k", Reading(key="k", n=n)) for n in (2, 3)])
        await eventually(lambda: _value(len(recorder.seen)), lambda n: n == 3)
        assert [r.n for r in recorder.seen] == [1, 2, 3]
        assert recorder.letters == []
    finally:
        await producer.stop()
        await bus.stop()


async def test_kafka_topics_others_read_carry_one_message_a_record(settings: Settings) -> None:
    """The alert feed and the dead letters are read by other systems: no packs there."""
    plain = Topic("plain-readings", Reading)
    bus = KafkaBus(kafka_settings(settings).kafka, DEAD, [plain, DEAD])
    await bus.start()
    consumer = AIOKafkaConsumer(
        bus.physical(plain), bootstrap_servers=bus.settings.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await bus.publish(plain, [("k", Reading(key="k", n=n)) for n in range(3)])
        records: list[Any] = []
        async with asyncio.timeout(20):
            while len(records) < 3:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        assert [Reading.model_validate_json(r.value).n for r in records] == [0, 1, 2]
        assert all(not r.headers for r in records)
    finally:
        await consumer.stop()
        await bus.stop()


class Note(BaseModel):
    key: str
    text: str


async def test_kafka_records_up_to_the_largest_are_read_and_a_larger_one_is_refused(
    settings: Settings,
) -> None:
    """Consumers fetch a partition a little at a time (which bounds what one behind
    holds), yet a record as large as tagtrail writes is read, beside small ones in every
    partition. A message larger than a record may be is refused before it is sent."""
    topic = Topic("notes", Note)
    bus = KafkaBus(kafka_settings(settings).kafka, DEAD, [topic, DEAD], lanes=2)
    seen: list[Note] = []

    async def handle(notes: list[Note]) -> None:
        seen.extend(notes)

    bus.subscribe("test-notes", topic, handle)
    await bus.start()
    try:
        # Its JSON, {"key":"big","text":"..."}, a few bytes under the largest record.
        big = Note(key="big", text="x" * (kafka.MAX_RECORD_BYTES - 64))
        small = [Note(key=f"k{i}", text="y" * 200_000) for i in range(24)]
        await bus.publish(topic, [(n.key, n) for n in [*small[:12], big, *small[12:]]])
        too_big = Note(key="big", text="x" * kafka.MAX_RECORD_BYTES)
        with pytest.raises(BusUnavailable, match="larger than a record may be"):
            await bus.publish(topic, [("too-big", too_big)])
        await eventually(lambda: _value(len(seen)), lambda n: n == 25)
        assert sorted(n.key for n in seen) == sorted(["big", *(n.key for n in small)])
        assert next(n for n in seen if n.key == "big") == big
        await asyncio.sleep(1)
        assert len(seen) == 25  # the refused one was never sent
    finally:
        await bus.stop()


def test_packs_hold_every_message_in_order_and_fit_a_record() -> None:
    """Messages of very different sizes (and some encoded already, as a raw publish
    gives them) pack into records of at most PACK_BYTES, one too large for that alone,
    and unpack to the same messages in the same order."""
    rng = random.Random(5)
    topic = Topic("notes", Note, packed=True)
    sizes = [rng.choice([0, 20, 2_000, 60_000]) for _ in range(3_000)] + [300_000, 5]
    notes = [Note(key=f"k{i % 7}", text="x" * n) for i, n in enumerate(sizes)]
    envelopes = [
        Envelope(m.key.encode(), topic.encode(m))
        if i % 11 == 0
        else Envelope(m.key.encode(), b"", m)
        for i, m in enumerate(notes)
    ]
    packs = list(kafka.pack(topic, envelopes))
    back: list[Envelope] = []
    for key, value in packs:
        record = SimpleNamespace(key=key, value=value, headers=[kafka.PACKED])
        got = kafka.unpack(topic, record)
        assert key == got[0].key
        assert len(value) <= kafka.PACK_BYTES or len(got) == 1
        back += got
    assert [(e.key, e.message) for e in back] == [(m.key.encode(), m) for m in notes]
    assert len(packs) < len(notes) / 10


# A topic of fix batches, as the points topics are, with small messages so that a
# publish is split many ways.
FIX_BATCHES = BatchTopic("fix-batches", FixPackedMessage, decoder=FixBatch.decode, max_rows=30)


def _fix_batch(rows: list[tuple[str, int]]) -> FixBatch:
    """A batch of (tag, n) rows: row n at minute n, with accuracy n + 1 m."""
    start = utcnow() - timedelta(days=1)
    subject = uuid.uuid4()
    return FixBatch.of(
        [
            FixMessage(
                tag_id=tag,
                subject_id=subject,
                ts=start + timedelta(minutes=n),
                received_at=start,
                lat=51.5,
                lon=-0.1,
                accuracy_m=n + 1,
            )
            for tag, n in rows
        ]
    )


def _partition_of(bus: Bus, key: str) -> int:
    if isinstance(bus, MemoryBus):
        return crc32(key.encode()) % bus.lanes
    assert isinstance(bus, KafkaBus)
    parts = list(range(bus.settings.partitions))
    return KeyPartitioner()(key.encode(), parts, parts)


async def test_a_batch_is_split_by_partition_keeps_each_tags_order_and_fits_the_batches(
    kind: str, settings: Settings
) -> None:
    """publish_batch: every row arrives once; each message holds the rows of one
    partition (lane) only, at most max_rows of them; a handler's batch holds at most
    max_batch rows; and each tag's rows arrive in the order published, across many
    publishes whose rows interleave tags."""
    calls: list[list[FixBatch]] = []
    letters: list[DeadLetter] = []

    async def handle(batches: list[FixBatch]) -> None:
        calls.append(batches)

    async def dead(batch: list[DeadLetter]) -> None:
        letters.extend(batch)

    bus = make_bus(kind, settings)
    if isinstance(bus, KafkaBus):
        bus.topics.append(FIX_BATCHES)
    bus.subscribe("test-batches", FIX_BATCHES, handle, max_batch=100)
    bus.subscribe("test-dead", DEAD, dead)
    await bus.start()
    try:
        rng = random.Random(5)
        rows = [(f"tag-{rng.randrange(12)}", n) for n in range(1000)]
        for start in range(0, len(rows), 250):
            await bus.publish_batch(FIX_BATCHES, _fix_batch(rows[start : start + 250]))
        await eventually(
            lambda: _value(sum(len(b) for c in calls for b in c)), lambda n: n >= len(rows)
        )
    finally:
        await bus.stop()
    got = [
        (tag, round(acc) - 1)
        for c in calls
        for b in c
        for tag, acc in zip(b.tag_ids(), b.accuracy_m.tolist(), strict=True)
    ]
    assert sorted(got) == sorted(rows)
    for tag in {t for t, _ in rows}:
        assert [n for t, n in got if t == tag] == [n for t, n in rows if t == tag]
    # Messages: split at max_rows exactly (a lane's part of a publish is ~80 rows), none
    # empty, each of one partition.
    sizes = [len(b) for c in calls for b in c]
    assert max(sizes) == FIX_BATCHES.max_rows
    assert min(sizes) >= 1
    assert all(len({_partition_of(bus, t) for t in b.tag_ids()}) == 1 for c in calls for b in c)
    # Handler calls: whole messages, up to max_batch rows.
    assert max(sum(len(b) for b in c) for c in calls) <= 100
    assert letters == []


async def test_a_row_no_handler_can_take_is_dead_lettered_alone(
    kind: str, settings: Settings
) -> None:
    """A row that fails its handler for good goes to the dead letters as a batch of its
    own; the rest of its batch still goes through."""
    seen: list[int] = []
    letters: list[DeadLetter] = []

    async def handle(batches: list[FixBatch]) -> None:
        fixes = FixBatch.concat(batches)
        if 13.0 in fixes.accuracy_m:
            raise ValueError("cannot handle this fix")
        seen.extend(int(a) - 1 for a in fixes.accuracy_m.tolist())

    async def dead(batch: list[DeadLetter]) -> None:
        letters.extend(batch)

    bus = make_bus(kind, settings)
    if isinstance(bus, KafkaBus):
        bus.topics.append(FIX_BATCHES)
    bus.subscribe("test-batches", FIX_BATCHES, handle)
    bus.subscribe("test-dead", DEAD, dead)
    await bus.start()
    try:
        await bus.publish_batch(FIX_BATCHES, _fix_batch([("k", n) for n in range(10, 16)]))
        await eventually(lambda: _value(len(letters)), lambda n: n == 1)
        await eventually(lambda: _value(len(seen)), lambda n: n == 5)
    finally:
        await bus.stop()
    assert sorted(seen) == [10, 11, 13, 14, 15]
    (letter,) = letters
    assert letter.key == "k"
    assert letter.error == "ValueError: cannot handle this fix"
    # Shown as JSON values, for a person to read, and still a batch to decode.
    assert orjson.loads(letter.payload)["accuracy_m"] == [13.0]
    (poison,) = FixBatch.decode(letter.payload.encode()).messages()
    assert (poison.tag_id, poison.accuracy_m) == ("k", 13.0)


async def test_kafka_reads_points_records_written_before_batches(settings: Settings) -> None:
    """Records the points topics held before they carried batches of bytes, a pack of
    fix messages (with the pack header), a lone fix message and a batch of JSON values,
    are read as batches beside new ones: an upgrade loses nothing in flight."""
    seen: list[FixMessage] = []

    async def handle(batches: list[FixBatch]) -> None:
        seen.extend(FixBatch.concat(batches).messages())

    bus = KafkaBus(kafka_settings(settings).kafka, DEAD, [FIX_BATCHES, DEAD])
    bus.subscribe("test-batches", FIX_BATCHES, handle)
    await bus.start()
    producer = AIOKafkaProducer(bootstrap_servers=bus.settings.bootstrap)
    await producer.start()
    try:
        old = _fix_batch([("k", n) for n in range(4)]).messages()
        packed = b"[" + b",".join(b'["k",' + m.model_dump_json().encode() + b"]" for m in old[:3])
        topic = bus.physical(FIX_BATCHES)
        await producer.send_and_wait(topic, packed + b"]", key=b"k", headers=[kafka.PACKED])
        await producer.send_and_wait(topic, old[3].model_dump_json().encode(), key=b"k")
        values = _fix_batch([("k", n) for n in range(4, 6)]).readable()
        await producer.send_and_wait(topic, values, key=b"k")
        new = _fix_batch([("k", n) for n in range(6, 8)])
        await bus.publish_batch(FIX_BATCHES, new)
        await eventually(lambda: _value(len(seen)), lambda n: n == 8)
        assert [m.accuracy_m for m in seen] == [1, 2, 3, 4, 5, 6, 7, 8]
    finally:
        await producer.stop()
        await bus.stop()


@dataclass
class HeldFirst:
    """A bus whose first publish_raw waits, once started, until `go_on` is set: the
    sizes (rows) of each publish made, and whether the first has started."""

    sent: list[int] = field(default_factory=list)
    first_held: asyncio.Event = field(default_factory=asyncio.Event)
    go_on: asyncio.Event = field(default_factory=asyncio.Event)

    def hold(self, bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
        real = bus.publish_raw

        async def held_first(topic: Topic[Any], envelopes: Any) -> None:
            self.sent.append(sum(e.size for e in envelopes))
            if len(self.sent) == 1:
                self.first_held.set()
                await self.go_on.wait()
            await real(topic, envelopes)

        monkeypatch.setattr(bus, "publish_raw", held_first)


async def test_kafka_batches_published_while_one_is_in_flight_go_together(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishes of a topic's batches made while one is in flight wait for it and then
    go as one publish, a message a partition: fewer, larger messages. Each caller
    returns once its rows are durable, and each tag's rows keep the order published."""
    bus = KafkaBus(kafka_settings(settings).kafka, DEAD, [FIX_BATCHES, DEAD])
    await bus.start()
    held = HeldFirst()
    held.hold(bus, monkeypatch)
    consumer = AIOKafkaConsumer(
        bus.physical(FIX_BATCHES),
        bootstrap_servers=bus.settings.bootstrap,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    tags = ["tag-a", "tag-b", "tag-c"]  # 2 rows each a publish: at most 6 a message

    def rows(k: int) -> FixBatch:
        return _fix_batch([(t, 2 * k + i) for t in tags for i in (0, 1)])

    try:
        first = asyncio.create_task(bus.publish_batch(FIX_BATCHES, rows(0)))
        await held.first_held.wait()
        later = [asyncio.create_task(bus.publish_batch(FIX_BATCHES, rows(k))) for k in (1, 2, 3)]
        await asyncio.sleep(0.1)
        assert not any(t.done() for t in [first, *later])
        held.go_on.set()
        await asyncio.gather(first, *later)
        assert held.sent == [6, 18]
        records: list[Any] = []
        async with asyncio.timeout(20):
            while sum(len(FixBatch.decode(r.value)) for r in records) < 24:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        assert len(records) == 2 * len({_partition_of(bus, t) for t in tags})
        got = FixBatch.concat(
            [FixBatch.decode(r.value) for r in sorted(records, key=lambda r: r.offset)]
        )
        for tag in tags:
            mine = [
                round(a) - 1
                for t, a in zip(got.tag_ids(), got.accuracy_m.tolist(), strict=True)
                if t == tag
            ]
            assert mine == list(range(8))
    finally:
        await consumer.stop()
        await bus.stop()


async def test_kafka_a_failed_publish_fails_each_batch_gathered_into_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the publish a batch went in fails, its caller is told, whoever else's batches
    went with it; the next publish is not held up."""
    bus = KafkaBus(kafka_settings(settings).kafka, DEAD, [FIX_BATCHES, DEAD])
    await bus.start()
    real = bus.publish_raw
    calls = 0

    async def refuse_second(topic: Topic[Any], envelopes: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise BusUnavailable("the broker is away")
        await real(topic, envelopes)

    monkeypatch.setattr(bus, "publish_raw", refuse_second)
    try:
        await bus.publish_batch(FIX_BATCHES, _fix_batch([("k", 0)]))
        outcomes = await asyncio.gather(
            *(bus.publish_batch(FIX_BATCHES, _fix_batch([("k", n)])) for n in range(1, 4)),
            return_exceptions=True,
        )
        assert calls == 2
        assert all(isinstance(o, BusUnavailable) for o in outcomes), outcomes
        await bus.publish_batch(FIX_BATCHES, _fix_batch([("k", 9)]))
        assert calls == 3
    finally:
        await bus.stop()


async def test_kafka_a_gathered_publish_stopped_while_it_waits_fails_its_callers_alone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gathered publish stopped before it went (its task cancelled, as when the process
    stops): its callers are told the bus did not take their rows, and later publishes
    gather afresh instead of joining it."""
    bus = KafkaBus(kafka_settings(settings).kafka, DEAD, [FIX_BATCHES, DEAD])
    await bus.start()
    held = HeldFirst()
    held.hold(bus, monkeypatch)
    try:
        first = asyncio.create_task(bus.publish_batch(FIX_BATCHES, _fix_batch([("k", 0)])))
        await held.first_held.wait()
        waiting = asyncio.create_task(bus.publish_batch(FIX_BATCHES, _fix_batch([("k", 1)])))
        await asyncio.sleep(0.05)
        bus._gathering[FIX_BATCHES.name].sent.cancel()
        with pytest.raises(BusUnavailable):
            await waiting
        held.go_on.set()
        await first
        async with asyncio.timeout(20):
            await bus.publish_batch(FIX_BATCHES, _fix_batch([("k", 2)]))
    finally:
        await bus.stop()


async def test_many_publishes_at_once_to_one_partition_all_get_through(settings: Settings) -> None:
    """aiokafka sends a partition's batches one at a time, and takes the time a send has
    waited off its timeout again every time it wakes to another batch ahead: with many
    publishes at once on one partition, the last timed out after a small part of the
    timeout. They queue a partition at a time here, and every one goes through."""
    isolated = kafka_settings(settings)
    isolated.kafka = isolated.kafka.model_copy(update={"partitions": 1, "request_timeout_s": 2.0})
    bus = KafkaBus(isolated.kafka, DEAD, [READINGS, DEAD])
    await bus.start()
    try:
        bulky = "x" * 200_000
        await asyncio.gather(
            *(bus.publish(READINGS, [(f"k{i}", Reading(key=bulky, n=i))]) for i in range(64))
        )
    finally:
        await bus.stop()


async def test_kafka_consumers_of_fixes_under_load_fetch_on_for_more(settings: Settings) -> None:
    """Under load (TAGTRAIL_KAFKA_LINGER_RATE fixes fetched within about a second), a
    consumer of fixes fetches on for up to TAGTRAIL_KAFKA_LINGER_MS before handing them
    over, so what comes meanwhile joins the batch, and stops as soon as the handler's
    batch is full; a light load's fixes are handed over as they come."""
    isolated = kafka_settings(settings)
    isolated.kafka = isolated.kafka.model_copy(update={"linger_ms": 4000, "linger_rate": 25})
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, list[int]]] = []

    async def handle(batches: list[FixBatch]) -> None:
        b = FixBatch.concat(batches)
        calls.append((loop.time(), [round(a) - 1 for a in b.accuracy_m.tolist()]))

    bus = KafkaBus(isolated.kafka, DEAD, [FIX_BATCHES, DEAD])
    bus.subscribe("test-batches", FIX_BATCHES, handle, max_batch=60)
    await bus.start()
    try:
        # Once the consumer has its partitions (a first fix arrives), and the second it
        # counts has gone by: a trickle, 10 fixes, is handed over at once.
        await bus.publish_batch(FIX_BATCHES, _fix_batch([("tag-a", 0)]))
        await eventually(lambda: _value(len(calls)), lambda n: n == 1)
        await asyncio.sleep(1.5)
        sent = loop.time()
        await bus.publish_batch(FIX_BATCHES, _fix_batch([("tag-a", n) for n in range(1, 11)]))
        await eventually(lambda: _value(len(calls)), lambda n: n == 2)
        assert calls[1][0] - sent < 3.0 and calls[1][1] == list(range(1, 11))
        await asyncio.sleep(1.5)
        # 30 at once is a load: the consumer fetches on, and the 30 sent half a second
        # later join them in one batch, handed over when it holds 60, not at the linger's
        # end.
        await bus.publish_batch(FIX_BATCHES, _fix_batch([("tag-a", n) for n in range(11, 41)]))
        await asyncio.sleep(0.5)
        sent = loop.time()
        await bus.publish_batch(FIX_BATCHES, _fix_batch([("tag-a", n) for n in range(41, 71)]))
        await eventually(lambda: _value(sum(len(c) for _, c in calls)), lambda n: n >= 71)
    finally:
        await bus.stop()
    assert len(calls) == 3, [len(c) for _, c in calls]
    assert calls[2][1] == list(range(11, 71))
    assert calls[2][0] - sent < 3.0


# What the store publishes once it has stored fixes: on Kafka, the fix batches
# themselves, read as the publishing group commits them.
DONE_BATCHES = BatchTopic(
    "done-batches", FixPackedMessage, decoder=FixBatch.decode, stands_for=FIX_BATCHES
)


async def test_kafka_a_topic_standing_for_another_is_read_as_its_publisher_commits(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic that stands for another (the stored fixes, for the points) is not written
    on Kafka: its readers read the other topic, each record only once the publishing
    group has committed past it, that is, once its work on the record is done. A reader
    that has waited long lets the records go and fetches them again: each is handed
    over once, when its time comes."""
    monkeypatch.setattr(kafka, "GATE_PATIENCE_S", 0.3)
    isolated = kafka_settings(settings)
    release = asyncio.Event()
    taken: list[int] = []
    seen: list[int] = []

    async def publish_when_done(batches: list[FixBatch]) -> None:
        b = FixBatch.concat(batches)
        taken.extend(round(a) - 1 for a in b.accuracy_m.tolist())
        await release.wait()
        await publisher.publish_batch(DONE_BATCHES, b)

    async def read(batches: list[FixBatch]) -> None:
        seen.extend(round(a) - 1 for b in batches for a in b.accuracy_m.tolist())

    publisher = KafkaBus(isolated.kafka, DEAD, [FIX_BATCHES, DONE_BATCHES, DEAD])
    publisher.subscribe("test-publisher", FIX_BATCHES, publish_when_done)
    reader = KafkaBus(isolated.kafka, DEAD, [FIX_BATCHES, DONE_BATCHES, DEAD])
    with pytest.raises(ValueError, match="name its publisher"):
        reader.subscribe("test-reader", DONE_BATCHES, read)
    reader.subscribe("test-reader", DONE_BATCHES, read, after="test-publisher")
    await publisher.start()
    await reader.start()
    try:
        await publisher.publish_batch(FIX_BATCHES, _fix_batch([("tag-a", n) for n in range(5)]))
        await eventually(lambda: _value(len(taken)), lambda n: n == 5)
        # The reader has the records by now (its topic is theirs), but the publisher
        # has not done with them.
        await asyncio.sleep(2.0)
        assert seen == []
        release.set()
        await eventually(lambda: _value(list(seen)), lambda s: s == list(range(5)))
        await asyncio.sleep(1.0)
        assert seen == list(range(5))
        with pytest.raises(TypeError, match="not written"):
            await publisher.publish_raw(DONE_BATCHES, [Envelope(b"tag-a", b"{}")])
        admin = AIOKafkaAdminClient(bootstrap_servers=isolated.kafka.bootstrap)
        await admin.start()
        try:
            topics = set(await admin.list_topics())
        finally:
            await admin.close()
        assert publisher.physical(DONE_BATCHES) == publisher.physical(FIX_BATCHES)
        assert isolated.kafka.topic_prefix + DONE_BATCHES.name not in topics
    finally:
        release.set()
        await reader.stop()
        await publisher.stop()


def test_the_batch_cap_is_larger_on_kafka_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Handlers take up to 32,000 fixes a call on Kafka and 16,000 in one process, where
    a request waits for its batch's checks; TAGTRAIL_BUS_MAX_BATCH sets both."""
    monkeypatch.delenv("TAGTRAIL_BUS_MAX_BATCH", raising=False)
    unset = BusSettings()
    assert (unset.batch_cap("kafka"), unset.batch_cap("memory")) == (32_000, 16_000)
    both = BusSettings(max_batch=5_000)
    assert (both.batch_cap("kafka"), both.batch_cap("memory")) == (5_000, 5_000)
