"""MySQL and MariaDB stores: ``connect``, ``MysqlStorage`` (and ``Config`` and the
polling strategies for convenience). Needs PyMySQL: ``pip install 'taskpipe[mysql]'``.

    from taskpipe.mysql import MysqlStorage, Config, connect

    db = connect("mysql://app:secret@db.internal/jobs")   # or mariadb://…
    MysqlStorage.setup(db)                    # idempotent; safe from several processes
    storage = MysqlStorage(db, queue="emails")

MySQL 8.0 or MariaDB 10.6 and newer (``FOR UPDATE SKIP LOCKED``). MySQL has no
LISTEN/NOTIFY: a push wakes the idle workers of its own process at once, and workers
in other processes find it by polling (``Config(poll_interval=…)``, within 1 s by
default); delayed tasks and retries start on time either way (an idle worker wakes
for the earliest due task of its queue). ``taskpipe.connect("mysql://…")`` and
``taskpipe.open_storage("mysql://…")`` come here too.
"""

from __future__ import annotations

from typing import Any

try:
    import pymysql  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installation
    if exc.name != "pymysql":
        raise
    raise ModuleNotFoundError(
        "taskpipe's MySQL store needs PyMySQL: pip install 'taskpipe[mysql]'",
        name="pymysql",
    ) from None

from .config import Config
from .errors import ServerUnreachable
from .polling import BackoffStrategy, IntervalStrategy, StrategyBuilder
from .sql.mysql import MysqlDatabase, MysqlStorage, connect

__all__ = [
    "BackoffStrategy",
    "Config",
    "IntervalStrategy",
    "MysqlDatabase",
    "MysqlStorage",
    "ServerUnreachable",
    "StrategyBuilder",
    "connect",
    "open_storage",
]


def open_storage(
    db: Any, queue: str = "default", *, codec: Any = None, config: Config | None = None
) -> MysqlStorage:
    """A ``MysqlStorage`` on ``db`` (a database from ``connect``, or a URL) for
    ``queue``; ``taskpipe.open_storage`` calls this for MySQL and MariaDB."""
    if isinstance(db, str):
        db = connect(db)
    return MysqlStorage(db, queue=queue, codec=codec, config=config)
