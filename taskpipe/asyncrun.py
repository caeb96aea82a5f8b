"""Run ``async def`` handlers from the worker's pool threads on one event loop.

``EventLoopThread`` owns an asyncio event loop running in a daemon thread of its own.
A pool thread calls ``run(coroutine)``: the coroutine runs on that loop and the pool
thread blocks until it finishes, so the async handlers of all pool threads overlap
on the one loop while each pool thread waits for its own::

    loop_thread = EventLoopThread()
    result = loop_thread.run(handler(args, **kwargs), timeout=30)  # in a pool thread
    loop_thread.close()  # at shutdown, once the pool is done
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import clock

__all__ = ["EventLoopThread"]

T = TypeVar("T")


class EventLoopThread:
    """An asyncio event loop in a daemon thread of its own, started on first ``run()``.

    Thread-safe: any number of threads may call ``run()`` at once."""

    def __init__(self, name: str = "taskpipe-asyncio") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block until it finishes; return its result or
        raise its exception. After ``timeout`` seconds the coroutine is cancelled (it sees
        ``CancelledError`` where it awaits), and once it has ended ``TimeoutError`` is
        raised. A coroutine still running when ``close()`` is called is cancelled too,
        and ``run()`` raises ``concurrent.futures.CancelledError``."""
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"run() takes a coroutine, such as handler(args), not {coro!r}")
        try:
            with self._lock:  # so that close() cannot stop the loop between these lines
                if self._closed:
                    raise RuntimeError(f"{self!r} is closed: make a new one to run coroutines")
                if threading.current_thread() is self._thread:
                    raise RuntimeError(
                        "run() was called from a coroutine on its own loop, which would wait "
                        "for itself forever; await the coroutine instead"
                    )
                future = asyncio.run_coroutine_threadsafe(_within(coro, timeout), self._start())
        except BaseException:
            coro.close()  # never started: no "coroutine was never awaited" warning
            raise
        try:
            return future.result()
        except _Carried as carried:
            raise carried.exc from None

    def close(self) -> None:
        """Cancel the coroutines still running, stop the loop and join its thread.
        Idempotent; every call returns once the thread has ended."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if thread is not None and threading.current_thread() is thread:
                raise RuntimeError("close() cannot be called from a coroutine on its own loop")
            first, self._closed = not self._closed, True
        if loop is None or thread is None:
            return
        if first and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join()

    def __enter__(self) -> EventLoopThread:
        """Use as ``with EventLoopThread() as loop_thread:``; closed on leaving."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close it (see ``close()``)."""
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._thread else "not started"
        return f"<EventLoopThread {self._name!r} {state}>"

    def _start(self) -> asyncio.AbstractEventLoop:
        """The loop, creating it and its thread on first use (call with the lock held)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            # Timers (asyncio.sleep, wait_for) on the real clock: under freezegun the
            # loop's own clock (time.monotonic) stands still and they never fire.
            self._loop.time = clock.real_monotonic  # type: ignore[method-assign]
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()
        return self._loop

    def _main(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()  # until close() stops it
            loop.run_until_complete(_cancel_the_rest(loop))
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class _Carried(Exception):
    """Carries a KeyboardInterrupt or SystemExit from a coroutine to the caller of
    ``run()``: raised as they are, asyncio would let them escape and stop the loop."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


async def _within(coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
    """Await ``coro``, cancelling it after ``timeout`` seconds (``None``: no limit)."""
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await coro
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _Carried(exc) from None
    except TimeoutError:
        if not scope.expired():
            raise  # the coroutine's own TimeoutError
        name = getattr(coro, "__qualname__", None) or repr(coro)
        raise TimeoutError(
            f"{name}() did not finish within {timeout} s and was cancelled"
        ) from None


async def _cancel_the_rest(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every other task, wait for them, then release the loop's resources."""
    tasks = [task for task in asyncio.all_tasks(loop) if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()
