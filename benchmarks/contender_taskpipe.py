"""taskpipe doing each scenario through its public API."""

from __future__ import annotations

import time

from ceiling import fill
from common import raw_connection, taskpipe_db

from taskpipe import WorkerBuilder, WorkerContext
from taskpipe.sqlite import SqliteStorage, connect


def push_single(directory: str, n: int) -> float:
    """Rows/s with ``storage.push(i)``, one committed transaction each."""
    storage = SqliteStorage(taskpipe_db(directory))
    push = storage.push
    start = time.perf_counter()
    for i in range(n):
        push(i)
    elapsed = time.perf_counter() - start
    storage.db.close()
    return n / elapsed


def push_bulk(directory: str, n: int) -> float:
    """Rows/s with one ``storage.push_bulk(range(n))``."""
    storage = SqliteStorage(taskpipe_db(directory))
    items = list(range(n))
    start = time.perf_counter()
    storage.push_bulk(items)
    elapsed = time.perf_counter() - start
    storage.db.close()
    return n / elapsed


def _noop(item: int) -> None:
    return None


def drain(directory: str, n: int, concurrency: int, handler=_noop) -> float:
    """Jobs/s for a worker draining ``n`` queued tasks (``run_until_idle``)."""
    db = taskpipe_db(directory)
    conn = raw_connection(db.database)
    fill(conn, n)
    conn.close()
    storage = SqliteStorage(db)
    worker = WorkerBuilder("bench").backend(storage).concurrency(concurrency).build(handler)
    start = time.perf_counter()
    handled = worker.run_until_idle()
    elapsed = time.perf_counter() - start
    if handled != n:
        raise RuntimeError(f"taskpipe handled {handled} of {n} tasks")
    db.close()
    return n / elapsed


def claim_cost(db_path: str, claims: int) -> float:
    """Microseconds per one-task claim through the storage's own claim path, on a
    database filled beforehand."""
    db = connect(db_path)
    storage = SqliteStorage(db)

    ctx = WorkerContext("bench", capacity=1, report=print)
    claim = storage.claim  # the store primitive, as the worker calls it
    start = time.perf_counter()
    for _ in range(claims):
        claim(ctx, 1)
    elapsed = time.perf_counter() - start
    db.execute_sql("UPDATE taskpipe_jobs SET status = 'pending' WHERE status = 'running'")
    db.close()
    return elapsed / claims * 1e6
