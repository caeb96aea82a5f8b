"""examples/django_app runs a task end to end: ``.enqueue()`` in one process,
``manage.py taskpipe worker --until-idle`` in another, ``get_result()`` in a third."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django", reason="Django is not installed (extra: django)")
try:
    import django.tasks  # noqa: F401
except ImportError:
    pytest.importorskip("django_tasks", reason="Django < 6.0 without the django-tasks backport")

APP = Path(__file__).resolve().parent.parent / "examples" / "django_app"


def manage(*args: str, db: str) -> str:
    """Run ``manage.py`` in the example project on the taskpipe database ``db``."""
    env = {**os.environ, "TASKPIPE_DB": db, "PYTHONPATH": str(APP)}
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=APP,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_task_runs_end_to_end(tmp_path):
    db = str(tmp_path / "jobs.db")
    enqueue = (
        "from django.core.management import call_command\n"
        "from shop.tasks import order_total, send_receipt\n"
        "call_command('taskpipe', 'setup')\n"
        "print(order_total.enqueue([10.0, 5.5], discount=0.1).id)\n"
        "print(send_receipt.enqueue('a@example.com', 13.95).id)\n"
    )
    setup, total_id, receipt_id = manage("shell", "-v", "0", "-c", enqueue, db=db).splitlines()
    assert setup == f"taskpipe tables are ready in {db}"

    assert "handled 1 task" in manage("taskpipe", "worker", "--until-idle", db=db)

    show = (
        "from django.core.management import call_command\n"
        "from shop.tasks import order_total, send_receipt\n"
        "call_command('taskpipe', 'worker', '--queue', 'emails', '--until-idle', '--quiet')\n"
        f"r = order_total.get_result({total_id!r}); print(r.status, r.return_value, r.attempts)\n"
        f"r = send_receipt.get_result({receipt_id!r}); print(r.status, r.task.priority)\n"
        "print(r.return_value)\n"
    )
    lines = manage("shell", "-v", "0", "-c", show, db=db).splitlines()
    assert lines == [
        "handled 1 task",
        "SUCCESSFUL 13.95 1",
        "SUCCESSFUL 10",
        "receipt for 13.95 sent to a@example.com",
    ]
