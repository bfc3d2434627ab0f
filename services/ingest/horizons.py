"""What ingest remembers of each tag's stored trail, so that a fix newer than anything its
tag has stored is known new without asking the database.

Every request used to look up each of its fixes in the trail (`stored_positions`), to
tell a re-send from a new fix: a probe of the primary key a fix, 9 to 11 µs of
PostgreSQL a fix at full load, the costliest statement after the COPY itself
(docs/benchmarks.md, eleventh and twelfth sessions). But tags report in time order, so
nearly every fix is newer than every fix its tag has stored; only late, buffered
uploads and re-sends are not. A tag's *horizon* is a time no stored fix of the tag is
later than. Only fixes at or before their tag's horizon are looked up.

How a horizon stays true: fixes reach the trail only through ingest, which moves the
horizon of each fix's tag to the fix before putting it on the bus (raising a horizon is
always safe: it only makes more fixes looked up). A tag new to the process gets its
horizon from the trail itself, its newest stored fix after the request's newest fix (a
probe or two of the primary key), and its fixes in that request are all looked up.

What it cannot see: fixes stored through another process (a second API replica behind
the same load balancer). A re-send of one of those, reaching this process after it has
met the tag, is taken for a new fix: the store keeps it once (the trail's primary key,
as for a re-send that races its twin today), and the answer counts it accepted rather
than duplicate. Horizons are forgotten every `TAGTRAIL_INGEST_HORIZON_TTL_S`, which
bounds that window; a single API process has no such window."""

from __future__ import annotations

import time

import asyncpg
import numpy as np
import numpy.typing as npt

from services.ingest import repository
from services.ingest.batch import FixBatch


class FixHorizons:
    """Each tag's horizon (seconds since 1970), for the tags a process has met in the last
    `ttl_s` seconds; at most `max_tags`."""

    def __init__(self, ttl_s: float, max_tags: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_tags = max_tags
        self._times: dict[str, float] = {}
        self._since = time.monotonic()

    def forget(self) -> None:
        self._times = {}
        self._since = time.monotonic()

    async def unsure(self, conn: asyncpg.Connection, batch: FixBatch) -> npt.NDArray[np.bool_]:
        """Which of the batch's fixes may be stored already (at or before their tag's
        horizon), the batch being about to go on the bus: every tag's horizon moves to its
        newest fix here."""
        if time.monotonic() - self._since > self.ttl_s or len(self._times) > self.max_tags:
            self.forget()
        newest = np.full(len(batch.tags), -np.inf)
        np.maximum.at(newest, batch.tag, batch.ts)
        used = np.flatnonzero(newest > -np.inf).tolist()
        tags = [batch.tags[i] for i in used]
        times = self._times
        unmet = [i for i, t in zip(used, tags, strict=True) if t not in times]
        if unmet:
            after = newest[unmet].tolist()
            stored = await repository.newest_after(conn, [batch.tags[i] for i in unmet], after)
            times = self._times  # as it is now: forgotten meanwhile, or moved by others
            for i, first in zip(unmet, after, strict=True):
                tag = batch.tags[i]
                # Its fixes here are at or before it, so every one is looked up.
                times[tag] = max(times.get(tag, -np.inf), stored.get(tag, first))
        # From here to the end nothing is awaited: the look-up and the move are one step
        # for every other request.
        horizon = np.full(len(batch.tags), np.inf)
        horizon[used] = [times.get(t, np.inf) for t in tags]
        unsure = batch.ts <= horizon[batch.tag]
        for tag, t in zip(tags, newest[used].tolist(), strict=True):
            if t > times.get(tag, -np.inf):
                times[tag] = t
        return unsure
