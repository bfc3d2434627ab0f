"""What ingest remembers of each tag's stored trail, so that a fix it knows cannot be stored
yet is taken as new without asking the database.

Every request used to look up each of its fixes in the trail (`stored_positions`), to
tell a re-send from a new fix: a probe of the primary key a fix, 7 to 11 µs of
PostgreSQL a fix at full load, the costliest statement after the COPY itself
(docs/benchmarks.md, eleventh and twelfth sessions). But nearly every fix is new, and
ingest has seen every fix stored since it met the tag: only the fixes it cannot vouch
for need looking up.

For each tag met, a *horizon*: a time at or before which the tag's stored fixes are not
known, and after it, the fixes ingest has put on the bus since (their keys, tag and
time, in two generations: the newer holds at most `keys` keys, and when it is full
the older is folded into the horizons and dropped). A fix is looked up if it is at or
before its tag's horizon, or its key is remembered (a re-send); any other fix of a met
tag cannot be stored. Out of order is fine: requests overtake each other, and a fix
older than one already taken is still new unless its own key is remembered.

How this stays true: fixes reach the trail only through ingest, which remembers every
fix's key before putting it on the bus (remembering a key or raising a horizon is
always safe: it only makes more fixes looked up). A tag new to the process gets its
horizon from the trail itself, its newest stored fix after the request's newest fix
(a probe or two of the primary key), or that fix; its fixes in that request are all
looked up.

What it cannot see: fixes stored through another process (a second API replica behind
the same load balancer). A re-send of one of those, reaching this process after it has
met the tag, is taken for a new fix: the store keeps it once (the trail's primary key,
as for a re-send that races its twin), and the answer counts it accepted rather than
duplicate. Everything is forgotten every `TAGTRAIL_INGEST_HORIZON_TTL_S`, which bounds
that window; a single API process has no such window."""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg
import numpy as np
import numpy.typing as npt

from services.ingest import repository
from services.ingest.batch import FixBatch

Key = tuple[str, float]


class FixHorizons:
    """Each met tag's horizon (seconds since 1970) and the keys taken since, for the tags
    a process has met in the last `ttl_s` seconds; at most `max_tags` tags, and `keys`
    keys a generation (two kept)."""

    def __init__(self, ttl_s: float, max_tags: int = 100_000, keys: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_tags = max_tags
        self.keys = keys
        self.forget()

    def forget(self) -> None:
        self._horizon: dict[str, float] = {}
        # The two generations of keys, each with the newest time of each tag among them
        # (what its tag's horizon becomes when it is folded).
        self._older: set[Key] = set()
        self._older_newest: dict[str, float] = {}
        self._newer: set[Key] = set()
        self._newer_newest: dict[str, float] = {}
        self._since = time.monotonic()

    def _fold(self) -> None:
        """The older generation into the horizons; the newer becomes the older."""
        horizon = self._horizon
        for tag, t in self._older_newest.items():
            if t > horizon.get(tag, -np.inf):
                horizon[tag] = t
        self._older, self._older_newest = self._newer, self._newer_newest
        self._newer, self._newer_newest = set(), {}

    async def unsure(
        self, conn: asyncpg.Connection, batch: FixBatch, keys: Sequence[Key]
    ) -> npt.NDArray[np.bool_]:
        """Which of the batch's fixes (`keys`: each fix's tag and time) may be stored
        already, the batch being about to go on the bus: every key is remembered."""
        if time.monotonic() - self._since > self.ttl_s or len(self._horizon) > self.max_tags:
            self.forget()
        newest = np.full(len(batch.tags), -np.inf)
        np.maximum.at(newest, batch.tag, batch.ts)
        used = np.flatnonzero(newest > -np.inf).tolist()
        tags = [batch.tags[i] for i in used]
        unmet = [i for i, t in zip(used, tags, strict=True) if t not in self._horizon]
        if unmet:
            after = newest[unmet].tolist()
            stored = await repository.newest_after(conn, [batch.tags[i] for i in unmet], after)
            for i, first in zip(unmet, after, strict=True):
                tag = batch.tags[i]
                # Its fixes here are at or before it, so every one is looked up.
                self._horizon[tag] = max(self._horizon.get(tag, -np.inf), stored.get(tag, first))
        # From here to the end nothing is awaited: the look-up and remembering the keys
        # are one step for every other request.
        horizons = self._horizon
        horizon = np.full(len(batch.tags), np.inf)
        horizon[used] = [horizons.get(t, np.inf) for t in tags]
        unsure = batch.ts <= horizon[batch.tag]
        seen = self._newer.intersection(keys) | self._older.intersection(keys)
        if seen:
            unsure |= np.fromiter((k in seen for k in keys), dtype=bool, count=len(keys))
        self._newer.update(keys)
        known = self._newer_newest
        for tag, t in zip(tags, newest[used].tolist(), strict=True):
            if t > known.get(tag, -np.inf):
                known[tag] = t
        if len(self._newer) > self.keys:
            self._fold()
        return unsure
