"""Recovery (capability ``recovery``): ``beat`` re-enqueues the tasks of dead runs.

How a run is made to look dead: run A beats once and claims, then never beats again,
and the frozen clock moves on by ``silence(store)``: eleven orphan windows
(``Config.reenqueue_orphaned_after``). Every store must take a run silent that long
for dead; one window is not always enough, because the SQL stores trust a run whose
process is alive on this host (all of them are, here: they are this test) for
``LIVE_PID_PATIENCE`` = 10 windows, so that a beat stuck behind a busy write lock
does not cost a live worker its tasks. ``retire(ctx)`` (a clean stop forgets the run)
is the other way, tested on its own: a run the store no longer knows is dead at once.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from contract_support import T0, ack_one, args_of, at, ctx, need
from freezegun import freeze_time

from taskpipe import Attempt, Recovery, Status, Task, WorkerBuilder
from taskpipe.store import OutcomeKind


@pytest.fixture
def store(store_factory):
    """A fresh store that declares ``recovery`` and ``introspection`` (to read the
    recovery records); the others skip this module."""
    made = store_factory()
    need(made, "recovery", "introspection")
    return made


def window(store) -> float:
    return float(store.config.reenqueue_orphaned_after)


def silence(store) -> timedelta:
    """Long enough for every store to take a silent run for dead (module docstring)."""
    return timedelta(seconds=11 * window(store) + 1)


def test_a_live_run_keeps_its_tasks(store):
    with freeze_time(T0) as frozen:
        a, b = ctx("A"), ctx("B")
        store.beat(a)
        tid = store.push("x")
        [claim] = store.claim(a, 1)
        frozen.tick(timedelta(seconds=window(store) / 2))
        store.beat(b)
        info = store.fetch_by_id(tid)
        assert (info.status, info.worker, info.recoveries) == (Status.RUNNING, a.run_id, ())
        assert ack_one(store, claim, OutcomeKind.DONE, result=1).accepted


def test_a_run_never_recovers_its_own_tasks(store):
    with freeze_time(T0) as frozen:
        a = ctx("A")
        store.beat(a)
        tid = store.push("x")
        store.claim(a, 1)
        frozen.tick(silence(store))
        store.beat(a)  # late, but its own: A is alive again
        store.beat(ctx("B"))
    info = store.fetch_by_id(tid)
    assert (info.status, info.worker, info.recoveries) == (Status.RUNNING, a.run_id, ())


def test_the_only_task_of_a_silent_run_is_recovered_and_counted(store):
    with freeze_time(T0) as frozen:
        a, b = ctx("A"), ctx("B")
        store.beat(a)
        tid = store.push("x")
        [claim] = store.claim(a, 1)
        frozen.tick(silence(store))
        store.beat(b)
        recovered_at = at(silence(store).total_seconds())
        info = store.fetch_by_id(tid)
        assert (info.status, info.attempts, info.worker) == (Status.PENDING, 0, None)
        assert info.recoveries == (
            Recovery(worker=a.run_id, last_seen=T0, at=recovered_at, counted=True),
        )

        late = ack_one(store, claim, OutcomeKind.DONE, result="zombie")  # A wakes up
        assert late.accepted is False
        assert store.fetch_by_id(tid).status is Status.PENDING

        [again] = store.claim(ctx("C"), 10)
    assert (again.id, again.attempt, args_of(store, again)) == (tid, 1, "x")


def test_the_tasks_of_a_retired_run_are_recovered_at_once(store):
    with freeze_time(T0):
        a = ctx("A")
        store.beat(a)
        tid = store.push("x")
        store.claim(a, 1)
        store.retire(a)  # the store forgets the run, as after a clean stop
        store.beat(ctx("B"))
    info = store.fetch_by_id(tid)
    assert (info.status, info.attempts) == (Status.PENDING, 0)
    [recovery] = info.recoveries
    assert (recovery.worker, recovery.at, recovery.counted) == (a.run_id, T0, True)


def test_the_tasks_of_a_run_that_held_several_run_alone_uncounted(store):
    with freeze_time(T0) as frozen:
        a = ctx("A")
        store.beat(a)
        ids = store.push_bulk(["a", "b", "c"])
        assert len(store.claim(a, 10)) == 3
        frozen.tick(silence(store))
        store.beat(ctx("B"))
        for tid in ids:
            info = store.fetch_by_id(tid)
            assert (info.status, info.attempts) == (Status.PENDING, 0)
            assert [(r.worker, r.counted) for r in info.recoveries] == [(a.run_id, False)]

        c = ctx("C")
        taken = []
        while True:
            claims = store.claim(c, 10)
            if not claims:
                break
            assert len(claims) == 1  # one at a time
            [claim] = claims
            assert claim.isolated and claim.attempt == 1
            c.in_flight = 1  # as the worker counts it: nothing isolated beside it
            assert store.claim(c, 10) == []
            assert ack_one(store, claim, OutcomeKind.DONE).accepted
            c.in_flight = 0
            taken.append(claim.id)
    assert sorted(taken) == sorted(ids)


def test_too_many_recoveries_make_the_task_dead(store):
    limit = store.config.max_recoveries
    with freeze_time(T0) as frozen:
        tid = store.push_task(Task("crasher"))
        for n in range(1, limit + 1):
            run = ctx(f"A{n}")
            store.beat(run)
            [claim] = store.claim(run, 1)
            assert (claim.id, claim.attempt) == (tid, 1)  # a recovery is not an attempt
            frozen.tick(silence(store))
            store.beat(ctx(f"B{n}"))
            assert store.fetch_by_id(tid).status is (Status.DEAD if n == limit else Status.PENDING)
        assert store.claim(ctx("C"), 10) == []
    info = store.fetch_by_id(tid)
    assert len(info.recoveries) == limit
    assert all(r.counted for r in info.recoveries)
    assert info.errors and str(limit) in info.errors[-1].error
    assert store.next_due() is None


def test_a_worker_recovers_an_orphan_and_runs_it(store):
    seen = []
    with freeze_time(T0) as frozen:
        a = ctx("A")
        store.beat(a)
        tid = store.push("orphan")
        store.claim(a, 1)
        frozen.tick(silence(store))

        def handle(value: str, attempt: Attempt) -> None:
            seen.append((value, attempt))

        worker = WorkerBuilder("rescuer").backend(store).build(handle)
        assert worker.run_until_idle() == 1
    assert seen == [("orphan", 1)]
    info = store.fetch_by_id(tid)
    assert (info.status, info.attempts, len(info.recoveries)) == (Status.DONE, 1, 1)
