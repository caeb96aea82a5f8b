"""Workflow throughput: a 5-step workflow against the same number of plain tasks.

    python benchmarks/workflow_bench.py [--runs 2000] [--reps 3] [--concurrency 4] [--write]

Both sides drain a SQLite file with the same worker (``run_until_idle``): 2,000 runs
of a 5-step ``Workflow`` (10,000 step tasks, each step's task written with the ack of
the one before it) against 10,000 plain tasks pushed up front. The row is steps/s,
with the plain drain rate beside it as the ceiling (target: at least 0.5x). With
``--write`` the row replaces its namesake in ``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import median, scratch_dir, taskpipe_db  # noqa: E402
from report import save_row  # noqa: E402

from taskpipe import WorkerBuilder  # noqa: E402
from taskpipe.sqlite import SqliteStorage  # noqa: E402
from taskpipe.workflow import Workflow  # noqa: E402

STEPS = 5
SCENARIO = f"workflow: {STEPS}-step runs vs plain tasks (SQLite)"


def step(value: int) -> int:
    return value + 1


def plain(value: int) -> int:
    return value + 1


def workflow_rate(directory: str, runs: int, concurrency: int) -> float:
    """Step tasks per second draining ``runs`` runs of a ``STEPS``-step workflow."""
    db = taskpipe_db(directory)
    storage = SqliteStorage(db, queue="wf")
    flow = Workflow("bench")
    for _ in range(STEPS):
        flow = flow.and_then(step)
    for n in range(runs):
        storage.push_start(n, flow=flow)
    worker = WorkerBuilder("wf").backend(storage).concurrency(concurrency).build(flow)
    started = time.perf_counter()
    handled = worker.run_until_idle()
    elapsed = time.perf_counter() - started
    if handled != runs * STEPS:
        raise SystemExit(f"workflow drain handled {handled}, expected {runs * STEPS}")
    db.close()
    return handled / elapsed


def plain_rate(directory: str, count: int, concurrency: int) -> float:
    """Plain tasks per second draining ``count`` tasks pushed up front."""
    db = taskpipe_db(directory)
    storage = SqliteStorage(db, queue="plain")
    storage.push_bulk(range(count))
    worker = WorkerBuilder("plain").backend(storage).concurrency(concurrency).build(plain)
    started = time.perf_counter()
    handled = worker.run_until_idle()
    elapsed = time.perf_counter() - started
    if handled != count:
        raise SystemExit(f"plain drain handled {handled}, expected {count}")
    db.close()
    return handled / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="update results/latest.json")
    options = parser.parse_args()
    flows, plains = [], []
    for _ in range(options.reps):  # interleaved, medians kept
        with scratch_dir() as directory:
            flows.append(workflow_rate(directory, options.runs, options.concurrency))
        with scratch_dir() as directory:
            plains.append(plain_rate(directory, options.runs * STEPS, options.concurrency))
    wf, ceiling = median(flows), median(plains)
    row = {
        "scenario": SCENARIO,
        "unit": "steps/s",
        "taskpipe": round(wf, 1),
        "ceiling": round(ceiling, 1),
        "peer": None,
        "vs_ceiling": round(wf / ceiling, 3),
        "vs_peer": None,
        "target": ">= 0.5x the plain drain rate",
    }
    print(json.dumps(row, indent=2))
    if options.write:
        save_row(row)


if __name__ == "__main__":
    main()
