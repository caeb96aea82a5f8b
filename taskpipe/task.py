"""Tasks: what a producer pushes and what a worker receives.

``Task(args, priority=…, run_after=…, max_attempts=…)`` is the envelope around the
user's arguments. Stores give it an id when it is pushed; a worker receives it with
``attempt`` filled in. ``TaskInfo`` is the read-only record that introspection returns.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Generic, TypeVar

from . import clock

__all__ = [
    "Task",
    "TaskBuilder",
    "TaskId",
    "Status",
    "Attempt",
    "TaskInfo",
    "AttemptError",
    "Recovery",
    "RawStatus",
]

T = TypeVar("T")


class TaskId(int):
    """A task's id in its store (an integer); injectable into handlers by annotation."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"TaskId({int(self)})"

    def __str__(self) -> str:  # str(), f"{id}" and "%s" give the number, not the repr
        return int.__repr__(self)


class Attempt(int):
    """Which attempt this run is (1 for the first); injectable into handlers by annotation."""

    __slots__ = ()


class Status(str, Enum):  # noqa: UP042 - the contract's spelling (DESIGN §4a)
    """Where a task is in its life: Pending → Running → Done | Failed (→ retry) … | Dead."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"

    def __str__(self) -> str:  # "done", as stored, not "Status.DONE"
        return self.value


class RawStatus(str):
    """A stored status that taskpipe does not know (another program wrote it), as
    stored: a ``str`` whose ``value`` is itself, like a ``Status``'s."""

    __slots__ = ()

    @property
    def value(self) -> str:
        """The stored text (what ``Status.value`` is for a known status)."""
        return str(self)


_INT64 = 2**63
MAX_DELAY = 100 * 365.25 * 86400  # the longest run_after given in seconds


def _check_range(name: str, value: int) -> None:
    """Integers go into 64-bit columns: say so here, not with an OverflowError later."""
    if not -_INT64 <= value < _INT64:
        raise ValueError(f"{name} must fit in a signed 64-bit integer, got {value}")


@dataclass
class Task(Generic[T]):
    """A unit of work: the handler's arguments plus how and when to run them.

    ``run_after`` is a timedelta or seconds (from now), or an aware datetime. ``key``, when set,
    makes the push idempotent: a second task with the same key in the same store is
    not enqueued again (cron ticks use this).
    """

    args: T
    _: KW_ONLY
    id: TaskId | None = None
    priority: int = 0
    run_after: timedelta | datetime | float | None = None
    max_attempts: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    # Filled in when the task is handed to a handler: the attempt being run, the queue.
    attempt: int = 0
    queue: str | None = None
    #: When handed to a handler: the epoch second it was due (its ``run_at``; after a
    #: failed attempt, the retry's), or None when the store does not say.
    due_at: float | None = field(default=None, init=False, repr=False, compare=False)
    #: Set by a ``filter`` layer that skipped the task (its handler did not run), so
    #: that layers around it (metrics, tracing) can tell a skip from a result.
    skipped: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise TypeError(f"priority must be an int, not {type(self.priority).__name__}")
        _check_range("priority", self.priority)
        if self.id is not None:
            _check_range("id", self.id)
        if self.max_attempts is not None and (
            not isinstance(self.max_attempts, int) or self.max_attempts < 1
        ):
            raise ValueError(
                f"max_attempts must be a positive int or None, got {self.max_attempts!r}"
            )
        if self.max_attempts is not None:
            _check_range("max_attempts", self.max_attempts)
        if isinstance(self.run_after, (int, float)) and not isinstance(self.run_after, bool):
            delay = clock.seconds(self.run_after, name="run_after")
            if not delay <= MAX_DELAY:  # (NaN too) a timedelta cannot hold it, nor a store
                raise ValueError(
                    f"run_after must be at most {MAX_DELAY:.0f} seconds (about 100 years), "
                    f"got {self.run_after!r}"
                )
            self.run_after = timedelta(seconds=delay)
        if self.run_after is not None and not isinstance(self.run_after, (timedelta, datetime)):
            raise TypeError(
                "run_after must be a timedelta, seconds or an aware datetime, "
                f"not {type(self.run_after).__name__}"
            )
        if isinstance(self.run_after, datetime):
            clock.to_timestamp(self.run_after)  # rejects naive datetimes now, not at push
        if self.meta is None:
            self.meta = {}

    def run_at(self, now: float | None = None) -> float:
        """The epoch second at which this task becomes due."""
        now = clock.timestamp() if now is None else now
        if self.run_after is None:
            return now
        if isinstance(self.run_after, datetime):
            return clock.to_timestamp(self.run_after)
        return now + clock.seconds(self.run_after)  # a timedelta (seconds became one)

    @staticmethod
    def builder(args: T) -> TaskBuilder[T]:
        """Start building a task with chained calls: ``Task.builder(x).priority(1).build()``."""
        return TaskBuilder(args)


