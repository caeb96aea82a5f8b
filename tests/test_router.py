"""Router: many task functions on one store, pushed and dispatched by name."""

from __future__ import annotations

import asyncio
import importlib
import math
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from freezegun import freeze_time

import taskpipe
from taskpipe import (
    Attempt,
    BuildError,
    CapabilityError,
    CodecError,
    Data,
    RetryPolicy,
    Router,
    Status,
    Task,
    TaskId,
    WorkerBuilder,
    WorkerContext,
    events,
    memory,
    pipe_to,
)
from taskpipe.router import NAME_META, RoutedTask
from taskpipe.sqlite import SharedSqliteStorage, SqliteStorage

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class Order:
    id: int
    items: list[str]


class Connection:
    """Neither injectable nor something a codec can decode into."""


class Mailer:
    def __init__(self) -> None:
        self.sent: list[str] = []


def worker_for(store, router, **options):
    builder = WorkerBuilder("router-test").backend(store)
    for name, value in options.items():
        getattr(builder, name)(value)
    return builder.build(router)


def test_three_functions_one_worker(storage):
    router = Router(storage)

    @router.task
    def total(order: Order, discount: float = 0.0) -> float:
        return len(order.items) * 10 - discount

    @router.task(name="greet")
    def greet(name: str, *, greeting: str = "Hello") -> str:
        return f"{greeting}, {name}"

    @router.task(name="when")
    def when(at: datetime, *extra: int, **labels: str) -> dict:
        assert isinstance(at, datetime)  # decoded into the annotation, not left a str
        return {"year": at.year, "extra": list(extra), "labels": labels}

    ids = [
        total.push(Order(1, ["a", "b", "c"]), discount=5),
        greet.push("Ada", greeting="Hi"),
        greet.push(name="Bob"),
        when.push(T0, 1, 2, colour="red"),
    ]
    assert all(isinstance(i, int) for i in ids)
    assert worker_for(storage, router).run_until_idle() == 4

    infos = [storage.fetch_by_id(i) for i in ids]
    assert [i.status for i in infos] == [Status.DONE] * 4
    assert [i.result for i in infos] == [
        25.0,
        "Hi, Ada",
        "Hello, Bob",
        {"year": 2030, "extra": [1, 2], "labels": {"colour": "red"}},
    ]
    # The payload is the call's arguments by parameter name; the meta names the function.
    assert infos[0].args == {"order": {"id": 1, "items": ["a", "b", "c"]}, "discount": 5}
    assert infos[2].args == {"name": "Bob"}
    assert infos[0].meta == {
        NAME_META: f"{__name__}.test_three_functions_one_worker.<locals>.total"
    }
    assert infos[1].meta == {NAME_META: "greet"}


def test_the_decorated_function_still_runs_when_called():
    router = Router(memory.backend())

    @router.task(name="add")
    def add(a: int, b: int = 1) -> int:
        """Adds."""
        return a + b

    assert add(2, b=3) == 5
    assert isinstance(add, RoutedTask)
    assert (add.name, add.__name__, add.__doc__, add.queue) == ("add", "add", "Adds.", "default")
    assert len(router.storage) == 0  # a plain call pushes nothing


def test_router_lists_its_functions():
    router = Router(memory.backend())

    @router.task(name="b")
    def b(x: int) -> None: ...

    @router.task(name="a")
    def a(x: int) -> None: ...

    assert list(router) == ["b", "a"]
    assert len(router) == 2 and "a" in router and "c" not in router
    assert router.registered["a"] is a
    with pytest.raises(TypeError):
        router.registered["c"] = a  # type: ignore[index]


def test_unknown_name_is_dead_at_once_and_named(storage):
    router = Router(storage)
    for name in ("a", "b", "c"):
        router.task(name=name)(lambda x: x)
    unknown = storage.push_task(Task({"x": 1}, meta={NAME_META: "x"}))
    nameless = storage.push({"x": 1})  # pushed without the router: no name at all
    seen: list[events.Event] = []
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .retry(RetryPolicy.retries(3))  # retrying cannot help: Dead on the first attempt
        .on_event(lambda _ctx, event: seen.append(event))
        .build(router)
    )
    assert worker.run_until_idle() == 2

    dead = storage.fetch_by_id(unknown)
    assert dead.status == Status.DEAD
    assert dead.errors[-1].error == "no task named 'x' in this router (known: a, b, c)"
    assert len(dead.errors) == 1
    nameless_info = storage.fetch_by_id(nameless)
    assert nameless_info.status == Status.DEAD
    assert "has no name (meta 'task')" in nameless_info.errors[-1].error
    assert "fn.push(" in nameless_info.errors[-1].error
    assert {e.task_id for e in seen if isinstance(e, events.Dead)} == {unknown, nameless}


