"""``TaskpipeBackend``: Django's tasks framework on a taskpipe store.

::

    TASKS = {
        "default": {
            "BACKEND": "taskpipe.contrib.django.TaskpipeBackend",
            "QUEUES": ["default", "emails"],      # Django's own setting: the allowed names
            "ENQUEUE_ON_COMMIT": True,            # inside transaction.atomic(): push at commit
            "OPTIONS": {"db": "sqlite:///jobs.db", "queue": "default"},
        }
    }

A Django task's ``enqueue()`` pushes one taskpipe task: its payload is
``{"args": [...], "kwargs": {...}}`` and its meta ``{"task": module_path}`` (the name a
``Router`` stores, resolved on the worker by importing it); Django's priority is
taskpipe's (higher first in both), ``run_after`` is the task's due time, and each
Django queue is the taskpipe queue of the same name on the same database (Django's
``"default"`` queue is ``OPTIONS["queue"]``, default ``"default"``). The result id is
the taskpipe task id, as a string. ``manage.py taskpipe worker`` runs the tasks.
"""

from __future__ import annotations

import builtins
import os
import re
import threading
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connection as django_connection
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from ... import connection
from ...errors import TaskNotFound
from ...router import NAME_META
from ...store import Store, require
from ...task import AttemptError, Status, Task, TaskInfo
from ._compat import (
    BaseTaskBackend,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
)
from ._compat import Task as DjangoTask

__all__ = [
    "DJANGO_DEFAULT_QUEUE",
    "RUN_AFTER_META",
    "TaskpipeBackend",
    "django_task",
    "task_result",
]

#: Django's default queue name: it maps to ``OPTIONS["queue"]``.
DJANGO_DEFAULT_QUEUE = "default"

#: The meta field that keeps a Django task's ``run_after`` (ISO 8601).
RUN_AFTER_META = "run_after"

#: Django's status of each taskpipe status (by value; a status another program wrote,
#: which taskpipe does not know, reads as READY).
_STATUSES: dict[str, Any] = {
    Status.PENDING.value: TaskResultStatus.READY,
    Status.FAILED.value: TaskResultStatus.READY,  # failed an attempt: ready to run again
    Status.RUNNING.value: TaskResultStatus.RUNNING,
    Status.DONE.value: TaskResultStatus.SUCCESSFUL,
    Status.DEAD.value: TaskResultStatus.FAILED,
}
_FINISHED = (Status.DONE, Status.DEAD)
_stores: dict[str, Store] = {}  # one store (one database) per URL, shared by every thread
_stores_lock = threading.Lock()


