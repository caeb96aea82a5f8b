"""Introspection (capability ``introspection``): reading and steering tasks, per store."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from contract_support import T0, ack_one, at, ctx, need
from freezegun import freeze_time

from taskpipe import Status, Task, TaskFailed, TaskNotFound, WaitTimeout, WorkerBuilder
from taskpipe.expose import STATS_KEYS
from taskpipe.store import OutcomeKind


@pytest.fixture
def store(store_factory):
    """A fresh store that declares ``introspection`` (the others skip this module)."""
    made = store_factory()
    need(made, "introspection")
    return made


def finish(store, kind, *, result=None, error=None):
    """Claim the next due task and ack it with ``kind``; return its id."""
    [claim] = store.claim(ctx(), 1)
    if kind is not OutcomeKind.DONE:
        need(store, "outcomes")
    assert ack_one(store, claim, kind, result=result, error=error, delay=3600).accepted
    return claim.id


# Reading --------------------------------------------------------------------------------------
def test_fetch_by_id_returns_the_task_as_pushed(store):
    with freeze_time(T0):
        tid = store.push_task(
            Task(
                {"to": "a@example.com"},
                priority=4,
                max_attempts=3,
                meta={"trace": "t1"},
                run_after=60,
            )
        )
    info = store.fetch_by_id(tid)
    assert (info.id, info.queue, info.status) == (tid, store.queue, Status.PENDING)
    assert info.args == {"to": "a@example.com"}
    assert (info.priority, info.max_attempts, info.meta) == (4, 3, {"trace": "t1"})
    assert (info.run_at, info.created_at) == (at(60), T0)
    assert (info.attempts, info.result, info.errors, info.recoveries) == (0, None, (), ())
    assert (info.started_at, info.done_at, info.worker) == (None, None, None)


def test_plain_pushes_read_back_as_pushed_before_and_after_their_claim(store):
    with freeze_time(T0):
        one = store.push({"n": 1})
        [two] = store.push_bulk([{"n": 2}])
    for tid, n in ((one, 1), (two, 2)):
        info = store.fetch_by_id(tid)
        assert (info.id, info.queue, info.status, info.args) == (
            tid,
            store.queue,
            Status.PENDING,
            {"n": n},
        )
        assert (info.priority, info.max_attempts, info.meta, info.attempts) == (0, None, {}, 0)
        assert (info.run_at, info.created_at, info.started_at, info.worker) == (T0, T0, None, None)
    assert store.next_due() == T0.timestamp()
    assert [t.id for t in store.list_tasks(queue=store.queue, status=Status.PENDING)] == [two, one]
    with freeze_time(at(5)):
        [claim] = store.claim(ctx(), 1)
    info = store.fetch_by_id(claim.id)
    assert (info.status, info.attempts, info.started_at) == (Status.RUNNING, 1, at(5))
    assert (info.args, info.priority, info.run_at, info.created_at) == ({"n": 1}, 0, T0, T0)
    assert (claim.attempt, claim.priority, claim.max_attempts, claim.meta) == (1, 0, None, {})


def test_fetch_by_id_of_an_unknown_id_raises_task_not_found(store):
    with pytest.raises(TaskNotFound):
        store.fetch_by_id(987_654_321_987)
    with pytest.raises(TypeError):
        store.fetch_by_id("1")


def test_a_running_task_shows_its_worker(store):
    with freeze_time(T0):
        tid = store.push("x")
        run = ctx("shown")
        store.claim(run, 1)
    info = store.fetch_by_id(tid)
    assert (info.status, info.worker, info.started_at, info.attempts) == (
        Status.RUNNING,
        run.run_id,
        T0,
        1,
    )


def test_list_tasks_pages_newest_first(store):
    ids = store.push_bulk(range(7))
    newest_first = ids[::-1]
    page = lambda **kw: [t.id for t in store.list_tasks(queue=store.queue, **kw)]  # noqa: E731
    assert page(limit=3) == newest_first[:3]
    assert page(limit=3, offset=3) == newest_first[3:6]
    assert page(limit=3, offset=6) == newest_first[6:]
    assert page(limit=3, offset=7) == []
    assert page() == newest_first
    with pytest.raises(ValueError):
        store.list_tasks(limit=-1)


def test_list_tasks_filters_by_status(store):
    need(store, "outcomes")
    ids = store.push_bulk(["done", "dead", "failed", "running", "pending"])
    done = finish(store, OutcomeKind.DONE, result=1)
    dead = finish(store, OutcomeKind.DEAD, error="E")
    failed = finish(store, OutcomeKind.RETRY, error="E")
    [running] = [c.id for c in store.claim(ctx(), 1)]
    assert [done, dead, failed, running] == ids[:4]

    def listed(status):
        return [t.id for t in store.list_tasks(queue=store.queue, status=status)]

    assert listed("done") == [done]
    assert listed(Status.DEAD) == [dead]
    assert listed("failed") == [failed]
    assert listed("running") == [running]
    assert listed("pending") == [ids[4]]
    assert listed(["pending", Status.DONE]) == [ids[4], done]
    with pytest.raises(ValueError):
        store.list_tasks(status="finished")


def test_list_tasks_of_another_queue_does_not_show_this_one(store):
    store.push("x")
    assert store.list_tasks(queue=f"elsewhere-{uuid.uuid4().hex}") == []


def test_stats_counts_this_queue(store):
    need(store, "outcomes")
    with freeze_time(T0) as frozen:
        store.push_bulk(["d1", "d2", "dead", "failed", "run", "p1", "p2"])
        finish(store, OutcomeKind.DONE, result=1)
        finish(store, OutcomeKind.DONE, result=2)
        finish(store, OutcomeKind.DEAD, error="E")
        finish(store, OutcomeKind.RETRY, error="E")
        store.claim(ctx(), 1)
        frozen.tick(timedelta(seconds=90))
        stats = store.stats(queue=store.queue)
    assert set(stats) == set(STATS_KEYS)
    counts = {s.value: stats[s.value] for s in Status}
    assert counts == {"pending": 2, "running": 1, "done": 2, "failed": 1, "dead": 1}
    assert (stats["done_last_hour"], stats["done_last_day"]) == (2, 2)
    assert (stats["failed_last_hour"], stats["failed_last_day"]) == (2, 2)
    assert stats["oldest_pending_age"] == pytest.approx(90)
    assert stats["mean_run_time"] == pytest.approx(0)

    [queue] = [q for q in store.list_queues() if q.name == store.queue]
    assert (queue.pending, queue.running, queue.done, queue.failed, queue.dead, queue.total) == (
        2,
        1,
        2,
        1,
        1,
        7,
    )


def test_stats_of_an_empty_queue(store):
    stats = store.stats(queue=store.queue)
    assert set(stats) == set(STATS_KEYS)
    assert {k: v for k, v in stats.items() if v} == {}
    assert (stats["oldest_pending_age"], stats["mean_run_time"]) == (None, None)


def test_list_workers_shows_a_run_with_the_tasks_it_holds(store):
    run = ctx("listed")
    store.open_run(run)
    store.beat(run)
    store.push_bulk([1, 2])
    store.claim(run, 10)
    [mine] = [w for w in store.list_workers() if w.run_id == run.run_id]
    assert (mine.name, mine.tasks_held) == ("listed", 2)
    assert store.queue in mine.queues
    store.close_run(run)
    store.retire(run)
    assert run.run_id not in [w.run_id for w in store.list_workers()]


# Steering -------------------------------------------------------------------------------------
def test_retry_makes_a_dead_or_failed_task_pending_with_fresh_attempts(store):
    need(store, "outcomes")
    with freeze_time(T0) as frozen:
        store.push_bulk(["dead", "failed"])
        dead = finish(store, OutcomeKind.DEAD, error="E1")
        failed = finish(store, OutcomeKind.RETRY, error="E2")  # due in an hour
        frozen.tick(timedelta(seconds=5))
        assert store.retry(dead) is True
        assert store.retry(failed) is True
        for tid, error in ((dead, "E1"), (failed, "E2")):
            info = store.fetch_by_id(tid)
            assert (info.status, info.attempts, info.run_at, info.done_at) == (
                Status.PENDING,
                0,
                at(5),
                None,
            )
            assert [e.error for e in info.errors] == [error]  # the history is kept
        claims = store.claim(ctx(), 10)
    assert sorted((c.id, c.attempt) for c in claims) == [(dead, 1), (failed, 1)]


def test_retry_refuses_pending_running_and_done_tasks(store):
    done, running, pending = store.push_bulk(["d", "r", "p"])
    [claim] = store.claim(ctx(), 1)
    ack_one(store, claim, OutcomeKind.DONE, result=1)
    store.claim(ctx(), 1)
    assert [store.retry(tid) for tid in (done, running, pending)] == [False, False, False]
    statuses = [store.fetch_by_id(tid).status for tid in (done, running, pending)]
    assert statuses == [Status.DONE, Status.RUNNING, Status.PENDING]
    with pytest.raises(TaskNotFound):
        store.retry(987_654_321_987)


def test_retry_dead_retries_every_dead_task_of_the_queue(store):
    need(store, "outcomes")
    ids = store.push_bulk(["a", "b", "c"])
    dead = [finish(store, OutcomeKind.DEAD, error="E") for _ in range(2)]
    assert dead == ids[:2]
    assert store.retry_dead(queue=f"elsewhere-{uuid.uuid4().hex}") == 0
    assert store.retry_dead(queue=store.queue) == 2
    assert store.retry_dead(queue=store.queue) == 0
    assert sorted((c.id, c.attempt) for c in store.claim(ctx(), 10)) == [(i, 1) for i in ids]


def test_kill_makes_a_waiting_task_dead_once(store):
    with freeze_time(T0):
        tid = store.push("x")
        assert store.kill(tid) is True
    info = store.fetch_by_id(tid)
    assert (info.status, info.done_at) == (Status.DEAD, T0)
    assert [e.error for e in info.errors] == ["killed"]
    assert store.kill(tid) is False
    assert store.claim(ctx(), 10) == []
    assert store.next_due() is None
    with pytest.raises(TaskNotFound):
        store.kill(987_654_321_987)


def test_kill_refuses_a_done_task(store):
    store.push("x")
    tid = finish(store, OutcomeKind.DONE, result="r")
    assert store.kill(tid) is False
    assert store.fetch_by_id(tid).status is Status.DONE


def test_purge_deletes_finished_tasks_older_than_the_cutoff(store):
    need(store, "outcomes")
    with freeze_time(T0) as frozen:
        store.push_bulk(["old-done", "old-dead"])
        old_done = finish(store, OutcomeKind.DONE, result=1)
        old_dead = finish(store, OutcomeKind.DEAD, error="E")
        frozen.tick(timedelta(seconds=100))
        store.push("young")
        young = finish(store, OutcomeKind.DONE, result=2)
        waiting = store.push("waiting")
        frozen.tick(timedelta(seconds=10))
        assert store.purge("done", timedelta(seconds=50), queue=store.queue) == 1
        assert store.purge(["done", "dead"], 50, queue=store.queue) == 1
        assert store.purge("done", 50, queue=store.queue) == 0
    for gone in (old_done, old_dead):
        with pytest.raises(TaskNotFound):
            store.fetch_by_id(gone)
    assert store.fetch_by_id(young).status is Status.DONE
    assert store.fetch_by_id(waiting).status is Status.PENDING
    for status in ("pending", "running", "failed", None):
        with pytest.raises(ValueError):
            store.purge(status, 0)


def test_a_purged_key_can_be_pushed_again(store):
    need(store, "keys")
    key = f"contract:{uuid.uuid4().hex}"
    store.push_task(Task("first", key=key))
    finish(store, OutcomeKind.DONE)
    assert store.purge("done", 0, queue=store.queue) == 1
    again = store.push_task(Task("second", key=key))
    assert store.fetch_by_id(again).args == "second"
    [claim] = store.claim(ctx(), 10)
    assert claim.id == again


# wait_for -------------------------------------------------------------------------------------
def test_wait_for_a_done_task_returns_its_result(store):
    store.push("x")
    tid = finish(store, OutcomeKind.DONE, result={"ok": True})
    assert store.wait_for(tid, timeout=1) == {"ok": True}


def test_wait_for_a_dead_task_raises_task_failed(store):
    need(store, "outcomes")
    store.push("x")
    tid = finish(store, OutcomeKind.DEAD, error="RuntimeError: no")
    with pytest.raises(TaskFailed) as failed:
        store.wait_for(tid, timeout=1)
    assert (failed.value.task_id, failed.value.error) == (tid, "RuntimeError: no")


def test_wait_for_times_out_on_a_waiting_task(store):
    tid = store.push("x")
    with pytest.raises(WaitTimeout):
        store.wait_for(tid, timeout=timedelta(milliseconds=50))
    with pytest.raises(TaskNotFound):
        store.wait_for(987_654_321_987, timeout=1)


def test_wait_for_sees_a_worker_finish_the_task(store):
    tid = store.push(21)
    worker = WorkerBuilder("waited").backend(store).build(lambda n: n * 2)
    runner = threading.Thread(target=worker.run_until_idle)
    runner.start()
    try:
        assert store.wait_for(tid, timeout=10) == 42
    finally:
        runner.join(10)
    assert not runner.is_alive()
