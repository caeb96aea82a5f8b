"""``tracing()``: an OpenTelemetry span around each task. (To be built.)"""

from __future__ import annotations

from typing import Any

from .chain import Layer

__all__ = ["tracing"]


def tracing(tracer: Any = None) -> Layer:
    """Wrap each task in an OpenTelemetry span (extra ``tracing``)."""
    raise NotImplementedError
