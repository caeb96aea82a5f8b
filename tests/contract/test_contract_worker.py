"""The worker over each store: it owns the loops, so every store must run the same."""

from __future__ import annotations

import threading
from datetime import timedelta

from contract_support import T0, at, need
from freezegun import freeze_time

from taskpipe import (
    Attempt,
    RetryPolicy,
    Status,
    Task,
    TaskId,
    WorkerBuilder,
    WorkerContext,
    events,
)


def recorder():
    """An ``on_event`` callback and the list of events it keeps."""
    seen: list[events.Event] = []
    lock = threading.Lock()

    def on_event(_ctx, event):
        with lock:
            seen.append(event)

    return on_event, seen


def of(kind, seen):
    return [e for e in seen if isinstance(e, kind)]


def test_run_until_idle_runs_everything(store):
    ids = store.push_bulk(range(40))
    seen: list[int] = []
    lock = threading.Lock()

    def handle(n: int, task_id: TaskId) -> int:
        with lock:
            seen.append((n, task_id))
        return n * n

    on_event, emitted = recorder()
    worker = (
        WorkerBuilder("everything").backend(store).concurrency(4).on_event(on_event).build(handle)
    )
    assert worker.run_until_idle() == 40
    assert sorted(seen) == list(zip(range(40), ids, strict=True))
    assert sorted((e.task_id, e.result) for e in of(events.Success, emitted)) == [
        (tid, n * n) for n, tid in enumerate(ids)
    ]
    assert worker.run_until_idle() == 0
    assert store.next_due() is None


def test_run_until_idle_with_one_thread_follows_priority(store):
    store.push_all([Task("low", priority=-1), Task("mid"), Task("high", priority=5)])
    seen: list[str] = []
    assert WorkerBuilder("order").backend(store).build(seen.append).run_until_idle() == 3
    assert seen == ["high", "mid", "low"]


def test_failed_tasks_are_retried_by_the_policy_under_a_frozen_clock(store):
    need(store, "outcomes")
    attempts: list[int] = []

    def flaky(value: str, attempt: Attempt) -> str:
        attempts.append(int(attempt))
        if attempt < 3:
            raise ValueError(f"attempt {attempt} failed")
        return value.upper()

    policy = RetryPolicy.retries(3).backoff(base=10, factor=2, jitter=0)
    on_event, emitted = recorder()
    with freeze_time(T0) as frozen:
        tid = store.push("ok")
        worker = (
            WorkerBuilder("retries").backend(store).retry(policy).on_event(on_event).build(flaky)
        )
        assert worker.run_until_idle() == 1  # attempt 1 fails: due again in 10 s
        assert worker.run_until_idle() == 0
        frozen.tick(timedelta(seconds=9))
        assert worker.run_until_idle() == 0
        frozen.tick(timedelta(seconds=1))
        assert worker.run_until_idle() == 1  # attempt 2 fails: due again in 20 s
        frozen.tick(timedelta(seconds=19))
        assert worker.run_until_idle() == 0
        frozen.tick(timedelta(seconds=1))
        assert worker.run_until_idle() == 1  # attempt 3 succeeds
    assert attempts == [1, 2, 3]
    assert [(e.task_id, e.attempt, e.run_at) for e in of(events.Retry, emitted)] == [
        (tid, 1, at(10)),
        (tid, 2, at(30)),
    ]
    assert [(e.task_id, e.result) for e in of(events.Success, emitted)] == [(tid, "OK")]
    if store.capabilities.introspection:
        info = store.fetch_by_id(tid)
        assert (info.status, info.attempts, info.result) == (Status.DONE, 3, "OK")
        assert [(e.attempt, e.error) for e in info.errors] == [
            (1, "ValueError: attempt 1 failed"),
            (2, "ValueError: attempt 2 failed"),
        ]


def test_a_task_out_of_attempts_is_dead(store):
    need(store, "outcomes")

    def fail(_value: str) -> None:
        raise RuntimeError("nope")

    on_event, emitted = recorder()
    with freeze_time(T0) as frozen:
        tid = store.push_task(Task("x", max_attempts=2))  # overrides the no-retry default
        worker = WorkerBuilder("dead").backend(store).on_event(on_event).build(fail)
        assert worker.run_until_idle() == 1
        frozen.tick(timedelta(hours=1))
        assert worker.run_until_idle() == 1
        frozen.tick(timedelta(hours=1))
        assert worker.run_until_idle() == 0
    assert [(e.task_id, e.attempt) for e in of(events.Retry, emitted)] == [(tid, 1)]
    assert [(e.task_id, e.error) for e in of(events.Dead, emitted)] == [(tid, "RuntimeError: nope")]
    assert store.next_due() is None
    if store.capabilities.introspection:
        assert store.fetch_by_id(tid).status is Status.DEAD


def test_idle_fires_when_nothing_is_due_and_nothing_runs(store):
    on_event, emitted = recorder()
    ran: list[str] = []
    with freeze_time(T0):
        store.push_task(Task("later", run_after=60))
        worker = WorkerBuilder("idle").backend(store).on_event(on_event).build(ran.append)
        assert worker.run_until_idle() == 0
    assert ran == []
    kinds = [type(e) for e in emitted if not isinstance(e, events.HeartBeat)]
    assert kinds == [events.Start, events.Idle, events.Stop]


def test_idle_fires_once_the_work_is_done(store):
    on_event, emitted = recorder()
    store.push_bulk(["a", "b"])
    worker = WorkerBuilder("idle").backend(store).on_event(on_event).build(lambda _v: None)
    assert worker.run_until_idle() == 2
    kinds = [type(e) for e in emitted if not isinstance(e, events.HeartBeat)]
    assert kinds[0] is events.Start and kinds[-1] is events.Stop
    assert kinds.count(events.Idle) == 1
    assert kinds.index(events.Idle) > max(i for i, k in enumerate(kinds) if k is events.Success)


def test_a_stopped_run_hands_unstarted_tasks_back_without_an_attempt(store):
    need(store, "introspection")
    started = threading.Event()
    ids = store.push_bulk(range(6))

    def handle(n: int, ctx: WorkerContext) -> None:
        if n == 0:
            ctx.stop()  # the run stops: tasks claimed and not started go back
            started.set()

    worker = WorkerBuilder("stops").backend(store).build(handle)
    runner = threading.Thread(target=worker.run_until_idle)
    runner.start()
    assert started.wait(10)
    runner.join(10)
    assert not runner.is_alive()
    infos = {tid: store.fetch_by_id(tid) for tid in ids}
    assert infos[ids[0]].status is Status.DONE
    assert {(infos[t].status, infos[t].attempts) for t in ids[1:]} == {(Status.PENDING, 0)}
