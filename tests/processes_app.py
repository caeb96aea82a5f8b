"""The targets the ``--processes`` tests run in supervised child processes.

Environment: ``PROCS_DB`` (the SQLite file), ``PROCS_DIR`` (where each process appends
the id of every task it starts to ``runs-<pid>.txt``), and for ``worker``
``PROCS_BLOCK_AT``: the first process to start that many tasks claims the file
``blocked`` (``<pid> <task id>``) and blocks in that task until it is killed.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from taskpipe import Router, TaskId, Worker, WorkerBuilder, WorkerContext
from taskpipe.config import Config
from taskpipe.sqlite import SqliteStorage, connect

_started = [0]
_lock = threading.Lock()


def fast_config() -> Config:
    """Heartbeats and recovery quick enough for a test."""
    return Config(keep_alive=0.2, reenqueue_orphaned_after=2.0, poll_interval=0.1)


def _record(task_id: TaskId) -> None:
    path = os.path.join(os.environ["PROCS_DIR"], f"runs-{os.getpid()}.txt")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{int(task_id)}\n".encode())
    finally:
        os.close(fd)


def _block_here(task_id: TaskId) -> None:
    """Block until killed if this is the first process to get here."""
    try:
        fd = os.open(
            os.path.join(os.environ["PROCS_DIR"], "blocked"), os.O_WRONLY | os.O_CREAT | os.O_EXCL
        )
    except FileExistsError:
        return
    os.write(fd, f"{os.getpid()} {int(task_id)}\n".encode())
    os.close(fd)
    threading.Event().wait()


def record(item: int, task_id: TaskId) -> None:
    """Record the task; the ``PROCS_BLOCK_AT``-th of the first process blocks."""
    _record(task_id)
    block_at = int(os.environ.get("PROCS_BLOCK_AT", "0"))
    if block_at:
        with _lock:
            _started[0] += 1
            mine = _started[0]
        if mine == block_at:
            _block_here(task_id)


def slow(item: int, task_id: TaskId) -> None:
    """Record the task, then work for ``item`` seconds."""
    _record(task_id)
    time.sleep(item)


def leave_a_thread(item: int) -> None:
    """Start a thread that never ends and keeps the process from exiting."""
    threading.Thread(target=threading.Event().wait, name="never-ends", daemon=False).start()


def whoami(item: int, ctx: WorkerContext) -> str:
    """The name of the worker that ran the task."""
    return ctx.name


def build_worker() -> Worker:
    """A factory for ``Supervisor``: a worker named ``fac`` running ``whoami``."""
    storage = SqliteStorage(connect(os.environ["PROCS_DB"]), config=fast_config())
    return WorkerBuilder("fac").backend(storage).concurrency(2).build(whoami)


def _worker() -> Worker | None:
    path = os.environ.get("PROCS_DB")
    if path is None:
        return None
    storage = SqliteStorage(connect(path), config=fast_config())
    return WorkerBuilder("drain").backend(storage).concurrency(4).shutdown_grace(5).build(record)


def _router() -> Router | None:
    path = os.environ.get("PROCS_DB")
    if path is None:
        return None
    router = Router(SqliteStorage(connect(path), config=fast_config()))

    @router.task(name="double")
    def double(x: int, ctx: WorkerContext) -> list[Any]:
        return [x * 2, ctx.name]

    return router


#: The drain test's worker: 4 threads running ``record``, fast heartbeats and recovery.
worker = _worker()
#: A Router with one task, ``double`` (it returns twice its argument and the worker's name).
router = _router()
