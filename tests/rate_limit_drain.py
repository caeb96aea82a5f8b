"""Two worker processes drain one queue under one shared rate limit (``key=``).

Each process opens the store from its URL, builds a worker with ``rate_limit(n, per,
key=…)`` and, once both are ready (a barrier), runs until nothing is left for it.
Each task's result records when it started (wall clock, comparable across processes)
and which worker ran it. Used by ``test_layer_rate_limit.py``, on SQLite and on the
server stores whose URL is set.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import taskpipe
from taskpipe import Config, Status, WorkerBuilder, clock

PROCESSES = 2
LIMIT = 60.0  # seconds any one wait may take before the test fails


def _worker_process(url: str, queue: str, key: str, rate: tuple[int, float], name, barrier):
    # No prefetch: each process holds only the tasks its threads run, so both get some.
    storage = taskpipe.open_storage(url, queue=queue, config=Config(buffer_size=0))

    def handler(item: int) -> dict[str, Any]:
        return {"worker": name, "at": clock.timestamp()}

    worker = WorkerBuilder(name).backend(storage).concurrency(3).rate_limit(*rate, key=key)
    built = worker.build(handler)
    barrier.wait()
    built.run_until_idle()


def drain(url: str, queue: str, key: str, tasks: int, rate: tuple[int, float]) -> list[Any]:
    """Push ``tasks`` tasks to ``queue`` and drain them with ``PROCESSES`` worker
    processes limited to ``rate`` (n, per) under ``key``; return the tasks' records."""
    storage: Any = taskpipe.open_storage(url, queue=queue)
    storage.push_bulk(range(tasks))
    mp = multiprocessing.get_context("spawn")
    barrier = mp.Barrier(PROCESSES, timeout=LIMIT)
    procs = [
        mp.Process(target=_worker_process, args=(url, queue, key, rate, f"limited-{i}", barrier))
        for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(LIMIT)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(LIMIT)
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES
    records = storage.list_tasks(queue=queue, limit=tasks + 1)
    assert {record.status for record in records} == {Status.DONE}
    return records
