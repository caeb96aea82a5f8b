"""CronStream and Tick under a frozen clock: weekly, daily across DST, @hourly; first
starts; catch-up after an outage (skip / latest / all, bounded); each tick once with two
streams and with two processes on one SQLite file; the live (run()) stream."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import schedule
from freezegun import freeze_time

from taskpipe import JsonCodec, MsgPackCodec, WorkerBuilder, events, memory
from taskpipe.cron import CronStream, Tick
from taskpipe.schedules import ScheduleError
from taskpipe.sqlite import SqliteStorage

PARIS = ZoneInfo("Europe/Paris")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def cron_worker(stream: CronStream, sink, name: str = "cron"):
    """A worker over ``stream.pipe_to(sink)`` whose handler records each Tick."""
    ticks: list[Tick] = []

    def handler(tick: Tick) -> str:
        assert isinstance(tick, Tick)
        ticks.append(tick)
        return tick.due.isoformat()

    worker = WorkerBuilder(name).backend(stream.pipe_to(sink)).build(handler)
    return worker, ticks


def step(frozen, worker, delta: timedelta, times: int) -> None:
    """Move the frozen clock by ``delta``, ``times`` times, running until idle each time."""
    for _ in range(times):
        frozen.tick(delta)
        worker.run_until_idle()


def keys(db) -> list[str]:
    return [
        k
        for (k,) in db.execute_sql(
            "SELECT key FROM taskpipe_jobs WHERE key IS NOT NULL ORDER BY key"
        )
    ]


# Schedules under a frozen clock ---------------------------------------------------------------
def test_weekly_schedule(storage, db):
    with freeze_time("2024-01-01 12:00:00") as frozen:  # a Monday, after 09:00
        stream = CronStream(schedule.every().monday.at("09:00"), name="weekly")
        worker, ticks = cron_worker(stream, storage)
        assert worker.run_until_idle() == 0  # first start: only ticks after now
        step(frozen, worker, timedelta(hours=12), 2 * 21)  # three weeks
    assert [t.due for t in ticks] == [utc(2024, 1, 8, 9), utc(2024, 1, 15, 9), utc(2024, 1, 22, 9)]
    assert {t.name for t in ticks} == {"weekly"}
    assert keys(db) == [
        "cron:weekly:2024-01-08T09:00:00+00:00",
        "cron:weekly:2024-01-15T09:00:00+00:00",
        "cron:weekly:2024-01-22T09:00:00+00:00",
    ]


def test_daily_at_a_local_time_across_the_dst_changes(storage):
    with freeze_time("2024-03-29 12:00:00") as frozen:
        stream = CronStream(schedule.every().day.at("07:00"), tz="Europe/Paris", name="cereal")
        worker, ticks = cron_worker(stream, storage)
        worker.run_until_idle()
        step(frozen, worker, timedelta(hours=2), 12 * 3)  # over the spring change (31 March)
    local = [t.due.astimezone(PARIS) for t in ticks]
    assert [(d.day, d.hour, d.minute) for d in local] == [(30, 7, 0), (31, 7, 0), (1, 7, 0)]
    # 07:00 in Paris is 06:00 UTC before the change and 05:00 UTC after it.
    assert [t.due.astimezone(UTC).hour for t in ticks] == [6, 5, 5]
    assert ticks[0].due == datetime(2024, 3, 30, 7, tzinfo=PARIS)


def test_cron_expression_across_the_autumn_change(storage):
    with freeze_time("2024-10-26 12:00:00") as frozen:
        stream = CronStream("30 2 * * *", tz="Europe/Paris", name="night")
        worker, ticks = cron_worker(stream, storage)
        worker.run_until_idle()
        step(frozen, worker, timedelta(hours=1), 24 * 2)
    # 02:30 happens twice on 27 October: it fires once, at its first occurrence.
    assert [t.due.astimezone(UTC) for t in ticks] == [
        utc(2024, 10, 27, 0, 30),
        utc(2024, 10, 28, 1, 30),
    ]


def test_hourly(storage, db):
    with freeze_time("2024-05-01 10:20:00") as frozen:
        stream = CronStream("@hourly")
        worker, ticks = cron_worker(stream, storage)
        worker.run_until_idle()
        frozen.move_to("2024-05-01 10:59:59")
        assert worker.run_until_idle() == 0  # not before its due time
        step(frozen, worker, timedelta(seconds=1), 1)
        assert [t.due for t in ticks] == [utc(2024, 5, 1, 11)]
        step(frozen, worker, timedelta(minutes=20), 12)
    assert [t.due for t in ticks] == [utc(2024, 5, 1, h) for h in (11, 12, 13, 14, 15)]
    assert stream.name == "@hourly"
    assert all(info.status == "done" for info in storage.list_tasks())


def test_a_first_start_on_a_due_time_does_not_emit_it(storage):
    with freeze_time("2024-05-01 07:00:00") as frozen:
        worker, ticks = cron_worker(CronStream("0 7 * * *"), storage)
        worker.run_until_idle()
        step(frozen, worker, timedelta(hours=12), 2)
    assert [t.due for t in ticks] == [utc(2024, 5, 2, 7)]


def test_a_late_worker_runs_every_tick_of_a_live_stream(storage):
    """Within one stream's life, ticks that are already past are pushed at once."""
    with freeze_time("2024-05-01 10:20:00") as frozen:
        worker, ticks = cron_worker(CronStream("@hourly"), storage)
        worker.run_until_idle()
        frozen.tick(timedelta(hours=3))
        assert worker.run_until_idle() == 3
    assert [t.due for t in ticks] == [utc(2024, 5, 1, h) for h in (11, 12, 13)]


