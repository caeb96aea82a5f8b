"""What a layer is, and how layers wrap a handler (``compose``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import clock
from ..errors import BuildError

if TYPE_CHECKING:
    from ..context import WorkerContext
    from ..task import Task

__all__ = ["Handle", "Layer", "compose"]

#: ``handle(task, ctx)``: run the task (``task.args`` already decoded) and return its
#: result, or raise (a failed attempt).
Handle = Callable[["Task[Any]", "WorkerContext"], Any]

#: ``layer(call_next)``: wrap a handle in another.
Layer = Callable[[Handle], Handle]


def compose(layers: Sequence[Layer], handle: Handle) -> Handle:
    """Wrap ``handle`` in ``layers``, the first one outermost."""
    for layer in reversed(layers):
        wrapped = layer(handle)
        if not callable(wrapped):
            raise TypeError(
                f"layer {layer!r} returned {wrapped!r}, not a handle(task, ctx) function"
            )
        handle = wrapped
    return handle


def positive_duration(value: Any, what: str) -> float:
    """``value`` (a timedelta or a number of seconds) in seconds; a ``BuildError``
    naming ``what`` unless it is positive and finite (a layer's setting)."""
    try:
        seconds = clock.seconds(value, name=what)
    except (TypeError, ValueError) as exc:
        raise BuildError(str(exc)) from None
    if seconds is None or not (seconds > 0 and math.isfinite(seconds)):
        raise BuildError(f"{what} must be a positive finite duration, got {value!r}")
    return seconds
