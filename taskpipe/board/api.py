"""What the board's JSON API answers: plain dicts built from a store's introspection.

Every read is bounded: a page of tasks, counts on the stores' indexes
(``list_queues(done=False)``; the Done totals are recounted at most every
``DONE_COUNTS_TTL`` seconds, in the background), ``throughput`` of the last few
minutes (the day's older buckets are recounted in the background every
``SETTLED_TTL`` seconds), a page of workers, and key-prefix walks for cron streams
and workflow runs.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from .. import clock
from ..errors import RunNotFound, TaskNotFound
from ..expose import jsonable
from ..task import Status, Task
from .cache import Refreshed

__all__ = ["ApiError", "BoardApi", "preview", "PREVIEW_CHARS"]

log = logging.getLogger("taskpipe.board")

PREVIEW_CHARS = 200  # args, results and errors are cut to this in lists
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
DONE_COUNTS_TTL = 15.0  # seconds between recounts of the Done totals
SETTLED_TTL = 60.0  # seconds between recounts of the past day's throughput
BUCKET = 300.0  # seconds: the overview's throughput bars (12 an hour; hourly: 12 summed)
MAX_STREAMS = 50  # cron streams shown
MAX_RUNS = 50  # workflow runs shown
MAX_STEPS_TIMED = 100  # steps of a run whose start time is read (one lookup each)
MAX_QUEUE_NAME = 200
MAX_TASK_ID = 2**63 - 1  # the stores' ids are signed 64-bit integers
MAX_RUN_AFTER = 100 * 366 * 86400  # seconds: a push's delay (a due time stays a date)
CRON_PREFIX = "cron:"


class ApiError(Exception):
    """A request the API refuses: ``status`` (a 4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _json_text(value: Any) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False)


def preview(value: Any, limit: int = PREVIEW_CHARS) -> dict[str, Any]:
    """``value`` as JSON text cut at ``limit`` characters: ``{"text", "truncated"}``."""
    text = value if isinstance(value, str) else _json_text(value)
    if len(text) <= limit:
        return {"text": text, "truncated": False}
    return {"text": text[:limit] + "…", "truncated": True}


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


def checked_queue(name: Any) -> str:
    """A queue name from a request, or a 400."""
    if not isinstance(name, str) or not name or len(name) > MAX_QUEUE_NAME:
        raise ApiError(400, f"a queue name is 1 to {MAX_QUEUE_NAME} characters")
    if not name.isprintable():
        raise ApiError(400, "a queue name has printable characters only")
    return name


