"""Pause and resume: ``Worker.pause()``/``resume()`` with real threads, a queue paused
in the store reaching running workers, and the CLI's ``pause``/``resume``.

The store side of the contract (every store) is in ``contract/test_contract_pausing.py``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from taskpipe import Status, TaskId, WorkerBuilder, events, memory
from taskpipe import cli as cli_module
from taskpipe.cli import cli
from taskpipe.config import Config
from taskpipe.custom import BackendBuilder
from taskpipe.errors import CapabilityError, SetupError
from taskpipe.sql import schema
from taskpipe.sqlite import SqliteStorage, connect

WAIT = 10.0  # the longest any wait here may take before the test fails
FAST = Config(keep_alive=0.02)  # heartbeats every 20 ms: a queue's pause is seen at once


class Recorder:
    """An ``on_event`` callback keeping the events, and a way to wait for one."""

    def __init__(self) -> None:
        self.seen: list[events.Event] = []
        self._cond = threading.Condition()

    def __call__(self, _ctx, event: events.Event) -> None:
        with self._cond:
            self.seen.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[events.Event]], bool]) -> None:
        """Wait until ``predicate(events so far)`` holds (fail after ``WAIT``)."""
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.seen), WAIT), self.kinds()

    def kinds(self, *only: type) -> list[str]:
        """The names of the events seen (of the ``only`` kinds, if given), in order."""
        with self._cond:
            return [type(e).__name__ for e in self.seen if not only or isinstance(e, only)]

    def succeeded(self) -> set[TaskId]:
        """The ids of the tasks that succeeded."""
        with self._cond:
            return {e.task_id for e in self.seen if isinstance(e, events.Success)}


def echo(item: object) -> object:
    """A handler returning its args."""
    return item


def beats_at_least(ctx, n: int) -> Callable[[list[events.Event]], bool]:
    """A predicate: the run has made ``n`` heartbeats."""
    return lambda _seen: ctx.beats >= n


class Watched(SqliteStorage):
    """A SqliteStorage that counts the worker's calls to ``claim`` and
    ``paused_queues``, so that a test can wait for one: the fetch loop claims again
    only once it has handed the last claim's tasks to its pool, and looks at the
    queue's pause again (when woken) only just before it waits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = {"claim": 0, "paused_queues": 0}
        self._cond = threading.Condition()
        self.on_claim: Callable[[], None] = lambda: None

    def _count(self, name: str) -> None:
        with self._cond:
            self.calls[name] += 1
            self._cond.notify_all()

    def wait_calls(self, name: str, n: int) -> None:
        """Wait until ``name`` was called ``n`` times."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.calls[name] >= n, WAIT), self.calls

    def claim(self, ctx, limit):
        claims = super().claim(ctx, limit)
        self.on_claim()
        self._count("claim")
        return claims

    def paused_queues(self):
        found = super().paused_queues()
        self._count("paused_queues")
        return found


@pytest.fixture
def fast_storage(db):
    """A (watched) SqliteStorage beating every 20 ms."""
    return Watched(db, config=FAST)


def start(worker) -> threading.Thread:
    """``worker.run()`` in a thread of its own."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def finish(worker, thread: threading.Thread) -> None:
    """Stop the worker and wait for its run to end."""
    worker.stop()
    thread.join(WAIT)
    assert not thread.is_alive()


# Worker.pause() / resume() ------------------------------------------------------------------
def test_pause_lets_the_running_task_finish_beats_on_and_resume_takes_the_rest(fast_storage):
    ids = fast_storage.push_bulk(["block", "b", "c"])
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def handle(item: str) -> str:
        ran.append(item)
        if item == "block":
            started.set()
            assert release.wait(WAIT)
        return item

    recorder = Recorder()
    worker = (
        WorkerBuilder("pausing").backend(fast_storage).concurrency(1).on_event(recorder)
    ).build(handle)
    thread = start(worker)
    assert started.wait(WAIT)
    fast_storage.wait_calls("claim", 2)  # "b" and "c" were claimed too, and wait unstarted
    worker.pause()
    assert worker.paused
    recorder.wait_for(lambda seen: any(isinstance(e, events.Paused) for e in seen))
    release.set()
    recorder.wait_for(lambda seen: ids[0] in recorder.succeeded())
    ctx = worker.context
    recorder.wait_for(beats_at_least(ctx, ctx.beats + 3))  # heartbeats go on while paused
    assert ran == ["block"]
    assert [fast_storage.fetch_by_id(i).status for i in ids] == [
        Status.DONE,
        Status.PENDING,  # handed back at once: another worker could take them
        Status.PENDING,
    ]
    assert fast_storage.fetch_by_id(ids[1]).attempts == 0
    worker.resume()
    assert not worker.paused
    recorder.wait_for(lambda seen: recorder.succeeded() == set(ids))
    finish(worker, thread)
    assert ran == ["block", "b", "c"]
    assert recorder.kinds(events.Paused, events.Resumed) == ["Paused", "Resumed"]


