"""``metrics()``: Prometheus counters and histograms of the tasks run (extra ``metrics``).

In ``registry`` (prometheus_client's default one unless given), labelled by queue:

- ``taskpipe_tasks_total{queue, outcome}``: attempts by outcome: ``done``, ``failed``
  (the handler or a layer inside raised; the retry policy decides what follows),
  ``skipped`` (by a ``filter`` layer inside this one), ``released`` (handed back
  unstarted, e.g. by a circuit breaker while the worker stopped);
- ``taskpipe_task_duration_seconds{queue}``: how long the attempts that ran took;
- ``taskpipe_task_lag_seconds{queue}``: how late a task started, behind its due time
  (stores that say when a task was due: SQL and memory);
- ``taskpipe_queue_depth{queue, status}``: the tasks of the worker's queue that are
  ``pending``, ``running`` or ``failed`` (waiting for a retry), read from the store's
  ``stats()`` when it has introspection, when Prometheus scrapes, at most every
  ``DEPTH_REFRESH`` seconds.

Several workers (and several ``metrics()`` layers) may share a registry: the metrics
are made once per registry. ``taskpipe worker --metrics-port N`` serves them.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import clock
from ..errors import BuildError, NotStarted
from .chain import Handle, Layer

if TYPE_CHECKING:
    from ..context import WorkerContext
    from ..store import Store
    from ..task import Task

__all__ = ["metrics", "DEPTH_REFRESH"]

log = logging.getLogger("taskpipe.metrics")

#: Seconds a queue depth read from the store is reused before it is read again.
DEPTH_REFRESH = 5.0
#: The statuses ``taskpipe_queue_depth`` reports: the tasks not finished.
DEPTH_STATUSES = ("pending", "running", "failed")
#: Buckets of ``taskpipe_task_lag_seconds``: from milliseconds to an hour late.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def metrics(registry: Any = None, *, store: Store | None = None) -> Layer:
    """Count tasks by outcome and time them in Prometheus metrics (extra ``metrics``);
    with ``store`` (the builder passes the worker's), report its queue's depth too."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise BuildError(
            'metrics needs the Prometheus client: pip install "taskpipe[metrics]"'
        ) from exc
    families = _families(registry if registry is not None else prometheus_client.REGISTRY)
    if store is not None and store.capabilities.introspection:
        families.depth.watch(store)

    def layer(call_next: Handle) -> Handle:
        def handle(task: Task[Any], ctx: WorkerContext) -> Any:
            of_queue = families.of_queue(task.queue or "")
            if task.due_at is not None:
                of_queue.lag.observe(_lag(task.due_at))
            started = clock.real_monotonic()
            try:
                result = call_next(task, ctx)
            except NotStarted:
                of_queue.released.inc()
                raise
            except BaseException:
                of_queue.duration.observe(clock.real_monotonic() - started)
                of_queue.failed.inc()
                raise
            if task.skipped:
                of_queue.skipped.inc()
            else:
                of_queue.duration.observe(clock.real_monotonic() - started)
                of_queue.done.inc()
            return result

        return handle

    return layer


def _lag(due_at: float) -> float:
    """Seconds since ``due_at``. (A function of its own: freezegun gives real time to a
    call made within five frames of ``threading``, and the pool thread's layers are.)"""
    return max(0.0, clock.timestamp() - due_at)


class _QueueMetrics:
    """The labelled children of one queue, looked up once."""

    def __init__(self, families: _Families, queue: str):
        tasks = families.tasks
        self.done = tasks.labels(queue, "done")
        self.failed = tasks.labels(queue, "failed")
        self.skipped = tasks.labels(queue, "skipped")
        self.released = tasks.labels(queue, "released")
        self.duration = families.duration.labels(queue)
        self.lag = families.lag.labels(queue)


class _Families:
    """taskpipe's metrics in one registry."""

    def __init__(self, registry: Any):
        from prometheus_client import Counter, Histogram

        self.tasks = Counter(
            "taskpipe_tasks",
            "Task attempts by outcome (done, failed, skipped, released).",
            ["queue", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "taskpipe_task_duration_seconds",
            "How long the attempts that ran took.",
            ["queue"],
            registry=registry,
        )
        self.lag = Histogram(
            "taskpipe_task_lag_seconds",
            "How late tasks started, behind their due time.",
            ["queue"],
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self.depth = _DepthCollector()
        registry.register(self.depth)
        self._queues: dict[str, _QueueMetrics] = {}

    def of_queue(self, queue: str) -> _QueueMetrics:
        found = self._queues.get(queue)
        if found is None:  # made twice in a race: the same children, no harm
            found = self._queues[queue] = _QueueMetrics(self, queue)
        return found


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[Any, _Families] = weakref.WeakKeyDictionary()


def _families(registry: Any) -> _Families:
    """The registry's taskpipe metrics, made on first use."""
    with _lock:
        found = _by_registry.get(registry)
        if found is None:
            found = _by_registry[registry] = _Families(registry)
        return found


class _DepthCollector:
    """``taskpipe_queue_depth``, read from the watched stores when scraped (cached)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    def watch(self, store: Store) -> None:
        """Report ``store``'s queue (the last store watched for a queue name wins)."""
        with self._lock:
            self._stores[store.queue] = store

    def describe(self) -> list[Any]:
        """The family, without reading any store (called when registered)."""
        return [self._family()]

    def collect(self) -> Iterator[Any]:
        """The depth of every watched queue (a store that fails is left out)."""
        family = self._family()
        with self._lock:
            for queue, store in list(self._stores.items()):
                stats = self._stats(queue, store)
                if stats is None:
                    continue
                for status in DEPTH_STATUSES:
                    family.add_metric([queue, status], float(stats.get(status) or 0))
        yield family

    def _stats(self, queue: str, store: Any) -> dict[str, Any] | None:
        now = clock.real_monotonic()
        cached = self._cache.get(queue)
        if cached is not None and now - cached[0] < DEPTH_REFRESH:
            return cached[1]
        try:
            stats = store.stats(queue)
        except Exception as exc:  # a scrape must not fail because the store did
            log.warning("queue depth of %r: %s", queue, exc)
            return None
        self._cache[queue] = (now, stats)
        return stats

    @staticmethod
    def _family() -> Any:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(
            "taskpipe_queue_depth",
            "Tasks of the queue not finished, by status (from the store's stats).",
            labels=["queue", "status"],
        )
