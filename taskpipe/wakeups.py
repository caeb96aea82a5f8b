"""Waking idle workers in this process: one ``WakeRegistry`` per store location.

A worker registers its ``WorkerContext`` under its queue for as long as it runs; a
push, once committed, calls ``notify(queue)``, which wakes those contexts.
``WorkerContext.wake()`` keeps a pending flag, so a push that lands between a
worker's empty claim and its wait is not lost: the wait returns at once.

Pushes made by other processes cannot call ``notify``. A store that can notice them
(SQLite's change probe, PostgreSQL's LISTEN) gives its registry a ``probe`` factory:
the registry starts one probe thread while at least one waiter asked for
``cross_process`` wake-ups, and the probe calls ``wake_queue`` for the queues that
have work (``watched_queues``). It ends itself when ``probe_may_stop`` says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from . import clock

__all__ = ["Waker", "Waiter", "WakeRegistry"]


class Waker(Protocol):
    """Anything a push can wake: a ``WorkerContext``, a shared poller's lane."""

    def wake(self) -> None:
        """Interrupt the owner's wait, or make its next wait return at once."""
        ...


class Waiter:
    """A wake-up flag under a Condition: a ``wake()`` that comes before ``wait()`` is
    not lost (the wait returns at once)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._woken = False

    def wake(self) -> None:
        """Interrupt ``wait()``, or make the next one return at once."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for a wake-up; True if woken."""
        with self._cond:
            if not self._woken:
                self._cond.wait(timeout)
            woken, self._woken = self._woken, False
            return woken


class WakeRegistry:
    """The workers (or pollers) of one database waiting for tasks, by queue."""

    def __init__(self, path: str | None = None, probe: Callable[[WakeRegistry], Any] | None = None):
        self.path = path  # what the store watches (a database file), for messages
        self._make_probe = probe  # starts a thread that wakes cross-process waiters
        self._lock = threading.Lock()
        self._wakers: dict[str, dict[Any, bool]] = {}  # queue -> {waker: cross_process}
        self._probe: Any = None
        self.last_push = 0.0  # real_monotonic() of the last notify from this process

    def __repr__(self) -> str:
        return f"WakeRegistry({self.path!r}, queues={sorted(self._wakers)})"

    def register(self, queue: str, waker: Waker, *, cross_process: bool = False) -> None:
        """Wake ``waker`` on every push to ``queue`` until ``unregister``. With
        ``cross_process``, pushes from other processes wake it too (the probe)."""
        with self._lock:
            self._wakers.setdefault(queue, {})[waker] = cross_process
            if cross_process and self._make_probe is not None and self._probe is None:
                self._probe = self._make_probe(self)
                self._probe.start()

    def unregister(self, queue: str, waker: Waker) -> None:
        """Stop waking ``waker`` for ``queue`` (the probe ends with its last user)."""
        with self._lock:
            wakers = self._wakers.get(queue)
            if wakers is not None:
                wakers.pop(waker, None)
                if not wakers:
                    del self._wakers[queue]
            probe = self._probe
        if probe is not None:
            probe.nudge()

    def notify(self, queue: str) -> None:
        """Wake everything registered for ``queue`` (called after a push commits)."""
        self.last_push = clock.real_monotonic()
        self.wake_queue(queue)

    def wake_queue(self, queue: str) -> None:
        """Wake everything registered for ``queue`` (a probe saw another process's push)."""
        with self._lock:
            wakers = self._wakers.get(queue)
            if not wakers:
                return
            targets = list(wakers)
        for waker in targets:
            waker.wake()

    def waiting(self, queue: str) -> int:
        """How many wakers are registered for ``queue``."""
        with self._lock:
            return len(self._wakers.get(queue, ()))

    def watched_queues(self) -> list[str]:
        """The queues with at least one cross-process waker."""
        with self._lock:
            return [q for q, wakers in self._wakers.items() if any(wakers.values())]

    @property
    def probe(self) -> Any:
        """The running change probe, if any."""
        return self._probe

    def probe_may_stop(self, probe: Any) -> bool:
        """Called by the probe: True (and forgotten) when nobody needs it any more."""
        with self._lock:
            if any(any(wakers.values()) for wakers in self._wakers.values()):
                return False
            if self._probe is probe:
                self._probe = None
            return True

    def probe_failed(self, probe: Any) -> None:
        """Called by a probe that died: forget it (the polling strategy remains)."""
        with self._lock:
            if self._probe is probe:
                self._probe = None
