"""taskpipe's Redis store against the raw ceiling and the Redis peers, side by side.

    python benchmarks/redis_bench.py [--reps 3] [--quick] [--update-readme]
        [--url redis://127.0.0.1:6379/0] [--peer-dbs 12,13,14,15] [--only NAME]
    python benchmarks/redis_bench.py --memory 1000000     # bytes per finished record

Contenders (each measured ``--reps`` times, interleaved, medians kept):

- **taskpipe**: ``RedisStorage`` through its public API (``push``, ``push_bulk``, a
  ``Worker`` with 4 threads), default settings, under a fresh key prefix in ``--url``;
- **raw**: the ceiling, raw redis-py with the minimal design of PERFORMANCE.md
  (``redis_raw.py``: ready zset, payload hash, one Lua claim of 32 recording leases,
  one ack pipeline per batch, a BLPOP wake list), 4 threads;
- **same Lua**: raw redis-py calling taskpipe's own scripts with nothing around them
  (taskpipe's overhead over its storage layer; push, bulk and drain only: the scripts
  ``push`` and ``push_bulk`` use, and 4 threads each claiming 32 and acking them with
  one script, as the raw ceiling does);
- the peers at their documented defaults, each in a Redis database of its own
  (``--peer-dbs``; each must be empty at start, and is flushed after each of its runs,
  never another): **RQ** 3 (``enqueue``, ``enqueue_many``; drain by ``rq worker
  --worker-class rq.SimpleWorker --burst``, one job at a time, since its default
  worker forks per job; push→start by the default ``rq worker``), **Dramatiq** 2
  (``send``, ``group(...).run()``; ``dramatiq --processes 1 --threads 4``), **Celery**
  5 (``delay``, ``group(...).apply_async()``; ``celery worker --pool threads -c 4``),
  **huey** 3 ``RedisHuey`` (``task(i)``, ``task.map``; ``huey_consumer -w 4 -k thread``).
  Peers' workers run as separate processes.

Measures: enqueue one at a time (``--single`` tasks); bulk enqueue (``--bulk`` for
taskpipe and raw, ``--peer-bulk`` for the peers, whose bulk calls enqueue one message
after another, so the rate does not depend on the count); drain of ``--drain`` no-op
tasks pushed beforehand (rate from the first task's start to the last one's end, the
same ``Recorder`` in every contender); push→start latency on an idle worker in another
process (``--pushes`` pushes spaced ``--spacing`` s ±40 %, time from just before the
push to the handler's start; taskpipe's worker polls every 30 s, so only the wake-up
can wake it), p50 and p99.

One more row drains with ``Config(claim_batch=128)`` (so up to 4 + 2 × 128 tasks held
by the 4-thread worker, which keeps two claims in flight on Redis): what the default
prefetch of 4 + 2 × 32 costs on a network store.

Each rep runs the contenders in a rotated order (rep 2 starts with the second), each
after a second of quiet, so that none always follows the peers' worker processes.

Ratios: taskpipe ÷ raw and taskpipe ÷ best peer ("times as fast"; for latency, "times
as quick": raw_ms ÷ taskpipe_ms). The machine is noisy: compare ratios within a run.
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import msgspec  # noqa: E402
import redis  # noqa: E402
import report  # noqa: E402
from redis_peer_tasks import Recorder  # noqa: E402
from redis_raw import RawQueue  # noqa: E402

import taskpipe  # noqa: E402
from taskpipe import WorkerBuilder  # noqa: E402
from taskpipe.config import Config  # noqa: E402
from taskpipe.redis import (  # noqa: E402
    _ACK,
    _CLAIM,
    _PLAIN_ROWS,
    _PRELUDE,
    _PUSH_ONE,
    TOKEN_TTL,
    RedisStorage,
)

PEERS = ("rq", "dramatiq", "celery", "huey")
BIN = os.path.dirname(sys.executable)
START_TIMEOUT = 60.0
SETTLE = 1.0  # seconds of quiet before each contender's measures


# Shared helpers ----------------------------------------------------------------------------
def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _spaced(push: Callable[[float], Any], count: int, spacing: float) -> None:
    for _ in range(count):
        time.sleep(spacing * random.uniform(0.6, 1.4))  # the worker is idle in between
        push(time.time())


def _read_lines(path: str, count: int, timeout: float = 30.0) -> list[float]:
    deadline = time.time() + timeout
    values: list[float] = []
    while time.time() < deadline:
        with open(path) as fh:
            values = [float(x) for x in fh.read().split()]
        if len(values) >= count:
            break
        time.sleep(0.02)
    if len(values) < count:
        raise RuntimeError(f"only {len(values)} of {count} results in {path}")
    return values


def _drain_window(path: str, timeout: float) -> float:
    """Seconds from the first task's start to the last one's end, read from ``path``."""
    first, last = _read_lines(path, 2, timeout)[:2]
    return last - first


class _Proc:
    """A worker process; ``ready`` waits for its first line when it prints one."""

    def __init__(self, args: list[str], env: dict[str, str], wait_ready: bool = False):
        full = {**os.environ, **env, "PYTHONPATH": HERE}
        self.proc = subprocess.Popen(
            args,
            env=full,
            cwd=HERE,
            stdout=subprocess.PIPE if wait_ready else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if wait_ready:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if line.strip() != "ready":
                self.stop()
                raise RuntimeError(f"{args[:3]} did not start: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _tmpfile() -> str:
    """A scratch file, removed when the run ends."""
    fd, path = tempfile.mkstemp(prefix="taskpipe-redis-bench-")
    os.close(fd)
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    return path


# taskpipe ----------------------------------------------------------------------------------
def _tp_store(url: str) -> RedisStorage:
    prefix = f"tp-bench-{uuid.uuid4().hex[:10]}"
    store = taskpipe.open_storage(
        f"{url}{'&' if '?' in url else '?'}prefix={prefix}", queue="bench"
    )
    RedisStorage.setup(store)
    return store  # type: ignore[return-value]


class Taskpipe:
    name = "taskpipe"

    def __init__(self, url: str):
        self.url = url

    def single(self, n: int) -> float:
        store = _tp_store(self.url)
        try:
            start = time.perf_counter()
            for _ in range(n):
                store.push(time.time())
            return _rate(n, time.perf_counter() - start)
        finally:
            store.drop()
            store.close()

    def bulk(self, n: int) -> float:
        store = _tp_store(self.url)
        try:
            items = [time.time()] * n
            start = time.perf_counter()
            store.push_bulk(items)
            return _rate(n, time.perf_counter() - start)
        finally:
            store.drop()
            store.close()

    def drain(self, n: int, claim_batch: int | None = None) -> float:
        store = _tp_store(self.url)
        if claim_batch is not None:
            store.config = Config(queue=store.queue, claim_batch=claim_batch)
        try:
            store.push_bulk([time.time()] * n)
            out = _tmpfile()
            recorder = Recorder("drain", out, n)
            worker = WorkerBuilder("bench").backend(store).concurrency(4).build(recorder.record)
            handled = worker.run_until_idle()
            assert handled == n, f"drained {handled} of {n}"
            return _rate(n, _drain_window(out, 5))
        finally:
            store.drop()
            store.close()

    def latency(self, count: int, spacing: float) -> list[float]:
        store = _tp_store(self.url)
        out = _tmpfile()
        proc = _Proc(
            [sys.executable, "redis_child.py", "taskpipe", self.url, store.prefix, out],
            {},
            wait_ready=True,
        )
        try:
            time.sleep(0.5)
            _spaced(store.push, count, spacing)
            return _read_lines(out, count)
        finally:
            proc.stop()
            store.drop()
            store.close()


# raw ceiling --------------------------------------------------------------------------------
class Raw:
    name = "raw"

    def __init__(self, url: str):
        self.url = url

    def single(self, n: int) -> float:
        queue = RawQueue(self.url)
        try:
            start = time.perf_counter()
            for _ in range(n):
                queue.push(time.time())
            return _rate(n, time.perf_counter() - start)
        finally:
            queue.drop()

    def bulk(self, n: int) -> float:
        queue = RawQueue(self.url)
        try:
            items = [time.time()] * n
            start = time.perf_counter()
            queue.push_bulk(items)
            return _rate(n, time.perf_counter() - start)
        finally:
            queue.drop()

    def drain(self, n: int) -> float:
        queue = RawQueue(self.url)
        try:
            queue.push_bulk([time.time()] * n)
            out = _tmpfile()
            handled = queue.drain(Recorder("drain", out, n).record, 4)
            assert handled == n, f"drained {handled} of {n}"
            return _rate(n, _drain_window(out, 5))
        finally:
            queue.drop()

    def latency(self, count: int, spacing: float) -> list[float]:
        queue = RawQueue(self.url)
        out = _tmpfile()
        proc = _Proc(
            [sys.executable, "redis_child.py", "raw", self.url, queue.prefix, out],
            {},
            wait_ready=True,
        )
        try:
            time.sleep(0.5)
            _spaced(queue.push, count, spacing)
            return _read_lines(out, count)
        finally:
            proc.stop()
            queue.drop()


# raw redis-py running taskpipe's own scripts ------------------------------------------------
class SameLua:
    name = "same Lua"

    def __init__(self, url: str):
        self.url = url

    def _scripts(self, store: RedisStorage) -> dict[str, Any]:
        return {
            name: store.client.register_script(_PRELUDE + source % {"ttl": TOKEN_TTL})
            for name, source in (("claim", _CLAIM), ("ack", _ACK))
        }

    def single(self, n: int) -> float:
        store = _tp_store(self.url)
        push = store.client.register_script(_PUSH_ONE)
        try:
            start = time.perf_counter()
            for _ in range(n):
                payload = msgspec.json.encode(time.time())
                args = [store.prefix, uuid.uuid4().hex, repr(time.time()), "bench", TOKEN_TTL]
                push(keys=[], args=[*args, payload])
            return _rate(n, time.perf_counter() - start)
        finally:
            store.drop()
            store.close()

    def bulk(self, n: int) -> float:
        store = _tp_store(self.url)
        push = store.client.register_script(_PLAIN_ROWS)
        try:
            items = [time.time()] * n
            start = time.perf_counter()
            payloads = [msgspec.json.encode(v) for v in items]
            sizes = ",".join([str(len(p)) for p in payloads])
            args = [store.prefix, uuid.uuid4().hex, repr(time.time()), "bench", TOKEN_TTL]
            push(keys=[], args=[*args, sizes, b"".join(payloads)])
            return _rate(n, time.perf_counter() - start)
        finally:
            store.drop()
            store.close()

    def drain(self, n: int) -> float:
        """4 threads looping: claim 32, run them, one ack script per batch."""
        store = _tp_store(self.url)
        scripts = self._scripts(store)
        claim, ack = scripts["claim"], scripts["ack"]
        client, prefix = store.client, store.prefix
        out = _tmpfile()
        recorder = Recorder("drain", out, n)
        try:
            store.push_bulk([time.time()] * n)

            def loop(k: int) -> None:
                run = f"raw-{k}:{uuid.uuid4().hex[:8]}"
                seq = 0
                while True:
                    seq += 1
                    lease = f"{run}:{seq}"
                    now = repr(time.time())
                    reply = claim(
                        keys=[], args=[prefix, lease, now, "bench", 32, run, 0, 1000], client=client
                    )
                    if not reply:
                        return
                    head, blob = reply
                    ids, pos = [], 0
                    for record in head[:-1].split(b";"):
                        fields = record.split(b",")
                        size = int(fields[5])
                        recorder.record(msgspec.json.decode(blob[pos : pos + size]))
                        pos += size
                        ids.append(fields[0].decode())
                    plain = f"1={','.join(ids)};"
                    args = [prefix, uuid.uuid4().hex, repr(time.time()), 10_000, "bench", 1, lease]
                    ack(
                        keys=[],
                        args=[*args, "", b"", b"", b"", plain, "", b"", b"", b""],
                        client=client,
                    )

            pool = [threading.Thread(target=loop, args=(k,)) for k in range(4)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            return _rate(n, _drain_window(out, 5))
        finally:
            store.drop()
            store.close()


# peers --------------------------------------------------------------------------------------
class Peer:
    """One peer in a Redis database of its own, flushed after each of its runs."""

    def __init__(self, name: str, base_url: str, db: int):
        self.name = name
        self.db = db
        self.url = _db_url(base_url, db)
        self.client = redis.Redis.from_url(self.url)
        if self.client.dbsize():
            raise SystemExit(
                f"Redis database {db} (for {name}) is not empty: pick unused ones with --peer-dbs"
            )
        self.module: Any = None

    def _make(self) -> Any:
        """The peer's task object in this process (made once)."""
        if self.module is None:
            import redis_peer_tasks as tasks

            if self.name == "rq":
                from rq import Queue

                queue = Queue("bench", connection=redis.Redis.from_url(self.url))
                self.module = (queue, tasks.rq_work)
            elif self.name == "dramatiq":
                self.module = tasks.make_dramatiq(self.url)
            elif self.name == "celery":
                self.module = tasks.make_celery(self.url)[1]
            else:
                self.module = tasks.make_huey(self.url)[1]
        return self.module

    def _clean(self) -> None:
        self.client.flushdb()  # this peer's own database, checked empty at start

    # enqueueing, in this process
    def _enqueue_one(self) -> Callable[[float], Any]:
        task = self._make()
        if self.name == "rq":
            queue, func = task
            return lambda value: queue.enqueue(func, value)
        if self.name == "dramatiq":
            return task.send
        if self.name == "celery":
            return task.delay
        return task

    def single(self, n: int) -> float:
        push = self._enqueue_one()
        try:
            start = time.perf_counter()
            for _ in range(n):
                push(time.time())
            return _rate(n, time.perf_counter() - start)
        finally:
            self._clean()

    def bulk(self, n: int) -> float:
        values = [time.time()] * n
        task = self._make()
        try:
            if self.name == "rq":
                from rq import Queue

                queue, func = task
                start = time.perf_counter()
                queue.enqueue_many([Queue.prepare_data(func, (v,)) for v in values])
            elif self.name == "dramatiq":
                import dramatiq

                start = time.perf_counter()
                dramatiq.group(task.message(v) for v in values).run()
            elif self.name == "celery":
                from celery import group

                start = time.perf_counter()
                group(task.s(v) for v in values).apply_async()
            else:
                start = time.perf_counter()
                task.map([(v,) for v in values])
            return _rate(n, time.perf_counter() - start)
        finally:
            self._clean()

    # workers, in other processes
    def _worker(self, mode: str, out: str, n: int) -> _Proc:
        env = {"BENCH_PEER": self.name, "BENCH_URL": self.url, "BENCH_MODE": mode}
        env |= {"BENCH_OUT": out, "BENCH_N": str(n)}
        if self.name == "rq":
            args = [os.path.join(BIN, "rq"), "worker", "--url", self.url, "--quiet"]
            if mode == "drain":
                args += ["--worker-class", "rq.SimpleWorker", "--burst"]
            args.append("bench")
        elif self.name == "dramatiq":
            args = [os.path.join(BIN, "dramatiq"), "redis_peer_tasks"]
            args += ["--processes", "1", "--threads", "4"]
        elif self.name == "celery":
            args = [os.path.join(BIN, "celery"), "-A", "redis_peer_tasks", "worker"]
            args += ["--pool", "threads", "-c", "4", "--loglevel", "WARNING"]
        else:
            args = [os.path.join(BIN, "huey_consumer"), "redis_peer_tasks.huey"]
            args += ["-w", "4", "-k", "thread"]
        return _Proc(args, env)

    def drain(self, n: int) -> float:
        out = _tmpfile()
        push = self._enqueue_one()
        for _ in range(n):
            push(time.time())
        proc = self._worker("drain", out, n)
        try:
            return _rate(n, _drain_window(out, 600))
        finally:
            proc.stop()
            self._clean()

    def latency(self, count: int, spacing: float) -> list[float]:
        push = self._enqueue_one()
        out = _tmpfile()
        proc = self._worker("latency", out, 0)
        try:
            push(time.time())  # the first task tells that the worker is up
            _read_lines(out, 1, START_TIMEOUT)
            open(out, "w").close()
            time.sleep(0.5)
            _spaced(push, count, spacing)
            return _read_lines(out, count)
        finally:
            proc.stop()
            self._clean()


