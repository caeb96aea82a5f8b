"""SQLite: the default store. ``connect(path)`` and ``SqliteStorage``.

``connect`` returns a peewee ``SqliteDatabase`` set up for a job queue: WAL (readers
never block the writer), a busy timeout, ``BEGIN IMMEDIATE`` transactions (no
"database is locked" from lock upgrades) and ``synchronous=NORMAL``, which survives
any process crash; ``durability="full"`` also survives power loss, at a cost
(see benchmarks/). WAL needs every process on one host (no network filesystems).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import peewee as pw

from ..config import Config
from .store import SqlStorage

__all__ = ["connect", "SqliteStorage"]

_DURABILITY = {"normal": "NORMAL", "full": "FULL"}


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
    seconds to wait for a lock before retrying."""
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
    return pw.SqliteDatabase(str(path), pragmas=settings, timeout=timeout, lock_type="IMMEDIATE")


class SqliteStorage(SqlStorage):
    """A queue in a SQLite database.

    ``SqliteStorage(db, queue="default", codec=JsonCodec, config=Config())``; call
    ``SqliteStorage.setup(db)`` once (it is idempotent) before using it.

    A push through any storage on the same database file in this process wakes the
    queue's idle workers at once. Pushes from other processes are found by polling
    (``Config.poll_interval``: within 1 s by default), or at once with ``with_hook``.
    """

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
        storage.hooked = True
        return storage

    def __repr__(self) -> str:
        hooked = ", hooked" if self.hooked else ""
        return f"{type(self).__name__}({self.db.database!r}, queue={self.queue!r}{hooked})"

    def __init__(self, db: pw.Database, queue: str | None = None, codec: Any = None, config: Config | None = None):
        if not isinstance(db, pw.SqliteDatabase):
            raise TypeError(
                f"SqliteStorage needs a peewee SqliteDatabase (taskpipe.sqlite.connect(path)), got {db!r}"
            )
        super().__init__(db, queue=queue, codec=codec, config=config)

    def _write_tx(self) -> Any:
        return self.db.atomic(lock_type="IMMEDIATE")

    def _execute(self, sql: str, params: Any = ()) -> Any:
        # The hot path talks to sqlite3 directly: same connection and transaction
        # as peewee's, without its per-statement bookkeeping.
        return self.db.connection().execute(sql, params)
