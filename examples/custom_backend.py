"""A custom backend over your own table (seed 002): a fetcher, a sink and an outcome
callback around a plain ``sqlite3`` connection — no taskpipe tables at all.

    python examples/custom_backend.py
"""

import json
import os
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass

from taskpipe import Attempt, OutcomeKind, RetryPolicy, Task, TaskId, WorkerBuilder, WorkerContext
from taskpipe.custom import BackendBuilder


@dataclass
class Config:
    """The user's own settings; the builder hands them to the fetcher and the sink."""

    table: str = "tasks"


class Db:
    """One sqlite3 connection shared by the worker's threads behind a lock."""

    def __init__(self, path: str):
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, status TEXT NOT NULL, "
            "payload TEXT NOT NULL, run_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
            "created_at REAL NOT NULL)"
        )

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()


def fetch_pending_task(db: Db, config: Config) -> Task | None:
    """Take the oldest due pending row (marking it running) as a Task, or None."""
    rows = db.execute(
        f"UPDATE {config.table} SET status = 'running', attempts = attempts + 1 "
        f"WHERE id = (SELECT id FROM {config.table} WHERE status = 'pending' AND run_at <= ? "
        "ORDER BY created_at, id LIMIT 1) RETURNING id, payload, attempts",
        (time.time(),),
    )
    if not rows:
        return None
    task_id, payload, attempts = rows[0]
    return Task(json.loads(payload), id=TaskId(task_id), attempt=attempts)


def create_fetcher(db: Db, config: Config, worker_ctx: WorkerContext):
    """The fetcher: an endless iterator of Task | None (None: nothing due now)."""
    while True:
        yield fetch_pending_task(db, config)


def create_sink(db: Db, config: Config):
    """The sink: returns the callable that persists one Task (its id is returned)."""

    def save_task(task: Task) -> int:
        now = time.time()
        with db.lock:
            cursor = db.conn.execute(
                f"INSERT INTO {config.table} (status, payload, run_at, created_at) VALUES ('pending', ?, ?, ?)",
                (json.dumps(task.args), task.run_at(now), now),
            )
        return cursor.lastrowid

    return save_task


def record(db: Db):
    """on_outcome: the store records what happened; a retry is the store re-delivering."""

    def on_outcome(outcome) -> None:
        task_id = int(outcome.task_id)
        if outcome.kind is OutcomeKind.DONE:
            db.execute("UPDATE tasks SET status = 'done' WHERE id = ?", (task_id,))
        elif outcome.kind in (OutcomeKind.RETRY, OutcomeKind.INTERRUPTED):
            db.execute(
                "UPDATE tasks SET status = 'pending', run_at = ? WHERE id = ?",
                (time.time() + outcome.delay, task_id),
            )
        elif outcome.kind is OutcomeKind.RELEASE:
            db.execute(
                "UPDATE tasks SET status = 'pending', attempts = attempts - 1 WHERE id = ?",
                (task_id,),
            )
        else:
            db.execute("UPDATE tasks SET status = 'dead' WHERE id = ?", (task_id,))

    return on_outcome


db = Db(os.path.join(tempfile.mkdtemp(prefix="taskpipe-"), "custom.db"))
backend = (
    BackendBuilder(Config())
    .database(db)
    .fetcher(create_fetcher)
    .sink(create_sink)
    .on_outcome(record(db))
    .poll_interval(0.05)
    .build()
)

# The five push methods all go through the sink.
backend.push({"to": "ada@example.com", "subject": "hello"})
backend.push_bulk([{"to": f"user{i}@example.com", "subject": "news"} for i in range(3)])
backend.push_task(Task({"to": "flaky@example.com", "subject": "retry me"}))

sent: list[str] = []


def send_email(job: dict, attempt: Attempt) -> str:
    """The handler gets the fetcher's own values (no codec); the first flaky try fails."""
    if job["to"].startswith("flaky") and attempt == 1:
        raise ConnectionError("SMTP server busy")
    sent.append(job["to"])
    return "sent"


worker = (
    WorkerBuilder("email-worker")
    .backend(backend)
    .concurrency(2)
    .retry(RetryPolicy.retries(3).backoff(base=0.1))
    .build(send_email)
)
worker.run_until_idle()
time.sleep(0.2)  # a script, not a test: let the retry come due
worker.run_until_idle()

print("sent to:", sent)
print("rows:", db.execute("SELECT id, status, attempts FROM tasks ORDER BY id"))
assert sorted(sent) == sorted(
    ["ada@example.com", "flaky@example.com"] + [f"user{i}@example.com" for i in range(3)]
)
assert db.execute("SELECT DISTINCT status FROM tasks") == [("done",)]
