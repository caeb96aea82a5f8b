"""``taskpipe worker MODULE:router``: a Router's worker from the command line."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
from click.testing import CliRunner

from taskpipe import Status, Task
from taskpipe.cli import cli
from taskpipe.router import NAME_META
from taskpipe.sqlite import SqliteStorage, connect

APP = """
import os

from taskpipe import Router, open_storage

router = Router(open_storage(os.environ["ROUTER_TEST_DB"]))


@router.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@router.task(name="shout")
def shout(word: str) -> str:
    return word.upper()


@router.task(name="mail", queue="emails")
def mail(to: str) -> str:
    return "mailed " + to
"""


@pytest.fixture
def app(tmp_path, monkeypatch):
    """A module with a Router on a SQLite file in ``tmp_path``, imported here too."""
    name = f"router_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP))
    db_path = str(tmp_path / "app.db")
    db = connect(db_path)
    SqliteStorage.setup(db)
    db.close()
    monkeypatch.setenv("ROUTER_TEST_DB", db_path)
    monkeypatch.delenv("TASKPIPE_DB", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    module.router.storage.db.close()
    sys.modules.pop(name, None)


def taskpipe_(app, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "taskpipe", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_runs_a_router_in_a_real_process(app, tmp_path):
    storage = app.router.storage
    add_id, shout_id, mail_id = app.add.push(2, 3), app.shout.push("hey"), app.mail.push("ada")
    unknown = storage.push_task(Task({"x": 1}, meta={NAME_META: "gone"}))
    target = f"{app.__name__}:router"

    run = taskpipe_(app, "worker", target, "--until-idle")
    assert run.returncode == 0, run.stderr
    assert "handled 3 tasks" in run.stdout  # add, shout and the unknown one: queue "default"
    assert (
        f"task {unknown} dead: no task named 'gone' in this router (known: add, mail, shout)"
        in (run.stdout)
    )
    assert storage.fetch_by_id(add_id).result == 5
    assert storage.fetch_by_id(shout_id).result == "HEY"
    assert storage.fetch_by_id(unknown).status == Status.DEAD
    assert storage.fetch_by_id(mail_id).status == Status.PENDING  # another queue

    emails = taskpipe_(app, "worker", target, "--queue", "emails", "--until-idle")
    assert emails.returncode == 0, emails.stderr
    assert "handled 1 task" in emails.stdout
    assert storage.fetch_by_id(mail_id).result == "mailed ada"

    # --db names another database: the router's functions run the tasks found there.
    other_path = str(tmp_path / "other.db")
    other_db = connect(other_path)
    SqliteStorage.setup(other_db)
    other = SqliteStorage(other_db)
    other_id = other.push_task(Task({"a": 40, "b": 2}, meta={NAME_META: "add"}))
    run_other = taskpipe_(app, "worker", target, "--db", other_path, "--until-idle")
    assert run_other.returncode == 0, run_other.stderr
    assert other.fetch_by_id(other_id).result == 42
    other_db.close()


def test_worker_refuses_a_queue_the_router_does_not_use(app):
    result = CliRunner().invoke(
        cli, ["worker", f"{app.__name__}:router", "--queue", "reports", "--until-idle"]
    )
    assert result.exit_code == 2
    assert "no task of Router" in result.output
    assert "pushed to queue 'reports'" in result.output
