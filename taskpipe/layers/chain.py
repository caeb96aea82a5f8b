"""What a layer is, and how layers wrap a handler (``compose``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

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
