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

from services.common.bus.base import Bus, BusUnavailable, Envelope, Subscription, Topic
from services.common.metrics import CONSUMER_LAG


@dataclass
class _Item:
    envelope: Envelope
    done: asyncio.Future[None]


class MemoryBus(Bus):
    in_process = True

    def __init__(self, dead_letter: Topic[Any]) -> None:
        super().__init__(dead_letter)
        self._queues: dict[str, list[tuple[Subscription, asyncio.Queue[_Item]]]] = defaultdict(list)
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False

    async def start(self) -> None:
        for sub in self.subscriptions:
            queue: asyncio.Queue[_Item] = asyncio.Queue()
            self._queues[sub.topic.name].append((sub, queue))
            self._tasks.append(asyncio.create_task(self._consume(sub, queue), name=sub.group))
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
            for _, queue in subscribers:
                while not queue.empty():
                    _fail([queue.get_nowait()], BusUnavailable("the bus stopped"))
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
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[None]] = []
        for _, queue in subscribers:
            for env in envelopes:
                item = _Item(env, loop.create_future())
                queue.put_nowait(item)
                waits.append(item.done)
        if waits:
            await asyncio.gather(*waits)

    async def _consume(self, sub: Subscription, queue: asyncio.Queue[_Item]) -> None:
        lag = CONSUMER_LAG.labels(sub.group, sub.topic.name)
        while True:
            items = [await queue.get()]
            while len(items) < sub.max_batch and not queue.empty():
                items.append(queue.get_nowait())
            lag.set(queue.qsize())
            try:
                await self.deliver(sub, [i.envelope for i in items])
            except asyncio.CancelledError:
                _fail(items, BusUnavailable("the bus stopped"))
                raise
            except Exception as exc:  # only a dead-letter publish can get here
                _fail(items, exc)
                continue
            for i in items:
                if not i.done.done():
                    i.done.set_result(None)


def _fail(items: list[_Item], exc: BaseException) -> None:
    for i in items:
        if not i.done.done():
            i.done.set_exception(exc)
