"""The store seam (issue 9) and what a new user hit porting the seed examples: async
handlers, a store never set up, delayed tasks, ``Idle``, partials, custom backends,
capabilities, URLs, and migrating a database made by taskpipe 0.1.0."""

from __future__ import annotations

import asyncio
import functools
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

import taskpipe
from taskpipe import (
    BuildError,
    CapabilityError,
    RetryPolicy,
    SetupError,
    Status,
    StorageError,
    Task,
    TaskId,
    WorkerBuilder,
    WorkerContext,
    events,
    memory,
)
from taskpipe.cron import CronStream
from taskpipe.custom import BackendBuilder
from taskpipe.sql import schema
from taskpipe.sqlite import SqliteStorage, connect

DATA = Path(__file__).parent / "data"


# async def handlers -------------------------------------------------------------------------
def test_an_async_handler_runs_and_its_result_is_stored(storage):
    task_id = storage.push(20)

    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    assert WorkerBuilder("w").backend(storage).build(double).run_until_idle() == 1
    info = storage.fetch_by_id(task_id)
    assert info.status is Status.DONE and info.result == 40


def test_async_handlers_run_at_most_concurrency_at_once(storage):
    storage.push_bulk(range(6))
    both = threading.Barrier(2, timeout=10)
    lock = threading.Lock()
    running, most = [0], [0]

    async def handler(n: int) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if n < 2:  # the first two meet: they must run at the same time
            await asyncio.to_thread(both.wait)
        with lock:
            running[0] -= 1

    assert WorkerBuilder("w").backend(storage).concurrency(2).build(handler).run_until_idle() == 6
    assert most[0] == 2 and not both.broken


def test_an_async_handler_that_raises_is_retried(storage):
    async def flaky(item: str, attempt: taskpipe.Attempt) -> str:
        if attempt == 1:
            raise ValueError("first try")
        return "second"

    with freeze_time("2026-01-01") as frozen:
        task_id = storage.push("x")
        worker = WorkerBuilder("w").backend(storage).retry(RetryPolicy.retries(1)).build(flaky)
        assert worker.run_until_idle() == 1
        frozen.tick(timedelta(seconds=2))
        assert worker.run_until_idle() == 1
    info = storage.fetch_by_id(task_id)
    assert info.result == "second" and [e.error for e in info.errors] == ["ValueError: first try"]


# A store never set up ---------------------------------------------------------------------------
def test_a_worker_on_a_store_never_set_up_fails_at_once(db_path):
    storage = SqliteStorage(connect(db_path))
    worker = WorkerBuilder("w").backend(storage).build(lambda item: None)
    with pytest.raises(SetupError, match=r"setup\(db\) was not called"):
        worker.run()
    with pytest.raises(SetupError):
        worker.run_until_idle()


# Idle fires when there is nothing to do, before the wait -----------------------------------------
def test_idle_fires_when_the_queue_empties_before_the_worker_waits(storage, monkeypatch):
    seen: list[str] = []

    def recording_wait(ctx: WorkerContext, timeout: float | None) -> bool:
        seen.append("wait")
        ctx.stop()
        return False

    monkeypatch.setattr(WorkerContext, "wait", recording_wait)
    storage.push(1)

    def on_event(ctx: WorkerContext, event: events.Event) -> None:
        if isinstance(event, events.Idle | events.Success):
            seen.append(type(event).__name__)

    WorkerBuilder("w").backend(storage).on_event(on_event).build(lambda item: None).run()
    assert seen == ["Success", "Idle", "wait"]


# Any callable whose signature can be read ---------------------------------------------------------
@dataclass
class Email:
    to: str


def test_partials_and_bound_methods_are_handlers(storage):
    storage.push({"to": "a@example.com"})
    storage.push({"to": "b@example.com"})
    sent: list[tuple[str, str, int]] = []

    def send(job: Email, task_id: TaskId, *, via: str) -> None:
        sent.append((job.to, via, int(task_id)))

    class Mailer:
        def __init__(self, via: str):
            self.via = via

        def send(self, job: Email, task_id: TaskId) -> None:
            sent.append((job.to, self.via, int(task_id)))

    WorkerBuilder("w").backend(storage).build(functools.partial(send, via="smtp")).run_until_idle()
    storage.push({"to": "c@example.com"})
    WorkerBuilder("w").backend(storage).build(Mailer("api").send).run_until_idle()
    assert sent == [
        ("a@example.com", "smtp", 1),
        ("b@example.com", "smtp", 2),
        ("c@example.com", "api", 3),
    ]


