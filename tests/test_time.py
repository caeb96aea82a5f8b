"""Time-driven behaviour under a frozen clock: ``run_until_idle()`` in this thread,
``freeze_time(...).tick()`` between calls, never a sleep."""

from __future__ import annotations

import functools
import inspect
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from taskpipe import Outcome, OutcomeKind, RetryPolicy, Task, WorkerBuilder, WorkerContext, events
from taskpipe.sqlite import Config, SqliteStorage

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


def row(db, task_id) -> dict:
    cursor = db.execute_sql("SELECT * FROM taskpipe_jobs WHERE id = ?", (int(task_id),))
    names = [d[0] for d in cursor.description]
    return dict(zip(names, cursor.fetchone(), strict=True))


def errors(db, task_id) -> list[tuple]:
    return db.execute_sql(
        "SELECT attempt, error, traceback, at FROM taskpipe_errors WHERE job_id = ? ORDER BY id",
        (int(task_id),),
    ).fetchall()


def at(seconds: float) -> float:
    return T0.timestamp() + seconds


class Recorder:
    """A handler that records what it ran, and fails the values in ``fail``."""

    def __init__(self, fail: set | None = None):
        self.ran: list = []
        self.fail = fail or set()

    def __call__(self, value) -> None:
        self.ran.append(value)
        if value in self.fail:
            raise RuntimeError(f"{value} failed")


def worker_for(storage, handler, **options):
    builder = WorkerBuilder(options.pop("name", "timed")).backend(storage)
    if "retry" in options:
        builder = builder.retry(options.pop("retry"))
    if "on_event" in options:
        builder = builder.on_event(options.pop("on_event"))
    return builder.build(handler)


def frozen_clock(test):
    """Run ``test`` under a clock frozen at T0, passing the freezer as ``frozen``.

    The clock is frozen inside the call rather than by a fixture, so that pytest's
    own timings (``--durations``) stay real."""
    signature = inspect.signature(test)

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        with freeze_time(T0) as frozen:
            return test(*args, frozen=frozen, **kwargs)

    params = [p for p in signature.parameters.values() if p.name != "frozen"]
    wrapper.__signature__ = signature.replace(parameters=params)
    return wrapper


# run_after ---------------------------------------------------------------------------------
@frozen_clock
def test_run_after_is_not_run_before_its_time(frozen, storage, db):
    soon = storage.push_task(Task("soon", run_after=timedelta(seconds=30)))
    later = storage.push_task(Task("later", run_after=T0 + timedelta(minutes=2)))
    now = storage.push("now")
    assert row(db, soon)["run_at"] == at(30)
    assert row(db, later)["run_at"] == at(120)
    handler = Recorder()
    worker = worker_for(storage, handler)

    assert worker.run_until_idle() == 1
    assert handler.ran == ["now"]
    frozen.tick(timedelta(seconds=29))
    assert worker.run_until_idle() == 0
    assert row(db, soon)["status"] == "pending"
    frozen.tick(timedelta(seconds=2))  # T0 + 31 s
    assert worker.run_until_idle() == 1
    assert handler.ran == ["now", "soon"]
    frozen.tick(timedelta(seconds=88))  # T0 + 119 s
    assert worker.run_until_idle() == 0
    frozen.tick(timedelta(seconds=2))
    assert worker.run_until_idle() == 1
    assert handler.ran == ["now", "soon", "later"]
    assert {row(db, i)["status"] for i in (soon, later, now)} == {"done"}


