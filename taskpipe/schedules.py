"""Anchored, drift-free due times for periodic jobs (pure: no clock, no threads, no state).

A schedule is a fixed set of instants; ``next_after(t)`` only looks that set up, so a late
caller never shifts later due times (no drift).

Anchoring:
  * cron expressions: whatever cronsim matches, in the schedule's time zone;
  * ``every(N).seconds/minutes/hours``: multiples of N units since 1970-01-01T00:00:00 UTC, in
    absolute time (DST never shifts them). ``.at()`` on an hour/minute job sets the local
    minute/second within the unit (``every().hour.at(":15")`` is minute 15 of every local hour);
  * ``every(N).days``: every N local dates counted from local date 1970-01-01, at the ``.at()``
    wall time (default 00:00);
  * ``every(N).weeks``: every N weeks counted from the week of Monday 1970-01-05, on the job's
    weekday (Monday by default), at the ``.at()`` wall time (default 00:00).

DST, for wall-clock times (days, weeks, and cron through cronsim, which behaves the same way):
  * a wall time in a spring-forward gap (02:30 in Paris) fires once, at the first valid instant
    after the gap (03:00 local, the transition itself);
  * a wall time that occurs twice (fall back) fires once, at its first occurrence (fold=0);
    interval jobs (seconds/minutes/hours, ``@hourly``-like cron) keep firing every real unit.

Instants are compared in UTC: aware datetimes sharing a tzinfo compare by wall time, fold ignored.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import schedule
from cronsim import CronSim, CronSimError

from taskpipe.errors import TaskpipeError

__all__ = ["ScheduleError", "Schedule", "CronSchedule", "EverySchedule", "parse_schedule"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class ScheduleError(TaskpipeError, ValueError):
    """A schedule could not be built or used; the message says what is wrong and how to fix it."""


def _zone(tz: str | ZoneInfo) -> ZoneInfo:
    """Return ``tz`` as a ZoneInfo, or raise ScheduleError for an unknown zone."""
    if isinstance(tz, ZoneInfo):
        return tz
    try:
        return ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            f"unknown time zone {tz!r}: use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from exc


def _aware(value: object, what: str) -> datetime:
    """Return ``value`` if it is an aware datetime, else raise ScheduleError."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ScheduleError(
            f"{what} must be an aware datetime, got {value!r}: "
            "pass an aware datetime, e.g. datetime.now(timezone.utc)"
        )
    return value


def _resolve_wall(wall: datetime, tz: ZoneInfo) -> datetime:
    """Turn a naive local wall time into an instant: first occurrence if repeated, gap end if missing."""
    due = wall.replace(tzinfo=tz, fold=0)
    if due.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall:
        return due
    # In a gap: search the first whole second whose local wall time lies past `wall`.
    lo = int(wall.replace(tzinfo=tz, fold=1).timestamp())  # before the transition
    hi = int(due.timestamp())  # after the transition
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) > wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, tz)


class Schedule(ABC):
    """Base of all schedules: a fixed, increasing set of due instants in time zone ``tz``."""

    name: str
    tz: ZoneInfo

    @abstractmethod
    def next_after(self, instant: datetime) -> datetime:
        """Return the first due time strictly after ``instant`` (aware), in the schedule's tz."""

    @abstractmethod
    def explain(self) -> str:
        """Return a human description of the schedule."""

    def iter_after(self, instant: datetime) -> Iterator[datetime]:
        """Lazily yield every due time strictly after ``instant``, increasing."""
        return self._chain(self.next_after(instant))  # validates now, not at the first next()

    def _chain(self, due: datetime) -> Iterator[datetime]:
        """Yield ``due`` and then each following due time."""
        while True:
            yield due
            due = self.next_after(due)

    def due_between(
        self, start: datetime, end: datetime, limit: int | None = None
    ) -> list[datetime]:
        """Return the due times d with ``start < d <= end``, increasing; only the last ``limit`` if given."""
        start = _aware(start, "start").astimezone(UTC)
        end = _aware(end, "end").astimezone(UTC)
        if limit is not None and limit < 0:
            raise ScheduleError(f"limit must be None or >= 0, got {limit}")
        if end <= start or limit == 0:
            return []
        if limit is None:
            return list(itertools.takewhile(lambda d: d <= end, self.iter_after(start)))
        # Look back from `end` over a doubling window until it holds `limit` due times.
        window = timedelta(seconds=1)
        while True:
            low = start if window >= end - start else end - window
            due = self.iter_after(low)
            tail = deque(itertools.takewhile(lambda d: d <= end, due), maxlen=limit)
            if len(tail) == limit or low == start:
                return list(tail)
            window *= 2

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, tz={self.tz.key!r})"


