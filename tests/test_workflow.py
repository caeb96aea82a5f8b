"""Sequential workflows: steps, delays, filter_map, fold, repeat_until, failures, status."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from workflow_support import KINDS, drain, store_maker, unique

import taskpipe
from taskpipe import Data, RetryPolicy, Status, TaskId, WorkerBuilder, WorkerContext
from taskpipe.errors import BuildError, CapabilityError, RunNotFound, WorkflowError
from taskpipe.memory import MemoryBackend
from taskpipe.store import Capabilities
from taskpipe.workflow import Iteration, Workflow

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(params=KINDS)
def make_store(request, tmp_path):
    """``make(queue=None) -> store``: memory, SQLite, and PostgreSQL when its URL is set."""
    yield from store_maker(request.param, tmp_path)


@dataclass
class Order:
    id: int
    email: str
    items: list[str]
    total_cents: int


@dataclass
class Charged:
    order_id: int
    email: str
    transaction: str
    items: list[str]


@dataclass
class Stocked:
    order_id: int
    sku: str


def charge(order: Order) -> Charged:
    return Charged(order.id, order.email, f"txn_{order.id}", order.items)


def split(charged: Charged) -> tuple[Charged, list[Stocked]]:
    stocked = [Stocked(charged.order_id, sku) for sku in charged.items]
    return replace(charged, items=[]), stocked


def dispatch(pair: tuple[Charged, list[Stocked]]) -> str:
    charged, items = pair
    assert isinstance(charged, Charged) and all(isinstance(i, Stocked) for i in items)
    return f"TRACK-{charged.order_id}-{len(items)}"


ORDER = Order(1001, "alice@example.com", ["WIDGET-A", "WIDGET-B", "WIDGET-C"], 7499)


def test_each_step_gets_the_previous_output_decoded_into_its_type(make_store):
    store = make_store()
    flow = Workflow("order").and_then(charge).and_then(split).and_then(dispatch)
    run_id = store.push_start(ORDER)
    assert drain(store, flow) == 4  # the start task routes the order to the first step
    status = store.workflow_status(run_id, flow=flow)
    assert (status.state, status.result, status.error) == ("done", "TRACK-1001-3", None)
    assert status.workflow == "order"
    assert [(s.step, s.name, s.state) for s in status.steps[1:]] == [
        ("0", "charge", Status.DONE),
        ("1", "split", Status.DONE),
        ("2", "dispatch", Status.DONE),
    ]
    assert status.steps[1].result["transaction"] == "txn_1001"


def test_a_run_started_with_its_flow_writes_the_first_step_directly(make_store):
    store = make_store()
    flow = Workflow("order").and_then(charge).and_then(split).and_then(dispatch)
    run_id = store.push_start(ORDER, flow=flow)
    assert drain(store, flow) == 3
    status = store.workflow_status(run_id)
    assert [s.step for s in status.steps] == ["0", "1", "2"]
    assert status.result == "TRACK-1001-3"


def test_steps_get_injected_parameters(make_store):
    store = make_store()
    seen = []

    def step(value: float, ctx: WorkerContext, task_id: TaskId, factor: Data[float]) -> float:
        seen.append((ctx.name, isinstance(task_id, TaskId)))
        return value * factor

    flow = Workflow("inject").and_then(step).and_then(step)
    run_id = store.push_start(2, flow=flow)
    drain(store, flow, data=[1.5])
    assert store.workflow_status(run_id).result == 4.5
    assert seen == [("wf-test", True), ("wf-test", True)]


def test_runs_are_independent_and_listed_newest_first(make_store):
    store = make_store()
    name = unique("double")
    flow = Workflow(name).and_then(lambda x: x * 2)
    with freeze_time(T0) as frozen:
        ids = []
        for value in range(3):
            ids.append(store.push_start(value, flow=flow))
            frozen.tick(timedelta(seconds=1))
        drain(store, flow)
    assert [store.workflow_status(i).result for i in ids] == [0, 2, 4]
    assert [r.run_id for r in store.list_runs(workflow=name, limit=10)] == ids[::-1]
    assert len(store.list_runs(workflow=name, limit=2)) == 2
    assert store.list_runs(workflow=name, state="failed") == []


# Delays -------------------------------------------------------------------------------------
def test_delay_for_makes_the_next_step_due_later(make_store):
    store = make_store()
    ran = []
    flow = (
        Workflow("delayed")
        .and_then(lambda x: ran.append("a") or x + 1)
        .delay_for(timedelta(minutes=5))
        .and_then(lambda x: ran.append("b") or x * 10)
    )
    with freeze_time(T0) as frozen:
        run_id = store.push_start(1, flow=flow)
        drain(store, flow)
        assert ran == ["a"]
        status = store.workflow_status(run_id)
        assert status.state == "running"
        assert status.steps[-1].state is Status.PENDING
        assert store.next_due() == T0.timestamp() + 300
        frozen.tick(timedelta(minutes=4, seconds=59))
        assert drain(store, flow) == 0
        frozen.tick(timedelta(seconds=1))
        assert drain(store, flow) == 1
    assert ran == ["a", "b"]
    assert store.workflow_status(run_id).result == 20


def test_delay_with_computes_the_delay_from_the_previous_output(make_store):
    store = make_store()
    flow = (
        Workflow("delay-with")
        .and_then(lambda x: x)
        .delay_with(lambda minutes: timedelta(minutes=minutes))
        .delay_for(30)  # delays add up
        .and_then(lambda x: x + 1)
    )
    with freeze_time(T0) as frozen:
        run_id = store.push_start(2, flow=flow)
        drain(store, flow)
        assert store.next_due() == T0.timestamp() + 150
        frozen.tick(timedelta(seconds=150))
        drain(store, flow)
    assert store.workflow_status(run_id).result == 3


def test_a_delay_before_the_first_step_delays_it(make_store):
    store = make_store()
    flow = Workflow("late-start").delay_for(timedelta(hours=1)).and_then(lambda x: x + 1)
    with freeze_time(T0) as frozen:
        run_id = store.push_start(1)  # without the flow: its start task applies the delay
        assert drain(store, flow) == 1
        assert store.workflow_status(run_id).state == "running"
        frozen.tick(timedelta(hours=1))
        assert drain(store, flow) == 1
    assert store.workflow_status(run_id).result == 2


# filter_map ----------------------------------------------------------------------------------
def check_stock(item: Stocked) -> Stocked | None:
    assert isinstance(item, Stocked)
    return None if item.sku in ("WIDGET-C", "WIDGET-D") else item


def count_items(items: list[Stocked]) -> list[str]:
    assert all(isinstance(i, Stocked) for i in items)
    return [i.sku for i in items]


def test_filter_map_runs_one_task_per_item_and_collects_in_input_order(make_store):
    store = make_store()
    flow = (
        Workflow("stock")
        .and_then(lambda order_id: [Stocked(order_id, f"WIDGET-{c}") for c in "EDCBA"])
        .filter_map(check_stock)
        .and_then(count_items)
    )
    run_id = store.push_start(7, flow=flow)
    drain(store, flow, concurrency=8)
    status = store.workflow_status(run_id)
    assert status.state == "done"
    assert status.result == ["WIDGET-E", "WIDGET-B", "WIDGET-A"]
    filter_step = status.steps[1]
    assert len(filter_step.tasks) == 6  # five items and the collect task
    assert filter_step.result == [
        {"order_id": 7, "sku": sku} for sku in ("WIDGET-E", "WIDGET-B", "WIDGET-A")
    ]


def test_filter_map_keeping_nothing_ends_the_run(make_store):
    store = make_store()
    after = []
    flow = Workflow("none-kept").filter_map(lambda x: None).and_then(after.append)
    run_id = store.push_start([1, 2, 3], flow=flow)
    drain(store, flow)
    status = store.workflow_status(run_id)
    assert (status.state, status.result, after) == ("done", [], [])


def test_filter_map_over_nothing_ends_the_run(make_store):
    store = make_store()
    after = []
    flow = Workflow("empty").and_then(lambda x: []).filter_map(repr).and_then(after.append)
    run_id = store.push_start(1, flow=flow)
    drain(store, flow)
    assert store.workflow_status(run_id).state == "done"
    assert after == []


def test_filter_map_as_the_last_step_gives_the_run_its_list(make_store):
    store = make_store()
    flow = Workflow("last").filter_map(lambda x: x * x if x % 2 else None)
    run_id = store.push_start([1, 2, 3, 4, 5])
    drain(store, flow)
    assert store.workflow_status(run_id).result == [1, 9, 25]


def test_filter_map_needs_an_iterable(make_store):
    store = make_store()
    flow = Workflow("not-a-list").and_then(lambda x: 5).filter_map(repr)
    run_id = store.push_start(1, flow=flow)
    drain(store, flow)
    status = store.workflow_status(run_id)
    assert status.state == "failed"
    assert "step 0" in status.error and "takes a list of items, got int" in status.error


# fold -------------------------------------------------------------------------------------
def test_fold_runs_the_items_one_after_another_with_the_accumulator_carried(make_store):
    store = make_store()
    order = []

    def add(pair: tuple[list[int], int]) -> list[int]:
        acc, item = pair
        order.append(item)
        return [*acc, acc[-1] + item]

    flow = Workflow("sum").fold(add, [0]).and_then(lambda acc: acc[-1])
    with freeze_time(T0):
        run_id = store.push_start([3, 1, 2], flow=flow)
        drain(store, flow, concurrency=8)
    status = store.workflow_status(run_id)
    assert status.result == 6
    assert order == [3, 1, 2]
    assert status.steps[0].result == [0, 3, 4, 6]
    assert len(status.steps[0].tasks) == 3


def test_fold_over_nothing_passes_its_initial_value_on(make_store):
    store = make_store()
    flow = Workflow("sum-nothing").fold(lambda pair: pair[0] + pair[1], 42).and_then(repr)
    run_id = store.push_start([], flow=flow)
    drain(store, flow)
    assert store.workflow_status(run_id).result == "42"


def test_a_fold_function_must_take_a_pair():
    def bad(acc: int) -> int:
        return acc

    with pytest.raises(WorkflowError, match=r"step 0 \(fold bad\).*tuple\[Acc, Item\]"):
        Workflow("bad-fold").fold(bad, 0).validate()


# repeat_until ----------------------------------------------------------------------------------
def test_repeat_until_runs_again_until_a_value_with_its_iteration(make_store):
    store = make_store()
    seen = []

    def poll(job: str, iteration: Iteration) -> str | None:
        seen.append(iteration)
        return f"{job} ready after {iteration}" if iteration == 3 else None

    flow = (
        Workflow("poll")
        .repeat_until(poll, every=timedelta(seconds=10))
        .and_then(lambda text: text.upper())
    )
    with freeze_time(T0) as frozen:
        run_id = store.push_start("export", flow=flow)
        drain(store, flow)
        assert seen == [1]
        frozen.tick(timedelta(seconds=10))
        drain(store, flow)
        frozen.tick(timedelta(seconds=10))
        drain(store, flow)
    assert seen == [1, 2, 3]
    status = store.workflow_status(run_id)
    assert status.result == "EXPORT READY AFTER 3"
    assert len(status.steps[0].tasks) == 3


def test_repeat_until_gives_up_after_max_iterations(make_store):
    store = make_store()
    flow = Workflow("never").repeat_until(lambda x: None, max_iterations=3).and_then(repr)
    run_id = store.push_start(1, flow=flow)
    drain(store, flow)
    status = store.workflow_status(run_id)
    assert status.state == "failed"
    assert "returned None 3 times" in status.error
    assert len(status.steps[0].tasks) == 3


# Failures ------------------------------------------------------------------------------------
def test_a_failing_step_retries_then_fails_the_run_and_later_steps_never_run(make_store):
    store = make_store()
    calls = {"validate": 0, "ship": 0}

    def validate(charged: Charged) -> Charged:
        calls["validate"] += 1
        raise ValueError(f"card declined for order {charged.order_id}")

    def ship(charged: Charged) -> str:
        calls["ship"] += 1
        return "shipped"

    name = unique("failing")
    flow = Workflow(name).and_then(charge).and_then(validate).and_then(ship)
    with freeze_time(T0) as frozen:
        run_id = store.push_start(ORDER, flow=flow)
        for _ in range(5):
            drain(store, flow, retry=RetryPolicy.retries(2))
            frozen.tick(timedelta(hours=1))
    assert calls == {"validate": 3, "ship": 0}
    status = store.workflow_status(run_id, flow=flow)
    assert status.state == "failed"
    assert status.failed_step == "1"
    assert status.error == "step 1 (validate) failed: ValueError: card declined for order 1001"
    validate_step = status.steps[1]
    assert (validate_step.state, validate_step.attempts) == (Status.DEAD, 3)
    assert status.steps[2].state is None  # never reached
    assert [r.run_id for r in store.list_runs(workflow=name, state="failed")] == [run_id]


def test_a_step_with_its_own_max_attempts(make_store):
    store = make_store()
    calls = []

    def flaky(x: int, attempt: taskpipe.Attempt) -> int:
        calls.append(attempt)
        if attempt < 2:
            raise RuntimeError("flaky")
        return x

    flow = Workflow("own-attempts").and_then(flaky, max_attempts=2)
    with freeze_time(T0) as frozen:
        run_id = store.push_start(5, flow=flow)
        drain(store, flow)
        frozen.tick(timedelta(hours=1))
        drain(store, flow)
    assert calls == [1, 2]
    assert store.workflow_status(run_id).result == 5


def test_unknown_runs_and_bad_ids(make_store):
    store = make_store()
    with pytest.raises(RunNotFound):
        store.workflow_status("0" * 20)
    with pytest.raises(ValueError):
        store.workflow_status("a:b")


def test_a_task_of_another_workflow_fails_clearly(make_store):
    store = make_store()
    run_id = store.push_start(1, flow=Workflow("one").and_then(repr))
    drain(store, Workflow("two").and_then(repr))
    status = store.workflow_status(run_id)
    assert status.state == "failed"
    assert "is a step of workflow 'one', but this worker runs 'two'" in status.error


def test_a_run_of_an_older_version_of_the_workflow_fails_clearly(make_store):
    store = make_store()
    old = Workflow("v").and_then(repr).delay_for(60).and_then(repr)
    with freeze_time(T0) as frozen:
        run_id = store.push_start(1, flow=old)
        drain(store, old)
        frozen.tick(60)
        drain(store, Workflow("v").and_then(repr))
    status = store.workflow_status(run_id)
    assert status.state == "failed"
    assert "workflow 'v' has no step '2'" in status.error


# Building -------------------------------------------------------------------------------------
class NoJoins(MemoryBackend):
    """A store with follow-ups and keys but no joins."""

    capabilities = replace(MemoryBackend.capabilities, joins=False)


def test_a_store_without_joins_runs_plain_steps_but_not_filter_map():
    store = NoJoins(queue=unique())
    flow = Workflow("plain").and_then(lambda x: x + 1)
    store.push_start(1, flow=flow)
    assert drain(store, flow) == 1
    with pytest.raises(CapabilityError, match="filter_map.*'joins'"):
        WorkerBuilder("w").backend(store).build(Workflow("fm").filter_map(repr))
    with pytest.raises(CapabilityError, match="'joins'"):
        store.workflow_status("0" * 20)


def test_a_store_without_follow_ups_cannot_run_workflows():
    class Plain(MemoryBackend):
        capabilities = Capabilities(introspection=True)

    with pytest.raises(CapabilityError, match="follow_ups"):
        WorkerBuilder("w").backend(Plain()).build(Workflow("x").and_then(repr))
    with pytest.raises(CapabilityError, match="follow_ups"):
        Plain().push_start(1)


def test_building_checks_the_workflow():
    store = MemoryBackend()
    with pytest.raises(WorkflowError, match="has no step"):
        WorkerBuilder("w").backend(store).build(Workflow("empty").delay_for(1))

    async def coroutine(x: int) -> int:
        return x

    with pytest.raises(BuildError, match="not async def"):
        WorkerBuilder("w").backend(store).build(Workflow("async").and_then(coroutine))

    def unknown(x: int, what: threading.Lock) -> int:
        return x

    with pytest.raises(BuildError, match="cannot inject parameter 'what'"):
        WorkerBuilder("w").backend(store).build(Workflow("bad").and_then(unknown))
    with pytest.raises(TypeError):
        Workflow("x").and_then(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Workflow("x").delay_for(-1)
    with pytest.raises(WorkflowError, match="starts with one input"):
        store.start_fan_out([1, 2], flow=Workflow("x").and_then(repr))


def test_to_dot_draws_the_steps():
    flow = (
        Workflow("order")
        .and_then(charge)
        .delay_for(timedelta(milliseconds=500))
        .filter_map(check_stock)
        .repeat_until(repr)
    )
    dot = flow.to_dot()
    assert dot.startswith('digraph "order" {')
    assert '"0 and_then charge" -> "2 filter_map check_stock" [label="delay 0.5s"];' in dot
    assert '"3 repeat_until repr" -> "3 repeat_until repr"' in dot
