"""MySQL 8 and MariaDB ≥ 10.6: ``MysqlDialect`` and ``MysqlStorage`` (public names in
``taskpipe.mysql``).

The same SQL core as SQLite and PostgreSQL (``store.py``); what MySQL spells its own
way is here:

- tables are InnoDB and utf8mb4, every text column in a binary no-pad collation
  (``"Emails"``, ``"emails"`` and ``"emails "`` are three queues; keys compare by code
  point), payloads and results LONGBLOB, times DOUBLE, ids BIGINT (``DDL``);
- no partial indexes: two stored generated columns stand in for the predicate of
  SQLite's and PostgreSQL's: ``waiting`` (1 for Pending and Failed) and
  ``neg_priority`` (``-priority``). The claim reads the index ``(queue, waiting,
  isolate, neg_priority, run_at, id)`` in its order and stops after ``LIMIT`` rows,
  with no DESC in the index (MariaDB ignores DESC in indexes before 10.8);
- the claim is ``SELECT … FOR UPDATE SKIP LOCKED`` then ``UPDATE … WHERE id IN (the
  ids)`` in one READ COMMITTED transaction (no ``UPDATE … RETURNING``; under
  REPEATABLE READ the range read would also lock gaps, holding up pushes);
- insert ids: a single push takes its id from the server's reply. A bulk push is one
  multi-row INSERT per ~1 MB carrying a batch token (in ``lease``, which is only read
  with ``status = 'running'``), and reads its ids back by that token:
  ``LAST_INSERT_ID()`` is only the first id of a statement, and the ids of one
  statement are consecutive only under some ``innodb_autoinc_lock_mode`` settings.
  Keyed rows and rows with an id of their own go one statement each; a duplicate key
  is answered with the stored task's id;
- the Done acks of a batch are one ``UPDATE`` (a ``CASE`` per task), not one each;
- wake-ups: MySQL has no LISTEN. A push wakes the idle workers of its own process at
  once (``WakeRegistry``); pushes from other processes are found by polling
  (``Config.poll_interval``: within 1 s by default), and an idle worker wakes for the
  earliest due ``run_at`` of its queue (``next_due``), so delayed tasks start on time;
- errors are classified by errno, never by message: 1205 and 1213 (lock wait timeout,
  deadlock) are BUSY and retried; 1146 MISSING; 1062 INTEGRITY; a lost connection
  (2006, 2013, ``KILL CONNECTION``, a server restart) GONE: the store reconnects and
  tries again. A server that cannot be reached when a database is first used is one
  ``ServerUnreachable``;
- ``setup`` holds ``GET_LOCK`` while it creates tables, so several processes may call
  it at once.

Connections (``connect``) are one per thread (peewee's), utf8mb4, in autocommit (a
transaction sends BEGIN), READ COMMITTED, strict SQL mode, and report matched rows
(``CLIENT.FOUND_ROWS``) so that a fenced ``UPDATE`` counts as it does elsewhere.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee as pw
import pymysql
from pymysql.constants import CLIENT

from ..errors import PushError, ServerUnreachable, SetupError
from ..task import TaskId
from ..wakeups import WakeRegistry
from . import schema
from .dialect import Dialect, ErrorKind
from .queries import DONE, PENDING, RUNNING, WAITING, Queries
from .schema import ERRORS, JOBS, JOIN_PARTS, JOINS, LIMITS, META, QUEUES, RECOVERIES, WORKERS
from .store import SqlStorage

__all__ = [
    "MysqlDatabase",
    "MysqlDialect",
    "MysqlStorage",
    "ServerUnreachable",
    "connect",
    "describe",
]

log = logging.getLogger("taskpipe.store")

#: Every connection of ``connect()``: strict (a value that does not fit is an error,
#: never truncated), and an explicit id 0 stored as 0.
SQL_MODE = (
    "STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO"
)
READ_COMMITTED = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
#: A bulk insert sends one statement per this many bytes of rows (or one row, if larger).
STATEMENT_BYTES = 1 << 20
#: How long ``setup`` waits for another process's setup to finish.
SETUP_LOCK_SECONDS = 60
#: The name of setup's lock: one per database (lock names are server-wide, 64 characters).
_SETUP_LOCK = "CONCAT('taskpipe_setup:', LEFT(MD5(DATABASE()), 32))"
#: URL query options passed to PyMySQL (integers where it wants them).
URL_OPTIONS = {
    "unix_socket": str,
    "connect_timeout": int,
    "read_timeout": int,
    "write_timeout": int,
    "program_name": str,
    "ssl_ca": str,
    "ssl_cert": str,
    "ssl_key": str,
}
#: Binary collations that compare by code point with no padding: MariaDB's, MySQL 8's.
NO_PAD_BINARY = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")

# Column sizes: a key of the claim or key index fits InnoDB's 3072 bytes (4 per character).
QUEUE_CHARS, KEY_CHARS, RUN_ID_CHARS = 512, 768, 768

_COLUMNS = "id, queue, status, payload, priority, run_at, max_attempts, meta, `key`, created_at"
_VALUES = f"%s, %s, {PENDING}, %s, %s, %s, %s, %s, %s, %s"
_CLAIMED = (
    "id, payload, priority, run_at, attempts, max_attempts, CAST(meta AS BINARY) AS meta, isolate"
)
_PICK = (
    f"SELECT {_CLAIMED} FROM {JOBS} FORCE INDEX ({JOBS}_claim) "
    "WHERE queue = %s AND waiting = 1 AND isolate = {isolate} AND run_at <= %s "
    "ORDER BY neg_priority, run_at, id LIMIT {limit} FOR UPDATE SKIP LOCKED"
)
_SET_RUNNING = (
    f"UPDATE {JOBS} SET status = {RUNNING}, attempts = attempts + 1, lease = %s, worker = %s, "
    "started_at = %s WHERE id IN ({ids})"
)
# The rows a claim took, by queue and lease (read after a lost connection).
_CLAIMED_BY_LEASE = (
    f"SELECT {_CLAIMED} FROM {JOBS} WHERE status = {RUNNING} AND queue = %s AND lease = %s"
)


def _mysql_queries() -> Queries:
    base = Queries().with_paramstyle("%s")
    insert = f"INSERT INTO {JOBS} ({_COLUMNS}) VALUES ({_VALUES})"
    return replace(
        base,
        insert=insert,
        # Keyed rows are inserted one by one, a duplicate key answered from the table
        # (``MysqlDialect.insert_rows``): INSERT IGNORE would also swallow bad values,
        # and ON DUPLICATE KEY UPDATE would also absorb a duplicate id.
        insert_keyed=insert,
        id_for_key=f"SELECT id FROM {JOBS} WHERE `key` = %s",
        anything_due=(
            f"SELECT 1 FROM {JOBS} WHERE queue = %s AND waiting = 1 AND run_at <= %s LIMIT 1"
        ),
        next_due=f"SELECT MIN(run_at) FROM {JOBS} WHERE queue = %s AND waiting = 1",
        # (queue, now, limit): ``MysqlDialect.claim`` then marks the rows Running.
        claim=_PICK.format(isolate=0, limit="%s"),
        # (queue, now, queue, now, limit): nothing while a task to run alone is due
        claim_guarded=_PICK.format(isolate=0, limit="%s").replace(
            " ORDER BY",
            f" AND NOT EXISTS (SELECT 1 FROM {JOBS} AS g WHERE g.queue = %s AND g.waiting = 1 "
            "AND g.isolate = 1 AND g.run_at <= %s) ORDER BY",
        ),
        # (queue, now)
        claim_isolated=_PICK.format(isolate=1, limit=1),
        any_isolated=(
            f"SELECT 1 FROM {JOBS} FORCE INDEX ({JOBS}_claim) WHERE queue = %s AND waiting = 1 "
            "AND isolate = 1 AND run_at <= %s LIMIT 1"
        ),
        beat=(
            f"INSERT INTO {WORKERS} (run_id, name, queues, hostname, host_id, pid, started_at, "
            "last_seen) SELECT * FROM (SELECT %s AS run_id, %s AS name, %s AS queues, "
            "%s AS hostname, %s AS host_id, %s AS pid, %s AS started_at, %s AS last_seen) AS b "
            "ON DUPLICATE KEY UPDATE last_seen = b.last_seen"
        ),
        # ``worker IS ?`` is SQLite's null-safe equality
        # a part seen before is ignored (0 rows), so it counts once
        join_part=(
            f"INSERT IGNORE INTO {JOIN_PARTS} (join_key, slot, value, at) VALUES (%s, %s, %s, %s)"
        ),
        # (join_key, slots, created_at); ``MysqlDialect.join_arrive`` reads the count back
        join_count=(
            f"INSERT INTO {JOINS} (join_key, slots, arrived, created_at) VALUES (%s, %s, 1, %s) "
            "ON DUPLICATE KEY UPDATE arrived = arrived + 1"
        ),
        # (limit_key, now, interval, now); ``MysqlDialect.take_slot`` reads the start back
        take_slot=(
            f"INSERT INTO {LIMITS} (limit_key, last_start) VALUES (%s, %s) "
            "ON DUPLICATE KEY UPDATE last_start = GREATEST(last_start + %s, %s)"
        ),
        recover=base.recover.replace("worker IS %s", "worker <=> %s"),
        isolate=base.isolate.replace("worker IS %s", "worker <=> %s"),
    )


#: A join key (workflows: ``wf:<run>:<node>``) with its slot must fit InnoDB's
#: 3,072-byte index limit at 4 bytes a character.
JOIN_KEY_CHARS = 512
#: A rate limit's key (``rate_limit(…, key=…)`` takes up to 200 characters).
LIMIT_KEY_CHARS = 255


def _ddl(collation: str) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` for every table, indexes included (MySQL 8 has no
    ``CREATE INDEX IF NOT EXISTS``)."""
    table = f"ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}"
    return [
        f"""CREATE TABLE IF NOT EXISTS {JOBS} (
            id BIGINT NOT NULL AUTO_INCREMENT,
            queue VARCHAR({QUEUE_CHARS}) NOT NULL,
            status VARCHAR(32) NOT NULL DEFAULT {PENDING},
            payload LONGBLOB NULL,
            priority INT NOT NULL DEFAULT 0,
            run_at DOUBLE NOT NULL,
            attempts INT NOT NULL DEFAULT 0,
            max_attempts INT NULL,
            recoveries INT NOT NULL DEFAULT 0,
            isolate INT NOT NULL DEFAULT 0,
            lease VARCHAR(1024) NULL,
            worker VARCHAR({RUN_ID_CHARS}) NULL,
            result LONGBLOB NULL,
            meta LONGTEXT NULL,
            `key` VARCHAR({KEY_CHARS}) NULL,
            created_at DOUBLE NOT NULL,
            started_at DOUBLE NULL,
            done_at DOUBLE NULL,
            waiting TINYINT AS (status IN {WAITING}) STORED,
            neg_priority BIGINT AS (-CAST(priority AS SIGNED)) STORED,
            PRIMARY KEY (id),
            KEY {JOBS}_claim (queue, waiting, isolate, neg_priority, run_at, id),
            KEY {JOBS}_due (queue, waiting, run_at),
            KEY {JOBS}_attention (status, queue, id),
            UNIQUE KEY {JOBS}_key (`key`)
        ) {table}""",
        f"""CREATE TABLE IF NOT EXISTS {ERRORS} (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            job_id BIGINT NOT NULL,
            attempt INT NOT NULL,
            error LONGTEXT NOT NULL,
            traceback LONGTEXT NULL,
            at DOUBLE NOT NULL,
            KEY {ERRORS}_job_id (job_id)
        ) {table}""",
        f"""CREATE TABLE IF NOT EXISTS {RECOVERIES} (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            job_id BIGINT NOT NULL,
            worker VARCHAR({RUN_ID_CHARS}) NULL,
            last_seen DOUBLE NULL,
            counted INT NOT NULL,
            at DOUBLE NOT NULL,
            KEY {RECOVERIES}_job_id (job_id)
        ) {table}""",
        f"""CREATE TABLE IF NOT EXISTS {WORKERS} (
            run_id VARCHAR({RUN_ID_CHARS}) NOT NULL PRIMARY KEY,
            name LONGTEXT NOT NULL,
            queues LONGTEXT NOT NULL,
            hostname TEXT NOT NULL,
            host_id TEXT NULL,
            pid BIGINT NOT NULL,
            started_at DOUBLE NOT NULL,
            last_seen DOUBLE NOT NULL
        ) {table}""",
        f"""CREATE TABLE IF NOT EXISTS {JOINS} (
            join_key VARCHAR({JOIN_KEY_CHARS}) NOT NULL PRIMARY KEY,
            slots INT NOT NULL,
            arrived INT NOT NULL,
            created_at DOUBLE NOT NULL
        ) {table}""",
        f"""CREATE TABLE IF NOT EXISTS {JOIN_PARTS} (
            join_key VARCHAR({JOIN_KEY_CHARS}) NOT NULL,
            slot INT NOT NULL,
            value LONGBLOB NULL,
            at DOUBLE NOT NULL,
            PRIMARY KEY (join_key, slot)
        ) {table}""",
        f"""CREATE TABLE IF NOT EXISTS {LIMITS} (
            limit_key VARCHAR({LIMIT_KEY_CHARS}) NOT NULL PRIMARY KEY,
            last_start DOUBLE NOT NULL
        ) {table}""",
        f"""CREATE TABLE IF NOT EXISTS {QUEUES} (
            queue VARCHAR({QUEUE_CHARS}) NOT NULL PRIMARY KEY,
            paused INT NOT NULL DEFAULT 0,
            paused_at DOUBLE NULL
        ) {table}""",
        f"""CREATE TABLE IF NOT EXISTS {META} (
            id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            version INT NOT NULL
        ) {table}""",
    ]


