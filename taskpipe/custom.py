"""``BackendBuilder``: a backend from your own store, a fetcher and a sink.

::

    def fetcher(db, config, worker_ctx):       # -> an iterator of Task | None
        while True:
            row = take_oldest_pending(db)      # your query; mark the row taken
            yield Task(row.args, id=row.id) if row else None

    def sink(db, config):                      # -> a callable that persists one Task
        return lambda task: insert_row(db, task.args)

    backend = (BackendBuilder(config)
               .database(db).fetcher(fetcher).sink(sink)
               .on_outcome(lambda outcome: mark(db, outcome))   # optional
               .build())
    backend.push({"to": "a@example.com"})
    WorkerBuilder("emails").backend(backend).build(send_email).run()

The fetcher yields, and the sink receives, ``Task`` objects whose ``args`` are your own
values: nothing is encoded (the ``ValueCodec`` passes values through), so the
handler gets what the fetcher built, converted to its annotated type when it is
plain data (a dict becomes the handler's dataclass).

- **The fetcher** is called once per worker run with ``(db, config, worker_ctx)``. The
  worker asks it for one task at a time, only when it has room. Yield ``None`` when
  nothing is due: the backend then waits its polling interval (``.poll_interval()``;
  a push through this backend wakes it at once) and asks again. If the iterator ends,
  the run ends once the tasks it gave have finished. If it raises, the error becomes
  an ``Error`` event and the fetcher is called again after the polling interval. Give
  each task an ``id`` (your row id): events and outcomes carry it; a task without one
  gets a process-local number.
- **The sink** is called once, at ``build()``, with ``(db, config)``; what it returns is
  called with each pushed ``Task``. If it returns an int, that is the task's id. The
  five push methods (``push``, ``push_bulk``, ``push_stream``, ``push_task``, ``push_all``)
  call it once per task: batches are as atomic as your store makes them.
- **Outcomes**: a custom store has no leases, so ``ack`` only reports what happened:
  ``.on_outcome(fn)`` is called with each ``Outcome`` (``task``, ``kind`` = DONE, RETRY,
  DEAD, RELEASE or INTERRUPTED, ``result``, ``error``, ``delay``). Retries are your
  store's job: the worker decides "retry in ``delay`` seconds", and the task runs again
  only if your fetcher yields it again (e.g. set the row back to pending with a due time).
  If ``fn`` raises, the worker reports it and offers the batch again later, so ``fn``
  may see an outcome twice: make it idempotent (an ``UPDATE … WHERE id = ?`` is).
- The worker, the pushes and a pipe's feeder may call the fetcher's iterator, the sink
  and ``on_outcome`` from different threads: guard a connection that is not thread-safe.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from . import clock
from .config import Config
from .context import WorkerContext
from .errors import BuildError, CodecError, PushError, StorageError
from .polling import as_strategy
from .store import Capabilities, Claim, Outcome, Row, Store
from .task import Task, TaskId

__all__ = ["BackendBuilder", "CustomBackend", "ValueCodec"]

log = logging.getLogger("taskpipe.custom")

_UNSET: Any = object()
_RAN_DRY: Any = iter(())  # the fetcher's iterator of a run ended

Fetcher = Callable[[Any, Any, Any], Iterator["Task | None"]]
SinkFactory = Callable[[Any, Any], Callable[[Task], Any]]


class BackendBuilder:
    """Assemble a ``CustomBackend``: ``BackendBuilder(config=None).database(db)
    .fetcher(fn).sink(fn).build()``; ``config`` is passed to the fetcher and the sink."""

    def __init__(self, config: Any = None):
        self._config = config
        self._db: Any = _UNSET
        self._fetcher: Any = _UNSET
        self._sink: Any = _UNSET
        self._on_outcome: Callable[[Outcome], Any] | None = None
        self._poll_interval: Any = None
        self._queue = "default"

    def database(self, db: Any) -> BackendBuilder:
        """Your connection, pool or client; passed to the fetcher and the sink."""
        self._db = db
        return self

    def fetcher(self, fn: Fetcher) -> BackendBuilder:
        """``fn(db, config, worker_ctx)`` returns an iterator of ``Task | None``."""
        if not callable(fn):
            raise BuildError(
                f"fetcher() takes a function fetcher(db, config, worker_ctx) -> iterator, got {fn!r}"
            )
        self._fetcher = fn
        return self

    def sink(self, fn: SinkFactory) -> BackendBuilder:
        """``fn(db, config)`` returns a callable that persists one ``Task``."""
        if not callable(fn):
            raise BuildError(
                f"sink() takes a function sink(db, config) -> callable(task), got {fn!r}"
            )
        self._sink = fn
        return self

    def on_outcome(self, fn: Callable[[Outcome], Any]) -> BackendBuilder:
        """Optional: ``fn(outcome)`` records what happened to each task (done, retry…)."""
        if not callable(fn):
            raise BuildError(f"on_outcome() takes a function fn(outcome), got {fn!r}")
        self._on_outcome = fn
        return self

    def poll_interval(self, value: Any) -> BackendBuilder:
        """How long to wait after the fetcher yields None: a polling strategy, a
        timedelta or seconds (default: 50 ms growing to 1 s while idle)."""
        try:
            as_strategy(value)  # fail here, not in the worker
        except (TypeError, ValueError) as exc:
            raise BuildError(str(exc)) from exc
        self._poll_interval = value
        return self

    def queue(self, name: str) -> BackendBuilder:
        """The queue name tasks carry (``task.queue``); default ``"default"``."""
        if not isinstance(name, str) or not name:
            raise BuildError(f"queue() takes a non-empty name, got {name!r}")
        self._queue = name
        return self

    def build(self) -> CustomBackend:
        """Return the backend; raises ``BuildError`` naming any missing part."""
        parts = (("database", self._db), ("fetcher", self._fetcher), ("sink", self._sink))
        missing = [name for name, value in parts if value is _UNSET]
        if missing:
            calls = " and ".join(f".{name}(...)" for name in missing)
            raise BuildError(
                f"BackendBuilder.build(): missing {', '.join(missing)}: call {calls} before .build()"
            )
        try:
            persist = self._sink(self._db, self._config)
        except Exception as exc:
            raise BuildError(
                f"the sink factory {self._sink!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(persist):
            raise BuildError(
                f"the sink factory must return a callable that persists one Task, got {persist!r}"
            )
        return CustomBackend(
            db=self._db,
            config=self._config,
            fetcher=self._fetcher,
            persist=persist,
            on_outcome=self._on_outcome,
            poll_interval=self._poll_interval,
            queue=self._queue,
        )


class ValueCodec:
    """The "codec" of a custom backend: values stay your own Python objects; a
    handler's annotation converts plain data (a dict into its dataclass…)."""

    name = "values"

    def encode(self, value: Any) -> Any:
        """``value`` itself."""
        return value

    def decode(self, data: Any, type: Any = Any) -> Any:
        """``data`` converted to ``type`` (dataclasses, lists, dicts…); as is for ``Any``."""
        if type is Any:
            return data
        try:
            return msgspec.convert(data, type, strict=False, from_attributes=True)
        except (msgspec.ValidationError, TypeError) as exc:
            raise CodecError(f"cannot convert {data!r} into {type!r}: {exc}") from exc


