"""taskpipe on PostgreSQL against raw psycopg 3 running the same statements.

    TASKPIPE_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
        python benchmarks/postgres.py [--reps N] [--quick]

Scenarios: single push (one committed transaction each, with its NOTIFY), push_bulk
of 100k rows (one transaction), drain of 20k no-op tasks by 1 process × 4 threads.
The ceiling runs taskpipe's own statements (``PostgresDialect.queries``: the CTE claim
of 32, one executemany ack per batch; the same insert-with-NOTIFY; sequence + COPY
for bulk) through psycopg with nothing around them. Each repetition works in a fresh
schema (created and dropped here); contenders are interleaved and the median kept.
The URL defaults to TASKPIPE_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from urllib.parse import quote

import msgspec
import psycopg

from taskpipe import WorkerBuilder
from taskpipe.postgres import PostgresStorage, connect
from taskpipe.sql.postgres import _COLUMNS, CHANNEL, JOBS, PostgresDialect, _reorder_claim_params

Q = PostgresDialect.queries


class Schema:
    """A fresh schema, set up for taskpipe; ``url`` reaches it."""

    def __init__(self, base: str):
        self.base = base
        self.name = f"taskpipe_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.name}")
        sep = "&" if "?" in base else "?"
        self.url = f"{base}{sep}options={quote(f'-c search_path={self.name}')}"
        db = connect(self.url)
        PostgresStorage.setup(db)
        db.close()

    def drop(self) -> None:
        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.name} CASCADE")


def _row(i: int, now: float) -> tuple:
    return (None, "default", msgspec.json.encode(i), 0, now, None, None, None, now)


def _fill(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        _raw_bulk(conn, n)


def _raw_bulk(conn: psycopg.Connection, n: int) -> None:
    now = time.time()
    ids = [
        r[0]
        for r in conn.execute(
            f"SELECT nextval(pg_get_serial_sequence('{JOBS}', 'id')) FROM generate_series(1, %s)",
            (n,),
        )
    ]
    ids.sort()
    with conn.cursor().copy(f"COPY {JOBS} ({_COLUMNS}) FROM STDIN") as copy:
        for task_id, i in zip(ids, range(n), strict=True):
            copy.write_row(
                (
                    task_id,
                    "default",
                    "pending",
                    msgspec.json.encode(i),
                    0,
                    now,
                    None,
                    None,
                    None,
                    now,
                )
            )
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "default"))


# taskpipe --------------------------------------------------------------------------------
def tp_push_single(url: str, n: int) -> float:
    storage = PostgresStorage(connect(url))
    storage.db.connect()  # as the raw contender, connected before the clock starts
    push = storage.push
    start = time.perf_counter()
    for i in range(n):
        push(i)
    elapsed = time.perf_counter() - start
    storage.db.close()
    return n / elapsed


def tp_push_bulk(url: str, n: int) -> float:
    storage = PostgresStorage(connect(url))
    storage.db.connect()
    items = list(range(n))
    start = time.perf_counter()
    storage.push_bulk(items)
    elapsed = time.perf_counter() - start
    storage.db.close()
    return n / elapsed


def _noop(item: int) -> None:
    return None


def tp_drain(url: str, n: int) -> float:
    _fill(url, n)
    storage = PostgresStorage(connect(url))
    storage.db.connect()
    worker = WorkerBuilder("bench").backend(storage).concurrency(4).build(_noop)
    start = time.perf_counter()
    handled = worker.run_until_idle()
    elapsed = time.perf_counter() - start
    if handled != n:
        raise RuntimeError(f"taskpipe handled {handled} of {n}")
    storage.db.close()
    return n / elapsed


# raw psycopg, the same statements ---------------------------------------------------------------
def raw_push_single(url: str, n: int) -> float:
    sql = f"WITH ins AS ({Q.insert}) SELECT ins.id, pg_notify('{CHANNEL}', %s) FROM ins"
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        for i in range(n):
            conn.execute(sql, (*_row(i, time.time()), "default")).fetchone()
        return n / (time.perf_counter() - start)


def raw_push_bulk(url: str, n: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        with conn.transaction():
            _raw_bulk(conn, n)
        return n / (time.perf_counter() - start)


def raw_drain(url: str, n: int, batch: int = 32) -> float:
    _fill(url, n)
    pool = ThreadPoolExecutor(4)
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        lease_no = 0
        while True:
            now = time.time()
            lease_no += 1
            lease = f"raw:{lease_no}"
            params = _reorder_claim_params((lease, "raw", now, "default", now, batch))
            rows = conn.execute(Q.claim, params).fetchall()
            if not rows:
                break
            wait([pool.submit(msgspec.json.decode, row[1]) for row in rows])
            done_at = time.time()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(Q.ack_done, [(None, done_at, row[0], lease) for row in rows])
        elapsed = time.perf_counter() - start
    pool.shutdown()
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args(argv)
    base = os.environ.get("TASKPIPE_BENCH_POSTGRES_URL") or os.environ.get(
        "TASKPIPE_TEST_POSTGRES_URL"
    )
    if not base:
        print("set TASKPIPE_BENCH_POSTGRES_URL (or TASKPIPE_TEST_POSTGRES_URL)", file=sys.stderr)
        return 2
    n_single, n_bulk, n_drain = (500, 20_000, 5_000) if args.quick else (2_000, 100_000, 20_000)
    scenarios = [
        (
            f"push, one per transaction ({n_single:,})",
            "rows/s",
            tp_push_single,
            raw_push_single,
            n_single,
        ),
        (f"push_bulk {n_bulk:,}", "rows/s", tp_push_bulk, raw_push_bulk, n_bulk),
        (f"drain {n_drain:,}, 1 process × 4", "jobs/s", tp_drain, raw_drain, n_drain),
    ]
    rows = []
    for name, unit, tp, raw, n in scenarios:
        results: dict[str, list[float]] = {"taskpipe": [], "raw": []}
        for _ in range(args.reps):
            for label, fn in (("taskpipe", tp), ("raw", raw)):
                schema = Schema(base)
                try:
                    results[label].append(fn(schema.url, n))
                finally:
                    schema.drop()
        t, r = statistics.median(results["taskpipe"]), statistics.median(results["raw"])
        rows.append([name, unit, f"{t:,.0f}", f"{r:,.0f}", f"{t / r:.2f}×"])
        print(f"  {name}: taskpipe {t:,.0f}, raw {r:,.0f} {unit}", file=sys.stderr)
    header = ["scenario", "unit", "taskpipe", "raw psycopg", "vs raw"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    rule = "  ".join("=" * w for w in widths)
    print(rule)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(rule)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    print(rule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
