"""taskpipe on PostgreSQL beside the raw psycopg ceiling, Procrastinate and pgqueuer.

    pip install -e ".[postgres,bench]"
    TASKPIPE_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
        python benchmarks/postgres.py [--reps 3] [--quick] [--only TEXT] [--update-readme]

The URL defaults to TASKPIPE_TEST_POSTGRES_URL. The run creates one database
(``tp_bench_…``) and, inside it, a fresh schema for every taskpipe and raw
repetition; each peer repetition gets a fresh database of its own. All are dropped
at the end; nothing else is touched.

Scenarios (no-op tasks; workers are separate processes started by ``pg_child.py``):

- push, one per transaction; push_bulk of 100k (taskpipe's COPY; the peers' bulk
  APIs: Procrastinate's ``batch_defer``, pgqueuer's list ``enqueue``);
- drain of 20k tasks by 1 process × 4 (Procrastinate ``concurrency=4``, 2k tasks: it
  is ~100× slower; pgqueuer's default consumer, ``mode=drain``, async, no limit), and
  by 2 processes × 4 (taskpipe and raw);
- push→start on an idle worker in another process: the time from just before the
  push (``time.time()`` in the producer) to the handler's start (``time.time()`` in
  the worker), p50 and p99 over spaced pushes; taskpipe polls every 30 s, so only
  its NOTIFY can wake it in time; the peers run at their defaults;
- claim-32 and ack-32 latency against queue depth (10k, 100k, 1M pending, 0 or 1M
  done rows), custom and generic plans, and the indexes each plan walks
  (``pg_depth.py``).

The raw ceiling runs taskpipe's own statements through psycopg with nothing around
them: the insert with its NOTIFY; sequence + COPY for bulk; for the drain, the
PERFORMANCE.md design: the guarded CTE claim of 32, the batch run on a pool of 4,
then one ack statement (``ACK_DONE_MANY``) per batch; a LISTEN connection plus the
claim for push→start. taskpipe's worker writes finished tasks with its next claim
(``ack_and_claim``: one statement, one commit per claim), so it can pass that
ceiling. Each contender runs
``--reps`` times, interleaved (taskpipe, raw, procrastinate, pgqueuer, taskpipe, …);
medians are kept. Ratios are taskpipe ÷ raw and taskpipe ÷ best peer, as measured:
above 1 is better for rates, below 1 for latencies.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pg_depth  # noqa: E402
import report  # noqa: E402
from pg_contenders import (  # noqa: E402
    CONTENDERS,
    PgQueuer,
    Procrastinate,
    Raw,
    Taskpipe,
    fresh_database,
    fresh_schema,
)

TP, RAW, PROC, PGQ = Taskpipe.name, Raw.name, Procrastinate.name, PgQueuer.name
COLUMNS = (TP, RAW, PROC, PGQ)
PEERS = (PROC, PGQ)


@dataclass
class Row:
    """One line of the table."""

    name: str
    unit: str
    target: str = ""
    lower_is_better: bool = False
    values: dict[str, float] = field(default_factory=dict)
    check: Callable[[Row], bool | None] | None = None
    notes: dict[str, str] = field(default_factory=dict)  # e.g. a smaller task count

    def vs(self, other: str) -> float | None:
        tp, value = self.values.get(TP), self.values.get(other)
        return tp / value if tp and value else None

    def best_peer(self) -> str | None:
        peers = [p for p in PEERS if self.values.get(p)]
        if not peers:
            return None
        pick = min if self.lower_is_better else max
        return pick(peers, key=lambda p: self.values[p])


# Places and processes ---------------------------------------------------------------------
def place(contender, bench_url: str, base: str) -> AbstractContextManager[str]:
    """Where one repetition of ``contender`` works: a fresh schema in the bench
    database, or a fresh database for the peers."""
    return fresh_database(base) if contender.own_database else fresh_schema(bench_url)


class Child:
    """A ``pg_child.py`` process; its first line of output is "ready"."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "pg_child.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"pg_child.py {args[0]} {args[1]} did not start: {line!r}")

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def read(self) -> str:
        return self.proc.stdout.readline().strip()  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# Scenarios ---------------------------------------------------------------------------------
