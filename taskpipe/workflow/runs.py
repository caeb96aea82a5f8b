"""Workflow runs in a store: their keys, starting them, and seeing them.

Every task of a run is keyed ``wf:<run id>:<step>[:<n>]`` (``n``: an item's index,
an iteration) and carries ``meta`` naming its workflow, run and step. A follow-up is
therefore idempotent on its key, and a run's tasks are found by key prefix
(``tasks_with_key_prefix``, a range scan). Run ids are 20 hex digits: the start time
in milliseconds (made unique per process), then random bits, so that runs sort by start and ``list_runs`` walks
them newest first.

A run has no row of its own: its state is read from its tasks (``workflow_status``).
It is failed when one of its tasks is Dead, running while any is still to run, done
when all are done.
"""

from __future__ import annotations

import inspect
import threading
import typing
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from .. import clock
from ..errors import BuildError, RunNotFound, WorkflowError
from ..injection import Signature, _describe, _hints, _underlying, analyse
from ..store import JoinPart, Row, Store, require
from ..task import Status, TaskId, TaskInfo

if TYPE_CHECKING:
    from ..store import Claim
    from ..task import Task
    from ..worker import StepOutcome

__all__ = [
    "RunStatus",
    "StepStatus",
    "list_runs",
    "new_run_id",
    "push_start",
    "run_prefix",
    "start_fan_out",
    "workflow_status",
]

PREFIX = "wf:"
START = "^start"  # the step of a start task written without its flow (not a name)
RUNNING, DONE, FAILED = "running", "done", "failed"  # a run's states
PAGE = 1000  # tasks read per page when gathering a run


_last_millis = 0
_ids_lock = threading.Lock()


def new_run_id() -> str:
    """A new run id: 12 hex digits of milliseconds since the epoch (strictly increasing
    in this process, so runs started in one millisecond keep their order), 8 random."""
    global _last_millis
    with _ids_lock:
        millis = max(int(clock.timestamp() * 1000), _last_millis + 1)
        _last_millis = millis
    return f"{millis:012x}{uuid.uuid4().hex[:8]}"


def run_prefix(run_id: str) -> str:
    """The key prefix of every task of run ``run_id``."""
    return f"{PREFIX}{run_id}:"


def step_key(run_id: str, step: str, n: int | str | None = None) -> str:
    """The key of a task of run ``run_id``: one per step, or per item / iteration."""
    key = f"{PREFIX}{run_id}:{step}"
    return key if n is None else f"{key}:{n}"


class Flow(Protocol):
    """What ``push_start``/``start_fan_out`` need of a ``Workflow`` or ``DagFlow``."""

    name: str

    def start_rows(self, emit: Emitter, inputs: Sequence[Any], fan_out: bool) -> list[Row]:
        """The rows that start a run on ``inputs`` (validating their count)."""
        ...

    def check_store(self, store: Any) -> None:
        """Raise ``CapabilityError`` when ``store`` cannot run this flow."""
        ...


class Emitter:
    """Builds the rows and join parts of one run, encoded with its store's codec."""

    def __init__(self, store: Any, run_id: str, workflow: str | None, now: float):
        self.store = store
        self.run_id = run_id
        self.workflow = workflow
        self.now = now

    def meta(self, step: str, **more: Any) -> dict[str, Any]:
        """The meta of a task of this run (workflow, run and step, plus ``more``)."""
        meta: dict[str, Any] = {"workflow": self.workflow, "run": self.run_id, "step": step}
        meta.update({k: v for k, v in more.items() if v is not None})
        return meta

    def encode(self, value: Any) -> bytes:
        """``value`` encoded with the store's codec (``CodecError`` when it cannot be)."""
        return self.store.codec.encode(value)

    def row(
        self,
        step: str,
        payload: bytes,
        *,
        n: int | str | None = None,
        delay: float = 0.0,
        max_attempts: int | None = None,
        **meta: Any,
    ) -> Row:
        """A keyed row of step ``step`` (item or iteration ``n``) holding ``payload``."""
        encoded_meta = msgspec.json.encode(self.meta(step, n=n, **meta)).decode()
        return Row(
            None,
            self.store.queue,
            payload,
            0,
            self.now + delay,
            max_attempts,
            encoded_meta,
            step_key(self.run_id, step, n),
            self.now,
        )

    def join_part(self, join_step: str, slots: int, slot: int, value: Any, row: Row) -> JoinPart:
        """Part ``slot`` of the join named after ``join_step``, ``value`` encoded."""
        return JoinPart(step_key(self.run_id, join_step), slots, slot, self.encode(value), row)

    def join_key(self, join_step: str) -> str:
        """The key of the join named after ``join_step`` in this run."""
        return step_key(self.run_id, join_step)


