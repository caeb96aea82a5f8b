"""``circuit_breaker(failures, recovery)``: stop running tasks while they keep failing.

Closed (the usual state), every task runs. After ``failures`` failed attempts in a
row the circuit *opens* (``events.CircuitOpened``): tasks that reach the layer wait,
in their pool thread, instead of running and failing too. Once ``recovery`` seconds
have passed, one trial task runs (*half-open*): if it succeeds the circuit closes
(``events.CircuitClosed``) and the waiting tasks run; if it fails the circuit opens
for another ``recovery``.

A waiting task is not an attempt: when the worker stops, it is handed back to the
store as it was (``NotStarted``). Under ``run_until_idle()``, which never sleeps, a
task that finds the circuit open is handed back and the run ends; move the (frozen)
clock past ``recovery`` and run again. Recovery is measured on ``taskpipe.clock``,
so freezegun controls it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .. import clock, events
from ..errors import BuildError, NotStarted
from .chain import Handle

if TYPE_CHECKING:
    from ..context import WorkerContext
    from ..task import Task

__all__ = ["CircuitBreaker", "circuit_breaker"]

#: How often a waiting task looks whether its worker is stopping (seconds).
STOP_CHECK = 0.1

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """The layer ``circuit_breaker()`` returns; its ``state`` and ``waiting`` say how
    it is doing. One breaker is shared by every thread (and run) of its worker."""

    def __init__(
        self,
        failures: int = 5,
        recovery: timedelta | float = 60,
        *,
        now: Callable[[], float] = clock.timestamp,
    ):
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
            raise BuildError(f"circuit_breaker: failures must be a positive int, got {failures!r}")
        try:
            self.recovery = clock.seconds(recovery, name="recovery")
        except (TypeError, ValueError) as exc:
            raise BuildError(f"circuit_breaker: {exc}") from exc
        self.failures = failures
        self._now = now
        self._cond = threading.Condition()
        self._state = CLOSED
        self._failed = 0  # failed attempts in a row
        self._retry_at = 0.0  # while open: when a trial may run
        self._waiting = 0

    def __repr__(self) -> str:
        return f"circuit_breaker({self.failures}, {self.recovery}) [{self._state}]"

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (a trial task is running)."""
        return self._state

    @property
    def waiting(self) -> int:
        """How many tasks are waiting for the circuit to close."""
        return self._waiting

    def __call__(self, call_next: Handle) -> Handle:
        """Wrap ``call_next``: the layer."""

        def handle(task: Task[Any], ctx: WorkerContext) -> Any:
            trial = self._enter(ctx)
            try:
                result = call_next(task, ctx)
            except NotStarted:  # it never ran: neither a failure nor a success
                if trial:
                    self._trial_undone()
                raise
            except Exception:
                self._failed_attempt(trial, ctx)
                raise
            self._succeeded(trial, ctx)
            return result

        return handle

    # The states ---------------------------------------------------------------------------
    def _enter(self, ctx: WorkerContext) -> bool:
        """Return once the task may run; True when it runs as the trial."""
        with self._cond:
            if self._state == CLOSED:
                return False
            self._waiting += 1
            try:
                while True:
                    if self._state == CLOSED:
                        return False
                    remaining = STOP_CHECK
                    if self._state == OPEN:
                        remaining = self._retry_at - self._now()
                        if remaining <= 0:
                            self._state = HALF_OPEN
                            return True
                    if ctx.until_idle:  # nothing may sleep: hand it back and end the run
                        ctx.stop()
                        raise NotStarted("the circuit is open")
                    if ctx.stopping:
                        raise NotStarted("the worker stopped while the circuit was open")
                    self._cond.wait(min(remaining, STOP_CHECK))
            finally:
                self._waiting -= 1

    def _succeeded(self, trial: bool, ctx: WorkerContext) -> None:
        with self._cond:
            if trial or self._state == CLOSED:
                self._failed = 0
            if not trial:
                return
            self._state = CLOSED
            self._cond.notify_all()
        ctx.emit(events.CircuitClosed())

    def _failed_attempt(self, trial: bool, ctx: WorkerContext) -> None:
        with self._cond:
            if not trial and self._state != CLOSED:
                return  # it started before the circuit opened: no news
            self._failed += 1
            if not trial and self._failed < self.failures:
                return
            self._state = OPEN
            self._retry_at = self._now() + self.recovery
            failed = self._failed
        ctx.emit(events.CircuitOpened(failed))

    def _trial_undone(self) -> None:
        with self._cond:  # the next waiting task is the trial instead
            self._state = OPEN
            self._cond.notify_all()


def circuit_breaker(failures: int = 5, recovery: timedelta | float = 60) -> CircuitBreaker:
    """Open after ``failures`` failures in a row; while open, tasks wait (not fail)
    until ``recovery`` seconds have passed and a trial task succeeds."""
    return CircuitBreaker(failures, recovery)
