"""Event-driven pick-up: a hooked storage wakes its idle worker as soon as a task is
pushed, from this process or another, though it polls only every 5 seconds.

    python examples/hooked.py
"""

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from taskpipe import Task, WorkerBuilder, WorkerContext
from taskpipe.sqlite import Config, IntervalStrategy, SqliteStorage, StrategyBuilder

path = os.path.join(tempfile.mkdtemp(prefix="taskpipe-"), "jobs.db")
lazy = StrategyBuilder().apply(IntervalStrategy(5.0)).build()  # the safety net only
config = Config(queue="queue", poll_interval=lazy, buffer_size=5)
hooked = SqliteStorage.with_hook(path, config)
SqliteStorage.setup(hooked)

COUNT = 21  # 20 pushed by a thread here, 1 by another process
latencies: list[float] = []


def send_reminder(pushed_at: float, ctx: WorkerContext) -> None:
    latencies.append(time.time() - pushed_at)
    if len(latencies) == COUNT:
        ctx.stop()


def producer() -> None:
    for i in range(20):
        time.sleep(0.01)  # the worker goes idle between pushes
        hooked.push_task(Task.builder(time.time()).priority(i).build())
    code = (
        "import sys, time; from taskpipe.sqlite import SqliteStorage, connect; "
        "SqliteStorage(connect(sys.argv[1]), queue='queue').push(time.time())"
    )
    subprocess.run([sys.executable, "-c", code, path], check=True)


worker = WorkerBuilder("worker-2").backend(hooked).build(send_reminder)
threading.Thread(target=producer, daemon=True).start()
started = time.perf_counter()
worker.run()
print(f"{len(latencies)} tasks in {time.perf_counter() - started:.2f}s with a 5 s poll interval")
print(
    f"push -> handler start: median {statistics.median(latencies) * 1000:.2f} ms, "
    f"from the other process {latencies[-1] * 1000:.2f} ms"
)
