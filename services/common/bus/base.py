"""The bus interface and the delivery rules both implementations share."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import asyncpg
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


@dataclass
class Subscription:
    group: str
    topic: Topic[Any]
    handler: Handler
    max_batch: int


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

    def subscribe(
        self, group: str, topic: Topic[Any], handler: Handler, *, max_batch: int = 2000
    ) -> None:
        """Registers a handler; call before start()."""
        self.subscriptions.append(Subscription(group, topic, handler, max_batch))

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
        # The batch failed for a reason a retry will not cure: find the culprit(s).
        for env, message in parsed:
            failure = await self._attempt(sub, [message])
            if failure is not None:
                await self._dead_letter(sub, env, f"{type(failure).__name__}: {failure}")

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
                env.value or (sub.topic.encode(env.message) if env.message is not None else b"")
            ).decode(errors="replace"),
            error=error[:4000],
            failed_at=datetime.now(UTC),
        )
        await self.publish(self.dead_letter, [(letter.key, letter)])
