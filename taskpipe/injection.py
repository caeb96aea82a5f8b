"""Handler injection: the first parameter gets the decoded args; every other
parameter is filled by its annotation.

    def handler(order: Order, ctx: WorkerContext, task_id: TaskId, attempt: Attempt,
                task: Task, db: Data[Database]) -> str: ...

``Data[T]`` is ``Annotated[T, …]``: the handler receives the value given to
``WorkerBuilder.data(value)`` and a type checker sees ``T``. An annotation that is
none of these is an error when the worker is built, not when a task runs.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from .context import WorkerContext
from .errors import BuildError
from .task import Attempt, Task, TaskId

__all__ = ["Data", "Signature", "analyse"]


class _DataMarker:
    def __repr__(self) -> str:
        return "Data"


_DATA = _DataMarker()


class Data:
    """``Data[T]`` in a handler's signature injects the shared value of type ``T``
    given to ``WorkerBuilder.data()``."""

    def __class_getitem__(cls, item: Any) -> Any:
        return Annotated[item, _DATA]


@dataclass(frozen=True)
class Signature:
    """What a handler wants: the type of its args and how to fill each other parameter."""

    args_type: Any
    injections: tuple[tuple[str, str, Any], ...]  # (parameter, kind, data value)
    is_async: bool = False

    def kwargs(self, task: Task, ctx: WorkerContext) -> dict[str, Any]:
        """The keyword arguments for one call."""
        out: dict[str, Any] = {}
        for name, kind, value in self.injections:
            if kind == "ctx":
                out[name] = ctx
            elif kind == "task_id":
                out[name] = task.id
            elif kind == "attempt":
                out[name] = Attempt(task.attempt)
            elif kind == "task":
                out[name] = task
            else:
                out[name] = value
        return out


def _find_data(data: dict[type, Any], wanted: Any, handler_name: str, param: str) -> Any:
    if wanted in data:
        return data[wanted]
    if isinstance(wanted, type):
        for value in data.values():
            if isinstance(value, wanted):
                return value
    given = ", ".join(type(v).__name__ for v in data.values()) or "none"
    raise BuildError(
        f"{handler_name}(): parameter {param!r} wants Data[{getattr(wanted, '__name__', wanted)}] "
        f"but no .data() value of that type was given (given: {given})"
    )


def analyse(handler: Callable[..., Any], data: dict[type, Any]) -> Signature:
    """Inspect ``handler`` once, at build time; raise ``BuildError`` on anything unknown."""
    name = getattr(handler, "__qualname__", None) or type(handler).__name__
    target = handler if inspect.isroutine(handler) else handler.__call__  # builtins too
    try:
        params = list(inspect.signature(target).parameters.values())
        hints = typing.get_type_hints(target, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise BuildError(f"cannot inspect handler {name}: {exc}") from exc
    positional = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not positional:
        raise BuildError(f"{name}() must take at least one parameter: the task's arguments")
    first, rest = positional[0], positional[1:]
    if first.kind is first.KEYWORD_ONLY:
        raise BuildError(f"{name}(): the first parameter receives the task's arguments; it cannot be keyword-only")
    args_type = hints.get(first.name, Any)
    injections = []
    for param in rest:
        hint = hints.get(param.name, inspect.Parameter.empty)
        kind, value = _kind_of(hint)
        if kind is None:
            if param.default is not inspect.Parameter.empty:
                continue  # leave it to its default
            shown = "no annotation" if hint is inspect.Parameter.empty else f"annotation {hint!r}"
            raise BuildError(
                f"{name}(): cannot inject parameter {param.name!r} ({shown}); annotate it as one of "
                "WorkerContext, TaskId, Attempt, Task or Data[T]"
            )
        if kind == "data":
            value = _find_data(data, value, name, param.name)
        injections.append((param.name, kind, value))
    return Signature(args_type=args_type, injections=tuple(injections))


def _kind_of(hint: Any) -> tuple[str | None, Any]:
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        if any(extra is _DATA for extra in extras):
            return "data", base
        hint = base
    origin = typing.get_origin(hint) or hint
    if hint is WorkerContext:
        return "ctx", None
    if hint is TaskId:
        return "task_id", None
    if hint is Attempt:
        return "attempt", None
    if origin is Task:
        return "task", None
    return None, None
