"""BackendBuilder: a backend over a plain sqlite3 table (seed 002's shape) — the five
push methods, a worker running it, retries through on_outcome, build errors, a failing
fetcher, and a pipe into it."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from freezegun import freeze_time

from taskpipe import (
    Attempt,
    BuildError,
    OutcomeKind,
    RetryPolicy,
    Task,
    TaskId,
    WorkerBuilder,
    clock,
    events,
    pipe_to,
)
from taskpipe.custom import BackendBuilder, CustomBackend, ValueCodec
from taskpipe.errors import PushError, StorageError


@dataclass
class TableConfig:
    """The user's own configuration, handed to the fetcher and the sink."""

    table: str = "tasks"
    fetched: list[int] = field(default_factory=list)


class Db:
    """A plain sqlite3 connection shared by threads behind a lock (the user's store)."""

    def __init__(self, path: str):
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        self.conn.execute(
            "CREATE TABLE tasks (id INTEGER PRIMARY KEY, status TEXT NOT NULL, payload TEXT NOT NULL, "
            "run_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL)"
        )

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()


def fetch_pending_task(db: Db, config: TableConfig) -> Task | None:
    """The oldest pending task that is due, marked running (the seed's query)."""
    with db.lock:
        row = db.conn.execute(
            f"UPDATE {config.table} SET status = 'running', attempts = attempts + 1 "
            f"WHERE id = (SELECT id FROM {config.table} WHERE status = 'pending' AND run_at <= ? "
            "ORDER BY created_at, id LIMIT 1) RETURNING id, payload, attempts",
            (clock.timestamp(),),
        ).fetchone()
    if row is None:
        return None
    config.fetched.append(row[0])
    return Task(json.loads(row[1]), id=TaskId(row[0]), attempt=row[2])


def fetcher(db: Db, config: TableConfig, worker_ctx):
    while True:
        yield fetch_pending_task(db, config)


def sink(db: Db, config: TableConfig):
    def save_task(task: Task) -> int:
        now = clock.timestamp()
        with db.lock:
            cursor = db.conn.execute(
                f"INSERT INTO {config.table} (status, payload, run_at, created_at) VALUES ('pending', ?, ?, ?)",
                (json.dumps(task.args), task.run_at(now), now),
            )
        return cursor.lastrowid

    return save_task


def record_outcome(db: Db):
    def on_outcome(outcome) -> None:
        task_id, now = int(outcome.task.id), clock.timestamp()
        if outcome.kind is OutcomeKind.DONE:
            db.query("UPDATE tasks SET status = 'done' WHERE id = ?", (task_id,))
        elif outcome.kind in (OutcomeKind.RETRY, OutcomeKind.INTERRUPTED):
            db.query(
                "UPDATE tasks SET status = 'pending', run_at = ? WHERE id = ?",
                (now + outcome.delay, task_id),
            )
        elif outcome.kind is OutcomeKind.RELEASE:
            db.query(
                "UPDATE tasks SET status = 'pending', attempts = attempts - 1 WHERE id = ?",
                (task_id,),
            )
        else:
            db.query("UPDATE tasks SET status = 'dead' WHERE id = ?", (task_id,))

    return on_outcome


@pytest.fixture
def user_db(tmp_path):
    db = Db(str(tmp_path / "custom.db"))
    yield db
    db.conn.close()


@pytest.fixture
def backend(user_db) -> CustomBackend:
    return (
        BackendBuilder(TableConfig())
        .database(user_db)
        .fetcher(fetcher)
        .sink(sink)
        .on_outcome(record_outcome(user_db))
        .build()
    )


