"""Open a store from a URL: ``taskpipe.connect(url)`` and ``taskpipe.open_storage(...)``.

::

    db = taskpipe.connect("sqlite:///jobs.db")           # or a plain path: "jobs.db"
    storage = taskpipe.open_storage("jobs.db", queue="emails")
    storage = taskpipe.open_storage(db, queue="emails")   # a database already open

The CLI (and the integrations to come) open stores with these two and
nothing else. Engines other than SQLite live in their own modules, imported when a
URL names them (``postgresql://…`` → ``taskpipe.postgres``), so their drivers are
needed only by those who use them.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from .config import Config
from .errors import StorageError
from .store import Store

__all__ = ["connect", "open_storage"]

# URL scheme -> (module, what it is, the pip extra that brings its driver)
ENGINES = {
    "postgresql": ("taskpipe.postgres", "PostgreSQL", "postgres"),
    "postgres": ("taskpipe.postgres", "PostgreSQL", "postgres"),
    "mysql": ("taskpipe.mysql", "MySQL/MariaDB", "mysql"),
    "mariadb": ("taskpipe.mysql", "MySQL/MariaDB", "mysql"),
    "redis": ("taskpipe.redis", "Redis", "redis"),
    "rediss": ("taskpipe.redis", "Redis", "redis"),  # Redis over TLS
}


def _scheme(url: str) -> str | None:
    head, sep, _ = url.partition("://")
    return head.lower() if sep and head.isidentifier() else None


def _engine(scheme: str) -> Any:
    module, what, extra = ENGINES[scheme]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise StorageError(
                f"this version of taskpipe has no {what} store yet ({scheme}:// URLs)"
            ) from None
        raise StorageError(
            f"the {what} store needs its driver ({exc.name} is missing): pip install 'taskpipe[{extra}]'"
        ) from exc


def _sqlite_path(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :] or ":memory:"
    if url in ("sqlite://", "sqlite:///:memory:", ":memory:"):
        return ":memory:"
    return url


def connect(url: str | os.PathLike[str]) -> Any:
    """The database (or client) for ``url``: ``sqlite:///path`` or a plain path (a
    peewee ``SqliteDatabase``, as ``taskpipe.sqlite.connect``), ``sqlite:///:memory:``;
    ``postgresql://…``, ``mysql://…`` and ``redis://…`` (``rediss://`` for TLS) open
    their engines."""
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url:
        raise ValueError(f"connect() takes a URL or a path, got {url!r}")
    scheme = _scheme(url)
    if scheme is None or scheme == "sqlite":
        from .sql.sqlite import connect as sqlite_connect

        return sqlite_connect(_sqlite_path(url))
    if scheme in ENGINES:
        return _engine(scheme).connect(url)
    known = ", ".join(["sqlite", *sorted(ENGINES)])
    raise ValueError(
        f"unknown database URL scheme {scheme!r} in {url!r}: use one of {known}, or a file path"
    )


def open_storage(
    url_or_db: Any, queue: str = "default", *, codec: Any = None, config: Config | None = None
) -> Store:
    """The store for a URL, a path or an open database: a ``SqliteStorage`` for SQLite,
    the engine's store for the others. Set the database up once first:
    ``type(store).setup(store)`` (for SQLite, ``SqliteStorage.setup(db)``, or
    ``taskpipe setup`` on the command line)."""
    db = connect(url_or_db) if isinstance(url_or_db, (str, os.PathLike)) else url_or_db
    import peewee as pw

    if isinstance(db, pw.SqliteDatabase):
        from .sql.sqlite import SqliteStorage

        return SqliteStorage(db, queue=queue, codec=codec, config=config)
    module = type(db).__module__.split(".")[0]
    for scheme, (engine, _, _) in ENGINES.items():
        if module in (engine, scheme) or getattr(db, "taskpipe_engine", None) == scheme:
            return _engine(scheme).open_storage(db, queue=queue, codec=codec, config=config)
    raise TypeError(
        f"open_storage() takes a URL, a path or a database from taskpipe.connect(), got {db!r}"
    )