def checked_id(text: str) -> int:
    """A task id from a request path or parameter, or a 400."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_TASK_ID:
        raise ApiError(400, f"not a task id: {text[:40]!r}")
    return int(text)


class BoardApi:
    """The answers of the board's API over ``store`` (one that declares
    ``introspection``); ``streams`` are ``CronStream`` objects whose next tick it can
    tell exactly (others are estimated from their last two ticks)."""

    def __init__(self, store: Any, *, streams: Any = ()):
        self.store = store
        self.streams = {s.name: s for s in streams}
        self._siblings: dict[str, Any] = {store.queue: store}
        self._lock = threading.Lock()
        self._done = Refreshed(self._count_done, DONE_COUNTS_TTL, "count Done tasks")
        self._settled = Refreshed(self._settled_buckets, SETTLED_TTL, "count past throughput")

    # Capabilities --------------------------------------------------------------------------
    def can(self, capability: str) -> bool:
        """Whether the store declares ``capability`` (a field of ``Capabilities``)."""
        return bool(getattr(self.store.capabilities, capability))

    def store_for(self, queue: str) -> Any:
        """A store on ``queue`` sharing this store's database or client."""
        with self._lock:
            found = self._siblings.get(queue)
            if found is not None:
                return found
            handle = getattr(self.store, "db", None) or getattr(self.store, "client", None)
            if handle is None:
                raise ApiError(404, f"this store holds one queue ({self.store.queue!r})")
            from ..connection import open_storage

            found = open_storage(
                handle, queue, codec=self.store.codec, config=self.store.config.with_queue(queue)
            )
            if len(self._siblings) < 1000:
                self._siblings[queue] = found
            return found

    def close_thread_connections(self) -> None:
        """Close the calling thread's connections (a request's thread is done)."""
        with self._lock:
            stores = list(self._siblings.values())
        for store in stores:
            store.close_thread_connection()

    # Overview ------------------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        """Counts per queue and status, throughput and failures over the last hour (5
        minute bars) and day (hourly bars), lag, paused queues and live workers."""
        now = clock.timestamp()
        live = {q.name: q for q in self.store.list_queues(done=False)}
        done = self._done.get()
        paused = set(self.store.paused_queues()) if self.can("pausing") else set()
        names = sorted(set(live) | set(done) | paused)
        queues = []
        for name in names:
            q = live.get(name)
            counts = {s.value: (getattr(q, s.value) if q is not None else 0) for s in Status}
            counts["done"] = max(counts["done"], done.get(name, 0))
            due = (
                self.store_for(name).next_due() if q is not None and q.pending + q.failed else None
            )
            queues.append(
                {
                    "name": name,
                    "counts": counts,
                    "paused": name in paused,
                    "lag": None if due is None or due > now else now - due,
                    "oldest_due": None if due is None else _iso(due),
                }
            )
        day_start = (now // 3600 - 23) * 3600  # 24 whole hours, the current one last
        buckets = self._day_buckets(day_start, now)
        hour = buckets[-12:]
        day = [
            {
                "start": buckets[i]["start"],
                "done": sum(b["done"] for b in buckets[i : i + 12]),
                "failed": sum(b["failed"] for b in buckets[i : i + 12]),
            }
            for i in range(0, len(buckets), 12)
        ]
        workers = self.store.list_workers(limit=50)
        return {
            "now": _iso(now),
            "queues": queues,
            "done_counted_at": _iso(self._done.computed_at or now),
            "hour": hour,
            "day": day,
            "workers": [jsonable(w) for w in workers],
            "capabilities": {"pausing": self.can("pausing"), "joins": self.can("joins")},
        }

    def _count_done(self) -> dict[str, int]:
        """The Done total of each queue (a scan of the Done index on SQL: cached)."""
        return {q.name: q.done for q in self.store.list_queues()}

    def _settled_buckets(self) -> tuple[float, dict[float, tuple[int, int]]]:
        """(cut, counts by bucket start) of the last day's buckets that ended before
        ``cut``: they no longer change (cached; only the buckets after ``cut`` are read
        at each request)."""
        now = clock.timestamp()
        cut = now // BUCKET * BUCKET
        since = (now // 3600 - 23) * 3600
        buckets = self.store.throughput(since, BUCKET) if cut > since else []
        return cut, {
            b.start.timestamp(): (b.done, b.failed) for b in buckets if b.start.timestamp() < cut
        }

    def _day_buckets(self, day_start: float, now: float) -> list[dict[str, Any]]:
        """The last day's buckets of ``BUCKET`` seconds from ``day_start``, the current
        one last: the settled ones from the cache, the recent ones read now."""
        cut, settled = self._settled.get()
        if now - cut > 3600:  # the cache could not be refreshed for an hour: read it all
            cut, settled = day_start, {}
        counts = dict(settled)
        for b in self.store.throughput(max(cut, day_start), BUCKET):
            counts[b.start.timestamp()] = (b.done, b.failed)
        starts = range(int(day_start), int(now // BUCKET * BUCKET) + 1, int(BUCKET))
        return [
            {"start": _iso(t), "done": counts.get(t, (0, 0))[0], "failed": counts.get(t, (0, 0))[1]}
            for t in starts
        ]

    # Tasks --------------------------------------------------------------------------------
    def tasks(self, params: dict[str, str]) -> dict[str, Any]:
        """A page of tasks, newest first, filtered by ``queue`` and ``status``, or the
        one task ``id``; args, results and errors cut to ``PREVIEW_CHARS``."""
        limit = _int_param(params, "limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        page = _int_param(params, "page", 0, 0, 100_000)
        queue = params.get("queue") or None
        if queue is not None:
            checked_queue(queue)
        status = params.get("status") or None
        if status is not None and status not in {s.value for s in Status}:
            raise ApiError(400, f"unknown status {status[:40]!r}")
        wanted = params.get("id") or None
        if wanted is not None:
            try:
                found = [self.store.fetch_by_id(checked_id(wanted.strip()))]
            except TaskNotFound:
                found = []
            return {"tasks": [self._row(t) for t in found], "page": 0, "more": False}
        infos = self.store.list_tasks(
            queue=queue, status=status, limit=limit + 1, offset=page * limit
        )
        return {
            "tasks": [self._row(t) for t in infos[:limit]],
            "page": page,
            "more": len(infos) > limit,
        }

    @staticmethod
    def _row(info: Any) -> dict[str, Any]:
        last = info.errors[-1].error if info.errors else None
        return {
            "id": int(info.id),
            "queue": info.queue,
            "status": jsonable(info.status),
            "priority": info.priority,
            "attempts": info.attempts,
            "max_attempts": info.max_attempts,
            "run_at": jsonable(info.run_at),
            "created_at": jsonable(info.created_at),
            "done_at": jsonable(info.done_at),
            "worker": info.worker,
            "args": preview(info.args),
            "error": None if last is None else preview(last),
        }

    def task(self, task_id: int) -> dict[str, Any]:
        """One task whole: args, result, every attempt's error and traceback, its
        recoveries, times and worker."""
        info = self.store.fetch_by_id(task_id)
        data = jsonable(info)
        data["args_text"] = json.dumps(jsonable(info.args), ensure_ascii=False, indent=2)
        data["result_text"] = json.dumps(jsonable(info.result), ensure_ascii=False, indent=2)
        return data

    # Actions ------------------------------------------------------------------------------
    def act(self, task_id: int, action: str) -> dict[str, Any]:
        """``retry``, ``kill`` or ``delete`` one task (``delete`` kills an unfinished
        one first); ``done`` says whether anything changed."""
        if action == "retry":
            changed = self.store.retry(task_id)
        elif action == "kill":
            changed = self.store.kill(task_id)
        elif action == "delete":
            self.store.kill(task_id)  # unfinished: Dead first (False when finished)
            changed = self.store.delete(task_id)
        else:
            raise ApiError(404, f"no action {action[:40]!r}")
        return {"id": task_id, "action": action, "done": bool(changed)}

    def push(self, queue: str, body: Any) -> dict[str, Any]:
        """Push one task into ``queue``: ``{"args": …, "priority": 0, "run_after": 0,
        "max_attempts": null}``."""
        queue = checked_queue(queue)
        if not isinstance(body, dict) or "args" not in body:
            raise ApiError(400, 'the body is a JSON object with "args"')
        unknown = set(body) - {"args", "priority", "run_after", "max_attempts"}
        if unknown:
            raise ApiError(400, f"unknown fields: {', '.join(sorted(unknown))[:100]}")
        priority = body.get("priority", 0)
        run_after = body.get("run_after", 0)
        max_attempts = body.get("max_attempts")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ApiError(400, "priority is an integer")
        if (
            isinstance(run_after, bool)
            or not isinstance(run_after, (int, float))
            or not 0 <= run_after <= MAX_RUN_AFTER
        ):
            raise ApiError(400, f"run_after is a number of seconds from 0 to {MAX_RUN_AFTER}")
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise ApiError(400, "max_attempts is an integer >= 1")
        task = Task(
            body["args"],
            priority=priority,
            run_after=run_after or None,
            max_attempts=max_attempts,
        )
        task_id = self.store_for(queue).push_task(task)
        return {"id": int(task_id), "queue": queue}

    def retry_dead(self, queue: str) -> dict[str, Any]:
        """Retry every Dead task of ``queue``."""
        return {"queue": queue, "count": self.store.retry_dead(checked_queue(queue))}

    def pause(self, queue: str, paused: bool) -> dict[str, Any]:
        """Pause or resume ``queue`` (stores with ``pausing``)."""
        queue = checked_queue(queue)
        if not self.can("pausing"):
            raise ApiError(409, "this store cannot pause queues (no 'pausing' capability)")
        if paused:
            self.store.pause_queue(queue)
        else:
            self.store.resume_queue(queue)
        return {"queue": queue, "paused": paused}

    # Schedules and workflows ----------------------------------------------------------------
    def schedules(self) -> dict[str, Any]:
        """Cron streams that have ticked (their greatest key each, by a walk down the
        key index), with their last tick and the next one (exact for the streams the
        app was given, else estimated from the last two ticks)."""
        if not self.can("joins"):
            return {"available": False, "streams": []}
        streams = []
        before: str | None = None
        for _ in range(MAX_STREAMS):
            page = self.store.tasks_with_key_prefix(CRON_PREFIX, limit=1, before=before)
            if not page:
                break
            key = page[0][0]
            escaped = key[len(CRON_PREFIX) :].split(":", 1)[0]
            prefix = f"{CRON_PREFIX}{escaped}:"
            before = prefix  # every key of the streams after it sorts below
            last_two = self.store.tasks_with_key_prefix(prefix, limit=2)
            streams.append(self._stream(escaped, prefix, last_two))
        return {"available": True, "streams": streams}

    def _stream(self, escaped: str, prefix: str, ticks: list[tuple[str, Any]]) -> dict[str, Any]:
        name = escaped.replace("%3A", ":").replace("%25", "%")
        dues = [_parse_due(key[len(prefix) :]) for key, _ in ticks]
        last = dues[0] if dues else None
        info = ticks[0][1] if ticks else None
        stream = self.streams.get(name)
        estimated = False
        if stream is not None and last is not None:
            nxt: datetime | None = stream.schedule.next_after(max(last, clock.now()))
        elif len(dues) == 2 and dues[0] is not None and dues[1] is not None:
            nxt, estimated = dues[0] + (dues[0] - dues[1]), True
        else:
            nxt = None
        return {
            "name": name,
            "last_due": jsonable(last),
            "last_task": None if info is None else int(info.id),
            "last_status": None if info is None else jsonable(info.status),
            "next_due": jsonable(nxt),
            "next_estimated": estimated,
        }

    def runs(self, params: dict[str, str]) -> dict[str, Any]:
        """The latest workflow runs, each with its steps' states."""
        if not self.can("joins"):
            return {"available": False, "runs": []}
        limit = _int_param(params, "limit", 20, 1, MAX_RUNS)
        return {"available": True, "runs": [jsonable(r) for r in self.store.list_runs(limit=limit)]}

    def run(self, run_id: str) -> dict[str, Any]:
        """One workflow run and its steps (nodes), oldest first."""
        if not run_id or ":" in run_id or not run_id.isalnum() or len(run_id) > 64:
            raise ApiError(400, f"not a run id: {run_id[:40]!r}")
        try:
            status = self.store.workflow_status(run_id)
        except RunNotFound:  # (its message names the store: a path, a server)
            raise ApiError(404, f"no workflow run {run_id!r}") from None
        data = jsonable(status)
        # when each step's first task was made: the page lays a DAG out by it (nodes
        # released by one finished parent were made together)
        for step in data["steps"][:MAX_STEPS_TIMED]:
            first = min(step["tasks"], default=None)
            step["created_at"] = (
                None if first is None else jsonable(self.store.fetch_by_id(first).created_at)
            )
        return data


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _parse_due(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
