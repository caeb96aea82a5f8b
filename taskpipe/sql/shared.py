"""``SharedSqliteStorage``: many queues on one database, claimed for in one round.

::

    shared = SharedSqliteStorage("jobs.db")
    SqliteStorage.setup(shared)
    maps, ints = shared.make_shared("maps"), shared.make_shared("ints")
    maps.push({"a": "b"}); ints.push(99)
    run_all(WorkerBuilder("maps").backend(maps).build(on_map),
            WorkerBuilder("ints").backend(ints).build(on_int))

Each ``make_shared(queue)`` returns a ``SharedQueueStorage``: a ``SqliteStorage`` for
that queue (push, ack, heartbeat and introspection as usual). When one queue's
worker claims, it claims for every shared queue whose worker has room (up to that
room: a slow queue whose worker is full is skipped, it never holds up the others)
under one lock, and routes each queue's tasks into that queue's buffer, waking its
worker; a worker takes its buffered tasks before it claims again. So the database
sees one round of claims for all the queues, not one poll loop per queue. A push
from another process wakes the workers at once (``hook=True``, the default: see
``hooks``). Under ``run_until_idle()`` a queue's worker claims for itself alone, so
frozen-clock tests behave as with a ``SqliteStorage``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Any

import peewee as pw

from ..config import Config
from ..context import WorkerContext
from ..errors import BuildError
from ..store import Claim, Outcome, OutcomeKind
from .sqlite import SqliteStorage, connect

__all__ = ["SharedQueueStorage", "SharedSqliteStorage"]

log = logging.getLogger("taskpipe.shared")


class SharedSqliteStorage:
    """Many queues on one SQLite database whose claims go in one round (see the
    module docstring).

    ``SharedSqliteStorage(path_or_db, config=None, *, codec=None, hook=True)``; call
    ``SqliteStorage.setup(shared)`` once, then ``make_shared(queue)`` per queue.
    """

    def __init__(
        self,
        path_or_db: str | os.PathLike[str] | pw.SqliteDatabase,
        config: Config | None = None,
        *,
        codec: Any = None,
        hook: bool = True,
    ):
        if isinstance(path_or_db, pw.Database):
            if not isinstance(path_or_db, pw.SqliteDatabase):
                raise TypeError(
                    f"SharedSqliteStorage needs a SQLite database or a path, got {path_or_db!r}"
                )
            self.db = path_or_db
        else:
            self.db = connect(os.fspath(path_or_db))
        self.config = config or Config()
        self.codec = codec
        self.hooked = hook
        self._lock = threading.Lock()  # guards the lanes; claims for all queues go under it
        self._storages: dict[str, SharedQueueStorage] = {}
        self._lanes: dict[str, _Lane] = {}

    def __repr__(self) -> str:
        return f"SharedSqliteStorage({self.db.database!r}, queues={self.queues})"

    @property
    def queues(self) -> list[str]:
        """The queues made with ``make_shared``, in order."""
        with self._lock:
            return list(self._storages)

    def make_shared(
        self, queue: str, config: Config | None = None, *, codec: Any = None
    ) -> SharedQueueStorage:
        """A storage for ``queue`` claimed for with the others; once per queue (a second
        call for the same queue raises ``BuildError``). ``config`` defaults to this one's."""
        config = (config or self.config).with_queue(queue)
        with self._lock:
            taken = queue in self._storages
            if not taken:
                storage = SharedQueueStorage(
                    self, config, codec if codec is not None else self.codec
                )
                self._storages[queue] = storage
        if taken:
            raise BuildError(
                f"queue {queue!r} already has a shared storage on {self!r}: call make_shared() "
                "once per queue and give that storage to its worker"
            )
        return storage

    # Called by the queues' storages ---------------------------------------------------
    def _attach(self, storage: SharedQueueStorage, ctx: WorkerContext) -> None:
        with self._lock:
            other = self._lanes.get(storage.queue)
            if other is None:
                self._lanes[storage.queue] = _Lane(storage, ctx)
        if other is not None:
            raise BuildError(
                f"shared queue {storage.queue!r} is already run by worker {other.ctx.run_id!r}: "
                "one worker per shared queue (raise its concurrency instead)"
            )

    def _detach(self, storage: SharedQueueStorage, ctx: WorkerContext) -> None:
        with self._lock:
            lane = self._lanes.get(storage.queue)
            if lane is None or lane.ctx is not ctx:
                return
            del self._lanes[storage.queue]
            leftovers = list(lane.buffer)
        if leftovers:  # routed but never handed to the worker: back to Pending
            storage.ack([Outcome(claim, OutcomeKind.RELEASE) for claim in leftovers])

    def _claim(self, storage: SharedQueueStorage, ctx: WorkerContext, limit: int) -> list[Claim]:
        """Claims for ``storage``'s worker: its buffer first; else one round of claims
        for every queue whose worker has room."""
        woken: list[WorkerContext] = []
        with self._lock:
            mine = self._lanes.get(storage.queue)
            if mine is None or mine.ctx is not ctx:  # not attached (until_idle): alone
                return storage._claim_alone(ctx, limit)
            if not mine.buffer:
                for lane in self._lanes.values():
                    # Another lane gets tasks only once its run is registered (a task
                    # held by a run with no heartbeat yet looks orphaned to every other
                    # worker), when it has room, and none waiting in its buffer (a task
                    # that must run alone goes to an empty one).
                    if lane is mine:
                        room = limit
                    elif lane.ctx.beats == 0 or lane.buffer:
                        room = 0
                    else:
                        room = lane.room()
                    if room <= 0 or lane.ctx.stopping or lane.ctx.paused:
                        continue
                    claims = lane.storage._claim_alone(
                        lane.ctx, min(room, lane.storage.config.claim_batch)
                    )
                    if claims:
                        lane.buffer.extend(claims)
                        if lane is not mine:
                            woken.append(lane.ctx)
            taken = [mine.buffer.popleft() for _ in range(min(limit, len(mine.buffer)))]
        for other in woken:
            other.wake()
        return taken

    def _buffered(self, storage: SharedQueueStorage) -> int:
        with self._lock:
            lane = self._lanes.get(storage.queue)
            return 0 if lane is None else len(lane.buffer)