def run_push(contender, url: str, n: int, bulk: bool) -> float:
    contender.setup(url)
    return (contender.push_bulk if bulk else contender.push_single)(url, n)


def run_drain(contender, url: str, n: int, processes: int) -> float:
    """Fill ``n`` tasks, start the worker processes, send them "go" together; the rate
    is ``n`` over the time until the last has finished."""
    contender.setup(url)
    contender.fill(url, n)
    children = [Child("drain", contender.name, url) for _ in range(processes)]
    try:
        start = time.perf_counter()
        for child in children:
            child.send("go")
        handled = sum(int(child.read() or 0) for child in children)
        elapsed = time.perf_counter() - start
    finally:
        for child in children:
            child.stop()
    if handled != n:
        raise RuntimeError(f"{contender.name}: {processes} process(es) handled {handled} of {n}")
    return n / elapsed


def run_latency(contender, url: str, count: int, spacing: float) -> list[float]:
    """Seconds from just before each push to its handler's start, on an idle worker
    in another process."""
    contender.setup(url)
    fd, out = tempfile.mkstemp(prefix="tp-bench-latency-")
    os.close(fd)
    child = Child("listen", contender.name, url, out)
    try:
        time.sleep(1.0)  # the worker settles into its idle wait (and LISTENs)
        with contender.producer(url) as push:
            for _ in range(3):  # warm-up: the producer's connection and statements
                push(-1.0)
                time.sleep(0.1)
            for _ in range(count):
                time.sleep(spacing * random.uniform(0.6, 1.4))
                push(time.time())
        deadline = time.time() + 30
        values: list[float] = []
        while time.time() < deadline:
            with open(out) as fh:
                values = [float(x) for x in fh.read().split()]
            if len(values) >= count:
                break
            time.sleep(0.05)
    finally:
        child.stop()
        os.unlink(out)
    if len(values) < count:
        raise RuntimeError(f"{contender.name}: {len(values)} of {count} pushes started")
    return values


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def measure(
    base: str, bench_url: str, reps: int, quick: bool, only: str | None, log
) -> tuple[list[Row], list[str]]:
    n_single, n_bulk, n_drain, n_proc_drain = (
        (300, 20_000, 5_000, 500) if quick else (1_000, 100_000, 20_000, 2_000)
    )
    lat_count, lat_spacing = (50, 0.04) if quick else (200, 0.04)
    rows: list[Row] = []

    def wanted(name: str) -> bool:
        return not only or only in name

    def interleave(
        row: Row, fn: Callable[[object, str], float], contenders: tuple[str, ...] = COLUMNS
    ) -> None:
        if not wanted(row.name):
            return
        started = time.perf_counter()
        results: dict[str, list[float]] = {}
        for _ in range(reps):
            for name in contenders:
                contender = CONTENDERS[name]
                with place(contender, bench_url, base) as url:
                    results.setdefault(name, []).append(fn(contender, url))
        row.values = {name: statistics.median(v) for name, v in results.items()}
        rows.append(row)
        log(f"  {row.name}: {time.perf_counter() - started:.0f} s")

    interleave(
        Row(
            f"push, one per transaction ({n_single:,})",
            "rows/s",
            "≥ 0.8× raw",
            check=lambda r: _ge(r.vs(RAW), 0.8),
        ),
        lambda c, url: run_push(c, url, n_single, bulk=False),
    )
    interleave(
        Row(
            f"push_bulk {n_bulk:,}",
            "rows/s",
            "≥ 0.5× raw (COPY)",
            check=lambda r: _ge(r.vs(RAW), 0.5),
        ),
        lambda c, url: run_push(c, url, n_bulk, bulk=True),
    )
    one = Row(
        f"drain {n_drain:,}, 1 process × 4",
        "jobs/s",
        "≥ 0.6× raw, ≥ 4× pgqueuer",
        check=lambda r: _all(_ge(r.vs(RAW), 0.6), _ge(r.vs(PGQ), 4)),
        notes={PROC: f"{n_proc_drain:,} tasks"},
    )
    interleave(
        one,
        lambda c, url: run_drain(c, url, n_proc_drain if c is Procrastinate else n_drain, 1),
    )
    interleave(
        Row(
            f"drain {n_drain:,}, 2 processes × 4",
            "jobs/s",
            "≥ 1 process",
            check=lambda r: _ge(r.values.get(TP), one.values.get(TP)),
        ),
        lambda c, url: run_drain(c, url, n_drain, 2),
        (TP, RAW),
    )
    latency_runs: dict[str, list[list[float]]] = {}

    def latency(c, url: str) -> float:
        values = run_latency(c, url, lat_count, lat_spacing)
        latency_runs.setdefault(c.name, []).append(values)
        return percentile(values, 50) * 1000

    p50 = Row(
        "push→start p50, idle worker, other process",
        "ms",
        "≤ 1.3× raw",
        lower_is_better=True,
        check=lambda r: _le(r.vs(RAW), 1.3),
    )
    interleave(p50, latency)
    if latency_runs:
        rows.append(
            Row(
                "push→start p99, idle worker, other process",
                "ms",
                "reported",
                lower_is_better=True,
                values={
                    name: statistics.median(percentile(v, 99) * 1000 for v in runs)
                    for name, runs in latency_runs.items()
                },
            )
        )
    plan_lines: list[str] = []
    if wanted("claim") or wanted("ack"):
        started = time.perf_counter()
        sizes = (10_000, 100_000, 1_000_000)
        done = 1_000_000
        iterations = 30 if quick else 50
        results, plan_lines = pg_depth.measure(bench_url, reps, iterations, sizes, done, log)
        rows += depth_rows(results, sizes, done)
        log(f"  claim and ack against depth: {time.perf_counter() - started:.0f} s")
    return rows, plan_lines


