"""The servers' cycle collection: load seldom reaches its thresholds, so the clock has to
free reference cycles."""

from __future__ import annotations

import asyncio
import gc
import weakref

from services.common import collector


class Node:
    def __init__(self) -> None:
        self.me = self


async def test_cycles_are_freed_by_the_clock_at_the_servers_thresholds() -> None:
    before = gc.get_threshold()
    gc.collect()
    collector.tune()
    try:
        cycle = Node()
        gone = weakref.ref(cycle)
        del cycle
        # Only the collector frees a cycle, and no allocation threshold is near.
        await asyncio.sleep(0.05)
        assert gone() is not None
        collecting = collector.Collector(every_s=0.01)
        collecting.start()
        try:
            for _ in range(200):
                if gone() is None:
                    break
                await asyncio.sleep(0.01)
        finally:
            await collecting.stop()
        assert gone() is None
        assert collecting.rounds >= 1
    finally:
        gc.set_threshold(*before)
