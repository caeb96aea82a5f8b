"""Claiming ahead: on a store declaring ``overlapping_claims`` a busy worker keeps two
claims in flight (a second claiming thread), never holds more than its capacity, runs
each task once and loses none when it stops or pauses mid-drain. Checked on the memory
store with the capability switched on (claims made to wait on a barrier, so that only
overlapping claims get through) and on the Redis store, which declares it."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

from helpers import engine_url, run_with_safety

from taskpipe import Status, TaskId, WorkerBuilder, WorkerContext, events
from taskpipe.memory import MemoryBackend


class Overlapping(MemoryBackend):
    """The memory store, declaring overlapping claims; it counts the claims in flight
    and the tasks claimed and not yet finished by their handler."""

    capabilities = dataclasses.replace(MemoryBackend.capabilities, overlapping_claims=True)

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0
        self.held = self.most_held = 0
        self.calls = 0
        self.gate: threading.Barrier | None = None  # calls 2 and 3 wait for each other
        self.second = threading.Event()  # the second claim has started

    def claim(self, ctx, limit):
        with self.lock:
            self.calls += 1
            number = self.calls
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if number == 2:
            self.second.set()
        try:
            if self.gate is not None and number in (2, 3):
                self.gate.wait()  # broken (an error, no tasks) unless both are in flight
            claims = super().claim(ctx, limit)
            with self.lock:
                self.held += len(claims)
                self.most_held = max(self.most_held, self.held)
            return claims
        finally:
            with self.lock:
                self.in_flight -= 1

    def finished_one(self) -> None:
        with self.lock:
            self.held -= 1


def recording_errors(store, handle, errors: list[object]):
    """A 4-thread worker on ``store`` that appends its ``Error`` events to ``errors``."""
    return (
        WorkerBuilder("ahead")
        .backend(store)
        .concurrency(4)
        .on_event(lambda ctx, e: errors.append(e) if isinstance(e, events.Error) else None)
        .build(handle)
    )


def test_a_busy_worker_keeps_two_claims_in_flight_within_its_capacity():
    store = Overlapping()
    store.gate = threading.Barrier(2, timeout=10)
    ids = store.push_bulk(range(500))
    seen: list[int] = []
    errors: list[object] = []

    def handle(n: int) -> None:
        if n == 0:  # still runs when the next claim starts (a claim made while tasks
            store.second.wait(10)  # run may overlap another: it takes no lone task)
        seen.append(n)
        store.finished_one()

    worker = recording_errors(store, handle, errors)
    assert worker.capacity == 4 + 32
    assert worker.run_until_idle() == 500
    assert errors == []  # the barrier held: claims 2 and 3 were in flight together
    assert store.most_in_flight == 2
    assert 0 < store.most_held <= worker.capacity + 32  # one claim ahead at most
    assert sorted(seen) == list(range(500))
    assert {store.fetch_by_id(i).status for i in ids} == {Status.DONE}


def test_without_the_capability_one_claim_at_a_time():
    store = Overlapping()
    store.capabilities = MemoryBackend.capabilities
    store.push_bulk(range(300))
    worker = (
        WorkerBuilder("one").backend(store).concurrency(4).build(lambda n: store.finished_one())
    )
    assert worker.capacity == 4 + 32
    assert worker.run_until_idle() == 300
    assert store.most_in_flight == 1


def test_slow_tasks_are_not_claimed_ahead():
    store = Overlapping()
    store.push_bulk(range(200))
    running = threading.Semaphore(0)
    release = threading.Event()

    def handle(n: int) -> None:
        running.release()
        release.wait(10)
        store.finished_one()

    worker = WorkerBuilder("slow").backend(store).concurrency(4).build(handle)
    thread = threading.Thread(target=worker.run_until_idle)
    thread.start()
    try:
        for _ in range(4):  # every thread busy, the rest of the first claim queued
            assert running.acquire(timeout=10)
        time.sleep(0.3)  # room for a wrong claim to happen
        with store.lock:
            assert store.calls == 1 and store.held == 32  # the buffer, no claim ahead
    finally:
        release.set()
        thread.join(30)
    assert store.most_held <= worker.capacity


class WithALoneTask(Overlapping):
    """Its claims of task ``alone`` are marked to run alone (as a store marks a task
    recovered from a dead run that held several)."""

    alone = -1

    def claim(self, ctx, limit):
        claims = super().claim(ctx, limit)
        for claim in claims:
            claim.isolated = claim.id == self.alone
        return claims


def test_a_task_that_must_run_alone_runs_alone_beside_claims_ahead():
    store = WithALoneTask()
    ids = store.push_bulk(range(1000))
    store.alone = ids[100]
    lock = threading.Lock()
    active = 0
    beside_alone: list[int] = []
    counts: dict[int, int] = {}

    def handle(n: int, task_id: TaskId) -> None:
        nonlocal active
        with lock:
            active += 1
            counts[n] = counts.get(n, 0) + 1
            if task_id == store.alone:
                beside_alone.append(active - 1)
        time.sleep(0.0005 if task_id == store.alone else 0)
        with lock:
            active -= 1
        store.finished_one()

    worker = WorkerBuilder("alone").backend(store).concurrency(4).build(handle)
    assert worker.run_until_idle() == 1000
    assert beside_alone == [0]  # it ran once, and nothing ran beside it
    assert set(counts) == set(range(1000)) and set(counts.values()) == {1}
    assert store.fetch_by_id(store.alone).attempts == 1  # hand-backs are not attempts
    assert {store.fetch_by_id(i).status for i in ids} == {Status.DONE}


def test_a_stop_mid_drain_loses_nothing_and_runs_nothing_twice():
    store = Overlapping()
    ids = store.push_bulk(range(2000))
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def handle(n: int, ctx: WorkerContext) -> None:
        with lock:
            counts[n] = counts.get(n, 0) + 1
            if len(counts) == 300:
                ctx.stop()
        store.finished_one()

    worker = WorkerBuilder("stopper").backend(store).concurrency(4).build(handle)
    assert run_with_safety(worker)
    statuses = {store.fetch_by_id(i).status for i in ids}
    assert statuses <= {Status.DONE, Status.PENDING}  # none left Running, none lost
    assert Status.PENDING in statuses  # it did stop early
    again = WorkerBuilder("rest").backend(store).concurrency(4).build(handle)
    again.run_until_idle()
    assert {store.fetch_by_id(i).status for i in ids} == {Status.DONE}
    assert set(counts) == set(range(2000))
    assert set(counts.values()) == {1}


def test_a_pause_mid_drain_stops_both_claiming_threads():
    store = Overlapping()
    ids = store.push_bulk(range(2000))
    started = 0
    calls_at_pause: list[int] = []
    lock = threading.Lock()
    worker = None

    def handle(n: int) -> None:
        nonlocal started
        with lock:
            started += 1
            if started == 300:
                worker.pause()
                with store.lock:
                    calls_at_pause.append(store.calls)
                threading.Timer(0.3, worker.stop).start()
        store.finished_one()

    worker = WorkerBuilder("pauser").backend(store).concurrency(4).build(handle)
    assert run_with_safety(worker)
    # At most the claims in flight at the pause ended after it; their tasks went back.
    assert store.calls <= calls_at_pause[0] + 2
    statuses = {store.fetch_by_id(i).status for i in ids}
    assert statuses <= {Status.DONE, Status.PENDING}
    assert started < 2000


def test_redis_declares_overlapping_claims_and_keeps_two_in_flight():
    url = engine_url("redis", "drain Redis with claims ahead")
    from taskpipe.redis import RedisStorage, connect

    client = connect(url)
    store = RedisStorage(client, queue="ahead", prefix=f"tp-test-{uuid.uuid4().hex[:10]}")
    RedisStorage.setup(store)
    try:
        assert store.capabilities.overlapping_claims
        ids = store.push_bulk(range(3000))
        lock = threading.Lock()
        gate = threading.Barrier(2, timeout=10)
        second = threading.Event()
        calls = in_flight = most = 0

        def gated(fn):
            def call(*args):
                nonlocal calls, in_flight, most
                with lock:
                    calls += 1
                    number = calls
                    in_flight += 1
                    most = max(most, in_flight)
                if number == 2:
                    second.set()
                try:
                    if number in (2, 3):
                        gate.wait()  # broken (an error) unless both claims are in flight
                    return fn(*args)
                finally:
                    with lock:
                        in_flight -= 1

            return call

        store.claim = gated(store.claim)  # type: ignore[method-assign]
        store.ack_and_claim = gated(store.ack_and_claim)  # type: ignore[method-assign]
        counts: dict[int, int] = {}
        errors: list[object] = []

        def handle(n: int) -> None:
            if n == 0:  # still runs when the next claim starts
                second.wait(10)
            with lock:
                counts[n] = counts.get(n, 0) + 1

        worker = recording_errors(store, handle, errors)
        assert worker.run_until_idle() == 3000
        assert errors == [] and most == 2
        assert set(counts) == set(range(3000)) and set(counts.values()) == {1}
        assert {store.fetch_by_id(i).status for i in ids} == {Status.DONE}
    finally:
        store.drop()
        store.close()
