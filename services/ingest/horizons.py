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
from services.registry.service import TagCodes

# A fix's tag and time as one number (keys_of).
Key = int

# Mixes a tag's number into a key (2^64 / the golden ratio, odd: every tag a different
# multiple).
_MIX = np.uint64(0x9E3779B97F4A7C15)


def keys_of(codes: npt.NDArray[np.int64], ts: npt.NDArray[np.float64]) -> list[Key]:
    """Each fix's key, its tag's number (`codes`, a fix) and its time, as one number:
    the same for the same tag and time in any batch while the tags' numbers last. Two
    keys may share a number (about one pair in 2^64), which costs a look-up, never a
    fix: a shared number only makes a fix unsure. A number hashes and compares at
    once; a (tag, time) tuple hashed its parts every time it was met, three times a
    fix, and was made a fix (docs/benchmarks.md, twentieth session)."""
    keys: list[Key] = (codes.astype(np.uint64) * _MIX + ts.view(np.uint64)).tolist()
    return keys


def _grown(a: npt.NDArray[np.float64], size: int) -> npt.NDArray[np.float64]:
    """The array lengthened to `size`, NaN after its values."""
    grown = np.full(size, np.nan)
    grown[: len(a)] = a
    return grown


class FixHorizons:
    """Each met tag's horizon (seconds since 1970) and the keys taken since, for the tags
    a process has met in the last `ttl_s` seconds, kept by the tags' numbers (`codes`,
    shared with the process's TagDirectory; their own if not given; when the numbers
    are dropped, so is everything here), and `keys` keys a generation (two kept, about
    60 bytes a key). A generation must outlast the fixes in flight at once (32 requests
    of 2,000 in the benchmark), or requests that overtake others are looked up. Folding
    a generation raises every tag's horizon to the newest time among its keys,
    whichever the tag (a floor under every horizon): cheaper than a tag at a time, and
    as true, since raising a horizon is always safe; it costs a look-up only for a fix
    older than a whole generation's newest, a late one."""

    def __init__(
        self,
        ttl_s: float,
        max_tags: int = 100_000,
        keys: int = 50_000,
        codes: TagCodes | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.keys = keys
        self.codes = TagCodes(max_tags) if codes is None else codes
        self.forget()

    def forget(self) -> None:
        self._epoch = self.codes.epoch
        # By tag number: NaN for a tag not met.
        self._horizon = np.full(len(self.codes), np.nan)
        # By tag number, the newest time among the keys remembered of the tag (or of
        # those since folded; NaN for none): a fix after it cannot be a key remembered.
        self._taken = np.full(len(self.codes), np.nan)
        self._highest = -np.inf  # of the horizons above
        self._floor = -np.inf
        # The two generations of keys, each with the newest time among them.
        self._older: set[Key] = set()
        self._older_newest = -np.inf
        self._newer: set[Key] = set()
        self._newer_newest = -np.inf
        self._since = time.monotonic()

    def _numbers(self, tags: list[str]) -> npt.NDArray[np.int64]:
        """The tags' numbers, with a horizon for each (NaN until met); everything is
        forgotten if the numbers have been dropped since."""
        codes = self.codes.of(tags)
        if self.codes.epoch != self._epoch:
            self.forget()
        if len(self._horizon) < len(self.codes):
            size = max(len(self.codes), 2 * len(self._horizon), 1024)
            self._horizon, self._taken = (_grown(a, size) for a in (self._horizon, self._taken))
        return codes

    def _fold(self) -> None:
        """The older generation into the floor; the newer becomes the older."""
        self._floor = max(self._floor, self._older_newest)
        self._older, self._older_newest = self._newer, self._newer_newest
        self._newer, self._newer_newest = set(), -np.inf

    async def unsure(self, conn: asyncpg.Connection, batch: FixBatch) -> npt.NDArray[np.bool_]:
        """Which of the batch's fixes may be stored already, the batch being about to go
        on the bus: every fix's key is remembered."""
        if time.monotonic() - self._since >= self.ttl_s:
            self.forget()
        codes = self._numbers(batch.tags)
        # Each of the batch's tags' newest fix here.
        newest = np.full(len(batch.tags), -np.inf)
        np.maximum.at(newest, batch.tag, batch.ts)
        unmet = np.flatnonzero(np.isnan(self._horizon[codes])).tolist()
        if unmet:
            after = newest[unmet].tolist()
            tags = [batch.tags[i] for i in unmet]
            stored = await repository.newest_after(conn, tags, after)
            # (Numbered again after the look-up: another request may have forgotten them.)
            codes = self._numbers(batch.tags)
            for i, tag, first in zip(unmet, tags, after, strict=True):
                # Its fixes here are at or before it, so every one is looked up.
                t = np.fmax(self._horizon[codes[i]], stored.get(tag, first))
                self._horizon[codes[i]] = t
                self._highest = max(self._highest, t)
        # From here to the end nothing is awaited: the look-up and remembering the keys
        # are one step for every other request.
        if self._highest > self._floor:
            # (A tag forgotten during the look-up has no horizon: all its fixes are unsure.)
            horizon = np.maximum(self._horizon[codes], self._floor)
            horizon[np.isnan(horizon)] = np.inf
            unsure = batch.ts <= horizon[batch.tag]
        else:
            unsure = batch.ts <= self._floor
        keys = keys_of(codes[batch.tag], batch.ts)
        # Only a fix at or before its tag's newest key can be one remembered: nearly
        # always none (a tag's fixes come in order, but for late ones), and the others
        # are not looked for (two of the three set operations a fix, most of this).
        maybe = np.flatnonzero((batch.ts <= self._taken[codes][batch.tag]) & ~unsure).tolist()
        if maybe:
            asked = [keys[i] for i in maybe]
            seen = self._newer.intersection(asked) | self._older.intersection(asked)
            if seen:
                unsure[maybe] |= np.fromiter((k in seen for k in asked), bool, len(asked))
        self._newer.update(keys)
        self._taken[codes] = np.fmax(self._taken[codes], newest)
        if len(batch):
            self._newer_newest = max(self._newer_newest, float(batch.ts.max()))
        if len(self._newer) > self.keys:
            self._fold()
        return unsure
