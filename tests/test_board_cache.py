"""The board's background-refreshed values, and the throughput they keep."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from board_support import call
from freezegun import freeze_time

from taskpipe.board import api, make_app
from taskpipe.board.cache import Refreshed
from taskpipe.context import WorkerContext
from taskpipe.store import Outcome, OutcomeKind


def test_the_first_read_computes_then_a_stale_value_is_recomputed_in_the_background():
    calls = []
    release = threading.Event()
    recomputed = threading.Event()

    def compute():
        calls.append(1)
        if len(calls) > 1:
            release.wait(5)
            recomputed.set()
        return len(calls)

    value = Refreshed(compute, ttl=0.0, name="test")
    assert value.get() == 1
    assert value.get() == 1  # stale: a recomputation starts, the old value is served
    assert value.get() == 1  # one recomputation at a time
    release.set()
    assert recomputed.wait(5)
    for _ in range(100):  # the thread stores its value just after the event
        if value._value == 2:
            break
        threading.Event().wait(0.01)
    assert calls == [1, 1]
    assert value._value == 2


def test_a_failed_recomputation_keeps_the_old_value(caplog):
    outcomes = iter([1])
    done = threading.Event()

    def compute():
        try:
            return next(outcomes)
        except StopIteration:
            done.set()
            raise RuntimeError("store down") from None

    value = Refreshed(compute, ttl=0.0, name="flaky")
    assert value.get() == 1
    assert value.get() == 1
    assert done.wait(5)
    assert value.get() == 1


def test_tasks_done_after_the_past_buckets_were_counted_still_show(storage, monkeypatch):
    # no background recount here (freezegun moves the monotonic clock too)
    monkeypatch.setattr(api, "SETTLED_TTL", 1e9)
    monkeypatch.setattr(api, "DONE_COUNTS_TTL", 1e9)

    def done_now():
        [claim] = storage.claim(WorkerContext("w", capacity=1, report=lambda exc: None), 1)
        storage.ack([Outcome(claim, OutcomeKind.DONE)])

    start = datetime(2030, 1, 1, 12, 2, tzinfo=UTC)
    storage.push_bulk(["a", "b", "c"])
    app = make_app(storage)
    with freeze_time(start) as frozen:
        done_now()
        first = call(app, "GET", "/api/overview").json  # counts the settled buckets
        assert sum(b["done"] for b in first["hour"]) == 1
        frozen.tick(timedelta(minutes=7))  # a new bucket; the settled cache is kept
        done_now()
        second = call(app, "GET", "/api/overview").json
        frozen.tick(timedelta(minutes=7))
        done_now()
        third = call(app, "GET", "/api/overview").json
    assert [b["done"] for b in second["hour"][-2:]] == [1, 1]
    assert [b["done"] for b in third["hour"][-4:]] == [1, 1, 0, 1]  # 12:00 … 12:15
    assert sum(b["done"] for b in third["day"]) == 3
