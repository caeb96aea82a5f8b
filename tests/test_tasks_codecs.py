"""Tasks (validation, ids, statuses, attempts) and codecs (typed decoding end to end
through a worker, MsgPack and Pickle round trips, encode failures that write nothing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest

from taskpipe import (
    Attempt,
    CodecError,
    JsonCodec,
    MsgPackCodec,
    PickleCodec,
    Status,
    Task,
    TaskId,
    TaskpipeError,
    TaskSinkError,
    WorkerBuilder,
)
from taskpipe.sqlite import SqliteStorage


def row_count(db) -> int:
    return db.execute_sql("SELECT count(*) FROM taskpipe_jobs").fetchone()[0]


def statuses(db) -> dict[int, str]:
    return dict(db.execute_sql("SELECT id, status FROM taskpipe_jobs").fetchall())


def run_collect(storage, handler):
    """Run ``handler`` over everything due in ``storage``; return the worker's count."""
    worker = WorkerBuilder("codec-test").backend(storage).build(handler)
    return worker.run_until_idle()


# Task -------------------------------------------------------------------------------
class TestTaskValidation:
    @pytest.mark.parametrize("bad", ["high", 1.5, None, True])
    def test_priority_must_be_an_int(self, bad):
        with pytest.raises(TypeError, match="priority must be an int"):
            Task(1, priority=bad)
        with pytest.raises(TypeError, match="priority must be an int"):
            Task.builder(1).priority(bad).build()

    def test_naive_run_after_is_rejected_at_construction(self):
        naive = datetime(2030, 1, 1, 12, 0)
        with pytest.raises(ValueError, match="naive datetime"):
            Task(1, run_after=naive)
        with pytest.raises(ValueError, match="naive datetime"):
            Task.builder(1).run_after(naive).build()

    def test_run_after_of_another_type_is_rejected(self):
        with pytest.raises(
            TypeError, match="run_after must be a timedelta, seconds or an aware datetime"
        ):
            Task(1, run_after="30")

    def test_run_after_in_seconds_is_a_delay(self):
        assert Task(1, run_after=30).run_after == timedelta(seconds=30)
        assert Task.builder(1).run_after(1.5).build().run_after == timedelta(seconds=1.5)
        with pytest.raises(ValueError, match="negative"):
            Task(1, run_after=-1)

    def test_builder_meta_takes_a_dict_or_keywords(self):
        assert Task.builder(1).meta({"a": 1}, b=2).meta(c=3).build().meta == {
            "a": 1,
            "b": 2,
            "c": 3,
        }

    @pytest.mark.parametrize("field", ["priority", "id", "max_attempts"])
    def test_integers_must_fit_in_64_bits(self, field):
        with pytest.raises(ValueError, match="64-bit"):
            Task(1, **{field: 2**63})

    @pytest.mark.parametrize("bad", [0, -1, 1.0, "3"])
    def test_max_attempts_must_be_positive(self, bad):
        with pytest.raises(ValueError, match="max_attempts"):
            Task(1, max_attempts=bad)
        with pytest.raises(ValueError, match="max_attempts"):
            Task.builder(1).max_attempts(bad).build()

    def test_valid_task_and_builder_agree(self):
        due = datetime(2030, 1, 1, tzinfo=UTC)
        built = (
            Task.builder({"a": 1})
            .priority(3)
            .run_after(due)
            .max_attempts(4)
            .meta(source="test")
            .meta(n=1)
            .key("k-1")
            .build()
        )
        direct = Task(
            {"a": 1},
            priority=3,
            run_after=due,
            max_attempts=4,
            meta={"source": "test", "n": 1},
            key="k-1",
        )
        assert built == direct
        assert built.meta == {"source": "test", "n": 1}
        assert built.id is None and built.attempt == 0

    def test_builder_id_is_a_task_id(self):
        task = Task.builder("x").id(17).build()
        assert task.id == 17 and isinstance(task.id, TaskId)

    def test_meta_none_becomes_empty_dict(self):
        assert Task(1, meta=None).meta == {}

    def test_run_at_from_timedelta_and_aware_datetime(self):
        assert Task(1).run_at(1000.0) == 1000.0
        assert Task(1, run_after=timedelta(seconds=30)).run_at(1000.0) == 1030.0
        paris_noon = datetime(2030, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        assert (
            Task(1, run_after=paris_noon).run_at(0.0)
            == datetime(2030, 6, 1, 10, 0, tzinfo=UTC).timestamp()
        )


class TestIdsStatusAttempt:
    def test_task_id_is_an_int(self):
        tid = TaskId(5)
        assert isinstance(tid, int) and tid == 5 and tid + 1 == 6
        assert repr(tid) == "TaskId(5)"
        assert str(tid) == "5" and f"{tid}" == "5"  # for logs, files, URLs
        assert {TaskId(5): "x"}[5] == "x"

    def test_status_values(self):
        assert [s.value for s in Status] == ["pending", "running", "done", "failed", "dead"]
        assert Status("done") is Status.DONE
        assert Status.DEAD == "dead" and str(Status.FAILED) == "failed"
        assert isinstance(Status.PENDING, str)

    def test_attempt_is_an_int(self):
        attempt = Attempt(1)
        assert isinstance(attempt, int) and attempt == 1


# Typed decoding, end to end --------------------------------------------------------
@dataclass
class Item:
    sku: str
    qty: int


@dataclass
class Order:
    id: int
    items: list[Item]
    placed: datetime
    tags: tuple[str, ...] = ()
    extra: dict[str, int] = field(default_factory=dict)


class TestJsonDecodingThroughAWorker:
    def test_dataclass_with_nested_list_datetime_tuple_dict(self, storage, db):
        placed = datetime(2030, 5, 4, 3, 2, 1, tzinfo=UTC)
        order = Order(1001, [Item("a", 2), Item("b", 1)], placed, ("gift", "fast"), {"x": 1})
        storage.push(order)
        # what is stored is readable JSON, not pickle
        payload = db.execute_sql("SELECT payload FROM taskpipe_jobs").fetchone()[0]
        assert b'"sku":"a"' in bytes(payload)
        got: list[Order] = []

        def handle(o: Order) -> None:
            got.append(o)

        assert run_collect(storage, handle) == 1
        assert got == [order]
        assert isinstance(got[0], Order) and isinstance(got[0].items[0], Item)
        assert isinstance(got[0].tags, tuple)
        assert got[0].placed == placed and got[0].placed.tzinfo is not None

    def test_lists_tuples_dicts_datetimes_and_primitives(self, storage, db):
        when = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
        cases = [
            ("list", [1, 2, 3], list[int]),
            ("tuple", (1, "two", 3.5), tuple[int, str, float]),
            ("dict", {"a": when}, dict[str, datetime]),
            ("datetime", when, datetime),
            ("str", "hello", str),
            ("float", 2.5, float),
            ("none", None, type(None)),
        ]
        for name, value, annotation in cases:
            q = SqliteStorage(db, queue=name)
            q.push(value)
            got = []

            def handle(args, _got=got):
                _got.append(args)

            handle.__annotations__["args"] = annotation
            assert run_collect(q, handle) == 1, name
            assert got == [value], name
            assert type(got[0]) is type(value), name
        assert set(statuses(db).values()) == {"done"}

    def test_payload_that_does_not_fit_the_annotation_is_dead(self, storage, db):
        bad = storage.push({"not": "an int"})
        good = storage.push(7)
        got = []

        def handle(n: int) -> None:
            got.append(n)

        run_collect(storage, handle)
        assert got == [7]
        assert statuses(db) == {bad: "dead", good: "done"}
        (error,) = db.execute_sql(
            "SELECT error FROM taskpipe_errors WHERE job_id = ?", (bad,)
        ).fetchone()
        assert "cannot decode" in error

    def test_untyped_handler_gets_plain_json_values(self, storage):
        storage.push({"a": [1, 2]})
        got = []
        run_collect(storage, lambda args: got.append(args))
        assert got == [{"a": [1, 2]}]


# Other codecs ----------------------------------------------------------------------
class TestMsgPackAndPickle:
    def test_msgpack_round_trip_typed(self):
        codec = MsgPackCodec()
        order = Order(1, [Item("a", 1)], datetime(2030, 1, 1, tzinfo=UTC), ("t",), {"k": 2})
        data = codec.encode(order)
        assert isinstance(data, bytes)
        assert codec.decode(data, Order) == order
        assert codec.decode(codec.encode([1, "x", None])) == [1, "x", None]
        with pytest.raises(CodecError):
            codec.decode(b"\xc1", int)  # 0xc1 is never used in msgpack

    def test_msgpack_store_end_to_end(self, db):
        store = SqliteStorage(db, queue="mp", codec=MsgPackCodec)
        store.push(Item("z", 9))
        got = []

        def handle(item: Item) -> dict:
            got.append(item)
            return {"ok": item.qty}

        assert run_collect(store, handle) == 1
        assert got == [Item("z", 9)]
        result = db.execute_sql("SELECT result FROM taskpipe_jobs").fetchone()[0]
        assert MsgPackCodec().decode(result) == {"ok": 9}

    def test_pickle_round_trip_of_arbitrary_objects(self, db):
        codec = PickleCodec()
        value = {"set": {1, 2}, "bytes": b"\x00", "complex": 1 + 2j, "item": Item("p", 1)}
        assert codec.decode(codec.encode(value)) == value
        with pytest.raises(CodecError, match="pickle"):
            codec.encode(lambda: None)  # lambdas cannot be pickled
        with pytest.raises(CodecError, match="cannot decode"):
            codec.decode(b"not a pickle")

        store = SqliteStorage(db, queue="pk", codec=PickleCodec())
        store.push(value)
        got = []

        def handle(obj):
            got.append(obj)

        assert run_collect(store, handle) == 1
        assert got == [value]

    def test_json_codec_errors(self):
        codec = JsonCodec()
        with pytest.raises(CodecError, match="cannot decode"):
            codec.decode(b"{not json")
        with pytest.raises(CodecError, match="json"):
            codec.encode(object())


# Encode failures write nothing -------------------------------------------------------
class Unencodable:
    pass


class TestEncodeFailureWritesNothing:
    def test_codec_error_is_a_task_sink_error(self):
        assert issubclass(CodecError, TaskSinkError)
        assert issubclass(TaskSinkError, TaskpipeError)

    def test_push(self, storage, db):
        with pytest.raises(CodecError) as info:
            storage.push(Unencodable())
        assert isinstance(info.value, TaskSinkError)
        assert "Unencodable" in str(info.value)
        assert row_count(db) == 0

    def test_push_task(self, storage, db):
        with pytest.raises(CodecError):
            storage.push_task(Task(Unencodable(), priority=3))
        assert row_count(db) == 0

    def test_push_task_with_unencodable_meta(self, storage, db):
        with pytest.raises(CodecError):
            storage.push_task(Task(1, meta={"x": Unencodable()}))
        assert row_count(db) == 0

    def test_push_bulk_with_one_bad_item_writes_nothing(self, storage, db):
        items = [1, 2, 3, Unencodable(), 5, 6]
        with pytest.raises(CodecError):
            storage.push_bulk(items)
        assert row_count(db) == 0
        # the store still works afterwards
        assert storage.push_bulk([1, 2]) == [1, 2]
        assert row_count(db) == 2

    def test_push_all_with_one_bad_task_keeps_earlier_batches(self, storage, db):
        tasks = [Task(i) for i in range(7)] + [Task(Unencodable())] + [Task(i) for i in range(3)]
        with pytest.raises(CodecError, match="after 5 items were pushed"):
            storage.push_all(tasks, batch_size=5)
        assert row_count(db) == 5

    def test_push_stream_keeps_earlier_batches_and_says_how_many(self, storage, db):
        def items():
            yield from range(25)
            yield Unencodable()
            yield from range(100)

        with pytest.raises(CodecError, match="after 20 items were pushed") as info:
            storage.push_stream(items(), batch_size=10)
        assert isinstance(info.value, TaskSinkError)
        # batches 0-9 and 10-19 committed; the batch holding the bad value wrote nothing
        assert row_count(db) == 20
        payloads = [
            bytes(p) for (p,) in db.execute_sql("SELECT payload FROM taskpipe_jobs ORDER BY id")
        ]
        assert payloads == [str(i).encode() for i in range(20)]


def test_task_ids_and_attempts_encode_as_plain_ints(storage):
    """A TaskId is an int subclass: it can be pushed, and returned as a result."""
    first = storage.push("first")
    second = storage.push({"parent": first})
    results = {}

    def handler(args: object, task_id: TaskId, attempt: Attempt) -> dict:
        results[task_id] = args
        return {"id": task_id, "attempt": attempt}

    WorkerBuilder("ids").backend(storage).build(handler).run_until_idle()
    assert results[second] == {"parent": int(first)}
    row = storage.db.execute_sql(
        "SELECT result FROM taskpipe_jobs WHERE id = ?", (second,)
    ).fetchone()
    assert JsonCodec().decode(row[0]) == {"id": int(second), "attempt": 1}


@pytest.mark.parametrize("delay", [1e20, float("nan"), float("inf"), 4e9])
def test_a_run_after_past_a_century_is_a_clear_value_error(delay):
    with pytest.raises(ValueError, match="run_after must be at most"):
        Task(1, run_after=delay)
    assert Task(1, run_after=3e9).run_after.total_seconds() == 3e9  # about 95 years: fine
