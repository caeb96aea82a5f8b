"""``rate_limit(n, per, key=None)``: per worker, or across the workers of a store.

Starts are measured by the handlers themselves; the assertions are about the limit
(no faster than ``n`` per ``per``, within 20 %), never about speed. The store
primitive (``take_slot``) has its contract tests in ``contract/``.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from typing import Any

import pytest
from freezegun import freeze_time
from helpers import engine_url
from rate_limit_drain import PROCESSES, drain

import taskpipe
from taskpipe import NotStarted, Status, WorkerBuilder, clock, events
from taskpipe.custom import BackendBuilder
from taskpipe.errors import BuildError, CapabilityError, SetupError
from taskpipe.layers import rate_limit
from taskpipe.memory import MemoryBackend
from taskpipe.sql import schema
from taskpipe.sqlite import SqliteStorage, connect

TOLERANCE = 0.2  # the limit holds within 20 %


def check_rate(starts: list[float], n: int, per: float) -> None:
    """``starts`` (seconds) came no faster than ``n`` per ``per``, within 20 %: over
    the whole run, and in every window of ``per`` seconds."""
    starts = sorted(starts)
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    assert rate <= n / per * (1 + TOLERANCE), f"{rate:.2f} starts/s for a limit of {n / per}/s"
    most = max(sum(1 for t in starts if first <= t < first + per) for first in starts)
    assert most <= int(n * (1 + TOLERANCE)), f"{most} starts within {per} s"


def errors_of(collected: list[events.Event]) -> list[events.Event]:
    return [e for e in collected if isinstance(e, events.Error)]


# One worker -----------------------------------------------------------------------------------------
def test_a_worker_starts_tasks_no_faster_than_its_limit_and_fails_none():
    store = MemoryBackend(queue="limited")
    starts: list[float] = []
    seen: list[events.Event] = []
    worker = (
        WorkerBuilder("limited")
        .backend(store)
        .concurrency(4)
        .rate_limit(10, 1)
        .on_event(lambda ctx, event: seen.append(event))
        .build(lambda item: starts.append(clock.real_monotonic()))
    )
    ids = store.push_bulk(range(12))
    assert worker.run_until_idle() == 12
    check_rate(starts, 10, 1.0)
    infos = [store.fetch_by_id(i) for i in ids]
    assert {(info.status, info.attempts) for info in infos} == {(Status.DONE, 1)}
    assert errors_of(seen) == []


def _announce(entered: list[Any], second: threading.Event):
    """A layer (outside the limit) that signals when the second task reaches the limit."""

    def layer(call_next):
        def handle(task, ctx):
            entered.append(task.id)
            if len(entered) == 2:
                second.set()
            return call_next(task, ctx)

        return handle

    return layer


def _run_in_thread(worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def _one_ran_one_handed_back(store, ids, ran) -> None:
    assert len(ran) == 1
    infos = {info.status: info for info in (store.fetch_by_id(i) for i in ids)}
    assert set(infos) == {Status.DONE, Status.PENDING}
    assert infos[Status.PENDING].attempts == 0  # handed back uncounted
    assert not infos[Status.PENDING].errors


def test_a_stopping_worker_hands_back_the_task_waiting_for_its_limit():
    store = MemoryBackend(queue="limited")
    entered: list[Any] = []
    second, started = threading.Event(), threading.Event()
    ran: list[str] = []
    seen: list[events.Event] = []

    def handler(item: str) -> None:
        ran.append(item)
        started.set()

    worker = (
        WorkerBuilder("limited")
        .backend(store)
        .concurrency(2)
        .layer(_announce(entered, second))
        .rate_limit(1, 3600)  # the task after the first would wait an hour
        .on_event(lambda ctx, event: seen.append(event))
        .build(handler)
    )
    ids = store.push_bulk(["first", "second"])
    thread = _run_in_thread(worker)
    assert started.wait(10) and second.wait(10)  # one ran; the other is at its limit
    worker.stop()
    thread.join(10)
    assert not thread.is_alive(), "the stop did not interrupt the task's wait"
    _one_ran_one_handed_back(store, ids, ran)
    assert errors_of(seen) == []


class SignallingStore(MemoryBackend):
    """A memory store whose ``take_slot`` says when it made a caller wait."""

    def __init__(self) -> None:
        super().__init__(queue="limited")
        self.waiting = threading.Event()

    def take_slot(self, key: str, interval: float) -> float:
        wait = super().take_slot(key, interval)
        if wait > 0:
            self.waiting.set()
        return wait


def test_a_stop_interrupts_a_wait_for_a_shared_limit():
    store = SignallingStore()
    ran: list[str] = []
    worker = (
        WorkerBuilder("limited").backend(store).concurrency(2).rate_limit(1, 3600, key="api")
    ).build(ran.append)
    ids = store.push_bulk(["first", "second"])
    thread = _run_in_thread(worker)
    assert store.waiting.wait(10)  # a pool thread has its slot, an hour away
    worker.stop()
    thread.join(10)
    assert not thread.is_alive(), "the stop did not interrupt the task's wait"
    _one_ran_one_handed_back(store, ids, ran)


def test_not_started_raised_while_the_worker_runs_is_a_failed_attempt():
    store = MemoryBackend(queue="q")

    def handler(item: int) -> None:
        raise NotStarted("not from a layer")

    task_id = store.push(1)
    WorkerBuilder("w").backend(store).build(handler).run_until_idle()
    info = store.fetch_by_id(task_id)
    assert (info.status, info.attempts) == (Status.DEAD, 1)
    assert info.errors[0].error == "NotStarted: not from a layer"


# Across workers ------------------------------------------------------------------------------------
def test_a_key_is_shared_by_the_stores_of_one_database_whatever_their_queue(db):
    emails, reports = SqliteStorage(db, queue="emails"), SqliteStorage(db, queue="reports")
    with freeze_time("2030-01-01"):
        assert emails.take_slot("smtp", 1.0) == 0.0
        assert reports.take_slot("smtp", 1.0) == 1.0
        assert reports.take_slot("other", 1.0) == 0.0


def test_a_pipe_counts_a_shared_limit_in_its_sink():
    sink = MemoryBackend(queue="piped")
    pipe = taskpipe.pipe_to(iter([1, 2]), sink)
    WorkerBuilder("w").backend(pipe).rate_limit(5, 1, key="api").build(print)
    with freeze_time("2030-01-01"):
        assert pipe.take_slot("api", 1.0) == 0.0
        assert sink.take_slot("api", 1.0) == 1.0


def _cross_process_url(kind: str, tmp_path) -> tuple[str, Any]:
    """The URL the worker processes open, and the parent's store on it (set up)."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'limits.db'}"
    else:
        url = engine_url(kind, "run the cross-process rate limit test on it")
        if kind == "redis":
            url += ("&" if "?" in url else "?") + f"prefix=tp-limits-{uuid.uuid4().hex[:12]}"
    store: Any = taskpipe.open_storage(url)
    type(store).setup(store)
    return url, store


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mysql", "redis"])
def test_a_rate_limit_of_5_per_second_across_two_worker_processes_holds(kind, tmp_path):
    url, store = _cross_process_url(kind, tmp_path)
    queue, key = f"limited-{uuid.uuid4().hex[:8]}", f"api-{uuid.uuid4().hex[:8]}"
    try:
        records = drain(url, queue, key, tasks=15, rate=(5, 1.0))
    finally:
        if kind == "redis":
            store.drop()
            store.close()
        else:
            store.close_thread_connection()
    assert {record.attempts for record in records} == {1}  # waited, never failed
    starts = [record.result["at"] for record in records]
    check_rate(starts, 5, 1.0)
    # Not slower either: the two processes kept the limit busy (within 20 %).
    rate = (len(starts) - 1) / (max(starts) - min(starts))
    assert rate >= 5 * (1 - TOLERANCE), f"{rate:.2f} starts/s for a limit of 5/s"
    assert {record.result["worker"] for record in records} == {
        f"limited-{i}" for i in range(PROCESSES)
    }