# Priority ------------------------------------------------------------------------------
@frozen_clock
def test_priority_then_due_time_then_id(frozen, storage):
    # all due now; pushed in an order that differs from the expected run order
    storage.push("p0-first")
    storage.push_task(Task("p0-due-earlier", run_after=T0 - timedelta(seconds=10)))
    storage.push_task(Task("p5-a", priority=5))
    storage.push_task(Task("p-1", priority=-1))
    storage.push_task(Task("p5-b", priority=5))
    storage.push_task(Task("p9-due-latest", priority=9, run_after=T0))
    storage.push_task(Task("p5-due-earliest", priority=5, run_after=T0 - timedelta(hours=1)))
    storage.push("p0-second")
    storage.push_task(Task("p9-not-due", priority=99, run_after=timedelta(seconds=1)))
    handler = Recorder()
    worker = WorkerBuilder("order").backend(storage).concurrency(1).build(handler)
    assert worker.run_until_idle() == 8
    assert handler.ran == [
        "p9-due-latest",
        "p5-due-earliest",
        "p5-a",
        "p5-b",
        "p0-due-earlier",
        "p0-first",
        "p0-second",
        "p-1",
    ]


@pytest.mark.parametrize("claim_batch", [1, 2])
@frozen_clock
def test_priority_order_holds_across_claims(frozen, db, claim_batch):
    # small claim batches force several claims: the store's own ORDER BY picks each one
    storage = SqliteStorage(db, config=Config(claim_batch=claim_batch, buffer_size=0))
    # (priority, seconds overdue); later pushes are more overdue, so id order and
    # due-time order disagree
    specs = [(p, late) for late in (0, 10, 20) for p in (1, 3, 2)]
    storage.push_all(
        Task(f"p{p}-late{late}", priority=p, run_after=T0 - timedelta(seconds=late))
        for p, late in specs
    )
    handler = Recorder()
    WorkerBuilder("batches").backend(storage).concurrency(1).build(handler).run_until_idle()
    assert handler.ran == [f"p{p}-late{late}" for p in (3, 2, 1) for late in (20, 10, 0)]


# Backoff and Dead -------------------------------------------------------------------------
@frozen_clock
def test_backoff_timings_then_dead_with_every_error_kept(frozen, storage, db):
    tid = storage.push("boom")
    seen: list[events.Event] = []
    handler = Recorder(fail={"boom"})
    worker = worker_for(
        storage,
        handler,
        retry=RetryPolicy.retries(3).backoff(base=10, factor=2, jitter=0),
        on_event=lambda ctx, e: seen.append(e),
    )
    elapsed = 0.0
    for attempt, delay in enumerate([10, 20, 40], start=1):
        assert worker.run_until_idle() == 1
        assert len(handler.ran) == attempt
        r = row(db, tid)
        assert r["status"] == "failed"
        assert r["attempts"] == attempt
        assert r["run_at"] == pytest.approx(at(elapsed + delay))
        (retry,) = [e for e in seen if isinstance(e, events.Retry) and e.attempt == attempt]
        assert retry.run_at == T0 + timedelta(seconds=elapsed + delay)
        # not due a moment before its time
        frozen.tick(timedelta(seconds=delay - 0.5))
        assert worker.run_until_idle() == 0
        assert len(handler.ran) == attempt
        frozen.tick(timedelta(seconds=0.5))
        elapsed += delay
    assert worker.run_until_idle() == 1  # the 4th and last attempt
    r = row(db, tid)
    assert r["status"] == "dead" and r["attempts"] == 4
    assert r["done_at"] == pytest.approx(at(70))
    stored = errors(db, tid)
    assert [(a, e) for a, e, _, _ in stored] == [
        (n, "RuntimeError: boom failed") for n in (1, 2, 3, 4)
    ]
    assert all("Traceback" in tb and "boom failed" in tb for _, _, tb, _ in stored)
    assert [when for *_, when in stored] == pytest.approx([at(0), at(10), at(30), at(70)])
    assert [e for e in seen if isinstance(e, events.Dead)] == [
        events.Dead(tid, "RuntimeError: boom failed")
    ]
    frozen.tick(timedelta(days=1))
    assert worker.run_until_idle() == 0  # dead stays dead