class MysqlDatabase(pw.MySQLDatabase):
    """What ``connect(url)`` returns: a peewee ``MySQLDatabase`` on PyMySQL whose
    connections are set up as the module docstring says. A first connection that
    fails raises ``ServerUnreachable`` (one clear error); once it has connected, a lost
    connection is retried by the stores (a server restart)."""

    taskpipe_engine = "mysql"
    #: The session is READ COMMITTED already: claims need not set it per transaction.
    taskpipe_read_committed = True

    def init(self, database: str, **kwargs: Any) -> None:  # type: ignore[override]
        charset = kwargs.setdefault("charset", "utf8mb4")
        if charset != "utf8mb4":
            raise ValueError(f"taskpipe's MySQL store needs charset utf8mb4, not {charset!r}")
        kwargs.setdefault("connect_timeout", 10)
        kwargs.setdefault("sql_mode", SQL_MODE)
        kwargs.setdefault("init_command", READ_COMMITTED)
        kwargs["client_flag"] = kwargs.get("client_flag", 0) | CLIENT.FOUND_ROWS
        super().init(database, **kwargs)
        self.ever_connected = False

    def _connect(self) -> Any:
        try:
            conn = super()._connect()  # type: ignore[misc]
        except pymysql.err.OperationalError as exc:
            if self.ever_connected:
                raise
            hint = (
                "check the user, password and database in the URL"
                if _errno(exc) in (1044, 1045, 1049)
                else "is it running, and does the URL name the right host and port?"
            )
            raise ServerUnreachable(
                f"cannot connect to the MySQL server {describe(self)}: {_message(exc)} ({hint})"
            ) from exc
        self.ever_connected = True
        return conn


