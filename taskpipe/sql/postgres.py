"""PostgreSQL: ``PostgresDialect`` and ``PostgresStorage`` (public names in ``taskpipe.postgres``).

The same SQL core as SQLite (``store.py``); what PostgreSQL spells its own way is here:

- the claim is a ``MATERIALIZED`` CTE with ``FOR UPDATE SKIP LOCKED`` (the CTE runs
  once, so a claim never takes more than its limit), one autocommit statement;
- inserts return their ids (``RETURNING id``); a bulk insert takes its ids from the
  sequence first and writes the rows with ``COPY``: ids in order, by construction;
- a push sends ``pg_notify('taskpipe', queue)`` in its own transaction (a single
  push: in the same statement), so the notification is delivered on COMMIT and
  never before the row is visible; one listener thread per process and database
  (``PgListener``) wakes that process's idle workers;
- acks are fenced with ``coalesce(status, '') = 'running'``: with a plain
  ``status = 'running'`` the planner may walk the partial "attention" index, which
  keeps an entry for every row that was ever running until VACUUM (see
  PERFORMANCE.md), instead of the primary key;
- errors are classified by SQLSTATE; a lost connection (a server restart,
  ``pg_terminate_backend``) is ``GONE``: the store reconnects and tries again. A
  server that cannot be reached when a database is first used is one clear
  ``StorageError`` at once (``ServerUnreachable``).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import peewee as pw
import psycopg

from ..errors import ServerUnreachable, StorageError
from ..task import TaskId
from ..wakeups import WakeRegistry
from . import schema
from .dialect import Dialect, ErrorKind
from .queries import DONE, RUNNING, WAITING, Queries
from .schema import JOBS
from .store import SqlStorage

__all__ = [
    "CHANNEL",
    "PgListener",
    "PostgresDatabase",
    "PostgresDialect",
    "PostgresStorage",
    "ServerUnreachable",
    "connect",
]

log = logging.getLogger("taskpipe.store")

#: The LISTEN/NOTIFY channel; the payload is the queue's name.
CHANNEL = "taskpipe"
#: What ``connect()`` names its connections (``pg_stat_activity.application_name``).
APPLICATION_NAME = "taskpipe"
#: A lock key for ``setup()`` (several processes may set up at once).
_SETUP_LOCK = 0x7461736B70697065  # "taskpipe"
#: Inserts of at least this many plain rows go through COPY (ids from the sequence).
_COPY_FROM = 64
#: How often the listener looks whether it is still needed.
LISTEN_TIMEOUT = 0.5
#: The listener's pause between reconnection attempts (growing up to the maximum).
RECONNECT_DELAY, RECONNECT_MAX_DELAY = 0.05, 2.0

_COLUMNS = "id, queue, status, payload, priority, run_at, max_attempts, meta, key, created_at"
_CLAIMED = (
    "j.id, j.payload, j.priority, j.run_at, j.attempts, j.max_attempts, "
    "convert_to(j.meta, 'UTF8') AS meta, j.isolate"
)
_PICK = f"SELECT id FROM {JOBS} WHERE status IN {WAITING} AND queue = %s AND run_at <= %s"
# ``id = ANY(ARRAY(…))``, not a join with ``picked``: in the generic plan the LIMIT is a
# parameter, which the planner takes for 10% of the due rows, and a join then reads
# the whole table (a seq scan and a hash join: 0.4 s a claim at 1M pending); an array
# it takes for a few ids, found on the primary key whatever the depth.
_SET_RUNNING = (
    f"UPDATE {JOBS} j SET status = {RUNNING}, attempts = j.attempts + 1, lease = %s, worker = %s, "
    "started_at = %s WHERE j.id = ANY(ARRAY(SELECT id FROM picked)) "
)
# The rows a claim took, by queue and lease (read after a lost connection).
_CLAIMED_BY_LEASE = (
    f"SELECT {_CLAIMED} FROM {JOBS} j WHERE j.status = {RUNNING} AND j.queue = %s AND j.lease = %s"
)

#: A batch of Done outcomes in one statement (autocommit: one round trip, one commit):
#: (done_at, ids, leases, results); fenced like every ack (see the module docstring),
#: so that it joins on the primary key in the generic plan too.
ACK_DONE_MANY = (
    f"UPDATE {JOBS} j SET status = {DONE}, result = a.result, done_at = %s, isolate = 0 "
    "FROM unnest(%s::bigint[], %s::text[], %s::bytea[]) AS a(id, lease, result) "
    f"WHERE j.id = a.id AND j.lease = a.lease AND coalesce(j.status, '') = {RUNNING} "
    "RETURNING j.id, a.lease"
)
_BYTES = (bytes, bytearray, memoryview)
_NULLS = "NULL::bytea, NULL::int, NULL::float8, NULL::int, NULL::int, NULL::bytea, NULL::int"


def _postgres_queries() -> Queries:
    base = Queries().with_paramstyle("%s")
    fence = f"AND status = {RUNNING}"
    safe_fence = f"AND coalesce(status, '') = {RUNNING}"
    ack = {
        name: getattr(base, name).replace(fence, safe_fence)
        for name in ("ack_done", "ack_failed", "ack_release", "ack_interrupted")
    }
    for name, sql in ack.items():
        assert safe_fence in sql, name
    # A row without an id takes the sequence's next (SQLite: a NULL rowid does that).
    first_value = "VALUES (%s, "
    auto_id = f"VALUES (coalesce(%s, nextval('{JOBS}_id_seq'::regclass)), "
    assert base.insert.count(first_value) == 1 and base.insert_keyed.count(first_value) == 1
    return replace(
        base,
        **ack,
        insert=base.insert.replace(first_value, auto_id) + " RETURNING id",
        insert_keyed=base.insert_keyed.replace(first_value, auto_id) + " RETURNING id",
        # (queue, now, limit, lease, worker, started_at): ``PostgresDialect.claim``
        # reorders the core's (lease, worker, started_at, queue, now, limit)
        claim=(
            f"WITH picked AS MATERIALIZED ({_PICK} AND isolate = 0 "
            "ORDER BY priority DESC, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"{_SET_RUNNING}RETURNING {_CLAIMED}"
        ),
        # (queue, now, queue, now, limit, lease, worker, started_at), reordered likewise
        claim_guarded=(
            f"WITH picked AS MATERIALIZED ({_PICK} AND isolate = 0 AND NOT EXISTS "
            f"(SELECT 1 FROM {JOBS} WHERE isolate = 1 AND status IN {WAITING} AND queue = %s "
            "AND run_at <= %s) "
            "ORDER BY priority DESC, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"{_SET_RUNNING}RETURNING {_CLAIMED}"
        ),
        # (queue, now, lease, worker, started_at), reordered likewise
        claim_isolated=(
            f"WITH picked AS MATERIALIZED ({_PICK} AND isolate = 1 "
            "ORDER BY priority DESC, run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            f"{_SET_RUNNING}RETURNING {_CLAIMED}"
        ),
        # ``worker IS ?`` is SQLite's null-safe equality
        recover=base.recover.replace("worker IS %s", "worker IS NOT DISTINCT FROM %s"),
        isolate=base.isolate.replace("worker IS %s", "worker IS NOT DISTINCT FROM %s"),
        # MAX() is an aggregate in PostgreSQL; the two-argument one is GREATEST()
        take_slot=base.take_slot.replace("MAX(", "GREATEST("),
    )


def _reorder_claim_params(params: Sequence[Any]) -> Sequence[Any]:
    """SQLite's claims bind (lease, worker, started_at, queue, now[, queue, now][, limit])
    in that order; the CTE reads what follows started_at first, then lease, worker,
    started_at."""
    return (*params[3:], *params[:3])


class PostgresDatabase(pw.PostgresqlDatabase):
    """What ``connect(url)`` returns: a peewee ``PostgresqlDatabase`` on psycopg 3, in
    autocommit (peewee's ``atomic()`` sends BEGIN itself), named ``taskpipe`` in
    ``pg_stat_activity``. A first connection that fails raises ``ServerUnreachable``
    (one clear error); once it has connected, a lost connection is retried by the
    stores (a server restart)."""

    taskpipe_engine = "postgresql"

    def init(self, database: str, **kwargs: Any) -> None:  # type: ignore[override]
        if "application_name" not in str(database):  # a URL may name it itself
            kwargs.setdefault("application_name", APPLICATION_NAME)
        kwargs.setdefault("connect_timeout", 10)
        super().init(database, **kwargs)
        self.ever_connected = False

    def _connect(self) -> Any:
        try:
            conn = super()._connect()  # type: ignore[misc]
        except psycopg.OperationalError as exc:
            if self.ever_connected:
                raise
            raise ServerUnreachable(
                f"cannot reach the PostgreSQL server {describe(self)}: {_first_line(exc)} "
                "(is it running, and does the URL name the right host, port, user and database?)"
            ) from exc
        self.ever_connected = True
        return conn

    def conninfo(self) -> dict[str, Any]:
        """The arguments of ``psycopg.connect`` for a connection like this database's."""
        params = dict(self.connect_params)
        if self.database.startswith(("postgresql://", "postgres://")):
            params.setdefault("conninfo", self.database)
        else:
            params.setdefault("dbname", self.database)
        return params


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(db: pw.Database) -> str:
    """``host:port/dbname`` of ``db`` (no password), for messages."""
    name = str(db.database or "")
    if "://" in name:
        parts = urlsplit(name)
        host = parts.hostname or "localhost"
        return f"{host}:{parts.port or 5432}{parts.path or ''}"
    params = getattr(db, "connect_params", {})
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{name}"


def connect(url: str, **kwargs: Any) -> PostgresDatabase:
    """Open (lazily) a PostgreSQL database for taskpipe: ``postgresql://user@host/db``
    (a libpq URL; its query string may carry libpq options). ``kwargs`` go to
    ``psycopg.connect`` (``application_name`` defaults to ``taskpipe``)."""
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"connect() takes a postgresql:// URL, got {url!r}")
    return PostgresDatabase(url, **kwargs)


