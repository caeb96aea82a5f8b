"""``tracing()``: an OpenTelemetry span around each task (extra ``tracing``).

Each attempt runs inside a span named ``process <queue>`` (kind CONSUMER, the
messaging conventions), current while the handler runs so that its own spans nest
under it. Attributes: ``taskpipe.task_id``, ``taskpipe.queue``, ``taskpipe.attempt``
and ``taskpipe.outcome`` (``done``, ``skipped``, ``failed``, or ``released`` for a
task handed back unstarted), with ``messaging.system`` = ``taskpipe``. A failed
attempt has status ERROR and its exception recorded; the others, OK.

Spans go wherever the OpenTelemetry SDK set up in the process sends them; pass
``tracer`` to use another tracer than ``trace.get_tracer("taskpipe")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BuildError
from .chain import Handle, Layer, NotStarted

if TYPE_CHECKING:
    from ..context import WorkerContext
    from ..task import Task

__all__ = ["tracing"]


def tracing(tracer: Any = None) -> Layer:
    """Wrap each task in an OpenTelemetry span (extra ``tracing``)."""
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise BuildError('tracing needs OpenTelemetry: pip install "taskpipe[tracing]"') from exc
    from .. import __version__

    if tracer is None:
        tracer = trace.get_tracer("taskpipe", __version__)
    consumer, ok, error = trace.SpanKind.CONSUMER, trace.StatusCode.OK, trace.StatusCode.ERROR

    def layer(call_next: Handle) -> Handle:
        def handle(task: Task[Any], ctx: WorkerContext) -> Any:
            queue = task.queue or ""
            attributes = {
                "messaging.system": "taskpipe",
                "messaging.operation.type": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": str(task.id),
                "taskpipe.task_id": int(task.id) if task.id is not None else -1,
                "taskpipe.queue": queue,
                "taskpipe.attempt": task.attempt,
            }
            with tracer.start_as_current_span(
                f"process {queue}",
                kind=consumer,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    result = call_next(task, ctx)
                except NotStarted:
                    span.set_attribute("taskpipe.outcome", "released")
                    raise
                except BaseException as exc:
                    span.set_attribute("taskpipe.outcome", "failed")
                    span.record_exception(exc)
                    span.set_status(trace.Status(error, _describe(exc)))
                    raise
                span.set_attribute("taskpipe.outcome", "skipped" if task.skipped else "done")
                span.set_status(trace.Status(ok))
                return result

        return handle

    return layer


def _describe(exc: BaseException) -> str:
    """``"ValueError: bad"``, even for an exception whose ``str()`` raises."""
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text}"
