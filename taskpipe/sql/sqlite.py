"""SQLite: the default store. ``connect(path)`` and ``SqliteStorage``.

``connect`` returns a peewee ``SqliteDatabase`` set up for a job queue: WAL (readers
never block the writer), a busy timeout, ``BEGIN IMMEDIATE`` transactions (no
"database is locked" from lock upgrades) and ``synchronous=NORMAL``, which survives
any process crash; ``durability="full"`` also survives power loss, at a cost
(see benchmarks/). WAL needs every process on one host (no network filesystems).

Under duress: a new connection's pragmas wait out a lock (processes opening a new
file at once, see ``SqliteDatabase``); a write that SQLite rolled back by itself (a
full disk) raises its own error, not the failed second ROLLBACK's (see
``WriteTransaction``); an idle worker checkpoints and truncates the write-ahead log
(``SqliteStorage.idle``); introspection reads invalid UTF-8 leniently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import peewee as pw

from .. import clock
from ..config import Config
from ..task import TaskId
from ..wakeups import WakeRegistry
from . import hooks
from .dialect import Dialect, ErrorKind
from .queries import Queries
from .schema import JOBS
from .store import SqlStorage

__all__ = [
    "checkpoint",
    "connect",
    "SharedMemoryDatabase",
    "SqliteDatabase",
    "SqliteDialect",
    "SqliteStorage",
    "WriteTransaction",
]

log = logging.getLogger("taskpipe.store")

_DURABILITY = {"normal": "NORMAL", "full": "FULL"}
# sqlite3's primary result codes (the low byte of an extended code).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL, _SQLITE_CONSTRAINT = 5, 6, 13, 19


def _rolled_back(db: pw.Database) -> bool:
    """True when SQLite has ended this thread's transaction by itself: on some errors
    (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM…) it rolls the whole transaction back,
    and a ROLLBACK then fails with "cannot rollback - no transaction is active"."""
    if db.is_closed():
        return False
    return not db.connection().in_transaction


class _Transaction(pw._transaction):
    """peewee's outermost transaction, minus the second ROLLBACK: when SQLite already
    rolled back, that ROLLBACK's error would replace the one that matters (a full
    disk would be reported as "cannot rollback")."""

    def rollback(self, begin: bool = True) -> None:
        if _rolled_back(self.db):
            self.db._clear_commit_callbacks()
            if begin:
                self._begin()  # type: ignore[attr-defined]  # peewee's
            return
        super().rollback(begin)


class _Savepoint(pw._savepoint):
    """peewee's savepoint (a nested ``write_tx``), minus the ROLLBACK TO that fails
    when SQLite already rolled back the whole transaction (the enclosing transaction
    finds out at its own end)."""

    def rollback(self, begin: bool = True) -> None:
        if _rolled_back(self.db):
            return
        super().rollback(begin)


class WriteTransaction:
    """A write transaction that takes the write lock at once (``BEGIN IMMEDIATE``), or
    a savepoint inside an enclosing transaction: ``db.atomic(lock_type="IMMEDIATE")``,
    whose rollback is skipped when SQLite has already rolled back, so that the error
    that caused it (``database or disk is full``) is the one raised."""

    def __init__(self, db: pw.Database):
        self.db = db
        self._helper: _Transaction | _Savepoint | None = None

    def __enter__(self) -> Any:
        db = self.db
        if db.transaction_depth() == 0:
            self._helper = _Transaction(db, lock_type="IMMEDIATE")
        elif isinstance(db.top_transaction(), pw._manual):
            raise ValueError("cannot open a taskpipe write transaction inside db.manual_commit()")
        else:
            self._helper = _Savepoint(db)
        return self._helper.__enter__()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        assert self._helper is not None
        return self._helper.__exit__(exc_type, exc, tb)


class SqliteDatabase(pw.SqliteDatabase):
    """What ``connect(path)`` returns: a peewee ``SqliteDatabase`` whose connections
    wait out a lock while their pragmas run.

    A new connection runs ``PRAGMA journal_mode = wal``, which on a file not yet in
    WAL mode must write the file's header. When several processes open a new file at
    once, SQLite answers some of them "database is locked" at once, without waiting
    on the busy timeout (waiting could deadlock two connections that each hold a
    read lock). Here a pragma refused as busy or locked is tried again with a
    growing pause, for up to the connection's ``timeout``; after that the error is
    raised, saying what held things up (taskpipe's stores turn it into a
    ``SetupError``, ``PushError`` or ``StorageError``).
    """

    def _set_pragmas(self, conn: sqlite3.Connection) -> None:
        timeout: float = self._timeout  # type: ignore[attr-defined]  # peewee's own
        deadline = clock.real_monotonic() + timeout
        cursor = conn.cursor()
        try:
            for pragma, value in self._pragmas:  # type: ignore[attr-defined]  # peewee's
                sql = f"PRAGMA {pragma} = {value};"
                _execute_waiting(cursor, sql, deadline, f"{self.database!r} ({timeout} s)")
        finally:
            cursor.close()


def _execute_waiting(cursor: sqlite3.Cursor, sql: str, deadline: float, what: str) -> None:
    """Run ``sql`` again while SQLite says busy or locked, until ``deadline``; ``what``
    (the file and the timeout) is for the error."""
    delay = 0.001
    while True:
        try:
            cursor.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if _sqlite_code(exc) not in (_SQLITE_BUSY, _SQLITE_LOCKED):
                raise
            if clock.real_monotonic() + delay > deadline:
                locked = sqlite3.OperationalError(
                    f"{exc}: opening {what}, `{sql.rstrip(';')}` was refused for the "
                    "whole timeout: another connection holds a lock on the file (a long "
                    "transaction, or a program that opened it in exclusive mode). Retry "
                    "later, or give connect() a longer timeout"
                )
                locked.sqlite_errorcode = exc.sqlite_errorcode
                locked.sqlite_errorname = exc.sqlite_errorname
                raise locked from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


class SharedMemoryDatabase(pw.SqliteDatabase):
    """An in-memory SQLite database shared by every thread through one connection.

    Plain ``":memory:"`` gives each connection (so each thread) its own empty
    database; this keeps one, and taskpipe's stores take ``taskpipe_lock`` around
    each of their operations.
    """

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("check_same_thread", False)
        super().__init__(":memory:", thread_safe=False, **kwargs)
        self.taskpipe_lock = threading.RLock()


def connect(
    path: str,
    *,
    durability: str = "normal",
    timeout: float = 10.0,
    pragmas: dict[str, Any] | None = None,
) -> pw.SqliteDatabase:
    """Open (lazily) a SQLite database for taskpipe at ``path`` (``":memory:"`` works
    across threads). ``durability``: ``"normal"`` (default) or ``"full"``; ``timeout``:
    seconds to wait for a lock before retrying, also when a new connection switches
    the file to WAL (``SqliteDatabase``)."""
    if durability not in _DURABILITY:
        raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
    settings = {
        "journal_mode": "wal",
        "synchronous": _DURABILITY[durability],
        "busy_timeout": int(timeout * 1000),
        "temp_store": "memory",
    }
    settings.update(pragmas or {})
    if path == ":memory:":
        settings.pop("journal_mode")
        return SharedMemoryDatabase(pragmas=settings, timeout=timeout, lock_type="IMMEDIATE")
    return SqliteDatabase(str(path), pragmas=settings, timeout=timeout, lock_type="IMMEDIATE")


class SqliteDialect(Dialect):
    """SQLite: ``BEGIN IMMEDIATE`` write transactions, ``UPDATE … RETURNING`` claims
    (one autocommit statement: atomic, and other writers wait on the busy timeout),
    the change probe as the cross-process waker, and error codes from sqlite3."""

    name = "sqlite"
    errors = (pw.DatabaseError, sqlite3.DatabaseError)
    database_class = pw.SqliteDatabase
    connect_hint = "taskpipe.sqlite.connect(path)"
    # The claim walks the claim index in its ORDER BY and stops after LIMIT rows; left
    # to itself the planner may pick the next-due index and sort every due row.
    queries = replace(
        Queries(),
        claim=Queries.claim.replace(
            f"(SELECT id FROM {JOBS} WHERE", f"(SELECT id FROM {JOBS} INDEXED BY {JOBS}_claim WHERE"
        ),
        claim_guarded=Queries.claim_guarded.replace(
            f"(SELECT id FROM {JOBS} WHERE", f"(SELECT id FROM {JOBS} INDEXED BY {JOBS}_claim WHERE"
        ).replace(
            f"(SELECT 1 FROM {JOBS} WHERE",
            f"(SELECT 1 FROM {JOBS} INDEXED BY {JOBS}_isolated WHERE",
        ),
        claim_isolated=Queries.claim_isolated.replace(
            f"(SELECT id FROM {JOBS} WHERE",
            f"(SELECT id FROM {JOBS} INDEXED BY {JOBS}_isolated WHERE",
        ),
        any_isolated=Queries.any_isolated.replace(
            f"FROM {JOBS} WHERE", f"FROM {JOBS} INDEXED BY {JOBS}_isolated WHERE"
        ),
    )

    def write_tx(self, db: pw.Database) -> Any:
        """``db.atomic(lock_type="IMMEDIATE")``, except that it never issues a ROLLBACK
        that SQLite has already done itself (see ``WriteTransaction``)."""
        return WriteTransaction(db)

    def execute(self, db: pw.Database, sql: str, params: Sequence[Any] = ()) -> Any:
        # The hot path talks to sqlite3 directly: same connection and transaction as
        # peewee's, without its per-statement bookkeeping.
        return db.connection().execute(sql, params)

    def executemany(self, db: pw.Database, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        return db.connection().executemany(sql, rows)

    def fetch_named(
        self, db: pw.Database, sql: str, params: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        cursor = db.connection().cursor()
        cursor.row_factory = sqlite3.Row
        return [dict(row) for row in cursor.execute(sql, params).fetchall()]

    def insert_rows(self, db: pw.Database, rows: Sequence[Any]) -> list[TaskId]:
        if any(row.id is not None or row.key is not None for row in rows):
            return super().insert_rows(db, rows)
        # Under the write lock, rowids of one executemany are consecutive (max + 1).
        conn = db.connection()
        conn.executemany(self.queries.insert, rows)
        last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        return [TaskId(i) for i in range(last - len(rows) + 1, last + 1)]

    def classify(self, exc: BaseException) -> ErrorKind:
        code = _sqlite_code(exc)
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return ErrorKind.BUSY
        if code == _SQLITE_FULL:
            return ErrorKind.FULL
        if code == _SQLITE_CONSTRAINT or isinstance(
            exc, (pw.IntegrityError, sqlite3.IntegrityError)
        ):
            return ErrorKind.INTEGRITY
        return ErrorKind.OTHER

    def wakeups(self, db: pw.Database) -> WakeRegistry:
        return hooks.registry_for(db)

    def last_key(self, db: pw.Database, prefix: str) -> str | None:
        # SQLite compares TEXT with the BINARY collation: a range on the unique key
        # index is exact ('cron:a:' <= key < 'cron:a;').
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        row = self.execute(
            db,
            "SELECT key FROM taskpipe_jobs WHERE key >= ? AND key < ? ORDER BY key DESC LIMIT 1",
            (prefix, upper),
        ).fetchone()
        return None if row is None else row[0]

    def keys_with_prefix(
        self, db: pw.Database, prefix: str, before: str | None, limit: int
    ) -> list[tuple[int, str]]:
        # The BINARY collation is code point order: a range on the key index is exact.
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        if before is not None and before < upper:
            upper = before
        rows = self.execute(
            db,
            "SELECT id, key FROM taskpipe_jobs WHERE key >= ? AND key < ? "
            "ORDER BY key DESC LIMIT ?",
            (prefix, upper, limit),
        ).fetchall()
        return [(row[0], row[1]) for row in rows]


def _sqlite_code(exc: BaseException | None) -> int | None:
    """The SQLite primary result code of ``exc`` or of the sqlite3 error it wraps."""
    seen = 0
    while exc is not None and seen < 5:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _lenient_str(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def checkpoint(db: pw.SqliteDatabase) -> tuple[int, int, int] | None:
    """Checkpoint ``db``'s write-ahead log and truncate it, on this thread's connection,
    without waiting for other connections (see ``SqliteStorage.idle``). Returns
    SQLite's ``(busy, log frames, frames checkpointed)``, where ``busy`` is 1 when
    another connection kept the log from being truncated; None when this thread is
    inside a transaction (a checkpoint is not possible there)."""
    conn = db.connection()
    if conn.in_transaction:
        return None
    (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        busy, frames, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout)}")
    return busy, frames, done


class SqliteStorage(SqlStorage):
    """A queue in a SQLite database.

    ``SqliteStorage(db, queue="default", codec=JsonCodec, config=Config())``; call
    ``SqliteStorage.setup(db)`` once (it is idempotent) before using it.

    A push through any storage on the same database file in this process wakes the
    queue's idle workers at once. Pushes from other processes are found by polling
    (``Config.poll_interval``: within 1 s by default), or at once with ``with_hook``.
    """

    dialect = SqliteDialect()

    @classmethod
    def with_hook(
        cls,
        path_or_db: str | os.PathLike[str] | pw.SqliteDatabase,
        config: Config | None = None,
        *,
        queue: str | None = None,
        codec: Any = None,
    ) -> SqliteStorage:
        """A storage whose idle workers also notice other processes' pushes within
        milliseconds (a change probe on the file); polling stays as a safety net."""
        db = path_or_db if isinstance(path_or_db, pw.Database) else connect(os.fspath(path_or_db))
        storage = cls(db, queue=queue, codec=codec, config=config)
        storage.with_capabilities(wakeups=hooks.database_path(db) is not None)
        return storage

    @contextlib.contextmanager
    def _lenient_text(self) -> Iterator[None]:
        """Introspection reads text with invalid UTF-8 (another program wrote it) as
        ``\\xNN`` escapes, where sqlite3 would fail the whole page: this thread's
        connection decodes text leniently for the duration (callers hold the store's
        guard, so a connection shared by threads is not read meanwhile)."""
        conn = self.db.connection()
        previous = conn.text_factory
        conn.text_factory = _lenient_str
        try:
            yield
        finally:
            conn.text_factory = previous

    def idle(self) -> None:
        """The worker found nothing to do: checkpoint the write-ahead log and truncate
        it to zero bytes (``PRAGMA wal_checkpoint(TRUNCATE)``), without waiting.

        SQLite's automatic checkpoints (every 1000 pages) copy the log back into the
        database but never shrink the log file: it keeps its largest size (4 MB and
        more) for good, which on a small disk is space no purge gives back. Here the
        busy timeout is 0 for the duration of the checkpoint: when another connection
        is writing or still reads an older snapshot, the checkpoint copies what it can
        (as ``PASSIVE`` would) and leaves the log as it is, instead of waiting for the
        busy timeout (10 s) on the worker's poll loop; the next idle moment tries
        again. The worker calls this once each time it becomes idle, not at every poll.
        Measured (ext4 on a virtio disk, 200-byte tasks pushed in batches of 100):
        0.4-0.6 ms for a 45 KB log, 1.4-1.9 ms for 0.7 MB, 5-9 ms for 3.8 MB (just
        under the automatic checkpoint's 1000 pages), 16 us with nothing to do.
        Never raises: a failure is logged at debug level."""
        if hooks.database_path(self.db) is None:
            return  # in memory: no log file
        try:
            with self._guard:
                result = checkpoint(self.db)
        except Exception as exc:  # housekeeping must never disturb the worker
            log.debug("write-ahead log checkpoint of %s skipped: %r", self, exc)
            return
        log.debug("write-ahead log checkpoint of %s: %s", self, result)

    def __repr__(self) -> str:
        hooked = ", hooked" if self.hooked else ""
        return f"{type(self).__name__}({self.db.database!r}, queue={self.queue!r}{hooked})"
