"""Settings shared by the stores: queue, polling, prefetch and lease timings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from . import clock
from .polling import PollStrategy, as_strategy

__all__ = ["Config"]


@dataclass(frozen=True)
class Config:
    """How a store feeds its workers.

    - ``queue``: the queue name (a storage's own ``queue=`` argument wins).
    - ``poll_interval``: a polling strategy, a timedelta or seconds. Default:
      ``BackoffStrategy(min=50 ms, max=1 s)`` — an idle worker looks at most once a
      second (however long it has idled: the wait never exceeds ``max``), and at once
      again after it finds work. A push from this process wakes idle workers at once
      whatever the strategy; a push from another process is found within the
      strategy's maximum (1 s by default), or within milliseconds with
      ``SqliteStorage.with_hook``. Delayed tasks and retries are found by polling.
    - ``buffer_size``: tasks claimed ahead of free threads, so that claims and acks
      go in batches; None means ``max(concurrency, claim_batch)``. On a store whose
      claims overlap (Redis, ``Capabilities.overlapping_claims``), a busy worker whose
      threads are about to run out of work claims one ``claim_batch`` more while its
      last claim travels. Lower it (even to 0)
      when tasks are long and several workers share a queue, so that one worker does
      not hold tasks another could start.
    - ``keep_alive``: the heartbeat interval (default 5 s).
    - ``reenqueue_orphaned_after``: a worker silent this long is taken for dead and
      its running tasks go back to the queue (default 60 s). Keep it several times
      ``keep_alive``.
    - ``max_recoveries``: after this many such re-enqueues a task is Dead (default 5).
    - ``claim_batch``: the most tasks one claim statement takes (default 32).
    """

    queue: str = "default"
    poll_interval: Any = None
    buffer_size: int | None = None
    keep_alive: timedelta | float = 5.0
    reenqueue_orphaned_after: timedelta | float = 60.0
    max_recoveries: int = 5
    claim_batch: int = 32
    strategy: PollStrategy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.queue, str) or not self.queue:
            raise ValueError(f"queue must be a non-empty string, got {self.queue!r}")
        object.__setattr__(self, "strategy", as_strategy(self.poll_interval))
        object.__setattr__(self, "keep_alive", clock.seconds(self.keep_alive, name="keep_alive"))
        object.__setattr__(
            self,
            "reenqueue_orphaned_after",
            clock.seconds(self.reenqueue_orphaned_after, name="reenqueue_orphaned_after"),
        )
        keep_alive, orphaned_after = self.keep_alive_seconds, self.orphaned_after_seconds
        if not keep_alive:
            raise ValueError("keep_alive must be greater than zero")
        if orphaned_after < 2 * keep_alive:
            raise ValueError(
                f"reenqueue_orphaned_after ({self.reenqueue_orphaned_after}s) must be at least "
                f"twice keep_alive ({self.keep_alive}s), or live workers would lose their tasks"
            )
        if self.buffer_size is not None and self.buffer_size < 0:
            raise ValueError(f"buffer_size must be >= 0, got {self.buffer_size}")
        if self.max_recoveries < 1:
            raise ValueError(f"max_recoveries must be >= 1, got {self.max_recoveries}")
        if self.claim_batch < 1:
            raise ValueError(f"claim_batch must be >= 1, got {self.claim_batch}")

    @property
    def keep_alive_seconds(self) -> float:
        """``keep_alive`` in seconds."""
        return clock.seconds(self.keep_alive)

    @property
    def orphaned_after_seconds(self) -> float:
        """``reenqueue_orphaned_after`` in seconds."""
        return clock.seconds(self.reenqueue_orphaned_after)

    def with_queue(self, queue: str) -> Config:
        """A copy of this config for another queue."""
        return replace(self, queue=queue)
