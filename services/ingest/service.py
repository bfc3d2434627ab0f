"""Ingest decisions: validate each fix on its own, attribute it to the subject wearing the
tag, separate re-sends from new fixes, and put the accepted ones on the bus."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date as date_type
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Protocol, TypeVar

import asyncpg
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, TypeAdapter, ValidationError

from services.common.auth import Principal
from services.common.bus import Bus
from services.common.database import Database
from services.common.metrics import (
    FIXES_ACCEPTED,
    FIXES_DUPLICATE,
    FIXES_REJECTED,
)
from services.common.settings import IngestSettings
from services.ingest import repository
from services.ingest.batch import SOURCE_CODES, FixBatch
from services.ingest.horizons import FixHorizons
from services.ingest.schemas import (
    DeviceEvent,
    DeviceEventIn,
    EventsResult,
    FixMessage,
    IngestResult,
    Rejection,
    StreamedFix,
)
from services.registry.service import TagCodes, TagDirectory, TagInfo
from services.topics import DEVICE_EVENTS, POINTS


# Not frozen: a frozen dataclass sets each field through object.__setattr__, dear for
# an object made for every fix of every request. Nothing changes one once made.
@dataclass(slots=True)
class Item:
    """One fix as it came in: its position in the request and its raw JSON value."""

    index: int
    raw: Any


@dataclass(frozen=True, slots=True)
class IngestMemory:
    """What ingest keeps across a process's requests: who wears each tag it has met, and
    each tag's horizon."""

    tags: TagDirectory
    horizons: FixHorizons

    @classmethod
    def new(cls, horizon_ttl_s: float) -> IngestMemory:
        """Nothing met yet; the two kept by the same numbers of the tags."""
        codes = TagCodes()
        return cls(TagDirectory(codes=codes), FixHorizons(horizon_ttl_s, codes=codes))


# Stands in for a stream line that was not JSON, so it is rejected in its place.
NOT_JSON = object()


def describe(exc: ValidationError) -> tuple[str, str]:
    """The first problem of a validation error, as (field, reason) a person can act on."""
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"]) or "fix"
    return field, err["msg"]


Incoming = TypeVar("Incoming", StreamedFix, DeviceEventIn)
# What the bounds are checked on: a fix or event as it came in, or a fix made a message.
Bounded = TypeVar("Bounded", StreamedFix, DeviceEventIn, FixMessage)


@dataclass(frozen=True, slots=True)
class Bounds:
    """What a request's fixes and events are held to, worked out once a request."""

    max_accuracy_m: float
    earliest: datetime
    latest: datetime
    max_fix_age_days: int
    skew: timedelta
    now: datetime

    @classmethod
    def at(cls, now: datetime, settings: IngestSettings) -> Bounds:
        skew = timedelta(seconds=settings.max_clock_skew_s)
        return cls(
            max_accuracy_m=settings.max_accuracy_m,
            earliest=now - timedelta(days=settings.max_fix_age_days),
            latest=now + skew,
            max_fix_age_days=settings.max_fix_age_days,
            skew=skew,
            now=now,
        )


def validate(item: Item, bounds: Bounds, model: type[Incoming]) -> Incoming | Rejection:
    """Checks one fix or device event against its schema and the bounds; pure."""
    if item.raw is NOT_JSON:
        return Rejection(index=item.index, field="line", error="is not valid JSON")
    if not isinstance(item.raw, dict):
        return Rejection(index=item.index, field="fix", error="must be a JSON object")
    try:
        value = model.model_validate(item.raw)
    except ValidationError as exc:
        field, reason = describe(exc)
        return Rejection(index=item.index, field=field, error=reason)
    return within(item.index, value, bounds)


Model = TypeVar("Model", bound=BaseModel)


