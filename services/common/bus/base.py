"""The bus interface and the delivery rules both implementations share."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, Self, TypeVar

import asyncpg
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError

from services.common.bus.messages import DeadLetter
from services.common.errors import Unavailable
from services.common.metrics import DEAD_LETTERS, HANDLER_SECONDS

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[list[Any]], Awaitable[None]]


class BusUnavailable(Unavailable):
    """The bus could not take or deliver messages; nothing was accepted, retry."""


@dataclass(frozen=True)
class Topic(Generic[M]):
    """A logical topic and the pydantic model of its messages."""

    name: str
    model: type[M]
    # On Kafka, a publish's messages for a partition may travel several to a record
    # (kafka.py). Only for topics tagtrail alone reads: others see one message a record.
    packed: bool = False

    def encode(self, message: M) -> bytes:
        return message.model_dump_json().encode()

    def decode(self, payload: bytes) -> M:
        return self.model.model_validate_json(payload)

    def readable(self, message: M) -> bytes:
        """The message as a dead letter shows it to a person."""
        return self.encode(message)

    def singles(self, env: Envelope, message: M) -> list[tuple[Envelope, M]]:
        """A message as the smallest messages a handler can take alone (with their
        envelopes), to find which fails when its batch does: itself."""
        return [(env, message)]


class Batch(Protocol):
    """A message that is many keyed rows at once, as columns (FixBatch)."""

    @property
    def tags(self) -> list[str]: ...

    @property
    def tag(self) -> npt.NDArray[np.int64]: ...

    def __len__(self) -> int: ...

    def take(self, rows: npt.NDArray[Any]) -> Self: ...

    @classmethod
    def concat(cls, batches: Sequence[Self]) -> Self: ...

    def encode(self) -> bytes: ...

    def readable(self) -> bytes: ...


def _no_decoder(payload: bytes) -> Any:
    raise TypeError("a BatchTopic needs its decoder")


@dataclass(frozen=True)
class BatchTopic(Topic[Any]):
    """A topic whose every message is a Batch: row i keyed by `tags[tag[i]]`. A publish
    splits a batch into one message a partition (lane), of at most `max_rows` rows, so
    that one key's rows stay in one partition, in order, and the bus's work is per
    batch, not per row. `model` is the batch's wire model (for its schema); `decoder`
    makes a batch from its JSON, raising pydantic's ValidationError if it is not one."""

    decoder: Callable[[bytes], Any] = field(default=_no_decoder)
    max_rows: int = 2000
    # On a bus that keeps its records (Kafka), a topic that stands for another is not
    # written: its publisher has handled that other topic's records, and publishes to
    # this one exactly the rows it took from them, once its work on them is done. So
    # rather than write them again, the bus lets this topic's readers read the other
    # topic, each record once the publishing group has committed past it (the group
    # named `after` when they subscribe). On the in-process bus it is a topic like any.
    stands_for: BatchTopic | None = None

    def encode(self, message: Any) -> bytes:
        return bytes(message.encode())

    def decode(self, payload: bytes) -> Any:
        return self.decoder(payload)

    def readable(self, message: Any) -> bytes:
        return bytes(message.readable())

    def singles(self, env: Envelope, message: Any) -> list[tuple[Envelope, Any]]:
        """A batch as batches of one row, each keyed by its own row's key."""
        rows = [message.take(np.array([i])) for i in range(len(message))]
        return [(Envelope(r.tags[int(r.tag[0])].encode(), b"", r), r) for r in rows]


def lane_parts(lane: npt.NDArray[np.int64], max_rows: int) -> list[npt.NDArray[np.int64]]:
    """How a publish splits a batch whose row i goes to lane `lane[i]`: the rows of each
    lane in their order, at most max_rows a part. Pure."""
    order = np.argsort(lane, kind="stable")
    starts = np.flatnonzero(np.r_[True, lane[order][1:] != lane[order][:-1]])
    ends = [*starts[1:].tolist(), len(order)]
    return [
        order[i : min(b, i + max_rows)]
        for a, b in zip(starts.tolist(), ends, strict=True)
        for i in range(a, b, max_rows)
    ]


