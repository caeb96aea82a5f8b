"""``WorkerBuilder`` and ``Worker``: run a handler over the tasks of a store.

The worker owns the loops, for every store (the store only provides the primitives
of ``taskpipe.store``). One worker run has three kinds of threads:

- the **fetch loop** (the thread that called ``run()``): claims up to the free room
  (``Store.claim``), hands the tasks to the pool, and writes the pool's outcomes
  back in batches (``Store.ack``: one transaction per batch, one writer). With
  nothing to claim it waits until woken (a push in this process, or another
  process's push for a store with ``wakeups``), until the earliest due ``run_at``
  (``Store.next_due``), or the polling strategy's delay, whichever comes first;
- the **pool** (``concurrency`` daemon threads): decodes each task's args, calls
  the handler with its injected parameters (an ``async def`` handler runs on an
  event loop the run keeps in a thread of its own), and turns the return or the
  exception into an outcome (done, retry after a backoff, or dead);
- the **heartbeat** thread: ``Store.beat`` every ``keep_alive`` seconds (and, for a
  store with ``pausing``, a look at whether the queue is paused: ``taskpipe.pausing``).

While paused (``Worker.pause()``, or the queue paused in the store) the fetch loop
claims nothing: it hands back the tasks claimed and not started, lets running ones
finish and writes their outcomes; heartbeats and ``stop()`` go on as usual.

``run_until_idle()`` does the same but never sleeps and returns when nothing is due
and nothing is running; it beats from the calling thread, so a frozen clock governs
everything it does.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from . import clock, events
from . import layers as _layers
from .context import WorkerContext
from .errors import (
    BuildError,
    NotStarted,
    OutcomeRefused,
    PipeError,
    TaskpipeError,
    UnknownTask,
    WorkflowError,
)
from .injection import Signature, analyse
from .layers import Handle, Layer, RetryPolicy, compose
from .pausing import PauseSwitch
from .signals import graceful_signals
from .store import Claim, JoinPart, Outcome, OutcomeKind, Row, Store, safe_text
from .task import Task

if TYPE_CHECKING:
    from .asyncrun import EventLoopThread

__all__ = ["WorkerBuilder", "Worker", "StepOutcome", "ClaimRunner", "Route", "Dispatch"]

log = logging.getLogger("taskpipe.worker")

EventCallback = Callable[[WorkerContext, events.Event], Any]
INTERRUPTED_RETRY_DELAY = 1.0
CLAIM_AHEAD_JOIN = 60.0  # the longest the shutdown waits for a claim in flight
ACK_DELAY = 0.05  # the longest a finished task waits for its outcome to be written
ACK_RETRY_MIN, ACK_RETRY_MAX = 0.05, 2.0  # pauses between tries while the store is unavailable
HEARTBEAT_JOIN = 1.0  # how long a stopping run waits for its heartbeat thread


class StepOutcome(NamedTuple):
    """What a ``ClaimRunner`` returns for a task it ran: the result to store, and the
    tasks and join parts to write in the same transaction as the task's ack."""

    result: Any
    follow_ups: tuple[Row, ...] = ()
    join_parts: tuple[JoinPart, ...] = ()


#: A handler that runs claimed tasks itself (a workflow): ``runner(claim, task, ctx)``
#: decodes the args (setting ``task.args``), calls the user's function and returns a
#: ``StepOutcome``. A handler object provides one through ``bind_worker(store, data)``,
#: called by ``WorkerBuilder.build``; an exception is a failed attempt, as for any
#: handler (a ``WorkflowError``: Dead at once).
ClaimRunner = Callable[[Claim, Task[Any], WorkerContext], StepOutcome]


class Route(NamedTuple):
    """Where a ``Dispatch`` sends one task: the handler, called as a worker calls its
    handler (the args decoded into ``signature.args_type`` first, then the injected
    parameters), and the retry policy of its failures (None: the worker's)."""

    handler: Callable[..., Any]
    signature: Signature
    retry: RetryPolicy | None = None


#: A handler that serves many functions (a ``Router``): ``dispatch(meta)`` returns the
#: ``Route`` of a task from its meta, or raises ``UnknownTask`` (the task is Dead at
#: once, with that message). A handler object provides one through
#: ``bind_dispatch(store, data)``, called by ``WorkerBuilder.build``, and may bring
#: layers of its own with ``middleware()`` (added innermost).
Dispatch = Callable[[dict[str, Any]], Route]