@cache
def _list_of(model: type[Model]) -> TypeAdapter[list[Model]]:
    """Validates a list of the model's values in one call."""
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def validate_all(
    items: Sequence[Item], bounds: Bounds, model: type[Incoming]
) -> list[Incoming | Rejection]:
    """validate, for each item. Nearly always every item is valid, and the schema then
    checks them all in one call (a third quicker than a call each); if any is not, each
    is checked on its own, so one bad item never affects another."""
    try:
        values = _list_of(model).validate_python([item.raw for item in items])
    except ValidationError:
        return [validate(item, bounds, model) for item in items]
    return [within(item.index, v, bounds) for item, v in zip(items, values, strict=True)]


def within(index: int, value: Bounded, bounds: Bounds) -> Bounded | Rejection:
    """Checks a fix or device event the schema has passed against the bounds; pure."""
    if not isinstance(value, DeviceEventIn) and value.accuracy_m > bounds.max_accuracy_m:
        return Rejection(
            index=index,
            field="accuracy_m",
            error=f"must be at most {bounds.max_accuracy_m:g} m",
        )
    if value.ts > bounds.latest:
        ahead = (value.ts - bounds.now).total_seconds()
        return Rejection(
            index=index,
            field="ts",
            error=f"is {ahead:.0f} s in the future "
            f"(allowed clock skew {bounds.skew.total_seconds():g} s)",
        )
    if value.ts < bounds.earliest:
        return Rejection(
            index=index,
            field="ts",
            error=f"is more than {bounds.max_fix_age_days} days old",
        )
    return value


async def admit(
    conn: asyncpg.Connection,
    tags: TagDirectory,
    supplier: Principal,
    items: Sequence[Item],
    now: datetime,
    settings: IngestSettings,
    model: type[Incoming],
) -> tuple[list[tuple[Item, Incoming, uuid.UUID]], list[Rejection]]:
    """Validates each item on its own and attributes the valid ones to the subject wearing
    the tag at their time. One bad item never affects another."""
    rejected: list[Rejection] = []
    valid: list[tuple[Item, Incoming]] = []
    bounds = Bounds.at(now, settings)
    for item, outcome in zip(items, validate_all(items, bounds, model), strict=True):
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
        else:
            valid.append((item, outcome))
    known = await tags.resolve(conn, [v.tag_id for _, v in valid])
    admitted: list[tuple[Item, Incoming, uuid.UUID]] = []
    for item, value in valid:
        subject = attribute(known, supplier, item.index, value.tag_id, value.ts)
        if isinstance(subject, Rejection):
            rejected.append(subject)
        else:
            admitted.append((item, value, subject))
    rejected.sort(key=lambda r: r.index)
    return admitted, rejected


def attribute(
    tags: dict[str, TagInfo], supplier: Principal, index: int, tag_id: str, ts: datetime
) -> uuid.UUID | Rejection:
    """The subject wearing this supplier's tag at ts, or why there is none."""
    info = tags.get(tag_id)
    if info is None:
        return Rejection(index=index, field="tag_id", error="unknown tag")
    if info.supplier_id != supplier.id:
        return Rejection(
            index=index, field="tag_id", error="tag is not registered to this supplier"
        )
    subject_id = info.subject_at(ts)
    if subject_id is None:
        return Rejection(
            index=index, field="ts", error=f"tag {tag_id} is not assigned to a subject at this time"
        )
    return subject_id


async def ingest(
    db: Database,
    bus: Bus,
    memory: IngestMemory,
    supplier: Principal,
    fixes: Sequence[Item] | Fixes,
    now: datetime,
    settings: IngestSettings,
) -> IngestResult:
    """Admits a request's fixes (the clean path if it can, else the full path) and puts
    the accepted ones on the bus."""
    incoming: Fixes = Values(fixes) if isinstance(fixes, Sequence) else fixes
    async with db.pool.acquire() as conn:
        columns = incoming.columns()
        batch = None
        if columns is not None:
            batch = await admit_columns(conn, memory.tags, supplier, columns, now, settings)
        rejected: list[Rejection] = []
        if batch is None:
            items = incoming.items()
            admitted, rejected = await admit(
                conn, memory.tags, supplier, items, now, settings, StreamedFix
            )
            # From the JSON values StreamedFix has just passed, not its fields: pydantic's
            # validator, in Rust, builds a model from strings and numbers faster than
            # from datetimes and enums (2.2 µs against 3.4 a fix, measured), or than
            # model_construct does in Python.
            batch = FixBatch.of(
                _list_of(FixMessage).validate_python(
                    [
                        {**item.raw, "subject_id": subject, "received_at": now}
                        for item, _, subject in admitted
                    ]
                )
            )
        fresh, duplicates, conflicts = await _separate_resends(conn, batch, memory.horizons)
    await bus.publish_batch(POINTS, fresh)

    FIXES_ACCEPTED.inc(len(fresh) - conflicts)
    FIXES_DUPLICATE.inc(duplicates)
    for r in rejected:
        FIXES_REJECTED.labels(r.field).inc()
    return IngestResult(
        accepted=len(fresh) - conflicts,
        duplicates=duplicates,
        conflicts=conflicts,
        rejected=rejected,
    )


