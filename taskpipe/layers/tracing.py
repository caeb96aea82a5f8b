"""``tracing()``: an OpenTelemetry span around each task (extra ``tracing``).

Each attempt runs inside a span named ``process <queue>`` (kind CONSUMER, as the
messaging conventions name it), current while the handler runs so that its own spans
nest under it. Attributes: ``taskpipe.task_id``, ``taskpipe.queue``,
``taskpipe.attempt`` and ``taskpipe.outcome`` (``done``, ``skipped``, ``failed``, or
``released`` for a task handed back unstarted). A failed attempt has status ERROR
and its exception recorded; the others, OK.

Spans go wherever the OpenTelemetry SDK set up in the process sends them; pass
``tracer`` to use another tracer than ``trace.get_tracer("taskpipe")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BuildError, NotStarted
from .chain import Handle, Layer

if TYPE_CHECKING:
    from ..context import WorkerContext
    from ..task import Task

__all__ = ["tracing"]


def tracing(tracer: Any = None) -> Layer:
    """Wrap each task in an OpenTelemetry span (extra ``tracing``)."""
    try:
        from opentelemetry import context, trace
    except ImportError as exc:
        raise BuildError('tracing needs OpenTelemetry: pip install "taskpipe[tracing]"') from exc
    from .. import __version__

    if tracer is None:
        tracer = trace.get_tracer("taskpipe", __version__)
    consumer = trace.SpanKind.CONSUMER
    ok, error = trace.Status(trace.StatusCode.OK), trace.StatusCode.ERROR
    attach, detach, in_context = context.attach, context.detach, trace.set_span_in_context

    def layer(call_next: Handle) -> Handle:
        def handle(task: Task[Any], ctx: WorkerContext) -> Any:
            # (start_span and attach by hand: a third cheaper than start_as_current_span;
            # each attribute costs the SDK ~2 µs, so there are four)
            queue = task.queue or ""
            span = tracer.start_span(
                f"process {queue}",
                kind=consumer,
                attributes={
                    "taskpipe.task_id": -1 if task.id is None else int(task.id),
                    "taskpipe.queue": queue,
                    "taskpipe.attempt": task.attempt,
                },
                record_exception=False,
                set_status_on_exception=False,
            )
            if not span.get_span_context().is_valid:  # a no-op tracer (no SDK set up)
                return call_next(task, ctx)
            token = attach(in_context(span))
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
            else:
                span.set_attribute("taskpipe.outcome", "skipped" if task.skipped else "done")
                span.set_status(ok)
                return result
            finally:
                detach(token)
                span.end()

        return handle

    return layer


def _describe(exc: BaseException) -> str:
    """``"ValueError: bad"``, even for an exception whose ``str()`` raises."""
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text}"
