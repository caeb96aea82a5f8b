"""Durable workflows: ``Workflow`` (steps in sequence) and ``DagFlow`` (a DAG).

Each step or node execution is a task in the store; the task that follows it is
written in the same transaction as its ack, so a crash never loses or repeats a
transition, and a DAG join runs exactly once, when its last input commits::

    flow = Workflow("order-fulfilment").and_then(charge).delay_for(timedelta(seconds=1))
    run_id = storage.push_start(order)                   # or storage.start_fan_out([...])
    WorkerBuilder("fulfilment").backend(storage).build(flow).run()
    storage.workflow_status(run_id)                      # the run and each step
    storage.list_runs(state="failed")

A worker built on a flow runs that flow's tasks only: give each flow a queue of its
own. Steps are plain functions with taskpipe's injection (``WorkerContext``,
``TaskId``, ``Attempt``, ``Data[T]``, and ``Iteration`` in a ``repeat_until`` step);
a failing step retries under the worker's ``RetryPolicy`` (or its ``max_attempts``),
and a Dead step fails the run: later steps never run.
"""

from ..errors import RunNotFound, WorkflowError
from ..injection import Iteration
from .dag import DagFlow, Node
from .runs import RunStatus, StepStatus, list_runs, push_start, start_fan_out, workflow_status
from .sequential import Workflow

__all__ = [
    "DagFlow",
    "Iteration",
    "Node",
    "RunNotFound",
    "RunStatus",
    "StepStatus",
    "Workflow",
    "WorkflowError",
    "list_runs",
    "push_start",
    "start_fan_out",
    "workflow_status",
]