# An RFC 3339 time as devices write it (upper-case T and Z, at most microseconds): the
# standard library reads these exactly as pydantic does, in 0.12 µs against about 1.
_PLAIN_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")
# The same in UTC (Z or +00:00), every time of a request at once, as columns of its
# characters: read by numpy, 0.07 µs a time against 0.26 for a match of them all and
# numpy's reading of each (twenty-sixth session), and 0.8 one by one (the match, the
# standard library, the offset, the number; docs/benchmarks.md, twentieth session).
# When every time is written as the first is, and falls on its day, as nearly always,
# the digits are read as one matrix product and the day once: 0.049 µs a time against
# 0.185 (2,000 times, best of 300; twenty-eighth session).
# In any other offset, or written any other way, a time is read one by one.
# A time's first 19 characters, a digit where "0" is.
_HEAD_TEXT = "0000-00-00T00:00:00"
_HEAD = np.frombuffer(_HEAD_TEXT.encode("ascii"), dtype=np.uint8)
_HEAD_DIGIT = _HEAD == ord("0")
_UTC_SUFFIX = np.frombuffer(b"+00:00", dtype=np.uint8)
# Each of a time's six places after the point, and what a digit there is worth in µs.
_PLACES = np.arange(6)
_PLACE_US = 10 ** (5 - _PLACES)
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
# Each digit of a time's first 19 characters: which value it is of (year, month, day,
# hour, minute, second) and its worth in it.
_HEAD_WORTH = {
    i: (value, 10 ** (len(field) - 1 - k))
    for value, (start, field) in enumerate(
        [(0, "YYYY"), (5, "MM"), (8, "DD"), (11, "hh"), (14, "mm"), (17, "ss")]
    )
    for k, i in enumerate(range(start, start + len(field)))
}
# The columns of _Layout.worth after the seven values: the day, and the second in it.
_DATE, _OF_DAY = 7, 8
_CLOCK_MAX = np.array([23, 59, 59])
_ORDINAL_1970 = date_type(1970, 1, 1).toordinal()

_NUMBERS: frozenset[type] = frozenset({float, int})
_OPTIONAL_NUMBERS: frozenset[type] = frozenset({float, int, type(None)})
_OPTIONAL_INTS: frozenset[type] = frozenset({int, type(None)})


def _numbers(values: list[Any], kinds: frozenset[type]) -> npt.NDArray[np.float64] | None:
    """The values as floats (None as NaN) if every one is of these JSON kinds."""
    if not set(map(type, values)) <= kinds:
        return None
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:  # an integer past any float
        return None


def _between(
    values: npt.NDArray[np.float64],
    lo: float,
    hi: float,
    *,
    open_lo: bool = False,
    open_hi: bool = False,
) -> bool:
    """Whether every value that is there (not NaN) lies within [lo, hi] (or open ends)."""
    there = values[~np.isnan(values)]
    low = there > lo if open_lo else there >= lo
    high = there < hi if open_hi else there <= hi
    return bool(low.all() and high.all())


