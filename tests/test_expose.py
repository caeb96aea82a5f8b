"""Introspection (seed 000's "Expose") on every store: SQLite and memory.

Each test runs against both backends through the ``store`` fixture, unless it is about
something only one of them has (several queues in one database, error rows).
"""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

import taskpipe
from taskpipe import (
    Expose,
    MsgPackCodec,
    QueueInfo,
    RetryPolicy,
    Status,
    Task,
    TaskFailed,
    TaskId,
    TaskInfo,
    TaskNotFound,
    WaitTimeout,
    WorkerBuilder,
    WorkerContext,
    WorkerInfo,
    memory,
)
from taskpipe.expose import STATS_KEYS, jsonable
from taskpipe.sql import expose as sql_expose
from taskpipe.sqlite import SqliteStorage
from taskpipe.store import Claim, Outcome, OutcomeKind

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "memory"])
def store(request, db):
    """One store of each kind, on the queue "default"."""
    if request.param == "sqlite":
        return SqliteStorage(db)
    return memory.backend()


def run(store, handler, retries: int = 0) -> int:
    """Run everything due now with ``handler``; return how many tasks were handled."""
    worker = WorkerBuilder("w").backend(store).retry(RetryPolicy.retries(retries)).build(handler)
    return worker.run_until_idle()


def echo(x):
    return x


def fail(x):
    raise ValueError(f"bad {x}")


def claim_one(store) -> tuple[WorkerContext, Claim]:
    """Claim one task by hand, as a worker's fetch loop would."""
    ctx = WorkerContext("hand", capacity=1, report=lambda exc: None)
    [claim] = store.claim(ctx, 1)
    return ctx, claim


# The protocol and the records -------------------------------------------------------------
def test_every_store_exposes(store):
    assert isinstance(store, Expose)
    assert {"Expose", "QueueInfo", "WorkerInfo"} <= set(taskpipe.__all__)
    assert taskpipe.__all__ == sorted(taskpipe.__all__)


def test_fetch_by_id_returns_the_whole_record(store):
    with freeze_time(T0):
        task_id = store.push_task(
            Task({"to": "a"}, priority=3, max_attempts=2, meta={"source": "test"})
        )
        info = store.fetch_by_id(task_id)
    assert isinstance(info, TaskInfo)
    assert info.id == task_id and isinstance(info.id, TaskId)
    assert info.queue == "default"
    assert info.status is Status.PENDING
    assert info.args == {"to": "a"}
    assert info.priority == 3 and info.max_attempts == 2 and info.attempts == 0
    assert info.meta == {"source": "test"}
    assert info.created_at == T0 and info.run_at == T0
    assert info.created_at.tzinfo is not None
    assert info.started_at is None and info.done_at is None
    assert info.result is None and info.errors == () and info.worker is None


def test_fetch_by_id_after_a_run_has_result_errors_and_times(store):
    with freeze_time(T0):
        ok, bad = store.push_bulk([21, "x"])
        run(store, lambda x: x * 2 if x == 21 else fail(x))
        done, dead = store.fetch_by_id(ok), store.fetch_by_id(bad)
    assert done.status is Status.DONE and done.result == 42 and done.attempts == 1
    assert done.started_at == T0 and done.done_at == T0 and done.worker.startswith("w:")
    assert dead.status is Status.DEAD and dead.result is None
    [error] = dead.errors
    assert error.attempt == 1 and error.error == "ValueError: bad x" and error.at == T0
    assert "Traceback" in error.traceback and "bad x" in error.traceback


def test_fetch_by_id_unknown(store):
    with pytest.raises(TaskNotFound, match="no task with id 999$"):
        store.fetch_by_id(999)
    with pytest.raises(LookupError):
        store.fetch_by_id(999)
    with pytest.raises(TypeError):
        store.fetch_by_id("1")


