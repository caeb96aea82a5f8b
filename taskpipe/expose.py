"""Introspection: see and steer the tasks of a store.

Every store that declares the ``introspection`` capability has these methods (the
SQL and memory stores do; a ``Pipe`` passes them through to its store)::

    list_tasks(queue=None, status=None, limit=50, offset=0)  -> list[TaskInfo], newest first
    fetch_by_id(id)                                          -> TaskInfo, or TaskNotFound
    list_workers(limit=100)                                  -> list[WorkerInfo]
    list_queues(done=True)                                   -> list[QueueInfo]
    stats(queue=None)                                        -> dict (see ``Expose.stats``)
    retry(id) / retry_dead(queue=None)                       -> bool / count
    kill(id)                                                 -> bool
    purge(status, older_than, queue=None)                    -> count
    delete(id)                                               -> bool (finished tasks only)
    throughput(since, bucket, queue=None)                    -> list[Bucket]
    wait_for(id, timeout=None)                               -> the result, TaskFailed or WaitTimeout

``queue=None`` means *every queue in the store*, not only the storage's own queue:
``storage.list_tasks(queue=storage.queue)`` narrows it. Every call is bounded (a page
of rows, or SQL aggregates); none loads a whole table.

``SqlStorage`` gets these from ``taskpipe.sql.expose.SqlExpose``; ``MemoryBackend``
from ``MemoryExpose`` below. ``jsonable`` turns their records into plain JSON values
(the CLI's ``--json`` output).
"""

from __future__ import annotations

import base64
import heapq
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import msgspec

from . import clock
from .errors import TaskFailed, TaskNotFound, WaitTimeout
from .task import AttemptError, Status, TaskId, TaskInfo

__all__ = [
    "Expose",
    "ExposeMixin",
    "MemoryExpose",
    "QueueInfo",
    "Bucket",
    "MAX_BUCKETS",
    "WorkerInfo",
    "jsonable",
    "STATS_KEYS",
]

HOUR = 3600.0
DAY = 24 * HOUR
FINISHED = (Status.DONE, Status.DEAD)
RETRYABLE = (Status.FAILED, Status.DEAD)
KILLABLE = (Status.PENDING, Status.FAILED, Status.RUNNING)
KILLED = "killed"
#: The most buckets one ``throughput`` call returns (it stays a bounded read).
MAX_BUCKETS = 1000

#: The keys of ``stats()``, in display order.
STATS_KEYS = (
    *(s.value for s in Status),
    "done_last_hour",
    "failed_last_hour",
    "done_last_day",
    "failed_last_day",
    "oldest_pending_age",
    "mean_run_time",
)


@dataclass(frozen=True)
class WorkerInfo:
    """One worker run as the store sees it; times are aware UTC datetimes (None when
    the store does not record them, as in memory)."""

    name: str
    run_id: str
    queues: tuple[str, ...]
    hostname: str
    pid: int
    started_at: datetime | None
    last_heartbeat: datetime | None
    tasks_held: int


@dataclass(frozen=True)
class QueueInfo:
    """A queue and how many of its tasks are in each status."""

    name: str
    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    dead: int = 0
    other: int = 0  # rows with a status taskpipe does not know (another program's)

    @property
    def total(self) -> int:
        """Every task of the queue, whatever its status."""
        return self.pending + self.running + self.done + self.failed + self.dead + self.other


@dataclass(frozen=True)
class Bucket:
    """One time slice of ``throughput``: from ``start`` (an aware UTC datetime) for the
    call's ``bucket`` seconds, how many tasks finished Done and how many attempts failed."""

    start: datetime
    done: int = 0
    failed: int = 0