def utc_times(texts: list[str]) -> npt.NDArray[np.float64] | None:
    """Times each written YYYY-MM-DDTHH:MM:SS, then a point and 1 to 6 digits or not,
    then Z or +00:00, as seconds since 1970 (exact to the microsecond, as
    `datetime.timestamp` gives them, within 285 years of 1970, where a time's µs are a
    float exactly; far beyond, as numpy's datetimes did, not always to the bit);
    None if any is written otherwise or is no time (30 February, 24:00)."""
    lines = "\n".join(texts) + "\n"
    if not texts or lines.count("\n") != len(texts) or not lines.isascii():
        return None
    chars = np.frombuffer(lines.encode("ascii"), dtype=np.uint8)
    width, rest = divmod(len(chars), len(texts))
    # Nearly always every time is as long as the others: then each is a row of one
    # array, and their first 19 characters a slice of it, not gathered a time each.
    uniform = not rest and bool((chars[width - 1 :: width] == ord("\n")).all())
    if uniform:
        # And nearly always every one is written alike, as the first is: read at once.
        # (Otherwise, as when they mix Z and +00:00 at one length, as below.)
        layout = _layout(width - 1, bool(chars[width - 2] == ord("Z")))
        if layout is not None:
            seconds = layout.seconds(chars.reshape(len(texts), width))
            if seconds is not None:
                return seconds
    if uniform:
        starts = np.arange(0, len(chars), width)
        ends = starts + (width - 1)
    else:
        ends = np.flatnonzero(chars == ord("\n"))
        starts = np.r_[0, ends[:-1] + 1]
    z = chars[ends - 1] == ord("Z")
    # The point and its digits: none, or 2 to 7 characters.
    point = ends - starts - 19 - np.where(z, 1, 6)
    if not ((point == 0) | ((point >= 2) & (point <= 7))).all():
        return None
    if uniform:
        head = chars.reshape(len(texts), width)[:, :19]
    else:
        head = chars[starts[:, None] + np.arange(19)]
    suffix = chars[ends[~z, None] - 6 + _PLACES]
    places = np.minimum(starts[:, None] + 20 + _PLACES, len(chars) - 1)
    written = _PLACES < point[:, None] - 1
    fraction = np.where(written, chars[places] - ord("0"), 0)
    if not (
        (head[:, ~_HEAD_DIGIT] == _HEAD[~_HEAD_DIGIT]).all()
        and (head[:, _HEAD_DIGIT] - ord("0") <= 9).all()  # (below "0" wraps past 9)
        and (suffix == _UTC_SUFFIX).all()
        and (chars[starts[point > 0] + 19] == ord(".")).all()
        and (fraction <= 9).all()
    ):
        return None
    d = (head - ord("0")).astype(np.int64)
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month, day = d[:, 5] * 10 + d[:, 6], d[:, 8] * 10 + d[:, 9]
    hour, minute, second = (d[:, k] * 10 + d[:, k + 1] for k in (11, 14, 17))
    return _calendar_seconds(year, month, day, hour, minute, second, fraction @ _PLACE_US)


def _calendar_seconds(
    year: npt.NDArray[np.int64],
    month: npt.NDArray[np.int64],
    day: npt.NDArray[np.int64],
    hour: npt.NDArray[np.int64],
    minute: npt.NDArray[np.int64],
    second: npt.NDArray[np.int64],
    micro: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64] | None:
    """These UTC times as seconds since 1970 (exact to the microsecond, within 285 years
    of 1970); None if any is no time (30 February, 24:00)."""
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    if not ((year >= 1) & (month >= 1) & (month <= 12)).all():
        return None
    last = _MONTH_DAYS[month - 1] + (leap & (month == 2))
    if not ((day >= 1) & (day <= last) & (hour <= 23) & (minute <= 59) & (second <= 59)).all():
        return None
    # Days since 1970 of a day of the proleptic Gregorian calendar, in years that
    # start in March (so that a leap day is a year's last).
    y = year - (month <= 2)
    era = y // 400
    of_era = y - era * 400
    of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    days = era * 146097 + of_era * 365 + of_era // 4 - of_era // 100 + of_year - 719468
    micros = ((days * 24 + hour) * 60 + minute) * 60 + second
    micros = micros * 1_000_000 + micro
    seconds: npt.NDArray[np.float64] = micros / 1e6
    return seconds


