"""Run a worker in several processes, so that CPU-bound Python handlers use every core::

    if __name__ == "__main__":     # spawned children re-import the main script
        Supervisor("myapp.tasks:worker", processes=4).run()  # or: taskpipe worker … --processes 4

The supervisor starts N child processes with multiprocessing's *spawn* method (a fresh
interpreter: nothing, no open database connection above all, is inherited from the
parent). Each child builds its own worker from the target, an import path
(``MODULE:ATTR``) of a ``Worker``, a ``Monitor`` or a ``Router`` (then a worker on the
router's own store), or a function importable by name that returns a worker, renames it ``<name>-<i>`` and runs it with its own thread pool.

- A child that dies (killed, crashed, failed at import) is started again after a
  delay that doubles from ``restart_delay`` up to ``max_restart_delay``; a child that
  ran longer than ``max_restart_delay`` starts the doubling over. A child that stops
  on its own with status 0 (its worker was stopped from inside) is not replaced.
  The tasks a dead child held are re-enqueued by the others' heartbeat after the
  store's ``reenqueue_orphaned_after``.
- SIGINT/SIGTERM (or ``stop()``) ask every child to stop gracefully (the workers' own
  shutdown grace); a second signal asks them to skip the grace. A child still running
  one second after the longest grace is SIGKILLed, so the supervisor exits within the
  grace plus a second. If the supervisor itself dies, its children notice (their pipe
  to it closes) and stop gracefully.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from . import clock
from .errors import BuildError, TaskpipeError
from .signals import graceful_signals
from .targets import Runnable, check_spec, import_target, runnable
from .worker import Worker

__all__ = ["Supervisor", "Target"]

log = logging.getLogger("taskpipe.processes")

#: What a child process runs: ``"MODULE:ATTR"`` naming a ``Worker``, a ``Monitor`` or a
#: ``Router``, or a function importable by name (pickled by reference) returning a
#: ``Worker`` or a ``Monitor``.
Target = str | Callable[[], Runnable]

DEFAULT_GRACE = 30.0  # assumed for a child that has not said its workers' grace yet
KILL_AFTER_GRACE = 1.0  # seconds past the grace before a child is SIGKILLed
GRACEFUL, HARD = 1, 2  # stop levels, as sent down a child's pipe


class Supervisor:
    """Runs ``processes`` child processes, each building and running the worker
    ``target`` names, restarting those that die; ``run()`` blocks until stopped."""

    def __init__(
        self,
        target: Target,
        processes: int,
        *,
        restart_delay: timedelta | float = 0.5,
        max_restart_delay: timedelta | float = 30.0,
    ):
        if isinstance(target, str):
            check_spec(target)
        elif callable(target):
            try:
                pickle.dumps(target)
            except Exception as exc:
                raise BuildError(
                    f"{target!r} cannot be sent to a child process ({exc}): pass a function "
                    "defined at module level (or a MODULE:ATTR string)"
                ) from None
        else:
            raise BuildError(
                f"a Supervisor's target is a MODULE:ATTR string or a function returning a "
                f"Worker, got {target!r}"
            )
        if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise BuildError(f"processes must be a positive int, got {processes!r}")
        try:
            self.restart_delay = clock.seconds(restart_delay, name="restart_delay")
            self.max_restart_delay = clock.seconds(max_restart_delay, name="max_restart_delay")
        except (TypeError, ValueError) as exc:
            raise BuildError(str(exc)) from None
        if self.restart_delay <= 0 or self.max_restart_delay < self.restart_delay:
            raise BuildError(
                f"need 0 < restart_delay <= max_restart_delay, got {restart_delay!r} "
                f"and {max_restart_delay!r}"
            )
        self.target = target
        self.processes = processes
        self._mp = multiprocessing.get_context("spawn")
        self._stop_level = 0
        self._wake: int | None = None
        self._slots: list[_Slot] = []
        self._running = threading.Lock()
        self._wake_lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Supervisor({self.target!r}, processes={self.processes})"

    @property
    def pids(self) -> list[int]:
        """The process ids of the children running now."""
        return [s.process.pid for s in self._slots if s.process is not None and s.process.pid]

    def stop(self) -> None:
        """Ask every child to stop gracefully (from another thread or a signal handler);
        ``run()`` returns when they have."""
        self._stop_level = max(self._stop_level, GRACEFUL)
        self._poke()

    def _stop_hard(self) -> None:
        """Ask every child to skip its grace (a second signal)."""
        self._stop_level = HARD
        self._poke()

    def _poke(self) -> None:
        # Under the lock that closes the pipe, so a late stop() never writes to an fd
        # reused since; reentrant, for a signal handler that interrupts the closing.
        with self._wake_lock:
            if self._wake is not None:
                try:
                    os.write(self._wake, b"x")
                except BlockingIOError:  # full: a wake-up is already waiting
                    pass

    def run(self) -> int:
        """Start the children and look after them until stopped; returns 0 when every
        child stopped cleanly, 1 when one had crashed, was waiting to restart, or had
        to be killed after the grace. SIGINT/SIGTERM are handled when called from the
        main thread. Asked to stop before it starts, it returns 0 at once."""
        if not self._running.acquire(blocking=False):
            raise RuntimeError(f"{self!r} is already running")
        try:
            if self._stop_level:
                return 0
            return self._run()
        finally:
            self._stop_level = 0
            self._running.release()

    def _run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        self._wake = wake_w
        self._slots = [_Slot(i) for i in range(1, self.processes + 1)]
        try:
            with graceful_signals(self.stop, self._stop_hard, "supervisor"):
                self._supervise(wake_r)
        finally:
            with self._wake_lock:
                self._wake = None
                os.close(wake_w)
                os.close(wake_r)
            for slot in self._slots:  # only after an unexpected error: none is left otherwise
                if slot.process is not None:
                    slot.process.kill()
                    slot.process.join()
                    slot.process = None
        return 0 if all(s.exitcode == 0 for s in self._slots) else 1

    # The loop ----------------------------------------------------------------------------
    def _supervise(self, wake_r: int) -> None:
        slots = self._slots
        for slot in slots:
            self._start(slot)
        applied, stop_at = 0, 0.0
        while True:
            now = time.monotonic()
            level = self._stop_level
            if level > applied:
                if not applied:
                    stop_at = now
                    log.info("supervisor: stopping %d children", len(self.pids))
                for slot in slots:
                    slot.send(level)
                applied = level
            timeout: float | None
            if applied:
                if all(s.process is None for s in slots):
                    return
                deadline = stop_at + self._grace() + KILL_AFTER_GRACE
                if now >= deadline:
                    self._kill_stragglers(now - stop_at)
                    return
                timeout = deadline - now
            else:
                for slot in slots:
                    if slot.restart_at is not None and slot.restart_at <= now:
                        self._start(slot)
                if all(s.finished for s in slots):
                    log.info("supervisor: every child stopped on its own")
                    return
                due = [s.restart_at - now for s in slots if s.restart_at is not None]
                timeout = max(0.0, min(due)) if due else None
            handles: list[Any] = [wake_r]
            for slot in slots:
                if slot.process is not None:
                    handles.append(slot.process.sentinel)
                if slot.conn is not None:
                    handles.append(slot.conn)
            ready = mp_connection.wait(handles, timeout)
            if wake_r in ready:
                os.read(wake_r, 4096)
            for slot in slots:
                if slot.conn is not None and slot.conn in ready:
                    slot.receive()
                if slot.process is not None and slot.process.sentinel in ready:
                    self._reap(slot, stopping=bool(applied))

    def _start(self, slot: _Slot) -> None:
        here, there = self._mp.Pipe()
        process = self._mp.Process(
            target=_child,
            args=(self.target, slot.index, there),
            name=f"taskpipe-child-{slot.index}",
        )
        slot.started_at, slot.restart_at = time.monotonic(), None
        try:
            process.start()
        except OSError as exc:  # out of processes or memory, for now: try again later
            here.close()
            there.close()
            slot.exitcode = None
            self._plan_restart(slot, f"could not start ({exc})", lived=0.0)
            return
        there.close()
        slot.process, slot.conn, slot.exitcode = process, here, None
        log.info("supervisor: started child %d (pid %d)", slot.index, process.pid)

    def _reap(self, slot: _Slot, *, stopping: bool) -> None:
        """A child has exited: note how, and (unless stopping) plan its restart."""
        process = slot.process
        if process is None:
            return
        process.join()
        slot.exitcode = code = process.exitcode
        lived = time.monotonic() - slot.started_at
        slot.process = None
        slot.close()
        how = _exit_description(code)
        if stopping:
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(level, "supervisor: child %d (pid %d) %s", slot.index, process.pid, how)
        elif code == 0:
            slot.finished = True
            log.info(
                "supervisor: child %d (pid %d) stopped on its own: not restarted",
                slot.index,
                process.pid,
            )
        else:
            self._plan_restart(slot, f"(pid {process.pid}) {how}", lived)

    def _plan_restart(self, slot: _Slot, what: str, lived: float) -> None:
        """Start the slot's child again after the backoff delay (which a child that
        lived longer than ``max_restart_delay`` resets)."""
        if lived >= self.max_restart_delay:
            slot.failures = 0
        slot.failures += 1
        delay = min(self.restart_delay * 2 ** (slot.failures - 1), self.max_restart_delay)
        slot.restart_at = time.monotonic() + delay
        log.warning(
            "supervisor: child %d %s after %.1fs; restarting it in %.2fs",
            slot.index,
            what,
            lived,
            delay,
        )

    def _grace(self) -> float:
        """The longest shutdown grace any child's workers said they have."""
        graces = [s.grace for s in self._slots if s.grace is not None]
        return max(graces) if graces else DEFAULT_GRACE

    def _kill_stragglers(self, waited: float) -> None:
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            log.warning(
                "supervisor: child %d (pid %d) still running %.1fs after the stop: killed",
                slot.index,
                process.pid,
                waited,
            )
            process.kill()
            process.join()
            slot.exitcode = process.exitcode
            slot.process = None
            slot.close()