# Every store behaves the same to a handler ------------------------------------------------------------
def test_the_memory_store_encodes_and_decodes_like_the_others():
    store = memory.backend()
    store.push({"to": "a@example.com"})
    got: list[object] = []
    WorkerBuilder("w").backend(store).build(got.append).run_until_idle()
    with pytest.raises(taskpipe.CodecError):
        store.push(object())
    typed: list[Email] = []
    store.push({"to": "b@example.com"})

    def handler(job: Email) -> None:
        typed.append(job)

    WorkerBuilder("w").backend(store).build(handler).run_until_idle()
    assert got == [{"to": "a@example.com"}] and typed == [Email("b@example.com")]


def test_a_memory_push_all_is_all_or_nothing():
    store = memory.backend()
    store.push_task(Task(1, id=TaskId(7)))
    with pytest.raises(taskpipe.PushError, match="7"):
        store.push_bulk([2, 3]) and store.push_all([Task(4), Task(5, id=TaskId(7))])
    with pytest.raises(taskpipe.PushError):
        store.push_all([Task(4), Task(5, id=TaskId(7))])
    assert sorted(t.args for t in store.list_tasks()) == [1, 2, 3]


# Custom backends ----------------------------------------------------------------------------------------
def _custom(values: list[object], **builder_calls):
    def fetcher(db, config, ctx):
        for i, value in enumerate(values):
            yield Task(value, id=TaskId(i + 1))

    builder = (
        BackendBuilder().database(None).fetcher(fetcher).sink(lambda db, config: lambda task: None)
    )
    for name, value in builder_calls.items():
        builder = getattr(builder, name)(value)
    return builder.build()


def test_a_custom_fetchers_plain_values_become_the_annotated_type():
    got: list[Email] = []

    def handler(job: Email) -> None:
        got.append(job)

    WorkerBuilder("w").backend(_custom([{"to": "a@example.com"}])).build(handler).run()
    assert got == [Email("a@example.com")]


def test_a_retry_policy_on_a_backend_that_cannot_record_outcomes_is_a_build_error():
    with pytest.raises(BuildError, match=r"on_outcome"):
        WorkerBuilder("w").backend(_custom([1])).retry(RetryPolicy.retries(3)).build(print)
    outcomes: list[object] = []
    backend = _custom([1], on_outcome=outcomes.append)
    WorkerBuilder("w").backend(backend).retry(RetryPolicy.retries(3)).build(print)  # fine


# Capabilities are declared and checked ---------------------------------------------------------------------
def test_capabilities_are_declared():
    sqlite_caps = SqliteStorage.capabilities
    assert (
        sqlite_caps.introspection
        and sqlite_caps.keys
        and sqlite_caps.follow_ups
        and sqlite_caps.recovery
    )
    assert not sqlite_caps.wakeups  # only with_hook adds cross-process wake-ups
    assert (
        memory.MemoryBackend.capabilities.bounded and not memory.MemoryBackend.capabilities.recovery
    )


def test_a_hooked_store_declares_wakeups(db_path, db):
    hooked = SqliteStorage.with_hook(db_path)
    assert hooked.capabilities.wakeups and hooked.hooked
    assert not SqliteStorage(db).capabilities.wakeups


def test_a_cron_stream_needs_a_store_with_keys():
    with pytest.raises(CapabilityError, match="keys"):
        CronStream("@hourly").pipe_to(_custom([]))
    CronStream("@hourly").pipe_to(memory.backend())  # memory keeps keys too


# Opening stores from URLs ---------------------------------------------------------------------------------
def test_connect_and_open_storage_take_urls_and_paths(tmp_path):
    path = tmp_path / "jobs.db"
    db = taskpipe.connect(f"sqlite:///{path}")
    SqliteStorage.setup(db)
    storage = taskpipe.open_storage(str(path), queue="emails")
    assert isinstance(storage, SqliteStorage) and storage.queue == "emails"
    storage.push(1)
    assert taskpipe.open_storage(db).list_tasks(queue="emails")[0].args == 1
    assert taskpipe.open_storage(path, queue="emails").next_due() is not None
    memory_db = taskpipe.connect("sqlite:///:memory:")
    SqliteStorage.setup(memory_db)
    assert taskpipe.open_storage(memory_db).push(1) == 1


def test_connect_refuses_what_it_cannot_open():
    with pytest.raises(ValueError, match="unknown database URL scheme 'ftp'"):
        taskpipe.connect("ftp://example.com/jobs")
    with pytest.raises(ValueError):
        taskpipe.connect("")
    with pytest.raises(TypeError):
        taskpipe.open_storage(42)


