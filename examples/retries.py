"""Durable retries: failures are written to the store with their error, the task
waits out an exponential backoff (the worker's threads stay free meanwhile), and
after its last attempt it is Dead with every attempt's error kept.

    python examples/retries.py
"""

import os
import tempfile
import threading

from taskpipe import RetryPolicy, Task, WorkerBuilder, WorkerContext, events
from taskpipe.sqlite import SqliteStorage, connect

db = connect(os.path.join(tempfile.mkdtemp(prefix="taskpipe-"), "jobs.db"))
SqliteStorage.setup(db)
storage = SqliteStorage(db)

storage.push({"url": "https://example.com/ok", "fail_times": 0})
storage.push({"url": "https://example.com/flaky", "fail_times": 2})  # succeeds on attempt 3
storage.push({"url": "https://example.com/down", "fail_times": 99})  # never succeeds
storage.push_task(
    Task({"url": "https://example.com/once", "fail_times": 99}, max_attempts=1)
)  # its own limit

calls: dict[str, int] = {}
lock = threading.Lock()


def fetch(job: dict) -> str:
    """Pretend to fetch a URL; fail the first ``fail_times`` calls."""
    with lock:
        calls[job["url"]] = calls.get(job["url"], 0) + 1
        n = calls[job["url"]]
    if n <= job["fail_times"]:
        raise ConnectionError(f"{job['url']} refused the connection (call {n})")
    return f"fetched {job['url']} on call {n}"


finished = []


def on_event(ctx: WorkerContext, event: events.Event) -> None:
    if isinstance(event, events.Retry):
        print(
            f"  task {event.task_id}: attempt {event.attempt} failed, retrying at {event.run_at:%H:%M:%S.%f}"
        )
    elif isinstance(event, (events.Success, events.Dead)):
        finished.append(event)
        print(f"  task {event.task_id}: {type(event).__name__.lower()}")
        if len(finished) == 4:
            ctx.stop()  # everything is settled: stop the worker


worker = (
    WorkerBuilder("retries")
    .backend(storage)
    .concurrency(2)
    .retry(
        RetryPolicy.retries(3).backoff(base=0.05, factor=2, cap=1)
    )  # 4 attempts: +50, +100, +200 ms
    .on_event(on_event)
    .build(fetch)
)
worker.run()  # returns once on_event calls ctx.stop()

print("\nWhat the store kept:")
rows = db.execute_sql(
    "SELECT id, status, attempts, (SELECT count(*) FROM taskpipe_errors e WHERE e.job_id = j.id) "
    "FROM taskpipe_jobs j ORDER BY id"
).fetchall()
for task_id, status, attempts, errors in rows:
    print(f"  task {task_id}: {status:<5} after {attempts} attempt(s), {errors} error(s) recorded")
assert [r[1] for r in rows] == ["done", "done", "dead", "dead"], rows
