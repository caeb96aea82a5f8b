"""A value recomputed in the background: requests read the last one and never wait
(but for the very first)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from .. import clock

__all__ = ["Refreshed"]

log = logging.getLogger("taskpipe.board")
T = TypeVar("T")


class Refreshed(Generic[T]):
    """``compute()``'s last value; once it is older than ``ttl`` seconds, a read starts
    one recomputation in a daemon thread and returns the old value meanwhile. The
    first read computes it in the caller's thread. A failed recomputation is logged
    and the old value kept (tried again at the next read)."""

    def __init__(self, compute: Callable[[], T], ttl: float, name: str):
        self.compute = compute
        self.ttl = ttl
        self.name = name
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at = 0.0  # monotonic time of the value
        self.computed_at: float | None = None  # epoch seconds of the value (shown)
        self._busy = False

    def get(self) -> T:
        """The current value (see the class docstring)."""
        with self._lock:
            value, fresh = self._value, time.monotonic() - self._at <= self.ttl
            start = value is not None and not fresh and not self._busy
            if start:
                self._busy = True
        if value is None:
            return self._refresh(raise_errors=True)
        if start:
            threading.Thread(target=self._refresh, name=self.name, daemon=True).start()
        return value

    def _refresh(self, raise_errors: bool = False) -> T:
        try:
            value = self.compute()
        except Exception:
            if raise_errors:
                raise
            log.exception("taskpipe board: %s failed", self.name)
            with self._lock:
                self._busy = False
                assert self._value is not None
                return self._value
        with self._lock:
            self._value, self._at, self._busy = value, time.monotonic(), False
            self.computed_at = clock.timestamp()
        return value
