"""Zone schedules: weekly windows in the zone's own time zone, with dated exceptions.

A window runs from `start` to `end` local time on each listed day; when `end` is not
after `start` it crosses midnight and ends on the next day. An exception replaces, for
one local date, the windows that start on that date (none, or others).

Clock changes: local times are turned into instants with zoneinfo. A start or end that
falls in the spring-forward gap means the moment the clocks jump past it (01:30 on the
last Sunday of March in London is 01:00 GMT, when 01:00 becomes 02:00); a time that
occurs twice in autumn means its first occurrence. Window lengths in
instants therefore shrink by an hour in March and grow by one in October, which is what
a curfew "19:00 to 07:00" means to the people under it.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from enum import StrEnum
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.timeutil import local_to_utc

DEFAULT_TIMEZONE = "Europe/London"


class Day(StrEnum):
    mon = "mon"
    tue = "tue"
    wed = "wed"
    thu = "thu"
    fri = "fri"
    sat = "sat"
    sun = "sun"


DAYS = list(Day)


class LocalWindow(BaseModel):
    model_config = ConfigDict(frozen=True)

    start: time
    end: time


class WeeklyWindow(LocalWindow):
    days: list[Day] = Field(min_length=1, max_length=7)


class DatedException(BaseModel):
    """For one local date, the windows that start that day (empty: none that day)."""

    model_config = ConfigDict(frozen=True)

    date: date
    windows: list[LocalWindow] = Field(default_factory=list, max_length=10)


class Schedule(BaseModel):
    model_config = ConfigDict(frozen=True)

    weekly: list[WeeklyWindow] = Field(min_length=1, max_length=50)
    exceptions: list[DatedException] = Field(default_factory=list, max_length=500)

    @model_validator(mode="after")
    def _distinct_exception_dates(self) -> Schedule:
        dates = [e.date for e in self.exceptions]
        if len(dates) != len(set(dates)):
            raise ValueError("each exception date may appear once")
        return self


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name


class Timetable:
    """A schedule placed in a time zone: turns local windows into UTC intervals."""

    def __init__(self, schedule: Schedule | None, timezone: str = DEFAULT_TIMEZONE) -> None:
        self.schedule = schedule
        self.tz = ZoneInfo(timezone)

    @cached_property
    def _exceptions(self) -> dict[date, list[LocalWindow]]:
        if self.schedule is None:
            return {}
        return {e.date: list(e.windows) for e in self.schedule.exceptions}

    def _local_windows(self, day: date) -> list[LocalWindow]:
        assert self.schedule is not None
        if day in self._exceptions:
            return self._exceptions[day]
        weekday = DAYS[day.weekday()]
        return [w for w in self.schedule.weekly if weekday in w.days]

    def _instant(self, day: date, at: time) -> datetime:
        return local_to_utc(datetime.combine(day, at), self.tz)

    def windows(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """Active intervals [from, to) in UTC that overlap [start, end), in order.

        With no schedule the zone is always active: one interval covering everything.
        """
        if self.schedule is None:
            return [(start, end)]
        out: list[tuple[datetime, datetime]] = []
        first = start.astimezone(self.tz).date() - timedelta(days=1)
        last = end.astimezone(self.tz).date()
        day = first
        while day <= last:
            for w in self._local_windows(day):
                opens = self._instant(day, w.start)
                closes_day = day if w.end > w.start else day + timedelta(days=1)
                closes = self._instant(closes_day, w.end)
                if opens < end and closes > start and closes > opens:
                    out.append((opens, closes))
            day += timedelta(days=1)
        out.sort()
        return out
