"""The ``taskpipe`` command: set up a store, run workers, push, inspect and steer tasks.

A thin layer over the library: every command calls the store's public API
(``push_task``, ``list_tasks``, ``stats``, ``retry``, ``kill``, ``purge``…), so
anything it does, code can do too::

    taskpipe --db jobs.db setup
    taskpipe --db jobs.db push '{"to": "a@example.com"}' --run-after 10m
    taskpipe --db jobs.db worker myapp.tasks:send_email --concurrency 4
    taskpipe tasks --status dead --db jobs.db          # --db before or after the command
    TASKPIPE_DB=sqlite:///jobs.db taskpipe stats --watch
    taskpipe --db postgresql://app@db.internal/jobs setup
    taskpipe --db 'redis://127.0.0.1:6379/0?prefix=myapp' tasks

Exit codes: 0 ok, 1 an operation failed, 2 bad input (one line on stderr, no traceback).
A --db file that is not a taskpipe database is refused and left as it was: the command
looks at it read-only (``taskpipe.sqlite_file``) before opening it with ``connect``.
A server URL is opened with ``taskpipe.connect`` and ``open_storage``, like any other,
and checked with the store's ``check_setup`` (``setup`` runs the store class's own
``setup``); no message shows the URL's password (``masked_url``).
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import shlex
import sqlite3
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import click
import peewee as pw
from click.core import ParameterSource

from . import __version__, clock, events
from .connection import ENGINES, connect, open_storage
from .errors import (
    BuildError,
    CapabilityError,
    CodecError,
    RunNotFound,
    SetupError,
    StorageError,
    TaskNotFound,
    TaskpipeError,
)
from .expose import STATS_KEYS, QueueInfo, jsonable
from .layers import RetryPolicy
from .monitor import Monitor
from .processes import Supervisor
from .router import Router
from .sql.schema import JOBS
from .sqlite import SqliteStorage
from .sqlite_file import Kind, inspect_file
from .store import require
from .targets import import_target, runnable
from .task import Status, Task, TaskInfo
from .worker import Worker, WorkerBuilder

__all__ = [
    "BadInput",
    "Failure",
    "cli",
    "database_path",
    "main",
    "masked_url",
    "parse_duration",
]

PUSH_BATCH = 1000
STATUS_COLOURS = {
    "pending": "cyan",
    "running": "blue",
    "done": "green",
    "failed": "yellow",
    "dead": "red",
}
STATUS_NAMES = [s.value for s in Status]


# Errors ---------------------------------------------------------------------------------
def _printable(text: str) -> str:
    """``text`` for one line of a terminal: line breaks, other control characters and
    lone surrogates (what Python makes of a non-UTF-8 argument or file name) escaped."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif "\udc80" <= char <= "\udcff":  # an undecodable byte, as os.fsdecode keeps it
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _shown(value: str, limit: int = 200) -> str:
    """A value the user gave (a path, a name…) as an error message shows it: escaped,
    cut after ``limit`` characters, quoted when empty or odd."""
    text = _printable(value)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(value)} characters)"
    plain = value and value == value.strip() and value.isprintable()
    return text if plain else f"'{text}'"


def _is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file at all, if it cannot."""
    if "\x00" in path:
        return "a file name cannot hold a NUL character"
    try:
        os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate no argv or file name can carry
        return "it is not a file name this system can encode"
    return None


class _OneLine(click.ClickException):
    """An error shown on one line of stderr, without the password of the --db URL."""

    def __init__(self, message: str):
        ctx = click.get_current_context(silent=True)
        state = ctx.find_object(_State) if ctx is not None else None
        message = message.rstrip()  # a driver's message may end with a line break
        super().__init__(state.hide_password(message) if state is not None else message)

    def format_message(self) -> str:
        return _printable(self.message)


class BadInput(_OneLine):
    """Bad input (JSON, id, database, MODULE:ATTR…): one line on stderr, exit code 2."""

    exit_code = 2


class Failure(_OneLine):
    """The operation failed (a store error, a task that cannot be retried…): exit code 1."""

    exit_code = 1


# Durations --------------------------------------------------------------------------------
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d|w)")


# The longest duration taken (a --run-after, --grace, --older-than): beyond it a value
# is surely a typo, and it would overflow a timedelta or a timestamp.
MAX_DURATION = 100 * 365.25 * 86400.0  # 100 years, in seconds


def parse_duration(text: str | float | int | timedelta) -> float:
    """Seconds in ``"30s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"1h30m"``, ``"250ms"`` or a
    plain number (seconds); raises ``ValueError`` on anything else, on a negative or
    non-finite duration and on one longer than 100 years (``MAX_DURATION``)."""
    if isinstance(text, timedelta):
        return _checked_duration(text.total_seconds(), text)
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _checked_duration(float(text), text)
    value = str(text).strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _PART.findall(value)
        if not parts or _PART.sub("", value).strip():
            raise ValueError(
                f"{_brief(text)} is not a duration: "
                "use e.g. 30s, 10m, 2h, 1d, 1h30m or a number of seconds"
            ) from None
        seconds = sum(float(n) * _UNITS[unit] for n, unit in parts)
    return _checked_duration(seconds, text)


def _checked_duration(seconds: float, text: Any) -> float:
    # A number too large for a float reads as inf: it is too long, not "inf".
    if math.isnan(seconds) or (math.isinf(seconds) and "inf" in str(text).lower()):
        raise ValueError(f"a duration must be a finite number of seconds, got {_brief(text)}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {_brief(text)}")
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration cannot be longer than 100 years: {_brief(text)}")
    return seconds


def _brief(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut after ``limit`` characters of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(str(value))} characters)"


class _Duration(click.ParamType):
    """A duration (``parse_duration``); a bad one is ``BadInput``: one line, exit 2."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise BadInput(f"invalid value for {_hint(param, ctx)}: {exc}") from None


# SQLite stores integers in 64 bits (signed): a larger one must not reach it.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


class _Int64(click.IntRange):
    """An integer that fits SQLite's 64-bit signed INTEGER (and ``min``/``max``); one
    outside that range is ``BadInput``: one line, exit 2. Not a number at all, or
    below ``min``, is click's usage error as for any ``IntRange``."""

    name = "integer"

    def __init__(self, min: int | None = None, max: int = INT64_MAX, label: str | None = None):
        super().__init__(min=min, max=None)
        self.most = max
        self.label = label

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, str) and _INTEGER.fullmatch(value):
            digits = value.strip().lstrip("+-").lstrip("0")
            if len(digits) > 19:  # more than any 64-bit integer; maybe more than int() reads
                raise self._out_of_range(_shown(value.strip(), 40), param, ctx)
        number = super().convert(value, param, ctx)
        if not INT64_MIN <= number <= self.most:
            raise self._out_of_range(str(number), param, ctx)
        return number

    def _out_of_range(self, number: str, param: Any, ctx: Any) -> BadInput:
        low = INT64_MIN if self.min is None else self.min
        what = f"invalid {self.label}" if self.label else f"invalid value for {_hint(param, ctx)}"
        return BadInput(f"{what}: {number} is out of range ({low} to {self.most})")

    def _describe_range(self) -> str:
        return "" if self.min is None else f"x>={self.min}"  # as click.IntRange(min=…) said


