"""``filter(predicate)``: skip the tasks a predicate refuses. (To be built.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .chain import Layer

__all__ = ["filter"]


def filter(predicate: Callable[[Any], bool]) -> Layer:  # noqa: A001
    """Run only the tasks for which ``predicate(task)`` is true; skip the others."""
    raise NotImplementedError