@runtime_checkable
class Expose(Protocol):
    """What introspection offers on every store (see the module docstring)."""

    def list_tasks(
        self, queue: str | None = None, status: Any = None, limit: int = 50, offset: int = 0
    ) -> list[TaskInfo]:
        """A page of tasks, newest first; ``queue=None`` is every queue, ``status`` one
        status (a ``Status`` or its value) or several."""
        ...

    def fetch_by_id(self, task_id: int) -> TaskInfo:
        """The task with this id, in any queue, with its errors; raises ``TaskNotFound``."""
        ...

    def list_workers(self, limit: int = 100) -> list[WorkerInfo]:
        """The worker runs the store knows of, newest first, with the tasks each holds."""
        ...

    def list_queues(self, *, done: bool = True) -> list[QueueInfo]:
        """Every queue that holds tasks, with its counts per status; ``done=False`` may
        leave the Done (and unknown-status) counts at 0 where counting them is a scan
        of history (SQL), and lists only the queues with unfinished tasks there."""
        ...

    def stats(self, queue: str | None = None) -> dict[str, Any]:
        """Counts per status, throughput, lag and mean run time of ``queue`` (None: every
        queue); the keys are ``STATS_KEYS`` (``SqlExpose.stats`` describes each)."""
        ...

    def retry(self, task_id: int) -> bool:
        """Make a Failed or Dead task Pending and due now with fresh attempts, atomically;
        False if it is in another status, ``TaskNotFound`` if unknown."""
        ...

    def retry_dead(self, queue: str | None = None) -> int:
        """``retry`` every Dead task of ``queue`` (None: every queue), in batches (each
        one atomic, not the whole); returns how many."""
        ...

    def kill(self, task_id: int) -> bool:
        """Make a Pending, Failed or Running task Dead, atomically (a running handler's
        result is then discarded); False if it had already finished."""
        ...

    def purge(self, status: Any, older_than: timedelta | float, *, queue: str | None = None) -> int:
        """Delete Done and/or Dead tasks finished at least ``older_than`` ago, in batches
        (each one atomic); other statuses raise ``ValueError``. Returns how many."""
        ...

    def delete(self, task_id: int) -> bool:
        """Delete a Done or Dead task (its errors, recoveries and key go with it); False
        when it is still to run or running (``kill`` it first); ``TaskNotFound`` if unknown."""
        ...

    def throughput(
        self, since: datetime | float, bucket: float, queue: str | None = None
    ) -> list[Bucket]:
        """Tasks finished Done and attempts failed per ``bucket`` seconds from ``since``
        (a datetime or epoch seconds) to now, oldest first, for ``queue`` (None: every
        queue): at most ``MAX_BUCKETS`` buckets, counted on indexes, not by a scan."""
        ...

    def wait_for(self, task_id: int, timeout: timedelta | float | None = None) -> Any:
        """Wait until the task finishes: its result when Done, ``TaskFailed`` when Dead,
        ``WaitTimeout`` after ``timeout``."""
        ...


