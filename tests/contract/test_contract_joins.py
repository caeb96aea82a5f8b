"""Joins (the ``joins`` capability): parts recorded with acks, a join completed once."""

from __future__ import annotations

import threading
import uuid

from contract_support import claim_all, ctx, need, now, outcome, with_lease

from taskpipe import Task
from taskpipe.store import JoinPart, OutcomeKind

THREADS = 8
ROUNDS = 15


def _join_key() -> str:
    return f"join-{uuid.uuid4().hex[:12]}"


def _part(store, key, slots, slot, value="v", done_value="joined"):
    """A part whose completing row is not keyed: a second completion would show."""
    return JoinPart(key, slots, slot, store.codec.encode(value), store.row(Task(done_value), now()))


def _parents(store, count):
    store.push_bulk([f"parent-{i}" for i in range(count)])
    claims = claim_all(store, ctx())
    assert len(claims) == count
    return claims


def _joined(store, done_value="joined"):
    """The tasks now due that a join inserted (payload ``done_value``). They are claimed
    and then acked: left Running under a run that never beats, another test's worker
    beating on the same database could recover them into a later call."""
    claims = claim_all(store, ctx())
    if claims:
        store.ack([outcome(store, c, OutcomeKind.DONE) for c in claims])
    return [c for c in claims if store.codec.decode(c.payload) == done_value]


def _race(store) -> str:
    """``THREADS`` parents, released together by a barrier, ack their parts of one join."""
    key = _join_key()
    claims = _parents(store, THREADS)
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def parent(slot: int, claim) -> None:
        out = outcome(
            store,
            claim,
            OutcomeKind.DONE,
            result=slot,
            join_parts=(_part(store, key, THREADS, slot, value=slot, done_value=key),),
        )
        try:
            barrier.wait(timeout=30)
            store.ack([out])
            assert out.accepted
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            store.close_thread_connection()

    threads = [threading.Thread(target=parent, args=pair) for pair in enumerate(claims)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return key


def test_concurrent_parents_complete_a_join_exactly_once(store):
    need(store, "joins")
    for _ in range(ROUNDS):
        key = _race(store)
        assert len(_joined(store, done_value=key)) == 1
        assert store.join_parts(key) == [
            (slot, store.codec.encode(slot)) for slot in range(THREADS)
        ]


def test_a_join_is_not_complete_before_its_last_part(store):
    need(store, "joins")
    key = _join_key()
    first, second, third = _parents(store, 3)
    store.ack([outcome(store, first, OutcomeKind.DONE, join_parts=(_part(store, key, 3, 0),))])
    store.ack([outcome(store, second, OutcomeKind.DONE, join_parts=(_part(store, key, 3, 1),))])
    assert _joined(store) == []
    store.ack([outcome(store, third, OutcomeKind.DONE, join_parts=(_part(store, key, 3, 2),))])
    assert len(_joined(store)) == 1


def test_a_rejected_outcome_records_no_part(store):
    need(store, "joins")
    key = _join_key()
    first, second = _parents(store, 2)
    zombie = outcome(
        store,
        with_lease(first, "zombie:1"),
        OutcomeKind.DONE,
        join_parts=(_part(store, key, 2, 0, value="zombie"),),
    )
    store.ack([zombie])
    assert not zombie.accepted
    assert store.join_parts(key) == []
    store.ack([outcome(store, second, OutcomeKind.DONE, join_parts=(_part(store, key, 2, 1),))])
    assert _joined(store) == []  # the zombie's part did not count
    store.ack(
        [outcome(store, first, OutcomeKind.DONE, join_parts=(_part(store, key, 2, 0, "real"),))]
    )
    assert len(_joined(store)) == 1
    assert store.join_parts(key)[0] == (0, store.codec.encode("real"))


def test_a_duplicate_part_counts_once_and_keeps_the_first_value(store):
    need(store, "joins")
    key = _join_key()
    a, b, c = _parents(store, 3)
    store.ack([outcome(store, a, OutcomeKind.DONE, join_parts=(_part(store, key, 2, 0, "a"),))])
    store.ack([outcome(store, b, OutcomeKind.DONE, join_parts=(_part(store, key, 2, 0, "b"),))])
    assert _joined(store) == []
    assert store.join_parts(key) == [(0, store.codec.encode("a"))]
    store.ack([outcome(store, c, OutcomeKind.DONE, join_parts=(_part(store, key, 2, 1, "c"),))])
    assert len(_joined(store)) == 1


def test_parts_of_one_batch_count_together(store):
    need(store, "joins")
    key = _join_key()
    claims = _parents(store, 3)
    store.ack(
        [
            outcome(store, claim, OutcomeKind.DONE, join_parts=(_part(store, key, 3, slot),))
            for slot, claim in enumerate(claims)
        ]
    )
    assert len(_joined(store)) == 1


def test_parts_come_back_in_slot_order(store):
    need(store, "joins")
    key = _join_key()
    claims = _parents(store, 3)
    for slot, claim in zip((2, 0, 1), claims, strict=True):
        store.ack(
            [
                outcome(
                    store,
                    claim,
                    OutcomeKind.DONE,
                    join_parts=(_part(store, key, 3, slot, {"slot": slot}),),
                )
            ]
        )
    assert store.join_parts(key) == [(s, store.codec.encode({"slot": s})) for s in range(3)]
    assert store.join_parts(_join_key()) == []


def test_a_keyed_join_row_is_inserted_once(store):
    need(store, "joins", "keys")
    key = _join_key()
    row = store.row(Task("keyed-join", key=f"{key}:row"), now())
    a, b = _parents(store, 2)
    store.push_task(Task("keyed-join", key=f"{key}:row"))  # already there: the join adds none
    store.ack(
        [
            outcome(store, a, OutcomeKind.DONE, join_parts=(JoinPart(key, 2, 0, b"1", row),)),
            outcome(store, b, OutcomeKind.DONE, join_parts=(JoinPart(key, 2, 1, b"2", row),)),
        ]
    )
    assert len(_joined(store, "keyed-join")) == 1


def test_tasks_are_found_by_key_prefix_greatest_first(store):
    need(store, "joins")
    run = uuid.uuid4().hex[:12]
    for name in ("a", "c", "b", "b:1"):
        store.push_task(Task(name, key=f"wf:{run}:{name}"))
    store.push_task(Task("other", key=f"wf:{run}x:a"))
    found = store.tasks_with_key_prefix(f"wf:{run}:")
    assert [key for key, _ in found] == [f"wf:{run}:{n}" for n in ("c", "b:1", "b", "a")]
    assert [info.args for _, info in found] == ["c", "b:1", "b", "a"]
    page = store.tasks_with_key_prefix(f"wf:{run}:", limit=2, before=f"wf:{run}:b:1")
    assert [key for key, _ in page] == [f"wf:{run}:b", f"wf:{run}:a"]


def test_purging_a_joins_task_forgets_the_join(store):
    need(store, "joins")
    need(store, "introspection")
    key = _join_key()
    first, second = _parents(store, 2)
    row = store.row(Task("joined", key=key), now())  # the join's task, keyed by the join
    for slot, claim in enumerate((first, second)):
        part = JoinPart(key, 2, slot, store.codec.encode(slot), row)
        store.ack([outcome(store, claim, OutcomeKind.DONE, join_parts=(part,))])
    assert [p[0] for p in store.join_parts(key)] == [0, 1]
    assert len(_joined(store)) == 1  # claimed and acked Done
    store.purge("done", 0)
    assert store.join_parts(key) == []
