"""``metrics()``: Prometheus counters and histograms of the tasks run. (To be built.)"""

from __future__ import annotations

from typing import Any

from .chain import Layer

__all__ = ["metrics"]


def metrics(registry: Any = None) -> Layer:
    """Count tasks by outcome and time them in Prometheus metrics (extra ``metrics``)."""
    raise NotImplementedError
