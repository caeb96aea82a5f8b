"""SIGINT/SIGTERM for a process that runs workers: the first signal asks for a
graceful stop, the second skips the grace. Handlers only install in the main thread
(Python's rule) and only set flags; the previous handlers come back afterwards."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["graceful_signals"]

log = logging.getLogger("taskpipe.signals")


@contextmanager
def graceful_signals(
    stop: Callable[[], None], stop_hard: Callable[[], None], what: str
) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM call ``stop()`` the first time and
    ``stop_hard()`` after that; nothing changes outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("%s: signal %s, shutting down (again to skip the grace)", what, signum)
            stop()
        else:
            log.warning("%s: second signal, skipping the grace period", what)
            stop_hard()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