class CronSchedule(Schedule):
    """Due times of a cron expression (5 fields, 6 with leading seconds, or an @alias), via cronsim."""

    def __init__(self, expression: str, tz: str | ZoneInfo = "UTC") -> None:
        """Validate ``expression`` and bind it to time zone ``tz``."""
        if not isinstance(expression, str):
            raise ScheduleError(f"cron expression must be a str, got {type(expression).__name__}")
        self.name = expression.strip()
        self.tz = _zone(tz)
        self.expression = _ALIASES.get(self.name.lower(), self.name)
        try:
            CronSim(self.expression, datetime(2000, 1, 1, tzinfo=self.tz))
        except (CronSimError, ValueError) as exc:
            raise ScheduleError(
                f"invalid cron expression {self.name!r} ({exc}): expected 5 fields "
                "'minute hour day-of-month month day-of-week' (or 6 with leading seconds), "
                "e.g. '0 7 * * 1-5', or one of " + ", ".join(_ALIASES)
            ) from exc

    def iter_after(self, instant: datetime) -> Iterator[datetime]:
        """Lazily yield every due time strictly after ``instant``, increasing."""
        return self._iter_cron(_aware(instant, "instant").astimezone(UTC))

    def _iter_cron(self, last: datetime) -> Iterator[datetime]:
        """Yield cronsim's matches after ``last`` (UTC: compare instants, not wall times)."""
        for due in CronSim(self.expression, last.astimezone(self.tz)):
            if due > last:  # guards the repeated hour: cronsim walks wall time there
                yield due
                last = due.astimezone(UTC)

    def next_after(self, instant: datetime) -> datetime:
        """Return the first due time strictly after ``instant`` (aware), in the schedule's tz."""
        due = next(self.iter_after(instant), None)
        if due is None:
            raise ScheduleError(f"cron expression {self.name!r} matches nothing after {instant}")
        return due

    def explain(self) -> str:
        """Return cronsim's English description plus the time zone."""
        text = CronSim(self.expression, datetime(2000, 1, 1, tzinfo=self.tz)).explain()
        return f"{text} ({self.tz.key})"


