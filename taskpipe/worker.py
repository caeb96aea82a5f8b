"""``WorkerBuilder`` and ``Worker``: run a handler over the tasks of a backend.

One worker run has three kinds of threads:

- the **fetch loop** (the thread that called ``run()``): claims tasks from the
  backend's ``poll`` generator, hands them to the pool, and writes the pool's
  outcomes back in batches (one transaction per batch, one writer);
- the **pool** (``concurrency`` threads): decodes each task's args, calls the
  handler with its injected parameters, and turns the return or the exception into
  an outcome (done, retry after a backoff, or dead);
- the **heartbeat** thread: renews this run's leases and re-enqueues the tasks of
  workers that stopped beating.

``run_until_idle()`` does the same but never sleeps and returns when nothing is due
and nothing is running; it beats from the calling thread, so a frozen clock governs
everything it does.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from . import clock, events
from .backend import Outcome, OutcomeKind, close_thread_connection
from .codec import CodecError
from .context import WorkerContext
from .errors import BuildError, PipeError
from .injection import Signature, analyse
from .layers import RetryPolicy
from .pool import DaemonThreadPool
from .signals import graceful_signals
from .task import Task

__all__ = ["WorkerBuilder", "Worker"]

log = logging.getLogger("taskpipe.worker")

EventCallback = Callable[[WorkerContext, events.Event], Any]
INTERRUPTED_RETRY_DELAY = 1.0
ACK_DELAY = 0.05  # the longest a finished task waits for its outcome to be written
HEARTBEAT_JOIN = 1.0  # how long a stopping run waits for its heartbeat thread


class WorkerBuilder:
    """Assemble a worker with chained calls, then ``build(handler)``::

        worker = (WorkerBuilder("emails").backend(storage).concurrency(4)
                  .retry(RetryPolicy.retries(3)).on_event(print).build(send))
    """

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise BuildError(f"a worker needs a non-empty name, got {name!r}")
        self._name = name
        self._backend: Any = None
        self._concurrency = 1
        self._data: dict[type, Any] = {}
        self._retry = RetryPolicy()
        self._callbacks: list[EventCallback] = []
        self._grace = 30.0

    def backend(self, backend: Any) -> WorkerBuilder:
        """The store (or pipe, or custom backend) to take tasks from."""
        self._backend = backend
        return self

    def concurrency(self, n: int) -> WorkerBuilder:
        """How many handlers run at once (pool threads); also bounds prefetch."""
        if not isinstance(n, int) or n < 1:
            raise BuildError(f"concurrency must be a positive int, got {n!r}")
        self._concurrency = n
        return self

    def data(self, value: Any) -> WorkerBuilder:
        """Share a value with handlers; they receive it by annotating ``Data[type]``."""
        self._data[type(value)] = value
        return self

    def retry(self, policy: RetryPolicy) -> WorkerBuilder:
        """Retry failed tasks durably by this policy (default: no retries)."""
        if not isinstance(policy, RetryPolicy):
            raise BuildError(f"retry() takes a RetryPolicy, e.g. RetryPolicy.retries(3), got {policy!r}")
        self._retry = policy
        return self

    def on_event(self, callback: EventCallback) -> WorkerBuilder:
        """Call ``callback(ctx, event)`` for every event (see ``taskpipe.events``)."""
        if not callable(callback):
            raise BuildError(f"on_event() takes a callable, got {callback!r}")
        self._callbacks.append(callback)
        return self

    def shutdown_grace(self, grace: timedelta | float) -> WorkerBuilder:
        """How long running handlers may finish after a stop (default 30 s)."""
        self._grace = clock.seconds(grace, name="shutdown_grace")
        return self

    def build(self, handler: Callable[..., Any]) -> Worker:
        """Check everything and return the ``Worker``; raises ``BuildError`` on mistakes."""
        if self._backend is None:
            raise BuildError(f"worker {self._name!r} has no backend: call .backend(storage) before .build()")
        for method in ("poll", "heartbeat", "ack"):
            if not callable(getattr(self._backend, method, None)):
                raise BuildError(f"{self._backend!r} is not a backend: it has no {method}()")
        if not callable(handler):
            raise BuildError(f"build() takes the handler function, got {handler!r}")
        signature = analyse(handler, self._data)
        return Worker(
            name=self._name,
            backend=self._backend,
            handler=handler,
            signature=signature,
            concurrency=self._concurrency,
            retry=self._retry,
            callbacks=list(self._callbacks),
            grace=self._grace,
        )


class Worker:
    """Runs a handler over a backend's tasks; made by ``WorkerBuilder.build()``."""

    def __init__(
        self,
        *,
        name: str,
        backend: Any,
        handler: Callable[..., Any],
        signature: Signature,
        concurrency: int,
        retry: RetryPolicy,
        callbacks: list[EventCallback],
        grace: float,
    ):
        self.name = name
        self.backend = backend
        self.handler = handler
        self.signature = signature
        self.concurrency = concurrency
        self.retry_policy = retry
        self.grace = grace
        self._callbacks = callbacks
        self._codec = getattr(backend, "codec", None)
        config = getattr(backend, "config", None)
        buffer = getattr(config, "buffer_size", None)
        if buffer is None:  # enough prefetch to claim and ack in full batches
            buffer = max(concurrency, getattr(config, "claim_batch", concurrency))
        self.capacity = concurrency + buffer
        self._ctx: WorkerContext | None = None
        self._lock = threading.Lock()
        self._stop_requested = 0  # 1: graceful, 2: skip the grace; read when a run starts

    def __repr__(self) -> str:
        return f"Worker({self.name!r}, backend={self.backend!r}, concurrency={self.concurrency})"

    # Public API -------------------------------------------------------------------------
    def run(self) -> None:
        """Run until stopped (``stop()``, ``ctx.stop()``, SIGINT or SIGTERM), then shut
        down gracefully. Signals are handled when called from the main thread; a second
        signal skips the grace period. Raises ``PipeError`` if a piped source failed."""
        with graceful_signals(self.stop, self._stop_hard, f"worker {self.name}"):
            self._run(until_idle=False)

    def run_until_idle(self) -> int:
        """Run every task that is due now (and any that become due while running),
        then return how many tasks were handled. Never sleeps: time-driven tests use a
        frozen clock and call it again after moving the clock. SIGINT/SIGTERM stop it
        gracefully, as for ``run()``."""
        with graceful_signals(self.stop, self._stop_hard, f"worker {self.name}"):
            return self._run(until_idle=True)

    def stop(self) -> None:
        """Ask ``run()`` (from another thread, a signal or a callback) to shut down
        gracefully. Asked before a run has started, it stops that run at once."""
        self._stop_requested = max(self._stop_requested, 1)
        ctx = self._ctx
        if ctx is not None:
            ctx.stop()

    def _stop_hard(self) -> None:
        """Stop without waiting for the grace period (a second signal)."""
        self._stop_requested = 2
        ctx = self._ctx
        if ctx is not None:
            ctx._stop_hard()

    @property
    def context(self) -> WorkerContext | None:
        """The current run's context (None when not running)."""
        return self._ctx

    # The run ------------------------------------------------------------------------------
    def _run(self, until_idle: bool) -> int:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"worker {self.name!r} is already running")
        run = _Run(self, until_idle)
        self._ctx = run.ctx
        # A stop asked while the run was being set up is applied now (after the
        # context is published, so none is lost between the two).
        if self._stop_requested == 2:
            run.ctx._stop_hard()
        elif self._stop_requested:
            run.ctx.stop()
        try:
            return run.execute()
        finally:
            self._ctx = None
            self._stop_requested = 0
            self._lock.release()

    def _emit(self, ctx: WorkerContext, event: events.Event) -> None:
        for callback in self._callbacks:
            try:
                callback(ctx, event)
            except Exception:
                log.exception("on_event callback %r failed on %r", callback, event)