class TaskBuilder(Generic[T]):
    """Chained construction of a ``Task``; each call returns the builder."""

    def __init__(self, args: T):
        self._args = args
        self._options: dict[str, Any] = {}

    def id(self, value: int) -> TaskBuilder[T]:
        """Give the task an explicit id."""
        self._options["id"] = TaskId(value)
        return self

    def priority(self, value: int) -> TaskBuilder[T]:
        """Higher runs first (default 0)."""
        self._options["priority"] = value
        return self

    def run_after(self, value: timedelta | float | datetime) -> TaskBuilder[T]:
        """Do not run before this delay (timedelta or seconds) or instant (aware datetime)."""
        self._options["run_after"] = value
        return self

    def max_attempts(self, value: int) -> TaskBuilder[T]:
        """Attempts before the task is Dead; overrides the worker's retry policy."""
        self._options["max_attempts"] = value
        return self

    def meta(self, values: dict[str, Any] | None = None, /, **more: Any) -> TaskBuilder[T]:
        """Attach metadata (JSON-serialisable) kept with the task: a dict, keywords, or both."""
        meta = self._options.setdefault("meta", {})
        meta.update(values or {})
        meta.update(more)
        return self

    def key(self, value: str) -> TaskBuilder[T]:
        """Make the push idempotent under this key."""
        self._options["key"] = value
        return self

    def build(self) -> Task[T]:
        """Return the task."""
        return Task(self._args, **self._options)


@dataclass(frozen=True)
class AttemptError:
    """One failed attempt: its number, the error line, the traceback and when."""

    attempt: int
    error: str
    traceback: str | None
    at: datetime | None  # None only for a row another program wrote without a time


@dataclass(frozen=True)
class Recovery:
    """A re-enqueue after the task's worker stopped beating: which run (``worker``),
    when it was last seen, when the task was re-enqueued (``at``), and whether it
    counted towards ``max_recoveries`` (a task that ran beside others when its worker
    died is not blamed: it runs alone next time)."""

    worker: str | None
    last_seen: datetime | None
    at: datetime | None  # None only for a row another program wrote without a time
    counted: bool


@dataclass(frozen=True)
class TaskInfo:
    """A task as stored: what introspection (``fetch_by_id``, ``list_tasks``) returns.

    ``status`` is a ``Status``, or, for a row another program wrote with a status
    taskpipe does not know, a ``RawStatus``: that text as stored, with a ``.value``."""

    id: TaskId
    queue: str
    status: Status | RawStatus
    args: Any
    priority: int
    run_at: datetime | None
    attempts: int
    max_attempts: int | None
    result: Any
    errors: tuple[AttemptError, ...]
    created_at: datetime | None
    started_at: datetime | None
    done_at: datetime | None
    worker: str | None
    meta: dict[str, Any]
    recoveries: tuple[Recovery, ...] = ()
