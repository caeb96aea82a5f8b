"""The worker and the stores under failure: a store that is down, an outcome the store
refuses, tasks that must run alone under load, a custom fetcher nothing wakes, a pipe
whose source fails with a retry pending, runs in another PID namespace."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from freezegun import freeze_time

from taskpipe import (
    OutcomeRefused,
    PipeError,
    RetryPolicy,
    Status,
    StorageError,
    Task,
    TaskId,
    WorkerBuilder,
    WorkerContext,
    events,
    memory,
    pipe_to,
)
from taskpipe.custom import BackendBuilder
from taskpipe.sqlite import Config, SqliteStorage


# The store is down: outcomes wait, with growing pauses, and are written once ------------
class Flaky(memory.MemoryBackend):
    """A memory store whose ``ack`` fails while ``failures`` lasts."""

    def __init__(self, failures: list[BaseException]):
        super().__init__()
        self.failures = failures
        self.calls: list[tuple[float, list[int]]] = []

    def ack(self, outcomes):
        self.calls.append((time.monotonic(), [int(o.task_id) for o in outcomes]))
        if self.failures:
            raise self.failures.pop(0)
        return super().ack(outcomes)


def test_while_the_store_is_down_the_worker_waits_longer_between_tries():
    store = Flaky([StorageError("database is down")] * 5)
    store.push(1)
    assert WorkerBuilder("w").backend(store).build(lambda n: n).run_until_idle() == 1
    assert store.fetch_by_id(1).status is Status.DONE
    times = [at for at, _ in store.calls]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(times) == 6  # five failures, then the write: no hot loop
    assert all(later >= 1.5 * earlier for earlier, later in zip(gaps, gaps[1:], strict=False))


def test_an_outcome_refused_and_an_outage_in_one_flush_lose_nothing():
    """The batch is refused (one outcome is bad); written one by one, the second write
    meets an outage: the first is announced once, the rest written later, none Dead."""
    store = Flaky([OutcomeRefused("a follow-up clashes"), StorageError("gone for a moment")])
    store.push_bulk([1, 2, 3])
    seen: list[tuple[str, int]] = []

    def on_event(ctx, event) -> None:
        if isinstance(event, events.Success | events.Dead):
            seen.append((type(event).__name__, int(event.task_id)))

    worker = WorkerBuilder("w").backend(store).concurrency(3).on_event(on_event).build(lambda n: n)
    assert worker.run_until_idle() == 3
    assert sorted(seen) == [("Success", 1), ("Success", 2), ("Success", 3)]
    assert {int(t.id): t.status for t in store.list_tasks()} == {
        1: Status.DONE,
        2: Status.DONE,
        3: Status.DONE,
    }


# Tasks that must run alone do not wait behind a backlog ------------------------------------
def test_tasks_to_run_alone_run_before_a_backlog_and_alone(db):
    config = Config(keep_alive=1, reenqueue_orphaned_after=10)
    storage = SqliteStorage(db, config=config)
    with freeze_time("2026-01-01 12:00:00") as frozen:
        suspects = storage.push_bulk(["suspect-1", "suspect-2"])
        dead = WorkerContext("dead", capacity=2, report=print)
        elsewhere = SqliteStorage(db, config=config)
        elsewhere._host_id = "another-host"
        elsewhere.beat(dead)
        assert len(elsewhere.claim(dead, 2)) == 2  # it held both when it died
        storage.push_bulk(range(200))
        frozen.tick(timedelta(seconds=11))
        order: list[object] = []
        alone: list[bool] = []
        lock = threading.Lock()
        running = [0]

        def handler(item: object) -> None:
            with lock:
                running[0] += 1
                order.append(item)
                if isinstance(item, str):
                    alone.append(running[0] == 1)
            with lock:
                running[0] -= 1

        worker = WorkerBuilder("w").backend(storage).concurrency(4).build(handler)
        assert worker.run_until_idle() == 202
    positions = [order.index(s) for s in ("suspect-1", "suspect-2")]
    assert max(positions) < 100, positions  # not after the whole backlog
    assert alone == [True, True]
    assert all(not r.counted for s in suspects for r in storage.fetch_by_id(s).recoveries)


# A custom fetcher is asked again after every polling delay ----------------------------------
def test_a_custom_fetcher_is_asked_again_after_quiet_waits(monkeypatch):
    rows: list[int] = []
    asked = [0]

    def fetcher(db, config, ctx):
        while True:
            asked[0] += 1
            yield Task(rows.pop(), id=TaskId(1)) if rows else None

    backend = (
        BackendBuilder().database(None).fetcher(fetcher).sink(lambda db, c: lambda t: None).build()
    )
    waits = [0]

    def quiet_wait(ctx: WorkerContext, timeout: float | None) -> bool:
        waits[0] += 1
        if waits[0] == 3:
            rows.append(42)  # appears in the user's store: nothing wakes the worker
        if waits[0] > 50:
            ctx.stop()
        return False

    monkeypatch.setattr(WorkerContext, "wait", quiet_wait)
    ran: list[int] = []

    def handler(item: int, ctx: WorkerContext) -> None:
        ran.append(item)
        ctx.stop()

    WorkerBuilder("w").backend(backend).build(handler).run()
    assert ran == [42] and waits[0] <= 4


# A pipe whose source fails finishes what it pushed, retries included -----------------------
def test_a_failed_pipe_source_ends_the_run_once_its_tasks_are_finished():
    def source():
        yield 1
        raise ValueError("the feed broke")

    sink = memory.backend(poll_interval=0.01)
    attempts: list[int] = []

    def handler(item: int) -> None:
        attempts.append(item)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    retry = RetryPolicy.retries(2).backoff(base=0.02, jitter=0)
    worker = WorkerBuilder("w").backend(pipe_to(source(), sink)).retry(retry).build(handler)
    try:
        worker.run()
    except PipeError as exc:
        assert isinstance(exc.__cause__, ValueError)
    else:
        raise AssertionError("run() should raise the source's PipeError")
    assert attempts == [1, 1] and sink.list_tasks()[0].status is Status.DONE


# Backoff never overflows ----------------------------------------------------------------------
def test_a_thousandth_retry_waits_the_cap():
    policy = RetryPolicy.retries(5000).backoff(base=1, factor=2, cap=3600, jitter=0)
    assert policy.delay(1) == 1 and policy.delay(2000) == 3600


# Runs in another PID namespace are judged by their heartbeats -------------------------------
def test_a_run_from_another_pid_namespace_is_judged_by_its_heartbeat(db):
    config = Config(keep_alive=1, reenqueue_orphaned_after=10)
    storage = SqliteStorage(db, config=config)
    with freeze_time("2026-01-01 12:00:00") as frozen:
        task_id = storage.push("held")
        container = SqliteStorage(db, config=config)
        container._host_id = storage._host_id.rsplit("|", 1)[0] + "|another-namespace"
        run = WorkerContext("in-a-container", capacity=1, report=print)
        container.beat(run)
        container.claim(run, 1)
        # Its pid means nothing here (it may not even exist): only its beats count.
        db.execute_sql("UPDATE taskpipe_workers SET pid = 999999 WHERE run_id = ?", (run.run_id,))
        frozen.tick(timedelta(seconds=5))
        storage.beat(WorkerContext("here", capacity=1, report=print))
        assert storage.fetch_by_id(task_id).status is Status.RUNNING
        frozen.tick(timedelta(seconds=6))
        storage.beat(WorkerContext("here-again", capacity=1, report=print))
    assert storage.fetch_by_id(task_id).status is Status.PENDING
