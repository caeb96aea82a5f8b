"""The many-processes drain that every server store must survive: 4 worker processes
× 4 threads drain ``DRAIN_TASKS`` tasks while one of them is SIGKILLed holding a
task; every task ends Done, run once by live workers, the killed one's recovered.

Used by ``test_postgres.py`` and ``test_mysql.py`` (each with its own URL fixture),
with ``until`` and ``fast_config`` for their other tests;
the worker processes open their store with ``taskpipe.open_storage(url)``.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import pytest

import taskpipe
from taskpipe import TaskId, WorkerBuilder
from taskpipe.config import Config

DRAIN_TASKS = 20_000
DRAIN_PROCESSES = 4
VICTIM_BLOCKS_AT = 1500  # the victim's handler blocks on its 1500th task, then is killed
LIMIT = 60.0  # seconds any one wait may take before the test fails


def fast_config() -> Config:
    """Heartbeats and recovery quick enough for a test."""
    return Config(keep_alive=0.2, reenqueue_orphaned_after=2.0, poll_interval=0.1)


def until(condition: Any, what: str, limit: float = LIMIT) -> None:
    """Wait until ``condition()`` holds (checking every 20 ms), or fail saying ``what``."""
    deadline = time.monotonic() + limit
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit}s waiting for {what}")
        pause.wait(0.02)


def _drain_process(url, queue, name, barrier, record_path, blocked) -> None:
    """One worker process: 4 threads, stopped gracefully by SIGTERM; records every task
    it starts in ``record_path``. With ``blocked``, its ``VICTIM_BLOCKS_AT``-th task
    blocks and says so."""
    storage = taskpipe.open_storage(url, queue=queue, config=fast_config())
    fd = os.open(record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    lock = threading.Lock()
    started = [0]

    def handler(item: int, task_id: TaskId) -> None:
        os.write(fd, f"{int(task_id)}\n".encode())
        if blocked is None:
            return
        with lock:
            started[0] += 1
            mine = started[0]
        if mine == VICTIM_BLOCKS_AT:
            os.write(fd, f"blocked {int(task_id)}\n".encode())
            blocked.set()
            threading.Event().wait()  # until SIGKILL

    worker = WorkerBuilder(name).backend(storage).concurrency(4).build(handler)
    barrier.wait()
    worker.run()


def _runs(path: str) -> tuple[list[int], int | None]:
    """The task ids started in one process (a torn last line is ignored), and the
    task it blocked on."""
    started, blocked = [], None
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                continue
            if line.startswith("blocked "):
                blocked = int(line.split()[1])
            else:
                started.append(int(line))
    return started, blocked


def check_drain_with_a_killed_process(url: str, queue: str, tmp_path: Any) -> None:
    """Drain ``DRAIN_TASKS`` tasks of ``queue`` at ``url`` with ``DRAIN_PROCESSES``
    worker processes, SIGKILL one midway, and check that each task ran once by a live
    worker (twice only if the killed one had started it, then with a recovery)."""
    storage: Any = taskpipe.open_storage(url, queue=queue, config=fast_config())
    ids = storage.push_bulk(range(DRAIN_TASKS))
    assert len(set(ids)) == DRAIN_TASKS

    mp = multiprocessing.get_context("spawn")
    barrier = mp.Barrier(DRAIN_PROCESSES + 1, timeout=LIMIT)
    blocked = mp.Event()
    paths = [str(tmp_path / f"runs-{i}.txt") for i in range(DRAIN_PROCESSES)]
    procs = [
        mp.Process(
            target=_drain_process,
            args=(url, queue, f"drain-{i}", barrier, paths[i], blocked if i == 0 else None),
        )
        for i in range(DRAIN_PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait()
        assert blocked.wait(LIMIT), "the victim never reached its blocking task"
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].join(LIMIT)
        until(lambda: storage.stats(queue)["done"] == DRAIN_TASKS, "every task to be done")
    finally:
        for p in procs[1:]:
            p.terminate()  # SIGTERM: a graceful stop
        for p in procs[1:]:
            p.join(LIMIT)
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [-signal.SIGKILL, 0, 0, 0]

    stats = storage.stats(queue)
    assert {k: stats[k] for k in ("pending", "running", "failed", "dead", "done")} == {
        "pending": 0,
        "running": 0,
        "failed": 0,
        "dead": 0,
        "done": DRAIN_TASKS,
    }
    victim_runs, blocked_id = _runs(paths[0])
    runs = collections.Counter(victim_runs)
    for path in paths[1:]:
        survivor_runs, _ = _runs(path)
        assert survivor_runs, f"{path}: this process ran nothing"
        runs.update(survivor_runs)
    assert set(runs) == set(ids)
    # Only tasks the killed process had started ran twice: once there, once after
    # their recovery; never twice by live workers.
    twice = {task_id for task_id, n in runs.items() if n > 1}
    assert max(runs.values()) <= 2
    assert blocked_id in twice
    assert twice <= set(victim_runs)
    for task_id in twice:
        assert storage.fetch_by_id(task_id).recoveries, (
            f"task {task_id} ran twice without a recovery"
        )
