"""``rate_limit(n, per, key=None)``: start at most ``n`` tasks per ``per``. (To be built.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .chain import Layer

__all__ = ["rate_limit"]


def rate_limit(
    n: int, per: timedelta | float, *, key: str | None = None, store: Any = None
) -> Layer:
    """Start at most ``n`` tasks every ``per``; tasks over the limit wait."""
    raise NotImplementedError
