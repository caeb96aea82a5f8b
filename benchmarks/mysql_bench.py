"""taskpipe on MySQL / MariaDB against raw PyMySQL running the same statements.

    TASKPIPE_BENCH_MYSQL_URL=mysql://root@127.0.0.1:3306/test \\
        python benchmarks/mysql_bench.py [--reps N] [--quick]

Scenarios: single push (one autocommit INSERT each), push_bulk of 100k rows (one
transaction), drain of 20k no-op tasks by 1 process × 4 threads, the cost of one
claim of 32 with 10k and with 1M tasks pending, and of one claim + Done ack of 32 with
1M done rows kept. The ceiling runs taskpipe's own statements (``MysqlDialect``: the
SKIP LOCKED pick then UPDATE, the one-statement batch ack, the multi-row INSERT whose
ids are read back by a token) through PyMySQL with nothing around them. Each
repetition works in a fresh database (created and dropped here); contenders are
interleaved and the median kept. The URL defaults to TASKPIPE_TEST_MYSQL_URL; only
its server is used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from urllib.parse import urlsplit, urlunsplit

import msgspec
import pymysql
import report

from taskpipe import WorkerBuilder
from taskpipe.context import WorkerContext
from taskpipe.mysql import MysqlStorage, connect
from taskpipe.sql.mysql import _COLUMNS, _SET_RUNNING, _VALUES, JOBS, STATEMENT_BYTES, MysqlDialect
from taskpipe.store import Outcome, OutcomeKind

Q = MysqlDialect.queries
BATCH = 32


class Database:
    """A fresh database on the server of ``base``, set up for taskpipe; ``url`` names it."""

    def __init__(self, base: str):
        parts = urlsplit(base)
        self.server = {
            "host": parts.hostname or "localhost",
            "port": parts.port or 3306,
            "user": parts.username or "root",
            "password": parts.password or "",
        }
        self.name = f"taskpipe_bench_{uuid.uuid4().hex[:10]}"
        with self.raw(database=None) as conn:
            conn.cursor().execute(f"CREATE DATABASE {self.name} CHARACTER SET utf8mb4")
        self.url = urlunsplit((parts.scheme, parts.netloc, f"/{self.name}", "", ""))
        db = connect(self.url)
        MysqlStorage.setup(db)
        db.close()

    def raw(self, database: str | None = "") -> pymysql.Connection:
        """A raw PyMySQL connection set up as taskpipe's are (utf8mb4, autocommit, READ
        COMMITTED, matched rows)."""
        return pymysql.connect(
            **self.server,
            database=self.name if database == "" else database,
            autocommit=True,
            charset="utf8mb4",
            client_flag=pymysql.constants.CLIENT.FOUND_ROWS,
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )

    def drop(self) -> None:
        with self.raw(database=None) as conn:
            conn.cursor().execute(f"DROP DATABASE {self.name}")


def _row(i: int, now: float) -> tuple:
    return (None, "default", msgspec.json.encode(i), 0, now, None, None, None, now)


def _fill(database: Database, n: int, status: str = "pending") -> None:
    """``n`` tasks of the default queue in ``status``: 1000 inserted, then doubled by
    ``INSERT … SELECT`` on the server (fast, so 1M rows take seconds)."""
    with database.raw() as conn:
        cursor = conn.cursor()
        now = time.time()
        seed = min(n, 1000)
        _raw_insert_many(cursor, [_row(i, now) for i in range(seed)])
        total = seed
        columns = "queue, status, payload, priority, run_at, created_at"
        while total < n:
            cursor.execute(
                f"INSERT INTO {JOBS} ({columns}) SELECT {columns} FROM {JOBS} "
                "WHERE status = 'pending' ORDER BY id LIMIT %s",
                (min(total, n - total),),
            )
            total += cursor.rowcount
        if status != "pending":  # (filled first: every row of the table is one of these)
            cursor.execute(f"UPDATE {JOBS} SET status = %s, done_at = %s", (status, now))
        cursor.execute(f"ANALYZE TABLE {JOBS}")
        cursor.fetchall()


def _raw_insert_many(cursor, rows) -> list[int]:
    """``MysqlDialect._insert_many``'s statements: multi-row INSERTs of about 1 MB with a
    token, each followed by the read-back of its ids."""
    token = f"push:{uuid.uuid4().hex}"
    head = f"INSERT INTO {JOBS} ({_COLUMNS}, lease) VALUES "
    values = f"({_VALUES}, %s)"
    ids: list[int] = []
    chunk: list[str] = []
    size = 0

    def flush() -> None:
        cursor.execute(head + ",".join(chunk))
        cursor.execute(
            f"SELECT id FROM {JOBS} WHERE id >= %s AND lease = %s ORDER BY id LIMIT %s",
            (cursor.lastrowid, token, len(chunk)),
        )
        ids.extend(r[0] for r in cursor.fetchall())
        chunk.clear()

    for row in rows:
        part = cursor.mogrify(values, (*row, token))
        if chunk and size + len(part) > STATEMENT_BYTES:
            flush()
            size = 0
        chunk.append(part)
        size += len(part) + 1
    flush()
    return ids


def _raw_claim(cursor, lease: str, limit: int = BATCH) -> list[tuple]:
    now = time.time()
    cursor.execute("BEGIN")
    cursor.execute(Q.claim, ("default", now, limit))
    rows = cursor.fetchall()
    if rows:
        ids = [r[0] for r in rows]
        update = _SET_RUNNING.format(ids=", ".join(["%s"] * len(ids)))
        cursor.execute(update, (lease, "raw", now, *ids))
    cursor.execute("COMMIT")
    return rows


class _Recorder(MysqlDialect):
    """Records the batch-ack statement taskpipe builds, for the raw contender to send."""

    def execute(self, db, sql, params=()):  # type: ignore[override]
        self.sql, self.params = sql, params
        raise _Captured


class _Captured(Exception):
    pass


def _ack_statement(rows: list[tuple]) -> tuple[str, list]:
    recorder = _Recorder()
    try:
        recorder.ack_done(None, rows)  # type: ignore[arg-type]
    except _Captured:
        return recorder.sql, list(recorder.params)
    raise RuntimeError("ack_done sent nothing")


def _raw_ack(cursor, rows: list[tuple], lease: str) -> None:
    done_at = time.time()
    sql, params = _ack_statement([(None, done_at, r[0], lease) for r in rows])
    cursor.execute("BEGIN")
    cursor.execute(sql, params)
    cursor.execute("COMMIT")


# taskpipe ------------------------------------------------------------------------------------
def tp_push_single(database: Database, n: int) -> float:
    storage = MysqlStorage(connect(database.url))
    storage.db.connect()  # as the raw contender, connected before the clock starts
    push = storage.push
    start = time.perf_counter()
    for i in range(n):
        push(i)
    elapsed = time.perf_counter() - start
    storage.db.close()
    return n / elapsed


def tp_push_bulk(database: Database, n: int) -> float:
    storage = MysqlStorage(connect(database.url))
    storage.db.connect()
    items = list(range(n))
    start = time.perf_counter()
    storage.push_bulk(items)
    elapsed = time.perf_counter() - start
    storage.db.close()
    return n / elapsed


def _noop(item: int) -> None:
    return None


def tp_drain(database: Database, n: int) -> float:
    _fill(database, n)
    storage = MysqlStorage(connect(database.url))
    storage.db.connect()
    worker = WorkerBuilder("bench").backend(storage).concurrency(4).build(_noop)
    start = time.perf_counter()
    handled = worker.run_until_idle()
    elapsed = time.perf_counter() - start
    if handled != n:
        raise RuntimeError(f"taskpipe handled {handled} of {n}")
    storage.db.close()
    return n / elapsed


def _tp_claims(database: Database, rounds: int, ack: bool) -> float:
    """Claims (and acks) per second: ``rounds`` claims of 32, each timed alone."""
    storage = MysqlStorage(connect(database.url))
    storage.db.connect()
    ctx = WorkerContext("bench", capacity=BATCH, report=lambda exc: None)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        claims = storage.claim(ctx, BATCH)
        if ack:
            storage.ack([Outcome(c, OutcomeKind.DONE) for c in claims])
        times.append(time.perf_counter() - start)
        if len(claims) != BATCH:
            raise RuntimeError(f"claimed {len(claims)}")
    storage.db.close()
    return 1 / statistics.median(times)


def _raw_claims(database: Database, rounds: int, ack: bool) -> float:
    times = []
    with database.raw() as conn:
        cursor = conn.cursor()
        for k in range(rounds):
            start = time.perf_counter()
            lease = f"raw:{k}"
            rows = _raw_claim(cursor, lease)
            if ack:
                _raw_ack(cursor, rows, lease)
            times.append(time.perf_counter() - start)
            if len(rows) != BATCH:
                raise RuntimeError(f"claimed {len(rows)}")
    return 1 / statistics.median(times)


def _claims_with(pending: int, done: int, ack: bool):
    def tp(database: Database, rounds: int) -> float:
        _fill_both(database, pending, done)
        return _tp_claims(database, rounds, ack)

    def raw(database: Database, rounds: int) -> float:
        _fill_both(database, pending, done)
        return _raw_claims(database, rounds, ack)

    return tp, raw


def _fill_both(database: Database, pending: int, done: int) -> None:
    if done:
        _fill(database, done, "done")
    _fill(database, pending)


# raw PyMySQL, the same statements --------------------------------------------------------------
def raw_push_single(database: Database, n: int) -> float:
    with database.raw() as conn:
        cursor = conn.cursor()
        start = time.perf_counter()
        for i in range(n):
            cursor.execute(Q.insert, _row(i, time.time()))
            cursor.lastrowid  # noqa: B018 - read as taskpipe does
        return n / (time.perf_counter() - start)


def raw_push_bulk(database: Database, n: int) -> float:
    with database.raw() as conn:
        cursor = conn.cursor()
        start = time.perf_counter()
        now = time.time()
        cursor.execute("BEGIN")
        _raw_insert_many(cursor, [_row(i, now) for i in range(n)])
        cursor.execute("COMMIT")
        return n / (time.perf_counter() - start)


def raw_drain(database: Database, n: int) -> float:
    _fill(database, n)
    pool = ThreadPoolExecutor(4)
    with database.raw() as conn:
        cursor = conn.cursor()
        start = time.perf_counter()
        lease_no = 0
        while True:
            lease_no += 1
            lease = f"raw:{lease_no}"
            rows = _raw_claim(cursor, lease)
            if not rows:
                break
            wait([pool.submit(msgspec.json.decode, row[1]) for row in rows])
            _raw_ack(cursor, rows, lease)
        elapsed = time.perf_counter() - start
    pool.shutdown()
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args(argv)
    base = os.environ.get("TASKPIPE_BENCH_MYSQL_URL") or os.environ.get("TASKPIPE_TEST_MYSQL_URL")
    if not base:
        print("set TASKPIPE_BENCH_MYSQL_URL (or TASKPIPE_TEST_MYSQL_URL)", file=sys.stderr)
        return 2
    quick = args.quick
    n_single, n_bulk, n_drain = (500, 20_000, 5_000) if quick else (2_000, 100_000, 20_000)
    small, large, rounds = (10_000, 100_000, 50) if quick else (10_000, 1_000_000, 100)
    claim_small = _claims_with(small, 0, ack=False)
    claim_large = _claims_with(large, 0, ack=False)
    ack_fresh = _claims_with(small, 0, ack=True)
    ack_piled = _claims_with(small, large, ack=True)
    scenarios = [
        (
            f"push, one per statement ({n_single:,})",
            "rows/s",
            tp_push_single,
            raw_push_single,
            n_single,
        ),
        (f"push_bulk {n_bulk:,}", "rows/s", tp_push_bulk, raw_push_bulk, n_bulk),
        (f"drain {n_drain:,}, 1 process × 4", "jobs/s", tp_drain, raw_drain, n_drain),
        (f"claim 32, {small:,} pending", "claims/s", *claim_small, rounds),
        (f"claim 32, {large:,} pending", "claims/s", *claim_large, rounds),
        ("claim + ack 32, no done rows", "rounds/s", *ack_fresh, rounds),
        (f"claim + ack 32, {large:,} done rows", "rounds/s", *ack_piled, rounds),
    ]
    rows = []
    for name, unit, tp, raw, n in scenarios:
        results: dict[str, list[float]] = {"taskpipe": [], "raw": []}
        for _ in range(args.reps):
            for label, fn in (("taskpipe", tp), ("raw", raw)):
                database = Database(base)
                try:
                    results[label].append(fn(database, n))
                finally:
                    database.drop()
        t, r = statistics.median(results["taskpipe"]), statistics.median(results["raw"])
        rows.append([name, unit, f"{t:,.0f}", f"{r:,.0f}", f"{t / r:.2f}×"])
        print(f"  {name}: taskpipe {t:,.0f}, raw {r:,.0f} {unit}", file=sys.stderr)
    header = ["scenario", "unit", "taskpipe", "raw PyMySQL", "vs raw"]
    print(report.rst_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
