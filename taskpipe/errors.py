"""taskpipe's exceptions: one root, so ``except TaskpipeError`` catches them all.

TaskpipeError
├── TaskSinkError          a push failed; nothing of that push was written
│   ├── PushError          the store rejected or could not take the write
│   └── CodecError         a value could not be encoded (or decoded)
├── StorageError           the store is unusable (missing tables, bad schema, closed)
│   ├── SetupError         setup() was not run, or the schema is newer than this code
│   ├── ServerUnreachable  a database server could not be reached when first used
│   └── OutcomeRefused     the store refuses one outcome itself (retrying cannot help)
├── BuildError             a worker or backend was assembled wrongly (at build time)
│   └── CapabilityError    the store cannot do what was asked (it does not declare it)
├── PipeError              a piped source failed (its exception is the __cause__)
├── NotStarted             a layer held a task back and the worker stopped: handed back
├── WorkflowError          a workflow is defined wrongly, or one of its runs cannot go on
│   └── RunNotFound        no workflow run has that id
├── TaskNotFound           no task has that id
├── UnknownTask            a routed task names no function of the worker's Router
├── TaskFailed             wait_for(): the task ended Dead; carries its last error
└── WaitTimeout            wait_for(): the task did not finish in time
"""

from __future__ import annotations

__all__ = [
    "TaskpipeError",
    "TaskSinkError",
    "PushError",
    "CodecError",
    "StorageError",
    "SetupError",
    "ServerUnreachable",
    "OutcomeRefused",
    "BuildError",
    "CapabilityError",
    "PipeError",
    "NotStarted",
    "TaskNotFound",
    "TaskFailed",
    "UnknownTask",
    "WorkflowError",
    "RunNotFound",
    "WaitTimeout",
]


class TaskpipeError(Exception):
    """Root of every exception taskpipe raises."""


class TaskSinkError(TaskpipeError):
    """A push failed; nothing of that push was written."""


class PushError(TaskSinkError):
    """The store rejected or could not take a push (the driver's error is the cause)."""


class CodecError(TaskSinkError):
    """A value could not be encoded, or a payload could not be decoded."""


class StorageError(TaskpipeError):
    """The store cannot be used as it is (missing tables, closed database…)."""


class SetupError(StorageError):
    """The schema is missing or newer than this version of taskpipe."""


class ServerUnreachable(StorageError):
    """A database server (PostgreSQL, MySQL) could not be reached when the database was
    first used; once it has been reached, a lost connection is retried instead."""


class OutcomeRefused(StorageError):
    """The store refused an ack because of what it holds (a follow-up whose id or key
    clashes, a value it cannot store), not because it is unavailable: writing the
    same outcome again cannot succeed."""


class BuildError(TaskpipeError):
    """A worker or backend was put together wrongly; raised at build time."""


class CapabilityError(BuildError):
    """The store does not declare a capability that this use needs (see
    ``taskpipe.store.Capabilities``)."""


class PipeError(TaskpipeError):
    """A piped source raised, or an endless source ended; the cause is attached."""


class NotStarted(TaskpipeError):
    """Raised by a layer that held a task back (a rate limit) when the worker stopped
    before the task could start: the worker hands the task back to Pending, its attempt
    not counted. Raised while the worker is not stopping, it is a failed attempt."""


class TaskNotFound(TaskpipeError, LookupError):
    """No task with that id exists in the store."""


class UnknownTask(TaskpipeError, LookupError):
    """A task's name (its meta ``"task"``) is none of the functions of the worker's
    ``Router``: the worker makes it Dead at once, with this message."""


class TaskFailed(TaskpipeError):
    """The awaited task ended Dead; ``error`` is its last recorded error."""

    def __init__(self, task_id, error: str | None):
        super().__init__(f"task {task_id} is dead: {error}")
        self.task_id = task_id
        self.error = error


class WaitTimeout(TaskpipeError, TimeoutError):
    """The awaited task did not finish before the timeout."""


class WorkflowError(TaskpipeError):
    """A workflow is defined wrongly (``validate()``: a cycle, a wrong tuple arity…), or
    one of its runs cannot go on (its inputs do not match its start nodes). A step that
    raises it is Dead at once: retrying cannot help."""


class RunNotFound(WorkflowError, LookupError):
    """No workflow run with that id is in the store."""
