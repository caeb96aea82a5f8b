"""Test helpers for code that uses taskpipe: a recording store, a one-call runner, and
a pytest plugin.

::

    from taskpipe import events
    from taskpipe.testing import RecordingStore, run_until_idle

    def test_signup_sends_a_welcome_mail():
        store = RecordingStore()
        signup("a@example.com", jobs=store)          # the code under test pushes
        ran = run_until_idle(store, send_welcome)     # run what it pushed, here and now
        assert [type(e) for e in ran] == [events.Success]
        assert [c.name for c in store.calls_to("insert")] == ["insert"]

``run_until_idle(router)`` runs the tasks of a ``Router``'s queue. ``eager(router)``
makes each ``fn.push(...)`` of the router run its task at once, through the store as
in production (encoded, claimed, decoded, run with layers), and raise what it raised.

``RecordingStore`` is an in-memory store (a ``MemoryBackend``: same codec behaviour,
so a value that would not encode in production does not encode here) that records
every call to a store primitive. ``run_until_idle`` runs a worker until nothing is
due and returns what happened to each task it handled.

The pytest plugin is registered by the ``pytest11`` entry point ``taskpipe``, so
installing taskpipe gives every test suite two fixtures: ``taskpipe_db`` (a fresh
SQLite database in ``tmp_path``, set up) and ``taskpipe_storage`` (a
``SqliteStorage`` on it). Importing this module does not need pytest: without it
the fixtures are simply not defined.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import events
from .context import WorkerContext
from .errors import TaskFailed
from .layers import RetryPolicy
from .memory import MemoryBackend
from .router import RoutedTask, Router
from .store import Claim, Outcome, Row, Store
from .task import Task, TaskId
from .worker import Worker, WorkerBuilder

try:
    import pytest
except ImportError:  # pytest is not installed: no fixtures; the rest works
    pytest = None  # type: ignore[assignment]

__all__ = ["Call", "Eager", "RecordingStore", "eager", "run_until_idle"]


@dataclass(frozen=True)
class Call:
    """One call to a store primitive: its name and its arguments (after ``self``)."""

    name: str
    args: tuple[Any, ...]


class RecordingStore(MemoryBackend):
    """A ``MemoryBackend`` that records each call to ``insert``, ``claim``, ``ack``,
    ``next_due``, ``beat``, ``retire``, ``check_setup``, ``open_run``, ``close_run``
    and ``idle`` in ``calls`` (in call order, from every thread).

    Arguments are recorded as passed (rows and outcomes copied into tuples, the objects
    themselves shared: an outcome's ``accepted`` is what ``ack`` made it). Takes the
    same arguments as ``MemoryBackend``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._calls_lock = threading.Lock()
        #: Every recorded call, oldest first.
        self.calls: list[Call] = []

    def __repr__(self) -> str:
        return f"RecordingStore(queue={self.queue!r}, calls={len(self.calls)})"

    def _record(self, name: str, *args: Any) -> None:
        with self._calls_lock:
            self.calls.append(Call(name, args))

    # Reading the record ---------------------------------------------------------------
    def calls_to(self, name: str) -> list[Call]:
        """The recorded calls to the primitive ``name`` ("insert", "claim"…), oldest first."""
        with self._calls_lock:
            return [call for call in self.calls if call.name == name]

    def call_names(self) -> list[str]:
        """The names of every recorded call, in order."""
        with self._calls_lock:
            return [call.name for call in self.calls]

    def reset(self) -> None:
        """Forget the recorded calls (the tasks stay)."""
        with self._calls_lock:
            self.calls.clear()

    # The recorded primitives ---------------------------------------------------------------
    def insert(self, rows: Sequence[Row]) -> list[TaskId]:
        """Record the call, then ``MemoryBackend.insert``."""
        self._record("insert", tuple(rows))
        return super().insert(rows)

    def claim(self, ctx: WorkerContext, limit: int) -> list[Claim]:
        """Record the call, then ``MemoryBackend.claim``."""
        self._record("claim", ctx, limit)
        return super().claim(ctx, limit)

    def ack(self, outcomes: Sequence[Outcome]) -> None:
        """Record the call, then ``MemoryBackend.ack``."""
        self._record("ack", tuple(outcomes))
        super().ack(outcomes)

    def next_due(self) -> float | None:
        """Record the call, then ``MemoryBackend.next_due``."""
        self._record("next_due")
        return super().next_due()

    def beat(self, ctx: WorkerContext) -> None:
        """Record the call, then ``MemoryBackend.beat``."""
        self._record("beat", ctx)
        super().beat(ctx)

    def retire(self, ctx: WorkerContext) -> None:
        """Record the call, then ``MemoryBackend.retire``."""
        self._record("retire", ctx)
        super().retire(ctx)

    def check_setup(self) -> None:
        """Record the call, then ``MemoryBackend.check_setup``."""
        self._record("check_setup")
        super().check_setup()

    def open_run(self, ctx: WorkerContext) -> None:
        """Record the call, then ``MemoryBackend.open_run``."""
        self._record("open_run", ctx)
        super().open_run(ctx)

    def close_run(self, ctx: WorkerContext) -> None:
        """Record the call, then ``MemoryBackend.close_run``."""
        self._record("close_run", ctx)
        super().close_run(ctx)

    def idle(self) -> None:
        """Record the call, then ``MemoryBackend.idle``."""
        self._record("idle")
        super().idle()


def run_until_idle(
    worker_or_storage: Worker | Store | Router,
    handler: Callable[..., Any] | None = None,
    *,
    retry: RetryPolicy | None = None,
    concurrency: int = 1,
) -> list[events.Success | events.Retry | events.Dead]:
    """Run every due task (``Worker.run_until_idle``) and return one event per task
    handled, in the order their outcomes were recorded: ``events.Success(task_id,
    result)``, ``events.Retry(task_id, attempt, run_at)`` or ``events.Dead(task_id,
    error)``.

    Pass a built ``Worker`` (and no handler), a store and the ``handler`` to run on
    it, or a ``Router`` (its store's queue, each task run by its function): a worker
    named "taskpipe-testing" is built with ``retry`` (default: none) and
    ``concurrency`` (default 1, so tasks run one by one in claim order).
    """
    if isinstance(worker_or_storage, Router):
        if handler is not None:
            raise TypeError("run_until_idle(router) takes no handler: the router has them")
        router: Any = worker_or_storage  # WorkerBuilder.build takes a Router too
        worker_or_storage, handler = router.storage, router
    if isinstance(worker_or_storage, Worker):
        if handler is not None or retry is not None or concurrency != 1:
            raise TypeError(
                "run_until_idle(worker) takes no handler, retry or concurrency: the worker has them"
            )
        worker = worker_or_storage
    elif isinstance(worker_or_storage, Store):
        if handler is None:
            raise TypeError("run_until_idle(store, handler): the handler to run the tasks with")
        builder = WorkerBuilder("taskpipe-testing").backend(worker_or_storage)
        builder = builder.concurrency(concurrency).retry(retry or RetryPolicy())
        worker = builder.build(handler)
    else:
        raise TypeError(
            f"run_until_idle() takes a Worker, a store or a Router, not {worker_or_storage!r}"
        )

    ran: list[events.Success | events.Retry | events.Dead] = []
    lock = threading.Lock()

    def collect(_ctx: WorkerContext, event: events.Event) -> None:
        if isinstance(event, (events.Success, events.Retry, events.Dead)):
            with lock:
                ran.append(event)

    callbacks = worker._callbacks  # the worker's own list: ours is added for this run only
    callbacks.append(collect)
    try:
        worker.run_until_idle()
    finally:
        callbacks.remove(collect)
    return ran


#: Builds the worker of an eager router for a store (``Eager(builder=…)``).
BuilderFactory = Callable[[Store], WorkerBuilder]


class Eager:
    """Eager mode for a ``Router``: each ``fn.push(...)`` runs the task at once and
    returns when it has run (see ``eager``). ``install()`` switches it on,
    ``uninstall()`` off; ``eager(router)`` does both around a block."""

    def __init__(
        self,
        router: Router,
        *,
        builder: BuilderFactory | None = None,
        raise_errors: bool = True,
    ):
        if not isinstance(router, Router):
            raise TypeError(f"Eager() takes a taskpipe Router, got {router!r}")
        self.router = router
        self.raise_errors = raise_errors
        self._builder = builder or (lambda store: WorkerBuilder("taskpipe-eager").backend(store))
        self._workers: dict[tuple[str, int], Worker] = {}  # by queue and router size
        self._lock = threading.Lock()  # guards _pending and _running
        self._pending: dict[str, Store] = {}
        self._running = False
        self._failures: dict[TaskId, BaseException] = {}

    def __repr__(self) -> str:
        return f"Eager({self.router!r})"

    def install(self) -> None:
        """Make every push of the router's functions run at once (``RuntimeError`` if the
        router is eager already)."""
        if self.router._on_push is not None:
            raise RuntimeError(f"{self.router!r} is in eager mode already")
        self.router._on_push = self._pushed

    def uninstall(self) -> None:
        """Make pushes only write again."""
        if self.router._on_push == self._pushed:
            self.router._on_push = None

    def _pushed(self, routed: RoutedTask[Any, Any], _task_id: TaskId) -> None:
        """After a push: run the queue it went to until idle, unless a run is under way
        (a task pushing another: that run takes it)."""
        with self._lock:
            self._pending[routed.storage.queue] = routed.storage
            if self._running:
                return
            self._running = True
        ran: list[events.Success | events.Retry | events.Dead] = []
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._running = False
                        break
                    queue, store = self._pending.popitem()
                ran += run_until_idle(self._worker(queue, store))
        except BaseException:
            with self._lock:
                self._running = False
                self._pending.clear()
            raise
        failures, self._failures = self._failures, {}
        if self.raise_errors:
            for event in ran:
                if isinstance(event, events.Retry | events.Dead):
                    error = failures.get(event.task_id)
                    if error is not None:
                        raise error
                    raise TaskFailed(event.task_id, getattr(event, "error", None))

    def _worker(self, queue: str, store: Store) -> Worker:
        key = (queue, len(self.router))  # a function registered since: built again
        worker = self._workers.get(key)
        if worker is None:
            builder = self._builder(store).layer(self._capture)
            router: Any = self.router  # WorkerBuilder.build takes a Router too
            worker = self._workers[key] = builder.build(router)
        return worker

    def _capture(self, call_next: Callable[[Task[Any], WorkerContext], Any]) -> Any:
        """The innermost layer: keeps what a task raised, to raise it from the push."""

        def handle(task: Task[Any], ctx: WorkerContext) -> Any:
            try:
                return call_next(task, ctx)
            except Exception as exc:
                if task.id is not None:
                    self._failures.setdefault(task.id, exc)
                raise

        return handle


@contextmanager
def eager(
    router: Router, *, builder: BuilderFactory | None = None, raise_errors: bool = True
) -> Iterator[Eager]:
    """Within the block, each push of ``router``'s functions runs the task at once,
    through the store as in production (encoded, written, claimed, decoded, run by a
    worker, its outcome recorded), and returns when it is done::

        with eager(router):
            send_email.push("a@example.com", subject="Hi")   # has run when push returns

    A task that fails makes the push raise its exception (``TaskFailed`` when it fails
    before its function runs, e.g. undecodable args); ``raise_errors=False`` leaves it
    recorded as a retry or dead task only. A task pushed with a future ``run_after``
    waits, as in production (``run_until_idle`` after moving a frozen clock). ``builder``:
    ``store -> WorkerBuilder`` for the worker (default: a plain one, no retries).
    """
    mode = Eager(router, builder=builder, raise_errors=raise_errors)
    mode.install()
    try:
        yield mode
    finally:
        mode.uninstall()


if pytest is not None:
    __all__ += ["taskpipe_db", "taskpipe_storage"]

    @pytest.fixture
    def taskpipe_db(tmp_path: Any) -> Iterator[Any]:
        """A fresh SQLite database in ``tmp_path``, set up for taskpipe (closed after)."""
        from .sql.sqlite import SqliteStorage, connect

        database = connect(str(tmp_path / "taskpipe-test.db"))
        SqliteStorage.setup(database)
        yield database
        if not database.is_closed():
            database.close()

    @pytest.fixture
    def taskpipe_storage(taskpipe_db: Any) -> Any:
        """A ``SqliteStorage`` on the default queue of ``taskpipe_db``."""
        from .sql.sqlite import SqliteStorage

        return SqliteStorage(taskpipe_db)
