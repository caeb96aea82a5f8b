"""PostgreSQL stores: ``connect``, ``PostgresStorage`` (and ``Config`` and the polling
strategies for convenience). Needs psycopg 3: ``pip install 'taskpipe[postgres]'``.

    from taskpipe.postgres import PostgresStorage, Config, connect

    db = connect("postgresql://app@db.internal/jobs")
    PostgresStorage.setup(db)                 # idempotent; safe from several processes
    storage = PostgresStorage(db, queue="emails")

``taskpipe.connect("postgresql://…")`` and ``taskpipe.open_storage("postgresql://…")``
come here too.
"""

from __future__ import annotations

from typing import Any

try:
    import psycopg  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installation
    if exc.name != "psycopg":
        raise
    raise ModuleNotFoundError(
        "taskpipe's PostgreSQL store needs psycopg 3: pip install 'taskpipe[postgres]'",
        name="psycopg",
    ) from None

from .config import Config
from .polling import BackoffStrategy, IntervalStrategy, StrategyBuilder
from .sql.postgres import PostgresDatabase, PostgresStorage, ServerUnreachable, connect

__all__ = [
    "BackoffStrategy",
    "Config",
    "IntervalStrategy",
    "PostgresDatabase",
    "PostgresStorage",
    "ServerUnreachable",
    "StrategyBuilder",
    "connect",
    "open_storage",
]


def open_storage(
    db: Any, queue: str = "default", *, codec: Any = None, config: Config | None = None
) -> PostgresStorage:
    """A ``PostgresStorage`` on ``db`` (a database from ``connect``, or a URL) for
    ``queue``; ``taskpipe.open_storage`` calls this for PostgreSQL."""
    if isinstance(db, str):
        db = connect(db)
    return PostgresStorage(db, queue=queue, codec=codec, config=config)