def test_undecodable_args_come_back_as_raw_bytes(db):
    writer = SqliteStorage(db, codec=MsgPackCodec)
    task_id = writer.push({"a": 1})
    info = SqliteStorage(db).fetch_by_id(task_id)  # JSON codec: cannot read msgpack
    assert isinstance(info.args, bytes)
    assert MsgPackCodec().decode(info.args) == {"a": 1}


# list_tasks ------------------------------------------------------------------------------------
def test_list_tasks_newest_first_and_paginated(store):
    ids = store.push_bulk(range(7))
    page = store.list_tasks(limit=3)
    assert [t.id for t in page] == ids[::-1][:3]
    assert [t.id for t in store.list_tasks(limit=3, offset=3)] == ids[::-1][3:6]
    assert [t.id for t in store.list_tasks(limit=3, offset=6)] == [ids[0]]
    assert store.list_tasks(limit=3, offset=7) == []
    assert store.list_tasks(limit=0) == []
    assert len(store.list_tasks()) == 7  # default limit 50


def test_list_tasks_by_status(store):
    ok, bad, later = store.push_bulk([1, 2, 3])
    store.kill(later)
    run(store, lambda x: x if x == 1 else fail(x))
    assert [t.id for t in store.list_tasks(status="done")] == [ok]
    assert [t.id for t in store.list_tasks(status=Status.DEAD)] == [later, bad]
    assert [t.id for t in store.list_tasks(status=["done", Status.DEAD])] == [later, bad, ok]
    assert store.list_tasks(status="pending") == []
    with pytest.raises(ValueError, match="unknown status"):
        store.list_tasks(status="finished")


@pytest.mark.parametrize("limit, offset", [(-1, 0), (1, -1), (None, 0), (True, 0)])
def test_list_tasks_rejects_a_bad_page(store, limit, offset):
    with pytest.raises(ValueError):
        store.list_tasks(limit=limit, offset=offset)


def test_list_tasks_queue_none_is_every_queue(db):
    emails, maps = SqliteStorage(db, queue="emails"), SqliteStorage(db, queue="maps")
    e = emails.push("e")
    m = maps.push("m")
    assert [t.id for t in emails.list_tasks()] == [m, e]
    assert [t.id for t in emails.list_tasks(queue="emails")] == [e]
    assert [t.queue for t in emails.list_tasks(queue="maps")] == ["maps"]
    assert emails.list_tasks(queue="nothing") == []


def test_memory_list_tasks_other_queue_is_empty():
    store = memory.backend(queue="mine")
    store.push(1)
    assert store.list_tasks(queue="other") == []
    assert [t.queue for t in store.list_tasks(queue="mine")] == ["mine"]


# stats -------------------------------------------------------------------------------------------
def test_stats_of_an_empty_store(store):
    stats = store.stats()
    assert list(stats) == list(STATS_KEYS)
    assert {s.value for s in Status} <= set(stats)
    assert all(stats[s.value] == 0 for s in Status)
    assert stats["oldest_pending_age"] is None and stats["mean_run_time"] is None


def test_stats_counts_rates_and_ages_under_a_frozen_clock(store):
    with freeze_time(T0) as frozen:

        def slow(x):
            frozen.tick(x)  # the task runs x seconds
            return x

        for seconds in (4, 2):  # one at a time: each is claimed when it starts
            store.push(seconds)
            run(store, slow)
        frozen.tick(3600 * 2)  # two hours later
        store.push("boom")
        recent = store.push(3)
        store.push_task(Task(9, run_after=timedelta(hours=1)))  # not due: not "waiting"
        frozen.tick(30)
        store.kill(recent)  # a kill counts as a failed attempt
        stats = store.stats()
        assert stats["pending"] == 2 and stats["done"] == 2 and stats["dead"] == 1
        assert stats["running"] == 0 and stats["failed"] == 0
        assert stats["done_last_hour"] == 0 and stats["done_last_day"] == 2
        assert stats["failed_last_hour"] == 1 and stats["failed_last_day"] == 1
        assert stats["oldest_pending_age"] == pytest.approx(30)
        assert stats["mean_run_time"] == pytest.approx(3)

        run(store, fail, retries=1)  # "boom" fails once and waits to retry
        stats = store.stats()
        assert stats["failed"] == 1 and stats["failed_last_hour"] == 2
        assert stats["oldest_pending_age"] is None
        frozen.tick(25 * 3600)
        stats = store.stats()
        assert stats["failed_last_day"] == 0 and stats["done_last_day"] == 0
        assert stats["pending"] == 1 and stats["oldest_pending_age"] == pytest.approx(
            24 * 3600 + 30
        )  # task 9, due 1 h after its push