def describe(db: pw.Database) -> str:
    """``host:port/database`` of ``db`` (no password), for messages."""
    params = getattr(db, "connect_params", {})
    where = (
        params.get("unix_socket") or f"{params.get('host', 'localhost')}:{params.get('port', 3306)}"
    )
    return f"{where}/{db.database}"


def connect(url: str, **kwargs: Any) -> MysqlDatabase:
    """Open (lazily) a MySQL or MariaDB database for taskpipe:
    ``mysql://user:password@host:port/database`` (or ``mariadb://``), with query
    options from ``URL_OPTIONS`` (``?unix_socket=/run/mysqld/mysqld.sock``). ``kwargs``
    go to ``pymysql.connect``."""
    if not isinstance(url, str) or not url.lower().startswith(("mysql://", "mariadb://")):
        raise ValueError(f"connect() takes a mysql:// or mariadb:// URL, got {url!r}")
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError(f"the URL must name one database (mysql://user@host/NAME), got {url!r}")
    params: dict[str, Any] = {"host": parts.hostname or "localhost", "port": parts.port or 3306}
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in URL_OPTIONS:
            known = ", ".join(sorted(URL_OPTIONS))
            raise ValueError(f"unknown option {name!r} in {url!r}: taskpipe knows {known}")
        try:
            params[name] = URL_OPTIONS[name](value)
        except ValueError:
            raise ValueError(f"option {name}={value!r} in the URL must be a number") from None
    params.update(kwargs)
    return MysqlDatabase(database, **params)


