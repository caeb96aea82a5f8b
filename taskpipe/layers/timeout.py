"""``timeout(seconds)``: give up on an attempt that runs too long. (To be built.)"""

from __future__ import annotations

from datetime import timedelta

from ..errors import TaskpipeError
from .chain import Layer

__all__ = ["TaskTimeout", "timeout"]


class TaskTimeout(TaskpipeError):
    """The attempt ran longer than its ``timeout``: it failed (and is retried by the policy)."""


def timeout(seconds: timedelta | float) -> Layer:
    """Fail an attempt that runs longer than ``seconds``."""
    raise NotImplementedError
