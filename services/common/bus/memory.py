"""The in-process bus: the embedded default for one machine (`tagtrail run`).

Nothing here survives the process, so "durable on the bus" is defined the only honest
way: publish returns when every subscribed group has finished handling the message
(stored, checked, alerted). An ingest request therefore answers 202 only after its fixes
are in PostGIS; if the process dies first, the supplier gets no 202 and re-sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zlib import crc32

from services.common.bus.base import Bus, BusUnavailable, Envelope, Subscription, Topic, sized
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
    """A publish's messages for one lane: they are queued, taken and marked handled
    together, not one by one."""

    envelopes: Sequence[Envelope]
    publish: _Publish
    size: int


class _Lane:
    """One consumer's queue of items, taken a batch of up to max_batch messages at once."""

    def __init__(self) -> None:
        self.items: deque[_Item] = deque()
        self.messages = 0
        self._ready = asyncio.Event()

    def put(self, item: _Item) -> None:
        self.items.append(item)
        self.messages += item.size
        self._ready.set()

    async def take(self, max_batch: int) -> list[_Item]:
        """The oldest items, whole, up to max_batch messages (rows of a Batch; at least
        one item; publish splits items to fit)."""
        while not self.items:
            self._ready.clear()
            await self._ready.wait()
        taken = [self.items.popleft()]
        n = taken[0].size
        while self.items and n + self.items[0].size <= max_batch:
            taken.append(self.items.popleft())
            n += taken[-1].size
        self.messages -= n
        return taken


class MemoryBus(Bus):
    """Each group's messages are split into `lanes` by key (its CRC-32: the same lanes in
    every run), a consumer a lane: one key is always in the same lane (in order, as in a
    Kafka partition), and a group works on up to `lanes` batches at once, so one batch
    waiting on PostgreSQL does not hold up the rest. A publish's messages for a lane
    travel as one item (split to fit max_batch), so the bus's own work is per batch, not
    per message."""

    in_process = True

    def __init__(self, dead_letter: Topic[Any], lanes: int = 1) -> None:
        super().__init__(dead_letter)
        self.lanes = lanes
        self._queues: dict[str, list[tuple[Subscription, list[_Lane]]]] = defaultdict(list)
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False

    async def start(self) -> None:
        for sub in self.subscriptions:
            lanes = [_Lane() for _ in range(self.lanes)]
            self._queues[sub.topic.name].append((sub, lanes))
            for i, lane in enumerate(lanes):
                task = asyncio.create_task(self._consume(sub, lane, lanes), name=f"{sub.group}/{i}")
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
            for _, lanes in subscribers:
                for lane in lanes:
                    _fail(list(lane.items), BusUnavailable("the bus stopped"))
                    lane.items.clear()
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
        n = self.lanes
        by_lane: dict[int, list[Envelope]] = defaultdict(list)
        if n == 1:
            by_lane[0] = list(envelopes)
        else:
            for env in envelopes:
                by_lane[crc32(env.key) % n].append(env)
        chunks = [
            (lanes[lane], run)
            for sub, lanes in subscribers
            for lane, part in by_lane.items()
            for run in sized(part, sub.max_batch)
        ]
        publish = _Publish(len(chunks), asyncio.get_running_loop().create_future())
        for lane, chunk in chunks:
            lane.put(_Item(chunk, publish, sum(e.size for e in chunk)))
        await publish.done

    async def lanes_of(self, topic: Topic[Any], keys: Sequence[str]) -> list[int]:
        return [crc32(k.encode()) % self.lanes for k in keys]

    async def _consume(self, sub: Subscription, lane: _Lane, lanes: list[_Lane]) -> None:
        lag = CONSUMER_LAG.labels(sub.group, sub.topic.name)
        while True:
            items = await lane.take(sub.max_batch)
            lag.set(sum(q.messages for q in lanes))
            try:
                await self.deliver(sub, [e for i in items for e in i.envelopes])
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
