"""``SharedSqliteStorage``: many queues over one connection and one poller thread.

::

    shared = SharedSqliteStorage("jobs.db")
    SqliteStorage.setup(shared)
    maps, ints = shared.make_shared("maps"), shared.make_shared("ints")
    maps.push({"a": "b"}); ints.push(99)
    run_all(WorkerBuilder("maps").backend(maps).build(on_map),
            WorkerBuilder("ints").backend(ints).build(on_int))

Each ``make_shared(queue)`` returns a ``SharedQueueStorage``: a ``SqliteStorage`` for
that queue (push, ack, heartbeat and introspection as usual), whose worker does not
claim for itself. One poller thread, on one connection, claims for every queue whose
worker has room (up to that room: a slow queue whose worker is full is skipped, it
never holds up the others) and routes the tasks into that queue's buffer, waking its
worker. Each queue keeps its own polling strategy; a push in this process wakes the
poller at once, and with ``hook=True`` (the default) so does a push from another
process (see ``hooks``). Under ``run_until_idle()`` a queue's worker claims for itself
in its own thread, so frozen-clock tests behave as with a ``SqliteStorage``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import peewee as pw

from .. import clock
from ..backend import close_thread_connection
from ..config import Config
from ..errors import BuildError
from ..task import Task
from .driver_errors import DATABASE_ERRORS
from .hooks import Waiter, registry_for
from .sqlite import SqliteStorage, connect

__all__ = ["SharedQueueStorage", "SharedSqliteStorage"]

log = logging.getLogger("taskpipe.shared")

# The longest the poller sleeps without being woken (it is woken for every push,
# freed room and stop; this only bounds a surprise).
MAX_POLLER_SLEEP = 1.0


class SharedSqliteStorage:
    """Many queues over one SQLite connection: one poller thread claims for each
    queue with free capacity and routes tasks to that queue's worker.

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
                raise TypeError(f"SharedSqliteStorage needs a SQLite database or a path, got {path_or_db!r}")
            self.db = path_or_db
        else:
            self.db = connect(os.fspath(path_or_db))
        self.config = config or Config()
        self.codec = codec
        self.hooked = hook
        self._lock = threading.Lock()
        self._storages: dict[str, SharedQueueStorage] = {}
        self._lanes: dict[str, _Lane] = {}
        self._waiter = Waiter()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"SharedSqliteStorage({self.db.database!r}, queues={self.queues})"

    @property
    def queues(self) -> list[str]:
        """The queues made with ``make_shared``, in order."""
        with self._lock:
            return list(self._storages)

    def make_shared(self, queue: str, config: Config | None = None, *, codec: Any = None) -> SharedQueueStorage:
        """A storage for ``queue`` fed by this poller; once per queue (a second call
        for the same queue raises ``BuildError``). ``config`` defaults to this one's."""
        config = (config or self.config).with_queue(queue)
        with self._lock:
            taken = queue in self._storages
            if not taken:
                storage = SharedQueueStorage(self, config, codec if codec is not None else self.codec)
                self._storages[queue] = storage
        if taken:
            raise BuildError(
                f"queue {queue!r} already has a shared storage on {self!r}: call make_shared() "
                "once per queue and give that storage to its worker"
            )
        return storage

    # Called by a queue's worker --------------------------------------------------------
    def _attach(self, storage: SharedQueueStorage, ctx: Any) -> _Lane:
        lane = _Lane(self, storage, ctx)
        registry = registry_for(self.db)
        # Listen for pushes before the poller's first look, so none falls in between.
        registry.register(storage.queue, lane, cross_process=self.hooked)
        with self._lock:
            other = self._lanes.get(storage.queue)
            if other is None:
                self._lanes[storage.queue] = lane
                if self._thread is None or not self._thread.is_alive():  # (not alive: after a fork)
                    self._thread = threading.Thread(target=self._run, name="taskpipe-shared-poller", daemon=True)
                    self._thread.start()
        if other is not None:
            registry.unregister(storage.queue, lane)
            raise RuntimeError(
                f"shared queue {storage.queue!r} is already fed to worker {other.ctx.run_id!r}: "
                "one worker per shared queue (raise its concurrency instead)"
            )
        self._waiter.wake()
        return lane

    def _detach(self, lane: _Lane) -> None:
        registry_for(self.db).unregister(lane.queue, lane)
        with lane.claim_lock:  # waits for a claim in progress for this lane
            lane.closed = True
            with lane.buffer_lock:
                leftovers = list(lane.buffer)
                lane.buffer.clear()
        with self._lock:
            if self._lanes.get(lane.queue) is lane:
                del self._lanes[lane.queue]
        self._waiter.wake()  # the poller ends when no lane is left
        if leftovers:  # routed but never handed to the worker: back to Pending
            lane.storage._release(leftovers)

    # The poller thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    lanes = list(self._lanes.values())
                    if not lanes:
                        self._thread = None
                        return
                claimed = False
                for lane in lanes:
                    claimed = self._serve(lane) or claimed
                if claimed:
                    continue  # some queue had work: look again before sleeping
                self._waiter.wait(self._sleep(lanes))
        except Exception:  # pragma: no cover - a bug: keep the workers informed
            log.exception("taskpipe shared poller failed")
            with self._lock:
                self._thread = None
                lanes = list(self._lanes.values())
            for lane in lanes:
                lane.ctx.report(RuntimeError("the shared poller stopped; restart the workers"))
        finally:
            with self._lock:
                storages = list(self._storages.values())
            if storages:  # all on self.db: any one closes this thread's connection
                close_thread_connection(storages[0])

    def _serve(self, lane: _Lane) -> bool:
        """Claim for one lane if it has room and it is time; True if tasks came."""
        ctx = lane.ctx
        with lane.claim_lock:
            if lane.closed or ctx.stopping:
                return False
            room = lane.room()
            with lane.buffer_lock:
                due = room > 0 and (lane.dirty or clock.real_monotonic() >= lane.next_look)
                if not due:
                    return False
                lane.dirty = False
            storage = lane.storage
            tasks: list[Task] = []
            try:
                tasks = storage._retrying(storage._claim, ctx, min(room, storage.config.claim_batch), not lane.backlog)
            except DATABASE_ERRORS as exc:  # raw sqlite3 errors too: the poller keeps serving
                ctx.report(storage._storage_error(exc))
            with lane.buffer_lock:
                lane.buffer.extend(tasks)
                lane.backlog = bool(tasks)
                if tasks:
                    lane.state.reset()
                    lane.next_look = 0.0
                else:
                    lane.next_look = clock.real_monotonic() + lane.state.next_delay()
        if tasks:
            ctx.wake()
        return bool(tasks)

    def _sleep(self, lanes: list[_Lane]) -> float:
        """How long the poller may sleep: until the soonest look a lane with room needs."""
        now = clock.real_monotonic()
        timeout = MAX_POLLER_SLEEP
        for lane in lanes:
            if lane.closed or lane.ctx.stopping or lane.room() <= 0:
                continue  # woken by want() when its worker has room again (or by detach)
            with lane.buffer_lock:
                if lane.dirty:
                    return 0.0
                timeout = min(timeout, lane.next_look - now)
        return max(0.0, timeout)


