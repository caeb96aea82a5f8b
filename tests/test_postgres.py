"""PostgreSQL beyond the contract suite: many processes, lost connections, wake-ups.

Needs a server: set ``TASKPIPE_TEST_POSTGRES_URL`` (CI sets it, and there a missing
URL fails instead of skipping). Every test works in a schema of its own session
(``taskpipe_test_<hex>``, created here and dropped at the end), reached through the
URL's ``search_path``, so it touches nothing it did not create.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import quote

import pytest
from server_drain import LIMIT, check_drain_with_a_killed_process, fast_config, until

from taskpipe import TaskId, WorkerBuilder, events

psycopg = pytest.importorskip(
    "psycopg", reason="the PostgreSQL tests need psycopg 3 (taskpipe[postgres])"
)

from taskpipe.config import Config  # noqa: E402
from taskpipe.errors import StorageError  # noqa: E402
from taskpipe.postgres import PostgresStorage, ServerUnreachable, connect  # noqa: E402

URL_VARIABLE = "TASKPIPE_TEST_POSTGRES_URL"


@pytest.fixture(scope="module")
def pg_url():
    """A URL whose connections work in a fresh schema of this module's (dropped after)."""
    base = os.environ.get(URL_VARIABLE, "").strip()
    if not base:
        if os.environ.get("CI"):
            pytest.fail(f"{URL_VARIABLE} is not set (CI: not skipping)", pytrace=False)
        pytest.skip(
            f"set {URL_VARIABLE} (e.g. postgresql://postgres@127.0.0.1:5432/test) to run these"
        )
    schema = f"taskpipe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}options={quote(f'-c search_path={schema}')}"
    db = connect(url)
    PostgresStorage.setup(db)
    db.close()
    yield url
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _queue() -> str:
    return f"pg-{uuid.uuid4().hex[:12]}"


# Many processes, one killed --------------------------------------------------------------
def test_four_processes_drain_every_task_once_and_recover_a_killed_ones(pg_url, tmp_path):
    check_drain_with_a_killed_process(pg_url, _queue(), tmp_path)


# Connections killed mid-drain --------------------------------------------------------------
TERMINATE_TASKS = 6000
TERMINATE_AT = (1000, 2500, 4000)


def test_workers_reconnect_after_their_connections_are_terminated(pg_url):
    app = f"taskpipe test {uuid.uuid4().hex[:8]}"
    queue = _queue()
    db = connect(pg_url, application_name=app)
    storage = PostgresStorage(db, queue=queue, config=fast_config())
    ids = storage.push_bulk(range(TERMINATE_TASKS))

    runs: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    reached = {n: threading.Event() for n in TERMINATE_AT}
    errors: list[BaseException] = []

    def handler(item: int, task_id: TaskId) -> None:
        with lock:
            runs[int(task_id)] += 1
            event = reached.get(sum(runs.values()))
        if event is not None:
            event.set()

    def on_event(ctx, event) -> None:
        if isinstance(event, events.Error):
            errors.append(event.error)

    worker = (
        WorkerBuilder("terminated")
        .backend(storage)
        .concurrency(4)
        .on_event(on_event)
        .build(handler)
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    terminated = 0
    try:
        with psycopg.connect(
            pg_url, autocommit=True, application_name="taskpipe test killer"
        ) as killer:
            for n in TERMINATE_AT:
                assert reached[n].wait(LIMIT), f"the drain never reached {n} tasks"
                rows = killer.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND pid <> pg_backend_pid()",
                    (app,),
                ).fetchall()
                terminated += sum(1 for (ok,) in rows if ok)
            until(lambda: storage.stats(queue)["done"] == TERMINATE_TASKS, "every task to be done")
    finally:
        worker.stop()
        thread.join(LIMIT)
    assert not thread.is_alive()
    assert terminated >= len(TERMINATE_AT)  # the fetch, pool and listener connections, at least
    assert set(runs) == set(ids)
    assert max(runs.values()) == 1, "a task ran twice"
    assert errors == []
    assert storage.stats(queue)["running"] == 0


