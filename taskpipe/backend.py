"""The seam between workers and stores.

A **backend** feeds a worker::

    poll(ctx)       a blocking generator of Task | None. It claims at most
                    ``ctx.free_slots()`` tasks at a time; None means "nothing due now"
                    (it has already waited its polling interval, or until ``ctx.wake()``).
    heartbeat(ctx)  a generator the heartbeat thread drives: each step renews this
                    worker's leases and re-enqueues the tasks of workers that stopped
                    beating; between steps it waits ``keep_alive`` (returning early when
                    the worker finishes).
    ack(outcomes)   records what happened to tasks, atomically for the whole batch; an
                    outcome whose lease no longer matches (a zombie's) is rejected.
    retire(ctx)     optional: the worker stopped cleanly.

A **task sink** takes tasks in (seed 003): ``push``, ``push_bulk`` (one transaction),
``push_stream`` (lazy, batched transactions, bounded memory), ``push_task`` and
``push_all``. Every value is encoded before anything is written, so a ``CodecError``
writes nothing of that call (for streams: nothing of that batch).
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .task import Task, TaskId

__all__ = ["Backend", "TaskSink", "Outcome", "OutcomeKind", "close_thread_connection"]

log = logging.getLogger("taskpipe.backend")

DEFAULT_STREAM_BATCH = 1000


class OutcomeKind(enum.Enum):
    """What the worker decided about one claimed task."""

    DONE = "done"  # the handler returned
    RETRY = "retry"  # failed; run again after ``delay``
    DEAD = "dead"  # failed for good (attempts exhausted, undecodable)
    RELEASE = "release"  # claimed but never started: back to Pending, attempt not counted
    INTERRUPTED = "interrupted"  # still running when the shutdown grace ended


@dataclass
class Outcome:
    """One task's result, on its way from a pool thread to ``backend.ack``."""

    task: Task
    kind: OutcomeKind
    result: Any = None  # the handler's return value (DONE)
    error: str | None = None
    traceback: str | None = None
    delay: float = 0.0  # seconds until the next try (RETRY, INTERRUPTED)
    accepted: bool = True  # set False by ack() when the lease no longer matched


@runtime_checkable
class Backend(Protocol):
    """What a worker needs from a store (see the module docstring)."""

    def poll(self, ctx: Any) -> Iterator[Task | None]:
        """Yield claimed tasks (at most ``ctx.free_slots()`` at a time), or None once it
        has waited its interval (or a ``ctx.wake()``) and found nothing due. Each claim
        is atomic: a task goes to one worker, marked Running under that worker's lease."""
        ...

    def heartbeat(self, ctx: Any) -> Iterator[None]:
        """Each step, in one transaction, renews this worker's leases and re-enqueues the
        tasks of workers that stopped beating; it yields the seconds to wait before the
        next step (None: ``keep_alive``)."""
        ...

    def ack(self, outcomes: Sequence[Outcome]) -> None:
        """Record the outcomes, atomically for the whole batch. An outcome whose lease no
        longer matches (a zombie's) is rejected: its ``accepted`` is set False."""
        ...


def close_thread_connection(backend: Any) -> None:
    """Close the calling thread's connection to ``backend``'s store, if it keeps one
    per thread (a thread that ends must not leave it open); best effort."""
    close = getattr(backend, "close_thread_connection", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # pragma: no cover - closing is best effort
        log.debug("closing the thread's connection to %r failed", backend, exc_info=True)


class TaskSink:
    """The five push methods, built on two primitives a store provides:

    ``_row(task, now)``  encodes one task into whatever the store writes (may raise
                         ``CodecError``); ``_row_for_args(args, now)`` is its fast path.
    ``_insert(rows)``    writes the rows in one transaction; returns their ids.
    """

    def push(self, args: Any) -> TaskId:
        """Encode ``args`` and enqueue it as one task; return its id once committed."""
        return self._insert([self._row_for_args(args, self._now())])[0]

    def push_task(self, task: Task) -> TaskId:
        """Enqueue a pre-built ``Task`` (priority, run_after, max_attempts, meta, key)."""
        if not isinstance(task, Task):
            raise TypeError(f"push_task() takes a Task, not {type(task).__name__}: use push() for plain values")
        return self._insert([self._row(task, self._now())])[0]

    def push_bulk(self, items: Iterable[Any]) -> list[TaskId]:
        """Enqueue many values in one transaction: all or nothing. Returns their ids."""
        now = self._now()
        rows = [self._row_for_args(args, now) for args in items]
        return self._insert(rows) if rows else []

    def push_stream(self, items: Iterable[Any], *, batch_size: int = DEFAULT_STREAM_BATCH) -> int:
        """Enqueue a (possibly huge, lazy) iterable in batches of ``batch_size``, one
        transaction each, holding one batch in memory at a time. Returns the count.

        If a value fails to encode, the batches before it stay committed and the
        ``CodecError`` says how many were pushed.
        """
        return self._push_batches(items, batch_size, self._row_for_args)

    def push_all(self, tasks: Iterable[Task], *, batch_size: int = DEFAULT_STREAM_BATCH) -> int:
        """Like ``push_stream`` for pre-built ``Task`` objects. Returns the count."""

        def row(task: Task, now: float) -> Any:
            if not isinstance(task, Task):
                raise TypeError(f"push_all() takes Task objects, got {type(task).__name__}")
            return self._row(task, now)

        return self._push_batches(tasks, batch_size, row)

    def _push_batches(self, items: Iterable[Any], batch_size: int, make_row: Any) -> int:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from .errors import CodecError

        count = 0
        iterator = iter(items)
        while True:
            chunk = list(itertools.islice(iterator, batch_size))
            if not chunk:
                return count
            now = self._now()
            try:
                rows = [make_row(item, now) for item in chunk]
            except CodecError as exc:
                raise CodecError(f"{exc} (after {count} items were pushed)") from exc
            self._insert(rows)
            count += len(rows)

    # Provided by the store -------------------------------------------------------
    def _now(self) -> float:
        from . import clock

        return clock.timestamp()

    def _row(self, task: Task, now: float) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _row_for_args(self, args: Any, now: float) -> Any:
        return self._row(Task(args), now)

    def _insert(self, rows: list[Any]) -> list[TaskId]:  # pragma: no cover - abstract
        raise NotImplementedError