@dataclass(frozen=True, slots=True)
class _Layout:
    """How every time of a list is written when each is written as the first is: its
    characters that must be as `fixed` says, its digits, and what each digit is worth
    to the year, month, day, hour, minute, second and microsecond, the day as one
    number and the second of the day (a row of `worth` a digit)."""

    fixed: npt.NDArray[np.intp]
    fixed_chars: npt.NDArray[np.uint8]
    digits: npt.NDArray[np.intp]
    worth: npt.NDArray[np.float64]

    def seconds(self, rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64] | None:
        """The times, a row of characters each, as seconds since 1970; None if any is
        not written so, or is no time."""
        digits = rows[:, self.digits] - np.uint8(ord("0"))  # (below "0" wraps past 9)
        if not ((rows[:, self.fixed] == self.fixed_chars).all() and (digits <= 9).all()):
            return None
        # Each value is a sum of digits times powers of ten, under 2^53: a float product
        # (one BLAS call for all of them) is exact.
        # (A row a value, each contiguous.)
        values = self.worth.T @ digits.astype(np.float64).T
        date = values[_DATE]
        if not (date == date[0]).all():
            return _calendar_seconds(*values[:_DATE].astype(np.int64))
        # Nearly always a request's times fall on one day: its number found once.
        try:
            day = date_type(*(int(v) for v in values[:3, 0])).toordinal() - _ORDINAL_1970
        except ValueError:  # no such day (30 February)
            return None
        if not (values[3:6].max(axis=1) <= _CLOCK_MAX).all():
            return None
        micros = (values[_OF_DAY].astype(np.int64) + day * 86_400) * 1_000_000
        micros += values[6].astype(np.int64)
        seconds: npt.NDArray[np.float64] = micros / 1e6
        return seconds


@cache
def _layout(length: int, z: bool) -> _Layout | None:
    """The layout of a UTC time `length` characters long, ending in Z (`z`) or +00:00;
    None if no time is written so."""
    suffix = "Z" if z else "+00:00"
    places = length - 19 - len(suffix)
    if places != 0 and not 2 <= places <= 7:
        return None
    text = _HEAD_TEXT + ("." + "0" * (places - 1) if places else "") + suffix
    digits = [i for i, c in enumerate(text[: len(text) - len(suffix)]) if c == "0"]
    fixed = [i for i in range(len(text)) if i not in digits]
    # Seven values (year, month, day, hour, minute, second, microsecond), then the day
    # as one number (YYYYMMDD) and the second of the day.
    worth = np.zeros((len(digits), 9))
    for row, i in enumerate(digits):
        value, unit = _HEAD_WORTH[i] if i < 19 else (6, 10 ** (5 - (i - 20)))
        worth[row, value] = unit
    worth[:, _DATE] = worth[:, :3] @ [10_000, 100, 1]
    worth[:, _OF_DAY] = worth[:, 3:6] @ [3600, 60, 1]
    return _Layout(
        np.array(fixed, dtype=np.intp),
        np.frombuffer(text.encode(), dtype=np.uint8)[fixed],
        np.array(digits, dtype=np.intp),
        worth,
    )