# Wake-ups across processes -------------------------------------------------------------------
PUSHER = """
import sys, time
import taskpipe
storage = taskpipe.open_storage(sys.argv[1], queue=sys.argv[2])
storage.push("from another process")
print(time.time())
"""


def test_an_idle_worker_is_woken_by_another_processs_push(pg_url):
    queue = _queue()
    storage = PostgresStorage(connect(pg_url), queue=queue, config=Config(poll_interval=30.0))
    idle, ran = threading.Event(), threading.Event()
    started_at: list[float] = []

    def handler(item: str) -> None:
        started_at.append(time.time())
        ran.set()

    def on_event(ctx, event) -> None:
        if isinstance(event, events.Idle):
            idle.set()

    worker = WorkerBuilder("sleeper").backend(storage).on_event(on_event).build(handler)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert idle.wait(LIMIT), "the worker never became idle"
        listener = storage.wakeups.probe
        assert listener is not None and listener.connected.wait(LIMIT), "no listener"
        heard_before = listener.notifications
        pushed = subprocess.run(
            [sys.executable, "-c", PUSHER, pg_url, queue],
            capture_output=True,
            text=True,
            timeout=LIMIT,
        )
        assert pushed.returncode == 0, pushed.stderr
        pushed_at = float(pushed.stdout.split()[-1])
        # The poll is 30 s away: a pick-up within 20 s can only be the wake-up.
        assert ran.wait(20.0), "the push did not wake the idle worker"
    finally:
        worker.stop()
        thread.join(LIMIT)
    assert started_at[0] - pushed_at < 1.0
    assert listener.notifications > heard_before


# Start-up and the plans ----------------------------------------------------------------------
def test_an_unreachable_server_is_one_clear_error_at_once():
    db = connect("postgresql://nobody@127.0.0.1:1/none")  # port 1: nothing listens
    began = time.monotonic()
    with pytest.raises(
        ServerUnreachable, match=r"cannot reach the PostgreSQL server 127\.0\.0\.1:1/none"
    ):
        PostgresStorage(db).push(1)
    with pytest.raises(StorageError, match="cannot reach"):
        PostgresStorage.setup(db)
    assert time.monotonic() - began < 10


def test_the_ack_stays_on_the_primary_key_in_the_generic_plan(pg_url):
    """PERFORMANCE.md's trap: an ack fenced with ``status = 'running'`` may walk the
    partial attention index; psycopg prepares statements after 5 runs, so the
    generic plan is the one that matters."""
    from taskpipe.sql.postgres import PostgresDialect

    q = PostgresDialect.queries
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        for name, sql, types in (
            ("ack_done", q.ack_done, "bytea, float8, bigint, text"),
            ("ack_failed", q.ack_failed, "text, float8, float8, bigint, text"),
        ):
            n = iter(range(1, 10))
            numbered = "".join(f"${next(n)}" if part == "%s" else part for part in _split(sql))
            conn.execute(f"PREPARE {name} ({types}) AS {numbered}")
            args = ", ".join("NULL" for _ in types.split(","))
            plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN EXECUTE {name} ({args})"))
            assert "taskpipe_jobs_pkey" in plan, plan
            assert "attention" not in plan, plan


