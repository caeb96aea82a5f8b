"""A user ETL as a DAG (the seed's apalis example, in Python): three lookups run
side by side, and a collector runs once, when the last of them has committed, with
their three outputs as one tuple in ``depends_on`` order.

    python examples/user_etl_dag.py
"""

import os
import tempfile

from taskpipe import MsgPackCodec, WorkerBuilder, WorkerContext
from taskpipe.sqlite import SqliteStorage, connect
from taskpipe.workflow import DagFlow


def get_name(user_id: int) -> str:
    return str(user_id)


def get_age(user_id: int) -> int:
    return user_id + 20


def get_address(user_id: int) -> int:
    return user_id + 100


def collector(inputs: tuple[str, int, int], ctx: WorkerContext) -> int:
    name, age, address = inputs
    result = int(name) + age + address
    print(f"collected name={name!r} age={age} address={address}: {result}")
    ctx.stop()
    return result


path = os.path.join(tempfile.mkdtemp(prefix="taskpipe-"), "jobs.db")
db = connect(path)
SqliteStorage.setup(db)
backend = SqliteStorage(db, queue="user-etl", codec=MsgPackCodec)
run_id = backend.start_fan_out([42, 43, 44])  # one input per start node, in order

dag_flow = DagFlow("user-etl-workflow")
name = dag_flow.node(get_name)
age = dag_flow.node(get_age)
address = dag_flow.node(get_address)
dag_flow.node(collector).depends_on(name, age, address)  # order and types matter here
dag_flow.validate()  # cycles, tuple arity, unreachable nodes, several sinks
print(dag_flow.to_dot())

worker = WorkerBuilder("rango-tango").backend(backend).concurrency(3).build(dag_flow)
worker.run()

status = backend.workflow_status(run_id)
print(f"run {run_id}: {status.state}, result {status.result}")
