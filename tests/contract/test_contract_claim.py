"""``claim`` and ``next_due``: order, limits, due times and exclusivity, per store."""

from __future__ import annotations

import collections
import threading
from datetime import timedelta

from contract_support import T0, T0_TS, args_of, at, claim_all, ctx, make_ctx
from freezegun import freeze_time

from taskpipe import Task, WorkerBuilder


def test_claim_order_is_priority_then_run_at_then_id(store):
    with freeze_time(T0):
        # (name, priority, run_at relative to now); pushed in this order, so ids rise
        pushed = [
            ("p0-10a", 0, -10),
            ("p5-0", 5, 0),
            ("p0-20", 0, -20),
            ("p5-5", 5, -5),
            ("p0-10b", 0, -10),
            ("p-1-30", -1, -30),
        ]
        ids = {
            name: store.push_task(Task(name, priority=priority, run_after=at(offset)))
            for name, priority, offset in pushed
        }
        run = ctx()
        first = store.claim(run, 2)
        rest = store.claim(run, 10)
    assert [args_of(store, c) for c in first] == ["p5-5", "p5-0"]
    assert [args_of(store, c) for c in rest] == ["p0-20", "p0-10a", "p0-10b", "p-1-30"]
    assert ids["p0-10a"] < ids["p0-10b"]
    assert [c.id for c in rest][1:3] == [ids["p0-10a"], ids["p0-10b"]]


def test_claim_respects_its_limit_and_counts_the_attempt(store):
    ids = store.push_bulk(range(5))
    run = ctx()
    first = store.claim(run, 2)
    assert [c.id for c in first] == ids[:2]
    assert all(c.attempt == 1 for c in first)
    assert all(c.queue == store.queue for c in first)
    second = store.claim(run, 1)
    assert [c.id for c in second] == ids[2:3]
    assert second[0].lease != first[0].lease  # a fresh lease for every claim
    assert [c.id for c in store.claim(run, 10)] == ids[3:]
    assert store.claim(run, 10) == []  # claimed tasks are not claimed again


def test_claim_takes_only_its_own_queue(store_factory):
    mine, other = store_factory(), store_factory()
    other.push("theirs")
    mine.push("mine")
    assert [args_of(mine, c) for c in claim_all(mine, ctx())] == ["mine"]
    assert [args_of(other, c) for c in claim_all(other, ctx())] == ["theirs"]


def test_a_task_due_later_is_not_claimed_until_due(store):
    with freeze_time(T0) as frozen:
        later = store.push_task(Task("later", run_after=timedelta(seconds=30)))
        run = ctx()
        assert store.claim(run, 10) == []
        assert store.next_due() == T0_TS + 30
        frozen.tick(timedelta(seconds=29))
        assert store.claim(run, 10) == []
        frozen.tick(timedelta(seconds=1))
        assert [c.id for c in store.claim(run, 10)] == [later]
        assert store.next_due() is None


def test_a_datetime_run_after_is_an_instant(store):
    with freeze_time(T0) as frozen:
        tid = store.push_task(Task("x", run_after=at(3600)))
        assert store.next_due() == T0_TS + 3600
        frozen.move_to(at(3599))
        assert store.claim(ctx(), 10) == []
        frozen.move_to(at(3600))
        assert [c.id for c in store.claim(ctx(), 10)] == [tid]


def test_next_due_is_the_earliest_waiting_run_at(store):
    assert store.next_due() is None
    with freeze_time(T0):
        store.push_task(Task("b", run_after=120))
        store.push_task(Task("a", run_after=60))
        store.push_task(Task("c", run_after=240))
        assert store.next_due() == T0_TS + 60
        store.push("now")
        assert store.next_due() == T0_TS
        [claim] = store.claim(ctx(), 10)  # only "now" is due
        assert args_of(store, claim) == "now"
        assert store.next_due() == T0_TS + 60  # a running task is not waiting


def test_a_task_not_yet_due_does_not_hold_back_due_ones(store):
    with freeze_time(T0):
        store.push_task(Task("urgent-later", priority=9, run_after=60))
        due = store.push("due-now")
        assert store.next_due() == T0_TS
        assert [c.id for c in store.claim(ctx(), 10)] == [due]


def test_a_worker_runs_a_due_task_beside_a_later_urgent_one(store):
    seen = []
    with freeze_time(T0):
        store.push_task(Task("urgent-later", priority=9, run_after=60))
        store.push("due-now")
        worker = WorkerBuilder("contract").backend(store).build(seen.append)
        assert worker.run_until_idle() == 1
    assert seen == ["due-now"]


def test_every_task_is_claimed_exactly_once_by_racing_workers(store):
    ids = store.push_bulk(range(400))
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    claimed: dict[int, list[int]] = {i: [] for i in range(threads_n)}
    leases: dict[int, set[str]] = {i: set() for i in range(threads_n)}
    failures: list[BaseException] = []

    def grab(i: int) -> None:
        run, reported = make_ctx(f"racer-{i}")
        try:
            barrier.wait(timeout=10)
            while True:
                claims = store.claim(run, 5)
                if not claims:
                    break
                assert all(c.attempt == 1 for c in claims)
                claimed[i].extend(c.id for c in claims)
                leases[i].update(c.lease for c in claims)
            failures.extend(reported)
        except BaseException as exc:  # reported below, on the main thread
            failures.append(exc)
        finally:
            store.close_thread_connection()

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    counts = collections.Counter(tid for ids_ in claimed.values() for tid in ids_)
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}
    for i in range(threads_n):  # leases never cross runs
        for j in range(i + 1, threads_n):
            assert not leases[i] & leases[j]
    assert store.claim(ctx(), 10) == []


# Stores that do not say when a claimed task was due (``Claim.due_at`` None).
NO_DUE_AT = {"redis"}


def test_a_claim_says_when_its_task_was_due(store, request):
    with freeze_time(T0):
        late = store.push_task(Task("late", run_after=at(-10)))
        store.push_task(Task("later", run_after=at(30)))
        [claim] = store.claim(ctx(), 10)
    assert claim.id == late
    if request.node.callspec.params["store_factory"] in NO_DUE_AT:
        assert claim.due_at is None
    else:
        assert claim.due_at == T0_TS - 10
        assert claim.to_task(None).due_at == T0_TS - 10