# Errors -------------------------------------------------------------------------------
_BUSY = {1205, 1213, 1040, 1317}  # lock wait timeout, deadlock, too many connections, interrupted
_MISSING = {1146, 1049}  # no such table, no such database
_INTEGRITY = {1062, 1586, 1022}  # duplicate entry (and its variants)
_FULL = {1021, 1114}  # disk full, table full
# Server gone, shut down or killed us; the client lost the socket or cannot reconnect yet.
_GONE = {1053, 1077, 1152, 1159, 1160, 1161, 1927, 2002, 2003, 2006, 2013, 2055, 4031}


def _mysql_error(exc: BaseException | None) -> BaseException | None:
    """The driver's error in ``exc``: the PyMySQL error itself, the one peewee wrapped
    (``.orig``), or the peewee error that carries its errno; None when there is none."""
    seen = 0
    while exc is not None and seen < 6:
        if isinstance(exc, pymysql.err.MySQLError):
            return exc
        orig = getattr(exc, "orig", None)
        if isinstance(orig, pymysql.err.MySQLError):
            return orig
        if isinstance(exc, pw.PeeweeException) and exc.args and isinstance(exc.args[0], int):
            return exc
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = inner or exc.__cause__ or exc.__context__
        seen += 1
    return None


def _errno(exc: BaseException | None) -> int | None:
    """The MySQL error number of ``exc`` (or of the PyMySQL error it wraps), or None."""
    error = _mysql_error(exc)
    code = error.args[0] if error is not None and error.args else None
    return code if isinstance(code, int) else None


