"""A batch of fixes as columns: what the points and stored-points topics carry, a batch
a message, from the ingest request that admitted them to every worker that reads them.

A fix a pydantic object made every worker pass over every fix's object, scattered in
memory, several times a batch (to build COPY rows, each subject's time span, groups,
bus envelopes): with cold caches those passes cost two to five times what they do in a
loop on their own, and about a fifth of tagtrail's CPU in the benchmark
(docs/benchmarks.md, tenth session). As columns, those passes are numpy's."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_args

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from services.common.timeutil import from_epoch
from services.common.trail import TrailFix
from services.ingest.pgcopy import SOURCES, TrailRows, micros
from services.ingest.schemas import (
    AccuracyM,
    FixMessage,
    FixSource,
    Hdop,
    HeadingDeg,
    Latitude,
    Longitude,
    Satellites,
    SpeedMps,
    TagId,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Each source's code, by its name (a FixSource is its name).
SOURCE_CODES: dict[str, int] = {s.value: i for i, s in enumerate(SOURCES)}
_SOURCE_NAMES = np.array([s.value for s in SOURCES], dtype=object)
# The first second a fix may be stamped with, and one past the last: a time outside
# them is no fix's (and no datetime's).
_EPOCH_RANGE = (0.0, 253402300800.0)

Code = Annotated[int, Field(ge=0)]
EpochSeconds = Annotated[float, Field(ge=_EPOCH_RANGE[0], lt=_EPOCH_RANGE[1])]


class FixBatchMessage(BaseModel):
    """A batch of validated fixes as columns of JSON values: fix i is tag
    `tags[tag[i]]`'s, worn by subject `subjects[subject[i]]`, at `ts[i]` (seconds since
    1970 UTC, exact to the microsecond), received at `received_at[i]`; a fix without a
    speed, heading, satellite count or HDOP has null there. Every fix is held to a
    device fix's bounds. What the points topics carried from the tenth session to the
    twentieth (FixColumnsMessage since), still read; and how a dead letter shows a
    batch, for a person to read."""

    model_config = ConfigDict(allow_inf_nan=False, frozen=True)

    tags: list[TagId]
    tag: list[Code]
    subjects: list[uuid.UUID]
    subject: list[Code]
    ts: list[EpochSeconds]
    received_at: list[EpochSeconds]
    lat: list[Latitude]
    lon: list[Longitude]
    accuracy_m: list[AccuracyM]
    speed_mps: list[SpeedMps]
    heading_deg: list[HeadingDeg]
    source: list[FixSource]
    sats: list[Satellites]
    hdop: list[Hdop]

    @model_validator(mode="after")
    def _columns_agree(self) -> FixBatchMessage:
        n = len(self.ts)
        columns = (self.tag, self.subject, self.received_at, self.lat, self.lon)
        others = (self.accuracy_m, self.speed_mps, self.heading_deg, self.source)
        if any(len(c) != n for c in (*columns, *others, self.sats, self.hdop)):
            raise ValueError("every column must hold one value a fix")
        if max(self.tag, default=-1) >= len(self.tags):
            raise ValueError("tag must index tags")
        if max(self.subject, default=-1) >= len(self.subjects):
            raise ValueError("subject must index subjects")
        return self


# Each column of a FixColumnsMessage: its little-endian type, and the bounds its values
# keep (None: a code, held to its list's length instead). A value that is not there is
# NaN in the optional float columns and -1 in sats.
_WIRE_COLUMNS: dict[str, tuple[str, Any]] = {
    "tag": ("<i4", None),
    "subject": ("<i4", None),
    "ts": ("<f8", EpochSeconds),
    "received_at": ("<f8", EpochSeconds),
    "lat": ("<f8", Latitude),
    "lon": ("<f8", Longitude),
    "accuracy_m": ("<f8", AccuracyM),
    "speed_mps": ("<f8", SpeedMps),
    "heading_deg": ("<f8", HeadingDeg),
    "source": ("u1", None),
    "sats": ("i1", Satellites),
    "hdop": ("<f8", Hdop),
}
_CODED = {"tag": "tags", "subject": "subjects", "source": "sources"}


def _limits(kind: Any) -> list[tuple[str, float]]:
    """The comparisons a bounded type of schemas.py (Annotated, with pydantic's Field)
    makes, as (operator, bound): pydantic keeps each as an annotated_types constraint
    with one attribute, named for it."""
    out: list[tuple[str, float]] = []
    for constraint in get_args(kind)[1].metadata:
        for op, name in ((">=", "ge"), (">", "gt"), ("<=", "le"), ("<", "lt")):
            bound = getattr(constraint, name, None)
            if bound is not None:
                out.append((op, float(bound)))
    return out


def _column(name: str) -> Any:
    dtype, kind = _WIRE_COLUMNS[name]
    if kind is None:
        what = f"a code into {_CODED[name]}"
    else:
        what = f"the value, {_rule(kind)}"
    if kind is not None and _optional(kind):
        what += "; -1 where there is none" if name == "sats" else "; NaN where there is none"
    return Field(description=f"base64url of one little-endian {np.dtype(dtype).name} a fix: {what}")


def _optional(kind: Any) -> bool:
    return type(None) in get_args(get_args(kind)[0])


def _rule(kind: Any) -> str:
    return " and ".join(f"{op} {bound:.15g}" for op, bound in _limits(kind))


def _inclusive(kind: Any) -> tuple[float, float]:
    """The least and greatest finite float that `kind` allows (a strict bound's next
    float inside it)."""
    hi = float(np.finfo(np.float64).max)
    lo = -hi
    for op, bound in _limits(kind):
        if op in (">=", ">"):
            lo = max(lo, bound if op == ">=" else float(np.nextafter(bound, np.inf)))
        else:
            hi = min(hi, bound if op == "<=" else float(np.nextafter(bound, -np.inf)))
    return lo, hi


# The float columns, checked as one array: a row a column, with its bounds beside it.
_FLOATS = tuple(name for name, (dtype, _) in _WIRE_COLUMNS.items() if dtype == "<f8")
_FLOAT_LO, _FLOAT_HI = (
    np.array([_inclusive(_WIRE_COLUMNS[name][1])[k] for name in _FLOATS])[:, None] for k in (0, 1)
)
_FLOAT_OPTIONAL = np.array([_optional(_WIRE_COLUMNS[name][1]) for name in _FLOATS])[:, None]
_SATS_LO, _SATS_HI = _inclusive(Satellites)
# Whether each byte of the sats column (read unsigned) is a count or none (-1).
_SATS_OK = np.array(
    [v == -1 or _SATS_LO <= v <= _SATS_HI for v in np.arange(256, dtype=np.uint8).view("i1")]
)
_SIZES = {name: np.dtype(dtype).itemsize for name, (dtype, _) in _WIRE_COLUMNS.items()}
_CODED_UNSIGNED = {
    name: (listed, _WIRE_COLUMNS[name][0].replace("i", "u")) for name, listed in _CODED.items()
}


class _FixColumns(BaseModel):
    """What the points messages of columns of bytes share: every column but the
    subjects' list, and the checks that hold them to fixes."""

    model_config = ConfigDict(frozen=True, val_json_bytes="base64", ser_json_bytes="base64")

    tags: list[TagId]
    # (Declared here for its place among the fields; each message says what it is.)
    subjects: Any
    sources: list[FixSource]
    tag: bytes = _column("tag")
    subject: bytes = _column("subject")
    ts: bytes = _column("ts")
    received_at: bytes = _column("received_at")
    lat: bytes = _column("lat")
    lon: bytes = _column("lon")
    accuracy_m: bytes = _column("accuracy_m")
    speed_mps: bytes = _column("speed_mps")
    heading_deg: bytes = _column("heading_deg")
    source: bytes = _column("source")
    sats: bytes = _column("sats")
    hdop: bytes = _column("hdop")

    # The float columns as one array, a row each in _FLOATS' order, as the validator
    # checked them.
    _floats: npt.NDArray[np.float64] = PrivateAttr()

    def _listed(self, name: str) -> int:
        """How many values the list `name` holds."""
        return len(getattr(self, name))

    @model_validator(mode="after")
    def _columns_hold_fixes(self) -> _FixColumns:
        # A few numpy calls a check: a message holds a few hundred fixes, and a call on
        # so few costs about what its work does (34 µs a message before, 18.5 after;
        # docs/benchmarks.md, twenty-seventh session).
        n = None
        for name, size in _SIZES.items():
            length, rest = divmod(len(getattr(self, name)), size)
            if rest:
                raise ValueError(f"{name} must hold {size} bytes a fix")
            if n is not None and length != n:
                raise ValueError("every column must hold one value a fix")
            n = length
        for name, (listed, unsigned) in _CODED_UNSIGNED.items():
            # As unsigned, a negative code is past any list's end.
            codes = np.frombuffer(getattr(self, name), unsigned)
            if len(codes) and codes.max() >= self._listed(listed):
                raise ValueError(f"{name} must index {listed}")
        # A NaN fails both comparisons: no value, allowed only where the column is optional.
        # (Joined as a bytearray: its array is writable, as a batch's columns are.)
        joined = bytearray().join([getattr(self, name) for name in _FLOATS])
        floats = np.frombuffer(joined, "<f8").reshape(len(_FLOATS), -1)
        ok = (floats >= _FLOAT_LO) & (floats <= _FLOAT_HI)
        ok |= _FLOAT_OPTIONAL & np.isnan(floats)
        if not ok.all():
            column, i = (int(k) for k in np.argwhere(~ok)[0])
            name = _FLOATS[column]
            _refuse(name, i, floats[column, i].item())
        sats = np.frombuffer(self.sats, "u1")
        if not _SATS_OK[sats].all():
            i = int(np.argmin(_SATS_OK[sats]))
            _refuse("sats", i, int(sats.view("i1")[i]))
        self._floats = floats
        return self


class FixColumnsMessage(_FixColumns):
    """A batch of validated fixes on the points (and stored-points) topic, each column
    its values' bytes (base64url; little-endian): fix i is tag `tags[tag[i]]`'s, worn
    by subject `subjects[subject[i]]`, at `ts[i]` (seconds since 1970 UTC, exact to the
    microsecond), from source `sources[source[i]]`, received at `received_at[i]`. Every
    fix is held to a device fix's bounds. One batch's fixes all fall in one partition."""

    # What the points topics carried from the twenty-first session to the
    # twenty-eighth (FixPackedMessage since), still read. A column of 2,000 floats as
    # JSON numbers (FixBatchMessage) made every reader build 2,000 Python floats to put
    # them in one array: about 1 µs a fix for each of the store and the zone checker.
    # As bytes, a column is one array at once (docs/benchmarks.md).

    subjects: list[uuid.UUID]


class FixPackedMessage(_FixColumns):
    """A batch of validated fixes on the points (and stored-points) topic, each column
    its values' bytes (base64url; little-endian), the subjects too: fix i is tag
    `tags[tag[i]]`'s, worn by the subject whose UUID is the 16 bytes at
    `16 * subject[i]` of `subjects`, at `ts[i]` (seconds since 1970 UTC, exact to the
    microsecond), from source `sources[source[i]]`, received at `received_at[i]`. Every
    fix is held to a device fix's bounds. One batch's fixes all fall in one partition."""

    # What the points topics carry since the twenty-eighth session. As a list of UUIDs'
    # text, every reader made a UUID object a subject of every message, and a message
    # holds nearly as many subjects as fixes: a subject's bytes are found among those
    # met before in a few numpy calls a message instead (SubjectTable;
    # docs/benchmarks.md, twenty-eighth session).

    subjects: bytes = Field(
        description="base64url of each subject's UUID, its 16 bytes as RFC 9562 writes them"
    )

    @field_validator("subjects")
    @classmethod
    def _whole_uuids(cls, value: bytes) -> bytes:
        if len(value) % 16:
            raise ValueError("subjects must hold 16 bytes a subject")
        return value

    def _listed(self, name: str) -> int:
        return len(self.subjects) // 16 if name == "subjects" else len(getattr(self, name))


def _refuse(name: str, i: int, value: object) -> None:
    kind = _WIRE_COLUMNS[name][1]
    raise ValueError(f"{name} of fix {i} is {value!r}: it must be {_rule(kind) or 'finite'}")


def _used(codes: IntArray, size: int) -> tuple[IntArray, IntArray]:
    """The codes into a list of `size` that are used, in order, and each code as an
    index into those (np.unique's answer, without its sort)."""
    used = np.flatnonzero(np.bincount(codes, minlength=size))
    index = np.zeros(size, dtype=np.int64)
    index[used] = np.arange(len(used))
    return used, index[codes]


def _picked(values: list[Any], indices: IntArray) -> list[Any]:
    return list(map(values.__getitem__, indices.tolist()))


def _uuid_text(value: object) -> str:
    """What orjson writes for a value it cannot write itself: a UUID of a kind other
    than uuid.UUID's own (asyncpg's, a subclass), as its text. orjson writes a uuid.UUID
    itself, as str() would but in a tenth of the time."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not written on the wire")


def _b64(values: npt.NDArray[Any], dtype: str) -> str:
    return base64.urlsafe_b64encode(values.astype(dtype).tobytes()).decode("ascii")


def codes_of(values: Iterable[Any], *, by_identity: bool = False) -> tuple[list[Any], IntArray]:
    """The distinct values, in order of first appearance, and each value's index. By
    identity first (for values whose hash is a Python function, as a UUID's is, and that
    are nearly always the very same objects), then equal ones made one."""
    if not by_identity:
        index: dict[Any, int] = {}
        codes = [index.setdefault(v, len(index)) for v in values]
        return list(index), np.array(codes, dtype=np.int64)
    seen: dict[int, int] = {}
    objects: list[Any] = []
    raw: list[int] = []
    for v in values:
        code = seen.get(id(v))
        if code is None:
            code = seen[id(v)] = len(objects)
            objects.append(v)
        raw.append(code)
    distinct, remap = codes_of(objects)
    return distinct, remap[np.array(raw, dtype=np.int64)] if raw else np.zeros(0, np.int64)


def _floats(values: Iterable[float | None]) -> FloatArray:
    """Floats, None as NaN (as numpy makes it)."""
    return np.array(list(values), dtype=np.float64)


def _uuid_codes(values: list[Any]) -> tuple[list[Any], IntArray]:
    """codes_of for UUIDs, by their 128-bit numbers: a Python UUID hashes in a method of
    its own (0.11 µs a value to number them by it, against 0.045 by the number), and a
    consumer numbers a subject for nearly every fix it is handed, in the messages it
    joins (docs/benchmarks.md, twenty-sixth session). Equal UUIDs, equal numbers.
    asyncpg's UUIDs (ingest's, from the registry) hash in C: those are numbered by
    their hash, a quarter quicker (528 against 688 µs for 8,000; twenty-eighth
    session); a UUID of either kind equals, and hashes as, the other of its value."""
    if values and type(values[0]) is not uuid.UUID:
        return codes_of(values)
    index: dict[int, int] = {}
    codes = np.array([index.setdefault(v.int, len(index)) for v in values], dtype=np.int64)
    # Numbered in order of first appearance: a value's first appearance is where the
    # highest number so far rises.
    rises = np.flatnonzero(np.diff(np.maximum.accumulate(codes), prepend=-1) > 0)
    return [values[i] for i in rises.tolist()], codes


def _merged(
    lists: Sequence[list[Any]], codes: Sequence[IntArray], *, uuids: bool = False
) -> tuple[list[Any], IntArray]:
    """Several batches' value lists made one, and their codes into it, joined (`uuids`:
    the values are UUIDs)."""
    offsets = np.cumsum([0, *map(len, lists)])[:-1].tolist()
    values = [v for values in lists for v in values]
    distinct, remap = _uuid_codes(values) if uuids else codes_of(values)
    return distinct, remap[np.concatenate([c + o for c, o in zip(codes, offsets, strict=True)])]


# The columns with a value a fix, and those of them that are not codes into a list.
_ROWS = (
    "tag",
    "subject",
    "ts",
    "received_at",
    "lat",
    "lon",
    "accuracy_m",
    "speed_mps",
    "heading_deg",
    "source",
    "sats",
    "hdop",
)
_VALUES = _ROWS[2:]


class SubjectTable:
    """The subjects a process has read off the wire, each a number, found by their 16
    bytes a message at a time in a few numpy calls: by the first 8 bytes, in a sorted
    array, every find then held to all 16 (a dict keeps the truth, for the rare one
    that is not found so). Each subject is one UUID object, made once, in `uuids`:
    every batch decoded lists its subjects as that list, so that joining them joins
    only their codes. When it holds `max_subjects`, the table starts afresh (batches
    made before keep the list they name)."""

    def __init__(self, max_subjects: int = 100_000) -> None:
        self.max_subjects = max_subjects
        self._start()

    def _start(self) -> None:
        self.uuids: list[uuid.UUID] = []
        self._number: dict[bytes, int] = {}
        # Each subject's 16 bytes as two unsigned 64-bit numbers, as many rows as
        # subjects (grown by doubling: `_halves[: len(uuids)]`).
        self._halves = np.zeros((1024, 2), dtype="<u8")
        self._keys = np.zeros(0, dtype="<u8")  # the first halves, sorted
        self._by_key = np.zeros(0, dtype=np.int64)  # each sorted key's subject

    def ids(self, packed: bytes) -> IntArray:
        """The number of each subject whose UUID's 16 bytes are in `packed`."""
        n = len(packed) // 16
        halves = np.frombuffer(packed, "<u8")
        # (As few numpy calls as can be: a message holds a few hundred subjects, and a
        # call on so few costs about what its work does.)
        if len(self._keys):
            at = self._keys.searchsorted(halves[::2])
            ids = self._by_key.take(at, mode="clip")
            if (self._halves.take(ids, axis=0).reshape(-1) == halves).all():
                return ids
        # Some are new (or alike in their first 8 bytes): each found by all 16, and
        # numbered if new, in a table started afresh if the new might not fit.
        raws = [packed[16 * i : 16 * i + 16] for i in range(n)]
        new = sum(raw not in self._number for raw in raws)
        if len(self.uuids) + new > self.max_subjects:
            self._start()
        ids = np.array([self._numbered(raw) for raw in raws], dtype=np.int64)
        if new:
            count = len(self.uuids)
            self._by_key = np.argsort(self._halves[:count, 0], kind="stable")
            self._keys = self._halves[self._by_key, 0]
        return ids

    def _numbered(self, raw: bytes) -> int:
        number = self._number.get(raw)
        if number is None:
            number = self._number[raw] = len(self.uuids)
            self.uuids.append(uuid.UUID(bytes=raw))
            if number == len(self._halves):
                self._halves = np.concatenate([self._halves, np.zeros_like(self._halves)])
            self._halves[number] = np.frombuffer(raw, "<u8")
        return number

    def packed(self, subjects: Sequence[uuid.UUID]) -> npt.NDArray[np.void]:
        """Each of these subjects' 16 bytes, as one array: this table's at once."""
        if subjects is self.uuids:
            return self._halves[: len(subjects)].view("V16").reshape(-1)
        return np.frombuffer(b"".join(s.bytes for s in subjects), dtype="V16")


