"""taskpipe: durable background jobs for plain Python.

Jobs are committed to a store (SQLite by default) before anything runs them, and a
worker runs them on a thread pool with a heartbeat beside it::

    from taskpipe import WorkerBuilder
    from taskpipe.sqlite import SqliteStorage, connect

    db = connect("jobs.db")
    SqliteStorage.setup(db)
    storage = SqliteStorage(db)      # or taskpipe.open_storage("jobs.db", queue="emails")
    storage.push({"to": "a@example.com"})
    WorkerBuilder("emails").backend(storage).build(send_email).run_until_idle()
"""

from . import clock, events, memory
from .codec import Codec, JsonCodec, MsgPackCodec, PickleCodec
from .config import Config
from .connection import connect, open_storage
from .context import WorkerContext
from .errors import (
    BuildError,
    CapabilityError,
    CodecError,
    NotStarted,
    OutcomeRefused,
    PipeError,
    PushError,
    SetupError,
    StorageError,
    TaskFailed,
    TaskNotFound,
    TaskpipeError,
    TaskSinkError,
    WaitTimeout,
)
from .events import Event
from .expose import Expose, QueueInfo, WorkerInfo
from .injection import Data
from .layers import RetryPolicy
from .monitor import Monitor, run_all
from .pipe import Pipe, pipe_to
from .polling import BackoffStrategy, IntervalStrategy, StrategyBuilder
from .processes import Supervisor
from .router import Router
from .store import Capabilities, Claim, Outcome, OutcomeKind, Store, TaskSink
from .task import (
    Attempt,
    AttemptError,
    RawStatus,
    Recovery,
    Status,
    Task,
    TaskBuilder,
    TaskId,
    TaskInfo,
)
from .worker import Worker, WorkerBuilder

__version__ = "0.2.0.dev0"

__all__ = [
    "Attempt",
    "AttemptError",
    "BackoffStrategy",
    "BuildError",
    "Capabilities",
    "CapabilityError",
    "Claim",
    "Codec",
    "CodecError",
    "Config",
    "Data",
    "Event",
    "Expose",
    "IntervalStrategy",
    "JsonCodec",
    "Monitor",
    "MsgPackCodec",
    "NotStarted",
    "Outcome",
    "OutcomeKind",
    "OutcomeRefused",
    "PickleCodec",
    "Pipe",
    "PipeError",
    "PushError",
    "QueueInfo",
    "RawStatus",
    "Recovery",
    "RetryPolicy",
    "Router",
    "SetupError",
    "Status",
    "StorageError",
    "Store",
    "StrategyBuilder",
    "Supervisor",
    "Task",
    "TaskBuilder",
    "TaskFailed",
    "TaskId",
    "TaskInfo",
    "TaskNotFound",
    "TaskSink",
    "TaskSinkError",
    "TaskpipeError",
    "WaitTimeout",
    "Worker",
    "WorkerBuilder",
    "WorkerContext",
    "WorkerInfo",
    "clock",
    "connect",
    "events",
    "memory",
    "open_storage",
    "pipe_to",
    "run_all",
]
