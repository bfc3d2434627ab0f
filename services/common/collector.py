"""When Python's cycle collector runs in a server: by the clock, not by allocations.

The collector starts a young collection whenever live container objects have grown by
a threshold since the last one. A batch on its way through holds thousands of them
(parsed JSON, models, records) for as long as its request lasts, so at any threshold
small enough to be reached, every collection walks a few batches that are all still
alive: at (50,000, 20, 100), 22 s of the throughput benchmark's load made 128 young
collections of 9 ms and 6 of the middle generation of 42 ms, 63 ms of every second
(docs/benchmarks.md, seventh session). Almost everything the pipeline makes dies by
reference counting, which the collector is not needed for; it is only
there for reference cycles (an exception's traceback, for one).

So the thresholds are set so high that load alone seldom reaches them, and a
collection of the young and middle generations runs every 10 s instead, with a full
one every 5 min: whatever cycles the server makes are freed within seconds,
whatever the load. What start-up made (prepared zones, the ORM's metadata, the
modules) is frozen out of the collector's sight altogether.
"""

from __future__ import annotations

import gc

from services.common.periodic import Periodic

# A young collection when live objects have grown by a million: under load a batch's
# objects die long before that many more are made.
THRESHOLDS = (1_000_000, 50, 100)
EVERY_S = 10.0
# Every this many rounds a full collection (every 5 min): a few tens of milliseconds,
# since start-up's objects are frozen.
FULL_EVERY = 30


def tune() -> None:
    """The thresholds: before anything is started."""
    gc.set_threshold(*THRESHOLDS)


def freeze() -> None:
    """Once started: what start-up made is kept out of every later collection."""
    gc.collect()
    gc.freeze()


class Collector:
    """Collects the young and middle generations every EVERY_S seconds and everything
    every FULL_EVERY rounds."""

    def __init__(self, every_s: float = EVERY_S) -> None:
        self.rounds = 0
        self._periodic = Periodic("collector", self.collect, every_s)

    async def collect(self) -> None:
        self.rounds += 1
        gc.collect(2 if self.rounds % FULL_EVERY == 0 else 1)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
