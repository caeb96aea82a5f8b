"""The Redis store under real load: several processes, a killed worker, killed
connections, and cross-process wake-ups.

Needs a Redis: set ``TASKPIPE_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/0``).
Without it these tests skip, saying so, except under ``CI``, where they fail. Each
test works under a key prefix of its own and deletes only the keys under it (a SCAN
of that prefix) when it ends; connections are named after the prefix, and only
those are killed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time

import taskpipe
from taskpipe import Status, WorkerBuilder, events
from taskpipe.config import Config
from taskpipe.context import WorkerContext

try:
    import redis
except ModuleNotFoundError:  # pragma: no cover - the extra is missing
    if os.environ.get("CI"):
        raise
    pytest.skip(
        "the Redis store needs redis-py: pip install 'taskpipe[redis]'", allow_module_level=True
    )

SPAWN = multiprocessing.get_context("spawn")
JOIN = 60  # seconds a child may take at most


def _base_url() -> str:
    url = os.environ.get("TASKPIPE_TEST_REDIS_URL", "").strip()
    if not url:
        if os.environ.get("CI"):
            pytest.fail("TASKPIPE_TEST_REDIS_URL is not set (CI: not skipping)", pytrace=False)
        pytest.skip(
            "set TASKPIPE_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/0) to test the Redis store"
        )
    return url


def _with_prefix(url: str, prefix: str) -> str:
    return url + ("&" if "?" in url else "?") + f"prefix={prefix}"


class Env:
    """One test's Redis: its prefix, its URL, an accounting client and the queue."""

    def __init__(self, base: str):
        self.base = base
        self.prefix = f"tp-test-{uuid.uuid4().hex[:12]}"
        self.url = _with_prefix(base, self.prefix)
        self.queue = "q"
        self.acct = redis.Redis.from_url(
            base, client_name=f"acct-{self.prefix}", socket_timeout=None
        )
        self.worker_name = f"taskpipe:{self.prefix}"  # the CLIENT SETNAME of the stores

    def key(self, name: str) -> str:
        return f"{self.prefix}:test:{name}"

    def store(self, **config: Any) -> Any:
        store = taskpipe.open_storage(
            self.url, queue=self.queue, config=Config(queue=self.queue, **config)
        )
        type(store).setup(store)
        return store


@pytest.fixture
def env() -> Any:
    made = Env(_base_url())
    yield made
    store = taskpipe.open_storage(made.url, queue=made.queue)
    store.drop()  # only this test's prefix
    assert not list(made.acct.scan_iter(match=f"{made.prefix}:*"))
    store.close()
    made.acct.close()


# Children (spawned processes: module-level functions) ----------------------------------------
def _drain_child(url: str, base: str, prefix: str, queue: str, barrier: Any, mid: int) -> None:
    """Wait at the barrier, then run every due task with 4 threads; each run is counted
    in ``{prefix}:test:runs`` (by item) through a client that is never killed."""
    acct = redis.Redis.from_url(base, client_name=f"acct-{prefix}")
    store = taskpipe.open_storage(url, queue=queue)

    def handle(item: int) -> None:
        pipe = acct.pipeline(transaction=False)
        pipe.hincrby(f"{prefix}:test:runs", str(item), 1)
        pipe.incr(f"{prefix}:test:count")
        _, count = pipe.execute()
        if count == mid:
            acct.lpush(f"{prefix}:test:mid", 1)

    worker = WorkerBuilder(f"drain-{os.getpid()}").backend(store).concurrency(4).build(handle)
    barrier.wait(timeout=JOIN)
    worker.run_until_idle()


def _victim_child(url: str, base: str, prefix: str, queue: str) -> None:
    """Run a worker whose handler says it started, then hangs until the process is killed."""
    acct = redis.Redis.from_url(base, client_name=f"acct-{prefix}")
    config = Config(queue=queue, keep_alive=0.5, reenqueue_orphaned_after=2.0, buffer_size=0)
    store = taskpipe.open_storage(url, queue=queue, config=config)

    def handle(item: str) -> None:
        acct.lpush(f"{prefix}:test:started", item)
        threading.Event().wait()  # until SIGKILL

    WorkerBuilder("victim").backend(store).concurrency(4).build(handle).run()


def _push_child(url: str, base: str, prefix: str, queue: str) -> None:
    """Push one task from another process and record when (time.time())."""
    acct = redis.Redis.from_url(base, client_name=f"acct-{prefix}")
    store = taskpipe.open_storage(url, queue=queue)
    pushed_at = time.time()
    store.push("wake up")
    acct.set(f"{prefix}:test:pushed_at", repr(pushed_at))


