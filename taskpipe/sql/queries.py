"""The hot-path SQL, written once as constant strings (no per-call compilation).

Statements use ``?`` placeholders (a dialect whose driver wants ``%s`` converts the
set once); dialects override only what differs: the claim and the insert-if-new.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import ERRORS, JOBS, WORKERS

__all__ = ["Queries"]

_RETURNING = "id, payload, priority, run_at, attempts, max_attempts, meta"


@dataclass(frozen=True)
class Queries:
    """Every statement the stores run on their hot paths."""

    insert: str = (
        f"INSERT INTO {JOBS} (id, queue, status, payload, priority, run_at, max_attempts, meta, key, created_at) "
        "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)"
    )
    insert_keyed: str = (
        f"INSERT INTO {JOBS} (id, queue, status, payload, priority, run_at, max_attempts, meta, key, created_at) "
        "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING"
    )
    id_for_key: str = f"SELECT id FROM {JOBS} WHERE key = ?"
    anything_due: str = (
        f"SELECT 1 FROM {JOBS} WHERE status IN ('pending', 'failed') AND queue = ? AND run_at <= ? LIMIT 1"
    )
    # (lease, worker, started_at, queue, now, limit)
    claim: str = (
        f"UPDATE {JOBS} SET status = 'running', attempts = attempts + 1, lease = ?, worker = ?, started_at = ? "
        f"WHERE id IN (SELECT id FROM {JOBS} WHERE status IN ('pending', 'failed') AND queue = ? "
        "AND run_at <= ? ORDER BY priority DESC, run_at, id LIMIT ?) "
        f"RETURNING {_RETURNING}"
    )
    # Acks only touch a row still running under the same lease: a zombie's late ack,
    # or an ack for a task killed meanwhile, changes nothing.
    ack_done: str = (
        f"UPDATE {JOBS} SET status = 'done', result = ?, done_at = ? "
        "WHERE id = ? AND lease = ? AND status = 'running'"
    )
    ack_accepted: str = f"SELECT 1 FROM {JOBS} WHERE id = ? AND lease = ? AND status = 'done' AND done_at = ?"
    ack_failed: str = (
        f"UPDATE {JOBS} SET status = ?, run_at = ?, done_at = ? "
        "WHERE id = ? AND lease = ? AND status = 'running'"
    )
    ack_release: str = (
        f"UPDATE {JOBS} SET status = 'pending', attempts = attempts - 1, started_at = NULL, worker = NULL, lease = NULL "
        "WHERE id = ? AND lease = ? AND status = 'running'"
    )
    ack_interrupted: str = (
        f"UPDATE {JOBS} SET status = 'pending', run_at = ?, worker = NULL, lease = NULL "
        "WHERE id = ? AND lease = ? AND status = 'running'"
    )
    insert_error: str = f"INSERT INTO {ERRORS} (job_id, attempt, error, traceback, at) VALUES (?, ?, ?, ?, ?)"
    # (run_id, name, queues, hostname, pid, started_at, last_seen)
    beat: str = (
        f"INSERT INTO {WORKERS} (run_id, name, queues, hostname, pid, started_at, last_seen) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET last_seen = excluded.last_seen"
    )
    same_host_runs: str = f"SELECT run_id, pid FROM {WORKERS} WHERE hostname = ? AND run_id <> ?"
    forget_worker: str = f"DELETE FROM {WORKERS} WHERE run_id = ?"
    forget_stale_workers: str = (
        f"DELETE FROM {WORKERS} WHERE last_seen < ? AND run_id NOT IN "
        f"(SELECT worker FROM {JOBS} WHERE status = 'running' AND worker IS NOT NULL)"
    )
    # (max_recoveries, max_recoveries, now, alive_since)
    recover_orphans: str = (
        f"UPDATE {JOBS} SET "
        "status = CASE WHEN recoveries + 1 >= ? THEN 'dead' ELSE 'pending' END, "
        "done_at = CASE WHEN recoveries + 1 >= ? THEN ? ELSE NULL END, "
        "recoveries = recoveries + 1, attempts = attempts - 1, worker = NULL, started_at = NULL "
        "WHERE status = 'running' AND (worker IS NULL OR worker NOT IN "
        f"(SELECT run_id FROM {WORKERS} WHERE last_seen >= ?)) "
        "RETURNING id, status, recoveries, attempts"
    )