def _hint(param: Any, ctx: Any) -> str:
    """How an error names a parameter: '--priority', 'ID'."""
    return param.get_error_hint(ctx) if param is not None else "value"


class _Name(click.ParamType):
    """A queue or worker name: not empty, and text (not a non-UTF-8 argument, which
    Python hands over with lone surrogates that no database or terminal takes)."""

    name = "text"

    def __init__(self, what: str, instead: str):
        self.what = what
        self.instead = instead

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        if value == "":
            what = f"invalid value for {_hint(param, ctx)}"
            raise BadInput(f"{what}: {self.what} cannot be empty ({self.instead})")
        if not _is_utf8(value):
            raise BadInput(
                f"invalid value for {_hint(param, ctx)}: {_shown(value)} is not valid UTF-8 "
                "(was it typed in another encoding?)"
            )
        return value


DURATION = _Duration()
QUEUE = _Name("a queue name", "leave out --queue for the default queue")
QUEUE_FILTER = _Name("a queue name", "leave out --queue for every queue")
QUEUE_ARGUMENT = _Name("a queue name", "name the queue, e.g. default")
WORKER_NAME = _Name("a worker name", "leave out --name for the handler's name")


# Database URLs ------------------------------------------------------------------------------
#: What ``--db`` takes besides a SQLite path: ``sqlite:///PATH`` and every engine
#: ``taskpipe.connect`` opens (``postgresql://``, ``mysql://``, ``redis://``…).
SCHEMES = ("sqlite", *sorted(ENGINES))
_PASSWORD_OPTION = re.compile(r"(?i)([?&][^=&#]*password=)([^&#]*)")
#: A password shorter than this is masked in URLs only, not wherever it appears in a
#: message (it would hide ordinary words).
_SHORTEST_HIDDEN = 4


def database_path(url: str) -> str | None:
    """The SQLite file named by ``--db``: a plain path, or ``sqlite:///relative.db`` /
    ``sqlite:////absolute.db``; None for a server URL (``postgresql://…``,
    ``mysql://…``, ``redis://…``), which ``taskpipe.connect`` opens. An unknown scheme,
    or options in a SQLite URL, raise ``BadInput``."""
    if "://" not in url:
        return url
    head, _, rest = url.partition("://")
    scheme = head.lower()
    if scheme in ENGINES:
        return None
    if scheme.split("+")[0] not in ("sqlite", "sqliteext"):
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise BadInput(
            f"unknown database URL scheme {_shown(head, 40)}://…: use a SQLite path or "
            f"a URL starting with one of {known}"
        )
    path, _, query = rest.partition("?")
    if query:
        raise BadInput(f"options in the database URL are not supported yet: {query!r}")
    if path.startswith("/"):
        path = path[1:]
    return path or ":memory:"


def _userinfo(rest: str) -> str | None:
    """The ``user:password`` of a URL's part after ``://``, when it has a password. It
    ends at the last @ before the query: a password may hold a raw / or @."""
    before_query = re.split(r"[?#]", rest, maxsplit=1)[0]
    userinfo, at, _ = before_query.rpartition("@")
    return userinfo if at and ":" in userinfo else None


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: the one in ``user:password@host``
    and the value of any ``…password=`` query option."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo = _userinfo(rest)
    if userinfo is not None:
        rest = f"{userinfo.partition(':')[0]}:***{rest[len(userinfo) :]}"
    return head + sep + _PASSWORD_OPTION.sub(r"\1***", rest)


def _passwords(url: str) -> set[str]:
    """The passwords ``masked_url`` hides, as written and percent-decoded."""
    head, sep, rest = url.partition("://")
    if not sep:
        return set()
    found = [m.group(2) for m in _PASSWORD_OPTION.finditer(rest)]
    userinfo = _userinfo(rest)
    if userinfo is not None:
        found.append(userinfo.partition(":")[2])
    return {p for raw in found for p in (raw, unquote(raw)) if p}


@dataclass
class _State:
    url: str | None = None
    db: Any = None

    def hide_password(self, text: str) -> str:
        """``text`` without the password of ``--db``: the URL masked (``masked_url``),
        and the password itself wherever else it appears (unless it is very short)."""
        if not self.url:
            return text
        text = text.replace(self.url, masked_url(self.url))
        for password in sorted(_passwords(self.url), key=len, reverse=True):
            if len(password) >= _SHORTEST_HIDDEN:
                text = text.replace(password, "***")
        return text

    def shown_url(self) -> str:
        """``--db`` as messages show it: its password masked, escaped, quoted when odd."""
        return _shown(masked_url(self.url or ""))

    def database(self, *, create: bool = False) -> Any:
        """Open the database (or server) ``--db`` names, with ``taskpipe.connect``; with
        ``create`` set it up, else refuse one without taskpipe's tables (or layout).
        A SQLite file is looked at first and refused when missing (``setup`` creates
        it) or not a taskpipe database."""
        if self.db is not None:
            return self.db
        if not self.url:
            raise BadInput("no database given: pass --db PATH or --db URL, or set TASKPIPE_DB")
        path = database_path(self.url)
        db = self._open_server(create) if path is None else self._open_file(path, create)
        self.db = db
        click.get_current_context().call_on_close(self.close)
        return db

    def _open_file(self, path: str, create: bool) -> Any:
        url = self.url or ""
        if path != ":memory:":
            path = _checked_file(path, url, create)
        db = connect(path)  # taskpipe.connect: the one way the library opens a URL or path
        try:
            if create:
                SqliteStorage.setup(db)
            elif not db.table_exists(JOBS):
                db.close()
                raise BadInput(
                    f"{url} has no taskpipe tables: run `taskpipe setup --db {url}` first"
                )
        except pw.DatabaseError as exc:
            db.close()
            raise BadInput(f"cannot use {url} as a taskpipe database: {exc}") from exc
        return db

    def _open_server(self, create: bool) -> Any:
        """The server's database or client, set up by its store class's own ``setup``
        (``create``) or checked to be (``check_setup``)."""
        shown = self.shown_url()
        db = None
        try:
            db = connect(self.url or "")
            try:
                store: Any = open_storage(db)  # every engine's store class has setup()
                if create:
                    type(store).setup(store)
                else:
                    store.check_setup()
            except BaseException:
                db.close()
                raise
        except ValueError as exc:  # a URL its engine cannot read
            raise BadInput(f"invalid --db {shown}: {exc}") from None
        except SetupError as exc:
            if create:
                raise BadInput(f"cannot set up {shown}: {exc}") from None
            setup = shlex.quote(masked_url(self.url or ""))
            raise BadInput(
                f"{shown} is not set up for taskpipe: run `taskpipe setup --db {setup}` ({exc})"
            ) from None
        except StorageError as exc:
            if db is None:  # its driver is not installed, or no such engine yet
                raise BadInput(str(exc)) from None
            raise Failure(f"{shown}: {exc}") from None  # unreachable, refused…
        return db

    def storage(self, queue: str | None = None) -> Any:
        """A store on ``queue`` (the default queue when None), by ``open_storage``; it
        has the introspection methods too (checked), hence ``Any``."""
        store = open_storage(self.database(), "default" if queue is None else queue)
        require(store, "introspection", "be seen and steered from the command line")
        return store

    def close(self) -> None:
        """Close the database or client ``database()`` opened, if any."""
        db, self.db = self.db, None
        if db is not None:
            db.close()


