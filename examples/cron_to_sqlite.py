"""Persisting a cron schedule to SQLite (seed 000, "morning-cereal").

    python examples/cron_to_sqlite.py        # about 4 seconds

Each tick is written to SQLite, under a unique key, before a worker runs it: a restart
loses no tick, two processes piping the same schedule enqueue each tick once, and the
tick history is queryable. The real thing is ``CronStream("@daily")`` (or
``schedule.every().day.at("07:00")``); to finish in seconds this script uses a
six-field cron expression that fires every second, then simulates an outage.
"""

import os
import tempfile
import time
from datetime import UTC, datetime

import schedule

from taskpipe import Data, RetryPolicy, WorkerBuilder, WorkerContext, events
from taskpipe.cron import CronStream, Tick
from taskpipe.sqlite import SqliteStorage, connect

db = connect(os.path.join(tempfile.mkdtemp(prefix="taskpipe-"), "jobs.db"))
SqliteStorage.setup(db)
storage = SqliteStorage(db)

# What the seed pipes: a daily stream. Its due times are anchored and DST-aware.
daily = CronStream(schedule.every().day.at("07:00"), tz="Europe/Paris", name="morning-cereal")
print("morning-cereal would next fire at", daily.schedule.next_after(datetime.now(UTC)).isoformat())

ran: list[Tick] = []


def handle_tick(tick: Tick, data: Data[int], ctx: WorkerContext) -> str:
    """The handler receives the Tick by annotation: its due time and the stream's name."""
    ran.append(tick)
    print(f"  tick {tick.name!r} due {tick.due.time()} (data={data})")
    return "eaten"


def stop_after(n: int):
    def on_event(ctx: WorkerContext, event: events.Event) -> None:
        if isinstance(event, events.Success) and len(ran) >= n:
            ctx.stop()

    return on_event


def build(stream: CronStream, stop_at: int):
    return (
        WorkerBuilder("morning-cereal")
        .backend(stream.pipe_to(storage))  # ticks are written to SQLite first
        .retry(RetryPolicy.retries(5))
        .data(42)
        .on_event(stop_after(stop_at))
        .build(handle_tick)
    )


# 1. A live run: the stream sleeps until each tick; the worker stops itself after two.
fast = CronStream("* * * * * *", name="fast-cereal")  # seconds first: every second
print("1. live run")
build(fast, 2).run()

# 2. The process is "down" for a second or so; a new one starts with missed="latest": of
#    the ticks missed meanwhile, only the most recent is enqueued (from the last tick
#    recorded in the store). run_until_idle() takes what is due now, without sleeping.
time.sleep(1.2)
print("2. restart after an outage (missed='latest')")
build(CronStream("* * * * * *", name="fast-cereal", missed="latest"), 99).run_until_idle()
assert len(ran) == 3, ran

# The history, one row per tick, keyed by stream name and due time.
print("3. stored ticks:")
for info in reversed(storage.list_tasks()):
    print(f"  #{info.id} {info.status} due {info.run_at.time()} result={info.result!r}")
keys = [k for (k,) in db.execute_sql("SELECT key FROM taskpipe_jobs ORDER BY id")]
assert len(keys) == len(set(keys)) == 3