class _Lane:
    """One queue's place in the poller: its worker, buffer and polling state."""

    def __init__(self, shared: SharedSqliteStorage, storage: SharedQueueStorage, ctx: Any):
        self.storage = storage
        self.ctx = ctx
        self.queue = storage.queue
        self.claim_lock = threading.Lock()  # the poller claims for this lane under it
        self.buffer_lock = threading.Lock()
        self.buffer: deque[Task] = deque()
        self.closed = False
        self.dirty = True  # look at once: just attached, or a push came
        self.backlog = False  # the last claim found tasks: there may be more
        self.state = storage.config.strategy.start()
        self.next_look = 0.0
        self.patience = float(getattr(storage.config.strategy, "maximum", 1.0))
        self._poller = shared._waiter

    def __repr__(self) -> str:
        return f"_Lane({self.queue!r}, buffered={len(self.buffer)})"

    def room(self) -> int:
        """How many more tasks this lane's worker can take (minus those buffered)."""
        return self.ctx.free_slots() - len(self.buffer)

    def wake(self) -> None:
        """A push to this queue committed: claim for it at once."""
        with self.buffer_lock:
            self.dirty = True
        self._poller.wake()

    def want(self) -> None:
        """The worker's buffer is empty and it has room: let the poller reconsider."""
        self._poller.wake()

    def take(self) -> Task | None:
        """The next routed task, or None."""
        with self.buffer_lock:
            return self.buffer.popleft() if self.buffer else None


class SharedQueueStorage(SqliteStorage):
    """One queue of a ``SharedSqliteStorage`` (made by ``make_shared``): pushes, acks,
    heartbeats and introspection as a ``SqliteStorage``; its worker is fed by the
    shared poller."""

    def __init__(self, shared: SharedSqliteStorage, config: Config, codec: Any = None):
        super().__init__(shared.db, codec=codec, config=config)
        self.shared = shared
        self.hooked = shared.hooked

    def __repr__(self) -> str:
        return f"SharedQueueStorage({self.db.database!r}, queue={self.queue!r})"

    def poll(self, ctx: Any) -> Iterator[Task | None]:
        """Hand out the tasks the shared poller routed to this queue; wait (until
        woken) when there are none. Under ``run_until_idle`` claim directly."""
        if ctx.until_idle:
            yield from super().poll(ctx)
            return
        lane = self.shared._attach(self, ctx)
        try:
            while not ctx.stopping:
                task = lane.take()
                if task is not None:
                    yield task
                    continue
                lane.want()
                ctx.wait(lane.patience)
                yield None
        finally:
            self.shared._detach(lane)
