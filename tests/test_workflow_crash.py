"""Workflows survive SIGKILL: between steps and in the middle of one.

A child process runs the worker and is SIGKILLed at a point it announces on its
stdout (the test blocks reading that line: no sleeps). A worker in the test process
then resumes: the dead run's task is recovered at its first heartbeat (same host, the
process is gone), and the run finishes with every step's side effect recorded once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import workflow_crash_flow as crash

import taskpipe
from taskpipe import Status, WorkerBuilder
from taskpipe.sqlite import SqliteStorage, connect

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

REPO = str(Path(taskpipe.__file__).resolve().parent.parent)
TESTS = str(Path(__file__).resolve().parent)

CHILD = """\
import sys
from taskpipe import WorkerBuilder
from taskpipe.sqlite import SqliteStorage, connect
import workflow_crash_flow as crash

db_path, stop_after = sys.argv[1], sys.argv[2]
storage = SqliteStorage(connect(db_path), queue="crash")
builder = WorkerBuilder("doomed").backend(storage)
if stop_after:
    builder = builder.on_event(crash.stop_after(stop_after, storage))
builder.build(crash.flow()).run()
"""


def _kill_when_stopped(tmp_path: Path, db_path: str, effects: Path, *, stop_in="", after=""):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([REPO, TESTS, os.environ.get("PYTHONPATH", "")]),
        WF_EFFECTS=str(effects),
        WF_STOP_IN=stop_in,
    )
    with open(tmp_path / "child.err", "wb") as err:
        child = subprocess.Popen(
            [sys.executable, str(script), db_path, after],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    try:
        line = child.stdout.readline()  # blocks until the child reaches its stop
        assert line == b"STOPPED\n", (line, (tmp_path / "child.err").read_text())
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()


def _resume_and_check(db_path: str, run_id: str, effects: Path, monkeypatch) -> None:
    monkeypatch.setenv("WF_EFFECTS", str(effects))
    monkeypatch.delenv("WF_STOP_IN", raising=False)
    db = connect(db_path)
    try:
        storage = SqliteStorage(db, queue="crash")
        WorkerBuilder("survivor").backend(storage).build(crash.flow()).run_until_idle()
        status = storage.workflow_status(run_id)
        assert (status.state, status.result) == ("done", 5)
        recorded = effects.read_text().splitlines()
        assert recorded == ["reserve 1", "charge 2", "pack 3", "ship 4"]
        for step in status.steps:  # one side effect per successful execution
            assert step.state is Status.DONE
            assert len(step.tasks) == 1
    finally:
        db.close()


@pytest.fixture
def started(tmp_path):
    db_path = str(tmp_path / "crash.db")
    db = connect(db_path)
    SqliteStorage.setup(db)
    run_id = SqliteStorage(db, queue="crash").push_start(1, flow=crash.flow())
    db.close()
    return db_path, run_id, tmp_path / "effects.txt"


def test_a_worker_killed_in_the_middle_of_a_step(started, tmp_path, monkeypatch):
    db_path, run_id, effects = started
    _kill_when_stopped(tmp_path, db_path, effects, stop_in="pack")
    assert effects.read_text().splitlines() == ["reserve 1", "charge 2"]
    _resume_and_check(db_path, run_id, effects, monkeypatch)


def test_a_worker_killed_between_two_steps(started, tmp_path, monkeypatch):
    db_path, run_id, effects = started
    _kill_when_stopped(tmp_path, db_path, effects, after="charge")
    assert effects.read_text().splitlines() == ["reserve 1", "charge 2"]
    db = connect(db_path)
    status = SqliteStorage(db, queue="crash").workflow_status(run_id)
    db.close()
    assert [s.state for s in status.steps] == [Status.DONE, Status.DONE, Status.PENDING]
    _resume_and_check(db_path, run_id, effects, monkeypatch)
