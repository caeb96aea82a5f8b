"""``SqlStorage``: the store contract (``taskpipe/store.py``) on a SQL database, once.

Everything here is dialect-neutral: what an engine spells its own way comes from its
``Dialect`` (``dialect.py``): the write transaction, inserts returning ids, the claim,
upserts, error classification, DDL and the cross-process waker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import msgspec
import peewee as pw

from .. import clock
from ..config import Config
from ..context import WorkerContext
from ..errors import OutcomeRefused, PushError, SetupError, StorageError
from ..store import Capabilities, Claim, Outcome, OutcomeKind, Row, Store, safe_text
from ..task import Status, TaskId
from . import schema
from .dialect import Dialect, ErrorKind
from .expose import SqlExpose

__all__ = ["SqlStorage"]

log = logging.getLogger("taskpipe.store")

T = TypeVar("T")

# How long a write keeps retrying through "database is locked" before giving up.
LOCKED_RETRY_SECONDS = 60.0
STALE_WORKER_ROWS_AFTER = 24 * 3600.0
# A run on this host whose process is alive (and not stopped) is alive, even if a busy
# write lock kept its beat from landing; up to this many orphan windows of silence.
LIVE_PID_PATIENCE = 10
_RESULT_TYPES = (bytes, bytearray, memoryview, type(None))  # what a codec gives
_FULL_HINT = (
    "free space on the disk that holds the database, or purge finished tasks (taskpipe purge)"
)


class SqlStorage(SqlExpose, Store):
    """A queue in a SQL database: ``SqlStorage(db, queue="default", codec=JsonCodec,
    config=Config())``. Engines subclass it with their ``dialect``."""

    capabilities = Capabilities(
        introspection=True,
        keys=True,
        follow_ups=True,
        outcomes=True,
        recovery=True,
        joins=True,
        queues=True,
        rate_limits=True,
        pausing=True,
    )
    dialect: Dialect = Dialect()

    def __init__(
        self,
        db: pw.Database,
        queue: str | None = None,
        codec: Any = None,
        config: Config | None = None,
    ):
        wanted = self.dialect.database_class
        if not isinstance(db, wanted):
            raise TypeError(
                f"{type(self).__name__} needs a peewee {wanted.__name__} "
                f"({self.dialect.connect_hint}), got {db!r}"
            )
        super().__init__(queue, codec, config)
        self.db = db
        self.models = schema.models_for(db)
        self.wakeups = self.dialect.wakeups(db)
        self._guard = getattr(db, "taskpipe_lock", None) or contextlib.nullcontext()
        self._hostname = socket.gethostname()
        self._host_id = host_identity()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.db.database!r}, queue={self.queue!r})"

    @property
    def hooked(self) -> bool:
        """True when other processes' pushes wake this store's idle workers."""
        return self.capabilities.wakeups

    # Set-up ------------------------------------------------------------------------
    @classmethod
    def setup(cls, db: Any) -> None:
        """Create or migrate taskpipe's tables; idempotent, safe at every start (and
        from several processes at once). Accepts a database or a store."""
        db = getattr(db, "db", db)
        dialect = cls.dialect
        guard = getattr(db, "taskpipe_lock", None) or contextlib.nullcontext()

        def once() -> None:
            with guard:
                dialect.setup(db)

        try:
            _retry_busy(dialect, once, db)
        except dialect.errors as exc:
            raise SetupError(
                f"could not set up taskpipe's tables: {type(exc).__name__}: {exc}"
            ) from exc

    def check_setup(self) -> None:
        """Raise ``SetupError`` (saying what to run) when ``setup()`` was never run."""
        self._run(self.dialect.check_schema, self.db)

    # Plumbing ------------------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.dialect.execute(self.db, sql, params)

    def _write_tx(self) -> Any:
        return self.dialect.write_tx(self.db)

    def _retrying(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` again while the database is busy: a lock is waited out, not fatal
        (for up to ``LOCKED_RETRY_SECONDS``, on top of the driver's own busy timeout)."""

        def guarded() -> T:
            with self._guard:
                return fn(*args)

        return _retry_busy(self.dialect, guarded, self.db)

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``_retrying``, with driver errors turned into ``StorageError`` (``SetupError``
        when the tables are missing)."""
        try:
            return self._retrying(fn, *args)
        except self.dialect.errors as exc:
            raise self._storage_error(exc) from exc

    def _storage_error(self, exc: BaseException) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        kind = self.dialect.classify(exc)
        if kind in (ErrorKind.MISSING, ErrorKind.OTHER):
            try:
                with self._guard:
                    self.dialect.check_schema(self.db)
            except SetupError as missing:
                return missing
            except self.dialect.errors:
                pass
        if kind is ErrorKind.FULL:
            return StorageError(f"the database or disk is full: {_FULL_HINT}")
        return StorageError(f"{type(exc).__name__}: {exc}")

    # Pushing -------------------------------------------------------------------------
    def insert(self, rows: Sequence[Row]) -> list[TaskId]:
        """Write ``rows`` in one transaction (all or nothing), ids in order; a keyed
        row whose key exists is skipped and its id returned."""
        refused: tuple[type[BaseException], ...] = (*self.dialect.errors, OverflowError)
        try:
            return self._retrying(self._insert_once, rows)
        except refused as exc:
            raise self._push_error(exc) from exc

    def _insert_once(self, rows: Sequence[Row]) -> list[TaskId]:
        if len(rows) == 1 and rows[0].key is None:
            return [self.dialect.insert_one(self.db, rows[0])]
        with self._write_tx():
            return self.dialect.insert_rows(self.db, rows)

    def _after_push(self) -> None:
        """Wake workers once the push is committed: now, or when the caller's own
        transaction commits."""
        if self.db.in_transaction():
            self.db.after_commit(lambda: self.wakeups.notify(self.queue))
        else:
            self.wakeups.notify(self.queue)

    def _push_error(self, exc: BaseException) -> PushError:
        if isinstance(exc, OverflowError):
            return PushError(f"push rejected: a number does not fit in the store ({exc})")
        kind = self.dialect.classify(exc)
        if kind is ErrorKind.INTEGRITY:
            return PushError(f"push rejected by the store (duplicate id?): {exc}")
        if kind is ErrorKind.FULL:
            return PushError(f"push failed: the database or disk is full: {_FULL_HINT}")
        return PushError(f"push failed: {self._storage_error(exc)}")

    # Claiming ------------------------------------------------------------------------
    def claim(self, ctx: WorkerContext, limit: int) -> list[Claim]:
        """Take up to ``limit`` due tasks (highest priority, then earliest due, then
        oldest) in one atomic statement. A task marked to run alone is taken only
        when ``ctx`` runs nothing else, and alone."""
        return self._run(self._claim, ctx, limit)

    def ack_and_claim(
        self, outcomes: Sequence[Outcome], ctx: WorkerContext, limit: int
    ) -> list[Claim] | None:
        """Where the engine can (``Dialect.ack_done_and_claim``): a batch of Done
        outcomes without follow-ups written by the claim's own statement (one round
        trip, one commit). None otherwise: nothing done."""
        if (
            not self.dialect.acks_with_claims
            or type(self).claim is not SqlStorage.claim  # a store that claims its own way
            or not outcomes
            or any(o.kind != OutcomeKind.DONE or o.follow_ups or o.join_parts for o in outcomes)
            or len({(int(o.claim.id), o.claim.lease) for o in outcomes}) != len(outcomes)
            or any(not isinstance(o.encoded_result, _RESULT_TYPES) for o in outcomes)
        ):
            return None
        return self._run(self._claim, ctx, limit, outcomes)

    def _claim(
        self, ctx: WorkerContext, limit: int, outcomes: Sequence[Outcome] = ()
    ) -> list[Claim]:
        q = self.dialect.queries
        now = clock.timestamp()
        lease = ctx.new_lease()
        # One statement when no task that must run alone is due (the usual case): the
        # guarded claim takes nothing while one is, and only then is it looked for.
        params = (lease, ctx.run_id, now, self.queue, now, self.queue, now, limit)
        if outcomes:
            acks = [(o.encoded_result, now, int(o.claim.id), o.claim.lease) for o in outcomes]
            rows, written = self.dialect.ack_done_and_claim(self.db, acks, params)
            for o in outcomes:
                o.accepted = (int(o.claim.id), o.claim.lease) in written
        else:
            rows = self.dialect.claim(self.db, q.claim_guarded, params)
        if rows:
            pass
        elif self._execute(q.any_isolated, (self.queue, now)).fetchone() is not None:
            if ctx.in_flight:  # one must run alone: let this run drain first
                return []
            rows = self.dialect.claim(
                self.db, q.claim_isolated, (lease, ctx.run_id, now, self.queue, now)
            )
        if not rows:  # each task to run alone is held by another run, or none is left
            rows = self.dialect.claim(
                self.db, q.claim, (lease, ctx.run_id, now, self.queue, now, limit)
            )
        if len(rows) > 1:
            rows.sort(key=lambda r: (-_int_or(r["priority"], 0), r["run_at"] or 0, r["id"]))
        return [self._to_claim(row, lease) for row in rows]

    def _to_claim(self, row: dict[str, Any], lease: str) -> Claim:
        """A claimed row as a ``Claim``; a field that cannot be read makes it a
        ``Claim`` with a ``defect`` (the worker makes that task Dead) instead of failing
        the whole batch."""
        claim = Claim(
            id=TaskId(row["id"]),
            queue=self.queue,
            payload=row["payload"],
            attempt=_int_or(row["attempts"], 1),
            lease=lease,
            isolated=bool(row["isolate"]),
            due_at=_float_or_none(row["run_at"]),
        )
        try:
            claim.priority = _field_int(row["priority"], "priority")
            max_attempts = row["max_attempts"]
            if max_attempts is not None:
                max_attempts = _field_int(max_attempts, "max_attempts")
                if max_attempts < 1:
                    raise ValueError(f"max_attempts is {max_attempts}; it must be at least 1")
            claim.max_attempts = max_attempts
            claim.meta = _meta(row["meta"])
        except ValueError as exc:
            claim.defect = f"the stored task is malformed: {exc}"
        return claim

    def next_due(self) -> float | None:
        """The earliest ``run_at`` of a Pending or Failed task of this queue, or None."""
        row = self._run(
            lambda: self._execute(self.dialect.queries.next_due, (self.queue,)).fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    # Acknowledging ---------------------------------------------------------------------
    def ack(self, outcomes: Sequence[Outcome]) -> None:
        """Record a batch of outcomes in one transaction, with their follow-ups. An
        outcome whose task is no longer running under its lease (a zombie's, or
        killed) is marked ``accepted = False`` and changes nothing."""
        if not outcomes:
            return
        try:
            self._retrying(self._ack_once, outcomes)
        except self.dialect.errors as exc:
            if self.dialect.classify(exc) is ErrorKind.INTEGRITY:  # a follow-up's id or key
                raise OutcomeRefused(f"the store refused the outcomes: {exc}") from exc
            raise self._storage_error(exc) from exc

    def _ack_once(self, outcomes: Sequence[Outcome]) -> None:
        q = self.dialect.queries
        now = clock.timestamp()
        outcomes = _first_per_claim(outcomes)
        done = [o for o in outcomes if o.kind == OutcomeKind.DONE]
        if (
            done
            and len(done) == len(outcomes)
            and not any(o.follow_ups or o.join_parts for o in done)
        ):
            # the usual batch: one statement where the engine has one
            rows = [(o.encoded_result, now, int(o.claim.id), o.claim.lease) for o in done]
            written = self.dialect.ack_done(self.db, rows)
            if written is not None:
                for o in done:
                    o.accepted = (int(o.claim.id), o.claim.lease) in written
                return
        with self._write_tx():
            if done:
                rows = [(o.encoded_result, now, int(o.claim.id), o.claim.lease) for o in done]
                changed = self.dialect.ack_done_in_tx(self.db, rows)
                if changed != len(rows):
                    for o in done:
                        found = self._execute(q.ack_accepted, (int(o.claim.id), o.claim.lease, now))
                        o.accepted = found.fetchone() is not None
            for o in outcomes:
                if o.kind != OutcomeKind.DONE:
                    o.accepted = self._ack_other(o, now)
            follow_ups = [row for o in outcomes if o.accepted for row in o.follow_ups]
            follow_ups += self._record_join_parts(outcomes, now)
            if follow_ups:
                self.dialect.insert_rows(self.db, follow_ups)
        if follow_ups:
            self._after_push_to({row.queue for row in follow_ups})

    def _after_push_to(self, queues: set[str]) -> None:
        for queue in queues:
            self.wakeups.notify(queue)

    def _ack_other(self, o: Outcome, now: float) -> bool:
        q = self.dialect.queries
        task_id, lease = int(o.claim.id), o.claim.lease
        if o.kind == OutcomeKind.RELEASE:
            return self._execute(q.ack_release, (task_id, lease)).rowcount == 1
        if o.kind == OutcomeKind.INTERRUPTED:
            changed = (
                self._execute(q.ack_interrupted, (now + o.delay, task_id, lease)).rowcount == 1
            )
        elif o.kind == OutcomeKind.RETRY:
            params = (Status.FAILED.value, now + o.delay, None, task_id, lease)
            changed = self._execute(q.ack_failed, params).rowcount == 1
        else:  # DEAD
            changed = (
                self._execute(q.ack_failed, (Status.DEAD.value, now, now, task_id, lease)).rowcount
                == 1
            )
        if changed:
            error = safe_text(o.error or "")
            self._execute(
                q.insert_error, (task_id, o.claim.attempt, error, safe_text(o.traceback), now)
            )
        return changed

    # Heartbeat and orphans ---------------------------------------------------------------
    def beat(self, ctx: WorkerContext) -> None:
        """Record that ``ctx``'s run is alive, and re-enqueue the running tasks of runs
        that stopped beating (see ``_recover``), in one transaction."""
        self._run(self._beat, ctx)

    def _beat(self, ctx: WorkerContext) -> None:
        q = self.dialect.queries
        now = clock.timestamp()
        with self._write_tx():
            params = (
                ctx.run_id,
                ctx.name,
                self.queue,
                self._hostname,
                self._host_id,
                os.getpid(),
                now,
                now,
            )
            self._execute(q.beat, params)
            if ctx.beats == 0:
                self._execute(q.forget_stale_workers, (now - STALE_WORKER_ROWS_AFTER,))
            self._recover(ctx, now)

    def _recover(self, ctx: WorkerContext, now: float) -> None:
        """Re-enqueue the running tasks of dead runs. A run is dead when it has not
        beaten for ``reenqueue_orphaned_after`` (and, on this host, its process is gone
        or stopped), or when its row is gone. A task that was the only one its dead run
        held is blamed: a recovery counted (Dead after ``max_recoveries``). Tasks that
        ran beside others are not counted but marked to run alone next time, so that
        a task that kills its worker is found without taking innocent ones with it."""
        q = self.dialect.queries
        last_seen_of: dict[str, float] = {}
        dead: set[str] = set()
        for run_id, host_id, pid, last_seen in self._execute(q.runs).fetchall():
            last_seen_of[run_id] = last_seen
            if run_id != ctx.run_id and not self._alive(host_id, pid, last_seen, now):
                dead.add(run_id)
        by_run: dict[str | None, list[int]] = {}
        for task_id, worker in self._execute(q.running).fetchall():
            if worker in dead or (worker not in last_seen_of and worker != ctx.run_id):
                by_run.setdefault(worker, []).append(task_id)
        limit = self.config.max_recoveries
        for worker, tasks in by_run.items():
            counted = len(tasks) == 1
            last_seen = last_seen_of.get(worker) if worker is not None else None
            for task_id in tasks:
                if counted:
                    changed = self._execute(
                        q.recover, (limit, limit, now, task_id, worker)
                    ).rowcount
                else:
                    changed = self._execute(q.isolate, (task_id, worker)).rowcount
                if not changed:
                    continue
                self._execute(q.insert_recovery, (task_id, worker, last_seen, int(counted), now))
                self._log_recovery(task_id, worker, counted, now)
        for run_id in dead:  # it holds nothing now; if it comes back, its beat says so
            self._execute(q.forget_worker, (run_id,))

    def _log_recovery(self, task_id: int, worker: str | None, counted: bool, now: float) -> None:
        if not counted:
            log.info(
                "task %s re-enqueued to run alone: its worker %s stopped beating", task_id, worker
            )
            return
        status, recoveries, attempts = self._execute(
            self.dialect.queries.recovered_state, (task_id,)
        ).fetchone()
        if status == Status.DEAD.value:
            error = f"its worker died {recoveries} times while running it"
            self._execute(
                self.dialect.queries.insert_error, (task_id, attempts + 1, error, None, now)
            )
            log.warning("task %s is dead: %s", task_id, error)
        else:
            log.info("task %s re-enqueued: its worker %s stopped beating", task_id, worker)

    def _alive(
        self, host_id: str | None, pid: int | None, last_seen: float | None, now: float
    ) -> bool:
        if last_seen is None:  # the run's row is gone: it stopped, or was forgotten
            return False
        window = self.config.orphaned_after_seconds
        if host_id == self._host_id and pid is not None:
            # Same host: the process table is the truth. A live process whose beats
            # wait behind a busy write lock is not taken for dead; a stopped one
            # (SIGSTOP, a frozen job) or a gone one is.
            state = _process_state(pid)
            if state is None or state in "TtXZ":
                return last_seen >= now - window if state in ("T", "t") else False
            return last_seen >= now - LIVE_PID_PATIENCE * window
        return last_seen >= now - window

    def retire(self, ctx: WorkerContext) -> None:
        """The worker stopped cleanly: forget its run."""
        try:
            self._retrying(self._execute, self.dialect.queries.forget_worker, (ctx.run_id,))
        except self.dialect.errors as exc:
            log.warning("could not unregister worker %s: %s", ctx.run_id, exc)

    # Keyed tasks (cron ticks) -----------------------------------------------------------
    def last_key(self, prefix: str) -> str | None:
        """The greatest task key that starts with ``prefix`` in this database (any
        queue, any status), or None. A cron stream finds the last tick it recorded."""
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"last_key() needs a non-empty prefix, got {prefix!r}")
        return self._run(self.dialect.last_key, self.db, prefix)

    # Joins (workflows' fan-in) -----------------------------------------------------------
    def _record_join_parts(self, outcomes: Sequence[Outcome], now: float) -> list[Row]:
        """Record the join parts of the accepted ``outcomes`` (inside the ack's
        transaction); return the rows of the joins they complete. Parts are taken in
        (key, slot) order, so that concurrent acks lock join rows in one order."""
        parts = sorted(
            (part for o in outcomes if o.accepted for part in o.join_parts),
            key=lambda part: (part.key, part.slot),
        )
        q, completed = self.dialect.queries, []
        for part in parts:
            params = (part.key, part.slot, part.value, now)
            if self._execute(q.join_part, params).rowcount != 1:
                continue  # recorded before: a duplicate does not count again
            arrived, slots = self.dialect.join_arrive(self.db, (part.key, part.slots, now))
            if arrived == slots:
                completed.append(part.row)
        return completed

    def join_parts(self, key: str) -> list[tuple[int, bytes]]:
        """The recorded parts of join ``key``, ``[(slot, value)]`` in slot order."""
        rows = self._run(lambda: self._execute(self.dialect.queries.join_parts, (key,)).fetchall())
        return [(int(slot), bytes(value)) for slot, value in rows]

    # Rate limits ----------------------------------------------------------------------
    def take_slot(self, key: str, interval: float) -> float:
        """Reserve the next start of rate limit ``key`` (shared by every store on this
        database) in one write transaction, under the key's row lock; return the
        seconds to wait for it. Times are the caller's ``clock.timestamp()``."""

        def reserve() -> float:
            with self._write_tx():  # (SQLite: the write lock is held from here)
                now = clock.timestamp()
                start = self.dialect.take_slot(self.db, key, now, interval)
            return max(0.0, start - now)

        return self._run(reserve)

    def tasks_with_key_prefix(
        self, prefix: str, *, limit: int = 1000, before: str | None = None
    ) -> list[tuple[str, Any]]:
        """The tasks whose key starts with ``prefix`` (and sorts below ``before``, in
        code point order), greatest key first, at most ``limit``: ``[(key, TaskInfo)]``.
        A range scan on the key index."""
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"tasks_with_key_prefix() needs a non-empty prefix, got {prefix!r}")
        self._page(limit, 0)
        pairs = self._run(self.dialect.keys_with_prefix, self.db, prefix, before, limit)
        if not pairs:
            return []
        Job = self.models.Job
        query = Job.select().where(Job.id.in_([task_id for task_id, _ in pairs]))
        infos = {int(info.id): info for info in self._run(self._read, self._infos, query)}
        return [(key, infos[task_id]) for task_id, key in pairs if task_id in infos]

    # Pausing -----------------------------------------------------------------------------
    def set_paused(self, queue: str, paused: bool) -> None:
        """Record ``queue``'s pause in ``taskpipe_queues`` in one transaction (its row is
        made the first time; ``paused_at`` keeps the time of the first pause)."""
        Queue = self.models.Queue

        def once() -> None:
            with self._write_tx():
                if paused:
                    Queue.insert(queue=queue, paused=0).on_conflict_ignore().execute()
                    Queue.update(paused=1, paused_at=clock.timestamp()).where(
                        (Queue.queue == queue) & (Queue.paused == 0)
                    ).execute()
                else:
                    Queue.update(paused=0, paused_at=None).where(Queue.queue == queue).execute()

        self._run(once)

    def paused_queues(self) -> set[str]:
        """The queues recorded paused: one small read."""
        sql = self.dialect.queries.paused_queues
        return self._run(lambda: {row[0] for row in self._execute(sql).fetchall()})

    def close_thread_connection(self) -> None:
        """Close this thread's connection (each thread opens its own)."""
        if getattr(self.db, "taskpipe_lock", None) is not None:
            return  # one shared connection (":memory:"): it lives as long as the database
        if not self.db.is_closed() and not self.db.in_transaction():
            self.db.close()

    def for_queue(self, queue: str) -> SqlStorage:
        """A store of this class for ``queue`` on the same database, with this store's
        codec, config and capabilities (this store itself for its own queue)."""
        if queue == self.queue:
            return self
        other = type(self)(self.db, queue=queue, codec=self.codec, config=self.config)
        other.capabilities = self.capabilities  # (with_hook's wake-ups too)
        return other

    def with_capabilities(self, **changes: bool) -> SqlStorage:
        """This store, declaring other capabilities (``with_hook`` adds ``wakeups``)."""
        self.capabilities = replace(self.capabilities, **changes)
        return self