@frozen_clock
def test_backoff_is_capped(frozen, storage, db):
    tid = storage.push("boom")
    policy = RetryPolicy.retries(5).backoff(
        base=timedelta(seconds=100), factor=10, cap=timedelta(minutes=5), jitter=0
    )
    worker = worker_for(storage, Recorder(fail={"boom"}), retry=policy)
    worker.run_until_idle()
    assert row(db, tid)["run_at"] == pytest.approx(at(100))
    frozen.tick(100)
    worker.run_until_idle()
    assert row(db, tid)["run_at"] == pytest.approx(at(100 + 300))  # 1000 s capped at 300 s


@frozen_clock
def test_no_retries_unless_asked(frozen, storage, db):
    tid = storage.push("boom")
    worker_for(storage, Recorder(fail={"boom"})).run_until_idle()
    assert row(db, tid)["status"] == "dead" and row(db, tid)["attempts"] == 1
    assert len(errors(db, tid)) == 1


@frozen_clock
def test_task_max_attempts_overrides_the_policy(frozen, storage, db):
    fewer = storage.push_task(Task("fewer", max_attempts=2))
    more = storage.push_task(Task("more", max_attempts=4))
    default = storage.push("default")
    handler = Recorder(fail={"fewer", "more", "default"})
    worker = worker_for(storage, handler, retry=RetryPolicy.retries(2).backoff(base=1, jitter=0))
    for _ in range(6):
        worker.run_until_idle()
        frozen.tick(timedelta(hours=1))
    assert handler.ran.count("fewer") == 2
    assert handler.ran.count("more") == 4
    assert handler.ran.count("default") == 3  # the policy: 2 retries
    for tid, attempts in ((fewer, 2), (more, 4), (default, 3)):
        r = row(db, tid)
        assert (r["status"], r["attempts"]) == ("dead", attempts)
        assert [a for a, *_ in errors(db, tid)] == list(range(1, attempts + 1))


@frozen_clock
def test_task_max_attempts_without_a_worker_policy(frozen, storage, db):
    tid = storage.push_task(Task("x", max_attempts=3))
    handler = Recorder(fail={"x"})
    worker = worker_for(storage, handler)  # default policy: one attempt
    for _ in range(4):
        worker.run_until_idle()
        frozen.tick(timedelta(hours=1))
    assert handler.ran == ["x", "x", "x"]
    assert row(db, tid)["status"] == "dead"


# Orphans ---------------------------------------------------------------------------------
ORPHAN_CONFIG = Config(keep_alive=1, reenqueue_orphaned_after=10)


def beat_once(storage, ctx) -> None:
    """One heartbeat of ``ctx``'s run: it registers the run and recovers orphans."""
    storage.beat(ctx)


class Zombie:
    """A worker run that beats once, claims, and is never heard from again. It runs
    "on another host" (its store says so), so that only its silence can tell that it
    died: on this host a live process is never taken for dead."""

    def __init__(self, storage, name: str = "zombie", *, here: bool = False):
        self.reported: list[BaseException] = []
        self.ctx = WorkerContext(name, capacity=1, report=self.reported.append)
        self.storage = SqliteStorage(storage.db, queue=storage.queue, config=storage.config)
        if not here:
            self.storage._host_id = "another-host"
        beat_once(self.storage, self.ctx)
        [self.task] = self.storage.claim(self.ctx, 1)
        assert not self.reported


