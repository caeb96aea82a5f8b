"""What a worker reports to ``on_event(ctx, event)`` callbacks.

Every event is a small frozen dataclass and a subclass of ``Event``, so a callback
can ``match`` on the class::

    def on_event(ctx, event):
        match event:
            case Dead(task_id=tid, error=err):
                alert(tid, err)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "Event",
    "Start",
    "Idle",
    "Success",
    "Error",
    "Retry",
    "Dead",
    "HeartBeat",
    "Stop",
    "Skipped",
    "Abandoned",
    "CircuitOpened",
    "CircuitClosed",
    "Paused",
    "Resumed",
]


@dataclass(frozen=True)
class Event:
    """Base class of all worker events."""


@dataclass(frozen=True)
class Start(Event):
    """The worker started (its run id is on the context)."""


@dataclass(frozen=True)
class Idle(Event):
    """The worker ran out of due tasks; sent once per idle stretch."""


@dataclass(frozen=True)
class Success(Event):
    """A task's handler returned; ``result`` is what it returned."""

    task_id: Any
    result: Any


@dataclass(frozen=True)
class Error(Event):
    """Something failed: a handler (``task_id`` set) or the worker's machinery / a pipe
    source (``task_id`` None; ``error`` is the exception)."""

    task_id: Any
    error: Any


@dataclass(frozen=True)
class Retry(Event):
    """A failed task will run again: attempt ``attempt`` failed, next try at ``run_at``."""

    task_id: Any
    attempt: int
    run_at: datetime


@dataclass(frozen=True)
class Dead(Event):
    """A task will not run again (attempts exhausted, undecodable, or killed)."""

    task_id: Any
    error: str


@dataclass(frozen=True)
class HeartBeat(Event):
    """The worker renewed its leases."""


@dataclass(frozen=True)
class Stop(Event):
    """The worker stopped; nothing of it runs any more."""


@dataclass(frozen=True)
class Skipped(Event):
    """A ``filter`` layer skipped a task: it ends Done with no result, its handler unrun."""

    task_id: Any


@dataclass(frozen=True)
class Abandoned(Event):
    """A ``timeout`` layer gave up on a task whose handler overran: its attempt failed,
    and the thread ``thread`` still running it was left behind (a new one took its place)."""

    task_id: Any
    thread: str


@dataclass(frozen=True)
class CircuitOpened(Event):
    """A ``circuit_breaker`` layer opened after ``failures`` failures in a row: tasks
    wait instead of running until it tries again."""

    failures: int


@dataclass(frozen=True)
class CircuitClosed(Event):
    """A ``circuit_breaker`` layer closed again: a trial task succeeded."""


@dataclass(frozen=True)
class Paused(Event):
    """The worker stopped fetching (``Worker.pause()`` or its queue was paused)."""


@dataclass(frozen=True)
class Resumed(Event):
    """The worker fetches again after a pause."""
