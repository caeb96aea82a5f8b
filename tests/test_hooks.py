"""Wake-ups: a push wakes idle workers at once (in this process through the registry,
from other processes through the hooked storage's change probe), and no wake-up is
lost when a push lands between an empty claim and the wait.

Every worker here polls with ``IntervalStrategy(60 s)``: a task handled within the
tests' bounded waits (10-20 s) was found by a wake-up, not by polling.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from helpers import push_and_close

from taskpipe import Task, WorkerBuilder, WorkerContext
from taskpipe.sql import hooks
from taskpipe.sql.queries import Queries
from taskpipe.sqlite import Config, IntervalStrategy, SqliteStorage, connect

LONG = Config(poll_interval=IntervalStrategy(60))
PUSH_FROM_ANOTHER_PROCESS = """
import sys
from taskpipe.sqlite import SqliteStorage, connect
db = connect(sys.argv[1])
SqliteStorage(db, queue=sys.argv[2]).push(int(sys.argv[3]))
db.close()
"""


class SpyStorage(SqliteStorage):
    """Sets ``looked_empty`` each time a claim finds nothing; runs ``between`` (if set)
    right after an empty claim, before the worker waits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.looked_empty = threading.Event()
        self.between = None

    def claim(self, ctx, limit):
        tasks = super().claim(ctx, limit)
        if not tasks:
            if self.between is not None:
                self.between()
            self.looked_empty.set()
        return tasks


@contextmanager
def running(*workers):
    """Run workers in threads; stop and join them at the end."""
    threads = [threading.Thread(target=w.run, name=f"test-{w.name}") for w in workers]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(15)
            assert not thread.is_alive()


def recorder(count: int = 1):
    """A handler that records its items and sets ``done`` after ``count`` of them."""
    seen: list = []
    done = threading.Event()

    def handler(item: int) -> None:
        seen.append(item)
        if len(seen) >= count:
            done.set()

    return handler, seen, done


def push_from_another_process(path: str, value: int, queue: str = "default") -> None:
    subprocess.run(
        [sys.executable, "-c", PUSH_FROM_ANOTHER_PROCESS, path, queue, str(value)],
        check=True,
        timeout=60,
    )


# The registry --------------------------------------------------------------------------
def test_one_registry_per_database_file(db_path, db):
    other = connect(db_path)
    assert hooks.registry_for(db) is hooks.registry_for(other)
    assert hooks.database_path(db) is not None
    memory_a, memory_b = connect(":memory:"), connect(":memory:")
    assert hooks.database_path(memory_a) is None
    assert hooks.registry_for(memory_a) is not hooks.registry_for(memory_b)


def test_notify_wakes_only_that_queues_wakers():
    registry = hooks.WakeRegistry(None)
    emails, reports = hooks.Waiter(), hooks.Waiter()
    registry.register("emails", emails)
    registry.register("reports", reports)
    registry.notify("emails")
    assert emails.wait(0) is True
    assert reports.wait(0) is False
    registry.unregister("emails", emails)
    registry.notify("emails")
    assert emails.wait(0) is False
    assert registry.waiting("reports") == 1 and registry.waiting("emails") == 0


def test_a_wake_before_the_wait_is_not_lost():
    waiter = hooks.Waiter()
    waiter.wake()
    assert waiter.wait(60) is True  # returns at once
    ctx = WorkerContext("w", capacity=1, report=print)
    ctx.wake()
    ctx.wait(60)  # returns at once too (the pending flag)


# In-process wake-ups ---------------------------------------------------------------------
def test_a_push_from_another_thread_wakes_a_worker_with_a_long_interval(db_path, db):
    storage = SpyStorage(db, config=LONG)
    handler, seen, done = recorder()
    worker = WorkerBuilder("w").backend(storage).build(handler)
    with running(worker):
        assert storage.looked_empty.wait(10)  # the worker is idle, 60 s from its next look
        producer = SqliteStorage(connect(db_path))  # any storage on the file will do
        threading.Thread(target=push_and_close, args=(producer, 7)).start()
        assert done.wait(10)
    assert seen == [7]


