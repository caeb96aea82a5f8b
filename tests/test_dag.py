"""DAG workflows: fan-out, fan-in exactly once, validation, start inputs, drawing."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from workflow_support import (
    KINDS,
    MYSQL_URL,
    POSTGRES_URL,
    REDIS_URL,
    postgres_db,
    store_maker,
    unique,
)

import taskpipe
from taskpipe import Status, WorkerBuilder, WorkerContext
from taskpipe.config import Config
from taskpipe.errors import CapabilityError, WorkflowError
from taskpipe.memory import MemoryBackend
from taskpipe.sqlite import SqliteStorage, connect
from taskpipe.workflow import DagFlow


@pytest.fixture(params=KINDS)
def make_store(request, tmp_path):
    """``make(queue=None) -> store``: memory, SQLite, and PostgreSQL when its URL is set."""
    yield from store_maker(request.param, tmp_path)


def get_name(user_id: int) -> str:
    return str(user_id)


def get_age(user_id: int) -> int:
    return user_id + 20


def get_address(user_id: int) -> int:
    return user_id + 100


def collector(inputs: tuple[str, int, int], ctx: WorkerContext) -> int:
    name, age, address = inputs
    assert isinstance(name, str) and isinstance(age, int)
    return int(name) + age + address


def user_etl() -> DagFlow:
    dag = DagFlow("user-etl")
    name, age, address = dag.node(get_name), dag.node(get_age), dag.node(get_address)
    dag.node(collector).depends_on(name, age, address)
    dag.validate()
    return dag


def drain(store, dag, concurrency=4):
    return (
        WorkerBuilder("dag-test")
        .backend(store)
        .concurrency(concurrency)
        .build(dag)
        .run_until_idle()
    )


def test_a_fan_in_gets_its_parents_outputs_as_a_tuple_in_order(make_store):
    store = make_store()
    dag = user_etl()
    run_id = store.start_fan_out([42, 43, 44])  # as in the seed: before the DAG is built
    assert drain(store, dag) == 5
    status = store.workflow_status(run_id, flow=dag)
    assert (status.state, status.result) == ("done", 42 + 63 + 144)
    assert status.workflow == "user-etl"
    by_step = {s.step: s for s in status.steps}
    assert by_step["get_age"].result == 63
    assert by_step["collector"].state is Status.DONE
    assert len(by_step["collector"].tasks) == 1


def test_a_run_started_with_its_dag_writes_the_start_nodes_directly(make_store):
    store = make_store()
    dag = user_etl()
    run_id = store.start_fan_out([1, 2, 3], flow=dag)
    assert drain(store, dag) == 4
    assert store.workflow_status(run_id).result == 1 + 22 + 103


@dataclass
class Doc:
    words: list[str]


def test_a_diamond_fans_out_in_one_ack_and_joins_once(make_store):
    store = make_store()
    dag = DagFlow("diamond")
    load = dag.node(lambda text: Doc(text.split()), name="load")
    count = dag.node(lambda doc: len(doc["words"]), name="count").depends_on(load)
    first = dag.node(lambda doc: doc["words"][0], name="first").depends_on(load)

    def report(parts: tuple[int, str]) -> str:
        return f"{parts[1]}+{parts[0] - 1}"

    dag.node(report).depends_on(count, first)
    run_id = store.push_start("hello big world")
    drain(store, dag)
    status = store.workflow_status(run_id)
    assert status.result == "hello+2"
    assert [s.step for s in status.steps] == ["^start", "load", "count", "first", "report"]


def test_a_node_may_depend_on_the_same_parent_twice(make_store):
    store = make_store()
    dag = DagFlow("twice")
    a = dag.node(lambda x: x + 1, name="a")
    dag.node(lambda pair: pair[0] * pair[1], name="square").depends_on(a, a)
    run_id = store.push_start(4, flow=dag)
    drain(store, dag)
    assert store.workflow_status(run_id).result == 25


def test_a_failing_parent_fails_the_run_and_the_join_never_runs(make_store):
    store = make_store()
    ran = []
    dag = DagFlow("broken")
    a = dag.node(lambda x: x, name="a")

    def b(x: int) -> int:
        raise KeyError("no such user")

    bn = dag.node(b)
    dag.node(lambda pair: ran.append(pair), name="join").depends_on(a, bn)
    run_id = store.start_fan_out([1, 2], flow=dag)
    drain(store, dag)
    status = store.workflow_status(run_id, flow=dag)
    assert ran == []
    assert status.state == "failed"
    assert status.error == "step b failed: KeyError: 'no such user'"
    assert {s.step: s.state for s in status.steps}["join"] is None


# Start inputs -------------------------------------------------------------------------------
def test_an_input_count_that_does_not_match_the_start_nodes(make_store):
    store = make_store()
    dag = user_etl()
    with pytest.raises(
        WorkflowError, match=r"3 start node\(s\) \(get_name, get_age, get_address\)"
    ):
        store.start_fan_out([1, 2], flow=dag)
    with pytest.raises(WorkflowError, match="use start_fan_out"):
        store.push_start(1, flow=dag)
    run_id = store.start_fan_out([1, 2])  # without the DAG: found when the worker routes it
    drain(store, dag)
    status = store.workflow_status(run_id)
    assert status.state == "failed"
    assert "start_fan_out() got 2 input(s)" in status.error


# Validation ------------------------------------------------------------------------------------
def test_validate_names_the_nodes_of_a_cycle():
    dag = DagFlow("loop")
    a = dag.node(get_name, name="a")
    b = dag.node(get_age, name="b").depends_on(a)
    c = dag.node(get_age, name="c").depends_on(b)
    b.depends_on(c)
    with pytest.raises(WorkflowError, match=r"cycle: b -> c -> b|cycle: c -> b -> c"):
        dag.validate()


def test_validate_checks_the_tuple_arity_against_the_dependencies():
    dag = DagFlow("arity")
    a, b, c = dag.node(get_name), dag.node(get_age), dag.node(get_address)

    def two(pair: tuple[str, int]) -> int:
        return 0

    dag.node(two).depends_on(a, b, c)
    with pytest.raises(
        WorkflowError,
        match=r"node 'two' takes a tuple of 2 .* but depends on 3 nodes \(get_name, get_age, get_address\)",
    ):
        dag.validate()

    dag2 = DagFlow("not-a-tuple")
    x, y = dag2.node(get_name), dag2.node(get_age)
    dag2.node(get_age, name="wrong").depends_on(x, y)
    with pytest.raises(WorkflowError, match="node 'wrong' depends on 2 nodes.*annotate it tuple"):
        dag2.validate()


def test_validate_refuses_several_sinks_and_names_them():
    dag = DagFlow("sinks")
    a = dag.node(get_name)
    dag.node(get_age, name="left").depends_on(a)
    dag.node(get_age, name="right").depends_on(a)
    with pytest.raises(WorkflowError, match=r"several sinks \(left, right\)"):
        dag.validate()


def test_validate_refuses_an_empty_dag_and_bad_names():
    with pytest.raises(WorkflowError, match="has no node"):
        DagFlow("empty").validate()
    dag = DagFlow("names")
    dag.node(get_name)
    with pytest.raises(ValueError, match="already"):
        dag.node(get_name)
    with pytest.raises(ValueError, match="without ':'"):
        dag.node(get_age, name="a:b")
    with pytest.raises(ValueError, match="same DagFlow"):
        dag.node(get_age).depends_on(DagFlow("other").node(get_name))


def test_building_a_worker_validates_the_dag():
    dag = DagFlow("sinks")
    dag.node(get_name)
    dag.node(get_age)
    with pytest.raises(WorkflowError, match="several sinks"):
        WorkerBuilder("w").backend(MemoryBackend()).build(dag)


def test_to_dot_draws_nodes_and_labelled_join_edges():
    dot = user_etl().to_dot()
    assert dot.startswith('digraph "user-etl" {')
    assert '"get_age" -> "collector" [label=1];' in dot


def test_a_store_without_joins_cannot_run_a_fan_in():
    class NoJoins(MemoryBackend):
        capabilities = MemoryBackend.capabilities.__class__(
            introspection=True, keys=True, follow_ups=True
        )

    with pytest.raises(CapabilityError, match="several dependencies.*'joins'"):
        WorkerBuilder("w").backend(NoJoins()).build(user_etl())
    with pytest.raises(CapabilityError, match="fan-out.*'joins'"):
        NoJoins().start_fan_out([1, 2, 3])
    chain = DagFlow("chain")
    chain.node(lambda x: x + 1, name="b").depends_on(chain.node(get_age))
    store = NoJoins()
    run_id = store.push_start(1, flow=chain)
    drain(store, chain)
    assert store.capabilities.joins is False and run_id


# The fan-in race -----------------------------------------------------------------------------------
RUNS = 200
WORKERS = 4  # x concurrency 2: eight threads, each acking on its own


def _race(store, queue_store_factory):
    """RUNS runs of a 3-parent fan-in; the parents of each run wait for one another
    (a barrier) so that they finish together; the join must run once per run."""
    barriers: dict[str, threading.Barrier] = {}
    lock = threading.Lock()
    joined: list[str] = []

    def parent(run_and_value: list, task=None) -> int:
        run_id, value = run_and_value
        with lock:
            barrier = barriers.setdefault(run_id, threading.Barrier(3))
        try:
            barrier.wait(timeout=2)
        except threading.BrokenBarrierError:  # another worker holds a sibling: go on
            pass
        return value

    def join(values: tuple[int, int, int], ctx: WorkerContext) -> int:
        with lock:
            joined.append(ctx.name)
        return sum(values)

    dag = DagFlow(unique("race"))
    nodes = [dag.node(parent, name=f"p{i}") for i in range(3)]
    dag.node(join).depends_on(*nodes)
    run_ids = []
    for n in range(RUNS):
        run_id_holder = f"r{n}"
        run_ids.append(store.start_fan_out([[run_id_holder, i] for i in (1, 2, 3)], flow=dag))
    config = Config(buffer_size=0)
    workers = [
        WorkerBuilder(f"racer-{i}").backend(queue_store_factory(config)).concurrency(2).build(dag)
        for i in range(WORKERS)
    ]
    threads = [threading.Thread(target=w.run_until_idle) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(joined) == RUNS
    for run_id in run_ids:
        status = store.workflow_status(run_id)
        assert (status.state, status.result) == ("done", 6)
        [join_step] = [s for s in status.steps if s.step == "join"]
        assert len(join_step.tasks) == 1


def test_a_three_parent_fan_in_runs_once_per_run_under_racing_acks_sqlite(tmp_path):
    db = connect(str(tmp_path / "race.db"))
    SqliteStorage.setup(db)
    queue = unique("race")
    try:
        _race(
            SqliteStorage(db, queue=queue),
            lambda config: SqliteStorage(db, queue=queue, config=config),
        )
    finally:
        db.close()


@pytest.mark.skipif(not POSTGRES_URL, reason="set TASKPIPE_TEST_POSTGRES_URL")
def test_a_three_parent_fan_in_runs_once_per_run_under_racing_acks_postgres():
    db = postgres_db()
    queue = unique("race")
    store = taskpipe.open_storage(db, queue=queue)
    try:
        _race(store, lambda config: taskpipe.open_storage(db, queue=queue, config=config))
    finally:
        store.close_thread_connection()


@pytest.mark.skipif(not REDIS_URL, reason="set TASKPIPE_TEST_REDIS_URL")
def test_a_three_parent_fan_in_runs_once_per_run_under_racing_acks_redis():
    url = REDIS_URL + ("&" if "?" in REDIS_URL else "?") + f"prefix={unique('tp-race')}"
    queue = unique("race")
    store = taskpipe.open_storage(url, queue=queue)
    type(store).setup(store)
    try:
        _race(store, lambda config: taskpipe.open_storage(url, queue=queue, config=config))
    finally:
        store.drop()


@pytest.mark.skipif(not MYSQL_URL, reason="set TASKPIPE_TEST_MYSQL_URL")
def test_a_three_parent_fan_in_runs_once_per_run_under_racing_acks_mysql():
    queue = unique("race")
    store = taskpipe.open_storage(MYSQL_URL, queue=queue)
    type(store).setup(store)
    try:
        _race(store, lambda config: taskpipe.open_storage(MYSQL_URL, queue=queue, config=config))
    finally:
        store.close_thread_connection()
