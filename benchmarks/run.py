"""taskpipe's benchmarks: taskpipe, the raw-sqlite3 ceiling and huey, side by side.

    python benchmarks/run.py [--quick] [--reps N] [--chart] [--only NAME]

Each scenario runs every contender several times, interleaved (taskpipe, ceiling,
peer, taskpipe, …), and keeps the median. Ratios are "times as fast" (> 1 means
taskpipe is faster; for latency, CPU and memory, lower raw values are better and the
ratio is inverted accordingly). Absolute numbers drift with machine load; ratios
measured in one run hold. Writes benchmarks/results/latest.json and, with --chart,
benchmarks/results/throughput.png. Needs the bench extra: pip install -e ".[bench]".
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ceiling  # noqa: E402
import contender_huey as huey  # noqa: E402
import contender_taskpipe as tp  # noqa: E402
import latency  # noqa: E402
import report  # noqa: E402
from common import QueueDepths, median, scratch_dir  # noqa: E402


@dataclass
class Scenario:
    """One row of the table: how to measure each contender, and the target."""

    name: str
    unit: str
    target: str
    taskpipe: Callable[[str], float]
    ceiling: Callable[[str], float] | None = None
    peer: Callable[[str], float] | None = None
    lower_is_better: bool = False
    results: dict[str, list[float]] = field(default_factory=dict)

    def measure(self, reps: int) -> None:
        contenders = [("taskpipe", self.taskpipe), ("ceiling", self.ceiling), ("peer", self.peer)]
        for _ in range(reps):
            for label, fn in contenders:
                if fn is None or (label == "peer" and not huey.available()):
                    continue
                with scratch_dir() as directory:
                    self.results.setdefault(label, []).append(fn(directory))

    def row(self) -> dict:
        values = {label: median(v) for label, v in self.results.items()}
        tp_value = values.get("taskpipe")

        def ratio(other: float | None) -> float | None:
            if other is None or tp_value is None or not other or not tp_value:
                return None
            return other / tp_value if self.lower_is_better else tp_value / other

        return {
            "scenario": self.name,
            "unit": self.unit,
            "taskpipe": tp_value,
            "ceiling": values.get("ceiling"),
            "peer": values.get("peer"),
            "vs_ceiling": ratio(values.get("ceiling")),
            "vs_peer": ratio(values.get("peer")),
            "target": self.target,
        }


def scenarios(quick: bool) -> list[Scenario]:
    """Every scenario, sized for --quick (under 2 min) or the full run (under 10)."""
    n_push = 5_000 if quick else 20_000
    n_drain = 20_000
    n_stream = 1_000_000
    claims = 500 if quick else 2_000
    done_rows = 1_000_000
    lat_count, lat_spacing = (30, 0.05) if quick else (100, 0.05)
    idle_seconds = 3.0 if quick else 10.0
    rows = [
        Scenario(
            "push, one per transaction",
            "tasks/s",
            "≥0.7× ceiling, ≥1.0× huey",
            lambda d: tp.push_single(d, n_push),
            lambda d: ceiling.push_single(d, n_push),
            lambda d: huey.push_single(d, n_push),
        ),
        Scenario(
            "push_bulk 100k",
            "tasks/s",
            "≥0.5× ceiling",
            lambda d: tp.push_bulk(d, 100_000),
            lambda d: ceiling.push_bulk(d, 100_000),
        ),
        Scenario(
            "push_stream 1M: peak RSS growth",
            "MB",
            "< 50 MB",
            lambda d: latency.push_stream_rss(d, n_stream),
            lower_is_better=True,
        ),
    ]
    for c in (1, 4, 8):
        rows.append(
            Scenario(
                f"drain 20k, concurrency {c}",
                "tasks/s",
                "≥0.6× ceiling, ≥2.5× huey" if c == 4 else "no drop as concurrency rises",
                lambda d, c=c: tp.drain(d, n_drain, c),
                lambda d, c=c: ceiling.drain(d, n_drain, c),
                lambda d, c=c: huey.drain(d, 5_000, c),
            )
        )
    for c in (8, 32):
        n = c * (50 if quick else 100)
        rows.append(
            Scenario(
                f"drain, 10 ms handlers, concurrency {c}",
                "tasks/s",
                "≥0.8× ideal (ceiling = ideal)",
                lambda d, c=c, n=n: tp.drain(d, n, c, handler=_sleep_10ms),
                lambda d, c=c: c / 0.010,
                lambda d, c=c, n=n: huey.drain(d, n, c, sleep=0.010),
            )
        )
    depths = _LazyDepths(done_rows)
    for pending in (10_000, 100_000, 1_000_000):
        rows.append(
            Scenario(
                f"claim 1 at {pending:,} pending (+{done_rows:,} done)",
                "µs/claim",
                "flat: 1M ≤ 1.5× 10k",
                lambda d, p=pending: tp.claim_cost(depths.at(p), claims),
                lambda d, p=pending: ceiling.claim_cost(depths.at(p), claims),
                lower_is_better=True,
            )
        )
    for where, tp_fn, peer_fn in (
        ("same process", latency.taskpipe_same_process, latency.huey_process),
        ("other process", latency.taskpipe_other_process, latency.huey_process),
    ):
        tp_runs = Replay(lambda d, f=tp_fn: f(d, lat_count, lat_spacing))
        peer_runs = Replay(lambda d, f=peer_fn: f(d, lat_count, lat_spacing))
        for pct, index in (("p50", 0), ("p99", 1)):
            rows.append(
                Scenario(
                    f"push→start {pct}, {where}",
                    "ms",
                    {"same process": "hooked p50 ≤ 1 ms", "other process": "hooked p50 ≤ 5 ms"}[
                        where
                    ]
                    if pct == "p50"
                    else "reported",
                    lambda d, r=tp_runs, i=index: latency.summary(r.get(d, i))[i],
                    peer=lambda d, r=peer_runs, i=index: latency.summary(r.get(d, i))[i],
                    lower_is_better=True,
                )
            )
    lag_runs = Replay(lambda d: latency.delayed_start_lag(d, lat_count // 2))
    for pct, index in (("p50", 0), ("p99", 1)):
        rows.append(
            Scenario(
                f"delayed task: start lag after due, {pct}",
                "ms",
                "p50 ≤ 5 ms (default strategy)" if pct == "p50" else "reported",
                lambda d, r=lag_runs, i=index: latency.summary(r.get(d, i))[i],
                lower_is_better=True,
            )
        )
    rows += [
        Scenario(
            "idle worker CPU",
            "% of a core",
            "< 2 %",
            lambda d: latency.idle_cpu(d, idle_seconds, "taskpipe"),
            peer=lambda d: latency.idle_cpu(d, idle_seconds, "huey"),
            lower_is_better=True,
        ),
    ]
    return rows


class Replay:
    """Measure once, read twice: the p99 row reuses the runs of the p50 row."""

    def __init__(self, measure: Callable[[str], list[float]]):
        self.measure = measure
        self.runs: list[list[float]] = []
        self.reads: dict[int, int] = {}

    def get(self, directory: str, reader: int) -> list[float]:
        """The reader's next run: measured now if no reader has needed it yet."""
        count = self.reads.get(reader, 0)
        if count >= len(self.runs):
            self.runs.append(self.measure(directory))
        self.reads[reader] = count + 1
        return self.runs[count]


