"""Processes: CPU-bound handlers (about 1 ms of pure Python each) drained by 2 processes.

    python benchmarks/processes_bench.py [--quick] [--tasks 5000] [--reps 1]
                                         [--loops N] [--redis-url URL] [--write]

Every contender drains the same N tasks, all queued before its workers start, with
the same handler (``processes_tasks.work``: ``--loops`` rounds of a pure-Python loop,
calibrated here to about 1 ms, then one line in a file), its workers started by their
usual command line:

- taskpipe, one process: ``taskpipe --db F worker processes_tasks:work -c 1`` (and -c 2);
- taskpipe, ``--processes 2`` (one thread each), on a SQLite file;
- huey's process workers: ``huey_consumer processes_tasks.huey -k process -w 2`` (``SqliteHuey``);
- Celery's prefork pool: ``celery -A processes_tasks worker --pool prefork -c 2``, on
  Redis (``--redis-url``, db 9 by default) under a fresh key prefix whose keys are
  deleted afterwards (nothing else is touched; no FLUSHDB).

A rate is N / (the last task's end - the first task's start) over all of a contender's
processes, so start-up is not counted. Beside it, the CPU time its processes used per
task (start-up included): on a busy machine the rates say little, this still does. Targets: ``--processes 2`` at least 1.7x the best
one-process rate on 2 cores, and ahead of huey and Celery. ``--quick``: 1,000 tasks.
With ``--write`` the row replaces its namesake in ``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
BIN = os.path.dirname(sys.executable)

import processes_tasks as tasks  # noqa: E402
from common import median, scratch_dir  # noqa: E402
from report import save_row  # noqa: E402

import taskpipe  # noqa: E402
from taskpipe.sqlite import SqliteStorage  # noqa: E402

SCENARIO = "processes: CPU-bound 1 ms handlers, --processes 2 vs one process (SQLite)"
DRAIN_TIMEOUT = 600.0


def calibrate(target: float = 0.001) -> int:
    """Loop rounds that take about ``target`` seconds here (the best of a few tries)."""
    probe = 20_000
    best = min(_time_burn(probe) for _ in range(15))
    return max(1000, round(probe * target / best))


def _time_burn(loops: int) -> float:
    start = time.perf_counter()
    tasks.burn(loops)
    return time.perf_counter() - start


class Contender:
    """One way to drain the tasks: ``enqueue`` them, then run ``command`` until done."""

    name = ""

    def available(self) -> str | None:
        """None when it can run, else why not."""
        return None

    def env(self, directory: str) -> dict[str, str]:
        return {}

    def enqueue(self, directory: str, n: int) -> None:
        raise NotImplementedError

    def command(self, directory: str) -> list[str]:
        raise NotImplementedError

    def clean(self) -> None:
        """Remove what the run left outside its scratch directory."""


class Taskpipe(Contender):
    def __init__(self, processes: int | None, threads: int):
        self.processes, self.threads = processes, threads
        if processes is None:
            self.name = f"taskpipe, 1 process x {threads} thread{'s' if threads > 1 else ''}"
        else:
            self.name = f"taskpipe, --processes {processes} (x {threads} thread)"

    def enqueue(self, directory: str, n: int) -> None:
        db = taskpipe.connect(os.path.join(directory, "tp.db"))
        SqliteStorage.setup(db)
        SqliteStorage(db).push_bulk(range(n))
        db.close()

    def command(self, directory: str) -> list[str]:
        args = [os.path.join(BIN, "taskpipe"), "--db", os.path.join(directory, "tp.db")]
        args += ["worker", "processes_tasks:work", "-c", str(self.threads), "--quiet"]
        if self.processes is not None:
            args += ["--processes", str(self.processes)]
        return args


class Huey(Contender):
    name = "huey SqliteHuey, -k process -w 2"

    def available(self) -> str | None:
        try:
            import huey  # noqa: F401
        except ImportError:
            return "huey is not installed (pip install -e '.[bench]')"
        return None

    def env(self, directory: str) -> dict[str, str]:
        return {"BENCH_HUEY_DB": os.path.join(directory, "huey.db")}

    def enqueue(self, directory: str, n: int) -> None:
        huey, work = tasks.make_huey(self.env(directory)["BENCH_HUEY_DB"])
        for i in range(n):
            work(i)
        huey.storage.close()

    def command(self, directory: str) -> list[str]:
        return [os.path.join(BIN, "huey_consumer"), "processes_tasks.huey"] + [
            "-k",
            "process",
            "-w",
            "2",
            "-q",
        ]


class Celery(Contender):
    name = "Celery prefork -c 2 (Redis)"

    def __init__(self, url: str):
        self.url = url
        self.prefix = f"tp-procs-bench-{uuid.uuid4().hex[:10]}:"

    def available(self) -> str | None:
        try:
            import celery  # noqa: F401
            import redis
        except ImportError:
            return "celery[redis] is not installed (pip install -e '.[bench]')"
        try:
            redis.Redis.from_url(self.url).ping()
        except redis.RedisError as exc:
            return f"Redis at {self.url} is not reachable: {exc}"
        return None

    def env(self, directory: str) -> dict[str, str]:
        return {"BENCH_CELERY_URL": self.url, "BENCH_CELERY_PREFIX": self.prefix}

    def enqueue(self, directory: str, n: int) -> None:
        from celery import group

        app, work = tasks.make_celery(self.url, self.prefix)
        for start in range(0, n, 1000):
            group(work.s(i) for i in range(start, min(n, start + 1000))).apply_async()
        app.close()

    def command(self, directory: str) -> list[str]:
        return [os.path.join(BIN, "celery"), "-A", "processes_tasks", "worker"] + [
            "--pool",
            "prefork",
            "-c",
            "2",
            "--loglevel",
            "WARNING",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]

    def clean(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.close()


def drain(contender: Contender, n: int, loops: int, peer: str) -> tuple[float, float]:
    """Tasks/s of ``contender`` draining ``n`` tasks queued beforehand, and the CPU
    seconds per task its processes used (start-up included: a figure that holds on a
    busy machine, where the rate does not)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with scratch_dir() as directory:
        out = os.path.join(directory, "out")
        os.mkdir(out)
        try:
            contender.enqueue(directory, n)
            env = {**os.environ, "PYTHONPATH": HERE, "BENCH_PEER": peer}
            env |= {"BENCH_OUT": out, "BENCH_LOOPS": str(loops), **contender.env(directory)}
            err_path = os.path.join(directory, "worker.err")
            with open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    contender.command(directory),
                    cwd=HERE,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,  # its signals are its own; the group is stopped
                )
            try:
                _wait_for(out, n, proc, err_path)
            finally:
                _stop(proc)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # of every reaped descendant
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            return n / _window(out), cpu / n
        finally:
            contender.clean()


