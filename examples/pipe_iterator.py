"""Piping an iterator into a store (seed 000, "rango-tango"): the pipe's feeder pushes
the items while the worker reads them back.

    python examples/pipe_iterator.py

1. a finite range into the in-memory backend, run until idle;
2. a long generator into a bounded memory backend under ``run()``: the feeder blocks
   while the sink is full, so memory stays bounded; the worker stops itself when done;
3. a source that breaks: the items before the error run, then ``PipeError``.
"""

import os
import tempfile
from datetime import timedelta

from taskpipe import PipeError, WorkerBuilder, WorkerContext, events, memory, pipe_to
from taskpipe.sqlite import SqliteStorage, connect

# 1. A finite stream into memory ---------------------------------------------------------------
seen: list[int] = []


def task(item: int, ctx: WorkerContext) -> None:
    """The handler: receives each item the pipe pushed."""
    seen.append(item)


backend = pipe_to(iter(range(10)), memory.backend(poll_interval=timedelta(seconds=1)))
worker = (
    WorkerBuilder("rango-tango")
    .backend(backend)
    .on_event(
        lambda ctx, ev: print("Event:", ev) if isinstance(ev, (events.Start, events.Stop)) else None
    )
    .build(task)
)
worker.run_until_idle()
print(f"1. processed {seen}")
assert seen == list(range(10))

# 2. Backpressure: a long generator into a bounded sink --------------------------------------
TOTAL, MAXSIZE = 2_000, 50
sink = memory.backend(maxsize=MAXSIZE)
largest = 0
done = 0


def measure(item: int) -> None:
    """Track how many tasks the sink holds while the feeder keeps pushing."""
    global largest, done
    largest = max(largest, len(sink))
    done += 1


def stop_when_done(ctx: WorkerContext, event: events.Event) -> None:
    if isinstance(event, events.Success) and done >= TOTAL:
        ctx.stop()


worker = (
    WorkerBuilder("bounded")
    .backend(pipe_to((i for i in range(TOTAL)), sink))
    .concurrency(4)
    .on_event(stop_when_done)
    .build(measure)
)
worker.run()  # returns when stop_when_done stops it
print(f"2. {done} items through a sink of maxsize {MAXSIZE}; it never held more than {largest}")
assert done == TOTAL and largest <= MAXSIZE

# 3. A source that breaks, into SQLite ------------------------------------------------------------
db = connect(os.path.join(tempfile.mkdtemp(prefix="taskpipe-"), "jobs.db"))
SqliteStorage.setup(db)


def readings():
    yield from (10, 20, 30)
    raise ConnectionError("sensor feed lost")


handled: list[int] = []
pipe = pipe_to(readings(), SqliteStorage(db))
worker = WorkerBuilder("sensors").backend(pipe).build(handled.append)
try:
    worker.run_until_idle()
except PipeError as exc:
    print(f"3. handled {handled}, then: {exc} (cause: {exc.__cause__!r})")
print(f"   the store still has them: {pipe.stats()['done']} done")
assert handled == [10, 20, 30]
