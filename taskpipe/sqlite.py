"""SQLite stores: ``connect``, ``SqliteStorage`` (and ``Config`` for convenience).

    from taskpipe.sqlite import SqliteStorage, Config, connect
"""

from .config import Config
from .sql.sqlite import SharedMemoryDatabase, SqliteStorage, connect

__all__ = ["Config", "SharedMemoryDatabase", "SqliteStorage", "connect"]
