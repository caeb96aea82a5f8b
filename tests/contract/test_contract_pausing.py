"""Pausing (the ``pausing`` capability): a queue's pause is recorded in the store, and
no worker takes a task of a paused queue. Stores of one server share it with other
tests: these look only at their own queues' membership in ``paused_queues()``."""

from __future__ import annotations

import pytest
from contract_support import need

from taskpipe import Status, WorkerBuilder, events


def test_pause_and_resume_are_recorded_and_idempotent(store):
    need(store, "pausing")
    other = f"{store.queue}-other"
    assert store.queue not in store.paused_queues()
    store.pause_queue()  # this store's own queue
    store.pause_queue(store.queue)  # again: no error, still paused
    paused = store.paused_queues()
    assert store.queue in paused and other not in paused
    store.pause_queue(other)  # any queue, by name
    assert {store.queue, other} <= store.paused_queues()
    store.resume_queue()
    store.resume_queue()  # again: no error
    paused = store.paused_queues()
    assert store.queue not in paused and other in paused
    store.resume_queue(other)
    assert not {store.queue, other} & store.paused_queues()
    store.resume_queue(f"{store.queue}-never-paused")  # nothing to undo: no error


def test_a_queue_name_must_be_a_non_empty_string(store):
    need(store, "pausing")
    for bad in ("", 7):
        with pytest.raises(ValueError, match="non-empty string"):
            store.pause_queue(bad)
        with pytest.raises(ValueError, match="non-empty string"):
            store.resume_queue(bad)


def test_a_worker_takes_nothing_from_a_paused_queue(store):
    need(store, "pausing")
    ids = store.push_bulk(range(3))
    store.pause_queue()
    seen: list[events.Event] = []
    worker = (
        WorkerBuilder("paused")
        .backend(store)
        .on_event(lambda _ctx, event: seen.append(event))
        .build(lambda n: n)
    )
    assert worker.run_until_idle() == 0
    assert [type(e) for e in seen if isinstance(e, events.Paused | events.Resumed)] == [
        events.Paused
    ]
    assert store.next_due() is not None  # still waiting, untouched
    if store.capabilities.introspection:
        assert {(store.fetch_by_id(i).status, store.fetch_by_id(i).attempts) for i in ids} == {
            (Status.PENDING, 0)
        }
    store.resume_queue()
    assert worker.run_until_idle() == 3
    assert store.next_due() is None


def test_pausing_one_queue_leaves_the_others_running(store_factory):
    paused, running = store_factory(), store_factory()
    need(paused, "pausing")
    paused.push(1)
    running.push(2)
    paused.pause_queue()
    ran: list[int] = []
    assert WorkerBuilder("other").backend(running).build(ran.append).run_until_idle() == 1
    assert WorkerBuilder("held").backend(paused).build(ran.append).run_until_idle() == 0
    assert ran == [2]
    paused.resume_queue()