def test_the_five_push_methods_and_a_worker(backend, user_db):
    first = backend.push({"to": "a@example.com"})
    assert isinstance(first, TaskId) and first == 1
    assert backend.push_bulk([{"to": "b"}, {"to": "c"}]) == [2, 3]
    assert backend.push_task(Task({"to": "d"}, priority=3)) == 4
    assert backend.push_all(Task({"to": f"e{i}"}) for i in range(2)) == 2
    assert backend.push_stream(({"to": f"f{i}"} for i in range(3)), batch_size=2) == 3

    seen = []

    def send_email(job: dict, task_id: TaskId, attempt: Attempt) -> str:
        seen.append((task_id, job["to"], attempt))
        return "sent"

    worker = WorkerBuilder("email-worker").backend(backend).build(send_email)
    assert worker.run_until_idle() == 9
    assert [to for _, to, _ in seen] == [
        "a@example.com",
        "b",
        "c",
        "d",
        "e0",
        "e1",
        "f0",
        "f1",
        "f2",
    ]
    assert {attempt for _, _, attempt in seen} == {1}
    assert user_db.query("SELECT DISTINCT status FROM tasks") == [("done",)]
    assert isinstance(backend.codec, ValueCodec)  # the handler got the fetcher's own values


def test_retries_are_the_stores_job_through_on_outcome(backend, user_db):
    attempts = []

    def flaky(job: dict, attempt: Attempt) -> None:
        attempts.append(attempt)
        if attempt == 1:
            raise RuntimeError("first try fails")

    with freeze_time("2024-05-01 10:00:00") as frozen:
        backend.push({"n": 1})
        worker = (
            WorkerBuilder("retrying").backend(backend).retry(RetryPolicy.retries(2)).build(flaky)
        )
        assert worker.run_until_idle() == 1  # failed; the store re-delivers after the backoff
        assert user_db.query("SELECT status, attempts FROM tasks") == [("pending", 1)]
        frozen.tick(timedelta(seconds=5))
        assert worker.run_until_idle() == 1
    assert attempts == [1, 2]
    assert user_db.query("SELECT status, attempts FROM tasks") == [("done", 2)]


def test_missing_parts_are_named():
    with pytest.raises(BuildError, match=r"missing database, fetcher, sink"):
        BackendBuilder().build()
    with pytest.raises(BuildError, match=r"missing fetcher: call \.fetcher\(\.\.\.\)") as raised:
        BackendBuilder().database(None).sink(sink).build()
    assert "database" not in str(raised.value).split("call")[0]
    with pytest.raises(BuildError, match="fetcher"):
        BackendBuilder().fetcher("not callable")
    with pytest.raises(BuildError, match="callable"):
        BackendBuilder().database(None).fetcher(fetcher).sink(lambda db, config: None).build()


def test_a_failing_fetcher_is_an_event_not_a_crash(user_db):
    calls = []

    def broken(db, config, worker_ctx):
        calls.append(worker_ctx.name)
        raise ConnectionError("store unreachable")
        yield  # pragma: no cover - makes this a generator

    backend = BackendBuilder().database(user_db).fetcher(broken).sink(sink).build()
    errors = []
    worker = (
        WorkerBuilder("broken")
        .backend(backend)
        .on_event(lambda ctx, ev: errors.append(ev) if isinstance(ev, events.Error) else None)
        .build(lambda job: None)
    )
    assert worker.run_until_idle() == 0
    assert calls == ["broken"]
    assert isinstance(errors[0].error, StorageError)
    assert isinstance(errors[0].error.__cause__, ConnectionError)


def test_a_fetcher_that_ends_ends_run(user_db):
    def three(db, config, worker_ctx):
        yield from (Task(i, id=TaskId(i + 1)) for i in range(3))

    seen = []
    backend = BackendBuilder().database(user_db).fetcher(three).sink(sink).build()
    WorkerBuilder("finite").backend(backend).build(seen.append).run()
    assert seen == [0, 1, 2]


def test_a_failing_sink_is_a_push_error(user_db):
    def refusing(db, config):
        def save(task):
            raise sqlite3.OperationalError("disk full")

        return save

    backend = BackendBuilder().database(user_db).fetcher(fetcher).sink(refusing).build()
    with pytest.raises(PushError, match="disk full") as raised:
        backend.push(1)
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)


def test_an_iterable_piped_into_a_custom_backend(backend, user_db):
    seen = []
    worker = (
        WorkerBuilder("piped")
        .backend(pipe_to(({"n": i} for i in range(5)), backend))
        .build(seen.append)
    )
    assert worker.run_until_idle() == 5
    assert seen == [{"n": i} for i in range(5)]
    assert user_db.query("SELECT count(*) FROM tasks WHERE status = 'done'") == [(5,)]
