"""The ceiling: raw ``sqlite3`` running the same SQL taskpipe runs, with no library
around it (no encoding, no objects, no events). taskpipe's figures are divided by
these."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait

from common import QUERIES, insert_row, raw_connection, raw_db


def push_single(directory: str, n: int) -> float:
    """Rows/s inserting one row per transaction (autocommit), taskpipe's INSERT."""
    conn = raw_db(directory)
    now = time.time()
    rows = [insert_row(i, now) for i in range(n)]
    sql = QUERIES.insert
    start = time.perf_counter()
    for row in rows:
        conn.execute(sql, row)
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def push_bulk(directory: str, n: int) -> float:
    """Rows/s inserting ``n`` rows with one executemany in one transaction."""
    conn = raw_db(directory)
    now = time.time()
    rows = [insert_row(i, now) for i in range(n)]
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(QUERIES.insert, rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def fill(conn, pending: int, done: int = 0) -> None:
    """Insert ``pending`` pending rows and ``done`` finished rows, fast."""
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(QUERIES.insert, (insert_row(i, now) for i in range(pending)))
    if done:
        conn.executemany(QUERIES.insert, (insert_row(i, now) for i in range(done)))
        conn.execute(
            "UPDATE taskpipe_jobs SET status = 'done', done_at = ? WHERE id > ?", (now, pending)
        )
    conn.execute("COMMIT")


def _noop(payload: bytes) -> None:
    return None


def drain(directory: str, n: int, concurrency: int, batch: int = 32, work=_noop) -> float:
    """Jobs/s for the ideal dispatcher: claim ``batch`` in one statement, run them on a
    pool of ``concurrency`` threads, ack the batch with one executemany in one
    transaction, repeat."""
    conn = raw_db(directory)
    fill(conn, n)
    pool = ThreadPoolExecutor(concurrency)
    claim, ack = QUERIES.claim, QUERIES.ack_done
    lease_no = 0
    start = time.perf_counter()
    while True:
        now = time.time()
        lease_no += 1
        lease = f"raw:{lease_no}"
        rows = conn.execute(claim, (lease, "raw", now, "default", now, batch)).fetchall()
        if not rows:
            break
        wait([pool.submit(work, row[1]) for row in rows])
        done_at = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(ack, [(None, done_at, row[0], lease) for row in rows])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    pool.shutdown()
    conn.close()
    return n / elapsed


def claim_cost(db_path: str, claims: int) -> float:
    """Microseconds per claim of one task, on a database filled beforehand."""
    conn = raw_connection(db_path)
    claim = QUERIES.claim
    start = time.perf_counter()
    for i in range(claims):
        now = time.time()
        conn.execute(claim, (f"raw:{i}", "raw", now, "default", now, 1)).fetchall()
    elapsed = time.perf_counter() - start
    conn.execute("UPDATE taskpipe_jobs SET status = 'pending' WHERE status = 'running'")
    conn.close()
    return elapsed / claims * 1e6
