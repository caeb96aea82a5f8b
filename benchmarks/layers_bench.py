"""What layers cost: a SQLite drain of no-op tasks, with no layers, with one identity
layer, with metrics (a fresh Prometheus registry), and with tracing + metrics on:
tracing through the API's no-op tracer (what runs when no SDK is set up), and through
an OpenTelemetry SDK tracer provider with no exporter (spans made, sent nowhere). The variants run interleaved, rep after rep,
each on a fresh database, and the table gives each one's median drain rate and its
ratio to the run with no layers.

    python benchmarks/layers_bench.py --tasks 20000 --reps 5 [--against REV]

With ``--against REV`` (a git revision from before the layers, such as ``f81a917``) two
more rows drain with no layers in a child process each: one on this tree, one on
``git archive REV`` — whether the layer machinery changed the plain drain.

(needs ``pip install -e '.[test]'``: opentelemetry-sdk and prometheus-client)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import Any

from common import scratch_dir, taskpipe_db
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry

from taskpipe import WorkerBuilder
from taskpipe.sqlite import SqliteStorage


def noop(n: int) -> None:
    """The task: nothing, so that the table shows the machinery's cost."""


def identity(call_next: Any) -> Any:
    """A layer that only calls the next one."""

    def handle(task: Any, ctx: Any) -> Any:
        return call_next(task, ctx)

    return handle


def no_layers(builder: WorkerBuilder) -> WorkerBuilder:
    return builder


def one_identity_layer(builder: WorkerBuilder) -> WorkerBuilder:
    return builder.layer(identity)


def metrics_only(builder: WorkerBuilder) -> WorkerBuilder:
    return builder.metrics(CollectorRegistry())


def noop_tracing_and_metrics(builder: WorkerBuilder) -> WorkerBuilder:
    tracer = NoOpTracerProvider().get_tracer("bench")  # tracing on, no SDK set up
    return builder.tracing(tracer).metrics(CollectorRegistry())


def sdk_tracing_and_metrics(builder: WorkerBuilder) -> WorkerBuilder:
    tracer = TracerProvider().get_tracer("bench")  # SDK spans made and ended, sent nowhere
    return builder.tracing(tracer).metrics(CollectorRegistry())


VARIANTS: dict[str, Callable[[WorkerBuilder], WorkerBuilder]] = {
    "no layers": no_layers,
    "identity layer": one_identity_layer,
    "metrics": metrics_only,
    "no-op tracer+metrics": noop_tracing_and_metrics,
    "SDK tracer+metrics": sdk_tracing_and_metrics,
}


def drain(tasks: int, concurrency: int, variant: Callable[[WorkerBuilder], WorkerBuilder]) -> float:
    """Tasks/s draining ``tasks`` pushed no-op tasks (the push is not timed)."""
    with scratch_dir() as directory:
        db = taskpipe_db(directory)
        storage = SqliteStorage(db)
        storage.push_bulk(range(tasks))
        worker = variant(WorkerBuilder("bench").backend(storage).concurrency(concurrency)).build(
            noop
        )
        start = time.perf_counter()
        handled = worker.run_until_idle()
        elapsed = time.perf_counter() - start
        db.close()
    if handled != tasks:
        raise RuntimeError(f"drained {handled} of {tasks}")
    return tasks / elapsed


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A drain with no layers through the API every revision has, run in a child whose
#: PYTHONPATH picks the taskpipe to measure.
CHILD = """
import os, sys, tempfile, time
from taskpipe import WorkerBuilder
from taskpipe.sqlite import SqliteStorage, connect
tasks, concurrency = int(sys.argv[1]), int(sys.argv[2])
def noop(n: int) -> None:
    return None
with tempfile.TemporaryDirectory() as directory:
    db = connect(os.path.join(directory, "jobs.db"))
    SqliteStorage.setup(db)
    storage = SqliteStorage(db)
    storage.push_bulk(range(tasks))
    worker = WorkerBuilder("bench").backend(storage).concurrency(concurrency).build(noop)
    start = time.perf_counter()
    handled = worker.run_until_idle()
    elapsed = time.perf_counter() - start
    assert handled == tasks, handled
    print(tasks / elapsed)
"""


def drain_in_child(root: str, tasks: int, concurrency: int) -> float:
    """Tasks/s of a no-layer drain by the taskpipe found in ``root``."""
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tasks), str(concurrency)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    return float(out.stdout.strip())


def checkout(revision: str, into: str) -> str:
    """``git archive`` the package at ``revision`` into ``into``; returns that root."""
    archive = os.path.join(into, "rev.tar")
    subprocess.run(["git", "-C", ROOT, "archive", "-o", archive, revision, "taskpipe"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--against", help="a git revision to compare the plain drain with")
    args = parser.parse_args()
    runs: dict[str, Callable[[], float]] = {
        name: (lambda v=variant: drain(args.tasks, args.concurrency, v))
        for name, variant in VARIANTS.items()
    }
    scratch = tempfile.TemporaryDirectory()
    if args.against:
        old = checkout(args.against, scratch.name)
        runs["no layers, child"] = lambda: drain_in_child(ROOT, args.tasks, args.concurrency)
        runs[f"no layers, child, {args.against}"] = lambda: drain_in_child(
            old, args.tasks, args.concurrency
        )
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(args.reps):
        order = list(runs.items())
        if rep % 2:  # interleaved, and alternately reversed: no variant always goes first
            order.reverse()
        for name, run in order:
            rates[name].append(run())
    scratch.cleanup()
    base = statistics.median(rates["no layers"])
    print(f"{args.tasks} no-op tasks, SQLite, concurrency {args.concurrency}, {args.reps} reps")
    print(f"{'variant':<30} {'median tasks/s':>15} {'min':>9} {'max':>9} {'ratio':>7}")
    for name, found in rates.items():
        median = statistics.median(found)
        print(
            f"{name:<30} {median:>15,.0f} {min(found):>9,.0f} {max(found):>9,.0f} "
            f"{median / base:>7.2f}"
        )


if __name__ == "__main__":
    main()