class _LazyDepths:
    """Builds the shared queue-depth database on first use only (``--only`` may skip it)."""

    def __init__(self, done: int):
        self.done = done
        self.depths: QueueDepths | None = None

    def at(self, pending: int) -> str:
        if self.depths is None:
            self.depths = QueueDepths(self.done)
            atexit.register(self.depths.close)
        return self.depths.at(pending)


def _sleep_10ms(item: int) -> None:
    time.sleep(0.010)


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if digits else f"{value:.3g}"


def table(rows: list[dict]) -> str:
    """The results as an aligned text table (also valid reStructuredText)."""
    header = ["scenario", "unit", "taskpipe", "ceiling", "huey", "vs ceiling", "vs huey", "target"]
    body = [
        [
            r["scenario"],
            r["unit"],
            _fmt(r["taskpipe"]),
            _fmt(r["ceiling"]),
            _fmt(r["peer"]),
            _fmt(r["vs_ceiling"], 2) + ("×" if r["vs_ceiling"] else ""),
            _fmt(r["vs_peer"], 2) + ("×" if r["vs_peer"] else ""),
            r["target"],
        ]
        for r in rows
    ]
    return report.rst_table(header, body)


def derived(rows: list[dict]) -> list[dict]:
    """Rows computed from others: claim-cost flatness and drain scaling."""
    by_name = {r["scenario"]: r for r in rows}
    extra = []
    small = next((r for n, r in by_name.items() if n.startswith("claim 1 at 10,000")), None)
    large = next((r for n, r in by_name.items() if n.startswith("claim 1 at 1,000,000")), None)
    if small and large and small["taskpipe"]:
        extra.append(
            {
                "scenario": "claim cost 1M / 10k pending",
                "unit": "ratio",
                "taskpipe": large["taskpipe"] / small["taskpipe"],
                "ceiling": (large["ceiling"] / small["ceiling"]) if small.get("ceiling") else None,
                "peer": None,
                "vs_ceiling": None,
                "vs_peer": None,
                "target": "≤ 1.5",
            }
        )
    d1 = by_name.get("drain 20k, concurrency 1")
    d8 = by_name.get("drain 20k, concurrency 8")
    if d1 and d8 and d1["taskpipe"]:
        extra.append(
            {
                "scenario": "drain at 8 / drain at 1",
                "unit": "ratio",
                "taskpipe": d8["taskpipe"] / d1["taskpipe"],
                "ceiling": None,
                "peer": (d8["peer"] / d1["peer"]) if d1.get("peer") else None,
                "vs_ceiling": None,
                "vs_peer": None,
                "target": "≥ 1 (no drop)",
            }
        )
    return extra


