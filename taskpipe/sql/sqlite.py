"""SQLite: the default store. ``connect(path)`` and ``SqliteStorage``.

``connect`` returns a peewee ``SqliteDatabase`` set up for a job queue: WAL (readers
never block the writer), a busy timeout, ``BEGIN IMMEDIATE`` transactions (no
"database is locked" from lock upgrades) and ``synchronous=NORMAL``, which survives
any process crash; ``durability="full"`` also survives power loss, at a cost
(see benchmarks/). WAL needs every process on one host (no network filesystems).
"""

from __future__ import annotations

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
    """

    def __init__(self, db: pw.Database, queue: str | None = None, codec: Any = None, config: Config | None = None):
        if not isinstance(db, pw.SqliteDatabase):
            raise TypeError(
                f"SqliteStorage needs a peewee SqliteDatabase (taskpipe.sqlite.connect(path)), got {db!r}"
            )
        super().__init__(db, queue=queue, codec=codec, config=config)

    def _write_tx(self) -> Any:
        return self.db.atomic(lock_type="IMMEDIATE")
