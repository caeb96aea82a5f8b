"""``ack``: each outcome kind, lease fencing, follow-ups and attempt accounting."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from contract_support import (
    T0,
    T0_TS,
    ack_one,
    args_of,
    at,
    claim_all,
    ctx,
    need,
    now,
    outcome,
    with_lease,
)
from freezegun import freeze_time

from taskpipe import Status, Task, WorkerBuilder
from taskpipe.store import OutcomeKind

ALL_KINDS = list(OutcomeKind)


def one_claim(store, value="x", **task):
    """Push one task and claim it; return (id, claim)."""
    tid = store.push_task(Task(value, **task))
    [claim] = store.claim(ctx(), 10)
    assert claim.id == tid
    return tid, claim


# DONE -------------------------------------------------------------------------------------
def test_done_is_never_claimed_again(store):
    _, claim = one_claim(store)
    assert ack_one(store, claim, OutcomeKind.DONE, result=1).accepted
    assert store.claim(ctx(), 10) == []
    assert store.next_due() is None


def test_done_stores_the_result(store):
    need(store, "introspection")
    with freeze_time(T0):
        tid, claim = one_claim(store)
        out = ack_one(store, claim, OutcomeKind.DONE, result={"total": 3, "items": ["a"]})
    assert out.accepted
    info = store.fetch_by_id(tid)
    assert info.status is Status.DONE
    assert info.result == {"total": 3, "items": ["a"]}
    assert (info.attempts, info.errors) == (1, ())
    assert info.done_at == T0


def test_done_with_an_unencodable_result_stores_its_repr(store):
    need(store, "introspection")
    tid, claim = one_claim(store)
    value = object()
    assert ack_one(store, claim, OutcomeKind.DONE, result=value).accepted
    assert store.fetch_by_id(tid).result == repr(value)


# RETRY --------------------------------------------------------------------------------------
def test_retry_makes_the_task_due_after_its_delay(store):
    need(store, "outcomes")
    with freeze_time(T0) as frozen:
        tid, claim = one_claim(store)
        assert ack_one(store, claim, OutcomeKind.RETRY, error="ValueError: boom", delay=30).accepted
        assert store.next_due() == T0_TS + 30
        assert store.claim(ctx(), 10) == []
        frozen.tick(timedelta(seconds=30))
        [again] = store.claim(ctx(), 10)
    assert (again.id, again.attempt) == (tid, 2)


def test_retry_is_recorded_as_failed_with_its_error(store):
    need(store, "outcomes", "introspection")
    with freeze_time(T0):
        tid, claim = one_claim(store)
        ack_one(
            store,
            claim,
            OutcomeKind.RETRY,
            error="ValueError: boom",
            traceback="Traceback…",
            delay=30,
        )
    info = store.fetch_by_id(tid)
    assert info.status is Status.FAILED
    assert info.run_at == at(30)
    assert info.attempts == 1
    assert [(e.attempt, e.error, e.traceback, e.at) for e in info.errors] == [
        (1, "ValueError: boom", "Traceback…", T0)
    ]


# DEAD -----------------------------------------------------------------------------------------
def test_dead_is_never_claimed_again(store):
    need(store, "outcomes")
    _, claim = one_claim(store)
    assert ack_one(store, claim, OutcomeKind.DEAD, error="RuntimeError: no").accepted
    assert store.claim(ctx(), 10) == []
    assert store.next_due() is None


def test_dead_is_recorded_with_its_error(store):
    need(store, "outcomes", "introspection")
    with freeze_time(T0):
        tid, claim = one_claim(store)
        ack_one(store, claim, OutcomeKind.DEAD, error="RuntimeError: no")
    info = store.fetch_by_id(tid)
    assert info.status is Status.DEAD
    assert info.done_at == T0
    assert [(e.attempt, e.error) for e in info.errors] == [(1, "RuntimeError: no")]


# RELEASE --------------------------------------------------------------------------------------
def test_release_gives_the_attempt_back(store):
    tid, claim = one_claim(store)
    assert ack_one(store, claim, OutcomeKind.RELEASE).accepted
    [again] = store.claim(ctx(), 10)
    assert (again.id, again.attempt) == (tid, 1)


def test_release_makes_the_task_pending_with_its_previous_attempts(store):
    need(store, "introspection")
    tid, claim = one_claim(store)
    ack_one(store, claim, OutcomeKind.RELEASE)
    info = store.fetch_by_id(tid)
    assert (info.status, info.attempts, info.errors) == (Status.PENDING, 0, ())
    assert info.worker is None


# INTERRUPTED ------------------------------------------------------------------------------------
def test_interrupted_keeps_the_attempt_and_waits_its_delay(store):
    need(store, "outcomes")
    with freeze_time(T0) as frozen:
        tid, claim = one_claim(store)
        out = ack_one(
            store, claim, OutcomeKind.INTERRUPTED, error="interrupted by shutdown", delay=1.0
        )
        assert out.accepted
        assert store.next_due() == T0_TS + 1
        assert store.claim(ctx(), 10) == []
        frozen.tick(timedelta(seconds=1))
        [again] = store.claim(ctx(), 10)
    assert (again.id, again.attempt) == (tid, 2)


def test_interrupted_is_pending_again(store):
    need(store, "outcomes", "introspection")
    tid, claim = one_claim(store)
    ack_one(store, claim, OutcomeKind.INTERRUPTED, error="interrupted by shutdown", delay=1.0)
    info = store.fetch_by_id(tid)
    assert (info.status, info.attempts) == (Status.PENDING, 1)


# Lease fencing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.value)
def test_an_outcome_with_a_wrong_lease_changes_nothing(store, kind):
    if kind not in (OutcomeKind.DONE, OutcomeKind.RELEASE):
        need(store, "outcomes")
    tid, claim = one_claim(store)
    stale = ack_one(store, with_lease(claim, claim.lease + "-zombie"), kind, error="late", delay=0)
    assert stale.accepted is False
    assert store.claim(ctx(), 10) == []  # still running under the real lease
    assert store.next_due() is None
    assert ack_one(store, claim, OutcomeKind.DONE, result="ok").accepted


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.value)
def test_a_wrong_lease_leaves_the_record_untouched(store, kind):
    need(store, "introspection")
    if kind not in (OutcomeKind.DONE, OutcomeKind.RELEASE):
        need(store, "outcomes")
    tid, claim = one_claim(store)
    before = store.fetch_by_id(tid)
    stale = ack_one(
        store, with_lease(claim, "someone-else:1"), kind, result="no", error="late", delay=0
    )
    assert stale.accepted is False
    assert store.fetch_by_id(tid) == before
    assert before.status is Status.RUNNING


def test_an_outcome_for_a_killed_task_is_rejected(store):
    need(store, "introspection")
    tid, claim = one_claim(store)
    assert store.kill(tid) is True
    out = ack_one(store, claim, OutcomeKind.DONE, result="too late")
    assert out.accepted is False
    info = store.fetch_by_id(tid)
    assert info.status is Status.DEAD
    assert info.result is None
    assert [e.error for e in info.errors] == ["killed"]


def test_a_second_ack_of_the_same_claim_is_rejected(store):
    _, claim = one_claim(store)
    assert ack_one(store, claim, OutcomeKind.DONE, result=1).accepted
    assert ack_one(store, claim, OutcomeKind.DONE, result=2).accepted is False
    assert ack_one(store, claim, OutcomeKind.RELEASE).accepted is False
    assert store.claim(ctx(), 10) == []


def test_a_batch_with_a_stale_outcome_records_the_others(store):
    need(store, "outcomes")
    with freeze_time(T0):
        ids = store.push_bulk(["a", "b", "c", "d"])
        a, b, c, d = store.claim(ctx(), 10)
        batch = [
            outcome(store, a, OutcomeKind.DONE, result="A"),
            outcome(store, with_lease(b, "zombie:1"), OutcomeKind.DONE, result="B"),
            outcome(store, c, OutcomeKind.RETRY, error="E", delay=0),
            outcome(store, with_lease(d, "zombie:2"), OutcomeKind.RETRY, error="E", delay=0),
        ]
        store.ack(batch)
        assert [o.accepted for o in batch] == [True, False, True, False]
        assert [x.id for x in store.claim(ctx(), 10)] == [ids[2]]  # only c is due again
    if store.capabilities.introspection:
        statuses = [store.fetch_by_id(i).status for i in ids]
        assert statuses == [Status.DONE, Status.RUNNING, Status.RUNNING, Status.RUNNING]
        assert store.fetch_by_id(ids[0]).result == "A"


def test_ack_of_nothing_is_fine(store):
    store.ack([])
    assert store.next_due() is None


# Follow-ups -------------------------------------------------------------------------------------
def test_follow_ups_are_inserted_with_the_ack(store):
    need(store, "follow_ups")
    _, claim = one_claim(store, "parent")
    t = now()
    children = (store.row(Task("child-1", priority=3), t), store.row(Task("child-2"), t))
    out = ack_one(store, claim, OutcomeKind.DONE, result="ok", follow_ups=children)
    assert out.accepted
    claims = claim_all(store, ctx())
    assert [(args_of(store, c), c.priority, c.attempt) for c in claims] == [
        ("child-1", 3, 1),
        ("child-2", 0, 1),
    ]


def test_follow_ups_of_a_stale_outcome_are_not_written(store):
    need(store, "follow_ups")
    _, claim = one_claim(store, "parent")
    child = store.row(Task("child"), now())
    out = ack_one(
        store, with_lease(claim, "zombie:9"), OutcomeKind.DONE, result="no", follow_ups=(child,)
    )
    assert out.accepted is False
    assert store.next_due() is None
    assert store.claim(ctx(), 10) == []
    assert ack_one(store, claim, OutcomeKind.DONE).accepted  # the real ack, without children
    assert store.claim(ctx(), 10) == []


def test_follow_ups_of_a_killed_task_are_not_written(store):
    need(store, "follow_ups", "introspection")
    tid, claim = one_claim(store, "parent")
    store.kill(tid)
    before = len(store.list_tasks(queue=store.queue))
    out = ack_one(store, claim, OutcomeKind.DONE, follow_ups=(store.row(Task("child"), now()),))
    assert out.accepted is False
    assert len(store.list_tasks(queue=store.queue)) == before == 1


def test_follow_ups_go_with_any_accepted_outcome(store):
    need(store, "follow_ups", "outcomes")
    _, claim = one_claim(store, "parent")
    cleanup = store.row(Task("compensate"), now())
    assert ack_one(store, claim, OutcomeKind.DEAD, error="gave up", follow_ups=(cleanup,)).accepted
    assert [args_of(store, c) for c in claim_all(store, ctx())] == ["compensate"]


# Attempt accounting (store.py: a claim starts attempt n, a release takes it back, an
# interruption keeps it) ---------------------------------------------------------------------
def test_attempt_accounting(store):
    need(store, "outcomes")
    with freeze_time(T0):
        tid = store.push("x")
        run = ctx()
        seen = []

        def next_claim():
            [c] = store.claim(run, 10)
            seen.append(c.attempt)
            return c

        ack_one(store, next_claim(), OutcomeKind.RETRY, error="1", delay=0)  # attempt 1 failed
        ack_one(store, next_claim(), OutcomeKind.RELEASE)  # attempt 2 never started
        ack_one(store, next_claim(), OutcomeKind.INTERRUPTED, error="stop", delay=0)  # 2 kept
        ack_one(store, next_claim(), OutcomeKind.DONE, result="ok")  # attempt 3
    assert seen == [1, 2, 2, 3]
    if store.capabilities.introspection:
        assert store.fetch_by_id(tid).attempts == 3


def test_the_claimed_attempt_is_the_stored_attempts(store):
    need(store, "introspection")
    tid, claim = one_claim(store)
    info = store.fetch_by_id(tid)
    assert (info.status, info.attempts, claim.attempt) == (Status.RUNNING, 1, 1)


def test_two_outcomes_for_one_claim_in_a_batch_accept_only_the_first(store):
    need(store, "introspection")
    tid, claim = one_claim(store)
    batch = [
        outcome(store, claim, OutcomeKind.DONE, result=1),
        outcome(store, claim, OutcomeKind.DONE, result=2),
    ]
    store.ack(batch)
    # the second finds the task no longer running under its lease: it changed nothing
    assert [o.accepted for o in batch] == [True, False]
    assert store.fetch_by_id(tid).result == 1


# An outcome that cannot be written ------------------------------------------------------------
def _ack_with_a_taken_follow_up_id(store):
    """Two claimed tasks; the second's outcome brings a follow-up whose explicit id is
    taken (by a third task). Returns (ids, batch, what ack raised or None)."""
    base = random.randrange(10**12, 2 * 10**12)
    taken = store.push_task(Task("keeper", id=base))
    first, second = (
        store.push_task(Task("first", priority=1)),
        store.push_task(Task("second", priority=1)),
    )
    c1, c2 = store.claim(ctx(), 2)
    assert (c1.id, c2.id) == (first, second)
    clash = store.row(Task("clash", id=base), now())
    batch = [
        outcome(store, c1, OutcomeKind.DONE, result="ok"),
        outcome(store, c2, OutcomeKind.DONE, result="ok", follow_ups=(clash,)),
    ]
    try:
        store.ack(batch)
    except Exception as exc:  # what the store raised is the subject
        return (taken, first, second), batch, exc
    return (taken, first, second), batch, None


def test_a_follow_up_with_a_taken_id_never_replaces_a_task(store):
    need(store, "follow_ups", "introspection")
    (taken, _, _), _, _ = _ack_with_a_taken_follow_up_id(store)
    assert store.fetch_by_id(taken).args == "keeper"
    assert [t.args for t in store.list_tasks(queue=store.queue, limit=100) if t.id == taken] == [
        "keeper"
    ]


def test_a_batch_that_cannot_be_written_raises_and_writes_nothing(store):
    """store.py, ``Store.ack``: all or nothing. The worker then tries each outcome alone
    and writes one that still fails as Dead with the reason."""
    need(store, "follow_ups", "introspection")
    (taken, first, second), batch, raised = _ack_with_a_taken_follow_up_id(store)
    assert raised is not None
    assert store.fetch_by_id(first).status is Status.RUNNING
    assert store.fetch_by_id(second).status is Status.RUNNING
    assert store.fetch_by_id(taken).args == "keeper"


def test_the_worker_writes_an_unwritable_outcome_as_dead_and_the_others(store):
    need(store, "follow_ups", "introspection")
    base = random.randrange(10**12, 2 * 10**12)
    taken = store.push_task(Task("keeper", id=base))
    ids = store.push_bulk(["fine", "clash", "fine"])
    real_ack, real_ack_and_claim = store.ack, store.ack_and_claim

    def clash(outcomes):
        for o in outcomes:
            if o.task is not None and o.task.args == "clash" and o.kind is OutcomeKind.DONE:
                o.follow_ups = (store.row(Task("clash", id=base), now()),)

    def ack_with_a_clash(outcomes):
        clash(outcomes)
        return real_ack(outcomes)

    def ack_and_claim_with_a_clash(outcomes, ctx, limit):  # outcomes may ride on a claim
        clash(outcomes)
        return real_ack_and_claim(outcomes, ctx, limit)

    store.ack = ack_with_a_clash
    store.ack_and_claim = ack_and_claim_with_a_clash
    WorkerBuilder("w").backend(store).build(lambda item: item).run_until_idle()
    statuses = [store.fetch_by_id(i).status for i in ids]
    assert statuses == [Status.DONE, Status.DEAD, Status.DONE]
    assert "the outcome could not be stored" in store.fetch_by_id(ids[1]).errors[-1].error
    assert store.fetch_by_id(taken).args == "keeper"
