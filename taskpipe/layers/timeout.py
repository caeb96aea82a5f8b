"""``timeout(seconds)``: give up on an attempt that runs too long.

The layer runs the rest of the chain on a runner thread of its own while the pool
thread waits for it, up to the deadline. When the deadline passes:

- the task's cancel event is set, so ``ctx.cancelled`` is True in the handler's thread
  (a long handler may check it and return early), and an ``async def`` handler is
  cancelled for real on the worker's event loop (``ctx.time_left`` reached 0);
- the pool thread raises ``TaskTimeout``: the attempt failed, and the retry policy
  retries it or makes it Dead; the pool thread is free at once for the next task;
- a handler still running ``CANCEL_GRACE`` after the deadline is abandoned: its runner
  thread is left to finish on its own (an ``Abandoned`` event names it), whatever it
  returns goes nowhere, and a new runner thread takes its place when one is needed.

Runner threads are daemons and are reused from task to task; those of a run end with
the run (abandoned ones when their handler returns).
"""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .. import clock, events
from ..errors import TaskTimeout
from .chain import Handle, Layer, positive_duration

if TYPE_CHECKING:
    from ..context import WorkerContext
    from ..task import Task

__all__ = ["TaskTimeout", "timeout"]

#: Seconds a handler has, after its deadline, to return (it saw ``ctx.cancelled``, or
#: its coroutine was cancelled) before its thread is abandoned.
CANCEL_GRACE = 0.1
#: A ``TimeoutError`` raised this close to the deadline (seconds) is the deadline's.
SAME_DEADLINE = 0.001


def timeout(seconds: timedelta | float) -> Layer:
    """Fail an attempt that runs longer than ``seconds`` (a timedelta or a number > 0)."""
    limit = positive_duration(seconds, "timeout")

    def layer(call_next: Handle) -> Handle:
        return _TimeoutHandle(call_next, limit)

    return layer


class _Job:
    """One call of the rest of the chain, handed from a pool thread to a runner."""

    __slots__ = (
        "call_next",
        "task",
        "ctx",
        "deadline",
        "cancel",
        "done",
        "finished",
        "abandoned",
        "thread",
        "result",
        "error",
    )

    def __init__(self, call_next: Handle, task: Task[Any], ctx: WorkerContext, deadline: float):
        self.call_next = call_next
        self.task = task
        self.ctx = ctx
        self.deadline = deadline
        self.cancel = threading.Event()  # set at the deadline: ctx.cancelled
        # Held until the runner has finished the call (a bare lock: cheaper than an Event).
        self.done = threading.Lock()
        self.done.acquire()
        self.finished = False  # (these three under the handle's lock)
        self.abandoned = False
        self.thread = ""
        self.result: Any = None
        self.error: BaseException | None = None


class _Runner:
    """A daemon thread that runs jobs one after another, idle in between."""

    def __init__(self, owner: _TimeoutHandle, job: _Job, name: str):
        self.owner = owner
        self.job: _Job | None = job
        self.wake = threading.Lock()  # released when a job is handed over (None: end)
        self.wake.acquire()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        job.thread = name

    def _main(self) -> None:
        owner, job = self.owner, self.job
        ctx = job.ctx if job is not None else None
        while job is not None:
            self.job, ctx = None, job.ctx
            with ctx.cancel_scope(job.cancel, job.deadline):
                try:
                    job.result = job.call_next(job.task, ctx)
                except BaseException as exc:  # handed to the pool thread, re-raised there
                    job.error = exc
            with owner.lock:
                job.finished = True
                job.done.release()
                keep = not job.abandoned and not owner.closed
                if keep:
                    owner.idle.append(self)
            job = None
            if not keep:
                break
            self.wake.acquire()
            job = self.job
        if ctx is not None:
            ctx.close_thread_connection()


class _TimeoutHandle:
    """The handle a ``timeout`` layer makes for one worker run: it owns the run's
    runner threads (at most one per pool thread, plus the abandoned ones)."""

    def __init__(self, call_next: Handle, seconds: float):
        self.call_next = call_next
        self.seconds = seconds
        self.lock = threading.Lock()
        self.idle: list[_Runner] = []  # last in, first out
        self.closed = False  # the run ended: runners end when their job does
        self.ctx: WorkerContext | None = None
        self.numbers = itertools.count(1)

    def __call__(self, task: Task[Any], ctx: WorkerContext) -> Any:
        now = clock.real_monotonic()
        deadline = now + self.seconds
        outer = ctx.time_left  # inside another timeout: the nearer deadline wins
        if outer is not None:
            deadline = min(deadline, now + outer)
        job = _Job(self.call_next, task, ctx, deadline)
        self._hand_over(job)
        if job.done.acquire(timeout=max(0.0, deadline - clock.real_monotonic())):
            error, job.error = job.error, None
            if error is None:
                return job.result
            # an async handler's coroutine, cancelled at this same deadline (its
            # ctx.time_left), may end a moment before this thread sees the deadline pass
            late = clock.real_monotonic() >= deadline - SAME_DEADLINE
            if not (late and isinstance(error, TimeoutError)):
                raise error
        else:
            job.cancel.set()
            job.done.acquire(timeout=CANCEL_GRACE)
            with self.lock:
                job.abandoned = not job.finished
            error, job.error = job.error, None
        message = f"task {task.id} ran longer than its {self.seconds:g} s timeout"
        if job.abandoned:
            ctx.emit(events.Abandoned(task.id, job.thread))
            raise TaskTimeout(f"{message}; its thread {job.thread} was left running")
        raise TaskTimeout(f"{message} and was cancelled") from error

    def close(self) -> None:
        """End the idle runner threads; busy ones end when their job does."""
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for runner in idle:
            runner.wake.release()  # with no job: it ends

    def _hand_over(self, job: _Job) -> None:
        """Give ``job`` to an idle runner, or to a new one."""
        register = False
        with self.lock:
            if job.ctx is not self.ctx:  # the first call of a run
                self.ctx, self.closed, register = job.ctx, False, True
            runner = self.idle.pop() if self.idle else None
            if runner is not None:
                runner.job, job.thread = job, runner.thread.name
        if register:
            job.ctx.on_finish(self.close)
        if runner is not None:
            runner.wake.release()
            return
        name = f"taskpipe-{job.ctx.name}-timeout-{next(self.numbers)}"
        _Runner(self, job, name).thread.start()