@dataclass(slots=True)
class Envelope:
    """A raw message as it travels: its key and its encoded body. Not changed once made;
    not frozen, as a frozen dataclass is three times as slow to make (0.64 µs against
    0.21), and one is made a message a publish, twice a fix on its way through."""

    key: bytes
    value: bytes
    # The message itself, on a bus that never takes it out of the process: every group
    # gets the one (frozen) object instead of parsing the value again.
    message: Any = field(default=None, compare=False, repr=False)
    # What it counts for in a handler's batch: its rows, if it is a Batch.
    size: int = 1


def sized(envelopes: Sequence[Envelope], max_size: int) -> list[Sequence[Envelope]]:
    """The envelopes in order, in runs of at most max_size (by their sizes; a run holds at
    least one envelope)."""
    runs: list[Sequence[Envelope]] = []
    start = total = 0
    for i, e in enumerate(envelopes):
        if i > start and total + e.size > max_size:
            runs.append(envelopes[start:i])
            start, total = i, 0
        total += e.size
    if start < len(envelopes):
        runs.append(envelopes[start:])
    return runs


@dataclass(frozen=True, eq=False)
class Gathering:
    """Batches for one topic that wait to be published together, and the task that
    publishes them."""

    batches: list[Any]
    sent: asyncio.Task[None]


@dataclass
class Subscription:
    group: str
    topic: Topic[Any]
    handler: Handler
    max_batch: int
    # The group that publishes the topic, if the topic stands for another (BatchTopic).
    after: str | None = None


def standing_for(topic: Topic[Any]) -> BatchTopic | None:
    """The topic this one stands for, if it stands for one (BatchTopic.stands_for)."""
    return topic.stands_for if isinstance(topic, BatchTopic) else None


def is_transient(exc: BaseException) -> bool:
    """Failures of the machinery around a handler, which a retry can cure."""
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or is_transient(exc.orig or exc)
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | ConnectionError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.TooManyConnectionsError,
    )


@dataclass
class Backoff:
    first: float = 0.2
    cap: float = 10.0
    _next: float = field(default=0.0, init=False)

    async def wait(self) -> None:
        self._next = min(self.cap, self._next * 2 or self.first)
        await asyncio.sleep(self._next)


