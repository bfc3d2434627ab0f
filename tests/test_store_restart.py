"""The store worker on Kafka: stopped between receipt and storage, or crashed before it
committed its offsets, every accepted fix is stored exactly once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.common.database import Database
from services.common.settings import Settings
from services.common.timeutil import utcnow
from services.ingest.worker import GROUP as STORE_GROUP
from services.pipeline import Pipeline, Role
from services.topics import POINTS
from tests.conftest import enrol, eventually, fix, kafka_settings, serve


async def stored(db: Database) -> tuple[int, int]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetchval("select count(*) from trail_points")
        distinct = await conn.fetchval("select count(distinct (tag_id, ts)) from trail_points")
    return int(rows), int(distinct)


async def _partitions(s: Settings, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka.bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


async def rewind_group(s: Settings, group: str, topic: str) -> None:
    """What a crash between storing and committing leaves behind: the group's offsets
    point back before work that was already done, so all of it is delivered again."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await _partitions(s, topic)
        assert partitions
        consumer.assign(partitions)
        await consumer.commit({tp: 0 for tp in partitions})
    finally:
        await consumer.stop()


async def committed_total(s: Settings, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(max(0, o.offset) for tp, o in offsets.items() if tp.topic == topic)


async def end_total(s: Settings, topic: str) -> int:
    """Records in the topic (fixes travel packed, several to a record)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka.bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await _partitions(s, topic))
    finally:
        await consumer.stop()
    return sum(ends.values())


async def test_fixes_accepted_while_the_store_is_down_are_stored_once(
    settings: Settings, database: str, db: Database
) -> None:
    s = kafka_settings(settings)
    api = Pipeline(s, bus="kafka", roles=(), database=database)
    await api.start()
    try:
        async with serve(api) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            world = await enrol(http, db, n=3)
            start = utcnow() - timedelta(hours=1)
            for tag in world.tags:
                fixes = [fix(start + timedelta(minutes=i), lat=52.57 + i * 1e-4) for i in range(50)]
                r = await http.post(
                    "/v1/fixes", json={"tag_id": tag, "fixes": fixes}, headers=world.supplier
                )
                assert r.status_code == 202
                assert r.json()["accepted"] == 50
    finally:
        await api.stop()

    # Accepted means on Kafka, not yet in PostGIS: no store worker has run.
    await asyncio.sleep(0.5)
    assert await stored(db) == (0, 0)

    store = Pipeline(s, bus="kafka", roles=[Role.store], database=database)
    await store.start()
    try:
        await eventually(lambda: stored(db), lambda c: c[0] == 150)
    finally:
        await store.stop()

    # Crash before the offset commit: every message comes again. Nothing doubles.
    group, topic = f"{STORE_GROUP}.{POINTS.name}", s.kafka.topic_prefix + POINTS.name
    records = await end_total(s, topic)
    assert records >= 1
    assert await committed_total(s, group, topic) == records
    await rewind_group(s, group, topic)
    assert await committed_total(s, group, topic) == 0
    again = Pipeline(s, bus="kafka", roles=[Role.store], database=database)
    await again.start()
    try:
        # The group commits only after storing, so all committed means all were redone.
        await eventually(lambda: committed_total(s, group, topic), lambda n: n == records)
    finally:
        await again.stop()
    assert await stored(db) == (150, 150)
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from fix_conflicts") == 0
