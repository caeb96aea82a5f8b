"""``Router``: many task functions on one store, pushed and dispatched by name.

::

    from taskpipe import Router, WorkerBuilder, WorkerContext, open_storage

    router = Router(open_storage("jobs.db"))

    @router.task(retries=3)
    def send_email(to: str, subject: str, body: str = "") -> None: ...

    @router.task(queue="reports", priority=5)
    def build_report(day: date, ctx: WorkerContext) -> str: ...

    send_email.push("a@example.com", subject="Hello")           # -> TaskId
    build_report.using(run_after=timedelta(hours=1)).push(date.today())
    send_email("a@example.com", "Hello")                          # a plain call, here and now

    WorkerBuilder("mail").backend(router.storage).build(router).run()     # queue "default"
    WorkerBuilder("reports").backend(router.storage_for("reports")).build(router).run()

A push binds the arguments as a call would (a wrong call is a ``TypeError`` then,
nothing written) and stores them by parameter name (``{"to": …, "subject": …}``,
encoded with the store's codec: a ``CodecError`` writes nothing) with the function's
name in the task's meta (``{"task": "myapp.tasks.send_email"}``: its import path, or
``name=``). A worker built with ``.build(router)`` takes the tasks of its store's
queue and calls the function each names, each argument decoded into its parameter's
annotation (as a plain handler's args are). A parameter annotated ``WorkerContext``,
``TaskId``, ``Attempt``, ``Task`` or ``Data[T]`` is injected, not pushed. Each
function keeps its own retry policy (``retries=``; else the worker's). A task whose
name no function of the router has is Dead at once, its error naming it.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Generic, NotRequired, ParamSpec, Required, TypeVar, overload

from .codec import _plain_type, undecodable_type
from .errors import BuildError, UnknownTask
from .injection import CallShape, Signature, analyse_call
from .layers import RetryPolicy
from .store import Store
from .task import Task, TaskId
from .worker import Route

__all__ = ["NAME_META", "PushOptions", "RoutedTask", "Router"]

#: The meta field that holds a routed task's function name.
NAME_META = "task"
_SHOWN_NAMES = 20  # names listed in an unknown-name error

P = ParamSpec("P")
R = TypeVar("R")


class Router:
    """Many task functions on one store: ``@router.task`` registers a function (which
    gains ``push``, ``push_task``, ``task`` and ``using``), and a worker built with
    ``.build(router)`` runs each task by the function it names (see the module
    docstring)."""

    def __init__(self, storage: Store):
        if not isinstance(storage, Store):
            raise TypeError(
                f"Router() takes a taskpipe store (e.g. taskpipe.open_storage('jobs.db')), "
                f"got {storage!r}"
            )
        self.storage = storage
        self._tasks: dict[str, RoutedTask[Any, Any]] = {}
        self._stores: dict[str, Store] = {storage.queue: storage}
        #: Called with the routed task and the id after each push (eager mode of
        #: ``taskpipe.testing.eager``); None: pushes only write.
        self._on_push: Callable[[RoutedTask[Any, Any], TaskId], None] | None = None

    def __repr__(self) -> str:
        return f"Router({self.storage!r}, tasks={len(self._tasks)})"

    # Registering ------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> RoutedTask[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retries: int | RetryPolicy | None = None,
        priority: int = 0,
        queue: str | None = None,
    ) -> Callable[[Callable[P, R]], RoutedTask[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        retries: int | RetryPolicy | None = None,
        priority: int = 0,
        queue: str | None = None,
    ) -> Any:
        """Register a task function, as ``@router.task`` or ``@router.task(...)``.

        ``name``: what its tasks are stored under (default: its import path,
        ``module.qualname``); ``retries``: an int (that many retries, default backoff)
        or a ``RetryPolicy`` (default: the worker's policy); ``priority``: of its
        pushes (``using(priority=…)`` overrides); ``queue``: the queue of the router's
        database its tasks go to (default: the router store's)."""
        if isinstance(retries, bool) or not (
            retries is None or isinstance(retries, (int, RetryPolicy))
        ):
            raise TypeError(f"retries must be an int or a RetryPolicy, got {retries!r}")
        retry = RetryPolicy.retries(retries) if isinstance(retries, int) else retries
        Task(None, priority=priority)  # checks priority now, with Task's own message
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ValueError(f"queue must be a non-empty str, got {queue!r}")

        def register(fn: Callable[..., Any]) -> RoutedTask[Any, Any]:
            routed = RoutedTask(
                self,
                fn,
                name=_task_name(fn) if name is None else name,
                retry=retry,
                priority=priority,
                queue=self.storage.queue if queue is None else queue,
            )
            existing = self._tasks.get(routed.name)
            if existing is not None:
                raise ValueError(
                    f"task name {routed.name!r} is taken by {existing.fn!r}: give one of them "
                    "another name with @router.task(name=...)"
                )
            self._tasks[routed.name] = routed
            return routed

        return register if fn is None else register(fn)

    @property
    def registered(self) -> Mapping[str, RoutedTask[Any, Any]]:
        """The registered functions by name (a read-only view)."""
        return MappingProxyType(self._tasks)

    def __iter__(self) -> Iterator[str]:
        """The names of the registered functions, in the order they were registered."""
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def storage_for(self, queue: str | None = None) -> Store:
        """The store for ``queue`` on the router's database (the router's store for its
        own queue, or None): give it to the worker of that queue."""
        if queue is None:
            return self.storage
        store = self._stores.get(queue)
        if store is None:
            store = self._stores[queue] = self.storage.for_queue(queue)
        return store

    # Running ------------------------------------------------------------------------------
    def bind_dispatch(self, store: Store, data: dict[type, Any]) -> _Dispatch:
        """For ``WorkerBuilder.build(router)``: check the router against the worker's
        ``store`` and ``data``, and return what routes each task to its function."""
        if not self._tasks:
            raise BuildError(f"{self!r} has no task: register functions with @router.task")
        queues = sorted({routed.queue for routed in self._tasks.values()})
        if store.queue not in queues:
            raise BuildError(
                f"no task of {self!r} is pushed to queue {store.queue!r} (their queues: "
                f"{', '.join(queues)}): build the worker on router.storage_for(queue)"
            )
        retried = [t.name for t in self._tasks.values() if t.retry and t.retry.max_attempts > 1]
        if retried and not store.capabilities.outcomes:
            raise BuildError(
                f"{store!r} cannot record outcomes, so the retries of {', '.join(retried)} would "
                "do nothing: use a store that records outcomes, or drop their retries"
            )
        routes = {name: routed._route(data) for name, routed in self._tasks.items()}
        return _Dispatch(routes)


class RoutedTask(Generic[P, R]):
    """A function registered on a ``Router``: calling it runs it here and now; ``push``
    enqueues a call of it (see the module docstring)."""

    def __init__(
        self,
        router: Router,
        fn: Callable[P, R],
        *,
        name: str,
        retry: RetryPolicy | None,
        priority: int,
        queue: str,
    ):
        if not callable(fn):
            raise TypeError(f"@router.task takes a function, got {fn!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a task name must be a non-empty str, got {name!r}")
        functools.update_wrapper(self, fn)
        self.router = router
        self.fn = fn
        self.name = name
        self.retry = retry
        self.priority = priority
        self.queue = queue
        self.storage = router.storage_for(queue)  # a store that holds one queue refuses now
        self._shape = analyse_call(fn)
        self._payload_type = _payload_type(self._shape, self.storage)

    def __repr__(self) -> str:
        return f"RoutedTask({self.name!r}, queue={self.queue!r})"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now (injected parameters are yours to pass)."""
        return self.fn(*args, **kwargs)

    def push(self, *args: Any, **kwargs: Any) -> TaskId:
        """Enqueue a call with these arguments (injected parameters left out); return
        its id once committed."""
        return self._write(self.task(*args, **kwargs))

    def task(self, *args: Any, **kwargs: Any) -> Task[dict[str, Any]]:
        """The ``Task`` that ``push`` would write for these arguments (to adjust, then
        ``push_task``): its args are the arguments by parameter name."""
        return self.using().task(*args, **kwargs)

    def push_task(self, task: Task[dict[str, Any]]) -> TaskId:
        """Enqueue a ``Task`` whose args are this function's arguments by parameter name
        (as ``task()`` makes), with its priority, run_after, max_attempts and key; the
        function's name is set in its meta."""
        if not isinstance(task, Task):
            raise TypeError(f"push_task() takes a Task, not {type(task).__name__}")
        self._check_arguments(task.args)
        task.meta = {**task.meta, NAME_META: self.name}
        return self._write(task)

    def using(
        self,
        *,
        priority: int | None = None,
        run_after: timedelta | datetime | float | None = None,
        max_attempts: int | None = None,
        key: str | None = None,
    ) -> PushOptions:
        """Push options for the next pushes: ``fn.using(priority=9).push(...)``.
        ``run_after``: a delay (timedelta or seconds, from the push) or an aware
        datetime; ``max_attempts`` overrides every retry policy; ``key`` makes the push
        idempotent."""
        options = PushOptions(
            self,
            priority=self.priority if priority is None else priority,
            run_after=run_after,
            max_attempts=max_attempts,
            key=key,
        )
        options.task_options()  # checked now, with Task's own messages
        return options

    # Internals ----------------------------------------------------------------------------
    def _write(self, task: Task[dict[str, Any]]) -> TaskId:
        """Push ``task`` to this function's store, then tell the router's push hook."""
        task_id = self.storage.push_task(task)
        hook = self.router._on_push
        if hook is not None:
            hook(self, task_id)
        return task_id

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name; ``TypeError`` as a call would raise."""
        try:
            bound = self._shape.passed.bind(*args, **kwargs)
        except TypeError as exc:
            injected = sorted({p.name for p, _, _ in self._shape.injected} & set(kwargs))
            hint = (
                f" ({', '.join(injected)}: injected by the worker, not pushed)" if injected else ""
            )
            raise TypeError(f"{self.name}.push(): {exc}{hint}") from None
        return dict(bound.arguments)

    def _check_arguments(self, arguments: Any) -> None:
        if not isinstance(arguments, dict):
            raise TypeError(
                f"{self.name}.push_task() takes a Task whose args are the arguments by "
                f"parameter name (make it with {self.name}.task(...)), got {type(arguments).__name__}"
            )
        params = self._shape.passed.parameters
        unknown = sorted(set(arguments) - set(params))
        missing = [
            n
            for n, p in params.items()
            if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and n not in arguments
        ]
        if unknown or missing:
            problem = f"unknown {', '.join(unknown)}" if unknown else ""
            if missing:
                problem += ("; " if problem else "") + f"missing {', '.join(missing)}"
            raise TypeError(f"{self.name}.push_task(): the task's arguments: {problem}")

    def _route(self, data: dict[type, Any]) -> Route:
        """This function's ``Route`` for a worker with ``data``."""
        signature = Signature(
            args_type=self._payload_type,
            injections=self._shape.injections(data),
            is_async=self._shape.is_async,
        )
        return Route(_Caller(self.fn, self._shape), signature, self.retry)


@dataclass(frozen=True)
class PushOptions:
    """What ``RoutedTask.using(...)`` returns: ``push`` and ``task`` with these options."""

    routed: RoutedTask[Any, Any]
    priority: int
    run_after: timedelta | datetime | float | None = None
    max_attempts: int | None = None
    key: str | None = None

    def push(self, *args: Any, **kwargs: Any) -> TaskId:
        """Enqueue a call with these arguments and options; return its id."""
        return self.routed._write(self.task(*args, **kwargs))

    def task(self, *args: Any, **kwargs: Any) -> Task[dict[str, Any]]:
        """The ``Task`` for a call with these arguments and options."""
        arguments = self.routed._arguments(args, kwargs)
        return Task(arguments, meta={NAME_META: self.routed.name}, **self.task_options())

    def task_options(self) -> dict[str, Any]:
        """These options as ``Task`` keywords (checked by building a ``Task``)."""
        options: dict[str, Any] = {
            "priority": self.priority,
            "run_after": self.run_after,
            "max_attempts": self.max_attempts,
            "key": self.key,
        }
        Task(None, **options)
        return options


class _Caller:
    """Calls a routed function on its decoded arguments (by parameter name) and its
    injected values, each passed positionally or by keyword as its parameter needs."""

    def __init__(self, fn: Callable[..., Any], shape: CallShape):
        self.fn = fn
        self.signature = shape.signature
        self.order = tuple(shape.signature.parameters)

    def __call__(self, arguments: dict[str, Any], /, **injected: Any) -> Any:
        values = {**arguments, **injected}
        ordered = {name: values[name] for name in self.order if name in values}
        bound = inspect.BoundArguments(self.signature, ordered)
        return self.fn(*bound.args, **bound.kwargs)


class _Dispatch:
    """The ``Dispatch`` of a worker built on a router: a task's ``Route`` by its name."""

    def __init__(self, routes: dict[str, Route]):
        self.routes = routes

    def __call__(self, meta: dict[str, Any]) -> Route:
        name = meta.get(NAME_META) if meta else None
        route = self.routes.get(name) if isinstance(name, str) else None
        if route is not None:
            return route
        if name is None:
            raise UnknownTask(
                f"this task has no name (meta {NAME_META!r}): it was pushed without its "
                "function (storage.push), so this router cannot run it; push it with "
                "fn.push(...)"
            )
        names = sorted(self.routes)
        known = ", ".join(names[:_SHOWN_NAMES])
        if len(names) > _SHOWN_NAMES:
            known += f" and {len(names) - _SHOWN_NAMES} more"
        raise UnknownTask(f"no task named {name!r} in this router (known: {known})")


def _task_name(fn: Callable[..., Any]) -> str:
    """A function's default task name: its import path, ``module.qualname``."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise ValueError(f"{fn!r} has no import path: give it one with @router.task(name=...)")
    return f"{module}.{qualname}"


def _payload_type(shape: CallShape, store: Store) -> Any:
    """What a routed task's payload decodes into: a ``TypedDict`` with one field per
    pushed parameter, of its annotated type (required when it has no default).
    ``BuildError`` when the store's codec can never decode into an annotation."""
    fields: dict[str, Any] = {}
    for name, param in shape.passed.parameters.items():
        tp = _plain_type(shape.types[name])
        wrong = undecodable_type(store.codec, tp)
        if wrong is not None:
            shown = getattr(wrong, "__qualname__", repr(wrong))
            raise BuildError(
                f"{shape.name}: parameter {name!r} is annotated {shown}, which the "
                f"{store.codec.name} codec cannot decode a pushed value into; use a type it "
                "can (dataclasses, msgspec Structs, lists, dicts, primitives, datetimes), or "
                "annotate it as injected (WorkerContext, TaskId, Attempt, Task, Data[T])"
            )
        if param.kind is param.VAR_POSITIONAL:
            fields[name] = NotRequired[tuple[tp, ...]]  # type: ignore[valid-type]
        elif param.kind is param.VAR_KEYWORD:
            fields[name] = NotRequired[dict[str, tp]]  # type: ignore[valid-type]
        elif param.default is param.empty:
            fields[name] = Required[tp]
        else:
            fields[name] = NotRequired[tp]
    return typing.TypedDict("arguments", fields, total=False)  # type: ignore[operator]
