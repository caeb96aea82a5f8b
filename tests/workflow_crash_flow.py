"""The workflow the crash tests run, in the test process and in killed children.

Each step records its side effect (one line, ``<step> <input>``, appended to the file
named by ``WF_EFFECTS``) at its very end, so an execution killed before that records
nothing. A child started with ``WF_STOP_IN=<step>`` stops in that step, before its side
effect: it says so on stdout and blocks until it is killed.
"""

from __future__ import annotations

import os
import sys
import threading

from taskpipe.workflow import Workflow

STEPS = ("reserve", "charge", "pack", "ship")


def _record(step: str, value: int) -> None:
    fd = os.open(os.environ["WF_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{step} {value}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _stop_here() -> None:
    sys.stdout.write("STOPPED\n")
    sys.stdout.flush()
    threading.Event().wait()  # until SIGKILL


def _step(name: str):
    def step(value: int) -> int:
        if os.environ.get("WF_STOP_IN") == name:
            _stop_here()
        _record(name, value)
        return value + 1

    step.__name__ = name
    return step


def flow() -> Workflow:
    """Four steps, each adding one to its input."""
    workflow = Workflow("crash")
    for name in STEPS:
        workflow = workflow.and_then(_step(name))
    return workflow


def stop_after(step: str, store):
    """An ``on_event`` callback that stops the worker for good once the ack of a task of
    ``step`` is written (before the worker claims the next step's task)."""
    from taskpipe import events

    index = str(STEPS.index(step))

    def callback(ctx, event) -> None:
        if isinstance(event, events.Success):
            if store.fetch_by_id(event.task_id).meta.get("step") == index:
                _stop_here()

    return callback