def test_a_push_inside_a_transaction_wakes_workers_after_the_commit(db, monkeypatch):
    storage = SpyStorage(db, config=LONG)
    notified: list[str] = []
    real_notify = hooks.WakeRegistry.notify
    monkeypatch.setattr(
        hooks.WakeRegistry, "notify", lambda self, q: notified.append(q) or real_notify(self, q)
    )
    handler, seen, done = recorder(2)
    worker = WorkerBuilder("w").backend(storage).build(handler)
    with running(worker):
        assert storage.looked_empty.wait(10)
        with db.atomic():
            storage.push(1)
            storage.push(2)
            assert notified == []  # nothing to see before the commit
        assert notified == ["default", "default"]
        assert done.wait(10)
    assert sorted(seen) == [1, 2]


def test_plain_storage_wakes_in_process_without_a_probe(db):
    storage = SpyStorage(db, config=LONG)
    handler, seen, done = recorder()
    worker = WorkerBuilder("w").backend(storage).build(handler)
    with running(worker):
        assert storage.looked_empty.wait(10)
        registry = hooks.registry_for(db)
        assert registry.waiting("default") == 1
        assert registry.probe is None  # cross-process detection is with_hook's
        storage.push(1)
        assert done.wait(10)
    assert registry.waiting("default") == 0


# No lost wake-ups --------------------------------------------------------------------------
def test_a_push_between_the_empty_claim_and_the_wait_is_not_lost(db_path, db):
    """Deterministically put a push (committed, notified) in the window after each empty
    claim and before the wait, many times in a row."""
    storage = SpyStorage(db, config=LONG)
    producer = SqliteStorage(connect(db_path))
    rounds = 30
    handler, seen, done = recorder(rounds)
    pushed = []

    def push_in_the_window() -> None:
        if len(pushed) < rounds:
            pushed.append(len(pushed))
            thread = threading.Thread(target=push_and_close, args=(producer, pushed[-1]))
            thread.start()
            thread.join()  # committed and notified before the worker reaches its wait

    storage.between = push_in_the_window
    worker = WorkerBuilder("w").backend(storage).build(handler)
    with running(worker):
        assert done.wait(20), f"handled {len(seen)} of {rounds}: a wake-up was lost"
    assert sorted(seen) == list(range(rounds))


def test_no_lost_wake_ups_under_many_threads(db_path, db):
    """Eight workers on eight queues, each with its own producer thread playing
    ping-pong: push, wait until handled, push again. A lost wake-up stalls a pair
    for the 60 s poll interval, far past the 10 s each round may take."""
    queues, rounds = 8, 60
    handled = {q: threading.Semaphore(0) for q in range(queues)}
    workers = []
    for q in range(queues):

        def handler(item: int, q: int = q) -> None:
            handled[q].release()

        storage = SqliteStorage(db, queue=f"q{q}", config=LONG)
        workers.append(WorkerBuilder(f"w{q}").backend(storage).build(handler))
    failures: list[str] = []

    def play(q: int) -> None:
        producer = SqliteStorage(connect(db_path), queue=f"q{q}")
        try:
            for i in range(rounds):
                producer.push(i)
                if not handled[q].acquire(timeout=10):
                    failures.append(f"queue q{q}: round {i} was never handled")
                    return
        finally:
            producer.db.close()

    with running(*workers):
        players = [threading.Thread(target=play, args=(q,)) for q in range(queues)]
        for player in players:
            player.start()
        for player in players:
            player.join(120)
    assert failures == []