def test_stats_by_queue(db):
    a, b = SqliteStorage(db, queue="a"), SqliteStorage(db, queue="b")
    a.push_bulk([1, 2])
    b.push(3)
    b.kill(b.push(4))
    assert a.stats()["pending"] == 2 + 1
    assert a.stats("a")["pending"] == 2 and a.stats("a")["dead"] == 0
    assert a.stats("b")["pending"] == 1 and a.stats("b")["failed_last_hour"] == 1
    assert a.stats("a")["failed_last_hour"] == 0
    assert a.stats("nope")["pending"] == 0


def test_memory_stats_other_queue_is_zero():
    store = memory.backend()
    store.push(1)
    assert store.stats("other")["pending"] == 0 and store.stats()["pending"] == 1


# list_queues and list_workers ----------------------------------------------------------------------
def test_list_queues(store):
    assert store.list_queues() == []
    store.push_bulk([1, 2])
    store.kill(store.push(3))
    [queue] = store.list_queues()
    assert queue == QueueInfo("default", pending=2, dead=1)
    assert queue.total == 3


def test_list_queues_of_a_database(db):
    SqliteStorage(db, queue="zeta").push(1)
    SqliteStorage(db, queue="alpha").push_bulk([1, 2])
    assert SqliteStorage(db).list_queues() == [
        QueueInfo("alpha", pending=2),
        QueueInfo("zeta", pending=1),
    ]


def test_list_workers_while_a_worker_runs(store):
    seen = []

    def look(x, ctx: WorkerContext):
        seen.append((ctx.run_id, store.list_workers()))

    assert store.list_workers() == []
    store.push(1)
    run(store, look)
    [(run_id, workers)] = seen
    [info] = [w for w in workers if w.run_id == run_id]
    assert isinstance(info, WorkerInfo)
    assert info.name == "w" and info.queues == ("default",) and info.tasks_held == 1
    assert info.pid > 0 and info.hostname
    assert store.list_workers() == []  # a worker that stopped cleanly is forgotten


def test_sqlite_workers_have_times(storage):
    ctx = WorkerContext("beater", capacity=1, report=lambda exc: None)
    with freeze_time(T0):
        storage.beat(ctx)
    [info] = storage.list_workers()
    assert info.run_id == ctx.run_id and info.tasks_held == 0
    assert info.started_at == T0 and info.last_heartbeat == T0
    assert storage.list_workers(limit=0) == []


# retry and retry_dead ------------------------------------------------------------------------------
def test_retry_a_dead_task_gives_it_fresh_attempts(store):
    task_id = store.push_task(Task("x", max_attempts=1))
    run(store, fail)
    assert store.fetch_by_id(task_id).status is Status.DEAD
    assert store.retry(task_id) is True
    info = store.fetch_by_id(task_id)
    assert info.status is Status.PENDING and info.attempts == 0
    assert info.done_at is None and info.started_at is None and info.worker is None
    assert len(info.errors) == 1  # history is kept
    assert run(store, echo) == 1
    assert store.fetch_by_id(task_id).status is Status.DONE
    assert store.fetch_by_id(task_id).result == "x"


