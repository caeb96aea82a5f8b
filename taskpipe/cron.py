"""``CronStream`` and ``Tick``: durable, unique periodic jobs.

::

    import schedule
    from taskpipe.cron import CronStream, Tick

    def morning(tick: Tick) -> None:          # the handler gets the Tick by annotation
        print("due at", tick.due)

    backend = CronStream(schedule.every().day.at("07:00"), tz="Europe/Paris").pipe_to(SqliteStorage(db))
    backend = CronStream("0 7 * * 1-5", tz="Europe/Paris", missed="latest").pipe_to(SqliteStorage(db))
    WorkerBuilder("morning-cereal").backend(backend).build(morning).run()

The source is a ``schedule`` job (read, never registered with ``schedule``'s global
scheduler) or a cron expression (``"@daily"``, ``"@hourly"``, 5 or 6 fields); the due
times come from ``taskpipe.schedules``: anchored (no drift) and time-zone aware across
DST.

**Durable and unique.** Each tick is pushed as ``Task(Tick(due, name), run_after=due,
key="cron:<name>:<due in UTC, ISO 8601>")``, and a store enqueues a key once, so several
processes piping the same stream into one database enqueue each tick once. (``:`` and
``%`` in the name are written ``%3A`` and ``%25`` in the key; give streams names unique
within a database.)

**Where a stream starts.** The first time a stream object is polled (or iterated) it
looks up the last tick recorded in the store for its name:

- none (a first start, or the rows were purged): it emits the ticks strictly after now;
- otherwise the ticks missed since that one (due after it, up to now) follow ``missed``:
  ``"skip"`` drops them, ``"latest"`` enqueues only the most recent, ``"all"`` enqueues
  them all, at most the latest ``max_catch_up``. Then it goes on after now.

From then on the stream emits every due time in order; one that is already past when
it gets there (the worker was busy, the sink was full) is pushed at once, due at once.

**Time** is read through ``taskpipe.clock``. Under ``run()`` the stream sleeps until each
due time in short real-time slices, looking at ``clock.now()`` each time, and wakes when
the worker stops. Under ``run_until_idle()`` it emits the ticks due by ``clock.now()``
and never sleeps: tests move a frozen clock and call ``run_until_idle()`` again.
"""

# No ``from __future__ import annotations`` here: ``Tick.due``'s annotation must be the
# real ``datetime`` class, fixed at import. As a string it would be resolved when a codec
# first decodes a Tick, and under freezegun the name ``datetime`` means FakeDatetime then.
import logging
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from . import clock
from .pipe import Pipe, PipeSource, pipe_to
from .schedules import Schedule, parse_schedule
from .store import require
from .task import Task

__all__ = ["CronStream", "Tick", "MISSED_POLICIES"]

log = logging.getLogger("taskpipe.cron")

MISSED_POLICIES = ("skip", "latest", "all")
SLEEP_SLICE = 0.1  # seconds of real time between looks at the clock while waiting for a tick


@dataclass(frozen=True)
class Tick:
    """One due time of a ``CronStream``: ``due`` (an aware datetime, in the stream's time
    zone) and ``name`` (the stream's). Handlers receive it by annotation (``tick: Tick``)."""

    due: datetime
    name: str


def _plain(value: datetime) -> datetime:
    """The same instant as a plain ``datetime``: under freezegun the clock and the
    schedules make ``FakeDatetime`` objects, which codecs refuse."""
    cls = type(value)
    if cls.__module__ == "datetime":
        return value
    real = next(c for c in cls.__mro__ if c.__module__ == "datetime" and c.__name__ == "datetime")
    return real(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=value.tzinfo,
        fold=value.fold,
    )


def _escape(name: str) -> str:
    return name.replace("%", "%25").replace(":", "%3A")