# The subjects this process has read off the points topics.
SUBJECTS = SubjectTable()


@dataclass(frozen=True, slots=True)
class SubjectRuns:
    """A batch's subjects, each once (in the order of their codes), with each one's first
    and last fix time, and its rows: subject i's are `order[bounds[i]:bounds[i + 1]]`, in
    batch order. Only the rows asked for are sliced: a zone checker's batch holds about
    2,000 subjects, and it reads the rows of the few it checks."""

    subjects: list[uuid.UUID]
    first: FloatArray
    last: FloatArray
    order: IntArray
    bounds: IntArray

    @classmethod
    def of(cls, subjects: list[uuid.UUID], subject: IntArray, ts: FloatArray) -> SubjectRuns:
        """The runs of fixes whose subjects are `subjects[subject[i]]`, at times `ts`."""
        if len(ts) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls([], np.zeros(0), np.zeros(0), empty, np.zeros(1, dtype=np.int64))
        order = np.argsort(subject, kind="stable")
        codes, ts = subject[order], ts[order]
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        return cls(
            [subjects[c] for c in codes[starts].tolist()],
            np.minimum.reduceat(ts, starts),
            np.maximum.reduceat(ts, starts),
            order,
            np.r_[starts, len(order)],
        )

    def rows(self, i: int) -> IntArray:
        """Subject i's rows, in batch order."""
        return self.order[self.bounds[i] : self.bounds[i + 1]]


