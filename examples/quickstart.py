"""taskpipe's quick start: push jobs into a SQLite file, run a worker until idle,
print what ran and how long it took.

    python examples/quickstart.py
"""

import os
import tempfile
import time
from datetime import timedelta

from taskpipe import RetryPolicy, Task, TaskId, WorkerBuilder, WorkerContext
from taskpipe.sqlite import SqliteStorage, connect

path = os.path.join(tempfile.mkdtemp(prefix="taskpipe-"), "jobs.db")
db = connect(path)  # WAL, busy timeout, BEGIN IMMEDIATE
SqliteStorage.setup(db)  # idempotent: safe at every start
storage = SqliteStorage(db)

# Plain values, committed before push returns.
storage.push_bulk(range(1, 101))
# Pre-built tasks: an urgent one, one that waits, one allowed 5 attempts.
storage.push_task(Task(1000, priority=10))
storage.push_task(Task(2000, run_after=timedelta(milliseconds=200)))
storage.push_all(Task.builder(i).priority(1).max_attempts(5).build() for i in range(3000, 3010))

ran: list[tuple[int, int]] = []
started: list[int] = []
flaky_failures: set[int] = set()


def send_reminder(item: int, ctx: WorkerContext, task_id: TaskId) -> str:
    """The handler: its return value is stored as the task's result."""
    started.append(item)
    if 3000 <= item < 3003 and item not in flaky_failures:
        flaky_failures.add(item)
        raise RuntimeError(f"flaky failure for {item}")  # retried after a backoff
    ran.append((task_id, item))
    return f"sent {item}"


worker = (
    WorkerBuilder("quickstart")
    .backend(storage)
    .concurrency(4)
    .retry(RetryPolicy.retries(2).backoff(base=0.05))
    .build(send_reminder)
)

start = time.perf_counter()
handled = worker.run_until_idle()  # everything due now
time.sleep(0.25)  # let the delayed task and the retries come due (a script, not a test)
handled += worker.run_until_idle()
elapsed = time.perf_counter() - start

print(f"database: {path}")
print(
    f"first started: item {started[0]} (priority 10); the delayed item 2000 started after the others"
)
print(
    f"ran {len(ran)} jobs ({handled} attempts, {len(flaky_failures)} flaky failures retried) in {elapsed * 1000:.0f} ms"
)
counts = dict(
    db.execute_sql("SELECT status, count(*) FROM taskpipe_jobs GROUP BY status").fetchall()
)
print(f"statuses: {counts}")
assert counts == {"done": 112}, counts
assert started.index(2000) >= 100, "the delayed task should start after the due ones"