class Bus(ABC):
    """Publish batches keyed by tag id; subscribe consumer groups to topics."""

    def __init__(self, dead_letter: Topic[Any]) -> None:
        self.dead_letter = dead_letter
        self.subscriptions: list[Subscription] = []
        # publish_batch's batches waiting for the topic's publish in flight, and the lock
        # that keeps one in flight a topic.
        self._gathering: dict[str, Gathering] = {}
        self._sending: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def subscribe(
        self,
        group: str,
        topic: Topic[Any],
        handler: Handler,
        *,
        max_batch: int = 2000,
        after: str | None = None,
    ) -> None:
        """Registers a handler; call before start(). `after`: the group that publishes
        the topic, which a topic that stands for another needs (BatchTopic)."""
        other = standing_for(topic)
        if other is not None and after is None:
            raise ValueError(f"{topic.name} stands for {other.name}: name its publisher")
        self.subscriptions.append(Subscription(group, topic, handler, max_batch, after))

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def publish_raw(self, topic: Topic[Any], envelopes: Sequence[Envelope]) -> None:
        """Returns only once every envelope is durable on this bus."""

    @abstractmethod
    async def ping(self) -> bool: ...

    # A bus whose messages never leave the process hands them over as they are: nothing
    # is serialised unless it has to be kept (a dead letter).
    in_process: bool = False

    async def publish(self, topic: Topic[M], messages: Sequence[tuple[str, M]]) -> None:
        """Publishes (key, message) pairs; returns once they are durable. A packed
        topic's messages are encoded by the bus, many at once, as it packs them."""
        if messages:
            encode = not (self.in_process or topic.packed)
            await self.publish_raw(
                topic,
                [
                    Envelope(key.encode(), topic.encode(m) if encode else b"", m)
                    for key, m in messages
                ],
            )

    @abstractmethod
    async def lanes_of(self, topic: Topic[Any], keys: Sequence[str]) -> list[int]:
        """The partition (lane) each key's messages go to."""

    async def publish_batch(self, topic: BatchTopic, batch: Batch) -> None:
        """Publishes a batch's rows, a message a partition (lane) of at most
        topic.max_rows; returns once they are durable, raising BusUnavailable if they
        may not be.

        On a bus whose messages leave the process, batches published while a topic's
        publish is in flight wait for it to end and then go together, one publish: a
        message then holds several requests' rows, and a message's cost is mostly its
        tags and subjects, written and read once a message each (docs/benchmarks.md,
        twenty-second session). With no publish in flight a batch goes at once. If
        that publish fails, each of its callers is told so."""
        if not len(batch):
            return
        if self.in_process:
            await self._publish_split(topic, batch)
            return
        gathering = self._gathering.get(topic.name)
        if gathering is None:
            batches: list[Any] = []
            sent = asyncio.create_task(self._publish_gathered(topic, batches))
            # Its failure is each caller's; seen here too, in case every caller is gone.
            sent.add_done_callback(lambda t: t.cancelled() or t.exception())
            gathering = self._gathering[topic.name] = Gathering(batches, sent)
        gathering.batches.append(batch)
        try:
            # A caller that gives up (a request cancelled) leaves the others' publish be.
            await asyncio.shield(gathering.sent)
        except asyncio.CancelledError:
            if gathering.sent.cancelled():  # the publish was stopped, not this caller
                raise BusUnavailable("the publish was stopped before it was done") from None
            raise

    async def _publish_gathered(self, topic: BatchTopic, batches: list[Any]) -> None:
        lock = self._sending[topic.name]
        try:
            await lock.acquire()
        finally:
            # From here on, or if stopped while it waited, batches gather for the next.
            gathering = self._gathering.get(topic.name)
            if gathering is not None and gathering.batches is batches:
                del self._gathering[topic.name]
        try:
            await self._publish_split(topic, type(batches[0]).concat(batches))
        finally:
            lock.release()

    async def _publish_split(self, topic: BatchTopic, batch: Batch) -> None:
        """publish_batch's work, for one batch."""
        lane = np.array(await self.lanes_of(topic, batch.tags), dtype=np.int64)[batch.tag]
        envelopes = []
        for rows in lane_parts(lane, topic.max_rows):
            part = batch.take(rows)
            envelopes.append(
                Envelope(
                    batch.tags[int(batch.tag[rows[0]])].encode(),
                    b"" if self.in_process else topic.encode(part),
                    part,
                    len(rows),
                )
            )
        await self.publish_raw(topic, envelopes)

    async def deliver(self, sub: Subscription, envelopes: Sequence[Envelope]) -> None:
        """Hands a batch to a handler: transient failures are retried until they pass,
        a message that fails on its own goes to the dead-letter topic, so the batch
        around it still gets through. Returns when the batch's work is done."""
        parsed: list[tuple[Envelope, Any]] = []
        for env in envelopes:
            if env.message is not None:
                parsed.append((env, env.message))
                continue
            try:
                parsed.append((env, sub.topic.decode(env.value)))
            except ValidationError as exc:
                await self._dead_letter(sub, env, f"undecodable: {exc}")
        if not parsed:
            return
        if await self._attempt(sub, [m for _, m in parsed]) is None:
            return
        # The batch failed for a reason a retry will not cure: find the culprit(s), row
        # by row in a Batch.
        for env, message in parsed:
            for one, m in sub.topic.singles(env, message):
                failure = await self._attempt(sub, [m])
                if failure is not None:
                    await self._dead_letter(sub, one, f"{type(failure).__name__}: {failure}")

    async def _attempt(self, sub: Subscription, batch: list[Any]) -> Exception | None:
        """Runs the handler, retrying transient failures; returns the failure that
        no retry cures, or None on success."""
        backoff = Backoff()
        while True:
            started = time.perf_counter()
            try:
                await sub.handler(batch)
            except Exception as exc:
                if is_transient(exc):
                    log.warning("%s: transient failure, retrying: %r", sub.group, exc)
                    await backoff.wait()
                    continue
                log.exception("%s: handler failed on %d message(s)", sub.group, len(batch))
                return exc
            HANDLER_SECONDS.labels(sub.group).observe(time.perf_counter() - started)
            return None

    async def _dead_letter(self, sub: Subscription, env: Envelope, error: str) -> None:
        DEAD_LETTERS.labels(sub.group, sub.topic.name).inc()
        letter = DeadLetter(
            group=sub.group,
            topic=sub.topic.name,
            key=env.key.decode(errors="replace"),
            payload=(
                env.value or (sub.topic.readable(env.message) if env.message is not None else b"")
            ).decode(errors="replace"),
            error=error[:4000],
            failed_at=datetime.now(UTC),
        )
        await self.publish(self.dead_letter, [(letter.key, letter)])
