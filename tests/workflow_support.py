"""Helpers for the workflow tests: stores of every kind that runs workflows."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import taskpipe
from taskpipe import WorkerBuilder
from taskpipe.memory import MemoryBackend
from taskpipe.sqlite import SqliteStorage, connect

POSTGRES_URL = os.environ.get("TASKPIPE_TEST_POSTGRES_URL", "").strip()
REDIS_URL = os.environ.get("TASKPIPE_TEST_REDIS_URL", "").strip()
MYSQL_URL = os.environ.get("TASKPIPE_TEST_MYSQL_URL", "").strip()

KINDS = [
    "memory",
    "sqlite",
    *(["postgres"] if POSTGRES_URL else []),
    *(["redis"] if REDIS_URL else []),
    *(["mysql"] if MYSQL_URL else []),
]


def unique(prefix: str = "wf") -> str:
    """A queue name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


_pg: list[Any] = []


def postgres_db() -> Any:
    """The test PostgreSQL database (set up once per session)."""
    if not _pg:
        db = taskpipe.connect(POSTGRES_URL)
        store = taskpipe.open_storage(db, queue=unique())
        type(store).setup(store)
        _pg.append(db)
    return _pg[0]


def store_maker(kind: str, tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """For a ``make_store`` fixture: yields ``make(queue=None) -> store`` of ``kind``
    ("memory", "sqlite", "postgres", "redis", "mysql"), and closes what it opened afterwards (a
    Redis test has a key prefix of its own, its keys deleted after it)."""
    closers: list[Callable[[], Any]] = []
    if kind == "memory":

        def make(queue: str | None = None) -> Any:
            return MemoryBackend(queue=queue or unique())

    elif kind == "sqlite":
        db = connect(str(tmp_path / "wf.db"))
        SqliteStorage.setup(db)
        closers.append(lambda: db.is_closed() or db.close())

        def make(queue: str | None = None) -> Any:
            return SqliteStorage(db, queue=queue or unique())

    elif kind == "redis":
        url = REDIS_URL + ("&" if "?" in REDIS_URL else "?") + f"prefix={unique('tp-wf')}"

        def make(queue: str | None = None) -> Any:
            store = taskpipe.open_storage(url, queue=queue or unique())
            type(store).setup(store)
            closers.append(store.drop)
            return store

    elif kind == "mysql":  # its own queues in the shared test database

        def make(queue: str | None = None) -> Any:
            store = taskpipe.open_storage(MYSQL_URL, queue=queue or unique())
            type(store).setup(store)
            closers.append(store.close_thread_connection)
            return store

    else:  # one database object for the session: the server's connections are shared
        db = postgres_db()

        def make(queue: str | None = None) -> Any:
            store = taskpipe.open_storage(db, queue=queue or unique())
            closers.append(store.close_thread_connection)
            return store

    yield make
    for close in reversed(closers):
        close()


def drain(store: Any, flow: Any, **options: Any) -> int:
    """Run ``flow``'s due tasks on ``store`` until idle (``run_until_idle``)."""
    builder = WorkerBuilder("wf-test").backend(store).concurrency(options.pop("concurrency", 4))
    if "retry" in options:
        builder = builder.retry(options.pop("retry"))
    for value in options.pop("data", ()):
        builder = builder.data(value)
    return builder.build(flow).run_until_idle()
