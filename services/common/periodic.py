"""A background task that repeats a unit of work, for the roles that poll or watch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `work` every `interval_s` until stopped. When work reports that it did
    something (a truthy result), it runs again at once: a backlog drains without
    waiting. A failure is logged and retried next round; it never ends the loop."""

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[object]],
        interval_s: float,
        *,
        first_wait: bool = True,
    ) -> None:
        self.name = name
        self.work = work
        self.interval_s = interval_s
        self.first_wait = first_wait
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        if self.first_wait:
            await asyncio.sleep(self.interval_s)
        while True:
            try:
                busy = await self.work()
            except Exception:
                log.exception("%s failed; trying again in %.0f s", self.name, self.interval_s)
                busy = False
            if not busy:
                await asyncio.sleep(self.interval_s)
