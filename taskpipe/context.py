"""``WorkerContext``: what a running worker shares with its store and handlers.

Handlers receive it by annotation (``ctx: WorkerContext``) to read the worker's name
or call ``ctx.stop()``. Stores use ``run_id`` and ``new_lease()`` when they claim and
beat, and ``in_flight`` to know whether the run holds anything; the worker uses the
rest (``wait``/``wake`` to idle until a push, ``report`` to surface an error).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import clock
from .errors import NotStarted

if TYPE_CHECKING:
    from .events import Event
    from .task import Task

__all__ = ["WorkerContext"]

_running = threading.local()  # per thread: the cancel event and deadline of the task it runs


class WorkerContext:
    """The live state of one worker run (one ``run()`` or ``run_until_idle()`` call)."""

    def __init__(
        self,
        name: str,
        *,
        capacity: int,
        report: Callable[[BaseException], None],
        emit: Callable[[Event], None] | None = None,
        close_thread_connection: Callable[[], None] | None = None,
    ):
        self.name = name
        self.run_id = f"{name}:{uuid.uuid4().hex[:12]}"
        self.capacity = capacity
        self._report = report
        self._emit = emit
        self._close_thread_connection = close_thread_connection
        self._at_finish: list[Callable[[], None]] | None = []  # None once the run ended
        self._held: set[Any] = set()  # ids of tasks a layer holds back (``holding``)
        self._handed_back: set[Any] = set()  # of those, handed back by the shutdown
        self.lock = threading.Lock()  # guards the run's state; shared with the pool
        self._cond = threading.Condition(self.lock)
        self._leases = itertools.count(1)
        self._woken = False
        self._stopping = False
        self._hard_stop = False
        #: Tasks claimed by this run and not yet finished (queued or running).
        self.in_flight = 0
        #: Of those, tasks that must run alone: while one is held, there is no room.
        self.isolated = 0
        #: True under ``run_until_idle()``: nothing may sleep.
        self.until_idle = False
        #: Seconds between heartbeats (the store's ``Config.keep_alive``).
        self.beat_interval = 5.0
        #: How many heartbeats this run has made.
        self.beats = 0
        #: True while the worker takes no new tasks (``Worker.pause()``, or its queue
        #: paused in the store): a store that claims for several runs at once (a shared
        #: round) gives a paused run nothing.
        self.paused = False
        self.finished = threading.Event()
        self.stopped_at = 0.0  # real monotonic time of the first stop request

    def __repr__(self) -> str:
        return f"WorkerContext({self.run_id!r})"

    # For handlers -------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the worker to stop: it stops fetching, lets running tasks finish (up to
        its shutdown grace), hands back the rest and returns."""
        with self._cond:
            if not self._stopping:
                self._stopping = True
                self.stopped_at = clock.real_monotonic()
            self._woken = True
            self._cond.notify_all()

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._stopping

    @property
    def cancelled(self) -> bool:
        """True when the task the calling thread runs was given up on (its ``timeout``
        passed): a long handler may check it now and then and return early."""
        event = getattr(_running, "cancel", None)
        return event is not None and event.is_set()

    @property
    def time_left(self) -> float | None:
        """Seconds left before the task the calling thread runs times out (a ``timeout``
        layer's deadline; never below 0), or None when it has no timeout: pass it on,
        e.g. ``requests.get(url, timeout=ctx.time_left)``."""
        deadline = getattr(_running, "deadline", None)
        if deadline is None:
            return None
        return max(0.0, deadline - clock.real_monotonic())

    # For layers -----------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Send ``event`` to the worker's ``on_event`` callbacks (a layer reports a
        skipped task, an abandoned thread, a circuit opening)."""
        if self._emit is not None:
            self._emit(event)

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` of real time in the calling thread (a layer holding a task
        back), returning early once the worker is stopping; True when it is stopping."""
        deadline = clock.real_monotonic() + seconds
        with self._cond:  # stop() notifies it; other notifications just loop
            while not self._stopping:
                remaining = deadline - clock.real_monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._stopping

    @contextlib.contextmanager
    def holding(self, task: Task[Any]) -> Iterator[None]:
        """While inside, ``task`` waits in a layer and has not started (a rate limit, an
        open circuit); raise ``NotStarted`` inside to hand it back. A shutdown that ends
        meanwhile (no grace left, a second signal) hands it back uncounted, and leaving
        then raises ``NotStarted``, so that it never starts after it was handed back."""
        with self.lock:
            self._held.add(task.id)
        try:
            yield
        except NotStarted:
            if self.cancelled:  # a timeout gave up on it: the outcome is the timeout's
                with self.lock:
                    self._held.discard(task.id)
            raise  # else still unstarted on its way back to the worker, which lets it go
        except BaseException:
            with self.lock:
                self._held.discard(task.id)
            raise
        with self.lock:
            if task.id not in self._handed_back:
                self._held.discard(task.id)
                return
        raise NotStarted("the worker's shutdown handed the task back while it was held")

    def _let_go(self, task_id: Any) -> None:
        """The worker has the outcome of ``task_id``: it is no longer held (the caller
        holds ``lock``)."""
        self._held.discard(task_id)

    def _hand_back_held(self, task_ids: list[Any]) -> set[Any]:
        """Of ``task_ids``, those held back by a layer: marked handed back (so they never
        start) and returned. The caller holds ``lock``."""
        held = {task_id for task_id in task_ids if task_id in self._held}
        self._handed_back |= held
        return held

    @contextlib.contextmanager
    def cancel_scope(
        self, cancel: threading.Event, deadline: float | None = None
    ) -> Iterator[None]:
        """While inside, ``cancelled`` in the calling thread reads ``cancel`` (a layer
        that runs the handler on a thread of its own binds the task's event there), and
        ``time_left`` counts down to ``deadline`` (``clock.real_monotonic()`` seconds);
        an ``async def`` handler is cancelled when it passes."""
        previous = getattr(_running, "cancel", None), getattr(_running, "deadline", None)
        _running.cancel, _running.deadline = cancel, deadline
        try:
            yield
        finally:
            _running.cancel, _running.deadline = previous

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once this run has ended and its pool has stopped (a layer
        closes the threads it keeps for the run); at once if it has already ended."""
        with self.lock:
            if self._at_finish is not None:
                self._at_finish.append(callback)
                return
        callback()

    def close_thread_connection(self) -> None:
        """Call from a thread a layer started for this run, as it ends: the store closes
        the connection it keeps for that thread, if any."""
        if self._close_thread_connection is not None:
            self._close_thread_connection()

    # For stores and the worker ----------------------------------------------------------
    def free_slots(self) -> int:
        """How many more tasks this worker can take now (threads plus buffer); none
        while it holds a task that must run alone."""
        if self.isolated:
            return 0
        return max(0, self.capacity - self.in_flight)

    def new_lease(self) -> str:
        """A token unique to one claim by this run; acks must carry it."""
        return f"{self.run_id}:{next(self._leases)}"

    def wait(self, timeout: float | None) -> bool:
        """Idle up to ``timeout`` seconds, returning early when woken (a push, a finished
        task, a stop); True when woken. A wake-up that came before the wait is not lost."""
        with self._cond:
            if not self._woken and not self._stopping:
                self._cond.wait(timeout)
            woken, self._woken = self._woken or self._stopping, False
            return woken

    def wake(self) -> None:
        """Interrupt ``wait()`` (or make the next one return at once)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def report(self, error: BaseException) -> None:
        """Surface an error (as an ``Error`` event with no task id) and carry on."""
        self._report(error)

    def _finish(self) -> None:
        """The run has ended: call the ``on_finish`` callbacks (an error is reported)."""
        with self.lock:
            callbacks, self._at_finish = self._at_finish or [], None
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:
                self.report(exc)

    def _stop_hard(self) -> None:
        with self._cond:
            if not self._stopping:
                self.stopped_at = clock.real_monotonic()
            self._stopping = True
            self._hard_stop = True
            self._woken = True
            self._cond.notify_all()