def test_retry_a_failed_task_makes_it_due_now(store):
    with freeze_time(T0):
        task_id = store.push("x")
        run(store, fail, retries=3)
        info = store.fetch_by_id(task_id)
        assert info.status is Status.FAILED and info.run_at > T0
        assert run(store, echo) == 0  # not due yet
        assert store.retry(task_id) is True
        assert store.fetch_by_id(task_id).run_at == T0
        assert run(store, echo) == 1


def test_retry_refuses_pending_and_done(store):
    pending, done = store.push_bulk([1, 2])
    store.kill(pending)
    store.retry(pending)
    run(store, echo)
    assert store.retry(done) is False
    store.push(3)
    assert store.retry(store.list_tasks(status="pending")[0].id) is False
    with pytest.raises(TaskNotFound):
        store.retry(12345)


def test_retry_dead(store):
    ids = store.push_bulk([1, 2, 3])
    run(store, fail)
    assert store.retry_dead(queue="elsewhere") == 0
    assert store.retry_dead() == 3
    assert store.retry_dead() == 0
    assert {store.fetch_by_id(i).status for i in ids} == {Status.PENDING}
    assert run(store, echo) == 3


def test_retry_dead_by_queue_in_batches(db, monkeypatch):
    monkeypatch.setattr(sql_expose, "BATCH", 2)
    a, b = SqliteStorage(db, queue="a"), SqliteStorage(db, queue="b")
    for store in (a, b):
        for task_id in store.push_bulk(range(5)):
            store.kill(task_id)
    assert a.retry_dead("a") == 5
    assert a.stats("b")["dead"] == 5 and a.stats("a")["pending"] == 5
    assert a.retry_dead() == 5


# kill -------------------------------------------------------------------------------------------------
def test_kill_a_pending_task(store):
    task_id = store.push(1)
    assert store.kill(task_id) is True
    info = store.fetch_by_id(task_id)
    assert info.status is Status.DEAD and info.done_at is not None
    assert [e.error for e in info.errors] == ["killed"]
    assert run(store, echo) == 0
    assert store.kill(task_id) is False
    with pytest.raises(TaskNotFound):
        store.kill(4242)


def test_kill_a_running_task_discards_its_result(store):
    task_id = store.push(1)

    def killed_meanwhile(x, task_id: TaskId):
        assert store.fetch_by_id(task_id).status is Status.RUNNING
        assert store.kill(task_id) is True
        return "late result"

    run(store, killed_meanwhile)
    info = store.fetch_by_id(task_id)
    assert info.status is Status.DEAD and info.result is None
    assert [e.error for e in info.errors] == ["killed"]


def test_a_killed_tasks_late_ack_is_rejected(store):
    task_id = store.push(1)
    _, claim = claim_one(store)
    assert claim.id == task_id
    store.kill(task_id)
    outcome = Outcome(
        claim, OutcomeKind.DONE, result="zombie", encoded_result=store.encode_result("zombie")
    )
    store.ack([outcome])
    assert outcome.accepted is False
    assert store.fetch_by_id(task_id).result is None


def test_kill_a_failed_task(store):
    task_id = store.push("x")
    run(store, fail, retries=2)
    assert store.fetch_by_id(task_id).status is Status.FAILED
    assert store.kill(task_id) is True
    assert [e.error for e in store.fetch_by_id(task_id).errors] == ["ValueError: bad x", "killed"]


# purge --------------------------------------------------------------------------------------------------
def test_purge_finished_tasks_older_than(store):
    with freeze_time(T0) as frozen:
        old_done, old_dead = store.push_bulk([1, "x"])
        run(store, lambda x: x if x == 1 else fail(x))
        frozen.tick(7200)
        new_done = store.push(2)
        run(store, echo)
        waiting = store.push(3)
        assert store.purge("done", timedelta(hours=1)) == 1
        assert store.purge(["done", "dead"], 3600) == 1
        assert store.purge(Status.DONE, 0) == 1
        for gone in (old_done, old_dead, new_done):
            with pytest.raises(TaskNotFound):
                store.fetch_by_id(gone)
        assert store.fetch_by_id(waiting).status is Status.PENDING
        assert store.purge("dead", 0, queue="default") == 0


