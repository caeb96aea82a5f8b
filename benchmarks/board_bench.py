"""The board's answer times over a big SQLite store.

    python benchmarks/board_bench.py [--tasks 1000000] [--requests 50] [--write]

Builds a SQLite file of ``--tasks`` tasks in three queues (pushed with
``push_stream``, then given a mix of statuses in SQL: 85% Done over the last ten
days, 3% Dead, 2% Failed, 10% Pending, an error row per failed or dead task), then
times the board's API calls through its WSGI app (no HTTP server: the app's own
cost): ``--requests`` calls of each, after three warm-up calls, p50 / p95 / max in
ms. The row's figure is the worst p95 of the overview and the filtered task lists
(target: at most 100 ms). With ``--write`` the row replaces its namesake in
``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from board_support import call  # noqa: E402
from common import scratch_dir, taskpipe_db  # noqa: E402
from report import save_row  # noqa: E402

from taskpipe.board import make_app  # noqa: E402
from taskpipe.sqlite import SqliteStorage  # noqa: E402

QUEUES = ("default", "emails", "reports")
SCENARIO = "board: overview and filtered task lists, 1M tasks (SQLite)"
DAY = 86400.0


def build(directory: str, tasks: int) -> SqliteStorage:
    """A store of ``tasks`` tasks with a mix of statuses (see the module docstring)."""
    db = taskpipe_db(directory)
    stores = [SqliteStorage(db, queue=q) for q in QUEUES]
    started = time.perf_counter()
    batch = 10_000
    for n in range(0, tasks, batch):  # queues interleaved, as real pushes would be
        store = stores[(n // batch) % len(stores)]
        store.push_stream({"n": i, "to": f"user{i}@example.com"} for i in range(n, n + batch))
    now = time.time()
    db.execute_sql(
        "UPDATE taskpipe_jobs SET status = 'done', attempts = 1, worker = 'bench', "
        "started_at = ? - (id * 7919 % 864000) - 0.2, done_at = ? - (id * 7919 % 864000) "
        "WHERE id % 100 < 85",
        (now, now),
    )
    db.execute_sql(
        "UPDATE taskpipe_jobs SET status = 'dead', attempts = 3, done_at = ? - (id % 864000) "
        "WHERE id % 100 BETWEEN 85 AND 87",
        (now,),
    )
    db.execute_sql(
        "UPDATE taskpipe_jobs SET status = 'failed', attempts = 1, run_at = ? + 600 "
        "WHERE id % 100 BETWEEN 88 AND 89",
        (now,),
    )
    db.execute_sql(
        "INSERT INTO taskpipe_errors (job_id, attempt, error, traceback, at) "
        "SELECT id, 1, 'RuntimeError: bench', 'Traceback…', ? - (id * 31 % 864000) "
        "FROM taskpipe_jobs WHERE status IN ('dead', 'failed')",
        (now,),
    )
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"built {tasks:,} tasks in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return stores[0]


def timed(app, path: str, query: str, requests: int) -> list[float]:
    """Milliseconds of ``requests`` calls (after three warm-up calls)."""
    for _ in range(3):
        assert call(app, "GET", path, query=query).status == 200
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = call(app, "GET", path, query=query)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status == 200, answer.body[:200]
    return times


def p95(times: list[float]) -> float:
    """The 95th percentile."""
    return statistics.quantiles(times, n=20, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--write", action="store_true", help="update results/latest.json")
    options = parser.parse_args()
    with scratch_dir() as directory:
        store = build(directory, options.tasks)
        app = make_app(store)
        some_id = store.list_tasks(queue="emails", status="dead", limit=1)[0].id
        calls = [
            ("overview", "/api/overview", "", True),
            ("tasks: every queue, page 1", "/api/tasks", "", True),
            ("tasks: emails, dead", "/api/tasks", "queue=emails&status=dead", True),
            ("tasks: emails, pending", "/api/tasks", "queue=emails&status=pending", True),
            (
                "tasks: reports, failed, page 5",
                "/api/tasks",
                "queue=reports&status=failed&page=5",
                True,
            ),
            ("tasks: done, page 20", "/api/tasks", "status=done&page=20", True),
            ("task page", f"/api/tasks/{some_id}", "", False),
        ]
        rows = []
        for name, path, query, counted in calls:
            times = timed(app, path, query, options.requests)
            rows.append((name, statistics.median(times), p95(times), max(times), counted))
    print(f"{'call':34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, p50, p95_, worst, _ in rows:
        print(f"{name:34} {p50:8.1f} {p95_:8.1f} {worst:8.1f}")
    worst_p95 = max(r[2] for r in rows if r[4])
    row = {
        "scenario": SCENARIO,
        "unit": "ms (worst p95)",
        "taskpipe": round(worst_p95, 1),
        "ceiling": None,
        "peer": None,
        "vs_ceiling": None,
        "vs_peer": None,
        "target": "<= 100 ms p95",
    }
    print(json.dumps(row, indent=2))
    if options.write:
        save_row(row)


if __name__ == "__main__":
    main()
