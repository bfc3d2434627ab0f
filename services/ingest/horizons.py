"""What ingest remembers of each tag's stored trail, so that a fix it knows cannot be stored
yet is taken as new without asking the database.

Every request used to look up each of its fixes in the trail (`stored_positions`), to
tell a re-send from a new fix: a probe of the primary key a fix, 7 to 13 µs of
PostgreSQL a fix at full load, the costliest statement after the COPY itself
(docs/benchmarks.md, eleventh and twelfth sessions). But nearly every fix is new, and
ingest has seen every fix stored since it met the tag: only the fixes it cannot vouch
for need looking up.

For each tag met, a *horizon*: a time at or before which the tag's stored fixes are not
known, and after it, the times of the latest fixes ingest has put on the bus since (up
to `per_tag` of them; when one more comes, the oldest of them is dropped and the horizon
raised to its time). A fix is looked up if it is at or before its tag's horizon, or its
time is among those remembered (a re-send); any other fix of a met tag cannot be
stored. Out of order is fine: requests overtake each other, and a fix older than one
already taken is still new unless its own time is remembered.

How this stays true: fixes reach the trail only through ingest, which remembers every
fix's time before putting it on the bus (remembering a time or raising a horizon is
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


def _grown(a: npt.NDArray[np.float64], size: int) -> npt.NDArray[np.float64]:
    """The array lengthened to `size` rows, NaN after its values."""
    grown = np.full((size, *a.shape[1:]), np.nan)
    grown[: len(a)] = a
    return grown


class FixHorizons:
    """Each met tag's horizon (seconds since 1970) and the times of its latest fixes taken
    since, for the tags a process has met in the last `ttl_s` seconds, kept by the
    tags' numbers (`codes`, shared with the process's TagDirectory; their own if not
    given; when the numbers are dropped, so is everything here), in arrays: `per_tag`
    times a tag (8 bytes each, 256 a tag by default: 25.6 MB for 100,000 tags).

    A tag's times must outlast its fixes in flight at once (32 requests of 2,000 in the
    benchmark, a fix of each tag in each), or requests that overtake others are looked
    up. A re-send older than a tag's remembered times is looked up too, as it should
    be: the horizon stands at or after it.

    Until the twenty-eighth session the keys (tag and time as one number) were kept in
    two Python sets of 50,000 a generation, each generation folded into one floor under
    every horizon: overtaken requests made half a request's fixes look in the sets,
    and the look-ups and remembering cost the API about 9 % of its time. Here every step
    is a few numpy calls a request (docs/benchmarks.md, twenty-eighth session)."""

    def __init__(
        self,
        ttl_s: float,
        max_tags: int = 100_000,
        per_tag: int = 32,
        codes: TagCodes | None = None,
    ) -> None:
        if per_tag < 1:
            raise ValueError("per_tag must be at least 1")
        self.ttl_s = ttl_s
        self.per_tag = per_tag
        self.codes = TagCodes(max_tags) if codes is None else codes
        self.forget()

    def forget(self) -> None:
        self._epoch = self.codes.epoch
        # By tag number: NaN for a tag not met.
        self._horizon = np.full(len(self.codes), np.nan)
        # By tag number, the times of the tag's latest fixes taken (NaN where none), a
        # ring: the next is written at `_written % per_tag`.
        self._times = np.full((len(self.codes), self.per_tag), np.nan)
        self._written = np.zeros(len(self.codes), dtype=np.int64)
        self._since = time.monotonic()

    def _numbers(self, tags: list[str]) -> npt.NDArray[np.int64]:
        """The tags' numbers, with a horizon for each (NaN until met); everything is
        forgotten if the numbers have been dropped since."""
        codes = self.codes.of(tags)
        if self.codes.epoch != self._epoch:
            self.forget()
        if len(self._horizon) < len(self.codes):
            size = max(len(self.codes), 2 * len(self._horizon), 1024)
            self._horizon, self._times = (_grown(a, size) for a in (self._horizon, self._times))
            written = np.zeros(size, dtype=np.int64)
            written[: len(self._written)] = self._written
            self._written = written
        return codes

    async def unsure(self, conn: asyncpg.Connection, batch: FixBatch) -> npt.NDArray[np.bool_]:
        """Which of the batch's fixes may be stored already, the batch being about to go
        on the bus: every fix's time is remembered."""
        if time.monotonic() - self._since >= self.ttl_s:
            self.forget()
        codes = self._numbers(batch.tags)
        unmet = np.flatnonzero(np.isnan(self._horizon[codes])).tolist()
        if unmet:
            # Each of those tags' newest fix here.
            newest = np.full(len(batch.tags), -np.inf)
            np.maximum.at(newest, batch.tag, batch.ts)
            after = newest[unmet].tolist()
            tags = [batch.tags[i] for i in unmet]
            stored = await repository.newest_after(conn, tags, after)
            # (Numbered again after the look-up: another request may have forgotten them.)
            codes = self._numbers(batch.tags)
            for i, tag, first in zip(unmet, tags, after, strict=True):
                # Its fixes here are at or before it, so every one is looked up.
                self._horizon[codes[i]] = np.fmax(self._horizon[codes[i]], stored.get(tag, first))
        # From here to the end nothing is awaited: the look-up and remembering the times
        # are one step for every other request.
        of = codes[batch.tag]
        # (A tag forgotten during the look-up has no horizon, NaN: all its fixes are
        # unsure, as every comparison with NaN is false.)
        unsure = ~(batch.ts > self._horizon[of])
        unsure |= (self._times[of] == batch.ts[:, None]).any(axis=1)
        self._remember(of, batch.ts)
        return unsure

    def _remember(self, of: npt.NDArray[np.int64], ts: npt.NDArray[np.float64]) -> None:
        """Each fix's time among its tag's (`of`: each fix's tag number), in batch order:
        a time pushed out, by these or by a tag's more than `per_tag` fixes here, raises
        the tag's horizon to it. A horizon not known (NaN) stays unknown."""
        n, size = len(ts), self.per_tag
        if not n:
            return
        order = np.argsort(of, kind="stable")
        tag, t = of[order], ts[order]
        starts = np.flatnonzero(np.concatenate(([True], tag[1:] != tag[:-1])))
        counts = np.diff(np.append(starts, n))
        met = tag[starts]
        rank = np.arange(n) - np.repeat(starts, counts)
        # A tag's last `size` fixes here go in its ring; any before them are pushed out
        # at once.
        kept = rank >= np.repeat(counts, counts) - size
        if not kept.all():
            np.maximum.at(self._horizon, tag[~kept], t[~kept])
            tag, t, rank = tag[kept], t[kept], rank[kept]
        # (Distinct places in a tag's ring: at most `size` of its fixes are kept.)
        slot = (self._written[tag] + rank) % size
        pushed = self._times[tag, slot]
        gone = ~np.isnan(pushed)
        if gone.any():
            np.maximum.at(self._horizon, tag[gone], pushed[gone])
        self._times[tag, slot] = t
        self._written[met] += counts
