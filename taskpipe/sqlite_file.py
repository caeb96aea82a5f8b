"""What a SQLite file holds, found without changing it (nor leaving files beside it).

``taskpipe.sqlite.connect`` switches a database to WAL as it opens it, so the command
line looks first: a file it then refuses (empty, another application's database, not
a database at all) must be left byte for byte as it was.

    info = inspect_file("jobs.db")
    if info.kind is Kind.STORE: ...
"""

from __future__ import annotations

import enum
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from .sql.schema import JOBS

__all__ = ["Kind", "FileInfo", "inspect_file", "TASKPIPE_PREFIX"]

HEADER = b"SQLite format 3\x00"
TASKPIPE_PREFIX = "taskpipe_"  # taskpipe's tables are all named taskpipe_*


class Kind(enum.Enum):
    """What is at a path."""

    MISSING = "missing"  # nothing: setup may create it
    DIRECTORY = "directory"
    SPECIAL = "special"  # a FIFO, a device, a socket: not a database file
    EMPTY = "empty"  # a file of 0 bytes: setup may make it a store
    NOT_SQLITE = "not sqlite"  # no SQLite header
    BLANK = "blank"  # a SQLite database with no tables but (some of) taskpipe's
    STORE = "store"  # has taskpipe's jobs table
    FOREIGN = "foreign"  # a SQLite database with other tables and no taskpipe jobs table


@dataclass(frozen=True)
class FileInfo:
    kind: Kind
    tables: tuple[str, ...] = ()  # tables and views, sorted (SQLite's own left out)

    @property
    def others(self) -> tuple[str, ...]:
        """The tables that are not taskpipe's."""
        return tuple(t for t in self.tables if not t.startswith(TASKPIPE_PREFIX))


def inspect_file(path: str | os.PathLike[str], *, timeout: float = 10.0) -> FileInfo:
    """What the file at ``path`` holds, read without writing anything.

    Raises ``OSError`` when the file cannot be read (permissions, a name too long…) and
    ``sqlite3.Error`` when SQLite cannot read it (damaged; locked for ``timeout`` s).

    A rollback-journal database is read through a read-only connection, which writes
    nothing. A WAL database is too when its ``-wal`` file exists (a process has it open,
    or crashed with it open): the connection then uses the ``-wal`` and ``-shm`` files
    already there. Without a ``-wal`` file, everything is in the main file, which is
    read as immutable: a read-only connection to a WAL database would otherwise create
    ``-wal`` and ``-shm`` files and leave them behind.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return FileInfo(Kind.MISSING)
    if stat.S_ISDIR(mode):
        return FileInfo(Kind.DIRECTORY)
    if not stat.S_ISREG(mode):
        return FileInfo(Kind.SPECIAL)
    with open(path, "rb") as file:
        header = file.read(100)
    if not header:
        return FileInfo(Kind.EMPTY)
    if not header.startswith(HEADER):
        return FileInfo(Kind.NOT_SQLITE)
    absolute = Path(os.path.abspath(path))
    uri = absolute.as_uri() + "?mode=ro"  # as_uri percent-encodes ?, # and non-UTF-8 bytes
    wal = len(header) > 19 and header[18] == 2 and header[19] == 2
    if wal and not os.path.exists(f"{absolute}-wal"):
        uri += "&immutable=1"
    connection = sqlite3.connect(uri, uri=True, timeout=timeout)
    try:
        rows = connection.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        ).fetchall()
    finally:
        connection.close()
    tables = tuple(name for (name,) in rows)
    if JOBS in tables:
        return FileInfo(Kind.STORE, tables)
    if all(t.startswith(TASKPIPE_PREFIX) for t in tables):
        return FileInfo(Kind.BLANK, tables)
    return FileInfo(Kind.FOREIGN, tables)