# Mistakes ------------------------------------------------------------------------------------------
def _no_limits_store():
    def fetcher(db, config, ctx):
        return iter(())

    return BackendBuilder().database(None).fetcher(fetcher).sink(lambda db, c: print).build()


def test_a_key_on_a_store_that_cannot_count_is_a_build_error():
    builder = WorkerBuilder("w").backend(_no_limits_store()).rate_limit(5, 1, key="api")
    with pytest.raises(CapabilityError, match="'rate_limits' capability.*per worker"):
        builder.build(print)
    assert issubclass(CapabilityError, BuildError)
    WorkerBuilder("w").backend(_no_limits_store()).rate_limit(5, 1).build(print)  # per worker


def test_a_key_without_a_store_says_how_to_give_one():
    with pytest.raises(CapabilityError, match="needs the store"):
        rate_limit(5, 1, key="api")


@pytest.mark.parametrize(
    ("n", "per", "key", "message"),
    [
        (0, 1, None, "positive int"),
        (1.5, 1, None, "positive int"),
        (True, 1, None, "positive int"),
        (5, 0, None, "positive finite"),
        (5, -1, None, "must not be negative"),
        (5, float("inf"), None, "positive finite"),
        (5, "1s", None, "timedelta or a number"),
        (5, 1, "", "key must be"),
        (5, 1, "k" * 201, "key must be"),
    ],
)
def test_bad_limits_are_build_errors(n, per, key, message):
    with pytest.raises(BuildError, match=message):
        rate_limit(n, per, key=key, store=MemoryBackend())
    with pytest.raises(BuildError, match=message):
        WorkerBuilder("w").backend(MemoryBackend()).rate_limit(n, per, key=key).build(print)


# The SQL table ------------------------------------------------------------------------------------
def test_a_database_at_schema_4_gets_the_limits_table_on_setup(tmp_path):
    path = str(tmp_path / "old.db")
    db = connect(path)
    SqliteStorage.setup(db)
    db.close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute(f"DROP TABLE {schema.LIMITS}")
        raw.execute(f"UPDATE {schema.META} SET version = 4")
    raw.close()
    storage = SqliteStorage(connect(path))
    with pytest.raises(SetupError, match="schema version 4"):
        storage.check_setup()
    SqliteStorage.setup(storage)
    SqliteStorage.setup(storage)  # idempotent
    assert storage.take_slot("api", 1.0) == 0.0
    assert 0.5 < storage.take_slot("api", 1.0) <= 1.0
    storage.db.close()
