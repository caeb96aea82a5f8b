"""SharedSqliteStorage: one poller routes each queue's tasks to that queue's worker,
under concurrency; one shared storage per queue; a slow queue does not starve the
others; pushes (in this process or another) wake the poller; stopping hands back
what was routed but never started."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter

import pytest
from helpers import push_and_close

from taskpipe import (
    BuildError,
    Monitor,
    SetupError,
    StorageError,
    Task,
    WorkerBuilder,
    WorkerContext,
    events,
    run_all,
)
from taskpipe.sql import hooks
from taskpipe.sqlite import Config, IntervalStrategy, SharedSqliteStorage, SqliteStorage

LONG = Config(poll_interval=IntervalStrategy(60))


class Running:
    """A Monitor of workers run in a background thread, stopped and joined on exit."""

    def __init__(self, *workers):
        self.monitor = Monitor()
        for worker in workers:
            self.monitor.register(worker)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            self.monitor.run()
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.monitor.stop()
        self.thread.join(20)
        assert not self.thread.is_alive()


def status_counts(db) -> Counter:
    return Counter(
        dict(
            db.execute_sql("SELECT status, COUNT(*) FROM taskpipe_jobs GROUP BY status").fetchall()
        )
    )


def test_three_queues_are_routed_correctly_under_concurrency(db):
    shared = SharedSqliteStorage(db)
    queues = ["maps", "ints", "texts"]
    storages = {q: shared.make_shared(q) for q in queues}
    per_queue, pushers = 60, 3
    total = per_queue * pushers * len(queues)
    seen: dict[str, list] = {q: [] for q in queues}
    lock = threading.Lock()
    done = threading.Event()

    def make_handler(queue: str):
        def handler(item: list, task: Task) -> None:
            with lock:
                seen[queue].append((task.queue, tuple(item)))
                if sum(map(len, seen.values())) == total:
                    done.set()

        return handler

    workers = [
        WorkerBuilder(q).backend(storages[q]).concurrency(2).build(make_handler(q)) for q in queues
    ]

    def push(p: int) -> None:
        for i in range(per_queue):
            for q in queues:
                storages[q].push([q, p, i])
        storages[queues[0]].close_thread_connection()  # they share one database

    with Running(*workers) as run:
        threads = [threading.Thread(target=push, args=(p,)) for p in range(pushers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert done.wait(30), {q: len(v) for q, v in seen.items()}
    assert run.errors == []
    for q in queues:
        assert all(task_queue == q and item[0] == q for task_queue, item in seen[q])
        assert sorted(item for _, item in seen[q]) == sorted(
            (q, p, i) for p in range(pushers) for i in range(per_queue)
        )
    assert status_counts(db) == {"done": total}


def test_a_second_make_shared_of_the_same_queue_raises(db):
    shared = SharedSqliteStorage(db)
    shared.make_shared("maps")
    with pytest.raises(BuildError, match="'maps' already has a shared storage"):
        shared.make_shared("maps")
    shared.make_shared("ints")
    assert shared.queues == ["maps", "ints"]


def watch_claims(storage) -> threading.Event:
    """An event set whenever a claim for ``storage`` finds nothing."""
    looked = threading.Event()
    real_claim = storage._claim_alone

    def claim(ctx, limit):
        tasks = real_claim(ctx, limit)
        if not tasks:
            looked.set()
        return tasks

    storage._claim_alone = claim
    return looked


def test_one_worker_per_shared_queue(db):
    shared = SharedSqliteStorage(db, LONG)
    maps = shared.make_shared("maps")
    looked = watch_claims(maps)
    first = WorkerBuilder("first").backend(maps).build(lambda item: None)
    second = WorkerBuilder("second").backend(maps).build(lambda item: None)
    with Running(first):
        assert looked.wait(10)  # the first worker's lane is attached
        with pytest.raises(BuildError, match="one worker per shared queue"):
            second.run()


def test_a_slow_queue_does_not_starve_the_others(db):
    shared = SharedSqliteStorage(db)
    slow, fast_a, fast_b = (shared.make_shared(q) for q in ("slow", "a", "b"))
    release = threading.Event()
    slow_started = threading.Event()
    fast_done = {"a": threading.Event(), "b": threading.Event()}
    counts = Counter()
    lock = threading.Lock()
    n_fast = 50

    def slow_handler(item: int) -> None:
        slow_started.set()
        release.wait(30)  # holds its only thread until the test says so

    def fast_handler(item: list) -> None:
        with lock:
            counts[item[0]] += 1
            if counts[item[0]] == n_fast:
                fast_done[item[0]].set()

    slow.push_bulk(range(100))  # more than the slow worker can ever hold at once
    workers = [
        WorkerBuilder("slow").backend(slow).concurrency(1).shutdown_grace(5).build(slow_handler),
        WorkerBuilder("a").backend(fast_a).concurrency(2).build(fast_handler),
        WorkerBuilder("b").backend(fast_b).concurrency(2).build(fast_handler),
    ]
    try:
        with Running(*workers):
            assert slow_started.wait(10)
            fast_a.push_bulk([["a", i] for i in range(n_fast)])
            for i in range(n_fast):
                fast_b.push(["b", i])
            assert fast_done["a"].wait(20) and fast_done["b"].wait(20)
            assert not release.is_set()  # the slow handler is still stuck
            release.set()
    finally:
        release.set()
    counts_after = status_counts(db)
    assert counts_after["running"] == 0  # everything routed but not run went back
    assert counts_after["done"] >= 2 * n_fast + 1


def test_a_push_wakes_the_poller_despite_a_long_interval(db):
    shared = SharedSqliteStorage(db, LONG)
    ints = shared.make_shared("ints")
    looked = watch_claims(ints)
    done = threading.Event()
    worker = WorkerBuilder("ints").backend(ints).build(lambda item: done.set())
    with Running(worker):
        assert looked.wait(10)  # the poller looked, found nothing: 60 s to its next look
        threading.Thread(target=push_and_close, args=(ints, 99)).start()
        assert done.wait(10)


def test_a_push_from_another_process_wakes_the_shared_poller(db_path, db):
    shared = SharedSqliteStorage(db_path, LONG)
    ints = shared.make_shared("ints")
    looked = watch_claims(ints)
    done = threading.Event()
    worker = WorkerBuilder("ints").backend(ints).build(lambda item: done.set())
    with Running(worker):
        assert looked.wait(10)
        assert hooks.registry_for(db).probe is not None
        code = "import sys; from taskpipe.sqlite import *; SqliteStorage(connect(sys.argv[1]), queue='ints').push(5)"
        subprocess.run([sys.executable, "-c", code, db_path], check=True, timeout=60)
        assert done.wait(20)


def test_a_storage_error_does_not_stop_the_shared_claims(db_path):
    # A claim round fails (the database refuses, twice): the error is reported and the
    # worker keeps claiming.
    shared = SharedSqliteStorage(db_path, Config(poll_interval=IntervalStrategy(0.05)))
    SqliteStorage.setup(shared)
    ints = shared.make_shared("ints")
    real_claim = ints._claim_alone
    failures: list[BaseException] = []
    failed_twice = threading.Event()

    def claim(ctx, limit):
        if len(failures) < 2:
            failures.append(StorageError("disk I/O error"))
            if len(failures) == 2:
                failed_twice.set()
            raise failures[-1]
        return real_claim(ctx, limit)

    ints._claim_alone = claim
    errors: list = []
    done = threading.Event()

    def on_event(ctx, event) -> None:
        if isinstance(event, events.Error):
            errors.append(event.error)

    worker = WorkerBuilder("ints").backend(ints).on_event(on_event).build(lambda item: done.set())
    ints.push(1)
    try:
        with Running(worker):
            assert failed_twice.wait(10)
            assert done.wait(10)
        assert errors[:2] == failures
    finally:
        if not shared.db.is_closed():
            shared.db.close()


def test_a_worker_on_a_store_never_set_up_fails_at_once(db_path):
    shared = SharedSqliteStorage(db_path)
    ints = shared.make_shared("ints")
    worker = WorkerBuilder("ints").backend(ints).build(lambda item: None)
    with pytest.raises(SetupError, match="setup"):
        worker.run()


def test_run_until_idle_on_a_shared_queue(db):
    shared = SharedSqliteStorage(db)
    maps = shared.make_shared("maps")
    maps.push_bulk([{"a": 1}, {"b": 2}])
    maps.push_task(Task({"c": 3}, priority=5))
    seen = []
    worker = WorkerBuilder("maps").backend(maps).build(lambda item: seen.append(item))
    assert worker.run_until_idle() == 3
    assert seen[0] == {"c": 3}


def test_the_seed_example_with_run_all(db):
    shared = SharedSqliteStorage(db)
    SqliteStorage.setup(shared)  # idempotent; takes the shared storage too
    maps, ints = shared.make_shared("maps"), shared.make_shared("ints")
    maps.push_stream(iter([{}]))
    ints.push(99)
    got = {}

    def reminder(item, task: Task, ctx: WorkerContext) -> None:
        got[task.queue] = item
        ctx.stop()

    run_all(
        WorkerBuilder("int-worker").backend(ints).build(reminder),
        WorkerBuilder("map-worker").backend(maps).build(reminder),
    )
    assert got == {"maps": {}, "ints": 99}


def test_a_round_never_claims_for_a_run_that_has_not_registered(db):
    """A task claimed for a run with no heartbeat yet would look orphaned to every other
    worker's beat, be re-enqueued and run twice: rounds skip such runs."""
    shared = SharedSqliteStorage(db)
    maps, ints = shared.make_shared("maps"), shared.make_shared("ints")
    a = WorkerContext("maps", capacity=4, report=print)
    b = WorkerContext("ints", capacity=4, report=print)
    maps.beat(a)
    a.beats = 1  # as the worker counts its first, registering beat
    maps.open_run(a)
    ints.open_run(b)  # b's run has not beaten yet
    task_id = ints.push(7)
    assert maps.claim(a, 4) == []  # a's round skipped b
    assert ints.fetch_by_id(task_id).status == "pending"
    ints.beat(b)
    b.beats = 1
    assert maps.claim(a, 4) == [] and [c.id for c in ints.claim(b, 4)] == [task_id]
    maps.close_run(a)
    ints.close_run(b)