@frozen_clock
def test_orphan_is_reenqueued_only_after_reenqueue_orphaned_after(frozen, db):
    storage = SqliteStorage(db, config=ORPHAN_CONFIG)
    tid = storage.push("orphan")
    zombie = Zombie(storage)
    assert zombie.task.id == tid
    r = row(db, tid)
    assert (r["status"], r["worker"], r["attempts"]) == ("running", zombie.ctx.run_id, 1)

    handler = Recorder()
    worker = WorkerBuilder("rescuer").backend(storage).build(handler)
    frozen.tick(timedelta(seconds=9))
    assert worker.run_until_idle() == 0
    assert row(db, tid)["status"] == "running"
    frozen.tick(timedelta(seconds=1))  # exactly 10 s of silence: still alive
    assert worker.run_until_idle() == 0
    assert row(db, tid)["status"] == "running"
    frozen.tick(timedelta(seconds=0.5))
    assert worker.run_until_idle() == 1
    assert handler.ran == ["orphan"]
    r = row(db, tid)
    assert r["status"] == "done"
    assert r["recoveries"] == 1
    assert r["attempts"] == 1  # a worker dying is not a failed attempt
    assert errors(db, tid) == []


@frozen_clock
def test_a_live_workers_long_task_is_not_taken(frozen, db):
    storage = SqliteStorage(db, config=ORPHAN_CONFIG)
    tid = storage.push("long")
    zombie = Zombie(storage, name="alive")
    worker = WorkerBuilder("other").backend(storage).build(Recorder())
    for _ in range(5):  # 40 s in all, the holder beating every 8 s
        frozen.tick(timedelta(seconds=8))
        zombie.storage.beat(zombie.ctx)
        assert worker.run_until_idle() == 0
    assert row(db, tid)["status"] == "running" and row(db, tid)["recoveries"] == 0


@pytest.mark.parametrize("max_recoveries", [3, None])
@frozen_clock
def test_after_max_recoveries_the_task_is_dead(frozen, db, max_recoveries):
    options = {} if max_recoveries is None else {"max_recoveries": max_recoveries}
    limit = max_recoveries or 5  # the default
    storage = SqliteStorage(db, config=Config(keep_alive=1, reenqueue_orphaned_after=10, **options))
    tid = storage.push("poison")
    recoverer = WorkerContext("recoverer", capacity=1, report=lambda e: None)
    for death in range(1, limit + 1):
        zombie = Zombie(storage, name=f"zombie-{death}")
        assert zombie.task.id == tid
        frozen.tick(timedelta(seconds=11))
        storage.beat(recoverer)  # another worker's beat re-enqueues (or buries) the orphan
        r = row(db, tid)
        assert r["recoveries"] == death
        assert r["attempts"] == 0
        assert r["worker"] is None
        if death < limit:
            assert r["status"] == "pending"
            assert errors(db, tid) == []
    r = row(db, tid)
    assert r["status"] == "dead"
    assert r["done_at"] == pytest.approx(at(11 * limit))
    ((_, error, _, _),) = errors(db, tid)
    assert error == f"its worker died {limit} times while running it"
    handler = Recorder()
    assert WorkerBuilder("late").backend(storage).build(handler).run_until_idle() == 0
    assert handler.ran == []


@frozen_clock
def test_running_row_of_an_unknown_run_is_recovered_at_the_next_beat(frozen, db):
    storage = SqliteStorage(db, config=ORPHAN_CONFIG)
    db.execute_sql(
        "INSERT INTO taskpipe_jobs (queue, status, payload, priority, run_at, attempts, "
        "lease, worker, created_at, started_at) VALUES (?, 'running', ?, 0, ?, 1, ?, ?, ?, ?)",
        ("default", b'"ghost"', at(-5), "ghost:1:1", "ghost:1", at(-5), at(-5)),
    )
    handler = Recorder()
    assert WorkerBuilder("w").backend(storage).build(handler).run_until_idle() == 1
    assert handler.ran == ["ghost"]
    ((status, recoveries, attempts),) = db.execute_sql(
        "SELECT status, recoveries, attempts FROM taskpipe_jobs"
    ).fetchall()
    assert (status, recoveries, attempts) == ("done", 1, 1)


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped); made before the clock
    is frozen, as ``Popen.wait`` reads the monotonic clock."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