# Catch-up after an outage ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("missed", "bound", "caught_up"),
    [
        ("skip", 100, []),
        ("latest", 100, [17]),
        ("all", 100, [12, 13, 14, 15, 16, 17]),
        ("all", 3, [15, 16, 17]),
    ],
)
def test_missed_ticks_after_an_outage(storage, missed, bound, caught_up):
    with freeze_time("2024-05-01 10:30:00") as frozen:
        first, before = cron_worker(CronStream("@hourly", name="report"), storage, "first")
        first.run_until_idle()
        step(frozen, first, timedelta(hours=1), 1)
        assert [t.due.hour for t in before] == [11]
        # The process dies; it starts again at 17:30, six ticks (12:00 … 17:00) later.
        frozen.move_to("2024-05-01 17:30:00")
        stream = CronStream("@hourly", name="report", missed=missed, max_catch_up=bound)
        second, after = cron_worker(stream, storage, "second")
        second.run_until_idle()
        assert [t.due.hour for t in after] == caught_up
        step(frozen, second, timedelta(hours=1), 1)  # then it goes on as usual
    assert [t.due.hour for t in after] == [*caught_up, 18]


def test_a_restart_never_repeats_recorded_ticks(storage, db):
    with freeze_time("2024-05-01 10:30:00") as frozen:
        first, _ = cron_worker(CronStream("@hourly", name="r"), storage, "first")
        first.run_until_idle()
        step(frozen, first, timedelta(hours=1), 3)  # 11, 12, 13 recorded
        frozen.move_to("2024-05-01 12:10:00")  # a clock behind the store's last tick
        second, after = cron_worker(
            CronStream("@hourly", name="r", missed="all"), storage, "second"
        )
        second.run_until_idle()
        step(frozen, second, timedelta(hours=1), 2)
    assert [t.due.hour for t in after] == [14]
    assert len(keys(db)) == 4


def test_streams_with_names_sharing_a_prefix_do_not_mix(storage, db):
    with freeze_time("2024-05-01 10:30:00") as frozen:
        a, _ = cron_worker(CronStream("@hourly", name="a"), storage, "a")
        ab, _ = cron_worker(CronStream("@hourly", name="a:b"), storage, "ab")
        a.run_until_idle()
        ab.run_until_idle()
        step(frozen, a, timedelta(hours=1), 1)  # a: 11:00
        for _ in range(3):
            step(frozen, ab, timedelta(hours=1), 1)  # a:b: 12, 13, 14
        assert CronStream("@hourly", name="a").last_recorded(storage) == utc(2024, 5, 1, 11)
        assert CronStream("@hourly", name="a:b").last_recorded(storage) == utc(2024, 5, 1, 14)
    assert "cron:a%3Ab:2024-05-01T14:00:00+00:00" in keys(db)


# Each tick once ----------------------------------------------------------------------------------
def test_two_streams_piping_one_schedule_enqueue_each_tick_once(storage, db):
    with freeze_time("2024-05-01 10:30:00") as frozen:
        one, ticks_one = cron_worker(CronStream("*/10 * * * *", name="shared"), storage, "one")
        two, ticks_two = cron_worker(
            CronStream("*/10 * * * *", name="shared"), SqliteStorage(db), "two"
        )
        one.run_until_idle()
        two.run_until_idle()
        for _ in range(12):
            frozen.tick(timedelta(minutes=5))
            one.run_until_idle()
            two.run_until_idle()
    dues = sorted(t.due for t in ticks_one + ticks_two)
    assert dues == [utc(2024, 5, 1, 10, 40) + timedelta(minutes=10 * i) for i in range(6)]
    assert len(keys(db)) == 6


