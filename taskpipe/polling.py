"""How long an idle worker waits before it looks for tasks again.

A strategy is a recipe; each worker gets its own running state from ``start()``:
``next_delay()`` says how long to wait after an empty look, ``reset()`` is called as
soon as work is found.

- ``IntervalStrategy(1s)``: always the same wait.
- ``BackoffStrategy(min, max, multiplier, jitter)``: waits grow while the queue stays
  empty and drop back to ``min`` the moment a task is found (apalis's backoff never
  resets; ours does).
- ``StrategyBuilder().apply(a).apply(b).build()``: the first strategy to fire wins
  (the shortest wait).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import timedelta
from typing import Protocol

from . import clock

__all__ = [
    "PollStrategy",
    "IntervalStrategy",
    "BackoffStrategy",
    "StrategyBuilder",
    "MultiStrategy",
    "as_strategy",
]


class PollState(Protocol):
    """The running state of a strategy inside one worker."""

    def next_delay(self) -> float:
        """Seconds to wait after a look that found nothing."""
        ...

    def reset(self) -> None:
        """Work was found: start again from the shortest wait."""
        ...


class PollStrategy(Protocol):
    """A polling recipe; ``start()`` gives one worker its own state."""

    def start(self) -> PollState:
        """Return a fresh state for one worker."""
        ...


class _FixedState:
    def __init__(self, interval: float):
        self.interval = interval

    def next_delay(self) -> float:
        return self.interval

    def reset(self) -> None:
        pass


class IntervalStrategy:
    """Wait the same ``interval`` after every empty look."""

    def __init__(self, interval: timedelta | float):
        self.interval = clock.seconds(interval, name="interval")
        if not self.interval:
            raise ValueError("interval must be greater than zero")

    def start(self) -> PollState:
        """A fresh state for one worker: every empty look waits ``interval``."""
        return _FixedState(self.interval)

    @property
    def maximum(self) -> float:
        """The longest wait this strategy can choose."""
        return self.interval

    def __repr__(self) -> str:
        return f"IntervalStrategy({self.interval}s)"


class _BackoffState:
    def __init__(self, strategy: BackoffStrategy):
        self.strategy = strategy
        self.current = strategy.min

    def next_delay(self) -> float:
        s = self.strategy
        delay = self.current
        self.current = min(s.max, self.current * s.multiplier)
        if s.jitter:
            delay *= 1 + random.uniform(-s.jitter, s.jitter)
        return min(delay, s.max)

    def reset(self) -> None:
        self.current = self.strategy.min


class BackoffStrategy:
    """Wait ``min`` at first, ×``multiplier`` after each empty look up to ``max``;
    back to ``min`` as soon as work is found. ``jitter`` is a fraction (0.1 = ±10 %)."""

    def __init__(
        self,
        min: timedelta | float = 0.05,
        max: timedelta | float = 1.0,
        multiplier: float = 2.0,
        jitter: float = 0.1,
    ):
        self.min = clock.seconds(min, name="min")
        self.max = clock.seconds(max, name="max")
        if not self.min or self.max < self.min:
            raise ValueError(f"need 0 < min <= max, got min={self.min}, max={self.max}")
        if multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {multiplier}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.multiplier = multiplier
        self.jitter = jitter

    def start(self) -> PollState:
        """A fresh state for one worker, starting at ``min`` (each worker backs off on
        its own)."""
        return _BackoffState(self)

    @property
    def maximum(self) -> float:
        """The longest wait this strategy can choose."""
        return self.max

    def __repr__(self) -> str:
        return f"BackoffStrategy(min={self.min}s, max={self.max}s, ×{self.multiplier})"


class _MultiState:
    def __init__(self, states: Sequence[PollState]):
        self.states = states

    def next_delay(self) -> float:
        return min(state.next_delay() for state in self.states)

    def reset(self) -> None:
        for state in self.states:
            state.reset()


class MultiStrategy:
    """Several strategies at once: the first to fire (the shortest wait) wins."""

    def __init__(self, strategies: Sequence[PollStrategy]):
        if not strategies:
            raise ValueError(
                "StrategyBuilder needs at least one strategy: .apply(IntervalStrategy(...))"
            )
        self.strategies = tuple(strategies)

    def start(self) -> PollState:
        """A fresh state for one worker that runs every strategy's own state and waits
        the shortest of their delays."""
        return _MultiState([s.start() for s in self.strategies])

    @property
    def maximum(self) -> float:
        """The longest wait this combination can choose."""
        return min(getattr(s, "maximum", float("inf")) for s in self.strategies)

    def __repr__(self) -> str:
        return f"MultiStrategy({', '.join(map(repr, self.strategies))})"


class StrategyBuilder:
    """Combine strategies: ``StrategyBuilder().apply(a).apply(b).build()``."""

    def __init__(self) -> None:
        self._strategies: list[PollStrategy] = []

    def apply(self, strategy: PollStrategy) -> StrategyBuilder:
        """Add a strategy; the shortest wait among them is used."""
        if not callable(getattr(strategy, "start", None)):
            raise TypeError(f"{strategy!r} is not a polling strategy (it needs start())")
        self._strategies.append(strategy)
        return self

    def build(self) -> PollStrategy:
        """Return the combined strategy (a single one is returned as is)."""
        if len(self._strategies) == 1:
            return self._strategies[0]
        return MultiStrategy(self._strategies)


def as_strategy(value: PollStrategy | timedelta | float | None) -> PollStrategy:
    """Accept a strategy, a timedelta or seconds (an interval), or None (the default)."""
    if value is None:
        return BackoffStrategy()
    if isinstance(value, (timedelta, int, float)) and not isinstance(value, bool):
        return IntervalStrategy(value)
    if not isinstance(value, bool) and callable(getattr(value, "start", None)):
        return value
    raise TypeError(f"poll_interval must be a strategy, a timedelta or seconds, not {value!r}")