class CustomBackend(Store):
    """A backend over your own store, made by ``BackendBuilder`` (see the module docstring)."""

    def __init__(
        self,
        *,
        db: Any,
        config: Any,
        fetcher: Fetcher,
        persist: Callable[[Task[Any]], Any],
        on_outcome: Callable[[Outcome], Any] | None = None,
        poll_interval: Any = None,
        queue: str = "default",
    ):
        self.db = db
        self.settings = config
        super().__init__(queue, ValueCodec(), Config(queue=queue, poll_interval=poll_interval))
        self.capabilities = Capabilities(outcomes=on_outcome is not None)
        self._fetcher = fetcher
        self._persist = persist
        self._on_outcome = on_outcome
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._iterators: dict[str, Iterator[Any]] = {}

    def __repr__(self) -> str:
        return f"CustomBackend(db={self.db!r}, queue={self.queue!r})"

    # Pushing -------------------------------------------------------------------------------
    def insert(self, rows: Sequence[Row]) -> list[TaskId]:
        """Hand each row to your sink, as a ``Task`` of your own values; as atomic as
        your store makes it."""
        ids: list[TaskId] = []
        try:
            for row in rows:
                task = _task_from_row(row)
                result = self._persist(task)
                if isinstance(result, int) and not isinstance(result, bool):
                    ids.append(TaskId(result))
                else:
                    ids.append(task.id)  # type: ignore[arg-type]
        except Exception as exc:
            raise PushError(
                f"the custom sink could not persist a task ({len(ids)} of {len(rows)} were): {exc}"
            ) from exc
        finally:
            if ids:
                self._after_push()
        return ids

    def _insert_rows(self, rows: list[Row]) -> list[TaskId]:
        return self.insert(rows)  # insert() wakes the workers, even after a partial failure

    # Worker side ------------------------------------------------------------------------------
    def close_run(self, ctx: WorkerContext) -> None:
        """Forget the run's fetcher iterator."""
        with self._lock:
            items = self._iterators.pop(ctx.run_id, None)
        close = getattr(items, "close", None)  # generators have close(); other iterators not
        if close is not None:
            close()

    def claim(self, ctx: WorkerContext, limit: int) -> list[Claim] | None:
        """Ask the run's fetcher iterator for up to ``limit`` tasks, stopping at the
        first None; None when the fetcher ran dry. A fetcher that raises is reported
        and called again at the next claim."""
        items = self._iterators.get(ctx.run_id)
        if items is _RAN_DRY:
            return None
        claims: list[Claim] = []
        try:
            if items is None:
                items = self._iterators[ctx.run_id] = iter(
                    self._fetcher(self.db, self.settings, ctx)
                )
            while len(claims) < limit:
                item = next(items)
                if item is None:
                    break
                if not isinstance(item, Task):
                    ctx.report(
                        TypeError(f"the custom fetcher must yield Task or None, got {item!r}")
                    )
                    continue
                claims.append(self._claim_of(item, ctx))
        except StopIteration:
            self._iterators[ctx.run_id] = _RAN_DRY  # the run ends once these are done
            return claims or None
        except Exception as exc:
            self._iterators.pop(ctx.run_id, None)  # call the fetcher again next time
            error = StorageError(f"the custom fetcher raised {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            ctx.report(error)
        return claims

    def _claim_of(self, task: Task[Any], ctx: WorkerContext) -> Claim:
        return Claim(
            id=task.id if task.id is not None else TaskId(next(self._ids)),
            queue=task.queue or self.queue,
            payload=task.args,
            attempt=max(task.attempt, 1),
            lease=ctx.new_lease(),
            priority=task.priority,
            max_attempts=task.max_attempts,
            meta=dict(task.meta),
        )

    def next_due(self) -> float | None:
        """Now, always: only your fetcher can tell what is due, so the worker asks it
        after every polling delay."""
        return clock.timestamp()

    def ack(self, outcomes: Sequence[Outcome]) -> None:
        """Hand each outcome to ``on_outcome`` (if given); nothing else is recorded."""
        if self._on_outcome is None:
            return
        for outcome in outcomes:
            try:
                self._on_outcome(outcome)
            except Exception as exc:
                raise StorageError(
                    f"on_outcome failed for task {outcome.task_id} ({outcome.kind.value}): {type(exc).__name__}: {exc}"
                ) from exc


def _task_from_row(row: Row) -> Task[Any]:
    return Task(
        row.payload,
        id=None if row.id is None else TaskId(row.id),
        priority=row.priority,
        run_after=clock.from_timestamp(row.run_at) if row.run_at != row.created_at else None,
        max_attempts=row.max_attempts,
        meta=msgspec.json.decode(row.meta) if row.meta else {},
        key=row.key,
    )
