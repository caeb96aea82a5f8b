"""``filter(predicate)``: skip the tasks a predicate refuses.

``predicate(task)`` receives the ``Task`` (its args decoded). When it returns a false
value the handler is not called: the task ends Done with no result, ``task.skipped``
is set (layers around this one can tell), and an ``events.Skipped`` is sent (then the
usual ``Success`` once the outcome is written). A predicate that raises fails the
attempt, as a handler that raises would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import events
from ..errors import BuildError
from .chain import Handle, Layer

if TYPE_CHECKING:
    from ..context import WorkerContext
    from ..task import Task

__all__ = ["filter"]


def filter(predicate: Callable[[Any], bool]) -> Layer:  # noqa: A001
    """Run only the tasks for which ``predicate(task)`` is true; skip the others."""
    if not callable(predicate):
        raise BuildError(f"filter() takes a predicate(task) function, got {predicate!r}")

    def layer(call_next: Handle) -> Handle:
        def handle(task: Task[Any], ctx: WorkerContext) -> Any:
            if predicate(task):
                return call_next(task, ctx)
            task.skipped = True
            ctx.emit(events.Skipped(task.id))
            return None

        return handle

    layer.__qualname__ = f"filter({getattr(predicate, '__qualname__', predicate)!s})"
    return layer
