"""Order fulfilment as a durable workflow (the seed's apalis example, in Python):
charge the payment, check each item's stock (one task per item, out-of-stock ones
dropped), pause, dispatch, email. Each step's output is stored as the next step's task
in the same transaction as the step's ack: kill the worker anywhere, and a new one
goes on from the step that was next.

    python examples/order_fulfilment.py
"""

import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta

from taskpipe import WorkerBuilder, WorkerContext
from taskpipe.sqlite import SqliteStorage, connect
from taskpipe.workflow import Workflow


@dataclass
class Order:
    id: int
    customer_email: str
    items: list[str]
    total_cents: int


@dataclass
class ChargedOrder:
    order_id: int
    customer_email: str
    transaction_id: str
    items: list[str]


@dataclass
class StockedItem:
    order_id: int
    sku: str


@dataclass
class DispatchedOrder:
    order_id: int
    customer_email: str
    tracking_number: str
    item_count: int


def charge(order: Order) -> ChargedOrder:
    """Step 1: charge the payment (call your payment provider here)."""
    print(f"[{order.id}] charging ${order.total_cents / 100:.2f} for {len(order.items)} item(s)")
    return ChargedOrder(order.id, order.customer_email, f"txn_{order.id}", order.items)


def items_of(charged: ChargedOrder) -> list[StockedItem]:
    """Step 2: one item per SKU, for the stock check."""
    return [StockedItem(charged.order_id, sku) for sku in charged.items]


def check_stock(item: StockedItem) -> StockedItem | None:
    """Step 3, one task per item: None drops an out-of-stock item."""
    if item.sku in ("WIDGET-C", "WIDGET-D"):
        print(f"[{item.order_id}] {item.sku} is out of stock: skipping")
        return None
    return item


def dispatch(items: list[StockedItem]) -> DispatchedOrder:
    """Step 4 (after a pause): hand the items to the courier."""
    order_id = items[0].order_id
    tracking = f"TRACK-{order_id}"
    print(f"[{order_id}] dispatched {len(items)} item(s), tracking {tracking}")
    return DispatchedOrder(order_id, "alice@example.com", tracking, len(items))


def email(dispatched: DispatchedOrder, ctx: WorkerContext) -> str:
    """Step 5: tell the customer, then stop this example's worker."""
    print(
        f"[{dispatched.order_id}] emailing {dispatched.customer_email}: "
        f"{dispatched.item_count} item(s) on the way ({dispatched.tracking_number})"
    )
    ctx.stop()
    return "emailed"


workflow = (
    Workflow("order-fulfilment")
    .and_then(charge)
    .and_then(items_of)
    .filter_map(check_stock)
    .delay_for(timedelta(milliseconds=500))
    .and_then(dispatch)
    .and_then(email)
)

path = os.path.join(tempfile.mkdtemp(prefix="taskpipe-"), "jobs.db")
db = connect(path)
SqliteStorage.setup(db)
storage = SqliteStorage(db, queue="order-fulfilment")
run_id = storage.push_start(
    Order(1001, "alice@example.com", ["WIDGET-A", "WIDGET-B", "WIDGET-C"], 7499)
)

worker = WorkerBuilder("fulfilment-worker").backend(storage).concurrency(4).build(workflow)
worker.run()  # until the last step stops it (Ctrl-C also stops it gracefully)

status = storage.workflow_status(run_id, flow=workflow)
print(f"run {run_id}: {status.state}, result {status.result!r}")
for step in status.steps:
    state = step.state.value if step.state else "not reached"
    print(f"  step {step.step:>6} {step.name or '':<12} {state:<8} tasks={len(step.tasks)}")
