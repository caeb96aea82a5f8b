"""An in-memory backend (the seeds' ``dequeue::backend``): no persistence, for tests,
short scripts and as a bounded buffer behind ``pipe_to``.

``memory.backend(poll_interval=…, maxsize=None)``. With ``maxsize`` the queue holds at
most that many unfinished tasks and a push blocks until there is room, which is the
backpressure a pipe's feeder relies on. Finished tasks are kept for introspection up
to ``keep_finished`` (oldest forgotten first).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from . import clock
from .backend import Outcome, OutcomeKind, TaskSink
from .config import Config
from .errors import PushError
from .expose import MemoryExpose
from .task import Status, Task, TaskId

__all__ = ["MemoryBackend", "backend"]


class _Record:
    __slots__ = ("task", "status", "run_at", "attempts", "result", "errors", "created_at", "lease", "done_at", "worker", "started_at")

    def __init__(self, task: Task, run_at: float, now: float):
        self.task = task
        self.status = Status.PENDING
        self.run_at = run_at
        self.attempts = 0
        self.result: Any = None
        self.errors: list[tuple[int, str, str | None, float]] = []
        self.created_at = now
        self.done_at: float | None = None
        self.started_at: float | None = None
        self.lease: str | None = None
        self.worker: str | None = None


class MemoryBackend(MemoryExpose, TaskSink):
    """Tasks in a heap in this process: priority, then due time, then age."""

    codec = None  # args stay Python objects

    def __init__(
        self,
        poll_interval: timedelta | float | Any = None,
        maxsize: int | None = None,
        *,
        queue: str = "default",
        keep_finished: int = 10_000,
    ):
        if maxsize is not None and maxsize < 1:
            raise ValueError(f"maxsize must be a positive int or None, got {maxsize!r}")
        self.config = Config(queue=queue, poll_interval=poll_interval)
        self.queue = queue
        self.maxsize = maxsize
        self.keep_finished = keep_finished
        self._cond = threading.Condition()
        self._heap: list[tuple[int, float, int]] = []
        self._records: dict[int, _Record] = {}
        self._finished: OrderedDict[int, _Record] = OrderedDict()
        self._ids = itertools.count(1)
        self._unfinished = 0
        self._waiting: set[Any] = set()

    def __repr__(self) -> str:
        return f"MemoryBackend(queue={self.queue!r}, maxsize={self.maxsize})"

    def __len__(self) -> int:
        """Unfinished tasks (pending, waiting to retry, or running)."""
        return self._unfinished

    # Pushing -------------------------------------------------------------------------
    def _row(self, task: Task, now: float) -> _Record:
        return _Record(task, task.run_at(now), now)

    def _row_for_args(self, args: Any, now: float) -> _Record:
        return _Record(Task(args), now, now)

    def _insert(self, rows: list[_Record]) -> list[TaskId]:
        ids = []
        for record in rows:
            with self._cond:
                while self.maxsize is not None and self._unfinished >= self.maxsize:
                    self._cond.wait()
                task_id = record.task.id
                if task_id is None:
                    task_id = next(self._ids)
                    while self._known(task_id):  # skip ids given explicitly before
                        task_id = next(self._ids)
                elif self._known(task_id):
                    raise PushError(f"push rejected: a task with id {int(task_id)} already exists")
                record.task.id = TaskId(task_id)
                self._records[task_id] = record
                self._unfinished += 1
                heapq.heappush(self._heap, (-record.task.priority, record.run_at, task_id))
                self._wake_workers()
            ids.append(TaskId(task_id))
        return ids

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: as long as it takes) until a push would
        not block; return True if there is room. A pipe's feeder uses it to stop in time."""
        if self.maxsize is None:
            return True
        with self._cond:
            return self._cond.wait_for(lambda: self._unfinished < self.maxsize, timeout)

    def _known(self, task_id: int) -> bool:
        return task_id in self._records or task_id in self._finished

    def _wake_workers(self) -> None:
        for ctx in list(self._waiting):
            ctx.wake()
        self._cond.notify_all()

    # Worker side -----------------------------------------------------------------------
    def poll(self, ctx: Any) -> Iterator[Task | None]:
        """Hand out due tasks, highest priority first; wait when none is due."""
        strategy = self.config.strategy.start()
        with self._cond:
            self._waiting.add(ctx)
        try:
            while not ctx.stopping:
                tasks = self._claim(ctx, ctx.free_slots())
                if tasks:
                    strategy.reset()
                    yield from tasks
                    continue
                ctx.wait(strategy.next_delay())
                yield None
        finally:
            with self._cond:
                self._waiting.discard(ctx)

    def _claim(self, ctx: Any, limit: int) -> list[Task]:
        now = clock.timestamp()
        out: list[Task] = []
        lease = ctx.new_lease()
        with self._cond:
            while self._heap and len(out) < limit:
                _, run_at, task_id = self._heap[0]
                record = self._records.get(task_id)
                if record is None or record.status not in (Status.PENDING, Status.FAILED) or record.run_at != run_at:
                    heapq.heappop(self._heap)  # stale entry
                    continue
                if run_at > now:
                    break
                heapq.heappop(self._heap)
                record.status = Status.RUNNING
                record.attempts += 1
                record.lease = lease
                record.worker = ctx.run_id
                record.started_at = now
                src = record.task
                out.append(
                    Task(
                        src.args,
                        id=src.id,
                        priority=src.priority,
                        max_attempts=src.max_attempts,
                        meta=dict(src.meta),
                        attempt=record.attempts,
                        queue=self.queue,
                        lease=lease,
                    )
                )
        return out

    def heartbeat(self, ctx: Any) -> Iterator[float]:
        """Nothing to renew in memory: a worker's tasks die with its process."""
        while True:
            yield self.config.keep_alive

    def ack(self, outcomes: Sequence[Outcome]) -> None:
        """Record outcomes; a stale lease is rejected."""
        now = clock.timestamp()
        with self._cond:
            for o in outcomes:
                record = self._records.get(o.task.id)
                if record is None or record.status is not Status.RUNNING or record.lease != o.task.lease:
                    o.accepted = False
                    continue
                self._apply(record, o, now)
            self._wake_workers()

    def _apply(self, record: _Record, o: Outcome, now: float) -> None:
        kind = o.kind
        record.lease = None
        if kind is OutcomeKind.DONE:
            record.status, record.result, record.done_at = Status.DONE, o.result, now
            self._finish(record)
            return
        if kind is OutcomeKind.RELEASE:
            record.status = Status.PENDING
            record.attempts -= 1
        elif kind is OutcomeKind.DEAD:
            record.errors.append((o.task.attempt, o.error or "", o.traceback, now))
            record.status, record.done_at = Status.DEAD, now
            self._finish(record)
            return
        else:  # RETRY / INTERRUPTED
            record.errors.append((o.task.attempt, o.error or "", o.traceback, now))
            record.status = Status.FAILED if kind is OutcomeKind.RETRY else Status.PENDING
            record.run_at = now + o.delay
        heapq.heappush(self._heap, (-record.task.priority, record.run_at, int(record.task.id)))

    def _finish(self, record: _Record) -> None:
        task_id = int(record.task.id)
        self._records.pop(task_id, None)
        self._unfinished -= 1
        self._finished[task_id] = record
        while len(self._finished) > self.keep_finished:
            self._finished.popitem(last=False)


def backend(poll_interval: timedelta | float | Any = None, maxsize: int | None = None, **options: Any) -> MemoryBackend:
    """An in-memory backend; ``maxsize`` bounds it so that pushes block when full."""
    return MemoryBackend(poll_interval=poll_interval, maxsize=maxsize, **options)
