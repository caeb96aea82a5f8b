"""Helpers shared by several test modules (import them: ``from helpers import …``)."""

from __future__ import annotations

import importlib.util
import os
import threading

import pytest

# engine param -> (the URL's environment variable, the engine's module)
ENGINES = {
    "postgres": ("TASKPIPE_TEST_POSTGRES_URL", "taskpipe.postgres"),
    "mysql": ("TASKPIPE_TEST_MYSQL_URL", "taskpipe.mysql"),
    "redis": ("TASKPIPE_TEST_REDIS_URL", "taskpipe.redis"),
}


def module_exists(name: str) -> bool:
    """Whether module ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def engine_url(param: str, purpose: str = "run the contract suite on it") -> str:
    """The URL of ``param``'s test server, or skip saying why not: its URL variable is
    unset, or its module does not exist yet. Under ``CI`` these fail instead, except an
    engine not written yet whose URL is unset too (it is not expected there)."""
    variable, module = ENGINES[param]
    url = os.environ.get(variable, "").strip()
    exists = module_exists(module)
    if not url:
        if os.environ.get("CI") and exists:
            pytest.fail(f"{param}: {variable} is not set (CI: not skipping)", pytrace=False)
        missing = "" if exists else f"; {module} does not exist yet either"
        pytest.skip(f"{param}: set {variable} to {purpose}{missing}")
    if not exists:
        reason = f"{param}: {variable} is set but {module} does not exist yet"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: not skipping)", pytrace=False)
        pytest.skip(reason)
    return url


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