def test_wake_ups_are_not_lost_at_the_context_level():
    """The pending flag under stress: 16 pairs × 1000 hand-offs through a registry."""
    registry = hooks.WakeRegistry(None)
    pairs, rounds = 16, 1000
    failures: list[str] = []

    def pair(n: int) -> None:
        queue = f"q{n}"
        box: list[int] = []
        lock = threading.Lock()
        taken = threading.Semaphore(0)
        ctx = WorkerContext(f"c{n}", capacity=1, report=print)
        registry.register(queue, ctx)

        def consumer() -> None:
            got = 0
            while got < rounds and not ctx.stopping:
                with lock:
                    item = box.pop() if box else None
                if item is None:
                    time.sleep(0)  # let the producer in: widen the window before the wait
                    ctx.wait(30)  # a lost wake-up would sit here for 30 s
                    continue
                got += 1
                taken.release()

        thread = threading.Thread(target=consumer)
        thread.start()
        for i in range(rounds):
            with lock:
                box.append(i)
            registry.notify(queue)
            if not taken.acquire(timeout=10):
                failures.append(f"pair {n}: hand-off {i} lost")
                ctx.stop()
                break
        thread.join(40)
        registry.unregister(queue, ctx)

    threads = [threading.Thread(target=pair, args=(n,)) for n in range(pairs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []


# Other processes: the change probe ------------------------------------------------------------
@pytest.fixture(params=["inotify", "data_version"])
def mechanism(request, monkeypatch, tmp_path):
    """Run the test with each way the probe can notice a change."""
    if request.param == "inotify":
        watch = hooks._Inotify.open(str(tmp_path / "probe.db"))
        if watch is None:
            pytest.skip("inotify is not available here")
        watch.close()
    else:
        monkeypatch.setattr(hooks, "USE_INOTIFY", False)
    return request.param


def test_a_push_from_another_process_wakes_a_hooked_worker(db_path, db, mechanism):
    storage = SpyStorage.with_hook(db_path, LONG)
    assert storage.hooked
    handler, seen, done = recorder()
    worker = WorkerBuilder("w").backend(storage).build(handler)
    with running(worker):
        assert storage.looked_empty.wait(10)
        probe = hooks.registry_for(db).probe
        assert probe is not None
        push_from_another_process(db_path, 7)
        assert done.wait(20)
        assert probe.mode == mechanism
    assert seen == [7]


def test_the_probe_wakes_only_queues_with_something_due(db_path, db):
    registry = hooks.WakeRegistry(db_path)
    waiter = hooks.Waiter()
    registry._wakers["watched"] = {waiter: True}  # as register() would, without the thread
    probe = hooks.ChangeProbe(registry)
    conn = sqlite3.connect(db_path)
    try:
        SqliteStorage(db, queue="elsewhere").push(1)
        SqliteStorage(db, queue="watched").push_task(Task(2, run_after=timedelta(hours=1)))
        probe._check(conn)
        assert waiter.wait(0) is False  # a change, but nothing due in the watched queue
        SqliteStorage(db, queue="watched").push(3)
        probe._check(conn)
        assert waiter.wait(0) is True
    finally:
        conn.close()


def test_a_nudge_after_the_watch_closed_writes_nowhere(tmp_path):
    # unregister() nudges the probe from another thread while the probe may be closing
    # its watch: the nudge must not write to the closed pipe's fd, which by then may be
    # an unrelated file's.
    watch = hooks._Inotify.open(str(tmp_path / "jobs.db"))
    if watch is None:
        pytest.skip("inotify is not available here")
    watch.close()
    unrelated = tmp_path / "unrelated.txt"
    fd = os.open(unrelated, os.O_WRONLY | os.O_CREAT)
    reused = watch._w
    try:
        if fd != reused:  # give the unrelated file the pipe's old fd number, if still free
            with pytest.raises(OSError):
                os.fstat(reused)
            os.dup2(fd, reused)
        watch.nudge()
        watch.close()  # a second close leaves the reused fd alone
        os.fstat(reused)
    finally:
        os.close(fd)
        if fd != reused:
            os.close(reused)
    assert unrelated.read_bytes() == b""


def test_the_probe_checks_with_the_stores_statement():
    assert hooks._DUE == Queries().anything_due


def test_one_probe_per_database_and_it_stops_with_the_last_hooked_worker(db_path, db):
    a = SpyStorage.with_hook(db, LONG, queue="a")
    b = SpyStorage.with_hook(connect(db_path), LONG, queue="b")
    workers = [
        WorkerBuilder(n).backend(s).build(lambda item: None) for n, s in (("a", a), ("b", b))
    ]
    registry = hooks.registry_for(db)
    with running(*workers):
        assert a.looked_empty.wait(10) and b.looked_empty.wait(10)
        probe = registry.probe
        assert probe is not None and probe.is_alive()
        assert sorted(registry.watched_queues()) == ["a", "b"]
    probe.join(10)
    assert not probe.is_alive()
    assert registry.probe is None