@pytest.mark.parametrize(
    "status", ["pending", "running", "failed", Status.PENDING, ["done", "running"], []]
)
def test_purge_refuses_unfinished_tasks(store, status):
    store.push(1)
    with pytest.raises(ValueError):
        store.purge(status, 0)
    assert store.stats()["pending"] == 1


def test_purge_rejects_a_negative_age(store):
    with pytest.raises(ValueError):
        store.purge("done", -1)


def test_sqlite_purge_deletes_error_rows_in_batches(db, monkeypatch):
    monkeypatch.setattr(sql_expose, "BATCH", 2)
    store = SqliteStorage(db)
    ids = store.push_bulk(range(5))
    run(store, fail)
    SqliteStorage(db, queue="other").kill(SqliteStorage(db, queue="other").push(1))
    assert store.models.Error.select().count() == 6
    assert store.purge("dead", 0, queue="default") == 5
    assert store.models.Error.select().count() == 1
    assert store.stats()["dead"] == 1
    assert ids


# wait_for ------------------------------------------------------------------------------------------------
def test_wait_for_a_finished_task(store):
    ok, bad = store.push_bulk([{"n": 1}, "x"])
    run(store, lambda x: x if x != "x" else fail(x))
    assert store.wait_for(ok, timeout=1) == {"n": 1}
    with pytest.raises(TaskFailed, match="bad x") as caught:
        store.wait_for(bad, timedelta(seconds=1))
    assert caught.value.error == "ValueError: bad x" and caught.value.task_id == bad


def test_wait_for_times_out_even_under_a_frozen_clock(store):
    task_id = store.push(1)
    with freeze_time(T0):
        with pytest.raises(WaitTimeout, match="still|within") as caught:
            store.wait_for(task_id, timeout=0.05)
    assert isinstance(caught.value, TimeoutError)
    with pytest.raises(TaskNotFound):
        store.wait_for(777, timeout=1)


def test_wait_for_a_task_a_worker_runs_meanwhile(store):
    task_id = store.push(5)
    release = threading.Event()

    def gated(x):
        release.wait(10)
        return x * 10

    worker = WorkerBuilder("bg").backend(store).build(gated)
    thread = threading.Thread(target=worker.run_until_idle)
    thread.start()
    try:
        release.set()
        assert store.wait_for(task_id, timeout=10) == 50
    finally:
        release.set()
        thread.join(10)


def test_wait_for_a_killed_task(store):
    task_id = store.push(1)
    store.kill(task_id)
    with pytest.raises(TaskFailed, match="killed"):
        store.wait_for(task_id)


# jsonable ------------------------------------------------------------------------------------------------
def test_jsonable_uses_taskinfo_field_names(store):
    with freeze_time(T0):
        task_id = store.push({"a": [1, 2]})
        store.kill(task_id)
        data = jsonable(store.fetch_by_id(task_id))
    assert list(data) == [
        "id",
        "queue",
        "status",
        "args",
        "priority",
        "run_at",
        "attempts",
        "max_attempts",
        "result",
        "errors",
        "created_at",
        "started_at",
        "done_at",
        "worker",
        "meta",
        "recoveries",
    ]
    assert data["status"] == "dead" and data["args"] == {"a": [1, 2]}
    assert data["created_at"] == "2026-03-01T12:00:00+00:00"
    assert data["errors"] == [
        {"attempt": 0, "error": "killed", "traceback": None, "at": data["done_at"]}
    ]


def test_jsonable_odd_values():
    assert jsonable(b"\x00\x01") == base64.b64encode(b"\x00\x01").decode()
    assert jsonable(timedelta(seconds=3)) == 3.0
    assert jsonable({1: (Status.DONE, {2})}) == {"1": ["done", [2]]}
    assert jsonable(object()).startswith("<object object")
