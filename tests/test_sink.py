"""The task sink: push, push_bulk, push_stream, push_task, push_all — on SQLite and
on the in-memory backend (whose ``maxsize`` blocks producers)."""

from __future__ import annotations

import threading
import tracemalloc
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from freezegun import freeze_time

from taskpipe import JsonCodec, PushError, Task, TaskId, WorkerBuilder, WorkerContext, memory
from taskpipe.sqlite import SqliteStorage


def rows(db, where: str = "1", params=()) -> list[dict]:
    cursor = db.execute_sql(f"SELECT * FROM taskpipe_jobs WHERE {where} ORDER BY id", params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def count(db) -> int:
    return db.execute_sql("SELECT count(*) FROM taskpipe_jobs").fetchone()[0]


def decoded(row: dict):
    return JsonCodec().decode(row["payload"])


class Trace:
    """Record the statements this thread's connection runs."""

    def __init__(self, db):
        self.conn = db.connection()
        self.statements: list[str] = []

    def __enter__(self):
        self.conn.set_trace_callback(self.statements.append)
        return self

    def __exit__(self, *exc):
        self.conn.set_trace_callback(None)

    def count(self, prefix: str) -> int:
        return sum(1 for s in self.statements if s.strip().upper().startswith(prefix))


# push ---------------------------------------------------------------------------------
def test_push_commits_one_pending_row(storage, db):
    tid = storage.push({"to": "a@example.com"})
    assert isinstance(tid, TaskId)
    (row,) = rows(db)
    assert row["id"] == tid
    assert row["status"] == "pending"
    assert row["queue"] == "default"
    assert row["attempts"] == 0 and row["priority"] == 0
    assert decoded(row) == {"to": "a@example.com"}
    # committed: another connection sees it at once
    other = db.__class__(db.database)
    try:
        assert other.execute_sql("SELECT count(*) FROM taskpipe_jobs").fetchone()[0] == 1
    finally:
        other.close()


def test_push_goes_to_the_storage_queue(db):
    a, b = SqliteStorage(db, queue="a"), SqliteStorage(db, queue="b")
    a.push(1)
    b.push(2)
    b.push(3)
    assert [(r["queue"], decoded(r)) for r in rows(db)] == [("a", 1), ("b", 2), ("b", 3)]


# push_bulk ----------------------------------------------------------------------------
def test_push_bulk_returns_ids_in_order(storage, db):
    values = [f"v{i}" for i in range(50)]
    ids = storage.push_bulk(values)
    assert len(ids) == 50 and all(isinstance(i, TaskId) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 50
    by_id = {r["id"]: decoded(r) for r in rows(db)}
    assert [by_id[i] for i in ids] == values


def test_push_bulk_after_other_rows_returns_the_right_ids(storage, db):
    storage.push("first")
    ids = storage.push_bulk(["x", "y", "z"])
    by_id = {r["id"]: decoded(r) for r in rows(db)}
    assert [by_id[i] for i in ids] == ["x", "y", "z"]


def test_push_bulk_is_one_transaction(storage, db):
    with Trace(db) as trace:
        storage.push_bulk(range(100))
    assert trace.count("BEGIN") == 1
    assert trace.count("COMMIT") == 1
    assert count(db) == 100


def test_push_bulk_of_nothing(storage, db):
    assert storage.push_bulk([]) == []
    assert count(db) == 0


# push_stream --------------------------------------------------------------------------
def test_push_stream_returns_the_count_in_batched_transactions(storage, db):
    with Trace(db) as trace:
        assert storage.push_stream((i for i in range(2500)), batch_size=1000) == 2500
    assert trace.count("BEGIN") == 3  # 1000 + 1000 + 500
    assert trace.count("COMMIT") == 3
    assert [decoded(r) for r in rows(db)] == list(range(2500))


def test_push_stream_is_lazy(storage, db):
    seen = []

    def source():
        for i in range(30):
            seen.append(i)
            yield i

    it = source()
    storage.push_stream(it, batch_size=10)
    assert seen == list(range(30)) and count(db) == 30
    with pytest.raises(ValueError, match="batch_size"):
        storage.push_stream(iter([1]), batch_size=0)


def test_push_stream_of_200k_items_has_bounded_memory(storage, db):
    n = 200_000
    tracemalloc.start()
    try:
        pushed = storage.push_stream(i for i in range(n))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pushed == n
    assert count(db) == n
    # one batch of 1,000 rows at a time is a few hundred KB; holding 200k rows
    # (tuples + bytes) would be tens of MB
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


# push_task / push_all ---------------------------------------------------------------------
def test_push_task_stores_every_option(storage, db):
    frozen = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    with freeze_time(frozen):
        tid = storage.push_task(
            Task(
                {"n": 7},
                priority=5,
                run_after=timedelta(seconds=30),
                max_attempts=3,
                meta={"source": "api"},
            )
        )
        at = storage.push_task(Task(8, run_after=frozen + timedelta(hours=1)))
    first, second = rows(db)
    assert first["id"] == tid
    assert decoded(first) == {"n": 7}
    assert first["priority"] == 5
    assert first["run_at"] == pytest.approx(frozen.timestamp() + 30)
    assert first["created_at"] == pytest.approx(frozen.timestamp())
    assert first["max_attempts"] == 3
    assert msgspec.json.decode(first["meta"]) == {"source": "api"}
    assert second["id"] == at and second["run_at"] == pytest.approx(frozen.timestamp() + 3600)
    assert second["max_attempts"] is None and second["meta"] is None


def test_push_task_meta_reaches_the_handler(storage):
    storage.push_task(Task(1, meta={"trace": "abc"}, priority=2, max_attempts=4))
    seen = []

    def handle(n: int, task: Task) -> None:
        seen.append((task.args, task.meta, task.priority, task.max_attempts))

    WorkerBuilder("meta").backend(storage).build(handle).run_until_idle()
    assert seen == [(1, {"trace": "abc"}, 2, 4)]


def test_same_key_twice_is_one_row_with_one_id(storage, db):
    first = storage.push_task(Task("a", key="daily:2030-01-01"))
    second = storage.push_task(Task("b", key="daily:2030-01-01"))
    other = storage.push_task(Task("c", key="daily:2030-01-02"))
    assert first == second != other
    assert [(r["key"], decoded(r)) for r in rows(db)] == [
        ("daily:2030-01-01", "a"),
        ("daily:2030-01-02", "c"),
    ]
    # also inside one push_all batch
    assert storage.push_all([Task("d", key="k"), Task("e", key="k"), Task("f")]) == 3
    assert [decoded(r) for r in rows(db, "key = 'k'")] == ["d"]
    assert count(db) == 4


def test_push_all_with_builder(storage, db):
    with freeze_time("2030-01-01 00:00:00"):
        n = storage.push_all(
            Task.builder(i).run_after(timedelta(seconds=1)).priority(1).max_attempts(5).build()
            for i in range(10)
        )
    assert n == 10
    got = rows(db)
    assert [decoded(r) for r in got] == list(range(10))
    assert {(r["priority"], r["max_attempts"], r["run_at"]) for r in got} == {
        (1, 5, datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC).timestamp())
    }


def test_push_task_and_push_all_want_tasks(storage, db):
    with pytest.raises(TypeError, match="push_task"):
        storage.push_task(5)
    with pytest.raises(TypeError, match="push_all"):
        storage.push_all([Task(1), 2])
    assert count(db) == 0


def test_explicit_duplicate_id_is_a_push_error_and_writes_nothing(storage, db):
    storage.push_task(Task("x", id=TaskId(10)))
    with pytest.raises(PushError):
        storage.push_all([Task("y", id=TaskId(11)), Task("z", id=TaskId(10))])
    assert [r["id"] for r in rows(db)] == [10]


# The in-memory backend ---------------------------------------------------------------
def test_memory_backend_push_and_run():
    backend = memory.backend()
    ids = backend.push_bulk(["a", "b"])
    backend.push_task(Task("urgent", priority=9))
    assert len(backend) == 3
    seen = []

    def handle(value: str, task_id: TaskId) -> None:
        seen.append((value, task_id))

    WorkerBuilder("mem").backend(backend).build(handle).run_until_idle()
    assert seen == [("urgent", 3), ("a", ids[0]), ("b", ids[1])]
    assert len(backend) == 0


def test_memory_backend_with_maxsize_blocks_the_producer_until_a_worker_drains():
    backend = memory.backend(maxsize=2)
    pushed: list[int] = []
    two_pushed = threading.Event()
    done_pushing = threading.Event()

    def producer() -> None:
        for i in range(6):
            backend.push(i)
            pushed.append(i)
            if len(pushed) == 2:
                two_pushed.set()
        done_pushing.set()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    assert two_pushed.wait(timeout=5)
    thread.join(timeout=0.3)
    assert thread.is_alive(), "the producer should be blocked on a full queue"
    assert pushed == [0, 1] and len(backend) == 2

    handled: list[int] = []
    high_water: list[int] = []

    def handle(value: int, ctx: WorkerContext) -> None:
        high_water.append(len(backend))
        handled.append(value)
        if len(handled) == 6:
            ctx.stop()

    worker = WorkerBuilder("drain").backend(backend).build(handle)
    safety = threading.Timer(10, worker.stop)
    safety.start()
    try:
        worker.run()
    finally:
        safety.cancel()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert done_pushing.is_set()
    assert handled == list(range(6))
    assert pushed == list(range(6))
    assert max(high_water) <= 2  # never more than maxsize unfinished tasks
    assert len(backend) == 0


def test_memory_backend_rejects_bad_maxsize():
    with pytest.raises(ValueError, match="maxsize"):
        memory.backend(maxsize=0)


def test_memory_backend_rejects_a_duplicate_id_and_keeps_its_room():
    from taskpipe import PushError, Task, memory

    backend = memory.backend(maxsize=2)
    backend.push_task(Task("a", id=5))
    with pytest.raises(PushError, match="already exists"):
        backend.push_task(Task("b", id=5))
    assert len(backend) == 1
    assert backend.push("c") != 5  # generated ids skip the explicit one
