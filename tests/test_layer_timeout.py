"""The ``timeout`` layer: an overrunning attempt fails in time with ``TaskTimeout``, the
pool keeps its concurrency, the abandoned thread's late result goes nowhere, cooperative
and async handlers are cancelled, and runner threads end with their run."""

from __future__ import annotations

import asyncio
import importlib
import math
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from workflow_support import KINDS, store_maker

from taskpipe import (
    Attempt,
    BuildError,
    RetryPolicy,
    Status,
    Task,
    TaskId,
    WorkerBuilder,
    WorkerContext,
    events,
)
from taskpipe.layers import TaskTimeout, timeout
from taskpipe.workflow import Workflow

timeout_module = importlib.import_module("taskpipe.layers.timeout")  # (not the function)
HOLD = 10.0  # the longest a test holds a hung handler (it is released long before)
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(params=KINDS)
def store(request, tmp_path):
    """A store on a queue of its own: memory, SQLite, and each server whose URL is set."""
    for make in store_maker(request.param, tmp_path):
        yield make()


def timeout_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "-timeout-" in t.name]


def join_thread(name: str) -> None:
    for thread in threading.enumerate():
        if thread.name == name:
            thread.join(HOLD)
            assert not thread.is_alive()


def test_a_hung_handler_fails_in_time_while_the_others_keep_running(store):
    """timeout(0.5) at concurrency 2: the hung attempt fails with TaskTimeout while the
    other tasks run; its pool thread is freed at once (two tasks pushed when it is
    abandoned meet at a barrier, so both pool threads run them while the hung handler
    still holds its thread), and its late result, returned while the worker still runs,
    is not stored."""
    release, returned = threading.Event(), threading.Event()
    barrier = threading.Barrier(2, timeout=HOLD)
    log: list[str] = []
    lock = threading.Lock()

    def note(entry: str) -> None:
        with lock:
            log.append(entry)

    def handler(kind: str) -> str:
        note(kind)
        if kind == "hang":
            try:
                release.wait(HOLD)
                return "late result"
            finally:
                returned.set()
        if kind == "pair":
            barrier.wait()  # both pool threads are needed: one was freed by the timeout
            release.set()  # the hung handler now returns, before the run ends
            assert returned.wait(HOLD)
        return f"{kind} done"

    seen: list[events.Event] = []
    pairs: list[object] = []

    def on_event(ctx: WorkerContext, event: events.Event) -> None:
        seen.append(event)
        if isinstance(event, events.Abandoned):
            note("abandoned")
            pairs.extend(store.push_bulk(["pair", "pair"]))

    hung = store.push_task(Task("hang", priority=9))
    quick = store.push_bulk(["quick"] * 3)
    worker = WorkerBuilder("w").backend(store).concurrency(2).timeout(0.5).on_event(on_event)
    try:
        assert worker.build(handler).run_until_idle() == 6
    finally:
        release.set()
    # The quick tasks ran while the hung handler held its thread:
    assert sorted(log[:4]) == ["hang", "quick", "quick", "quick"]
    assert log[4:] == ["abandoned", "pair", "pair"]
    info = store.fetch_by_id(hung)
    assert info.status == Status.DEAD
    assert info.result is None
    assert info.errors[-1].error.startswith(
        f"TaskTimeout: task {hung} ran longer than its 0.5 s timeout; its thread taskpipe-w-"
    )
    assert [store.fetch_by_id(t).result for t in quick + pairs] == ["quick done"] * 3 + [
        "pair done"
    ] * 2
    abandoned = [e for e in seen if isinstance(e, events.Abandoned)]
    assert [e.task_id for e in abandoned] == [hung]
    assert abandoned[0].thread in info.errors[-1].error
    join_thread(abandoned[0].thread)  # it ended once its handler returned
    assert store.fetch_by_id(hung).result is None


