"""What a worker runs Django tasks with: ``DjangoTasks``, the handler that dispatches
each task to the Django ``Task`` its meta names (imported by its ``module_path``, as
``Task._reconstruct`` does), and ``close_old_connections``, the layer that keeps the
worker's threads from holding stale Django database connections.

``manage.py taskpipe worker`` builds its worker with ``tasks`` (this module's
``DjangoTasks()``); in code::

    WorkerBuilder("django").backend(open_storage(url)).build(DjangoTasks()).run()
"""

from __future__ import annotations

from typing import Any

from ...context import WorkerContext
from ...errors import UnknownTask
from ...injection import Signature
from ...layers.chain import Handle
from ...router import NAME_META
from ...store import Store
from ...task import Task
from ...worker import Route
from ._compat import Task as DjangoTask
from ._compat import TaskContext, TaskResultStatus, normalize_json, task_finished, task_started
from .backend import TaskpipeBackend, django_task, task_result

__all__ = ["DjangoTasks", "close_old_connections", "tasks"]


def close_old_connections(call_next: Handle) -> Handle:
    """A layer: ``django.db.close_old_connections()`` before and after each task, so a
    worker thread never runs a task on a connection that is broken or older than
    ``CONN_MAX_AGE`` (what Django does around each request)."""
    from django import db

    def handle(task: Task[Any], ctx: WorkerContext) -> Any:
        db.close_old_connections()
        try:
            return call_next(task, ctx)
        finally:
            db.close_old_connections()

    return handle


class DjangoTasks:
    """The handler of a worker that runs Django tasks: give it to
    ``WorkerBuilder.build``. Each task runs the Django ``Task`` its meta ``"task"``
    names (imported on first use); one no import finds is Dead at once, its error
    naming it. Adds the ``close_old_connections`` layer to the worker."""

    def bind_dispatch(self, store: Store, data: dict[type, Any]) -> _Dispatch:
        """For ``WorkerBuilder.build``: what routes each task to its Django task."""
        return _Dispatch(store)

    def middleware(self) -> list[Any]:
        """The layers a worker running Django tasks needs: ``close_old_connections``."""
        return [close_old_connections]

    def __repr__(self) -> str:
        return "DjangoTasks()"


#: The handler ``manage.py taskpipe worker`` runs.
tasks = DjangoTasks()

_SIGNATURE = Signature(args_type=Any, injections=(("task", "task", None),))


class _Dispatch:
    """A task's ``Route`` by its Django task's import path, resolved once per name."""

    def __init__(self, store: Store):
        self.store = store
        self.routes: dict[str, Route] = {}

    def __call__(self, meta: dict[str, Any]) -> Route:
        name = meta.get(NAME_META) if meta else None
        route = self.routes.get(name) if isinstance(name, str) else None
        if route is not None:
            return route
        if name is None:
            raise UnknownTask(
                f"this task has no name (meta {NAME_META!r}): it was not enqueued by a Django "
                "task (task.enqueue()), so a Django worker cannot run it"
            )
        try:
            found = django_task(name)
        except LookupError as exc:
            raise UnknownTask(str(exc)) from None
        route = self.routes[name] = Route(_Call(found, self.store), _SIGNATURE)
        return route


class _Call:
    """Runs one Django task on a payload ``{"args": [...], "kwargs": {...}}``; its
    return value is stored JSON-normalised (as Django's own backends do). Django's
    ``task_started`` and ``task_finished`` signals are sent around each attempt
    (``FAILED`` for a failed attempt, even one that will be retried)."""

    def __init__(self, found: DjangoTask, store: Any):
        self.task = found
        self.store = store  # a store with the introspection capability

    def __call__(self, payload: Any, /, *, task: Task[Any]) -> Any:
        if not isinstance(payload, dict):
            raise TypeError(
                f"a Django task's payload is a dict of args and kwargs, got {payload!r}"
            )
        args, kwargs = list(payload.get("args", [])), dict(payload.get("kwargs", {}))
        backend = self.task.get_backend()
        result = None
        if isinstance(backend, TaskpipeBackend) and task.id is not None:
            result = task_result(self.store.fetch_by_id(task.id), backend)
            task_started.send(type(backend), task_result=result)
        try:
            if self.task.takes_context:
                if result is None:
                    raise TypeError(
                        f"{self.task.module_path} takes a context, which needs its backend "
                        f"to be a TaskpipeBackend (it is {type(backend).__name__})"
                    )
                value = self.task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = self.task.call(*args, **kwargs)
            value = normalize_json(value)
        except BaseException:
            _finished(backend, result, TaskResultStatus.FAILED)
            raise
        _finished(backend, result, TaskResultStatus.SUCCESSFUL)
        return value


def _finished(backend: Any, result: Any, status: Any) -> None:
    """Send Django's ``task_finished`` signal (when the task had a result to send)."""
    if result is not None:
        object.__setattr__(result, "status", status)
        task_finished.send(type(backend), task_result=result)