def test_pause_before_the_run_takes_nothing_and_run_until_idle_returns(storage):
    storage.push_bulk([1, 2])
    recorder = Recorder()
    worker = WorkerBuilder("early").backend(storage).on_event(recorder).build(lambda n: n)
    worker.pause()
    assert worker.paused
    assert worker.run_until_idle() == 0  # returns: nothing runs, nothing will
    assert recorder.kinds()[:2] == ["Start", "Paused"]  # Paused never precedes Start
    assert [t.status for t in storage.list_tasks()] == [Status.PENDING, Status.PENDING]
    worker.resume()
    assert worker.run_until_idle() == 2


def test_tasks_claimed_while_pausing_are_handed_back_unstarted(db):
    """A pause that lands while a claim is under way: its tasks never start."""
    storage = Watched(db)
    ids = storage.push_bulk([1, 2])
    ran: list[int] = []
    worker = WorkerBuilder("mid-claim").backend(storage).build(ran.append)
    storage.on_claim = worker.pause  # the claim has taken both tasks; pause, then return
    assert worker.run_until_idle() == 0
    assert ran == []
    assert [(storage.fetch_by_id(i).status, storage.fetch_by_id(i).attempts) for i in ids] == [
        (Status.PENDING, 0),
        (Status.PENDING, 0),
    ]
    storage.on_claim = lambda: None
    worker.resume()
    assert worker.run_until_idle() == 2 and ran == [1, 2]


def test_a_paused_run_until_idle_waits_for_what_runs(storage):
    """Paused from a handler: ``run_until_idle`` lets the running task finish, starts
    nothing else and returns."""
    ids = storage.push_bulk(["pause", "b"])
    holder: list = []

    def handle(item: str) -> str:
        if item == "pause":
            holder[0].pause()
        return item

    worker = WorkerBuilder("self-pausing").backend(storage).concurrency(1).build(handle)
    holder.append(worker)
    assert worker.run_until_idle() == 1
    assert storage.fetch_by_id(ids[0]).status is Status.DONE
    assert storage.fetch_by_id(ids[1]).status is Status.PENDING


def test_stop_works_while_paused(storage):
    storage.push(1)
    recorder = Recorder()
    worker = WorkerBuilder("stoppable").backend(storage).on_event(recorder).build(lambda n: n)
    worker.pause()
    thread = start(worker)
    recorder.wait_for(lambda seen: any(isinstance(e, events.Paused) for e in seen))
    finish(worker, thread)
    assert recorder.kinds()[-1] == "Stop"
    assert storage.list_tasks()[0].status is Status.PENDING


def test_pause_and_resume_from_an_event_callback_do_not_deadlock(storage):
    """A callback may steer the worker from inside the event it receives."""
    storage.push_bulk([1, 2])
    worker_box: list = []
    kinds: list[str] = []

    def on_event(_ctx, event):
        kinds.append(type(event).__name__)
        if isinstance(event, events.Start):
            worker_box[0].pause()
        elif isinstance(event, events.Paused):
            worker_box[0].resume()

    worker = WorkerBuilder("callback").backend(storage).on_event(on_event).build(lambda n: n)
    worker_box.append(worker)
    assert worker.run_until_idle() == 2
    assert kinds[:3] == ["Start", "Paused", "Resumed"]


# A queue paused in the store ------------------------------------------------------------------
def test_a_queue_paused_elsewhere_reaches_a_running_worker_within_a_heartbeat(db, fast_storage):
    """Another store object (as the CLI or another process would) pauses the queue:
    the worker sees it at its next heartbeat; the resume is seen as promptly."""
    recorder = Recorder()
    worker = WorkerBuilder("queue-paused").backend(fast_storage).on_event(recorder).build(echo)
    thread = start(worker)
    recorder.wait_for(lambda seen: any(isinstance(e, events.Idle) for e in seen))
    elsewhere = SqliteStorage(connect(db.database))
    elsewhere.pause_queue("default")
    recorder.wait_for(lambda seen: any(isinstance(e, events.Paused) for e in seen))
    assert worker.paused
    task_id = elsewhere.push("while paused")
    ctx = worker.context
    recorder.wait_for(beats_at_least(ctx, ctx.beats + 3))
    assert fast_storage.fetch_by_id(task_id).status is Status.PENDING
    elsewhere.resume_queue("default")
    recorder.wait_for(lambda seen: task_id in recorder.succeeded())
    finish(worker, thread)
    elsewhere.db.close()
    assert recorder.kinds(events.Paused, events.Resumed) == ["Paused", "Resumed"]


