"""The Kafka bus (aiokafka): idempotent producer with acks=all, consumer groups that
commit offsets only after their handler's work is durable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from pydantic import BaseModel, TypeAdapter, ValidationError

from services.common.bus.base import (
    Backoff,
    Batch,
    BatchTopic,
    Bus,
    BusUnavailable,
    Envelope,
    Subscription,
    Topic,
    sized,
    standing_for,
)
from services.common.metrics import CONSUMER_LAG
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)

# The largest record tagtrail writes: under the broker's default limit on a record
# batch (message.max.bytes, 1 MiB with the batch's own bytes), which its records keep
# well under (packs of PACK_BYTES; a lone points message, a lane's part of a batch,
# about 350 kB at its 2,000 rows). A larger one is refused before it is sent.
MAX_RECORD_BYTES = 1_000_000
# What a consumer fetches of a partition at a time: room for the largest record batch,
# as aiokafka asks (one larger than this may not be fetched). A consumer holds a fetch
# of each of its partitions until handed over, twice over (the response, and each
# partition's part of it), so this bounds what a consumer behind holds: at 16 MiB a
# partition the zone checker took 514 MiB working through a backlog (docs/benchmarks.md,
# twenty-ninth session).
PARTITION_FETCH_BYTES = 2 * MAX_RECORD_BYTES


class KeyPartitioner:
    """aiokafka's default partitioner (murmur2 of the key, as the Java client does), with
    each key's answer kept: the hash is pure Python, and the same few thousand tag ids
    come back all day. Keyless messages are left to the default. Answers are kept a
    partition list at a time, found once a call of `lanes`: keyed by (key, partitions),
    a tuple of the partitions was made for every key looked up (1 µs a fix of the API's
    samples on Kafka, docs/benchmarks.md, nineteenth session)."""

    MAX_KEYS = 200_000

    def __init__(self) -> None:
        self._known: dict[tuple[int, ...], dict[bytes, int]] = {}

    def _answers(self, partitions: Sequence[int]) -> dict[bytes, int]:
        """What is kept for this partition list (emptied once it holds MAX_KEYS)."""
        parts = tuple(partitions)
        known = self._known.get(parts)
        if known is None or len(known) >= self.MAX_KEYS:
            known = self._known[parts] = {}
        return known

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        return self.lanes([key], all_partitions)[0]

    def lanes(self, keys: Sequence[bytes], partitions: list[int]) -> list[int]:
        """Each key's partition among these (every one available)."""
        known = self._answers(partitions)
        answers = [known.get(k, -1) for k in keys]
        if -1 in answers:
            for i, k in enumerate(keys):
                if answers[i] < 0:
                    answers[i] = known[k] = int(DefaultPartitioner()(k, partitions, partitions))
        return answers


# On topics marked packed (which only tagtrail reads), a publish's messages for one
# partition travel several to a record: its value a JSON array of [key, message] pairs,
# marked by this header. A consumer then parses a record at once (pydantic, in Rust)
# instead of a message at a time, and the broker and clients handle one record where
# they handled hundreds. A record without the header is one message, as another
# producer may write it.
PACKED = ("tagtrail-pack", b"1")
# Well under the broker's default limit on a record (1 MiB).
PACK_BYTES = 256 * 1024
# Records a fetch: packs of up to a few hundred messages each.
RECORDS_A_FETCH = 50
# The span over which a consumer counts the fixes it has fetched, to tell whether it is
# under load (TAGTRAIL_KAFKA_LINGER_RATE): longer than a linger, so that a consumer
# lingering under a steady load still finds itself under load when it next fetches.
LOAD_WINDOW_S = 1.0


_ADAPTERS: dict[type[BaseModel], TypeAdapter[list[tuple[str, Any]]]] = {}


def _packs_of(model: type[BaseModel]) -> TypeAdapter[list[tuple[str, Any]]]:
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(list[tuple[str, model]])  # type: ignore[valid-type]
    return adapter


# Messages a packed record's first run; later runs are sized by the bytes a message took.
FIRST_RUN = 256


