"""taskpipe's Redis store against raw redis-py running the very same Lua scripts.

    python benchmarks/redis_bench.py [--url redis://127.0.0.1:6379/0] [--single 5000]
                                     [--bulk 100000] [--drain 20000] [--threads 4]

Three measures, each on a fresh key prefix that is deleted afterwards (nothing else
in the Redis is touched):

- single push: one ``push`` per call (taskpipe) / one insert script call per task (raw);
- push_bulk: one call with every task (one script call either way);
- drain: one process, ``--threads`` threads, no-op tasks: a taskpipe worker
  (``run_until_idle``) / raw threads looping claim-32 then one ack script per batch.

The raw side skips what taskpipe adds around the scripts (encoding, ``Row`` objects,
leases, the worker's pool, events and bookkeeping), so the ratio is taskpipe's
overhead over its own storage layer.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from typing import Any

import taskpipe
from taskpipe import WorkerBuilder
from taskpipe.redis import _ACK, _CLAIM, _INSERT, _PRELUDE, TOKEN_TTL, RedisStorage


def _store(url: str) -> RedisStorage:
    prefix = f"tp-bench-{uuid.uuid4().hex[:10]}"
    store = taskpipe.open_storage(
        f"{url}{'&' if '?' in url else '?'}prefix={prefix}", queue="bench"
    )
    type(store).setup(store)
    return store  # type: ignore[return-value]


def _scripts(store: RedisStorage) -> dict[str, Any]:
    client = store.client
    return {
        name: client.register_script(_PRELUDE + source % {"ttl": TOKEN_TTL})
        for name, source in (("insert", _INSERT), ("claim", _CLAIM), ("ack", _ACK))
    }


def _row(store: RedisStorage, i: int, now: float) -> list[Any]:
    return ["", store.queue, b"%d" % i, "0", "0", repr(now), "", "", "", repr(now)]


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds else float("inf")


# taskpipe --------------------------------------------------------------------------------
def tp_single(url: str, n: int) -> float:
    store = _store(url)
    try:
        start = time.perf_counter()
        for i in range(n):
            store.push(i)
        return _rate(n, time.perf_counter() - start)
    finally:
        store.drop()


def tp_bulk(url: str, n: int) -> float:
    store = _store(url)
    try:
        start = time.perf_counter()
        store.push_bulk(range(n))
        return _rate(n, time.perf_counter() - start)
    finally:
        store.drop()


def tp_drain(url: str, n: int, threads: int) -> float:
    store = _store(url)
    try:
        store.push_bulk(range(n))
        worker = WorkerBuilder("bench").backend(store).concurrency(threads).build(lambda item: None)
        start = time.perf_counter()
        handled = worker.run_until_idle()
        elapsed = time.perf_counter() - start
        assert handled == n, f"drained {handled} of {n}"
        return _rate(n, elapsed)
    finally:
        store.drop()


# raw redis-py, same scripts ------------------------------------------------------------------
def raw_single(url: str, n: int) -> float:
    store = _store(url)
    insert = _scripts(store)["insert"]
    client, prefix = store.client, store.prefix
    try:
        start = time.perf_counter()
        for i in range(n):
            now = time.time()
            insert(
                keys=[],
                args=[prefix, uuid.uuid4().hex, repr(now), 1, *_row(store, i, now)],
                client=client,
            )
        return _rate(n, time.perf_counter() - start)
    finally:
        store.drop()


def raw_bulk(url: str, n: int) -> float:
    store = _store(url)
    insert = _scripts(store)["insert"]
    try:
        now = time.time()
        args: list[Any] = [store.prefix, uuid.uuid4().hex, repr(now), n]
        for i in range(n):
            args.extend(_row(store, i, now))
        start = time.perf_counter()
        insert(keys=[], args=args, client=store.client)
        return _rate(n, time.perf_counter() - start)
    finally:
        store.drop()


def raw_drain(url: str, n: int, threads: int) -> float:
    store = _store(url)
    scripts = _scripts(store)
    claim, ack = scripts["claim"], scripts["ack"]
    client, prefix, queue = store.client, store.prefix, store.queue
    try:
        store.push_bulk(range(n))
        done = [0] * threads
        barrier = threading.Barrier(threads + 1)

        def loop(k: int) -> None:
            run = f"raw-{k}:{uuid.uuid4().hex[:8]}"
            barrier.wait()
            seq = 0
            while True:
                seq += 1
                lease = f"{run}:{seq}"
                now = repr(time.time())
                rows = claim(
                    keys=[], args=[prefix, lease, now, queue, 32, run, 0, 1000], client=client
                )
                if not rows:
                    return
                args: list[Any] = [prefix, uuid.uuid4().hex, repr(time.time()), 10_000, len(rows)]
                for row in rows:
                    args += [row[0], lease, "done", "0", "", "", now, 0]
                ack(keys=[], args=args, client=client)
                done[k] += len(rows)

        pool = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
        for thread in pool:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in pool:
            thread.join()
        elapsed = time.perf_counter() - start
        assert sum(done) == n, f"drained {sum(done)} of {n}"
        return _rate(n, elapsed)
    finally:
        store.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--bulk", type=int, default=100_000)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4)
    opts = parser.parse_args()
    rows = [
        (
            f"single push ({opts.single:,})",
            tp_single(opts.url, opts.single),
            raw_single(opts.url, opts.single),
        ),
        (f"push_bulk {opts.bulk:,}", tp_bulk(opts.url, opts.bulk), raw_bulk(opts.url, opts.bulk)),
        (
            f"drain {opts.drain:,}, 1 process x {opts.threads}",
            tp_drain(opts.url, opts.drain, opts.threads),
            raw_drain(opts.url, opts.drain, opts.threads),
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | taskpipe   | raw redis-py + same Lua | ratio |")
    print(f"|{'-' * (width + 2)}|------------|-------------------------|-------|")
    for name, tp, raw in rows:
        print(f"| {name:<{width}} | {tp:>8,.0f}/s | {raw:>21,.0f}/s | {tp / raw:.2f}x |")


if __name__ == "__main__":
    main()
