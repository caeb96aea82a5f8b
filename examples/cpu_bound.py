"""CPU-bound handlers on every core: one worker run in 2 processes by a Supervisor.

    python examples/cpu_bound.py

Pushes 200 tasks (a few milliseconds of pure Python each) into a SQLite file, runs
the worker in 2 spawned processes until every task is done, stops them, and prints
how many tasks each process ran. Each child imports this module and takes its
``worker``; only the process that runs this file as a script pushes and supervises.
"""

import collections
import os
import tempfile
import threading

from taskpipe import Supervisor, WorkerBuilder, WorkerContext
from taskpipe.sqlite import SqliteStorage, connect

# The children inherit the environment, so they open the same file.
PATH = os.environ.setdefault(
    "CPU_BOUND_DB", os.path.join(tempfile.mkdtemp(prefix="taskpipe-"), "jobs.db")
)
storage = SqliteStorage(connect(PATH))


def checksum(item: int, ctx: WorkerContext) -> str:
    """Pure-Python work that holds the GIL; returns the worker's name (cpu-1, cpu-2)."""
    total = 0
    for i in range(100_000):
        total = (total + i * item) % 1_000_003
    return ctx.name


worker = WorkerBuilder("cpu").backend(storage).concurrency(1).build(checksum)

if __name__ == "__main__":  # spawned children re-import this file: the guard is required
    SqliteStorage.setup(storage)
    ids = storage.push_bulk(range(200))
    supervisor = Supervisor("cpu_bound:worker", processes=2)

    def stop_when_done() -> None:
        for task_id in ids:
            storage.wait_for(task_id, timeout=120)
        supervisor.stop()

    threading.Thread(target=stop_when_done).start()
    status = supervisor.run()
    ran = collections.Counter(t.result for t in storage.list_tasks(status="done", limit=1000))
    print(f"supervisor exited {status}; tasks run per process: {dict(sorted(ran.items()))}")
