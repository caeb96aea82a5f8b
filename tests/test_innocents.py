"""Nothing innocent is lost (issue 10): one bad row, one unwritable outcome, one task
that kills its worker, or a busy write lock never takes other tasks with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from freezegun import freeze_time

from taskpipe import Status, WorkerBuilder, WorkerContext, events
from taskpipe.sqlite import Config, SqliteStorage


def errors_of(events_seen):
    return [e for e in events_seen if isinstance(e, events.Error)]


# 1. A row the claim cannot turn into a task -----------------------------------------------
@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("meta", "{{{", "meta is not valid JSON"),
        ("meta", "[1, 2]", "meta is a list"),
        ("priority", "high", "priority is 'high'"),
        ("max_attempts", 0, "max_attempts is 0"),
    ],
)
def test_a_malformed_row_is_dead_and_its_batch_runs(storage, db, column, value, says):
    now = time.time()
    db.execute_sql(
        f"INSERT INTO taskpipe_jobs (queue, payload, run_at, created_at, {column}) VALUES ('default', ?, ?, ?, ?)",
        (b"1", now, now, value),
    )
    bad_id = db.execute_sql("SELECT max(id) FROM taskpipe_jobs").fetchone()[0]
    good = storage.push_bulk([2, 3, 4])
    seen: list[events.Event] = []
    ran: list[int] = []
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .on_event(lambda ctx, e: seen.append(e))
        .build(ran.append)
    )
    assert worker.run_until_idle() == 4
    assert sorted(ran) == [2, 3, 4]
    bad = storage.fetch_by_id(bad_id)
    assert bad.status is Status.DEAD and says in bad.errors[-1].error
    assert all(storage.fetch_by_id(i).status is Status.DONE for i in good)
    assert [e.task_id for e in errors_of(seen)] == [bad_id]


# 2. An outcome that cannot be written ------------------------------------------------------
class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_unwritable_outcomes_are_made_writable_and_the_batch_is_acked(storage):
    ids = storage.push_bulk(["surrogate", "repr", "deep", "unprintable", "fine", "fine"])

    def handler(kind: str):
        if kind == "surrogate":
            raise ValueError("cannot parse " + os.fsdecode(b"caf\xe9.csv"))
        if kind == "repr":
            return BadRepr()
        if kind == "deep":
            return nested(100_000)
        if kind == "unprintable":
            raise UnprintableError()
        return "ok"

    worker = WorkerBuilder("w").backend(storage).concurrency(4).build(handler)
    assert worker.run_until_idle() == 6
    infos = [storage.fetch_by_id(i) for i in ids]
    surrogate, bad_repr, deep, unprintable, fine1, fine2 = infos
    assert surrogate.status is Status.DEAD
    assert surrogate.errors[0].error == "ValueError: cannot parse caf\\udce9.csv"
    assert bad_repr.status is Status.DONE and "result could not be stored" in bad_repr.result
    assert deep.status is Status.DONE and "result could not be stored" in deep.result
    assert unprintable.status is Status.DEAD
    assert unprintable.errors[0].error == "UnprintableError: <unprintable UnprintableError object>"
    assert (fine1.result, fine2.result) == ("ok", "ok")


def test_an_outcome_the_store_refuses_is_written_as_dead_and_the_others_are_acked(storage):
    """Whatever makes one outcome fail to write, the others in its batch are written."""
    ids = storage.push_bulk([1, 2, 3])
    real_ack = storage.ack

    def picky_ack(outcomes):
        if any(o.claim.id == ids[1] and o.kind.value == "done" for o in outcomes):
            raise RuntimeError("this one cannot be written")
        return real_ack(outcomes)

    storage.ack = picky_ack
    seen: list[events.Event] = []
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .on_event(lambda ctx, e: seen.append(e))
        .build(lambda n: n)
    )
    worker.run_until_idle()
    statuses = [storage.fetch_by_id(i).status for i in ids]
    assert statuses == [Status.DONE, Status.DEAD, Status.DONE]
    assert (
        "the outcome could not be stored: RuntimeError"
        in storage.fetch_by_id(ids[1]).errors[0].error
    )


# 3. A task that kills its worker does not take prefetched tasks with it ---------------------
CRASHER = """
import os, sys
from taskpipe import WorkerBuilder
from taskpipe.sqlite import SqliteStorage, connect
storage = SqliteStorage(connect(sys.argv[1]))
WorkerBuilder("w").backend(storage).build(lambda a: os._exit(7) if a == 1 else "ok").run_until_idle()
"""


def test_a_task_that_kills_its_worker_does_not_take_prefetched_tasks_with_it(
    tmp_path, db_path, storage
):
    ids = storage.push_bulk([1, 2, 3, 4])  # 1 kills the process; 2-4 are prefetched beside it
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    codes = []
    for _ in range(12):
        if storage.fetch_by_id(ids[0]).status is Status.DEAD:
            break
        codes.append(subprocess.run([sys.executable, str(script), db_path], timeout=60).returncode)
    poison = storage.fetch_by_id(ids[0])
    assert poison.status is Status.DEAD
    assert poison.errors[-1].error == "its worker died 5 times while running it"
    assert sum(r.counted for r in poison.recoveries) == 5
    for task_id in ids[1:]:
        info = storage.fetch_by_id(task_id)
        assert info.status is Status.DONE and info.result == "ok"
        assert not any(r.counted for r in info.recoveries)  # never blamed
    assert 7 in codes


# 4. A live worker is not taken for dead because the write lock was busy -------------------
def test_a_live_process_is_not_taken_for_dead_when_its_beats_are_late(db):
    """A run on this host whose process is alive keeps its tasks though its last beat is
    older than the orphan window (its beats were stuck behind a busy write lock); after
    ten windows of silence it is taken for dead all the same."""
    config = Config(keep_alive=0.5, reenqueue_orphaned_after=1.5)
    storage = SqliteStorage(db, config=config)
    with freeze_time("2026-01-01 12:00:00") as frozen:
        task_id = storage.push("long")
        live = WorkerContext("live", capacity=1, report=print)
        storage.beat(live)
        [claim] = storage.claim(live, 1)
        other = WorkerContext("other", capacity=1, report=print)
        frozen.tick(timedelta(seconds=6))  # four windows without a beat
        storage.beat(other)
        assert storage.fetch_by_id(task_id).status is Status.RUNNING
        frozen.tick(timedelta(seconds=10))  # over ten windows: dead whatever the process table says
        storage.beat(other)
    info = storage.fetch_by_id(task_id)
    assert info.status is Status.PENDING and [r.counted for r in info.recoveries] == [True]
    assert claim.id == task_id


def test_a_stopped_process_is_taken_for_dead_after_the_window(tmp_path, db_path, storage):
    """SIGSTOP (a frozen job) is not "alive": its tasks go back after the window."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ctx = WorkerContext("frozen", capacity=1, report=print)
        with freeze_time("2026-01-01 12:00:00") as frozen:
            task_id = storage.push("held")
            storage.beat(ctx)
            assert [c.id for c in storage.claim(ctx, 1)] == [task_id]
            storage.db.execute_sql(
                "UPDATE taskpipe_workers SET pid = ? WHERE run_id = ?", (holder.pid, ctx.run_id)
            )
            holder.send_signal(signal.SIGSTOP)
            os.waitpid(holder.pid, os.WUNTRACED)  # returns once it is stopped
            other = WorkerContext("other", capacity=1, report=print)
            frozen.tick(timedelta(seconds=30))
            storage.beat(other)
            assert storage.fetch_by_id(task_id).status is Status.RUNNING  # inside the 60 s window
            frozen.tick(timedelta(seconds=31))
            storage.beat(other)
        assert storage.fetch_by_id(task_id).status is Status.PENDING
    finally:
        holder.kill()
        holder.wait()
