"""Handler injection: the first parameter gets the decoded args; every other
parameter is filled by its annotation.

    def handler(order: Order, ctx: WorkerContext, task_id: TaskId, attempt: Attempt,
                task: Task, db: Data[Database]) -> str: ...

``Data[T]`` is ``Annotated[T, …]``: the handler receives the value given to
``WorkerBuilder.data(value)`` and a type checker sees ``T``. An annotation that is
none of these is an error when the worker is built, not when a task runs.

A handler may be any callable whose signature can be read: a function, a bound
method, a ``functools.partial`` (its bound parameters keep their values), an object
with ``__call__``, a staticmethod. The first parameter it still takes positionally
receives the args. ``Signature.is_async`` says whether calling it returns a coroutine.

A ``Router``'s functions take their own arguments instead (``analyse_call``): every
parameter whose annotation is injectable is injected, every other one is pushed.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from .context import WorkerContext
from .errors import BuildError
from .task import Attempt, Task, TaskId

__all__ = ["CallShape", "Data", "Iteration", "Signature", "analyse", "analyse_call"]

#: The task meta field that holds a workflow step's iteration (``Workflow.repeat_until``).
ITERATION_META = "n"


class Iteration(int):
    """Which run of a ``repeat_until`` workflow step this is (1 for the first);
    injectable by annotation. Outside such a step it is 1."""

    __slots__ = ()


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
    """What a handler wants: the type of its args, how to fill each other parameter, and
    whether it is an ``async def`` (then a call returns a coroutine to await)."""

    args_type: Any
    injections: tuple[tuple[str, str, Any], ...]  # (parameter, kind, data value)
    is_async: bool = False  # calling the handler returns a coroutine to run on a loop

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
            elif kind == "iteration":
                n = task.meta.get(ITERATION_META) if task.meta else None
                out[name] = Iteration(n if isinstance(n, int) and n > 0 else 1)
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
    shown = getattr(wanted, "__name__", wanted)
    raise BuildError(
        f"handler {handler_name}: parameter {param!r} wants Data[{shown}] but no .data() value "
        f"of that type was given (given: {given}); pass one with WorkerBuilder.data(value)"
    )


def analyse(handler: Callable[..., Any], data: dict[type, Any]) -> Signature:
    """Inspect ``handler`` once, at build time; raise ``BuildError`` on anything unknown.

    Any callable whose signature ``inspect.signature`` can read will do: a function, a
    bound method, a ``functools.partial``, an object with ``__call__``, a staticmethod."""
    name, target, bound, params, hints = _read(handler)
    first = next(
        (p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), None
    )
    if first is None:
        first = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
    if first is None:
        raise BuildError(_no_args_parameter(name, params, bound))
    args_type = hints.get(first.name, Any)
    injections = []
    for param in params:
        if param is first or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name in bound:
            continue  # a functools.partial gives it its value
        hint = hints.get(param.name, inspect.Parameter.empty)
        kind, value = _kind_of(hint)
        if kind is None:
            if param.default is not inspect.Parameter.empty:
                continue  # leave it to its default
            shown = "no annotation" if hint is inspect.Parameter.empty else f"annotation {hint!r}"
            raise BuildError(
                f"handler {name}: cannot inject parameter {param.name!r} ({shown}); annotate it "
                "as one of WorkerContext, TaskId, Attempt, Task or Data[T], give it a default, "
                "or bind it with functools.partial"
            )
        injections.append(_injection(name, param, kind, value, data))
    return Signature(
        args_type=args_type,
        injections=tuple(injections),
        is_async=inspect.iscoroutinefunction(target),
    )


@dataclass(frozen=True)
class CallShape:
    """A function called with its own arguments (a ``Router`` task), read once: the
    parameters a caller passes, each with its annotated type (``Any`` when none), and
    those injected by annotation (``WorkerContext``, ``TaskId``, ``Attempt``, ``Task``,
    ``Data[T]``), filled in for each worker by ``injections(data)``."""

    name: str
    signature: inspect.Signature  # every parameter: how to call the function
    passed: inspect.Signature  # the parameters a caller passes: how to bind a push
    types: dict[str, Any]  # each passed parameter's annotated type
    injected: tuple[tuple[inspect.Parameter, str, Any], ...]  # (parameter, kind, Data's type)
    is_async: bool

    def injections(self, data: dict[type, Any]) -> tuple[tuple[str, str, Any], ...]:
        """The ``Signature.injections`` for a worker with ``data``; ``BuildError`` when a
        ``Data[T]`` parameter has no value of its type."""
        return tuple(
            _injection(self.name, param, kind, value, data) for param, kind, value in self.injected
        )


def analyse_call(fn: Callable[..., Any]) -> CallShape:
    """Read ``fn``'s parameters: a parameter annotated with an injectable type is
    injected; every other one is passed by the caller. ``BuildError`` when the
    signature or its annotations cannot be read, or an injected parameter is
    positional-only (injected values are passed by keyword)."""
    name, target, _bound, params, hints = _read(fn)
    passed: list[inspect.Parameter] = []
    types: dict[str, Any] = {}
    injected: list[tuple[inspect.Parameter, str, Any]] = []
    for param in params:
        hint = hints.get(param.name, inspect.Parameter.empty)
        kind, value = (None, None)
        if param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            kind, value = _kind_of(hint)
        if kind is None:
            passed.append(param)
            types[param.name] = Any if hint is inspect.Parameter.empty else hint
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise BuildError(
                f"{name}: parameter {param.name!r} is positional-only, but injected values "
                "are passed by keyword; move it after the '/'"
            )
        injected.append((param, kind, value))
    return CallShape(
        name=name,
        signature=inspect.Signature(params),
        passed=inspect.Signature(passed),
        types=types,
        injected=tuple(injected),
        is_async=inspect.iscoroutinefunction(target),
    )


def _read(
    handler: Callable[..., Any],
) -> tuple[str, Any, frozenset[str], list[inspect.Parameter], dict[str, Any]]:
    """``handler``'s name for messages, the function behind it, the names partials bind
    by keyword, its parameters and their resolved annotations; ``BuildError`` when
    they cannot be read."""
    name = _describe(handler)
    target, bound = _underlying(handler)
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError) as exc:
        raise BuildError(
            f"cannot read the signature of handler {name}: {exc}; pass a function, method, "
            "functools.partial or object with __call__ whose parameters Python can inspect"
        ) from exc
    try:
        hints = _hints(target, params)
    except Exception as exc:  # NameError, SyntaxError, TypeError from evaluating strings
        raise BuildError(
            f"cannot resolve the annotations of handler {name}: {type(exc).__name__}: {exc}; "
            "every name used in an annotation must be importable from the handler's module"
        ) from exc
    return name, target, bound, params, hints


def _injection(
    name: str, param: inspect.Parameter, kind: str, value: Any, data: dict[type, Any]
) -> tuple[str, str, Any]:
    """One entry of ``Signature.injections`` (``Data[T]``: its value found in ``data``)."""
    if param.kind is param.POSITIONAL_ONLY:
        raise BuildError(
            f"handler {name}: parameter {param.name!r} is positional-only, but injected "
            "values are passed by keyword; move it after the '/'"
        )
    if kind == "data":
        value = _find_data(data, value, name, param.name)
    return (param.name, kind, value)


def _describe(handler: Any) -> str:
    """A name for ``handler`` in error messages."""
    if isinstance(handler, functools.partial):
        return f"functools.partial({_describe(handler.func)}, …)"
    name = getattr(handler, "__qualname__", None)
    return name if isinstance(name, str) else f"{type(handler).__qualname__} instance"


def _underlying(handler: Any) -> tuple[Any, frozenset[str]]:
    """The function that holds ``handler``'s annotations and decides whether it is
    async (unwrapping partials, methods, staticmethods and ``__call__``), and the
    names that ``functools.partial`` layers bind by keyword."""
    target, keywords = handler, set[str]()
    for _ in range(32):  # bounded: a __call__ could lead back to itself
        if isinstance(target, functools.partial):
            keywords.update(target.keywords)
            target = target.func
        elif isinstance(target, (types.MethodType, staticmethod)):
            target = target.__func__
        elif (
            inspect.isroutine(target) or isinstance(target, type) or hasattr(target, "__wrapped__")
        ):
            break
        elif callable(target):  # an object with __call__
            target = type(target).__call__
        else:
            break
    return target, frozenset(keywords)


def _hints(target: Any, params: list[inspect.Parameter]) -> dict[str, Any]:
    """The resolved annotations of ``target`` (string annotations evaluated in its
    module), or, for a callable written in C, those its signature shows."""
    if isinstance(target, type):  # a class is called through __init__ (or __new__)
        init = target.__init__  # type: ignore[misc]  # the class's own, as called
        target = init if init is not object.__init__ else target.__new__
    if getattr(target, "__annotations__", None) is None:
        return {p.name: p.annotation for p in params if p.annotation is not p.empty}
    return typing.get_type_hints(target, include_extras=True)


def _no_args_parameter(name: str, params: list[inspect.Parameter], bound: frozenset[str]) -> str:
    """The message for a handler with no parameter that can take the task's args."""
    if not any(p.kind is p.KEYWORD_ONLY for p in params):
        return f"handler {name} must take at least one parameter: the task's arguments"
    message = (
        f"handler {name}: the task's arguments are passed as the first positional argument, "
        "but every parameter is keyword-only"
    )
    if bound:
        message += (
            f"; functools.partial binds {', '.join(sorted(bound))} by keyword, which makes every "
            "later parameter keyword-only: bind the leading parameters positionally, "
            "as in partial(f, value), or only bind parameters after the one taking the arguments"
        )
    return message


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
    if hint is Iteration:
        return "iteration", None
    if hint is Attempt:
        return "attempt", None
    if origin is Task:
        return "task", None
    return None, None