def _recorded(out: str) -> int:
    return sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)) // tasks.LINE


def _wait_for(out: str, n: int, proc: subprocess.Popen[bytes], err_path: str) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while _recorded(out) < n:
        if proc.poll() is not None:
            with open(err_path, errors="replace") as f:
                err = f.read()
            raise SystemExit(f"the worker exited ({proc.returncode}) early:\n{err[-2000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"only {_recorded(out)} of {n} tasks done in {DRAIN_TIMEOUT}s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # any child left behind
    except ProcessLookupError:
        pass


def _window(out: str) -> float:
    starts, ends = [], []
    for name in os.listdir(out):
        with open(os.path.join(out, name)) as f:
            for line in f:
                start, end = line.split()
                starts.append(float(start))
                ends.append(float(end))
    return max(ends) - min(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 tasks")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per drain (5,000)")
    parser.add_argument("--reps", type=int, default=1, help="drains per contender (median)")
    parser.add_argument("--loops", type=int, default=None, help="loop rounds per task")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--write", action="store_true", help="update results/latest.json")
    options = parser.parse_args()
    n = options.tasks or (1000 if options.quick else 5000)
    loops = options.loops or calibrate()
    per_task = median([_time_burn(loops) for _ in range(20)])
    print(
        f"{n} tasks, {loops} loop rounds each (~{per_task * 1000:.2f} ms here), {os.cpu_count()} cores"
    )

    contenders: list[tuple[Contender, str]] = [
        (Taskpipe(None, 1), "taskpipe"),
        (Taskpipe(None, 2), "taskpipe"),
        (Taskpipe(2, 1), "taskpipe"),
        (Huey(), "huey"),
        (Celery(options.redis_url), "celery"),
    ]
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    for contender, _ in contenders:
        why = contender.available()
        if why:
            print(f"skipped {contender.name}: {why}")
    runnable = [(c, p) for c, p in contenders if c.available() is None]
    for _ in range(options.reps):  # interleaved, medians kept
        for contender, peer in runnable:
            rate, cpu = drain(contender, n, loops, peer)
            rates.setdefault(contender.name, []).append(rate)
            cpus.setdefault(contender.name, []).append(cpu)
    result = {name: median(values) for name, values in rates.items()}

    one = max(result[c.name] for c, _ in contenders[:2] if c.name in result)
    two = result[contenders[2][0].name]
    print(f"\n{'contender':44} {'tasks/s':>9} {'vs one process':>15} {'CPU ms/task':>12}")
    for name, rate in result.items():
        cpu_ms = median(cpus[name]) * 1000
        print(f"{name:44} {rate:9.1f} {rate / one:14.2f}x {cpu_ms:12.2f}")
    peers = {c.name: result[c.name] for c, p in contenders[3:] if c.name in result}
    print(f"\n--processes 2 vs the best one-process run: {two / one:.2f}x (target >= 1.7x)")
    for name, rate in peers.items():
        print(f"--processes 2 vs {name}: {two / rate:.2f}x (target > 1x)")

    best_peer = max(peers.values(), default=None)
    row: dict[str, Any] = {
        "scenario": SCENARIO,
        "unit": "tasks/s",
        "taskpipe": round(two, 1),
        "ceiling": None,
        "peer": round(best_peer, 1) if best_peer else None,
        "vs_ceiling": None,
        "vs_peer": round(two / best_peer, 3) if best_peer else None,
        "one_process": round(one, 1),
        "vs_one_process": round(two / one, 3),
        "target": ">= 1.7x one process on 2 cores, ahead of huey and Celery process pools",
    }
    if options.write:
        save_row(row)


if __name__ == "__main__":
    main()
