"""The tracing layer: one OpenTelemetry span per attempt, with its outcome."""

from __future__ import annotations

import builtins

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskpipe import BuildError, RetryPolicy, WorkerBuilder, memory
from taskpipe.layers import tracing


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test")


def handler(n: int) -> int:
    if n < 0:
        raise ValueError(f"negative: {n}")
    return n


def spans_by_id(exporter):
    return {span.attributes["taskpipe.task_id"]: span for span in exporter.get_finished_spans()}


def test_a_span_per_task_with_id_queue_attempt_and_outcome(storage, tracer, exporter):
    ok, bad = storage.push_bulk([1, -1])
    worker = (
        WorkerBuilder("w")
        .backend(storage)
        .retry(RetryPolicy.retries(2))
        .tracing(tracer)
        .build(handler)
    )
    worker.run_until_idle()
    spans = spans_by_id(exporter)
    assert set(spans) == {ok, bad}
    done, failed = spans[ok], spans[bad]
    assert done.name == "process default" and done.kind is trace.SpanKind.CONSUMER
    assert {k: done.attributes[k] for k in ("taskpipe.queue", "taskpipe.attempt")} == {
        "taskpipe.queue": "default",
        "taskpipe.attempt": 1,
    }
    assert done.attributes["taskpipe.outcome"] == "done"
    assert done.status.status_code is trace.StatusCode.OK
    assert failed.attributes["taskpipe.outcome"] == "failed"
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert failed.status.description == "ValueError: negative: -1"
    [exception] = failed.events
    assert exception.name == "exception"
    assert exception.attributes["exception.type"] == "ValueError"


def test_the_span_is_current_while_the_handler_runs(storage, tracer, exporter):
    inner = []

    def traced(n: int) -> None:
        with tracer.start_as_current_span("inside") as span:
            inner.append(span)

    storage.push(1)
    WorkerBuilder("w").backend(storage).tracing(tracer).build(traced).run_until_idle()
    outer = next(s for s in exporter.get_finished_spans() if s.name == "process default")
    assert inner[0].parent.span_id == outer.context.span_id


def test_a_skipped_task_has_its_own_outcome(tracer, exporter):
    backend = memory.backend()
    backend.push(1)
    worker = (
        WorkerBuilder("w").backend(backend).tracing(tracer).filter(lambda t: False).build(handler)
    )
    worker.run_until_idle()
    [span] = exporter.get_finished_spans()
    assert span.attributes["taskpipe.outcome"] == "skipped"


def test_the_attempt_is_the_tasks(storage, tracer, exporter):
    with_retries = RetryPolicy.retries(1).backoff(base=0, jitter=0)
    task_id = storage.push(-5)
    worker = WorkerBuilder("w").backend(storage).retry(with_retries).tracing(tracer).build(handler)
    worker.run_until_idle()
    attempts = [
        s.attributes["taskpipe.attempt"]
        for s in exporter.get_finished_spans()
        if s.attributes["taskpipe.task_id"] == task_id
    ]
    assert attempts == [1, 2]


def test_without_opentelemetry_the_build_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_otel(name, *args, **kwargs):
        if name.startswith("opentelemetry"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    with pytest.raises(BuildError, match=r'pip install "taskpipe\[tracing\]"'):
        tracing()


def test_with_no_sdk_set_up_tasks_run_as_usual(storage):
    task_id = storage.push(4)
    tracer = trace.NoOpTracerProvider().get_tracer("none")
    WorkerBuilder("w").backend(storage).tracing(tracer).build(handler).run_until_idle()
    assert storage.fetch_by_id(task_id).result == 4