def _db_url(base: str, db: int) -> str:
    scheme, rest = base.split("://", 1)
    host = rest.split("/", 1)[0].split("?", 1)[0]
    return f"{scheme}://{host}/{db}"


# the run ------------------------------------------------------------------------------------
MEASURES = ("single", "bulk", "drain", "drain128", "p50", "p99")
LABELS = {
    "single": "enqueue, one at a time (tasks/s)",
    "bulk": "bulk enqueue (tasks/s)",
    "drain": "drain, 1 process x 4 (tasks/s)",
    "drain128": "same, taskpipe with claim_batch=128",
    "p50": "push->start p50, idle worker (ms)",
    "p99": "push->start p99 (ms)",
}
TARGETS = {
    "single": ">= 0.9x raw",
    "bulk": ">= 0.5x raw",
    "drain": ">= 0.4x raw, >= 5x best peer",
    "drain128": "reported",
    "p50": "<= 1.5 ms",
    "p99": "reported",
}


def _drain_count(peer: Any, opts: argparse.Namespace) -> int:
    return opts.rq_drain if peer.name == "rq" else opts.peer_drain


def run(opts: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    contenders: list[Any] = [Taskpipe(opts.url), Raw(opts.url), SameLua(opts.url)]
    dbs = [int(x) for x in opts.peer_dbs.split(",")]
    peers = [p for p in PEERS if not opts.only or p in opts.only.split(",")]
    contenders += [
        Peer(name, opts.url, db) for name, db in zip(PEERS, dbs, strict=True) if name in peers
    ]
    results: dict[str, dict[str, list[float]]] = {c.name: {} for c in contenders}
    for rep in range(opts.reps):
        # each rep starts with another contender, and each contender starts after a pause
        # (the peers' worker processes exit and Redis frees their keys meanwhile)
        shift = rep % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            time.sleep(SETTLE)
            is_peer = isinstance(c, Peer)
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("single", lambda c=c: c.single(opts.single)),
                ("bulk", lambda c=c, p=is_peer: c.bulk(opts.peer_bulk if p else opts.bulk)),
                (
                    "drain",
                    lambda c=c, p=is_peer: c.drain(_drain_count(c, opts) if p else opts.drain),
                ),
            ]
            if isinstance(c, Taskpipe):
                steps.append(("drain128", lambda c=c: c.drain(opts.drain, claim_batch=128)))
            if not isinstance(c, SameLua):
                steps.append(("latency", lambda c=c: c.latency(opts.pushes, opts.spacing)))
            for measure, fn in steps:
                t0 = time.perf_counter()
                try:
                    value = fn()
                except Exception as exc:  # a peer that cannot do it: say so, go on
                    print(f"  {c.name} {measure}: failed: {exc!r}", file=sys.stderr, flush=True)
                    continue
                if measure == "latency":
                    results[c.name].setdefault("p50", []).append(_percentile(value, 50) * 1000)
                    results[c.name].setdefault("p99", []).append(_percentile(value, 99) * 1000)
                    shown = f"p50 {_percentile(value, 50) * 1000:.2f} ms"
                else:
                    results[c.name].setdefault(measure, []).append(value)
                    shown = f"{value:,.0f}/s"
                print(
                    f"  rep {rep + 1} {c.name:9} {measure:7} {shown:>14}  "
                    f"({time.perf_counter() - t0:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def table(results: dict[str, dict[str, list[float]]], reps: int) -> str:
    names = list(results)
    peers = [n for n in names if n in PEERS]
    med = {n: {m: statistics.median(v) for m, v in results[n].items()} for n in names}
    header = ["measure", *names, "vs raw", "vs best peer", "target"]
    rows = []
    for m in MEASURES:
        lower = m in ("p50", "p99")
        tp = med["taskpipe"].get(m)
        ref = "drain" if m == "drain128" else m  # the tuned taskpipe against the same rows
        raw = med["raw"].get(ref)
        peer_values = [med[p][ref] for p in peers if ref in med[p]]
        best = (min(peer_values) if lower else max(peer_values)) if peer_values else None

        def ratio(other: float | None, tp: float | None = tp, lower: bool = lower) -> str:
            if other is None or not tp:
                return "—"
            return f"{(other / tp) if lower else (tp / other):.2f}x"

        cells = []
        for n in names:
            v = med[n].get(m)
            cells.append("—" if v is None else f"{v:.2f}" if lower else f"{v:,.0f}")
        rows.append([LABELS[m], *cells, ratio(raw), ratio(best), TARGETS[m]])
    return report.rst_table(header, rows)


def update_readme(text: str) -> None:
    """Replace the block between README.rst's redis-perf-table markers with ``text``."""
    report.update_readme("redis-perf-table", text)


def memory(url: str, n: int) -> None:
    """Bytes per waiting task and per finished record: push ``n`` no-op tasks (``INFO
    memory`` used_memory before and after: waiting tasks), drain them with
    ``keep_finished=n``, drop the replay tokens (they expire after 5 minutes anyway),
    then compare used_memory with its value before the pushes, and sum ``MEMORY USAGE
    key SAMPLES 0`` over every key of the prefix."""
    from taskpipe.redis import connect

    prefix = f"tp-mem-{uuid.uuid4().hex[:10]}"
    client = connect(f"{url}{'&' if '?' in url else '?'}prefix={prefix}")
    store = RedisStorage(client, queue="bench", keep_finished=n)
    RedisStorage.setup(store)
    info = redis.Redis.from_url(url)

    def drop_tokens() -> None:
        tokens = list(info.scan_iter(match=f"{prefix}:tok:*", count=1000))
        for i in range(0, len(tokens), 1000):
            info.unlink(*tokens[i : i + 1000])

    try:
        before = info.info("memory")["used_memory"]
        for start in range(0, n, 100_000):
            store.push_bulk([time.time()] * min(100_000, n - start))
        waiting = info.info("memory")["used_memory"]
        print(f"{n:,} waiting tasks (push_bulk): {(waiting - before) / n:.0f} B/task")
        worker = WorkerBuilder("mem").backend(store).concurrency(4).build(lambda value: None)
        handled = worker.run_until_idle()
        assert handled == n, f"drained {handled} of {n}"
        assert store.stats()["done"] == n
        drop_tokens()
        time.sleep(1)  # let lazy frees settle
        after = info.info("memory")["used_memory"]
        total, keys, biggest = 0, 0, []
        pipe = info.pipeline(transaction=False)
        names: list[bytes] = []
        for key in info.scan_iter(match=f"{prefix}:*", count=1000):
            pipe.memory_usage(key, samples=0)
            names.append(key)
            if len(pipe) >= 1000:
                sizes = pipe.execute()
                biggest += [
                    (x or 0, k) for x, k in zip(sizes, names, strict=True) if (x or 0) > 1e6
                ]
                total += sum(x or 0 for x in sizes)
                keys += len(names)
                names = []
        sizes = pipe.execute()
        biggest += [(x or 0, k) for x, k in zip(sizes, names, strict=True) if (x or 0) > 1e6]
        total += sum(x or 0 for x in sizes)
        keys += len(names)
        print(f"{n:,} finished (Done) records, keep_finished={n:,}, {keys:,} keys")
        print(
            f"INFO memory used_memory after - before: {after - before:,} B = {(after - before) / n:.0f} B/record"
        )
        print(f"sum of MEMORY USAGE <key> SAMPLES 0:     {total:,} B = {total / n:.0f} B/record")
        for size, key in sorted(biggest, reverse=True):
            print(f"  {key.decode()}: {size:,} B = {size / n:.0f} B/record")
    finally:
        store.drop()
        store.close()
        info.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--peer-dbs", default="12,13,14,15", help="rq,dramatiq,celery,huey")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 rep, smaller counts")
    parser.add_argument("--single", type=int, default=10_000)
    parser.add_argument("--bulk", type=int, default=100_000)
    parser.add_argument("--peer-bulk", type=int, default=20_000)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--peer-drain", type=int, default=20_000)
    parser.add_argument("--rq-drain", type=int, default=2_000, help="RQ runs one job at a time")
    parser.add_argument("--pushes", type=int, default=200)
    parser.add_argument("--spacing", type=float, default=0.02)
    parser.add_argument("--only", default="", help="peers to run, comma-separated (default all)")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--memory", type=int, default=0, help="only measure memory at N records")
    opts = parser.parse_args()
    if opts.memory:
        memory(opts.url, opts.memory)
        return
    if opts.quick:
        opts.reps = 1
        opts.single, opts.peer_bulk, opts.peer_drain, opts.pushes = 1000, 5000, 5000, 60
        opts.rq_drain = 500
    started = time.perf_counter()
    results = run(opts)
    text = table(results, opts.reps)
    print(text)
    print(
        f"\n{opts.reps} rep(s), medians; {time.perf_counter() - started:.0f} s. "
        f"bulk: {opts.bulk:,} tasks for taskpipe, raw, same Lua; {opts.peer_bulk:,} for the peers. "
        f"drain: {opts.drain:,} tasks, {opts.peer_drain:,} for the peers but RQ {opts.rq_drain:,} "
        "(SimpleWorker, one job at a time; its default worker forks per job)."
    )
    if opts.update_readme:
        update_readme(text)


if __name__ == "__main__":
    main()
