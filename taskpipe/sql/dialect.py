"""What a SQL engine spells its own way: one ``Dialect`` object per engine.

``SqlStorage`` (``store.py``) is written once against this interface; a dialect
(``sqlite.py``, ``postgres.py``, ``mysql.py``) supplies:

- ``write_tx(db)``: a transaction that takes the write lock at once (no upgrade
  deadlocks); ``execute``/``executemany``/``fetch_named``: the hot path (named rows);
- ``insert_rows(db, rows)``: insert and return the ids, in order;
- ``ack_done(db, rows)``/``ack_done_in_tx(db, rows)``: mark a batch of tasks Done,
  lease-fenced (in one statement of its own / in the caller's transaction);
- ``queries``: the statements, with the claim and upserts in the engine's spelling;
- ``classify(exc)``: busy / missing schema / integrity / full / other, from the
  driver's error class and code (never the message text);
- ``setup(db)``/``check_schema(db)``: DDL and migrations;
- ``wakeups(db)``: the ``WakeRegistry`` for this database, whose probe (if any) is
  the engine's cross-process waker;
- ``last_key(db, prefix)``: the greatest stored key with a prefix, without string
  ranges whose order depends on a collation;
- ``take_slot(db, key, now, interval)``: a rate limit's next start, one upsert.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import peewee as pw

from ..task import TaskId
from ..wakeups import WakeRegistry
from . import schema
from .queries import Queries

__all__ = ["Dialect", "ErrorKind"]


class ErrorKind(enum.Enum):
    """What a driver error means to a store."""

    BUSY = "busy"  # another writer holds the lock: wait and try again
    MISSING = "missing"  # the tables are not there: setup() was not run
    INTEGRITY = "integrity"  # a constraint refused the write (a duplicate id)
    FULL = "full"  # the disk (or database) is full
    GONE = "gone"  # the connection was lost: reconnect and try again
    OTHER = "other"


class Dialect:
    """The SQL every engine shares, with hooks for what differs (module docstring)."""

    name = "sql"
    queries: Queries = Queries()
    #: The peewee database class a store of this engine takes, and how to get one.
    database_class: type[pw.Database] = pw.Database
    connect_hint = "taskpipe.connect(url)"
    #: What a user runs to create the tables (named in ``SetupError`` messages).
    setup_call = "SqliteStorage.setup"
    #: The driver's error classes, as peewee wraps them and raw.
    errors: tuple[type[BaseException], ...] = (pw.DatabaseError,)

    def write_tx(self, db: pw.Database) -> Any:
        """A transaction that takes the write lock at once."""
        return db.atomic()

    def execute(self, db: pw.Database, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement on this thread's connection; return the cursor."""
        return db.execute_sql(sql, params)

    def executemany(self, db: pw.Database, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        """Run one statement for each parameter row; return the cursor."""
        cursor = db.cursor()
        cursor.executemany(sql, rows)
        return cursor

    def fetch_named(
        self, db: pw.Database, sql: str, params: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        """Run a statement and return its rows as dicts, by column name."""
        cursor = self.execute(db, sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def ack_done(
        self, db: pw.Database, rows: Sequence[Sequence[Any]]
    ) -> set[tuple[int, str]] | None:
        """Mark ``rows`` (result, done_at, id, lease: ``queries.ack_done``'s parameters,
        one ``done_at`` for all) done in one statement, each only if still running
        under its lease, and return the (id, lease) pairs it wrote; None when the
        engine has no such statement (the store then runs ``ack_done`` per row in a
        transaction)."""
        return None

    #: True when ``ack_done_and_claim`` is one statement (``SqlStorage.ack_and_claim``).
    acks_with_claims = False

    def ack_done_and_claim(
        self, db: pw.Database, acks: Sequence[Sequence[Any]], params: Sequence[Any]
    ) -> tuple[list[dict[str, Any]], set[tuple[int, str]]]:
        """``ack_done(acks)`` and the guarded claim (``queries.claim_guarded`` with
        ``params``) in one atomic statement: (claimed rows, (id, lease) pairs written)."""
        raise NotImplementedError

    def insert_one(self, db: pw.Database, row: Any) -> TaskId:
        """Insert one unkeyed row in a transaction of its own; return its id."""
        return TaskId(self.execute(db, self.queries.insert, row).lastrowid)

    def claim(self, db: pw.Database, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Run a claim statement (``queries.claim`` or ``claim_isolated``) atomically;
        return the claimed rows by column name."""
        return self.fetch_named(db, sql, params)

    def claim_or_recover(
        self,
        db: pw.Database,
        attempt: Callable[[], list[dict[str, Any]]],
        params: Sequence[Any],
        claimed_sql: str,
    ) -> list[dict[str, Any]]:
        """Run a server's claim (``attempt()``). When the connection is lost meanwhile
        the claim may have committed: after reconnecting, the rows under its lease
        (``params[0]``, of queue ``params[3]``; ``claimed_sql`` selects them by queue
        and lease) are returned, so that none is left running under a lease nobody
        holds; the claim runs again only when there are none."""
        try:
            return attempt()
        except self.errors as exc:
            if self.classify(exc) is not ErrorKind.GONE or db.in_transaction():
                raise
            self.reset_connection(db)
        lease, queue = params[0], params[3]
        return self.fetch_named(db, claimed_sql, (queue, lease)) or attempt()

    def insert_rows(self, db: pw.Database, rows: Sequence[Any]) -> list[TaskId]:
        """Insert ``rows`` (``store.Row``) inside the caller's write transaction and
        return their ids in order; keyed rows are inserted if new, else their stored
        id is returned."""
        q = self.queries
        ids = []
        for row in rows:
            if row.key is None:
                ids.append(TaskId(self.execute(db, q.insert, row).lastrowid))
                continue
            cursor = self.execute(db, q.insert_keyed, row)
            if cursor.rowcount == 1:
                ids.append(TaskId(cursor.lastrowid))
            else:
                ids.append(TaskId(self.execute(db, q.id_for_key, (row.key,)).fetchone()[0]))
        return ids

    def ack_done_in_tx(self, db: pw.Database, rows: Sequence[Sequence[Any]]) -> int:
        """Run ``queries.ack_done`` for each ``(result, done_at, id, lease)`` inside the
        caller's write transaction; return how many rows it changed."""
        return int(self.executemany(db, self.queries.ack_done, rows).rowcount)

    def classify(self, exc: BaseException) -> ErrorKind:
        """What ``exc`` (a driver error) means; see ``ErrorKind``."""
        if isinstance(exc, pw.IntegrityError):
            return ErrorKind.INTEGRITY
        return ErrorKind.OTHER

    def reset_connection(self, db: pw.Database) -> None:
        """Drop this thread's connection after it was lost (``ErrorKind.GONE``): the
        next statement opens a new one."""
        try:
            db.close()
        except Exception:  # a connection that is gone may fail to close: forget it
            db._state.reset()  # type: ignore[attr-defined]  # peewee's per-thread state

    def setup(self, db: pw.Database) -> None:
        """Create or migrate taskpipe's tables; idempotent."""
        schema.setup(db)

    def check_schema(self, db: pw.Database) -> None:
        """Raise ``SetupError`` when the tables are missing or too old."""
        schema.check_schema(db, self.setup_call)

    def wakeups(self, db: pw.Database) -> WakeRegistry:
        """The in-process wake-up registry shared by every store on ``db``."""
        raise NotImplementedError

    def last_key(self, db: pw.Database, prefix: str) -> str | None:
        """The greatest key starting with ``prefix`` (any queue, any status), or None."""
        raise NotImplementedError

    def join_arrive(self, db: pw.Database, params: Sequence[Any]) -> tuple[int, int]:
        """Count one new part of a join (``queries.join_count``: join_key, slots,
        created_at) inside the caller's write transaction, under the join row's lock;
        return (arrived, slots) as this transaction sees them after counting."""
        arrived, slots = self.execute(db, self.queries.join_count, params).fetchone()
        return int(arrived), int(slots)

    def take_slot(self, db: pw.Database, key: str, now: float, interval: float) -> float:
        """Reserve the next start of rate limit ``key`` (``queries.take_slot``: the later
        of ``now`` and the last start plus ``interval``) inside the caller's write
        transaction, under the key's row lock; return the reserved start."""
        return float(self.execute(db, self.queries.take_slot, (key, now, interval)).fetchone()[0])

    def keys_with_prefix(
        self, db: pw.Database, prefix: str, before: str | None, limit: int
    ) -> list[tuple[int, str]]:
        """``(id, key)`` of the tasks whose key starts with ``prefix`` and sorts below
        ``before`` (code point order), greatest key first, at most ``limit``."""
        raise NotImplementedError
