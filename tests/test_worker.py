"""The worker: injection, build-time errors, stored results, events, stopping,
several workers at once, and real concurrency."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from helpers import run_with_safety

from taskpipe import (
    Attempt,
    BuildError,
    Data,
    JsonCodec,
    Monitor,
    RetryPolicy,
    Task,
    TaskId,
    WorkerBuilder,
    WorkerContext,
    events,
    memory,
    run_all,
)
from taskpipe.sqlite import Config, SqliteStorage


def row(db, task_id) -> dict:
    cursor = db.execute_sql("SELECT * FROM taskpipe_jobs WHERE id = ?", (int(task_id),))
    names = [d[0] for d in cursor.description]
    return dict(zip(names, cursor.fetchone(), strict=True))


def statuses(db) -> dict[int, str]:
    return dict(db.execute_sql("SELECT id, status FROM taskpipe_jobs").fetchall())


@dataclass
class Mailer:
    sender: str


# Injection ------------------------------------------------------------------------------
def test_every_injectable_parameter(storage, db):
    mailer = Mailer("noreply@example.com")
    tid = storage.push({"to": "a@example.com"})
    seen = {}

    def handle(
        message: dict,
        ctx: WorkerContext,
        task_id: TaskId,
        attempt: Attempt,
        task: Task,
        mail: Data[Mailer],
        answer: Data[int],
    ) -> str:
        seen.update(
            message=message,
            ctx=ctx,
            task_id=task_id,
            attempt=attempt,
            task=task,
            mail=mail,
            answer=answer,
        )
        return "sent"

    worker = WorkerBuilder("injector").backend(storage).data(mailer).data(42).build(handle)
    assert worker.run_until_idle() == 1
    assert seen["message"] == {"to": "a@example.com"}
    assert isinstance(seen["ctx"], WorkerContext) and seen["ctx"].name == "injector"
    assert seen["ctx"].run_id.startswith("injector:")
    assert seen["task_id"] == tid and isinstance(seen["task_id"], TaskId)
    assert seen["attempt"] == 1 and isinstance(seen["attempt"], Attempt)
    assert (
        isinstance(seen["task"], Task)
        and seen["task"].id == tid
        and seen["task"].args == {"to": "a@example.com"}
    )
    assert seen["mail"] is mailer
    assert seen["answer"] == 42
    assert statuses(db) == {tid: "done"}


def test_attempt_counts_up_on_retries(storage):
    storage.push("x")
    attempts = []

    def handle(value: str, attempt: Attempt) -> None:
        attempts.append(attempt)
        if attempt < 3:
            raise RuntimeError("again")

    policy = RetryPolicy.retries(3).backoff(base=0, jitter=0)
    worker = WorkerBuilder("a").backend(storage).retry(policy).build(handle)
    assert worker.run_until_idle() == 3
    assert attempts == [1, 2, 3]


class Base:
    pass


class Child(Base):
    pass


def test_data_matches_a_subclass_and_parameters_with_defaults_are_left_alone(storage):
    child = Child()
    storage.push(1)
    seen = []

    def handle(n: int, shared: Data[Base], other: str = "default") -> None:
        seen.append((shared, other))

    WorkerBuilder("sub").backend(storage).data(child).build(handle).run_until_idle()
    assert seen == [(child, "default")]


def test_unknown_annotation_is_a_build_error(storage):
    def annotated(n: int, name: str) -> None: ...

    def bare(n, something) -> None: ...

    builder = WorkerBuilder("w").backend(storage)
    with pytest.raises(BuildError, match="'name'"):
        builder.build(annotated)
    with pytest.raises(BuildError, match="'something'.*no annotation"):
        builder.build(bare)
    with pytest.raises(BuildError, match="at least one parameter"):
        builder.build(lambda: None)


def test_data_without_a_matching_value_is_a_build_error(storage):
    def handle(n: int, mail: Data[Mailer]) -> None: ...

    with pytest.raises(BuildError, match="Data\\[Mailer\\]"):
        WorkerBuilder("w").backend(storage).build(handle)
    with pytest.raises(BuildError, match="given: int"):
        WorkerBuilder("w").backend(storage).data(5).build(handle)


def test_builder_errors(storage):
    with pytest.raises(BuildError, match="no backend"):
        WorkerBuilder("w").build(lambda n: None)
    with pytest.raises(BuildError, match="not a taskpipe store"):
        WorkerBuilder("w").backend(object()).build(lambda n: None)
    with pytest.raises(BuildError, match="concurrency"):
        WorkerBuilder("w").concurrency(0)
    with pytest.raises(BuildError, match="RetryPolicy"):
        WorkerBuilder("w").retry(3)
    with pytest.raises(BuildError, match="name"):
        WorkerBuilder("")


def test_a_builtin_callable_can_be_a_handler(storage):
    storage.push_bulk([1, 2, 3])
    got: list[int] = []
    WorkerBuilder("builtin").backend(storage).build(got.append).run_until_idle()
    assert got == [1, 2, 3]


# Results ----------------------------------------------------------------------------------
def test_handler_result_is_stored(storage, db):
    tid = storage.push(3)
    none_id = storage.push(4)

    def handle(n: int) -> dict | None:
        return {"squares": [i * i for i in range(n)], "n": n} if n == 3 else None

    WorkerBuilder("r").backend(storage).build(handle).run_until_idle()
    stored = row(db, tid)
    assert stored["status"] == "done"
    assert stored["done_at"] is not None and stored["started_at"] is not None
    assert JsonCodec().decode(stored["result"]) == {"squares": [0, 1, 4], "n": 3}
    assert row(db, none_id)["result"] is None


def test_unencodable_result_is_kept_as_its_repr(storage, db):
    class Thing:
        def __repr__(self) -> str:
            return "<Thing>"

    tid = storage.push(1)
    WorkerBuilder("r").backend(storage).build(lambda n: Thing()).run_until_idle()
    stored = row(db, tid)
    assert stored["status"] == "done"
    assert JsonCodec().decode(stored["result"]) == "<Thing>"


# Events -----------------------------------------------------------------------------------
def test_event_sequence(storage, db):
    ok = storage.push("ok")
    flaky = storage.push("flaky")
    doomed = storage.push("doomed")
    calls: dict[str, int] = {}
    seen: list[events.Event] = []

    def handle(kind: str) -> str:
        calls[kind] = calls.get(kind, 0) + 1
        if kind == "doomed" or (kind == "flaky" and calls[kind] == 1):
            raise ValueError(f"{kind} failed")
        return kind.upper()

    def on_event(ctx: WorkerContext, event: events.Event) -> None:
        seen.append(event)
        if isinstance(event, events.Idle):
            ctx.stop()

    worker = (
        WorkerBuilder("ev")
        .backend(storage)
        .retry(RetryPolicy.retries(1).backoff(base=0, jitter=0))
        .on_event(on_event)
        .build(handle)
    )
    assert run_with_safety(worker), "the Idle event never came"
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "Start", kinds
    assert kinds[-1] == "Stop" and kinds[-2] == "Idle", kinds
    assert kinds.count("Start") == kinds.count("Stop") == kinds.count("Idle") == 1
    assert "HeartBeat" in kinds
    assert [e for e in seen if isinstance(e, events.Success)] == [
        events.Success(ok, "OK"),
        events.Success(flaky, "FLAKY"),
    ]
    errors = [(e.task_id, e.error) for e in seen if isinstance(e, events.Error)]
    assert errors == [
        (flaky, "ValueError: flaky failed"),
        (doomed, "ValueError: doomed failed"),
        (doomed, "ValueError: doomed failed"),
    ]
    retries = [e for e in seen if isinstance(e, events.Retry)]
    assert [(e.task_id, e.attempt) for e in retries] == [(flaky, 1), (doomed, 1)]
    assert all(e.run_at.tzinfo is not None for e in retries)
    assert [e for e in seen if isinstance(e, events.Dead)] == [
        events.Dead(doomed, "ValueError: doomed failed")
    ]

    # each task's own story, in order
    def story(task_id) -> list[str]:
        return [type(e).__name__ for e in seen if getattr(e, "task_id", None) == task_id]

    assert story(ok) == ["Success"]
    assert story(flaky) == ["Error", "Retry", "Success"]
    assert story(doomed) == ["Error", "Retry", "Error", "Dead"]
    assert statuses(db) == {ok: "done", flaky: "done", doomed: "dead"}


def test_a_failing_event_callback_does_not_stop_the_worker(storage, db):
    storage.push(1)

    def bad_callback(ctx, event):
        raise RuntimeError("callback bug")

    assert (
        WorkerBuilder("cb")
        .backend(storage)
        .on_event(bad_callback)
        .build(lambda n: n)
        .run_until_idle()
        == 1
    )
    assert set(statuses(db).values()) == {"done"}


# Stopping ---------------------------------------------------------------------------------
def test_ctx_stop_from_a_handler_stops_run(storage, db):
    first, second, third = storage.push_bulk(["stop", "b", "c"])
    ran = []

    def handle(value: str, ctx: WorkerContext) -> None:
        ran.append(value)
        if value == "stop":
            ctx.stop()

    worker = WorkerBuilder("stopper").backend(storage).build(handle)
    assert run_with_safety(worker), "ctx.stop() did not stop run()"
    assert ran == ["stop"]
    assert statuses(db) == {first: "done", second: "pending", third: "pending"}
    for tid in (second, third):  # claimed-but-unstarted tasks are released, no attempt counted
        r = row(db, tid)
        assert r["attempts"] == 0 and r["worker"] is None and r["lease"] is None
    assert worker.context is None
    assert db.execute_sql("SELECT count(*) FROM taskpipe_workers").fetchone()[0] == 0  # retired


def test_worker_refuses_to_run_twice_at_once(storage):
    storage.push(1)
    holder = {}

    def handle(n: int) -> None:
        with pytest.raises(RuntimeError, match="already running"):
            holder["w"].run_until_idle()
        holder["checked"] = True

    holder["w"] = WorkerBuilder("once").backend(storage).build(handle)
    holder["w"].run_until_idle()
    assert holder.get("checked")


# Several workers ---------------------------------------------------------------------------
@pytest.mark.parametrize("use_monitor", [False, True])
def test_run_all_runs_two_workers_on_two_queues(db, use_monitor):
    config = Config(poll_interval=0.02)
    emails = SqliteStorage(db, queue="emails", config=config)
    reports = SqliteStorage(db, queue="reports", config=config)
    emails.push_bulk([f"e{i}" for i in range(5)])
    reports.push_bulk([f"r{i}" for i in range(3)])
    lock = threading.Lock()
    handled: dict[str, list[tuple[str, str]]] = {"emails": [], "reports": []}
    threads: dict[str, set[str]] = {"emails": set(), "reports": set()}

    def make_handler(queue: str, expected: int):
        def handle(value: str, ctx: WorkerContext) -> None:
            with lock:
                handled[queue].append((ctx.name, value))
                threads[queue].add(threading.current_thread().name)
                if len(handled[queue]) == expected:
                    ctx.stop()

        return handle

    w1 = WorkerBuilder("mailer").backend(emails).build(make_handler("emails", 5))
    w2 = WorkerBuilder("reporter").backend(reports).build(make_handler("reports", 3))
    safety = threading.Timer(10, lambda: (w1.stop(), w2.stop()))
    safety.start()
    try:
        if use_monitor:
            Monitor().register(w1).register(w2).run()
        else:
            run_all(w1, w2)
    finally:
        safety.cancel()
    assert sorted(handled["emails"]) == [("mailer", f"e{i}") for i in range(5)]
    assert sorted(handled["reports"]) == [("reporter", f"r{i}") for i in range(3)]
    assert set(statuses(db).values()) == {"done"}
    assert threads["emails"].isdisjoint(threads["reports"])


def test_monitor_reraises_a_worker_error():
    class Boom(Exception):
        pass

    class BrokenBackend(memory.MemoryBackend):
        def open_run(self, ctx):
            raise Boom("open_run exploded")

    ok = memory.backend()
    good = WorkerBuilder("good").backend(ok).build(lambda n: n)
    bad = WorkerBuilder("bad").backend(BrokenBackend()).build(lambda n: n)
    monitor = Monitor().register(bad).register(good)
    stopper = threading.Timer(0.5, good.stop)
    stopper.start()
    try:
        with pytest.raises(Boom):
            monitor.run()
    finally:
        stopper.cancel()
    with pytest.raises(TypeError):
        Monitor().register("not a worker")


# Concurrency -------------------------------------------------------------------------------
def test_concurrency_4_runs_4_handlers_at_once(storage, db):
    ids = storage.push_bulk(range(4))
    barrier = threading.Barrier(4, timeout=5)
    names = set()

    def handle(n: int) -> int:
        names.add(threading.current_thread().name)
        barrier.wait()  # breaks (and fails the task) unless all 4 are inside at once
        return n

    worker = WorkerBuilder("four").backend(storage).concurrency(4).build(handle)
    assert worker.run_until_idle() == 4
    assert statuses(db) == dict.fromkeys(ids, "done")
    assert len(names) == 4


def test_concurrency_1_runs_one_at_a_time(storage, db):
    storage.push_bulk(range(6))
    active = 0
    most = 0
    lock = threading.Lock()

    def handle(n: int) -> None:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        with lock:
            active -= 1

    WorkerBuilder("one").backend(storage).concurrency(1).build(handle).run_until_idle()
    assert most == 1
    assert set(statuses(db).values()) == {"done"}


def test_memory_backend_worker_retries_and_dies():
    backend = memory.backend()
    backend.push("boom")
    attempts = []

    def handle(value: str, attempt: Attempt) -> None:
        attempts.append(attempt)
        raise RuntimeError("no")

    dead = []
    worker = (
        WorkerBuilder("m")
        .backend(backend)
        .retry(RetryPolicy.retries(2).backoff(base=0, jitter=0))
        .on_event(lambda ctx, e: dead.append(e) if isinstance(e, events.Dead) else None)
        .build(handle)
    )
    worker.run_until_idle()
    assert attempts == [1, 2, 3]
    assert len(dead) == 1 and dead[0].error == "RuntimeError: no"
    assert len(backend) == 0


def test_a_stop_asked_before_the_run_starts_is_not_lost(storage):
    storage.push_bulk(range(3))
    worker = WorkerBuilder("early").backend(storage).build(lambda x: x)
    worker.stop()  # e.g. a signal that arrives while the process is still starting
    done = threading.Event()
    thread = threading.Thread(target=lambda: (worker.run(), done.set()))
    thread.start()
    assert done.wait(10), "run() ignored a stop asked before it started"
    thread.join()
    statuses = [s for (s,) in storage.db.execute_sql("SELECT status FROM taskpipe_jobs")]
    assert statuses == ["pending"] * 3  # nothing was started
    assert worker.run_until_idle() == 3  # the request was used up by that run


def test_run_until_idle_honours_the_grace_after_a_stop(storage):
    from taskpipe import clock

    task_id = storage.push(1)
    started, release = threading.Event(), threading.Event()

    def hang(x: int) -> None:
        started.set()
        release.wait(30)

    worker = WorkerBuilder("grace").backend(storage).shutdown_grace(0.5).build(hang)
    stopper = threading.Thread(target=lambda: started.wait(10) and worker.stop())
    stopper.start()
    begin = clock.real_monotonic()
    try:
        worker.run_until_idle()
        elapsed = clock.real_monotonic() - begin
    finally:
        release.set()
        stopper.join()
    assert elapsed < 0.5 + 1.0, f"run_until_idle took {elapsed:.2f}s with a 0.5 s grace"
    info = storage.fetch_by_id(task_id)
    assert info.status == "pending" and info.errors[-1].error == "interrupted by shutdown"


def test_a_finite_backend_runs_every_task_it_handed_out():
    """A store whose claim says "no more, ever" (None) is not a stop: the tasks it
    already handed out run."""
    from taskpipe.store import Claim, OutcomeKind, Store

    acks = []

    class Finite(Store):
        def __init__(self):
            super().__init__()
            self.left = list(range(10))

        def claim(self, ctx, limit):
            if not self.left:
                return None
            taken, self.left = self.left[:limit], self.left[limit:]
            return [
                Claim(TaskId(i + 1), self.queue, self.codec.encode(i), 1, ctx.new_lease())
                for i in taken
            ]

        def next_due(self):
            return None

        def ack(self, outcomes):
            acks.extend((o.task_id, o.kind) for o in outcomes)

    ran = []
    worker = WorkerBuilder("finite").backend(Finite()).concurrency(2).build(ran.append)
    assert worker.run_until_idle() == 10
    assert sorted(ran) == list(range(10))
    assert all(kind is OutcomeKind.DONE for _, kind in acks) and len(acks) == 10