@dataclass
class _Slot:
    """One of the N places a child runs in, across its restarts."""

    index: int
    process: BaseProcess | None = None
    conn: Connection | None = None  # the pipe to the child: stop levels down, its grace up
    started_at: float = 0.0
    restart_at: float | None = None  # waiting to be started again at this monotonic time
    failures: int = 0  # deaths in a row, for the backoff
    finished: bool = False  # exited 0 on its own: not restarted
    exitcode: int | None = None  # of the last child that ran here
    grace: float | None = None

    def send(self, level: int) -> None:
        """Tell the child to stop (``GRACEFUL`` or ``HARD``), if it can still hear."""
        if self.conn is not None:
            try:
                self.conn.send(level)
            except OSError:  # it is exiting; its sentinel will say so
                pass

    def receive(self) -> None:
        """Read what the child says (its grace); a closed pipe is forgotten."""
        conn = self.conn
        if conn is None:
            return
        try:
            self.grace = float(conn.recv())
        except (EOFError, OSError):
            self.close()

    def close(self) -> None:
        """Close the pipe to the child."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


# The child's side ---------------------------------------------------------------------
def _child(target: Target, index: int, conn: Connection) -> None:
    """A child process: build the worker, rename it ``<name>-<index>``, tell the
    supervisor its grace and run it, stopping when the supervisor says (or is gone).
    A taskpipe error (a bad target, a store never set up…) is one line on stderr and
    exit status 1."""
    # Until the worker installs its own handlers, a Ctrl-C meant for the supervisor
    # (the terminal signals the whole group) must not kill a child mid-import.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    control = _Control(conn)
    try:
        obj = _build(target)
        workers = [obj] if isinstance(obj, Worker) else list(obj.workers)
        for worker in workers:
            worker.name = f"{worker.name}-{index}"
        try:
            conn.send(max((w.grace for w in workers), default=0.0))
        except OSError:  # the supervisor is gone: the control thread stops us
            pass
        control.attach(obj)
        obj.run()
    except TaskpipeError as exc:
        print(f"taskpipe child {index}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


def _build(target: Target) -> Runnable:
    """The Worker or Monitor ``target`` names or returns."""
    if isinstance(target, str):
        return runnable(import_target(target), target)
    return runnable(target(), f"{getattr(target, '__name__', target)!r}()")


class _Control:
    """A child's thread listening to the supervisor: a stop level applies to the
    worker (now, or when it is attached); a closed pipe means a graceful stop."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.level = 0
        self.obj: Runnable | None = None
        self.lock = threading.Lock()
        threading.Thread(target=self._listen, name="taskpipe-child-control", daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                level = int(self.conn.recv())
            except (EOFError, OSError):  # the supervisor died: drain and exit
                self._apply(GRACEFUL)
                return
            self._apply(level)

    def _apply(self, level: int) -> None:
        with self.lock:
            self.level = max(self.level, level)
            obj = self.obj
        if obj is not None:
            _stop(obj, level)

    def attach(self, obj: Runnable) -> None:
        """The worker is built: apply any stop asked before, and later ones."""
        with self.lock:
            self.obj = obj
            level = self.level
        if level:
            _stop(obj, level)


def _stop(obj: Runnable, level: int) -> None:
    if level == GRACEFUL:
        obj.stop()
        return
    workers = [obj] if isinstance(obj, Worker) else obj.workers
    for worker in workers:
        worker._stop_hard()
