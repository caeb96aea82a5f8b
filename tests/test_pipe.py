"""pipe_to: feeding an iterable into a store while a worker reads it — finite sources,
errors (PipeError with its cause), endless sources ending, backpressure with a bounded
memory sink, fall-through to the sink, and the feeder thread's life."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

import pytest
from helpers import run_with_safety

from taskpipe import BuildError, Pipe, PipeError, Task, WorkerBuilder, events, memory, pipe_to
from taskpipe.errors import CodecError
from taskpipe.pipe import PipeSource
from taskpipe.sqlite import SqliteStorage


def feeder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("-pipe") and t.is_alive()]


def stop_after(count: int, seen: list):
    """An on_event callback that stops the worker once ``count`` tasks succeeded."""

    def on_event(ctx, event):
        if isinstance(event, events.Success) and len(seen) >= count:
            ctx.stop()

    return on_event


@dataclass
class Point:
    x: int
    y: int


# Finite sources ---------------------------------------------------------------------------
def test_finite_iterable_into_memory_runs_until_idle():
    seen = []
    backend = pipe_to(iter(range(10)), memory.backend())
    worker = WorkerBuilder("rango-tango").backend(backend).build(seen.append)
    assert worker.run_until_idle() == 10
    assert seen == list(range(10))
    assert worker.run_until_idle() == 0  # the source ran dry: nothing more, no error


def test_finite_iterable_into_sqlite_is_encoded_and_decoded(storage):
    seen = []

    def handler(point: Point) -> int:
        seen.append(point)
        return point.x + point.y

    source = [Point(1, 2), Task(Point(10, 20), priority=5), Point(3, 4)]
    backend = pipe_to(source, storage)
    assert WorkerBuilder("points").backend(backend).build(handler).run_until_idle() == 3
    assert seen[0] == Point(10, 20)  # the Task item kept its priority
    assert sorted(seen, key=lambda p: p.x) == [Point(1, 2), Point(3, 4), Point(10, 20)]
    # Attribute access falls through to the store.
    infos = backend.list_tasks(status="done")
    assert sorted(info.result for info in infos) == [3, 7, 30]
    assert backend.stats()["done"] == 3


def test_run_keeps_going_after_a_finite_source_and_the_feeder_ends_with_it(storage):
    seen = []
    closed_in = []
    close = storage.close_thread_connection

    def recording_close():
        closed_in.append(threading.current_thread().name)
        close()

    storage.close_thread_connection = recording_close
    worker = (
        WorkerBuilder("finite")
        .backend(pipe_to(range(5), storage))
        .on_event(stop_after(5, seen))
        .build(seen.append)
    )
    assert run_with_safety(worker)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert feeder_threads() == []
    assert "taskpipe-finite-pipe" in closed_in  # the feeder closed its own connection


def test_a_source_is_iterated_once_across_runs():
    seen = []
    backend = pipe_to(iter(range(6)), memory.backend(maxsize=2))
    worker = WorkerBuilder("twice").backend(backend).build(seen.append)
    worker.run_until_idle()
    worker.run_until_idle()
    assert seen == list(range(6))


# Errors -----------------------------------------------------------------------------------
def flaky_source(n: int):
    yield from range(n)
    raise ValueError("the feed broke")


@pytest.mark.parametrize("make_sink", [lambda db: memory.backend(), lambda db: SqliteStorage(db)])
def test_a_raising_source_is_a_pipe_error_after_earlier_items_ran(db, make_sink):
    seen, errors = [], []
    worker = (
        WorkerBuilder("flaky")
        .backend(pipe_to(flaky_source(3), make_sink(db)))
        .on_event(lambda ctx, ev: errors.append(ev) if isinstance(ev, events.Error) else None)
        .build(seen.append)
    )
    with pytest.raises(PipeError) as raised:
        worker.run_until_idle()
    assert sorted(seen) == [0, 1, 2]  # what was pushed before the error still ran
    assert isinstance(raised.value.__cause__, ValueError)
    assert "the feed broke" in str(raised.value)
    assert len(errors) == 1 and errors[0].task_id is None and errors[0].error is raised.value
    # The source is done: a later run only drains the sink, without an error.
    assert worker.run_until_idle() == 0
    assert worker.backend.error is raised.value


def test_a_raising_source_stops_run_which_raises(storage):
    seen, errors = [], []
    worker = (
        WorkerBuilder("flaky-run")
        .backend(pipe_to(flaky_source(4), storage))
        .on_event(lambda ctx, ev: errors.append(ev) if isinstance(ev, events.Error) else None)
        .build(seen.append)
    )
    with pytest.raises(PipeError) as raised:
        run_with_safety(worker)
    assert sorted(seen) == [0, 1, 2, 3]
    assert isinstance(raised.value.__cause__, ValueError)
    assert [e.error for e in errors] == [raised.value]
    assert feeder_threads() == []


def test_a_push_that_fails_is_a_pipe_error_with_the_codec_error_as_cause(storage):
    seen = []
    worker = (
        WorkerBuilder("codec").backend(pipe_to([1, 2, object(), 4], storage)).build(seen.append)
    )
    with pytest.raises(PipeError) as raised:
        worker.run_until_idle()
    assert isinstance(raised.value.__cause__, CodecError)
    assert storage.stats()["pending"] == 0


class Bounded(PipeSource):
    """A paced source declared endless that nevertheless ends after ``n`` items."""

    endless = True

    def __init__(self, n: int):
        self.n = n

    def stream(self, sink, stop):
        yield from range(self.n)

    def ready(self, sink):
        yield from range(self.n)


def test_an_endless_source_that_ends_is_an_empty_stream_pipe_error():
    seen = []
    worker = (
        WorkerBuilder("endless").backend(pipe_to(Bounded(3), memory.backend())).build(seen.append)
    )
    with pytest.raises(PipeError, match="EmptyStream"):
        run_with_safety(worker)
    assert sorted(seen) == [0, 1, 2]


# Backpressure ----------------------------------------------------------------------------
def test_backpressure_under_run_until_idle_keeps_memory_bounded():
    maxsize, pulled = 3, [0]
    sink = memory.backend(maxsize=maxsize)
    seen, sizes = [], []

    def source():
        for i in range(200):
            pulled[0] += 1
            yield i

    def handler(item: int) -> None:
        sizes.append(len(sink))
        # Everything pulled is pushed; at most ``maxsize`` pushed tasks are unfinished.
        assert pulled[0] <= len(seen) + maxsize
        seen.append(item)

    worker = WorkerBuilder("bounded").backend(pipe_to(source(), sink)).concurrency(2).build(handler)
    assert worker.run_until_idle() == 200
    assert sorted(seen) == list(range(200))
    assert max(sizes) <= maxsize


def test_the_feeder_blocks_on_a_full_sink_and_resumes():
    sink = memory.backend(maxsize=2)
    pulled: list[int] = []
    pulled_n = {n: threading.Event() for n in range(1, 11)}
    release = threading.Event()
    seen, sizes = [], []

    def source():
        for i in range(10):
            pulled.append(i)
            pulled_n[len(pulled)].set()
            yield i

    def handler(item: int) -> None:
        release.wait(10)
        sizes.append(len(sink))
        seen.append(item)

    worker = (
        WorkerBuilder("blocked")
        .backend(pipe_to(source(), sink))
        .on_event(stop_after(10, seen))
        .build(handler)
    )
    thread = threading.Thread(target=run_with_safety, args=(worker,))
    thread.start()
    try:
        assert pulled_n[2].wait(5)
        # The sink is full (one task running, one waiting): the feeder takes nothing more.
        assert not pulled_n[3].wait(0.3)
        assert len(pulled) == 2
    finally:
        release.set()
        thread.join(15)
    assert not thread.is_alive()
    assert sorted(seen) == list(range(10))
    assert max(sizes) <= 2
    assert feeder_threads() == []


def test_stopping_the_worker_stops_a_feeder_waiting_for_room():
    sink = memory.backend(maxsize=1)
    seen = []
    worker = (
        WorkerBuilder("endless-bounded")
        .backend(pipe_to(itertools.count(), sink))
        .on_event(stop_after(3, seen))
        .build(seen.append)
    )
    assert run_with_safety(worker)
    assert seen[:3] == [0, 1, 2]
    assert feeder_threads() == []


def test_stopping_the_worker_stops_a_feeder_of_an_endless_source(storage):
    seen = []
    worker = (
        WorkerBuilder("endless-sqlite")
        .backend(pipe_to(itertools.count(), storage))
        .on_event(stop_after(5, seen))
        .build(seen.append)
    )
    assert run_with_safety(worker)
    assert len(seen) >= 5
    assert feeder_threads() == []


def test_a_feeder_blocked_in_its_source_does_not_delay_the_stop(storage):
    # The source waits for its next item (a socket, a queue.get()…) while the handler
    # runs past the grace: run() returns about the grace after stop(), not later.
    release = threading.Event()
    started = threading.Event()

    def source():
        yield 1
        release.wait(30)

    def handler(item: int) -> None:
        started.set()
        release.wait(30)

    worker = (
        WorkerBuilder("blocked-source")
        .backend(pipe_to(source(), storage))
        .shutdown_grace(0.5)
        .build(handler)
    )
    thread = threading.Thread(target=run_with_safety, args=(worker, 20))
    thread.start()
    try:
        assert started.wait(10)
        began = time.monotonic()
        worker.stop()
        thread.join(10)
        took = time.monotonic() - began
    finally:
        release.set()
    assert not thread.is_alive()
    assert took < 0.5 + 1.0, took
    for feeder in feeder_threads():  # released now: it ends on its own
        feeder.join(5)
    assert feeder_threads() == []


def test_workers_sharing_one_pipe_take_each_item_once(storage):
    seen: list[int] = []
    lock = threading.Lock()
    everyone_done = threading.Event()

    def handler(item: int) -> None:
        with lock:
            seen.append(item)
            if len(seen) == 300:
                everyone_done.set()

    pipe = pipe_to(list(range(300)), storage)
    workers = [WorkerBuilder(f"sharer-{n}").backend(pipe).build(handler) for n in range(2)]
    threads = [threading.Thread(target=run_with_safety, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    assert everyone_done.wait(20)
    for worker in workers:
        worker.stop()
    for thread in threads:
        thread.join(20)
    assert sorted(seen) == list(range(300))  # one iterator, read by one feeder at a time
    assert storage.stats()["done"] == 300
    assert feeder_threads() == []


# The Pipe as a backend ---------------------------------------------------------------------
def test_the_pipe_delegates_to_its_sink(storage):
    pipe = pipe_to([], storage)
    assert isinstance(pipe, Pipe)
    assert pipe.codec is storage.codec and pipe.config is storage.config
    assert pipe.queue == "default" and pipe.db is storage.db
    task_id = pipe.push({"a": 1})  # the push methods are the sink's
    assert pipe.fetch_by_id(task_id).args == {"a": 1}
    with pytest.raises(AttributeError):
        pipe.no_such_thing  # noqa: B018


def test_pipe_to_checks_its_arguments():
    with pytest.raises(BuildError, match="taskpipe store"):
        pipe_to(range(3), object())
    with pytest.raises(BuildError, match="iterable"):
        pipe_to(42, memory.backend())