def test_a_timed_out_attempt_is_retried_and_its_late_result_never_lands(storage):
    """Under a frozen clock: the first attempt hangs and times out (real time) and is
    Failed; the retry returns; the first attempt then returns too late to count."""
    release, returned = threading.Event(), threading.Event()

    def handler(value: int, attempt: Attempt) -> str:
        if attempt == 1:
            try:
                release.wait(HOLD)
                return "first"
            finally:
                returned.set()
        release.set()
        assert returned.wait(HOLD)
        return "second"

    tid = storage.push(1)
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .timeout(timedelta(milliseconds=300))
        .retry(RetryPolicy.retries(1))
        .build(handler)
    )
    try:
        with freeze_time(T0) as frozen:
            assert worker.run_until_idle() == 1
            info = storage.fetch_by_id(tid)
            assert info.status == Status.FAILED
            assert "TaskTimeout: task" in info.errors[0].error
            frozen.tick(timedelta(seconds=5))
            assert worker.run_until_idle() == 1
    finally:
        release.set()
    info = storage.fetch_by_id(tid)
    assert (info.status, info.result, info.attempts) == (Status.DONE, "second", 2)


@pytest.fixture
def long_grace(monkeypatch):
    """A cancelled handler has HOLD seconds to return (not 0.1 s): a loaded machine
    cannot make it look abandoned."""
    monkeypatch.setattr(timeout_module, "CANCEL_GRACE", HOLD)


def test_a_handler_that_checks_cancelled_returns_early_and_is_not_abandoned(storage, long_grace):
    seen: list[events.Event] = []
    left: list[float | None] = []

    def handler(value: int, ctx: WorkerContext) -> str:
        left.append(ctx.time_left)
        deadline = time.monotonic() + HOLD
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)  # a long computation, checking now and then
        return "partial"

    tid = storage.push(1)
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .timeout(0.3)
        .on_event(lambda ctx, e: seen.append(e))
        .build(handler)
    )
    worker.run_until_idle()
    info = storage.fetch_by_id(tid)
    assert (info.status, info.result) == (Status.DEAD, None)
    assert info.errors[-1].error == (
        f"TaskTimeout: task {tid} ran longer than its 0.3 s timeout and was cancelled"
    )
    assert not [e for e in seen if isinstance(e, events.Abandoned)]
    assert left[0] is not None and 0 <= left[0] <= 0.3


def test_an_async_handler_is_cancelled_for_real(storage, long_grace):
    cancelled = threading.Event()
    seen: list[events.Event] = []

    async def handler(value: int) -> str:
        try:
            await asyncio.sleep(HOLD)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    tid = storage.push(1)
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .timeout(0.2)
        .on_event(lambda ctx, e: seen.append(e))
        .build(handler)
    )
    worker.run_until_idle()
    assert cancelled.is_set()
    info = storage.fetch_by_id(tid)
    assert info.status == Status.DEAD
    assert info.errors[-1].error.endswith("ran longer than its 0.2 s timeout and was cancelled")
    assert not [e for e in seen if isinstance(e, events.Abandoned)]


def test_a_timeout_error_at_the_deadline_is_the_deadlines_and_an_early_one_the_handlers(
    storage, long_grace
):
    """A handler (or an async handler's coroutine, cancelled at ``ctx.time_left``) that
    raises ``TimeoutError`` as the deadline passes may finish before the layer sees the
    deadline pass: it is the layer's timeout all the same. One raised early is the
    handler's own error."""
    late = [storage.push(i) for i in range(5)]

    def at_the_deadline(value: int, ctx: WorkerContext) -> None:
        while ctx.time_left > 0:  # (holding the GIL: the layer's thread wakes late)
            pass
        raise TimeoutError("mine, at the deadline")

    WorkerBuilder("w").backend(storage).timeout(0.05).build(at_the_deadline).run_until_idle()
    for tid in late:
        assert (
            storage.fetch_by_id(tid)
            .errors[-1]
            .error.endswith("ran longer than its 0.05 s timeout and was cancelled")
        )
    early = storage.push(-1)

    def at_once(value: int) -> None:
        raise TimeoutError("mine, early")

    WorkerBuilder("w").backend(storage).timeout(5).build(at_once).run_until_idle()
    assert storage.fetch_by_id(early).errors[-1].error == "TimeoutError: mine, early"