def chart(rows: list[dict], path: str) -> None:
    """Draw throughput against concurrency and claim cost against queue depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    drains = [r for r in rows if r["scenario"].startswith("drain 20k")]
    xs = [int(r["scenario"].rsplit(" ", 1)[1]) for r in drains]
    for key, label in (
        ("taskpipe", "taskpipe"),
        ("ceiling", "raw sqlite3 ceiling"),
        ("peer", "huey"),
    ):
        if all(r.get(key) for r in drains):
            left.plot(xs, [r[key] for r in drains], marker="o", label=label)
    left.set(title="Drain 20k no-op tasks", xlabel="concurrency (threads)", ylabel="tasks/s")
    left.set_ylim(bottom=0)
    left.legend()
    claims = [r for r in rows if r["scenario"].startswith("claim 1 at")]
    depths = [int(r["scenario"].split(" at ")[1].split(" ")[0].replace(",", "")) for r in claims]
    for key, label in (("taskpipe", "taskpipe"), ("ceiling", "raw sqlite3 ceiling")):
        if all(r.get(key) for r in claims):
            right.plot(depths, [1e6 / r[key] for r in claims], marker="o", label=label)
    right.set(
        title="One-task claims vs queue depth (+1M done rows)",
        xlabel="pending tasks",
        ylabel="claims/s",
        xscale="log",
    )
    right.set_ylim(bottom=0)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def update_readme(text: str) -> None:
    """Replace the block between README.rst's perf-table markers with ``text``."""
    report.update_readme("perf-table", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, fewer repetitions (< 2 min)"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions per contender (default 3, quick 1)"
    )
    parser.add_argument(
        "--chart", action="store_true", help="also draw results/throughput.png (matplotlib)"
    )
    parser.add_argument(
        "--only", default=None, help="run only scenarios whose name contains this text"
    )
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="put the table into README.rst's Performance section",
    )
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    if not huey.available():
        print(
            "huey is not installed: the peer column stays empty (pip install -e '.[bench]')",
            file=sys.stderr,
        )
    started = time.perf_counter()
    selected = [s for s in scenarios(args.quick) if not args.only or args.only in s.name]
    rows = []
    for scenario in selected:
        t0 = time.perf_counter()
        scenario.measure(reps)
        rows.append(scenario.row())
        print(f"  {scenario.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    rows += derived(rows)
    print(table(rows))
    print(
        f"\n{'quick' if args.quick else 'full'} run, {reps} rep(s), {time.perf_counter() - started:.0f} s; "
        "ratios > 1 mean taskpipe is faster (or leaner)"
    )
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(HERE, "results", "latest.json")
    with open(out, "w") as fh:
        json.dump(
            [
                {
                    k: r[k]
                    for k in (
                        "scenario",
                        "unit",
                        "taskpipe",
                        "ceiling",
                        "peer",
                        "vs_ceiling",
                        "vs_peer",
                    )
                }
                for r in rows
            ],
            fh,
            indent=2,
        )
    print(f"wrote {out}")
    if args.update_readme:
        update_readme(table(rows))
    if args.chart:
        png = os.path.join(HERE, "results", "throughput.png")
        chart(rows, png)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
