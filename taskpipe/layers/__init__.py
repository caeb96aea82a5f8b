"""Policies and middleware around a handler.

``RetryPolicy`` decides how many attempts a task gets (durably, in the store).
A *layer* wraps the call of the handler: ``layer(call_next)`` returns a
``handle(task, ctx)`` that returns the result or raises, usually by calling
``call_next(task, ctx)`` somewhere in between::

    def log_time(call_next):
        def handle(task, ctx):
            started = time.perf_counter()
            try:
                return call_next(task, ctx)
            finally:
                print(task.id, time.perf_counter() - started)
        return handle

    WorkerBuilder("w").backend(storage).layer(log_time).build(handler)

The first layer added is the outermost. A store may add its own layers
(``Store.middleware()``), inside the worker's. Retries stay outside every layer:
what a layer raises is a failed attempt, retried by the policy. The built-in
layers, each also a ``WorkerBuilder`` shortcut: ``timeout``, ``rate_limit``,
``circuit_breaker``, ``filter``, ``tracing`` and ``metrics``.
"""

from __future__ import annotations

from .chain import Handle, Layer, compose
from .circuit import CircuitBreaker, circuit_breaker
from .filtering import filter  # noqa: A004 - the layer's name, as the builder's shortcut
from .metrics import metrics
from .rate_limit import rate_limit
from .retry import RetryPolicy
from .timeout import TaskTimeout, timeout
from .tracing import tracing

__all__ = [
    "CircuitBreaker",
    "Handle",
    "Layer",
    "RetryPolicy",
    "TaskTimeout",
    "circuit_breaker",
    "compose",
    "filter",
    "metrics",
    "rate_limit",
    "timeout",
    "tracing",
]