def emitter_for(store: Any, claim: Claim, task: Task[Any], workflow: str) -> Emitter:
    """The ``Emitter`` for the follow-ups of a claimed task of a run."""
    run_id = claim.meta.get("run")
    if not isinstance(run_id, str) or not run_id:
        raise WorkflowError(
            f"task {claim.id} is not a step of a workflow run (its meta has no run id): "
            f"was it pushed with push() instead of push_start()? meta={claim.meta!r}"
        )
    started_by = claim.meta.get("workflow")
    if started_by is not None and started_by != workflow:
        raise WorkflowError(
            f"task {claim.id} is a step of workflow {started_by!r}, but this worker runs "
            f"{workflow!r}: give each workflow a queue of its own"
        )
    return Emitter(store, run_id, workflow, clock.timestamp())


# Starting runs ----------------------------------------------------------------------------
def push_start(store: Store, args: Any, flow: Flow | None = None) -> str:
    """Start a run with ``args`` as its first step's (or only start node's) input."""
    return _start(store, [args], flow, fan_out=False)


def start_fan_out(store: Store, inputs: Iterable[Any], flow: Flow | None = None) -> str:
    """Start a DAG run with one input per start node, in the order they were declared."""
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(
            f"start_fan_out() takes a list of inputs, one per start node, got {inputs!r}"
        )
    return _start(store, list(inputs), flow, fan_out=True)


def _start(store: Store, inputs: list[Any], flow: Flow | None, fan_out: bool) -> str:
    require(
        store, "follow_ups", "run workflows (each step is pushed with the ack of the one before)"
    )
    require(store, "keys", "run workflows (their steps are keyed tasks)")
    if fan_out:
        require(store, "joins", "start a DAG fan-out (its branches meet in a join)")
    run_id = new_run_id()
    now = clock.timestamp()
    if flow is None:  # the worker's flow routes the inputs when it takes this task
        emit = Emitter(store, run_id, None, now)
        payload = emit.encode(inputs if fan_out else inputs[0])
        meta: dict[str, Any] = {"start": len(inputs)}
        if fan_out:
            meta["fan_out"] = True
        rows = [emit.row(START, payload, **meta)]
    else:
        flow.check_store(store)
        rows = flow.start_rows(Emitter(store, run_id, flow.name, now), inputs, fan_out)
    store._insert_rows(rows)
    return run_id


# Seeing runs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepStatus:
    """One step (or DAG node) of a run: its state (a ``Status``: the worst of its
    tasks', or None when it has not been reached), its result and last error."""

    step: str
    name: str | None
    state: Status | None
    tasks: tuple[TaskId, ...]
    result: Any
    error: str | None
    attempts: int


@dataclass(frozen=True)
class RunStatus:
    """A workflow run: ``state`` is "running", "done" or "failed"; ``result`` is the
    last step's result once done; ``error`` names the failed step and its error."""

    run_id: str
    workflow: str | None
    state: str
    steps: tuple[StepStatus, ...]
    result: Any
    error: str | None
    failed_step: str | None
    created_at: datetime | None
    finished_at: datetime | None


def _need_scan(store: Any) -> None:
    require(store, "joins", "show workflow runs (it cannot find a run's tasks by key prefix)")


def _run_tasks(store: Any, run_id: str) -> list[TaskInfo]:
    """Every task of run ``run_id``, oldest first."""
    prefix, before = run_prefix(run_id), None
    found: list[TaskInfo] = []
    while True:
        page = store.tasks_with_key_prefix(prefix, limit=PAGE, before=before)
        found.extend(info for _, info in page)
        if len(page) < PAGE:
            break
        before = page[-1][0]
    found.sort(key=lambda info: int(info.id))
    return found


# Worst first: the state a step shows when its tasks differ.
_STEP_ORDER = (Status.DEAD, Status.RUNNING, Status.FAILED, Status.PENDING, Status.DONE)


def _step_state(infos: list[TaskInfo]) -> Status:
    statuses = {info.status for info in infos}
    for status in _STEP_ORDER:
        if status in statuses:
            return status
    return Status.PENDING  # a status taskpipe does not know: not finished


def workflow_status(store: Any, run_id: str, flow: Any = None) -> RunStatus:
    """The state of run ``run_id`` and of each of its steps; ``RunNotFound`` when the
    store holds no task of it. With ``flow``, steps not reached yet are listed too."""
    _need_scan(store)
    if not isinstance(run_id, str) or not run_id or ":" in run_id:
        raise ValueError(f"a run id is a string like the one push_start() returned, got {run_id!r}")
    infos = _run_tasks(store, run_id)
    if not infos:
        raise RunNotFound(f"no workflow run {run_id!r} in {store!r}")
    return _status_of(run_id, infos, flow)