def test_a_quick_handler_keeps_its_result_or_its_own_error(storage):
    ok, bad = storage.push(2), storage.push(-1)

    async def double(value: int) -> int:
        return value * 2

    def check(value: int) -> int:
        if value < 0:
            raise ValueError(f"negative: {value}")
        return value * 2

    WorkerBuilder("w").backend(storage).timeout(5).build(check).run_until_idle()
    assert storage.fetch_by_id(ok).result == 4
    assert storage.fetch_by_id(bad).errors[-1].error == "ValueError: negative: -1"
    again = storage.push(21)
    WorkerBuilder("w").backend(storage).timeout(5).build(double).run_until_idle()
    assert storage.fetch_by_id(again).result == 42


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt(), SystemExit(3)])
def test_the_handlers_exception_reaches_the_caller_unchanged(exc):
    def raising(task, ctx):
        raise exc

    ctx = WorkerContext("unit", capacity=1, report=print)
    handle = timeout(5)(raising)
    with pytest.raises(type(exc)) as caught:
        handle(Task(1), ctx)
    assert caught.value is exc
    ctx._finish()


@pytest.mark.parametrize("bad", [0, -1, 0.0, math.nan, math.inf, "5", None, True])
def test_a_bad_duration_is_a_build_error(bad, storage):
    with pytest.raises(BuildError, match="timeout"):
        timeout(bad)
    with pytest.raises(BuildError, match="timeout"):
        WorkerBuilder("w").backend(storage).timeout(bad)


def test_runner_threads_are_reused_within_a_run_and_end_with_it(storage):
    names: set[str] = set()  # the threads that ran the handler, this run

    def handler(value: int) -> int:
        names.add(threading.current_thread().name)
        assert threading.current_thread().daemon
        return value

    worker = WorkerBuilder("w").backend(storage).concurrency(2).timeout(5).build(handler)
    before = len(timeout_threads())
    for _ in range(10):
        names.clear()
        storage.push_bulk(list(range(10)))
        assert worker.run_until_idle() == 10
        assert 1 <= len(names) <= 2  # reused: at most one per pool thread
        assert all(name.startswith("taskpipe-w-timeout-") for name in names)
        for thread in timeout_threads():
            thread.join(HOLD)  # every runner of the run ends with it
        assert len(timeout_threads()) == before


def test_workflow_steps_run_under_a_timeout(storage):
    release = threading.Event()

    def slow(value: int) -> int:
        if value < 0:
            release.wait(HOLD)
        return value + 1

    flow = Workflow("timed").and_then(slow).and_then(slow)
    ok = storage.push_start(1, flow=flow)
    hung = storage.push_start(-5, flow=flow)
    try:
        WorkerBuilder("w").backend(storage).concurrency(2).timeout(0.3).build(flow).run_until_idle()
    finally:
        release.set()
    assert storage.workflow_status(ok).result == 3
    status = storage.workflow_status(hung)
    assert status.state == "failed"
    assert "TaskTimeout" in status.error


def test_the_layer_alone_raises_task_timeout_and_cancels_the_handler():
    release, saw_cancel = threading.Event(), threading.Event()

    def hung(task, ctx):
        release.wait(HOLD)
        if ctx.cancelled:
            saw_cancel.set()
        return "late"

    ctx = WorkerContext("unit", capacity=1, report=print)
    try:
        with pytest.raises(TaskTimeout, match=r"task 7 ran longer than its 0\.2 s timeout"):
            timeout(timedelta(milliseconds=200))(hung)(Task(7, id=TaskId(7)), ctx)
    finally:
        release.set()
    assert saw_cancel.wait(HOLD)  # in the handler's own thread
    assert not ctx.cancelled  # not in the caller's
    ctx._finish()