def _message(exc: BaseException) -> str:
    error = _mysql_error(exc)
    if error is not None and len(error.args) > 1:
        return f"({error.args[0]}) {error.args[1]}"
    return str(exc) or type(exc).__name__


class MysqlDialect(Dialect):
    """MySQL 8 / MariaDB on PyMySQL (module docstring): the two-statement claim,
    multi-row inserts whose ids are read back by a batch token, one-statement batch
    acks, errno classification, DDL under ``GET_LOCK``."""

    name = "mysql"
    setup_call = "MysqlStorage.setup"
    errors = (pw.DatabaseError, pw.InterfaceError, pymysql.err.Error)
    database_class = pw.MySQLDatabase
    connect_hint = "taskpipe.mysql.connect(url)"
    queries = _mysql_queries()

    # The hot path talks to PyMySQL directly (same connection and transaction as peewee).
    def execute(self, db: pw.Database, sql: str, params: Sequence[Any] = ()) -> Any:
        cursor = db.cursor()
        cursor.execute(sql, params if params else None)
        return cursor

    # Claiming -----------------------------------------------------------------------------
    def claim(self, db: pw.Database, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Pick with ``sql`` (``FOR UPDATE SKIP LOCKED``), then mark the picked rows
        Running, in one READ COMMITTED transaction. ``params`` are the core's (lease,
        worker, started_at, queue, now[, limit]); safe across a lost connection
        (``Dialect.claim_or_recover``)."""
        return self.claim_or_recover(
            db,
            lambda: self._claim_once(db, sql, params),
            params,
            _CLAIMED_BY_LEASE,
        )

    def _claim_once(self, db: pw.Database, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        lease, worker, started_at, *pick = params
        with self._claim_tx(db):
            rows = self.fetch_named(db, sql, pick)
            if rows:
                ids = [row["id"] for row in rows]
                update = _SET_RUNNING.format(ids=", ".join(["%s"] * len(ids)))
                self.execute(db, update, (lease, worker, started_at, *ids))
        for row in rows:
            if isinstance(row["attempts"], int):
                row["attempts"] += 1
        return rows

    def _claim_tx(self, db: pw.Database) -> Any:
        if getattr(db, "taskpipe_read_committed", False) or db.in_transaction():
            return db.atomic()
        return db.atomic(isolation_level="READ COMMITTED")  # a database not from connect()

    # Inserting ----------------------------------------------------------------------------
    def insert_one(self, db: pw.Database, row: Any) -> TaskId:
        """One row in an autocommit statement; its id from the server's reply."""
        cursor = self._execute_row(db, row)
        return TaskId(row.id if row.id is not None else cursor.lastrowid)

    def insert_rows(self, db: pw.Database, rows: Sequence[Any]) -> list[TaskId]:
        """Insert ``rows`` in the caller's transaction, ids in order: plain rows in
        multi-row statements (ids read back by a batch token); keyed rows, and rows
        with an id of their own, one statement each."""
        if len(rows) > 1 and all(row.id is None and row.key is None for row in rows):
            return self._insert_many(db, rows)
        return [self._insert_row(db, row) for row in rows]

    def _insert_row(self, db: pw.Database, row: Any) -> TaskId:
        try:
            cursor = self._execute_row(db, row)
        except self.errors as exc:
            if row.key is None or self.classify(exc) is not ErrorKind.INTEGRITY:
                raise
            # The key is taken (or the id is: then no row has the key, and this raises).
            found = self.execute(db, self.queries.id_for_key, (row.key,)).fetchone()
            if found is None:
                raise
            return TaskId(found[0])
        return TaskId(row.id if row.id is not None else cursor.lastrowid)

    def _insert_many(self, db: pw.Database, rows: Sequence[Any]) -> list[TaskId]:
        token = f"push:{uuid.uuid4().hex}"
        head = f"INSERT INTO {JOBS} ({_COLUMNS}, lease) VALUES "
        values = f"({_VALUES}, %s)"
        cursor = db.cursor()
        ids: list[TaskId] = []
        chunk: list[str] = []
        size = 0

        def flush() -> None:
            sql = head + ",".join(chunk)
            if len(chunk) == 1:  # a row larger than a statement's share: measured
                self._check_packet(db, len(sql.encode("utf-8", "surrogateescape")))
            cursor.execute(sql)
            first, count = cursor.lastrowid, len(chunk)
            # This statement's rows are the first ``count`` with the token from its
            # first id on: ids only grow, within a statement and from one to the next.
            cursor.execute(
                f"SELECT id FROM {JOBS} WHERE id >= %s AND lease = %s ORDER BY id LIMIT %s",
                (first, token, count),
            )
            found = [TaskId(r[0]) for r in cursor.fetchall()]
            if len(found) != count:  # pragma: no cover - InnoDB guarantees it
                raise PushError(f"inserted {count} rows but found {len(found)} of their ids")
            ids.extend(found)
            chunk.clear()

        for row in rows:
            part = cursor.mogrify(values, (*row, token))
            if chunk and size + len(part) > STATEMENT_BYTES:
                flush()
                size = 0
            chunk.append(part)
            size += len(part) + 1
        flush()
        return ids

    def _execute_row(self, db: pw.Database, row: Any) -> Any:
        """``queries.insert`` for one row; a large row's statement is measured first."""
        payload, meta = row.payload, row.meta
        size = len(payload) if isinstance(payload, (bytes, str)) else 0
        size += len(meta) if isinstance(meta, str) else 0
        if size <= STATEMENT_BYTES // 2:
            return self.execute(db, self.queries.insert, row)
        cursor = db.cursor()
        sql = cursor.mogrify(self.queries.insert, row)
        self._check_packet(db, len(sql.encode("utf-8", "surrogateescape")))
        cursor.execute(sql)
        return cursor

    def _check_packet(self, db: pw.Database, size: int) -> None:
        """Refuse, with what to do, a statement larger than the server takes (it would
        drop the connection instead)."""
        if size <= STATEMENT_BYTES:
            return
        limit = getattr(db, "taskpipe_max_packet", None)
        if limit is None:
            limit = int(self.execute(db, "SELECT @@max_allowed_packet").fetchone()[0])
            db.taskpipe_max_packet = limit  # type: ignore[attr-defined]
        if size + 1 > limit:  # the packet: a command byte and the statement
            raise PushError(
                f"a task's INSERT of {size:,} bytes (PyMySQL sends bytes hex-encoded: twice "
                f"their size) is larger than the server's max_allowed_packet ({limit:,} bytes): "
                "raise max_allowed_packet on the server, or push smaller tasks"
            )

    # Acknowledging ------------------------------------------------------------------------
    def ack_done_in_tx(self, db: pw.Database, rows: Sequence[Sequence[Any]]) -> int:
        """One ``UPDATE`` for the whole batch, each row fenced by its own lease (a
        ``CASE`` on the id); one statement per row when an id comes twice."""
        ids = [row[2] for row in rows]
        if len(rows) == 1 or len(set(ids)) != len(ids):
            return sum(self.execute(db, self.queries.ack_done, row).rowcount for row in rows)
        whens = " ".join(["WHEN %s THEN %s"] * len(rows))
        sql = (
            f"UPDATE {JOBS} FORCE INDEX (PRIMARY) SET status = {DONE}, isolate = 0, "
            f"result = CASE id {whens} END, done_at = CASE id {whens} END "
            f"WHERE id IN ({', '.join(['%s'] * len(rows))}) AND status = {RUNNING} "
            f"AND lease = CASE id {whens} END"
        )
        params: list[Any] = []
        for column in (0, 1):  # result, done_at
            for row in rows:
                params += (row[2], row[column])
        params += ids
        for row in rows:
            params += (row[2], row[3])
        return int(self.execute(db, sql, params).rowcount)

    # Errors, set-up, wake-ups, keys ---------------------------------------------------------
    def classify(self, exc: BaseException) -> ErrorKind:
        error = _mysql_error(exc)
        code = _errno(exc)
        lost = isinstance(error, (pymysql.err.InterfaceError, pw.InterfaceError))
        if lost or code in _GONE:
            return ErrorKind.GONE
        if code in _BUSY:
            return ErrorKind.BUSY
        if code in _INTEGRITY:
            return ErrorKind.INTEGRITY
        if code in _MISSING:
            return ErrorKind.MISSING
        if code in _FULL:
            return ErrorKind.FULL
        return ErrorKind.OTHER

    def setup(self, db: pw.Database) -> None:
        """Create the tables if they are missing (each with its indexes) and stamp the
        schema version, one process at a time (``GET_LOCK`` on this database)."""
        version = self.execute(db, "SELECT VERSION()").fetchone()[0]
        _check_version(str(version))
        lock = f"SELECT GET_LOCK({_SETUP_LOCK}, %s)"
        if self.execute(db, lock, (SETUP_LOCK_SECONDS,)).fetchone()[0] != 1:
            raise SetupError(
                f"another process held taskpipe's set-up lock on {describe(db)} for "
                f"{SETUP_LOCK_SECONDS} s: try again once it has finished"
            )
        try:
            for sql in _ddl(_collation(self, db)):
                self.execute(db, sql)
            with db.atomic():
                schema.stamp_version(db)
        finally:
            try:
                self.execute(db, f"SELECT RELEASE_LOCK({_SETUP_LOCK})")
            except self.errors as exc:  # a lost connection has released it already
                log.debug("could not release the set-up lock: %s", exc)

    def wakeups(self, db: pw.Database) -> WakeRegistry:
        return registry_for(db)

    def join_arrive(self, db: pw.Database, params: Sequence[Any]) -> tuple[int, int]:
        # No RETURNING in MySQL: the upsert holds the join row's lock until commit, so
        # reading it back in the same transaction sees this count, not a later one.
        self.execute(db, self.queries.join_count, params)
        row = self.execute(
            db, f"SELECT arrived, slots FROM {JOINS} WHERE join_key = %s", (params[0],)
        ).fetchone()
        return int(row[0]), int(row[1])

    def take_slot(self, db: pw.Database, key: str, now: float, interval: float) -> float:
        # No RETURNING in MySQL: the upsert holds the key's row lock until commit, so
        # reading it back in the same transaction sees this reservation.
        self.execute(db, self.queries.take_slot, (key, now, interval, now))
        row = self.execute(
            db, f"SELECT last_start FROM {LIMITS} WHERE limit_key = %s", (key,)
        ).fetchone()
        return float(row[0])

    def keys_with_prefix(
        self, db: pw.Database, prefix: str, before: str | None, limit: int
    ) -> list[tuple[int, str]]:
        sql, params = _key_range(prefix)
        if before is not None:
            sql += " AND `key` < %s"
            params += (before,)
        sql = f"SELECT id, `key` FROM {JOBS} WHERE {sql} ORDER BY `key` DESC LIMIT %s"
        return [(int(r[0]), r[1]) for r in self.execute(db, sql, (*params, limit)).fetchall()]

    def last_key(self, db: pw.Database, prefix: str) -> str | None:
        # The key column's collation compares code points with no padding: the range
        # [prefix, prefix with its last character + 1) on the unique key index is
        # exact; LEFT() keeps it exact where that character has no successor.
        sql, params = _key_range(prefix)
        sql = f"SELECT `key` FROM {JOBS} WHERE {sql} ORDER BY `key` DESC LIMIT 1"
        row = self.execute(db, sql, params).fetchone()
        return None if row is None else row[0]