# Helpers -----------------------------------------------------------------------------------
def _start(target: Any, *args: Any) -> Any:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def _join_all(processes: list[Any]) -> None:
    for process in processes:
        process.join(JOIN)
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, "a child did not finish in time"
    assert [p.exitcode for p in processes] == [0] * len(processes)


def _drain(env: Env, total: int, processes: int, *, kill_connections_at: int | None = None) -> int:
    """Push ``total`` tasks, drain them with ``processes`` × 4 threads; with
    ``kill_connections_at``, kill every connection of the workers' stores once that
    many tasks ran (and again once the kill is done). Returns connections killed."""
    store = env.store()
    assert store.push_bulk(range(total))[-1] > 0
    barrier = SPAWN.Barrier(processes + 1)
    mid = kill_connections_at or 0
    children = [
        _start(_drain_child, env.url, env.base, env.prefix, env.queue, barrier, mid)
        for _ in range(processes)
    ]
    barrier.wait(timeout=JOIN)  # every child is ready: go
    killed = 0
    if kill_connections_at is not None:
        assert env.acct.blpop(env.key("mid"), timeout=JOIN) is not None
        killed = _kill_worker_connections(env)
    _join_all(children)

    runs = env.acct.hgetall(env.key("runs"))
    assert len(runs) == total  # every task ran…
    assert {int(v) for v in runs.values()} == {1}  # …exactly once
    assert sorted(int(k) for k in runs) == list(range(total))
    stats = store.stats(queue=env.queue)
    assert (stats["pending"], stats["running"], stats["failed"], stats["dead"]) == (0, 0, 0, 0)
    assert stats["done"] == min(total, store.keep_finished)  # retention: the newest kept
    assert store.next_due() is None
    return killed


def _kill_worker_connections(env: Env) -> int:
    """CLIENT KILL every connection named after this test's stores (never another's)."""
    killed = 0
    for client in env.acct.client_list():
        if client.get("name") == env.worker_name:
            killed += env.acct.execute_command("CLIENT", "KILL", "ID", client["id"]) == b"OK" or 1
    return killed


# Tests ------------------------------------------------------------------------------------
def test_four_processes_of_four_threads_drain_20000_tasks_exactly_once(env):
    _drain(env, 20_000, 4)


def test_killed_connections_mid_drain_lose_nothing_and_run_nothing_twice(env):
    killed = _drain(env, 10_000, 2, kill_connections_at=3_000)
    assert killed >= 2  # each child had at least one connection open


