"""SQLite stores: ``connect``, ``SqliteStorage``, ``SharedSqliteStorage`` (and ``Config``
and the polling strategies for convenience).

    from taskpipe.sqlite import SqliteStorage, SharedSqliteStorage, Config, connect
"""

from .config import Config
from .polling import BackoffStrategy, IntervalStrategy, StrategyBuilder
from .sql.shared import SharedQueueStorage, SharedSqliteStorage
from .sql.sqlite import SharedMemoryDatabase, SqliteStorage, connect

__all__ = [
    "BackoffStrategy",
    "Config",
    "IntervalStrategy",
    "SharedMemoryDatabase",
    "SharedQueueStorage",
    "SharedSqliteStorage",
    "SqliteStorage",
    "StrategyBuilder",
    "connect",
]