class WorkerBuilder:
    """Assemble a worker with chained calls, then ``build(handler)``.

    For example::

        worker = (WorkerBuilder("emails").backend(storage).concurrency(4)
                  .retry(RetryPolicy.retries(3)).on_event(print).build(send))
    """

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise BuildError(f"a worker needs a non-empty name, got {name!r}")
        self._name = name
        self._backend: Store | None = None
        self._concurrency = 1
        self._data: dict[type, Any] = {}
        self._retry = RetryPolicy()
        self._callbacks: list[EventCallback] = []
        self._grace = 30.0
        self._layers: list[Layer | _RateLimit | _Metrics] = []

    def backend(self, backend: Store) -> WorkerBuilder:
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
            raise BuildError(
                f"retry() takes a RetryPolicy, e.g. RetryPolicy.retries(3), got {policy!r}"
            )
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

    def layer(self, layer: Layer) -> WorkerBuilder:
        """Wrap the handler in ``layer`` (see ``taskpipe.layers``); the first added is
        the outermost."""
        if not callable(layer):
            raise BuildError(f"layer() takes a layer(call_next) function, got {layer!r}")
        maker = next((m.__name__ for m in _LAYER_MAKERS if m is layer), None)
        if maker is not None:  # .layer(filter) for .layer(filter(pred))
            raise BuildError(
                f"layer() takes a layer, not {maker}, which makes one: pass "
                f"{maker}(...)'s layer, .layer({maker}(...)), or use .{maker}(...)"
            )
        self._layers.append(layer)
        return self

    def timeout(self, seconds: timedelta | float) -> WorkerBuilder:
        """Fail an attempt that runs longer than ``seconds`` (``layers.timeout``)."""
        return self.layer(_layers.timeout(seconds))

    def rate_limit(
        self, n: int, per: timedelta | float, *, key: str | None = None
    ) -> WorkerBuilder:
        """Start at most ``n`` tasks every ``per``; with a ``key``, across every worker
        of the store (``layers.rate_limit``)."""
        self._layers.append(_RateLimit(n, per, key))  # made at build(), with the store
        return self

    def circuit_breaker(self, failures: int = 5, recovery: timedelta | float = 60) -> WorkerBuilder:
        """Hold tasks back after ``failures`` failures in a row (``layers.circuit_breaker``)."""
        return self.layer(_layers.circuit_breaker(failures, recovery))

    def filter(self, predicate: Callable[[Task[Any]], bool]) -> WorkerBuilder:
        """Skip the tasks for which ``predicate(task)`` is false (``layers.filter``)."""
        return self.layer(_layers.filter(predicate))

    def tracing(self, tracer: Any = None) -> WorkerBuilder:
        """An OpenTelemetry span around each task (``layers.tracing``)."""
        return self.layer(_layers.tracing(tracer))

    def metrics(self, registry: Any = None) -> WorkerBuilder:
        """Prometheus metrics of the tasks run and of the store's queue (``layers.metrics``)."""
        _layers.metrics(registry)  # a missing prometheus-client fails here, not at build()
        self._layers.append(_Metrics(registry))  # made at build(), with the store
        return self

    def build(self, handler: Callable[..., Any]) -> Worker:
        """Check everything and return the ``Worker`` running ``handler`` (a function, a
        workflow, or a ``Router``: each task then runs the function it names); raises
        ``BuildError`` on mistakes."""
        if self._backend is None:
            raise BuildError(
                f"worker {self._name!r} has no backend: call .backend(storage) before .build()"
            )
        if not isinstance(self._backend, Store):
            raise BuildError(
                f"{self._backend!r} is not a taskpipe store: use a SqliteStorage, memory.backend(), "
                "pipe_to(...) or BackendBuilder(...).build()"
            )
        if self._retry.max_attempts > 1 and not self._backend.capabilities.outcomes:
            raise BuildError(
                f"{self._backend!r} cannot record outcomes, so .retry({self._retry!r}) would do nothing: "
                "give the backend an outcome callback (BackendBuilder(...).on_outcome(fn)) that makes "
                "a retried task due again, or drop .retry()"
            )
        runner: ClaimRunner | None = None
        dispatch: Dispatch | None = None
        bind = getattr(handler, "bind_worker", None)
        bind_dispatch = getattr(handler, "bind_dispatch", None)
        if bind is not None:  # a workflow: it runs each claimed task itself
            runner = bind(self._backend, dict(self._data))
            signature = Signature(args_type=Any, injections=())
        elif bind_dispatch is not None:  # a router: each task names its function
            dispatch = bind_dispatch(self._backend, dict(self._data))
            signature = Signature(args_type=Any, injections=())
        elif not callable(handler):
            raise BuildError(f"build() takes the handler function, got {handler!r}")
        else:
            signature = analyse(handler, self._data)
        backend = self._backend
        layers = [
            _layers.rate_limit(x.n, x.per, key=x.key, store=backend)
            if isinstance(x, _RateLimit)
            else _layers.metrics(x.registry, store=backend)
            if isinstance(x, _Metrics)
            else x
            for x in self._layers
        ]
        layers.extend(backend.middleware())
        # A handler object may bring layers too (innermost): Django's closes DB connections.
        handler_middleware = getattr(handler, "middleware", None)
        if dispatch is not None and callable(handler_middleware):
            layers.extend(handler_middleware())
        try:  # each run composes them again; a layer that makes no handle fails now
            compose(layers, _not_called)
        except TypeError as exc:
            raise BuildError(str(exc)) from exc
        return Worker(
            name=self._name,
            backend=self._backend,
            handler=handler,
            signature=signature,
            concurrency=self._concurrency,
            retry=self._retry,
            callbacks=list(self._callbacks),
            grace=self._grace,
            runner=runner,
            layers=layers,
            dispatch=dispatch,
        )


#: The built-in layers' makers: given to ``layer()`` uncalled, a clear ``BuildError``.
_LAYER_MAKERS: tuple[Callable[..., Any], ...] = (
    _layers.timeout,
    _layers.rate_limit,
    _layers.circuit_breaker,
    _layers.filter,
    _layers.tracing,
    _layers.metrics,
)