@dataclass(frozen=True, slots=True, eq=False)
class FixBatch:
    """Fixes as columns. Fix i is tag `tags[tag[i]]`'s, worn by subject
    `subjects[subject[i]]`; times are seconds since 1970 UTC (exact to the
    microsecond: `datetime.timestamp` and `fromtimestamp` go to and fro unchanged);
    NaN marks a speed, heading or HDOP that is not there, -1 a satellite count;
    `source[i]` indexes pgcopy.SOURCES. The lists may hold values no fix uses (after
    `take`; and a decoded batch's subjects are its process's SubjectTable list, which
    grows, only ever at its end, as more subjects are read). Not changed once made: on
    the in-process bus every group shares it."""

    tags: list[str]
    tag: IntArray
    subjects: list[uuid.UUID]
    subject: IntArray
    ts: FloatArray
    received_at: FloatArray
    lat: FloatArray
    lon: FloatArray
    accuracy_m: FloatArray
    speed_mps: FloatArray
    heading_deg: FloatArray
    source: IntArray
    sats: IntArray
    hdop: FloatArray

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def of(cls, fixes: Sequence[FixMessage]) -> FixBatch:
        """Fix messages as a batch (a fix at a time: for the rare request that is not
        clean, and for tests)."""
        tags, tag = codes_of(f.tag_id for f in fixes)
        subjects, subject = codes_of(f.subject_id for f in fixes)
        return cls(
            tags=tags,
            tag=tag,
            subjects=subjects,
            subject=subject,
            ts=np.array([f.ts.timestamp() for f in fixes], dtype=np.float64),
            received_at=np.array([f.received_at.timestamp() for f in fixes], dtype=np.float64),
            lat=np.array([f.lat for f in fixes], dtype=np.float64),
            lon=np.array([f.lon for f in fixes], dtype=np.float64),
            accuracy_m=np.array([f.accuracy_m for f in fixes], dtype=np.float64),
            speed_mps=_floats(f.speed_mps for f in fixes),
            heading_deg=_floats(f.heading_deg for f in fixes),
            source=np.array([SOURCE_CODES[f.source] for f in fixes], dtype=np.int64),
            sats=np.array([-1 if f.sats is None else f.sats for f in fixes], dtype=np.int64),
            hdop=_floats(f.hdop for f in fixes),
        )

    @classmethod
    def concat(cls, batches: Sequence[FixBatch]) -> FixBatch:
        """The batches' fixes, in order, as one batch."""
        if len(batches) == 1:
            return batches[0]
        tags, tag = _merged([b.tags for b in batches], [b.tag for b in batches])
        subjects = batches[0].subjects
        if all(b.subjects is subjects for b in batches):
            # Decoded batches name the subjects table's list (SubjectTable).
            subject = np.concatenate([b.subject for b in batches])
        else:
            subjects, subject = _merged(
                [b.subjects for b in batches], [b.subject for b in batches], uuids=True
            )
        return cls(
            tags=tags,
            tag=tag,
            subjects=subjects,
            subject=subject,
            **{n: np.concatenate([getattr(b, n) for b in batches]) for n in _VALUES},
        )

    def take(self, rows: npt.NDArray[Any]) -> FixBatch:
        """These rows (indices, or a mask) as a batch of their own."""
        return FixBatch(
            tags=self.tags,
            subjects=self.subjects,
            **{n: getattr(self, n)[rows] for n in _ROWS},
        )

    def tag_ids(self) -> list[str]:
        """Each fix's tag id."""
        tags = self.tags
        return [tags[i] for i in self.tag.tolist()]

    def messages(self) -> list[FixMessage]:
        """Each fix as a message of its own (for a dead letter, and for tests)."""
        return [
            FixMessage.model_validate(
                {
                    "tag_id": self.tags[int(self.tag[i])],
                    "subject_id": self.subjects[int(self.subject[i])],
                    "ts": from_epoch(self.ts[i]),
                    "received_at": from_epoch(self.received_at[i]),
                    "lat": self.lat[i],
                    "lon": self.lon[i],
                    "accuracy_m": self.accuracy_m[i],
                    "speed_mps": _value(self.speed_mps[i]),
                    "heading_deg": _value(self.heading_deg[i]),
                    "source": SOURCES[int(self.source[i])],
                    "sats": None if self.sats[i] < 0 else int(self.sats[i]),
                    "hdop": _value(self.hdop[i]),
                }
            )
            for i in range(len(self))
        ]

    def trail_fixes(self, rows: npt.NDArray[Any]) -> list[TrailFix]:
        """These rows as the checks read stored fixes, in the order given."""
        tags = self.tags
        return [
            TrailFix(tags[t], from_epoch(ts), from_epoch(rec), lat, lon, acc)
            for t, ts, rec, lat, lon, acc in zip(
                self.tag[rows].tolist(),
                self.ts[rows].tolist(),
                self.received_at[rows].tolist(),
                self.lat[rows].tolist(),
                self.lon[rows].tolist(),
                self.accuracy_m[rows].tolist(),
                strict=True,
            )
        ]

    def first_last(
        self, rows: npt.NDArray[Any] | None = None
    ) -> tuple[list[uuid.UUID], FloatArray, FloatArray]:
        """The subjects of these rows (all, if not given), and each one's first and last
        fix time."""
        if rows is None:
            runs = self.runs()
        else:
            runs = SubjectRuns.of(self.subjects, self.subject[rows], self.ts[rows])
        return runs.subjects, runs.first, runs.last

    def runs(self) -> SubjectRuns:
        """The batch's fixes a subject at a time."""
        return SubjectRuns.of(self.subjects, self.subject, self.ts)

    def rows(self) -> TrailRows:
        """The fixes as trail_points rows, for COPY."""
        subject_bytes = SUBJECTS.packed(self.subjects)
        return TrailRows(
            tags=[t.encode() for t in self.tags],
            tag=self.tag,
            ts=micros(self.ts),
            received_at=micros(self.received_at),
            subject_id=subject_bytes[self.subject] if len(self) else np.zeros(0, dtype="V16"),
            lat=self.lat,
            lon=self.lon,
            accuracy_m=self.accuracy_m,
            speed_mps=self.speed_mps,
            heading_deg=self.heading_deg,
            sources=[s.value.encode() for s in SOURCES],
            source=self.source,
            sats=self.sats,
            hdop=self.hdop,
        )

    def encode(self) -> bytes:
        """The batch as a FixPackedMessage's JSON, with only the tags, subjects and
        sources its fixes name. A lane's part of a request's batch shares the request's
        lists (`take`); written whole, each tag and subject would travel, and be parsed,
        once a partition (docs/benchmarks.md, eighteenth session)."""
        tag_used, tag = _used(self.tag, len(self.tags))
        subject_used, subject = _used(self.subject, len(self.subjects))
        source_used, source = _used(self.source, len(SOURCES))
        return orjson.dumps(
            {
                "tags": _picked(self.tags, tag_used),
                "subjects": base64.urlsafe_b64encode(
                    b"".join([s.bytes for s in _picked(self.subjects, subject_used)])
                ).decode("ascii"),
                "sources": [SOURCES[i].value for i in source_used.tolist()],
                "tag": _b64(tag, "<i4"),
                "subject": _b64(subject, "<i4"),
                "source": _b64(source, "u1"),
                **{name: _b64(getattr(self, name), _WIRE_COLUMNS[name][0]) for name in _PLAIN},
            }
        )

    def readable(self) -> bytes:
        """The batch as a FixBatchMessage's JSON (a JSON array a column, nulls for NaN
        and -1), which a person can read: for dead letters. `decode` reads it too."""
        tag_used, tag = _used(self.tag, len(self.tags))
        subject_used, subject = _used(self.subject, len(self.subjects))
        sats = self.sats.astype(object)
        sats[self.sats < 0] = None
        return orjson.dumps(
            {
                "tags": _picked(self.tags, tag_used),
                "tag": tag,
                "subjects": _picked(self.subjects, subject_used),
                "subject": subject,
                "ts": self.ts,
                "received_at": self.received_at,
                "lat": self.lat,
                "lon": self.lon,
                "accuracy_m": self.accuracy_m,
                # NaN, a value that is not there, orjson writes as null.
                "speed_mps": self.speed_mps,
                "heading_deg": self.heading_deg,
                "source": _SOURCE_NAMES[self.source].tolist(),
                "sats": sats.tolist(),
                "hdop": self.hdop,
            },
            default=_uuid_text,
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def decode(cls, payload: bytes) -> FixBatch:
        """A FixPackedMessage's JSON as a batch, or a record written before the points
        topics carried them (a FixColumnsMessage, a FixBatchMessage, one fix message,
        or a pack of [key, message] pairs); pydantic.ValidationError if it is none of
        them (the error is the FixPackedMessage's)."""
        try:
            return cls.from_packed(FixPackedMessage.model_validate_json(payload))
        except ValidationError as exc:
            try:
                return cls.from_columns(FixColumnsMessage.model_validate_json(payload))
            except ValidationError:
                pass
            try:
                return cls.from_message(FixBatchMessage.model_validate_json(payload))
            except ValidationError:
                pass
            for older in (_LEGACY_PACK, _LEGACY_ONE):
                try:
                    return cls.of([m for _, m in older.validate_json(payload)])
                except ValidationError:
                    continue
            raise exc

    @classmethod
    def from_packed(cls, m: FixPackedMessage) -> FixBatch:
        # The subjects as the table's, their codes its numbers (found first: the table
        # may start afresh, with a new list).
        numbers = SUBJECTS.ids(m.subjects)
        return cls._of_columns(m, SUBJECTS.uuids, numbers)

    @classmethod
    def from_columns(cls, m: FixColumnsMessage) -> FixBatch:
        return cls._of_columns(m, list(m.subjects), None)

    @classmethod
    def _of_columns(
        cls, m: _FixColumns, subjects: list[uuid.UUID], numbers: IntArray | None
    ) -> FixBatch:
        """A message's columns as a batch, its subjects these (`numbers`: each of the
        message's subjects' place among them, if not in the same order)."""
        sources = np.array([SOURCE_CODES[s] for s in m.sources], dtype=np.int64)
        subject = np.frombuffer(m.subject, "<i4")
        return cls(
            tags=list(m.tags),
            tag=np.frombuffer(m.tag, "<i4").astype(np.int64),
            subjects=subjects,
            subject=subject.astype(np.int64) if numbers is None else numbers[subject],
            source=sources[np.frombuffer(m.source, "u1")],
            sats=np.frombuffer(m.sats, "i1").astype(np.int64),
            **dict(zip(_FLOATS, m._floats, strict=True)),
        )

    @classmethod
    def from_message(cls, m: FixBatchMessage) -> FixBatch:
        return cls(
            tags=list(m.tags),
            tag=np.array(m.tag, dtype=np.int64),
            subjects=list(m.subjects),
            subject=np.array(m.subject, dtype=np.int64),
            ts=np.array(m.ts, dtype=np.float64),
            received_at=np.array(m.received_at, dtype=np.float64),
            lat=np.array(m.lat, dtype=np.float64),
            lon=np.array(m.lon, dtype=np.float64),
            accuracy_m=np.array(m.accuracy_m, dtype=np.float64),
            speed_mps=_floats(m.speed_mps),
            heading_deg=_floats(m.heading_deg),
            source=np.array([SOURCE_CODES[s] for s in m.source], dtype=np.int64),
            sats=np.array([-1 if s is None else s for s in m.sats], dtype=np.int64),
            hdop=_floats(m.hdop),
        )


# The columns of a FixColumnsMessage that are values, not codes into a list.
_PLAIN = tuple(name for name in _WIRE_COLUMNS if name not in _CODED)

# How the points topics' records were written before they carried batches.
_LEGACY_PACK = TypeAdapter(list[tuple[str, FixMessage]])
_LEGACY_ONE = TypeAdapter(Annotated[FixMessage, AfterValidator(lambda m: [("", m)])])


def _value(v: float) -> float | None:
    return None if np.isnan(v) else float(v)