class _Lane:
    """One queue's place in a shared round: its worker's context and its buffer."""

    def __init__(self, storage: SharedQueueStorage, ctx: WorkerContext):
        self.storage = storage
        self.ctx = ctx
        self.buffer: deque[Claim] = deque()

    def __repr__(self) -> str:
        return f"_Lane({self.storage.queue!r}, buffered={len(self.buffer)})"

    def room(self) -> int:
        """How many more tasks this lane's worker can take (minus those buffered)."""
        return self.ctx.free_slots() - len(self.buffer)


class SharedQueueStorage(SqliteStorage):
    """One queue of a ``SharedSqliteStorage`` (made by ``make_shared``): pushes, acks,
    heartbeats and introspection as a ``SqliteStorage``; its claims go in one round
    with the other shared queues'."""

    def __init__(self, shared: SharedSqliteStorage, config: Config, codec: Any = None):
        super().__init__(shared.db, codec=codec, config=config)
        self.shared = shared
        if shared.hooked:
            self.with_capabilities(wakeups=True)

    def __repr__(self) -> str:
        return f"SharedQueueStorage({self.db.database!r}, queue={self.queue!r})"

    def for_queue(self, queue: str) -> SqliteStorage:
        """A ``SqliteStorage`` for ``queue`` on the same database (pushes there wake
        that queue's shared worker as usual); this store itself for its own queue."""
        if queue == self.queue:
            return self
        other = SqliteStorage(self.db, queue=queue, codec=self.codec, config=self.config)
        other.capabilities = self.capabilities
        return other

    def open_run(self, ctx: WorkerContext) -> None:
        """Join the shared round (not under ``run_until_idle``: it claims alone)."""
        if not ctx.until_idle:
            self.shared._attach(self, ctx)

    def close_run(self, ctx: WorkerContext) -> None:
        """Leave the round; tasks routed here and never taken go back to Pending."""
        self.shared._detach(self, ctx)

    def claim(self, ctx: WorkerContext, limit: int) -> list[Claim]:
        """Buffered tasks first; else a claim round for every shared queue with room."""
        return self.shared._claim(self, ctx, limit)

    def _claim_alone(self, ctx: WorkerContext, limit: int) -> list[Claim]:
        return SqliteStorage.claim(self, ctx, limit)

    def next_due(self) -> float | None:
        """Now when tasks wait in this queue's buffer; else the database's answer."""
        if self.shared._buffered(self):
            return 0.0
        return super().next_due()
