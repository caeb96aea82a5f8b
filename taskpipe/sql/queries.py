"""The hot-path SQL, written once as constant strings (no per-call compilation).

Status values come from ``Status`` (never spelled here), and the partial-index
predicates in ``schema.py`` are built from the same constants, so the planner sees
the literal text it indexed. Statements use ``?`` placeholders; a dialect whose
driver wants ``%s`` converts the whole set once (``Queries.with_paramstyle``), and
overrides only what its engine spells differently (the claim, insert-if-new,
upserts).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..task import Status
from .schema import ERRORS, JOBS, JOIN_PARTS, JOINS, LIMITS, QUEUES, RECOVERIES, WORKERS

__all__ = ["Queries", "sql_in", "WAITING", "FINISHED"]


def sql_in(*statuses: Status) -> str:
    """``('pending', 'failed')``: a literal list for ``status IN …``."""
    return "(" + ", ".join(f"'{s.value}'" for s in statuses) + ")"


#: Tasks a claim may take (when due): Pending, or Failed and waiting for its retry.
WAITING = sql_in(Status.PENDING, Status.FAILED)
#: Tasks that will not run again unless retried by hand.
FINISHED = sql_in(Status.DONE, Status.DEAD)
RUNNING = f"'{Status.RUNNING.value}'"
PENDING = f"'{Status.PENDING.value}'"
DONE = f"'{Status.DONE.value}'"
DEAD = f"'{Status.DEAD.value}'"

_COLUMNS = "id, queue, status, payload, priority, run_at, max_attempts, meta, key, created_at"
_VALUES = f"?, ?, {PENDING}, ?, ?, ?, ?, ?, ?, ?"
#: What a claim returns, by name.
CLAIMED = (
    "id, payload, priority, run_at, attempts, max_attempts, CAST(meta AS BLOB) AS meta, isolate"
)


@dataclass(frozen=True)
class Queries:
    """Every statement the SQL stores run on their hot paths."""

    # (id, queue, payload, priority, run_at, max_attempts, meta, key, created_at): a Row
    insert: str = f"INSERT INTO {JOBS} ({_COLUMNS}) VALUES ({_VALUES})"
    insert_keyed: str = f"INSERT INTO {JOBS} ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING"
    id_for_key: str = f"SELECT id FROM {JOBS} WHERE key = ?"
    # (queue, now)
    anything_due: str = (
        f"SELECT 1 FROM {JOBS} WHERE status IN {WAITING} AND queue = ? AND run_at <= ? LIMIT 1"
    )
    # (queue,)
    next_due: str = f"SELECT MIN(run_at) FROM {JOBS} WHERE status IN {WAITING} AND queue = ?"
    # (lease, worker, started_at, queue, now, limit). Tasks marked ``isolate`` (they
    # were running beside others when a worker died) are claimed alone, below.
    claim: str = (
        f"UPDATE {JOBS} SET status = {RUNNING}, attempts = attempts + 1, lease = ?, worker = ?, started_at = ? "
        f"WHERE id IN (SELECT id FROM {JOBS} WHERE status IN {WAITING} AND queue = ? "
        "AND run_at <= ? AND isolate = 0 ORDER BY priority DESC, run_at, id LIMIT ?) "
        f"RETURNING {CLAIMED}"
    )
    # (lease, worker, started_at, queue, now, queue, now, limit): the same, but taking
    # nothing while a task that must run alone is due, so that the usual claim is one
    # statement (the store looks for such a task only when this one came back empty).
    claim_guarded: str = (
        f"UPDATE {JOBS} SET status = {RUNNING}, attempts = attempts + 1, lease = ?, worker = ?, started_at = ? "
        f"WHERE id IN (SELECT id FROM {JOBS} WHERE status IN {WAITING} AND queue = ? "
        f"AND run_at <= ? AND isolate = 0 AND NOT EXISTS (SELECT 1 FROM {JOBS} WHERE isolate = 1 "
        f"AND status IN {WAITING} AND queue = ? AND run_at <= ?) "
        "ORDER BY priority DESC, run_at, id LIMIT ?) "
        f"RETURNING {CLAIMED}"
    )
    # (lease, worker, started_at, queue, now)
    claim_isolated: str = (
        f"UPDATE {JOBS} SET status = {RUNNING}, attempts = attempts + 1, lease = ?, worker = ?, started_at = ? "
        f"WHERE id IN (SELECT id FROM {JOBS} WHERE isolate = 1 AND status IN {WAITING} AND queue = ? "
        "AND run_at <= ? ORDER BY priority DESC, run_at, id LIMIT 1) "
        f"RETURNING {CLAIMED}"
    )
    # (queue,)
    # (queue, now)
    any_isolated: str = f"SELECT 1 FROM {JOBS} WHERE isolate = 1 AND status IN {WAITING} AND queue = ? AND run_at <= ? LIMIT 1"
    # Acks only touch a row still running under the same lease: a zombie's late ack,
    # or an ack for a task killed meanwhile, changes nothing.
    # (result, done_at, id, lease)
    ack_done: str = (
        f"UPDATE {JOBS} SET status = {DONE}, result = ?, done_at = ?, isolate = 0 "
        f"WHERE id = ? AND lease = ? AND status = {RUNNING}"
    )
    # (id, lease, done_at): was this DONE outcome the one that was written?
    ack_accepted: str = (
        f"SELECT 1 FROM {JOBS} WHERE id = ? AND lease = ? AND status = {DONE} AND done_at = ?"
    )
    # (status, run_at, done_at, id, lease)
    ack_failed: str = (
        f"UPDATE {JOBS} SET status = ?, run_at = ?, done_at = ?, isolate = 0 "
        f"WHERE id = ? AND lease = ? AND status = {RUNNING}"
    )
    # (id, lease)
    ack_release: str = (
        f"UPDATE {JOBS} SET status = {PENDING}, attempts = attempts - 1, started_at = NULL, worker = NULL, "
        f"lease = NULL WHERE id = ? AND lease = ? AND status = {RUNNING}"
    )
    # (run_at, id, lease)
    ack_interrupted: str = (
        f"UPDATE {JOBS} SET status = {PENDING}, run_at = ?, worker = NULL, lease = NULL "
        f"WHERE id = ? AND lease = ? AND status = {RUNNING}"
    )
    # (job_id, attempt, error, traceback, at)
    insert_error: str = (
        f"INSERT INTO {ERRORS} (job_id, attempt, error, traceback, at) VALUES (?, ?, ?, ?, ?)"
    )
    # (run_id, name, queues, hostname, host_id, pid, started_at, last_seen)
    beat: str = (
        f"INSERT INTO {WORKERS} (run_id, name, queues, hostname, host_id, pid, started_at, last_seen) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET last_seen = excluded.last_seen"
    )
    forget_worker: str = f"DELETE FROM {WORKERS} WHERE run_id = ?"
    # (older_than,)
    forget_stale_workers: str = (
        f"DELETE FROM {WORKERS} WHERE last_seen < ? AND run_id NOT IN "
        f"(SELECT worker FROM {JOBS} WHERE status = {RUNNING} AND worker IS NOT NULL)"
    )
    # Every run the workers table knows, and every running task with its run.
    runs: str = f"SELECT run_id, host_id, pid, last_seen FROM {WORKERS}"
    running: str = f"SELECT id, worker FROM {JOBS} WHERE status = {RUNNING}"
    # (max_recoveries, max_recoveries, now, id, worker): back to the queue, a recovery
    # counted, the attempt taken back, claimed alone from now on; Dead after too many.
    recover: str = (
        f"UPDATE {JOBS} SET "
        f"status = CASE WHEN recoveries + 1 >= ? THEN {DEAD} ELSE {PENDING} END, "
        "done_at = CASE WHEN recoveries + 1 >= ? THEN ? ELSE NULL END, "
        "recoveries = recoveries + 1, attempts = attempts - 1, worker = NULL, started_at = NULL, "
        f"lease = NULL, isolate = 1 WHERE id = ? AND status = {RUNNING} AND worker IS ?"
    )
    # (id, worker): back to the queue without counting (it ran beside others when its
    # worker died, so it may be innocent): to be claimed alone, to find out.
    isolate: str = (
        f"UPDATE {JOBS} SET status = {PENDING}, attempts = attempts - 1, worker = NULL, started_at = NULL, "
        f"lease = NULL, isolate = 1 WHERE id = ? AND status = {RUNNING} AND worker IS ?"
    )
    # (id,)
    recovered_state: str = f"SELECT status, recoveries, attempts FROM {JOBS} WHERE id = ?"
    # (job_id, worker, last_seen, counted, at)
    insert_recovery: str = (
        f"INSERT INTO {RECOVERIES} (job_id, worker, last_seen, counted, at) VALUES (?, ?, ?, ?, ?)"
    )
    # Joins (workflows' fan-in), inside an ack's transaction. A part is recorded once
    # (key, slot) is new; only then does it count. The counter's upsert takes the
    # join row's lock, so concurrent parents count one after another, each seeing the
    # count the one before it committed; the one that reads ``arrived == slots``
    # inserts the join's row. (join_key, slot, value, at)
    join_part: str = (
        f"INSERT INTO {JOIN_PARTS} (join_key, slot, value, at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (join_key, slot) DO NOTHING"
    )
    # (join_key, slots, created_at) -> (arrived, slots)
    join_count: str = (
        f"INSERT INTO {JOINS} (join_key, slots, arrived, created_at) VALUES (?, ?, 1, ?) "
        "ON CONFLICT (join_key) DO UPDATE SET arrived = "
        f"{JOINS}.arrived + 1 RETURNING arrived, slots"
    )
    # (join_key,)
    join_parts: str = f"SELECT slot, value FROM {JOIN_PARTS} WHERE join_key = ? ORDER BY slot"
    # Rate limits: reserve the next start of a key, one upsert under the key's row lock.
    # (limit_key, now, interval) -> the reserved start
    take_slot: str = (
        f"INSERT INTO {LIMITS} (limit_key, last_start) VALUES (?, ?) "
        f"ON CONFLICT (limit_key) DO UPDATE SET last_start = "
        f"MAX({LIMITS}.last_start + ?, excluded.last_start) RETURNING last_start"
    )
    # Every worker reads this at each heartbeat (a handful of rows at most).
    paused_queues: str = f"SELECT queue FROM {QUEUES} WHERE paused = 1"

    def with_paramstyle(self, placeholder: str) -> Queries:
        """The same statements with ``?`` replaced by ``placeholder`` (e.g. ``%s``)."""
        return replace(
            self, **{f.name: getattr(self, f.name).replace("?", placeholder) for f in fields(self)}
        )