def _not_called(task: Task[Any], ctx: WorkerContext) -> Any:
    """The handle ``build()`` composes the layers over to check them (never called)."""
    raise RuntimeError("not a real handle")


class _RateLimit(NamedTuple):
    """A ``WorkerBuilder.rate_limit()`` waiting for ``build()`` to know the store."""

    n: int
    per: timedelta | float
    key: str | None


class _Metrics(NamedTuple):
    """A ``WorkerBuilder.metrics()`` waiting for ``build()`` to know the store."""

    registry: Any


class Worker:
    """Runs a handler over a backend's tasks; made by ``WorkerBuilder.build()``."""

    def __init__(
        self,
        *,
        name: str,
        backend: Store,
        handler: Callable[..., Any],
        signature: Signature,
        concurrency: int,
        retry: RetryPolicy,
        callbacks: list[EventCallback],
        grace: float,
        runner: ClaimRunner | None = None,
        layers: list[Layer] | None = None,
        dispatch: Dispatch | None = None,
    ):
        self.name = name
        self.backend = backend
        self.handler = handler
        self.signature = signature
        self.concurrency = concurrency
        self.retry_policy = retry
        self.grace = grace
        self.runner = runner
        self.dispatch = dispatch
        self.layers: list[Layer] = list(layers or ())
        self._callbacks = callbacks
        config = backend.config
        buffer = config.buffer_size
        if buffer is None:  # enough prefetch to claim and ack in full batches
            buffer = max(concurrency, config.claim_batch)
        self.capacity = concurrency + buffer
        self._ctx: WorkerContext | None = None
        self._lock = threading.Lock()
        self._stop_requested = 0  # 1: graceful, 2: skip the grace; read when a run starts
        self._paused = False  # pause() asked; read when a run starts
        self._switch: PauseSwitch | None = None  # the current run's

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

    def pause(self) -> None:
        """Take no new tasks (from any thread; before a run too) until ``resume()``:
        once it returns, the run starts no task; those claimed and not started go back
        to the store, running ones finish and their outcomes are written; heartbeats
        and ``stop()`` go on. A paused ``run_until_idle()`` returns once nothing runs.
        Emits ``events.Paused``."""
        self._paused = True
        switch = self._switch
        if switch is not None:
            switch.set_by_worker(True)

    def resume(self) -> None:
        """Undo ``pause()``: the run claims again at once (unless its queue is paused in
        the store: ``Store.resume_queue``). Emits ``events.Resumed``."""
        self._paused = False
        switch = self._switch
        if switch is not None:
            switch.set_by_worker(False)

    @property
    def paused(self) -> bool:
        """True while the worker takes no new tasks: after ``pause()``, or while its
        run sees its queue paused in the store (checked at each heartbeat)."""
        switch = self._switch
        return self._paused or (switch is not None and switch.active)

    @property
    def context(self) -> WorkerContext | None:
        """The current run's context (None when not running)."""
        return self._ctx

    # The run ------------------------------------------------------------------------------
    def _run(self, until_idle: bool) -> int:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"worker {self.name!r} is already running")
        try:
            self.backend.check_setup()  # never set up: fail now, saying what to run
        except BaseException:
            self._lock.release()
            raise
        try:
            run = _Run(self, until_idle)
        except BaseException:
            self._lock.release()
            raise
        self._ctx = run.ctx
        self._switch = run.pause
        run.pause.set_by_worker(self._paused)  # after publishing: no pause() is lost
        # A stop asked while the run was being set up is applied now (after the
        # context is published, so none is lost between the two).
        if self._stop_requested == 2:
            run.ctx._stop_hard()
        elif self._stop_requested:
            run.ctx.stop()
        try:
            return run.execute()
        finally:
            self._ctx = self._switch = None
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
        self.store = worker.backend
        self.config = self.store.config
        self.until_idle = until_idle
        self.ctx = WorkerContext(
            worker.name,
            capacity=worker.capacity,
            report=self._report,
            emit=lambda event: worker._emit(self.ctx, event),
            close_thread_connection=self.store.close_thread_connection,
        )
        self.ctx.until_idle = until_idle
        self.ctx.beat_interval = self.config.keep_alive_seconds
        self.cond = self.ctx._cond  # the fetch loop waits on it (wake-ups, finished tasks)
        self.work = threading.Condition(self.ctx.lock)  # the pool threads wait on it
        self.outcomes: list[Outcome] = []
        self.first_outcome_at = 0.0
        self.queued: deque[Claim] = deque()  # handed to the pool, not started yet
        self.active: dict[int, Claim] = {}  # running in a pool thread
        self.threads = 0  # pool threads started
        self.idle_threads = 0  # pool threads waiting for a task
        self.ack_retry_at = 0.0  # after a failed write: not before this (real monotonic)
        self.ack_backoff = 0.0
        self.closing = False  # the pool threads should end
        self.handled = 0
        self.pipe_error: PipeError | None = None
        self.threshold = max(1, worker.capacity // 2)
        # Outcomes written at once (unless idle, or the oldest has waited ACK_DELAY):
        # two claims' worth, so that a busy run writes once for every two claims.
        self.ack_batch = max(self.threshold, 2 * self.config.claim_batch)
        self.loop: EventLoopThread | None = None  # for async handlers, made on first use
        inner = self._call_handler
        if worker.runner is not None:
            inner = self._call_runner
        elif worker.dispatch is not None:
            inner = self._call_routed
        self.handle: Handle = compose(worker.layers, inner)
        self.heartbeat_thread: threading.Thread | None = None
        # A second claiming thread (stores declaring ``overlapping_claims``): see
        # _claim_ahead_loop. ``reserved``: the room of the fetch loop's claim in flight;
        # ``ahead``: the room of the claim ahead in flight;
        # ``full_claims``: how many of the fetch loop's claims got all they asked for;
        # ``ahead_stop``: the claiming-ahead thread must end.
        self.claim_ahead_thread: threading.Thread | None = None
        self.reserved = 0
        self.ahead = 0
        self.full_claims = 0
        self.ahead_stop = False
        self.pause = PauseSwitch(
            self.store, self.ctx, self.ctx.emit, self._report, hold=self._release_unstarted
        )

    def _report(self, error: BaseException) -> None:
        if isinstance(error, PipeError) and self.pipe_error is None:
            self.pipe_error = error
        log.error("worker %s: %s", self.worker.name, error)
        self.worker._emit(self.ctx, events.Error(None, error))

    # Orchestration ------------------------------------------------------------------------
    def execute(self) -> int:
        ctx, store = self.ctx, self.store
        self.worker._emit(ctx, events.Start())  # first: a HeartBeat or Error never precedes Start
        self.pause.start()  # Paused now if pause() came first
        cross_process = store.capabilities.wakeups and not self.until_idle
        # Registered for the whole run, not just while waiting: a push between an empty
        # claim and the wait sets the context's pending flag, so the wait returns at once.
        store.wakeups.register(store.queue, ctx, cross_process=cross_process)
        try:
            store.open_run(ctx)
            self._beat()  # registers this run before it claims anything
            if not self.until_idle:
                self.heartbeat_thread = threading.Thread(
                    target=self._heartbeat_loop,
                    name=f"taskpipe-{self.worker.name}-heartbeat",
                    daemon=True,
                )
                self.heartbeat_thread.start()
            if store.capabilities.overlapping_claims:
                self.claim_ahead_thread = threading.Thread(
                    target=self._claim_ahead_loop,
                    name=f"taskpipe-{self.worker.name}-claims",
                    daemon=True,
                )
                self.claim_ahead_thread.start()
            try:
                self._fetch_loop()
            finally:
                self._stop_claiming_ahead()
                self._shutdown()
        finally:
            store.wakeups.unregister(store.queue, ctx)
            ctx.finished.set()
            if self.heartbeat_thread is not None:  # a beat stuck on a lock must not hold us
                self.heartbeat_thread.join(timeout=HEARTBEAT_JOIN)
            self._close_pool()
            ctx._finish()
            self._call(store.retire, ctx)
            store.close_thread_connection()
            self.worker._emit(ctx, events.Stop())
        if self.pipe_error is not None:
            raise self.pipe_error
        return self.handled

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a store primitive; an error becomes an ``Error`` event (None returned)."""
        try:
            return fn(*args)
        except Exception as exc:
            self._report(exc)
            return None

    def _beat(self) -> None:
        try:
            self.store.beat(self.ctx)
        except Exception as exc:  # a store's heartbeat must not kill the worker
            self._report(exc)
            return
        self.ctx.beats += 1
        self.worker._emit(self.ctx, events.HeartBeat())
        self.pause.look()  # is the queue paused in the store?

    def _heartbeat_loop(self) -> None:
        try:
            while not self.ctx.finished.wait(self.ctx.beat_interval):
                self._beat()
        finally:
            self.store.close_thread_connection()

    # The poll loop --------------------------------------------------------------------------
    def _fetch_loop(self) -> None:
        ctx, store = self.ctx, self.store
        strategy = self.config.strategy.start()
        idle_sent = False
        busy = False  # the last step handed out tasks: let outcomes gather into a batch
        check_first = False  # after a silent wait: look with a cheap read before claiming
        next_beat = clock.real_monotonic() + ctx.beat_interval
        while not ctx.stopping:
            if ctx.beats == 0:  # not registered yet: its claims would look orphaned
                self._beat()
                if ctx.beats == 0:
                    if self.until_idle:
                        break
                    ctx.wait(strategy.next_delay())
                    continue
            if self._ack_due(busy):
                self._flush()
            if self.until_idle and clock.real_monotonic() >= next_beat:
                self._beat()
                next_beat = clock.real_monotonic() + ctx.beat_interval
            # Paused: no claims; outcomes, beats and stop go on (see _wait_while_paused).
            if self.pause.active:
                if self._wait_while_paused():
                    break
                busy = False
                continue
            if not self._has_room():
                self._wait_for_room()
                continue
            due: float | None = None
            looked = False
            claims: list[Claim] | None = []
            if check_first:
                due, looked = self._call(store.next_due), True
                may_claim = due is not None and due <= clock.timestamp()
            else:
                may_claim = True
            if may_claim:
                with self.cond:
                    room = self.reserved = min(self._free(), self.config.claim_batch)
                try:
                    claims = self._claim_with_outcomes(room)
                except Exception as exc:
                    self._report(exc)
                    claims = []
                self._submit_all(claims or [], room)
                if claims is None:
                    break  # a finite store ran dry: finish what it gave
            check_first = False
            if claims:
                strategy.reset()
                was_idle = not busy
                idle_sent, busy = False, True
                if was_idle:
                    # Let a woken pool thread take the GIL now rather than when this
                    # thread next waits on the database: ~0.1-0.2 ms off push→start.
                    # (Not when busy: the pool has work already.)
                    time.sleep(0)
                continue
            busy = False
            if self._ack_due(busy):
                # Nothing to claim: write what finished now, and look once more (a
                # bounded store may have had no room until these were written).
                self._flush()
                continue
            with self.cond:
                nothing_running = ctx.in_flight == 0 and not self.outcomes
            if nothing_running and not idle_sent:
                idle_sent = True
                self._flush()
                self._call(store.idle)
                self.worker._emit(ctx, events.Idle())
            if self.until_idle:
                if nothing_running:
                    break
                self._wait_for_room()
                continue
            delay = strategy.next_delay()
            if not looked:
                due = self._call(store.next_due)
            if due is not None:
                until_due = due - clock.timestamp()
                if until_due > 0 or not may_claim:
                    delay = min(delay, max(0.0, until_due))
            check_first = not ctx.wait(delay)

    def _ack_due(self, busy: bool) -> bool:
        """Write outcomes in batches: at once when idle (the last claim found nothing),
        else when ``ack_batch`` have finished or the oldest has waited ``ACK_DELAY``;
        after a failed write, not before its backoff ends."""
        with self.cond:
            pending = len(self.outcomes)
            if not pending or clock.real_monotonic() < self.ack_retry_at:
                return False
            if not busy or pending >= self.ack_batch:
                return True
            return clock.real_monotonic() - self.first_outcome_at >= ACK_DELAY

    def _has_room(self) -> bool:
        with self.cond:  # (no free slots while a task that must run alone is held)
            return self.ctx.in_flight == self.ahead or self._free() >= self.threshold

    def _wait_for_room(self) -> None:
        with self.cond:
            if self.outcomes:
                due = max(self.first_outcome_at + ACK_DELAY, self.ack_retry_at)
                timeout: float | None = max(0.0, due - clock.real_monotonic())
            else:
                timeout = self.ctx.beat_interval if self.until_idle else None
            if not self.ctx._woken and not self.ctx.stopping:
                self.cond.wait(timeout)
            self.ctx._woken = False

    def _wait_while_paused(self) -> bool:
        """One step of a paused run (its unstarted tasks were handed back on pausing):
        write what finished, then wait for a finished task, a stop, a resume or (under
        ``run_until_idle``) the next beat. True when ``run_until_idle`` should return:
        nothing runs any more."""
        self._flush()
        with self.cond:
            if self.until_idle and self.ctx.in_flight == 0 and not self.outcomes:
                return True
            timeout = self.ctx.beat_interval if self.until_idle else None
            if self.outcomes:  # the store was unavailable: try again after the pause
                timeout = max(0.0, self.ack_retry_at - clock.real_monotonic())
        if self.ctx.wait(timeout) and self.pause.by_store and not self.ctx.stopping:
            self.pause.look()  # perhaps woken by a resume in this process: look again
        return False

    # Pool side --------------------------------------------------------------------------
    # Tasks wait in ``queued``; up to ``concurrency`` daemon threads take them one after
    # another, so a task costs one lock round trip, and an unstarted task is simply still
    # in the deque. Daemon threads: a hung handler never holds the process open (its
    # lease is handed back when the shutdown grace ends).
    def _submit_all(self, claims: list[Claim], room: int, *, ahead: bool = False) -> None:
        """Hand what a claim of ``room`` tasks got to the pool, and give up the room
        it reserved (the fetch loop's ``reserved``, or, ``ahead``, the claiming-ahead
        thread's share of ``in_flight``), in one hold of the lock: the other claiming
        thread never sees the room free before the tasks take it."""
        start: list[int] = []  # the numbers of the pool threads to start
        with self.cond:
            if ahead:
                self.ctx.in_flight -= room
                self.ahead = 0
                self.ctx._woken = True  # the fetch loop may go on
            else:
                self.reserved = 0
                if claims and len(claims) >= room:  # full: there may be more (claim ahead)
                    self.full_claims += 1
            self.cond.notify_all()
            for claim in claims:
                if self._submit_locked(claim):
                    start.append(self.threads)
        for number in start:
            threading.Thread(
                target=self._pool_thread,
                name=f"taskpipe-{self.worker.name}-{number}",
                daemon=True,
            ).start()

    def _submit_locked(self, claim: Claim) -> bool:
        """Queue one claim for the pool (the caller holds ``self.cond``); True when a
        new pool thread (number ``self.threads``) should start for it."""
        # Back, never started: paused while it was being claimed; or it must run alone
        # and the other claiming thread holds tasks, or a task that must run alone is
        # held (two claims in flight at once: see _claim_ahead_loop).
        if self.pause.active or self.ctx.isolated or (claim.isolated and self.ctx.in_flight):
            if not self.outcomes:
                self.first_outcome_at = clock.real_monotonic()
            self.outcomes.append(Outcome(claim, OutcomeKind.RELEASE))
            return False
        self.ctx.in_flight += 1
        if claim.isolated:
            self.ctx.isolated += 1
        self.queued.append(claim)
        if self.idle_threads:
            self.work.notify()
        if len(self.queued) > self.idle_threads and self.threads < self.worker.concurrency:
            self.threads += 1
            return True
        return False

    # Claiming ahead ------------------------------------------------------------------------
    # On a store whose round trips can overlap (``Capabilities.overlapping_claims``: a
    # network store, each thread on its own connection), one claim at a time leaves the
    # store idle while the worker handles a reply and the pool idle while it waits for
    # the next one. While the run is busy and its pool is about to run dry, this second
    # thread claims one batch more (so a worker holds at most ``capacity`` plus one
    # ``claim_batch``; with slow tasks work waits in the pool and it does not claim), so
    # that two claims are in flight at once. It reserves its room in ``in_flight`` for
    # the length of its claim (the store sees tasks may arrive: it gives no task that
    # must run alone); the fetch loop's own room leaves that reservation out. A task
    # that must run alone that comes while the other thread's tasks are held, or tasks
    # that come while one is held, go straight back, never started (_submit_locked).
    # After a claim that is not full (the queue is running dry) it waits until a claim
    # of the fetch loop is full again.
    def _claim_ahead_loop(self) -> None:
        ctx = self.ctx
        seen = self.full_claims
        try:
            while True:
                with self.cond:
                    while not self._may_claim_ahead(seen):
                        if ctx.stopping or self.ahead_stop:
                            return
                        self.cond.wait()
                    room = self.ahead = self.config.claim_batch
                    ctx.in_flight += room
                    full_claims = self.full_claims
                claims: list[Claim] | None = []
                try:
                    claims = self._claim_with_outcomes(room)
                except Exception as exc:
                    self._report(exc)
                finally:  # the reservation ends whatever happened
                    self._submit_all(claims or [], room, ahead=True)
                if claims is None or len(claims) < room:  # running dry, or an error
                    seen = full_claims
        finally:
            self.store.close_thread_connection()

    def _may_claim_ahead(self, seen: int) -> bool:
        """The run is busy, not paused, its pool is about to run dry, and it holds no
        more than its capacity counting the fetch loop's claim in flight (the caller
        holds ``self.cond``)."""
        ctx = self.ctx
        if ctx.stopping or self.ahead_stop or self.pause.active or ctx.isolated:
            return False
        if self.full_claims == seen:  # not busy (or running dry) since the last look
            return False
        if len(self.queued) >= self.worker.concurrency:  # work still waits for the pool
            return False
        return ctx.in_flight + self.reserved <= ctx.capacity

    def _free(self) -> int:
        """Room for the fetch loop's next claim (the caller holds ``self.cond``): the
        capacity less the tasks held, a claim ahead still in flight not counted (its
        tasks count once they come); none while a task that must run alone is held."""
        if self.ctx.isolated:
            return 0
        return max(0, self.ctx.capacity - (self.ctx.in_flight - self.ahead))

    def _stop_claiming_ahead(self) -> None:
        thread = self.claim_ahead_thread
        if thread is None:
            return
        with self.cond:
            self.ahead_stop = True
            self.cond.notify_all()
        thread.join(CLAIM_AHEAD_JOIN)
        if thread.is_alive():
            log.warning("worker %s: a claim is still in flight at shutdown", self.worker.name)

    def _pool_thread(self) -> None:
        claim: Claim | None = None
        outcome: Outcome | None = None
        try:
            while True:
                with self.cond:
                    if claim is not None and outcome is not None:
                        self._finish_locked(claim, outcome)
                        claim = outcome = None
                    while not self.queued and not self.closing:
                        self.idle_threads += 1
                        self.work.wait()
                        self.idle_threads -= 1
                    if not self.queued or self.ctx.stopping:
                        return
                    claim = self.queued.popleft()
                    self.active[claim.id] = claim
                try:
                    outcome = self._execute(claim)
                except BaseException as exc:  # never leave a task without an outcome
                    outcome = Outcome(
                        claim, OutcomeKind.DEAD, error=safe_text(f"worker error: {exc!r}")
                    )
        finally:
            with self.cond:
                self.threads -= 1
            self.store.close_thread_connection()

    def _execute(self, claim: Claim) -> Outcome:
        worker, store = self.worker, self.store
        if claim.defect is not None:
            return Outcome(claim, OutcomeKind.DEAD, error=safe_text(claim.defect))
        if worker.runner is not None:  # it decodes the args itself
            task = claim.to_task(None)
        else:
            signature = worker.signature
            if worker.dispatch is not None:
                try:
                    signature = worker.dispatch(claim.meta).signature
                except UnknownTask as exc:  # no function of this name: retrying cannot help
                    return Outcome(claim, OutcomeKind.DEAD, error=safe_text(str(exc)))
            try:
                args = store.codec.decode(claim.payload, signature.args_type)
            except Exception as exc:
                return Outcome(
                    claim,
                    OutcomeKind.DEAD,
                    error=safe_text(f"cannot decode the task's payload: {exc}"),
                )
            task = claim.to_task(args)
        try:
            result = self.handle(task, self.ctx)
        except NotStarted as exc:  # a layer held it back (a rate limit) and we are stopping
            if self.ctx.stopping:
                return Outcome(claim, OutcomeKind.RELEASE)  # back to Pending, uncounted
            return self._failure(claim, task, exc)
        except WorkflowError as exc:  # the run cannot go on: retrying cannot help
            return Outcome(claim, OutcomeKind.DEAD, error=safe_text(_describe(exc)), task=task)
        except BaseException as exc:
            return self._failure(claim, task, exc)
        if worker.runner is None:
            return Outcome(
                claim,
                OutcomeKind.DONE,
                result=result,
                encoded_result=store.encode_result(result),
                task=task,
            )
        # A layer may have answered for the step (a skipped task: None).
        step = result if isinstance(result, StepOutcome) else StepOutcome(result)
        return Outcome(
            claim,
            OutcomeKind.DONE,
            result=step.result,
            encoded_result=store.encode_result(step.result),
            task=task,
            follow_ups=step.follow_ups,
            join_parts=step.join_parts,
        )

    def _call_handler(self, task: Task[Any], ctx: WorkerContext) -> Any:
        """The innermost handle: call the handler with its injected parameters."""
        return self._invoke(self.worker.handler, self.worker.signature, task, ctx)

    def _call_routed(self, task: Task[Any], ctx: WorkerContext) -> Any:
        """The innermost handle of a router: call the function the task names."""
        assert self.worker.dispatch is not None
        route = self.worker.dispatch(task.meta)
        return self._invoke(route.handler, route.signature, task, ctx)

    def _invoke(
        self, handler: Callable[..., Any], signature: Signature, task: Task[Any], ctx: WorkerContext
    ) -> Any:
        """Call ``handler`` on the task's args with its injected parameters; run a
        coroutine it returns on the run's event loop."""
        result = handler(task.args, **signature.kwargs(task, ctx))
        # (None, the usual result, skips isawaitable's slow ABC check)
        if signature.is_async or (result is not None and inspect.isawaitable(result)):
            # Under a ``timeout`` layer, cancelled for real at its deadline.
            result = self._event_loop().run(result, timeout=ctx.time_left)
        return result

    def _call_runner(self, task: Task[Any], ctx: WorkerContext) -> StepOutcome:
        """The innermost handle of a handler that runs claims itself (a workflow)."""
        assert self.worker.runner is not None and task.id is not None
        return self.worker.runner(self.active[task.id], task, ctx)

    def _event_loop(self) -> EventLoopThread:
        from .asyncrun import EventLoopThread  # only runs with async handlers use it

        with self.cond:
            if self.loop is None:
                self.loop = EventLoopThread(name=f"taskpipe-{self.worker.name}-asyncio")
            return self.loop

    def _failure(self, claim: Claim, task: Any, exc: BaseException) -> Outcome:
        error = safe_text(_describe(exc))
        try:
            tb = safe_text("".join(traceback.format_exception(exc)))
        except Exception:  # a traceback that cannot be formatted is not worth a task
            tb = None
        policy = self.worker.retry_policy
        if self.worker.dispatch is not None:  # (its name was checked before it ran)
            policy = self.worker.dispatch(claim.meta).retry or policy
        max_attempts = claim.max_attempts or policy.max_attempts
        if claim.attempt < max_attempts:
            delay = policy.delay(claim.attempt)
            return Outcome(
                claim, OutcomeKind.RETRY, error=error, traceback=tb, delay=delay, task=task
            )
        return Outcome(claim, OutcomeKind.DEAD, error=error, traceback=tb, task=task)

    def _finish_locked(self, claim: Claim, outcome: Outcome) -> None:
        """Record a finished task (the caller holds ``self.cond``)."""
        self.active.pop(claim.id, None)
        self.ctx._let_go(claim.id)
        self.ctx.in_flight -= 1
        if claim.isolated:
            self.ctx.isolated -= 1
        if not self.outcomes:
            self.first_outcome_at = clock.real_monotonic()
        self.outcomes.append(outcome)
        # (paused: the fetch loop writes each outcome at once, having nothing else to do)
        if self.ctx.in_flight == 0 or self._free() >= self.threshold or self.pause.active:
            self.ctx._woken = True
            self.cond.notify_all()

    def _close_pool(self) -> None:
        with self.cond:
            self.closing = True
            self.work.notify_all()
        if self.loop is not None:
            self.loop.close()

    # Writing outcomes ---------------------------------------------------------------------
    def _claim_with_outcomes(self, room: int) -> list[Claim] | None:
        """Claim up to ``room`` tasks; the outcomes waiting to be written go with the
        claim where the store can write both at once (``Store.ack_and_claim``: one
        round trip, one commit), else they wait for the next ``_flush``."""
        with self.cond:
            batch: list[Outcome] = []
            if self.outcomes and clock.real_monotonic() >= self.ack_retry_at:
                batch, self.outcomes = self.outcomes, []
                first_at = self.first_outcome_at
        if batch:
            try:
                claims = self.store.ack_and_claim(batch, self.ctx, room)
            except Exception as exc:  # nothing was written: the next _flush tries them alone
                self._report(exc)
                claims = None
            if claims is None:
                with self.cond:
                    if self.outcomes:
                        self.first_outcome_at = min(first_at, self.first_outcome_at)
                    else:
                        self.first_outcome_at = first_at
                    self.outcomes[:0] = batch
            else:
                with self.cond:
                    self.ack_backoff = self.ack_retry_at = 0.0
                for outcome in batch:
                    self._announce(outcome)
                return claims
        return self.store.claim(self.ctx, room)

    def _flush(self) -> None:
        with self.cond:
            if not self.outcomes or clock.real_monotonic() < self.ack_retry_at:
                return
            batch, self.outcomes = self.outcomes, []
        written, unwritten = self._ack(batch)
        with self.cond:
            if unwritten:  # the store is unavailable: keep them, try again after a pause
                self.outcomes[:0] = unwritten
                self.ack_backoff = min(max(2 * self.ack_backoff, ACK_RETRY_MIN), ACK_RETRY_MAX)
                self.ack_retry_at = clock.real_monotonic() + self.ack_backoff
            else:
                self.ack_backoff = self.ack_retry_at = 0.0
        for outcome in written:
            self._announce(outcome)

    def _ack(self, batch: list[Outcome]) -> tuple[list[Outcome], list[Outcome]]:
        """Write ``batch``; return (written, not written). When the store refuses the
        batch because of one outcome (``OutcomeRefused``, or a value it cannot take),
        each is tried alone and the refused one is written as Dead with the reason, so
        that one bad outcome never blocks the others. When the store is unavailable,
        nothing is written now: the worker tries again later."""
        try:
            self.store.ack(batch)
            return batch, []
        except Exception as exc:
            self._report(exc)
            if not _refused(exc):
                return [], batch
        written: list[Outcome] = []
        for index, outcome in enumerate(batch):
            try:
                self.store.ack([outcome])
                written.append(outcome)
                continue
            except Exception as exc:
                if not _refused(exc):
                    self._report(exc)
                    return written, batch[index:]
                reason = safe_text(f"the outcome could not be stored: {_describe(exc)}", 2000)
            fallback = Outcome(outcome.claim, OutcomeKind.DEAD, error=reason, task=outcome.task)
            try:
                self.store.ack([fallback])
            except Exception as exc:
                self._report(exc)
                return written, batch[index:]
            written.append(fallback)
        return written, []

    def _announce(self, outcome: Outcome) -> None:
        worker, ctx = self.worker, self.ctx
        task_id = outcome.task_id
        if not outcome.accepted:
            log.warning(
                "task %s: outcome %s rejected (its lease was taken back)",
                task_id,
                outcome.kind.value,
            )
            return
        kind = outcome.kind
        if kind == OutcomeKind.RELEASE:
            return
        self.handled += 1
        if kind == OutcomeKind.DONE:
            worker._emit(ctx, events.Success(task_id, outcome.result))
            return
        worker._emit(ctx, events.Error(task_id, outcome.error))
        if kind == OutcomeKind.DEAD:
            worker._emit(ctx, events.Dead(task_id, outcome.error or ""))
        else:
            run_at = clock.from_timestamp(clock.timestamp() + outcome.delay)
            worker._emit(ctx, events.Retry(task_id, outcome.claim.attempt, run_at))

    # Shutdown -----------------------------------------------------------------------------
    def _release_unstarted(self) -> None:
        """Claimed but never started: straight back to Pending, no attempt counted."""
        with self.cond:
            if not self.queued:
                return
            unstarted, self.queued = list(self.queued), deque()
            self.ctx.in_flight -= len(unstarted)
            self.ctx.isolated -= sum(1 for claim in unstarted if claim.isolated)
            self.outcomes.extend(Outcome(claim, OutcomeKind.RELEASE) for claim in unstarted)

    def _shutdown(self) -> None:
        """Finish the run. Not stopping (the store ran dry, or ``run_until_idle``
        found nothing more): let every claimed task run. Stopping: hand unstarted
        tasks straight back, give running ones the grace (counted from the stop), then
        hand back what still runs."""
        ctx = self.ctx
        self._call(self.store.close_run, ctx)
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
        self._release_unstarted()  # a hard stop leaves no time to start them
        with self.cond:  # what finished (even during the last flush), and what still runs
            leftover = list(self.active.values())
            self.active.clear()
            finished, self.outcomes = self.outcomes, []
            # Held back by a layer (``ctx.holding``): never started, so handed back as
            # unstarted ones are; they raise NotStarted if they go on.
            held = ctx._hand_back_held([claim.id for claim in leftover])
        if held:
            finished.extend(
                Outcome(claim, OutcomeKind.RELEASE) for claim in leftover if claim.id in held
            )
            leftover = [claim for claim in leftover if claim.id not in held]
        if leftover:
            log.warning(
                "worker %s: %d task(s) still running after the grace: handing them back",
                self.worker.name,
                len(leftover),
            )
        interrupted = [
            Outcome(
                claim,
                OutcomeKind.INTERRUPTED,
                error="interrupted by shutdown",
                delay=INTERRUPTED_RETRY_DELAY,
            )
            for claim in leftover
        ]
        if finished or interrupted:
            written, _ = self._ack(finished + interrupted)
            for outcome in written:
                if outcome.kind != OutcomeKind.INTERRUPTED:
                    self._announce(outcome)


def _refused(exc: BaseException) -> bool:
    """True when a failed ack is about an outcome itself, not the store's availability."""
    return isinstance(exc, OutcomeRefused) or not isinstance(exc, TaskpipeError)


def _describe(exc: BaseException) -> str:
    """``"ValueError: bad"``, even for an exception whose ``str()`` raises."""
    try:
        text = str(exc)
    except Exception:
        text = f"<unprintable {type(exc).__name__} object>"
    return f"{type(exc).__name__}: {text}"
