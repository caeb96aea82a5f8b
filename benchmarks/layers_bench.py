"""What layers cost: a SQLite drain of no-op tasks, with no layers, with one identity
layer, with metrics (a fresh Prometheus registry), and with tracing + metrics on:
tracing through the API's no-op tracer (what runs when no SDK is set up), and through
an OpenTelemetry SDK tracer provider with no exporter (spans made, sent nowhere). The variants run interleaved, rep after rep,
each on a fresh database, and the table gives each one's median drain rate and its
ratio to the run with no layers.

    python benchmarks/layers_bench.py --tasks 20000 --reps 5

(needs ``pip install -e '.[test]'``: opentelemetry-sdk and prometheus-client)
"""

from __future__ import annotations

import argparse
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for rep in range(args.reps):
        order = list(VARIANTS.items())
        if rep % 2:  # interleaved, and alternately reversed: no variant always goes first
            order.reverse()
        for name, variant in order:
            rates[name].append(drain(args.tasks, args.concurrency, variant))
    base = statistics.median(rates["no layers"])
    print(f"{args.tasks} no-op tasks, SQLite, concurrency {args.concurrency}, {args.reps} reps")
    print(f"{'variant':<22} {'median tasks/s':>15} {'min':>9} {'max':>9} {'ratio':>7}")
    for name, found in rates.items():
        median = statistics.median(found)
        print(
            f"{name:<22} {median:>15,.0f} {min(found):>9,.0f} {max(found):>9,.0f} "
            f"{median / base:>7.2f}"
        )


if __name__ == "__main__":
    main()