def host_identity() -> str:
    """Where a pid means something: this host's name, its boot and this process's PID
    namespace. Runs with the same identity are judged by the process table; others
    (another host, a container with its own PID namespace, a run before a reboot) only
    by their heartbeats."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # no /proc here: the host name alone
        pass
    return "|".join(parts)


def _first_per_claim(outcomes: Sequence[Outcome]) -> Sequence[Outcome]:
    """The outcomes to write: a second outcome for the same claim (id and lease) in one
    batch is rejected (``accepted = False``), as it would be in a later batch."""
    seen: set[tuple[int, str]] = set()
    kept = []
    for o in outcomes:
        key = (int(o.claim.id), o.claim.lease)
        if key in seen:
            o.accepted = False
            continue
        seen.add(key)
        kept.append(o)
    return kept if len(kept) != len(outcomes) else outcomes


def _retry_busy(dialect: Dialect, fn: Callable[[], T], db: pw.Database | None = None) -> T:
    """Call ``fn`` again while ``dialect`` says its error means "busy" (for up to
    ``LOCKED_RETRY_SECONDS``), with a growing pause. With ``db``, a lost connection
    (``GONE``) is dropped and ``fn`` tried again on a new one, the same way, unless
    the caller's own transaction was open on it (that transaction is lost)."""
    deadline = None
    delay = 0.005
    while True:
        try:
            return fn()
        except dialect.errors as exc:
            kind = dialect.classify(exc)
            if kind is ErrorKind.GONE and db is not None and not db.in_transaction():
                dialect.reset_connection(db)
            elif kind is not ErrorKind.BUSY:
                raise
            now = clock.real_monotonic()
            if deadline is None:
                deadline = now + LOCKED_RETRY_SECONDS
            elif now > deadline:
                raise
            log.debug("database busy, retrying in %.3fs: %s", delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _float_or_none(value: Any) -> float | None:
    """A stored number as a float; None when it is not one (a claim does not fail on it)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _field_int(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{name} is {value!r}, not an integer")


def _meta(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        meta = msgspec.json.decode(bytes(raw))
    except msgspec.DecodeError as exc:
        raise ValueError(f"meta is not valid JSON ({exc}): {bytes(raw)[:60]!r}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"meta is a {type(meta).__name__}, not a JSON object")
    return meta


def _process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` ("R", "S", "T" stopped, "Z" zombie…), "?"
    where /proc cannot tell, or None when there is no such process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 : data.rindex(b")") + 3].decode()
    except (OSError, ValueError):  # pragma: no cover - no /proc here
        return "?"
