"""Layers: their order, bad layers, ``NotStarted``, ``filter`` and ``circuit_breaker``."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from freezegun import freeze_time
from helpers import run_with_safety
from server_drain import until

from taskpipe import (
    BuildError,
    NotStarted,
    RetryPolicy,
    Status,
    Task,
    WorkerBuilder,
    events,
    memory,
)
from taskpipe.layers import circuit_breaker, filter
from taskpipe.layers.circuit import CircuitBreaker


def recording(name, log):
    """A layer that logs when the call enters and leaves it."""

    def layer(call_next):
        def handle(task, ctx):
            log.append(f"{name}>")
            try:
                return call_next(task, ctx)
            finally:
                log.append(f"<{name}")

        return handle

    return layer


def collect(into):
    return lambda ctx, event: into.append(event)


def of(kind, seen):
    return [e for e in seen if isinstance(e, kind)]


# Order -----------------------------------------------------------------------------------
def test_first_layer_added_is_outermost_and_the_stores_are_inside(monkeypatch):
    log: list[str] = []
    backend = memory.backend()
    monkeypatch.setattr(backend, "middleware", lambda: [recording("store", log)])
    backend.push(1)

    def handler(n: int) -> None:
        log.append("handler")

    worker = (
        WorkerBuilder("w")
        .backend(backend)
        .layer(recording("first", log))
        .layer(recording("second", log))
        .build(handler)
    )
    assert worker.run_until_idle() == 1
    assert log == ["first>", "second>", "store>", "handler", "<store", "<second", "<first"]


def test_a_layer_sees_the_decoded_task_and_may_change_the_result(storage):
    seen = []

    def doubling(call_next):
        def handle(task, ctx):
            seen.append((task.args, task.attempt, task.queue))
            return 2 * call_next(task, ctx)

        return handle

    task_id = storage.push({"n": 5})
    worker = WorkerBuilder("w").backend(storage).layer(doubling).build(lambda d: d["n"])
    worker.run_until_idle()
    assert seen == [({"n": 5}, 1, "default")]
    assert storage.fetch_by_id(task_id).result == 10


def test_a_layer_that_returns_no_handle_is_a_build_error():
    backend = memory.backend()
    with pytest.raises(BuildError, match="not a handle"):
        WorkerBuilder("w").backend(backend).layer(lambda call_next: None).build(print)


def test_what_a_layer_raises_is_a_failed_attempt(storage):
    def refusing(call_next):
        def handle(task, ctx):
            raise PermissionError("no")

        return handle

    task_id = storage.push(1)
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .retry(RetryPolicy.retries(1))
        .layer(refusing)
        .build(lambda n: n)
    )
    worker.run_until_idle()
    info = storage.fetch_by_id(task_id)
    assert info.status is Status.FAILED and info.attempts == 1
    assert "PermissionError: no" in info.errors[-1].error


def test_not_started_hands_the_task_back_uncounted(storage):
    calls = []

    def holding_back(call_next):
        def handle(task, ctx):
            calls.append(task.id)
            ctx.stop()  # as a layer does when its worker stops while the task waits
            raise NotStarted("held back")

        return handle

    seen: list[events.Event] = []
    task_id = storage.push(1)
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .layer(holding_back)
        .on_event(collect(seen))
        .build(lambda n: n)
    )
    assert worker.run_until_idle() == 0
    info = storage.fetch_by_id(task_id)
    assert calls == [task_id]
    assert info.status is Status.PENDING and info.attempts == 0 and info.errors == ()
    assert not of(events.Error, seen) and not of(events.Success, seen)


# filter --------------------------------------------------------------------------------------
def test_filter_skips_tasks_done_with_no_result_and_says_so(storage):
    ran, seen, predicate_saw = [], [], []

    def even(task: Task) -> bool:
        predicate_saw.append((task.args, task.attempt))
        return task.args % 2 == 0

    ids = storage.push_bulk([1, 2, 3, 4])
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .filter(even)
        .on_event(collect(seen))
        .build(lambda n: ran.append(n) or n * 10)
    )
    assert worker.run_until_idle() == 4
    assert sorted(ran) == [2, 4]
    assert sorted(predicate_saw) == [(1, 1), (2, 1), (3, 1), (4, 1)]
    infos = [storage.fetch_by_id(i) for i in ids]
    assert [i.status for i in infos] == [Status.DONE] * 4
    assert [i.result for i in infos] == [None, 20, None, 40]
    assert sorted(e.task_id for e in of(events.Skipped, seen)) == [ids[0], ids[2]]


def test_filter_marks_the_task_skipped_for_the_layers_around_it():
    backend = memory.backend()
    backend.push_bulk([1, 2])
    marks = []

    def outer(call_next):
        def handle(task, ctx):
            result = call_next(task, ctx)
            marks.append((task.args, task.skipped))
            return result

        return handle

    worker = (
        WorkerBuilder("w")
        .backend(backend)
        .layer(outer)
        .filter(lambda t: t.args > 1)
        .build(lambda n: n)
    )
    worker.run_until_idle()
    assert sorted(marks) == [(1, True), (2, False)]


def test_a_predicate_that_raises_fails_the_attempt(storage):
    def predicate(task):
        raise LookupError("cannot tell")

    task_id = storage.push(1)
    worker = WorkerBuilder("w").backend(storage).filter(predicate).build(lambda n: n)
    worker.run_until_idle()
    info = storage.fetch_by_id(task_id)
    assert info.status is Status.DEAD and "LookupError: cannot tell" in info.errors[-1].error


def test_filter_needs_a_callable():
    with pytest.raises(BuildError, match="predicate"):
        filter(True)  # type: ignore[arg-type]


# circuit_breaker -------------------------------------------------------------------------------
def failing_below_zero(n: int) -> int:
    if n < 0:
        raise ValueError("down")
    return n


def test_circuit_opens_holds_tasks_back_and_closes_after_a_trial(storage):
    seen: list[events.Event] = []
    breaker = circuit_breaker(failures=2, recovery=timedelta(seconds=60))
    with freeze_time("2026-01-01 12:00:00") as frozen:
        bad1, bad2, good1, good2 = storage.push_bulk([-1, -2, 3, 4])
        worker = (
            WorkerBuilder("w")
            .backend(storage)
            .layer(breaker)
            .on_event(collect(seen))
            .build(failing_below_zero)
        )
        assert worker.run_until_idle() == 2  # two failures open it; the rest wait
        assert of(events.CircuitOpened, seen) == [events.CircuitOpened(2)]
        assert breaker.state == "open"
        for task_id in (good1, good2):  # handed back as they were: no attempt counted
            info = storage.fetch_by_id(task_id)
            assert info.status is Status.PENDING and info.attempts == 0

        frozen.tick(timedelta(seconds=59))
        assert worker.run_until_idle() == 0  # still open
        assert storage.fetch_by_id(good1).attempts == 0

        frozen.tick(timedelta(seconds=1))
        assert worker.run_until_idle() == 2  # a trial succeeds: closed, the other runs
        assert of(events.CircuitClosed, seen) == [events.CircuitClosed()]
        assert breaker.state == "closed"
        assert [storage.fetch_by_id(i).result for i in (good1, good2)] == [3, 4]
        assert [storage.fetch_by_id(i).status for i in (bad1, bad2)] == [Status.DEAD] * 2


def test_a_failed_trial_opens_the_circuit_again(storage):
    seen: list[events.Event] = []
    breaker = circuit_breaker(failures=1, recovery=10)
    with freeze_time("2026-01-01 12:00:00") as frozen:
        storage.push(-1)
        worker = (
            WorkerBuilder("w")
            .backend(storage)
            .layer(breaker)
            .on_event(collect(seen))
            .build(failing_below_zero)
        )
        worker.run_until_idle()
        frozen.tick(timedelta(seconds=5))
        trial, after = storage.push_bulk([-2, 7])
        worker.run_until_idle()
        assert storage.fetch_by_id(trial).attempts == 0  # not yet: 5 s of 10

        frozen.tick(timedelta(seconds=5))
        worker.run_until_idle()  # the trial fails: open for another 10 s
        assert storage.fetch_by_id(trial).status is Status.DEAD
        assert of(events.CircuitOpened, seen) == [events.CircuitOpened(1), events.CircuitOpened(2)]
        assert storage.fetch_by_id(after).attempts == 0

        frozen.tick(timedelta(seconds=10))
        worker.run_until_idle()
        assert storage.fetch_by_id(after).result == 7
        assert of(events.CircuitClosed, seen) == [events.CircuitClosed()]


def test_a_success_in_between_resets_the_count(storage):
    seen: list[events.Event] = []
    storage.push_bulk([-1, 1, -2, 2, -3])
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .circuit_breaker(failures=2, recovery=60)
        .on_event(collect(seen))
        .build(failing_below_zero)
    )
    assert worker.run_until_idle() == 5
    assert not of(events.CircuitOpened, seen)


def test_while_open_tasks_wait_in_run_then_run(storage):
    """Real threads and time: the waiting task starts only once recovery has passed."""
    seen: list[events.Event] = []
    opened_at: list[float] = []
    started_at: dict[int, float] = {}
    recovery = 0.2
    breaker = CircuitBreaker(failures=1, recovery=recovery)
    bad, good = storage.push_bulk([-1, 5])

    def handler(n: int) -> int:
        started_at[n] = breaker._now()
        return failing_below_zero(n)

    def on_event(ctx, event):
        seen.append(event)
        if isinstance(event, events.CircuitOpened):
            opened_at.append(breaker._now())
        if isinstance(event, events.Success):
            ctx.stop()

    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .concurrency(2)
        .layer(breaker)
        .on_event(on_event)
        .build(handler)
    )
    assert run_with_safety(worker)
    assert storage.fetch_by_id(good).result == 5
    assert storage.fetch_by_id(bad).status is Status.DEAD
    assert started_at[5] >= opened_at[0] + recovery
    assert [
        type(e) for e in seen if isinstance(e, events.CircuitOpened | events.CircuitClosed)
    ] == [
        events.CircuitOpened,
        events.CircuitClosed,
    ]


def test_a_task_waiting_when_the_worker_stops_is_handed_back_uncounted(storage):
    breaker = circuit_breaker(failures=1, recovery=600)
    bad, waiting = storage.push_bulk([-1, 5])
    worker = WorkerBuilder("w").backend(storage).layer(breaker).build(failing_below_zero)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        until(lambda: breaker.waiting == 1, "a task waiting at the open circuit")
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert breaker.waiting == 0
    info = storage.fetch_by_id(waiting)
    assert info.status is Status.PENDING and info.attempts == 0 and info.errors == ()
    assert storage.fetch_by_id(bad).status is Status.DEAD


@pytest.mark.parametrize(
    ("failures", "recovery", "message"),
    [(0, 60, "failures"), (True, 60, "failures"), (5, -1, "recovery"), (5, "soon", "recovery")],
)
def test_circuit_breaker_checks_its_settings(failures, recovery, message):
    with pytest.raises(BuildError, match=message):
        circuit_breaker(failures, recovery)
