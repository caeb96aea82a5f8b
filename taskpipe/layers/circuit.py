"""``circuit_breaker(failures, recovery)``: stop running tasks while they keep failing. (To be built.)"""

from __future__ import annotations

from datetime import timedelta

from .chain import Layer

__all__ = ["circuit_breaker"]


def circuit_breaker(failures: int = 5, recovery: timedelta | float = 60) -> Layer:
    """Open after ``failures`` failures in a row; while open, tasks wait."""
    raise NotImplementedError
