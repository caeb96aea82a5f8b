"""Helpers shared by the benchmark scenarios: fresh databases, timing, payloads."""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec

from taskpipe.sql.sqlite import SqliteDialect
from taskpipe.sqlite import SqliteStorage, connect

QUERIES = SqliteDialect.queries  # the SQL taskpipe runs on SQLite
SYNCHRONOUS = "NORMAL"  # the setting every contender runs at (taskpipe's default)


@contextmanager
def scratch_dir() -> Iterator[str]:
    """A temporary directory removed afterwards."""
    path = tempfile.mkdtemp(prefix="taskpipe-bench-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def taskpipe_db(directory: str, name: str = "tp.db"):
    """A set-up taskpipe database (peewee) in ``directory``."""
    db = connect(os.path.join(directory, name))
    SqliteStorage.setup(db)
    return db


def raw_connection(path: str) -> sqlite3.Connection:
    """A raw sqlite3 connection with the same pragmas taskpipe uses."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
    conn.execute("PRAGMA temp_store=memory")
    return conn


def raw_db(directory: str, name: str = "raw.db") -> sqlite3.Connection:
    """taskpipe's schema, created by taskpipe, then opened with raw sqlite3."""
    path = os.path.join(directory, name)
    db = taskpipe_db(directory, name)
    db.close()
    return raw_connection(path)


def insert_row(i: int, now: float, status_queue: str = "default") -> tuple:
    """The row taskpipe writes for ``push(i)`` (same columns, same payload bytes)."""
    return (None, status_queue, msgspec.json.encode(i), 0, now, None, None, None, now)


def median(values: list[float]) -> float:
    """The median (benchmarks run each contender several times, interleaved)."""
    return statistics.median(values)


def timed(fn, *args) -> float:
    """Seconds taken by ``fn(*args)`` on the wall clock."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class QueueDepths:
    """One database grown in steps (1M done rows, then 10k, 100k, 1M pending), so the
    claim-cost scenarios fill it once instead of once per contender."""

    def __init__(self, done: int):
        self.directory = tempfile.mkdtemp(prefix="taskpipe-bench-depth-")
        self.path = os.path.join(self.directory, "depth.db")
        taskpipe_db(self.directory, "depth.db").close()
        self.done = done
        self.pending = 0
        self._add(done, "done")

    def _add(self, count: int, status: str) -> None:
        conn = raw_connection(self.path)
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(QUERIES.insert, (insert_row(i, now) for i in range(count)))
        if status == "done":
            conn.execute("UPDATE taskpipe_jobs SET status = 'done', done_at = ?", (now,))
        conn.execute("COMMIT")
        conn.close()

    def at(self, pending: int) -> str:
        """The database path, with at least ``pending`` pending rows."""
        if pending > self.pending:
            self._add(pending - self.pending, "pending")
            self.pending = pending
        return self.path

    def close(self) -> None:
        """Remove the database."""
        shutil.rmtree(self.directory, ignore_errors=True)
