"""``pipe_to``: route any iterable into a store, and let a worker read the store.

::

    backend = pipe_to(iter(range(10)), memory.backend(maxsize=100))
    backend = pipe_to(CronStream("@daily"), SqliteStorage(db))   # or CronStream(...).pipe_to(...)
    WorkerBuilder("w").backend(backend).build(handler).run()

A ``Pipe`` is itself a backend. When a worker polls it, the pipe feeds the source
into the sink (``push`` for plain values, ``push_task`` for ``Task`` items, so the
sink's codec encodes them) while the worker reads the sink's own ``poll``.
Everything else (``heartbeat``, ``ack``, ``retire``, ``codec``, ``config``,
``list_tasks()``…) is the sink's.

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
from collections.abc import Iterable, Iterator
from typing import Any

from .backend import close_thread_connection
from .errors import BuildError, PipeError
from .task import Task

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


class Pipe:
    """A backend made of a source and a sink (see the module docstring).

    Attribute access falls through to the sink: ``pipe.list_tasks()``, ``pipe.push(x)``,
    ``pipe.db``. ``error`` holds the ``PipeError`` that stopped the source, if any;
    after it, later runs only read the sink.
    """

    def __init__(self, source: Iterable[Any] | PipeSource, sink: Any):
        missing = [m for m in ("poll", "heartbeat", "ack", "push", "push_task") if not callable(getattr(sink, m, None))]
        if missing:
            raise BuildError(
                f"pipe_to() needs a store to push into and poll from; {sink!r} has no "
                + ", ".join(f"{m}()" for m in missing)
            )
        if not isinstance(source, PipeSource) and not hasattr(source, "__iter__"):
            raise BuildError(f"pipe_to() takes an iterable (or a CronStream) as its source, got {source!r}")
        self.source = source
        self.sink = sink
        self.error: PipeError | None = None
        self._paced = isinstance(source, PipeSource)
        self._endless = bool(getattr(source, "endless", False))
        self._iterator: Iterator[Any] | None = None
        self._iterator_lock = threading.RLock()  # one reader of a plain source at a time
        self._ended = False  # ran dry or failed: nothing more to feed

    def __repr__(self) -> str:
        return f"Pipe({self.source!r} -> {self.sink!r})"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("sink", "source"):
            raise AttributeError(name)
        return getattr(self.sink, name)

    @property
    def codec(self) -> Any:
        """The sink's codec (the worker decodes with it)."""
        return getattr(self.sink, "codec", None)

    @property
    def config(self) -> Any:
        """The sink's config (buffer size, keep-alive)."""
        return getattr(self.sink, "config", None)

    # Backend ---------------------------------------------------------------------------
    def poll(self, ctx: Any) -> Iterator[Task | None]:
        """Feed the source into the sink and yield the sink's tasks (see the module
        docstring for ``run()`` versus ``run_until_idle()``)."""
        if getattr(ctx, "until_idle", False):
            return self._poll_until_idle(ctx)
        return self._poll_live(ctx)

    def heartbeat(self, ctx: Any) -> Iterator[Any]:
        """The sink's heartbeat."""
        return self.sink.heartbeat(ctx)

    def ack(self, outcomes: Any) -> None:
        """The sink records the outcomes."""
        self.sink.ack(outcomes)

    # run(): a feeder thread --------------------------------------------------------------
    def _poll_live(self, ctx: Any) -> Iterator[Task | None]:
        stop, failed = threading.Event(), threading.Event()
        feeder = self._start_feeder(ctx, stop, failed)
        inner = self.sink.poll(ctx)
        looked_again = False
        try:
            for task in inner:
                if task is None and failed.is_set() and ctx.in_flight == 0:
                    # The source failed: finish what was pushed, then end the run. One
                    # more look first, so that a claim begun before the last push is not
                    # taken for "empty".
                    if looked_again:
                        return
                    looked_again = True
                    ctx.wake()
                    continue
                if task is not None:
                    looked_again = False
                yield task
        finally:
            stop.set()
            inner.close()
            if feeder is not None:
                feeder.join(JOIN_TIMEOUT)
                if feeder.is_alive():
                    log.debug("pipe %r: the feeder is still blocked in its source or a push; it ends on its own", self)

    def _start_feeder(self, ctx: Any, stop: threading.Event, failed: threading.Event) -> threading.Thread | None:
        if self._ended:
            return None
        thread = threading.Thread(
            target=self._feed, args=(ctx, stop, failed), name=f"taskpipe-{ctx.name}-pipe", daemon=True
        )
        thread.start()
        return thread

    def _feed(self, ctx: Any, stop: threading.Event, failed: threading.Event) -> None:
        items: Iterator[Any] | None = None
        try:
            items = self.source.stream(self.sink, stop) if self._paced else self._shared_iterator()
            while not stop.is_set():
                if not self._wait_for_room(stop):
                    break
                if not self._paced and not self._lock_source(stop):
                    break
                try:
                    item = next(items)
                except StopIteration:
                    if not stop.is_set():
                        self._source_ended(ctx, failed)
                    break
                except Exception as exc:
                    self._fail(ctx, self._source_error(exc), failed)
                    break
                finally:
                    if not self._paced:
                        self._iterator_lock.release()
                # Taken from the source: push it even if the worker is stopping meanwhile.
                if not self._push_one(ctx, item, failed):
                    break
        except Exception as exc:  # the source could not even start (iter() or stream() raised)
            self._fail(ctx, self._source_error(exc), failed)
        finally:
            if self._paced and items is not None:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
            close_thread_connection(self.sink)

    def _lock_source(self, stop: threading.Event) -> bool:
        """Take the plain source's lock (another run may be reading it); False on stop."""
        while not stop.is_set():
            if self._iterator_lock.acquire(timeout=ROOM_SLICE):
                return True
        return False

    def _wait_for_room(self, stop: threading.Event) -> bool:
        wait = getattr(self.sink, "wait_for_room", None)
        if wait is None:
            return True
        while not stop.is_set():
            if wait(ROOM_SLICE):
                return True
        return False


    # run_until_idle(): in the caller's thread --------------------------------------------
    def _poll_until_idle(self, ctx: Any) -> Iterator[Task | None]:
        self._fill(ctx)
        inner = self.sink.poll(ctx)
        try:
            for task in inner:
                if task is None:
                    if self._fill(ctx):
                        continue  # the sink has new tasks: look again
                    yield None
                    continue
                yield task
                self._fill(ctx)  # top a bounded sink up as room frees
        finally:
            inner.close()

    def _fill(self, ctx: Any) -> bool:
        """Push what the source has ready (as much as the sink has room for); return
        True if anything may have been pushed."""
        if self._ended:
            return False
        if not self._paced:
            with self._iterator_lock:
                return self._fill_from(ctx, self._shared_iterator)
        return self._fill_from(ctx, lambda: self.source.ready(self.sink))

    def _fill_from(self, ctx: Any, make_items: Any) -> bool:
        try:
            items = make_items()
        except Exception as exc:
            self._fail(ctx, self._source_error(exc), None)
            return False
        try:
            if callable(getattr(self.sink, "wait_for_room", None)):
                return self._fill_bounded(ctx, items)
            return self._fill_unbounded(ctx, items)
        finally:
            if self._paced:
                close = getattr(items, "close", None)
                if close is not None:
                    close()

    def _fill_bounded(self, ctx: Any, items: Iterator[Any]) -> bool:
        pushed = False
        while self.sink.wait_for_room(0):
            try:
                item = next(items)
            except StopIteration:
                if not self._paced:
                    self._source_ended(ctx, None)
                break
            except Exception as exc:
                self._fail(ctx, self._source_error(exc), None)
                break
            if not self._push_one(ctx, item, None):
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

        push_all = getattr(self.sink, "push_all", None)
        count = 0
        try:
            if push_all is not None:
                count = push_all(guarded())  # batched transactions, bounded memory
            else:
                for task in guarded():
                    self.sink.push_task(task)
                    count += 1
        except Exception as exc:  # earlier batches may be committed: let the sink look again
            self._fail(ctx, self._push_error(exc), None)
            return True
        if failure:
            self._fail(ctx, self._source_error(failure[0]), None)
        elif finished and not self._paced:
            self._source_ended(ctx, None)
        return count > 0

    # Shared ------------------------------------------------------------------------------
    def _shared_iterator(self) -> Iterator[Any]:
        with self._iterator_lock:
            if self._iterator is None:
                self._iterator = iter(self.source)
            return self._iterator

    def _push_one(self, ctx: Any, item: Any, failed: threading.Event | None) -> bool:
        try:
            if isinstance(item, Task):
                self.sink.push_task(item)
            else:
                self.sink.push(item)
        except Exception as exc:
            self._fail(ctx, self._push_error(exc), failed)
            return False
        return True

    def _source_ended(self, ctx: Any, failed: threading.Event | None) -> None:
        self._ended = True
        if self._endless:
            self._fail(ctx, PipeError(f"EmptyStream: the endless source {self.source!r} ended"), failed)

    def _source_error(self, exc: BaseException) -> PipeError:
        if isinstance(exc, PipeError):
            return exc
        error = PipeError(f"the piped source {self.source!r} raised {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    def _push_error(self, exc: BaseException) -> PipeError:
        error = PipeError(f"could not push a piped item into {self.sink!r}: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    def _fail(self, ctx: Any, error: PipeError, failed: threading.Event | None) -> None:
        self._ended = True
        self.error = error
        if ctx.finished.is_set():  # the run is over: nobody to tell but the log
            log.error("pipe %r: %s (after its worker stopped)", self, error)
        else:
            ctx.report(error)
        if failed is not None:
            failed.set()
        ctx.wake()
