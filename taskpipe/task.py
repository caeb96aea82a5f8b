"""Tasks: what a producer pushes and what a worker receives.

``Task(args, priority=…, run_after=…, max_attempts=…)`` is the envelope around the
user's arguments. Stores give it an id when it is pushed; a worker receives it with
``attempt`` filled in. ``TaskInfo`` is the read-only record that introspection returns.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from . import clock

__all__ = ["Task", "TaskBuilder", "TaskId", "Status", "Attempt", "TaskInfo", "AttemptError"]

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


class Status(StrEnum):
    """Where a task is in its life: Pending → Running → Done | Failed (→ retry) … | Dead."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


@dataclass
class Task(Generic[T]):
    """A unit of work: the handler's arguments plus how and when to run them.

    ``run_after`` is a timedelta (from now) or an aware datetime. ``key``, when set,
    makes the push idempotent: a second task with the same key in the same store is
    not enqueued again (cron ticks use this).
    """

    args: T
    _: KW_ONLY
    id: TaskId | None = None
    priority: int = 0
    run_after: timedelta | datetime | None = None
    max_attempts: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    # Filled in by a store when the task is handed to a worker: the attempt being
    # run, the queue, the lease token acks must carry, and the still-encoded args.
    attempt: int = 0
    queue: str | None = None
    lease: str | None = field(default=None, repr=False, compare=False)
    payload: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise TypeError(f"priority must be an int, not {type(self.priority).__name__}")
        if self.max_attempts is not None and (
            not isinstance(self.max_attempts, int) or self.max_attempts < 1
        ):
            raise ValueError(f"max_attempts must be a positive int or None, got {self.max_attempts!r}")
        if self.run_after is not None and not isinstance(self.run_after, (timedelta, datetime)):
            raise TypeError(
                "run_after must be a timedelta or an aware datetime, "
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
        if isinstance(self.run_after, timedelta):
            return now + self.run_after.total_seconds()
        return clock.to_timestamp(self.run_after)

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

    def run_after(self, value: timedelta | datetime) -> TaskBuilder[T]:
        """Do not run before this delay (timedelta) or instant (aware datetime)."""
        self._options["run_after"] = value
        return self

    def max_attempts(self, value: int) -> TaskBuilder[T]:
        """Attempts before the task is Dead; overrides the worker's retry policy."""
        self._options["max_attempts"] = value
        return self

    def meta(self, **values: Any) -> TaskBuilder[T]:
        """Attach metadata (JSON-serialisable) kept with the task."""
        self._options.setdefault("meta", {}).update(values)
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
    at: datetime


@dataclass(frozen=True)
class TaskInfo:
    """A task as stored: what introspection (``fetch_by_id``, ``list_tasks``) returns."""

    id: TaskId
    queue: str
    status: Status
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