def _checked_file(path: str, url: str, create: bool) -> str:
    """The file ``--db`` names, looked at without changing it (``connect`` would switch
    it to WAL): a taskpipe database, or for ``setup`` a new file, an empty one or a
    SQLite database without tables. Anything else is refused, and left as it was."""
    shown = _shown(path)
    setup = f"`taskpipe setup --db {_shown(url)}`"
    problem = _path_problem(path)
    if problem:
        raise BadInput(f"invalid --db {shown}: {problem}")
    try:
        file = Path(path).expanduser()
    except RuntimeError as exc:  # ~name of no such user
        raise BadInput(f"invalid --db {shown}: {exc}") from None
    try:
        info = inspect_file(file)
    except OSError as exc:
        raise BadInput(f"cannot read {shown}: {exc.strerror or exc}") from None
    except sqlite3.Error as exc:
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise Failure(f"cannot read {shown}: {exc} (another process has it: retry)") from None
        raise BadInput(f"cannot read {shown} as a SQLite database: {exc}") from None
    match info.kind:
        case Kind.STORE:
            pass
        case Kind.MISSING if create:
            if not file.parent.is_dir():
                parent = _shown(str(file.parent))
                raise BadInput(f"cannot create {shown}: directory {parent} does not exist")
        case Kind.MISSING:
            raise BadInput(
                f"no taskpipe database at {shown}: the file does not exist "
                f"(check --db, or create it with {setup})"
            )
        case Kind.EMPTY | Kind.BLANK if create:
            pass
        case Kind.EMPTY:
            raise BadInput(f"{shown} is an empty file: run {setup} to make it a taskpipe database")
        case Kind.BLANK:
            raise BadInput(f"{shown} has no taskpipe tables: run {setup} first")
        case Kind.DIRECTORY:
            raise BadInput(f"{shown} is a directory, not a database file")
        case Kind.SPECIAL:
            raise BadInput(f"{shown} is not a regular file: --db takes a SQLite database file")
        case Kind.NOT_SQLITE:
            raise BadInput(f"{shown} is not a database (it has no SQLite header): check --db")
        case Kind.FOREIGN:
            others = info.others
            tables = ", ".join(_shown(t, 40) for t in others[:3])
            tables += ", …" if len(others) > 3 else ""
            if create:
                raise BadInput(
                    f"{shown} is another application's SQLite database (tables {tables}): "
                    "taskpipe does not add its tables to it; pick a new file for --db"
                )
            raise BadInput(
                f"{shown} is not a taskpipe database: it holds another application's tables "
                f"({tables}); check --db"
            )
    return str(file)


DB_HELP = (
    "The store: a SQLite file (PATH or sqlite:///PATH) or a server URL, "
    "e.g. postgresql://USER@HOST/DB, mysql://USER@HOST/DB, redis://HOST:6379/0?prefix=NAME"
)


def _set_db(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(_State).url = value


def _db_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--db`` on a subcommand, so it may come after the command name too."""
    return click.option(
        "--db",
        metavar="PATH|URL",
        expose_value=False,
        callback=_set_db,
        help=f"{DB_HELP} (default: $TASKPIPE_DB).",
    )(command)


def _state() -> _State:
    return click.get_current_context().ensure_object(_State)


# Output helpers ----------------------------------------------------------------------------
def _ago(when: datetime | None, now: datetime | None = None) -> str:
    """``when`` relative to now: "3 min ago", "in 10 s", "just now"."""
    if when is None:
        return "-"
    seconds = ((now or clock.now()) - when).total_seconds()
    span = abs(seconds)
    if span < 1:
        return "just now"
    text = _span(span, coarse=True)
    return f"{text} ago" if seconds > 0 else f"in {text}"


def _span(seconds: float, coarse: bool = False) -> str:
    """A duration for people: "350 ms", "4.2 s", "3 min", "2 h", "5 d"."""
    if seconds < 1 and not coarse:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{int(seconds)} s" if coarse else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def _when(dt: datetime | None) -> str:
    if dt is None:
        return "-"
    return f"{dt.strftime('%Y-%m-%d %H:%M:%S')} UTC ({_ago(dt)})"


TOO_DEEP = "<nested too deeply to show>"


def _plain_value(value: Any) -> Any:
    """``jsonable(value)``, or a note for args or a result nested deeper than
    ``MAX_JSON_DEPTH`` (code can push what the command line would refuse)."""
    if _deeper_than(value, MAX_JSON_DEPTH):
        return TOO_DEEP
    try:
        return jsonable(value)
    except RecursionError:
        return TOO_DEEP


def _deeper_than(value: Any, limit: int) -> bool:
    """True when lists, tuples and dicts in ``value`` nest more than ``limit`` deep."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        level = [
            child
            for item in level
            if isinstance(item, (list, tuple, dict))
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (list, tuple, dict))
        ]
        if not level:
            return False
    return True


