"""Claim and ack cost against queue depth on PostgreSQL, in the custom and the generic plan.

Four fresh schemas: 10k pending rows; and 10k, 100k, 1M pending rows each with 1M
done rows added the way a drain leaves them (inserted running, then set done, not
vacuumed: the partial "attention" index keeps an entry for each until VACUUM, the
trap PERFORMANCE.md describes). In each, interleaved with the others, taskpipe
(``store.claim(ctx, 32)`` then ``store.ack`` of the 32) and raw psycopg (taskpipe's
claim and ack statements) run ``iterations`` claim-32 + ack-32 rounds on a fresh
connection each: once as psycopg runs them (prepared after 5
executions, the server then choosing its plan), once with ``prepare_threshold=0``
and ``plan_cache_mode = force_generic_plan`` (the generic plan from the first run).
The pending count is topped up before each round set, so the depth holds.
Autovacuum is off for these tables, so that nothing cleans up mid-measurement.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
import uuid

import psycopg
from pg_contenders import Q, Taskpipe, claim_params, fresh_schema, raw_ack

from taskpipe.sql.postgres import ACK_DONE_MANY, JOBS, PostgresDialect

PLANS = ("custom", "generic")  # "custom": psycopg's and the server's defaults
# the ack fenced with a plain ``status = 'running'``: what taskpipe avoids
TRAP_ACK = ACK_DONE_MANY.replace("coalesce(j.status, '') = 'running'", "j.status = 'running'")
assert TRAP_ACK != ACK_DONE_MANY


def _connect_raw(url: str, plan: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    _set_plan(conn, plan)
    return conn


def _set_plan(conn: psycopg.Connection, plan: str) -> None:
    if plan == "generic":
        conn.prepare_threshold = 0
        conn.execute("SET plan_cache_mode = force_generic_plan")


def _add_pending(conn: psycopg.Connection, n: int) -> None:
    if n > 0:
        now = time.time()
        conn.execute(
            f"INSERT INTO {JOBS} (queue, status, payload, run_at, created_at) "
            "SELECT 'default', 'pending', convert_to(g::text, 'UTF8'), %s, %s "
            "FROM generate_series(1, %s) g",
            (now, now, n),
        )


def _add_done(conn: psycopg.Connection, n: int) -> None:
    """``n`` rows as a drain leaves them: they were running, then done."""
    now = time.time()
    conn.execute(
        f"INSERT INTO {JOBS} (queue, status, payload, run_at, created_at, attempts, lease, "
        "worker, started_at) SELECT 'default', 'running', convert_to(g::text, 'UTF8'), %s, %s, "
        "1, 'old:' || g, 'old', %s FROM generate_series(1, %s) g",
        (now, now, now, n),
    )
    conn.execute(
        f"UPDATE {JOBS} SET status = 'done', done_at = %s WHERE status = 'running'",
        (now,),
    )


class _TaskpipeRounds:
    def __init__(self, url: str, plan: str):
        from taskpipe.context import WorkerContext
        from taskpipe.store import Outcome, OutcomeKind

        self.storage = Taskpipe.storage(url)
        _set_plan(self.storage.db.connection(), plan)
        self.ctx = WorkerContext("depth", capacity=64, report=print)
        self.storage.beat(self.ctx)
        self.done = lambda claims: [Outcome(c, OutcomeKind.DONE) for c in claims]

    def round(self) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        claims = self.storage.claim(self.ctx, 32)
        t1 = time.perf_counter()
        self.storage.ack(self.done(claims))
        return t1 - t0, time.perf_counter() - t1, len(claims)

    def close(self) -> None:
        self.storage.retire(self.ctx)
        self.storage.db.close()


class _RawRounds:
    def __init__(self, url: str, plan: str, ack_sql: str = ACK_DONE_MANY):
        self.conn = _connect_raw(url, plan)
        self.worker = f"raw:{uuid.uuid4().hex[:8]}"
        self.leases = 0
        self.ack_sql = ack_sql

    def round(self) -> tuple[float, float, int]:
        conn = self.conn
        self.leases += 1
        lease = f"{self.worker}:{self.leases}"
        t0 = time.perf_counter()
        now = time.time()
        params = claim_params(lease, self.worker, now, 32)
        rows = conn.execute(Q.claim_guarded, params).fetchall()
        t1 = time.perf_counter()
        done_at = time.time()
        raw_ack(conn, rows, lease, done_at, self.ack_sql)
        return t1 - t0, time.perf_counter() - t1, len(rows)

    def close(self) -> None:
        self.conn.close()


CONTENDERS = {
    "taskpipe": _TaskpipeRounds,
    "raw": _RawRounds,
    # the ack fenced with a plain ``status = 'running'``: what taskpipe avoids
    "trap": lambda url, plan: _RawRounds(url, plan, TRAP_ACK),
}


def _plan_indexes(conn: psycopg.Connection, sql: str, types: str, args: tuple) -> str:
    """The indexes the generic plan of ``sql`` uses (EXPLAIN of a PREPAREd statement)."""
    name = f"p_{uuid.uuid4().hex[:8]}"
    parts = sql.split("%s")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
    conn.execute(f"PREPARE {name} ({types}) AS {numbered}")
    try:
        plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN EXECUTE {name} ({args_sql(args)})"))
    finally:
        conn.execute(f"DEALLOCATE {name}")
    found = re.findall(r"Index (?:Only )?Scan (?:Backward )?using (\w+)", plan)
    found += re.findall(r"Bitmap Index Scan on (\w+)", plan)
    found += ["seq scan of " + t for t in re.findall(r"Seq Scan on (\w+)", plan)]
    found = list(dict.fromkeys(found))
    return ", ".join(found) or plan.splitlines()[0]


def args_sql(args: tuple) -> str:
    return ", ".join(
        "NULL" if a is None else repr(a) if isinstance(a, (int, float)) else f"'{a}'" for a in args
    )


def plans(url: str) -> list[str]:
    """Which index each hot statement's plan walks, custom (real values) and generic."""
    lines = []
    now = time.time()
    claim_args = ("default", now, "default", now, 32, "l", "w", now)
    ack_args = (now, "{1,2,3}", "{a,b,c}", "{NULL,NULL,NULL}")
    ack_types = "float8, bigint[], text[], bytea[]"
    with psycopg.connect(url, autocommit=True) as conn:
        for mode in ("force_custom_plan", "force_generic_plan"):
            conn.execute(f"SET plan_cache_mode = {mode}")
            claim = _plan_indexes(
                conn,
                Q.claim_guarded,
                "text, float8, text, float8, int, text, text, float8",
                claim_args,
            )
            ack = _plan_indexes(conn, ACK_DONE_MANY, ack_types, ack_args)
            trap = _plan_indexes(
                conn,
                TRAP_ACK,
                ack_types,
                ack_args,
            )
            both = _plan_indexes(
                conn,
                PostgresDialect().ack_and_claim_sql,
                f"{ack_types}, text, float8, text, float8, int, text, text, float8",
                ack_args + claim_args,
            )
            label = {"force_custom_plan": "custom", "force_generic_plan": "generic"}[mode]
            lines.append(
                f"{label} plan: claim → {claim}; ack → {ack}; ack with the next claim → {both}; "
                f"ack with the plain fence → {trap}"
            )
    return lines