def test_claims_never_read_the_whole_table_in_the_generic_plan(pg_url):
    """With the LIMIT a parameter, the generic plan guesses 10% of the due rows; a
    claim that joined ``picked`` then read the whole table (0.4 s at 1M pending)."""
    from taskpipe.sql.postgres import PostgresDialect

    dialect = PostgresDialect()
    with _scratch_schema() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO taskpipe_jobs (queue, run_at, created_at) "
            "SELECT 'q', 0, 0 FROM generate_series(1, 50000)"
        )
        conn.execute("ANALYZE taskpipe_jobs")
        claim = "text, float8, text, float8, int, text, text, float8"
        statements = {
            "claim_guarded": (dialect.queries.claim_guarded, claim),
            "claim": (dialect.queries.claim, "text, float8, int, text, text, float8"),
            "ack_and_claim": (
                dialect.ack_and_claim_sql,
                f"float8, bigint[], text[], bytea[], {claim}",
            ),
        }
        conn.execute("SET plan_cache_mode = force_generic_plan")
        for name, (sql, types) in statements.items():
            numbered = "".join(
                f"${i}{part}" if i else part for i, part in enumerate(sql.split("%s"))
            )
            conn.execute(f"PREPARE {name} ({types}) AS {numbered}")
            nulls = ", ".join("NULL" for _ in types.split(","))
            plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN EXECUTE {name} ({nulls})"))
            assert "Seq Scan" not in plan and "taskpipe_jobs_claim" in plan, (name, plan)


@contextlib.contextmanager
def _scratch_schema():
    """A URL whose connections work in a fresh, set-up schema (dropped after)."""
    base = os.environ[URL_VARIABLE].strip()
    schema = f"taskpipe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        sep = "&" if "?" in base else "?"
        url = f"{base}{sep}options={quote(f'-c search_path={schema}')}"
        db = connect(url)
        PostgresStorage.setup(db)
        db.close()
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_the_one_statement_ack_joins_on_the_primary_key_in_both_plans(pg_url):
    """The batch ack (``ACK_DONE_MANY``, an UPDATE joined to unnest()) on a table with
    done rows that were running (the attention index still lists them): the primary
    key, never the attention index, in the custom and the generic plan."""
    from taskpipe.sql.postgres import ACK_DONE_MANY

    with _scratch_schema() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO taskpipe_jobs (queue, status, run_at, created_at, lease) "
            "SELECT 'q', 'running', 0, 0, 'l' || g FROM generate_series(1, 20000) g"
        )
        conn.execute("UPDATE taskpipe_jobs SET status = 'done' WHERE id % 10 <> 0")
        conn.execute("ANALYZE taskpipe_jobs")
        numbered = "".join(
            f"${i}{part}" if i else part for i, part in enumerate(ACK_DONE_MANY.split("%s"))
        )
        conn.execute(f"PREPARE ack_many (float8, bigint[], text[], bytea[]) AS {numbered}")
        for mode in ("force_custom_plan", "force_generic_plan"):
            conn.execute(f"SET plan_cache_mode = {mode}")
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    "EXPLAIN EXECUTE ack_many (0, '{10,20,30}', '{l10,l20,l30}', '{NULL,NULL,NULL}')"
                )
            )
            assert "taskpipe_jobs_pkey" in plan, (mode, plan)
            assert "attention" not in plan and "Seq Scan on taskpipe_jobs" not in plan, (mode, plan)


def _split(sql: str) -> list[str]:
    parts = sql.split("%s")
    out: list[str] = []
    for i, part in enumerate(parts):
        if i:
            out.append("%s")
        out.append(part)
    return out


