"""Any callable whose signature can be read is a handler: partials (bound by position
or keyword), bound methods, objects with ``__call__``, staticmethods. Annotations are
strings here (``from __future__ import annotations``) and must still resolve, so the
args are decoded into the annotated type. ``Signature.is_async`` marks ``async def``
handlers however they are wrapped."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest

from taskpipe import Attempt, BuildError, Data, TaskId, WorkerBuilder, WorkerContext
from taskpipe.injection import analyse


@dataclass
class Order:
    id: int
    total: float


@dataclass
class Mailer:
    sender: str


MAILER = Mailer("shop@example.com")


def run(storage, handler, *data) -> None:
    """Push one order, run ``handler`` over it with a worker, check it ran once."""
    storage.push({"id": 7, "total": 9.5})
    builder = WorkerBuilder("callables").backend(storage)
    for value in data:
        builder = builder.data(value)
    assert builder.build(handler).run_until_idle() == 1


# Handlers ---------------------------------------------------------------------------------
def send(order: Order, mailer: Mailer, task_id: TaskId, seen: list) -> None:
    seen.append((order, mailer, task_id))


def tagged(prefix: str, order: Order, attempt: Attempt, seen: list) -> None:
    seen.append((prefix, order, attempt))


class Service:
    def __init__(self) -> None:
        self.seen: list = []

    def handle(self, order: Order, ctx: WorkerContext) -> None:
        self.seen.append((order, ctx.name))

    def __call__(self, order: Order, task_id: TaskId, shared: Data[Mailer]) -> None:
        self.seen.append((order, task_id, shared))

    @staticmethod
    def static(order: Order, attempt: Attempt, seen: list) -> None:
        seen.append((order, attempt))


# Partials ---------------------------------------------------------------------------------
def test_partial_binding_later_parameters_by_keyword(storage):
    seen: list = []
    run(storage, functools.partial(send, mailer=MAILER, seen=seen))
    [(order, mailer, task_id)] = seen
    assert order == Order(7, 9.5)  # decoded by the string annotation "Order"
    assert mailer is MAILER and isinstance(task_id, TaskId)


def test_partial_binding_leading_parameters_by_position(storage):
    seen: list = []
    run(storage, functools.partial(tagged, "vip", seen=seen))
    assert seen == [("vip", Order(7, 9.5), 1)]


def test_partial_of_a_bound_method(storage):
    service = Service()
    run(storage, functools.partial(service.handle))
    assert service.seen == [(Order(7, 9.5), "callables")]


def test_a_parameter_a_partial_binds_is_not_injected():
    """Even when its annotation is injectable, the partial's value is kept."""
    signature = analyse(functools.partial(send, task_id=TaskId(99), mailer=MAILER, seen=[]), {})
    assert signature.args_type is Order
    assert signature.injections == ()


def test_partial_binding_the_first_parameter_by_keyword_says_how_to_fix_it():
    # The args are passed positionally, so they would land on `prefix` again.
    with pytest.raises(BuildError, match=r"partial binds prefix, seen by keyword.*positionally"):
        analyse(functools.partial(tagged, prefix="vip", seen=[]), {})


# Methods, __call__, staticmethods -----------------------------------------------------------
def test_bound_method(storage):
    service = Service()
    run(storage, service.handle)
    assert service.seen == [(Order(7, 9.5), "callables")]


def test_object_with_call(storage):
    service = Service()
    run(storage, service, MAILER)
    [(order, task_id, shared)] = service.seen
    assert order == Order(7, 9.5) and isinstance(task_id, TaskId) and shared is MAILER


@pytest.mark.parametrize("how", ["through the class", "the staticmethod object"])
def test_staticmethod(storage, how):
    seen: list = []
    static = Service.static if how == "through the class" else Service.__dict__["static"]
    run(storage, functools.partial(static, seen=seen))
    assert seen == [(Order(7, 9.5), 1)]


def test_a_class_is_called_with_the_args():
    class Receipt:
        def __init__(self, order: Order, task_id: TaskId) -> None:
            self.order, self.task_id = order, task_id

    signature = analyse(Receipt, {})
    assert signature.args_type is Order
    assert signature.injections == (("task_id", "task_id", None),)


def test_star_args_take_the_args(storage):
    seen: list = []

    def collect(*orders: Order, ctx: WorkerContext) -> None:
        seen.append((orders, ctx.name))

    run(storage, collect)
    assert seen == [((Order(7, 9.5),), "callables")]


# Build-time errors -----------------------------------------------------------------------------
def test_a_positional_only_parameter_cannot_be_injected():
    def handler(order: Order, task_id: TaskId, /) -> None: ...

    with pytest.raises(BuildError, match=r"'task_id' is positional-only.*after the '/'"):
        analyse(handler, {})


def unresolvable(order: NoSuchName) -> None:  # noqa: F821 - the point of the test
    ...


def test_an_unresolvable_string_annotation_names_the_handler_and_the_name():
    with pytest.raises(
        BuildError, match=r"annotations of handler unresolvable: NameError.*NoSuchName"
    ):
        analyse(unresolvable, {})
    with pytest.raises(BuildError, match=r"handler functools.partial\(unresolvable, …\)"):
        analyse(functools.partial(unresolvable), {})


# is_async ------------------------------------------------------------------------------------
async def fetch(order: Order, task_id: TaskId) -> None: ...


def fetch_sync(order: Order, task_id: TaskId) -> None: ...


class AsyncService:
    async def handle(self, order: Order) -> None: ...

    async def __call__(self, order: Order, attempt: Attempt) -> None: ...

    @staticmethod
    async def static(order: Order) -> None: ...


@pytest.mark.parametrize(
    "handler",
    [
        fetch,
        functools.partial(fetch),
        functools.partial(functools.partial(fetch), task_id=TaskId(1)),
        AsyncService().handle,
        AsyncService(),
        AsyncService.static,
        AsyncService.__dict__["static"],
        functools.partial(AsyncService().handle),
    ],
    ids=[
        "function",
        "partial",
        "partial of partial",
        "bound method",
        "async __call__",
        "staticmethod",
        "staticmethod object",
        "partial of bound method",
    ],
)
def test_async_handlers_are_marked(handler):
    signature = analyse(handler, {})
    assert signature.is_async is True
    assert signature.args_type is Order


@pytest.mark.parametrize(
    "handler",
    [
        fetch_sync,
        functools.partial(fetch_sync),
        Service().handle,
        functools.partial(Service.static, seen=[]),
        Service(),
    ],
    ids=["function", "partial", "bound method", "staticmethod", "__call__"],
)
def test_sync_handlers_are_not_marked(handler):
    assert analyse(handler, {Mailer: MAILER}).is_async is False