def test_per_function_retry_policy(storage):
    router = Router(storage)
    calls: list[str] = []

    @router.task(name="own", retries=RetryPolicy.retries(1).backoff(base=10, jitter=0))
    def own(n: int) -> None:
        calls.append("own")
        raise ValueError("own failed")

    @router.task(name="counted", retries=2)
    def counted(n: int) -> None:
        calls.append("counted")
        raise ValueError("counted failed")

    @router.task(name="default")
    def default(n: int) -> None:
        calls.append("default")
        raise ValueError("default failed")

    worker_policy = RetryPolicy.retries(5).backoff(base=1000, jitter=0)
    with freeze_time(T0) as frozen:
        own_id, counted_id, default_id = own.push(1), counted.push(1), default.push(1)
        worker = worker_for(storage, router, retry=worker_policy)
        worker.run_until_idle()
        own_info = storage.fetch_by_id(own_id)
        assert own_info.status == Status.FAILED
        assert own_info.run_at == T0 + timedelta(seconds=10)  # its own backoff
        default_info = storage.fetch_by_id(default_id)
        assert default_info.run_at == T0 + timedelta(seconds=1000)  # the worker's policy
        assert default_info.max_attempts is None  # decided when it runs, not stored

        frozen.tick(timedelta(seconds=10))
        worker.run_until_idle()
        assert storage.fetch_by_id(own_id).status == Status.DEAD  # 2 attempts: retries(1)
        assert len(storage.fetch_by_id(own_id).errors) == 2

        for _ in range(4):  # counted: retries=2 -> 3 attempts, with the default backoff
            frozen.tick(timedelta(hours=2))
            worker.run_until_idle()
        assert storage.fetch_by_id(counted_id).status == Status.DEAD
        assert len(storage.fetch_by_id(counted_id).errors) == 3
        # default: the worker's retries(5) -> still going after 4 more tries
        assert storage.fetch_by_id(default_id).status == Status.FAILED
    assert calls.count("own") == 2 and calls.count("counted") == 3


def test_max_attempts_of_a_push_overrides_the_function(storage):
    router = Router(storage)

    @router.task(name="flaky", retries=5)
    def flaky(n: int) -> None:
        raise ValueError("no")

    task_id = flaky.using(max_attempts=1).push(1)
    worker_for(storage, router).run_until_idle()
    assert storage.fetch_by_id(task_id).status == Status.DEAD


def test_priority_and_run_after(storage):
    router = Router(storage)
    ran: list[str] = []

    @router.task(name="job", priority=3)
    def job(label: str) -> None:
        ran.append(label)

    with freeze_time(T0) as frozen:
        low = job.using(priority=0).push("low")
        default = job.push("default")
        high = job.using(priority=9).push("high")
        later = job.using(run_after=timedelta(minutes=5)).push("later")
        at = job.using(run_after=T0 + timedelta(minutes=10), priority=50).push("at")
        assert [storage.fetch_by_id(i).priority for i in (low, default, high, later, at)] == [
            0, 3, 9, 3, 50,
        ]  # fmt: skip
        worker = worker_for(storage, router)  # one thread: runs by priority
        worker.run_until_idle()
        assert ran == ["high", "default", "low"]
        assert storage.fetch_by_id(later).run_at == T0 + timedelta(minutes=5)
        frozen.tick(timedelta(minutes=5))
        worker.run_until_idle()
        assert ran[-1] == "later"
        frozen.tick(timedelta(minutes=5))
        worker.run_until_idle()
        assert ran == ["high", "default", "low", "later", "at"]


def test_task_and_push_task(storage):
    router = Router(storage)

    @router.task(name="mail")
    def mail(to: str, subject: str = "") -> str:
        return f"{to}:{subject}"

    task = mail.task("a@example.com", subject="hi")
    assert task.args == {"to": "a@example.com", "subject": "hi"}
    assert task.meta == {NAME_META: "mail"}
    task.priority = 7
    task.key = "mail-once"
    first = mail.push_task(task)
    again = mail.push_task(mail.using(key="mail-once").task("b@example.com"))
    assert again == first  # keyed: idempotent
    plain = mail.push_task(Task({"to": "c@example.com"}))  # the name is set for it
    assert storage.fetch_by_id(plain).meta == {NAME_META: "mail"}
    with pytest.raises(TypeError, match="missing to"):
        mail.push_task(Task({"subject": "x"}))
    with pytest.raises(TypeError, match="unknown cc"):
        mail.push_task(Task({"to": "x", "cc": "y"}))
    with pytest.raises(TypeError, match="arguments by parameter name"):
        mail.push_task(Task(["x"]))
    worker_for(storage, router).run_until_idle()
    assert storage.fetch_by_id(first).result == "a@example.com:hi"
    assert storage.fetch_by_id(first).priority == 7


