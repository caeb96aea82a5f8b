"""SQLite under duress: a full disk, concurrent first opens, rows another program wrote.

The disk-full tests mount a real 512 KiB tmpfs (they need root: they are skipped,
saying so, when not root, and fail when root cannot mount). The set-up race runs
real processes started with ``spawn``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sqlite3
import subprocess
import time
from typing import Any

import peewee as pw
import pytest

import taskpipe.sql.store
from taskpipe import Status, WorkerBuilder
from taskpipe.errors import PushError, SetupError
from taskpipe.expose import jsonable
from taskpipe.sql.dialect import ErrorKind
from taskpipe.sql.sqlite import SqliteDialect
from taskpipe.sqlite import SqliteStorage, connect

PAD = "x" * 1000


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and len(seen) < 10:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


# A full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs mounted for this test (root only), unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root (mount is not permitted)")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # root, yet refused: a broken environment, not a skip
        pytest.fail(f"could not mount a tmpfs as root: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.fixture(params=["fails-at-commit", "fails-mid-transaction"])
def full_db(request, small_disk):
    """A set-up database on the small disk. With SQLite's default page cache a bulk
    push's pages reach the disk at COMMIT, which fails; with a 5-page cache they
    spill to the write-ahead log mid-transaction, and an INSERT fails."""
    pragmas = {"cache_size": 5} if request.param == "fails-mid-transaction" else {}
    database = connect(str(small_disk / "jobs.db"), pragmas=pragmas)
    SqliteStorage.setup(database)
    yield database
    database.close()


def _count(db: pw.SqliteDatabase) -> int:
    return db.connection().execute("SELECT COUNT(*) FROM taskpipe_jobs").fetchone()[0]


def _assert_disk_full(exc: PushError) -> None:
    assert "database or disk is full" in str(exc)
    assert "cannot rollback" not in str(exc)
    assert isinstance(exc.__cause__, (pw.OperationalError, sqlite3.OperationalError))
    codes = [getattr(e, "sqlite_errorcode", None) for e in _chain(exc)]
    assert sqlite3.SQLITE_FULL in codes, codes
    assert SqliteDialect().classify(exc.__cause__) is ErrorKind.FULL
    assert not any("cannot rollback" in str(e) for e in _chain(exc))


def test_push_bulk_on_a_full_disk_says_the_disk_is_full(full_db):
    storage = SqliteStorage(full_db)
    for _ in range(1000):  # 512 KiB: full after a few dozen KiB-sized tasks
        before = _count(full_db)
        try:
            storage.push_bulk([{"pad": PAD}] * 50)
        except PushError as exc:
            _assert_disk_full(exc)
            break
    else:
        pytest.fail("the 512 KiB disk never filled up")
    # All or nothing, and the connection is usable again: no transaction left open,
    # neither in SQLite nor in peewee's bookkeeping.
    assert not full_db.connection().in_transaction
    assert full_db.transaction_depth() == 0
    assert _count(full_db) == before


def test_push_on_a_full_disk_says_the_disk_is_full(full_db):
    storage = SqliteStorage(full_db)
    for _ in range(5000):
        try:
            storage.push({"pad": PAD})
        except PushError as exc:
            _assert_disk_full(exc)
            break
    else:
        pytest.fail("the 512 KiB disk never filled up")
    assert not full_db.connection().in_transaction


@pytest.mark.parametrize("full_db", ["fails-mid-transaction"], indirect=True)
def test_a_full_disk_in_a_nested_write_transaction_keeps_the_real_error(full_db):
    """A push_bulk inside an enclosing write transaction (so in a savepoint) whose
    INSERT fails: neither the savepoint's rollback nor the enclosing transaction's
    replaces the disk-full error."""
    storage = SqliteStorage(full_db)
    with pytest.raises(PushError) as caught:
        for _ in range(1000):
            with storage.dialect.write_tx(full_db):
                storage.push_bulk([{"pad": PAD}] * 50)
    _assert_disk_full(caught.value)
    assert not full_db.connection().in_transaction
    assert full_db.transaction_depth() == 0


# Checkpoints when idle -----------------------------------------------------------------


def _wal_size(path: str) -> int:
    return os.path.getsize(path + "-wal")


def test_a_drained_worker_leaves_the_write_ahead_log_empty(db, db_path, storage):
    # Another connection stays open, as other processes' do: without it, closing the
    # last connection would checkpoint and delete the log, whatever idle() did.
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("SELECT COUNT(*) FROM taskpipe_jobs").fetchone()  # opens the log
    try:
        storage.push_bulk([{"pad": PAD}] * 500)  # ~0.6 MB of log, under the autocheckpoint
        assert _wal_size(db_path) > 100_000
        worker = WorkerBuilder("drain").backend(storage).build(lambda args: None)
        assert worker.run_until_idle() == 500
        # The worker called idle() when it found nothing more to do: the log was
        # copied into the database and truncated to zero bytes. What is left is what
        # the worker wrote after that (unregistering its run): a few pages.
        assert _wal_size(db_path) <= 8 * (4096 + 24) + 32
        storage.idle()
        assert _wal_size(db_path) == 0
        done = other.execute("SELECT COUNT(*) FROM taskpipe_jobs WHERE status = 'done'")
        assert done.fetchone() == (500,)
    finally:
        other.close()


def test_idle_does_not_wait_for_a_reader_and_keeps_the_busy_timeout(db, db_path, storage):
    storage.push_bulk([{"pad": PAD}] * 50)
    reader = sqlite3.connect(db_path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM taskpipe_jobs").fetchone()  # holds a snapshot
        storage.push_bulk([{"pad": PAD}] * 50)  # frames the reader's snapshot predates
        started = time.monotonic()
        storage.idle()
        assert time.monotonic() - started < 2.0  # the busy timeout is 10 s
        assert _wal_size(db_path) > 0  # the reader still needs the log
        assert db.connection().execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    finally:
        reader.close()
    storage.idle()  # the reader is gone: now the log is truncated
    assert _wal_size(db_path) == 0


def test_idle_never_raises(tmp_path, caplog):
    not_a_database = tmp_path / "garbage.db"
    not_a_database.write_bytes(b"this is not a SQLite file" * 200)
    storage = SqliteStorage(connect(str(not_a_database)))
    with caplog.at_level(logging.DEBUG, logger="taskpipe.store"):
        storage.idle()
    assert "checkpoint" in caplog.text and "skipped" in caplog.text
    assert "not a database" in caplog.text


# Concurrent first opens ----------------------------------------------------------------

RACE_PROCESSES = 8
# Before the fix, 19 to 52 of the 2400 opens failed, in each of 6 runs (2 CPUs), in
# ~5 s. The last SETUP_ROUNDS rounds also set the file up and push a task in every
# process (~60 ms a round: 8 set-ups in a row, so only a few such rounds).
RACE_ROUNDS = 300
SETUP_ROUNDS = 5


def _open_new_files(directory: str, barrier: Any, results: Any) -> None:
    """A child process: each round, open a new file at the same moment as the other
    children (the barrier); in the last rounds, also set it up and push one task."""
    for round_ in range(RACE_ROUNDS):
        db = connect(os.path.join(directory, f"{round_}.db"))
        try:
            barrier.wait(timeout=60)
            if round_ < RACE_ROUNDS - SETUP_ROUNDS:
                db.connect()  # runs the pragmas, journal_mode = wal first
            else:
                SqliteStorage.setup(db)  # opens the connection, then sets up
                SqliteStorage(db).push(round_)
            results.put((round_, None))
        except Exception as exc:
            results.put((round_, f"{type(exc).__module__}.{type(exc).__name__}: {exc}"))
        finally:
            db.close()


def test_concurrent_first_opens_of_a_new_file_wait_for_each_other(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(RACE_PROCESSES), ctx.Queue()
    children = [
        ctx.Process(target=_open_new_files, args=(str(tmp_path), barrier, results))
        for _ in range(RACE_PROCESSES)
    ]
    for child in children:
        child.start()
    try:
        outcomes = [results.get(timeout=60) for _ in range(RACE_PROCESSES * RACE_ROUNDS)]
    finally:
        for child in children:
            child.join(timeout=60)
            if child.is_alive():
                child.kill()
    failures = [f"round {round_}: {error}" for round_, error in outcomes if error]
    assert not failures, f"{len(failures)} of {len(outcomes)} opens failed:\n" + "\n".join(failures)
    for round_ in range(RACE_ROUNDS):
        check = sqlite3.connect(tmp_path / f"{round_}.db")
        try:
            assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            if round_ >= RACE_ROUNDS - SETUP_ROUNDS:
                count = check.execute("SELECT COUNT(*) FROM taskpipe_jobs").fetchone()
                assert count == (RACE_PROCESSES,)
        finally:
            check.close()


@pytest.fixture
def locked_new_file(tmp_path, monkeypatch):
    """A new file that another connection holds locked (``BEGIN EXCLUSIVE``) for as long
    as the test runs; the stores give up on a busy database after 0.3 s, not 60."""
    monkeypatch.setattr(taskpipe.sql.store, "LOCKED_RETRY_SECONDS", 0.3)
    path = str(tmp_path / "locked.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    yield path
    holder.execute("ROLLBACK")
    holder.close()


def test_an_open_that_stays_locked_says_why(locked_new_file):
    db = connect(locked_new_file, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(pw.OperationalError) as caught:
        db.connect()
    assert time.monotonic() - started < 5.0
    message = str(caught.value)
    assert "database is locked" in message
    assert "journal_mode = wal" in message and "another connection holds a lock" in message
    assert SqliteDialect().classify(caught.value) is ErrorKind.BUSY
    assert db.is_closed()


def test_a_setup_that_stays_locked_raises_a_setup_error(locked_new_file):
    db = connect(locked_new_file, timeout=0.2)
    with pytest.raises(SetupError) as caught:
        SqliteStorage.setup(db)
    assert "could not set up" in str(caught.value)
    assert "another connection holds a lock" in str(caught.value)
    assert isinstance(caught.value.__cause__, pw.OperationalError)
    with pytest.raises(PushError, match="another connection holds a lock"):
        SqliteStorage(db).push(1)


# Rows another program wrote --------------------------------------------------------------

INVALID_UTF8 = "CAST(X'70656e64ff696e67' AS TEXT)"  # b"pend\xffing", stored as TEXT


@pytest.fixture
def odd_rows(db_path, storage):
    """Rows as another program (or a hand edit) could leave them, written with raw
    sqlite3 beside two ordinary tasks. Returns {what: id}."""
    ordinary = storage.push({"n": 1})
    now = time.time()
    raw = sqlite3.connect(db_path, isolation_level=None)
    ids = {"ordinary": int(ordinary)}

    def insert(what: str, columns: str, values: str, params: tuple = ()) -> None:
        cursor = raw.execute(
            f"INSERT INTO taskpipe_jobs (run_at, created_at, {columns}) VALUES (?, ?, {values})",
            (now, now, *params),
        )
        ids[what] = cursor.lastrowid

    try:
        insert("text payload", "queue, payload", "'default', ?", ('{"a": 1}',))
        insert("weird status", "queue, status, payload", "'default', 'weird', ?", (b'"w"',))
        insert("invalid utf-8 status", "queue, status, payload", f"'default', {INVALID_UTF8}, NULL")
        insert("invalid utf-8 queue", "queue, payload", f"{INVALID_UTF8}, NULL")
        insert("invalid utf-8 meta", "queue, meta", f"'default', {INVALID_UTF8}")
        insert("garbage meta", "queue, meta", "'default', '{{{'")
        insert("list meta", "queue, meta", "'default', '[1, 2]'")
        insert("blob meta", "queue, meta", "'default', X'7b2261223a317d'")  # b'{"a":1}'
        insert("text priority", "queue, priority", "'default', 'high'")
        running = f"'default', 'running', {INVALID_UTF8}"
        insert("invalid utf-8 worker", "queue, status, worker", running)
        soon = "UPDATE taskpipe_jobs SET run_at = 'soon' WHERE id = ?"
        raw.execute(soon, (ids["text priority"],))
        raw.execute(
            "INSERT INTO taskpipe_errors (job_id, attempt, error, traceback, at) "
            f"VALUES (?, 1, {INVALID_UTF8}, {INVALID_UTF8}, 'then')",
            (ids["weird status"],),
        )
    finally:
        raw.close()
    ids["last ordinary"] = int(storage.push({"n": 2}))
    return ids


def test_list_tasks_shows_rows_it_cannot_fully_read(storage, odd_rows):
    by_id = {int(info.id): info for info in storage.list_tasks(limit=100)}
    assert set(by_id) == set(odd_rows.values())  # nothing lost, nothing failed
    assert by_id[odd_rows["ordinary"]].args == {"n": 1}
    assert by_id[odd_rows["ordinary"]].status is Status.PENDING
    assert by_id[odd_rows["last ordinary"]].args == {"n": 2}
    # A payload another program stored as TEXT: shown as stored, not decoded.
    assert by_id[odd_rows["text payload"]].args == '{"a": 1}'
    # An unknown status: the raw string (a str, with ``.value`` like a Status).
    weird = by_id[odd_rows["weird status"]]
    assert weird.status == "weird" and not isinstance(weird.status, Status)
    assert weird.status.value == "weird"
    assert weird.args == "w"
    # Invalid UTF-8 in text columns: the bytes as \xNN escapes.
    assert by_id[odd_rows["invalid utf-8 status"]].status == "pend\\xffing"
    assert by_id[odd_rows["invalid utf-8 queue"]].queue == "pend\\xffing"
    assert by_id[odd_rows["invalid utf-8 worker"]].worker == "pend\\xffing"
    assert by_id[odd_rows["invalid utf-8 meta"]].meta == {"raw": "pend\\xffing"}
    # meta that is not a JSON object: kept whole under "raw".
    assert by_id[odd_rows["garbage meta"]].meta == {"raw": "{{{"}
    assert by_id[odd_rows["list meta"]].meta == {"raw": "[1, 2]"}
    assert by_id[odd_rows["blob meta"]].meta == {"a": 1}
    # A text priority is kept as stored; a time that is not a number reads as None.
    odd = by_id[odd_rows["text priority"]]
    assert odd.priority == "high" and odd.run_at is None and odd.created_at is not None
    (error,) = weird.errors
    assert error.error == "pend\\xffing" and error.traceback == "pend\\xffing"
    assert error.at is None
    # Everything converts to JSON (the CLI's --json): no lone surrogates, no bytes.
    json.dumps(jsonable(list(by_id.values())))


def test_fetch_by_id_shows_a_row_it_cannot_fully_read(storage, odd_rows):
    for what, task_id in odd_rows.items():
        info = storage.fetch_by_id(task_id)
        assert int(info.id) == task_id, what
    assert storage.fetch_by_id(odd_rows["weird status"]).status == "weird"
    assert storage.fetch_by_id(odd_rows["invalid utf-8 status"]).status == "pend\\xffing"


def test_list_tasks_filters_still_work_beside_odd_rows(storage, odd_rows):
    running = storage.list_tasks(status=Status.RUNNING)
    assert [int(t.id) for t in running] == [odd_rows["invalid utf-8 worker"]]
    escaped = storage.list_tasks(queue="default", limit=100)
    assert odd_rows["invalid utf-8 queue"] not in {int(t.id) for t in escaped}


def test_stats_and_list_queues_count_beside_odd_rows(storage, odd_rows):
    stats = storage.stats()
    # Pending: the two ordinary tasks, and the odd rows left at the default status.
    assert stats["pending"] == len(odd_rows) - 3  # minus weird, invalid status, running
    assert stats["running"] == 1
    assert stats["dead"] == stats["done"] == stats["failed"] == 0
    queues = {q.name: q for q in storage.list_queues()}
    assert set(queues) == {"default", "pend\\xffing"}
    assert queues["pend\\xffing"].pending == 1
    assert queues["default"].running == 1


def test_kill_makes_a_row_with_an_unknown_status_dead(storage, odd_rows):
    assert storage.kill(odd_rows["weird status"]) is True
    assert storage.fetch_by_id(odd_rows["weird status"]).status is Status.DEAD
    assert storage.kill(odd_rows["invalid utf-8 status"]) is True
    assert storage.kill(odd_rows["invalid utf-8 status"]) is False  # now finished


def test_list_workers_shows_a_row_it_cannot_fully_read(db_path, storage):
    raw = sqlite3.connect(db_path, isolation_level=None)
    try:
        raw.execute(
            "INSERT INTO taskpipe_workers (run_id, name, queues, hostname, pid, started_at, "
            f"last_seen) VALUES ('run-1', {INVALID_UTF8}, X'612c62', 'host', 1, 'then', ?)",
            (time.time(),),
        )
    finally:
        raw.close()
    (worker,) = storage.list_workers()
    assert worker.name == "pend\\xffing"
    assert worker.queues == ("a", "b")  # stored as a BLOB
    assert worker.started_at is None and worker.last_heartbeat is not None