def depth_rows(results: dict, sizes: tuple[int, ...], done: int) -> list[Row]:
    """The depth section's rows: claim-32 by depth, ack-32 with 0 and ``done`` done
    rows, each in the custom and the generic plan, and the flatness ratios."""

    def values(what: str, plan: str, names=(("taskpipe", TP), ("raw", RAW))) -> dict:
        return {
            column: statistics.median(results[(what, key, plan)])
            for key, column in names
            if (what, key, plan) in results
        }

    rows: list[Row] = []
    small, large = f"{sizes[0]:,} pending", f"{sizes[-1]:,} pending"
    for plan in pg_depth.PLANS:
        for size in sizes:
            rows.append(
                Row(
                    f"claim 32 at {size:,} pending (+{done // 1000:,}k done), {plan} plan",
                    "µs",
                    "flat",
                    lower_is_better=True,
                    values=values(f"claim {size:,} pending", plan),
                )
            )
        a, b = values(f"claim {large}", plan), values(f"claim {small}", plan)
        rows.append(
            Row(
                f"claim cost {sizes[-1] // 1000:,}k / {sizes[0] // 1000:,}k pending, {plan} plan",
                "ratio",
                "≤ 1.5",
                lower_is_better=True,
                values={k: a[k] / b[k] for k in a if b.get(k)},
                check=lambda r: _le(r.values.get(TP), 1.5),
            )
        )
    for plan in pg_depth.PLANS:
        zero, full = values("ack 0 done", plan), values(f"ack {small}", plan)
        rows.append(Row(f"ack 32, 0 done rows, {plan} plan", "µs", "", True, zero))
        rows.append(Row(f"ack 32, {done // 1000:,}k done rows, {plan} plan", "µs", "", True, full))
        rows.append(
            Row(
                f"ack cost {done // 1000:,}k / 0 done rows, {plan} plan",
                "ratio",
                "≤ 1.5",
                lower_is_better=True,
                values={k: full[k] / zero[k] for k in full if zero.get(k)},
                check=lambda r: _le(r.values.get(TP), 1.5),
            )
        )
        trap = values(f"ack {small}", plan, (("trap", RAW),))
        trap0 = values("ack 0 done", plan, (("trap", RAW),))
        if trap and trap0:
            rows.append(
                Row(
                    f"  the trap: raw ack fenced with a plain status = 'running', "
                    f"{done // 1000:,}k / 0 done, {plan} plan",
                    "ratio",
                    "(what the fence avoids)",
                    True,
                    {RAW: trap[RAW] / trap0[RAW]},
                )
            )
    return rows


