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

import peewee as pw

from ..errors import SetupError

__all__ = ["SCHEMA_VERSION", "Models", "models_for", "setup", "check_schema", "JOBS", "ERRORS", "WORKERS"]

SCHEMA_VERSION = 1
JOBS = "taskpipe_jobs"
ERRORS = "taskpipe_errors"
WORKERS = "taskpipe_workers"
META = "taskpipe_schema"


class _Base(pw.Model):
    class Meta:
        legacy_table_names = False


class JobModel(_Base):
    """One task: its payload, where it is in its life, its lease and its result."""

    id = pw.AutoField()
    queue = pw.TextField()
    status = pw.TextField(default="pending", constraints=[pw.SQL("DEFAULT 'pending'")])
    payload = pw.BlobField(null=True)
    priority = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
    run_at = pw.DoubleField()
    attempts = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
    max_attempts = pw.IntegerField(null=True)
    recoveries = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
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
    job_id = pw.IntegerField(index=True)
    attempt = pw.IntegerField()
    error = pw.TextField()
    traceback = pw.TextField(null=True)
    at = pw.DoubleField()


class WorkerModel(_Base):
    """One worker run: who it is and when it last beat."""

    run_id = pw.TextField(primary_key=True)
    name = pw.TextField()
    queues = pw.TextField()
    hostname = pw.TextField()
    pid = pw.IntegerField()
    started_at = pw.DoubleField()
    last_seen = pw.DoubleField()


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

    def all(self) -> list[type[pw.Model]]:
        """The four models (jobs, errors, workers, schema version): what ``setup`` creates."""
        return [self.Job, self.Error, self.Worker, self.Schema]


_bound: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_bound_lock = threading.Lock()


def models_for(db: pw.Database) -> Models:
    """Return model classes bound to ``db`` (made once per database)."""
    with _bound_lock:
        models = _bound.get(db)
        if models is None:
            def bind(base: type[pw.Model], table: str) -> type[pw.Model]:
                meta = type("Meta", (), {"database": db, "table_name": table})
                return type(base.__name__.replace("Model", ""), (base,), {"Meta": meta, "__module__": __name__})

            models = Models(
                Job=bind(JobModel, JOBS),
                Error=bind(ErrorModel, ERRORS),
                Worker=bind(WorkerModel, WORKERS),
                Schema=bind(SchemaModel, META),
            )
            _bound[db] = models
        return models


def _claim_index_sql(db: pw.Database) -> list[str]:
    # Partial indexes keep finished rows out of the claim path entirely, so the claim
    # costs the same at 10k or 1M done rows. The literal statuses must match the claim
    # query's text for the planner to use them (a bound parameter would not).
    return [
        f"CREATE INDEX IF NOT EXISTS {JOBS}_claim ON {JOBS} "
        f"(queue, priority DESC, run_at, id) WHERE status IN ('pending', 'failed')",
        # Rows a person looks for (running, waiting to retry, dead) without putting an
        # index entry on every push: pending and done rows are found by id order.
        f"CREATE INDEX IF NOT EXISTS {JOBS}_attention ON {JOBS} (status, queue, id) "
        f"WHERE status IN ('running', 'failed', 'dead')",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {JOBS}_key ON {JOBS} (key) WHERE key IS NOT NULL",
    ]


def setup(db: pw.Database) -> None:
    """Create or migrate taskpipe's tables in ``db``; safe to call at every start."""
    models = models_for(db)
    with db.atomic():
        db.create_tables(models.all(), safe=True)
        for sql in _claim_index_sql(db):
            db.execute_sql(sql)
        row = models.Schema.select().first()
        if row is None:
            models.Schema.create(version=SCHEMA_VERSION)
        elif row.version > SCHEMA_VERSION:
            raise SetupError(
                f"this database is at taskpipe schema version {row.version}, newer than this "
                f"taskpipe ({SCHEMA_VERSION}): upgrade taskpipe"
            )
        elif row.version < SCHEMA_VERSION:  # pragma: no cover - no older versions yet
            models.Schema.update(version=SCHEMA_VERSION).execute()


def check_schema(db: pw.Database) -> None:
    """Raise ``SetupError`` with the fix when taskpipe's tables are missing."""
    if not db.table_exists(JOBS):
        raise SetupError(
            f"SqliteStorage.setup(db) was not called: table {JOBS} is missing "
            "(or run `taskpipe setup`)"
        )
