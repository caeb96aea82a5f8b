"""Policies wrapped around a handler. For now: ``RetryPolicy``.

No retries unless asked: ``RetryPolicy.retries(5)`` means five retries, so six
attempts. A failed attempt is written to the store with its error, and the task
waits ``backoff(attempt)`` — exponential from ``base`` (1 s), ×``factor`` (2), capped
at ``cap`` (1 h), with ±``jitter`` (10 %) — before it is due again; the worker's
thread is free meanwhile. A task's own ``max_attempts`` overrides the policy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import timedelta

from .. import clock

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a task gets and how long it waits between them."""

    max_attempts: int = 1
    base: float = 1.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive int, got {self.max_attempts!r}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    @classmethod
    def retries(cls, n: int) -> RetryPolicy:
        """Retry a failed task ``n`` times (``n + 1`` attempts in all)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"retries must be a non-negative int, got {n!r}")
        return cls(max_attempts=n + 1)

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt, no retries (the default)."""
        return cls()

    def backoff(
        self,
        *,
        base: timedelta | float | None = None,
        factor: float | None = None,
        cap: timedelta | float | None = None,
        jitter: float | None = None,
    ) -> RetryPolicy:
        """A copy with other backoff settings (durations as timedelta or seconds)."""
        return replace(
            self,
            base=self.base if base is None else clock.seconds(base, name="base"),
            factor=self.factor if factor is None else factor,
            cap=self.cap if cap is None else clock.seconds(cap, name="cap"),
            jitter=self.jitter if jitter is None else jitter,
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            raw = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        except OverflowError:  # attempt 1,000 and more: long past the cap
            raw = self.cap
        if self.jitter:
            raw *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, raw)
