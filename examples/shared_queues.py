"""Two job types over one SQLite connection: a SharedSqliteStorage's single poller
claims for both queues and routes each task to its queue's worker.

    python examples/shared_queues.py
"""

import os
import tempfile

from taskpipe import TaskId, WorkerBuilder, WorkerContext, run_all
from taskpipe.sqlite import SharedSqliteStorage, SqliteStorage

path = os.path.join(tempfile.mkdtemp(prefix="taskpipe-"), "jobs.db")
store = SharedSqliteStorage(path)
SqliteStorage.setup(store)

map_store = store.make_shared("maps")
int_store = store.make_shared("ints")

map_store.push_stream(iter([{"greeting": "hello"}]))
int_store.push(99)


def send_reminder(item: object, task_id: TaskId, wrk: WorkerContext) -> None:
    print(f"{wrk.name}: reminder sent for task {task_id}: {item!r}")
    wrk.stop()


int_worker = WorkerBuilder("rango-tango-2").backend(int_store).build(send_reminder)
map_worker = WorkerBuilder("rango-tango-1").backend(map_store).build(send_reminder)
run_all(int_worker, map_worker)
print("both workers stopped")
