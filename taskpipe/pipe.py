"""``pipe_to``: route any iterable into a store, and let a worker read the store.

::

    backend = pipe_to(iter(range(10)), memory.backend(maxsize=100))
    backend = pipe_to(CronStream("@daily"), SqliteStorage(db))   # or CronStream(...).pipe_to(...)
    WorkerBuilder("w").backend(backend).build(handler).run()

A ``Pipe`` is itself a store. While a worker runs it, the pipe feeds the source
into the sink (``push`` for plain values, ``push_task`` for ``Task`` items, so the
sink's codec encodes them) while the worker claims from the sink. Everything else
(``ack``, ``beat``, ``codec``, ``config``, ``capabilities``, ``list_tasks()``…) is the
sink's.

Under ``run()`` a feeder thread drains the source, one item at a time:

- **backpressure**: with a bounded sink (``memory.backend(maxsize=…)``) the feeder
  waits for room before it takes the next item, so memory stays bounded however long
  the source is;
- **errors**: an exception from the source (or a push that fails) stops the feeder and
  reaches the worker's events as ``Error(None, PipeError)`` with the exception as its
  ``__cause__``; the worker finishes what was already pushed, stops, and ``run()``
  raises the ``PipeError``. A finite source ending is normal (the worker goes on with
  the sink); a source declared endless (a ``CronStream``) ending is
  ``PipeError("EmptyStream: …")``;
- the feeder stops with the worker, and closes its thread's database connection; a
  stopping worker does not wait for a feeder blocked inside its source (it ends
  when the source next yields).

Under ``run_until_idle()`` there is no feeder thread: the pipe first pulls what the
source has ready, in the caller's thread (a ``CronStream`` gives the ticks due by
``clock.now()`` without sleeping; a finite iterable is drained, in step with a bounded
sink's room), then reads the sink. An endless plain iterator never runs dry: pipe it
under ``run()`` only.

A source that paces itself subclasses ``PipeSource`` (as ``CronStream`` does): it
gives one iterator for ``run()`` (``stream``) and one for ``run_until_idle()``
(``ready``). Any other iterable is iterated once, across worker runs (what one run
did not take, the next one gets), and by one feeder at a time when several workers
share the pipe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from .context import WorkerContext
from .errors import BuildError, PipeError
from .store import Claim, Outcome, Row, Store, require
from .task import Task, TaskId

__all__ = ["pipe_to", "Pipe", "PipeSource", "PipeError"]

log = logging.getLogger("taskpipe.pipe")

# How long a stopping worker waits for its feeder thread: briefly, as the wait comes out
# of the shutdown grace. A feeder still busy after that (blocked in its source, or
# finishing a push) ends on its own: a daemon thread, it closes its own connection.
JOIN_TIMEOUT = 0.25
ROOM_SLICE = 0.1  # seconds between looks at the stop flag while a bounded sink is full


class PipeSource:
    """Base for sources that pace themselves, like ``CronStream``.

    ``stream(sink, stop)`` is iterated by the feeder thread under ``run()``: it may wait
    for its items, and returns soon after the ``threading.Event`` ``stop`` is set.
    ``ready(sink)`` is iterated under ``run_until_idle()``: it yields only what is ready
    now and never waits. ``endless = True`` makes ``stream`` ending a ``PipeError``.
    """

    endless: bool = False
    #: Capabilities the sink must declare, each with what it is needed for.
    needs: tuple[tuple[str, str], ...] = ()

    def stream(self, sink: Any, stop: threading.Event) -> Iterator[Any]:
        """Yield items as they come (``Task`` or plain values) until ``stop`` is set."""
        raise NotImplementedError

    def ready(self, sink: Any) -> Iterator[Any]:
        """Yield the items that are ready now, without waiting."""
        raise NotImplementedError


def pipe_to(iterable: Iterable[Any] | PipeSource, sink: Any) -> Pipe:
    """Return a ``Pipe``: a backend that feeds ``iterable`` into ``sink`` (a store with
    the push methods) while a worker reads from ``sink``."""
    return Pipe(iterable, sink)


class Pipe(Store):
    """A store made of a source and a sink (see the module docstring).

    Attribute access falls through to the sink: ``pipe.list_tasks()``, ``pipe.push(x)``,
    ``pipe.db``. ``error`` holds the ``PipeError`` that stopped the source, if any;
    after it, later runs only read the sink.
    """

    def __init__(self, source: Iterable[Any] | PipeSource, sink: Store):
        if not isinstance(sink, Store):
            raise BuildError(
                f"pipe_to() needs a taskpipe store to push into and claim from (a SqliteStorage, "
                f"memory.backend()…), got {sink!r}"
            )
        if not isinstance(source, PipeSource) and not hasattr(source, "__iter__"):
            raise BuildError(
                f"pipe_to() takes an iterable (or a CronStream) as its source, got {source!r}"
            )
        for capability, purpose in getattr(source, "needs", ()):
            require(sink, capability, purpose)
        self.source = source
        self.sink = sink
        self.capabilities = sink.capabilities
        self.queue, self.config, self.codec, self.wakeups = (
            sink.queue,
            sink.config,
            sink.codec,
            sink.wakeups,
        )
        self.error: PipeError | None = None
        self._paced = isinstance(source, PipeSource)
        self._endless = bool(getattr(source, "endless", False))
        self._iterator: Iterator[Any] | None = None
        self._iterator_lock = threading.RLock()  # one reader of a plain source at a time
        self._ended = False  # ran dry or failed: nothing more to feed
        self._feeders: dict[str, tuple[threading.Event, threading.Thread | None]] = {}
        self._looked_again: set[str] = set()
        self._failed_runs: set[str] = set()  # runs whose source failed: they end when done

    def __repr__(self) -> str:
        return f"Pipe({self.source!r} -> {self.sink!r})"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("sink", "source"):
            raise AttributeError(name)
        return getattr(self.sink, name)

    # The store: the sink's, with the source fed in ---------------------------------------
    def insert(self, rows: Sequence[Row]) -> list[TaskId]:
        """The sink's insert."""
        return self.sink.insert(rows)

    def _insert_rows(self, rows: list[Row]) -> list[TaskId]:
        return self.sink._insert_rows(rows)

    def claim(self, ctx: WorkerContext, limit: int) -> list[Claim] | None:
        """Claim from the sink. Under ``run_until_idle`` first push what the source has
        ready. After the source failed during this run: None once everything it pushed
        has finished (nothing running, nothing waiting in the sink)."""
        if ctx.until_idle:
            self._fill(ctx)
        claims = self.sink.claim(ctx, limit)
        if claims is None:
            return None
        finishing = claims or ctx.run_id not in self._failed_runs or ctx.in_flight
        if finishing or self.sink.next_due() is not None:
            self._looked_again.discard(ctx.run_id)
            return claims
        # The source failed: end the run. One more look first, so that a claim begun
        # before the last push is not taken for "empty".
        if ctx.run_id in self._looked_again:
            return None
        self._looked_again.add(ctx.run_id)
        ctx.wake()
        return claims

    def next_due(self) -> float | None:
        """The sink's next due time."""
        return self.sink.next_due()

    def ack(self, outcomes: Sequence[Outcome]) -> None:
        """The sink records the outcomes."""
        self.sink.ack(outcomes)

    def take_slot(self, key: str, interval: float) -> float:
        """The sink's rate limit ``key`` (its ``rate_limits`` capability)."""
        return self.sink.take_slot(key, interval)

    def beat(self, ctx: WorkerContext) -> None:
        """The sink's heartbeat."""
        self.sink.beat(ctx)

    def retire(self, ctx: WorkerContext) -> None:
        """The sink forgets the run."""
        self.sink.retire(ctx)

    def check_setup(self) -> None:
        """The sink's set-up check."""
        self.sink.check_setup()

    def close_thread_connection(self) -> None:
        """The sink's connection for this thread."""
        self.sink.close_thread_connection()

    def for_queue(self, queue: str) -> Store:
        """The sink's store for ``queue`` (this pipe for its own queue)."""
        return self if queue == self.queue else self.sink.for_queue(queue)

    def encode_result(self, value: Any) -> Any:
        """The sink encodes results."""
        return self.sink.encode_result(value)

    def set_paused(self, queue: str, paused: bool) -> None:
        """The sink records the pause (``pause_queue``, ``resume_queue``)."""
        self.sink.set_paused(queue, paused)

    def paused_queues(self) -> set[str]:
        """The sink's paused queues."""
        return self.sink.paused_queues()

    def open_run(self, ctx: WorkerContext) -> None:
        """Under ``run()``, start the feeder thread."""
        self.sink.open_run(ctx)
        if not ctx.until_idle:
            stop = threading.Event()
            self._feeders[ctx.run_id] = (stop, self._start_feeder(ctx, stop))

    def close_run(self, ctx: WorkerContext) -> None:
        """Stop the run's feeder (without waiting long for one blocked in its source)."""
        stop, feeder = self._feeders.pop(ctx.run_id, (None, None))
        self._looked_again.discard(ctx.run_id)
        self._failed_runs.discard(ctx.run_id)
        if stop is not None:
            stop.set()
        if feeder is not None:
            feeder.join(JOIN_TIMEOUT)
            if feeder.is_alive():
                log.debug(
                    "pipe %r: the feeder is still blocked in its source or a push; it ends on its own",
                    self,
                )
        self.sink.close_run(ctx)

    # run(): a feeder thread --------------------------------------------------------------
    def _start_feeder(self, ctx: WorkerContext, stop: threading.Event) -> threading.Thread | None:
        if self._ended:
            return None
        thread = threading.Thread(
            target=self._feed, args=(ctx, stop), name=f"taskpipe-{ctx.name}-pipe", daemon=True
        )
        thread.start()
        return thread

    def _feed(self, ctx: WorkerContext, stop: threading.Event) -> None:
        items: Iterator[Any] | None = None
        try:
            items = (
                cast(PipeSource, self.source).stream(self.sink, stop)
                if self._paced
                else self._shared_iterator()
            )
            while not stop.is_set():
                if not self._wait_for_room(stop):
                    break
                if not self._paced and not self._lock_source(stop):
                    break
                try:
                    item = next(items)
                except StopIteration:
                    if not stop.is_set():
                        self._source_ended(ctx)
                    break
                except Exception as exc:
                    self._fail(ctx, self._source_error(exc))
                    break
                finally:
                    if not self._paced:
                        self._iterator_lock.release()
                # Taken from the source: push it even if the worker is stopping meanwhile.
                if not self._push_one(ctx, item):
                    break
        except Exception as exc:  # the source could not even start (iter() or stream() raised)
            self._fail(ctx, self._source_error(exc))
        finally:
            if self._paced and items is not None:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
            self.sink.close_thread_connection()

    def _lock_source(self, stop: threading.Event) -> bool:
        """Take the plain source's lock (another run may be reading it); False on stop."""
        while not stop.is_set():
            if self._iterator_lock.acquire(timeout=ROOM_SLICE):
                return True
        return False

    def _wait_for_room(self, stop: threading.Event) -> bool:
        if not self.sink.capabilities.bounded:
            return True
        wait = self.sink.wait_for_room  # type: ignore[attr-defined]
        while not stop.is_set():
            if wait(ROOM_SLICE):
                return True
        return False

    # run_until_idle(): in the caller's thread --------------------------------------------
    def _fill(self, ctx: Any) -> bool:
        """Push what the source has ready (as much as the sink has room for); return
        True if anything may have been pushed."""
        if self._ended:
            return False
        if not self._paced:
            with self._iterator_lock:
                return self._fill_from(ctx, self._shared_iterator)
        return self._fill_from(ctx, lambda: cast(PipeSource, self.source).ready(self.sink))

    def _fill_from(self, ctx: Any, make_items: Any) -> bool:
        try:
            items = make_items()
        except Exception as exc:
            self._fail(ctx, self._source_error(exc))
            return False
        try:
            if self.sink.capabilities.bounded:
                return self._fill_bounded(ctx, items)
            return self._fill_unbounded(ctx, items)
        finally:
            if self._paced:
                close = getattr(items, "close", None)
                if close is not None:
                    close()

    def _fill_bounded(self, ctx: Any, items: Iterator[Any]) -> bool:
        pushed = False
        while self.sink.wait_for_room(0):  # type: ignore[attr-defined]
            try:
                item = next(items)
            except StopIteration:
                if not self._paced:
                    self._source_ended(ctx)
                break
            except Exception as exc:
                self._fail(ctx, self._source_error(exc))
                break
            if not self._push_one(ctx, item):
                break
            pushed = True
        return pushed

    def _fill_unbounded(self, ctx: Any, items: Iterator[Any]) -> bool:
        failure: list[BaseException] = []
        finished: list[bool] = []

        def guarded() -> Iterator[Task]:
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    finished.append(True)
                    return
                except Exception as exc:
                    failure.append(exc)
                    return
                yield item if isinstance(item, Task) else Task(item)

        count = 0
        try:
            count = self.sink.push_all(guarded())  # batched transactions, bounded memory
        except Exception as exc:  # earlier batches may be committed: let the sink look again
            self._fail(ctx, self._push_error(exc))
            return True
        if failure:
            self._fail(ctx, self._source_error(failure[0]))
        elif finished and not self._paced:
            self._source_ended(ctx)
        return count > 0

    # Shared ------------------------------------------------------------------------------
    def _shared_iterator(self) -> Iterator[Any]:
        with self._iterator_lock:
            if self._iterator is None:
                self._iterator = iter(cast(Iterable[Any], self.source))
            return self._iterator

    def _push_one(self, ctx: WorkerContext, item: Any) -> bool:
        try:
            if isinstance(item, Task):
                self.sink.push_task(item)
            else:
                self.sink.push(item)
        except Exception as exc:
            self._fail(ctx, self._push_error(exc))
            return False
        return True

    def _source_ended(self, ctx: WorkerContext) -> None:
        self._ended = True
        if self._endless:
            self._fail(ctx, PipeError(f"EmptyStream: the endless source {self.source!r} ended"))

    def _source_error(self, exc: BaseException) -> PipeError:
        if isinstance(exc, PipeError):
            return exc
        error = PipeError(f"the piped source {self.source!r} raised {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    def _push_error(self, exc: BaseException) -> PipeError:
        error = PipeError(
            f"could not push a piped item into {self.sink!r}: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return error

    def _fail(self, ctx: WorkerContext, error: PipeError) -> None:
        self._ended = True
        self.error = error
        self._failed_runs.add(ctx.run_id)
        if ctx.finished.is_set():  # the run is over: nobody to tell but the log
            log.error("pipe %r: %s (after its worker stopped)", self, error)
        else:
            ctx.report(error)
        ctx.wake()