class EverySchedule(Schedule):
    """Anchored due times of a ``schedule.Job`` such as ``schedule.every(10).minutes``."""

    def __init__(self, job: schedule.Job, tz: str | ZoneInfo = "UTC") -> None:
        """Read ``job``'s settings (never registering or running it); ``job.at_time_zone`` wins over ``tz``."""
        unit, interval, at = job.unit, job.interval, job.at_time
        if job.latest is not None:
            raise ScheduleError(
                f"random intervals (.to({job.latest})) are not supported: their due times are "
                "random, so they cannot be anchored; use a fixed interval such as every(N).minutes"
            )
        if job.cancel_after is not None:
            raise ScheduleError(".until() is not supported: stop consuming due times yourself")
        if unit not in ("seconds", "minutes", "hours", "days", "weeks"):
            raise ScheduleError(
                f"job has no usable unit ({unit!r}): finish it, e.g. schedule.every(10).minutes"
            )
        if not isinstance(interval, int) or interval < 1:
            raise ScheduleError(f"interval must be a positive int, got {interval!r}")
        if job.start_day is not None and (unit != "weeks" or job.start_day not in _WEEKDAYS):
            raise ScheduleError(
                f"weekday {job.start_day!r} needs a weekly job, e.g. every().monday"
            )
        if at is not None and unit == "seconds":
            raise ScheduleError(".at() is not supported on seconds jobs")
        zone = getattr(job.at_time_zone, "zone", None) or job.at_time_zone
        self.tz = _zone(zone) if zone is not None else _zone(tz)
        self.unit, self.interval, self.at_time = unit, interval, at
        self.start_day = job.start_day
        self.name = self._describe()

    def _describe(self) -> str:
        """Build the default name, e.g. 'every 10 minutes' or 'every monday at 09:30'."""
        if self.start_day:
            text = f"every {self.start_day}"
        elif self.interval == 1:
            text = f"every {self.unit[:-1]}"
        else:
            text = f"every {self.interval} {self.unit}"
        at = self.at_time
        if at is None:
            return text
        if self.unit == "minutes":
            return f"{text} at :{at.second:02d}"
        if self.unit == "hours":
            return f"{text} at " + (
                f"{at.minute:02d}:{at.second:02d}" if at.second else f":{at.minute:02d}"
            )
        return f"{text} at {at.strftime('%H:%M:%S' if at.second else '%H:%M')}"

    def next_after(self, instant: datetime) -> datetime:
        """Return the first due time strictly after ``instant`` (aware), in the schedule's tz."""
        instant = _aware(instant, "instant").astimezone(UTC)  # UTC: compare instants, not walls
        if self.unit not in _UNIT_SECONDS:
            return self._next_on_calendar(instant)
        first = self._next_on_grid(instant, self._phase(instant))
        found = []  # when the UTC offset changes (by 30 min), try the phase of either side
        for phase in {self._phase(instant), self._phase(first)}:
            due = self._next_on_grid(instant, phase)
            for _ in range(4):
                if self._phase(due) == phase:  # the local minute/second is the .at() one
                    found.append(due)
                    break
                due = self._next_on_grid(due, phase)
        return min(found, default=first)

    def _phase(self, instant: datetime) -> int:
        """Seconds past the UTC grid at which the job is due (local .at() minute/second)."""
        if self.at_time is None:
            return 0
        at = self.at_time.second + (60 * self.at_time.minute if self.unit == "hours" else 0)
        offset = instant.astimezone(self.tz).utcoffset() or timedelta()
        return int(at - offset.total_seconds()) % _UNIT_SECONDS[self.unit]

    def _next_on_grid(self, instant: datetime, phase: int) -> datetime:
        """First instant ``k * period + phase`` seconds after the UTC epoch that is past ``instant``."""
        period = self.interval * _UNIT_SECONDS[self.unit] * 1_000_000
        elapsed = (instant - _EPOCH) // timedelta(microseconds=1) - phase * 1_000_000
        micros = (elapsed // period + 1) * period + phase * 1_000_000
        return (_EPOCH + timedelta(microseconds=micros)).astimezone(self.tz)

    def _next_on_calendar(self, instant: datetime) -> datetime:
        """First local date on the day/week grid whose wall time resolves past ``instant``."""
        if self.unit == "days":
            first, step = date(1970, 1, 1), self.interval
        else:
            first = date(1970, 1, 5) + timedelta(days=_WEEKDAYS.index(self.start_day or "monday"))
            step = 7 * self.interval
        wall = self.at_time or time(0)
        today = instant.astimezone(self.tz).date()
        n = (today - first).days // step - 1  # one period back: wall times may resolve late
        while True:
            day = first + timedelta(days=n * step)
            due = _resolve_wall(datetime.combine(day, wall), self.tz)
            if due > instant:
                return due
            n += 1

    def explain(self) -> str:
        """Return the name plus the anchor and time zone."""
        if self.unit in _UNIT_SECONDS:
            anchor = "multiples of the interval since 1970-01-01 00:00 UTC"
        elif self.unit == "days":
            anchor = "counting days from local date 1970-01-01"
        else:
            anchor = "counting weeks from the week of Monday 1970-01-05"
        return f"{self.name} ({self.tz.key}; {anchor})"


def parse_schedule(
    source: str | schedule.Job | Schedule, *, tz: str | ZoneInfo = "UTC"
) -> Schedule:
    """Build a Schedule from a cron expression, a ``schedule.Job``, or return a Schedule as is."""
    if isinstance(source, Schedule):
        return source
    if isinstance(source, str):
        return CronSchedule(source, tz=tz)
    if isinstance(source, schedule.Job):
        return EverySchedule(source, tz=tz)
    raise ScheduleError(
        f"cannot build a schedule from {type(source).__name__}: pass a cron expression str "
        "(e.g. '0 7 * * 1-5'), a schedule.Job (e.g. schedule.every(10).minutes) or a Schedule"
    )
