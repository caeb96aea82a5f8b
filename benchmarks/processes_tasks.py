"""The CPU-bound task of ``processes_bench.py``, importable by every contender's worker.

Each contender's worker imports this module with this directory on ``PYTHONPATH`` and:

- ``BENCH_PEER``: taskpipe, huey or celery (only that peer's objects are made);
- ``BENCH_LOOPS``: how many rounds of the pure-Python loop one task runs (~1 ms);
- ``BENCH_OUT``: a directory where each process appends one fixed-width line per
  task, ``"<start> <end>\\n"`` (``LINE`` bytes), to a file of its own;
- ``BENCH_HUEY_DB`` (huey's SQLite file), ``BENCH_CELERY_URL`` and
  ``BENCH_CELERY_PREFIX`` (Celery's Redis broker and its key prefix).

The work is the same for every contender (``work``): the loop, then one line.
"""

from __future__ import annotations

import os
import time
from typing import Any

LINE = 36  # bytes per recorded task: "%17.6f %17.6f\n"
LOOPS = int(os.environ.get("BENCH_LOOPS", "20000"))
_out: dict[int, int] = {}  # pid -> fd (huey forks its workers after importing this)


def burn(loops: int) -> int:
    """Pure-Python CPU work: holds the GIL throughout."""
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


def _fd() -> int:
    pid = os.getpid()
    fd = _out.get(pid)
    if fd is None:
        path = os.path.join(os.environ["BENCH_OUT"], f"{pid}.txt")
        fd = _out[pid] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return fd


def work(item: Any) -> None:
    """One task: ``burn(LOOPS)``, then its start and end on a line of this process's file."""
    start = time.time()
    burn(LOOPS)
    os.write(_fd(), f"{start:17.6f} {time.time():17.6f}\n".encode())


def make_huey(filename: str) -> Any:
    """huey's ``SqliteHuey`` on ``filename`` and its task."""
    from huey import SqliteHuey

    sqlite_huey = SqliteHuey("bench", filename=filename, results=False)
    return sqlite_huey, sqlite_huey.task(name="bench.work")(work)


def make_celery(url: str, prefix: str) -> Any:
    """Celery's app on Redis (every key under ``prefix``, no result backend) and task."""
    from celery import Celery

    celery_app = Celery("bench", broker=url)
    celery_app.conf.broker_transport_options = {"global_keyprefix": prefix}
    celery_app.conf.worker_hijack_root_logger = False
    return celery_app, celery_app.task(name="bench.work")(work)


PEER = os.environ.get("BENCH_PEER", "")
# What the workers' command lines import: ``processes_tasks.huey`` (huey_consumer),
# ``-A processes_tasks`` (Celery's ``app``), ``processes_tasks:work`` (taskpipe).
if PEER == "huey":
    huey, huey_work = make_huey(os.environ["BENCH_HUEY_DB"])
elif PEER == "celery":
    app, celery_work = make_celery(
        os.environ["BENCH_CELERY_URL"], os.environ["BENCH_CELERY_PREFIX"]
    )
