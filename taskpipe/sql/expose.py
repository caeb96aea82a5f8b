"""Introspection for the SQL stores (``SqlStorage`` inherits ``SqlExpose``).

Cold paths, so written with peewee's query builder (one text for every dialect).
Every read is a page (``LIMIT``) or an aggregate (``COUNT``/``MIN``/``AVG`` in SQL);
bulk writes (``retry_dead``, ``purge``) go in batches of ``BATCH`` rows, one short
write transaction each, so workers are never locked out for long.

Rows are shown as stored, even those taskpipe did not write and cannot fully read
(another program, a hand edit): one such row never fails a whole page.

- ``args``/``result``: decoded when stored as a BLOB the codec can decode; the raw
  bytes when it cannot; any other stored value (TEXT, a number) as it is, undecoded.
- ``status``: a ``Status``, or, for a value taskpipe does not know, a ``RawStatus``:
  the stored string (a ``str`` with ``.value``, like a ``Status``). Such a row is
  never claimed; ``kill`` makes it Dead (then ``retry`` or ``purge`` it).
- text columns holding invalid UTF-8 read with the bad bytes as ``\\xNN`` escapes
  (``SqliteStorage`` reads them leniently; other engines refuse such text on write).
- ``meta`` that is not a JSON object: ``{"raw": <the stored text>}``.
- a time that is not a number of epoch seconds: None. Other fields (``priority``,
  ``attempts``…) keep whatever value is stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec
import peewee as pw

from .. import clock
from ..errors import TaskNotFound
from ..expose import (
    DAY,
    FINISHED,
    HOUR,
    KILLED,
    RETRYABLE,
    Bucket,
    ExposeMixin,
    QueueInfo,
    WorkerInfo,
    _empty_stats,
)
from ..task import AttemptError, RawStatus, Recovery, Status, TaskId, TaskInfo

__all__ = ["SqlExpose", "BATCH", "RawStatus"]

BATCH = 1000  # rows per write transaction in retry_dead() and purge()


def _values(statuses: tuple[Status, ...]) -> list[str]:
    return [s.value for s in statuses]


def _text(value: Any) -> Any:
    """A text column's value as a ``str``: bytes (a BLOB where text belongs) decoded
    with invalid UTF-8 as ``\\xNN`` escapes; None stays None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _status(value: Any) -> Status | RawStatus:
    text = _text(value)
    try:
        return Status(text)
    except ValueError:
        return RawStatus(text)


