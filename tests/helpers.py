"""Helpers shared by several test modules (import them: ``from helpers import …``)."""

from __future__ import annotations

import threading


def run_with_safety(worker, seconds: float = 10.0) -> bool:
    """``worker.run()`` in this thread; a timer stops it if the test's own stop never
    comes. Returns True when the test's stop (or the worker itself) ended it."""
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        worker.stop()

    timer = threading.Timer(seconds, stop)
    timer.start()
    try:
        worker.run()
    finally:
        timer.cancel()
    return not fired.is_set()
