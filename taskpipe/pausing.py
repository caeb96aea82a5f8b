"""Whether a worker run takes new tasks: ``Worker.pause()`` and its queue's pause.

A run is paused while its worker is (``Worker.pause()``, until ``resume()``) or while
its queue is paused in the store (``Store.pause_queue``, stores with ``pausing``). The
store is asked at each heartbeat (one small read), so a queue's pause reaches a busy
worker within ``keep_alive``; a resume in the same process wakes the worker at once.
Each change of the combined state is announced once, in order: ``events.Paused``,
``events.Resumed``. On pausing, the run's tasks claimed and not started go back to
the store at once: once ``pause()`` returns, the run starts no new task.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from . import events
from .context import WorkerContext

__all__ = ["PauseSwitch"]


class PauseSwitch:
    """The paused state of one worker run: set by the worker, and by the store's
    answer at each look; ``active`` is the two combined, as last announced."""

    def __init__(
        self,
        store: Any,
        ctx: WorkerContext,
        emit: Callable[[events.Event], None],
        report: Callable[[BaseException], None],
        hold: Callable[[], None],
    ):
        self.store = store
        self.ctx = ctx
        self._emit = emit
        self._report = report
        self._hold = hold  # hands back the tasks claimed and not started
        #: ``Worker.pause()`` holds the run back.
        self.by_worker = False
        #: The store says the run's queue is paused (as of the last look).
        self.by_store = False
        #: Paused: the run claims nothing (read by the fetch loop without a lock).
        self.active = False
        # Re-entrant: an on_event callback may call Worker.pause() or resume().
        self._lock = threading.RLock()
        self._look_lock = threading.Lock()  # one look at a time: answers applied in order
        self._started = False

    def start(self) -> None:
        """Announce the state from now on (after the run's ``Start`` event)."""
        with self._lock:
            self._started = True
            self._update()

    def set_by_worker(self, paused: bool) -> None:
        """``Worker.pause()`` (True) or ``Worker.resume()`` (False)."""
        with self._lock:
            self.by_worker = paused
            self._update()

    def look(self) -> None:
        """Ask the store whether the run's queue is paused (stores with ``pausing``;
        a failed read is reported and changes nothing)."""
        if not self.store.capabilities.pausing:
            return
        with self._look_lock:
            try:
                paused = self.store.queue in self.store.paused_queues()
            except Exception as exc:
                self._report(exc)
                return
            with self._lock:
                self.by_store = paused
                self._update()

    def _update(self) -> None:
        paused = self.by_worker or self.by_store
        if not self._started or paused == self.active:
            return
        self.active = self.ctx.paused = paused
        if paused:
            self._hold()
        self._emit(events.Paused() if paused else events.Resumed())
        self.ctx.wake()  # the fetch loop: stop claiming, or claim again