def measure(
    base: str,
    reps: int,
    iterations: int,
    sizes=(10_000, 100_000, 1_000_000),
    done=1_000_000,
    log=print,
):
    """The depth section's results: {(what, contender, plan): [median µs per rep]} and
    the plan lines."""
    results: dict[tuple[str, str, str], list[float]] = {}
    # (label, pending rows, done rows, contenders)
    levels = [("0 done", sizes[0], 0, ("taskpipe", "raw", "trap"))]
    levels += [
        (
            f"{size:,} pending",
            size,
            done,
            ("taskpipe", "raw", "trap") if i == 0 else ("taskpipe", "raw"),
        )
        for i, size in enumerate(sizes)
    ]
    with contextlib.ExitStack() as stack:
        places = []
        t0 = time.perf_counter()
        for label, pending, n_done, contenders in levels:
            url = stack.enter_context(fresh_schema(base))
            Taskpipe.setup(url)
            admin = stack.enter_context(psycopg.connect(url, autocommit=True))
            admin.execute(f"ALTER TABLE {JOBS} SET (autovacuum_enabled = false)")
            _add_pending(admin, pending)
            if n_done:
                _add_done(admin, n_done)
            admin.execute(f"ANALYZE {JOBS}")
            places.append(_Level(label, url, admin, pending, contenders))
        log(f"  depth: {len(places)} schemas filled ({time.perf_counter() - t0:.0f} s)")
        for _ in range(reps):
            for level in places:  # interleaved: every depth sees the same noise
                for name in level.contenders:
                    for plan in PLANS:
                        level.top_up()
                        rounds = CONTENDERS[name](level.url, plan)
                        claims, acks = [], []
                        try:
                            for _ in range(iterations):
                                c, a, n = rounds.round()
                                level.pending -= n
                                claims.append(c)
                                acks.append(a)
                        finally:
                            rounds.close()
                        results.setdefault((f"claim {level.label}", name, plan), []).append(
                            statistics.median(claims) * 1e6
                        )
                        results.setdefault((f"ack {level.label}", name, plan), []).append(
                            statistics.median(acks) * 1e6
                        )
        plan_lines = plans(places[-1].url)
    return results, plan_lines


class _Level:
    """One schema of the depth section, kept at ``target`` pending rows."""

    def __init__(self, label: str, url: str, admin, target: int, contenders: tuple[str, ...]):
        self.label, self.url, self.admin = label, url, admin
        self.target = self.pending = target
        self.contenders = contenders

    def top_up(self) -> None:
        _add_pending(self.admin, self.target - self.pending)
        self.pending = max(self.pending, self.target)