# Migrating a database made by taskpipe 0.1.0 -----------------------------------------------------------------
def test_a_database_made_by_0_1_0_migrates_on_setup(tmp_path):
    path = tmp_path / "old.db"
    shutil.copy(DATA / "taskpipe-0.1.0.db", path)
    storage = SqliteStorage(connect(str(path)), queue="legacy")
    with pytest.raises(SetupError, match="schema version 1.*migrate"):
        WorkerBuilder("w").backend(storage).build(lambda item: None).run_until_idle()
    SqliteStorage.setup(storage)
    SqliteStorage.setup(storage)  # idempotent
    before = {t.id: (t.status, t.args, t.result) for t in storage.list_tasks()}
    assert before == {
        1: (Status.DONE, {"n": 1}, {"ok": {"n": 1}}),
        2: (Status.DONE, 2, {"ok": 2}),
        3: (Status.DONE, 3, {"ok": 3}),
        4: (Status.PENDING, "later", None),
        5: (Status.DEAD, "boom", None),
    }
    assert storage.fetch_by_id(5).errors[0].error == "ValueError: bad"
    assert storage.fetch_by_id(4).meta == {"m": 1}
    assert storage.push_task(Task("again", key="k1")) == 4  # the old key still holds
    storage.retry(5)
    ran: list[object] = []
    assert WorkerBuilder("w").backend(storage).build(ran.append).run_until_idle() == 1
    assert ran == ["boom"]
    version = sqlite3.connect(path).execute(f"SELECT version FROM {schema.META}").fetchone()[0]
    assert version == schema.SCHEMA_VERSION


def test_a_database_newer_than_this_code_is_refused(tmp_path, db):
    db.execute_sql(f"UPDATE {schema.META} SET version = 99")
    with pytest.raises(SetupError, match="newer"):
        SqliteStorage.setup(db)


def test_an_engine_without_its_module_says_so(monkeypatch):
    from taskpipe import connection

    engines = {**connection.ENGINES, "oracle": ("taskpipe.oracle", "Oracle", "oracle")}
    monkeypatch.setattr(connection, "ENGINES", engines)
    with pytest.raises(StorageError, match=r"no Oracle store yet \(oracle:// URLs\)"):
        taskpipe.connect("oracle://localhost/none")


def test_an_async_handler_that_awaits_a_timer_runs_under_a_frozen_clock(storage):
    async def pause_then_answer(n: int) -> int:
        await asyncio.sleep(0.01)  # a timer on the loop: real time, whatever freezegun says
        return n + 1

    with freeze_time("2026-01-01 12:00:00"):
        task_id = storage.push(41)
        worker = WorkerBuilder("w").backend(storage).build(pause_then_answer)
        assert worker.run_until_idle() == 1
    assert storage.fetch_by_id(task_id).result == 42


def test_a_store_written_from_the_contract_alone_works():
    """What the README and ``Store``'s docstring tell a store author, and nothing more."""
    from taskpipe.store import Capabilities, Claim, Store

    class DictStore(Store):
        capabilities = Capabilities()

        def __init__(self):
            super().__init__(queue="dicts")
            self.rows: dict[int, tuple] = {}

        def insert(self, rows):
            ids = []
            for row in rows:
                task_id = len(self.rows) + 1
                self.rows[task_id] = (row, "pending", None)
                ids.append(TaskId(task_id))
            return ids

        def claim(self, ctx, limit):
            out = []
            for task_id, (row, status, _) in self.rows.items():
                if status == "pending" and len(out) < limit:
                    self.rows[task_id] = (row, "running", None)
                    out.append(Claim(TaskId(task_id), self.queue, row.payload, 1, ctx.new_lease()))
            return out

        def ack(self, outcomes):
            for o in outcomes:
                row, _, _ = self.rows[o.task_id]
                self.rows[o.task_id] = (row, o.kind.value, o.encoded_result)

        def next_due(self):
            waiting = [row.run_at for row, status, _ in self.rows.values() if status == "pending"]
            return min(waiting, default=None)

    store = DictStore()
    store.push_bulk([{"to": "a@example.com"}, {"to": "b@example.com"}])
    got: list[Email] = []

    def handler(job: Email) -> str:
        got.append(job)
        return "sent"

    assert WorkerBuilder("w").backend(store).build(handler).run_until_idle() == 2
    assert got == [Email("a@example.com"), Email("b@example.com")]
    assert [status for _, status, _ in store.rows.values()] == ["done", "done"]
