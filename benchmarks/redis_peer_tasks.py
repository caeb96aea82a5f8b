"""The no-op task of each Redis peer, importable by its own worker command.

``redis_bench.py`` starts the peers' workers as separate processes with their usual
command line (``rq worker``, ``dramatiq``, ``celery worker``, ``huey_consumer``), with
this directory on ``PYTHONPATH`` and these environment variables:

- ``BENCH_PEER``: rq, dramatiq, celery or huey (only that peer is imported);
- ``BENCH_URL``: the peer's Redis URL (a database number of its own);
- ``BENCH_MODE``: ``latency`` (each task appends "now − its argument" to BENCH_OUT)
  or ``drain`` (the BENCH_N-th task writes "first start, last end" to BENCH_OUT).

The work a task does is the same for every contender (``Recorder.record``): a lock,
a counter and, once, a line in a file.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any


class Recorder:
    """What every contender's handler does with its argument."""

    def __init__(self, mode: str, out: str, n: int):
        self.mode, self.out, self.n = mode, out, n
        self.lock = threading.Lock()
        self.count = 0
        self.first = 0.0

    def record(self, value: float) -> None:
        now = time.time()
        if self.mode == "latency":
            with self.lock, open(self.out, "a") as fh:
                fh.write(f"{now - value}\n")
            return
        with self.lock:
            self.count += 1
            if self.count == 1:
                self.first = now
            if self.count == self.n:
                with open(self.out, "w") as fh:
                    fh.write(f"{self.first} {time.time()}\n")


PEER = os.environ.get("BENCH_PEER", "")
URL = os.environ.get("BENCH_URL", "")
recorder = Recorder(
    os.environ.get("BENCH_MODE", "drain"),
    os.environ.get("BENCH_OUT", os.devnull),
    int(os.environ.get("BENCH_N", "0")),
)


def rq_work(value: float) -> None:
    """RQ's task (RQ imports it by its dotted name)."""
    recorder.record(value)


def make_dramatiq(url: str) -> Any:
    """Dramatiq's broker (set as the global one) and actor."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    dramatiq.set_broker(RedisBroker(url=url))

    @dramatiq.actor(queue_name="bench")
    def dramatiq_work(value: float) -> None:
        recorder.record(value)

    return dramatiq_work


def make_celery(url: str) -> Any:
    """Celery's app (no result backend: the default) and task."""
    from celery import Celery

    celery_app = Celery("bench", broker=url)

    @celery_app.task(name="bench.work")
    def celery_work(value: float) -> None:
        recorder.record(value)

    return celery_app, celery_work


def make_huey(url: str) -> Any:
    """huey's ``RedisHuey`` and task."""
    from huey import RedisHuey

    redis_huey = RedisHuey("bench", url=url)

    @redis_huey.task(name="bench.work")
    def huey_work(value: float) -> None:
        recorder.record(value)

    return redis_huey, huey_work


# What the workers' command lines import: ``redis_peer_tasks`` (Dramatiq),
# ``-A redis_peer_tasks`` (Celery's ``app``), ``redis_peer_tasks.huey``.
if PEER == "dramatiq":
    dramatiq_work = make_dramatiq(URL)
elif PEER == "celery":
    app, celery_work = make_celery(URL)
elif PEER == "huey":
    huey, huey_work = make_huey(URL)
