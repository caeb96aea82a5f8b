"""MySQL / MariaDB beyond the contract suite: many processes, killed connections, ids,
collations, sizes, plans, set-up races.

Needs a server: set ``TASKPIPE_TEST_MYSQL_URL`` (CI sets it, and there a missing URL
fails instead of skipping). The tests work in a database of their own
(``taskpipe_test_<hex>``, created here and dropped at the end), so they touch nothing
they did not create.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
from server_drain import LIMIT, check_drain_with_a_killed_process, fast_config, until

from taskpipe import Task, TaskId, WorkerBuilder, events

pymysql = pytest.importorskip("pymysql", reason="the MySQL tests need PyMySQL (taskpipe[mysql])")

from taskpipe.config import Config  # noqa: E402
from taskpipe.errors import PushError, SetupError, StorageError  # noqa: E402
from taskpipe.mysql import MysqlDatabase, MysqlStorage, ServerUnreachable, connect  # noqa: E402
from taskpipe.sql import schema  # noqa: E402
from taskpipe.sql.dialect import ErrorKind  # noqa: E402
from taskpipe.sql.mysql import MysqlDialect  # noqa: E402

URL_VARIABLE = "TASKPIPE_TEST_MYSQL_URL"


def _admin(base: str):
    """A raw PyMySQL connection to the server of ``base`` (no database selected)."""
    parts = urlsplit(base)
    return pymysql.connect(
        host=parts.hostname or "localhost",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
    )


def _with_database(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


@pytest.fixture(scope="module")
def my_url():
    """A URL naming a fresh database of this module's, set up (dropped after)."""
    base = os.environ.get(URL_VARIABLE, "").strip()
    if not base:
        if os.environ.get("CI"):
            pytest.fail(f"{URL_VARIABLE} is not set (CI: not skipping)", pytrace=False)
        pytest.skip(f"set {URL_VARIABLE} (e.g. mysql://root@127.0.0.1:3306/test) to run these")
    name = f"taskpipe_test_{uuid.uuid4().hex[:12]}"
    admin = _admin(base)
    admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    url = _with_database(base, name)
    db = connect(url)
    MysqlStorage.setup(db)
    db.close()
    try:
        yield url
    finally:
        admin.close()
        admin = _admin(base)  # a new connection: the first may have timed out meanwhile
        admin.cursor().execute(f"DROP DATABASE {name}")
        admin.close()


def _queue() -> str:
    return f"my-{uuid.uuid4().hex[:12]}"


# Many processes, one killed --------------------------------------------------------------
def test_four_processes_drain_every_task_once_and_recover_a_killed_ones(my_url, tmp_path):
    check_drain_with_a_killed_process(my_url, _queue(), tmp_path)


# Connections killed mid-drain --------------------------------------------------------------
KILL_TASKS = 6000
KILL_AT = (1000, 2500, 4000)


class MarkedDatabase(MysqlDatabase):
    """A database that records the server id (``CONNECTION_ID()``) of every connection
    it opens: the test kills those and no others."""

    def init(self, database, **kwargs):  # type: ignore[override]
        super().init(database, **kwargs)
        self.connection_ids: set[int] = set()
        self.ids_lock = threading.Lock()

    def _initialize_connection(self, conn) -> None:
        super()._initialize_connection(conn)
        with self.ids_lock:
            self.connection_ids.add(conn.thread_id())


