"""The metrics layer: Prometheus counts, run times, lag and queue depth, and
``taskpipe worker --metrics-port``."""

from __future__ import annotations

import builtins
import importlib
import socket
import textwrap
from datetime import timedelta

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from prometheus_client import CollectorRegistry

from taskpipe import BuildError, RetryPolicy, Task, WorkerBuilder, memory
from taskpipe.cli import cli
from taskpipe.layers import metrics as metrics_layer
from taskpipe.sqlite import SqliteStorage, connect

# (``taskpipe.layers.metrics`` is the function; its module is reached by name)
metrics_module = importlib.import_module("taskpipe.layers.metrics")


@pytest.fixture
def registry():
    return CollectorRegistry()


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def handler(n: int) -> int:
    if n < 0:
        raise ValueError("negative")
    return n


def test_tasks_counted_by_outcome_and_timed(storage, registry):
    storage.push_bulk([1, 2, -1, 3, 4])
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .metrics(registry)
        .filter(lambda t: t.args != 4)
        .build(handler)
    )
    assert worker.run_until_idle() == 5
    counts = {
        outcome: value(registry, "taskpipe_tasks_total", queue="default", outcome=outcome)
        for outcome in ("done", "failed", "skipped", "released")
    }
    assert counts == {"done": 3.0, "failed": 1.0, "skipped": 1.0, "released": 0.0}
    # the attempts that ran are timed (the skipped one did not run)
    assert value(registry, "taskpipe_task_duration_seconds_count", queue="default") == 4.0


def test_lag_is_how_late_a_task_started(storage, registry):
    with freeze_time("2026-01-01 12:00:00") as frozen:
        storage.push(1)
        storage.push_task(Task(2, run_after=timedelta(seconds=10)))
        frozen.tick(timedelta(seconds=30))
        worker = WorkerBuilder("w").backend(storage).metrics(registry).build(handler)
        worker.run_until_idle()
    assert value(registry, "taskpipe_task_lag_seconds_count", queue="default") == 2.0
    assert value(registry, "taskpipe_task_lag_seconds_sum", queue="default") == 30.0 + 20.0
    assert value(registry, "taskpipe_task_lag_seconds_bucket", queue="default", le="10.0") == 0.0
    assert value(registry, "taskpipe_task_lag_seconds_bucket", queue="default", le="30.0") == 2.0


def test_lag_of_a_retry_counts_from_its_retry_time(registry):
    backend = memory.backend()
    policy = RetryPolicy.retries(1).backoff(base=5, jitter=0)
    with freeze_time("2026-01-01 12:00:00") as frozen:
        backend.push(-1)
        worker = WorkerBuilder("w").backend(backend).retry(policy).metrics(registry).build(handler)
        worker.run_until_idle()  # attempt 1 fails at once: due again in 5 s
        frozen.tick(timedelta(seconds=7))
        worker.run_until_idle()
    assert value(registry, "taskpipe_task_lag_seconds_sum", queue="default") == 0.0 + 2.0


def test_queue_depth_read_from_the_store_when_scraped(storage, registry, monkeypatch):
    calls = []
    real_stats = storage.stats
    monkeypatch.setattr(
        storage, "stats", lambda queue=None: calls.append(queue) or real_stats(queue)
    )
    storage.push_bulk([1, 2, 3])
    worker = WorkerBuilder("w").backend(storage).metrics(registry).build(handler)

    def depth(status):
        return value(registry, "taskpipe_queue_depth", queue="default", status=status)

    assert (depth("pending"), depth("running"), depth("failed")) == (3.0, 0.0, 0.0)
    worker.run_until_idle()
    assert depth("pending") == 3.0  # read again within DEPTH_REFRESH: the cached value
    assert calls == ["default"]
    monkeypatch.setattr(metrics_module, "DEPTH_REFRESH", 0.0)
    assert depth("pending") == 0.0
    assert calls == ["default", "default"]


def test_a_store_that_fails_leaves_its_queue_out_of_a_scrape(registry, storage, monkeypatch):
    def broken(queue=None):
        raise RuntimeError("gone")

    monkeypatch.setattr(storage, "stats", broken)
    WorkerBuilder("w").backend(storage).metrics(registry).build(handler)
    assert value(registry, "taskpipe_queue_depth", queue="default", status="pending") is None


def test_workers_share_a_registry(registry):
    first, second = memory.backend(), memory.backend(queue="other")
    first.push_bulk([1, 2])
    second.push(3)
    for backend in (first, second):
        WorkerBuilder("w").backend(backend).metrics(registry).build(handler).run_until_idle()
    assert value(registry, "taskpipe_tasks_total", queue="default", outcome="done") == 2.0
    assert value(registry, "taskpipe_tasks_total", queue="other", outcome="done") == 1.0


def test_without_prometheus_client_the_build_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_prometheus(name, *args, **kwargs):
        if name.startswith("prometheus_client"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    with pytest.raises(BuildError, match=r'pip install "taskpipe\[metrics\]"'):
        metrics_layer()


# The CLI ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cli_db(tmp_path, monkeypatch):
    monkeypatch.delenv("TASKPIPE_DB", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = str(tmp_path / "cli.db")
    database = connect(path)
    SqliteStorage.setup(database)
    yield path, SqliteStorage(database)
    database.close()


def test_worker_serves_metrics_on_the_port(cli_db, tmp_path):
    path, storage = cli_db
    port = free_port()
    (tmp_path / "scraping.py").write_text(
        textwrap.dedent(
            f"""
            import urllib.request

            def scrape(n):
                if n == 0:
                    return "first"
                with urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    return r.read().decode()
            """
        )
    )
    first, second = storage.push_bulk([0, 1])
    result = CliRunner().invoke(
        cli,
        ["worker", "scraping:scrape", "--until-idle", "--metrics-port", str(port), "--db", path],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    body = storage.fetch_by_id(second).result
    lines = dict(line.rsplit(" ", 1) for line in body.splitlines() if not line.startswith("#"))
    # the first task was counted by the time the second one scraped
    assert float(lines['taskpipe_tasks_total{outcome="done",queue="default"}']) >= 1.0
    assert 'taskpipe_queue_depth{queue="default",status="pending"}' in lines
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the server stopped with the worker


def test_worker_metrics_port_in_use_is_one_clear_error(cli_db, tmp_path):
    path, _ = cli_db
    (tmp_path / "noop.py").write_text("def noop(n):\n    return n\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["worker", "noop:noop", "--until-idle", "--metrics-port", str(port), "--db", path]
        )
    assert result.exit_code == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.output