def pack(topic: Topic[Any], envelopes: Sequence[Envelope]) -> Iterator[tuple[bytes, bytes]]:
    """(first key, packed value) for runs of envelopes of at most PACK_BYTES (a message
    larger than that travels alone). A run's messages are encoded in one call into
    pydantic, in Rust: 2.1 µs a fix against 4.1 encoding each and joining them, which
    was an eighth of the API's time on Kafka (docs/benchmarks.md, seventh session)."""
    adapter = _packs_of(topic.model)
    run = FIRST_RUN
    i = 0
    while i < len(envelopes):
        part = envelopes[i : i + run]
        value = _encoded(topic, adapter, part)
        if len(value) > PACK_BYTES and len(part) > 1:
            run = max(1, len(part) // 2)
            continue
        yield part[0].key, value
        i += len(part)
        # As many as fit, going by these: nearly always right, and halved when not.
        run = max(1, int(PACK_BYTES * 0.9 * len(part) / len(value)))


def _encoded(
    topic: Topic[Any], adapter: TypeAdapter[list[tuple[str, Any]]], part: Sequence[Envelope]
) -> bytes:
    """A JSON array of [key, message] pairs; a message already encoded (a raw publish)
    goes as it is."""
    if all(e.message is not None for e in part):
        return adapter.dump_json([(e.key.decode(), e.message) for e in part])
    pieces = [
        b"["
        + orjson.dumps(e.key.decode())
        + b","
        + (e.value if e.message is None else topic.encode(e.message))
        + b"]"
        for e in part
    ]
    return b"[" + b",".join(pieces) + b"]"


def unpack(topic: Topic[Any], record: Any) -> list[Envelope]:
    """The messages of a record: decoded already when the whole pack is valid; when one
    is not, each as it came, so that it alone goes to the dead letters."""
    value = record.value or b""
    if isinstance(topic, BatchTopic):
        # A batch a record (or, written before batches, a message or a pack of them: the
        # topic's decoder reads those too); one that does not decode goes to the dead
        # letters whole.
        try:
            batch = topic.decode(value)
        except ValidationError:
            return [Envelope(record.key or b"", value)]
        return [Envelope(record.key or b"", b"", batch, len(batch))]
    if PACKED not in (record.headers or ()):
        return [Envelope(record.key or b"", value)]
    try:
        return [
            Envelope(k.encode(), b"", m) for k, m in _packs_of(topic.model).validate_json(value)
        ]
    except ValidationError:
        pass
    try:
        pairs = orjson.loads(value)
        return [Envelope(str(k).encode(), orjson.dumps(m)) for k, m in pairs]
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return [Envelope(record.key or b"", value)]


class Load:
    """The rows a consumer has fetched over the last `window` seconds."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._fetched: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, now: float, rows: int) -> int:
        """Counts `rows` fetched at `now`; returns the rows of the window up to now."""
        self._fetched.append((now, rows))
        self._total += rows
        while self._fetched[0][0] < now - self.window:
            self._total -= self._fetched.popleft()[1]
        return self._total


def group_id(group: str, topic: Topic[Any]) -> str:
    """The Kafka consumer group of a role's group on a topic: one a (role, topic), so a
    role on two topics never rebalances both."""
    return f"{group}.{topic.name}"


# How often a reader of a topic that stands for another asks whether the publisher
# has committed what it has fetched: first, and at most (KafkaBus._published).
GATE_FIRST_S = 0.01
GATE_LAST_S = 0.1
# How long it waits before it lets the records go, to fetch them again.
GATE_PATIENCE_S = 10.0

# How long stop() lets consumers finish the batch in hand before cancelling them.
GRACE_S = 15.0


class KafkaBus(Bus):
    def __init__(
        self,
        settings: KafkaSettings,
        dead_letter: Topic[Any],
        topics: Sequence[Topic[Any]],
        lanes: int = 1,
    ) -> None:
        super().__init__(dead_letter)
        self.settings = settings
        # Consumers a group has in this process; the broker shares the topic's
        # partitions among them (and those of other processes in the group), so each
        # works on its own partitions' batches while another waits on PostgreSQL.
        self.lanes = lanes
        self._partitioner = KeyPartitioner()
        self.topics = list(topics)
        self._producer: AIOKafkaProducer | None = None
        # Reads the committed offsets of the groups that publish topics standing for
        # others (BatchTopic.stands_for), and where each group's coordinator is.
        self._admin: AIOKafkaAdminClient | None = None
        self._coordinators: dict[str, int] = {}
        self._consumers: list[AIOKafkaConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._lags: dict[int, dict[int, int]] = {}
        # One publish at a time adds batches to a partition (see publish_raw).
        self._adding: defaultdict[tuple[str, int], asyncio.Lock] = defaultdict(asyncio.Lock)

    def physical(self, topic: Topic[Any]) -> str:
        """The topic's name on the broker: for a topic that stands for another, the
        other's (see BatchTopic)."""
        return self.settings.topic_prefix + (standing_for(topic) or topic).name

    async def ensure_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(name, self.settings.partitions, 1)
                for name in dict.fromkeys(self.physical(t) for t in self.topics)
                if name not in existing
            ]
            if missing:
                # Another process may create the same topics at the same moment; the
                # broker then answers "already exists" for those, which is fine.
                await admin.create_topics(missing)
        finally:
            await admin.close()

    async def start(self) -> None:
        await self.ensure_topics()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            partitioner=self._partitioner,
            max_request_size=MAX_RECORD_BYTES,
            request_timeout_ms=int(self.settings.request_timeout_s * 1000),
        )
        await self._producer.start()
        if any(sub.after is not None for sub in self.subscriptions):
            self._admin = AIOKafkaAdminClient(
                bootstrap_servers=self.settings.bootstrap,
                request_timeout_ms=int(self.settings.request_timeout_s * 1000),
            )
            await self._admin.start()
        lanes = [(sub, lane) for sub in self.subscriptions for lane in range(self.lanes)]
        for sub, _ in lanes:
            self._consumers.append(
                AIOKafkaConsumer(
                    self.physical(sub.topic),
                    bootstrap_servers=self.settings.bootstrap,
                    group_id=group_id(sub.group, sub.topic),
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
                    fetch_max_bytes=4 * PARTITION_FETCH_BYTES,
                    # A group's lanes join together; a member that missed a rebalance
                    # hears of it at its next heartbeat.
                    heartbeat_interval_ms=1000,
                )
            )
        # Together, so a group's lanes join in one rebalance rather than one each.
        await asyncio.gather(*(c.start() for c in self._consumers))
        for (sub, lane), consumer in zip(lanes, self._consumers, strict=True):
            self._tasks.append(
                asyncio.create_task(self._consume(sub, consumer), name=f"{sub.group}/{lane}")
            )

    async def stop(self) -> None:
        # Graceful first: each consumer finishes and commits the batch in hand.
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=GRACE_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for consumer in self._consumers:
            await consumer.stop()
        self._consumers.clear()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def ping(self) -> bool:
        if self._producer is None:
            return False
        try:
            async with asyncio.timeout(2):
                await self._producer.partitions_for(self.physical(self.dead_letter))
        except (TimeoutError, KafkaError):
            return False
        return all(not t.done() for t in self._tasks)

    async def lanes_of(self, topic: Topic[Any], keys: Sequence[str]) -> list[int]:
        if self._producer is None:
            raise RuntimeError("the Kafka bus is not started")
        try:
            partitions = sorted(await self._producer.partitions_for(self.physical(topic)))
        except KafkaError as exc:
            raise BusUnavailable(f"the message bus did not say its partitions: {exc}") from exc
        return self._partitioner.lanes([k.encode() for k in keys], partitions)

    async def publish_batch(self, topic: BatchTopic, batch: Batch) -> None:
        """As Bus.publish_batch; a topic that stands for another is not written: its
        rows are on the bus already, as the other's, and its readers see them once the
        publisher's group has committed them (BatchTopic.stands_for)."""
        if topic.stands_for is None:
            await super().publish_batch(topic, batch)

    async def publish_raw(self, topic: Topic[Any], envelopes: Sequence[Envelope]) -> None:
        if self._producer is None:
            raise RuntimeError("the Kafka bus is not started")
        other = standing_for(topic)
        if other is not None:
            raise TypeError(f"{topic.name} stands for {other.name}: it is not written")
        name = self.physical(topic)
        producer = self._producer
        try:
            partitions = sorted(await producer.partitions_for(name))
            by_partition: dict[int, list[Envelope]] = defaultdict(list)
            for e in envelopes:
                by_partition[self._partitioner(e.key, partitions, partitions)].append(e)
            # One send a partition's record batch, not a send (and a future) a record;
            # and a partition's messages packed into few records. Per key, order is
            # kept: one key, one partition, whose packs go in the order they were made.
            sends: list[asyncio.Future[Any]] = []
            headers = [PACKED] if topic.packed else []
            for p, group in by_partition.items():
                # aiokafka (0.14) sends one batch a partition at a time, and a send_batch
                # waits for the one before; but each time a waiter wakes to find another
                # batch ahead, it takes all the time waited so far off its timeout again
                # (message_accumulator.add_batch), so with several publishes waiting on
                # one partition the last ones time out (KafkaTimeoutError) after a small
                # part of the timeout: the benchmark's API answered 503 under load
                # (docs/benchmarks.md, twelfth session). Publishes queue here instead,
                # a partition at a time, and each waits for at most the one batch ahead.
                lock = self._adding[(name, p)]
                try:
                    async with asyncio.timeout(self.settings.request_timeout_s):
                        await lock.acquire()
                except TimeoutError as exc:
                    raise BusUnavailable(
                        "the message bus did not take the messages in time"
                    ) from exc
                try:
                    batch = producer.create_batch()
                    records = (
                        pack(topic, group) if topic.packed else ((e.key, e.value) for e in group)
                    )
                    for key, value in records:
                        if len(value) > MAX_RECORD_BYTES:
                            raise BusUnavailable(
                                f"a message of {len(value)} bytes is larger than a record may be"
                            )
                        if batch.append(key=key, value=value, timestamp=None, headers=headers):
                            continue
                        sends.append(await producer.send_batch(batch, name, partition=p))
                        batch = producer.create_batch()
                        if (
                            batch.append(key=key, value=value, timestamp=None, headers=headers)
                            is None
                        ):
                            raise BusUnavailable(f"a message of {len(value)} bytes is too large")
                    sends.append(await producer.send_batch(batch, name, partition=p))
                finally:
                    lock.release()
            # acks=all: each future resolves once every in-sync replica has the batch.
            await asyncio.gather(*sends)
        except KafkaError as exc:
            # Some records may be on the bus already; a retry re-sends them, and every
            # consumer is idempotent, so the caller may simply try again.
            raise BusUnavailable(f"the message bus did not take the messages: {exc}") from exc

    async def _consume(self, sub: Subscription, consumer: AIOKafkaConsumer) -> None:
        backoff = Backoff()
        load = Load(LOAD_WINDOW_S)
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=RECORDS_A_FETCH)
            except KafkaError as exc:
                log.warning("%s: fetch failed, retrying: %r", sub.group, exc)
                await backoff.wait()
                continue
            if not batches:
                await self._record_lag(sub, consumer)
                continue
            # Records of one partition stay in order, and one key lives in one partition,
            # so per-tag order survives joining the partitions' lists.
            envelopes = [
                e for records in batches.values() for r in records for e in unpack(sub.topic, r)
            ]
            if isinstance(sub.topic, BatchTopic) and self.settings.linger_ms > 0:
                await self._linger(sub, consumer, load, batches, envelopes)
            offsets = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
            if sub.after is not None and not await self._published(sub, offsets):
                # Not yet (or stopping): none of it is handled or committed, and it is
                # fetched again, so that the consumer polls on and keeps its partitions
                # (a consumer that has not polled for max_poll_interval_ms is dropped
                # from its group) while the publisher is down.
                assigned = consumer.assignment()
                for tp, records in batches.items():
                    if records and tp in assigned:
                        consumer.seek(tp, records[0].offset)
                continue
            for run in sized(envelopes, sub.max_batch):
                await self.deliver(sub, run)
            try:
                await consumer.commit(offsets)
            except CommitFailedError:
                # A rebalance moved the partitions away; their new owner re-reads from the
                # last commit, and every handler is idempotent, so nothing is lost or doubled.
                log.warning("%s: commit failed after a rebalance", sub.group)
            await self._record_lag(sub, consumer)

    async def _published(self, sub: Subscription, offsets: dict[TopicPartition, int]) -> bool:
        """Waits until the group that publishes the subscription's topic (`sub.after`)
        has committed each partition of the topic it stands for up to `offsets`: only
        then is its work on those records done, and they are the topic's. False if the
        bus stops first, or if GATE_PATIENCE_S go by first (the publisher is down or
        far behind). The committed offsets are polled: 10 ms apart at first, as the
        publisher may be about to commit, then further apart, up to 100 ms."""
        assert self._admin is not None and isinstance(sub.topic, BatchTopic)
        assert sub.after is not None and sub.topic.stands_for is not None
        group = group_id(sub.after, sub.topic.stands_for)
        wait = GATE_FIRST_S
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GATE_PATIENCE_S
        while not self._stopping.is_set() and loop.time() < deadline:
            try:
                node = self._coordinators.get(group)
                if node is None:
                    node = self._coordinators[group] = await self._admin.find_coordinator(group)
                committed = await self._admin.list_consumer_group_offsets(
                    group, node, list(offsets)
                )
            except KafkaError as exc:
                log.warning("%s: reading %s's offsets failed, retrying: %r", sub.group, group, exc)
                self._coordinators.pop(group, None)
                wait = GATE_LAST_S
            else:
                done = {tp: meta.offset for tp, meta in committed.items()}
                if all(done.get(tp, -1) >= end for tp, end in offsets.items()):
                    return True
            # Until either the wait is over or the bus stops.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
            wait = min(GATE_LAST_S, wait * 2)
        return False

    async def _linger(
        self,
        sub: Subscription,
        consumer: AIOKafkaConsumer,
        load: Load,
        batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
        envelopes: list[Envelope],
    ) -> None:
        """Under load, fetches on for up to TAGTRAIL_KAFKA_LINGER_MS, or until the
        handler's batch is full, adding what comes to `batches` and `envelopes` (a
        partition's records after those it had, so per-key order holds). Otherwise
        returns at once: a light load's fixes are handed over as they come."""
        loop = asyncio.get_running_loop()
        rows = sum(e.size for e in envelopes)
        if load.add(loop.time(), rows) < self.settings.linger_rate:
            return
        deadline = loop.time() + self.settings.linger_ms / 1000
        while rows < sub.max_batch and not self._stopping.is_set():
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                more = await consumer.getmany(
                    timeout_ms=max(1, int(left * 1000)), max_records=RECORDS_A_FETCH
                )
            except KafkaError:
                return  # hand over what there is; the next fetch retries
            fetched = 0
            for tp, records in more.items():
                batches.setdefault(tp, []).extend(records)
                for r in records:
                    for e in unpack(sub.topic, r):
                        envelopes.append(e)
                        fetched += e.size
            rows += fetched
            load.add(loop.time(), fetched)

    async def _record_lag(self, sub: Subscription, consumer: AIOKafkaConsumer) -> None:
        total = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            with contextlib.suppress(KafkaError, AssertionError):
                total += max(0, high - await consumer.position(tp))
        # The group's lag in this process: its lanes' together.
        lags = self._lags.setdefault(id(sub), {})
        lags[id(consumer)] = total
        CONSUMER_LAG.labels(sub.group, sub.topic.name).set(sum(lags.values()))
