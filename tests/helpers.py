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


def push_and_close(storage, value) -> None:
    """Push from a thread of the test's own, closing that thread's connection after
    (a thread that ends must not leave one open)."""
    try:
        storage.push(value)
    finally:
        storage.close_thread_connection()