class _Run:
    """One ``run()`` / ``run_until_idle()``: the fetch loop, the pool and the heartbeat."""

    def __init__(self, worker: Worker, until_idle: bool):
        self.worker = worker
        self.backend = worker.backend
        self.until_idle = until_idle
        self.ctx = WorkerContext(worker.name, capacity=worker.capacity, report=self._report)
        self.ctx.until_idle = until_idle
        config = getattr(self.backend, "config", None)
        self.ctx.beat_interval = float(getattr(config, "keep_alive", 5.0))
        self.cond = self.ctx._cond
        self.outcomes: list[Outcome] = []
        self.first_outcome_at = 0.0
        self.queued: deque[Task] = deque()  # handed to the pool, not started yet
        self.active: dict[Any, Task] = {}  # running in a pool thread
        self.runners = 0  # pool threads currently taking tasks from ``queued``
        self.handled = 0
        self.pipe_error: PipeError | None = None
        self.threshold = max(1, worker.capacity // 2)
        self.pool = DaemonThreadPool(max_workers=worker.concurrency, thread_name_prefix=f"taskpipe-{worker.name}")
        self.heartbeat_thread: threading.Thread | None = None

    def _report(self, error: BaseException) -> None:
        if isinstance(error, PipeError) and self.pipe_error is None:
            self.pipe_error = error
        log.error("worker %s: %s", self.worker.name, error)
        self.worker._emit(self.ctx, events.Error(None, error))

    # Orchestration ------------------------------------------------------------------------
    def execute(self) -> int:
        ctx = self.ctx
        beats = self.backend.heartbeat(ctx)
        self.worker._emit(ctx, events.Start())  # first: a HeartBeat or Error never precedes Start
        self._beat(beats)  # registers this run before it claims anything
        if not self.until_idle:
            self.heartbeat_thread = threading.Thread(
                target=self._heartbeat_loop, args=(beats,), name=f"taskpipe-{self.worker.name}-heartbeat", daemon=True
            )
            self.heartbeat_thread.start()
        try:
            self._fetch_loop(beats)
        finally:
            self._shutdown()
            ctx.finished.set()
            if self.heartbeat_thread is None:
                beats.close()
            else:  # it closes its own generator; a beat stuck on a lock must not hold us
                self.heartbeat_thread.join(timeout=HEARTBEAT_JOIN)
            retire = getattr(self.backend, "retire", None)
            if retire is not None:
                retire(ctx)
            self.pool.shutdown(wait=False, cancel_futures=True)
            close_thread_connection(self.backend)
            self.worker._emit(ctx, events.Stop())
        if self.pipe_error is not None:
            raise self.pipe_error
        return self.handled

    def _beat(self, beats: Any) -> float:
        try:
            interval = next(beats)
        except StopIteration:
            return float("inf")
        except Exception as exc:  # a backend's heartbeat must not kill the worker
            self._report(exc)
            return self.ctx.beat_interval
        self.worker._emit(self.ctx, events.HeartBeat())
        return float(interval if interval is not None else self.ctx.beat_interval)

    def _heartbeat_loop(self, beats: Any) -> None:
        try:
            interval = self.ctx.beat_interval
            while not self.ctx.finished.wait(interval):
                interval = self._beat(beats)
        finally:
            beats.close()
            close_thread_connection(self.backend)

    def _fetch_loop(self, beats: Any) -> None:
        ctx = self.ctx
        tasks = self.backend.poll(ctx)
        idle_sent = False
        busy = False  # the last step handed out a task: let outcomes gather into a batch
        next_beat = clock.real_monotonic() + ctx.beat_interval
        try:
            while not ctx.stopping:
                if self._ack_due(busy):
                    self._flush()
                if self.until_idle and clock.real_monotonic() >= next_beat:
                    next_beat = clock.real_monotonic() + self._beat(beats)
                if not self._has_room():
                    self._wait_for_room()
                    continue
                task = next(tasks, StopIteration)
                if task is StopIteration:
                    break  # a finite backend ran dry
                busy = task is not None
                if task is None:
                    with self.cond:
                        nothing_running = ctx.in_flight == 0 and not self.outcomes
                    if nothing_running:
                        if self.until_idle:
                            break
                        if not idle_sent:
                            idle_sent = True
                            self.worker._emit(ctx, events.Idle())
                    continue
                idle_sent = False
                self._submit(task)
        finally:
            tasks.close()

    def _ack_due(self, busy: bool) -> bool:
        """Write outcomes in batches: at once when idle, else when half the capacity
        has finished or the oldest outcome has waited ``ACK_DELAY``."""
        with self.cond:
            pending = len(self.outcomes)
            if not pending:
                return False
            if not busy or pending >= self.threshold or self.ctx.in_flight == 0:
                return True
            return clock.real_monotonic() - self.first_outcome_at >= ACK_DELAY

    def _has_room(self) -> bool:
        with self.cond:
            return self.ctx.in_flight == 0 or self.ctx.free_slots() >= self.threshold

    def _wait_for_room(self) -> None:
        with self.cond:
            if self.outcomes:
                timeout = max(0.0, self.first_outcome_at + ACK_DELAY - clock.real_monotonic())
            else:
                timeout = self.ctx.beat_interval if self.until_idle else None
            if not self.ctx._woken and not self.ctx.stopping:
                self.cond.wait(timeout)
            self.ctx._woken = False

    # Pool side --------------------------------------------------------------------------
    # Tasks wait in ``queued``; up to ``concurrency`` runners (one ThreadPoolExecutor job
    # each) take them one after another, so a task costs one lock round trip, not a
    # Future and a thread wake-up, and an unstarted task is simply still in the deque.
    def _submit(self, task: Task) -> None:
        with self.cond:
            self.ctx.in_flight += 1
            self.queued.append(task)
            start_runner = self.runners < self.worker.concurrency
            if start_runner:
                self.runners += 1
        if start_runner:
            self.pool.submit(self._runner)

    def _runner(self) -> None:
        task: Task | None = None
        outcome: Outcome | None = None
        while True:
            with self.cond:
                if task is not None:
                    self._finish_locked(task, outcome)
                if not self.queued or self.ctx.stopping:
                    self.runners -= 1
                    return
                task = self.queued.popleft()
                self.active[task.id] = task
            try:
                outcome = self._execute(task)
            except BaseException as exc:  # never leave a task without an outcome
                outcome = Outcome(task, OutcomeKind.DEAD, error=f"worker error: {exc!r}")

    def _execute(self, task: Task) -> Outcome:
        worker = self.worker
        try:
            if self.worker._codec is not None:
                task.args = self.worker._codec.decode(task.payload, worker.signature.args_type)
        except CodecError as exc:
            return Outcome(task, OutcomeKind.DEAD, error=f"cannot decode the task's payload: {exc}")
        try:
            result = worker.handler(task.args, **worker.signature.kwargs(task, self.ctx))
        except BaseException as exc:
            return self._failure(task, exc)
        return Outcome(task, OutcomeKind.DONE, result=result)

    def _failure(self, task: Task, exc: BaseException) -> Outcome:
        error = f"{type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(exc))
        max_attempts = task.max_attempts or self.worker.retry_policy.max_attempts
        if task.attempt < max_attempts:
            delay = self.worker.retry_policy.delay(task.attempt)
            return Outcome(task, OutcomeKind.RETRY, error=error, traceback=tb, delay=delay)
        return Outcome(task, OutcomeKind.DEAD, error=error, traceback=tb)

    def _finish_locked(self, task: Task, outcome: Outcome) -> None:
        """Record a finished task (the caller holds ``self.cond``)."""
        self.active.pop(task.id, None)
        self.ctx.in_flight -= 1
        if not self.outcomes:
            self.first_outcome_at = clock.real_monotonic()
        self.outcomes.append(outcome)
        if self.ctx.in_flight == 0 or self.ctx.free_slots() >= self.threshold:
            self.ctx._woken = True
            self.cond.notify_all()

    # Writing outcomes ---------------------------------------------------------------------
    def _flush(self) -> None:
        with self.cond:
            if not self.outcomes:
                return
            batch, self.outcomes = self.outcomes, []
        try:
            self.backend.ack(batch)
        except Exception as exc:
            self._report(exc)
            with self.cond:  # keep them: the next flush tries again
                self.outcomes[:0] = batch
            return
        for outcome in batch:
            self._announce(outcome)

    def _announce(self, outcome: Outcome) -> None:
        worker, ctx, task = self.worker, self.ctx, outcome.task
        if not outcome.accepted:
            log.warning("task %s: outcome %s rejected (its lease was taken back)", task.id, outcome.kind.value)
            return
        kind = outcome.kind
        if kind is OutcomeKind.RELEASE:
            return
        self.handled += 1
        if kind is OutcomeKind.DONE:
            worker._emit(ctx, events.Success(task.id, outcome.result))
            return
        worker._emit(ctx, events.Error(task.id, outcome.error))
        if kind is OutcomeKind.DEAD:
            worker._emit(ctx, events.Dead(task.id, outcome.error or ""))
        else:
            run_at = clock.from_timestamp(clock.timestamp() + outcome.delay)
            worker._emit(ctx, events.Retry(task.id, task.attempt, run_at))

    # Shutdown -----------------------------------------------------------------------------
    def _release_unstarted(self) -> None:
        """Claimed but never started: straight back to Pending, no attempt counted."""
        with self.cond:
            if not self.queued:
                return
            unstarted, self.queued = list(self.queued), deque()
            self.ctx.in_flight -= len(unstarted)
            self.outcomes.extend(Outcome(task, OutcomeKind.RELEASE) for task in unstarted)

    def _shutdown(self) -> None:
        """Finish the run. Not stopping (the backend ran dry, or ``run_until_idle``
        found nothing more): let every claimed task run. Stopping: hand unstarted
        tasks straight back, give running ones the grace (counted from the stop), then
        hand back what still runs."""
        ctx = self.ctx
        while True:
            if ctx.stopping:
                self._release_unstarted()
            self._flush()
            with self.cond:
                if ctx.in_flight == 0 or ctx._hard_stop:
                    break
                timeout = 0.25
                if ctx.stopping:
                    remaining = ctx.stopped_at + self.worker.grace - clock.real_monotonic()
                    if remaining <= 0:
                        break
                    timeout = min(remaining, timeout)
                if not ctx._woken:
                    self.cond.wait(timeout)
                ctx._woken = False
        self._flush()
        with self.cond:
            leftover = list(self.active.values())
            self.active.clear()
        if leftover:
            log.warning("worker %s: %d task(s) still running after the grace: handing them back", self.worker.name, len(leftover))
            interrupted = [
                Outcome(t, OutcomeKind.INTERRUPTED, error="interrupted by shutdown", delay=INTERRUPTED_RETRY_DELAY)
                for t in leftover
            ]
            try:
                self.backend.ack(interrupted)
            except Exception as exc:
                self._report(exc)
