"""The in-process bus: the embedded default for one machine (`tagtrail run`).

Nothing here survives the process, so "durable on the bus" is defined the only honest
way: publish returns when every subscribed group has finished handling the message
(stored, checked, alerted). An ingest request therefore answers 202 only after its fixes
are in PostGIS; if the process dies first, the supplier gets no 202 and re-sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zlib import crc32

from services.common.bus.base import Bus, BusUnavailable, Envelope, Subscription, Topic
from services.common.metrics import CONSUMER_LAG


@dataclass
class _Publish:
    """One publish call: how many of its deliveries are still to be handled, and the
    future its caller waits on."""

    left: int
    done: asyncio.Future[None]

    def handled(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)

    def failed(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


@dataclass(slots=True)
class _Item:
    envelope: Envelope
    publish: _Publish


class MemoryBus(Bus):
    """Each group's messages are split into `lanes` by key (its CRC-32: the same lanes in
    every run), a consumer a lane: one key is always in the same lane (in order, as in a
    Kafka partition), and a group works on up
    to `lanes` batches at once, so one batch waiting on PostgreSQL does not hold up the
    rest."""

    in_process = True

    def __init__(self, dead_letter: Topic[Any], lanes: int = 1) -> None:
        super().__init__(dead_letter)
        self.lanes = lanes
        self._queues: dict[str, list[list[asyncio.Queue[_Item]]]] = defaultdict(list)
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False

    async def start(self) -> None:
        for sub in self.subscriptions:
            lanes: list[asyncio.Queue[_Item]] = [asyncio.Queue() for _ in range(self.lanes)]
            self._queues[sub.topic.name].append(lanes)
            for i, queue in enumerate(lanes):
                task = asyncio.create_task(
                    self._consume(sub, queue, lanes), name=f"{sub.group}/{i}"
                )
                self._tasks.append(task)
        self._running = True

    async def stop(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        # Whoever still waits on a message that will now never be handled hears so.
        for subscribers in self._queues.values():
            for lanes in subscribers:
                for queue in lanes:
                    while not queue.empty():
                        queue.get_nowait().publish.failed(BusUnavailable("the bus stopped"))
        self._queues.clear()

    async def ping(self) -> bool:
        return self._running and all(not t.done() for t in self._tasks)

    async def publish_raw(self, topic: Topic[Any], envelopes: Sequence[Envelope]) -> None:
        if not self._running:
            raise BusUnavailable("the in-process bus is not running")
        subscribers = self._queues.get(topic.name)
        if not subscribers:
            # Nothing here would ever handle it: accepting it would be losing it.
            raise BusUnavailable(f"no worker handles {topic.name!r} in this process")
        if not envelopes:
            return
        publish = _Publish(
            len(subscribers) * len(envelopes), asyncio.get_running_loop().create_future()
        )
        n = self.lanes
        for lanes in subscribers:
            for env in envelopes:
                lanes[crc32(env.key) % n if n > 1 else 0].put_nowait(_Item(env, publish))
        await publish.done

    async def _consume(
        self, sub: Subscription, queue: asyncio.Queue[_Item], lanes: list[asyncio.Queue[_Item]]
    ) -> None:
        lag = CONSUMER_LAG.labels(sub.group, sub.topic.name)
        while True:
            items = [await queue.get()]
            while len(items) < sub.max_batch and not queue.empty():
                items.append(queue.get_nowait())
            lag.set(sum(q.qsize() for q in lanes))
            try:
                await self.deliver(sub, [i.envelope for i in items])
            except asyncio.CancelledError:
                _fail(items, BusUnavailable("the bus stopped"))
                raise
            except Exception as exc:  # only a dead-letter publish can get here
                _fail(items, exc)
                continue
            for i in items:
                i.publish.handled()


def _fail(items: list[_Item], exc: BaseException) -> None:
    for i in items:
        i.publish.failed(exc)