def test_a_resume_in_this_process_wakes_an_idle_worker_at_once(db):
    """Heartbeats every 60 s: only the resume itself can wake the worker in time."""
    storage = Watched(db, config=Config(keep_alive=60, reenqueue_orphaned_after=120))
    storage.pause_queue()
    task_id = storage.push("waiting")
    recorder = Recorder()
    worker = WorkerBuilder("woken").backend(storage).on_event(recorder).build(echo)
    thread = start(worker)
    # The first beat's look (Paused), then the fetch loop's own look: then it waits.
    storage.wait_calls("paused_queues", 2)
    assert worker.paused
    storage.resume_queue()
    recorder.wait_for(lambda seen: task_id in recorder.succeeded())
    finish(worker, thread)
    assert worker.context is None and not worker.paused


def test_resuming_the_worker_leaves_its_paused_queue_paused():
    store = memory.backend()
    store.push(1)
    store.pause_queue()
    worker = WorkerBuilder("both").backend(store).build(lambda n: n)
    worker.pause()
    worker.resume()
    assert worker.run_until_idle() == 0
    store.resume_queue()
    assert worker.run_until_idle() == 1


def test_a_store_that_cannot_pause_says_so_and_its_workers_still_run():
    pushed: list = []
    backend = (
        BackendBuilder()
        .database(object())
        .fetcher(lambda db, config, ctx: iter(()))
        .sink(lambda db, config: pushed.append)
        .build()
    )
    assert not backend.capabilities.pausing
    with pytest.raises(CapabilityError, match="pause a queue.*'pausing'"):
        backend.pause_queue()
    with pytest.raises(CapabilityError, match="resume a queue"):
        backend.resume_queue()
    with pytest.raises(CapabilityError, match="paused"):
        backend.paused_queues()
    assert WorkerBuilder("plain").backend(backend).build(echo).run_until_idle() == 0


def test_a_database_at_schema_5_gets_the_queues_table_on_setup(tmp_path):
    path = str(tmp_path / "old.db")
    db = connect(path)
    SqliteStorage.setup(db)
    db.close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"DROP TABLE {schema.QUEUES}")
        raw.execute(f"UPDATE {schema.META} SET version = 5")
    raw.close()
    storage = SqliteStorage(connect(path))
    with pytest.raises(SetupError, match="schema version 5"):
        storage.check_setup()
    SqliteStorage.setup(storage)
    SqliteStorage.setup(storage)  # idempotent
    storage.check_setup()
    storage.pause_queue()
    assert storage.paused_queues() == {"default"}
    storage.db.close()


# The command line -----------------------------------------------------------------------------
@pytest.fixture
def invoke(monkeypatch):
    """``taskpipe ARGS…`` in-process, TASKPIPE_DB unset."""
    monkeypatch.delenv("TASKPIPE_DB", raising=False)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, list(args), catch_exceptions=False)


def test_cli_pause_and_resume(invoke, db, storage, tmp_path, monkeypatch):
    path = db.database
    (tmp_path / "pause_cli_handlers.py").write_text("def handle(args):\n    return args\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke("pause", "emails", "--db", path)
    assert (result.exit_code, result.stdout) == (0, "queue emails paused\n")
    assert storage.paused_queues() == {"emails"}
    assert invoke("pause", "emails", "--db", path).stdout == "queue emails was already paused\n"
    header, row = invoke("queues", "--db", path).stdout.splitlines()  # no task, yet listed
    assert header.split()[-1] == "PAUSED" and row.split() == ["emails", *"000000", "yes"]
    SqliteStorage(db, queue="emails").push(1)
    worked = invoke(
        "worker", "pause_cli_handlers:handle", "-q", "emails", "--until-idle", "--db", path
    ).stdout
    assert "paused: it takes no task" in worked and "handled 0 tasks" in worked
    worker = WorkerBuilder("cli").backend(SqliteStorage(db, queue="emails")).build(echo)
    assert worker.run_until_idle() == 0
    assert invoke("resume", "emails", "--db", path).stdout == "queue emails resumed\n"
    assert storage.paused_queues() == set()
    assert invoke("resume", "emails", "--db", path).stdout == "queue emails was not paused\n"
    assert worker.run_until_idle() == 1


def test_cli_pause_refuses_bad_input(invoke, db):
    result = invoke("pause", "", "--db", db.database)
    assert result.exit_code == 2 and "a queue name cannot be empty" in result.stderr
    result = invoke("resume", "--db", db.database)
    assert result.exit_code == 2 and "QUEUE" in result.stderr


def test_cli_pause_on_a_store_without_the_capability_is_one_line(invoke, db, monkeypatch):
    def without_pausing(db, queue="default", **kwargs):
        return SqliteStorage(db, queue=queue).with_capabilities(pausing=False)

    monkeypatch.setattr(cli_module, "open_storage", without_pausing)
    for command in ("pause", "resume"):
        result = invoke(command, "emails", "--db", db.database)
        assert result.exit_code == 2
        [line] = result.stderr.splitlines()
        assert line.startswith("Error: ") and "'pausing' capability" in line
    result = invoke("queues", "--db", db.database)  # still lists, with nothing paused
    assert result.exit_code == 0 and result.stdout == "no queues (no tasks yet)\n"