class CronStream(PipeSource):
    """An endless stream of ``Task[Tick]`` at the due times of ``source``.

    ``CronStream(source, *, name=None, tz="UTC", missed="skip", max_catch_up=100)``:
    ``source`` a cron expression or a ``schedule`` job; ``name`` defaults to the
    schedule's description (e.g. ``"every day at 07:00"``); see the module docstring.
    """

    endless = True
    needs = (("keys", "enqueue each cron tick exactly once (idempotent keyed pushes)"),)

    def __init__(
        self,
        source: str | Any,
        *,
        name: str | None = None,
        tz: str | ZoneInfo = "UTC",
        missed: str = "skip",
        max_catch_up: int = 100,
    ):
        self.schedule: Schedule = parse_schedule(source, tz=tz)
        self.name = self.schedule.name if name is None else name
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a CronStream needs a non-empty name, got {self.name!r}")
        if missed not in MISSED_POLICIES:
            raise ValueError(f"missed must be one of 'skip', 'latest' or 'all', got {missed!r}")
        if not isinstance(max_catch_up, int) or isinstance(max_catch_up, bool) or max_catch_up < 1:
            raise ValueError(f"max_catch_up must be a positive int, got {max_catch_up!r}")
        self.missed = missed
        self.max_catch_up = max_catch_up
        self.key_prefix = f"cron:{_escape(self.name)}:"
        self._lock = threading.Lock()
        self._started = False
        self._backlog: deque[datetime] = deque()  # missed ticks to enqueue first
        self._next: datetime | None = None  # the next due time after the backlog

    def __repr__(self) -> str:
        return f"CronStream({self.name!r}, tz={self.schedule.tz.key!r}, missed={self.missed!r})"

    def pipe_to(self, sink: Any) -> Pipe:
        """Return a ``Pipe`` that feeds this stream's ticks into ``sink``."""
        return pipe_to(self, sink)

    # Ticks -------------------------------------------------------------------------------
    def key(self, due: datetime) -> str:
        """The idempotency key of the tick due at ``due``."""
        return self.key_prefix + due.astimezone(UTC).isoformat()

    def task(self, due: datetime) -> Task[Tick]:
        """The task for the tick due at ``due``: keyed, and not to run before ``due``."""
        due = _plain(due)
        return Task(Tick(due, self.name), key=self.key(due), run_after=due)

    def last_recorded(self, store: Any) -> datetime | None:
        """The due time of the last tick of this stream recorded in ``store`` (UTC), or
        None when there is none (or no store is given)."""
        if store is None:
            return None
        require(store, "keys", "find the last tick a cron stream recorded")
        key = store.last_key(self.key_prefix)
        if key is None:
            return None
        try:
            return datetime.fromisoformat(key[len(self.key_prefix) :])
        except ValueError:
            log.warning("cron stream %r: ignoring unreadable key %r", self.name, key)
            return None

    def start(self, store: Any = None) -> None:
        """Decide where the stream begins, once per stream object: after now on a first
        start, else from the last tick recorded in ``store`` under the ``missed`` policy."""
        with self._lock:
            if self._started:
                return
            now = clock.now()
            begin = now
            backlog: list[datetime] = []
            last = self.last_recorded(store)
            if last is not None:
                if self.missed == "latest":
                    backlog = self.schedule.due_between(last, now, limit=1)
                elif self.missed == "all":
                    backlog = self.schedule.due_between(last, now, limit=self.max_catch_up)
                begin = max(now, last)
                log.info(
                    "cron stream %r: last tick %s, %d missed tick(s) enqueued (missed=%r)",
                    self.name,
                    last.isoformat(),
                    len(backlog),
                    self.missed,
                )
            self._backlog = deque(backlog)
            self._next = self.schedule.next_after(begin)
            self._started = True

    def _peek(self) -> datetime:
        with self._lock:
            return self._backlog[0] if self._backlog else self._next  # type: ignore[return-value]

    def _take(self, due: datetime) -> bool:
        """Consume ``due`` if it is still the next one (another consumer may have taken it)."""
        with self._lock:
            if self._backlog:
                if self._backlog[0] != due:
                    return False
                self._backlog.popleft()
                return True
            if self._next != due:
                return False
            self._next = self.schedule.next_after(due)
            return True

    # Iteration -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Task[Tick]]:
        """Iterate forever, sleeping until each tick (first-start rules: no store)."""
        return self.stream()

    def stream(self, sink: Any = None, stop: threading.Event | None = None) -> Iterator[Task[Tick]]:
        """Yield each tick's task when it comes due, sleeping in between (through
        ``taskpipe.clock``); return soon after ``stop`` is set. ``sink`` is the store
        whose last recorded tick decides where the stream starts."""
        stop = stop if stop is not None else threading.Event()
        self.start(sink)
        while not stop.is_set():
            due = self._peek()
            if not self._sleep_until(due, stop):
                return
            if self._take(due):
                yield self.task(due)

    def ready(self, sink: Any = None) -> Iterator[Task[Tick]]:
        """Yield the tasks of the ticks due by ``clock.now()``, in order, without sleeping."""
        self.start(sink)
        while True:
            due = self._peek()
            if due > clock.now():
                return
            if self._take(due):
                yield self.task(due)

    def _sleep_until(self, due: datetime, stop: threading.Event) -> bool:
        """Wait until ``clock.now()`` reaches ``due``; False if ``stop`` was set first."""
        while not stop.is_set():
            remaining = (due - clock.now()).total_seconds()
            if remaining <= 0:
                return True
            stop.wait(min(remaining, SLEEP_SLICE))
        return False
