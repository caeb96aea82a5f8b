"""``rate_limit(n, per, key=None)``: start at most ``n`` tasks every ``per`` seconds.

Starts are spaced evenly, ``per / n`` seconds apart, so that no window of ``per``
seconds holds more than ``n`` starts (no burst: Celery's ``rate_limit`` does the
same). A task over the limit waits in its pool thread before the handler starts; it
is not failed, and its wait counts neither as an attempt nor against a ``timeout``
added after (inside) the limit. A worker that stops while a task waits hands that
task back to Pending, its attempt not counted (``NotStarted``).

- ``key=None``: the limit of one worker (its pool threads share it), measured on a
  monotonic clock that freezegun does not freeze. One ``rate_limit(…)`` layer given
  to several workers of a process is one limit shared by them.
- ``key="api"``: one limit shared by every worker of the store, in every process and
  on every host, counted by the store (``Store.take_slot``: SQL stores and Redis;
  the memory store, within its process). The store keeps, per key, the last start it
  reserved, in ``clock.timestamp()`` time read by the caller, like every other time
  it records: hosts need synchronised clocks (as leases do), and under a frozen
  clock the waits still add up (the limit is never looser, only stricter).

A reserved start is used even when the worker stops before it: the limit errs on
the strict side. Waiting is real time, under ``run_until_idle()`` too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .. import clock
from ..errors import BuildError, CapabilityError, NotStarted
from ..store import require
from .chain import Handle, Layer, positive_duration

if TYPE_CHECKING:
    from ..context import WorkerContext
    from ..task import Task

__all__ = ["rate_limit"]

#: The longest limit key (it is a primary key in the SQL stores).
MAX_KEY_CHARS = 200


def rate_limit(
    n: int, per: timedelta | float, *, key: str | None = None, store: Any = None
) -> Layer:
    """Start at most ``n`` tasks every ``per`` (a timedelta or seconds), evenly spaced;
    tasks over the limit wait. With ``key``, the limit is shared by every worker of
    ``store`` (which must declare ``rate_limits``); ``WorkerBuilder.rate_limit``
    passes the worker's store. Bad values are a ``BuildError``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BuildError(f"rate_limit() needs n, a positive int of starts, got {n!r}")
    seconds = positive_duration(per, "rate_limit() per")
    interval = seconds / n
    reserve: Callable[[], float]
    if key is None:
        reserve = _LocalSlots(interval).take
    else:
        reserve = _store_slots(store, key, interval)

    def layer(call_next: Handle) -> Handle:
        def handle(task: Task[Any], ctx: WorkerContext) -> Any:
            if ctx.stopping:
                with ctx.holding(task):
                    raise NotStarted("the worker is stopping: task handed back before its start")
            wait = reserve()
            if wait > 0:
                with ctx.holding(task):  # (a shutdown ending meanwhile hands it back)
                    if ctx.sleep(wait):
                        raise NotStarted(
                            f"the worker stopped while the task waited {wait:.3f} s for its "
                            "rate limit"
                        )
                    if ctx.cancelled:  # a timeout around this layer gave up on it
                        raise NotStarted("the task timed out while it waited for its rate limit")
            return call_next(task, ctx)

        return handle

    return layer


class _LocalSlots:
    """Start slots ``interval`` apart, for the threads of one process."""

    def __init__(self, interval: float):
        self.interval = interval
        self.lock = threading.Lock()
        self.last: float | None = None  # real monotonic time of the last reserved start

    def take(self) -> float:
        """Reserve the next start; return the seconds to wait for it."""
        with self.lock:
            now = clock.real_monotonic()
            start = now if self.last is None else max(self.last + self.interval, now)
            self.last = start
        return start - now


def _store_slots(store: Any, key: str, interval: float) -> Callable[[], float]:
    """``reserve()`` for a limit kept by ``store`` under ``key``."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise BuildError(
            f"rate_limit() key must be a non-empty str of at most {MAX_KEY_CHARS} "
            f"characters, got {key!r}"
        )
    if store is None:
        raise CapabilityError(
            f"rate_limit(key={key!r}) needs the store that counts it: use "
            "WorkerBuilder.rate_limit(n, per, key=...), or pass store=..."
        )
    try:
        require(store, "rate_limits", f"share the rate limit {key!r} across workers")
    except CapabilityError as exc:
        raise CapabilityError(f"{exc}; without key=, the limit is per worker") from None

    def reserve() -> float:
        return float(store.take_slot(key, interval))

    return reserve