def test_workers_reconnect_after_their_connections_are_killed(my_url):
    plain = connect(my_url)
    db = MarkedDatabase(plain.database, **plain.connect_params)
    queue = _queue()
    storage = MysqlStorage(db, queue=queue, config=fast_config())
    ids = storage.push_bulk(range(KILL_TASKS))

    runs: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    reached = {n: threading.Event() for n in KILL_AT}
    killed = {n: threading.Event() for n in KILL_AT}
    errors: list[BaseException] = []

    def handler(item: int, task_id: TaskId) -> None:
        with lock:
            runs[int(task_id)] += 1
            n = sum(runs.values())
        if n in reached:  # hold this task until its connections are killed: mid-drain
            reached[n].set()
            assert killed[n].wait(LIMIT)

    def on_event(ctx, event) -> None:
        if isinstance(event, events.Error):
            errors.append(event.error)

    worker = (
        WorkerBuilder("killed").backend(storage).concurrency(4).on_event(on_event).build(handler)
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    admin = _admin(my_url)
    victims: list[int] = []  # connections killed at each point
    try:
        for n in KILL_AT:
            assert reached[n].wait(LIMIT), f"the drain never reached {n} tasks"
            with db.ids_lock:
                mine = set(db.connection_ids)
            cursor = admin.cursor()
            cursor.execute("SELECT id FROM information_schema.processlist")
            alive = {row[0] for row in cursor.fetchall()} & mine
            victims.append(0)
            for connection_id in alive:
                try:
                    cursor.execute(f"KILL CONNECTION {int(connection_id)}")
                    victims[-1] += 1
                except pymysql.err.OperationalError as exc:  # it ended meanwhile
                    assert exc.args[0] == 1094, exc
            killed[n].set()
        until(lambda: storage.stats(queue)["done"] == KILL_TASKS, "every task to be done")
    finally:
        for event in killed.values():
            event.set()
        worker.stop()
        thread.join(LIMIT)
        admin.close()
    assert not thread.is_alive()
    # each point killed the worker's live connections (the fetch loop's at least; the
    # heartbeat's too unless it had not reconnected since the point before)
    assert len(victims) == len(KILL_AT) and min(victims) >= 1, victims
    assert sum(victims) > len(KILL_AT), victims
    assert set(runs) == set(ids)
    assert max(runs.values()) == 1, "a task ran twice"
    assert errors == []
    assert storage.stats(queue)["running"] == 0


# Inserts ------------------------------------------------------------------------------------
def test_concurrent_bulk_pushes_get_their_own_ids_in_order(my_url):
    """Each push_bulk reads its ids back by its own token: with four pushers inserting
    at once, every id names the row pushed at that position."""
    queue = _queue()
    db = connect(my_url)
    storage = MysqlStorage(db, queue=queue)
    barrier = threading.Barrier(4)
    got: dict[int, list[TaskId]] = {}

    def push(n: int) -> None:
        items = [f"{n}:{i}:" + "x" * 100 for i in range(3000)]  # several statements each
        barrier.wait()
        got[n] = storage.push_bulk(items)
        db.close()

    threads = [threading.Thread(target=push, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIMIT)
    assert sorted(got) == [0, 1, 2, 3]
    for n, ids in got.items():
        assert ids == sorted(ids)
        for i in (0, 1, 1499, 2999):
            assert storage.fetch_by_id(ids[i]).args == f"{n}:{i}:" + "x" * 100
    assert len({i for ids in got.values() for i in ids}) == 12000


def test_a_bulk_push_that_fails_writes_nothing(my_url):
    storage = MysqlStorage(connect(my_url), queue=_queue())
    taken = storage.push("first")
    rows = [storage.row(Task(i), 1.0) for i in range(50)] + [storage.row(Task("x", id=taken), 1.0)]
    with pytest.raises(PushError, match="duplicate"):
        storage.insert(rows)
    assert storage.stats(storage.queue)["pending"] == 1


def test_payloads_and_results_past_64_kib_round_trip(my_url):
    storage = MysqlStorage(connect(my_url), queue=_queue())
    big = "é" * 300_000  # 600 kB of UTF-8: past BLOB's and TEXT's 64 KiB
    task_id = storage.push(big)
    seen = []
    worker = WorkerBuilder("big").backend(storage).build(lambda s: seen.append(len(s)) or s[::-1])
    assert worker.run_until_idle() == 1
    assert seen == [300_000]
    assert storage.fetch_by_id(task_id).result == big[::-1]


def test_a_push_past_max_allowed_packet_is_refused_clearly(my_url):
    storage = MysqlStorage(connect(my_url), queue=_queue())
    cursor = storage.db.cursor()
    cursor.execute("SELECT @@max_allowed_packet")
    limit = int(cursor.fetchone()[0])
    too_big = "x" * (limit + 1)
    with pytest.raises(PushError, match="max_allowed_packet"):
        storage.push(too_big)
    with pytest.raises(PushError, match="max_allowed_packet"):
        storage.push_bulk(["small", too_big])
    assert storage.stats(storage.queue)["pending"] == 0
    assert storage.push("still fine") > 0


# Text compares exactly -------------------------------------------------------------------------
def test_queues_and_keys_compare_exactly(my_url):
    """Binary no-pad collation: case and trailing spaces make different queues and keys."""
    db = connect(my_url)
    base = _queue()
    names = [base, base.upper(), base + " "]
    stores = [MysqlStorage(db, queue=name) for name in names]
    for store in stores:
        store.push(store.queue)
    assert [s.stats(s.queue)["pending"] for s in stores] == [1, 1, 1]
    key = f"cron:{uuid.uuid4().hex}"
    first, upper, spaced = (
        stores[0].push_task(Task(k, key=k)) for k in (key, key.upper(), key + " ")
    )
    assert len({first, upper, spaced}) == 3
    assert stores[0].push_task(Task("again", key=key)) == first
    assert stores[0].last_key(key) == key + " "  # code point order: "k" < "k "
    assert stores[0].last_key(key.upper()) == key.upper()


# Plans ------------------------------------------------------------------------------------------
def _explain(db, sql: str, params) -> list[dict]:
    cursor = db.cursor()
    cursor.execute("EXPLAIN " + sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_the_claim_reads_its_index_in_order_and_acks_use_the_primary_key(my_url):
    queue = _queue()
    storage = MysqlStorage(connect(my_url), queue=queue)
    storage.push_bulk(range(2000))
    db, q = storage.db, MysqlDialect.queries
    db.execute_sql("ANALYZE TABLE taskpipe_jobs")
    now = time.time() + 1
    [claim] = _explain(db, q.claim, (queue, now, 32))
    assert claim["key"] == "taskpipe_jobs_claim", claim
    assert "filesort" not in (claim["Extra"] or ""), claim
    guarded = _explain(db, q.claim_guarded, (queue, now, queue, now, 32))[0]
    assert guarded["key"] == "taskpipe_jobs_claim", guarded
    assert "filesort" not in (guarded["Extra"] or ""), guarded
    [due] = _explain(db, q.next_due, (queue,))
    assert due["key"] in (None, "taskpipe_jobs_due"), due  # None: "Select tables optimized away"
    assert "optimized away" in (due["Extra"] or "") or due["key"] == "taskpipe_jobs_due", due
    statements: list[tuple[str, tuple]] = []

    class Recording(MysqlDialect):
        def execute(self, db, sql, params=()):
            statements.append((sql, tuple(params)))
            return super().execute(db, sql, params)

    with db.atomic() as tx:
        Recording().ack_done_in_tx(db, [(None, now, i, "nobody") for i in range(1, 33)])
        tx.rollback()
    [(ack_sql, ack_params)] = statements
    [ack] = _explain(db, ack_sql, ack_params)
    assert ack["key"] == "PRIMARY", ack


# Set-up -----------------------------------------------------------------------------------------
def test_setup_from_several_connections_at_once_is_one_setup(my_url):
    name = f"taskpipe_test_{uuid.uuid4().hex[:12]}"
    admin = _admin(my_url)
    admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    try:
        db = connect(_with_database(my_url, name))
        with pytest.raises(SetupError, match=r"MysqlStorage\.setup"):
            MysqlStorage(db).check_setup()
        barrier = threading.Barrier(4)
        failures: list[BaseException] = []

        def setup() -> None:
            barrier.wait()
            try:
                MysqlStorage.setup(db)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)
            finally:
                db.close()

        threads = [threading.Thread(target=setup) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(LIMIT)
        assert failures == []
        cursor = admin.cursor()
        cursor.execute(f"SELECT version FROM {name}.{schema.META}")
        assert cursor.fetchall() == ((schema.SCHEMA_VERSION,),)
        MysqlStorage(db).check_setup()
        db.close()
    finally:
        admin.cursor().execute(f"DROP DATABASE {name}")
        admin.close()


def test_an_unreachable_server_is_one_clear_error_at_once():
    db = connect("mysql://nobody@127.0.0.1:1/none")  # port 1: nothing listens
    began = time.monotonic()
    with pytest.raises(
        ServerUnreachable, match=r"cannot connect to the MySQL server 127\.0\.0\.1:1/none"
    ):
        MysqlStorage(db).push(1)
    with pytest.raises(StorageError, match="cannot connect"):
        MysqlStorage.setup(db)
    assert time.monotonic() - began < 10


def test_urls_are_checked():
    with pytest.raises(ValueError, match="one database"):
        connect("mysql://root@127.0.0.1:3306/")
    with pytest.raises(ValueError, match="unknown option 'sslmode'"):
        connect("mysql://root@127.0.0.1/test?sslmode=require")
    with pytest.raises(ValueError, match="utf8mb4"):
        connect("mysql://root@127.0.0.1/test", charset="latin1")
    db = connect("mariadb://me:p%40ss@db.example:3307/jobs?connect_timeout=3")
    assert (db.database, db.connect_params["password"], db.connect_params["port"]) == (
        "jobs",
        "p@ss",
        3307,
    )
    assert db.connect_params["connect_timeout"] == 3


def test_without_pymysql_the_error_says_what_to_install(monkeypatch):
    import taskpipe

    for name in ("taskpipe.mysql", "taskpipe.sql.mysql"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "pymysql", None)  # "import pymysql" fails
    with pytest.raises(StorageError, match=r"pip install 'taskpipe\[mysql\]'"):
        taskpipe.connect("mysql://root@127.0.0.1:3306/test")


# Errors by number -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), ErrorKind.BUSY),
        (pymysql.err.OperationalError(1213, "Deadlock found"), ErrorKind.BUSY),
        (pymysql.err.ProgrammingError(1146, "Table doesn't exist"), ErrorKind.MISSING),
        (pymysql.err.IntegrityError(1062, "Duplicate entry"), ErrorKind.INTEGRITY),
        (pymysql.err.OperationalError(2013, "Lost connection"), ErrorKind.GONE),
        (pymysql.err.OperationalError(2006, "MySQL server has gone away"), ErrorKind.GONE),
        (pymysql.err.OperationalError(1927, "Connection was killed"), ErrorKind.GONE),
        (pymysql.err.InterfaceError(0, ""), ErrorKind.GONE),
        # by number, never by message
        (pymysql.err.OperationalError(1054, "Deadlock found; Lost connection"), ErrorKind.OTHER),
    ],
)
def test_errors_are_classified_by_number(error, kind):
    import peewee as pw

    dialect = MysqlDialect()
    assert dialect.classify(error) is kind
    wrapped = pw.OperationalError(error, *error.args)  # as peewee raises it
    assert dialect.classify(wrapped) is kind


# Another process's push ------------------------------------------------------------------------
PUSHER = """
import sys
import taskpipe
storage = taskpipe.open_storage(sys.argv[1], queue=sys.argv[2])
storage.push("from another process")
"""


def test_an_idle_worker_finds_another_processs_push_by_polling(my_url):
    queue = _queue()
    storage = MysqlStorage(connect(my_url), queue=queue, config=Config(poll_interval=0.1))
    idle, ran = threading.Event(), threading.Event()

    def on_event(ctx, event) -> None:
        if isinstance(event, events.Idle):
            idle.set()

    worker = WorkerBuilder("poller").backend(storage).on_event(on_event).build(lambda s: ran.set())
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert idle.wait(LIMIT), "the worker never became idle"
        pushed = subprocess.run(
            [sys.executable, "-c", PUSHER, my_url, queue],
            capture_output=True,
            text=True,
            timeout=LIMIT,
        )
        assert pushed.returncode == 0, pushed.stderr
        assert ran.wait(LIMIT), "the idle worker never found the push"
    finally:
        worker.stop()
        thread.join(LIMIT)
    assert not MysqlStorage.capabilities.wakeups  # polling, not LISTEN: declared so