def test_bad_pushes_fail_at_push_time_and_write_nothing(storage):
    router = Router(storage)

    @router.task(name="f")
    def f(a: int, b: float, ctx: WorkerContext) -> None: ...

    with pytest.raises(TypeError, match=r"f\.push\(\): missing a required argument: 'b'"):
        f.push(1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        f.push(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        f.push(1, 2, c=3)
    with pytest.raises(TypeError, match="ctx: injected by the worker, not pushed"):
        f.push(1, 2, ctx=None)
    with pytest.raises(CodecError):
        f.push(1, object())
    with pytest.raises(CodecError, match="NaN"):
        f.push(1, math.nan)
    with pytest.raises(TypeError, match="priority must be an int"):
        f.using(priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        f.using(max_attempts=0)
    assert storage.list_tasks() == []


def test_a_payload_that_does_not_fit_the_annotations_is_dead(storage):
    router = Router(storage)

    @router.task(name="f")
    def f(a: int) -> int:
        return a

    wrong = storage.push_task(Task({"a": "not a number"}, meta={NAME_META: "f"}))
    missing = storage.push_task(Task({}, meta={NAME_META: "f"}))
    worker_for(storage, router, retry=RetryPolicy.retries(3)).run_until_idle()
    for task_id, why in ((wrong, "Expected `int`"), (missing, "missing required field `a`")):
        info = storage.fetch_by_id(task_id)
        assert info.status == Status.DEAD and len(info.errors) == 1
        assert "cannot decode the task's payload" in info.errors[0].error
        assert why in info.errors[0].error


def test_injected_parameters(storage):
    router = Router(storage)
    mailer = Mailer()
    seen = {}

    @router.task(name="send")
    def send(
        ctx: WorkerContext,
        to: str,
        task_id: TaskId,
        *,
        attempt: Attempt,
        task: Task,
        mailer: Data[Mailer],
        cc: str = "",
    ) -> str:
        seen.update(ctx=ctx.name, task_id=task_id, attempt=attempt, args=task.args)
        mailer.sent.append(to + cc)
        return to

    task_id = send.push("a@example.com", cc="+b")
    worker = WorkerBuilder("injecting").backend(storage).data(mailer).build(router)
    worker.run_until_idle()
    assert storage.fetch_by_id(task_id).result == "a@example.com"
    assert mailer.sent == ["a@example.com+b"]
    assert seen == {
        "ctx": "injecting",
        "task_id": task_id,
        "attempt": 1,
        "args": {"to": "a@example.com", "cc": "+b"},
    }
    # A direct call passes the injected values itself.
    ctx = SimpleNamespace(name="direct")
    direct = send(ctx, "x", TaskId(1), attempt=Attempt(1), task=Task({}), mailer=mailer)  # type: ignore[arg-type]
    assert direct == "x" and mailer.sent[-1] == "x"


def test_a_missing_data_value_is_a_build_error(storage):
    router = Router(storage)

    @router.task(name="send")
    def send(to: str, mailer: Data[Mailer]) -> None: ...

    with pytest.raises(BuildError, match=r"Data\[Mailer\]"):
        WorkerBuilder("w").backend(storage).build(router)


def test_unknown_annotations_are_an_error_at_registration(storage):
    router = Router(storage)
    with pytest.raises(BuildError, match="parameter 'conn' is annotated .*Connection"):

        @router.task(name="bad")
        def bad(n: int, conn: Connection) -> None: ...

    with pytest.raises(BuildError, match="positional-only"):

        @router.task(name="bad2")
        def bad2(ctx: WorkerContext, /, n: int) -> None: ...

    assert "bad" not in router and "bad2" not in router


def test_bad_registrations(storage):
    router = Router(storage)

    @router.task(name="same")
    def first(n: int) -> None: ...

    with pytest.raises(ValueError, match="task name 'same' is taken"):
        router.task(name="same")(lambda n: n)
    with pytest.raises(TypeError, match="retries must be an int or a RetryPolicy"):
        router.task(retries="3")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="retries must be a non-negative int"):
        router.task(retries=-1)
    with pytest.raises(TypeError, match="priority must be an int"):
        router.task(priority=1.5)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="queue must be a non-empty str"):
        router.task(queue="")
    with pytest.raises(TypeError, match="takes a taskpipe store"):
        Router("jobs.db")  # type: ignore[arg-type]


def test_build_errors(storage):
    with pytest.raises(BuildError, match="has no task"):
        WorkerBuilder("w").backend(storage).build(Router(storage))
    router = Router(storage)
    router.task(name="mail", queue="emails")(lambda n: n)
    with pytest.raises(BuildError, match=r"no task of .* is pushed to queue 'default'.*emails"):
        WorkerBuilder("w").backend(storage).build(router)


def test_async_routed_function(storage):
    router = Router(storage)

    @router.task(name="double")
    async def double(n: int, ctx: WorkerContext) -> int:
        await asyncio.sleep(0)
        return n * 2

    @router.task(name="plain")
    def plain(n: int) -> int:
        return n + 1

    ids = [double.push(21), plain.push(1)]
    worker_for(storage, router).run_until_idle()
    assert [storage.fetch_by_id(i).result for i in ids] == [42, 2]


def test_layers_wrap_routed_functions(storage):
    router = Router(storage)
    seen: list[tuple[str, dict]] = []

    def record(call_next):
        def handle(task, ctx):
            seen.append((task.meta[NAME_META], task.args))
            return {"wrapped": call_next(task, ctx)}

        return handle

    @router.task(name="a")
    def a(n: int) -> int:
        return n

    @router.task(name="b")
    def b(word: str) -> str:
        return word.upper()

    ids = [a.push(1), b.push("x")]
    WorkerBuilder("w").backend(storage).layer(record).build(router).run_until_idle()
    assert seen == [("a", {"n": 1}), ("b", {"word": "x"})]
    assert [storage.fetch_by_id(i).result for i in ids] == [{"wrapped": 1}, {"wrapped": "X"}]


def test_functions_on_other_queues_of_the_same_database(storage):
    router = Router(storage)

    @router.task(name="mail", queue="emails")
    def mail(to: str) -> str:
        return f"mailed {to}"

    @router.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    emails = router.storage_for("emails")
    assert emails.queue == "emails" and emails.db is storage.db
    assert router.storage_for("emails") is emails and router.storage_for() is storage
    mail_id, add_id = mail.push("a@example.com"), add.push(1, 2)
    assert storage.fetch_by_id(mail_id).queue == "emails"

    assert worker_for(storage, router).run_until_idle() == 1  # its own queue only
    assert storage.fetch_by_id(mail_id).status == Status.PENDING
    assert worker_for(emails, router).run_until_idle() == 1
    assert storage.fetch_by_id(mail_id).result == "mailed a@example.com"
    assert storage.fetch_by_id(add_id).result == 3


def test_a_push_wakes_the_worker_of_another_queue(storage):
    router = Router(storage)
    done = threading.Event()

    @router.task(name="mail", queue="emails")
    def mail(to: str) -> None:
        done.set()

    idle = threading.Event()
    worker = (
        WorkerBuilder("emails")
        .backend(router.storage_for("emails"))
        .on_event(lambda _ctx, event: isinstance(event, events.Idle) and idle.set())
        .build(router)
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert idle.wait(10)
        mail.push("a@example.com")
        assert done.wait(10)
    finally:
        worker.stop()
        thread.join(10)


def test_a_store_of_one_queue_refuses_another_queue():
    router = Router(memory.backend())
    with pytest.raises(CapabilityError, match="'queues' capability"):

        @router.task(name="mail", queue="emails")
        def mail(to: str) -> None: ...

    assert "mail" not in router


def test_router_is_exported():
    assert taskpipe.Router is Router
    assert "Router" in taskpipe.__all__


def test_for_queue_of_pipes_and_shared_stores(db, storage):
    pipe = pipe_to(iter(()), storage)
    assert pipe.for_queue(pipe.queue) is pipe
    assert pipe.for_queue("emails").queue == "emails"
    shared = SharedSqliteStorage(db).make_shared("maps")
    sibling = shared.for_queue("ints")
    assert type(sibling) is SqliteStorage and sibling.queue == "ints" and sibling.db is db
    hooked = SqliteStorage.with_hook(db)
    assert hooked.for_queue("emails").capabilities.wakeups == hooked.capabilities.wakeups
    assert storage.for_queue("emails").codec is storage.codec


def test_a_timeout_layer_cancels_a_routed_async_function(storage, monkeypatch):
    hold = 10.0  # the longest the hung function could wait; it is cancelled long before
    monkeypatch.setattr(importlib.import_module("taskpipe.layers.timeout"), "CANCEL_GRACE", hold)
    router = Router(storage)
    cancelled = threading.Event()

    @router.task(name="hang")
    async def hang(n: int) -> None:
        try:
            await asyncio.sleep(hold)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @router.task(name="quick")
    def quick(n: int) -> int:
        return n

    hung, fine = hang.push(1), quick.push(2)
    WorkerBuilder("w").backend(storage).timeout(0.2).build(router).run_until_idle()
    assert cancelled.is_set()
    assert storage.fetch_by_id(hung).errors[-1].error.endswith("timeout and was cancelled")
    assert storage.fetch_by_id(fine).result == 2