def test_a_sigkilled_workers_tasks_are_recovered(env):
    store = env.store()
    ids = store.push_bulk(["a", "b", "c"])
    victim = _start(_victim_child, env.url, env.base, env.prefix, env.queue)
    try:
        started = [env.acct.blpop(env.key("started"), timeout=JOIN // 3) for _ in ids]
        assert None not in started  # all three run in the victim, beside each other
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(JOIN)
    assert victim.exitcode == -signal.SIGKILL
    [run] = [w for w in store.list_workers() if w.name == "victim"]
    assert (run.tasks_held, [store.fetch_by_id(i).status for i in ids]) == (3, [Status.RUNNING] * 3)

    later = run.last_heartbeat.timestamp() + float(store.config.reenqueue_orphaned_after) + 1
    with freeze_time(datetime.fromtimestamp(later, UTC)):
        rescuer = WorkerContext("rescuer", capacity=4, report=pytest.fail)
        store.beat(rescuer)
        store.retire(rescuer)
    for tid in ids:
        info = store.fetch_by_id(tid)
        assert (info.status, info.attempts, info.worker) == (Status.PENDING, 0, None)
        assert [(r.worker, r.counted) for r in info.recoveries] == [(run.run_id, False)]
    assert run.run_id not in [w.run_id for w in store.list_workers()]

    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    alone: list[bool] = []

    def handle(item: str, ctx: taskpipe.WorkerContext) -> None:
        with lock:
            seen.append(item)
            alone.append(ctx.in_flight == 1)

    assert (
        WorkerBuilder("rescuer").backend(store).concurrency(4).build(handle).run_until_idle() == 3
    )
    assert sorted(seen) == ["a", "b", "c"]
    assert all(alone)  # recovered beside others: each ran alone
    for tid in ids:
        info = store.fetch_by_id(tid)
        assert (info.status, info.attempts, len(info.recoveries)) == (Status.DONE, 1, 1)


@pytest.mark.parametrize("kill_listener", [False, True], ids=["listening", "listener-killed"])
def test_an_idle_worker_polling_every_30s_takes_another_process_push_within_a_second(
    env, kill_listener
):
    store = env.store(poll_interval=30)
    idle = threading.Event()
    ran = threading.Event()
    started_at: list[float] = []

    def on_event(ctx: Any, event: Any) -> None:
        if isinstance(event, events.Idle):
            idle.set()

    def handle(item: str) -> None:
        started_at.append(time.time())
        ran.set()

    worker = WorkerBuilder("idle").backend(store).on_event(on_event).build(handle)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert idle.wait(10), "the worker never went idle"
        _wait_for_subscriber(env)
        if kill_listener:  # its connection dies: it must subscribe again by itself
            assert _kill_worker_connections(env) >= 1
            _wait_for_subscriber(env)
        _join_all([_start(_push_child, env.url, env.base, env.prefix, env.queue)])
        assert ran.wait(5), "the push was not taken within 5 s (the poll is 30 s)"
    finally:
        worker.stop()
        thread.join(JOIN)
    pushed_at = float(env.acct.get(env.key("pushed_at")))
    assert started_at[0] - pushed_at < 1.0
    assert not thread.is_alive()


def _wait_for_subscriber(env: Env) -> None:
    """Wait (10 s at most) until a connection of this test's stores listens on its
    wake-up channel."""
    channel = f"{env.prefix}:wake"
    deadline = time.monotonic() + 10
    while True:
        names = {c.get("name") for c in env.acct.client_list() if int(c.get("sub", 0)) > 0}
        if env.worker_name in names and dict(env.acct.pubsub_numsub(channel)).get(channel.encode()):
            return
        assert time.monotonic() < deadline, "the wake-up listener never subscribed"
        threading.Event().wait(0.01)


# Single-process behaviour ------------------------------------------------------------------
def test_finished_tasks_are_kept_up_to_keep_finished_per_status(env):
    from taskpipe.redis import RedisStorage

    client = taskpipe.connect(env.url)
    store = RedisStorage(client, queue=env.queue, keep_finished=3)
    RedisStorage.setup(store)
    keyed = store.push_task(taskpipe.Task("first", key="k-first"))
    ids = [keyed, *store.push_bulk(["b", "c", "d", "e"])]
    assert WorkerBuilder("w").backend(store).build(lambda item: item).run_until_idle() == 5
    for tid in ids[:2]:  # the two oldest Done tasks are forgotten…
        with pytest.raises(taskpipe.TaskNotFound):
            store.fetch_by_id(tid)
    assert [store.fetch_by_id(t).result for t in ids[2:]] == ["c", "d", "e"]
    stats = store.stats(queue=env.queue)
    assert (stats["done"], stats["done_last_hour"]) == (3, 3)
    assert stats["mean_run_time"] is not None and stats["mean_run_time"] >= 0
    assert [t.id for t in store.list_tasks(queue=env.queue)] == ids[:1:-1]
    again = store.push_task(taskpipe.Task("first again", key="k-first"))  # …and its key freed
    assert again not in ids
    store.kill(again)  # Dead ones have their own allowance
    assert store.stats(queue=env.queue)["dead"] == 1
    client.close()


def test_a_replayed_write_is_answered_from_its_token_not_done_twice(env):
    """What a retry after a lost reply does: the same script call again, same token."""
    from taskpipe.redis import _encode_rows

    store = env.store()
    now = time.time()
    row = store.row(taskpipe.Task("once"), now)
    args = [store.prefix, "token-1", repr(now), *_encode_rows([row])]
    first = store._scripts["insert"](keys=[], args=args)
    assert store._scripts["insert"](keys=[], args=args) == first
    assert store.stats(queue=env.queue)["pending"] == 1

    run = WorkerContext("replay", capacity=4, report=pytest.fail)
    claim_args = [store.prefix, "run:1", repr(now), env.queue, 10, run.run_id, 0, 100]
    claimed = store._scripts["claim"](keys=[], args=claim_args)
    assert store._scripts["claim"](keys=[], args=claim_args) == claimed  # the same task back
    head, payloads = claimed
    task_id = head.split(b",")[0].decode()
    assert (head.count(b";"), payloads) == (1, b'"once"')
    assert store.fetch_by_id(int(task_id)).attempts == 1  # counted once

    # token, now, keep, queue, one lease, the lease, then "id,lease,kind,len(result),len(error),
    # run_at,follow-ups,join parts;", the results, no follow-up rows, no plain Done, no join
    # parts and no join rows
    ack_args = [store.prefix, "ack-1", repr(now), 100, env.queue, 1, "run:1"]
    ack_args += [f"{task_id},1,done,3,,,0,0;", b'"r"', b"", b"", "", "", b"", b"", b""]
    assert store._scripts["ack"](keys=[], args=ack_args) == b"1"
    assert store._scripts["ack"](keys=[], args=ack_args) == b"1"  # accepted, not re-applied
    task = [task_id]
    info = store.fetch_by_id(int(task[0]))
    assert (info.status, info.result, info.attempts) == (Status.DONE, "r", 1)
    assert store.stats(queue=env.queue)["done"] == 1


def test_an_unreachable_redis_is_a_clear_storage_error():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from taskpipe.errors import StorageError
    from taskpipe.redis import connect

    with socket_closed_port() as port:
        client = connect(f"redis://127.0.0.1:{port}/0", retry=Retry(NoBackoff(), 1))
        store = taskpipe.open_storage(client, queue="q")
        with pytest.raises(StorageError, match="Redis is unreachable"):
            store.check_setup()
        with pytest.raises(taskpipe.PushError, match="push failed"):
            store.push(1)


def test_a_client_that_decodes_responses_is_refused():
    from taskpipe.redis import RedisStorage

    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStorage(redis.Redis(decode_responses=True))
    with pytest.raises(TypeError, match="redis.Redis client"):
        RedisStorage(object())  # type: ignore[arg-type]


class socket_closed_port:
    """A local TCP port that nothing listens on (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: Any) -> None:
        self.sock.close()


# The wire formats and the running hash (issue 12: the scripts were reshaped for speed) ------
ODD = "a,b;c=d e\u00e9\u2603"  # the separators of the scripts' heads, a space, non-ASCII


def test_odd_queue_names_keys_meta_and_worker_names_travel_intact(env):
    env.queue = f"q{ODD}"
    store = env.store()
    payloads = [f"x,;{ODD}", "x" * 3000, {"k": ODD}]
    ids = store.push_bulk(payloads)
    keyed = store.push_task(taskpipe.Task("keyed", key=f"k{ODD}", meta={"m": ODD}, priority=3))
    assert store.push_task(taskpipe.Task("again", key=f"k{ODD}")) == keyed
    assert store.last_key("k") == f"k{ODD}"
    seen: list[Any] = []

    def handle(item: Any, task: taskpipe.Task[Any]) -> Any:
        seen.append((task.id, item, task.meta, task.priority))
        return item

    worker = WorkerBuilder(f"w{ODD}").backend(store).concurrency(3).build(handle)
    assert worker.run_until_idle() == 4
    assert seen[0] == (keyed, "keyed", {"m": ODD}, 3)  # the highest priority first
    assert sorted(s[0] for s in seen[1:]) == ids
    for tid in [*ids, keyed]:
        info = store.fetch_by_id(tid)
        assert (info.status, info.queue, info.worker.startswith(f"w{ODD}:")) == (
            Status.DONE,
            env.queue,
            True,
        )
    assert store.fetch_by_id(ids[2]).result == {"k": ODD}
    assert store.stats(queue=env.queue)["done"] == 4


def test_bulk_ids_step_over_explicit_ids_ahead_of_the_counter(env):
    store = env.store()
    first = store.push_bulk(["a", "b"])
    ahead = [first[-1] + 2, first[-1] + 4]
    for tid in ahead:
        store.push_task(taskpipe.Task(f"explicit {tid}", id=tid))
    ids = store.push_bulk([f"plain {i}" for i in range(5)]) + [store.push("plain 5")]
    assert not set(ids) & set(ahead) and len(set(ids)) == 6
    for tid, n in zip(ids, range(6), strict=True):
        assert store.fetch_by_id(tid).args == f"plain {n}"
    for tid in ahead:
        assert store.fetch_by_id(tid).args == f"explicit {tid}"
    assert store.stats(queue=env.queue)["pending"] == 10
    taken = ids[-1] + 1  # right in the way of the next single push
    store.push_task(taskpipe.Task("explicit next", id=taken))
    single = store.push("plain 6")
    assert single == taken + 1 and store.fetch_by_id(single).args == "plain 6"


def test_a_batch_of_mixed_outcomes_and_leases_is_fenced_per_outcome(env):
    from taskpipe.store import Outcome, OutcomeKind

    store = env.store()
    ids = store.push_bulk(list(range(6)))
    run = WorkerContext("mixed", capacity=10, report=pytest.fail)
    store.beat(run)
    first = store.claim(run, 3)  # one lease
    second = store.claim(run, 3)  # another
    assert store.kill(first[0].id)  # its lease is gone
    batch = [
        Outcome(first[0], OutcomeKind.DONE),  # plain Done, stale
        Outcome(second[0], OutcomeKind.DONE, encoded_result=b'"r"'),  # Done with a result
        Outcome(first[1], OutcomeKind.RETRY, error="boom", delay=60),
        Outcome(second[1], OutcomeKind.DONE),  # plain Done, other lease
        Outcome(first[2], OutcomeKind.DONE),  # plain Done
        Outcome(second[1], OutcomeKind.DONE),  # the same claim twice: only the first counts
    ]
    store.ack(batch)
    assert [o.accepted for o in batch] == [False, True, True, True, True, False]
    statuses = {tid: store.fetch_by_id(tid).status for tid in ids}
    assert statuses == {
        ids[0]: Status.DEAD,
        ids[1]: Status.FAILED,
        ids[2]: Status.DONE,
        ids[3]: Status.DONE,
        ids[4]: Status.DONE,
        ids[5]: Status.RUNNING,
    }
    assert store.fetch_by_id(ids[3]).result == "r"
    running = store.list_tasks(queue=env.queue, status=Status.RUNNING)
    assert [(t.id, t.worker, t.attempts) for t in running] == [(ids[5], run.run_id, 1)]
    assert store.stats(queue=env.queue)["running"] == 1
    [held] = [w for w in store.list_workers() if w.run_id == run.run_id]
    assert held.tasks_held == 1
    store.ack([Outcome(second[2], OutcomeKind.DONE)])
    assert store.stats(queue=env.queue)["running"] == 0
    assert env.acct.hlen(f"{env.prefix}:q:{env.queue}:running") == 0
    assert env.acct.scard(f"{env.prefix}:held:{run.run_id}") == 0


def test_ack_and_claim_writes_outcomes_and_takes_tasks_in_one_script(env):
    from taskpipe.store import Outcome, OutcomeKind, Row

    store = env.store()
    ids = store.push_bulk(list(range(5)))
    run = WorkerContext("both", capacity=10, report=pytest.fail)
    store.beat(run)
    first = store.claim(run, 3)
    assert store.kill(first[2].id)  # its lease is gone: that outcome is refused
    batch = [
        Outcome(first[0], OutcomeKind.DONE),
        Outcome(first[1], OutcomeKind.RETRY, error="boom", delay=60),
        Outcome(first[2], OutcomeKind.DONE),
    ]
    calls: list[str] = []
    run_script = store._run
    store._run = lambda name, *args: calls.append(name) or run_script(name, *args)
    claims = store.ack_and_claim(batch, run, 10)
    assert calls == ["ack_claim"]  # one round trip
    assert [o.accepted for o in batch] == [True, True, False]
    assert sorted(c.id for c in claims) == ids[3:]  # the failed one waits 60 s
    assert {c.lease for c in claims} != {first[0].lease}  # a fresh lease
    statuses = [store.fetch_by_id(t).status for t in ids]
    assert statuses == [Status.DONE, Status.FAILED, Status.DEAD, Status.RUNNING, Status.RUNNING]
    assert [e.error for e in store.fetch_by_id(ids[1]).errors] == ["boom"]

    # outcomes the store may refuse (follow-ups, join parts) go through ack(): nothing done
    row = Row(None, env.queue, b"1", 0, time.time(), None, None, None, time.time())
    follow = [Outcome(claims[0], OutcomeKind.DONE, follow_ups=(row,))]
    assert store.ack_and_claim(follow, run, 10) is None
    assert store.fetch_by_id(claims[0].id).status is Status.RUNNING
    assert calls == ["ack_claim"]
    # acks alone when nothing more is due
    assert store.ack_and_claim([Outcome(c, OutcomeKind.DONE) for c in claims], run, 10) == []
    assert store.stats(queue=env.queue)["done"] == 3


def test_a_replayed_ack_and_claim_is_answered_from_its_tokens(env):
    from taskpipe.store import Outcome, OutcomeKind

    store = env.store()
    ids = store.push_bulk(["a", "b", "c"])
    run = WorkerContext("replay", capacity=4, report=pytest.fail)
    store.beat(run)
    [claim] = store.claim(run, 1)
    claim_args = store._claim_args(run, 5)
    ack_args, _, _ = store._ack_args([Outcome(claim, OutcomeKind.DONE)])
    args = [store.prefix, *claim_args, *ack_args]
    first = store._scripts["ack_claim"](keys=[], args=args)
    assert store._scripts["ack_claim"](keys=[], args=args) == first  # the reply was lost
    assert first[0] == b"1" and first[1].count(b";") == 2
    infos = [store.fetch_by_id(t) for t in ids]
    assert [(i.status, i.attempts) for i in infos] == [
        (Status.DONE, 1),
        (Status.RUNNING, 1),  # claimed once, not twice
        (Status.RUNNING, 1),
    ]
    assert store.stats(queue=env.queue)["done"] == 1


def test_a_replayed_push_is_answered_from_its_token_and_odd_payloads_travel(env):
    class TextCodec:  # a codec that returns str, not bytes
        def encode(self, value: Any) -> str:
            return f"<{value}>"

        def decode(self, data: bytes, type: Any = Any) -> Any:
            return data.decode()

    from taskpipe.redis import _ids

    store = env.store()
    store.codec = TextCodec()
    ids = store.push_bulk(["é", "", "x,y;z"])
    assert [store.fetch_by_id(t).args for t in ids] == ["<é>", "<>", "<x,y;z>"]
    args = [store.prefix, "token-1", repr(time.time()), env.queue, 300, "3,1", b"abcd"]
    first = store._scripts["plain_rows"](keys=[], args=args)
    assert store._scripts["plain_rows"](keys=[], args=args) == first
    assert [store.fetch_by_id(t).args for t in _ids(first)] == ["abc", "d"]
    args = [store.prefix, "token-2", repr(time.time()), env.queue, 300, b"one"]
    one = store._scripts["push_one"](keys=[], args=args)
    assert store._scripts["push_one"](keys=[], args=args) == one
    assert store.fetch_by_id(int(one)).args == "one"
    assert store.stats(queue=env.queue)["pending"] == 6


def test_a_replayed_claim_does_not_return_a_task_finished_since(env):
    from taskpipe.store import Outcome, OutcomeKind

    store = env.store()
    store.push_bulk(["a", "b"])
    run = WorkerContext("replay", capacity=4, report=pytest.fail)
    store.beat(run)
    now = repr(time.time())
    args = [store.prefix, "lease-1", now, env.queue, 2, run.run_id, 0, 100]
    head, _ = store._scripts["claim"](keys=[], args=args)
    task_ids = [int(r.split(b",")[0]) for r in head[:-1].split(b";")]
    claims = [
        taskpipe.store.Claim(taskpipe.TaskId(t), env.queue, b"", 1, "lease-1") for t in task_ids
    ]
    store.ack([Outcome(claims[0], OutcomeKind.DONE)])
    head, _ = store._scripts["claim"](keys=[], args=args)  # the reply was lost: again
    assert [int(r.split(b",")[0]) for r in head[:-1].split(b";")] == task_ids[1:]


def test_trimmed_records_leave_no_index_entries_and_keep_the_run_time_sum(env):
    from taskpipe.redis import RedisStorage

    client = taskpipe.connect(env.url)
    store = RedisStorage(client, queue=env.queue, keep_finished=5)
    RedisStorage.setup(store)
    store.push_all([taskpipe.Task(i, key=f"key-{i}") for i in range(12)])
    assert (
        WorkerBuilder("w").backend(store).concurrency(4).build(lambda i: i).run_until_idle() == 12
    )
    p = f"{env.prefix}:q:{env.queue}"
    assert env.acct.zcard(f"{p}:fin:done") == env.acct.zcard(f"{p}:s:done") == 5
    assert int(env.acct.hget(f"{p}:rt", "n")) == 5
    assert env.acct.hlen(f"{env.prefix}:keys") == env.acct.zcard(f"{env.prefix}:keyidx") == 5
    tasks = len(list(env.acct.scan_iter(match=f"{env.prefix}:t:*")))
    assert tasks == 5
    assert store.purge("done", 0) == 5
    assert env.acct.hlen(f"{env.prefix}:keys") == 0
    assert int(env.acct.hget(f"{p}:rt", "n")) == 0
    client.close()


def test_next_due_finds_due_tasks_of_priority_zero_outside_the_wait_set(env):
    """A due task of priority 0 is not in ``wait`` (its score 0 in ``ready`` or ``iso``
    says when it is due): next_due and the oldest pending age still see it."""
    store = env.store()
    t0 = 1_800_000_000.25
    with freeze_time(datetime.fromtimestamp(t0, UTC)) as frozen:
        store.push_task(taskpipe.Task("later, p0", run_after=30))
        store.push_task(taskpipe.Task("urgent", priority=5))
        frozen.tick(2)
        store.push("plain")  # due, priority 0: only in ready
        assert store.next_due() == t0  # the urgent one, pushed first
        run = WorkerContext("nd", capacity=4, report=pytest.fail)
        store.beat(run)
        [urgent] = store.claim(run, 1)
        assert urgent.priority == 5
        assert store.next_due() == t0 + 2  # found in ready by its score
        assert store.stats(queue=env.queue)["oldest_pending_age"] == pytest.approx(0.0)
        frozen.tick(40)  # the delayed one is due now (still in wait until a claim promotes it)
        assert store.next_due() == t0 + 2
        claimed = store.claim(run, 2)  # promotes it (out of wait), then takes both by run_at
        assert [store.fetch_by_id(c.id).args for c in claimed] == ["plain", "later, p0"]
        assert store.next_due() is None
        assert env.acct.zcard(f"{env.prefix}:q:{env.queue}:wait") == 0


def test_a_task_claimed_from_failed_is_running_to_retry_kill_and_introspection(env):
    """A claim leaves the task's hash as it was (pending or failed): every other path
    must see it Running through the queue's running hash."""
    from taskpipe.store import Outcome, OutcomeKind

    store = env.store()
    [tid] = store.push_bulk(["x"])
    run = WorkerContext("rf", capacity=4, report=pytest.fail)
    store.beat(run)
    [first] = store.claim(run, 1)
    store.ack([Outcome(first, OutcomeKind.RETRY, error="boom", delay=0)])
    assert store.fetch_by_id(tid).status is Status.FAILED
    [second] = store.claim(run, 1)
    assert second.attempt == 2
    info = store.fetch_by_id(tid)
    assert (info.status, info.attempts, info.worker) == (Status.RUNNING, 2, run.run_id)
    assert info.started_at is not None
    assert [t.id for t in store.list_tasks(queue=env.queue, status="failed")] == []
    assert not store.retry(tid)  # a Running task is not retried
    assert store.kill(tid)
    info = store.fetch_by_id(tid)
    assert (info.status, info.attempts, info.worker) == (Status.DEAD, 2, run.run_id)
    assert [e.error for e in info.errors] == ["boom", "killed"]
    late = Outcome(second, OutcomeKind.DONE)
    store.ack([late])
    assert not late.accepted
    assert store.fetch_by_id(tid).status is Status.DEAD


def _joined_parents(store, n: int) -> list[Any]:
    store.push_bulk([f"parent-{i}" for i in range(n)])
    run = WorkerContext("joins", capacity=n, report=pytest.fail)
    store.beat(run)
    claims = store.claim(run, n)
    assert len(claims) == n
    return claims


def test_a_join_is_deleted_with_the_task_keyed_by_its_key(env):
    from taskpipe.store import JoinPart, Outcome, OutcomeKind

    store = env.store()
    key = "wf:run:join"
    row = store.row(taskpipe.Task("joined", key=key), time.time())
    a, b = _joined_parents(store, 2)
    store.ack(
        [
            Outcome(a, OutcomeKind.DONE, join_parts=(JoinPart(key, 2, 0, b"0", row),)),
            Outcome(b, OutcomeKind.DONE, join_parts=(JoinPart(key, 2, 1, b"1", row),)),
        ]
    )
    assert store.join_parts(key) == [(0, b"0"), (1, b"1")]
    assert env.acct.hgetall(f"{env.prefix}:join:{key}") == {b"slots": b"2", b"arrived": b"2"}
    assert [k for k, _ in store.tasks_with_key_prefix("wf:run:")] == [key]
    assert WorkerBuilder("w").backend(store).build(lambda x: x).run_until_idle() == 1
    assert store.purge("done", 0) == 3  # the parents and the joined task
    assert store.join_parts(key) == []
    assert not env.acct.exists(f"{env.prefix}:join:{key}", f"{env.prefix}:join:{key}:parts")
    assert store.tasks_with_key_prefix("wf:run:") == []
    store.close()


def test_a_join_row_with_a_taken_id_refuses_the_whole_ack(env):
    from taskpipe.errors import OutcomeRefused
    from taskpipe.store import JoinPart, Outcome, OutcomeKind

    store = env.store()
    taken = store.push("taken")
    row = store.row(taskpipe.Task("joined", id=taken), time.time())
    (a,) = _joined_parents(store, 1)
    with pytest.raises(OutcomeRefused, match="taken"):
        store.ack([Outcome(a, OutcomeKind.DONE, join_parts=(JoinPart("j", 1, 0, b"0", row),))])
    assert store.join_parts("j") == []
    assert store.fetch_by_id(a.id).status is Status.RUNNING
    store.close()


def test_push_bulk_skips_an_explicit_id_in_its_way_and_returns_every_id(env):
    from taskpipe import Task

    store = env.store()
    first = store.push("a")
    taken = store.push_task(Task("explicit", id=first + 3))
    ids = store.push_bulk(range(5))  # would take first+1 … first+5 but for the taken one
    assert len(set(ids)) == 5 and taken not in ids
    assert ids[:2] == [first + 1, first + 2]
    assert [store.fetch_by_id(i).args for i in ids] == [0, 1, 2, 3, 4]
    assert store.fetch_by_id(taken).args == "explicit"
    later = store.push_bulk(["x", "y"])  # contiguous again: the reply is a range
    assert later[1] == later[0] + 1 and later[0] > max(ids)
    assert [store.fetch_by_id(i).args for i in later] == ["x", "y"]


def test_plain_pushes_wait_in_one_hash_until_claimed_and_every_path_finds_them(env):
    """``push``/``push_bulk`` tasks are fields of ``{p}:new`` (no key of their own) until
    a claim, a kill or a read needs them; each path sees them as ordinary Pending tasks."""
    store = env.store()
    a, b, c, d = store.push_bulk(["a", "b", "c", "d"])
    new = f"{env.prefix}:new"
    assert env.acct.hlen(new) == 4
    assert not list(env.acct.scan_iter(match=f"{env.prefix}:t:*"))
    assert store.kill(b) is True  # its hash is made, then it dies
    assert store.retry(c) is False and store.delete(c) is False  # pending: refused, kept
    assert store.stats()["pending"] == 3 and store.stats()["dead"] == 1
    [first, second] = store.claim(WorkerContext("w", capacity=10, report=pytest.fail), 2)
    assert (first.id, first.payload, second.id, second.attempt) == (a, b'"a"', c, 1)
    assert env.acct.hlen(new) == 1  # d
    assert store.fetch_by_id(b).status is Status.DEAD
    assert store.fetch_by_id(d).args == "d"
    assert sorted(
        int(k.rsplit(b":", 1)[1]) for k in env.acct.scan_iter(match=f"{env.prefix}:t:*")
    ) == [a, b, c]
    store.close()


def test_connections_have_no_read_timeout_and_find_a_dead_peer_by_tcp():
    import socket

    from taskpipe.redis import connect

    client = connect(_base_url())
    client.ping()
    conn = client.connection_pool.get_connection()
    try:
        sock = conn._sock
        assert sock.gettimeout() is None  # no poll() before every send and receive
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
    finally:
        client.connection_pool.release(conn)
        client.close()


def test_a_unix_socket_url_connects(tmp_path):
    """``unix:///path`` works (its TCP options are left out); a Redis of the test's own."""
    import shutil
    import subprocess

    from taskpipe.redis import RedisStorage, connect

    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not on PATH (CI: not skipping)", pytrace=False)
        pytest.skip("needs redis-server on PATH to start a Redis on a Unix socket")
    path = tmp_path / "redis.sock"
    args = [server, "--port", "0", "--unixsocket", str(path), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*args, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        client = connect(f"unix://{path}?prefix=unix-test")
        client.ping()  # retried (with backoff) until the server listens
        store = RedisStorage(client, queue="q")
        RedisStorage.setup(store)
        task_id = store.push({"via": "unix"})
        assert store.fetch_by_id(task_id).args == {"via": "unix"}
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=JOIN)


def test_tasks_due_at_the_same_microsecond_are_claimed_in_id_order_across_id_lengths(env):
    """A ready member is "<run_at µs><a letter for the id's length><id>": ids of 1, 2 and
    13 digits due at the same instant still come out in numeric order, and a task due
    a microsecond earlier comes first whatever its id (16 digits)."""
    from taskpipe import Task

    store = env.store()
    t0 = 1_800_000_000.0
    big = 1_000_000_000_123
    with freeze_time(datetime.fromtimestamp(t0, UTC)):
        explicit = [store.push_task(Task(f"id {i}", id=i)) for i in (big, 10, 9)]
        plain = store.push_bulk(["plain a", "plain b"])  # from the counter: 1 and 2
        before = datetime.fromtimestamp(t0, UTC) - timedelta(microseconds=1)
        early = store.push_task(Task("a µs earlier", id=big + 10**12, run_after=before))
    with freeze_time(datetime.fromtimestamp(t0 + 1, UTC)):
        claims = store.claim(WorkerContext("w", capacity=10, report=pytest.fail), 10)
    assert explicit == [big, 10, 9]
    assert plain == [1, 2]
    assert [c.id for c in claims] == [early, 1, 2, 9, 10, big]
    store.close()
