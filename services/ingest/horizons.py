"""What ingest remembers of each tag's stored trail, so that a fix it knows cannot be stored
yet is taken as new without asking the database.

Every request used to look up each of its fixes in the trail (`stored_positions`), to
tell a re-send from a new fix: a probe of the primary key a fix, 7 to 13 µs of
PostgreSQL a fix at full load, the costliest statement after the COPY itself
(docs/benchmarks.md, eleventh and twelfth sessions). But nearly every fix is new, and
ingest has seen every fix stored since it met the tag: only the fixes it cannot vouch
for need looking up.

For each tag met, a *horizon*: a time at or before which the tag's stored fixes are not
known, and after it, the fixes ingest has put on the bus since (their keys, tag and
time, in two generations: the newer holds at most `keys` keys, and when it is full
the older is folded into a floor under every horizon and dropped). A fix is looked up if it is at or
before its tag's horizon, or its key is remembered (a re-send); any other fix of a met
tag cannot be stored. Out of order is fine: requests overtake each other, and a fix
older than one already taken is still new unless its own key is remembered.

How this stays true: fixes reach the trail only through ingest, which remembers every
fix's key before putting it on the bus (remembering a key or raising a horizon is
always safe: it only makes more fixes looked up). A tag new to the process gets its
horizon from the trail itself, its newest stored fix after the request's newest fix
(a probe of the primary key a day's partition from then on), or that fix; its fixes in
that request are all looked up.

What it cannot see: fixes stored through another process (a second API replica behind
the same load balancer). A re-send of one of those, reaching this process after it has
met the tag, is taken for a new fix: the store keeps it once (the trail's primary key,
as for a re-send that races its twin), and the answer counts it accepted rather than
duplicate. Everything is forgotten every `TAGTRAIL_INGEST_HORIZON_TTL_S`, which bounds
that window; a single API process has no such window."""

from __future__ import annotations

import time

import asyncpg
import numpy as np
import numpy.typing as npt

from services.ingest import repository
from services.ingest.batch import FixBatch

# A fix's tag and time as one number (keys_of).
Key = int

# Mixes a tag's hash into a key (2^64 / the golden ratio, odd: every tag hash a
# different multiple).
_MIX = np.uint64(0x9E3779B97F4A7C15)


def keys_of(batch: FixBatch) -> list[Key]:
    """Each fix's key, its tag and time, as one number: the same for the same tag and
    time in any batch of this process. Two keys may share a number (about one pair in
    2^64), which costs a look-up, never a fix: a shared number only makes a fix unsure.
    A number hashes and compares at once; a (tag, time) tuple hashed its parts every
    time it was met, three times a fix, and was made a fix (docs/benchmarks.md,
    twentieth session)."""
    tag_hashes = np.array([hash(t) for t in batch.tags], dtype=np.int64).view(np.uint64)
    keys: list[Key] = (tag_hashes[batch.tag] * _MIX + batch.ts.view(np.uint64)).tolist()
    return keys


class FixHorizons:
    """Each met tag's horizon (seconds since 1970) and the keys taken since, for the tags
    a process has met in the last `ttl_s` seconds; at most `max_tags` tags, and `keys`
    keys a generation (two kept, about 60 bytes a key). A generation must outlast the
    fixes in flight at once (8 requests of 2,000 in the benchmark), or requests that
    overtake others are looked up. Folding a generation raises every tag's horizon to
    the newest time among its keys, whichever the tag (a floor under every horizon):
    cheaper than a tag at a time, and as true, since raising a horizon is always safe;
    it costs a look-up only for a fix older than a whole generation's newest, a late
    one."""

    def __init__(self, ttl_s: float, max_tags: int = 100_000, keys: int = 50_000) -> None:
        self.ttl_s = ttl_s
        self.max_tags = max_tags
        self.keys = keys
        self.forget()

    def forget(self) -> None:
        self._horizon: dict[str, float] = {}
        self._highest = -np.inf  # of the horizons above
        self._floor = -np.inf
        # The two generations of keys, each with the newest time among them.
        self._older: set[Key] = set()
        self._older_newest = -np.inf
        self._newer: set[Key] = set()
        self._newer_newest = -np.inf
        self._since = time.monotonic()

    def _fold(self) -> None:
        """The older generation into the floor; the newer becomes the older."""
        self._floor = max(self._floor, self._older_newest)
        self._older, self._older_newest = self._newer, self._newer_newest
        self._newer, self._newer_newest = set(), -np.inf

    async def unsure(self, conn: asyncpg.Connection, batch: FixBatch) -> npt.NDArray[np.bool_]:
        """Which of the batch's fixes may be stored already, the batch being about to go
        on the bus: every fix's key is remembered."""
        if time.monotonic() - self._since >= self.ttl_s or len(self._horizon) > self.max_tags:
            self.forget()
        used = np.unique(batch.tag).tolist()
        names = [batch.tags[i] for i in used]
        unmet = [i for i, name in zip(used, names, strict=True) if name not in self._horizon]
        if unmet:
            newest = np.full(len(batch.tags), -np.inf)
            np.maximum.at(newest, batch.tag, batch.ts)
            after = newest[unmet].tolist()
            tags = [batch.tags[i] for i in unmet]
            stored = await repository.newest_after(conn, tags, after)
            for tag, first in zip(tags, after, strict=True):
                # Its fixes here are at or before it, so every one is looked up.
                t = max(self._horizon.get(tag, -np.inf), stored.get(tag, first))
                self._horizon[tag] = t
                self._highest = max(self._highest, t)
        # From here to the end nothing is awaited: the look-up and remembering the keys
        # are one step for every other request.
        if self._highest > self._floor:
            # (Read again after the look-up: another request may have forgotten them.)
            get = self._horizon.get
            horizon = np.full(len(batch.tags), np.inf)
            horizon[used] = np.maximum([get(name, np.inf) for name in names], self._floor)
            unsure = batch.ts <= horizon[batch.tag]
        else:
            unsure = batch.ts <= self._floor
        keys = keys_of(batch)
        seen = self._newer.intersection(keys) | self._older.intersection(keys)
        if seen:
            unsure |= np.fromiter((k in seen for k in keys), dtype=bool, count=len(keys))
        self._newer.update(keys)
        if len(batch):
            self._newer_newest = max(self._newer_newest, float(batch.ts.max()))
        if len(self._newer) > self.keys:
            self._fold()
        return unsure
