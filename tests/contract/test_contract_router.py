"""A Router over each store: pushes by name, one worker dispatching by name."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from contract_support import need

from taskpipe import CapabilityError, RetryPolicy, Router, Status, Task, WorkerBuilder
from taskpipe.router import NAME_META


@dataclass
class Point:
    x: int
    y: int


def test_router_runs_each_function_by_name(store):
    router = Router(store)

    @router.task(name="norm")
    def norm(p: Point, scale: int = 1) -> int:
        return (abs(p.x) + abs(p.y)) * scale

    @router.task(name="join")
    def join(*words: str, sep: str = " ") -> str:
        return sep.join(words)

    @router.task(name="fail", retries=RetryPolicy.retries(0))
    def fail(n: int) -> None:
        raise ValueError(f"bad {n}")

    ids = [norm.push(Point(3, -4), scale=2), join.push("a", "b", sep="-"), fail.push(7)]
    unknown = store.push_task(Task({"n": 1}, meta={NAME_META: "gone"}))
    worker = WorkerBuilder("router").backend(store).retry(RetryPolicy.retries(3)).build(router)
    assert worker.run_until_idle() == 4
    need(store, "introspection")
    infos = [store.fetch_by_id(i) for i in (*ids, unknown)]
    assert [i.status for i in infos] == [Status.DONE, Status.DONE, Status.DEAD, Status.DEAD]
    assert [i.result for i in infos[:2]] == [14, "a-b"]
    assert infos[2].errors[-1].error == "ValueError: bad 7"  # its own policy: no retry
    assert (
        infos[3].errors[-1].error == "no task named 'gone' in this router (known: fail, join, norm)"
    )


def test_router_pushes_to_another_queue_of_the_store(store):
    other = f"{store.queue}-other"
    router = Router(store)
    if not store.capabilities.queues:
        with pytest.raises(CapabilityError):
            router.task(name="elsewhere", queue=other)(lambda n: n)
        return
    need(store, "introspection")

    @router.task(name="elsewhere", queue=other)
    def elsewhere(n: int) -> int:
        return n * 10

    @router.task(name="here")
    def here(n: int) -> int:
        return n + 1

    far, near = elsewhere.push(4), here.push(4)
    assert WorkerBuilder("here").backend(store).build(router).run_until_idle() == 1
    sibling = router.storage_for(other)
    assert sibling.queue == other and type(sibling) is type(store)
    assert store.fetch_by_id(far).status == Status.PENDING
    assert WorkerBuilder("there").backend(sibling).build(router).run_until_idle() == 1
    assert [store.fetch_by_id(i).result for i in (far, near)] == [40, 5]
    assert store.fetch_by_id(far).queue == other