def _ge(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a >= b


def _le(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a <= b


def _all(*checks: bool | None) -> bool | None:
    return None if any(c is None for c in checks) else all(checks)


# Output --------------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table(rows: list[Row]) -> str:
    """The results as an aligned text table (also a reStructuredText simple table)."""
    header = ["scenario", "unit", *COLUMNS, "÷ raw", "÷ best peer", "target", "met"]
    body = []
    for r in rows:
        best = r.best_peer()
        cells = [r.name, r.unit]
        for column in COLUMNS:
            cell = _fmt(r.values.get(column))
            if column in r.notes and column in r.values:
                cell += f" ({r.notes[column]})"
            cells.append(cell)
        vs_raw = r.vs(RAW)
        vs_peer = r.vs(best) if best else None
        cells += [
            f"{vs_raw:.2f}×" if vs_raw and r.unit != "ratio" else "—",
            f"{vs_peer:.2f}× {best}" if vs_peer and best else "—",
            r.target or "—",
            {True: "yes", False: "NO", None: "—"}[r.check(r) if r.check else None],
        ]
        body.append(cells)
    return report.rst_table(header, body)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import psycopg

    parts = []
    for package in ("taskpipe", "psycopg", "procrastinate", "pgqueuer", "asyncpg"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} (not installed)")
    with psycopg.connect(_base_url(), autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    return f"PostgreSQL {server.split()[0]}; " + ", ".join(parts)


README_INTRO = """\
On PostgreSQL 15 (stock settings: fsync and synchronous_commit on; same machine),
taskpipe runs beside raw psycopg 3 running taskpipe's own statements with nothing
around them (the ceiling: claim 32, run, one ack per 32), Procrastinate and pgqueuer
at their defaults, workers in their own processes. Made by
``python benchmarks/postgres.py --update-readme`` (3 runs of each, interleaved,
medians); ``÷ raw`` and ``÷ best peer`` are taskpipe's figure divided by theirs
(above 1 is better for rates, below 1 for times). taskpipe's worker writes finished
tasks with its next claim (one statement, one commit), so it can pass the ceiling.
"""


def update_readme(text: str) -> None:
    """Replace the block between README.rst's pg-perf-table markers with ``text``."""
    report.update_readme("pg-perf-table", text, README_INTRO)


def _base_url() -> str:
    return os.environ.get("TASKPIPE_BENCH_POSTGRES_URL") or os.environ.get(
        "TASKPIPE_TEST_POSTGRES_URL", ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--only", default=None, help="only scenarios whose name has this text")
    parser.add_argument(
        "--update-readme", action="store_true", help="write the table into README.rst"
    )
    args = parser.parse_args(argv)
    base = _base_url()
    if not base:
        print("set TASKPIPE_BENCH_POSTGRES_URL (or TASKPIPE_TEST_POSTGRES_URL)", file=sys.stderr)
        return 2
    reps = args.reps or (1 if args.quick else 3)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    with fresh_database(base) as bench_url:
        rows, plan_lines = measure(base, bench_url, reps, args.quick, args.only, log)
    text = "\n".join(
        [
            table(rows),
            "",
            *(f"Indexes walked, {line}" for line in plan_lines),
            f"{'quick' if args.quick else 'full'} run, medians of {reps} interleaved "
            f"repetition(s), {time.perf_counter() - started:.0f} s; {versions()}",
        ]
    )
    print(text)
    if args.update_readme:
        update_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