class ExposeMixin:
    """What every store's introspection shares: argument checks and ``wait_for``."""

    codec: Any

    def fetch_by_id(self, task_id: int) -> TaskInfo:  # pragma: no cover - the store's
        raise NotImplementedError

    def _decoded(self, data: Any) -> Any:
        """A stored payload or result decoded with the store's codec (untyped); the raw
        bytes when it cannot be; a value not stored as bytes (TEXT, a number) as it is."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return data  # None, or what another program stored as TEXT or a number
        data = bytes(data)
        try:
            return self.codec.decode(data)
        except Exception:  # CodecError, or whatever a codec raises on garbage
            return data

    def wait_for(self, task_id: int, timeout: timedelta | float | None = None) -> Any:
        """Wait until the task is finished: return its stored result when Done, raise
        ``TaskFailed`` (with its last error) when Dead, ``WaitTimeout`` when ``timeout``
        (a timedelta or seconds; None waits for ever) passes first. Polls the store with
        short real-time waits, so it works under a frozen clock too."""
        limit = clock.seconds(timeout, name="timeout")
        deadline = None if limit is None else clock.real_monotonic() + limit
        delay = 0.005
        while True:
            info = self.fetch_by_id(task_id)
            if info.status is Status.DONE:
                return info.result
            if info.status is Status.DEAD:
                raise TaskFailed(int(info.id), info.errors[-1].error if info.errors else None)
            pause = delay
            if deadline is not None:
                remaining = deadline - clock.real_monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"task {int(info.id)} did not finish within {limit:g}s (it is {info.status.value})"
                    )
                pause = min(delay, remaining)
            self._pause(pause)
            delay = min(delay * 2, 0.25)

    def _pause(self, seconds: float) -> None:
        time.sleep(seconds)

    @staticmethod
    def _statuses(status: Any) -> tuple[Status, ...] | None:
        """None, one status (a ``Status`` or its value) or several, as a tuple."""
        if status is None:
            return None
        values = [status] if isinstance(status, (str, Status)) else list(status)
        try:
            return tuple(Status(v) for v in values)
        except ValueError:
            valid = ", ".join(s.value for s in Status)
            raise ValueError(f"unknown status in {status!r}: use one of {valid}") from None

    @classmethod
    def _purgeable(cls, status: Any) -> tuple[Status, ...]:
        statuses = cls._statuses(status)
        if not statuses:
            raise ValueError("purge() needs a status: 'done', 'dead' or both")
        for s in statuses:
            if s not in FINISHED:
                raise ValueError(
                    f"purge() deletes finished tasks only (done, dead): {s.value} tasks are still to run"
                )
        return statuses

    @staticmethod
    def _page(limit: int, offset: int) -> None:
        for name, value in (("limit", limit), ("offset", offset)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")

    @staticmethod
    def _buckets(since: Any, bucket: Any) -> tuple[float, float, int]:
        """``throughput``'s arguments checked: (start, width, count) in epoch seconds,
        the buckets reaching the current time."""
        if isinstance(since, datetime):
            if since.tzinfo is None:
                raise ValueError("since must be an aware datetime (or epoch seconds)")
            start = since.timestamp()
        elif isinstance(since, (int, float)) and not isinstance(since, bool):
            start = float(since)
        else:
            raise TypeError(f"since is a datetime or epoch seconds, got {since!r}")
        if isinstance(bucket, bool) or not isinstance(bucket, (int, float)) or not bucket > 0:
            raise ValueError(f"bucket must be a positive number of seconds, got {bucket!r}")
        now = clock.timestamp()
        count = max(1, int((now - start) // bucket) + 1)
        if count > MAX_BUCKETS:
            raise ValueError(
                f"throughput() returns at most {MAX_BUCKETS} buckets: {count} asked "
                "(a later since, or wider buckets)"
            )
        return start, float(bucket), count

    @staticmethod
    def _dense_buckets(
        start: float, width: float, count: int, done: dict[int, int], failed: dict[int, int]
    ) -> list[Bucket]:
        """Dense buckets from sparse counts by bucket index (indexes out of range dropped)."""
        return [
            Bucket(clock.from_timestamp(start + i * width), done.get(i, 0), failed.get(i, 0))
            for i in range(count)
        ]

    @staticmethod
    def _task_id(task_id: Any) -> TaskId:
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise TypeError(f"a task id is an int, got {task_id!r}")
        return TaskId(task_id)


def _empty_stats() -> dict[str, Any]:
    stats: dict[str, Any] = {key: 0 for key in STATS_KEYS}
    stats["oldest_pending_age"] = None
    stats["mean_run_time"] = None
    return stats


class MemoryExpose(ExposeMixin):
    """Introspection for ``MemoryBackend`` (mixed into it): its records live in
    ``_records`` (unfinished) and ``_finished`` (the last ``keep_finished``)."""

    # Provided by MemoryBackend.
    queue: str
    codec: Any
    _cond: Any
    _records: dict[int, Any]
    _finished: Any
    _unfinished: int
    _runs: dict[str, Any]
    _after_push: Any
    _schedule: Any
    _finish: Any
    _forget: Any

    def _all_records(self) -> Iterable[Any]:
        yield from self._records.values()
        yield from self._finished.values()

    def _find(self, task_id: int) -> Any:
        record = self._records.get(task_id)
        if record is None:
            record = self._finished.get(task_id)
        if record is None:
            raise TaskNotFound(f"no task with id {int(task_id)}")
        return record

    def _info(self, record: Any) -> TaskInfo:
        row = record.row
        return TaskInfo(
            id=TaskId(record.id),
            queue=self.queue,
            status=record.status,
            args=self._decoded(row.payload),
            priority=row.priority,
            run_at=clock.from_timestamp(record.run_at),
            attempts=record.attempts,
            max_attempts=row.max_attempts,
            result=self._decoded(record.result),
            errors=tuple(
                AttemptError(attempt, error, tb, clock.from_timestamp(at))
                for attempt, error, tb, at in record.errors
            ),
            created_at=clock.from_timestamp(row.created_at),
            started_at=clock.from_timestamp(record.started_at),
            done_at=clock.from_timestamp(record.done_at),
            worker=record.worker,
            meta=msgspec.json.decode(row.meta) if row.meta else {},
        )

    def list_tasks(
        self, queue: str | None = None, status: Any = None, limit: int = 50, offset: int = 0
    ) -> list[TaskInfo]:
        """A page of tasks, newest first; ``queue=None`` is every queue (a memory
        backend has one), ``status`` one status or several."""
        statuses = self._statuses(status)
        self._page(limit, offset)
        if queue is not None and queue != self.queue:
            return []
        with self._cond:
            matching = (r for r in self._all_records() if statuses is None or r.status in statuses)
            page = heapq.nlargest(offset + limit, matching, key=lambda r: r.id)[offset:]
            return [self._info(r) for r in page]

    def fetch_by_id(self, task_id: int) -> TaskInfo:
        """The task with this id; raises ``TaskNotFound``."""
        task_id = self._task_id(task_id)
        with self._cond:
            return self._info(self._find(task_id))

    def list_workers(self, limit: int = 100) -> list[WorkerInfo]:
        """The workers polling this backend now (memory records no times)."""
        self._page(limit, 0)
        with self._cond:
            held: dict[str, int] = {}
            for record in self._records.values():
                if record.status is Status.RUNNING and record.worker:
                    held[record.worker] = held.get(record.worker, 0) + 1
            contexts = sorted(self._runs.values(), key=lambda c: c.run_id)[:limit]
            return [
                WorkerInfo(
                    name=ctx.name,
                    run_id=ctx.run_id,
                    queues=(self.queue,),
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=None,
                    last_heartbeat=None,
                    tasks_held=held.get(ctx.run_id, 0),
                )
                for ctx in contexts
            ]

    def list_queues(self, *, done: bool = True) -> list[QueueInfo]:
        """This backend's queue with its counts (nothing when it holds no task);
        ``done`` is ignored (counting is cheap here)."""
        with self._cond:
            counts = {s.value: 0 for s in Status}
            for record in self._all_records():
                counts[record.status.value] += 1
        if not any(counts.values()):
            return []
        return [QueueInfo(self.queue, **counts)]

    def stats(self, queue: str | None = None) -> dict[str, Any]:
        """Counts and rates, as ``SqlExpose.stats`` describes."""
        stats = _empty_stats()
        if queue is not None and queue != self.queue:
            return stats
        now = clock.timestamp()
        oldest: float | None = None
        run_times: list[float] = []
        with self._cond:
            for r in self._all_records():
                stats[r.status.value] += 1
                if r.status is Status.PENDING and r.run_at <= now:
                    oldest = r.run_at if oldest is None else min(oldest, r.run_at)
                if r.status is Status.DONE and r.done_at is not None:
                    stats["done_last_hour"] += r.done_at >= now - HOUR
                    stats["done_last_day"] += r.done_at >= now - DAY
                    if r.started_at is not None:
                        run_times.append(r.done_at - r.started_at)
                for _, _, _, at in r.errors:
                    stats["failed_last_hour"] += at >= now - HOUR
                    stats["failed_last_day"] += at >= now - DAY
        stats["oldest_pending_age"] = None if oldest is None else now - oldest
        stats["mean_run_time"] = sum(run_times) / len(run_times) if run_times else None
        return stats

    def retry(self, task_id: int) -> bool:
        """Make a Failed or Dead task Pending and due now, with its attempts reset
        (errors are kept). False if it is in another status; ``TaskNotFound`` if unknown."""
        task_id = self._task_id(task_id)
        with self._cond:
            record = self._find(task_id)
            if record.status not in RETRYABLE:
                return False
            self._requeue(record, clock.timestamp())
        self._after_push()
        return True

    def _requeue(self, record: Any, now: float) -> None:
        task_id = record.id
        if self._finished.pop(task_id, None) is not None:
            self._records[task_id] = record
            self._unfinished += 1
        record.status = Status.PENDING
        record.run_at = now
        record.attempts = 0
        record.result = None
        record.done_at = None
        record.started_at = None
        record.lease = None
        record.worker = None
        self._schedule(record)

    def retry_dead(self, queue: str | None = None) -> int:
        """``retry`` every Dead task (of ``queue``, or all); returns how many."""
        if queue is not None and queue != self.queue:
            return 0
        now = clock.timestamp()
        with self._cond:
            dead = [r for r in self._finished.values() if r.status is Status.DEAD]
            for record in dead:
                self._requeue(record, now)
        if dead:
            self._after_push()
        return len(dead)

    def kill(self, task_id: int) -> bool:
        """Make a Pending, Failed or Running task Dead (error "killed"); a running
        handler's result is then discarded. False if it had already finished."""
        task_id = self._task_id(task_id)
        with self._cond:
            record = self._find(task_id)
            if record.status not in KILLABLE:
                return False
            now = clock.timestamp()
            record.errors.append((record.attempts, KILLED, None, now))
            record.status, record.done_at, record.lease = Status.DEAD, now, None
            self._finish(record)
        return True

    def purge(self, status: Any, older_than: timedelta | float, *, queue: str | None = None) -> int:
        """Delete Done and/or Dead tasks finished at least ``older_than`` ago (a
        timedelta or seconds); Pending, Running and Failed ones are refused. Returns how many."""
        statuses = self._purgeable(status)
        cutoff = clock.timestamp() - clock.seconds(older_than, name="older_than")
        if queue is not None and queue != self.queue:
            return 0
        with self._cond:
            doomed = [
                task_id
                for task_id, r in self._finished.items()
                if r.status in statuses and r.done_at is not None and r.done_at <= cutoff
            ]
            for task_id in doomed:
                self._forget(self._finished.pop(task_id))
        return len(doomed)

    def delete(self, task_id: int) -> bool:
        """Delete a Done or Dead task (its key goes with it); False when it is still to
        run or running; ``TaskNotFound`` if unknown."""
        task_id = self._task_id(task_id)
        with self._cond:
            record = self._find(task_id)
            if record.status not in FINISHED:
                return False
            self._forget(self._finished.pop(task_id))
        return True

    def throughput(
        self, since: datetime | float, bucket: float, queue: str | None = None
    ) -> list[Bucket]:
        """Done tasks and failed attempts per bucket, from the records kept (the last
        ``keep_finished`` finished ones, and the unfinished ones' errors)."""
        start, width, count = self._buckets(since, bucket)
        done: dict[int, int] = {}
        failed: dict[int, int] = {}
        if queue is None or queue == self.queue:
            with self._cond:
                for r in self._all_records():
                    if r.status is Status.DONE and r.done_at is not None and r.done_at >= start:
                        i = int((r.done_at - start) // width)
                        done[i] = done.get(i, 0) + 1
                    for _, _, _, at in r.errors:
                        if at >= start:
                            i = int((at - start) // width)
                            failed[i] = failed.get(i, 0) + 1
        return self._dense_buckets(start, width, count, done, failed)

    def _pause(self, seconds: float) -> None:
        with self._cond:  # woken early by every ack
            self._cond.wait(seconds)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: dataclasses (``TaskInfo``…) become objects with
    their field names, datetimes ISO strings, bytes base64 strings, enums their value."""
    if isinstance(value, Enum):
        return jsonable(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return repr(value)
