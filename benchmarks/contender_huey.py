"""The peer: huey's ``SqliteHuey`` at the same ``synchronous`` setting."""

from __future__ import annotations

import os
import threading
import time

from common import SYNCHRONOUS

try:
    from huey import SqliteHuey
    from huey.storage import SqliteStorage as HueySqliteStorage
except ImportError:  # pragma: no cover - the bench extra is not installed
    SqliteHuey = None


def available() -> bool:
    """True when huey is installed (pip install -e '.[bench]')."""
    return SqliteHuey is not None


if SqliteHuey is not None:

    class _Storage(HueySqliteStorage):
        """huey's SQLite storage with synchronous set like the other contenders."""

        def _create_connection(self):
            conn = super()._create_connection()
            conn.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
            return conn

    class BenchHuey(SqliteHuey):
        storage_class = _Storage


def _make(directory: str):
    huey = BenchHuey("bench", filename=os.path.join(directory, "huey.db"), results=False)
    counter = {"n": 0, "target": None}
    lock = threading.Lock()
    finished = threading.Event()

    @huey.task()
    def noop(i):
        with lock:
            counter["n"] += 1
            if counter["n"] == counter["target"]:
                finished.set()

    return huey, noop, counter, finished


def push_single(directory: str, n: int) -> float:
    """Tasks/s enqueued one at a time by calling a huey task."""
    huey, noop, _, _ = _make(directory)
    start = time.perf_counter()
    for i in range(n):
        noop(i)
    elapsed = time.perf_counter() - start
    huey.storage.close()
    return n / elapsed


def drain(directory: str, n: int, concurrency: int, sleep: float = 0.0) -> float:
    """Tasks/s for a huey consumer with ``concurrency`` thread workers draining ``n``."""
    huey = BenchHuey("bench", filename=os.path.join(directory, "huey.db"), results=False)
    state = {"n": 0}
    lock = threading.Lock()
    finished = threading.Event()

    @huey.task()
    def work(i):
        if sleep:
            time.sleep(sleep)
        with lock:
            state["n"] += 1
            if state["n"] == n:
                finished.set()

    for i in range(n):
        work(i)
    consumer = huey.create_consumer(
        workers=concurrency, worker_type="thread", periodic=False, check_worker_health=False
    )
    start = time.perf_counter()
    consumer.start()
    if not finished.wait(600):
        raise RuntimeError("huey did not drain the queue")
    elapsed = time.perf_counter() - start
    consumer.stop(graceful=True)
    huey.storage.close()
    return n / elapsed


def latency_task(huey, record=None):
    """The latency task, defined here so producer and consumer agree on its name
    (huey names a task after the module that defines it)."""

    @huey.task(name="latency")
    def latency(pushed_at):
        if record is not None:
            record(pushed_at)

    return latency
