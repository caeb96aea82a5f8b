"""What every SQL store shares: push, claim, ack, heartbeat and orphan recovery.

A dialect (``sqlite.py``, later ``postgres.py``) supplies the database, the few
statements that differ (``Queries``), how to open a write transaction and how to
recognise "the database is busy". Everything else lives here, once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import peewee as pw

from .. import clock
from ..backend import Outcome, OutcomeKind, TaskSink
from ..codec import resolve_codec
from ..config import Config
from ..errors import CodecError, PushError, StorageError
from ..task import Task, TaskId
from . import hooks, schema
from .driver_errors import DATABASE_ERRORS, INTEGRITY_ERRORS, OPERATIONAL_ERRORS
from .expose import SqlExpose
from .queries import Queries

__all__ = ["SqlStorage"]

log = logging.getLogger("taskpipe.store")

# How long a write keeps retrying through "database is locked" before giving up.
LOCKED_RETRY_SECONDS = 60.0
STALE_WORKER_ROWS_AFTER = 24 * 3600.0


class SqlStorage(SqlExpose, TaskSink):
    """A queue in a SQL database: the shared logic of ``SqliteStorage`` and friends.

    ``SqlStorage(db, queue="default", codec=JsonCodec, config=Config())``.
    """

    queries: Queries = Queries()
    #: True when idle workers also watch for other processes' pushes (``with_hook``).
    hooked: bool = False

    def __init__(
        self,
        db: pw.Database,
        queue: str | None = None,
        codec: Any = None,
        config: Config | None = None,
    ):
        if not isinstance(db, pw.Database):
            raise TypeError(f"{type(self).__name__} needs a peewee database (use taskpipe.sqlite.connect(path)), got {db!r}")
        config = config or Config()
        if queue is not None:
            config = config.with_queue(queue)
        self.db = db
        self.config = config
        self.queue = config.queue
        self.codec = resolve_codec(codec)
        self.models = schema.models_for(db)
        self._guard = getattr(db, "taskpipe_lock", None) or contextlib.nullcontext()
        self._hostname = socket.gethostname()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.db.database!r}, queue={self.queue!r})"

    # Set-up ------------------------------------------------------------------------
    @classmethod
    def setup(cls, db: Any) -> None:
        """Create or migrate taskpipe's tables; idempotent, safe at every start.
        Accepts a database or a store."""
        db = getattr(db, "db", db)
        with getattr(db, "taskpipe_lock", None) or contextlib.nullcontext():
            schema.setup(db)

    # Dialect hooks -------------------------------------------------------------------
    def _write_tx(self) -> Any:
        """A transaction that takes the write lock at once (no upgrade deadlocks)."""
        return self.db.atomic()

    def _is_busy(self, exc: Exception) -> bool:
        """True when ``exc`` means "another writer holds the lock: try again"."""
        text = str(exc).lower()
        return "locked" in text or "busy" in text

    def _notify_pushed(self) -> None:
        """Called after a push commits: wake this process's workers waiting on the queue."""
        hooks.registry_for(self.db).notify(self.queue)

    # Plumbing ------------------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.db.execute_sql(sql, params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        return self.db.cursor().executemany(sql, rows)

    def _retrying(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` again while the database is busy: a lock is waited out, not fatal
        (for up to ``LOCKED_RETRY_SECONDS``, on top of the driver's own busy timeout)."""
        deadline = None
        delay = 0.005
        while True:
            try:
                with self._guard:
                    return fn(*args)
            except OPERATIONAL_ERRORS as exc:
                if not self._is_busy(exc):
                    raise
                now = clock.real_monotonic()
                if deadline is None:
                    deadline = now + LOCKED_RETRY_SECONDS
                elif now > deadline:
                    raise
                log.debug("database busy, retrying in %.3fs: %s", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _missing_tables(self, exc: Exception) -> bool:
        return "no such table" in str(exc).lower() or "does not exist" in str(exc).lower()

    def _storage_error(self, exc: Exception) -> Exception:
        if self._missing_tables(exc):
            try:
                schema.check_schema(self.db)
            except StorageError as missing:
                return missing
        return StorageError(f"{type(exc).__name__}: {exc}")

    # Pushing -------------------------------------------------------------------------
    def _row(self, task: Task, now: float) -> tuple:
        try:
            meta = msgspec.json.encode(task.meta).decode() if task.meta else None
        except (TypeError, ValueError, OverflowError) as exc:  # a CodecError, like the args
            raise CodecError(f"meta: {exc}") from exc
        return (
            task.id,
            self.queue,
            self.codec.encode(task.args),
            task.priority,
            task.run_at(now),
            task.max_attempts,
            meta,
            task.key,
            now,
        )

    def _row_for_args(self, args: Any, now: float) -> tuple:
        return (None, self.queue, self.codec.encode(args), 0, now, None, None, None, now)

    def _after_push(self) -> None:
        """Wake workers once the push is committed: now, or when the caller's own
        transaction commits."""
        if self.db.in_transaction():
            self.db.after_commit(self._notify_pushed)
        else:
            self._notify_pushed()

    def _push_error(self, exc: Exception) -> PushError:
        if isinstance(exc, OverflowError):
            return PushError(f"push rejected: a number does not fit in the store ({exc})")
        if isinstance(exc, INTEGRITY_ERRORS):
            return PushError(f"push rejected by the store (duplicate id?): {exc}")
        return PushError(f"push failed: {self._storage_error(exc)}")

    def _insert(self, rows: list[tuple]) -> list[TaskId]:
        try:
            ids = self._retrying(self._insert_once, rows)
        except (*DATABASE_ERRORS, OverflowError) as exc:
            raise self._push_error(exc) from exc
        self._after_push()
        return ids

    def _insert_once(self, rows: list[tuple]) -> list[TaskId]:
        simple = all(row[0] is None and row[7] is None for row in rows)
        q = self.queries
        if simple and len(rows) == 1:
            return [TaskId(self._execute(q.insert, rows[0]).lastrowid)]
        with self._write_tx():
            if simple:
                self._executemany(q.insert, rows)
                last = self._execute("SELECT last_insert_rowid()").fetchone()[0]
                return [TaskId(i) for i in range(last - len(rows) + 1, last + 1)]
            ids = []
            for row in rows:
                if row[7] is None:
                    ids.append(TaskId(self._execute(q.insert, row).lastrowid))
                    continue
                cursor = self._execute(q.insert_keyed, row)
                if cursor.rowcount == 1:
                    ids.append(TaskId(cursor.lastrowid))
                else:
                    ids.append(TaskId(self._execute(q.id_for_key, (row[7],)).fetchone()[0]))
            return ids

    # Claiming ------------------------------------------------------------------------
    def poll(self, ctx: Any) -> Iterator[Task | None]:
        """Claim up to ``ctx.free_slots()`` due tasks at a time, highest priority, then
        earliest due, then oldest first; one atomic statement per claim. When nothing
        is due, wait as the polling strategy says (or until woken) and yield None."""
        strategy = self.config.strategy.start()
        idle = False
        claimed: list[Task] = []  # claimed, not yet handed to the worker
        wakers = hooks.registry_for(self.db)
        # Registered for the whole run, not just while waiting: a push between an empty
        # claim and the wait sets the context's pending flag, so the wait returns at once.
        wakers.register(self.queue, ctx, cross_process=self.hooked and not getattr(ctx, "until_idle", False))
        try:
            while not ctx.stopping:
                wanted = min(ctx.free_slots(), self.config.claim_batch)
                tasks: list[Task] = []
                if wanted > 0:
                    try:
                        tasks = self._retrying(self._claim, ctx, wanted, idle)
                    except DATABASE_ERRORS as exc:
                        ctx.report(self._storage_error(exc))
                if tasks:
                    idle = False
                    strategy.reset()
                    claimed = tasks[::-1]
                    while claimed:
                        yield claimed.pop()
                    continue
                # After a wake-up (a push, a finished task) claim at once; after a
                # silent timeout, look with a cheap read before taking the write lock.
                idle = not ctx.wait(strategy.next_delay())
                yield None
        finally:
            wakers.unregister(self.queue, ctx)
            if claimed:  # the worker stopped mid-batch: hand the rest back at once
                self._release(claimed)

    def _release(self, tasks: Sequence[Task]) -> None:
        """Put claimed tasks that never started back to Pending (attempt not counted)."""
        try:
            self.ack([Outcome(task, OutcomeKind.RELEASE) for task in tasks])
        except DATABASE_ERRORS as exc:
            log.warning("could not hand back %d claimed task(s): %s", len(tasks), exc)

    def _claim(self, ctx: Any, limit: int, check_first: bool) -> list[Task]:
        q = self.queries
        now = clock.timestamp()
        if check_first and self._execute(q.anything_due, (self.queue, now)).fetchone() is None:
            return []
        lease = ctx.new_lease()
        rows = self._execute(q.claim, (lease, ctx.run_id, now, self.queue, now, limit)).fetchall()
        if len(rows) > 1:
            rows.sort(key=lambda r: (-r[2], r[3], r[0]))
        queue = self.queue
        return [
            Task(
                None,
                id=TaskId(row[0]),
                priority=row[2],
                max_attempts=row[5],
                meta=msgspec.json.decode(row[6]) if row[6] else {},
                attempt=row[4],
                queue=queue,
                lease=lease,
                payload=row[1],
            )
            for row in rows
        ]

    # Acknowledging ---------------------------------------------------------------------
    def ack(self, outcomes: Sequence[Outcome]) -> None:
        """Record a batch of outcomes in one transaction. An outcome whose task is no
        longer running under its lease (a zombie's, or killed) is marked
        ``accepted = False`` and changes nothing."""
        if outcomes:
            self._retrying(self._ack_once, outcomes)

    def _ack_once(self, outcomes: Sequence[Outcome]) -> None:
        q = self.queries
        now = clock.timestamp()
        done = [o for o in outcomes if o.kind is OutcomeKind.DONE]
        rows = [(self._encode_result(o), now, int(o.task.id), o.task.lease) for o in done]
        with self._write_tx():
            if rows:
                changed = self._executemany(q.ack_done, rows).rowcount
                if changed != len(rows):
                    for outcome in done:
                        found = self._execute(q.ack_accepted, (int(outcome.task.id), outcome.task.lease, now))
                        outcome.accepted = found.fetchone() is not None
            for o in outcomes:
                if o.kind is not OutcomeKind.DONE:
                    o.accepted = self._ack_other(o, now)

    def _ack_other(self, o: Outcome, now: float) -> bool:
        q = self.queries
        task_id, lease = int(o.task.id), o.task.lease
        if o.kind is OutcomeKind.RELEASE:
            return self._execute(q.ack_release, (task_id, lease)).rowcount == 1
        if o.kind is OutcomeKind.INTERRUPTED:
            changed = self._execute(q.ack_interrupted, (now + o.delay, task_id, lease)).rowcount == 1
        elif o.kind is OutcomeKind.RETRY:
            changed = self._execute(q.ack_failed, ("failed", now + o.delay, None, task_id, lease)).rowcount == 1
        else:  # DEAD
            changed = self._execute(q.ack_failed, ("dead", now, now, task_id, lease)).rowcount == 1
        if changed:
            self._execute(q.insert_error, (task_id, o.task.attempt, o.error or "", o.traceback, now))
        return changed

    def _encode_result(self, outcome: Outcome) -> bytes | None:
        if outcome.result is None:
            return None
        try:
            return self.codec.encode(outcome.result)
        except CodecError as exc:
            log.warning("task %s: result kept as its repr: %s", outcome.task.id, exc)
            return self.codec.encode(repr(outcome.result))

    # Heartbeat and orphans ---------------------------------------------------------------
    def heartbeat(self, ctx: Any) -> Iterator[float]:
        """Each step: record that this worker is alive and re-enqueue the running tasks
        of workers silent for ``reenqueue_orphaned_after``; then yield the seconds
        until the next beat is due."""
        first = True
        while True:
            try:
                self._retrying(self._beat, ctx, first)
                first = False
            except DATABASE_ERRORS as exc:
                ctx.report(self._storage_error(exc))
            yield self.config.keep_alive

    def _beat(self, ctx: Any, first: bool) -> None:
        q = self.queries
        now = clock.timestamp()
        with self._write_tx():
            self._execute(q.beat, (ctx.run_id, ctx.name, self.queue, self._hostname, os.getpid(), now, now))
            self._forget_dead_local_runs(ctx)
            if first:
                self._execute(q.forget_stale_workers, (now - STALE_WORKER_ROWS_AFTER,))
            self._recover_orphans(now)

    def _forget_dead_local_runs(self, ctx: Any) -> None:
        """A run on this host whose process is gone holds nothing: forget it at the next
        beat, so its tasks need not wait ``reenqueue_orphaned_after``."""
        for run_id, pid in self._execute(self.queries.same_host_runs, (self._hostname, ctx.run_id)).fetchall():
            if not _process_alive(pid):
                self._execute(self.queries.forget_worker, (run_id,))

    def _recover_orphans(self, now: float) -> list[tuple]:
        q = self.queries
        limit = self.config.max_recoveries
        alive_since = now - self.config.reenqueue_orphaned_after
        rows = self._execute(q.recover_orphans, (limit, limit, now, alive_since)).fetchall()
        for task_id, status, recoveries, attempts in rows:
            if status == "dead":
                error = f"its worker died {recoveries} times while running it"
                self._execute(q.insert_error, (task_id, attempts + 1, error, None, now))
                log.warning("task %s is dead: %s", task_id, error)
            else:
                log.info("task %s re-enqueued: its worker stopped beating", task_id)
        return rows

    # Keyed tasks (cron ticks) -----------------------------------------------------------
    def last_key(self, prefix: str) -> str | None:
        """The greatest task key that starts with ``prefix`` in this database (any queue,
        any status), or None: one range lookup on the unique key index. A cron stream
        finds the last tick it recorded with it."""
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"last_key() needs a non-empty prefix, got {prefix!r}")
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # 'cron:a:' -> 'cron:a;'
        job = self.models.Job
        query = (
            job.select(job.key)
            .where((job.key >= prefix) & (job.key < upper))
            .order_by(job.key.desc())
            .limit(1)
        )
        try:
            return self._retrying(query.scalar)
        except DATABASE_ERRORS as exc:
            raise self._storage_error(exc) from exc

    def retire(self, ctx: Any) -> None:
        """The worker stopped cleanly: forget its run."""
        try:
            self._retrying(self._execute, self.queries.forget_worker, (ctx.run_id,))
        except DATABASE_ERRORS as exc:
            log.warning("could not unregister worker %s: %s", ctx.run_id, exc)

    def close_thread_connection(self) -> None:
        """Close this thread's connection (each thread opens its own)."""
        if getattr(self.db, "taskpipe_lock", None) is not None:
            return  # one shared connection (":memory:"): it lives as long as the database
        if not self.db.is_closed() and not self.db.in_transaction():
            self.db.close()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True
