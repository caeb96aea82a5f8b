"""``examples/flask_app``: a view pushes, ``flask taskpipe worker`` (a real process) runs
the task inside the worker app's context."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flask")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flask_app"


def load_example() -> object:
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flask_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    flask_script = Path(sys.executable).with_name("flask")
    return subprocess.run(
        [str(flask_script), "--app", "app", "taskpipe", *args],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_pushed_greeting_is_run_by_the_flask_worker_in_its_app_context(tmp_path):
    db = str(tmp_path / "jobs.db")
    env = {"FLASK_TASKPIPE_DB": db, "FLASK_GREETING": "Bonjour"}
    made = flask_command("setup", env=env)
    assert made.returncode == 0, made.stderr

    example = load_example()
    app = example.create_app({"TASKPIPE_DB": db})  # type: ignore[attr-defined]
    response = app.test_client().post("/greet/Ada")
    assert response.status_code == 200
    task_id = response.json["task_id"]

    ran = flask_command("worker", "--until-idle", env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"task {task_id} done\nhandled 1 task\n"

    # The result came from the worker's app config (FLASK_GREETING), not the pusher's.
    with app.app_context():
        info = example.tp.storage.fetch_by_id(task_id)  # type: ignore[attr-defined]
    assert (info.status.value, info.result) == ("done", "Bonjour, Ada!")
