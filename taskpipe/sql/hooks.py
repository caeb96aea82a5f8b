"""SQLite's cross-process wake-ups: the change probe, and one registry per file.

Every SQL store shares one ``WakeRegistry`` per database (per file, for SQLite: two
``connect()`` calls on the same path share it). A worker registers its
``WorkerContext`` under its queue for as long as it polls; a push, once committed,
calls ``notify(queue)``, which wakes those contexts. ``WorkerContext.wake()`` keeps a
pending flag, so a push that lands between a worker's empty claim and its wait is
not lost: the wait returns at once.

Pushes made by other processes cannot call ``notify``. For a hooked store
(``SqliteStorage.with_hook``) the registry runs a ``ChangeProbe``: one thread per
database file per process, alive while at least one hooked worker polls. It watches
the file's directory with inotify (Linux; no CPU while nothing happens) or, where
inotify is unavailable, reads ``PRAGMA data_version`` every ``POLL_INTERVAL``. On a
change it reads ``data_version`` on its own connection (which changes on any other
connection's commit, including this process's own acks and heartbeats), then checks
cheaply whether anything is due in the watched queues before waking their workers.
The worker's polling strategy stays the safety net.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import sqlite3
import struct
import sys
import threading
import weakref
from typing import Any

import peewee as pw

from .. import clock
from ..wakeups import Waiter, WakeRegistry
from .queries import Queries

__all__ = [
    "ChangeProbe",
    "Waiter",
    "WakeRegistry",
    "database_path",
    "registry_for",
]  # Waiter, WakeRegistry: re-exported

log = logging.getLogger("taskpipe.hooks")

# Without inotify: how often the probe reads PRAGMA data_version. Measured on a 2-vCPU
# machine, idle worker process: 5 ms costs ~2.5-3.5 % of a core (p50 pick-up ~4 ms);
# 10 ms costs ~1.5-1.8 % (p50 ~6 ms). With inotify: ~0.1 %, p50 ~1 ms.
POLL_INTERVAL = 0.01
# With inotify: how often the probe reads data_version anyway, in case an event is missed.
SAFETY_INTERVAL = 1.0
# After a write is seen, the probe stops listening this long and then looks once: a
# commit is several writes, and its data_version changes only after the last of them.
COALESCE = 0.001
# After a push from this process (which woke its workers itself), the probe holds off
# this long, so that it does not compete with the workers' claims for the GIL.
LOCAL_PUSH_QUIET = 0.002
# Set False to use data_version polling even where inotify works (tests use it).
USE_INOTIFY = True

# The stores' own "anything due in this queue?" (qmark style: the probe uses sqlite3).
_DUE = Queries().anything_due


_lock = threading.Lock()
_by_db: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_by_path: dict[str, WakeRegistry] = {}


def database_path(db: Any) -> str | None:
    """The real path of a SQLite database file, or None (in memory, or not SQLite)."""
    if not isinstance(db, pw.SqliteDatabase) or getattr(db, "taskpipe_lock", None) is not None:
        return None
    name = str(db.database or "")
    if name.startswith("file:"):
        name, _, query = name[5:].partition("?")
        if "mode=memory" in query:
            return None
    if not name or name == ":memory:":
        return None
    return os.path.realpath(name)


def registry_for(db: Any) -> WakeRegistry:
    """The wake-up registry of ``db`` (shared by every database object on one file)."""
    registry = _by_db.get(db)
    if registry is not None:
        return registry
    with _lock:
        registry = _by_db.get(db)
        if registry is None:
            path = database_path(db)
            if path is None:
                registry = WakeRegistry(None)
            else:
                registry = _by_path.get(path)
                if registry is None:
                    registry = _by_path[path] = WakeRegistry(path, probe=ChangeProbe)
            _by_db[db] = registry
        return registry


def _forget_after_fork() -> None:
    # A child process inherits the registries but not the threads: start afresh.
    global _lock, _by_db, _by_path
    _lock = threading.Lock()
    _by_db = weakref.WeakKeyDictionary()
    _by_path = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class ChangeProbe(threading.Thread):
    """Notices other processes' commits to one database file and wakes the workers of
    the queues that have something due (see the module docstring)."""

    def __init__(self, registry: WakeRegistry):
        if registry.path is None:
            raise ValueError("a change probe needs a database file, not an in-memory database")
        super().__init__(name=f"taskpipe-probe-{os.path.basename(registry.path)}", daemon=True)
        self.registry = registry
        self.path = registry.path
        self.mode = "starting"
        self._watch: _Inotify | _Ticker | None = None

    def nudge(self) -> None:
        """Make the probe look at once (and exit if nobody needs it)."""
        watch = self._watch
        if watch is not None:
            watch.nudge()

    def run(self) -> None:
        """Watch, and wake due queues, until no hooked worker is left."""
        watch: _Inotify | _Ticker | None = _Inotify.open(self.path) if USE_INOTIFY else None
        if watch is None:
            watch = _Ticker(POLL_INTERVAL)
        self._watch = watch
        self.mode = watch.mode
        conn = None
        try:
            conn = sqlite3.connect(
                self.path, timeout=1.0, isolation_level=None, check_same_thread=False
            )
            version = self._version(conn)
            self._check(conn)  # a commit just before the first read is not missed
            cooling = False  # files were just written: pause before listening again
            while not self.registry.probe_may_stop(self):
                if cooling:
                    # One commit is several writes (and a claim and an ack follow a push):
                    # let them gather, then look once. After this process's own push,
                    # whose workers it woke itself, hold off a little longer.
                    hold = self.registry.last_push + LOCAL_PUSH_QUIET - clock.real_monotonic()
                    watch.pause(max(COALESCE, hold))
                    hinted = watch.drain()
                else:
                    hinted = watch.wait(watch.interval)
                    if (
                        hinted
                        and clock.real_monotonic() < self.registry.last_push + LOCAL_PUSH_QUIET
                    ):
                        cooling = True
                        continue
                current = self._version(conn)
                if current is not None and current != version:
                    version = current
                    self._check(conn)
                cooling = hinted
        except Exception:  # pragma: no cover - the polling strategy is still there
            log.exception(
                "taskpipe change probe on %s failed; workers fall back to polling", self.path
            )
            self.registry.probe_failed(self)
        finally:
            self._watch = None
            watch.close()
            if conn is not None:
                conn.close()

    def _version(self, conn: sqlite3.Connection) -> int | None:
        try:
            return conn.execute("PRAGMA data_version").fetchall()[0][0]
        except sqlite3.Error as exc:
            log.debug("probe: data_version failed: %s", exc)
            return None

    def _check(self, conn: sqlite3.Connection) -> None:
        """Wake the watched queues that have a task due now."""
        now = clock.timestamp()
        for queue in self.registry.watched_queues():
            try:
                due = conn.execute(_DUE, (queue, now)).fetchall()  # fetchall: end the read at once
            except sqlite3.Error as exc:  # no tables yet, busy: the strategy covers it
                log.debug("probe: due check on %r failed: %s", queue, exc)
                continue
            if due:
                self.registry.wake_queue(queue)


class _Ticker:
    """The fallback: look every ``interval`` seconds."""

    mode = "data_version"

    def __init__(self, interval: float):
        self.interval = interval
        self._event = threading.Event()

    def wait(self, timeout: float) -> bool:
        if self._event.wait(min(timeout, self.interval)):
            self._event.clear()
        return False

    def pause(self, seconds: float) -> None:
        self.wait(seconds)

    def drain(self) -> bool:
        return False

    def nudge(self) -> None:
        self._event.set()

    def close(self) -> None:
        pass


_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


class _Inotify:
    """inotify on the database's directory (the ``-wal`` file comes and goes), through
    libc with ctypes. ``open()`` returns None where it cannot work."""

    mode = "inotify"
    interval = SAFETY_INTERVAL

    def __init__(self, fd: int, prefix: bytes):
        self.fd = fd
        self.prefix = prefix
        # nudge() comes from other threads: it must never write to the pipe once close()
        # has run (its fd number may belong to another file by then).
        self._lock = threading.Lock()
        self._closed = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._poll.register(self._r, select.POLLIN)

    @classmethod
    def open(cls, path: str) -> _Inotify | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
            if libc.inotify_add_watch(fd, os.fsencode(os.path.dirname(path)), mask) < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, "inotify_add_watch")
        except (OSError, AttributeError) as exc:
            log.info("inotify unavailable (%s): the probe polls PRAGMA data_version", exc)
            return None
        return cls(fd, os.fsencode(os.path.basename(path)))

    def wait(self, timeout: float) -> bool:
        """Wait for a write to the database's files; True if one was seen."""
        hinted = False
        for fd, _ in self._poll.poll(timeout * 1000):
            if fd == self._r:
                self._clear_nudges()
                continue
            hinted = self.drain() or hinted
        return hinted

    def pause(self, seconds: float) -> None:
        """Sleep without watching the files (a nudge still interrupts)."""
        if select.select([self._r], [], [], seconds)[0]:
            self._clear_nudges()

    def _clear_nudges(self) -> None:
        try:
            os.read(self._r, 4096)
        except BlockingIOError:
            pass

    def drain(self) -> bool:
        """Read the pending events; True if one was about the database's files."""
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if name.startswith(self.prefix):
                    seen = True

    def nudge(self) -> None:
        """Interrupt ``wait()``/``pause()``; from any thread, a no-op once closed."""
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._w, b"x")  # non-blocking: never holds the lock long
            except OSError:  # BlockingIOError: the pipe is full, a nudge is pending anyway
                pass

    def close(self) -> None:
        """Close the inotify descriptor and the nudge pipe (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self.fd, self._r, self._w):
                try:
                    os.close(fd)
                except OSError:
                    pass
