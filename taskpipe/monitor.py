"""Run several workers together: ``run_all(a, b)`` or ``Monitor().register(a)….run()``.

Each worker runs in its own thread; SIGINT/SIGTERM (in the main thread) stop them
all gracefully, a second signal skips their grace; ``run()`` returns when all have
stopped and re-raises the first error any of them raised.
"""

from __future__ import annotations

import threading

from .signals import graceful_signals
from .worker import Worker

__all__ = ["Monitor", "run_all"]


class Monitor:
    """A group of workers run and stopped together."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []

    def register(self, worker: Worker) -> Monitor:
        """Add a worker; returns the monitor for chaining."""
        if not isinstance(worker, Worker):
            raise TypeError(f"register() takes a Worker, got {worker!r}")
        self.workers.append(worker)
        return self

    def stop(self) -> None:
        """Ask every worker to stop gracefully."""
        for worker in self.workers:
            worker.stop()

    def run(self) -> None:
        """Run all workers until they stop; re-raise the first error."""
        errors: list[BaseException] = []
        started = []

        def target(worker: Worker) -> None:
            try:
                worker.run()
            except BaseException as exc:  # surfaced in the caller below
                errors.append(exc)

        def stop_hard() -> None:
            for worker in self.workers:
                worker._stop_hard()

        with graceful_signals(self.stop, stop_hard, "monitor"):
            for worker in self.workers:
                thread = threading.Thread(
                    target=target, args=(worker,), name=f"taskpipe-monitor-{worker.name}"
                )
                thread.start()
                started.append(thread)
            for thread in started:
                while thread.is_alive():
                    thread.join(0.2)  # short joins keep the main thread responsive to signals
        if errors:
            raise errors[0]


def run_all(*workers: Worker) -> None:
    """Run these workers together until they all stop (see ``Monitor``)."""
    monitor = Monitor()
    for worker in workers:
        monitor.register(worker)
    monitor.run()
