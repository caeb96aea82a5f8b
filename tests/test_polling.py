"""Polling strategies (sequences, composition, reset) and how an idle SQL worker polls:
its waits never exceed the strategy's maximum however long it idles, and a task that
no wake-up announces is still claimed after at most one such wait."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import timedelta

import pytest

from taskpipe import Task, WorkerBuilder, WorkerContext, events
from taskpipe.polling import MultiStrategy, as_strategy
from taskpipe.sqlite import (
    BackoffStrategy,
    Config,
    IntervalStrategy,
    SqliteStorage,
    StrategyBuilder,
)


def delays(strategy, n: int) -> list[float]:
    state = strategy.start()
    return [round(state.next_delay(), 6) for _ in range(n)]


# Strategies ------------------------------------------------------------------------------
def test_interval_is_constant_and_takes_a_timedelta():
    assert delays(IntervalStrategy(timedelta(seconds=5)), 4) == [5.0] * 4
    assert IntervalStrategy(0.25).maximum == 0.25
    with pytest.raises(ValueError):
        IntervalStrategy(0)
    with pytest.raises(TypeError):
        IntervalStrategy("5s")


def test_backoff_grows_to_its_max_and_resets_when_work_is_found():
    strategy = BackoffStrategy(min=0.05, max=1.0, multiplier=2, jitter=0)
    state = strategy.start()
    first = [round(state.next_delay(), 6) for _ in range(7)]
    assert first == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    state.reset()  # a claim found work
    assert [round(state.next_delay(), 6) for _ in range(3)] == [0.05, 0.1, 0.2]


def test_backoff_never_exceeds_its_max_after_an_hour_of_idling():
    strategy = BackoffStrategy(min=0.05, max=1.0, jitter=0.5)
    state = strategy.start()
    waits = [state.next_delay() for _ in range(3600)]  # an hour of one-second waits
    assert max(waits) <= 1.0
    assert min(waits[-100:]) >= 0.5  # jitter stays within ±50 %
    state.reset()
    assert state.next_delay() <= 0.05 * 1.5


def test_each_worker_gets_its_own_backoff_state():
    strategy = BackoffStrategy(min=0.1, max=0.8, jitter=0)
    a, b = strategy.start(), strategy.start()
    a.next_delay(), a.next_delay()
    assert b.next_delay() == 0.1


@pytest.mark.parametrize(
    "kwargs",
    [dict(min=0), dict(min=2, max=1), dict(multiplier=0.5), dict(jitter=1.0), dict(jitter=-0.1)],
)
def test_backoff_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        BackoffStrategy(**kwargs)


def test_builder_composes_and_the_first_to_fire_wins():
    combined = (
        StrategyBuilder()
        .apply(IntervalStrategy(0.3))
        .apply(BackoffStrategy(min=0.05, max=1.0, jitter=0))
        .build()
    )
    assert isinstance(combined, MultiStrategy)
    assert combined.maximum == 0.3
    state = combined.start()
    assert [round(state.next_delay(), 6) for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    state.reset()  # resets every member
    assert round(state.next_delay(), 6) == 0.05


def test_builder_edge_cases():
    single = IntervalStrategy(2)
    assert StrategyBuilder().apply(single).build() is single
    with pytest.raises(ValueError, match="at least one strategy"):
        StrategyBuilder().build()
    with pytest.raises(TypeError, match="not a polling strategy"):
        StrategyBuilder().apply(5)


def test_config_accepts_a_strategy_a_timedelta_or_seconds():
    default = Config().strategy
    assert isinstance(default, BackoffStrategy)
    assert (default.min, default.max) == (0.05, 1.0)
    assert default.maximum == 1.0
    assert Config(poll_interval=timedelta(seconds=2)).strategy.maximum == 2.0
    assert Config(poll_interval=0.5).strategy.maximum == 0.5
    custom = IntervalStrategy(60)
    assert Config(poll_interval=custom).strategy is custom
    assert isinstance(as_strategy(None), BackoffStrategy)
    with pytest.raises(TypeError):
        Config(poll_interval="fast")


# How an idle worker polls ---------------------------------------------------------------
def test_an_idle_worker_waits_at_most_the_strategy_maximum_and_then_claims(
    db_path, db, monkeypatch
):
    storage = SqliteStorage(db, config=Config(poll_interval=BackoffStrategy(min=0.05, max=1.0)))
    waits: list[float] = []
    handled: list[tuple[int, int]] = []

    def recording_wait(ctx: WorkerContext, timeout: float | None) -> bool:
        waits.append(timeout)
        if len(waits) == 3600:  # an hour of idling at the maximum wait: another process pushes
            other = sqlite3.connect(db_path)  # nothing wakes this worker
            other.execute(
                "INSERT INTO taskpipe_jobs (queue, status, payload, priority, run_at, created_at) "
                "VALUES ('default', 'pending', ?, 0, 0, 0)",
                (b"42",),
            )
            other.commit()
            other.close()
        if len(waits) > 3700:
            ctx.stop()  # the test failed; do not idle for ever
        return False  # the wait timed out: nobody woke it

    monkeypatch.setattr(WorkerContext, "wait", recording_wait)

    def handler(item: int, ctx: WorkerContext) -> None:
        handled.append((item, len(waits)))
        ctx.stop()

    WorkerBuilder("idler").backend(storage).build(handler).run()
    assert handled == [(42, 3600)]  # its next look found the task, without another wait
    assert max(waits) <= 1.0
    assert min(waits[-100:]) >= 0.9  # settled at the maximum (±10 % jitter)


def test_an_idle_worker_wakes_for_a_delayed_task_whatever_its_strategy(db, monkeypatch):
    """The wait is cut to the earliest due run_at: a task due in 2 s with a 60 s
    interval is waited for 2 s, not 60."""
    storage = SqliteStorage(db, config=Config(poll_interval=IntervalStrategy(60)))
    waits: list[float] = []

    def recording_wait(ctx: WorkerContext, timeout: float | None) -> bool:
        waits.append(timeout)
        ctx.stop()
        return False

    monkeypatch.setattr(WorkerContext, "wait", recording_wait)
    storage.push_task(Task("later", run_after=timedelta(seconds=2)))
    WorkerBuilder("delayed").backend(storage).build(lambda item: None).run()
    assert len(waits) == 1 and 1.5 < waits[0] <= 2.0


def test_an_idle_worker_picks_up_an_unannounced_task_within_its_poll_maximum(db_path, db):
    storage = SqliteStorage(db, config=Config(poll_interval=BackoffStrategy(min=0.01, max=0.1)))
    idle, done = threading.Event(), threading.Event()

    def handler(item: int) -> None:
        done.set()

    worker = (
        WorkerBuilder("idle")
        .backend(storage)
        .on_event(lambda ctx, ev: idle.set() if isinstance(ev, events.Idle) else None)
        .build(handler)
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert idle.wait(10)
        other = sqlite3.connect(db_path)  # as another process would: no wake-up
        other.execute(
            "INSERT INTO taskpipe_jobs (queue, status, payload, priority, run_at, created_at) "
            "VALUES ('default', 'pending', ?, 0, 0, ?)",
            (b"1", time.time()),
        )
        other.commit()
        other.close()
        assert done.wait(10)
    finally:
        worker.stop()
        thread.join(10)


def test_a_worker_stopped_mid_batch_hands_the_unstarted_tasks_back(db):
    storage = SqliteStorage(db)
    ids = storage.push_bulk(range(5))
    seen = []

    def handler(item: int, ctx: WorkerContext) -> None:
        seen.append(item)
        ctx.stop()  # after taking one task of the five it claimed

    WorkerBuilder("w").backend(storage).concurrency(1).build(handler).run()
    assert seen == [0]
    infos = {t.id: t for t in storage.list_tasks()}
    assert (infos[ids[0]].status, infos[ids[0]].attempts) == ("done", 1)
    assert [(infos[i].status, infos[i].attempts) for i in ids[1:]] == [("pending", 0)] * 4