def _status_of(run_id: str, infos: list[TaskInfo], flow: Any) -> RunStatus:
    by_step: dict[str, list[TaskInfo]] = {}
    workflow = None
    for info in infos:
        step = str(info.meta.get("step", "?"))
        by_step.setdefault(step, []).append(info)
        workflow = workflow or info.meta.get("workflow")
    names = flow.step_names() if flow is not None else {}
    steps = []
    for step, tasks in by_step.items():
        last = tasks[-1]
        errors = [e for t in tasks for e in t.errors]
        done = [t for t in tasks if t.status is Status.DONE]
        steps.append(
            StepStatus(
                step=step,
                name=names.get(step)
                or last.meta.get("name")
                or ("start" if step == START else None),
                state=_step_state(tasks),
                tasks=tuple(t.id for t in tasks),
                result=done[-1].result if done else None,
                error=errors[-1].error if errors else None,
                attempts=sum(t.attempts for t in tasks),
            )
        )
    if flow is not None:
        steps += [
            StepStatus(step, name, None, (), None, None, 0)
            for step, name in names.items()
            if step not in by_step
        ]
    dead = next((s for s in steps if s.state is Status.DEAD), None)
    if dead is not None:
        state = FAILED
        label = (
            dead.step if not dead.name or dead.name == dead.step else f"{dead.step} ({dead.name})"
        )
        error: str | None = f"step {label} failed: {dead.error}"
    elif all(info.status is Status.DONE for info in infos):
        state, error = DONE, None
    else:
        state, error = RUNNING, None
    finished = [info.done_at for info in infos if info.done_at is not None]
    return RunStatus(
        run_id=run_id,
        workflow=workflow,
        state=state,
        steps=tuple(steps),
        result=infos[-1].result if state == DONE else None,
        error=error,
        failed_step=dead.step if dead is not None else None,
        created_at=infos[0].created_at,
        finished_at=max(finished) if state != RUNNING and finished else None,
    )


def list_runs(
    store: Any, *, workflow: str | None = None, state: str | None = None, limit: int = 20
) -> list[RunStatus]:
    """The latest runs in the store, newest first (at most ``limit``), optionally only
    those of ``workflow`` and in ``state`` ("running", "done" or "failed"). Each run
    looked at costs one index lookup plus the reading of its tasks; with filters, at
    most ``max(50 * limit, 1000)`` of the latest runs are looked at."""
    _need_scan(store)
    if state is not None and state not in (RUNNING, DONE, FAILED):
        raise ValueError(f"unknown run state {state!r}: use running, done or failed")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")
    runs: list[RunStatus] = []
    before: str | None = None
    budget = max(50 * limit, 1000)  # runs looked at, at most: a filter never reads them all
    while len(runs) < limit and budget > 0:
        budget -= 1
        page = store.tasks_with_key_prefix(PREFIX, limit=1, before=before)
        if not page:
            break
        run_id = page[0][0][len(PREFIX) :].split(":", 1)[0]
        before = run_prefix(run_id)  # every key of older runs sorts below it
        infos = _run_tasks(store, run_id)
        if not infos:
            continue
        status = _status_of(run_id, infos, None)
        if workflow is not None and status.workflow != workflow:
            continue
        if state is not None and status.state != state:
            continue
        runs.append(status)
    return runs


def step_outcome(
    result: Any, rows: Sequence[Row] = (), parts: Sequence[JoinPart] = ()
) -> StepOutcome:
    """A ``StepOutcome`` (imported late: the worker imports the store, not workflows)."""
    from ..worker import StepOutcome

    return StepOutcome(result, tuple(rows), tuple(parts))


# The user's functions --------------------------------------------------------------------
def fn_name(fn: Any) -> str:
    """A name for a step's function in meta, messages and status: its ``__name__``."""
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name else _describe(fn)


def first_param_type(fn: Callable[..., Any]) -> Any:
    """The annotated type of ``fn``'s first positional parameter (``Any`` when there is
    none or it cannot be read): what a step's input is decoded into."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return Any
    first = next(
        (p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), None
    )
    if first is None:
        return Any
    try:
        hints = _hints(_underlying(fn)[0], params)
    except Exception:
        return Any
    return hints.get(first.name, Any)


def tuple_types(tp: Any, count: int) -> list[Any] | None:
    """The element types of ``tuple[A, B, …]`` (``count`` of them for ``tuple[A, ...]``);
    None when ``tp`` is not a tuple type."""
    origin = typing.get_origin(tp)
    if origin is not tuple and tp is not tuple:
        return None
    args = typing.get_args(tp)
    if not args:
        return [Any] * count
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]] * count
    return list(args)


def bind_fn(fn: Callable[..., Any], data: dict[type, Any], where: str) -> Signature:
    """``fn``'s injection ``Signature`` for a worker with ``data``; raises ``BuildError``
    for an ``async def`` (workflow steps are plain functions)."""
    signature = analyse(fn, data)
    if signature.is_async:
        raise BuildError(f"{where}: workflow steps must be plain functions, not async def")
    return signature


def call(fn: Callable[..., Any], signature: Signature, args: Any, task: Task[Any], ctx: Any) -> Any:
    """Call a step's function with its args and injected parameters."""
    task.args = args
    return fn(args, **signature.kwargs(task, ctx))


def check_callable(fn: Any, what: str) -> None:
    """Raise ``TypeError`` unless ``fn`` is a callable (when the flow is defined)."""
    if not callable(fn):
        raise TypeError(f"{what} takes a function, got {fn!r}")
