"""An in-memory store: no persistence, for tests,
short scripts and as a bounded buffer behind ``pipe_to``.

``memory.backend(poll_interval=…, maxsize=None, codec=None)``. It behaves like the
other stores to a handler: args are encoded with its codec (JSON by default) when
pushed and decoded into the handler's annotated type when run, so a test against it
fails where production would; a push is all or nothing. With ``maxsize`` the queue
holds at most that many unfinished tasks and a push blocks until there is room,
which is the backpressure a pipe's feeder relies on (a batch larger than
``maxsize`` goes in as room frees). Finished tasks are kept for introspection up to
``keep_finished`` (oldest forgotten first).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import msgspec

from . import clock
from .config import Config
from .context import WorkerContext
from .errors import OutcomeRefused, PushError
from .expose import MemoryExpose
from .store import Capabilities, Claim, JoinPart, Outcome, OutcomeKind, Row, Store
from .task import Status, TaskId, TaskInfo

__all__ = ["MemoryBackend", "backend"]

_WAITING = (Status.PENDING, Status.FAILED)


class _Record:
    __slots__ = (
        "row",
        "id",
        "status",
        "run_at",
        "attempts",
        "result",
        "errors",
        "lease",
        "done_at",
        "worker",
        "started_at",
    )

    def __init__(self, row: Row, task_id: int):
        self.row = row
        self.id = task_id
        self.status = Status.PENDING
        self.run_at = row.run_at
        self.attempts = 0
        self.result: Any = None  # encoded, as a SQL store keeps it
        self.errors: list[tuple[int, str, str | None, float]] = []
        self.done_at: float | None = None
        self.started_at: float | None = None
        self.lease: str | None = None
        self.worker: str | None = None


class MemoryBackend(MemoryExpose, Store):
    """Tasks in heaps in this process: claimed by priority, then due time, then age."""

    capabilities = Capabilities(
        introspection=True,
        keys=True,
        follow_ups=True,
        bounded=True,
        joins=True,
        rate_limits=True,
        pausing=True,
    )

    def __init__(
        self,
        poll_interval: timedelta | float | Any = None,
        maxsize: int | None = None,
        *,
        queue: str = "default",
        codec: Any = None,
        keep_finished: int = 10_000,
    ):
        if maxsize is not None and (not isinstance(maxsize, int) or maxsize < 1):
            raise ValueError(f"maxsize must be a positive int or None, got {maxsize!r}")
        super().__init__(queue, codec, Config(queue=queue, poll_interval=poll_interval))
        self.maxsize = maxsize
        self.keep_finished = keep_finished
        self._cond = threading.Condition()
        # Waiting tasks enter ``_later`` by due time; a claim moves the due ones into
        # ``_ready`` (by priority, then due time, then id) and takes from there, so a
        # task due later never hides one due now. ``_due`` answers next_due().
        self._later: list[tuple[float, int]] = []  # (run_at, id)
        self._ready: list[tuple[int, float, int]] = []  # (-priority, run_at, id)
        self._due: list[tuple[float, int]] = []  # (run_at, id)
        self._records: dict[int, _Record] = {}
        self._finished: OrderedDict[int, _Record] = OrderedDict()
        self._keys: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._unfinished = 0
        self._runs: dict[str, WorkerContext] = {}
        self._joins: dict[str, dict[int, bytes]] = {}  # join key -> parts by slot
        self._slots: dict[str, float] = {}  # rate limit key -> last reserved start
        self._paused: set[str] = set()  # queues paused (``pause_queue``), in this process

    def __repr__(self) -> str:
        return f"MemoryBackend(queue={self.queue!r}, maxsize={self.maxsize})"

    def __len__(self) -> int:
        """Unfinished tasks (pending, waiting to retry, or running)."""
        return self._unfinished

    # Pushing -------------------------------------------------------------------------
    def insert(self, rows: Sequence[Row]) -> list[TaskId]:
        """Store ``rows``: all or nothing (every id and key is checked first); blocks
        while the store is full."""
        with self._cond:
            self._check_ids(rows)
        ids: list[TaskId] = []
        step = self.maxsize or len(rows) or 1
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            with self._cond:
                self._wait_for(len(chunk))
                self._check_ids(chunk)  # again: another push may have taken an id meanwhile
                ids.extend(self._add(row) for row in chunk)
        return ids

    def _wait_for(self, count: int) -> None:
        """Wait (holding the lock) until ``count`` more tasks fit."""
        maxsize = self.maxsize
        if maxsize is not None:
            self._cond.wait_for(lambda: self._unfinished + count <= maxsize)

    def _check_ids(self, rows: Sequence[Row]) -> None:
        seen: set[int] = set()
        for row in rows:
            if row.id is None:
                continue
            if row.id in seen or self._known(row.id):
                raise PushError(f"push rejected: a task with id {row.id} already exists")
            seen.add(row.id)

    def _add(self, row: Row) -> TaskId:
        """Store one row (the caller holds the lock and checked its id)."""
        if row.key is not None and row.key in self._keys:
            return TaskId(self._keys[row.key])
        task_id = row.id
        if task_id is None:
            task_id = next(self._ids)
            while self._known(task_id):  # skip ids given explicitly before
                task_id = next(self._ids)
        record = _Record(row, task_id)
        self._records[task_id] = record
        if row.key is not None:
            self._keys[row.key] = task_id
        self._unfinished += 1
        self._schedule(record)
        return TaskId(task_id)

    def _schedule(self, record: _Record) -> None:
        heapq.heappush(self._later, (record.run_at, record.id))
        heapq.heappush(self._due, (record.run_at, record.id))
        self._cond.notify_all()

    def _forget(self, record: _Record) -> None:
        """A finished record leaves for good (evicted or purged): its key is free again,
        and the join that inserted it under that key (if any) goes with it."""
        if record.row.key is not None and self._keys.get(record.row.key) == record.id:
            del self._keys[record.row.key]
            self._joins.pop(record.row.key, None)

    def _after_push(self) -> None:
        self.wakeups.notify(self.queue)

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: as long as it takes) until a push would
        not block; return True if there is room. A pipe's feeder uses it to stop in time."""
        maxsize = self.maxsize
        if maxsize is None:
            return True
        with self._cond:
            return self._cond.wait_for(lambda: self._unfinished < maxsize, timeout)

    def _known(self, task_id: int) -> bool:
        return task_id in self._records or task_id in self._finished

    def _waiting(self, record: _Record | None, run_at: float) -> bool:
        """True when a heap entry for ``run_at`` still describes a waiting ``record``."""
        return record is not None and record.status in _WAITING and record.run_at == run_at

    def last_key(self, prefix: str) -> str | None:
        """The greatest stored key starting with ``prefix``, or None."""
        with self._cond:
            return max((key for key in self._keys if key.startswith(prefix)), default=None)

    # Worker side -----------------------------------------------------------------------
    def open_run(self, ctx: WorkerContext) -> None:
        """Remember the run (``list_workers``)."""
        with self._cond:
            self._runs[ctx.run_id] = ctx

    def close_run(self, ctx: WorkerContext) -> None:
        """Forget the run."""
        with self._cond:
            self._runs.pop(ctx.run_id, None)

    def claim(self, ctx: WorkerContext, limit: int) -> list[Claim]:
        """Take up to ``limit`` due tasks, highest priority first, under one lock."""
        now = clock.timestamp()
        out: list[Claim] = []
        lease = ctx.new_lease()
        with self._cond:
            while self._later and self._later[0][0] <= now:  # due now: ready to claim
                run_at, task_id = heapq.heappop(self._later)
                record = self._records.get(task_id)
                if record is not None and self._waiting(record, run_at):
                    heapq.heappush(self._ready, (-record.row.priority, run_at, task_id))
            while self._ready and len(out) < limit:
                _, run_at, task_id = heapq.heappop(self._ready)
                record = self._records.get(task_id)
                if record is None or not self._waiting(record, run_at):
                    continue  # a stale entry
                record.status = Status.RUNNING
                record.attempts += 1
                record.lease = lease
                record.worker = ctx.run_id
                record.started_at = now
                row = record.row
                out.append(
                    Claim(
                        id=TaskId(task_id),
                        queue=self.queue,
                        payload=row.payload,
                        attempt=record.attempts,
                        lease=lease,
                        priority=row.priority,
                        max_attempts=row.max_attempts,
                        meta=msgspec.json.decode(row.meta) if row.meta else {},
                        due_at=run_at,
                    )
                )
        return out

    def next_due(self) -> float | None:
        """The earliest ``run_at`` of a waiting task, or None."""
        with self._cond:
            while self._due:
                run_at, task_id = self._due[0]
                if self._waiting(self._records.get(task_id), run_at):
                    return run_at
                heapq.heappop(self._due)
            return None

    def ack(self, outcomes: Sequence[Outcome]) -> None:
        """Record outcomes and their follow-ups; a stale lease is rejected."""
        now = clock.timestamp()
        with self._cond:
            try:  # all or nothing: no outcome is applied when a follow-up cannot be
                self._check_ids([row for o in outcomes for row in o.follow_ups])
            except PushError as exc:
                raise OutcomeRefused(f"the store refused the outcomes: {exc}") from exc
            for o in outcomes:
                record = self._records.get(o.claim.id)
                if (
                    record is None
                    or record.status is not Status.RUNNING
                    or record.lease != o.claim.lease
                ):
                    o.accepted = False
                    continue
                self._apply(record, o, now)
                for row in o.follow_ups:
                    self._add(row)
                for part in o.join_parts:
                    self._join(part)
        self.wakeups.notify(self.queue)

    def _apply(self, record: _Record, o: Outcome, now: float) -> None:
        kind = o.kind
        record.lease = None
        if kind == OutcomeKind.DONE:
            record.status, record.result, record.done_at = Status.DONE, o.encoded_result, now
            self._finish(record)
            return
        if kind == OutcomeKind.RELEASE:
            record.status = Status.PENDING
            record.attempts -= 1
            record.worker = record.started_at = None
        elif kind == OutcomeKind.DEAD:
            record.errors.append((o.claim.attempt, o.error or "", o.traceback, now))
            record.status, record.done_at = Status.DEAD, now
            self._finish(record)
            return
        else:  # RETRY / INTERRUPTED
            record.errors.append((o.claim.attempt, o.error or "", o.traceback, now))
            record.status = Status.FAILED if kind == OutcomeKind.RETRY else Status.PENDING
            record.run_at = now + o.delay
        self._schedule(record)

    def _finish(self, record: _Record) -> None:
        self._records.pop(record.id, None)
        self._unfinished -= 1
        self._finished[record.id] = record
        while len(self._finished) > self.keep_finished:
            self._forget(self._finished.popitem(last=False)[1])
        self._cond.notify_all()

    # Pausing (the ``pausing`` capability) -------------------------------------------------
    def set_paused(self, queue: str, paused: bool) -> None:
        """Record that ``queue`` is paused or not (in this object: memory is not shared)."""
        with self._cond:
            if paused:
                self._paused.add(queue)
            else:
                self._paused.discard(queue)

    def paused_queues(self) -> set[str]:
        """The queues paused in this store."""
        with self._cond:
            return set(self._paused)

    # Joins (the ``joins`` capability) ------------------------------------------------------
    def _join(self, part: JoinPart) -> None:
        """Record one part (the caller holds the lock); the last one inserts the row."""
        parts = self._joins.setdefault(part.key, {})
        if part.slot in parts:
            return  # a duplicate: counted once
        parts[part.slot] = bytes(part.value)
        if len(parts) == part.slots:
            self._add(part.row)

    def join_parts(self, key: str) -> list[tuple[int, bytes]]:
        """The recorded parts of join ``key``, ``[(slot, value)]`` in slot order."""
        with self._cond:
            return sorted(self._joins.get(key, {}).items())

    # Rate limits (the ``rate_limits`` capability) ------------------------------------------
    def take_slot(self, key: str, interval: float) -> float:
        """Reserve the next start of limit ``key`` (shared by the workers of this
        store, in this process) under the store's lock; seconds to wait for it."""
        with self._cond:
            now = clock.timestamp()
            last = self._slots.get(key)
            start = now if last is None else max(last + interval, now)
            self._slots[key] = start
        return start - now

    def tasks_with_key_prefix(
        self, prefix: str, *, limit: int = 1000, before: str | None = None
    ) -> list[tuple[str, TaskInfo]]:
        """The tasks whose key starts with ``prefix`` (and sorts below ``before``),
        greatest key first, at most ``limit``: ``[(key, TaskInfo)]`` (a scan)."""
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"tasks_with_key_prefix() needs a non-empty prefix, got {prefix!r}")
        self._page(limit, 0)
        with self._cond:
            keys = sorted(
                (k for k in self._keys if k.startswith(prefix) and (before is None or k < before)),
                reverse=True,
            )[:limit]
            return [(k, self._info(self._find(self._keys[k]))) for k in keys]


def backend(
    poll_interval: timedelta | float | Any = None, maxsize: int | None = None, **options: Any
) -> MemoryBackend:
    """An in-memory store; ``maxsize`` bounds it so that pushes block when full;
    ``queue``, ``codec`` and ``keep_finished`` are keyword options."""
    return MemoryBackend(poll_interval=poll_interval, maxsize=maxsize, **options)
