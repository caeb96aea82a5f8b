"""``taskpipe.testing``: RecordingStore, run_until_idle and the pytest plugin."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points

import pytest
from freezegun import freeze_time

import taskpipe.testing as testing
from taskpipe import (
    CodecError,
    RetryPolicy,
    Router,
    Status,
    Task,
    TaskFailed,
    TaskId,
    WorkerBuilder,
    WorkerContext,
    events,
)
from taskpipe.memory import MemoryBackend
from taskpipe.sqlite import SqliteStorage
from taskpipe.store import Outcome, OutcomeKind
from taskpipe.testing import Call, Eager, RecordingStore, eager, run_until_idle

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class Mail:
    to: str
    subject: str


# RecordingStore ---------------------------------------------------------------------------
def test_recording_store_is_a_memory_backend_with_its_options():
    store = RecordingStore(queue="mails", keep_finished=5)
    assert isinstance(store, MemoryBackend)
    assert (store.queue, store.keep_finished, store.calls) == ("mails", 5, [])
    assert store.capabilities == MemoryBackend.capabilities


def test_pushes_are_recorded_as_inserts_of_their_rows():
    store = RecordingStore(queue="mails")
    first = store.push({"to": "a"})
    more = store.push_bulk(["b", "c"])
    [one, bulk] = store.calls_to("insert")
    assert one.name == "insert"
    assert [row.payload for row in one.args[0]] == [store.codec.encode({"to": "a"})]
    assert [row.queue for row in bulk.args[0]] == ["mails", "mails"]
    assert [first, *more] == [TaskId(1), TaskId(2), TaskId(3)]
    assert store.call_names() == ["insert", "insert"]


def test_claim_ack_and_next_due_are_recorded_with_their_arguments():
    store = RecordingStore()
    store.push("x")
    store.reset()
    ctx = WorkerContext("t", capacity=4, report=lambda exc: None)
    [claim] = store.claim(ctx, 3)
    outcome = Outcome(claim, OutcomeKind.DONE)
    store.ack([outcome])
    assert store.next_due() is None
    assert store.calls == [
        Call("claim", (ctx, 3)),
        Call("ack", ((outcome,),)),
        Call("next_due", ()),
    ]
    assert store.calls_to("ack")[0].args[0][0].accepted is True


def test_reset_forgets_the_calls_but_keeps_the_tasks():
    store = RecordingStore()
    tid = store.push("kept")
    store.reset()
    assert store.calls == []
    assert store.fetch_by_id(tid).status is Status.PENDING
    store.next_due()
    assert store.call_names() == ["next_due"]


def test_an_unencodable_push_raises_before_any_insert():
    store = RecordingStore()
    with pytest.raises(CodecError):
        store.push(object())
    with pytest.raises(CodecError):
        store.push_bulk(["fine", object()])
    assert store.calls == []
    assert store.list_tasks() == []


def test_a_worker_run_is_recorded_primitive_by_primitive():
    store = RecordingStore()
    store.push("x")
    store.reset()
    assert WorkerBuilder("w").backend(store).build(lambda _x: None).run_until_idle() == 1
    names = store.call_names()
    assert names[:4] == ["check_setup", "open_run", "beat", "claim"]
    assert names[-1] == "retire"
    assert "close_run" in names and "idle" in names
    [ack] = [call for call in store.calls_to("ack") if call.args[0]]
    assert [(o.kind, o.accepted) for o in ack.args[0]] == [(OutcomeKind.DONE, True)]


# run_until_idle ---------------------------------------------------------------------------------
def test_run_until_idle_on_a_store_decodes_dataclasses_and_returns_successes():
    store = RecordingStore()
    ids = store.push_bulk([Mail("a@example.com", "hi"), Mail("b@example.com", "yo")])
    received: list[Mail] = []

    def send(mail: Mail) -> str:
        received.append(mail)
        return f"sent to {mail.to}"

    ran = run_until_idle(store, send)
    assert received == [Mail("a@example.com", "hi"), Mail("b@example.com", "yo")]
    assert ran == [
        events.Success(ids[0], "sent to a@example.com"),
        events.Success(ids[1], "sent to b@example.com"),
    ]
    assert run_until_idle(store, send) == []


def test_run_until_idle_reports_retries_and_deaths():
    store = RecordingStore()

    def fail(_value: str) -> None:
        raise ValueError("nope")

    with freeze_time(T0) as frozen:
        tid = store.push("x")
        policy = RetryPolicy.retries(1).backoff(base=5, jitter=0)
        assert run_until_idle(store, fail, retry=policy) == [
            events.Retry(tid, 1, T0 + timedelta(seconds=5))
        ]
        frozen.tick(timedelta(seconds=5))
        assert run_until_idle(store, fail, retry=policy) == [events.Dead(tid, "ValueError: nope")]
    assert store.fetch_by_id(tid).status is Status.DEAD


def test_run_until_idle_on_a_built_worker_adds_its_collector_for_that_run_only(taskpipe_storage):
    seen: list[events.Event] = []
    worker = (
        WorkerBuilder("built")
        .backend(taskpipe_storage)
        .on_event(lambda _ctx, event: seen.append(event))
        .build(lambda n: n + 1)
    )
    first = taskpipe_storage.push(1)
    assert run_until_idle(worker) == [events.Success(first, 2)]
    second = taskpipe_storage.push(2)
    assert run_until_idle(worker) == [events.Success(second, 3)]
    assert [e for e in seen if isinstance(e, events.Success)] == [
        events.Success(first, 2),
        events.Success(second, 3),
    ]
    assert len(worker._callbacks) == 1


def test_run_until_idle_refuses_wrong_arguments():
    store = RecordingStore()
    worker = WorkerBuilder("w").backend(store).build(lambda _x: None)
    with pytest.raises(TypeError, match="handler"):
        run_until_idle(store)
    with pytest.raises(TypeError, match="takes no handler"):
        run_until_idle(worker, lambda _x: None)
    with pytest.raises(TypeError, match="a Worker, a store or a Router"):
        run_until_idle(object(), lambda _x: None)
    with pytest.raises(TypeError, match="router has them"):
        run_until_idle(Router(store), lambda _x: None)
    assert store.calls == []


def test_run_until_idle_on_a_router_runs_its_queue_by_function_name(taskpipe_storage):
    router = Router(taskpipe_storage)

    @router.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @router.task(name="later", queue="other")
    def later() -> None: ...

    first, second = add.push(1, 2), add.push(b=5, a=4)
    later.push()  # another queue: not this run's
    assert run_until_idle(router) == [events.Success(first, 3), events.Success(second, 9)]
    [other] = run_until_idle(router.storage_for("other"), router)
    assert isinstance(other, events.Success)


# Eager mode -------------------------------------------------------------------------------------
def test_eager_runs_each_push_through_the_store_before_it_returns():
    store = RecordingStore()
    router = Router(store)
    received: list[Mail] = []

    @router.task(name="send")
    def send(mail: Mail, task_id: TaskId) -> str:
        received.append(mail)
        return f"{task_id}: {mail.to}"

    with eager(router) as mode:
        assert isinstance(mode, Eager)
        task_id = send.push(Mail("a@example.com", "hi"))
        assert received == [Mail("a@example.com", "hi")]  # decoded into the annotation
        assert store.fetch_by_id(task_id).result == f"{task_id}: a@example.com"
        assert "claim" in store.call_names() and "ack" in store.call_names()
    later = send.push(Mail("b@example.com", "yo"))  # eager no more: only written
    assert store.fetch_by_id(later).status is Status.PENDING and len(received) == 1


def test_eager_refuses_what_production_refuses():
    router = Router(RecordingStore())

    @router.task(name="count")
    def count(n: int) -> int:
        return n

    with eager(router):
        with pytest.raises(CodecError):
            count.push(object())  # cannot be encoded: nothing written, as in production
        with pytest.raises(TaskFailed, match="is dead"):
            count.push("three")  # encoded, but not an int once decoded: Dead
    assert [t.status for t in router.storage.list_tasks()] == [Status.DEAD]


def test_eager_raises_the_task_exception_unless_asked_not_to():
    router = Router(RecordingStore())

    @router.task(name="boom", retries=2)
    def boom() -> None:
        raise KeyError("missing")

    with eager(router), pytest.raises(KeyError, match="missing"):
        boom.push()
    with eager(router, raise_errors=False):
        task_id = boom.push()
    info = router.storage.fetch_by_id(task_id)
    assert (info.status, info.attempts) == (Status.FAILED, 1)  # its retry waits for its backoff


def test_a_task_pushed_by_an_eager_task_runs_in_the_same_push_even_on_another_queue(
    taskpipe_storage,
):
    router = Router(taskpipe_storage)
    order: list[str] = []

    @router.task(name="child", queue="children")
    def child(n: int) -> None:
        order.append(f"child {n}")

    @router.task(name="parent")
    def parent(n: int) -> None:
        order.append(f"parent {n}")
        child.push(n)
        order.append("parent done")

    with eager(router):
        parent.push(1)
        assert order == ["parent 1", "parent done", "child 1"]


def test_a_delayed_push_waits_for_its_time_in_eager_mode_too():
    router = Router(RecordingStore())

    @router.task(name="remind")
    def remind() -> str:
        return "reminded"

    with freeze_time(T0) as frozen, eager(router):
        task_id = remind.using(run_after=timedelta(hours=1)).push()
        assert router.storage.fetch_by_id(task_id).status is Status.PENDING
        frozen.tick(timedelta(hours=1))
        assert run_until_idle(router) == [events.Success(task_id, "reminded")]


def test_eager_takes_one_mode_per_router_and_a_router_only():
    router = Router(RecordingStore())
    with eager(router), pytest.raises(RuntimeError, match="eager mode already"):
        Eager(router).install()
    assert router._on_push is None
    with pytest.raises(TypeError, match="Router"):
        Eager(RecordingStore())  # type: ignore[arg-type]


# The pytest plugin --------------------------------------------------------------------------------
def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    found = [ep for ep in entry_points(group="pytest11") if ep.name == "taskpipe"]
    assert [ep.value for ep in found] == ["taskpipe.testing"]


def test_taskpipe_db_is_a_fresh_database_set_up(taskpipe_db, tmp_path):
    assert taskpipe_db.database == str(tmp_path / "taskpipe-test.db")
    storage = SqliteStorage(taskpipe_db, queue="q")
    storage.check_setup()
    assert storage.list_tasks() == []


def test_taskpipe_storage_runs_tasks(taskpipe_storage):
    assert taskpipe_storage.queue == "default"
    tid = taskpipe_storage.push_task(Task("x", priority=2))
    assert run_until_idle(taskpipe_storage, str.upper) == [events.Success(tid, "X")]
    assert taskpipe_storage.fetch_by_id(tid).result == "X"


def test_the_fixtures_reach_a_fresh_pytest_run_through_the_entry_point(tmp_path):
    (tmp_path / "test_uses_plugin.py").write_text(
        textwrap.dedent(
            """
            def test_storage(taskpipe_storage, taskpipe_db):
                assert taskpipe_storage.db is taskpipe_db
                taskpipe_storage.push(1)
                assert len(taskpipe_storage.list_tasks()) == 1
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_importing_the_module_does_not_need_pytest():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["pytest"] = None  # any "import pytest" now fails
        import taskpipe.testing as t
        assert not hasattr(t, "taskpipe_db") and not hasattr(t, "taskpipe_storage")
        assert t.__all__ == ["Call", "Eager", "RecordingStore", "eager", "run_until_idle"]
        store = t.RecordingStore()
        store.push(1)
        print(t.run_until_idle(store, lambda n: n * 10))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[Success(task_id=TaskId(1), result=10)]"


def test_every_public_name_has_a_docstring():
    assert inspect.getdoc(testing)
    undocumented = [name for name in testing.__all__ if not inspect.getdoc(getattr(testing, name))]
    methods = [
        name
        for name, member in vars(RecordingStore).items()
        if not name.startswith("_") and callable(member) and not inspect.getdoc(member)
    ]
    assert (undocumented, methods) == ([], [])
    assert {"taskpipe_db", "taskpipe_storage"} <= set(testing.__all__)