def _time(value: Any) -> datetime | None:
    """Stored epoch seconds as an aware datetime; None for anything else."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return clock.from_timestamp(value)
    except (OverflowError, OSError, ValueError):  # out of datetime's range, NaN
        return None


def _meta(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "" or raw == b"":
        return {}
    if isinstance(raw, (bytes, bytearray, memoryview, str)):
        try:
            meta = msgspec.json.decode(bytes(raw) if not isinstance(raw, str) else raw)
        except msgspec.DecodeError:
            meta = None
        if isinstance(meta, dict):
            return meta
    return {"raw": _text(raw)}


class SqlExpose(ExposeMixin):
    """``list_tasks``, ``fetch_by_id``, ``stats``, ``retry``, ``kill``, ``purge``… on the
    tables of a ``SqlStorage`` (which provides ``db``, ``models``, ``codec``, ``_run``,
    ``_write_tx`` and ``_after_push``)."""

    db: Any
    models: Any
    codec: Any
    _run: Callable[..., Any]
    _write_tx: Callable[[], Any]
    _after_push: Callable[[], None]

    # Plumbing ------------------------------------------------------------------------
    def _lenient_text(self) -> contextlib.AbstractContextManager[Any]:
        """While reading rows for a person: text columns read without failing on
        invalid UTF-8 (``SqliteStorage`` overrides it; other drivers never return such
        text)."""
        return contextlib.nullcontext()

    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with ``_lenient_text`` (inside ``_run``: under the store's guard)."""
        with self._lenient_text():
            return fn(*args)

    def _in_batches(self, batch: Callable[[], int]) -> int:
        """Call ``batch`` (one short transaction of at most ``BATCH`` rows) until a call
        does fewer rows than that; return the total."""
        total = 0
        while True:
            count = self._run(batch)
            total += count
            if count < BATCH:
                return total

    def _info(
        self,
        row: dict[str, Any],
        errors: tuple[AttemptError, ...],
        recoveries: tuple[Recovery, ...],
    ) -> TaskInfo:
        return TaskInfo(
            id=TaskId(row["id"]),
            queue=_text(row["queue"]),
            status=_status(row["status"]),
            args=self._decoded(row["payload"]),
            priority=row["priority"],
            run_at=_time(row["run_at"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            result=self._decoded(row["result"]),
            errors=errors,
            created_at=_time(row["created_at"]),
            started_at=_time(row["started_at"]),
            done_at=_time(row["done_at"]),
            worker=_text(row["worker"]),
            meta=_meta(row["meta"]),
            recoveries=recoveries,
        )

    def _by_task(
        self, model: Any, columns: list[Any], ids: list[int], make: Any
    ) -> dict[int, tuple[Any, ...]]:
        """``make(*columns)`` for every row of ``model`` (errors, recoveries) that
        belongs to one of the tasks ``ids``, grouped by task, oldest first."""
        if not ids:
            return {}
        rows = (
            model.select(model.job_id, *columns)
            .where(model.job_id.in_(ids))
            .order_by(model.job_id, model.id)
            .tuples()
        )
        found: dict[int, list[Any]] = {}
        for job_id, *values in rows:
            found.setdefault(job_id, []).append(make(*values))
        return {job_id: tuple(items) for job_id, items in found.items()}

    def _errors_for(self, ids: list[int]) -> dict[int, tuple[AttemptError, ...]]:
        E = self.models.Error

        def make(attempt: int, error: Any, tb: Any, at: Any) -> AttemptError:
            return AttemptError(attempt, _text(error), _text(tb), _time(at))

        return self._by_task(E, [E.attempt, E.error, E.traceback, E.at], ids, make)

    def _recoveries_for(self, ids: list[int]) -> dict[int, tuple[Recovery, ...]]:
        R = self.models.Recovery

        def make(worker: Any, last_seen: Any, at: Any, counted: Any) -> Recovery:
            return Recovery(_text(worker), _time(last_seen), _time(at), bool(counted))

        return self._by_task(R, [R.worker, R.last_seen, R.at, R.counted], ids, make)

    def _infos(self, query: pw.Select) -> list[TaskInfo]:
        rows = list(query.dicts())
        ids = [row["id"] for row in rows]
        errors, recoveries = self._errors_for(ids), self._recoveries_for(ids)
        return [
            self._info(row, errors.get(row["id"], ()), recoveries.get(row["id"], ()))
            for row in rows
        ]

    # Reading -----------------------------------------------------------------------------
    def list_tasks(
        self, queue: str | None = None, status: Any = None, limit: int = 50, offset: int = 0
    ) -> list[TaskInfo]:
        """A page of tasks, newest first, each with its errors. ``queue=None`` is every
        queue in the database; ``status`` one status (a ``Status`` or its value) or
        several. Args and results are decoded without a type (a payload the codec
        cannot decode is returned as its raw bytes). A row taskpipe cannot fully read
        is shown as stored (see the module docstring)."""
        statuses = self._statuses(status)
        self._page(limit, offset)
        Job = self.models.Job
        query = Job.select().order_by(Job.id.desc()).limit(limit).offset(offset)
        if queue is not None:
            query = query.where(Job.queue == queue)
        if statuses:
            query = query.where(Job.status.in_(_values(statuses)))
        return self._run(self._read, self._infos, query)

    def fetch_by_id(self, task_id: int) -> TaskInfo:
        """The task with this id, in any queue, with its errors; raises ``TaskNotFound``."""
        task_id = self._task_id(task_id)
        Job = self.models.Job
        found = self._run(self._read, self._infos, Job.select().where(Job.id == task_id).limit(1))
        if not found:
            raise TaskNotFound(f"no task with id {int(task_id)}")
        return found[0]

    def list_workers(self, limit: int = 100) -> list[WorkerInfo]:
        """Worker runs that have beaten recently (a run is forgotten when it stops
        cleanly, or a day after its last beat), newest first, with the count of tasks
        each holds."""
        self._page(limit, 0)
        Job, Worker = self.models.Job, self.models.Worker
        held = Job.select(pw.fn.COUNT(Job.id)).where(
            (Job.worker == Worker.run_id) & (Job.status == Status.RUNNING.value)
        )
        query = (
            Worker.select(Worker, held.alias("held"))
            .order_by(Worker.started_at.desc(), Worker.run_id)
            .limit(limit)
            .dicts()
        )
        rows = self._run(self._read, list, query)
        return [
            WorkerInfo(
                name=_text(row["name"]),
                run_id=_text(row["run_id"]),
                queues=tuple(q for q in (_text(row["queues"]) or "").split(",") if q),
                hostname=_text(row["hostname"]),
                pid=row["pid"],
                started_at=_time(row["started_at"]),
                last_heartbeat=_time(row["last_seen"]),
                tasks_held=row["held"] or 0,
            )
            for row in rows
        ]

    def list_queues(self, *, done: bool = True) -> list[QueueInfo]:
        """Every queue that holds tasks, by name, with its counts per status (one
        ``GROUP BY``). Tasks whose status taskpipe does not know are in no count.

        ``done=False``: the unfinished and Dead counts only, read on the partial indexes
        (no scan of the Done history); queues holding only Done tasks are left out."""
        if not done:
            return self._run(self._read, self._live_queues)
        Job = self.models.Job
        query = (
            Job.select(Job.queue, Job.status, pw.fn.COUNT(Job.id))
            .group_by(Job.queue, Job.status)
            .tuples()
        )
        counts: dict[str, dict[str, int]] = {}
        for queue, status, count in self._run(self._read, list, query):
            by_status = counts.setdefault(_text(queue), {})
            by_status[_text(status)] = by_status.get(_text(status), 0) + count
        known = {s.value for s in Status}
        return [
            QueueInfo(
                name,
                **{k: v for k, v in by_status.items() if k in known},
                other=sum(v for k, v in by_status.items() if k not in known),
            )
            for name, by_status in sorted(counts.items())
        ]

    def _live_queues(self) -> list[QueueInfo]:
        from .queries import WAITING, sql_in

        attention = sql_in(Status.RUNNING, Status.FAILED, Status.DEAD)
        Job = self.models.Job
        counts: dict[str, dict[str, int]] = {}
        # the literal predicates let the planner use the partial indexes (schema.py)
        rows = (
            Job.select(Job.status, Job.queue, pw.fn.COUNT(Job.id))
            .where(pw.SQL(f"status IN {attention}"))
            .group_by(Job.status, Job.queue)
            .tuples()
        )
        for status, queue, count in rows:
            counts.setdefault(_text(queue), {})[_text(status)] = count
        waiting = (
            Job.select(Job.queue, pw.fn.COUNT(Job.id))
            .where(pw.SQL(f"status IN {WAITING}"))
            .group_by(Job.queue)
            .tuples()
        )
        for queue, count in waiting:
            by_status = counts.setdefault(_text(queue), {})
            by_status["pending"] = count - by_status.get("failed", 0)
        return [QueueInfo(name, **by_status) for name, by_status in sorted(counts.items())]

    def stats(self, queue: str | None = None) -> dict[str, Any]:
        """Counts and rates, computed in SQL, of ``queue`` (None: every queue):

        - one key per status value (``"pending"``, ``"running"``…) with its count;
        - ``done_last_hour`` / ``done_last_day``: tasks finished Done in that window;
        - ``failed_last_hour`` / ``failed_last_day``: failed attempts recorded in that
          window (retried or not; kills and worker deaths count);
        - ``oldest_pending_age``: seconds since the longest-waiting due Pending task
          became due (None when none is due): how far behind the workers are;
        - ``mean_run_time``: mean seconds from start to finish of the Done tasks
          still stored (None when there are none).

        Tasks whose status taskpipe does not know are in no count.
        """
        return self._run(self._read, self._stats, queue, clock.timestamp())

    def _stats(self, queue: str | None, now: float) -> dict[str, Any]:
        Job, Error = self.models.Job, self.models.Error
        fn = pw.fn
        stats = _empty_stats()

        def in_queue(query: pw.Select) -> pw.Select:
            return query if queue is None else query.where(Job.queue == queue)

        by_status = in_queue(Job.select(Job.status, fn.COUNT(Job.id)).group_by(Job.status))
        known = {s.value for s in Status}
        for status, count in by_status.tuples():
            status = _text(status)
            if status in known:
                stats[status] += count

        def recent(column: Any) -> list[Any]:
            return [
                fn.COALESCE(fn.SUM(pw.Case(None, [(column >= now - HOUR, 1)], 0)), 0),
                fn.COUNT(column),
            ]

        done = in_queue(
            Job.select(*recent(Job.done_at)).where(
                (Job.status == Status.DONE.value) & (Job.done_at >= now - DAY)
            )
        )
        # SUM is a DECIMAL on MySQL: counts are ints everywhere.
        stats["done_last_hour"], stats["done_last_day"] = (int(n) for n in done.tuples().get())

        failed = Error.select(*recent(Error.at)).where(Error.at >= now - DAY)
        if queue is not None:
            failed = failed.join(Job, on=(Job.id == Error.job_id)).where(Job.queue == queue)
        stats["failed_last_hour"], stats["failed_last_day"] = (
            int(n) for n in failed.tuples().get()
        )

        oldest = in_queue(
            Job.select(fn.MIN(Job.run_at)).where(
                (Job.status == Status.PENDING.value) & (Job.run_at <= now)
            )
        ).scalar()
        stats["oldest_pending_age"] = None if oldest is None else now - oldest

        mean = in_queue(
            Job.select(fn.AVG(Job.done_at - Job.started_at)).where(
                (Job.status == Status.DONE.value) & Job.started_at.is_null(False)
            )
        ).scalar()
        stats["mean_run_time"] = None if mean is None else float(mean)
        return stats

    # Steering ----------------------------------------------------------------------------
    def _reset(self, now: float) -> dict[Any, Any]:
        Job = self.models.Job
        return {
            Job.status: Status.PENDING.value,
            Job.run_at: now,
            Job.attempts: 0,
            Job.recoveries: 0,
            Job.lease: None,
            Job.worker: None,
            Job.started_at: None,
            Job.done_at: None,
            Job.result: None,
        }

    def _exists(self, task_id: int) -> bool:
        Job = self.models.Job
        return Job.select(Job.id).where(Job.id == task_id).exists()

    def retry(self, task_id: int) -> bool:
        """Make a Failed or Dead task Pending and due now, with a fresh set of attempts
        (its past errors are kept). Returns False when the task is in another status;
        raises ``TaskNotFound`` for an unknown id. Atomic (one ``UPDATE``)."""
        task_id = self._task_id(task_id)
        Job = self.models.Job

        def once() -> bool:
            with self._write_tx():
                changed = (
                    Job.update(self._reset(clock.timestamp()))
                    .where((Job.id == task_id) & Job.status.in_(_values(RETRYABLE)))
                    .execute()
                )
                if not changed and not self._exists(task_id):
                    raise TaskNotFound(f"no task with id {int(task_id)}")
                return bool(changed)

        retried = self._run(once)
        if retried:
            self._after_push()
        return retried

    def retry_dead(self, queue: str | None = None) -> int:
        """``retry`` every Dead task of ``queue`` (None: every queue), in batches of
        ``BATCH`` rows; returns how many."""
        Job = self.models.Job

        def batch() -> int:
            with self._write_tx():
                ids = Job.select(Job.id).where(Job.status == Status.DEAD.value)
                if queue is not None:
                    ids = ids.where(Job.queue == queue)
                ids = [row[0] for row in ids.limit(BATCH).tuples()]
                if ids:
                    Job.update(self._reset(clock.timestamp())).where(Job.id.in_(ids)).execute()
                return len(ids)

        total = self._in_batches(batch)
        if total:
            self._after_push()
        return total

    def kill(self, task_id: int) -> bool:
        """Make a Pending, Failed or Running task Dead, recording the error "killed".
        A running handler is not interrupted, but its outcome is discarded (acks need
        the task still running under its lease). Returns False when the task had
        already finished; raises ``TaskNotFound`` for an unknown id. Atomic. A task
        whose status taskpipe does not know (another program's) is made Dead too."""
        task_id = self._task_id(task_id)
        Job, Error = self.models.Job, self.models.Error

        def once() -> bool:
            now = clock.timestamp()
            with self._write_tx():
                row = Job.select(Job.status, Job.attempts).where(Job.id == task_id).tuples().first()
                if row is None:
                    raise TaskNotFound(f"no task with id {int(task_id)}")
                status, attempts = row
                if _status(status) in FINISHED:
                    return False
                Job.update(
                    {Job.status: Status.DEAD.value, Job.done_at: now, Job.lease: None}
                ).where(Job.id == task_id).execute()
                Error.insert(
                    job_id=task_id, attempt=attempts, error=KILLED, traceback=None, at=now
                ).execute()
                return True

        return self._run(self._read, once)

    def throughput(
        self, since: datetime | float, bucket: float, queue: str | None = None
    ) -> list[Bucket]:
        """Done tasks (by ``done_at``) and failed attempts (by their error's time) per
        ``bucket`` seconds since ``since``: two ``GROUP BY``s on the indexes of finish
        and error times (``taskpipe_jobs_done``, ``taskpipe_errors_at``)."""
        start, width, count = self._buckets(since, bucket)
        return self._run(self._read, self._throughput, start, width, count, queue)

    def _throughput(
        self, start: float, width: float, count: int, queue: str | None
    ) -> list[Bucket]:
        Job, Error = self.models.Job, self.models.Error

        def slot(column: Any) -> Any:
            offset = (column - start) / width
            if isinstance(self.db, pw.SqliteDatabase):  # no FLOOR before SQLite 3.35
                return pw.Cast(offset, "INTEGER")  # truncates: offset >= 0 here
            return pw.fn.FLOOR(offset)  # a cast rounds on PostgreSQL and MySQL

        done_slot = slot(Job.done_at)
        done_q = (
            Job.select(done_slot, pw.fn.COUNT(Job.id))
            .where(pw.SQL(f"status = '{Status.DONE.value}'") & (Job.done_at >= start))
            .group_by(pw.SQL("1"))  # by position: PostgreSQL would not match a bound copy
        )
        if queue is not None:
            done_q = done_q.where(Job.queue == queue)
        failed_slot = slot(Error.at)
        failed_q = (
            Error.select(failed_slot, pw.fn.COUNT(Error.id))
            .where(Error.at >= start)
            .group_by(pw.SQL("1"))
        )
        if queue is not None:
            failed_q = failed_q.join(Job, on=(Job.id == Error.job_id)).where(Job.queue == queue)
        done = {int(i): int(n) for i, n in done_q.tuples()}
        failed = {int(i): int(n) for i, n in failed_q.tuples()}
        return self._dense_buckets(start, width, count, done, failed)

    def delete(self, task_id: int) -> bool:
        """Delete a Done or Dead task, its error and recovery rows, and the join that
        inserted it under its key. Returns False when the task is still to run or
        running (``kill`` it first); raises ``TaskNotFound`` for an unknown id. Atomic."""
        task_id = self._task_id(task_id)
        Job, Error, Recovery = self.models.Job, self.models.Error, self.models.Recovery

        def once() -> bool:
            with self._write_tx():
                row = Job.select(Job.status, Job.key).where(Job.id == task_id).tuples().first()
                if row is None:
                    raise TaskNotFound(f"no task with id {int(task_id)}")
                status, key = row
                if _status(status) not in FINISHED:
                    return False
                Error.delete().where(Error.job_id == task_id).execute()
                Recovery.delete().where(Recovery.job_id == task_id).execute()
                Job.delete().where(Job.id == task_id).execute()
                if key is not None:
                    Join, JoinPart = self.models.Join, self.models.JoinPart
                    JoinPart.delete().where(JoinPart.join_key == key).execute()
                    Join.delete().where(Join.join_key == key).execute()
                return True

        return self._run(self._read, once)

    def purge(self, status: Any, older_than: timedelta | float, *, queue: str | None = None) -> int:
        """Delete Done and/or Dead tasks (their error rows, and the join that inserted a
        task under its key) that finished at least
        ``older_than`` ago (a timedelta or seconds), in batches of ``BATCH`` rows.
        Pending, Running and Failed tasks are refused (``ValueError``). Returns how many."""
        statuses = self._purgeable(status)
        cutoff = clock.timestamp() - clock.seconds(older_than, name="older_than")
        Job, Error, Recovery = self.models.Job, self.models.Error, self.models.Recovery

        def batch() -> int:
            with self._write_tx():
                found = Job.select(Job.id, Job.key).where(
                    Job.status.in_(_values(statuses)) & (Job.done_at <= cutoff)
                )
                if queue is not None:
                    found = found.where(Job.queue == queue)
                rows = list(found.limit(BATCH).tuples())
                ids = [row[0] for row in rows]
                if ids:
                    Error.delete().where(Error.job_id.in_(ids)).execute()
                    Recovery.delete().where(Recovery.job_id.in_(ids)).execute()
                    Job.delete().where(Job.id.in_(ids)).execute()
                    # a join goes with the task it inserted under its key (workflows)
                    keys = [row[1] for row in rows if row[1] is not None]
                    if keys:
                        Join, JoinPart = self.models.Join, self.models.JoinPart
                        JoinPart.delete().where(JoinPart.join_key.in_(keys)).execute()
                        Join.delete().where(Join.join_key.in_(keys)).execute()
                return len(ids)

        return self._in_batches(batch)
