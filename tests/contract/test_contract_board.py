"""What the board reads and steers beyond plain introspection: ``delete``,
``throughput`` and ``list_queues(done=False)``, on every store with ``introspection``."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from contract_support import T0, ack_one, at, ctx, need
from freezegun import freeze_time

from taskpipe import Status, Task, TaskNotFound
from taskpipe.expose import MAX_BUCKETS
from taskpipe.store import OutcomeKind


@pytest.fixture
def store(store_factory):
    """A fresh store that declares ``introspection`` (the others skip this module)."""
    made = store_factory()
    need(made, "introspection")
    return made


def finish(store, kind, *, error=None):
    """Claim the next due task and ack it with ``kind``; return its id."""
    [claim] = store.claim(ctx(), 1)
    if kind is not OutcomeKind.DONE:
        need(store, "outcomes")
    assert ack_one(store, claim, kind, error=error, delay=3600).accepted
    return claim.id


def test_delete_removes_a_finished_task_and_refuses_an_unfinished_one(store):
    need(store, "outcomes")
    store.push_bulk(["done", "dead", "waiting"])
    done = finish(store, OutcomeKind.DONE)
    dead = finish(store, OutcomeKind.DEAD, error="E")
    [running] = store.claim(ctx(), 1)
    waiting = store.push("still waiting")
    assert store.delete(done) is True
    assert store.delete(dead) is True
    assert store.delete(running.id) is False
    assert store.delete(waiting) is False
    for gone in (done, dead):
        with pytest.raises(TaskNotFound):
            store.fetch_by_id(gone)
        with pytest.raises(TaskNotFound):
            store.delete(gone)
    assert store.fetch_by_id(running.id).status is Status.RUNNING
    assert store.fetch_by_id(waiting).status is Status.PENDING


def test_delete_of_an_unknown_id_raises_task_not_found(store):
    with pytest.raises(TaskNotFound):
        store.delete(987_654_321_987)
    with pytest.raises(TypeError):
        store.delete("1")


def test_a_deleted_key_can_be_pushed_again(store):
    need(store, "keys")
    key = f"contract:{uuid.uuid4().hex}"
    tid = store.push_task(Task("first", key=key))
    finish(store, OutcomeKind.DONE)
    assert store.delete(tid) is True
    again = store.push_task(Task("second", key=key))
    assert store.fetch_by_id(again).args == "second"


def test_throughput_counts_done_tasks_and_failed_attempts_per_bucket(store):
    need(store, "outcomes")
    with freeze_time(T0) as frozen:
        store.push_bulk(["a", "b", "c", "d"])
        finish(store, OutcomeKind.DONE)  # bucket 0
        frozen.tick(timedelta(seconds=65))
        finish(store, OutcomeKind.DONE)  # bucket 1
        finish(store, OutcomeKind.RETRY, error="boom")  # bucket 1: one failed attempt
        frozen.tick(timedelta(seconds=120))
        finish(store, OutcomeKind.DEAD, error="gone")  # bucket 3: failed, not done
        buckets = store.throughput(T0, 60, queue=store.queue)
        everywhere = store.throughput(T0.timestamp(), 60)
        elsewhere = store.throughput(T0, 60, queue=f"{store.queue}-other")
    assert [b.start for b in buckets] == [at(0), at(60), at(120), at(180)]
    assert [(b.done, b.failed) for b in buckets] == [(1, 0), (1, 1), (0, 0), (0, 1)]
    # every queue: at least this one's (engines share a database between tests)
    assert [b.start for b in everywhere] == [b.start for b in buckets]
    assert all(
        e.done >= b.done and e.failed >= b.failed for e, b in zip(everywhere, buckets, strict=True)
    )
    assert [(b.done, b.failed) for b in elsewhere] == [(0, 0)] * 4


def test_throughput_refuses_unbounded_or_odd_arguments(store):
    with freeze_time(T0):
        with pytest.raises(ValueError, match="at most"):
            store.throughput(T0 - timedelta(seconds=MAX_BUCKETS + 5), 1)
        for bucket in (0, -1, True, "60"):
            with pytest.raises(ValueError):
                store.throughput(T0, bucket)
        with pytest.raises(TypeError):
            store.throughput("yesterday", 60)
        with pytest.raises(ValueError):
            store.throughput(T0.replace(tzinfo=None), 60)


def test_list_queues_without_done_counts_the_unfinished_tasks(store):
    need(store, "outcomes")
    store.push_bulk(["a", "b", "c", "d", "e"])
    finish(store, OutcomeKind.DONE)
    finish(store, OutcomeKind.RETRY, error="E")
    finish(store, OutcomeKind.DEAD, error="E")
    store.claim(ctx(), 1)
    [mine] = [q for q in store.list_queues(done=False) if q.name == store.queue]
    assert (mine.pending, mine.running, mine.failed, mine.dead) == (1, 1, 1, 1)
    assert mine.done in (0, 1)  # a store may count it when that is cheap
    [full] = [q for q in store.list_queues() if q.name == store.queue]
    assert (full.pending, full.running, full.done, full.failed, full.dead) == (1, 1, 1, 1, 1)
