"""Push → handler-start latency on an idle worker, idle CPU, and push_stream memory.

Each figure comes from real processes: the worker either runs in this process (in a
thread) or in a child process started with ``child.py``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from common import percentile, taskpipe_db

HERE = os.path.dirname(os.path.abspath(__file__))


def _spaced_pushes(push, count: int, spacing: float) -> None:
    for _ in range(count):
        time.sleep(spacing * random.uniform(0.6, 1.4))  # the worker goes idle in between
        push(time.time())


def taskpipe_same_process(directory: str, count: int, spacing: float) -> list[float]:
    """Latencies (s) with the worker in a thread of this process and pushes from the main thread."""
    from taskpipe import WorkerBuilder
    from taskpipe.sqlite import SqliteStorage

    db = taskpipe_db(directory)
    hooked = getattr(SqliteStorage, "with_hook", None)
    storage = hooked(db) if hooked is not None else SqliteStorage(db)
    latencies: list[float] = []
    done = threading.Event()

    def handler(pushed_at: float) -> None:
        latencies.append(time.time() - pushed_at)
        if len(latencies) == count:
            done.set()

    with _running(WorkerBuilder("latency").backend(storage).build(handler)):
        _spaced_pushes(storage.push, count, spacing)
        done.wait(30)
    return latencies


def delayed_start_lag(directory: str, count: int, delay: float = 0.2) -> list[float]:
    """Seconds from a delayed task's due time to its handler's start, on an idle worker
    with the default polling strategy (nothing wakes it but the due time itself)."""
    from taskpipe import Task, WorkerBuilder
    from taskpipe.sqlite import SqliteStorage

    storage = SqliteStorage(taskpipe_db(directory))
    lags: list[float] = []
    started = threading.Event()

    def handler(due: float) -> None:
        lags.append(time.time() - due)
        started.set()

    with _running(WorkerBuilder("delayed").backend(storage).build(handler)):
        for _ in range(count):
            started.clear()
            due = time.time() + delay * random.uniform(0.8, 1.2)
            storage.push_task(Task(due, run_after=due - time.time()))
            started.wait(30)
    return lags


@contextmanager
def _running(worker) -> Iterator[None]:
    """``worker.run()`` in a thread, idle for 0.3 s before the body; stopped after."""
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.3)
        yield
    finally:
        worker.stop()
        thread.join(10)


def _child(args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "child.py"), *args], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"benchmark child {args[0]} did not start: {line!r}")
    time.sleep(0.3)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _read(out: str, count: int) -> list[float]:
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(out) as fh:
            values = [float(x) for x in fh.read().split()]
        if len(values) >= count:
            return values
        time.sleep(0.05)
    return values


def taskpipe_other_process(directory: str, count: int, spacing: float) -> list[float]:
    """Latencies (s) with the worker in a child process, pushes from this one."""
    from taskpipe.sqlite import SqliteStorage

    db = taskpipe_db(directory)
    storage = SqliteStorage(db)
    out = os.path.join(directory, "latency.txt")
    open(out, "w").close()
    proc = _child(["taskpipe-worker", db.database, out, "hooked"])
    try:
        _spaced_pushes(storage.push, count, spacing)
        return _read(out, count)
    finally:
        _stop(proc)


def huey_process(directory: str, count: int, spacing: float) -> list[float]:
    """huey with its default polling; the consumer in a child process (huey's normal set-up)."""
    from contender_huey import BenchHuey, latency_task

    db_path = os.path.join(directory, "huey.db")
    latency = latency_task(BenchHuey("bench", filename=db_path, results=False))

    out = os.path.join(directory, "latency.txt")
    open(out, "w").close()
    proc = _child(["huey-worker", db_path, out])
    try:
        _spaced_pushes(latency, count, spacing)
        return _read(out, count)
    finally:
        _stop(proc)


def idle_cpu(directory: str, seconds: float, kind: str) -> float:
    """Percent of one core used by an idle worker process over ``seconds``."""
    import psutil

    if kind == "taskpipe":
        db = taskpipe_db(directory)
        args = ["taskpipe-worker", db.database, os.path.join(directory, "idle.txt"), "hooked"]
    else:
        args = [
            "huey-worker",
            os.path.join(directory, "huey.db"),
            os.path.join(directory, "idle.txt"),
        ]
        from contender_huey import BenchHuey

        BenchHuey("bench", filename=args[1], results=False).storage.close()
    proc = _child(args)
    try:
        time.sleep(1.0)  # let start-up settle
        p = psutil.Process(proc.pid)
        before = sum(p.cpu_times()[:2])
        start = time.perf_counter()
        time.sleep(seconds)
        used = sum(p.cpu_times()[:2]) - before
        return used / (time.perf_counter() - start) * 100
    finally:
        _stop(proc)


def push_stream_rss(directory: str, n: int) -> float:
    """Peak RSS growth (MB) of ``push_stream(range(n))`` in a fresh process."""
    path = os.path.join(directory, "stream.db")
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "child.py"), "push-stream", path, str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip())


def summary(latencies: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    return percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
