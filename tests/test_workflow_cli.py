"""``taskpipe runs`` and ``taskpipe run RUN_ID``."""

from __future__ import annotations

import json

from click.testing import CliRunner

from taskpipe import RetryPolicy, WorkerBuilder
from taskpipe.cli import cli
from taskpipe.sqlite import SqliteStorage
from taskpipe.workflow import Workflow


def double(x: int) -> int:
    return x * 2


def explode(x: int) -> int:
    raise RuntimeError(f"boom at {x}")


def _runs(db, db_path):
    good = Workflow("cli-good").and_then(double).and_then(double)
    bad = Workflow("cli-bad").and_then(double).and_then(explode)
    good_store, bad_store = SqliteStorage(db, queue="good"), SqliteStorage(db, queue="bad")
    good_id = good_store.push_start(5)
    bad_id = bad_store.push_start(1, flow=bad)
    WorkerBuilder("g").backend(good_store).build(good).run_until_idle()
    WorkerBuilder("b").backend(bad_store).retry(RetryPolicy.retries(0)).build(bad).run_until_idle()
    return good_id, bad_id


def test_runs_lists_runs_newest_first_with_their_state(db, db_path):
    good_id, bad_id = _runs(db, db_path)
    result = CliRunner().invoke(cli, ["--db", db_path, "runs"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["RUN", "ID", "WORKFLOW"]
    assert bad_id in lines[1] and "failed" in lines[1] and "boom at 2" in lines[1]
    assert good_id in lines[2] and "done" in lines[2] and "20" in lines[2]
    only = CliRunner().invoke(cli, ["runs", "--state", "done", "--json", "--db", db_path])
    assert only.exit_code == 0, only.output
    [found] = json.loads(only.output)
    assert (found["run_id"], found["workflow"], found["result"]) == (good_id, "cli-good", 20)
    assert CliRunner().invoke(cli, ["--db", db_path, "runs", "-w", "nope"]).output == "no runs\n"


def test_run_shows_each_step(db, db_path):
    _, bad_id = _runs(db, db_path)
    result = CliRunner().invoke(cli, ["--db", db_path, "run", bad_id])
    assert result.exit_code == 0, result.output
    assert f"run {bad_id}" in result.output and "failed" in result.output
    assert "step 1 (explode) failed: RuntimeError: boom at 2" in result.output
    assert "double" in result.output and "explode" in result.output
    as_json = json.loads(CliRunner().invoke(cli, ["--db", db_path, "run", bad_id, "--json"]).output)
    assert as_json["failed_step"] == "1"
    assert [s["state"] for s in as_json["steps"]] == ["done", "dead"]


def test_an_unknown_run_is_bad_input(db, db_path):
    result = CliRunner().invoke(cli, ["--db", db_path, "run", "0" * 20])
    assert result.exit_code == 2
    assert "no workflow run" in result.output
    assert CliRunner().invoke(cli, ["--db", db_path, "run", "a:b"]).exit_code == 2