def _key_range(prefix: str) -> tuple[str, tuple[Any, ...]]:
    """The condition (and its parameters) for keys starting with ``prefix``: the
    range [prefix, prefix with its last character + 1) on the key index."""
    last = ord(prefix[-1]) + 1
    sql = "`key` >= %s AND LEFT(`key`, CHAR_LENGTH(%s)) = %s"
    params: tuple[Any, ...] = (prefix, prefix, prefix)
    if last <= 0x10FFFF and not 0xD800 <= last <= 0xDFFF:
        sql += " AND `key` < %s"
        params += (prefix[:-1] + chr(last),)
    return sql, params


def _check_version(version: str) -> None:
    """Refuse a server without ``SKIP LOCKED``: MySQL before 8.0, MariaDB before 10.6."""
    numbers = version.split("-")[0].split(".")
    try:
        major, minor = int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return  # an unknown spelling: let the statements speak
    mariadb = "mariadb" in version.lower() or major >= 10
    if (mariadb and (major, minor) < (10, 6)) or (not mariadb and major < 8):
        raise SetupError(
            f"taskpipe's MySQL store needs MySQL 8.0 or MariaDB 10.6 or newer "
            f"(FOR UPDATE SKIP LOCKED); this server is {version}"
        )


def _collation(dialect: MysqlDialect, db: pw.Database) -> str:
    """The server's binary no-pad utf8mb4 collation."""
    names = ", ".join(f"'{name}'" for name in NO_PAD_BINARY)
    found = {
        row[0]
        for row in dialect.execute(
            db,
            f"SELECT collation_name FROM information_schema.collations WHERE collation_name IN ({names})",
        ).fetchall()
    }
    for name in NO_PAD_BINARY:
        if name in found:
            return name
    raise SetupError(
        f"the server has none of the collations {', '.join(NO_PAD_BINARY)}: taskpipe's MySQL "
        "store needs MySQL 8.0 or MariaDB 10.6 or newer"
    )


