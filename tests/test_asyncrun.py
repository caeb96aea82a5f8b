"""EventLoopThread, with real threads: coroutines submitted from many threads at once
run concurrently on its one loop; results and exceptions reach their own caller;
a timeout really cancels the coroutine; close() cancels what still runs and joins."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading

import pytest

from taskpipe.asyncrun import EventLoopThread

LIMIT = 10.0  # seconds: only reached when something is broken


@pytest.fixture
def loop_thread():
    runner = EventLoopThread()
    yield runner
    runner.close()


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "taskpipe-asyncio"]


class Boom(Exception):
    pass


def test_coroutines_from_eight_threads_run_concurrently_on_one_loop(loop_thread):
    n = 8
    barrier = asyncio.Barrier(n)  # fills only if all eight are on the loop at once
    ran_on: list[tuple[threading.Thread, asyncio.AbstractEventLoop]] = []
    start_together = threading.Barrier(n, timeout=LIMIT)

    async def job(i: int) -> int:
        ran_on.append((threading.current_thread(), asyncio.get_running_loop()))
        await barrier.wait()
        return i * 10

    def submit(i: int) -> tuple[int, threading.Thread]:
        start_together.wait()  # the first run() calls (and the lazy start) race
        return loop_thread.run(job(i), timeout=LIMIT), threading.current_thread()

    assert loop_threads() == []  # started lazily
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(submit, range(n)))
    assert [result for result, _ in outcomes] == [i * 10 for i in range(n)]
    callers = {caller for _, caller in outcomes}
    assert len(callers) == n
    assert len({thread for thread, _ in ran_on}) == 1 and len({loop for _, loop in ran_on}) == 1
    (loop_owner,) = {thread for thread, _ in ran_on}
    assert loop_owner not in callers and loop_owner.daemon
    assert loop_threads() == [loop_owner]


def test_an_exception_reaches_the_caller_as_it_was_raised(loop_thread):
    raised: list[BaseException] = []

    async def fail() -> None:
        await asyncio.sleep(0)
        exc = Boom("bad order")
        raised.append(exc)
        raise exc

    with pytest.raises(Boom, match="bad order") as info:
        loop_thread.run(fail())
    assert info.value is raised[0]

    async def ok() -> str:
        return "still serving"

    assert loop_thread.run(ok()) == "still serving"


@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt])
def test_system_exit_and_keyboard_interrupt_reach_the_caller_and_spare_the_loop(loop_thread, kind):
    async def leave() -> None:
        raise kind(3)

    async def ok() -> int:
        return 1

    with pytest.raises(kind):
        loop_thread.run(leave())
    assert loop_thread.run(ok(), timeout=LIMIT) == 1


def test_timeout_cancels_the_coroutine(loop_thread):
    seen: list[str] = []

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("finally")

    with pytest.raises(TimeoutError, match=r"stuck\(\) did not finish within 0.05 s"):
        loop_thread.run(stuck(), timeout=0.05)
    assert seen == ["cancelled", "finally"]  # before run() returned


def test_the_coroutines_own_timeout_error_is_not_reworded(loop_thread):
    async def gives_up() -> None:
        raise TimeoutError("upstream took too long")

    with pytest.raises(TimeoutError, match="^upstream took too long$"):
        loop_thread.run(gives_up(), timeout=LIMIT)


def test_close_cancels_running_coroutines_and_joins(loop_thread):
    started = threading.Event()
    seen: list[str] = []
    outcome: list[BaseException] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            seen.append("finally")

    def caller() -> None:
        try:
            loop_thread.run(forever())
        except BaseException as exc:  # noqa: B036 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    assert started.wait(LIMIT)
    (owner,) = loop_threads()
    loop_thread.close()
    assert not owner.is_alive()  # joined
    thread.join(LIMIT)
    assert not thread.is_alive()
    assert seen == ["finally"]
    assert [type(exc) for exc in outcome] == [concurrent.futures.CancelledError]
    loop_thread.close()  # idempotent


def test_run_after_close_is_refused_and_closes_the_coroutine():
    runner = EventLoopThread()
    runner.close()  # never started: nothing to join
    runner.close()
    assert loop_threads() == []

    async def job() -> None: ...

    coro = job()
    with pytest.raises(RuntimeError, match="is closed"):
        runner.run(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited"


def test_run_from_the_loop_itself_is_refused(loop_thread):
    async def inner() -> None: ...

    async def outer() -> str:
        coro = inner()
        try:
            loop_thread.run(coro)
        except RuntimeError as exc:
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            return str(exc)
        return "not refused"

    assert "await the coroutine instead" in loop_thread.run(outer(), timeout=LIMIT)


def test_close_from_the_loop_itself_is_refused_and_leaves_it_usable(loop_thread):
    async def shut() -> str:
        try:
            loop_thread.close()
        except RuntimeError as exc:
            return str(exc)
        return "not refused"

    async def ok() -> int:
        return 2

    assert "from a coroutine on its own loop" in loop_thread.run(shut(), timeout=LIMIT)
    assert loop_thread.run(ok(), timeout=LIMIT) == 2  # still open


def test_with_block_closes():
    async def ok() -> int:
        return 3

    with EventLoopThread() as runner:
        assert runner.run(ok(), timeout=LIMIT) == 3
        (owner,) = [t for t in loop_threads() if t.is_alive()]
    assert not owner.is_alive()


def test_run_takes_only_a_coroutine(loop_thread):
    async def job() -> None: ...

    with pytest.raises(TypeError, match=r"takes a coroutine, such as handler\(args\)"):
        loop_thread.run(job)