def _plain(value: Any) -> Any:
    """``jsonable(value)`` for a TaskInfo (or a list of them), field by field: a field
    nested too deeply to show becomes a note instead of failing the whole listing
    (judged by depth, so every Python shows the same)."""
    if isinstance(value, list) and all(is_dataclass(v) for v in value):
        return [_plain(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain_value(getattr(value, f.name)) for f in fields(value)}
    return _plain_value(value)


def _dumps(value: Any) -> str:
    return json.dumps(_plain_value(value), ensure_ascii=False)


def _preview(value: Any, width: int = 48) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes, not decodable>"
    text = _dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _status(status: Status | str) -> str:
    value = status.value if isinstance(status, Status) else str(status)
    return click.style(value, fg=STATUS_COLOURS.get(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns; a cell is text or ``(text, style)`` (styled after padding)."""
    cells = [[c if isinstance(c, tuple) else (str(c), None) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], len(text))

    def pad(text: str, width: int) -> str:
        return " " * (width - len(text))

    lines = [
        "  ".join(
            click.style(h, bold=True) + pad(h, w) for h, w in zip(headers, widths, strict=True)
        ).rstrip()
    ]
    for row in cells:
        padded = [
            (click.style(text, fg=style) if style else text) + pad(text, width)
            for (text, style), width in zip(row, widths, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(_plain(value), indent=2, ensure_ascii=False))


def _err(message: str) -> None:
    click.echo(f"Error: {message}", err=True)


# The group ---------------------------------------------------------------------------------
# click >= 8.2 shows the help, not an error, for a bare ``taskpipe``: it stays as it is.
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _usage_error(exc: click.UsageError) -> BadInput:
    """click's usage error (usage, a hint, then the error: four lines) as one line."""
    message = exc.format_message()
    if len(message) > 400:  # it quotes the value given, which may be 10,000 characters
        message = f"{message[:200]} … {message[-150:]}"
    if message.endswith(".") and not message.endswith(".."):
        message = message[:-1]
    if exc.ctx is not None:
        message += f" (see '{exc.ctx.command_path} --help')"
    return BadInput(message)


class _Group(click.Group):
    """Turns taskpipe's errors, and click's usage errors, into one line and the right
    exit code."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _HELP:
            raise
        except click.UsageError as exc:  # taskpipe's own options: --db, --bogus…
            raise _usage_error(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _HELP:
            raise
        except click.UsageError as exc:  # a command's arguments and options
            raise _usage_error(exc) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except TaskNotFound as exc:
            raise BadInput(str(exc)) from exc
        except RunNotFound as exc:
            raise BadInput(str(exc)) from exc
        except SetupError as exc:
            raise BadInput(f"{exc}") from exc
        except TaskpipeError as exc:
            raise Failure(f"{exc}") from exc
        except (pw.DatabaseError, sqlite3.Error) as exc:  # the hot paths use sqlite3 directly
            raise Failure(f"database error: {exc}") from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "--version", "-V", prog_name="taskpipe", message="%(prog)s %(version)s"
)
@click.option(
    "--db",
    metavar="PATH|URL",
    envvar="TASKPIPE_DB",
    show_envvar=True,
    help=f"{DB_HELP}.",
)
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """taskpipe: durable background jobs. Inspect and steer the jobs of a store.

    --db (or TASKPIPE_DB) names the store, before or after the command: a SQLite
    file, or a PostgreSQL, MySQL/MariaDB or Redis URL (run `setup` once for each).
    """
    state = ctx.ensure_object(_State)
    if db is not None and state.url is None:
        state.url = db


@cli.command(short_help="Create or migrate taskpipe's tables (or Redis layout).")
@_db_option
def setup() -> None:
    """Create (or migrate) taskpipe's tables, creating a SQLite file if needed; on
    Redis, record taskpipe's key layout under the URL's ?prefix= (default taskpipe).
    Idempotent: safe to run again, and from several machines."""
    state = _state()
    state.database(create=True)
    if database_path(state.url or "") is None:
        click.echo(f"taskpipe is set up in {state.shown_url()}")
    else:
        click.echo(f"taskpipe tables are ready in {_shown(state.url or '')}")


# worker ---------------------------------------------------------------------------------------
def _import_target(spec: str) -> Any:
    try:
        return import_target(spec)
    except BuildError as exc:
        raise BadInput(str(exc)) from exc


def _print_events(ctx: Any, event: events.Event) -> None:
    match event:
        case events.Success(task_id=task_id):
            click.echo(f"task {int(task_id)} {click.style('done', fg='green')}")
        case events.Retry(task_id=task_id, attempt=attempt, run_at=run_at):
            click.echo(
                f"task {int(task_id)} {click.style('failed', fg='yellow')} (attempt {attempt}), retry {_ago(run_at)}"
            )
        case events.Dead(task_id=task_id, error=error):
            click.echo(f"task {int(task_id)} {click.style('dead', fg='red')}: {error}")
        case events.Error(task_id=None, error=error):
            click.echo(f"{click.style('error', fg='red')}: {error}", err=True)
        case events.Paused():
            click.echo(f"worker {ctx.name} {click.style('paused', fg='yellow')}: it takes no task")
        case events.Resumed():
            click.echo(f"worker {ctx.name} resumed")


#: ``--log-level`` of the commands that run workers (taskpipe's and the integrations').
LOG_LEVEL = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="What taskpipe logs to stderr while the worker runs.",
)


@cli.command(short_help="Run a Worker, a Monitor, a Router or a handler function.")
@click.argument("target", metavar="MODULE:ATTR")
@click.option(
    "--queue",
    "-q",
    type=QUEUE,
    default="default",
    show_default=True,
    help="The queue to take tasks from.",
)
@click.option(
    "--concurrency", "-c", type=_Int64(min=1), default=1, show_default=True, help="Handler threads."
)
@click.option(
    "--retries",
    type=_Int64(min=0, max=INT64_MAX - 1),
    default=0,
    show_default=True,
    help="Retries of a failed task.",
)
@click.option(
    "--grace",
    type=DURATION,
    default="30s",
    show_default=True,
    help="Shutdown grace for running tasks.",
)
@click.option("--until-idle", is_flag=True, help="Run what is due now, then exit.")
@click.option(
    "--processes",
    "-p",
    type=_Int64(min=1),
    metavar="N",
    help="Run the worker in N processes, restarted if they die (default: in this one).",
)
@click.option("--name", type=WORKER_NAME, help="The worker's name (default: the handler's name).")
@click.option("--quiet", is_flag=True, help="Do not print a line per finished task.")
@LOG_LEVEL
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics (extra: metrics).",
)
@_db_option
@click.pass_context
def worker(
    ctx: click.Context,
    target: str,
    queue: str,
    concurrency: int,
    retries: int,
    grace: float,
    until_idle: bool,
    processes: int | None,
    name: str | None,
    quiet: bool,
    log_level: str,
    metrics_port: int | None,
) -> None:
    """Run the worker MODULE:ATTR names: a Worker, a Monitor, a Router or a handler
    function. A handler function's worker takes the tasks of --queue of --db; a
    Router's, those of its own store (or of --db when given), on its queue (or
    --queue when given): run one per queue its functions use. With --processes N,
    N child processes each run one (named NAME-1, NAME-2…), started again if they
    die; SIGINT/SIGTERM drain them all."""
    if processes is not None and until_idle:
        raise BadInput("--until-idle runs in this process only: drop --processes")
    if processes is not None and metrics_port is not None:
        raise BadInput("--metrics-port serves one process: drop it or --processes")
    obj = _import_target(target)
    if metrics_port is not None:
        _metrics_layer(None)  # prometheus-client missing: say so before anything runs
    factory: Callable[[], Worker | Monitor]
    if isinstance(obj, (Worker, Monitor)):
        ignored = [
            f"--{p.replace('_', '-')}"
            for p in ("queue", "concurrency", "retries", "grace", "name")
            if ctx.get_parameter_source(p) is ParameterSource.COMMANDLINE
        ]
        if ignored:
            click.echo(
                f"warning: {', '.join(ignored)} ignored: {target} is an already built {type(obj).__name__}",
                err=True,
            )
        workers = [obj] if isinstance(obj, Worker) else list(obj.workers)
        factory = functools.partial(_child_runnable, target, log_level)
    elif isinstance(obj, Router) or callable(obj) or hasattr(obj, "bind_dispatch"):
        if isinstance(obj, Router):
            store = _router_storage(obj, target, queue, ctx)
            default_name = store.queue
        else:  # a handler function, or a dispatching handler (Django's tasks)
            store = _state().storage(queue)
            default_name = getattr(obj, "__name__", None) or store.queue
        options = _HandlerOptions(
            store.queue,
            concurrency,
            retries,
            grace,
            str(name or default_name),
            quiet,
            _state().url,
        )
        try:
            obj = options.build(obj, store)
        except BuildError as exc:
            raise BadInput(f"{target}: {exc}") from exc
        workers = [obj]
        factory = functools.partial(_child_handler_worker, target, options, log_level)
    else:
        raise BadInput(
            f"{target} is a {type(obj).__name__}: expected a Worker, a Monitor, a Router or a "
            "handler function"
        )
    if processes is not None:
        for w in workers:  # a store never set up: exit 2 now, not a crash loop of children
            w.backend.check_setup()
        _state().close()  # the children open their own connections; the parent needs none
        with _logging_to_stderr(log_level):
            status = Supervisor(factory, processes).run()
        if status:
            raise click.exceptions.Exit(status)
        return
    with _logging_to_stderr(log_level), _serving_metrics(metrics_port, workers):
        if until_idle:
            handled = sum(w.run_until_idle() for w in workers)
            click.echo(f"handled {handled} task{'s' if handled != 1 else ''}")
        else:
            obj.run()


@dataclass(frozen=True)
class _HandlerOptions:
    """How ``worker`` builds a worker around a handler function (sent to each child)."""

    queue: str
    concurrency: int
    retries: int
    grace: float
    name: str
    quiet: bool
    url: str | None  # --db; None: a Router's own store

    def build(self, handler: Callable[..., Any], storage: Any) -> Worker:
        """The worker these options describe around ``handler`` (a function or a
        Router), on ``storage``."""
        builder = (
            WorkerBuilder(self.name)
            .backend(storage)
            .concurrency(self.concurrency)
            .retry(RetryPolicy.retries(self.retries))
            .shutdown_grace(self.grace)
        )
        if not self.quiet:
            builder.on_event(_print_events)
        return builder.build(handler)


def _child_runnable(target: str, log_level: str) -> Worker | Monitor:
    """In a ``--processes`` child: the Worker or Monitor ``target`` names."""
    _child_logging(log_level)
    return runnable(import_target(target), target)


def _child_handler_worker(target: str, options: _HandlerOptions, log_level: str) -> Worker:
    """In a ``--processes`` child: a worker around the handler or Router ``target``
    names, on a connection of its own (to --db, or the Router's own store)."""
    _child_logging(log_level)
    handler = import_target(target)
    if options.url:
        store = open_storage(options.url, options.queue)
    elif isinstance(handler, Router):
        store = handler.storage_for(options.queue)
    else:
        raise BuildError(f"{target}: no --db to take its tasks from")
    return options.build(handler, store)


def _child_logging(level: str) -> None:
    """Show taskpipe's log records on stderr in a child process (it lives for the worker)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [pid {os.getpid()}]: %(message)s")
    )
    logger = logging.getLogger("taskpipe")
    logger.addHandler(handler)
    logger.setLevel(level.upper())


def _metrics_layer(store: Any) -> Any:
    """The metrics layer over ``store``; a clear error when prometheus-client is missing."""
    from .layers import metrics

    try:
        return metrics(store=store)
    except BuildError as exc:
        raise BadInput(str(exc)) from exc


@contextlib.contextmanager
def _serving_metrics(port: int | None, workers: list[Worker]) -> Iterator[None]:
    """With a port: each worker gets the metrics layer (outermost) unless it has one
    counting in the default registry, which is served on 127.0.0.1:port while the
    workers run."""
    if port is None:
        yield
        return
    from prometheus_client import REGISTRY, start_http_server

    from .layers.metrics import counts_in

    for w in workers:
        if not counts_in(w.layers, REGISTRY):  # (its own .metrics() already counts there)
            w.layers.insert(0, _metrics_layer(w.backend))
    try:
        server, thread = start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        raise BadInput(f"cannot serve metrics on 127.0.0.1:{port}: {exc}") from exc
    click.echo(f"metrics on http://127.0.0.1:{port}/metrics", err=True)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _router_storage(router: Router, target: str, queue: str, ctx: click.Context) -> Any:
    """The store a Router's worker takes tasks from: --queue when given, else the
    router store's queue; of --db (or TASKPIPE_DB) when given, else of the router."""
    if ctx.get_parameter_source("queue") is not ParameterSource.COMMANDLINE:
        queue = router.storage.queue
    state = _state()
    if state.url:
        return state.storage(queue)
    try:
        return router.storage_for(queue)
    except CapabilityError as exc:
        raise BadInput(f"{target}: {exc}") from exc


@contextlib.contextmanager
def _logging_to_stderr(level: str) -> Iterator[None]:
    """Show taskpipe's log records on stderr while the worker runs (and only then)."""
    logger = logging.getLogger("taskpipe")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# push -------------------------------------------------------------------------------------------
# The deepest nesting of arrays and objects push takes: far beyond any real task's
# args, and well within what the store's codec and `show` can handle.
MAX_JSON_DEPTH = 200


class _Unfit(ValueError):
    """JSON taskpipe does not take: NaN, infinities, a number too large for a float."""


def _json_constant(name: str) -> Any:
    raise _Unfit(f"{name} is not a JSON number (JSON has no NaN or infinities)")


def _json_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Unfit(
            f"the number {_shown(text, 40)} is too large for a float (the largest is about 1.8e308)"
        )
    return value


# One decoder for every line (json.loads with hooks would build one per call).
_DECODER = json.JSONDecoder(parse_constant=_json_constant, parse_float=_json_float)


def _loads(text: str, where: str) -> Any:
    """The JSON value in ``text``; ``BadInput`` naming ``where`` if it is not valid JSON
    or not one taskpipe stores faithfully (NaN, 1e400, a lone surrogate, deep nesting)."""
    if not _is_utf8(text):
        raise BadInput(f"{where} is not valid UTF-8 (was it typed in another encoding?)")
    try:
        value = _DECODER.decode(text)
    except _Unfit as exc:
        raise BadInput(f"{where} cannot be pushed: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{where} is not valid JSON: {exc}") from None
    except ValueError:  # an integer longer than sys.get_int_max_str_digits()
        digits = max(map(len, re.findall(r"\d+", text)))
        raise BadInput(
            f"{where} cannot be pushed: an integer has {digits} digits, more than Python "
            f"reads ({sys.get_int_max_str_digits()}): pass it as a string"
        ) from None
    except RecursionError:
        raise BadInput(
            f"{where} is nested more than {MAX_JSON_DEPTH} levels deep: flatten it"
        ) from None
    # Only a \u escape makes a lone surrogate, only many brackets deep nesting.
    if "\\u" in text or text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        problem = _json_problem(value)
        if problem:
            raise BadInput(f"{where} {problem}")
    return value


def _json_problem(value: Any) -> str | None:
    """What keeps a parsed JSON value from being pushed, if anything (without recursion:
    the value may be deep)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not _is_utf8(item):
                return (
                    f"holds a string with a lone surrogate ({_shown(item, 40)}), which is not text"
                )
        elif isinstance(item, (list, dict)):
            if depth >= MAX_JSON_DEPTH:
                return f"is nested more than {MAX_JSON_DEPTH} levels deep: flatten it"
            children = [*item, *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def _read_lines(stream: Iterable[bytes], name: str) -> Iterator[bytes]:
    try:
        yield from stream
    except OSError as exc:
        raise Failure(f"cannot read {name}: {exc.strerror or exc}") from exc


def _json_lines(lines: Iterable[bytes], name: str) -> Iterator[Any]:
    for number, raw in enumerate(_read_lines(lines, name), 1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        where = f"line {number} of {name}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte, column = raw[exc.start], exc.start + 1
            raise BadInput(
                f"{where} is not valid UTF-8 (byte 0x{byte:02x} at column {column}): "
                "save the file as UTF-8"
            ) from None
        if line.strip():
            yield _loads(line, where)


@cli.command(short_help="Push a task (JSON args), or a file of them.")
@click.argument("args", metavar="[ARGS]", required=False)
@click.option(
    "--file", "-f", "file", metavar="FILE", help="Push one task per line of JSON (- for stdin)."
)
@click.option("--queue", "-q", type=QUEUE, default="default", show_default=True)
@click.option(
    "--priority", "-p", type=_Int64(), default=0, show_default=True, help="Higher runs first."
)
@click.option("--run-after", type=DURATION, help="Delay before it is due: 30s, 10m, 2h, 1d.")
@click.option("--max-attempts", type=_Int64(min=1), help="Attempts before the task is dead.")
@click.option("--json", "as_json", is_flag=True, help="Print the id (or the count) as JSON.")
@_db_option
def push(
    args: str | None,
    file: str | None,
    queue: str,
    priority: int,
    run_after: float | None,
    max_attempts: int | None,
    as_json: bool,
) -> None:
    """Push a task whose args are the JSON ARGS, or one per line of --file."""
    if (args is None) == (file is None):
        raise BadInput(
            'give the task\'s args as JSON (e.g. taskpipe push \'{"to": "a@example.com"}\') '
            "or --file FILE with one JSON value per line, not both"
        )

    def task(value: Any) -> Task:
        delay = None if run_after is None else timedelta(seconds=run_after)
        return Task(value, priority=priority, run_after=delay, max_attempts=max_attempts)

    if args is not None:
        value = _loads(args, "ARGS")
        storage = _state().storage(queue)
        try:
            task_id = storage.push_task(task(value))
        except CodecError as exc:
            raise BadInput(f"cannot encode ARGS: {exc}") from exc
        if as_json:
            _echo_json({"id": task_id, "queue": queue})
        else:
            click.echo(f"pushed task {int(task_id)} to queue {queue}")
        return
    count = _push_file(file or "-", queue, task)  # file is set: checked above
    if as_json:
        _echo_json({"count": count, "queue": queue})
    else:
        click.echo(f"pushed {count} task{'s' if count != 1 else ''} to queue {queue}")


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _open_file(file: str) -> Any:
    """``--file``, opened to read bytes; ``BadInput`` saying why when it cannot be."""
    shown = _shown(file)
    problem = _path_problem(file)
    if problem:
        raise BadInput(f"invalid --file {shown}: {problem}")
    try:
        return open(file, "rb")  # closed by _push_file
    except FileNotFoundError:
        raise BadInput(f"file {shown} does not exist: check --file") from None
    except IsADirectoryError:
        raise BadInput(
            f"{shown} is a directory: --file takes a file with one JSON value per line"
        ) from None
    except OSError as exc:
        raise BadInput(f"cannot read {shown}: {exc.strerror or exc}") from None


def _push_file(file: str, queue: str, task: Callable[[Any], Task]) -> int:
    """Push one task per line of ``file``. A regular file is read twice: the first pass
    checks every line, so a bad one pushes nothing. stdin, a pipe (``--file <(…)``) or
    a device is read once, in batches: a bad line stops it, and says what was pushed."""
    if file == "-":
        stream, name, regular = sys.stdin.buffer, "stdin", False
    else:
        stream, name = _open_file(file), _shown(file)
        regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    pushed = 0
    try:
        total = None
        if regular:  # first pass: all valid, or nothing pushed
            total = sum(1 for _ in _json_lines(stream, name))
            stream.seek(0)
        storage = _state().storage(queue)
        bar_or_not = (
            click.progressbar(length=total, label=f"pushing to {queue}", file=sys.stderr)
            if total is not None and sys.stderr.isatty()  # a bar is for people, not for logs
            else contextlib.nullcontext(_NoBar())
        )
        with bar_or_not as bar:
            values = _json_lines(stream, name)
            while True:
                try:
                    chunk = [task(v) for v in itertools.islice(values, PUSH_BATCH)]
                except BadInput as exc:
                    if pushed:
                        exc.message += f" ({pushed} tasks before it were pushed)"  # type: ignore[misc]
                    raise
                if not chunk:
                    return pushed
                try:
                    storage.push_all(chunk)
                except CodecError as exc:
                    raise BadInput(
                        f"cannot encode a task of {name}: {exc} ({pushed} tasks pushed)"
                    ) from exc
                pushed += len(chunk)
                bar.update(len(chunk))
    finally:
        if file != "-":
            stream.close()


# tasks and show -----------------------------------------------------------------------------------
@cli.command(short_help="List tasks, newest first.")
@click.option(
    "--status",
    "-s",
    type=click.Choice(STATUS_NAMES),
    multiple=True,
    help="Only these statuses (repeatable).",
)
@click.option("--queue", "-q", type=QUEUE_FILTER, help="Only this queue (default: every queue).")
@click.option(
    "--limit", "-n", type=_Int64(min=0, max=INT64_MAX - 1), default=50, show_default=True
)  # asks limit + 1
@click.option("--offset", type=_Int64(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of tasks (TaskInfo fields).")
@_db_option
def tasks(
    status: tuple[str, ...], queue: str | None, limit: int, offset: int, as_json: bool
) -> None:
    """List tasks, newest first."""
    storage = _state().storage()
    found = storage.list_tasks(queue=queue, status=status or None, limit=limit + 1, offset=offset)
    more, found = len(found) > limit, found[:limit]
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo("no tasks" + (" (try a smaller --offset)" if offset else ""))
        return
    now = clock.now()
    rows = [
        [
            str(int(t.id)),
            t.queue,
            (t.status.value, STATUS_COLOURS.get(t.status.value, "white")),
            f"{t.attempts}/{t.max_attempts}" if t.max_attempts else str(t.attempts),
            str(t.priority),
            _ago(t.created_at, now),
            _ago(t.done_at if t.done_at else t.run_at, now),
            _preview(t.args),
        ]
        for t in found
    ]
    click.echo(
        _table(["ID", "QUEUE", "STATUS", "ATTEMPTS", "PRIO", "CREATED", "DUE/ENDED", "ARGS"], rows)
    )
    if more:
        click.echo(f"… more: --offset {offset + limit}", err=True)


def _show_text(t: TaskInfo) -> str:
    lines = [
        f"{click.style(f'task {int(t.id)}', bold=True)}  {_status(t.status)}  (queue {t.queue})",
        f"  args      {_dumps(t.args)}"
        + ("  (raw payload: not decodable)" if isinstance(t.args, bytes) else ""),
        f"  result    {'-' if t.result is None else _dumps(t.result)}",
        f"  priority  {t.priority}",
        f"  attempts  {t.attempts}" + (f" of {t.max_attempts}" if t.max_attempts else ""),
        f"  created   {_when(t.created_at)}",
        f"  due       {_when(t.run_at)}",
        f"  started   {_when(t.started_at)}",
        f"  finished  {_when(t.done_at)}",
    ]
    if t.started_at and t.done_at and t.done_at >= t.started_at:
        lines.append(f"  ran       {_span((t.done_at - t.started_at).total_seconds())}")
    if t.worker:
        lines.append(f"  worker    {t.worker}")
    if t.meta:
        lines.append(f"  meta      {_dumps(t.meta)}")
    if t.recoveries:
        lines.append("")
        lines.append(click.style(f"recoveries ({len(t.recoveries)})", bold=True))
    for r in t.recoveries:
        blamed = (
            "counted" if r.counted else "not counted: it ran beside others, so it runs alone next"
        )
        lines.append(
            f"  {_when(r.at)}: re-enqueued, worker {r.worker or '?'} stopped beating "
            f"(last seen {_when(r.last_seen)}); {blamed}"
        )
    if t.errors:
        lines.append("")
        lines.append(click.style(f"errors ({len(t.errors)})", bold=True))
    for e in t.errors:
        lines.append(f"  attempt {e.attempt}, {_when(e.at)}: {click.style(e.error, fg='red')}")
        for tb_line in (e.traceback or "").rstrip().splitlines():
            lines.append(f"      {tb_line}")
    return "\n".join(lines)


@cli.command(short_help="Show one task, its attempts and tracebacks.")
@click.argument("task_id", metavar="ID", type=_Int64(label="task id"))
@click.option("--json", "as_json", is_flag=True, help="One JSON object (TaskInfo fields).")
@_db_option
def show(task_id: int, as_json: bool) -> None:
    """Show one task: args, result, timings, and every failed attempt's traceback."""
    info = _state().storage().fetch_by_id(task_id)
    if as_json:
        _echo_json(info)
    else:
        click.echo(_show_text(info))


# retry, kill, purge ---------------------------------------------------------------------------------
def _each(
    ids: Sequence[int], action: Callable[[int], bool], done: str, refused: Callable[[TaskInfo], str]
) -> None:
    storage_fetch = _state().storage().fetch_by_id
    code = 0
    for task_id in ids:
        try:
            if action(task_id):
                click.echo(f"task {task_id} {done}")
                continue
            _err(refused(storage_fetch(task_id)))
            code = max(code, 1)
        except TaskNotFound as exc:
            _err(str(exc))
            code = 2
    if code:
        raise click.exceptions.Exit(code)


@cli.command(short_help="Run failed or dead tasks again now.")
@click.argument("ids", metavar="[ID]...", type=_Int64(label="task id"), nargs=-1)
@click.option(
    "--dead", "all_dead", is_flag=True, help="Retry every dead task (of --queue, or all)."
)
@click.option("--queue", "-q", type=QUEUE_FILTER, help="With --dead: only this queue.")
@_db_option
def retry(ids: tuple[int, ...], all_dead: bool, queue: str | None) -> None:
    """Run failed or dead tasks again now, with a fresh set of attempts."""
    if bool(ids) == all_dead:
        raise BadInput("give task ids, or --dead to retry every dead task")
    storage = _state().storage()
    if all_dead:
        count = storage.retry_dead(queue)
        click.echo(f"{count} dead task{'s' if count != 1 else ''} pending again")
        return
    _each(
        ids,
        storage.retry,
        "is pending again",
        lambda t: f"task {int(t.id)} is {t.status.value}: only failed or dead tasks can be retried",
    )


@cli.command(short_help="Make tasks dead (a running one's result is dropped).")
@click.argument("ids", metavar="ID...", type=_Int64(label="task id"), nargs=-1, required=True)
@_db_option
def kill(ids: tuple[int, ...]) -> None:
    """Make pending, failed or running tasks dead (a running one's result is discarded)."""
    storage = _state().storage()
    _each(ids, storage.kill, "killed", lambda t: f"task {int(t.id)} is already {t.status.value}")


@cli.command(short_help="Delete old done or dead tasks.")
@click.argument(
    "statuses", metavar="STATUS...", type=click.Choice(STATUS_NAMES), nargs=-1, required=True
)
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    help="Finished at least this long ago: 7d, 12h, 0.",
)
@click.option("--queue", "-q", type=QUEUE_FILTER, help="Only this queue (default: every queue).")
@_db_option
def purge(statuses: tuple[str, ...], older_than: float, queue: str | None) -> None:
    """Delete done and/or dead tasks finished more than --older-than ago."""
    storage = _state().storage()
    try:
        count = storage.purge(statuses, older_than, queue=queue)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    click.echo(f"purged {count} task{'s' if count != 1 else ''}")


# workers, queues, stats ---------------------------------------------------------------------------------
@cli.command(short_help="List worker runs and the tasks they hold.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of workers.")
@_db_option
def workers(as_json: bool) -> None:
    """List worker runs, with their last heartbeat and the tasks they hold."""
    found = _state().storage().list_workers()
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo("no workers")
        return
    now = clock.now()
    rows = [
        [
            w.name,
            w.run_id,
            ",".join(w.queues),
            w.hostname,
            str(w.pid),
            _ago(w.started_at, now),
            _ago(w.last_heartbeat, now),
            str(w.tasks_held),
        ]
        for w in found
    ]
    click.echo(
        _table(["NAME", "RUN ID", "QUEUES", "HOST", "PID", "STARTED", "LAST BEAT", "TASKS"], rows)
    )


@cli.command(short_help="List queues with their counts per status.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of queues with their counts.")
@_db_option
def queues(as_json: bool) -> None:
    """List the queues that hold tasks or are paused, with their counts per status."""
    storage = _state().storage()
    found = storage.list_queues()
    paused = storage.paused_queues() if storage.capabilities.pausing else set()
    listed = {q.name for q in found}
    found += [QueueInfo(name) for name in sorted(paused - listed)]  # paused, no task yet
    if as_json:
        _echo_json([{**jsonable(q), "total": q.total, "paused": q.name in paused} for q in found])
        return
    if not found:
        click.echo("no queues (no tasks yet)")
        return
    rows = [
        [
            q.name,
            *(str(getattr(q, s)) for s in STATUS_NAMES),
            str(q.total),
            "yes" if q.name in paused else "no",
        ]
        for q in found
    ]
    click.echo(_table(["QUEUE", *(s.upper() for s in STATUS_NAMES), "TOTAL", "PAUSED"], rows))


# pause, resume ----------------------------------------------------------------------------------
def _pausing_storage() -> Any:
    """The store, if it can record a queue's pause (else a one-line error, exit 2)."""
    storage = _state().storage()
    try:
        require(storage, "pausing", "pause or resume queues")
    except CapabilityError as exc:
        raise BadInput(str(exc)) from exc
    return storage


@cli.command(short_help="Pause a queue: its workers take no new tasks.")
@click.argument("queue", type=QUEUE_ARGUMENT)
@_db_option
def pause(queue: str) -> None:
    """Pause QUEUE: its workers, wherever they run, take none of its tasks from their
    next heartbeat until `taskpipe resume QUEUE`. Running tasks finish; pushes are
    kept."""
    storage = _pausing_storage()
    already = queue in storage.paused_queues()
    storage.pause_queue(queue)
    click.echo(f"queue {_shown(queue)} {'was already paused' if already else 'paused'}")


@cli.command(short_help="Resume a paused queue.")
@click.argument("queue", type=QUEUE_ARGUMENT)
@_db_option
def resume(queue: str) -> None:
    """Resume QUEUE after `taskpipe pause`: its workers take its tasks again from
    their next heartbeat."""
    storage = _pausing_storage()
    was_paused = queue in storage.paused_queues()
    storage.resume_queue(queue)
    click.echo(f"queue {_shown(queue)} {'resumed' if was_paused else 'was not paused'}")


_STAT_LABELS = {
    "done_last_hour": "done, last hour",
    "failed_last_hour": "failed attempts, last hour",
    "done_last_day": "done, last day",
    "failed_last_day": "failed attempts, last day",
    "oldest_pending_age": "oldest due pending",
    "mean_run_time": "mean run time",
}


def _stats_text(stats: dict[str, Any], queue: str | None) -> str:
    lines = [click.style(f"queue: {queue or 'all'}", bold=True)]
    for key in STATS_KEYS:
        value = stats.get(key)
        label = _STAT_LABELS.get(key, key)
        if key in STATUS_NAMES:
            label = click.style(key.ljust(26), fg=STATUS_COLOURS[key])
        else:
            label = label.ljust(26)
        if key in ("oldest_pending_age", "mean_run_time"):
            value = "-" if value is None else _span(value)
        lines.append(f"  {label} {value}")
    return "\n".join(lines)


_sleep = time.sleep  # the --watch pause (tests replace it)


@cli.command(short_help="Counts, throughput, lag and mean run time.")
@click.option("--queue", "-q", type=QUEUE_FILTER, help="Only this queue (default: every queue).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--watch", "-w", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option(
    "--every",
    type=DURATION,
    default="2s",
    show_default=True,
    help="With --watch: the refresh period.",
)
@_db_option
def stats(queue: str | None, as_json: bool, watch: bool, every: float) -> None:
    """Counts per status, throughput, the oldest due task's wait and the mean run time."""
    storage = _state().storage()

    def render() -> str:
        values = storage.stats(queue)
        if as_json:
            return json.dumps(jsonable(values), ensure_ascii=False)
        return _stats_text(values, queue)

    if not watch:
        click.echo(render())
        return
    tty = sys.stdout.isatty()
    previous = 0
    try:
        while True:
            text = render()
            if tty and previous:
                click.echo(
                    f"\x1b[{previous}F\x1b[J", nl=False
                )  # back up and clear: refresh in place
            click.echo(text)
            previous = text.count("\n") + 1
            _sleep(max(every, 0.1))
    except KeyboardInterrupt:
        pass


# Workflow runs ------------------------------------------------------------------------------------
RUN_STATES = ["running", "done", "failed"]


def _cut(text: str, width: int = 80) -> str:
    text = _printable(text)
    return text if len(text) <= width else text[: width - 1] + "…"


_RUN_COLOURS = {"running": "blue", "done": "green", "failed": "red"}


def _run_state(state: str) -> str:
    colour = _RUN_COLOURS.get(state)
    return click.style(state, fg=colour) if colour else state


@cli.command(short_help="List workflow runs, newest first.")
@click.option("--workflow", "-w", help="Only runs of this workflow.")
@click.option("--state", type=click.Choice(RUN_STATES), help="Only runs in this state.")
@click.option("--limit", "-n", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of runs (RunStatus fields).")
@_db_option
def runs(workflow: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List workflow runs (every queue), newest first, with their state and steps."""
    found = _state().storage().list_runs(workflow=workflow, state=state, limit=limit)
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo("no runs")
        return
    now = clock.now()
    rows = [
        [
            r.run_id,
            r.workflow or "?",
            (r.state, _RUN_COLOURS.get(r.state)),  # styled after padding
            str(sum(1 for step in r.steps if step.state is Status.DONE)) + f"/{len(r.steps)}",
            _ago(r.created_at, now),
            _cut(r.error) if r.error else ("-" if r.result is None else _preview(r.result)),
        ]
        for r in found
    ]
    click.echo(_table(["RUN ID", "WORKFLOW", "STATE", "STEPS", "STARTED", "RESULT / ERROR"], rows))


@cli.command(short_help="Show one workflow run and each of its steps.")
@click.argument("run_id", metavar="RUN_ID")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (RunStatus fields).")
@_db_option
def run(run_id: str, as_json: bool) -> None:
    """Show one workflow run: its state, and each step's state, result and error."""
    if not run_id or ":" in run_id or not run_id.isprintable():
        raise BadInput(f"not a run id: {_shown(run_id)} (see taskpipe runs)")
    status = _state().storage().workflow_status(run_id)
    if as_json:
        _echo_json(status)
        return
    lines = [
        f"{click.style(f'run {status.run_id}', bold=True)}  {_run_state(status.state)}"
        f"  (workflow {status.workflow or '?'})",
        f"  started   {_when(status.created_at)}",
        f"  finished  {_when(status.finished_at)}",
    ]
    if status.state == "done":
        lines.append(f"  result    {_dumps(status.result)}")
    if status.error:
        lines.append(f"  error     {click.style(status.error, fg='red')}")
    lines.append("")
    rows = [
        [
            step.step,
            step.name or "",
            _status(step.state) if step.state is not None else "-",
            ",".join(str(int(t)) for t in step.tasks[:5]) + ("…" if len(step.tasks) > 5 else ""),
            str(step.attempts),
            _cut(step.error) if step.error else _preview(step.result),
        ]
        for step in status.steps
    ]
    lines.append(_table(["STEP", "FUNCTION", "STATE", "TASKS", "ATTEMPTS", "RESULT / ERROR"], rows))
    click.echo("\n".join(lines))


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _loopback(host: str) -> bool:
    """True for an address that only this machine reaches."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@cli.command(short_help="Serve the board: a web page of the store's queues and tasks.")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--read-only", is_flag=True, help="Show, never change: no action is offered.")
@click.option(
    "--token",
    envvar="TASKPIPE_BOARD_TOKEN",
    show_envvar=True,
    help="Every request needs it (open the page as /?token=…); required off loopback.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Bind an address other machines reach without a token (anyone there can act).",
)
@click.option("--quiet", is_flag=True, help="Do not log a line per request.")
@_db_option
def board(
    host: str, port: int, read_only: bool, token: str | None, insecure_no_auth: bool, quiet: bool
) -> None:
    """Serve the board: queues, tasks, schedules and workflow runs, and actions on
    them (retry, kill, delete, push, pause), as a web page and a JSON API under /api/.

    It binds 127.0.0.1 by default; another address needs --token (or
    --insecure-no-auth). Ctrl-C stops it."""
    from .board import make_app
    from .board.app import loopback_hosts_only
    from .board.server import make_board_server

    if not _loopback(host) and token is None and not insecure_no_auth:
        raise BadInput(
            f"--host {_shown(host)} is reachable from other machines: give --token "
            "(or --insecure-no-auth to serve it to anyone who can reach it)"
        )
    if token is not None and len(token) < 8:
        raise BadInput("--token must be at least 8 characters")
    app: Any = make_app(_state().storage(), read_only=read_only, token=token)
    if token is None and _loopback(host):
        app = loopback_hosts_only(app)  # a rebound DNS name of another site is refused
    try:
        server = make_board_server(app, host, port, quiet=quiet)
    except OSError as exc:
        raise Failure(f"cannot serve on {_shown(host)}:{port}: {exc.strerror or exc}") from None
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{server.server_port}/"
    click.echo(f"taskpipe board on {url}" + ("?token=…" if token else "") + " (Ctrl-C stops it)")
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: ``taskpipe …`` (also ``python -m taskpipe …``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="taskpipe")
