"""The store contract: what a store provides, and all that a worker relies on.

A store author reads this module only. A store is a subclass of ``Store`` that
implements a handful of primitives, each with an atomicity promise; the worker owns
the loops (one poll loop and one heartbeat loop for every store), the pool, the
retry decisions and the events::

    insert(rows)          all or nothing; ids returned in the rows' order; a row with
                          a key whose key is already stored is not inserted again
                          (its existing id is returned): idempotent on the key
    claim(ctx, limit)     take at most ``limit`` due tasks (highest priority, then
                          earliest due, then oldest), exclusively across threads,
                          processes and hosts; each becomes Running under a fresh
                          lease, its attempt counted. None: there will never be more
    ack(outcomes)         record a batch of outcomes, lease-fenced: an outcome whose
                          task no longer runs under its lease (a zombie's, a killed
                          task's) changes nothing, follow-ups included, and is marked
                          ``accepted = False``; with ``follow_ups`` the outcome's new
                          tasks are inserted in the same transaction as the ack
    beat(ctx)             renew this run's liveness, and re-enqueue the running tasks
                          of runs that stopped beating (a recovery, not an attempt)
    next_due()            the earliest ``run_at`` still waiting in this queue, or None
    check_setup()         raise ``SetupError`` (with what to run) if never set up

With the ``joins`` capability (workflows' fan-in), three more::

    ack(outcomes)         also records each accepted outcome's ``join_parts``, in the
                          same transaction: part ``slot`` of join ``key`` is kept
                          (a part already recorded is a no-op and does not count
                          again); the part that completes all ``slots`` inserts the
                          part's ``row`` (keyed: idempotent). Exactly one ack, among
                          any number of concurrent ones, completes a join.
    join_parts(key)       the recorded parts of a join, ``[(slot, value)]`` by slot
    tasks_with_key_prefix(prefix, limit, before)
                          the tasks whose key starts with ``prefix`` (and is below
                          ``before``), greatest key first: ``[(key, TaskInfo)]``

With the ``rate_limits`` capability (``rate_limit(n, per, key=…)`` across workers)::

    take_slot(key, interval)
                          reserve the next start of ``key``: the later of now and
                          the last reserved start plus ``interval``, as one atomic
                          read-modify-write across threads, processes and hosts;
                          return the seconds to wait until it (0.0: start now)

With the ``pausing`` capability (``pause_queue``/``resume_queue``, written once here
on them), two more::

    set_paused(queue, paused)
                          record durably, for every process sharing the store, that
                          ``queue`` is paused (True) or not (False); idempotent
    paused_queues()       the set of queues recorded paused: one cheap read (every
                          worker calls it at each heartbeat)

With the ``overlapping_claims`` capability (a network store: Redis), the worker calls
``claim``/``ack_and_claim``/``ack`` of one run from two threads at once while it is
busy, each thread on its own connection, so that one claim's round trip overlaps the
next. ``ctx.in_flight`` then counts the other claim's room too; a task that must run
alone that still comes beside other tasks is handed back by the worker, never started.

Attempt accounting, the same in every store: a claim starts attempt n (``attempts``
goes up by one); a release (claimed, never started) takes it back; an interruption
at shutdown keeps it; a recovery after a dead worker takes it back and counts a
recovery instead, and after ``Config.max_recoveries`` of those the task is Dead. A
recovery leaves a record on the task (which run stopped beating, and when).

Capabilities are declared on the class (``Capabilities``), never probed: the worker,
the CLI, pipes and cron call ``require()`` and say clearly what a store cannot do.

The push side (``push``, ``push_bulk``, ``push_stream``, ``push_task``, ``push_all``)
is written once here, on ``row()`` (encode) and ``insert()`` (write).
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, NamedTuple

from . import clock
from .codec import Codec, JsonCodec, encode_many, resolve_codec
from .config import Config
from .errors import CapabilityError, CodecError
from .task import Task, TaskId
from .wakeups import WakeRegistry

if TYPE_CHECKING:
    from .context import WorkerContext

__all__ = [
    "Capabilities",
    "Claim",
    "JoinPart",
    "Outcome",
    "OutcomeKind",
    "Row",
    "Store",
    "TaskSink",
    "require",
    "safe_text",
]

log = logging.getLogger("taskpipe.store")

DEFAULT_STREAM_BATCH = 1000
_META_CODEC = JsonCodec()  # meta is JSON in every store, whatever the args' codec


@dataclass(frozen=True)
class Capabilities:
    """What a store can do beyond the primitives every store has."""

    #: ``list_tasks``, ``fetch_by_id``, ``list_workers``, ``list_queues``, ``stats``,
    #: ``retry``, ``retry_dead``, ``kill``, ``purge``, ``delete``, ``throughput`` and
    #: ``wait_for``.
    introspection: bool = False
    #: ``Task(key=…)`` pushes are idempotent on the key, and ``last_key(prefix)`` finds
    #: the greatest stored key (cron streams enqueue each tick once).
    keys: bool = False
    #: A push from another process wakes this store's idle workers without polling.
    wakeups: bool = False
    #: ``Outcome.follow_ups`` are inserted atomically with the ack (workflows).
    follow_ups: bool = False
    #: Pushes block while the store is full (``wait_for_room``): backpressure.
    bounded: bool = False
    #: ``ack`` records outcomes: retries and Dead tasks are durable in the store.
    outcomes: bool = True
    #: Tasks of a worker that stopped beating are re-enqueued by another worker.
    recovery: bool = False
    #: ``Outcome.join_parts`` are recorded with the ack, and a join completes exactly
    #: once (workflows' fan-in); ``join_parts()`` and ``tasks_with_key_prefix()``.
    joins: bool = False
    #: ``for_queue(queue)`` gives a store for another queue of the same database (a
    #: ``Router`` pushes a function declared with ``queue=`` there).
    queues: bool = False
    #: ``take_slot()`` spaces task starts per key across every worker of the store
    #: (``rate_limit(n, per, key=…)``).
    rate_limits: bool = False
    #: ``pause_queue``/``resume_queue``/``paused_queues``: a queue's pause is recorded
    #: in the store, so every worker of that queue (any process, any host) sees it at
    #: its next heartbeat, and then claims nothing from it until it is resumed; the
    #: tasks it runs finish. A resume in this process wakes its idle workers at once.
    pausing: bool = False
    #: Claims (and acks) of one run may be in flight at once from several threads,
    #: each on its own connection: the worker claims ahead from a second thread while
    #: it is busy, so that the store's time and the worker's overlap (a network store).
    overlapping_claims: bool = False


def require(store: Any, capability: str, purpose: str) -> None:
    """Raise ``CapabilityError`` unless ``store`` declares ``capability``; ``purpose``
    says what needed it ("list tasks", "enqueue cron ticks once")."""
    capabilities = getattr(store, "capabilities", None)
    if not isinstance(capabilities, Capabilities):
        raise CapabilityError(f"{store!r} is not a taskpipe store (it declares no capabilities)")
    if capability not in {f.name for f in fields(Capabilities)}:
        raise ValueError(f"unknown capability {capability!r}")
    if not getattr(capabilities, capability):
        raise CapabilityError(
            f"{store!r} cannot {purpose}: it does not have the {capability!r} capability "
            f"(a SQL store has it: taskpipe.open_storage('jobs.db'))"
        )


class Row(NamedTuple):
    """One encoded task on its way into a store (``insert``): the column values, in
    the order the SQL stores bind them."""

    id: int | None
    queue: str
    payload: Any
    priority: int
    run_at: float
    max_attempts: int | None
    meta: str | None
    key: str | None
    created_at: float


class JoinPart(NamedTuple):
    """One input of a join, recorded with its outcome's ack (stores with ``joins``):
    part ``slot`` (0 ≤ slot < ``slots``) of the join ``key``, its encoded ``value``,
    and the ``row`` to insert (keyed) when the last of the ``slots`` parts arrives."""

    key: str
    slots: int
    slot: int
    value: bytes
    row: Row


@dataclass(slots=True)
class Claim:
    """A task claimed by a worker run: its still-encoded payload and the lease that
    fences its ack. ``defect`` says why the stored row cannot become a task (a bad
    field): the worker makes that task Dead with the reason, and runs the others."""

    id: TaskId
    queue: str
    payload: Any
    attempt: int
    lease: str
    priority: int = 0
    max_attempts: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    defect: str | None = None
    #: Run this task alone: the worker claims nothing else until it has finished
    #: (it was running beside others when a worker died; see ``Store.beat``).
    isolated: bool = False
    #: The epoch second the task was due (its ``run_at`` when claimed), if the store
    #: says; the metrics layer reports the lag behind it.
    due_at: float | None = None

    def to_task(self, args: Any) -> Task[Any]:
        """The ``Task`` a handler sees: ``args`` decoded, with id, attempt, queue and
        due time."""
        task = Task(
            args,
            id=self.id,
            priority=self.priority,
            max_attempts=self.max_attempts,
            meta=self.meta,
            attempt=self.attempt,
            queue=self.queue,
        )
        task.due_at = self.due_at
        return task


class OutcomeKind(enum.Enum):
    """What the worker decided about one claimed task."""

    DONE = "done"  # the handler returned
    RETRY = "retry"  # failed; run again after ``delay``
    DEAD = "dead"  # failed for good (attempts exhausted, undecodable, bad row)
    RELEASE = "release"  # claimed but never started: back to Pending, attempt not counted
    INTERRUPTED = "interrupted"  # still running when the shutdown grace ended


@dataclass(slots=True)
class Outcome:
    """One task's outcome, on its way from a pool thread to ``Store.ack``.

    ``result`` is the handler's return value (for events); ``encoded_result`` what the
    store writes (already encoded, so an ack never fails on a value). ``follow_ups``
    are rows to insert in the ack's transaction (stores with ``follow_ups``);
    ``join_parts`` are join inputs recorded in it (stores with ``joins``).
    """

    claim: Claim
    kind: OutcomeKind
    result: Any = None
    encoded_result: Any = None
    error: str | None = None
    traceback: str | None = None
    delay: float = 0.0  # seconds until the next try (RETRY, INTERRUPTED)
    follow_ups: tuple[Row, ...] = ()
    accepted: bool = True  # set False by ack() when the lease no longer matched
    task: Task[Any] | None = None  # what the handler saw (None if it never ran)
    join_parts: tuple[JoinPart, ...] = ()

    @property
    def task_id(self) -> TaskId:
        """The id of the task this outcome is about."""
        return self.claim.id


def safe_text(text: str | None, limit: int = 65536) -> str | None:
    """``text`` made writable anywhere: lone surrogates escaped, NUL removed, cut at
    ``limit`` characters."""
    if text is None:
        return None
    if not isinstance(text, str):
        text = str(text)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit} more characters)"
    return text


class TaskSink:
    """The five push methods, written once on ``row()`` and ``insert()``.

    Every value is encoded before anything is written, so a ``CodecError`` writes
    nothing of that call (for streams: nothing of that batch).
    """

    queue: str
    codec: Codec

    def push(self, args: Any) -> TaskId:
        """Encode ``args`` and enqueue it as one task; return its id once committed."""
        return self._insert_rows([self.plain_row(args, self._now())])[0]

    def push_task(self, task: Task[Any]) -> TaskId:
        """Enqueue a pre-built ``Task`` (priority, run_after, max_attempts, meta, key)."""
        if not isinstance(task, Task):
            raise TypeError(
                f"push_task() takes a Task, not {type(task).__name__}: use push() for plain values"
            )
        return self._insert_rows([self.row(task, self._now())])[0]

    def push_bulk(self, items: Iterable[Any]) -> list[TaskId]:
        """Enqueue many values in one transaction: all or nothing. Returns their ids."""
        now, queue = self._now(), self.queue
        rows = [
            Row(None, queue, payload, 0, now, None, None, None, now)
            for payload in encode_many(self.codec, items)
        ]
        return self._insert_rows(rows) if rows else []

    def push_stream(self, items: Iterable[Any], *, batch_size: int = DEFAULT_STREAM_BATCH) -> int:
        """Enqueue a (possibly huge, lazy) iterable in batches of ``batch_size``, one
        transaction each, holding one batch in memory at a time. Returns the count.

        If a value fails to encode, the batches before it stay committed and the
        ``CodecError`` says how many were pushed.
        """
        return self._push_batches(items, batch_size, self.plain_row)

    def push_all(
        self, tasks: Iterable[Task[Any]], *, batch_size: int = DEFAULT_STREAM_BATCH
    ) -> int:
        """Like ``push_stream`` for pre-built ``Task`` objects. Returns the count."""

        def make_row(task: Task[Any], now: float) -> Row:
            if not isinstance(task, Task):
                raise TypeError(f"push_all() takes Task objects, got {type(task).__name__}")
            return self.row(task, now)

        return self._push_batches(tasks, batch_size, make_row)

    def row(self, task: Task[Any], now: float, *, queue: str | None = None) -> Row:
        """Encode ``task`` for this store (into ``queue``, default this store's); raises
        ``CodecError`` and writes nothing when its args or meta cannot be encoded."""
        if task.meta:
            try:
                meta: str | None = _META_CODEC.encode(task.meta).decode()
            except CodecError as exc:
                raise CodecError(f"meta: {exc}") from exc
        else:
            meta = None
        run_at = now if task.run_after is None else task.run_at(now)
        return Row(
            None if task.id is None else int(task.id),
            queue or self.queue,
            self.codec.encode(task.args),
            task.priority,
            run_at,
            task.max_attempts,
            meta,
            task.key,
            now,
        )

    def plain_row(self, args: Any, now: float) -> Row:
        """``row(Task(args), now)``, without building the ``Task`` (the push fast path)."""
        return Row(None, self.queue, self.codec.encode(args), 0, now, None, None, None, now)

    def _push_batches(
        self, items: Iterable[Any], batch_size: int, make_row: Callable[[Any, float], Row]
    ) -> int:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        count = 0
        iterator = iter(items)
        while True:
            chunk = list(itertools.islice(iterator, batch_size))
            if not chunk:
                return count
            now = self._now()
            try:
                rows = [make_row(item, now) for item in chunk]
            except CodecError as exc:
                raise CodecError(f"{exc} (after {count} items were pushed)") from exc
            self._insert_rows(rows)
            count += len(rows)

    def _now(self) -> float:
        return clock.timestamp()

    def _insert_rows(self, rows: list[Row]) -> list[TaskId]:  # pragma: no cover - abstract
        raise NotImplementedError


def _queue_name(queue: str | None, default: str) -> str:
    """``queue``, or ``default`` when None; a clear error for anything but a name."""
    if queue is None:
        return default
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"a queue name is a non-empty string, got {queue!r}")
    return queue


class Store(TaskSink):
    """The base of every store (see the module docstring for the contract).

    A subclass calls ``super().__init__(queue=…, codec=…, config=…)``, sets
    ``capabilities`` and implements ``insert``, ``claim``, ``ack``, ``next_due``; it
    may override ``beat``, ``retire``, ``check_setup``, ``open_run``/``close_run``,
    ``idle`` and ``close_thread_connection``. Introspection (``list_tasks``,
    ``fetch_by_id``, ``stats``…, see ``taskpipe.expose.Expose``) is a capability of
    its own: a store that declares ``introspection`` implements those methods too;
    one that declares ``pausing`` implements ``set_paused`` and ``paused_queues``.
    """

    capabilities: Capabilities = Capabilities()

    queue: str
    config: Config
    codec: Codec
    #: The in-process registry that pushes notify and idle workers wait on.
    wakeups: WakeRegistry

    def __init__(self, queue: str | None = None, codec: Any = None, config: Config | None = None):
        """Set ``config`` (``queue`` wins over ``config.queue``), ``queue``, ``codec``
        (JSON by default) and ``wakeups`` (a registry of this store's own)."""
        config = config or Config()
        if queue is not None:
            config = config.with_queue(queue)
        self.config = config
        self.queue = config.queue
        self.codec = resolve_codec(codec)
        self.wakeups = WakeRegistry()

    # Primitives ------------------------------------------------------------------------
    def insert(self, rows: Sequence[Row]) -> list[TaskId]:
        """Write ``rows`` (from ``row()``), all or nothing; return their ids in order.
        A keyed row whose key is stored already is skipped and its existing id
        returned. Raises ``PushError`` when the store refuses or fails."""
        raise NotImplementedError

    def claim(self, ctx: WorkerContext, limit: int) -> list[Claim] | None:
        """Atomically take up to ``limit`` due tasks of this queue for ``ctx``'s run
        (exclusive across processes and hosts), each Running under a fresh lease
        (``ctx.new_lease()``) with its attempt counted. ``[]``: nothing due now;
        None: this store will never have more (a finite source ran dry)."""
        raise NotImplementedError

    def ack_and_claim(
        self, outcomes: Sequence[Outcome], ctx: WorkerContext, limit: int
    ) -> list[Claim] | None:
        """Optional: ``ack(outcomes)`` and ``claim(ctx, limit)`` as one atomic step
        (one round trip, one commit), for a store that can. Returns the claims and
        sets each outcome's ``accepted``; raises when nothing was written. None (the
        default): not for these outcomes; nothing was done, and the worker acks and
        claims separately."""
        return None

    def ack(self, outcomes: Sequence[Outcome]) -> None:
        """Record ``outcomes`` in one transaction, lease-fenced (see the module
        docstring): all or nothing. When the store refuses the batch because of what
        it holds (a follow-up with a taken id or key) it raises ``OutcomeRefused`` and
        records nothing: the worker then tries each outcome alone and writes one that
        is still refused as Dead with the reason. When the store is unavailable it
        raises ``StorageError``: the worker keeps the outcomes and tries again later."""
        raise NotImplementedError

    def next_due(self) -> float | None:
        """The earliest ``run_at`` (epoch seconds) of a task still waiting in this
        queue (Pending or Failed), due or not; None when there is none. A store that
        cannot tell returns the current time: the worker then claims after each
        polling delay."""
        raise NotImplementedError

    def take_slot(self, key: str, interval: float) -> float:
        """Stores with ``rate_limits``: atomically reserve the next start slot of the
        limit ``key`` (shared by every worker of the store, whatever its queue) and
        return how many seconds to wait before starting (0.0: now). The slot is the
        later of now and the last reserved slot plus ``interval`` seconds; it becomes
        the last reserved slot. Concurrent calls (threads, processes, hosts) get
        distinct slots, ``interval`` apart. Times are ``clock.timestamp()``, read by
        the caller (as for every other time a store records)."""
        raise NotImplementedError

    def beat(self, ctx: WorkerContext) -> None:
        """Record that ``ctx``'s run is alive (renewing its leases) and re-enqueue the
        running tasks of dead runs: silent for ``config.reenqueue_orphaned_after`` (a
        store may know better on its own host: a run whose process is alive is not
        dead, one whose process is gone is dead at once). A dead run's only task counts
        a recovery; tasks that ran beside others are marked to run alone, uncounted.
        Stores whose tasks die with the process have nothing to do."""

    def retire(self, ctx: WorkerContext) -> None:
        """``ctx``'s run stopped cleanly: forget it."""

    def check_setup(self) -> None:
        """Raise ``SetupError`` saying what to run when the store was never set up."""

    def open_run(self, ctx: WorkerContext) -> None:
        """A worker run starts taking tasks from this store (before its first claim)."""

    def close_run(self, ctx: WorkerContext) -> None:
        """The run has stopped taking tasks (after its last claim, before its last acks)."""

    def for_queue(self, queue: str) -> Store:
        """A store for ``queue`` in the same database, with this store's codec and
        config (where a ``Router`` pushes a function declared with ``queue=``); this
        store itself for its own queue. Needs the ``queues`` capability (without it,
        a store holds one queue only: memory, pipes, custom backends)."""
        if queue == self.queue:
            return self
        require(self, "queues", f"give a store for queue {queue!r} (it holds one queue)")
        raise NotImplementedError  # a store that declares ``queues`` overrides this

    def middleware(self) -> list[Any]:
        """Layers this store adds around every handler of a worker built on it (inside
        the worker's own ``.layer()``s; see ``taskpipe.layers``). None by default."""
        return []

    def idle(self) -> None:
        """The worker found nothing to do: a moment for housekeeping (SQLite
        checkpoints its write-ahead log). Must be quick and must not raise."""

    def close_thread_connection(self) -> None:
        """Close the calling thread's connection, if the store keeps one per thread."""

    # Pausing (stores with ``pausing``) --------------------------------------------------
    def pause_queue(self, queue: str | None = None) -> None:
        """Pause ``queue`` (default: this store's): its workers, in every process, claim
        none of its tasks from their next heartbeat until ``resume_queue``; what they
        run finishes, pushes are kept. Idempotent. ``CapabilityError`` without
        ``pausing``."""
        require(self, "pausing", "pause a queue")
        self.set_paused(_queue_name(queue, self.queue), True)

    def resume_queue(self, queue: str | None = None) -> None:
        """Undo ``pause_queue``: the queue's workers claim again from their next
        heartbeat, at once in this process. Idempotent. ``CapabilityError`` without
        ``pausing``."""
        require(self, "pausing", "resume a queue")
        name = _queue_name(queue, self.queue)
        self.set_paused(name, False)
        self.wakeups.notify(name)  # this process's idle workers of it look again now

    def set_paused(self, queue: str, paused: bool) -> None:
        """Record, durably and for every process sharing the store, that ``queue`` is
        paused or not (stores with ``pausing``); idempotent."""
        require(self, "pausing", "pause or resume a queue")
        raise NotImplementedError

    def paused_queues(self) -> set[str]:
        """The names of the queues recorded paused (stores with ``pausing``): one cheap
        read, made by every worker at each heartbeat."""
        require(self, "pausing", "tell which queues are paused")
        raise NotImplementedError

    # Workflows (``taskpipe.workflow``) -----------------------------------------------------
    def push_start(self, args: Any, *, flow: Any = None) -> str:
        """Start a workflow run with ``args`` as the input of its first step (or only
        start node); return the run id. With ``flow`` (a ``Workflow`` or ``DagFlow``)
        its first step is written directly and checked now; without, the worker's
        flow routes it."""
        from .workflow import runs

        return runs.push_start(self, args, flow)

    def start_fan_out(self, inputs: Iterable[Any], *, flow: Any = None) -> str:
        """Start a ``DagFlow`` run with one input per start node (in the order they were
        added); return the run id. A count that does not match is a ``WorkflowError``:
        now with ``flow``, else when the worker takes the run's start task."""
        from .workflow import runs

        return runs.start_fan_out(self, inputs, flow)

    def workflow_status(self, run_id: str, *, flow: Any = None) -> Any:
        """The ``RunStatus`` of a run: its state and each step's (with ``flow``, steps
        not reached yet too); ``RunNotFound`` when no task of it is stored."""
        from .workflow import runs

        return runs.workflow_status(self, run_id, flow)

    def list_runs(
        self, *, workflow: str | None = None, state: str | None = None, limit: int = 20
    ) -> list[Any]:
        """The latest workflow runs (``RunStatus``), newest first, optionally only those
        of ``workflow`` and in ``state`` ("running", "done", "failed")."""
        from .workflow import runs

        return runs.list_runs(self, workflow=workflow, state=state, limit=limit)

    # Shared helpers --------------------------------------------------------------------
    def _insert_rows(self, rows: list[Row]) -> list[TaskId]:
        ids = self.insert(rows)
        self._after_push()
        return ids

    def _after_push(self) -> None:
        """Wake this process's idle workers of the queue (once the push is visible)."""
        self.wakeups.notify(self.queue)

    def encode_result(self, value: Any) -> Any:
        """Encode a handler's return value for ``Outcome.encoded_result``: its repr when
        the codec refuses it, and a plain note when even that fails. Never raises."""
        if value is None:
            return None
        try:
            return self.codec.encode(value)
        except Exception as exc:
            note = f"result could not be stored: {type(exc).__name__}: {exc}"
            log.warning("%s", note)
            try:
                return self.codec.encode(safe_text(repr(value), 4096))
            except Exception:
                return self.codec.encode(safe_text(note, 4096))