PROCESS = textwrap.dedent(
    """
    import json, sys
    from datetime import timedelta
    import schedule
    from freezegun import freeze_time
    from taskpipe import WorkerBuilder
    from taskpipe.cron import CronStream, Tick
    from taskpipe.sqlite import SqliteStorage, connect

    path, name = sys.argv[1], sys.argv[2]
    handled = []

    def handler(tick: Tick) -> None:
        handled.append(tick.due.isoformat())

    with freeze_time("2024-05-01 10:00:00.500") as frozen:
        db = connect(path)
        SqliteStorage.setup(db)
        stream = CronStream(schedule.every(1).seconds, name="shared")
        worker = WorkerBuilder(name).backend(stream.pipe_to(SqliteStorage(db))).build(handler)
        worker.run_until_idle()        # the first start, at the same instant in both
        print("ready", flush=True)
        sys.stdin.readline()           # both have started: step through 20 ticks together
        for _ in range(40):
            frozen.tick(timedelta(milliseconds=500))
            worker.run_until_idle()
    print(json.dumps(handled), flush=True)
    """
)


def test_two_processes_piping_one_schedule_into_one_file_enqueue_each_tick_once(
    tmp_path, db_path, db
):
    script = tmp_path / "cron_process.py"
    script.write_text(PROCESS)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), db_path, f"process-{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # released together
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0]
    handled = [due for out in outputs for due in json.loads(out.strip().splitlines()[-1])]
    expected = [(utc(2024, 5, 1, 10, 0, 1) + timedelta(seconds=i)).isoformat() for i in range(20)]
    assert sorted(handled) == expected  # each tick ran once, in one process or the other
    rows = db.execute_sql("SELECT key, status FROM taskpipe_jobs").fetchall()
    assert len(rows) == 20 and {status for _, status in rows} == {"done"}


# Ticks and the stream itself ----------------------------------------------------------------------
@pytest.mark.parametrize("codec", [JsonCodec(), MsgPackCodec()])
def test_a_tick_round_trips_through_the_codecs(codec):
    tick = Tick(datetime(2024, 3, 31, 7, tzinfo=PARIS), "cereal")
    back = codec.decode(codec.encode(tick), Tick)
    assert back == tick and isinstance(back, Tick)  # the same instant, still aware
    assert back.due.utcoffset() is not None


def test_ready_yields_keyed_tasks_due_by_now_without_sleeping():
    with freeze_time("2024-05-01 10:30:00") as frozen:
        stream = CronStream("*/15 * * * *", name="q")
        assert list(stream.ready()) == []
        frozen.tick(timedelta(minutes=31))
        tasks = list(stream.ready())
    assert [t.key for t in tasks] == [
        "cron:q:2024-05-01T10:45:00+00:00",
        "cron:q:2024-05-01T11:00:00+00:00",
    ]
    assert [t.run_after for t in tasks] == [t.args.due for t in tasks]
    assert tasks[0].args == Tick(utc(2024, 5, 1, 10, 45), "q")


def test_a_memory_sink_has_no_history_so_each_stream_starts_fresh():
    with freeze_time("2024-05-01 10:30:00") as frozen:
        worker, ticks = cron_worker(CronStream("@hourly", missed="all"), memory.backend())
        worker.run_until_idle()
        step(frozen, worker, timedelta(hours=1), 2)
    assert [t.due.hour for t in ticks] == [11, 12]


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="missed must be one of"):
        CronStream("@daily", missed="sometimes")
    with pytest.raises(ValueError, match="max_catch_up"):
        CronStream("@daily", max_catch_up=0)
    with pytest.raises(ScheduleError, match="invalid cron expression"):
        CronStream("61 * * * *")
    with pytest.raises(ValueError, match="name"):
        CronStream("@daily", name="")


# The live stream (run()) ------------------------------------------------------------------------
def test_run_sleeps_until_each_tick_in_real_time(storage):
    ticks: list[Tick] = []

    def handler(tick: Tick) -> None:
        ticks.append(tick)

    def on_event(ctx, event):
        if isinstance(event, events.Success) and len(ticks) >= 2:
            ctx.stop()

    stream = CronStream("* * * * * *", name="every-second")  # six fields: seconds first
    worker = (
        WorkerBuilder("live").backend(stream.pipe_to(storage)).on_event(on_event).build(handler)
    )
    timer = threading.Timer(10, worker.stop)
    timer.start()
    try:
        worker.run()
    finally:
        timer.cancel()
    assert len(ticks) == 2
    assert ticks[1].due - ticks[0].due == timedelta(seconds=1)
    assert all(t.due.microsecond == 0 for t in ticks)


def test_a_stop_wakes_a_stream_waiting_for_a_far_tick(storage):
    stream = CronStream("@yearly")

    def on_event(ctx, event):
        if isinstance(event, events.Start):
            threading.Timer(0.2, ctx.stop).start()

    worker = (
        WorkerBuilder("far")
        .backend(stream.pipe_to(storage))
        .on_event(on_event)
        .build(lambda tick: None)
    )
    started = time.perf_counter()
    worker.run()
    assert time.perf_counter() - started < 3
    assert [t for t in threading.enumerate() if t.name == "taskpipe-far-pipe"] == []