def test_without_psycopg_the_error_says_what_to_install(monkeypatch):
    import taskpipe

    for name in ("taskpipe.postgres", "taskpipe.sql.postgres"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # "import psycopg" fails
    with pytest.raises(StorageError, match=r"pip install 'taskpipe\[postgres\]'"):
        taskpipe.connect("postgresql://postgres@127.0.0.1:5432/test")


def test_a_push_and_a_retry_notify_the_queue_on_commit(pg_url):
    from taskpipe import Task
    from taskpipe.context import WorkerContext
    from taskpipe.store import Outcome, OutcomeKind

    queue = _queue()
    storage = PostgresStorage(connect(pg_url), queue=queue)

    def heard(listener, timeout: float) -> bool:
        # Other sessions on this database may notify for their own queues.
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if any(n.payload == queue for n in listener.notifies(timeout=left, stop_after=1)):
                return True
        return False

    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute("LISTEN taskpipe")
        with storage.db.atomic():
            task_id = storage.push_task(Task("x", max_attempts=1))
            assert not heard(listener, 0.2)  # not before COMMIT
        assert heard(listener, LIMIT)
        run = WorkerContext("w", capacity=1, report=lambda exc: None)
        [claim] = storage.claim(run, 1)
        storage.ack([Outcome(claim, OutcomeKind.DEAD, error="boom")])
        assert storage.retry(task_id)
        assert heard(listener, LIMIT)


def test_an_id_given_by_hand_is_never_handed_out_again(pg_url):
    from taskpipe import Task

    storage = PostgresStorage(connect(pg_url), queue=_queue())
    first = storage.push("a")
    ahead = storage.push_task(Task("b", id=first + 1000))
    assert ahead == first + 1000
    assert storage.push("c") > ahead
    assert min(storage.push_bulk(range(100))) > ahead  # the COPY path takes its ids after it


def test_outcomes_go_with_the_next_claim_in_one_statement(pg_url):
    """``ack_and_claim``: Done outcomes are written by the claim's own statement; a
    zombie's (its lease taken back) is not accepted; other outcomes are not merged."""
    from taskpipe.context import WorkerContext
    from taskpipe.store import Outcome, OutcomeKind

    storage = PostgresStorage(connect(pg_url), queue=_queue())
    storage.push_bulk(range(6))
    run = WorkerContext("w", capacity=8, report=lambda exc: None)
    first = storage.claim(run, 2)
    zombie = Outcome(first[1], OutcomeKind.DONE)
    zombie.claim = dataclasses.replace(first[1], lease="someone-else")
    outcomes = [Outcome(first[0], OutcomeKind.DONE, encoded_result=b"1"), zombie]
    second = storage.ack_and_claim(outcomes, run, 3)
    assert [int(c.id) for c in second] == [int(first[1].id) + i for i in (1, 2, 3)]
    assert [o.accepted for o in outcomes] == [True, False]
    assert storage.fetch_by_id(first[0].id).status.value == "done"
    assert storage.fetch_by_id(first[1].id).status.value == "running"
    retry = [Outcome(second[0], OutcomeKind.RETRY, error="x", delay=1)]
    assert storage.ack_and_claim(retry, run, 1) is None  # not merged: nothing done
    assert storage.fetch_by_id(second[0].id).status.value == "running"


def test_a_lost_connection_after_the_merged_statement_committed_returns_what_it_did(
    pg_url, monkeypatch
):
    """The connection drops after the ack-and-claim statement committed: what it
    claimed (under its lease) and wrote (its done_at) is read back, not done twice."""
    from taskpipe.context import WorkerContext
    from taskpipe.sql.postgres import PostgresDialect
    from taskpipe.store import Outcome, OutcomeKind

    storage = PostgresStorage(connect(pg_url), queue=_queue())
    storage.push_bulk(range(4))
    run = WorkerContext("w", capacity=8, report=lambda exc: None)
    first = storage.claim(run, 2)
    real = PostgresDialect.fetch_named
    calls = []

    def commit_then_drop(self, db, sql, params=()):
        rows = real(self, db, sql, params)
        calls.append(sql)
        if len(calls) == 1:
            raise psycopg.OperationalError("the server closed the connection")
        return rows

    monkeypatch.setattr(PostgresDialect, "fetch_named", commit_then_drop)
    outcomes = [Outcome(c, OutcomeKind.DONE) for c in first]
    second = storage.ack_and_claim(outcomes, run, 2)
    assert len(second) == 2 and all(o.accepted for o in outcomes)
    assert calls[0] == storage.dialect.ack_and_claim_sql and len(calls) == 2  # read back once
    states = {int(c.id): storage.fetch_by_id(c.id).status.value for c in first + second}
    assert sorted(states.values()) == ["done", "done", "running", "running"]
