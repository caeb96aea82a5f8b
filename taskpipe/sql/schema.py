"""The tables, described once with peewee models, and the versioned set-up.

peewee owns the schema, migrations and the cold paths; the hot paths (push, claim,
ack, heartbeat) send constant SQL strings (see ``queries.py``).

Times are epoch seconds in DOUBLE columns (PostgreSQL's REAL would lose up to two
minutes). ``status`` holds the ``Status`` values as text, readable in a SQL shell.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TypeVar

import peewee as pw

from ..errors import SetupError
from ..task import Status

__all__ = [
    "SCHEMA_VERSION",
    "Models",
    "models_for",
    "setup",
    "stamp_version",
    "check_schema",
    "JOBS",
    "ERRORS",
    "WORKERS",
    "RECOVERIES",
    "JOINS",
    "JOIN_PARTS",
    "LIMITS",
    "QUEUES",
]

#: 1: taskpipe 0.1.0. 2: recovery records, the ``isolate`` flag, the next-due index.
#: 3: the workers' ``host_id`` (where their pid means something).
#: 4: joins (workflows' fan-in): ``taskpipe_joins`` and ``taskpipe_join_parts``.
#: 5: rate limits across workers: ``taskpipe_limits``.
#: 6: paused queues: ``taskpipe_queues``.
SCHEMA_VERSION = 6
JOBS = "taskpipe_jobs"
ERRORS = "taskpipe_errors"
WORKERS = "taskpipe_workers"
RECOVERIES = "taskpipe_recoveries"
META = "taskpipe_schema"
JOINS = "taskpipe_joins"
JOIN_PARTS = "taskpipe_join_parts"
LIMITS = "taskpipe_limits"
QUEUES = "taskpipe_queues"
M = TypeVar("M", bound=pw.Model)


class _Base(pw.Model):
    class Meta:
        legacy_table_names = False


class JobModel(_Base):
    """One task: its payload, where it is in its life, its lease and its result."""

    id = pw.BigAutoField()  # 64-bit where the engine has a choice (BIGSERIAL)
    queue = pw.TextField()
    status = pw.TextField(
        default=Status.PENDING.value, constraints=[pw.SQL(f"DEFAULT '{Status.PENDING.value}'")]
    )
    payload = pw.BlobField(null=True)
    priority = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
    run_at = pw.DoubleField()
    attempts = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
    max_attempts = pw.IntegerField(null=True)
    recoveries = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
    # 1: re-enqueued after its worker died while other tasks ran beside it: claimed
    # alone next time, so that a crash can be blamed on the right task.
    isolate = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
    lease = pw.TextField(null=True)
    worker = pw.TextField(null=True)
    result = pw.BlobField(null=True)
    meta = pw.TextField(null=True)
    key = pw.TextField(null=True)
    created_at = pw.DoubleField()
    started_at = pw.DoubleField(null=True)
    done_at = pw.DoubleField(null=True)


class ErrorModel(_Base):
    """One failed attempt of a task: the error line and its traceback."""

    id = pw.AutoField()
    job_id = pw.BigIntegerField(index=True)
    attempt = pw.IntegerField()
    error = pw.TextField()
    traceback = pw.TextField(null=True)
    at = pw.DoubleField()


class RecoveryModel(_Base):
    """One re-enqueue of a task whose worker stopped beating: which run, when it was
    last seen, and whether it counted towards ``max_recoveries``."""

    id = pw.AutoField()
    job_id = pw.BigIntegerField(index=True)
    worker = pw.TextField(null=True)
    last_seen = pw.DoubleField(null=True)
    counted = pw.IntegerField()
    at = pw.DoubleField()


class WorkerModel(_Base):
    """One worker run: who it is and when it last beat."""

    run_id = pw.TextField(primary_key=True)
    name = pw.TextField()
    queues = pw.TextField()
    hostname = pw.TextField()
    # Where ``pid`` means something: host, boot and PID namespace (see ``host_identity``).
    host_id = pw.TextField(null=True)
    pid = pw.IntegerField()
    started_at = pw.DoubleField()
    last_seen = pw.DoubleField()


class JoinModel(_Base):
    """One join (a workflow's fan-in): how many parts it needs and how many arrived.
    Its row lock serializes the acks of concurrent parents."""

    join_key = pw.TextField(primary_key=True)
    slots = pw.IntegerField()
    arrived = pw.IntegerField()
    created_at = pw.DoubleField()


class JoinPartModel(_Base):
    """One recorded input of a join: its slot and its encoded value."""

    join_key = pw.TextField()
    slot = pw.IntegerField()
    value = pw.BlobField(null=True)
    at = pw.DoubleField()

    class Meta:
        primary_key = pw.CompositeKey("join_key", "slot")


class LimitModel(_Base):
    """One rate limit shared by workers (``rate_limit(…, key=…)``): the last task start
    it reserved. Its row lock serializes the reservations."""

    limit_key = pw.TextField(primary_key=True)
    last_start = pw.DoubleField()


class QueueModel(_Base):
    """A queue's settings (a row once one is set): whether it is paused, and since
    when (``Store.pause_queue``)."""

    queue = pw.TextField(primary_key=True)
    paused = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
    paused_at = pw.DoubleField(null=True)


class SchemaModel(_Base):
    """The schema version this database is at."""

    version = pw.IntegerField()


@dataclass(frozen=True)
class Models:
    """The models bound to one database (several databases can live in one process)."""

    Job: type[JobModel]
    Error: type[ErrorModel]
    Worker: type[WorkerModel]
    Schema: type[SchemaModel]
    Recovery: type[RecoveryModel]
    Join: type[JoinModel]
    JoinPart: type[JoinPartModel]
    Limit: type[LimitModel]
    Queue: type[QueueModel]

    def all(self) -> list[type[pw.Model]]:
        """Every model (jobs, errors, workers, schema version, recoveries, joins and
        their parts, rate limits, queues): what ``setup`` creates."""
        return [
            self.Job,
            self.Error,
            self.Worker,
            self.Schema,
            self.Recovery,
            self.Join,
            self.JoinPart,
            self.Limit,
            self.Queue,
        ]


_bound: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_bound_lock = threading.Lock()


def models_for(db: pw.Database) -> Models:
    """Return model classes bound to ``db`` (made once per database)."""
    with _bound_lock:
        models = _bound.get(db)
        if models is None:

            def bind(base: type[M], table: str) -> type[M]:
                meta = type("Meta", (), {"database": db, "table_name": table})
                name = base.__name__.replace("Model", "")
                return type(name, (base,), {"Meta": meta, "__module__": __name__})

            models = Models(
                Job=bind(JobModel, JOBS),
                Error=bind(ErrorModel, ERRORS),
                Worker=bind(WorkerModel, WORKERS),
                Schema=bind(SchemaModel, META),
                Recovery=bind(RecoveryModel, RECOVERIES),
                Join=bind(JoinModel, JOINS),
                JoinPart=bind(JoinPartModel, JOIN_PARTS),
                Limit=bind(LimitModel, LIMITS),
                Queue=bind(QueueModel, QUEUES),
            )
            _bound[db] = models
        return models


def _index_sql() -> list[str]:
    # Partial indexes keep finished rows out of the claim path entirely, so the claim
    # costs the same at 10k or 1M done rows. The literal statuses must match the
    # queries' text for the planner to use them (a bound parameter would not): both
    # come from ``queries.WAITING``.
    from .queries import WAITING, sql_in

    attention = sql_in(Status.RUNNING, Status.FAILED, Status.DEAD)

    return [
        f"CREATE INDEX IF NOT EXISTS {JOBS}_claim ON {JOBS} "
        f"(queue, priority DESC, run_at, id) WHERE status IN {WAITING}",
        # next_due(): the earliest run_at of a queue, whatever the priority.
        f"CREATE INDEX IF NOT EXISTS {JOBS}_due ON {JOBS} (queue, run_at) WHERE status IN {WAITING}",
        # Tasks to run alone (rare): found without scanning the queue.
        f"CREATE INDEX IF NOT EXISTS {JOBS}_isolated ON {JOBS} (queue, priority DESC, run_at, id) "
        f"WHERE isolate = 1 AND status IN {WAITING}",
        # Rows a person looks for (running, waiting to retry, dead) without putting an
        # index entry on every push: pending and done rows are found by id order.
        f"CREATE INDEX IF NOT EXISTS {JOBS}_attention ON {JOBS} (status, queue, id) "
        f"WHERE status IN {attention}",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {JOBS}_key ON {JOBS} (key) WHERE key IS NOT NULL",
        # throughput() and Done counts (the board): finished Done rows by finish time,
        # written once per Done ack. Created by every setup (no schema version needed:
        # a database set up before it works, only more slowly, until setup runs again).
        f"CREATE INDEX IF NOT EXISTS {JOBS}_done ON {JOBS} (done_at, queue) "
        f"WHERE status = '{Status.DONE.value}'",
        f"CREATE INDEX IF NOT EXISTS {ERRORS}_at ON {ERRORS} (at)",
    ]


def _migrate(db: pw.Database, models: Models, version: int) -> None:
    """Bring a database at ``version`` up to ``SCHEMA_VERSION`` (inside setup's
    transaction). Tables that did not exist yet were just created whole."""
    if version < 2 and "isolate" not in {c.name for c in db.get_columns(JOBS)}:
        # 0.1.0 -> 2: the isolate flag (the recoveries table is new: made whole above)
        db.execute_sql(f"ALTER TABLE {JOBS} ADD COLUMN isolate INTEGER NOT NULL DEFAULT 0")
    if version < 3 and "host_id" not in {c.name for c in db.get_columns(WORKERS)}:
        db.execute_sql(f"ALTER TABLE {WORKERS} ADD COLUMN host_id TEXT")
    # 3 -> 4: the join tables are new (made whole above)
    if version < 5 and not db.table_exists(LIMITS):  # 4 -> 5: rate limits (idempotent)
        models.Limit.create_table()
    if version < 6 and not db.table_exists(QUEUES):  # 5 -> 6: paused queues (idempotent)
        models.Queue.create_table()
    models.Schema.update(version=SCHEMA_VERSION).execute()


def setup(db: pw.Database) -> None:
    """Create or migrate taskpipe's tables in ``db``; safe to call at every start."""
    models = models_for(db)
    with db.atomic():
        db.create_tables(models.all(), safe=True)
        stamp_version(db)
        for sql in _index_sql():
            db.execute_sql(sql)


def stamp_version(db: pw.Database) -> None:
    """Bring the version row of ``db`` (whose tables exist) to ``SCHEMA_VERSION``:
    written the first time, migrated from an older version; a newer one is refused
    with ``SetupError``."""
    models = models_for(db)
    row = models.Schema.select().first()
    if row is None:
        models.Schema.create(version=SCHEMA_VERSION)
    elif row.version > SCHEMA_VERSION:
        raise SetupError(
            f"this database is at taskpipe schema version {row.version}, newer than this "
            f"taskpipe ({SCHEMA_VERSION}): upgrade taskpipe"
        )
    elif row.version < SCHEMA_VERSION:
        _migrate(db, models, row.version)


def check_schema(db: pw.Database, setup_call: str = "SqliteStorage.setup") -> None:
    """Raise ``SetupError`` with the fix (``setup_call``, the store class's setup) when
    taskpipe's tables are missing or older than this code."""
    if not db.table_exists(JOBS):
        raise SetupError(
            f"{setup_call}(db) was not called: table {JOBS} is missing (or run `taskpipe setup`)"
        )
    row = models_for(db).Schema.select().first()
    version = 0 if row is None else row.version
    if version < SCHEMA_VERSION:
        raise SetupError(
            f"this database is at taskpipe schema version {version}; this taskpipe needs "
            f"{SCHEMA_VERSION}: run {setup_call}(db) (or `taskpipe setup`) to migrate it"
        )
