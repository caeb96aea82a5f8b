"""The push side (``TaskSink`` on ``row()`` and ``insert()``) and the codec, per store."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

import pytest
from contract_support import args_of, claim_all, ctx, need, now

from taskpipe import CodecError, PushError, Task, TaskId, WorkerBuilder
from taskpipe.store import Outcome, OutcomeKind


@dataclass
class Order:
    sku: str
    qty: int
    tags: list[str] = field(default_factory=list)


def explicit_id() -> int:
    """An explicit task id no other test (sharing an engine database) will use."""
    return random.randrange(10**12, 2 * 10**12)


# Ids and order -----------------------------------------------------------------------
def test_push_methods_return_ids_in_push_order(store):
    first = store.push("a")
    bulk = store.push_bulk(["b", "c", "d"])
    task = store.push_task(Task("e"))
    ids = [first, *bulk, task]
    assert all(isinstance(i, TaskId) for i in ids)
    assert len(set(ids)) == 5

    claims = claim_all(store, ctx())
    assert [(c.id, args_of(store, c)) for c in claims] == list(zip(ids, "abcde", strict=True))


def test_push_bulk_of_nothing_writes_nothing(store):
    assert store.push_bulk([]) == []
    assert store.next_due() is None


def test_push_stream_and_push_all_return_counts_and_keep_order(store):
    assert store.push_stream(iter(range(5)), batch_size=2) == 5
    assert store.push_all((Task(f"t{i}") for i in range(3)), batch_size=2) == 3
    claims = claim_all(store, ctx())
    assert [args_of(store, c) for c in claims] == [0, 1, 2, 3, 4, "t0", "t1", "t2"]


def test_push_task_keeps_its_options_on_the_claim(store):
    tid = store.push_task(Task({"n": 1}, priority=7, max_attempts=4, meta={"who": "me"}))
    [claim] = store.claim(ctx(), 10)
    assert claim.id == tid
    assert claim.queue == store.queue
    assert (claim.priority, claim.max_attempts, claim.meta) == (7, 4, {"who": "me"})
    assert args_of(store, claim) == {"n": 1}


# All or nothing ----------------------------------------------------------------------
def test_push_bulk_is_all_or_nothing_on_an_unencodable_value(store):
    with pytest.raises(CodecError):
        store.push_bulk([1, 2, object(), 4])
    assert store.next_due() is None
    assert store.claim(ctx(), 10) == []


def test_push_all_is_all_or_nothing_on_unencodable_meta(store):
    with pytest.raises(CodecError):
        store.push_all([Task(1), Task(2, meta={"bad": object()})])
    assert store.next_due() is None


def test_push_stream_keeps_the_batches_before_a_bad_value(store):
    with pytest.raises(CodecError, match="after 2 items"):
        store.push_stream([1, 2, 3, object(), 5], batch_size=2)
    assert [args_of(store, c) for c in claim_all(store, ctx())] == [1, 2]


def test_an_explicit_duplicate_id_rejects_the_whole_batch(store):
    base = explicit_id()
    assert store.push_task(Task("first", id=base)) == base
    with pytest.raises(PushError):
        store.push_all([Task("new", id=base + 1), Task("duplicate", id=base)])
    with pytest.raises(PushError):  # a duplicate inside the batch itself
        store.push_all([Task("x", id=base + 2), Task("y", id=base + 2)])
    assert store.push_task(Task("later", id=base + 3)) == base + 3

    claims = claim_all(store, ctx())
    assert [(c.id, args_of(store, c)) for c in claims] == [(base, "first"), (base + 3, "later")]


def test_an_explicit_id_taken_by_a_plain_push_is_refused(store):
    """``push``/``push_bulk`` may store their tasks apart from the others (Redis does):
    an explicit id still sees them, waiting or running."""
    waiting, running = store.push_bulk(["waiting", "running"])
    [claim] = store.claim(ctx(), 1)
    assert claim.id == waiting
    for taken in (waiting, running):
        with pytest.raises(PushError):
            store.push_task(Task("duplicate", id=taken))
    assert [args_of(store, c) for c in claim_all(store, ctx())] == ["running"]


def test_insert_is_all_or_nothing_on_a_duplicate_id(store):
    base = explicit_id()
    store.push_task(Task("first", id=base))
    t = now()
    rows = [store.row(Task("a"), t), store.row(Task("b", id=base), t)]
    with pytest.raises(PushError):
        store.insert(rows)
    assert [args_of(store, c) for c in claim_all(store, ctx())] == ["first"]


# Keys ----------------------------------------------------------------------------------
def test_a_keyed_push_is_idempotent(store):
    need(store, "keys")
    key = f"contract:{uuid.uuid4().hex}"
    first = store.push_task(Task("a", key=key))
    again = store.push_task(Task("b", key=key))
    assert again == first
    claims = claim_all(store, ctx())
    assert [(c.id, args_of(store, c)) for c in claims] == [(first, "a")]


def test_a_key_stays_taken_after_its_task_is_done(store):
    need(store, "keys")
    key = f"contract:{uuid.uuid4().hex}"
    first = store.push_task(Task("a", key=key))
    [claim] = store.claim(ctx(), 10)
    store.ack([Outcome(claim, OutcomeKind.DONE)])
    assert store.push_task(Task("b", key=key)) == first
    assert store.next_due() is None


def test_a_key_twice_in_one_insert_gives_one_task(store):
    need(store, "keys")
    key = f"contract:{uuid.uuid4().hex}"
    t = now()
    ids = store.insert(
        [
            store.row(Task("a", key=key), t),
            store.row(Task("b", key=key), t),
            store.row(Task("c"), t),
        ]
    )
    assert ids[0] == ids[1] != ids[2]
    assert [args_of(store, c) for c in claim_all(store, ctx())] == ["a", "c"]


def test_last_key_finds_the_greatest_key_with_the_prefix(store):
    need(store, "keys")
    prefix = f"contract:{uuid.uuid4().hex}:"
    for suffix in ("2030-01-01", "2030-03-01", "2030-02-01"):
        store.push_task(Task(suffix, key=prefix + suffix))
    assert store.last_key(prefix) == prefix + "2030-03-01"
    assert store.last_key(f"contract:{uuid.uuid4().hex}:") is None


# Codec -----------------------------------------------------------------------------------
def test_an_unencodable_push_raises_codec_error_and_writes_nothing(store):
    with pytest.raises(CodecError):
        store.push(object())
    with pytest.raises(CodecError):
        store.push_task(Task({"when": object()}))
    assert store.next_due() is None


def test_a_handler_annotated_with_a_dataclass_gets_the_dataclass(store):
    seen: list[Order] = []

    def handle(order: Order) -> int:
        seen.append(order)
        return order.qty * 2

    store.push(Order("apple", 2, ["red"]))
    store.push_bulk([Order("pear", 3), Order("plum", 5, ["blue", "ripe"])])
    worker = WorkerBuilder("codec").backend(store).build(handle)
    assert worker.run_until_idle() == 3
    assert seen == [
        Order("apple", 2, ["red"]),
        Order("pear", 3),
        Order("plum", 5, ["blue", "ripe"]),
    ]
    assert all(type(order) is Order for order in seen)


def test_args_that_do_not_fit_the_annotation_make_the_task_dead(store):
    need(store, "outcomes", "introspection")

    def handle(order: Order) -> None:
        raise AssertionError("never called")

    tid = store.push({"sku": "apple"})  # qty missing
    assert WorkerBuilder("codec").backend(store).build(handle).run_until_idle() == 1
    info = store.fetch_by_id(tid)
    assert info.status.value == "dead"
    assert "cannot decode" in info.errors[-1].error