# Wake-ups -----------------------------------------------------------------------------
_lock = threading.Lock()
_registries: dict[str, WakeRegistry] = {}


def registry_for(db: pw.Database) -> WakeRegistry:
    """The wake-up registry of the database ``db`` reaches, shared by every database
    object in this process that reaches it. It has no probe: MySQL cannot tell other
    processes of a push, so those are found by polling (module docstring)."""
    where = describe(db)
    with _lock:
        registry = _registries.get(where)
        if registry is None:
            registry = _registries[where] = WakeRegistry(where)
        return registry


def _forget_after_fork() -> None:
    # A child starts with its own registries (its parent's waiters are not its own).
    global _lock, _registries
    _lock = threading.Lock()
    _registries = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class MysqlStorage(SqlStorage):
    """A queue in a MySQL 8 or MariaDB ≥ 10.6 database.

    ``MysqlStorage(db, queue="default", codec=JsonCodec, config=Config())`` with
    ``db = taskpipe.mysql.connect("mysql://user@host/db")``; call
    ``MysqlStorage.setup(db)`` once (idempotent, safe from several processes).

    Claims are exclusive across processes and hosts (``FOR UPDATE SKIP LOCKED``); a
    push wakes this process's idle workers at once, other processes' workers find it
    by polling; a lost connection is reopened and the operation retried.
    """

    dialect = MysqlDialect()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({describe(self.db)!r}, queue={self.queue!r})"
