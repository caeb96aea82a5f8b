"""Worker processes of the Redis benchmark for taskpipe and the raw ceiling.

python redis_child.py taskpipe URL PREFIX OUT     # idle taskpipe worker, 30 s poll
python redis_child.py raw URL PREFIX OUT          # raw consumer blocked on BLPOP (30 s)

Each prints "ready" once it waits for work, then appends one push→start latency per
task to OUT until terminated.
"""

from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from redis_peer_tasks import Recorder  # noqa: E402


def taskpipe_worker(url: str, prefix: str, out: str) -> None:
    import taskpipe
    from taskpipe import WorkerBuilder, events
    from taskpipe.config import Config

    recorder = Recorder("latency", out, 0)
    store = taskpipe.open_storage(
        f"{url}{'&' if '?' in url else '?'}prefix={prefix}",
        queue="bench",
        config=Config(queue="bench", poll_interval=30),
    )

    def on_event(ctx: object, event: object) -> None:
        if isinstance(event, events.Idle) and not ready[0]:
            ready[0] = True
            print("ready", flush=True)

    ready = [False]
    worker = (
        WorkerBuilder("latency")
        .backend(store)
        .concurrency(4)
        .on_event(on_event)
        .shutdown_grace(1)
        .build(recorder.record)
    )
    worker.run()


def raw_worker(url: str, prefix: str, out: str) -> None:
    from redis_raw import RawQueue

    recorder = Recorder("latency", out, 0)
    queue = RawQueue(url)
    queue.prefix = prefix
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    print("ready", flush=True)
    queue.consume(recorder.record, "c0", block=30)


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    {"taskpipe": taskpipe_worker, "raw": raw_worker}[kind](*args)
