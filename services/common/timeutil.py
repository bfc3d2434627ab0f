"""Time helpers: everything stored and compared in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo


def utcnow() -> datetime:
    return datetime.now(UTC)


def from_epoch(seconds: float) -> datetime:
    """The UTC instant this many seconds after 1970 (as fix batches carry times)."""
    return datetime.fromtimestamp(seconds, UTC)


def local_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """A naive local wall-clock time in tz as a UTC instant.

    A time that happens twice (autumn) means its first occurrence. A time that never
    happens (the spring-forward gap) means the moment the clocks jump past it: 01:30 on
    the last Sunday of March in London is 01:00 GMT, when 01:00 becomes 02:00.
    """
    local = wall.replace(tzinfo=tz)
    instant = local.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant
    step = timedelta(minutes=1)
    while (instant - step).astimezone(tz).replace(tzinfo=None) >= wall:
        instant -= step
    return instant