@frozen_clock
def test_a_restart_on_this_host_does_not_wait_for_a_dead_process(frozen, db, dead_pid):
    """A run whose process is gone holds nothing: a new worker's first beat frees its
    tasks at once, though its last beat is recent."""
    storage = SqliteStorage(db, config=ORPHAN_CONFIG)
    tid = storage.push("stranded")
    zombie = Zombie(storage, name="w", here=True)
    db.execute_sql(
        "UPDATE taskpipe_workers SET pid = ? WHERE run_id = ?", (dead_pid, zombie.ctx.run_id)
    )
    frozen.tick(timedelta(seconds=1))  # well inside reenqueue_orphaned_after
    handler = Recorder()
    assert WorkerBuilder("w").backend(storage).build(handler).run_until_idle() == 1
    assert handler.ran == ["stranded"]
    assert row(db, tid)["status"] == "done" and row(db, tid)["recoveries"] == 1
    runs = [r for (r,) in db.execute_sql("SELECT run_id FROM taskpipe_workers")]
    assert zombie.ctx.run_id not in runs


@frozen_clock
def test_zombie_late_ack_is_rejected(frozen, db):
    storage = SqliteStorage(db, config=ORPHAN_CONFIG)
    tid = storage.push("contested")
    zombie = Zombie(storage)
    frozen.tick(timedelta(seconds=11))

    # re-enqueued but not yet claimed again: the zombie's ack changes nothing
    beat_once(storage, WorkerContext("recoverer", capacity=1, report=lambda e: None))
    before = row(db, tid)
    assert before["status"] == "pending"
    for kind in (OutcomeKind.DONE, OutcomeKind.RETRY, OutcomeKind.DEAD, OutcomeKind.RELEASE):
        outcome = Outcome(zombie.task, kind, result="late", error="late", delay=5)
        storage.ack([outcome])
        assert outcome.accepted is False, kind
        assert row(db, tid) == before, kind
    assert errors(db, tid) == []

    # run by another worker: the zombie's ack still changes nothing
    assert (
        WorkerBuilder("rescuer").backend(storage).build(lambda v: "rescued").run_until_idle() == 1
    )
    done = row(db, tid)
    assert done["status"] == "done"
    late = Outcome(zombie.task, OutcomeKind.DONE, result="zombie result")
    mixed = Outcome(zombie.task, OutcomeKind.DEAD, error="zombie error")
    storage.ack([late, mixed])
    assert late.accepted is False and mixed.accepted is False
    assert row(db, tid) == done
    assert storage.codec.decode(done["result"]) == "rescued"
    assert errors(db, tid) == []


@frozen_clock
def test_a_good_ack_in_the_same_batch_as_a_zombie_ack_is_accepted(frozen, db):
    storage = SqliteStorage(db, config=ORPHAN_CONFIG)
    stale_id = storage.push("stale")
    zombie = Zombie(storage)
    frozen.tick(timedelta(seconds=11))
    beat_once(storage, WorkerContext("recoverer", capacity=1, report=lambda e: None))
    fresh_id = storage.push("fresh")
    # a live claimer takes both the recovered task and the new one
    live = WorkerContext("live", capacity=2, report=lambda e: None)
    beat_once(storage, live)
    # The recovered task runs alone (it was blamed for its worker's death), so two claims.
    claimed = storage.claim(live, 2) + storage.claim(live, 2)
    assert sorted(t.id for t in claimed) == sorted([stale_id, fresh_id])
    fresh = next(t for t in claimed if t.id == fresh_id)
    zombie_ack = Outcome(zombie.task, OutcomeKind.DONE, result="zombie")
    good_ack = Outcome(fresh, OutcomeKind.DONE, result="fresh-done")
    storage.ack([zombie_ack, good_ack])
    assert zombie_ack.accepted is False
    assert good_ack.accepted is True
    assert row(db, stale_id)["status"] == "running"  # still the live worker's
    assert row(db, stale_id)["worker"] == live.run_id
    assert row(db, fresh_id)["status"] == "done"
