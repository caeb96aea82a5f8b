"""Programs the benchmarks run in a separate process (latency, idle CPU, memory).

python child.py taskpipe-worker DB OUT [hooked|plain]   # handler appends push→start latency to OUT
python child.py huey-worker DB OUT                      # the same with a huey consumer, default polling
python child.py push-stream DB N                        # prints peak RSS growth (MB) of push_stream(range(N))
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _appender(out_path: str):
    out = open(out_path, "a", buffering=1)

    def record(pushed_at: float) -> None:
        out.write(f"{time.time() - pushed_at}\n")

    return record


def taskpipe_worker(db_path: str, out_path: str, mode: str = "hooked") -> None:
    from taskpipe import WorkerBuilder
    from taskpipe.sqlite import SqliteStorage, connect

    record = _appender(out_path)

    def handler(pushed_at: float) -> None:
        record(pushed_at)

    db = connect(db_path)
    hooked = getattr(SqliteStorage, "with_hook", None)
    storage = hooked(db) if mode == "hooked" and hooked is not None else SqliteStorage(db)
    worker = WorkerBuilder("latency").backend(storage).shutdown_grace(1).build(handler)
    print("ready", flush=True)
    worker.run()


def huey_worker(db_path: str, out_path: str) -> None:
    import logging

    from contender_huey import BenchHuey, latency_task

    logging.disable(logging.CRITICAL)
    huey = BenchHuey("bench", filename=db_path, results=False)
    latency_task(huey, _appender(out_path))

    consumer = huey.create_consumer(workers=1, worker_type="thread", periodic=False)
    signal.signal(signal.SIGTERM, lambda *a: consumer.stop(graceful=False) or os._exit(0))
    consumer.start()
    print("ready", flush=True)
    while True:
        time.sleep(1)


def push_stream(db_path: str, n: str) -> None:
    import psutil

    from taskpipe.sqlite import SqliteStorage, connect

    db = connect(db_path)
    SqliteStorage.setup(db)
    storage = SqliteStorage(db)
    storage.push_stream(range(10))  # warm up every code path first
    before = psutil.Process().memory_info().rss
    storage.push_stream(range(int(n)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(max(0, peak - before) / 2**20)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"taskpipe-worker": taskpipe_worker, "huey-worker": huey_worker, "push-stream": push_stream}[
        command
    ](*args)