def plain_times(texts: list[str]) -> npt.NDArray[np.float64] | None:
    """RFC 3339 times, each plainly written, as seconds since 1970 (exact to the
    microsecond, as `datetime.timestamp` gives them); None if any is not plainly
    written or is no time (30 February, 25:00)."""
    at_once = utc_times(texts)
    if at_once is not None:
        return at_once
    seconds: list[float] = []
    for text in texts:
        if not _PLAIN_TIME.fullmatch(text):
            return None
        try:
            seconds.append(datetime.fromisoformat(text).timestamp())
        except ValueError:
            return None
    return np.array(seconds, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class RequestColumns:
    """A request's fixes as columns, each value plainly of its JSON kind (a number a
    number and not true or false, a string a string), as the clean path reads them:
    `tag_ids` each 1 to 64 characters, `texts` the times as written; a speed, heading or
    HDOP left out or null is NaN; satellites 0 to 64, or -1 if left out or null;
    sources as codes (SOURCES). Otherwise not yet checked against any bound."""

    tag_ids: list[str]
    texts: list[str]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    accuracy_m: npt.NDArray[np.float64]
    speed_mps: npt.NDArray[np.float64]
    heading_deg: npt.NDArray[np.float64]
    hdop: npt.NDArray[np.float64]
    sats: npt.NDArray[np.int64]
    source: npt.NDArray[np.int64]

    @classmethod
    def of_values(cls, raws: Sequence[Any]) -> RequestColumns | None:
        """The columns of fixes as JSON values (dicts), or None if one is not a dict or
        holds a value not plainly of its kind."""
        if not raws or set(map(type, raws)) != {dict}:
            return None
        tag_ids = [raw.get("tag_id") for raw in raws]
        texts = [raw.get("ts") for raw in raws]
        if set(map(type, tag_ids)) != {str} or set(map(type, texts)) != {str}:
            return None
        if not all(1 <= len(t) <= 64 for t in tag_ids):
            return None
        lat = _numbers([raw.get("lat") for raw in raws], _NUMBERS)
        lon = _numbers([raw.get("lon") for raw in raws], _NUMBERS)
        accuracy = _numbers([raw.get("accuracy_m") for raw in raws], _NUMBERS)
        speed = _numbers([raw.get("speed_mps") for raw in raws], _OPTIONAL_NUMBERS)
        heading = _numbers([raw.get("heading_deg") for raw in raws], _OPTIONAL_NUMBERS)
        hdop = _numbers([raw.get("hdop") for raw in raws], _OPTIONAL_NUMBERS)
        if lat is None or lon is None or accuracy is None:
            return None
        if speed is None or heading is None or hdop is None:
            return None
        n = len(raws)
        # Satellites and source are nearly always left out: then no pass a fix.
        sats = np.full(n, -1, dtype=np.int64)
        if any("sats" in raw for raw in raws):
            given = [raw.get("sats") for raw in raws]
            if not set(map(type, given)) <= _OPTIONAL_INTS:
                return None
            if not all(v is None or 0 <= v <= 64 for v in given):
                return None
            sats = np.array([-1 if v is None else v for v in given], dtype=np.int64)
        source = np.zeros(n, dtype=np.int64)
        if any("source" in raw for raw in raws):
            named = [SOURCE_CODES.get(raw.get("source", "gps"), -1) for raw in raws]
            if -1 in named:
                return None
            source = np.array(named, dtype=np.int64)
        return cls(tag_ids, texts, lat, lon, accuracy, speed, heading, hdop, sats, source)


class Fixes(Protocol):
    """A request's fixes, read either way: as columns for the clean path (None if they
    are not plainly so), and as items for the full path."""

    def columns(self) -> RequestColumns | None: ...

    def items(self) -> Sequence[Item]: ...


@dataclass(frozen=True, slots=True)
class Values:
    """Fixes as JSON values, already parsed (a JSON batch's)."""

    listed: Sequence[Item]

    def columns(self) -> RequestColumns | None:
        return RequestColumns.of_values([item.raw for item in self.listed])

    def items(self) -> Sequence[Item]:
        return self.listed


async def admit_columns(
    conn: asyncpg.Connection,
    tags: TagDirectory,
    supplier: Principal,
    columns: RequestColumns,
    now: datetime,
    settings: IngestSettings,
) -> FixBatch | None:
    """A request's fixes as a batch when every one of them would be admitted, each time
    plainly written, checked column by column; otherwise None, and `admit` says which
    are rejected and why. Nearly every request from a supplier's platform is clean; the
    full path validates each fix with pydantic, attributes it, then makes the message,
    several times the work (docs/benchmarks.md, eighth and tenth sessions). Whatever
    this path admits, that one admits the same."""
    ts = plain_times(columns.texts)
    if ts is None:
        return None
    bounds = Bounds.at(now, settings)
    if not _between(ts, bounds.earliest.timestamp(), bounds.latest.timestamp()):
        return None
    c = columns
    if not (
        _between(c.lat, -90, 90)
        and _between(c.lon, -180, 180)
        and _between(c.accuracy_m, 0, bounds.max_accuracy_m, open_lo=True)
        and _between(c.speed_mps, 0, 150)
        and _between(c.heading_deg, 0, 360, open_hi=True)
        and _between(c.hdop, 0, 100)
    ):
        return None
    codes = await tags.read(conn, c.tag_ids)
    # (Nothing is awaited from here on: the directory answers for these numbers.)
    used, tag = np.unique(codes, return_inverse=True)
    first = np.full(len(used), np.inf)
    last = np.full(len(used), -np.inf)
    np.minimum.at(first, tag, ts)
    np.maximum.at(last, tag, ts)
    wearers = tags.wearers(used, supplier.id, first, last)
    if wearers is None:
        return None
    names = tags.codes.names
    tag_list = [names[c] for c in used.tolist()]
    # A subject a tag here: their codes by the tags'.
    subject_list, tag_subject = wearers
    return FixBatch(
        tags=tag_list,
        tag=tag,
        subjects=subject_list,
        subject=tag_subject[tag],
        ts=ts,
        received_at=np.full(len(ts), now.timestamp()),
        lat=c.lat,
        lon=c.lon,
        accuracy_m=c.accuracy_m,
        speed_mps=c.speed_mps,
        heading_deg=c.heading_deg,
        source=c.source,
        sats=c.sats,
        hdop=c.hdop,
    )


async def ingest_events(
    db: Database,
    bus: Bus,
    memory: IngestMemory,
    supplier: Principal,
    items: Sequence[Item],
    now: datetime,
    settings: IngestSettings,
) -> EventsResult:
    """Device events: validated and attributed like fixes, then put on the bus."""
    async with db.pool.acquire() as conn:
        admitted, rejected = await admit(
            conn, memory.tags, supplier, items, now, settings, DeviceEventIn
        )
    events = [
        DeviceEvent(subject_id=subject, received_at=now, **event.model_dump())
        for _, event, subject in admitted
    ]
    await bus.publish(DEVICE_EVENTS, [(e.tag_id, e) for e in events])
    return EventsResult(accepted=len(events), rejected=rejected)


async def _separate_resends(
    conn: asyncpg.Connection, batch: FixBatch, horizons: FixHorizons
) -> tuple[FixBatch, int, int]:
    """Drops identical re-sends (in the request or already stored); keeps conflicting ones,
    which the store worker sets aside, and counts them. Only fixes at or before their
    tag's horizon, or re-sends of fixes taken since, are looked up in the trail
    (services/ingest/horizons.py)."""
    unsure = await horizons.unsure(conn, batch)
    order = np.lexsort((batch.ts, batch.tag))
    twice = (np.diff(batch.tag[order]) == 0) & (np.diff(batch.ts[order]) == 0)
    if not unsure.any() and not twice.any():
        return batch, 0, 0  # nearly always: every fix new to its tag's trail, each once
    keys = list(zip(batch.tag_ids(), batch.ts.tolist(), strict=True))
    stored = await repository.stored_positions(
        conn, [k for k, u in zip(keys, unsure.tolist(), strict=True) if u]
    )
    first: dict[tuple[str, float], int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    if not stored and len(first) == len(keys):
        return batch, 0, 0  # every fix new, each once

    def position(i: int) -> tuple[float, float, float]:
        return (float(batch.lat[i]), float(batch.lon[i]), float(batch.accuracy_m[i]))

    keep: list[int] = []
    duplicates = conflicts = 0
    for i, key in enumerate(keys):
        known = stored.get(key)
        if known is None:
            twin = first[key]
            if twin == i:
                keep.append(i)
                continue
            known = position(twin)
        if known == position(i):
            duplicates += 1
            continue
        conflicts += 1
        keep.append(i)
    return batch.take(np.array(keep, dtype=np.int64)), duplicates, conflicts