def _sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of ``exc``, of the psycopg error peewee wrapped in it, or None."""
    seen = 0
    while exc is not None and seen < 6:
        state = getattr(exc, "sqlstate", None)
        if state:
            return str(state)
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = inner or exc.__cause__ or exc.__context__
        seen += 1
    return None


def _connection_error(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what it wraps) is psycopg saying the connection is gone."""
    seen = 0
    while exc is not None and seen < 6:
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and not getattr(
            exc, "sqlstate", None
        ):
            return True
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = inner or exc.__cause__ or exc.__context__
        seen += 1
    return False


_BUSY = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available
_GONE = {"57P01", "57P02", "57P03"}  # admin shutdown, crash shutdown, cannot connect now


class PostgresDialect(Dialect):
    """PostgreSQL on psycopg 3 (module docstring): the CTE claim, RETURNING inserts,
    COPY for bulk pushes, NOTIFY in the push's transaction, SQLSTATE classification."""

    name = "postgresql"
    setup_call = "PostgresStorage.setup"
    errors = (pw.DatabaseError, pw.InterfaceError, psycopg.Error)
    database_class = pw.PostgresqlDatabase
    connect_hint = "taskpipe.postgres.connect(url)"
    queries = _postgres_queries()

    # The hot path talks to psycopg directly (same connection and transaction as peewee).
    def execute(self, db: pw.Database, sql: str, params: Sequence[Any] = ()) -> Any:
        return db.connection().execute(sql, params)

    def executemany(self, db: pw.Database, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        cursor = db.connection().cursor()
        cursor.executemany(sql, rows)
        return cursor

    def fetch_named(
        self, db: pw.Database, sql: str, params: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        cursor = db.connection().execute(sql, params)
        names = [d.name for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def claim(self, db: pw.Database, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """The CTE claim, in autocommit (one statement: atomic), safe across a lost
        connection (``Dialect.claim_or_recover``)."""
        reordered = _reorder_claim_params(params)
        return self.claim_or_recover(
            db,
            lambda: self.fetch_named(db, sql, reordered),
            params,
            _CLAIMED_BY_LEASE,
        )

    def ack_done(
        self, db: pw.Database, rows: Sequence[Sequence[Any]]
    ) -> set[tuple[int, str]] | None:
        """``ACK_DONE_MANY``: the batch in one autocommit statement (the per-row
        ``executemany`` in a transaction costs two more round trips, ~1.4× the time);
        None (the per-row path) for a result that is not bytes."""
        if any(r[0] is not None and not isinstance(r[0], _BYTES) for r in rows):
            return None
        cursor = self.execute(
            db,
            ACK_DONE_MANY,
            (rows[0][1], [r[2] for r in rows], [r[3] for r in rows], [r[0] for r in rows]),
        )
        return {(task_id, lease) for task_id, lease in cursor.fetchall()}

    acks_with_claims = True

    @functools.cached_property
    def ack_and_claim_sql(self) -> str:
        """``ACK_DONE_MANY`` and ``claim_guarded`` as one statement: (done_at, ids,
        leases, results, then the claim's parameters). Claimed rows come first
        (``acked`` false), then one row per (id, lease) the ack wrote."""
        claim = self.queries.claim_guarded
        tail = f" {_SET_RUNNING}RETURNING {_CLAIMED}"
        assert claim.startswith("WITH picked AS ") and claim.endswith(tail), claim
        picked = claim[len("WITH ") : -len(tail)]
        return (
            f"WITH acked AS ({ACK_DONE_MANY}), {picked}, "
            f"claimed AS ({_SET_RUNNING}RETURNING {_CLAIMED}) "
            "SELECT false AS acked, claimed.*, NULL::text AS lease FROM claimed "
            f"UNION ALL SELECT true, acked.id, {_NULLS}, acked.lease FROM acked"
        )

    def ack_done_and_claim(
        self, db: pw.Database, acks: Sequence[Sequence[Any]], params: Sequence[Any]
    ) -> tuple[list[dict[str, Any]], set[tuple[int, str]]]:
        """One statement (``ack_and_claim_sql``), in autocommit. When the connection
        is lost meanwhile it may have committed: after reconnecting, what it wrote
        (rows under the claim's lease, acks with its ``done_at``) is read back; it
        runs again only when nothing was."""
        done_at = acks[0][1]
        ids, leases = [a[2] for a in acks], [a[3] for a in acks]
        args = (done_at, ids, leases, [a[0] for a in acks], *_reorder_claim_params(params))
        try:
            rows = self.fetch_named(db, self.ack_and_claim_sql, args)
        except self.errors as exc:
            if self.classify(exc) is not ErrorKind.GONE or db.in_transaction():
                raise
            self.reset_connection(db)
            sent = set(zip(ids, leases, strict=True))
            written = {
                (task_id, lease)
                for task_id, lease in self.execute(
                    db,
                    f"SELECT id, lease FROM {JOBS} WHERE id = ANY(%s) AND status = {DONE} "
                    "AND done_at = %s",
                    (ids, done_at),
                ).fetchall()
                if (task_id, lease) in sent
            }
            claimed = self.fetch_named(
                db,
                f"SELECT {_CLAIMED} FROM {JOBS} j WHERE j.status = {RUNNING} AND j.queue = %s "
                "AND j.lease = %s",
                (params[3], params[0]),
            )
            if written or claimed:
                return claimed, written
            rows = self.fetch_named(db, self.ack_and_claim_sql, args)
        written = {(row["id"], row["lease"]) for row in rows if row["acked"]}
        claimed = [row for row in rows if not row["acked"]]
        for row in claimed:
            del row["acked"], row["lease"]
        return claimed, written

    def insert_one(self, db: pw.Database, row: Any) -> TaskId:
        """One row and its NOTIFY in one autocommit statement (one transaction)."""
        if row.id is not None:  # the sequence may need to move past it: see insert_rows
            with self.write_tx(db):
                return self.insert_rows(db, [row])[0]
        sql = (
            f"WITH ins AS ({self.queries.insert}) "
            f"SELECT ins.id, pg_notify('{CHANNEL}', %s) FROM ins"
        )
        return TaskId(self.execute(db, sql, (*row, row.queue)).fetchone()[0])

    def insert_rows(self, db: pw.Database, rows: Sequence[Any]) -> list[TaskId]:
        """Insert ``rows`` in the caller's transaction, ids in order, and NOTIFY each
        queue once (delivered on COMMIT)."""
        if not rows:
            return []
        if all(row.id is None and row.key is None for row in rows) and len(rows) >= _COPY_FROM:
            ids = self._copy_rows(db, rows)
        else:
            ids = self._insert_each(db, rows)
        for queue in sorted({row.queue for row in rows}):
            self.execute(db, "SELECT pg_notify(%s, %s)", (CHANNEL, queue))
        return ids

    def _insert_each(self, db: pw.Database, rows: Sequence[Any]) -> list[TaskId]:
        q = self.queries
        ids: list[TaskId] = []
        explicit = 0
        for row in rows:
            if row.id is not None:
                explicit = max(explicit, int(row.id))
            if row.key is None:
                ids.append(TaskId(self.execute(db, q.insert, row).fetchone()[0]))
                continue
            found = self.execute(db, q.insert_keyed, row).fetchone()
            if found is None:
                found = self.execute(db, q.id_for_key, (row.key,)).fetchone()
            ids.append(TaskId(found[0]))
        if explicit:
            # An id given by hand must not be handed out again by the sequence later.
            # Only ever forwards: a sequence behind the given id jumps past it.
            self.execute(
                db,
                f"SELECT setval('{JOBS}_id_seq'::regclass, %s) FROM {JOBS}_id_seq WHERE last_value < %s",
                (explicit, explicit),
            )
        return ids

    def _copy_rows(self, db: pw.Database, rows: Sequence[Any]) -> list[TaskId]:
        conn = db.connection()
        cursor = conn.execute(
            f"SELECT nextval(pg_get_serial_sequence('{JOBS}', 'id')) FROM generate_series(1, %s)",
            (len(rows),),
        )
        ids = sorted(r[0] for r in cursor.fetchall())
        with conn.cursor().copy(f"COPY {JOBS} ({_COLUMNS}) FROM STDIN") as copy:
            for task_id, row in zip(ids, rows, strict=True):
                copy.write_row(
                    (
                        task_id,
                        row.queue,
                        "pending",
                        row.payload,
                        row.priority,
                        row.run_at,
                        row.max_attempts,
                        row.meta,
                        row.key,
                        row.created_at,
                    )
                )
        return [TaskId(i) for i in ids]

    def classify(self, exc: BaseException) -> ErrorKind:
        state = _sqlstate(exc)
        if state is None:
            return ErrorKind.GONE if _connection_error(exc) else ErrorKind.OTHER
        if state in _BUSY:
            return ErrorKind.BUSY
        if state in _GONE or state.startswith("08"):
            return ErrorKind.GONE
        if state.startswith("23"):
            return ErrorKind.INTEGRITY
        if state in ("42P01", "3F000"):  # undefined table, undefined schema
            return ErrorKind.MISSING
        if state in ("53100", "53200"):  # disk full, out of memory
            return ErrorKind.FULL
        return ErrorKind.OTHER

    def setup(self, db: pw.Database) -> None:
        """Create or migrate the tables, one process at a time (an advisory lock), and
        the byte-ordered key index that ``last_key`` walks."""
        with db.atomic():
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
            schema.setup(db)
            db.execute_sql(
                f'CREATE INDEX IF NOT EXISTS {JOBS}_key_bytes ON {JOBS} (key COLLATE "C") '
                "WHERE key IS NOT NULL"
            )

    def wakeups(self, db: pw.Database) -> WakeRegistry:
        return registry_for(db)

    def last_key(self, db: pw.Database, prefix: str) -> str | None:
        # Code point order (the "C" collation on UTF-8), whatever the database's
        # collation: the range [prefix, prefix with its last character + 1) on the
        # byte-ordered key index is exact; left() keeps it exact where that character
        # has no successor.
        last = ord(prefix[-1]) + 1
        sql = (
            f'SELECT key FROM {JOBS} WHERE key IS NOT NULL AND key COLLATE "C" >= %s '
            "AND left(key, length(%s)) = %s"
        )
        params: tuple[Any, ...] = (prefix, prefix, prefix)
        if last <= 0x10FFFF and not 0xD800 <= last <= 0xDFFF:
            sql += ' AND key COLLATE "C" < %s'
            params += (prefix[:-1] + chr(last),)
        row = self.execute(db, sql + ' ORDER BY key COLLATE "C" DESC LIMIT 1', params).fetchone()
        return None if row is None else row[0]

    def keys_with_prefix(
        self, db: pw.Database, prefix: str, before: str | None, limit: int
    ) -> list[tuple[int, str]]:
        # As ``last_key``: code point order on the byte-ordered key index.
        last = ord(prefix[-1]) + 1
        sql = (
            f'SELECT id, key FROM {JOBS} WHERE key IS NOT NULL AND key COLLATE "C" >= %s '
            "AND left(key, length(%s)) = %s"
        )
        params: tuple[Any, ...] = (prefix, prefix, prefix)
        if last <= 0x10FFFF and not 0xD800 <= last <= 0xDFFF:
            sql += ' AND key COLLATE "C" < %s'
            params += (prefix[:-1] + chr(last),)
        if before is not None:
            sql += ' AND key COLLATE "C" < %s'
            params += (before,)
        sql += ' ORDER BY key COLLATE "C" DESC LIMIT %s'
        rows = self.execute(db, sql, (*params, limit)).fetchall()
        return [(row[0], row[1]) for row in rows]


# Wake-ups -----------------------------------------------------------------------------
_lock = threading.Lock()
_registries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def registry_for(db: pw.Database) -> WakeRegistry:
    """The wake-up registry of ``db``: in-process pushes notify it directly; its probe
    (a ``PgListener``) wakes it for other processes' pushes."""
    with _lock:
        registry = _registries.get(db)
        if registry is None:
            conninfo = db.conninfo() if isinstance(db, PostgresDatabase) else {}
            registry = WakeRegistry(describe(db), probe=lambda reg: PgListener(reg, conninfo))
            _registries[db] = registry
        return registry


def _forget_after_fork() -> None:
    # A child inherits the registries but not the listener threads: start afresh.
    global _lock, _registries
    _lock = threading.Lock()
    _registries = weakref.WeakKeyDictionary()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class PgListener(threading.Thread):
    """One thread per process and database: ``LISTEN taskpipe`` on a connection of its
    own, waking the registry's workers of the queue each notification names. After a
    reconnection it wakes every watched queue (notifications sent while it was
    disconnected are lost; the workers' timed poll covers the rest). It ends when no
    worker needs it (``WakeRegistry.probe_may_stop``)."""

    def __init__(self, registry: WakeRegistry, conninfo: dict[str, Any]):
        super().__init__(name="taskpipe-listener", daemon=True)
        self.registry = registry
        self.conninfo = conninfo
        self.connected = threading.Event()  # set while LISTENing
        self.notifications = 0  # how many were received (for tests and diagnostics)

    def nudge(self) -> None:
        """Make the listener look soon whether it is still needed (it looks every
        ``LISTEN_TIMEOUT`` anyway)."""

    def run(self) -> None:
        """Listen and wake until no worker needs it; reconnect when the connection drops."""
        delay = RECONNECT_DELAY
        first = True
        while not self.registry.probe_may_stop(self):  # once True, the registry forgot us
            try:
                conn = psycopg.connect(**self.conninfo, autocommit=True)
            except psycopg.Error as exc:
                log.debug("listener: cannot connect (%s); retrying in %.2fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                self.connected.set()
                delay = RECONNECT_DELAY
                if not first:  # what was pushed while we were away was not heard
                    for queue in self.registry.watched_queues():
                        self.registry.wake_queue(queue)
                first = False
                while True:
                    if self.registry.probe_may_stop(self):
                        return  # not asked again: a newer listener may exist by then
                    for note in conn.notifies(timeout=LISTEN_TIMEOUT):
                        self.notifications += 1
                        self.registry.wake_queue(note.payload)
            except psycopg.Error as exc:
                log.info("taskpipe listener lost its connection (%s): reconnecting", exc)
            except Exception:  # pragma: no cover - the polling strategy is still there
                log.exception("taskpipe listener failed; workers fall back to polling")
                self.registry.probe_failed(self)
                return
            finally:
                self.connected.clear()
                conn.close()


class PostgresStorage(SqlStorage):
    """A queue in a PostgreSQL database.

    ``PostgresStorage(db, queue="default", codec=JsonCodec, config=Config())`` with
    ``db = taskpipe.postgres.connect("postgresql://user@host/db")``; call
    ``PostgresStorage.setup(db)`` once (idempotent, safe from several processes).

    Claims are exclusive across processes and hosts (``FOR UPDATE SKIP LOCKED``); a
    push wakes idle workers on every host (LISTEN/NOTIFY), with the polling strategy
    as the fallback for notifications lost while a listener reconnects; a lost
    connection is reopened and the operation retried.
    """

    dialect = PostgresDialect()
    capabilities = replace(SqlStorage.capabilities, wakeups=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({describe(self.db)!r}, queue={self.queue!r})"

    def retry(self, task_id: int) -> bool:
        """``SqlStorage.retry``, and a NOTIFY so that idle workers on other hosts take
        the task at once."""
        retried = super().retry(task_id)
        if retried:
            self._notify(self.fetch_by_id(task_id).queue)
        return retried

    def retry_dead(self, queue: str | None = None) -> int:
        """``SqlStorage.retry_dead``, and a NOTIFY for each queue (see ``retry``)."""
        count = super().retry_dead(queue)
        if count:
            queues = [queue] if queue is not None else [q.name for q in self.list_queues()]
            for name in queues:
                self._notify(name)
        return count

    def _notify(self, queue: str) -> None:
        try:
            self._run(self._execute, "SELECT pg_notify(%s, %s)", (CHANNEL, queue))
        except StorageError as exc:  # the workers' timed poll finds the task anyway
            log.debug("NOTIFY for %r failed: %s", queue, exc)