class TaskpipeBackend(BaseTaskBackend):
    """A Django task backend whose tasks are taskpipe tasks (see the module docstring).
    ``OPTIONS``: ``db`` (a taskpipe URL or SQLite path; required), ``queue`` (the
    taskpipe queue of Django's default queue), ``max_attempts`` (of every task it
    enqueues; default: the worker's retry policy)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]):
        super().__init__(alias, params)
        options = dict(self.options)
        self.url = options.pop("db", None)
        if not isinstance(self.url, (str, os.PathLike)) or not str(self.url):
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['db'] must be a taskpipe database URL or SQLite "
                f"path (e.g. 'sqlite:///jobs.db', 'postgresql://user@host/db'), got {self.url!r}"
            )
        self.url = os.fspath(self.url)
        self.default_queue = options.pop("queue", DJANGO_DEFAULT_QUEUE)
        if not isinstance(self.default_queue, str) or not self.default_queue:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['queue'] must be a non-empty str, "
                f"got {self.default_queue!r}"
            )
        self.max_attempts = options.pop("max_attempts", None)
        Task(None, max_attempts=self.max_attempts)  # checked now, with Task's message
        if options:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {sorted(options)} "
                "(known: db, queue, max_attempts)"
            )
        self.enqueue_on_commit = params.get("ENQUEUE_ON_COMMIT", False)
        if not isinstance(self.enqueue_on_commit, bool):
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['ENQUEUE_ON_COMMIT'] must be True or False, "
                f"got {self.enqueue_on_commit!r}"
            )

    # Stores -------------------------------------------------------------------------------
    @property
    def storage(self) -> Store:
        """The store of Django's default queue (``OPTIONS["queue"]``) on ``OPTIONS["db"]``."""
        with _stores_lock:
            store = _stores.get(self.url)
            if store is None:
                store = connection.open_storage(self.url)
                require(store, "introspection", "give Django task results")
                _stores[self.url] = store
        return store if store.queue == self.default_queue else store.for_queue(self.default_queue)

    def queue_for(self, queue_name: str) -> str:
        """The taskpipe queue of a Django queue name."""
        return self.default_queue if queue_name == DJANGO_DEFAULT_QUEUE else queue_name

    def storage_for(self, queue_name: str) -> Store:
        """The store of a Django queue name."""
        queue = self.queue_for(queue_name)
        store = self.storage
        return store if store.queue == queue else store.for_queue(queue)

    # Django's API -------------------------------------------------------------------------
    def enqueue(self, task: DjangoTask, args: Any, kwargs: Any) -> TaskResult:
        """Push ``task`` called with ``args`` and ``kwargs``; with ``ENQUEUE_ON_COMMIT``
        inside ``transaction.atomic()``, when the transaction commits (the result's id
        is set then; a rollback pushes nothing)."""
        self.validate_task(task)
        run_after = task.run_after
        if run_after is not None and timezone.is_naive(run_after):
            run_after = timezone.make_aware(run_after)  # USE_TZ = False: local time
        job = Task(
            {"args": list(args), "kwargs": dict(kwargs)},
            priority=task.priority,
            run_after=run_after,
            max_attempts=self.max_attempts,
            meta=_meta(task, run_after),
        )
        store = self.storage_for(task.queue_name)
        result = TaskResult(
            task=task,
            id="",
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

        def push() -> None:
            task_id = store.push_task(job)
            object.__setattr__(result, "id", str(int(task_id)))
            object.__setattr__(result, "enqueued_at", timezone.now())
            task_enqueued.send(type(self), task_result=result)

        if self.enqueue_on_commit and django_connection.in_atomic_block:
            transaction.on_commit(push)
        else:
            push()
        return result

    def get_result(self, result_id: str) -> TaskResult:
        """The ``TaskResult`` of the taskpipe task ``result_id``; raises
        ``TaskResultDoesNotExist`` when there is none, or it is not a Django task's."""
        try:
            task_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(f"no task result {result_id!r}") from None
        store: Any = self.storage  # (it has the introspection capability)
        try:
            info = store.fetch_by_id(task_id)
        except TaskNotFound:
            raise TaskResultDoesNotExist(f"no task result {result_id!r}") from None
        return task_result(info, self)


def django_task(name: Any) -> DjangoTask:
    """The Django ``Task`` an import path names (as ``Task._reconstruct`` finds it);
    ``LookupError`` when it names none."""
    if not isinstance(name, str) or not name:
        raise LookupError(f"not a Django task name: {name!r}")
    try:
        found = import_string(name)
    except ImportError as exc:
        raise LookupError(f"cannot import the Django task {name!r}: {exc}") from exc
    if not isinstance(found, DjangoTask):
        raise LookupError(f"{name!r} is a {type(found).__name__}, not a Django task (@task)")
    return found


def task_result(info: TaskInfo, backend: TaskpipeBackend) -> TaskResult:
    """The Django ``TaskResult`` of a stored taskpipe task."""
    payload = info.args if isinstance(info.args, dict) else {}
    try:
        task = django_task(info.meta.get(NAME_META) if info.meta else None)
    except LookupError as exc:
        raise TaskResultDoesNotExist(f"task {int(info.id)} is not a Django task: {exc}") from None
    queue_name = DJANGO_DEFAULT_QUEUE if info.queue == backend.default_queue else info.queue
    changes: dict[str, Any] = {"priority": info.priority, "backend": backend.alias}
    if queue_name in backend.queues or not backend.queues:
        changes["queue_name"] = queue_name
    run_after = info.meta.get(RUN_AFTER_META) if info.meta else None
    if isinstance(run_after, str):
        changes["run_after"] = datetime.fromisoformat(run_after)
    task = task.using(**changes)
    status = _STATUSES.get(info.status.value, TaskResultStatus.READY)
    result = TaskResult(
        task=task,
        id=str(int(info.id)),
        status=status,
        enqueued_at=info.created_at,
        started_at=info.started_at,
        last_attempted_at=info.started_at,
        finished_at=info.done_at if info.status in _FINISHED else None,
        args=list(payload.get("args", [])),
        kwargs=dict(payload.get("kwargs", {})),
        backend=backend.alias,
        errors=[task_error(error) for error in info.errors],
        worker_ids=_worker_ids(info),
    )
    if info.status is Status.DONE:
        object.__setattr__(result, "_return_value", info.result)
    return result


def _meta(task: DjangoTask, run_after: datetime | None) -> dict[str, Any]:
    """A Django task's meta: its name (as a ``Router``'s), and its ``run_after``."""
    meta: dict[str, Any] = {NAME_META: task.module_path}
    if run_after is not None:
        meta[RUN_AFTER_META] = run_after.isoformat()
    return meta


def _worker_ids(info: TaskInfo) -> list[str]:
    """One entry per attempt (Django counts attempts so): taskpipe records the run that
    holds, or last held, the task; the earlier attempts' runs are not recorded ("")."""
    if info.attempts <= 0:
        return []
    return [""] * (info.attempts - 1) + [info.worker or ""]


# "Traceback (most recent call last):" … then the exception's own line, unindented:
# "myapp.errors.Boom: message" (builtins and __main__ are shown without a module).
_TRACEBACK_HEAD = "Traceback (most recent call last):"
_CLASS_LINE = re.compile(r"^((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*)(?::|$)")
_ERROR_TEXT = re.compile(r"^([A-Za-z_]\w*): ")


def task_error(error: AttemptError) -> TaskError:
    """A Django ``TaskError`` from a failed attempt. The exception's class path is read
    from the recorded traceback (the line Python writes after the frames:
    ``module.Class: message``, bare for builtins); an error taskpipe itself recorded
    (no exception of the task's: "interrupted by shutdown", an unknown task name) is a
    ``taskpipe.errors.TaskpipeError`` whose traceback is the error text."""
    name_match = _ERROR_TEXT.match(error.error)
    if name_match is None or not error.traceback:
        return TaskError(
            exception_class_path="taskpipe.errors.TaskpipeError",
            traceback=error.traceback or error.error,
        )
    name = name_match.group(1)
    path = None
    lines = error.traceback.splitlines()
    start = max((i for i, line in enumerate(lines) if line == _TRACEBACK_HEAD), default=0)
    for line in lines[start + 1 :]:
        if line[:1].isspace() or not line:
            continue
        match = _CLASS_LINE.match(line)
        if match is not None and match.group(1).rpartition(".")[2] == name:
            path = match.group(1)
        break
    if path is None or "." not in path:
        is_builtin = isinstance(getattr(builtins, name, None), type)
        path = f"builtins.{name}" if is_builtin else f"__main__.{name}"
    return TaskError(exception_class_path=path, traceback=error.traceback)
